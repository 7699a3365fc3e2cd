"""Weight import from reference implementations, so their checkpoints fine-tune here.

GPT-2 (Hugging Face `GPT2LMHeadModel`): token and position tables, pre-norm blocks whose
Conv1D weights are stored (in, out) and are transposed into our (out, in) Linear layers, the
final LayerNorm, and the LM head tied to the token embedding. GPT-2 has no type embedding: the
type table is zeroed, so the logits equal the reference's. Reads plain state dicts (e.g. from
`safetensors.torch.load_file`), never pickles.

timm ViT, Hugging Face Whisper and Decision Transformer: see each section's functions.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
from pathlib import Path

import torch
from torch import Tensor

from tokenizers_mm import ModalitySpec

from .config import HeadConfig, ModalityConfig, ModelConfig, TrunkConfig
from .transformer import MultimodalTransformer, check_config_fits, read_weights


def copy_checked(model: MultimodalTransformer, ours: dict[str, Tensor], what: str) -> MultimodalTransformer:
    """Copy renamed reference weights into `model` after checking every shape. The type table is
    zeroed unless `ours` fills it (the references have no token types, so their outputs are
    reproduced exactly)."""
    own = model.state_dict()
    for k, v in ours.items():
        if k not in own or own[k].shape != v.shape:
            raise ValueError(f"{what} import: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape) if k in own else 'nothing'}")
    with torch.no_grad():
        model.type_embed.weight.zero_()
        for k, v in ours.items():
            own[k].copy_(v)
    return model


def refuse_unknown(sd: dict[str, Tensor], patterns: tuple[str, ...], depth: int | dict[str, int], what: str) -> None:
    """Refuse a reference checkpoint holding weights the import has no place for (a variant it does
    not support: layer scale, q/k norms, an untied head, ...) or more blocks than the model has.
    `patterns`: regular expressions of the keys it reads or may ignore; group `block` is a block
    index below `depth` (or, with depth a dict, each group it names is a block index below its value)."""
    depths = depth if isinstance(depth, dict) else {"block": depth}
    unknown, deeper = [], []
    for k in sd:
        m = next((m for m in (re.fullmatch(p, k) for p in patterns) if m), None)
        if m is None:
            unknown.append(k)
        elif any(m.groupdict().get(g) is not None and int(m[g]) >= d for g, d in depths.items()):
            deeper.append(k)
    if unknown:
        prefix = os.path.commonprefix(unknown).rpartition(".")[0]
        if prefix and len(unknown) == len(sd) and any(re.fullmatch(p, unknown[0][len(prefix) + 1 :]) for p in patterns):
            raise ValueError(f"{what} import: every name in the checkpoint starts with {prefix + '.'!r} (a wrapper's state dict, "
                             f"e.g. {unknown[0]!r}); strip it: {{k.removeprefix({prefix + '.'!r}): v for k, v in state_dict.items()}}")  # fmt: skip
        raise ValueError(f"{what} import: the checkpoint holds weights this import has no place for {sorted(unknown)[:5]} (an unsupported variant)")
    if deeper:
        limit = depth if isinstance(depth, int) else ", ".join(f"{g} {d}" for g, d in depths.items())
        raise ValueError(f"{what} import: the checkpoint has more blocks than the model's {limit} ({sorted(deeper)[:3]})")


def renamed(rename, sd: dict[str, Tensor], depth: int, what: str) -> dict[str, Tensor]:
    """`rename(sd, depth)`, a weight it needs and the checkpoint lacks named in one line (a checkpoint
    with fewer blocks than the model, or of another model)."""
    try:
        return rename(sd, depth)
    except KeyError as e:
        raise ValueError(f"{what} import: the checkpoint lacks {e.args[0]} (the model has {depth} blocks)") from None


def check_tied(sd: dict[str, Tensor], head: str, table: str, what: str) -> None:
    """An output layer is imported tied to its token table: refuse one that differs."""
    if head in sd and not torch.equal(sd[head], sd[table]):
        raise ValueError(f"{what} import: {head} differs from {table}; untied output layers are not supported")


def check_gpt2_attention(hf: dict, what: str) -> None:
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{what} import: attention scaled other than by 1/sqrt(head size) is not supported "
                         "(scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True)")  # fmt: skip


GPT2_KEYS = (r"wte\.weight", r"wpe\.weight", r"ln_f\.(weight|bias)",  # GPT2Model's, without "transformer."
             r"h\.(?P<block>\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)", r"h\.(?P<block>\d+)\.attn\.(bias|masked_bias)")  # fmt: skip


def gpt2_activation(hf: dict, default: str, what: str) -> str:
    """Our activation for a GPT-2-style config's `activation_function` (transformers' ACT2FN names)."""
    act = {"relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(hf.get("activation_function", default))
    if act is None:
        raise ValueError(f"{what} import: activation {hf['activation_function']!r} is not supported (gelu_new, gelu or relu)")
    return act


def check_gpt2_config(hf: dict, what: str = "GPT-2 import") -> None:
    """A GPT2Config's fields, or one line naming what the config is instead (a Llama's, a Pythia's)."""
    kind = hf.get("model_type", "gpt2")
    missing = [k for k in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size") if not isinstance(hf.get(k), int)]
    if kind != "gpt2" or missing:
        why = f"model_type {kind!r}" if kind != "gpt2" else f"no {', '.join(missing)}"
        raise ValueError(f"{what}: not a GPT-2 config ({why}); expected a transformers GPT2LMHeadModel's config.json")


def gpt2_model_config(hf: dict, max_positions: int | None = None, dropout: float = 0.0, flash: bool = True) -> ModelConfig:
    """Our config for a Hugging Face GPT2Config (as a dict: config.json or `.to_dict()`)."""
    check_gpt2_config(hf)
    activation = gpt2_activation(hf, "gelu_new", "GPT-2")
    check_gpt2_attention(hf, "GPT-2")
    if not hf.get("tie_word_embeddings", True):
        raise ValueError("GPT-2 import: tie_word_embeddings=False (an untied LM head) is not supported")
    dim = hf["n_embd"]
    trunk = TrunkConfig(dim=dim, depth=hf["n_layer"], num_heads=hf["n_head"], mlp_ratio=(hf.get("n_inner") or 4 * dim) / dim,
                        dropout=dropout, bias=True, norm_eps=hf.get("layer_norm_epsilon", 1e-5), mode="decoder",
                        activation=activation, flash=flash)  # fmt: skip
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
    return out | gpt2_blocks(sd, depth)


def gpt2_blocks(sd: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """GPT-2's blocks `h.{i}.*` → our decoder blocks (Conv1D weights transposed)."""
    out = {}
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
    depth = len(model.decoder.blocks)
    plain = {k.removeprefix("transformer."): v for k, v in sd.items()}
    refuse_unknown(plain, (*GPT2_KEYS, r"lm_head\.weight"), depth, "GPT-2")
    check_tied(plain, "lm_head.weight", "wte.weight", "GPT-2")
    ours = renamed(gpt2_state_dict, plain, depth, "GPT-2")
    n_pos = model.embedders["text"].pos.num_embeddings
    ours["embedders.text.pos.weight"] = ours["embedders.text.pos.weight"][:n_pos]
    return copy_checked(model, ours, "GPT-2")


# -- timm VisionTransformer ------------------------------------------------------------------------
def vit_model_config(vit, num_classes: int | None = None) -> ModelConfig:
    """Our config for a timm `VisionTransformer` instance (plain ViT: no layer scale, no registers)."""
    from timm.models.vision_transformer import Attention, Block, Mlp  # (the classes its plain ViT builds, in every timm 1.x)

    prefix = int(vit.cls_token is not None)  # note: a distilled ViT's second prefix token (dist_token) has no place here
    extra_tokens = getattr(vit, "num_reg_tokens", 0) or getattr(vit, "num_prefix_tokens", prefix) != prefix
    if extra_tokens or getattr(vit, "no_embed_class", False) or vit.global_pool not in ("token", "avg"):
        raise ValueError("timm import: plain ViTs only (class-token or average pooling, no register or distillation tokens, "
                         "no_embed_class=False)")  # fmt: skip
    # note: by class, not by weight names: a residual post-norm block (ResPostBlock) has Block's names and computes another sum
    kinds = {f"{type(b).__name__}({type(getattr(b, 'attn', None)).__name__}, {type(getattr(b, 'mlp', None)).__name__})" for b in vit.blocks
             if (type(b), type(getattr(b, "attn", None)), type(getattr(b, "mlp", None))) != (Block, Attention, Mlp)}  # fmt: skip
    if kinds:
        raise ValueError(f"timm import: plain ViTs only (pre-norm Block(Attention, Mlp)); this one has {sorted(kinds)} (not supported)")
    block = vit.blocks[0]
    act = block.mlp.act
    activation = {"GELU": {"none": "gelu", "tanh": "gelu_tanh"}.get(getattr(act, "approximate", "none")), "GELUTanh": "gelu_tanh"}.get(type(act).__name__)
    optional = [("", vit, ("norm_pre", "patch_drop")), ("", block, ("ls1", "ls2")), ("attn.", block.attn, ("q_norm", "k_norm", "norm")),
                ("mlp.", block.mlp, ("norm",)), ("patch_embed.", vit.patch_embed, ("norm",))]  # fmt: skip  # Identity in a plain ViT
    extras = [f"{where}{n}" for where, module, names in optional for n in names
              if not isinstance(getattr(module, n, torch.nn.Identity()), torch.nn.Identity)]  # fmt: skip
    extras += ["pool_include_prefix"] if getattr(vit, "pool_include_prefix", False) else []
    extras += ["pos_embed=None"] if vit.pos_embed is None else []
    # one bias flag serves every layer: a ViT without the qkv bias alone (qkv_bias=False) takes a zero one (the same sums)
    bias = block.attn.proj.bias is not None
    layers = {"attn.proj": block.attn.proj, "mlp.fc1": block.mlp.fc1, "mlp.fc2": block.mlp.fc2, "attn.qkv": block.attn.qkv}
    extras += [f"{n} bias={m.bias is not None}" for n, m in layers.items() if (m.bias is not None) != bias and not (bias and n == "attn.qkv")]
    extras += [f"{n} bias={m.bias is not None} (its linear layers' {bias})" for n, m in (("norm1", block.norm1), ("norm", vit.norm))
               if isinstance(m, torch.nn.LayerNorm) and (m.bias is not None) != bias]  # fmt: skip  # our one flag covers the norms too
    if activation is None or extras:
        raise ValueError(f"timm import: plain ViTs only; this one has {extras or [type(act).__name__ + ' activation']} (not supported)")
    dim = vit.embed_dim
    p = vit.patch_embed.patch_size[0]
    in_chans = vit.patch_embed.proj.in_channels
    grid = list(vit.patch_embed.grid_size)
    fc_norm = not isinstance(vit.fc_norm, torch.nn.Identity)
    trunk = TrunkConfig(dim=dim, depth=len(vit.blocks), num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim,
                        bias=bias, norm_eps=block.norm1.eps, mode="encoder", activation=activation,
                        final_norm=not isinstance(vit.norm, torch.nn.Identity))  # fmt: skip
    has_cls = vit.cls_token is not None
    spec = ModalitySpec("image", ("patch", "cls"), int(has_cls) + grid[0] * grid[1], value_dim=in_chans * p * p)
    modality = ModalityConfig.from_spec(spec, learned_types=["cls"] if has_cls else [], grid=grid)
    head = HeadConfig("classify", "image", num_outputs=num_classes or vit.num_classes, pool="cls" if vit.global_pool == "token" else "mean",
                      norm=fc_norm)  # fmt: skip
    return ModelConfig(trunk, {"image": modality}, {"cls": head}, encoder_inputs=["image"])


TIMM_BLOCK_NAMES = {"norm1": "ln_1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "ln_2", "mlp.fc1": "mlp.fc", "mlp.fc2": "mlp.proj"}
TIMM_LAYERS = {"encoder.ln_f": "norm", "heads.cls.norm": "fc_norm", "heads.cls.proj": "head"}  # ours -> timm's, each .weight / .bias
TIMM_NAMES = {"embedders.image.tok": "patch_embed.proj", "embedders.image.pos.weight": "pos_embed", "embedders.image.learned": "cls_token",
              **TIMM_LAYERS}  # fmt: skip


def timm_vit_name(ours: str) -> str:
    """Our weight's name in a timm VisionTransformer's state dict (what an error names)."""
    if m := re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)\.(weight|bias)", ours):
        theirs = {v: k for k, v in TIMM_BLOCK_NAMES.items()}.get(m[2])
        return f"blocks.{m[1]}.{theirs}.{m[3]}" if theirs else ours
    head, _, kind = ours.rpartition(".")
    return TIMM_NAMES.get(ours) or (f"{TIMM_NAMES[head]}.{kind}" if head in TIMM_NAMES else ours)


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
    for ours, theirs in TIMM_LAYERS.items():
        for kind in ("weight", "bias"):
            if f"{theirs}.{kind}" in sd:
                out[f"{ours}.{kind}"] = sd[f"{theirs}.{kind}"]
    for i in range(depth):
        for theirs, ours in TIMM_BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                if f"blocks.{i}.{theirs}.{kind}" in sd:
                    out[f"encoder.blocks.{i}.{ours}.{kind}"] = sd[f"blocks.{i}.{theirs}.{kind}"]
        qkv = f"blocks.{i}.attn.qkv"
        if f"{qkv}.weight" in sd and f"{qkv}.bias" not in sd and f"blocks.{i}.attn.proj.bias" in sd:  # qkv_bias=False: a zero bias
            out[f"encoder.blocks.{i}.attn.qkv.bias"] = sd[f"{qkv}.weight"].new_zeros(sd[f"{qkv}.weight"].shape[0])
    return out


TIMM_VIT_NEEDED = ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed")  # read whatever the model's size
TIMM_VIT_KEYS = (r"patch_embed\.proj\.(weight|bias)", r"pos_embed", r"cls_token", r"(norm|fc_norm|head)\.(weight|bias)",
                 r"blocks\.(?P<block>\d+)\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)")  # fmt: skip


def load_timm_vit(model: MultimodalTransformer, sd: dict[str, Tensor], skip_head: bool = False, old_grid=None) -> MultimodalTransformer:
    """Copy timm ViT weights into a model built from `vit_model_config`. The position table is
    resampled (bicubic) when the model's patch grid differs from the checkpoint's (`old_grid`,
    (rows, columns); when not given: the model's own grid when it holds the same number of positions,
    which are copied, as timm's checkpoint filter copies them, else a square grid; so a square table
    into a non-square grid of the same count needs old_grid); `skip_head` keeps our own classifier
    (timm's `head`), for fine-tuning on a new label set; the pooled features' norm (`fc_norm`) is
    still loaded, as timm keeps it when it drops the classifier."""
    from .embedders import resample_grid

    refuse_unknown(sd, TIMM_VIT_KEYS, len(model.encoder.blocks), "timm")
    lacks = [k for k in TIMM_VIT_NEEDED if k not in sd]
    if lacks:
        raise ValueError(f"timm import: the checkpoint lacks {', '.join(lacks)}; expected a timm VisionTransformer's state dict "
                         "(patch_embed.proj.weight / .bias, pos_embed, blocks.N.*)")  # fmt: skip
    ours = timm_vit_state_dict(sd, len(model.encoder.blocks))
    m = model.config.modalities["image"]
    n_prefix = len(m.learned_types)
    old = sd["pos_embed"].shape[1] - n_prefix
    if old_grid is None:  # as timm's checkpoint filter: the same count is the model's own grid, copied; another is square
        side = int(round(old**0.5))
        if m.grid is not None and m.grid[0] * m.grid[1] == old:
            old_grid = m.grid
        elif side * side == old:
            old_grid = [side, side]
        elif m.grid is not None:
            raise ValueError(f"timm import: the checkpoint's {old} positions are not a square grid; pass old_grid=(rows, columns)")
    if list(old_grid or []) and (old_grid[0] * old_grid[1] != old):
        raise ValueError(f"timm import: old_grid {tuple(old_grid)} does not hold the checkpoint's {old} positions")
    if m.grid is not None and list(old_grid) != list(m.grid):
        ours["embedders.image.pos.weight"] = resample_grid(ours["embedders.image.pos.weight"], old_grid, m.grid, n_prefix)
    new = "heads.cls.proj."  # the classifier: timm's `head`
    if skip_head:
        ours = {k: v for k, v in ours.items() if not k.startswith(new)}
    missing = [k for k in model.state_dict() if k not in ours and not k.startswith("type_embed") and not (skip_head and k.startswith(new))]
    if missing:
        raise ValueError(f"timm import: the checkpoint lacks {[timm_vit_name(k) for k in missing[:5]]}")
    return copy_checked(model, ours, "timm")


# -- Whisper (Hugging Face WhisperForConditionalGeneration) ------------------------------------------
WHISPER_NORM_EPS = 1e-5  # Whisper's LayerNorms (not settable in WhisperConfig)


def whisper_model_config(hf: dict) -> ModelConfig:
    """Our encoder-decoder for a Hugging Face WhisperConfig (as a dict): conv stem on mel frames
    (one frame per token), sinusoidal encoder positions, learned decoder positions, tied output."""
    if hf.get("activation_function", "gelu") != "gelu" or hf.get("scale_embedding", False):
        raise ValueError("Whisper import: only GELU activations without embedding scaling (Whisper's own) are supported")
    if not hf.get("tie_word_embeddings", True):
        raise ValueError("Whisper import: tie_word_embeddings=False (an untied output layer) is not supported")
    dim = hf["d_model"]
    trunk = TrunkConfig(dim=dim, depth=hf["encoder_layers"], dec_depth=hf["decoder_layers"], num_heads=hf["encoder_attention_heads"],
                        mlp_ratio=hf["encoder_ffn_dim"] / dim, bias=True, norm_eps=WHISPER_NORM_EPS, mode="encoder-decoder",
                        activation="gelu")  # fmt: skip
    if hf["decoder_attention_heads"] != hf["encoder_attention_heads"] or hf["decoder_ffn_dim"] != hf["encoder_ffn_dim"]:
        raise ValueError("Whisper import: the encoder and decoder must share head count and MLP width")
    audio = ModalitySpec("audio", ("slice",), 2 * hf["max_source_positions"], value_dim=hf["num_mel_bins"])
    text = ModalitySpec("text", ("token",), hf["max_target_positions"], vocab_size=hf["vocab_size"])
    modalities = {"audio": ModalityConfig.from_spec(audio, embedder="whisper_conv"), "text": ModalityConfig.from_spec(text)}
    return ModelConfig(trunk, modalities, {"lm": HeadConfig("lm", "text")}, encoder_inputs=["audio"], decoder_inputs=["text"])


def _fuse(sd: dict, prefix: str, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Concatenate separate q/k/v projections into one fused weight and bias (k has no bias)."""
    ws = [sd[f"{prefix}.{n}.weight"] for n in names]
    bs = [sd.get(f"{prefix}.{n}.bias", torch.zeros(w.shape[0], dtype=w.dtype)) for n, w in zip(names, ws)]
    return torch.cat(ws), torch.cat(bs)


# Hugging Face's Whisper names (without "model.") -> ours: the import reads them one way, the export (models/export.py) the other
HF_WHISPER_TOP = {
    "encoder.conv1.weight": "embedders.audio.conv1.weight", "encoder.conv1.bias": "embedders.audio.conv1.bias",
    "encoder.conv2.weight": "embedders.audio.conv2.weight", "encoder.conv2.bias": "embedders.audio.conv2.bias",
    "encoder.embed_positions.weight": "embedders.audio.pos.weight", "decoder.embed_tokens.weight": "embedders.text.tok.weight",
    "decoder.embed_positions.weight": "embedders.text.pos.weight", "encoder.layer_norm.weight": "encoder.ln_f.weight",
    "encoder.layer_norm.bias": "encoder.ln_f.bias", "decoder.layer_norm.weight": "decoder.ln_f.weight", "decoder.layer_norm.bias": "decoder.ln_f.bias",
}  # fmt: skip


def hf_whisper_layer(side: str) -> tuple[dict[str, str], dict[str, tuple[str, tuple[str, ...]]]]:
    """A block's names: ({theirs: ours} for modules with a weight and a bias, {our fused projection:
    (their attention module, its separate projections)}); decoder blocks add cross-attention."""
    pairs = {"self_attn.out_proj": "attn.proj", "self_attn_layer_norm": "ln_1", "final_layer_norm": "ln_2", "fc1": "mlp.fc", "fc2": "mlp.proj"}
    fused = {"attn.qkv": ("self_attn", ("q_proj", "k_proj", "v_proj"))}
    if side == "decoder":
        pairs |= {"encoder_attn.q_proj": "cross_attn.q", "encoder_attn.out_proj": "cross_attn.proj", "encoder_attn_layer_norm": "ln_cross"}
        fused["cross_attn.kv"] = ("encoder_attn", ("k_proj", "v_proj"))
    return pairs, fused


def hf_whisper_state_dict(sd: dict[str, Tensor], enc_depth: int, dec_depth: int) -> dict[str, Tensor]:
    """Rename a WhisperForConditionalGeneration state dict into ours."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    out = {ours: sd[theirs] for theirs, ours in HF_WHISPER_TOP.items()}
    for side, depth in (("encoder", enc_depth), ("decoder", dec_depth)):
        pairs, fused = hf_whisper_layer(side)
        for i in range(depth):
            theirs, ours = f"{side}.layers.{i}", f"{side}.blocks.{i}"
            for o, (module, parts) in fused.items():
                out[f"{ours}.{o}.weight"], out[f"{ours}.{o}.bias"] = _fuse(sd, f"{theirs}.{module}", parts)
            for t, o in pairs.items():
                out[f"{ours}.{o}.weight"] = sd[f"{theirs}.{t}.weight"]
                out[f"{ours}.{o}.bias"] = sd[f"{theirs}.{t}.bias"]
    return out


_WHISPER_LAYER = r"(self_attn\.(q|k|v|out)_proj|self_attn_layer_norm|final_layer_norm|fc1|fc2)\.(weight|bias)"
WHISPER_KEYS = (  # Hugging Face's names without "model."; openai-whisper's are renamed to them first
    r"encoder\.conv[12]\.(weight|bias)", r"(encoder|decoder)\.embed_positions\.weight", r"decoder\.embed_tokens\.weight",
    r"(encoder|decoder)\.layer_norm\.(weight|bias)", r"proj_out\.weight", rf"encoder\.layers\.(?P<encoder>\d+)\.{_WHISPER_LAYER}",
    rf"decoder\.layers\.(?P<decoder>\d+)\.({_WHISPER_LAYER}|(encoder_attn\.(q|k|v|out)_proj|encoder_attn_layer_norm)\.(weight|bias))",
)  # fmt: skip


def load_hf_whisper(model: MultimodalTransformer, sd: dict[str, Tensor]) -> MultimodalTransformer:
    """Copy Hugging Face Whisper weights into a model built from `whisper_model_config`."""
    plain = {k.removeprefix("model."): v for k, v in sd.items()}
    refuse_unknown(plain, WHISPER_KEYS, {"encoder": len(model.encoder.blocks), "decoder": len(model.decoder.blocks)}, "Whisper")
    own = [v.numel() for v in model.state_dict().values()]
    if sum(v.numel() for v in plain.values()) > sum(own) + max(own):  # note: before fusing q / k / v copies anything
        raise ValueError("Whisper import: the checkpoint holds more weights than the model (names sharing a tensor?)")
    check_tied(plain, "proj_out.weight", "decoder.embed_tokens.weight", "Whisper")
    ours = hf_whisper_state_dict(sd, len(model.encoder.blocks), len(model.decoder.blocks))
    missing = [k for k in model.state_dict() if k not in ours and not k.startswith(("type_embed", "heads."))]
    if missing:
        raise ValueError(f"Whisper import: the checkpoint lacks {missing[:5]}")
    return copy_checked(model, ours, "Whisper")


def is_hf_whisper_folder(folder) -> bool:
    """A Hugging Face Whisper model folder (`save_pretrained`'s, or a Hub snapshot): config.json of model_type whisper."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "whisper"
    except (ValueError, AttributeError):
        return False


def load_hf_whisper_folder(folder) -> MultimodalTransformer:
    """Our model from a Hugging Face Whisper folder: config.json + model.safetensors (no pickles)."""
    folder = Path(folder)
    if not is_hf_whisper_folder(folder):
        raise ValueError(f"{folder}: not a Hugging Face Whisper folder (expected config.json of model_type whisper + model.safetensors)")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".safetensors", ".json"))) or "nothing"
        raise FileNotFoundError(f"{folder}: a Whisper folder needs model.safetensors (one file; found {found})")
    config = whisper_model_config(json.loads((folder / "config.json").read_text()))
    check_config_fits(config, weights, str(folder))  # (before the model is allocated)
    return load_hf_whisper(MultimodalTransformer(config), read_weights(weights, str(folder)))


# -- openai-whisper checkpoints (`dims` + `model_state_dict`) -------------------------------------
OPENAI_WHISPER_NAMES = {  # openai-whisper name piece -> Hugging Face's
    "attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj", "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm", "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj", "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm",
}  # fmt: skip


OPENAI_WHISPER_TOP = {  # openai-whisper name -> Hugging Face's (without "model."), outside the blocks
    "encoder.positional_embedding": "encoder.embed_positions.weight", "decoder.positional_embedding": "decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "decoder.embed_tokens.weight", "encoder.ln_post.weight": "encoder.layer_norm.weight",
    "encoder.ln_post.bias": "encoder.layer_norm.bias", "decoder.ln.weight": "decoder.layer_norm.weight", "decoder.ln.bias": "decoder.layer_norm.bias",
}  # fmt: skip


def openai_whisper_config(dims: dict) -> dict:
    """openai-whisper's ModelDimensions (as a dict) → the WhisperConfig fields `whisper_model_config` reads."""
    if dims["n_audio_state"] != dims["n_text_state"] or dims["n_audio_head"] != dims["n_text_head"]:
        raise ValueError("Whisper import: the encoder and decoder must share width and head count")
    d = dims["n_audio_state"]
    return {"d_model": d, "encoder_layers": dims["n_audio_layer"], "decoder_layers": dims["n_text_layer"],
            "encoder_attention_heads": dims["n_audio_head"], "decoder_attention_heads": dims["n_text_head"],
            "encoder_ffn_dim": 4 * d, "decoder_ffn_dim": 4 * d, "max_source_positions": dims["n_audio_ctx"],
            "max_target_positions": dims["n_text_ctx"], "vocab_size": dims["n_vocab"], "num_mel_bins": dims["n_mels"]}  # fmt: skip


def openai_whisper_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an openai-whisper state dict into Hugging Face's names."""
    out = {}
    for k, v in sd.items():
        side, rest = k.split(".", 1)
        if rest.startswith("blocks."):
            _, i, piece = rest.split(".", 2)
            stem, leaf = piece.rsplit(".", 1)
            k = f"{side}.layers.{i}.{OPENAI_WHISPER_NAMES.get(stem, stem)}.{leaf}"
        else:
            k = OPENAI_WHISPER_TOP.get(k, k)
        out[k] = v  # note: no .float() here: the shape and key checks come first, and copy_ converts
    return out


def openai_whisper_shapes(dims: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of an openai-whisper state dict for `dims` (its ModelDimensions), with its shape."""
    d, out = dims["n_audio_state"], {}

    def block(prefix: str, cross: bool):
        for a in ("attn", "cross_attn") if cross else ("attn",):
            out.update({f"{prefix}.{a}.{p}.weight": (d, d) for p in ("query", "key", "value", "out")})
            out.update({f"{prefix}.{a}.{p}.bias": (d,) for p in ("query", "value", "out")})
            out.update({f"{prefix}.{a}_ln.{p}": (d,) for p in ("weight", "bias")})
        out.update({f"{prefix}.mlp.0.weight": (4 * d, d), f"{prefix}.mlp.0.bias": (4 * d,), f"{prefix}.mlp.2.weight": (d, 4 * d),
                    f"{prefix}.mlp.2.bias": (d,), f"{prefix}.mlp_ln.weight": (d,), f"{prefix}.mlp_ln.bias": (d,)})  # fmt: skip

    out.update({"encoder.conv1.weight": (d, dims["n_mels"], 3), "encoder.conv1.bias": (d,), "encoder.conv2.weight": (d, d, 3),
                "encoder.conv2.bias": (d,), "encoder.positional_embedding": (dims["n_audio_ctx"], d), "encoder.ln_post.weight": (d,),
                "encoder.ln_post.bias": (d,), "decoder.token_embedding.weight": (dims["n_vocab"], d),
                "decoder.positional_embedding": (dims["n_text_ctx"], d), "decoder.ln.weight": (d,), "decoder.ln.bias": (d,)})  # fmt: skip
    for i in range(dims["n_audio_layer"]):
        block(f"encoder.blocks.{i}", cross=False)
    for i in range(dims["n_text_layer"]):
        block(f"decoder.blocks.{i}", cross=True)
    return out


def check_openai_whisper_dims(dims: dict, sd: dict[str, Tensor]) -> dict:
    """The model is built from `dims` before any weight is copied: the checkpoint must hold exactly
    the tensors those dims imply, with their shapes (so a file cannot make us allocate a model its
    weights do not fill). Returns the WhisperConfig fields (`openai_whisper_config`)."""
    fields = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_vocab", "n_text_ctx", "n_text_state",
              "n_text_head", "n_text_layer")  # fmt: skip
    bad = [k for k in fields if not (isinstance(dims.get(k), int) and dims[k] > 0)] if isinstance(dims, dict) else None
    if bad is None or bad:
        what = f"dims is a {type(dims).__name__}" if bad is None else ", ".join(f"{k}={reprlib.repr(dims.get(k))}" for k in bad)
        raise ValueError(f"Whisper import: {what}: dims must give every ModelDimensions field as a positive integer")
    if not isinstance(sd, dict):
        raise ValueError(f"Whisper import: model_state_dict is a {type(sd).__name__}, expected a dict of tensors")
    expected = 11 + 15 * dims["n_audio_layer"] + 24 * dims["n_text_layer"]  # (openai_whisper_shapes' count, before it is built:
    count = f"{len(sd)} tensors; {dims['n_audio_layer']} + {dims['n_text_layer']} layers take {expected}"  # dims of a million layers
    if expected > 2 * len(sd) + 100:  # beside a few tensors would make it list names for all of them)
        raise ValueError(f"Whisper import: the checkpoint does not match its dims ({count})")
    hf = openai_whisper_config(dims)  # refuses an encoder and decoder of different widths, which the shapes below assume
    want = openai_whisper_shapes(dims)
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or extra:
        raise ValueError(f"Whisper import: the checkpoint does not match its dims ({count}: missing {missing[:3]}, unexpected {extra[:3]})")
    for k, shape in want.items():
        if not isinstance(sd[k], Tensor) or tuple(sd[k].shape) != shape:
            raise ValueError(f"Whisper import: dims say {k} is {shape}; the checkpoint holds {getattr(sd[k], 'shape', type(sd[k]).__name__)}")
    return hf


def load_openai_whisper(path) -> MultimodalTransformer:
    """Our model with the weights of an openai-whisper checkpoint (`tiny.pt`, ...), read by
    `models.safe_load` without unpickling anything."""
    from .safe_load import load_torch_file

    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or not {"dims", "model_state_dict"} <= set(ckpt):
        raise ValueError(f"{path}: not an openai-whisper checkpoint (expected a dict with dims and model_state_dict)")
    model = MultimodalTransformer(whisper_model_config(check_openai_whisper_dims(ckpt["dims"], ckpt["model_state_dict"])))
    return load_hf_whisper(model, openai_whisper_state_dict(ckpt["model_state_dict"]))


# -- Hugging Face DecisionTransformerModel --------------------------------------------------------
def dt_model_config(hf: dict, discrete: bool = False, dropout: float = 0.0) -> ModelConfig:
    """Our config for a Hugging Face DecisionTransformerConfig (as a dict): one `trajectory`
    modality (return / state / action tokens, the timestep table as positions, embed_ln), the
    GPT-2 trunk, and the action head read at state tokens. discrete: the act_dim outputs are
    logits over action ids (one-hot action inputs, cross-entropy loss; needs action_tanh=False).
    dropout: ours is one rate (0 for inference; HF's config keeps resid / embd / attn_pdrop apart)."""
    act = gpt2_activation(hf, "relu", "Decision Transformer")
    check_gpt2_attention(hf, "Decision Transformer")
    dim = hf["hidden_size"]
    trunk = TrunkConfig(dim=dim, depth=hf["n_layer"], num_heads=hf["n_head"], mlp_ratio=(hf.get("n_inner") or 4 * dim) / dim,
                        bias=True, norm_eps=hf.get("layer_norm_epsilon", 1e-5), mode="decoder", activation=act, dropout=dropout)  # fmt: skip
    S, A = hf["state_dim"], hf["act_dim"]
    traj = ModalityConfig("trajectory", ["return", "state", "action"], hf["max_ep_len"], value_dim=max(1, S, A),
                          type_value_dims=[1, S, A], embed_norm=True)  # fmt: skip
    if discrete and hf.get("action_tanh", True):
        raise ValueError("Decision Transformer import: discrete actions need action_tanh=False (the outputs are logits)")
    head = HeadConfig("token_classify" if discrete else "token_regress", "trajectory", num_outputs=A, token_type="state",
                      tanh=hf.get("action_tanh", True) and not discrete)  # fmt: skip
    return ModelConfig(trunk, {"trajectory": traj}, {"action": head}, decoder_inputs=["trajectory"])


def hf_dt_state_dict(sd: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Rename a DecisionTransformerModel state dict into ours. GPT-2's position table is read at
    position 0 only (the model passes zeros): that constant row becomes every type row."""
    enc = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    out = {
        "embedders.trajectory.pos.weight": sd["embed_timestep.weight"],
        "embedders.trajectory.norm.weight": sd["embed_ln.weight"],
        "embedders.trajectory.norm.bias": sd["embed_ln.bias"],
        "type_embed.weight": enc["wpe.weight"][:1].repeat(3, 1),
        "decoder.ln_f.weight": enc["ln_f.weight"],
        "decoder.ln_f.bias": enc["ln_f.bias"],
        "heads.action.proj.weight": sd["predict_action.0.weight"],
        "heads.action.proj.bias": sd["predict_action.0.bias"],
    }
    for i, theirs in enumerate(("embed_return", "embed_state", "embed_action")):
        out[f"embedders.trajectory.tok.{i}.weight"] = sd[f"{theirs}.weight"]
        out[f"embedders.trajectory.tok.{i}.bias"] = sd[f"{theirs}.bias"]
    return out | gpt2_blocks(enc, depth)


def load_hf_decision_transformer(model: MultimodalTransformer, sd: dict[str, Tensor]) -> MultimodalTransformer:
    """Copy DecisionTransformerModel weights into a model built from `dt_model_config` (the state
    and return predictors, unused by the paper's policy, are left out)."""
    depth = len(model.decoder.blocks)
    keys = (r"embed_(timestep|return|state|action)\.(weight|bias)", r"embed_ln\.(weight|bias)", r"predict_(action|state|return)(\.\d+)?\.(weight|bias)",
            *(rf"encoder\.{k}" for k in GPT2_KEYS))  # fmt: skip
    refuse_unknown(sd, keys, depth, "Decision Transformer")
    return copy_checked(model, renamed(hf_dt_state_dict, sd, depth, "Decision Transformer"), "Decision Transformer")
