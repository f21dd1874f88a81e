"""A multistep probability-flow solver that is exact for Gaussian data (issue 5).

The VE probability-flow ODE  dx/dsigma = (x - x0_hat(x, sigma)) / sigma  has, for data N(mu, s^2) in one
coordinate, x0_hat = mu + s^2 / (s^2 + sigma^2) (x - mu) and the solution x - mu = C Phi(sigma) with
Phi = sqrt(s^2 + sigma^2). Splitting x0_hat = (s^2 / Phi^2) x + (sigma^2 / Phi^2) m, the "implied mean"

    m = x0_hat + (s^2 / sigma^2) (x0_hat - x)          (= mu for Gaussian data, whatever x and sigma),

and taking Phi as integrating factor turns the ODE into  d(x / Phi) / du = m  with u = 1 / Phi. So a step
sigma_i -> sigma_j is exactly

    x_j / Phi_j = x_i / Phi_i + integral_{u_i}^{u_j} m du,

and the solver approximates m by a polynomial in u through the last evaluations (predictor: the line
through levels i - 1 and i, Adams-Bashforth; corrector: the line through i and the new level j,
trapezoid, no extra call, as UniPC's corrector). With s = 0 this is a multistep method in 1 / sigma
(DDIM for one point); with s -> infinity the step is an Euler step in sigma^2.

The width s is fitted per sample and per coordinate at every level from the last two evaluations, with
no extra call: along one trajectory e = (x - x0_hat) / sigma = C sigma / Phi, so the ratio of e at
levels P and L gives s (`fit_width2`; the fit of `gauss_final`, which is this solver's last
step to sigma = 0). The first step (nothing to fit) takes s = 0: DDIM. Each fitted s^2 is capped at
100 x its sample's median over the coordinates (`cap_widths`): at high noise a narrow datum's s^2 / sigma^2
lies below a trained network's error, which the per-element fit would read as enormous widths; at low noise
the cap trims the misfits of samples still choosing between narrow modes.

Where the modes lie far apart (follow_spread stretched the grid's top and the second call agreed), the widths are
fitted in the data's principal axes, the eigenvectors of C read at the first call, instead of the data's own
coordinates (`principal_axes`, `_in_axes`): there each coordinate mixes the directions between the modes with
those within them, and the fit read neither (64-D, eight modes 1 wide at means 16 N(0, I), 10 calls: +5.9 nat
too concentrated against the exact map; in the axes -0.33). There four more things change (`far_modes`):
  - the width is fitted so that the implied means at the two levels agree (`fit_width2_implied_mean`), not from the
    ratio of e along one trajectory: the pair of evaluations that straddles the choice of a mode does not lie on one
    trajectory, and the ratio fit then shrank the spread between the modes at every later step (to 0.56 of the exact
    flow's on a held-out 64-D mixture, +2.2 nat too concentrated);
  - the corrector weights the new evaluation as a line in log u (`_log_u_weight`, 0.59 for a step of 3x in u)
    instead of the trapezoid's 1/2: while a mode is being chosen, x0_hat swings towards it early in the step, and
    the trapezoid left 7-30 % too much spread between the modes;
  - the levels below the second are log-uniform down to the lowest, where the tuned levels crowd the bottom;
  - once the modes are chosen (sigma below the stretched second level / CHOSEN_BELOW = 20) the state turns back to
    the data's own coordinates: within one mode the per-coordinate fit is exact for modes aligned with them, which
    the axes had mixed (the held-out 64-D mixture, widths 0.05-0.3 per coordinate: +0.51 -> -0.01 nat; turned
    back at a fifth of the second level, while modes are still being chosen: +1.21).
  For Gaussian data m is constant, so neither the fit nor the weight changes the exactness below. Measured on 32
  held-out mixtures (benchmarks/results/samplers_far_modes.md), see docs/samplers.md "Modes far apart".

For data whose every coordinate is Gaussian (with variances within 100 x their median, where the cap does not
bind) the solver is exact but for its first step (DDIM, off by
O(s^2 / sigma_1^2) at the first interior level sigma_1: 1.6e-5 for widths 0.2 .. 0.5 at 10 calls, where
UniPC is off by 3e-2). For mixtures it is second order and reads the width of the mode a sample is
settling into, where a polynomial in log sigma (DPM-Solver, UniPC) extrapolates worst. Measured
(benchmarks/samplers_gauss_multistep.md): at 10 calls in 64 .. 784 dimensions it is closer to the exact
PF-ODE map than UniPC on most mixtures (64-D: median error 0.27 against 0.65 nat; 784-D: 0.52 against
21); at 20 calls, and in 2 .. 16 dimensions, UniPC is the better choice.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .denoiser import Denoiser
from .follow_width import Follower

CHOSEN_BELOW = 20.0  # far_modes: the modes count as chosen below sigma = (the stretched second level) / this

__all__ = ["cap_widths", "fit_width2", "fit_width2_implied_mean", "gauss_final", "gauss_multistep"]


def fit_width2(prev, last) -> torch.Tensor:
    """Per element s^2 (float64) of the Gaussian that explains two evaluations on one trajectory.

    prev, last: (x, x0_hat, sigma) at levels P and L (sigma_P > sigma_L, VE units). With e = (x - x0_hat) /
    sigma:  q = (e_L sigma_P / (e_P sigma_L))^2 = (s^2 + sigma_P^2) / (s^2 + sigma_L^2), so
    s^2 = (sigma_P^2 - q sigma_L^2) / (q - 1), q clipped to its range [1, sigma_P^2 / sigma_L^2]
    (q -> 1: s = infinity; the upper end: s = 0)."""
    (x_p, d_p, s_p), (x_l, d_l, s_l) = prev, last
    e_p, e_l = (x_p.double() - d_p.double()) / s_p, (x_l.double() - d_l.double()) / s_l
    hi = (s_p / s_l) ** 2
    q = torch.nan_to_num((e_l * s_p / (e_p * s_l)) ** 2, nan=1.0, posinf=hi).clamp(1.0 + 1e-9, hi * (1 - 1e-9))
    return ((s_p ** 2 - q * s_l ** 2) / (q - 1)).clamp(min=0)


def fit_width2_implied_mean(prev, last) -> torch.Tensor:
    """Per element s^2 (float64) of the Gaussian whose implied means at two evaluations agree, wherever the two
    points lie (they need not share a trajectory, unlike `fit_width2`'s).

    Data N(mu, s^2): x0_hat = mu + s^2 / (s^2 + sigma^2) (x - mu) at any x, so the implied mean
    m = x0_hat + (s^2 / sigma^2) (x0_hat - x) is mu at both levels. Equating m_P = m_L:
        s^2 = (d_L - d_P) / ((d_P - x_P) / sigma_P^2 - (d_L - x_L) / sigma_L^2),
    d = x0_hat. Elements where that is negative or not finite (no Gaussian explains the pair) get s^2 = 0.

    gauss_multistep fits with it where the modes lie far apart (`far_modes`, module docstring); everywhere with
    `width_fit="implied_mean"`, an ablation: on the stored 3-64-D sets, where the modes are chosen over many
    levels, it is no better than `fit_width2` (docs/samplers.md, "How far_modes was found")."""
    (x_p, d_p, s_p), (x_l, d_l, s_l) = prev, last
    x_p, d_p, x_l, d_l = (t.double() for t in (x_p, d_p, x_l, d_l))
    s2 = (d_l - d_p) / ((d_p - x_p) / s_p ** 2 - (d_l - x_l) / s_l ** 2)
    return torch.where(torch.isfinite(s2) & (s2 > 0), s2, torch.zeros_like(s2))


def gauss_final(x_ve, d, prev, last) -> torch.Tensor:
    """The step from the last level sigma_L to sigma = 0, exact when the data are locally Gaussian per
    coordinate, with the width fitted from the last two evaluations (no extra call).

    Data N(mu, s^2): the PF-ODE keeps x - mu = C sqrt(s^2 + sigma^2), so e = (x - x0_hat) / sigma
    = C sigma / sqrt(s^2 + sigma^2) and x_0 = mu + C s. Hence
        x_0 = x0_hat + e_L sigma_L f(s / sigma_L),   f(k) = k (sqrt(k^2 + 1) - k)  in [0, 1/2),
    between "denoise" (f = 0, s << sigma_L) and "ode" (f -> 1/2, s >> sigma_L), and the ratio of e at two
    levels P, L of one trajectory gives s without mu (`fit_width2`; s = inf: "ode", s = 0:
    "denoise"). prev, last: (x, x0_hat, sigma) of the evaluations at P and L (VE units). Fine modes
    (widths ~ sigma_L) are where this matters: six modes of width 0.025 at 20 UniPC calls: gap -0.25 nat
    with "ode", -0.02 with this (exact PF-ODE map: -0.004; tests/test_samplers_extra.py); at 10 calls -1.02
    and +0.15. Modes of width 0.25 do not move."""
    k = fit_width2(prev, last).sqrt() / last[2]
    f = (k * ((k * k + 1).sqrt() - k)).nan_to_num(nan=0.5).clamp(0.0, 0.5)  # k = inf: the limit 1/2
    return d + (x_ve - d) * f.to(x_ve.dtype)


def cap_widths(s2: torch.Tensor, factor: float) -> torch.Tensor:
    """s2 (N, ...) with each element capped at factor x its sample's median over the other axes (the mean of
    the two middle values for an even count, so that in 2-D a factor >= 2 never caps anything).

    Why (measured, docs/samplers.md "On trained networks"): at sigma 16 and 6.2 a coordinate's s^2 shows
    in x0_hat only as s^2 / sigma^2 <= 3e-3 for digits, below a trained network's error there; the
    per-element fit then reads that error (median s^2 / sigma^2 1e-9, 99th percentile 5.3 on a digits U-Net,
    where an exact 64-D mixture's is 0.018 .. 0.020 throughout) and a few coordinates take Euler steps in
    sigma^2 meant for enormous widths. At low noise, samples still choosing between narrow close modes get
    a few coordinates fitted far wider than the rest. Capped at 100 x the median at every fitted level: three
    U-Nets' 10-call errors to their own PF-ODE maps 0.0515 -> 0.039, 0.0522 -> 0.039, 0.0305 -> 0.021; on the
    exact validation sets at 10 calls 4 more PASS (3-D 13 -> 15 of 24, 8-D 18 -> 19, 32-D 14 -> 15), none lost
    (benchmarks/results/samplers_standing.md, docs/samplers.md "On trained networks")."""
    flat = s2.reshape(len(s2), -1)
    srt = flat.sort(dim=1).values
    k = flat.shape[1]
    med = 0.5 * (srt[:, (k - 1) // 2] + srt[:, k // 2])
    return torch.minimum(flat, factor * med[:, None]).reshape(s2.shape)


def _u(s2, sigma):
    """u = 1 / Phi = 1 / sqrt(s^2 + sigma^2), the solver's time variable."""
    return (s2 + sigma * sigma).rsqrt()


def _implied_mean(s2, x, d, sigma):
    """m = x0_hat + (s^2 / sigma^2) (x0_hat - x): the mean of the Gaussian of width s that gives x0_hat at x."""
    return d + (s2 / (sigma * sigma)) * (d - x)


def _integral(u_i, u_j, pts, reach=None):
    """integral_{u_i}^{u_j} of the line through pts = [(u_a, m_a), (u_b, m_b)] (or the constant m_a).

    reach (predictor only): the line's slope is scaled by min(1, reach |u_a - u_b| / |u_j - u_i|) per element,
    so an extrapolation never reaches further than `reach` times the interval it was fitted on (few-call grids
    take steps several times longer than the previous one in u; the plain line then diverged: gap -387 nat at
    5 calls on samplers_vs_diffusers.py's 64-D mixture, +0.45 with reach 1)."""
    (u_a, m_a) = pts[0]
    if len(pts) == 1:
        return (u_j - u_i) * m_a
    u_b, m_b = pts[1]
    slope = (m_b - m_a) / (u_b - u_a)
    if reach is not None:
        slope = slope * (reach * (u_a - u_b).abs() / (u_j - u_i).abs()).clamp(max=1.0)
    return (u_j - u_i) * m_a + slope * ((u_j - u_a) ** 2 - (u_i - u_a) ** 2) / 2


@torch.inference_mode()
def gauss_multistep(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None,
                    corrector: bool = True, reach: float = 1.0, max_ratio: float = 30.0,
                    width_scale: float = 1.0, width_cap: float | None = 100.0, cap_above: float = 0.0,
                    follow_width: bool = False, follow_spread: bool = False, principal_axes: bool = True,
                    width_fit: str = "trajectory", far_modes: bool = True, progress: Callable | None = None,
                    trajectory: list | None = None) -> torch.Tensor:
    """x_0 from x (N, ...) at grid[0] (VP units) by the Gaussian-exact multistep solver (module docstring).

    grid: (n + 1,) increasing alpha_bars ending with 1.0: one call per level, then the step to sigma = 0
    with the last fitted width (exact for Gaussian data). corrector: the trapezoid corrector with each new
    evaluation (free). reach: how far the predictor's line may extrapolate, in units of the interval it
    was fitted on (`_integral`; None: no limit). max_ratio: the fitted width is capped at max_ratio x sigma
    (s -> infinity is an Euler step in sigma^2; the cap only keeps 1 / Phi away from 0). width_scale: the
    fitted s^2 is multiplied by it (1: the solver; 0: a plain multistep in 1 / sigma; for ablations).
    width_cap, cap_above: at levels with sigma > cap_above (default: every fitted level), each element's s^2
    is capped at width_cap x the sample's median s^2 over its coordinates (`cap_widths`; None: no cap).
    follow_width, follow_spread: the grid follows the data's mode width and the spread of its modes
    (`follow_width.Follower`). principal_axes: where follow_spread stretched the grid's top, the widths are
    fitted per coordinate of the data's principal axes instead of its own coordinates (`_in_axes`), uncapped.
    width_fit: "trajectory" (`fit_width2`, the default) or "implied_mean" (`fit_width2_implied_mean`, an ablation);
    where far_modes acts, the implied-mean fit is used whatever this says.
    far_modes: where the principal axes are taken (modes far apart), also take the levels below the second
    log-uniformly down to the lowest, fit the widths by `fit_width2_implied_mean`, weight the corrector's
    evaluations as a line in log u (`_log_u_weight`) and turn back to the data's coordinates once the modes are
    chosen (`CHOSEN_BELOW`), all uncapped; see the module docstring.
    Arithmetic in float64, state in x's dtype."""
    fits = {"trajectory": fit_width2, "implied_mean": fit_width2_implied_mean}
    if width_fit not in fits:
        raise ValueError(f"width_fit must be one of {', '.join(fits)}, got {width_fit!r}")
    fit = fits[width_fit]
    dtype = x.dtype
    den = Follower(denoiser, grid[:-1].tolist(), len(x), x[0].numel(), follow_width, dtype, progress,
                   spread=follow_spread, axes=principal_axes)
    levels, sig = den.levels, den.sig  # the follower may change them (in place) after its first three calls
    axes = None  # the principal axes (D, D), once the follower has read them (at its second call)

    def call(y, j):
        return den(y, j) if axes is None else _in_axes(den(_in_axes(y, axes.T), j), axes)

    x = x.double() / math.sqrt(levels[0])  # VE state
    x_eval, d = x, den(x, 0)  # the point where the latest evaluation was made, and x0_hat there
    prev = None  # (x_eval, x0_hat, sigma) of the evaluation before
    far = False  # far_modes in force (from the second level, where the axes were taken)
    for i in range(len(levels)):
        if i == 1 and den.basis is not None:  # the first step (DDIM) is the same in any axes: turn everything now
            axes = den.basis
            x, x_eval, d = (_in_axes(t, axes) for t in (x, x_eval, d))
            prev = (_in_axes(prev[0], axes), _in_axes(prev[1], axes), prev[2])
            if far_modes:
                far, fit = True, fit_width2_implied_mean
                den.set_rest(1, np.geomspace(sig[1], sig[-1], len(sig) - 1)[1:].tolist())  # log-uniform
        elif far and axes is not None and sig[i] < sig[1] / CHOSEN_BELOW:  # modes chosen: back to the data's own
            x, x_eval, d = (_out_of_axes(t, axes) for t in (x, x_eval, d))  # coordinates, where diagonal modes are
            prev = (_out_of_axes(prev[0], axes), _out_of_axes(prev[1], axes), prev[2])  # exact per coordinate
            axes = None
        s_i, s_j = sig[i], (sig[i + 1] if i + 1 < len(sig) else 0.0)
        s2 = torch.zeros_like(x) if prev is None else fit(prev, (x_eval, d, s_i))
        s2 = width_scale * s2.clamp(max=(max_ratio * s_i) ** 2)
        if width_cap is not None and prev is not None and s_i > cap_above and axes is None and not far:
            s2 = cap_widths(s2, width_cap)

        u_i = _u(s2, s_i)
        m_i = _implied_mean(s2, x_eval, d, s_i)
        if s_j == 0:  # to sigma = 0 with m held: x_0 = m + (x - m) s / Phi_i (`gauss_final`)
            return _out_of_axes(m_i + (x - m_i) * s2.sqrt() * u_i, axes).to(dtype)
        u_j = _u(s2, s_j)
        pts = [(u_i, m_i)]
        if prev is not None:
            pts.append((_u(s2, prev[2]), _implied_mean(s2, *prev)))
        x_new = (x * u_i + _integral(u_i, u_j, pts, reach)) / u_j
        prev = (x_eval, d, s_i)
        d_new = call(x_new, i + 1)
        if corrector:
            m_j = _implied_mean(s2, x_new, d_new, s_j)
            if far:
                x_corr = (x * u_i + (u_j - u_i) * (m_i + _log_u_weight(u_i, u_j) * (m_j - m_i))) / u_j
            else:
                x_corr = (x * u_i + _integral(u_i, u_j, [(u_j, m_j), (u_i, m_i)])) / u_j
        else:
            x_corr = x_new
        if trajectory is not None:
            trajectory.append((_out_of_axes(x_corr, axes) * math.sqrt(levels[i + 1])).to(dtype))
        x, x_eval, d = x_corr, x_new, d_new
    return _out_of_axes(x, axes).to(dtype)


def _log_u_weight(u_i: torch.Tensor, u_j: torch.Tensor) -> torch.Tensor:
    """The weight w of m_j in the mean of m over [u_i, u_j] when m is a line in log u between (u_i, m_i) and
    (u_j, m_j):  (1 / (u_j - u_i)) integral m du = m_i + w (m_j - m_i),  w = (r ln r - r + 1) / ((r - 1) ln r),
    r = u_j / u_i (w -> 1/2 as r -> 1, the trapezoid; 0.59 at r = 3). For Gaussian data m is constant and any w
    is exact (module docstring, far_modes)."""
    e = u_j / u_i - 1  # r - 1, so that the numerator r ln r - (r - 1) does not cancel against 1
    lr = e.log1p()
    return (((1 + e) * lr - e) / (e * lr)).nan_to_num(0.5)


def _in_axes(t: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """t (N, ...) in the coordinates of the orthonormal columns of axes (D, D): t V, each example flattened.

    Why the principal axes (follow_spread's, where the grid's top was stretched): the width fit is per coordinate,
    and where the modes lie far apart every data coordinate mixes the directions between the modes (spread S_b)
    with those within them (the modes' widths), so the fit reads neither. The eigenvectors of C separate the two.
    Eight modes 1 wide at means 16 N(0, I) in 64-D, 10 calls: the samples ended +5.9 nat too concentrated against
    the exact map, -0.33 in the axes. There the width cap (`cap_widths`) is off: the directions between the modes are
    then a few axes whose widths are rightly far above the median (the spread, where the median is a mode's
    width), and capping them moved mass between modes (64-D as above: 1.5 % against the map's modes, 0.7 %
    uncapped). Where the top is not stretched the data's own coordinates stay: the diagonal mixtures' components are
    aligned with them, which the per-coordinate fit uses. Measured: docs/samplers.md, "Modes far apart"."""
    return (t.reshape(len(t), -1) @ axes.to(t.dtype)).reshape(t.shape)


def _out_of_axes(t: torch.Tensor, axes: torch.Tensor | None) -> torch.Tensor:
    """t back in the data's coordinates (`_in_axes` with V^T); t itself where axes is None."""
    return t if axes is None else _in_axes(t, axes.T)
