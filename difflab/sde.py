"""The SDE view of Gaussian diffusion (seed 002, Song et al. 2021): VP, sub-VP and VE SDEs.

Every SDE here is built from one difflab schedule's continuous alpha_bar(t), t in [0, 1], and
shares the schedule's noise range, so that any `Denoiser` (trained on the discrete VP chain, or
wrapped with `Denoiser.from_eps`) provides its score:

    forward SDE        dx = f(x, t) dt + g(t) dw
    marginal           x_t = m(t) x_0 + s(t) z,   z ~ N(0, I)
    reverse-time SDE   dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar          (seed 002)
    probability flow   dx/dt = f(x, t) - 1/2 g(t)^2 grad log p_t(x)

    VP      f = -1/2 beta(t) x,  g^2 = beta(t),                m = sqrt(ab), s^2 = 1 - ab
    sub-VP  f = -1/2 beta(t) x,  g^2 = beta(t) (1 - ab(t)^2),  m = sqrt(ab), s   = 1 - ab
    VE      f = 0,               g^2 = d sigma^2 / dt,         m = 1,        s^2 = sigma^2 = (1 - ab) / ab
with beta(t) = -d log ab(t) / dt.

VP <-> VE <-> sub-VP: a marginal with the same signal-to-noise ratio m^2 / s^2 is the VP marginal at
ab_eq = SNR / (1 + SNR), rescaled: x_vp = c(t) x with c = sqrt(ab_eq) / m, so
    grad log p_t(x) = c(t) * score_vp(c(t) x, ab_eq(t)).
For VE this is x_vp = sqrt(ab) x_ve, sigma^2 = (1 - ab) / ab.

Time and coefficients are float64; tensors x keep their dtype.
"""
from __future__ import annotations

import math

import torch

from . import gaussian as G
from .denoiser import Denoiser
from .schedules import Schedule

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "by_name", "NAMES"]


def _f64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class SDE:
    """A forward SDE on continuous time t in [0, 1] built on `schedule.alpha_bar(t)`.

    Subclasses define `marginal(t) -> (m, s)` and `sde(x, t) -> (f, g)`; everything else (the
    VP-equivalent noise level, the score from a denoiser, the time range, the reverse SDE and the
    probability-flow ODE) follows.
    """

    name = "sde"

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    # ---- the schedule in continuous time -----------------------------------------------------
    def alpha_bar(self, t) -> torch.Tensor:
        """ab(t), float64, same shape as t."""
        return self.schedule.alpha_bar(_f64(t)).clamp(1e-300, 1.0)

    def beta(self, t) -> torch.Tensor:
        """beta(t) = -d log ab(t) / dt (central difference in float64; one-sided at the ends)."""
        t = _f64(t)
        h = 1e-6
        lo, hi = (t - h).clamp(0, 1), (t + h).clamp(0, 1)
        return -(self.alpha_bar(hi).log() - self.alpha_bar(lo).log()) / (hi - lo)

    # ---- to be defined by subclasses ---------------------------------------------------------
    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(t), s(t)) of x_t = m x_0 + s z, float64."""
        raise NotImplementedError

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) (N, ...) and diffusion g(t) (N,) float64; t: (N,) or scalar."""
        raise NotImplementedError

    # ---- derived ------------------------------------------------------------------------------
    def snr(self, t) -> torch.Tensor:
        m, s = self.marginal(t)
        return (m / s) ** 2

    def alpha_bar_eq(self, t) -> torch.Tensor:
        """The VP noise level with the same SNR: ab_eq = m^2 / (m^2 + s^2), float64."""
        m, s = self.marginal(t)
        return m * m / (m * m + s * s)

    def scale_to_vp(self, t) -> torch.Tensor:
        """c(t) = sqrt(ab_eq) / m: the VP-equivalent state is c x."""
        m, _ = self.marginal(t)
        return self.alpha_bar_eq(t).sqrt() / m

    def prior_std(self, t=1.0) -> torch.Tensor:
        """sqrt(m^2 + s^2): the std of x_t for unit-variance data; scales a N(0, I) draw to the prior.
        (VP: 1; VE: sqrt(1 + sigma^2), i.e. x_ve = x_vp / sqrt(ab).)"""
        m, s = self.marginal(t)
        return (m * m + s * s).sqrt()

    def score(self, denoiser: Denoiser, x: torch.Tensor, t) -> torch.Tensor:
        """grad_x log p_t(x) (N, ...) from a VP denoiser: c * score_vp(c x, ab_eq). t: scalar or (N,)."""
        t = _f64(t).reshape(-1).expand(x.shape[0])
        c = G.expand(self.scale_to_vp(t), x)
        return c * denoiser.score(c * x, self._snap(self.alpha_bar_eq(t)))

    def _snap(self, ab_eq: torch.Tensor) -> torch.Tensor:
        """ab_eq within 1e-9 (relative) of the schedule's ends is set to the end: the bisection of
        `t_of_alpha_bar_eq` must not step a grid level out of the denoiser's range by rounding. Levels
        genuinely outside the range (e.g. sub-VP at small t) are left alone."""
        ab = self.schedule.alpha_bars
        for end in (float(ab[0]), float(ab[-1])):
            ab_eq = torch.where((ab_eq - end).abs() <= 1e-9 * end, torch.full_like(ab_eq, end), ab_eq)
        return ab_eq

    def t_of_alpha_bar_eq(self, ab_eq) -> torch.Tensor:
        """Inverse of ab_eq(t) by bisection (ab_eq decreases in t), float64, shape of ab_eq."""
        target = _f64(ab_eq)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.alpha_bar_eq(mid) > target  # still less noisy than the target: go later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def t_range(self) -> tuple[float, float]:
        """(t_min, t_max) where ab_eq spans the schedule's [ab_1, ab_T] (the denoiser's noise range)."""
        ab = self.schedule.alpha_bars
        t_min = float(self.t_of_alpha_bar_eq(ab[0]))
        t_max = min(1.0, float(self.t_of_alpha_bar_eq(ab[-1])))
        return t_min, t_max

    def reverse_drift(self, denoiser: Denoiser, x: torch.Tensor, t, probability_flow: bool = False):
        """f - g^2 score (reverse SDE) or f - 1/2 g^2 score (probability flow), (N, ...)."""
        f, g = self.sde(x, t)
        w = 0.5 if probability_flow else 1.0
        return f - w * G.expand(g * g, x) * self.score(denoiser, x, t)

    def __repr__(self):
        return f"{type(self).__name__}({self.schedule.name}, T={self.schedule.T})"


