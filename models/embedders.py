"""Embedders: a TokenBatch → token vectors + learned position vectors.

Built from a tokenizer's declarations: `nn.Embedding` for ids, `nn.Linear` for values, and a
learned position table of `max_positions` rows per modality. The type table is shared by all
modalities and lives in the model (transformer.py), so two modalities never share a type row.

Dimension legend: B batch, N tokens, D value width, C model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenizers_mm import TokenBatch


class TokenEmbedder(nn.Module):
    """ids (B, N) or values (B, N, D) → (B, N, C), plus the position table.

    Tokens of a `learned_types` type (ViT's CLS) take one learned vector instead of their
    embedding. On values, the linear layer equals timm's convolutional patch embedding when the
    tokenizer flattens each patch as (C, p, p).
    """

    def __init__(self, dim: int, max_positions: int, vocab_size: int | None = None, value_dim: int | None = None,
                 learned_types: tuple[int, ...] = (), name: str = ""):  # fmt: skip
        super().__init__()
        if (vocab_size is None) == (value_dim is None):
            raise ValueError(f"embedder {name!r}: give exactly one of vocab_size and value_dim")
        self.name = name
        self.tok = nn.Embedding(vocab_size, dim) if vocab_size is not None else nn.Linear(value_dim, dim)
        self.pos = nn.Embedding(max_positions, dim)
        self.learned_types = tuple(learned_types)
        self.learned = nn.Parameter(torch.zeros(len(learned_types), dim)) if learned_types else None

    def forward(self, batch: TokenBatch) -> Tensor:
        x = self.tok(batch.ids if batch.ids is not None else batch.values.to(self.tok.weight.dtype))
        for k, t in enumerate(self.learned_types):
            x = torch.where((batch.types == t)[..., None], self.learned[k].to(x.dtype), x)  # (B, N, C)
        return x + self.pos(shared_rows(batch.positions))


class TypedEmbedder(nn.Module):
    """values (B, N, D) → (B, N, C) with one linear layer per token type, each reading the first
    `type_value_dims[t]` columns; plus the position table, then an optional LayerNorm.

    The Decision Transformer's embedding (Hugging Face `DecisionTransformerModel`): return, state
    and action tokens each have their own linear layer, the timestep table is the position table,
    and `embed_ln` normalises the sum.
    """

    def __init__(self, dim: int, max_positions: int, type_value_dims: list[int], norm: bool = False, norm_eps: float = 1e-5, name: str = ""):
        super().__init__()
        self.name = name
        self.type_value_dims = list(type_value_dims)
        self.tok = nn.ModuleList(nn.Linear(d, dim) for d in type_value_dims)
        self.pos = nn.Embedding(max_positions, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()

    def forward(self, batch: TokenBatch) -> Tensor:
        # every type's linear layer in one matmul: a token's first d_t values go in its type's columns (zeros in the
        # others') and a one-hot of its type picks its type's bias; the weights side by side, (C, Σ d_t + T)
        v = batch.values.to(self.tok[0].weight.dtype)
        types = shared_rows(batch.types)  # (1|B, N)
        types = torch.where(types < len(self.tok), types, 0)  # a type without a layer of its own reads type 0's (as ever)
        onehot = (types[..., None] == torch.arange(len(self.tok), device=types.device)).to(v.dtype)  # (1|B, N, T)
        columns = [v[..., :d] * onehot[..., t : t + 1] for t, d in enumerate(self.type_value_dims)]  # (B, N, d_t) each
        weight = torch.cat([lin.weight for lin in self.tok] + [torch.stack([lin.bias for lin in self.tok], 1)], 1)
        x = F.linear(torch.cat([*columns, onehot.expand(*v.shape[:2], -1)], -1), weight)  # (B, N, Σ d_t + T) -> (B, N, C)
        return self.norm(x + self.pos(shared_rows(batch.positions)))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's sinusoidal position table (length, channels): sines then cosines."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class WhisperStem(nn.Module):
    """Whisper's convolutional stem: mel frames (B, F, n_mels) → (B, F/2, C).

    Conv1d(n_mels, C, 3) + GELU, Conv1d(C, C, 3, stride 2) + GELU, then a position table
    initialised with Whisper's sinusoids (learned here; an import copies the reference's). It halves
    the sequence: `stride = 2` tells the model to take every second mask / type entry.
    """

    stride = 2

    def __init__(self, dim: int, n_mels: int, max_positions: int, name: str = ""):
        super().__init__()
        self.name = name
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.pos = nn.Embedding((max_positions + 1) // 2, dim)
        self.reset_table()

    def reset_table(self) -> None:
        """Whisper's sinusoids into the position table (the model calls it again after its generic init)."""
        with torch.no_grad():
            self.pos.weight.copy_(sinusoids(*self.pos.weight.shape))

    def forward_flops(self, frames: int, tokens: int) -> float:
        """Forward FLOPs over `frames` mel frames, `tokens` of them kept (models/flops.py)."""
        return 2 * (sum(p.numel() for p in self.conv1.parameters()) * frames + sum(p.numel() for p in self.conv2.parameters()) * tokens)

    def forward(self, batch: TokenBatch) -> Tensor:
        if batch.segments is not None and (batch.packed_stride or 1) % self.stride:  # (read where the batch was made: no sync)
            raise ValueError(f"{batch.modality}: packed rows for a stem of stride {self.stride} need each utterance to start at a multiple "
                             f"of {self.stride} with padding after it: pack(..., stride={self.stride}) or pack_examples(stride=...)")  # fmt: skip
        x = batch.values.to(self.conv1.weight.dtype).transpose(1, 2)  # (B, F, n_mels) -> (B, n_mels, F)
        if batch.all_real:
            x = F.gelu(self.conv2(F.gelu(self.conv1(x))))  # (B, C, F/2)
        else:  # padding (and the gaps between packed utterances) reads as zeros, as past the end of one utterance alone
            keep = batch.mask[:, None, :].to(x.dtype)
            x = F.gelu(self.conv2(F.gelu(self.conv1(x * keep)) * keep))
        positions = shared_rows(batch.positions)[:, ::2] // 2  # frame index -> stem output index
        return x.transpose(1, 2) + self.pos(positions)  # (B, F/2, C)


