"""Collation: a list of TokenSets → one TokenBatch, padded or packed.

`collate` pads every set to the longest (optionally to a multiple) and marks real tokens in
`mask`. `pack` lays several short sets end to end in rows of a fixed length (first-fit
decreasing) and records a segment id per token; the model turns segments into a block-diagonal
attention mask, so tokens of one sequence never see another's (as in T5 / Gato packing).
Each set keeps its own positions, so a packed sequence is embedded exactly as it is alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tokenset import TokenBatch, TokenSet, positive

PAD_SEGMENT = -1


def listed(sets):
    """The sets of any iterable (a generator, a map) as a list: they are read more than once."""
    return sets if isinstance(sets, (list, tuple, TokenSet)) or not hasattr(sets, "__iter__") else list(sets)


def _check_same(sets: list[TokenSet], who: str, index: list[int] | None = None):
    """Every set must agree with the first in modality, fields present, and each field's dtype and
    per-token shape (padding writes into the first's tensors: anything else would be cast or
    broadcast silently). index: each set's number as the caller counts samples (default: its place)."""
    if isinstance(sets, TokenSet):  # (one set where a list goes: collate([ts]))
        raise TypeError(f"{who}: takes a list of TokenSets, got one TokenSet ({who}([ts]) batches it alone)")
    if not sets:
        raise ValueError(f"{who}: need at least one TokenSet")
    first, index = sets[0], index or list(range(len(sets)))
    for i, ts in zip(index, sets):
        if not isinstance(ts, TokenSet):
            raise TypeError(f"{who}: sample {i} is a {type(ts).__name__}, not a TokenSet")
        if ts.modality != first.modality:
            raise ValueError(f"{who}: sample {i} has modality {ts.modality!r}, sample {index[0]} has {first.modality!r}")
        for name in ("ids", "values", "targets", "loss_mask", "positions", "types"):
            t, f = getattr(ts, name), getattr(first, name)
            if (t is None) != (f is None):
                raise ValueError(f"{who}: sample {i} {'lacks' if t is None else 'has'} {name}, sample {index[0]} does not agree")
            if t is None:
                continue
            if name == "values" and t.shape[-1] != f.shape[-1]:
                raise ValueError(f"{who}: sample {i} has value width {t.shape[-1]}, sample {index[0]} has {f.shape[-1]}")
            if t.shape[1:] != f.shape[1:] or t.dtype != f.dtype:
                raise ValueError(f"{who}: sample {i} has {name} of {str(t.dtype).removeprefix('torch.')} per-token shape "
                                 f"{tuple(t.shape[1:])}, sample {index[0]} {str(f.dtype).removeprefix('torch.')} {tuple(f.shape[1:])}")  # fmt: skip