class VPSDE(SDE):
    """Variance preserving: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw  (DDPM's continuous limit)."""

    name = "vp"

    def marginal(self, t):
        ab = self.alpha_bar(t)
        return ab.sqrt(), (1 - ab).sqrt()

    def sde(self, x, t):
        t = _f64(t).reshape(-1).expand(x.shape[0])
        b = self.beta(t)
        return -0.5 * G.expand(b, x) * x, b.sqrt()


class SubVPSDE(SDE):
    """sub-VP: dx = -1/2 beta x dt + sqrt(beta (1 - ab(t)^2)) dw; its variance (1 - ab)^2 stays below VP's."""

    name = "subvp"

    def marginal(self, t):
        ab = self.alpha_bar(t)
        return ab.sqrt(), 1 - ab

    def sde(self, x, t):
        t = _f64(t).reshape(-1).expand(x.shape[0])
        b = self.beta(t)
        ab = self.alpha_bar(t)
        return -0.5 * G.expand(b, x) * x, (b * (1 - ab * ab)).clamp(min=0).sqrt()


class VESDE(SDE):
    """Variance exploding: dx = sqrt(d sigma^2/dt) dw, sigma(t)^2 = (1 - ab(t)) / ab(t) from the same
    schedule (the VP <-> VE map x_ve = x_vp / sqrt(ab)), so sigma runs over the schedule's noise range."""

    name = "ve"

    def sigma(self, t) -> torch.Tensor:
        ab = self.alpha_bar(t)
        return ((1 - ab) / ab).sqrt()

    def marginal(self, t):
        sig = self.sigma(t)
        return torch.ones_like(sig), sig

    def sde(self, x, t):
        t = _f64(t).reshape(-1).expand(x.shape[0])
        # d sigma^2 / dt = d(1/ab)/dt = beta(t) / ab(t)
        g2 = self.beta(t) / self.alpha_bar(t)
        return torch.zeros_like(x), g2.sqrt()


NAMES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def by_name(name: str, schedule: Schedule) -> SDE:
    """VPSDE / SubVPSDE / VESDE on `schedule` by name ("vp", "subvp", "ve")."""
    if isinstance(name, SDE):
        return name
    if name not in NAMES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {', '.join(NAMES)}")
    return NAMES[name](schedule)


def gaussian_prior_logp(z: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """log N(z; 0, std^2 I) per example, (N,) float64."""
    z = z.reshape(z.shape[0], -1).double()
    d = z.shape[1]
    return -0.5 * (z * z).sum(1) / std ** 2 - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
