"""Multi-head attention (self and cross), the one mask builder, and an explicit KV cache.

Attention runs through `F.scaled_dot_product_attention` (fused kernels) or, with `flash=False`,
a readable manual path that tests hold equal to it (nanoGPT's `self.flash`). The mask builder
serves every connectivity pattern: full (encoder), causal (decoder), key padding, packed
sequences (block-diagonal by segment id), and a query offset for cached generation.

Dimension legend:
  B batch, T query tokens, S key tokens, C model width, H heads, hs head size (C // H)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def build_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    key_mask: Tensor | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    q_offset: int = 0,
    bidirectional: Tensor | None = None,
    shared_keys: Tensor | None = None,
    device=None,
) -> tuple[Tensor | None, bool]:
    """One mask for every pattern. Returns (mask, is_causal) for the attention call.

    key_mask: (B, S) bool, True on real keys. q_segments (B, T) / k_segments (B, S): packed
    sequence ids; a query sees only keys of its own segment. q_offset: index of the first query
    among the keys (cached generation). bidirectional (B|1, S) bool, with q_len == k_len: tokens
    that see each other in both directions despite `causal` (a prefix LM's prefix; segments still
    apply). shared_keys (B, S) bool, with segments: keys every query may see whatever its segment
    (an encoder-decoder's null memory token). mask is (B|1, 1, T, S) bool, True = may attend; it is None
    when nothing needs masking, and is_causal=True lets SDPA use its causal kernel.
    """
    if key_mask is None and q_segments is None and bidirectional is None and q_offset == 0 and (q_len == k_len or not causal):
        return None, causal
    allowed = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        q_idx = torch.arange(q_len, device=device)[:, None] + q_offset
        allowed = allowed & (torch.arange(k_len, device=device)[None, :] <= q_idx)  # (T, S)
        if bidirectional is not None:
            if q_len != k_len or q_offset:
                raise ValueError("a bidirectional prefix needs the whole sequence at once (no cached offset)")
            allowed = allowed | (bidirectional[:, None, :, None] & bidirectional[:, None, None, :])  # (B|1, 1, T, S)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]  # (B, 1, 1, S)
    if q_segments is not None:
        same = q_segments[:, None, :, None] == k_segments[:, None, None, :]  # (B, 1, T, S)
        allowed = allowed & (same if shared_keys is None else same | shared_keys[:, None, None, :])
    # note: a query with no visible key (a padding row) would give NaN; let it see every key
    # instead: its output is garbage but finite, and padding never reaches a loss.
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return allowed, False


class KVCache:
    """Keys and values of past tokens, one preallocated buffer per layer: (B, H, S_max, hs).

    Passed explicitly through the model (no hooks). `length` counts the cached tokens; a forward
    pass writes its T new tokens at [length, length + T) in every layer, then calls `advance(T)`.
    Cross-attention keys/values of the encoder output are computed once and kept in `cross`.
    """

    def __init__(self, num_layers: int, batch: int, num_heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        shape = (batch, num_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        self.max_len = max_len
        self.length = 0
        self.key_mask: Tensor | None = None  # (B, max_len) bool, True on real keys, once a padded prefix was cached

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, H, T, hs) new keys/values; return all cached ones (B, H, length + T, hs)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} tokens exceed its capacity of {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int):
        self.length += n

    def reorder(self, index: Tensor, cross: bool = True):
        """Keep the rows `index`, one per row (beam search: each surviving beam takes its parent's
        past); only the cached positions are copied. cross=False leaves the cross-attention keys/values as they are:
        right when every row moves to one with the same memory (the beams of one sample)."""
        for i in range(len(self.k)):
            for buffer in (self.k[i], self.v[i]):
                buffer[:, :, : self.length] = buffer[:, :, : self.length].index_select(0, index)
            if cross and self.cross[i] is not None:
                self.cross[i] = tuple(t.index_select(0, index) for t in self.cross[i])
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, index)


class Attention(nn.Module):
    """Multi-head attention. Self-attention uses a fused qkv projection (as GPT-2 and timm);
    cross-attention projects queries from x and keys/values from the encoder memory."""

    def __init__(self, dim: int, num_heads: int, bias: bool = True, dropout: float = 0.0, cross: bool = False, flash: bool = True):
        super().__init__()
        assert dim % num_heads == 0, f"dim={dim} must be divisible by num_heads={num_heads}"
        self.num_heads, self.head_dim, self.cross, self.flash = num_heads, dim // num_heads, cross, flash
        if cross:
            self.q = nn.Linear(dim, dim, bias=bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, H, T, hs)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        memory: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """x: (B, T, C); memory: (B, S, C) for cross-attention; returns (B, T, C)."""
        B, T, C = x.shape
        if self.cross:
            q = self._heads(self.q(x))
            if cache is not None and cache.cross[layer] is not None:
                k, v = cache.cross[layer]  # the encoder output does not change while decoding
            else:
                k, v = (self._heads(t) for t in self.kv(memory).split(C, dim=2))
                if cache is not None:
                    cache.cross[layer] = (k, v)
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).split(C, dim=2))
            if cache is not None:
                k, v = cache.update(layer, k, v)
        p = self.dropout if self.training else 0.0
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        else:
            y = self._manual(q, k, v, mask, is_causal, p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, hs) -> (B, T, C)
        return self.resid_drop(self.proj(y))

    def _manual(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, p: float) -> Tensor:
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, hs) @ (B, H, hs, S) -> (B, H, T, S)
        if is_causal:
            T, S = att.shape[-2:]
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        att = F.dropout(att.softmax(dim=-1), p=p)
        return att @ v  # (B, H, T, S) @ (B, H, S, hs) -> (B, H, T, hs)
