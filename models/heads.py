"""Output heads that read the trunk's final hidden states.

- `LMHead`: next-token logits over a modality's vocabulary; its weight can be tied to that
  modality's token embedding (GPT-2, nanoGPT).
- `PooledHead`: one vector per sample, from the modality's first token ("cls", as ViT) or the
  mean over its real tokens ("mean"), then a linear layer: classification or regression.
- `TokenHead`: a linear layer on every token (tanh optional): per-token classification or
  regression, e.g. the Decision Transformer's action prediction read at each state token.

Dimension legend: B batch, N tokens, C model width, V vocabulary, K outputs.
"""

from __future__ import annotations

from torch import Tensor, nn


class LMHead(nn.Module):
    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.proj(h)  # (B, N, C) -> (B, N, V)


class PooledHead(nn.Module):
    def __init__(self, dim: int, num_outputs: int, pool: str = "cls", norm: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()  # timm's fc_norm
        self.proj = nn.Linear(dim, num_outputs)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.pool == "cls":
            pooled = h[:, 0]  # (B, N, C) -> (B, C)
        else:
            m = mask[..., None].to(h.dtype)  # (B, N, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # masked mean: (B, N, C) -> (B, C)
        return self.proj(self.norm(pooled))  # (B, C) -> (B, K)


class TokenHead(nn.Module):
    def __init__(self, dim: int, num_outputs: int, tanh: bool = False):
        super().__init__()
        self.proj = nn.Linear(dim, num_outputs)
        self.act = nn.Tanh() if tanh else nn.Identity()

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.act(self.proj(h))  # (B, N, C) -> (B, N, K)
