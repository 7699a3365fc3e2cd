"""Weight export to the reference implementations: the inverse of convert.py, so a model trained
here runs in the libraries people deploy with.

- A text language model (one "text" modality, a causal decoder, an LM head) → Hugging Face
  `GPT2LMHeadModel`: config.json + model.safetensors, loadable with `from_pretrained`. Our Linear
  weights are (out, in); GPT-2's Conv1D stores (in, out). A model trained without biases exports
  zero biases; the type row every text token adds is folded into the position table, so the
  logits are ours exactly.
- An image classifier (one "image" modality, an encoder, a pooled head) → timm
  `VisionTransformer`: config.json (architecture, model_args, pretrained_cfg with the tokenizer's
  preprocessing) + model.safetensors, loadable with `timm.create_model("local-dir:PATH",
  pretrained=True)`. The linear patch embedding becomes timm's convolution; the patch and CLS
  type rows are folded into `pos_embed`.

What a reference cannot express is refused with the reason (another LayerNorm eps than timm's
1e-6, a prefix LM, several modalities). Decision Transformer models are not exported:
`DecisionTransformerModel` adds one constant row to every token after `embed_ln`, ours a learned row
per token type.
- A Whisper-style recogniser (audio encoder through Whisper's conv stem, text decoder, tied LM
  head) → Hugging Face `WhisperForConditionalGeneration`: config.json + model.safetensors. Our
  fused q/k/v split into q_proj / k_proj / v_proj; the key bias is dropped (Whisper's k_proj has
  none; a bias on the keys adds the same score to every key a query sees, which softmax ignores);
  the type rows fold into the encoder's and decoder's position tables. Only a model that reads
  whole windows padded with silence (as Whisper's feature extractor pads) runs the same there.
  `openai_whisper_export` renames the same tensors into an openai-whisper checkpoint's
  (`dims` + `model_state_dict`, for `whisper.load_model`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .convert import HF_WHISPER_TOP, OPENAI_WHISPER_NAMES, OPENAI_WHISPER_TOP, WHISPER_NORM_EPS, check_openai_whisper_dims, hf_whisper_layer
from .blocks import mlp_width
from .transformer import MultimodalTransformer


def timm_mlp_ratio(dim: int, mlp_ratio: float) -> float:
    """timm's mlp_ratio for our MLP width: timm builds int(dim * mlp_ratio), which falls one short
    of a width whose ratio does not survive the float product; then a ratio half a unit above."""
    width = mlp_width(dim, mlp_ratio)
    return mlp_ratio if int(dim * mlp_ratio) == width else (width + 0.5) / dim

GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}  # ours -> transformers' ACT2FN names
TIMM_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh"}  # ours -> timm's get_act_layer names
TIMM_NORM_EPS = 1e-6  # timm's ViT LayerNorms (not settable through model_args)


def only_head(model: MultimodalTransformer, what: str):
    """(head name, HeadConfig) of a one-head model."""
    heads = model.config.heads
    if len(heads) != 1:
        raise ValueError(f"{what} export: the model has {len(heads)} heads ({', '.join(heads)}); expected one")
    return next(iter(heads.items()))


def plain(model: MultimodalTransformer) -> dict[str, Tensor]:
    """The state dict, detached, float32, with a zero tensor for every bias a bias-free model lacks."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and getattr(module, "bias", None) is None:
            out = module.out_features if isinstance(module, torch.nn.Linear) else module.normalized_shape[0]
            sd[f"{name}.bias"] = torch.zeros(out)
    return sd


# -- GPT-2 (Hugging Face GPT2LMHeadModel) ------------------------------------------------------------
def check_text_lm(model: MultimodalTransformer) -> str:
    """The LM head's name, after refusing what GPT-2 cannot express."""
    c, t = model.config, model.config.trunk
    name, head = only_head(model, "GPT-2")
    problems = []
    if list(c.modalities) != ["text"] or c.decoder_inputs != ["text"] or c.encoder_inputs or head.kind != "lm":
        problems.append(f"a text-only decoder with an LM head (this one reads {list(c.modalities)} with a {head.kind} head)")
    elif c.modalities["text"].embedder != "auto" or c.modalities["text"].learned_types or c.modalities["text"].embed_norm:
        problems.append("a plain token embedding (no learned tokens, no LayerNorm on the embedding)")
    if t.mode != "decoder" or c.prefix_inputs:
        problems.append("a causal decoder (not a prefix LM or an encoder)")
    if not t.final_norm:
        problems.append("a final LayerNorm")
    if problems:
        raise ValueError(f"GPT-2 export: GPT2LMHeadModel needs {'; '.join(problems)}")
    return name


