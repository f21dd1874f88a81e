"""A data-prediction multistep solver whose time variable changes at sigma_switch (issue 5).

The VE probability-flow ODE  dx/dsigma = (x - x0_hat(x, sigma)) / sigma  is, with u = 1 / sigma,

    d(x / sigma) / du = x0_hat        so   x_j / sigma_j = x_i / sigma_i + integral_{u_i}^{u_j} x0_hat du,

and a multistep solver replaces x0_hat by the polynomial through its last evaluations, in some variable
v(sigma). DPM-Solver++ and UniPC take v = lambda = log(1 / sigma). Far above the data's scale s, though,
x0_hat - mu = s^2 / (s^2 + sigma^2) (x - mu) with x - mu growing like sigma along a trajectory, so x0_hat
is a line in u = 1 / sigma there (Gaussian data: exactly, up to O(s^2 / sigma^2)). This solver takes

    v = u          while sigma_i > sigma_switch   (predictor: the line through the last two levels;
                                                   corrector: the line through this level and the new one),
    v = lambda     below                          (predictor: the line through the last two levels;
                                                   corrector: the parabola through the last two and the new one),

integrates each polynomial exactly against du (`lagrange_weights`), and limits every predictor's
extrapolation to `reach` times the interval it was fitted on: a step that is longer in v than the one before
uses the line's slope scaled by reach x (previous interval) / (this interval). The corrector reuses the new
evaluation, so one call per level; the last step to sigma = 0 is `gauss_multistep.gauss_final`'s (exact for
locally Gaussian data).

Why: in two dimensions at 10 calls, the error of UniPC is dominated by samples that choose another mode
than the exact flow's while sigma passes the distance between modes (benchmarks/samplers_error_origin.py).
Both the limited extrapolation and the line in 1 / sigma at high noise reduce it; together, on the 21
validation mixtures at n = 40000 (benchmarks/samplers_auto.py), 16 beat every diffusers
scheduler (UniPC: 14), with a median error to the exact PF-ODE map of 0.025 nat (UniPC 0.041) and 1.0 % of
the mass moved between modes (1.3 %). It uses UniPC's "tuned" grid: a 10-level 2-D grid optimised for this
solver (Nelder-Mead, 250 evaluations on the 40 training mixtures of samplers_grid_tuning_lowdim.py) moved no
level by more than 10 % and lowered the training error only from 0.032 to 0.023 nat, so it was not kept.
Where it is the better choice (2-D, 9 .. 10 calls) and where it is not: benchmarks/results/samplers_auto.md.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import follow_width as fw
from .denoiser import Denoiser
from .gauss_multistep import gauss_final

__all__ = ["lagrange_weights", "split_multistep"]


def _moments(h: float, n: int, kind: str) -> list[float]:
    """M_m = integral_0^h w(t) t^m dt, m < n: w = 1 (kind "u", t = u - u_i) or w = e^t (kind "log",
    t = lambda - lambda_i, du = u_i e^t dt; the factor u_i is applied by the caller)."""
    if kind == "u":
        return [h ** (m + 1) / (m + 1) for m in range(n)]
    if abs(h) > 0.5:  # closed forms: e^h P_m(h) - P_m(0), P_m(t) = sum_k (-1)^k m!/(m-k)! t^(m-k)
        out = []
        for m in range(n):
            p_h = sum((-1) ** k * math.factorial(m) / math.factorial(m - k) * h ** (m - k) for k in range(m + 1))
            out.append(math.exp(h) * p_h - (-1) ** m * math.factorial(m))
        return out
    # small h: the series sum_j h^(m+1+j) / (j! (m+1+j)) (no cancellation)
    return [sum(h ** (m + 1 + j) / (math.factorial(j) * (m + 1 + j)) for j in range(30)) for m in range(n)]


def lagrange_weights(t_nodes: list[float], h: float, kind: str) -> list[float]:
    """Weights w_k with  integral_0^h w(t) p(t) dt = sum_k w_k p(t_k)  for every polynomial p of degree
    < len(t_nodes) (w(t) = 1 or e^t, `_moments`): the exact integral of the interpolating polynomial."""
    n = len(t_nodes)
    vand = torch.tensor([[t ** m for t in t_nodes] for m in range(n)], dtype=torch.float64)
    mom = torch.tensor(_moments(h, n, kind), dtype=torch.float64)
    return torch.linalg.solve(vand, mom).tolist()


def _step(x, u_i, nodes, sig_j, kind, reach=None):
    """x (VE) at sigma_j from x at u_i = 1 / sigma_i with x0_hat interpolated through nodes [(sigma, x0_hat)]
    (nodes[0] at sigma_i for the predictor). reach: limit the line's extrapolation (module docstring)."""
    u_j = 1.0 / sig_j
    if kind == "u":
        t = [1.0 / s - u_i for s, _ in nodes]
        h, scale = u_j - u_i, 1.0
    else:
        t = [-math.log(u_i * s) for s, _ in nodes]  # lambda_k - lambda_i = log(u_k / u_i), u_k = 1 / s
        h, scale = math.log(u_j / u_i), u_i
    vals = [d for _, d in nodes]
    if reach is not None and len(nodes) == 2:  # predictor: scale the slope through node 1
        c = min(1.0, reach * abs(t[1]) / abs(h))
        vals = [vals[0], vals[0] + c * (vals[1] - vals[0])]
    w = lagrange_weights(t, h, kind)
    integral = sum(scale * wk * dk for wk, dk in zip(w, vals))
    return (x * u_i + integral) / u_j


