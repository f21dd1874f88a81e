"""Conditioning embeddings: sinusoidal noise-level features, a time-embedding MLP, class labels."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["timestep_embedding", "TimeEmbedding", "LabelEmbedding", "noise_input"]


def timestep_embedding(c: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a scalar ("Attention is all you need", DDPM).

    (N,) float -> (N, dim) float32: [sin(c w_0), ..., sin(c w_{h-1}), cos(c w_0), ..., cos(c w_{h-1})]
    with h = dim // 2 and w_i = max_period ** (-i / h); a zero column is appended when dim is odd.
    """
    c = torch.as_tensor(c).reshape(-1).float()
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=c.device)
    freqs = torch.exp(i * (-math.log(max_period) / half))
    args = c[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def noise_input(c, n: int, device) -> torch.Tensor:
    """The noise-level input as a (n,) float32 tensor on device; a scalar or (1,) input is broadcast."""
    c = torch.as_tensor(c, device=device).reshape(-1).float()
    if c.shape[0] != n:
        if c.shape[0] != 1:
            raise ValueError(f"c must have shape ({n},) to match the batch, got {tuple(c.shape)}")
        c = c.expand(n)
    return c


class TimeEmbedding(nn.Module):
    """sinusoidal(dim) -> Linear -> SiLU -> Linear: (N,) -> (N, emb_dim), emb_dim = 4 dim by default."""

    def __init__(self, dim: int, emb_dim: int | None = None, max_period: float = 10000.0):
        super().__init__()
        emb_dim = emb_dim or 4 * dim
        self.dim, self.emb_dim, self.max_period = dim, emb_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(c, self.dim, self.max_period).to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class labels (N,) int64 -> (N, dim). Row num_classes is the NULL label (classifier-free guidance);
    label -1 and y=None also map to it."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def null_labels(self, n: int, device=None) -> torch.Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=device)

    def forward(self, y: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
        if y is None:
            if n is None:
                raise ValueError("LabelEmbedding needs the batch size n when y is None")
            y = self.null_labels(n, self.embedding.weight.device)
        else:
            y = torch.as_tensor(y, device=self.embedding.weight.device).long().reshape(-1)
            if n is not None and y.shape[0] != n:
                raise ValueError(f"y must have shape ({n},) to match the batch, got {tuple(y.shape)}")
            # (checked on CPU only: on an accelerator the check would cost a device sync every call)
            if y.device.type == "cpu" and ((y < -1) | (y > self.num_classes)).any():
                raise ValueError(f"labels must be in [0, {self.num_classes}) or -1 (null), "
                                 f"got values in [{int(y.min())}, {int(y.max())}]")
            y = torch.where(y < 0, self.num_classes, y)
        return self.embedding(y)
