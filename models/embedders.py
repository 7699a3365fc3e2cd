"""Embedders: a TokenBatch → token vectors + learned position vectors.

Built from a tokenizer's declarations: `nn.Embedding` for ids, `nn.Linear` for values, and a
learned position table of `max_positions` rows per modality. The type table is shared by all
modalities and lives in the model (transformer.py), so two modalities never share a type row.

Dimension legend: B batch, N tokens, D value width, C model width.
"""

from __future__ import annotations

from torch import Tensor, nn

from tokenizers_mm import TokenBatch


class TokenEmbedder(nn.Module):
    """ids (B, N) or values (B, N, D) → (B, N, C), plus the position table."""

    def __init__(self, dim: int, max_positions: int, vocab_size: int | None = None, value_dim: int | None = None, name: str = ""):
        super().__init__()
        if (vocab_size is None) == (value_dim is None):
            raise ValueError(f"embedder {name!r}: give exactly one of vocab_size and value_dim")
        self.name = name
        self.tok = nn.Embedding(vocab_size, dim) if vocab_size is not None else nn.Linear(value_dim, dim)
        self.pos = nn.Embedding(max_positions, dim)

    def forward(self, batch: TokenBatch) -> Tensor:
        x = self.tok(batch.ids if batch.ids is not None else batch.values.to(self.tok.weight.dtype))
        return x + self.pos(batch.positions)


def build_embedder(kind: str, dim: int, max_positions: int, vocab_size=None, value_dim=None, name="") -> nn.Module:
    """The embedder a modality's config asks for; "auto" picks by ids vs values."""
    if kind == "auto":
        return TokenEmbedder(dim, max_positions, vocab_size, value_dim, name)
    raise ValueError(f"modality {name!r}: unknown embedder {kind!r}; known: auto")
