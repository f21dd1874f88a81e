"""Conditioning embeddings: sinusoidal noise-level features, a time-embedding MLP, class labels."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["timestep_embedding", "TimeEmbedding", "LabelEmbedding", "noise_input", "NOISE_EMBEDDING_SCALE"]

# The noise-embedding scale of new runs' networks (`TimeEmbedding`, `runs.normalise`): c in 0 .. 1000 enters the
# sinusoids as 0 .. 20, so the fastest feature turns once per 12.6 units of log SNR. Moons MLPs (two seeds,
# 3000 steps), scale 1 -> 0.02: auto's RMS distance to the network's own PF-ODE map 0.113 / 0.030 / 0.026 ->
# 0.053 / 0.0051 / 0.0020 at 10 / 20 / 30 calls, the adaptive map's calls 666 -> 162, the map's samples as good
# (SW2 to the data 0.0395 -> 0.0389; benchmarks/results/noise_embedding.md). The demo's digits U-Net with it:
# 88.9-92.5 % of samples confidently classified in nine runs (scale 1: 88.8-90.5 % in four) and 225 instead of
# 549 adaptive map calls; auto at 20 calls is as close to its map as before on three of five such nets, farther
# on two (docs/samplers.md, "On trained networks").
# Half the sinusoids are then nearly constant over 0 .. 20; max_period was left as it was.
NOISE_EMBEDDING_SCALE = 0.02


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
    """sinusoidal(dim) of scale x c -> Linear -> SiLU -> Linear: (N,) -> (N, emb_dim), emb_dim = 4 dim by default.

    scale: how fast the features turn with the noise level c (`denoiser.noise_level_input`, 0 .. 1000). With
    scale 1 (DDPM's choice for its timestep) the fastest feature turns once per 6.3 units of c, a quarter of a
    unit of log SNR, and a trained network's output wobbles at that period in the noise level: few-step samplers
    then land far from the network's own PF-ODE map. `NOISE_EMBEDDING_SCALE` is what new runs get."""

    def __init__(self, dim: int, emb_dim: int | None = None, max_period: float = 10000.0, scale: float = 1.0):
        super().__init__()
        emb_dim = emb_dim or 4 * dim
        self.dim, self.emb_dim, self.max_period, self.scale = dim, emb_dim, max_period, float(scale)
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(c * self.scale, self.dim, self.max_period).to(self.mlp[0].weight.dtype))


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
