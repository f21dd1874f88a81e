"""The Gaussian forward process and its posterior, in closed form (seeds 001, 004).

All functions take per-example noise levels: `alpha_bar` of shape (N,) broadcast
against x of shape (N, ...). They work for any T and any schedule, discrete or
continuous, because they only ever see alpha_bar values.

    q(x_t | x_0)          = N(sqrt(ab_t) x_0, (1 - ab_t) I)                          (seed 004 eq. 4)
    q(x_s | x_t, x_0)     = N(mu~, beta~ I) for s < t, with a_ts = ab_t / ab_s,       (seed 004 eq. 7)
        mu~    = sqrt(ab_s) (1 - a_ts) / (1 - ab_t) x_0 + sqrt(a_ts) (1 - ab_s) / (1 - ab_t) x_t
        beta~  = (1 - ab_s) / (1 - ab_t) (1 - a_ts)
    (s = t - 1 gives DDPM's posterior; other s give respaced / skipped steps.)
"""
from __future__ import annotations

import torch

__all__ = ["expand", "q_sample", "q_mean_var", "posterior_mean_var", "posterior_coefs",
           "eps_from_x0", "x0_from_eps", "v_from_eps_x0", "score_from_eps", "eps_from_score"]


def expand(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) matching x's rank, in x's dtype and device."""
    a = torch.as_tensor(a, device=x.device)
    return a.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def q_mean_var(x0: torch.Tensor, alpha_bar: torch.Tensor):
    """Mean (N, ...) and variance (N, 1, ...) of q(x_t | x_0)."""
    ab = expand(alpha_bar, x0)
    return ab.sqrt() * x0, 1.0 - ab


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps  (reparameterised q(x_t | x_0)). Shapes: x0, noise (N, ...)."""
    ab = expand(alpha_bar, x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def posterior_coefs(ab_t: torch.Tensor, ab_s: torch.Tensor):
    """Coefficients (c_x0, c_xt, var) of q(x_s | x_t, x_0), all (N,) float64.

    Computed in float64: 1 - ab is tiny near t = 0 and loses digits in float32."""
    ab_t = torch.as_tensor(ab_t, dtype=torch.float64)
    ab_s = torch.as_tensor(ab_s, dtype=torch.float64)
    a_ts = ab_t / ab_s
    c_x0 = ab_s.sqrt() * (1 - a_ts) / (1 - ab_t)
    c_xt = a_ts.sqrt() * (1 - ab_s) / (1 - ab_t)
    var = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
    return c_x0, c_xt, var


def posterior_mean_var(x0: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor, ab_s: torch.Tensor):
    """Mean (N, ...) and variance (N, 1, ...) of q(x_s | x_t, x_0) for s < t (seed 004 eq. 7)."""
    c_x0, c_xt, var = posterior_coefs(ab_t, ab_s)
    return expand(c_x0, x_t) * x0 + expand(c_xt, x_t) * x_t, expand(var, x_t)


# ---- parameterisations (seed 003): eps, x0, v, score ------------------------------------------
def x0_from_eps(x_t, eps, alpha_bar):
    """x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)   (Tweedie's formula in eps form)."""
    ab = expand(alpha_bar, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(x_t, x0, alpha_bar):
    """eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab)."""
    ab = expand(alpha_bar, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def v_from_eps_x0(eps, x0, alpha_bar):
    """v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022)."""
    ab = expand(alpha_bar, x0)
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def score_from_eps(eps, alpha_bar):
    """grad log q(x_t) = -eps / sqrt(1 - ab)   (seed 003, eq. for the score)."""
    return -eps / (1 - expand(alpha_bar, eps)).sqrt()


def eps_from_score(score, alpha_bar):
    return -score * (1 - expand(alpha_bar, score)).sqrt()
