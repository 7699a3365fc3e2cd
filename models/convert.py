"""Weight import from reference implementations, so their checkpoints fine-tune here.

GPT-2 (Hugging Face `GPT2LMHeadModel`): token and position tables, pre-norm blocks whose
Conv1D weights are stored (in, out) and are transposed into our (out, in) Linear layers, the
final LayerNorm, and the LM head tied to the token embedding. GPT-2 has no type embedding: the
type table is zeroed, so the logits equal the reference's. Reads plain state dicts (e.g. from
`safetensors.torch.load_file`), never pickles.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenizers_mm import ModalitySpec

from .config import HeadConfig, ModalityConfig, ModelConfig, TrunkConfig
from .transformer import MultimodalTransformer


def gpt2_model_config(hf: dict, max_positions: int | None = None, dropout: float = 0.0) -> ModelConfig:
    """Our config for a Hugging Face GPT2Config (as a dict: config.json or `.to_dict()`)."""
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 import: activation {hf['activation_function']!r} is not supported (gelu_new only)")
    dim = hf["n_embd"]
    trunk = TrunkConfig(dim=dim, depth=hf["n_layer"], num_heads=hf["n_head"], mlp_ratio=(hf.get("n_inner") or 4 * dim) / dim,
                        dropout=dropout, bias=True, norm_eps=hf.get("layer_norm_epsilon", 1e-5), mode="decoder",
                        activation="gelu_tanh")  # fmt: skip
    spec = ModalitySpec("text", ("token",), max_positions or hf["n_positions"], vocab_size=hf["vocab_size"])
    return ModelConfig(trunk, {"text": ModalityConfig.from_spec(spec)}, {"lm": HeadConfig("lm", "text")}, decoder_inputs=["text"])


def gpt2_state_dict(sd: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Rename a GPT2LMHeadModel / GPT2Model state dict into ours (Conv1D weights transposed)."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {
        "embedders.text.tok.weight": sd["wte.weight"],
        "embedders.text.pos.weight": sd["wpe.weight"],
        "decoder.ln_f.weight": sd["ln_f.weight"],
        "decoder.ln_f.bias": sd["ln_f.bias"],
    }
    pairs = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for i in range(depth):
        for theirs, ours in pairs.items():
            w = sd[f"h.{i}.{theirs}.weight"]
            out[f"decoder.blocks.{i}.{ours}.weight"] = w.t() if theirs.startswith(("attn", "mlp")) else w  # Conv1D: (in, out)
            out[f"decoder.blocks.{i}.{ours}.bias"] = sd[f"h.{i}.{theirs}.bias"]
    return out


def load_gpt2(model: MultimodalTransformer, sd: dict[str, Tensor]) -> MultimodalTransformer:
    """Copy GPT-2 weights into a model built from `gpt2_model_config`. Position tables may be
    shorter than GPT-2's 1024 (the first rows are kept)."""
    ours = gpt2_state_dict(sd, len(model.decoder.blocks))
    n_pos = model.embedders["text"].pos.num_embeddings
    ours["embedders.text.pos.weight"] = ours["embedders.text.pos.weight"][:n_pos]
    own = model.state_dict()
    for k, v in ours.items():
        if own[k].shape != v.shape:
            raise ValueError(f"GPT-2 import: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in ours.items():
            own[k].copy_(v)
        model.type_embed.weight.zero_()  # GPT-2 has no token types
    return model


# -- timm VisionTransformer ------------------------------------------------------------------------
def vit_model_config(vit, num_classes: int | None = None) -> ModelConfig:
    """Our config for a timm `VisionTransformer` instance (plain ViT: no layer scale, no registers)."""
    if getattr(vit, "num_reg_tokens", 0) or getattr(vit, "no_embed_class", False) or vit.global_pool not in ("token", "avg"):
        raise ValueError("timm import: plain ViTs only (class-token or average pooling, no register tokens, no_embed_class=False)")
    dim = vit.embed_dim
    p = vit.patch_embed.patch_size[0]
    in_chans = vit.patch_embed.proj.in_channels
    grid = list(vit.patch_embed.grid_size)
    block = vit.blocks[0]
    fc_norm = not isinstance(vit.fc_norm, torch.nn.Identity)
    trunk = TrunkConfig(dim=dim, depth=len(vit.blocks), num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim,
                        bias=block.attn.qkv.bias is not None, norm_eps=block.norm1.eps, mode="encoder", activation="gelu",
                        final_norm=not isinstance(vit.norm, torch.nn.Identity))  # fmt: skip
    has_cls = vit.cls_token is not None
    spec = ModalitySpec("image", ("patch", "cls"), int(has_cls) + grid[0] * grid[1], value_dim=in_chans * p * p)
    modality = ModalityConfig.from_spec(spec, learned_types=["cls"] if has_cls else [], grid=grid)
    head = HeadConfig("classify", "image", num_outputs=num_classes or vit.num_classes, pool="cls" if vit.global_pool == "token" else "mean",
                      norm=fc_norm)  # fmt: skip
    return ModelConfig(trunk, {"image": modality}, {"cls": head}, encoder_inputs=["image"])


def timm_vit_state_dict(sd: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Rename a timm VisionTransformer state dict into ours (conv patch embedding → linear)."""
    w = sd["patch_embed.proj.weight"]  # (C_out, C_in, p, p)
    out = {
        "embedders.image.tok.weight": w.reshape(w.shape[0], -1),  # flattened as (C_in, p, p), as the tokenizer does
        "embedders.image.tok.bias": sd["patch_embed.proj.bias"],
        "embedders.image.pos.weight": sd["pos_embed"][0],
    }
    if "cls_token" in sd:
        out["embedders.image.learned"] = sd["cls_token"].reshape(1, -1)
    for ours, theirs in (("encoder.ln_f", "norm"), ("heads.cls.norm", "fc_norm"), ("heads.cls.proj", "head")):
        for kind in ("weight", "bias"):
            if f"{theirs}.{kind}" in sd:
                out[f"{ours}.{kind}"] = sd[f"{theirs}.{kind}"]
    pairs = {"norm1": "ln_1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "ln_2", "mlp.fc1": "mlp.fc", "mlp.fc2": "mlp.proj"}
    for i in range(depth):
        for theirs, ours in pairs.items():
            for kind in ("weight", "bias"):
                if f"blocks.{i}.{theirs}.{kind}" in sd:
                    out[f"encoder.blocks.{i}.{ours}.{kind}"] = sd[f"blocks.{i}.{theirs}.{kind}"]
    return out


def load_timm_vit(model: MultimodalTransformer, sd: dict[str, Tensor], skip_head: bool = False) -> MultimodalTransformer:
    """Copy timm ViT weights into a model built from `vit_model_config`. The position table is
    resampled (bicubic) when the model's patch grid differs; `skip_head` keeps our own head, for
    fine-tuning on a new label set."""
    from .embedders import resample_grid

    ours = timm_vit_state_dict(sd, len(model.encoder.blocks))
    m = model.config.modalities["image"]
    n_prefix = len(m.learned_types)
    old = sd["pos_embed"].shape[1] - n_prefix
    old_grid = [int(round(old**0.5))] * 2 if m.grid is None or m.grid[0] * m.grid[1] != old else m.grid
    if m.grid is not None and ours["embedders.image.pos.weight"].shape[0] != m.max_positions:
        ours["embedders.image.pos.weight"] = resample_grid(ours["embedders.image.pos.weight"], old_grid, m.grid, n_prefix)
    if skip_head:
        ours = {k: v for k, v in ours.items() if not k.startswith("heads.")}
    own = model.state_dict()
    missing = [k for k in own if k not in ours and not k.startswith("type_embed") and not (skip_head and k.startswith("heads."))]
    if missing:
        raise ValueError(f"timm import: the checkpoint lacks {missing[:5]}")
    for k, v in ours.items():
        if k not in own or own[k].shape != v.shape:
            raise ValueError(f"timm import: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape) if k in own else 'nothing'}")
    with torch.no_grad():
        for k, v in ours.items():
            own[k].copy_(v)
        model.type_embed.weight.zero_()  # timm has no token types
    return model
