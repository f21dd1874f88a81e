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

    skip=True adds a noise-conditioned linear path to the first `dim` outputs:
        out[:, :dim] = F(x, c, y)[:, :dim] + g(c, y) * x,   g = Linear(embedding), zero at initialisation.
    The output LayerNorm bounds |F|, so without it an eps-prediction saturates for inputs beyond the
    training range (|x| > ~3.5 at high noise, where the target eps ~ x): x0_hat = (x - sqrt(1 - ab) eps_hat)
    / sqrt(ab) then grows like sigma and the PF-ODE throws those samples far out. With g ~ 1 there the net
    extrapolates linearly, as the exact eps of any bounded data does (benchmarks/results/mlp_skip.md). Off by
    default so that runs saved before it rebuild unchanged; every new vector run switches it on unless its
    net_config says skip = false (difflab.runs.normalise).

    emb_scale: the noise level enters the sinusoidal embedding as emb_scale x c (`TimeEmbedding`); 1 keeps runs
    saved before it as they were, new runs get `NOISE_EMBEDDING_SCALE` (difflab.runs.normalise).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, num_classes: int | None = None,
                 dropout: float = 0.0, out_dim: int | None = None, norm: bool = True, skip: bool = False,
                 emb_scale: float = 1.0):
        super().__init__()
        out_dim = out_dim or dim
        if skip and out_dim < dim:
            raise ValueError(f"skip needs out_dim >= dim, got out_dim {out_dim} < dim {dim}")
        self.config = dict(dim=dim, hidden=hidden, depth=depth, num_classes=num_classes, dropout=dropout,
                           out_dim=out_dim, norm=norm)
        if skip:  # only when set, so that the configs of earlier runs stay as they were
            self.config["skip"] = True
        if emb_scale != 1.0:  # likewise (TimeEmbedding's scale; new runs: runs.normalise)
            self.config["emb_scale"] = float(emb_scale)
        self.dim, self.out_dim, self.num_classes = dim, out_dim, num_classes
        self.time_embed = TimeEmbedding(hidden, hidden, scale=emb_scale)
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden, dropout, norm) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.output = nn.Linear(hidden, out_dim)
        nn.init.normal_(self.output.weight, std=0.1 / math.sqrt(hidden))
        nn.init.zeros_(self.output.bias)
        self.skip_gain = None
        if skip:
            self.skip_gain = nn.Linear(hidden, dim)
            nn.init.zeros_(self.skip_gain.weight)
            nn.init.zeros_(self.skip_gain.bias)

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
        out = self.output(F.silu(self.out_norm(h)))
        if self.skip_gain is None:
            return out
        return out + F.pad(self.skip_gain(emb) * x.to(out.dtype), (0, self.out_dim - self.dim))
