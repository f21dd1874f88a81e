"""The pieces of the variational bound of a Gaussian diffusion (seed 002 improved DDPM, seed 004 DDPM).

    L_vlb = L_T + sum_{t>1} L_{t-1} + L_0                                                   (seed 004 eq. 5)
    L_T     = KL(q(x_T | x_0) || N(0, I))
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  p = N(mu_theta, Sigma_theta)
    L_0     = -log p(x_0 | x_1)   (discretised Gaussian for data on a grid of levels, else Gaussian)

Reverse variances Sigma_theta of a step t -> s on a grid of alpha_bars (respaced grids included;
beta = 1 - ab_t / ab_s, beta~ = (1 - ab_s) / (1 - ab_t) beta):
    "small"  (fixed)  beta~, the last step's (beta~ = 0) clipped to the step before's (improved DDPM);
    "large"  (fixed)  beta, the last step's likewise replaced by that clipped beta~, so log Sigma is finite;
    "learned"         exp(v log beta + (1 - v) log beta~), v the network's extra output       (seed 002 eq. 15)
    "learned-range"   the same with v = (out + 1) / 2 (improved-diffusion's code, out nominally in [-1, 1]).
The decoder p(x_0 | x_1) of a fixed-variance model uses (1 - ab_1) / ab_1, the variance of x_0 given x_1
when the data is broad next to the noise (beta~ would cost up to 0.15 nat per dimension on continuous data).
All arithmetic here is float64.
"""
from __future__ import annotations

import math

import torch

from . import gaussian as G

__all__ = ["normal_kl", "gaussian_log_likelihood", "discretized_gaussian_log_likelihood", "VARIANCE_TYPES",
           "interpolate_log_variance", "step_log_variances", "model_log_variance", "p_mean_logvar",
           "decoder_nll", "prior_kl"]

VARIANCE_TYPES = ("fixed", "learned", "learned-range")
LOG2PI = math.log(2 * math.pi)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), broadcasting."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_log_likelihood(x, mean, logvar) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar)) (a density)."""
    return -0.5 * (LOG2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _log_ndtr_diff(a, b):
    """log(Phi(b) - Phi(a)) for b > a, stable in both tails (the upper tail is mirrored)."""
    upper = a > 0
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    lhi, llo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lhi + torch.log(-torch.expm1(llo - lhi))


def discretized_gaussian_log_likelihood(x, mean, logvar, levels: int) -> torch.Tensor:
    """Elementwise log P(x) for x on the grid of `levels` values spanning [-1, 1] (step 2 / (levels - 1)):
    the mass N(mean, exp(logvar)) gives the bin [x - d, x + d], d = 1 / (levels - 1), the end bins
    reaching to -inf and +inf (seed 004 eq. 13). A proper distribution over the levels."""
    x, mean, logvar = (torch.as_tensor(v, dtype=torch.float64) for v in (x, mean, logvar))
    d = 1.0 / (levels - 1)
    inv_std = torch.exp(-0.5 * logvar)
    a, b = (x - d - mean) * inv_std, (x + d - mean) * inv_std
    lo_edge, hi_edge = x < -1 + d / 2, x > 1 - d / 2
    mid = _log_ndtr_diff(torch.where(lo_edge | hi_edge, torch.zeros_like(a), a),
                         torch.where(lo_edge | hi_edge, torch.ones_like(b), b))
    return torch.where(lo_edge, torch.special.log_ndtr(b), torch.where(hi_edge, torch.special.log_ndtr(-a), mid))


def interpolate_log_variance(v, log_beta, log_beta_tilde):
    """log Sigma = v log beta + (1 - v) log beta~ (seed 002 eq. 15): v = 0 gives beta~, v = 1 gives beta."""
    return v * log_beta + (1 - v) * log_beta_tilde


def step_log_variances(grid) -> dict[str, torch.Tensor]:
    """Per-step log variances on a grid of alpha_bars (K + 1,) (noisiest first, ending with 1), each (K,):
    "small", "large" (fixed choices), "beta", "beta_tilde" (clipped, the ends of the learned interpolation)
    and "decoder" (the fixed decoder variance (1 - ab_1) / ab_1 at the last step, small elsewhere)."""
    g = torch.as_tensor(grid, dtype=torch.float64)
    ab_t, ab_s = g[:-1], g[1:]
    beta = 1 - ab_t / ab_s
    beta_tilde = (1 - ab_s) / (1 - ab_t) * beta
    if len(beta) > 1:
        beta_tilde[-1] = beta_tilde[-2]
    else:
        beta_tilde[-1] = beta[-1]
    large = beta.clone()
    large[-1] = beta_tilde[-1]
    decoder = beta_tilde.clone()
    decoder[-1] = (1 - ab_t[-1]) / ab_t[-1]
    return {"small": beta_tilde.log(), "large": large.log(), "beta": beta.log(), "beta_tilde": beta_tilde.log(),
            "decoder": decoder.log()}


def model_log_variance(variance: str, tables: dict, i: int, v_out=None, last: bool = False):
    """log Sigma_theta of step i: a float64 scalar tensor for fixed "small"/"large" (the decoder variance
    when `last`), or a tensor shaped like v_out (the network's variance output) for "learned"/"learned-range"."""
    if variance in ("learned", "learned-range"):
        v = v_out.double() if variance == "learned" else (v_out.double() + 1) / 2
        return interpolate_log_variance(v, tables["beta"][i], tables["beta_tilde"][i])
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be small, large, learned or learned-range, got {variance!r}")
    return tables["decoder"][i] if last else tables[variance][i]


def p_mean_logvar(den, x_t, grid, i: int, tables: dict, variance: str = "small"):
    """(x0_hat, mean, log variance) of p(x_s | x_t) for step i of `grid` (t = grid[i], s = grid[i + 1]).

    A denoiser with learned variance (den.variance_type set) uses its own; otherwise `variance` ("small" or
    "large"). mean and log variance are float64; the log variance is a scalar or shaped like x_t."""
    g = torch.as_tensor(grid, dtype=torch.float64)
    n = x_t.shape[0]
    ab_t, ab_s = g[i].expand(n), g[i + 1].expand(n)
    vtype = getattr(den, "variance_type", None)
    if vtype is not None:
        x0_hat, _, v_out = den.predict_with_variance(x_t, ab_t)
        variance = vtype
    else:
        x0_hat, _ = den.predict(x_t, ab_t)
        v_out = None
    mean, _ = G.posterior_mean_var(x0_hat.double(), x_t.double(), ab_t, ab_s)
    last = i == len(g) - 2
    return x0_hat, mean, model_log_variance(variance, tables, i, v_out, last)


def decoder_nll(x0, mean, logvar, levels: int | None) -> torch.Tensor:
    """-log p(x_0 | x_1) per example (N,), summed over dimensions: discretised on `levels` or Gaussian (None)."""
    x0 = x0.double()
    logvar = torch.as_tensor(logvar, dtype=torch.float64).expand_as(mean)
    if levels is None:
        ll = gaussian_log_likelihood(x0, mean, logvar)
    else:
        ll = discretized_gaussian_log_likelihood(x0, mean, logvar, levels)
    return -ll.reshape(len(x0), -1).sum(1)


def prior_kl(x0, alpha_bar_T) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example (N,), summed over dimensions."""
    x0 = x0.double()
    ab = G.expand(torch.as_tensor(alpha_bar_T, dtype=torch.float64).reshape(-1).expand(len(x0)), x0)
    kl = normal_kl(ab.sqrt() * x0, torch.log1p(-ab), torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.reshape(len(x0), -1).sum(1)
