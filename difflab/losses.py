"""Training objectives. The trainer calls `loss(net, x0, labels, generator)` and knows
nothing else of the process it drives.

L_simple (seed 004, eq. 14):  E_{t, x_0, eps} || eps - eps_theta(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t) ||^2
with t uniform on 1..T. With parameterization "x0" or "v" the same expectation is taken
of the squared error on that target instead.
"""
from __future__ import annotations

import torch

from . import gaussian as G
from .denoiser import noise_level_input
from .schedules import Schedule

__all__ = ["DiffusionLoss"]


class DiffusionLoss:
    """Denoising loss of a Gaussian diffusion on a discrete schedule.

    Args:
        schedule: the forward process.
        parameterization: the network's target, "eps" (L_simple), "x0" or "v".
        p_uncond: for conditional nets, the probability a label is replaced by the null label (-1).
    """

    def __init__(self, schedule: Schedule, parameterization: str = "eps", p_uncond: float = 0.0):
        self.schedule = schedule
        self.parameterization = parameterization
        self.p_uncond = p_uncond
        self._alpha_bars = schedule.alpha_bars  # float64 (T,)

    def __call__(self, net, x0: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator):
        """Scalar loss for a batch x0 (N, ...); labels (N,) int64 or None."""
        n, dev = x0.shape[0], x0.device
        t = torch.randint(1, self.schedule.T + 1, (n,), generator=generator, device=dev)
        ab = self._alpha_bars.to(dev)[t - 1]
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        x_t = G.q_sample(x0, ab, eps)
        if labels is not None and self.p_uncond > 0:
            drop = torch.rand(n, generator=generator, device=dev) < self.p_uncond
            labels = torch.where(drop, torch.full_like(labels, -1), labels)
        c = noise_level_input(ab)
        out = net(x_t, c) if labels is None else net(x_t, c, labels)
        if self.parameterization == "eps":
            target = eps
        elif self.parameterization == "x0":
            target = x0
        else:
            target = G.v_from_eps_x0(eps, x0, ab)
        return (out.float() - target).pow(2).mean()
