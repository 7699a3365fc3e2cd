"""Grow a trained model: new modalities, new token types or new heads, nothing it knew disturbed.

`grow(model, config)` builds a model of `config` — the trained model's config plus what is new —
and copies every trained weight into it. The shared type table is copied row by row, matched by
(modality, type name), so each old token keeps exactly its vector; a modality's new types go after
its old ones (its tokenizer keeps the old type ids). New embedders, type rows and heads start from
the usual initialisation. On inputs the old model accepted, the grown one computes the same outputs.

`freeze_trained(model, old_config)` then keeps the trained part fixed while the new rows learn
(`requires_grad` off; a gradient hook that zeroes the old rows of the type table, and optimizer
step hooks that put them back after any optimizer's step, so that decoupled weight decay, as
`torch.optim.AdamW`'s default, leaves them too), so old tasks stay exactly as they were; without it, continued training on a mix of old and new tasks adapts all
weights (the generalist recipe's `freeze_trained=false`).
"""

from __future__ import annotations

from dataclasses import replace

import weakref

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .config import ModelConfig
from .transformer import MultimodalTransformer

TYPE_TABLE = "type_embed.weight"


RUN_SETTINGS = ("dropout", "flash", "grad_checkpoint")  # trunk fields that change how it trains or runs, no weight: free to differ


def _check(old: ModelConfig, new: ModelConfig):
    if replace(new.trunk, **{k: getattr(old.trunk, k) for k in RUN_SETTINGS}) != old.trunk:
        raise ValueError(f"grow: the trunk must stay the same; trained {old.trunk}, asked {new.trunk}")
    for name, m in old.modalities.items():
        if name not in new.modalities:
            raise ValueError(f"grow: modality {name!r} of the trained model is missing from the new config")
        n = new.modalities[name]
        if n.token_types[: len(m.token_types)] != m.token_types:
            raise ValueError(f"grow: modality {name!r} must keep its token types {m.token_types} first (new types go after them); "
                             f"got {n.token_types}")  # fmt: skip
        same = ("max_positions", "vocab_size", "value_dim", "embedder", "learned_types", "grid", "embed_norm")
        changed = [k for k in same if getattr(n, k) != getattr(m, k)]
        if changed:
            raise ValueError(f"grow: modality {name!r} changes {changed}; only new token types can be added to a trained modality")
    # the old modalities keep their places: the stack they go through, their order in it, prefix or not
    for field in ("encoder_inputs", "decoder_inputs", "prefix_inputs"):
        kept = [n for n in getattr(new, field) if n in old.modalities]
        if kept != list(getattr(old, field)):
            raise ValueError(f"grow: the trained modalities' {field} must stay {getattr(old, field)} (new ones may be added); got {kept}")
    if new.subset_inputs != old.subset_inputs:
        raise ValueError(f"grow: subset_inputs must stay {old.subset_inputs}")
    for name, h in old.heads.items():  # training knobs (loss_weight, label_smoothing) may change; the head itself may not
        n = new.heads.get(name)
        if n is None or replace(n, loss_weight=h.loss_weight, label_smoothing=h.label_smoothing) != h:
            raise ValueError(f"grow: head {name!r} must stay as trained ({h})")


def type_offsets(config: ModelConfig) -> dict[str, int]:
    """First row of each modality's block in the type table (as MultimodalTransformer lays it out)."""
    out, n = {}, 0
    for name, m in config.modalities.items():
        out[name], n = n, n + len(m.token_types)
    return out


def type_rows(old: ModelConfig, new: ModelConfig) -> tuple[list[int], list[int]]:
    """Rows of the old type table and where each goes in the new one."""
    a, b = type_offsets(old), type_offsets(new)
    pairs = [(a[name] + i, b[name] + i) for name, m in old.modalities.items() for i in range(len(m.token_types))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def grow(model: MultimodalTransformer, config: ModelConfig) -> MultimodalTransformer:
    """A model of `config` holding every trained weight of `model` (see the module docstring)."""
    _check(model.config, config)
    new = MultimodalTransformer(config)
    src, dst = type_rows(model.config, config)
    state = new.state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key == TYPE_TABLE:
                state[key][dst] = value[src].to(state[key])  # (a bf16 or GPU model into the new float32 one)
            elif key not in state or state[key].shape != value.shape:
                raise ValueError(f"grow: trained weight {key} {tuple(value.shape)} has no place in the new model")
            else:
                state[key].copy_(value)
    new.load_state_dict(state)
    first = next(model.parameters())
    return new.to(device=first.device, dtype=first.dtype)  # where and as the trained model was


def freeze_trained(model: MultimodalTransformer, old: ModelConfig) -> list:
    """Freeze what `old` (the trained config) had: every copied weight, and the old type rows.
    Returns the hook handles (remove them to unfreeze the type rows; the optimizer step hooks are
    process-wide, act on an optimizer that holds this model's type table, and are removed when the
    model is)."""
    _, rows = type_rows(old, model.config)
    old_keys = set(MultimodalTransformer(old).state_dict()) - {TYPE_TABLE}
    for key, p in model.named_parameters():
        if key in old_keys:
            p.requires_grad_(False)
    weight = model.type_embed.weight
    keep = torch.zeros(weight.shape[0], 1, dtype=torch.bool)
    keep[rows] = True
    # an optimizer that decays weights itself (AdamW's decoupled weight decay, torch's default 0.01) moves rows whose
    # gradient is 0: each step of an optimizer that holds the table puts the old rows back as they were before it
    ref, index, before_step, handles = weakref.ref(weight), torch.tensor(rows, dtype=torch.long), {}, []

    def holds(optimizer) -> Tensor | None:
        w = ref()
        return w if w is not None and any(p is w for group in optimizer.param_groups for p in group["params"]) else None

    def save_rows(optimizer, args, kwargs):
        if (w := holds(optimizer)) is not None:
            before_step[id(optimizer)] = w.detach()[index.to(w.device)].clone()

    def restore_rows(optimizer, args, kwargs):
        if (w := holds(optimizer)) is not None and id(optimizer) in before_step:
            with torch.no_grad():
                w[index.to(w.device)] = before_step.pop(id(optimizer))

    handles += [weight.register_hook(lambda g: g.masked_fill(keep.to(g.device), 0.0)),
                register_optimizer_step_pre_hook(save_rows), register_optimizer_step_post_hook(restore_rows)]  # fmt: skip
    weakref.finalize(weight, lambda: [h.remove() for h in handles[1:]])  # the model gone, its process-wide hooks go too
    return handles