def _place(rows: list[list[tuple[int, TokenSet, int]]], length: int, with_segments: bool) -> TokenBatch:
    """Write each row's (segment id, set, slot width) items end to end into zero-padded [B, length]
    tensors; a slot wider than its set leaves padding (segment -1) after it."""
    first = next(ts for row in rows for _, ts, _ in row)
    B = len(rows)
    out: dict[str, Tensor | None] = {}
    for name in ("ids", "values", "positions", "types", "targets", "loss_mask"):
        t = getattr(first, name)
        out[name] = None if t is None else t.new_zeros((B, length, *t.shape[1:]))
    mask = torch.zeros(B, length, dtype=torch.bool)
    segments = torch.full((B, length), PAD_SEGMENT, dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for seg, ts, slot in row:
            n = len(ts)
            for name, dst in out.items():
                if dst is not None:
                    dst[b, start : start + n] = getattr(ts, name)
            mask[b, start : start + n] = True
            segments[b, start : start + n] = seg
            start += slot
    return TokenBatch(first.modality, mask=mask, segments=segments if with_segments else None, **out)


def collate(sets: list[TokenSet], pad_to_multiple: int = 1) -> TokenBatch:
    """Pad B sets to the longest: ids [B, N] (or values [B, N, D]) with mask [B, N]."""
    sets = listed(sets)
    _check_same(sets, "collate")
    positive("collate", "pad_to_multiple", pad_to_multiple)
    lengths = {len(ts) for ts in sets}
    if len(lengths) == 1 and next(iter(lengths)) % pad_to_multiple == 0:
        # Fast path (every LM batch of fixed-length windows): stack, no padding to write.
        stacked = {
            name: None if getattr(sets[0], name) is None else torch.stack([getattr(ts, name) for ts in sets])
            for name in ("ids", "values", "positions", "types", "targets", "loss_mask")
        }
        for name in ("positions", "types"):  # the same in every row (fixed-length windows): keep one, expanded
            first = getattr(sets[0], name)
            if all(torch.equal(getattr(ts, name), first) for ts in sets[1:]):
                stacked[name] = first.expand(len(sets), -1)
        mask = torch.ones(stacked["positions"].shape, dtype=torch.bool)
        return TokenBatch(sets[0].modality, mask=mask, **stacked)
    n = max(lengths)
    n = -(-n // pad_to_multiple) * pad_to_multiple
    return _place([[(0, ts, len(ts))] for ts in sets], n, with_segments=False)


def slot_width(n: int, stride: int) -> int:
    """Slots a set of n tokens takes in a packed row: n; for a strided stem (stride k > 1) the next
    multiple of k above n, so the set starts at a multiple of k with padding after it."""
    return n if stride == 1 else -(-(n + 1) // stride) * stride


def pack(sets: list[TokenSet], row_length: int, stride: int = 1) -> TokenBatch:
    """Pack sets into rows of `row_length` tokens (first-fit decreasing), with segment ids.

    Every set must fit in one row; rows come out in the order they were opened. `stride` k > 1
    serves a strided stem (Whisper's conv, k=2; the model refuses packed input without it): each
    set starts at a multiple of k with at least one padding slot after it, as in `pack_examples`.
    """
    sets = listed(sets)
    _check_same(sets, "pack")
    positive("pack", "row_length", row_length)
    positive("pack", "stride", stride)
    rows: list[list[tuple[TokenSet, int]]] = []
    free: list[int] = []
    for i in sorted(range(len(sets)), key=lambda i: -len(sets[i])):
        n = slot_width(len(sets[i]), stride)
        if n > row_length:
            slots = f" ({n} slots with stride {stride})" if stride > 1 else ""
            raise ValueError(f"pack: sample {i} has {len(sets[i])} tokens{slots}, longer than row_length={row_length}")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append((sets[i], n))
                free[r] -= n
                break
        else:
            rows.append([(sets[i], n)])
            free.append(row_length - n)
    return _place([[(seg, ts, n) for seg, (ts, n) in enumerate(row)] for row in rows], row_length, with_segments=True)


def pack_examples(examples: list[dict[str, TokenSet]], row_tokens: int, stride: dict[str, int] | None = None,
                  specs: dict | None = None) -> tuple[dict[str, TokenBatch], list[tuple[int, int]]]:  # fmt: skip
    """Pack multimodal examples — each {modality: TokenSet}, e.g. {"audio", "text"} for speech, or
    {"image"} — into rows of about `row_tokens` slots. All of one example's sets go to the same row
    under one segment id, so its tokens see each other across modalities and nothing else.

    A row holds one span per modality (the model concatenates them in its input order), so each
    modality comes out as one TokenBatch [R, N_m] with segments. Rows are filled greedily, each
    example where it widens the padded spans least, so examples of different tasks share rows and
    little is padding. `stride` (modality -> k) serves strided stems (Whisper's conv, k=2): each
    set starts at a multiple of k with at least one padding slot after it, so a convolution sees
    zeros at its edges exactly as when the set is alone.

    Returns (modality -> TokenBatch, placement): placement[i] = (row, segment) of example i.
    """
    if not examples:
        raise ValueError("pack_examples: need at least one example")
    positive("pack_examples", "row_tokens", row_tokens)
    stride = stride or {}
    for m, k in stride.items():
        positive("pack_examples", f"stride[{m!r}]", k)
    slots = []
    for i, ex in enumerate(examples):
        _check_example(ex, i, "pack_examples")
        if ex.get("targets"):  # (packed rows hold several examples: a pooled head cannot read one per example)
            raise ValueError(f"pack_examples: example {i} carries targets for heads {sorted(ex['targets'])}; packed rows take per-token "
                             "targets in the TokenSets only (pooled heads refuse packed rows): collate_examples batches pooled targets")  # fmt: skip
        sets = {m: ts for m, ts in ex.items() if m != "targets"}
        if not sets:
            raise ValueError(f"pack_examples: example {i} holds no TokenSet")
        for m, ts in sets.items():
            if not isinstance(ts, TokenSet) or ts.modality != m:
                raise ValueError(f"pack_examples: example {i}[{m!r}] must be a TokenSet of modality {m!r}, got {ts!r:.80}")
        k = {m: stride.get(m, 1) for m in sets}
        slots.append({m: slot_width(len(ts), k[m]) for m, ts in sets.items()})
    total = sum(sum(s.values()) for s in slots)
    R = min(len(examples), max(1, -(-total // row_tokens)))  # examples longer than a row: one row each at most
    modalities = list(dict.fromkeys(m for s in slots for m in s))
    load = [dict.fromkeys(modalities, 0) for _ in range(R)]
    width = dict.fromkeys(modalities, 0)
    members: list[list[int]] = [[] for _ in range(R)]
    placement: list[tuple[int, int]] = [(0, 0)] * len(examples)
    for i in sorted(range(len(examples)), key=lambda i: -sum(slots[i].values())):
        def cost(r):  # growth of the padded spans, then the row's load
            return sum(max(0, load[r][m] + n - width[m]) for m, n in slots[i].items()), sum(load[r].values())

        r = min(range(R), key=cost)
        for m, n in slots[i].items():
            load[r][m] += n
            width[m] = max(width[m], load[r][m])
        placement[i] = (r, len(members[r]))
        members[r].append(i)
    kept = [r for r in range(R) if members[r]]  # no row of padding alone
    if len(kept) < R:
        new_row = {r: j for j, r in enumerate(kept)}
        placement = [(new_row[r], seg) for r, seg in placement]
        members = [members[r] for r in kept]
    out = {}
    for m in modalities:
        having = [i for i, ex in enumerate(examples) if m in ex]
        _check_same([examples[i][m] for i in having], f"pack_examples ({m})", having)
        rows = [[(seg, examples[i][m], slots[i][m]) for seg, i in enumerate(row) if m in examples[i]] for row in members]
        out[m] = _place(rows, width[m], with_segments=True)
        if specs is not None and m in specs:
            out[m].validate(specs[m])
    return out, placement


def padding_fraction(batch: TokenBatch) -> float:
    """Share of the batch's slots that hold padding rather than tokens."""
    return 1.0 - batch.mask.float().mean().item()


def collate_examples(examples: list[dict], specs: dict | None = None) -> tuple[dict[str, TokenBatch], dict[str, Tensor]]:
    """Batch training examples: each is {modality: TokenSet, ..., "targets": {head: tensor}}.

    Returns (inputs: modality -> TokenBatch, targets: head -> stacked tensor). With `specs`
    (modality -> ModalitySpec), each batch is checked against its tokenizer's declarations.
    """
    if not examples:
        raise ValueError("collate_examples: need at least one example")
    for i, ex in enumerate(examples):
        _check_example(ex, i, "collate_examples")
    names = [k for k in examples[0] if k != "targets"]
    heads = set(examples[0].get("targets", {}))
    for i, ex in enumerate(examples):  # note: a generalist mixing tasks packs them (pack_examples); a batch here is uniform
        if set(ex) - {"targets"} != set(names) or set(ex.get("targets", {})) != heads:
            raise ValueError(f"collate_examples: example {i} holds {sorted(set(ex) - {'targets'})} with targets "
                             f"{sorted(ex.get('targets', {}))}, example 0 {sorted(names)} with {sorted(heads)}; a batch's examples must agree")  # fmt: skip
    inputs = {}
    for name in names:
        inputs[name] = collate([ex[name] for ex in examples])
        if specs is not None and name in specs:
            inputs[name].validate(specs[name])
    targets = {}
    for head in examples[0].get("targets", {}):
        ys = []
        for i, ex in enumerate(examples):
            y = ex["targets"][head]
            try:  # (torch's: a Python float is float32, as a tensor of targets is)
                y = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError):
                y = None
            if y is None or y.dtype == torch.bool or y.is_complex():
                raise ValueError(f"collate_examples: example {i}'s targets[{head!r}] is {ex['targets'][head]!r:.60}; expected a number "
                                 "or an array of numbers (a class id, class probabilities, regression values)")  # fmt: skip
            if ys and y.shape != ys[0].shape:
                raise ValueError(f"collate_examples: example {i}'s targets[{head!r}] has shape {tuple(y.shape)}, example 0's "
                                 f"{tuple(ys[0].shape)}; a head's targets have one shape across a batch")  # fmt: skip
            ys.append(y)
        targets[head] = torch.stack(ys)
    return inputs, targets


def _check_example(ex, i: int, who: str) -> None:
    """An example is {modality: TokenSet, ..., optionally "targets": {head: target}}."""
    if not isinstance(ex, dict):
        raise TypeError(f"{who}: example {i} is a {type(ex).__name__}; expected a dict {{modality: TokenSet, ..., \"targets\": {{head: target}}}}")
    if not isinstance(ex.get("targets", {}), dict):
        raise TypeError(f"{who}: example {i}'s targets: {type(ex['targets']).__name__}; expected a dict {{head name: target}}")