def shared_rows(index: Tensor) -> Tensor:
    """(B, N) indices that are the same in every row (an expanded tensor) → (1, N), so the
    lookup runs once and broadcasts, and its backward sums over the batch instead of scattering."""
    return index[:1] if index.dim() == 2 and index.stride(0) == 0 else index


def resample_grid(table: Tensor, old_grid, new_grid, prefix: int = 0) -> Tensor:
    """Resize a (prefix + gh·gw, C) position table to a new patch grid: bicubic, antialiased,
    prefix rows kept (as timm's `resample_abs_pos_embed`)."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    C = table.shape[1]
    grid = table[prefix:].reshape(1, old_grid[0], old_grid[1], C).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, C).to(table.dtype)  # (gh'·gw', C)
    return torch.cat([table[:prefix], grid])


def build_embedder(kind: str, dim: int, max_positions: int, vocab_size=None, value_dim=None, learned_types=(), name="",
                   type_value_dims=None, embed_norm: bool = False) -> nn.Module:  # fmt: skip
    """The embedder a modality's config asks for; "auto" picks by ids vs values (one linear layer per
    token type when the modality declares type_value_dims)."""
    if kind == "auto":
        if type_value_dims is not None:
            return TypedEmbedder(dim, max_positions, type_value_dims, embed_norm, name=name)
        if embed_norm:
            raise ValueError(f"modality {name!r}: embed_norm is supported with type_value_dims only")
        return TokenEmbedder(dim, max_positions, vocab_size, value_dim, learned_types, name)
    if kind == "whisper_conv":
        if value_dim is None:
            raise ValueError(f"modality {name!r}: the whisper_conv embedder reads mel frames (values), not ids")
        return WhisperStem(dim, value_dim, max_positions, name)
    raise ValueError(f"modality {name!r}: unknown embedder {kind!r}; known: auto, whisper_conv")