def gpt2_export(model: MultimodalTransformer, specials: dict[str, int] | None = None) -> tuple[dict, dict[str, Tensor]]:
    """(config.json dict, state dict) of the Hugging Face GPT2LMHeadModel that computes our logits.
    specials: the tokenizer's special tokens (`<|endoftext|>` becomes bos / eos)."""
    head_name = check_text_lm(model)
    c, t = model.config, model.config.trunk
    m = c.modalities["text"]
    sd = plain(model)
    tied = model.heads[head_name].proj.weight is model.embedders["text"].tok.weight
    # every text token adds type row 0 (its only type) and its position row: one table holds both
    types = m.token_types
    if len(types) != 1:
        raise ValueError(f"GPT-2 export: the text modality has {len(types)} token types {types}; GPT-2 has one")
    wpe = sd["embedders.text.pos.weight"] + sd["type_embed.weight"][model.type_offset["text"]]
    out = {"transformer.wte.weight": sd["embedders.text.tok.weight"], "transformer.wpe.weight": wpe,
           "transformer.ln_f.weight": sd["decoder.ln_f.weight"], "transformer.ln_f.bias": sd["decoder.ln_f.bias"]}  # fmt: skip
    pairs = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(t.depth):
        for ours, theirs in pairs.items():
            w = sd[f"decoder.blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{theirs}.weight"] = w.t().contiguous() if ours.startswith(("attn", "mlp")) else w  # Conv1D: (in, out)
            out[f"transformer.h.{i}.{theirs}.bias"] = sd[f"decoder.blocks.{i}.{ours}.bias"]
    if not tied:
        out["lm_head.weight"] = sd[f"heads.{head_name}.proj.weight"]
    eot = (specials or {}).get("<|endoftext|>")
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size, "n_positions": m.max_positions,
        "n_embd": t.dim, "n_layer": t.depth, "n_head": t.num_heads, "n_inner": mlp_width(t.dim, t.mlp_ratio),
        "activation_function": GPT2_ACTIVATIONS[t.activation], "layer_norm_epsilon": t.norm_eps,
        "resid_pdrop": t.dropout, "embd_pdrop": t.dropout, "attn_pdrop": t.dropout, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": tied, "use_cache": True, "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }  # fmt: skip
    return config, out


# -- timm VisionTransformer ------------------------------------------------------------------------
def check_image_classifier(model: MultimodalTransformer) -> str:
    c, t = model.config, model.config.trunk
    name, head = only_head(model, "timm")
    problems = []
    if list(c.modalities) != ["image"] or c.encoder_inputs != ["image"] or c.decoder_inputs or head.kind not in ("classify", "regress"):
        problems.append(f"an image-only encoder with a pooled head (this one reads {list(c.modalities)} with a {head.kind} head)")
    elif c.modalities["image"].grid is None or c.modalities["image"].embedder != "auto":
        problems.append("a patch embedding over a grid")
    elif c.modalities["image"].learned_types not in ([], ["cls"]) or c.modalities["image"].embed_norm:
        problems.append("at most a CLS token, no LayerNorm on the embedding")
    elif head.pool == "cls" and not c.modalities["image"].learned_types:  # (mean pooling leaves a CLS token out, as timm's avg)
        problems.append("a CLS token for CLS pooling")
    if t.activation not in TIMM_ACTIVATIONS:
        problems.append(f"a GELU activation (this model uses {t.activation})")
    if t.norm_eps != TIMM_NORM_EPS:
        problems.append(f"LayerNorm eps={TIMM_NORM_EPS:g} (this model uses {t.norm_eps:g})")
    if t.final_norm and head.norm:
        problems.append("one final LayerNorm, before or after pooling (this model has both)")
    if problems:
        raise ValueError(f"timm export: VisionTransformer needs {'; '.join(problems)}")
    return name


