"""Pre-norm transformer blocks and stacks, shared by every modality.

Block: x + attn(ln_1(x)) [+ x + cross_attn(ln_cross(x), memory)] then x + mlp(ln_2(x)) — GPT-2 /
timm ViT / Whisper's residual attention block. A stack is blocks plus a final LayerNorm, with
optional activation checkpointing (torch.utils.checkpoint: each block's activations are recomputed
in the backward pass instead of kept). Each module takes plain numbers, so it builds and tests
alone (whisper's `AudioEncoder`, timm's `Block`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention, KVCache


def mlp_width(dim: int, mlp_ratio: float) -> int:
    """The MLP's hidden width: mlp_ratio × dim, whole (an imported ratio 3072 / 752 times 752 is 3071.99...)."""
    return int(mlp_ratio * dim + 1e-6)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.relu = activation == "relu"  # the Decision Transformer's GPT-2 uses ReLU
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        return self.drop(self.proj(F.relu(h) if self.relu else F.gelu(h, approximate=self.approximate)))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        bias: bool = True,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        cross: bool = False,
        activation: str = "gelu",
        flash: bool = True,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.attn = Attention(dim, num_heads, bias, dropout, flash=flash)
        self.ln_cross = nn.LayerNorm(dim, eps=norm_eps, bias=bias) if cross else None
        self.cross_attn = Attention(dim, num_heads, bias, dropout, cross=True, flash=flash) if cross else None
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.mlp = MLP(dim, mlp_width(dim, mlp_ratio), bias, dropout, activation)

    def forward(self, x, mask=None, is_causal=False, memory=None, memory_mask=None, cache=None, layer=0) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, is_causal, cache=cache, layer=layer)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_cross(x), memory_mask, memory=memory, cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


class Stack(nn.Module):
    """`depth` blocks and a final LayerNorm: the encoder, or the decoder (with `cross`).

    grad_checkpoint: while training with gradients, keep only each block's input and recompute
    its activations in the backward pass (about a third more compute, activation memory of one
    block instead of `depth`); gradients are the same, dropout included (the RNG state is replayed).
    """

    def __init__(self, depth: int, dim: int, num_heads: int, norm_eps: float = 1e-5, bias: bool = True, final_norm: bool = True,
                 grad_checkpoint: bool = False, **block_kw):  # fmt: skip
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, norm_eps=norm_eps, bias=bias, **block_kw) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim, eps=norm_eps, bias=bias) if final_norm else nn.Identity()
        self.grad_checkpoint = grad_checkpoint

    def forward(self, x, mask=None, is_causal=False, memory=None, memory_mask=None, cache: KVCache | None = None) -> Tensor:
        recompute = self.grad_checkpoint and self.training and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, mask, is_causal, memory, memory_mask, None, i, use_reentrant=False)
            else:
                x = block(x, mask, is_causal, memory, memory_mask, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.ln_f(x)
