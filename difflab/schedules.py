"""Noise schedules: alpha_bar on continuous time t in [0, 1], discretised to T steps.

A schedule is the one object that knows how much signal survives at each step.
Everything is computed in float64 (products of a thousand alphas lose digits in
float32) and cast only when it meets a network.

Notation (seed 004, DDPM):
    beta_t                    variance added at step t             (eq. 2)
    alpha_t   = 1 - beta_t
    alpha_bar_t = prod_{s<=t} alpha_s                               (eq. 4)
    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    SNR_t = alpha_bar_t / (1 - alpha_bar_t),  log-SNR lambda_t = log SNR_t

Index convention: step t runs 1..T; the tables are indexed 0..T-1 for steps 1..T,
and `alpha_bars_with_zero()` prepends alpha_bar_0 = 1 (clean data).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Schedule", "linear", "cosine", "sigmoid", "ve", "from_betas", "by_name", "NAMES"]


@dataclass
class Schedule:
    """A discretised variance-preserving noise schedule.

    Attributes:
        name: e.g. "linear", "cosine".
        betas: float64 tensor (T,), beta_t for t = 1..T.
        alpha_bar_fn: continuous alpha_bar(t) for t in [0, 1] (float64 tensor in, out).
        params: constructor arguments, enough to rebuild the schedule (stored in configs).
    """

    name: str
    betas: torch.Tensor
    alpha_bar_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        b = torch.as_tensor(self.betas, dtype=torch.float64)
        if b.ndim != 1 or len(b) < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.betas = b

    # ---- discrete tables (float64, shape (T,)) -------------------------------------------
    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        """alpha_bar_t for t = 1..T, as exp(cumsum(log alpha)) in float64 (seed 004 eq. 4)."""
        return torch.exp(torch.cumsum(torch.log1p(-self.betas), 0))

    def alpha_bars_with_zero(self) -> torch.Tensor:
        """(T+1,) alpha_bar_0 = 1, alpha_bar_1, ..., alpha_bar_T."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars])

    @property
    def log_snr(self) -> torch.Tensor:
        ab = self.alpha_bars
        return torch.log(ab) - torch.log1p(-ab)

    @property
    def posterior_variance(self) -> torch.Tensor:
        """beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t, (T,) (seed 004 eq. 7).

        beta-tilde_1 = 0 (x_0 is known exactly given x_1 and x_0)."""
        ab = self.alpha_bars_with_zero()
        return (1.0 - ab[:-1]) / (1.0 - ab[1:]) * self.betas

    # ---- continuous time ------------------------------------------------------------------
    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """Continuous alpha_bar(t), t in [0, 1] (float64). Falls back to log-linear
        interpolation of the table (alpha_bar(0) = 1, alpha_bar(k/T) = alpha_bar_k)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.alpha_bar_fn is not None:
            return self.alpha_bar_fn(t)
        log_ab = torch.log(self.alpha_bars_with_zero())
        pos = t.clamp(0, 1) * self.T
        lo = pos.floor().long().clamp(max=self.T - 1)
        w = pos - lo
        return torch.exp(log_ab[lo] * (1 - w) + log_ab[lo + 1] * w)

    def timestep(self, alpha_bar) -> torch.Tensor:
        """The 0-based step index t with alpha_bars[t] = alpha_bar, fractional between steps (log alpha_bar
        interpolated linearly), clamped to [0, T - 1]: the timestep of a model trained on this table with
        0-based steps, such as a diffusers UNet (its alphas_cumprod[t] is difflab's alpha_bars[t], the
        noise level of step t + 1). (N,) alpha_bar -> (N,) float64."""
        a = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1)
        if self.T == 1:
            return torch.zeros_like(a)
        neg_log = -torch.log(self.alpha_bars).to(a.device)  # increasing in t
        q = -torch.log(a)
        hi = torch.searchsorted(neg_log, q).clamp(1, self.T - 1)
        w = (q - neg_log[hi - 1]) / (neg_log[hi] - neg_log[hi - 1])
        return ((hi - 1).double() + w).clamp(0.0, self.T - 1.0)

    def discretise(self, T: int) -> Schedule:
        """The same continuous schedule on T steps: alpha_bar_k = alpha_bar(k / T)."""
        ab = self.alpha_bar(torch.arange(0, T + 1, dtype=torch.float64) / T)
        betas = (1.0 - ab[1:] / ab[:-1]).clamp(1e-12, 0.999)
        return Schedule(self.name, betas, self.alpha_bar_fn, {**self.params, "T": T})

    def to_config(self) -> dict:
        return {"name": self.name, **self.params}


def from_betas(betas, name: str = "custom") -> Schedule:
    """A schedule from an explicit beta sequence (T,)."""
    return Schedule(name, torch.as_tensor(betas, dtype=torch.float64), None, {})


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """DDPM's linear schedule: beta_t evenly spaced from beta_start to beta_end (seed 001).

    Continuous limit (VP SDE, seed 002): beta(t) = T (beta_start + t (beta_end - beta_start)),
    alpha_bar(t) = exp(-T (beta_start t + (beta_end - beta_start) t^2 / 2)).
    """
    _check_T(T)
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)

    def alpha_bar_fn(t):
        return torch.exp(-T * (beta_start * t + 0.5 * (beta_end - beta_start) * t * t))

    return Schedule("linear", betas, alpha_bar_fn,
                    {"T": T, "beta_start": beta_start, "beta_end": beta_end})


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Improved DDPM's cosine schedule: alpha_bar(t) = f(t) / f(0),
    f(t) = cos^2(pi/2 (t + s) / (1 + s)); betas clipped at max_beta (seed 002)."""
    _check_T(T)

    def alpha_bar_fn(t):
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
        return (f / f0).clamp(min=0.0)

    ab = alpha_bar_fn(torch.arange(0, T + 1, dtype=torch.float64) / T)
    betas = (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return Schedule("cosine", betas, None if max_beta < 1 else alpha_bar_fn,
                    {"T": T, "s": s, "max_beta": max_beta})


def sigmoid(T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
            max_beta: float = 0.999) -> Schedule:
    """Sigmoid schedule (Jabri et al. 2022): alpha_bar(t) from a scaled sigmoid, clipped betas."""
    _check_T(T)

    def alpha_bar_fn(t):
        v0 = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v1 = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        v = torch.sigmoid((t * (end - start) + start) / tau)
        return ((v1 - v) / (v1 - v0)).clamp(min=0.0)

    ab = alpha_bar_fn(torch.arange(0, T + 1, dtype=torch.float64) / T)
    betas = (1.0 - ab[1:] / ab[:-1]).clamp(1e-12, max_beta)
    return Schedule("sigmoid", betas, None,
                    {"T": T, "start": start, "end": end, "tau": tau, "max_beta": max_beta})


def ve(T: int = 1000, sigma_min: float = 0.01, sigma_max: float = 50.0) -> Schedule:
    """Variance-exploding noise levels (NCSN, seed 003; VE SDE, seed 002) as a VP schedule.

    Geometric sigma_k = sigma_min (sigma_max / sigma_min)^((k - 1) / (T - 1)), k = 1..T, and
    alpha_bar_k = 1 / (1 + sigma_k^2): the VE sample x0 + sigma eps is the VP sample x_k / sqrt(alpha_bar_k)
    (sigma^2 = (1 - ab) / ab), so every Gaussian tool applies. With it, L_simple (eps-MSE, k uniform) is
    denoising score matching with lambda(sigma) = sigma^2, sigma log-uniform:
        sigma^2 || s(x0 + sigma eps, sigma) + eps / sigma ||^2 = || sigma s + eps ||^2 = || eps_hat - eps ||^2.
    Continuous time: sigma(t) = sigma_min (sigma_max / sigma_min)^((t T - 1) / (T - 1)), so ab(k / T) = ab_k."""
    _check_T(T)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    log_ratio = math.log(sigma_max / sigma_min)

    def alpha_bar_fn(t):
        u = (torch.as_tensor(t, dtype=torch.float64) * T - 1) / max(T - 1, 1)
        return 1.0 / (1.0 + (sigma_min * torch.exp(u * log_ratio)) ** 2)

    ab = torch.cat([torch.ones(1, dtype=torch.float64),
                    alpha_bar_fn(torch.arange(1, T + 1, dtype=torch.float64) / T)])
    betas = 1.0 - ab[1:] / ab[:-1]
    return Schedule("ve", betas, alpha_bar_fn, {"T": T, "sigma_min": sigma_min, "sigma_max": sigma_max})


NAMES = {"linear": linear, "cosine": cosine, "sigmoid": sigmoid, "ve": ve}


def by_name(name: str, **params) -> Schedule:
    """Build a schedule from its config: by_name("cosine", T=1000)."""
    if name not in NAMES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(NAMES)}")
    return NAMES[name](**params)


def _check_T(T):
    if int(T) != T or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
