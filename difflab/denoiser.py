"""One denoiser view of every Gaussian diffusion model (seed 003's unified perspective).

A `Denoiser` is a function (x_t, alpha_bar) -> prediction together with the schedule
it was trained on. Whatever the network predicts (eps, x0 or v), the denoiser hands
samplers, guidance and likelihoods every other quantity:

    x0    = (x_t - sqrt(1 - ab) eps) / sqrt(ab)              Tweedie's formula
    score = -eps / sqrt(1 - ab)
    v     = sqrt(ab) eps - sqrt(1 - ab) x0

Networks never see a schedule: they are conditioned on `noise_level_input(alpha_bar)`,
a fixed function of the log-SNR, so a model can be sampled on any time grid.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from . import gaussian as G
from .schedules import Schedule

__all__ = ["Denoiser", "noise_level_input", "PARAMETERIZATIONS", "predict_at"]

PARAMETERIZATIONS = ("eps", "x0", "v")


def noise_level_input(alpha_bar: torch.Tensor) -> torch.Tensor:
    """The scalar a network is conditioned on: c = 25 (20 - clamp(log SNR, -20, 20)), in [0, 1000].

    (N,) float alpha_bar -> (N,) float32. Monotone in the noise level, schedule-free."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    log_snr = torch.log(ab) - torch.log1p(-ab)
    return (25.0 * (20.0 - log_snr.clamp(-20.0, 20.0))).float()