@torch.inference_mode()
def split_multistep(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None,
                    switch_sigma: float = 2.0, reach: float | None = 1.0, corrector: bool = True,
                    follow_width: bool = False, follow_spread: bool = False,
                    progress: Callable | None = None, trajectory: list | None = None) -> torch.Tensor:
    """x_0 from x (N, ...) at grid[0] (VP units) by the split multistep solver (module docstring).

    grid: (n + 1,) increasing alpha_bars ending with 1.0; one call per level, then the Gaussian-exact step
    to sigma = 0. switch_sigma: the VE sigma above which steps interpolate x0_hat in 1 / sigma (0: always
    log sigma; inf: always 1 / sigma). reach: the predictor's extrapolation limit (None: none).
    corrector: correct each step with the new evaluation (free). follow_width: warp the levels after the third
    to the data's mode width, read from the second call and from 128 rows added to the third (`follow_width`
    module; data of at most 8 numbers per example, batches of 16 or more, grids of 5 or more levels).
    follow_spread: stretch the levels after the first to the spread of the data's modes, read from the first call
    and checked at the second (`follow_width.topped_levels`; any dimension).
    Arithmetic in float64, state in x's dtype."""
    dtype = x.dtype
    den = fw.Follower(denoiser, grid[:-1].tolist(), len(x), x[0].numel(), follow_width, dtype, progress,
                      spread=follow_spread)
    levels, sig = den.levels, den.sig  # the follower may change them (in place) after its first three calls
    x = x.double() / math.sqrt(levels[0])
    evals = [(x, den(x, 0), sig[0])]  # (x where evaluated, x0_hat there, sigma) of the last two evaluations
    for i in range(len(levels) - 1):
        s_i, s_j = sig[i], sig[i + 1]
        kind = "u" if s_i > switch_sigma else "log"
        u_i = 1.0 / s_i
        nodes = [(s, d) for _, d, s in reversed(evals)]  # (sigma, x0_hat), this level first
        x_new = _step(x, u_i, nodes, s_j, kind, reach)
        d_new = den(x_new, i + 1)
        if corrector:
            x = _step(x, u_i, [(s_j, d_new)] + nodes[:1 if kind == "u" else 2], s_j, kind)
        else:
            x = x_new
        evals = (evals + [(x_new, d_new, s_j)])[-2:]
        if trajectory is not None:
            trajectory.append((x * math.sqrt(levels[i + 1])).to(dtype))
    if len(evals) < 2:  # one level: nothing to fit, the ODE's Euler step in sigma^2
        return (0.5 * (x + evals[0][1])).to(dtype)
    return gauss_final(x, evals[-1][1], *evals).to(dtype)