def timm_vit_export(model: MultimodalTransformer, image_tokenizer, label_names: list[str] | None = None) -> tuple[dict, dict[str, Tensor]]:
    """(config.json dict for `timm.create_model("local-dir:...")`, state dict) of the timm
    VisionTransformer that computes our logits on the tokenizer's preprocessed pixels."""
    head_name = check_image_classifier(model)
    c, t = model.config, model.config.trunk
    m, head = c.modalities["image"], c.heads[head_name]
    tok = image_tokenizer
    if list(tok.grid) != list(m.grid) or tok.value_dim != m.value_dim:
        raise ValueError(f"timm export: the image tokenizer's grid {tuple(tok.grid)} / patch width {tok.value_dim} do not match "
                         f"the model's {tuple(m.grid)} / {m.value_dim}")  # fmt: skip
    sd = plain(model)
    p, C = tok.patch_size, tok.channels
    w = sd["embedders.image.tok.weight"]  # (C_out, C·p·p), each patch flattened as (C, p, p)
    type_rows = sd["type_embed.weight"][model.type_offset["image"] : model.type_offset["image"] + len(m.token_types)]
    pos = sd["embedders.image.pos.weight"].clone()  # (prefix + gh·gw, C_out): CLS first, then the patches in raster order
    n_prefix = len(m.learned_types)
    pos[n_prefix:] += type_rows[m.token_types.index("patch")]
    out = {"patch_embed.proj.weight": w.reshape(w.shape[0], C, p, p), "patch_embed.proj.bias": sd["embedders.image.tok.bias"]}
    if n_prefix:
        pos[0] += type_rows[m.token_types.index("cls")]
        out["cls_token"] = sd["embedders.image.learned"].reshape(1, 1, -1)
    out["pos_embed"] = pos[None]
    for ours, theirs in (("encoder.ln_f", "norm"), (f"heads.{head_name}.norm", "fc_norm"), (f"heads.{head_name}.proj", "head")):
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in sd:
                out[f"{theirs}.{kind}"] = sd[f"{ours}.{kind}"]
    pairs = {"ln_1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "ln_2": "norm2", "mlp.fc": "mlp.fc1", "mlp.proj": "mlp.fc2"}
    for i in range(t.depth):
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{theirs}.{kind}"] = sd[f"encoder.blocks.{i}.{ours}.{kind}"]
    num_classes = head.num_outputs
    model_args = {
        "img_size": list(tok.image_size), "patch_size": p, "in_chans": C, "num_classes": num_classes, "embed_dim": t.dim,
        "depth": t.depth, "num_heads": t.num_heads, "mlp_ratio": timm_mlp_ratio(t.dim, t.mlp_ratio), "qkv_bias": True, "class_token": bool(n_prefix),
        "global_pool": "token" if head.pool == "cls" else "avg", "fc_norm": head.norm,
        "final_norm": t.final_norm or head.norm,  # note: timm's final_norm is "a final LayerNorm"; fc_norm puts it after pooling
        "act_layer": TIMM_ACTIVATIONS[t.activation],
    }  # fmt: skip
    pretrained_cfg = {
        "input_size": [C, *tok.image_size], "fixed_input_size": True, "interpolation": tok.interpolation, "crop_pct": tok.crop_pct,
        "crop_mode": "center", "mean": list(tok.mean), "std": list(tok.std), "num_classes": num_classes,
        "first_conv": "patch_embed.proj", "classifier": "head",
    }  # fmt: skip
    if label_names:
        pretrained_cfg["label_names"] = list(label_names)
    config = {"architecture": "vit_base_patch16_224", "num_classes": num_classes, "num_features": t.dim, "global_pool": model_args["global_pool"],
              "model_args": model_args, "pretrained_cfg": pretrained_cfg}  # fmt: skip
    return config, out


# -- Whisper (Hugging Face WhisperForConditionalGeneration) ------------------------------------------
def check_speech_model(model: MultimodalTransformer) -> None:
    """Refuse what WhisperForConditionalGeneration cannot express."""
    c, t = model.config, model.config.trunk
    head = only_head(model, "Whisper")[1]
    problems = []
    if sorted(c.modalities) != ["audio", "text"] or c.encoder_inputs != ["audio"] or c.decoder_inputs != ["text"] or head.kind != "lm":
        problems.append(f"an audio encoder and a text decoder with an LM head (this one reads {list(c.modalities)} with a {head.kind} head)")
    else:
        audio, text = c.modalities["audio"], c.modalities["text"]
        if audio.embedder != "whisper_conv" or text.embedder != "auto" or text.learned_types or text.embed_norm:
            problems.append("Whisper's conv stem on mel frames and a plain token embedding")
        if len(audio.token_types) != 1 or len(text.token_types) != 1:
            problems.append("one token type per modality")
    if t.mode != "encoder-decoder" or c.prefix_inputs:
        problems.append("an encoder-decoder")
    if not (t.bias and t.final_norm and t.activation == "gelu"):
        problems.append("biases, exact GELU and a final LayerNorm on both sides")
    if abs(t.mlp_ratio * t.dim - mlp_width(t.dim, t.mlp_ratio)) > 1e-6:
        problems.append(f"a whole MLP width (mlp_ratio={t.mlp_ratio:g} × dim={t.dim})")
    if not head.tie:
        problems.append("an output layer tied to the token embedding")
    if t.norm_eps != WHISPER_NORM_EPS:
        problems.append(f"LayerNorm eps={WHISPER_NORM_EPS:g} (this model uses {t.norm_eps:g})")
    if problems:
        raise ValueError(f"Whisper export: WhisperForConditionalGeneration needs {'; '.join(problems)}")


def whisper_export(model: MultimodalTransformer, specials: dict[str, int]) -> tuple[dict, dict[str, Tensor]]:
    """(config.json dict, state dict) of the Hugging Face WhisperForConditionalGeneration that
    computes our logits on the same log-mel window and decoder tokens. specials: the text
    tokenizer's special tokens (<|endoftext|>, <|startoftranscript|>)."""
    check_speech_model(model)
    c, t = model.config, model.config.trunk
    audio, text = c.modalities["audio"], c.modalities["text"]
    missing = [s for s in ("<|endoftext|>", "<|startoftranscript|>") if s not in specials]
    if missing:
        raise ValueError(f"Whisper export: the text tokenizer lacks {', '.join(missing)}")
    sd = plain(model)
    out = {theirs: sd[ours] for theirs, ours in HF_WHISPER_TOP.items()}
    for side, name in (("encoder", "audio"), ("decoder", "text")):  # each modality's only type row folds into its positions
        out[f"{side}.embed_positions.weight"] = out[f"{side}.embed_positions.weight"] + sd["type_embed.weight"][model.type_offset[name]]
    for side, depth in (("encoder", t.depth), ("decoder", t.decoder_depth)):
        pairs, fused = hf_whisper_layer(side)
        for i in range(depth):
            ours, theirs = f"{side}.blocks.{i}", f"{side}.layers.{i}"
            for o, (module, parts) in fused.items():
                for part, w, b in zip(parts, sd[f"{ours}.{o}.weight"].chunk(len(parts)), sd[f"{ours}.{o}.bias"].chunk(len(parts))):
                    out[f"{theirs}.{module}.{part}.weight"] = w.contiguous()
                    if part != "k_proj":  # note: a key bias does not change attention (see the module's note)
                        out[f"{theirs}.{module}.{part}.bias"] = b.contiguous()
            for h, o in pairs.items():
                out[f"{theirs}.{h}.weight"], out[f"{theirs}.{h}.bias"] = sd[f"{ours}.{o}.weight"], sd[f"{ours}.{o}.bias"]
    out = {f"model.{k}": v for k, v in out.items()}
    eot, sot = specials["<|endoftext|>"], specials["<|startoftranscript|>"]
    ffn = mlp_width(t.dim, t.mlp_ratio)
    config = {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper", "vocab_size": text.vocab_size,
        "num_mel_bins": audio.value_dim, "d_model": t.dim, "encoder_layers": t.depth, "decoder_layers": t.decoder_depth,
        "encoder_attention_heads": t.num_heads, "decoder_attention_heads": t.num_heads, "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn,
        "max_source_positions": sd["embedders.audio.pos.weight"].shape[0], "max_target_positions": text.max_positions,
        "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True, "dropout": t.dropout,
        "attention_dropout": t.dropout, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
        "pad_token_id": eot, "bos_token_id": eot, "eos_token_id": eot, "decoder_start_token_id": sot,
        "begin_suppress_tokens": None, "suppress_tokens": None, "use_cache": True, "torch_dtype": "float32",
    }  # fmt: skip
    return config, out


def openai_whisper_export(model: MultimodalTransformer, specials: dict[str, int]) -> tuple[dict, dict[str, Tensor]]:
    """(dims, model_state_dict) of the openai-whisper `Whisper` model that computes our logits: the
    tensors of `whisper_export` under openai-whisper's names (the inverse of the import's renaming),
    checked against the shapes its ModelDimensions imply."""
    config, hf = whisper_export(model, specials)
    if config["encoder_ffn_dim"] != 4 * config["d_model"]:
        raise ValueError(f"openai-whisper export: openai-whisper's MLP is 4 × the width (this model's: {config['encoder_ffn_dim']} for "
                         f"width {config['d_model']})")  # fmt: skip
    blocks, top = {v: k for k, v in OPENAI_WHISPER_NAMES.items()}, {v: k for k, v in OPENAI_WHISPER_TOP.items()}
    sd = {}
    for k, v in hf.items():
        k = k.removeprefix("model.")
        side, rest = k.split(".", 1)
        if rest.startswith("layers."):
            _, i, piece = rest.split(".", 2)
            stem, leaf = piece.rsplit(".", 1)
            k = f"{side}.blocks.{i}.{blocks[stem]}.{leaf}"
        sd[top.get(k, k)] = v
    dims = {"n_mels": config["num_mel_bins"], "n_audio_ctx": config["max_source_positions"], "n_audio_state": config["d_model"],
            "n_audio_head": config["encoder_attention_heads"], "n_audio_layer": config["encoder_layers"], "n_vocab": config["vocab_size"],
            "n_text_ctx": config["max_target_positions"], "n_text_state": config["d_model"], "n_text_head": config["decoder_attention_heads"],
            "n_text_layer": config["decoder_layers"]}  # fmt: skip
    check_openai_whisper_dims(dims, sd)  # what the import would refuse is not written
    return dims, sd
