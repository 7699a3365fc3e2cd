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
