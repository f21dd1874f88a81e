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

__all__ = ["DiffusionLoss", "noised_forward", "OBJECTIVES", "build_objective"]


def noised_forward(net, x0: torch.Tensor, ab: torch.Tensor, labels, p_uncond: float, generator: torch.Generator):
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (seed 004 eq. 4), labels dropped to the null label (-1) with
    probability p_uncond, and the network's output on them. ab: (N,) float64. Returns (x_t, eps, out)."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = G.q_sample(x0, ab, eps)
    if labels is not None and p_uncond > 0:
        drop = torch.rand(x0.shape[0], generator=generator, device=x0.device) < p_uncond
        labels = torch.where(drop, torch.full_like(labels, -1), labels)
    c = noise_level_input(ab)
    return x_t, eps, (net(x_t, c) if labels is None else net(x_t, c, labels))


class DiffusionLoss(torch.nn.Module):
    """Denoising loss of a Gaussian diffusion on a discrete schedule.

    Args:
        schedule: the forward process.
        parameterization: the network's target, "eps" (L_simple), "x0" or "v".
        p_uncond: for conditional nets, the probability a label is replaced by the null label (-1).
    """

    def __init__(self, schedule: Schedule, parameterization: str = "eps", p_uncond: float = 0.0):
        super().__init__()
        self.schedule = schedule
        self.parameterization = parameterization
        self.p_uncond = p_uncond
        self._alpha_bars = schedule.alpha_bars  # float64 (T,)

    def forward(self, net, x0: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator):
        """Scalar loss for a batch x0 (N, ...); labels (N,) int64 or None."""
        n, dev = x0.shape[0], x0.device
        t = torch.randint(1, self.schedule.T + 1, (n,), generator=generator, device=dev)
        ab = self._alpha_bars.to(dev)[t - 1]
        x_t, eps, out = noised_forward(net, x0, ab, labels, self.p_uncond, generator)
        if self.parameterization == "eps":
            target = eps
        elif self.parameterization == "x0":
            target = x0
        else:
            target = G.v_from_eps_x0(eps, x0, ab)
        return (out.float() - target).pow(2).mean()


def _gaussian(cfg, schedule: Schedule) -> torch.nn.Module:
    if (getattr(cfg, "loss", "simple") != "simple" or getattr(cfg, "variance_type", "fixed") != "fixed"
            or getattr(cfg, "importance_sampling", False)):  # issue 4: L_vlb, hybrid, learned variance
        from .vlb_loss import GaussianVLBLoss
        return GaussianVLBLoss(schedule, cfg.parameterization, cfg.loss, cfg.variance_type, cfg.variance,
                               cfg.data_levels if cfg.data_kind == "image" else None, cfg.vlb_weight,
                               cfg.importance_sampling, cfg.p_uncond if cfg.conditional else 0.0)
    return DiffusionLoss(schedule, cfg.parameterization, cfg.p_uncond if cfg.conditional else 0.0)


# cfg.model -> builder(cfg, schedule) -> objective, an nn.Module called as objective(net, x0, labels, generator)
# returning a scalar loss. Its parameters are trained with the network's (e.g. a learned schedule) and its
# state_dict (parameters and buffers, e.g. a loss history) is saved in the checkpoint as "objective.*".
OBJECTIVES = {"gaussian": _gaussian}


def _family(cfg, schedule: Schedule) -> torch.nn.Module:
    """D3PM (hybrid loss), VAE and HVAE (negative ELBO): difflab.families; they ignore the Gaussian schedule."""
    from .families import build_objective as family_objective
    return family_objective(cfg)


OBJECTIVES.update({"d3pm": _family, "vae": _family, "hvae": _family})


def _vdm(cfg, schedule: Schedule) -> torch.nn.Module:
    """VDM: the learned schedule and the continuous-time bound (difflab.vdm, issue 4); ignores `schedule`."""
    from .vdm import VDMLoss
    return VDMLoss(cfg.data_levels if cfg.data_kind == "image" else None)


def _priorgrad(cfg, schedule: Schedule) -> torch.nn.Module:
    """PriorGrad: the data-dependent prior N(mu, diag sigma^2) (difflab.priorgrad, issue 4)."""
    from .priorgrad import PriorGradLoss
    return PriorGradLoss(schedule, cfg)


OBJECTIVES.update({"vdm": _vdm, "priorgrad": _priorgrad})


def build_objective(cfg, schedule: Schedule) -> torch.nn.Module:
    if cfg.model not in OBJECTIVES:
        from .errors import UserError
        raise UserError(f"unknown model '{cfg.model}'; choose one of {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[cfg.model](cfg, schedule)
