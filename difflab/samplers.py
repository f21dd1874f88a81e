"""Samplers: each a short function (denoiser, x_T, time grid, generator) -> x_0.

`sample(denoiser, noise, sampler=NAME, nfe=K, generator=g, **options)` is the one entry
point; `NAMES` lists what exists. A time grid is a descending float64 tensor of
alpha_bar values taken from the denoiser's schedule, ending at alpha_bar = 1 (clean data).
`nfe` is the number of denoiser calls, whatever the sampler's order.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import gaussian as G
from .denoiser import Denoiser

__all__ = ["sample", "NAMES", "timesteps", "alpha_bar_grid", "ancestral", "ddim"]


def timesteps(T: int, nfe: int) -> torch.Tensor:
    """`nfe` distinct step indices in 1..T, descending, evenly spaced, always including T.

    (nfe == T gives T, T-1, ..., 1 with no repeats: a classic off-by-one of peers.)"""
    if not 1 <= nfe <= T:
        raise ValueError(f"nfe must be between 1 and T={T}, got {nfe}")
    idx = torch.linspace(T, 1, nfe, dtype=torch.float64).round().long()
    return torch.unique(idx, sorted=True).flip(0)


def alpha_bar_grid(denoiser: Denoiser, nfe: int) -> torch.Tensor:
    """(nfe + 1,) float64: alpha_bar at the chosen steps, then 1.0 (x_0)."""
    ab = denoiser.schedule.alpha_bars
    steps = timesteps(len(ab), nfe)
    return torch.cat([ab[steps - 1], torch.ones(1, dtype=torch.float64)])


def _noise_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ancestral(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None,
              variance: str = "small", progress: Callable | None = None, trajectory: list | None = None):
    """DDPM ancestral sampling (seed 001 Algorithm 2), on any sub-grid of the schedule (respacing).

    Each step t -> s draws x_s ~ N(mu~(x_t, x0_hat), sigma^2 I), with
    sigma^2 = beta~ = (1 - ab_s)/(1 - ab_t) (1 - ab_t/ab_s)  ("small"), or
    sigma^2 = beta  = 1 - ab_t/ab_s                          ("large").
    No noise is added on the last step (to x_0).
    x: (N, ...) noise at grid[0]; grid: descending alpha_bars ending with 1.
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    n = x.shape[0]
    for i in range(len(grid) - 1):
        ab_t, ab_s = grid[i].expand(n), grid[i + 1].expand(n)
        x0, _ = denoiser.predict(x, ab_t)
        mean, var = G.posterior_mean_var(x0, x, ab_t, ab_s)
        if i < len(grid) - 2:
            if variance == "large":
                var = G.expand(1 - ab_t / ab_s, x)
            x = mean + var.sqrt() * _noise_like(x, generator)
        else:
            x = mean
        if trajectory is not None:
            trajectory.append(x)
        if progress:
            progress()
    return x


def ddim(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, eta: float = 0.0,
         progress: Callable | None = None, trajectory: list | None = None):
    """DDIM (Song et al. 2021), seed 002: x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z,
    sigma^2 = eta^2 beta~(t -> s). eta = 0 is deterministic; eta = 1 is ancestral with beta~."""
    n = x.shape[0]
    for i in range(len(grid) - 1):
        ab_t, ab_s = grid[i].expand(n), grid[i + 1].expand(n)
        x0, eps = denoiser.predict(x, ab_t)
        var = eta ** 2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
        x = G.expand(ab_s.sqrt(), x) * x0 + G.expand((1 - ab_s - var).clamp(min=0).sqrt(), x) * eps
        if eta > 0 and i < len(grid) - 2:
            x = x + G.expand(var.sqrt(), x) * _noise_like(x, generator)
        if trajectory is not None:
            trajectory.append(x)
        if progress:
            progress()
    return x


NAMES: dict[str, Callable] = {"ancestral": ancestral, "ddim": ddim}


@torch.inference_mode()
def sample(denoiser: Denoiser, noise: torch.Tensor, sampler: str = "ancestral", nfe: int | None = None,
           generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """x_0 (N, ...) from `noise` (N, ...), a standard normal draw of the prior.

    sampler: one of NAMES; nfe: denoiser calls (default: the schedule's T).
    options go to the sampler (variance=, eta=, progress=, trajectory=)."""
    if sampler not in NAMES:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(NAMES)}")
    nfe = denoiser.schedule.T if nfe is None else int(nfe)
    grid = alpha_bar_grid(denoiser, nfe)
    x = noise * G.expand(torch.ones(1, dtype=torch.float64), noise)  # a copy; noise is N(0, I) at ab_T ~ 0
    return NAMES[sampler](denoiser, x, grid, generator=generator, **options)