class Denoiser:
    """A model of E[eps | x_t] (or x0, v) at noise level alpha_bar.

    Args:
        fn: (x_t (N, ...), alpha_bar (N,) float64) -> prediction (N, ...).
        schedule: the discrete schedule the model lives on; samplers take their grid from it.
        parameterization: what fn predicts: "eps", "x0" or "v".
        clip: optional (lo, hi) range that predicted x0 is clipped to (images: (-1, 1)).

    Attribute `nfe` counts calls of fn (reset it with `denoiser.nfe = 0`).
    """

    def __init__(self, fn: Callable, schedule: Schedule, parameterization: str = "eps",
                 clip: tuple[float, float] | None = None):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        self.fn = fn
        self.schedule = schedule
        self.parameterization = parameterization
        self.clip = clip
        self.nfe = 0
        self.variance_type = None  # "learned" | "learned-range": fn's output has 2x channels (issue 4, vlb.py)
        self._last_v = None

    @classmethod
    def from_eps(cls, fn: Callable, schedule: Schedule, clip=None) -> Denoiser:
        """Wrap an outside eps-predictor fn(x_t (N, ...), alpha_bar (N,)) -> eps (N, ...)."""
        return cls(fn, schedule, "eps", clip)

    @classmethod
    def from_diffusers(cls, unet: Callable, schedule: Schedule, prediction_type: str = "epsilon",
                       clip=None) -> Denoiser:
        """Wrap a diffusers-style model unet(x_t, timestep (N,)) -> output (or output.sample), trained on
        `schedule` with 0-based steps (e.g. `schedules.from_betas(scheduler.betas)`): each alpha_bar is sent
        as the fractional timestep `schedule.timestep(alpha_bar)`, so every difflab sampler and grid can
        drive it. prediction_type: diffusers' name, "epsilon", "sample" or "v_prediction"."""
        kinds = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
        if prediction_type not in kinds:
            raise ValueError(f"prediction_type must be one of {', '.join(kinds)}, got {prediction_type!r}")

        def fn(x, alpha_bar):
            out = unet(x, schedule.timestep(alpha_bar).to(device=x.device, dtype=torch.float32))
            return getattr(out, "sample", out).to(x.dtype)
        return cls(fn, schedule, kinds[prediction_type], clip)

    @classmethod
    def from_network(cls, net: torch.nn.Module, schedule: Schedule, parameterization: str = "eps",
                     clip=None, labels: torch.Tensor | None = None, variance_type: str | None = None) -> Denoiser:
        """Wrap a difflab network net(x, c[, y]) conditioned on noise_level_input(alpha_bar).

        For class-conditional nets, set `denoiser.labels` ((N,) int64, -1 = unconditional) before sampling."""
        den = cls(None, schedule, parameterization, clip)
        den.labels = labels
        den.variance_type = variance_type

        def fn(x, alpha_bar):
            c = noise_level_input(alpha_bar).to(x.device)
            out = net(x, c) if den.labels is None else net(x, c, den.labels)
            return out.to(x.dtype)
        den.fn = fn
        return den

    # ---- predictions ----------------------------------------------------------------------
    def _raw(self, x, alpha_bar):
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        self.nfe += 1
        out = self.fn(x, alpha_bar)
        if self.variance_type is not None:  # learned variance: second half of the channels (dim 1)
            out, self._last_v = out.chunk(2, dim=1)
        return out, alpha_bar

    def predict_with_variance(self, x, alpha_bar):
        """(x0, eps, v): predict's pair and the raw variance output (N, ...) of a learned-variance model
        (see difflab.vlb.model_log_variance), None for fixed-variance ones. One call of fn."""
        self._last_v = None
        x0, eps = self.predict(x, alpha_bar)
        return x0, eps, self._last_v

    def predict(self, x: torch.Tensor, alpha_bar) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps), both (N, ...), consistent with each other after optional clipping."""
        out, ab = self._raw(x, alpha_bar)
        if self.parameterization == "eps":
            eps, x0 = out, G.x0_from_eps(x, out, ab)
        elif self.parameterization == "x0":
            x0, eps = out, G.eps_from_x0(x, out, ab)
        else:  # v: x0 = sqrt(ab) x_t - sqrt(1-ab) v ; eps = sqrt(1-ab) x_t + sqrt(ab) v
            a, s = G.expand(ab, x).sqrt(), (1 - G.expand(ab, x)).sqrt()
            x0, eps = a * x - s * out, s * x + a * out
        if self.clip is not None:
            x0 = x0.clamp(*self.clip)
            eps = G.eps_from_x0(x, x0, ab)
        return x0, eps

    def eps(self, x, alpha_bar):
        return self.predict(x, alpha_bar)[1]

    def x0(self, x, alpha_bar):
        return self.predict(x, alpha_bar)[0]

    def score(self, x, alpha_bar):
        """grad_x log p(x_t) at noise level alpha_bar."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        return G.score_from_eps(self.eps(x, ab), ab)

    def v(self, x, alpha_bar):
        x0, eps = self.predict(x, alpha_bar)
        return G.v_from_eps_x0(eps, x0, torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1).expand(x.shape[0]))

    def posterior_mean(self, x, alpha_bar, alpha_bar_prev):
        """mu_theta(x_t) = mean of q(x_s | x_t, x0_hat), s the level alpha_bar_prev > alpha_bar (seed 004 eq. 7):
        the posterior-mean parameterisation, shape of x (issue 4)."""
        n = x.shape[0]
        ab_t = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1).expand(n)
        ab_s = torch.as_tensor(alpha_bar_prev, dtype=torch.float64).reshape(-1).expand(n)
        return G.posterior_mean_var(self.x0(x, ab_t), x, ab_t, ab_s)[0]

    @classmethod
    def from_score(cls, fn: Callable, schedule: Schedule, clip=None) -> Denoiser:
        """Wrap a score model fn(x_t, alpha_bar) -> grad log p(x_t): eps = -sqrt(1 - ab) score (issue 4)."""
        return cls(lambda x, ab: G.eps_from_score(fn(x, ab), ab), schedule, "eps", clip)


def predict_at(denoiser: Denoiser, x: torch.Tensor, ab, progress: Callable | None = None):
    """(x0, eps) of x (N, ...) at one scalar level ab (0-d float64 or float), one denoiser call; progress()
    after it. The samplers' way of calling a denoiser."""
    out = denoiser.predict(x, torch.as_tensor(ab, dtype=torch.float64).reshape(1).expand(x.shape[0]))
    if progress:
        progress()
    return out
