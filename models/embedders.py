"""Embedders: a TokenBatch → token vectors + learned position vectors.

Built from a tokenizer's declarations: `nn.Embedding` for ids, `nn.Linear` for values, and a
learned position table of `max_positions` rows per modality. The type table is shared by all
modalities and lives in the model (transformer.py), so two modalities never share a type row.

Dimension legend: B batch, N tokens, D value width, C model width.
"""

from __future__ import annotations

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


def build_embedder(kind: str, dim: int, max_positions: int, vocab_size=None, value_dim=None, learned_types=(), name="") -> nn.Module:
    """The embedder a modality's config asks for; "auto" picks by ids vs values."""
    if kind == "auto":
        return TokenEmbedder(dim, max_positions, vocab_size, value_dim, learned_types, name)
    raise ValueError(f"modality {name!r}: unknown embedder {kind!r}; known: auto")
