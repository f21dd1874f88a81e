"""A residual MLP for vector data, conditioned on the noise level (and optionally a class label)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import LabelEmbedding, TimeEmbedding, noise_input

__all__ = ["MLP"]


class _Block(nn.Module):
    """h + Linear(dropout(SiLU(Linear(SiLU(LN(h))) + Linear(emb)))): (N, hidden), (N, emb) -> (N, hidden)."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.dropout(F.silu(z)))


class MLP(nn.Module):
    """Residual MLP: forward(x (N, dim), c (N,) float noise level, y (N,) int64 | None) -> (N, out_dim).

    Input Linear, `depth` residual blocks (LayerNorm (or none) -> SiLU -> Linear, + per-block Linear of the
    time (+ label) embedding, SiLU -> Linear), then LayerNorm -> SiLU -> Linear with a small normal init.
    If num_classes is set, y=None or -1 means the null label. `MLP(**net.config)` rebuilds it.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int | None = None,
                 dropout: float = 0.0, out_dim: int | None = None, norm: bool = True):
        super().__init__()
        out_dim = out_dim or dim
        self.config = dict(dim=dim, hidden=hidden, depth=depth, num_classes=num_classes, dropout=dropout,
                           out_dim=out_dim, norm=norm)
        self.dim, self.out_dim, self.num_classes = dim, out_dim, num_classes
        self.time_embed = TimeEmbedding(hidden, hidden)
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden, dropout, norm) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.output = nn.Linear(hidden, out_dim)
        nn.init.normal_(self.output.weight, std=0.1 / math.sqrt(hidden))
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (N, {self.dim}), got {tuple(x.shape)}")
        n = x.shape[0]
        emb = self.time_embed(noise_input(c, n, x.device))
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, n)
        emb = F.silu(emb)
        h = self.input(x.to(self.input.weight.dtype))
        for block in self.blocks:
            h = block(h, emb)
        return self.output(F.silu(self.out_norm(h)))
