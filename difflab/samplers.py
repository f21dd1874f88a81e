"""Samplers: each a short function (denoiser, x_T, time grid, generator, **options) -> x_0.

`sample(denoiser, noise, sampler=NAME, nfe=K, generator=g, **options)` is the one entry point; `NAMES`
lists what exists. `nfe` is the number of calls of the denoiser's function, whatever the sampler's
order (the adaptive `ode` sampler alone decides its own count). The time grid is part of the sampler:
`sample` builds it from the denoiser's schedule (`make_grid`, each sampler with its own default kind),
or takes `grid=` (a kind from `GRIDS`, a callable (schedule, n) -> alpha_bars, integer steps in 1..T
for timestep respacing, or explicit alpha_bar values).

A grid is an increasing float64 tensor of alpha_bar values (noise decreasing): n levels inside the
schedule's range [ab_T, ab_1] where the denoiser is called, then 1.0 (clean data). Every denoiser call
happens at a level in [ab_T, ab_1]. How a sampler takes its last step to ab = 1 is part of it:
    posterior mean / DDIM's x0 prediction at the last level (ancestral, ddim, reverse SDEs, PC),
    the probability-flow ODE continued to ab = 1 (ODE solvers): one Euler step in sigma^2 of the
    VE form, x_0 = x + sigma^2/2 * score = (x + x0_hat) / 2  (error O(sigma^4) instead of O(sigma^2));
    UniPC by default takes the step that is exact for locally Gaussian data (`_gauss_final`), which
    matters for modes as narrow as the last level's sigma. `gauss_multistep` (its own module) carries
    that idea through every step: the flow of a Gaussian of fitted width is integrated exactly.

Notation: VP x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps; VE x = x_vp / sqrt(ab), sigma^2 = (1 - ab) / ab,
log-SNR lambda = -2 log sigma. ODE solvers work in the VE form: dx/dsigma = (x - x0_hat(x, sigma)) / sigma.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import follow_width as fw
from . import gaussian as G
from . import sde as sdes
from .denoiser import Denoiser
from .denoiser import predict_at as _predict
from .gauss_multistep import gauss_final as _gauss_final
from .gauss_multistep import gauss_multistep
from .schedules import Schedule
from .split_multistep import split_multistep

__all__ = ["sample", "NAMES", "AUTO", "auto_choice", "GRIDS", "timesteps", "alpha_bar_grid", "make_grid",
           "ancestral_variances", "analytic_step_variance", "resolve_variance",
           "tuned_order", "ancestral", "ddim", "langevin", "annealed_langevin", "euler_maruyama", "srk", "pc",
           "heun", "ode", "dpmpp_2m", "dpmpp_3m", "unipc", "gauss_multistep", "split_multistep"]


# ============================================================================================
# time grids
# ============================================================================================
def timesteps(T: int, nfe: int) -> torch.Tensor:
    """`nfe` distinct step indices in 1..T, descending, evenly spaced, always including T.

    (nfe == T gives T, T-1, ..., 1 with no repeats: a classic off-by-one of peers.)"""
    if not 1 <= nfe <= T:
        raise ValueError(f"nfe must be between 1 and T={T}, got {nfe}")
    idx = torch.linspace(T, 1, nfe, dtype=torch.float64).round().long()
    return torch.unique(idx, sorted=True).flip(0)


def alpha_bar_grid(denoiser: Denoiser, nfe: int) -> torch.Tensor:
    """(nfe + 1,) float64: alpha_bar at `timesteps(T, nfe)`, then 1.0 (x_0)."""
    ab = denoiser.schedule.alpha_bars
    steps = timesteps(len(ab), nfe)
    return torch.cat([ab[steps - 1], torch.ones(1, dtype=torch.float64)])


def _range(schedule: Schedule) -> tuple[float, float]:
    """(ab_T, ab_1): the schedule's noisiest and cleanest levels (float64 products, seed 004 eq. 4)."""
    ab = schedule.alpha_bars
    return float(ab[-1]), float(ab[0])


def _sig(ab) -> float:
    ab = float(ab)
    return math.sqrt((1.0 - ab) / ab)


def _ab_of_sigma(sig: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + sig.double() ** 2)


def _grid_uniform(schedule, n):
    """Evenly spaced integer steps T .. 1 (DDPM / DDIM respacing, `timesteps`)."""
    return schedule.alpha_bars[timesteps(schedule.T, n) - 1]


def _grid_time(schedule, n, power=1.0):
    """t_i = t_min + (t_max - t_min) (1 - i/(n-1))^power on the schedule's continuous time."""
    t_min, t_max = sdes.VPSDE(schedule).t_range()
    one = torch.ones(1, dtype=torch.float64)
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64) ** power if n > 1 else one
    log_ab = schedule.alpha_bar(t_min + (t_max - t_min) * u).log()
    # the continuous alpha_bar(t) may miss the discrete ab_T slightly: map [ends] affinely onto it in log
    lo, hi = (math.log(v) for v in _range(schedule))
    a, b = float(schedule.alpha_bar(t_max).log()), float(schedule.alpha_bar(t_min).log())
    return torch.exp(lo + (log_ab - a) * (hi - lo) / (b - a))


def _grid_logsnr(schedule, n):
    """log-SNR uniform between the schedule's extremes (DPM-Solver's default)."""
    lo, hi = _range(schedule)
    lam = torch.linspace(math.log(lo / (1 - lo)), math.log(hi / (1 - hi)), n, dtype=torch.float64)
    return torch.sigmoid(lam)


def _karras_sigmas(s_hi, s_lo, n, rho):
    if n == 1:
        return torch.tensor([s_hi], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    if math.isinf(rho):
        return torch.exp(math.log(s_hi) + i * (math.log(s_lo) - math.log(s_hi)))
    return (s_hi ** (1 / rho) + i * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho


def _grid_karras(schedule, n, rho=7.0):
    """EDM's grid (Karras et al. 2022):
    sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho."""
    lo, hi = _range(schedule)
    return _ab_of_sigma(_karras_sigmas(_sig(lo), _sig(hi), n, rho))


# The "tuned" grid: sigma_max, then the levels below (VE sigmas, schedule-free), for the default UniPC
# of the given order, one table for high-dimensional data (D > 8) and one for low-dimensional data
# ("2d": entries that replace "low"'s for 2-D data).
# "high" was found by benchmarks/samplers_grid_tuning.py (rerun it to regenerate the table and its
# per-problem errors), minimising UniPC's log-density error, exactly computable and data-free, on
#   - Gaussian data N(m, s^2) at 17 scales s in [0.03, 4] (the PF-ODE is linear: output variance known),
#     scaled to the data dimension (in D dims a variance error v shifts log q by -D/2 (v - 1)), and
#   - two-mode 1-D mixtures (modes 1 .. 8 apart; the 1-D PF-ODE map is monotone, so the exact sampler
#     sends quantiles to quantiles), weighted by the number of between-mode directions.
# The grid resolves each data scale and each mode separation as it is crossed, no data set involved.
# "low" (D <= 8, issue 5; benchmarks/samplers_grid_tuning_lowdim.py): in 2-D the error is the mixture's
# own (samples choosing their mode, then settling inside it), so candidate grids were judged by the
# log-density error against the exact PF-ODE map on 40 random 2-D mixtures (2 .. 12 modes 0.3 .. 4 apart,
# widths 0.02 .. 0.5), UniPC with its default "gauss" last step. 10 levels (third pass): Nelder-Mead over the
# nine levels from `_SPREAD_10` on mean |error| + mean SW2 to the exact map's samples: |error| 0.063 -> 0.034
# nat, SW2 to the map 0.064 -> 0.051 (|error| alone: 0.032 but SW2 0.083); 5 .. 8 levels resample
# `_SPREAD_10` (the new entry resampled is worse there), 9 interpolate the new one;
# 20 and 14 levels (second pass, which also scores the samples' mode choice: the SW2 between UniPC's samples
# and the exact map's, and the fraction of samples whose most likely mode differs from the exact map's; the
# mean log-density cannot see a sample that lands in another mode): 20 levels: sigma_max, 45, 18, 8, then
# 4.2 .. 0.033 log-uniform, order 4: mean |error| 0.014 nat, SW2 to the map mean 0.017 / max 0.26, at most
# 0.7 % of a mixture's samples in another mode (the first pass's sigma_max, 50, 20, 5 .. 0.03: 0.013 nat, but
# 0.037 / 0.53 and up to 7.9 % where the layout spans std 3 .. 9, from its one step from sigma 20 to 5);
# Gaussian data of any scale 0.02 .. 12 within 0.006 nat (was 0.033). Seventh pass (`--twenty`, the entry now):
# Nelder-Mead over those 19 levels (order 4, mean |error| + 3 x mean SW2 to map, n = 3000): training |error|
# 0.0146 -> 0.0121 nat, SW2 to map 0.0181 -> 0.0097; on the 21 validation mixtures at n = 40000 |error| median
# 0.0124 -> 0.0105, mean 0.0175 -> 0.0165, SW2 to map 0.033 -> 0.023, mass moved between modes 0.13 -> 0.08 %,
# PASS 14 -> 15 of 21 (the exact map: 17; benchmarks/results/samplers_auto.md, which also has 3 .. 8 dimensions).
# The same for the 14-level entry (`--fourteen`, order 2): in 2-D at n = 40000 |error| median 0.066 -> 0.020 nat,
# SW2 to map 0.071 -> 0.055, mass moved between modes unchanged (0.53 %); in 3 .. 8 dimensions it moved more mass
# between modes (3-D 0.71 -> 0.92 %) and 8-D's |error| rose, so it is a 2-D entry ("2d") and 3 .. 8-D keep this one:
# 14 levels: sigma_max, 40, 14, 6, then 3 .. 0.04, order 2 (order 4 below 15 levels is unstable on mixtures):
# 0.061 nat, SW2 0.041 / 0.56, at most 3.1 % (the first pass: 0.064, 0.065 / 0.87). Validated on other mixtures:
# benchmarks/results/samplers_lowdim_validation.md.
# n below a table's largest entry: log-sigma interpolated over the nearest larger entry (as Align Your
# Steps does), with that entry's order. n above it (high: 11 levels and more; low: 21 and more): sigma_max,
# then n - 1 levels log-uniform in the band sigma `_band_top(n)` .. 0.02 (`_BAND`) for UniPC of order 4; from 21
# levels some of them go above the band's top (`_refined_band`), which trained networks need.
# Measured with the top at 10 on the benchmark's three mixtures (2-D, 64-D, 64-D wide; n = 3000, error = gap
# minus the gap of the exact PF-ODE map of the same noise): at 11, 12, 15, 20, 30 levels the band is within
# 0.26, 0.18, 0.07, 0.04, 0.02 nat where the interpolated high table was 0.81, 0.84, 0.84, 0.56, 0.24 off; at
# <= 10 levels the table wins (10: 0.52 vs 1.6). Levels are clipped to the schedule's range.
# "high" at 10 levels (issue 5, benchmarks/samplers_grid_tuning_highdim.py, which keeps the old entry): the
# Gaussian-tuned entry was within 0.03 nat on Gaussian data but left the mixture transition between sigma 10
# and 0.77 to two steps: on 64 random 64-D mixtures (benchmarks/samplers_highdim_validation.py) it was up to
# 9 nat over-concentrated and beat every diffusers scheduler on 25 of 40 training / 17 of 24 held-out mixtures.
# The 10-level entry "low" then had, evenly spread over sigma 16 .. 0.05 (`_SPREAD_10`), beats them on 33 / 22 (the
# exact PF-ODE map itself: 34 / 23), mean |error| 1.8 -> 1.0 and 1.6 -> 0.8 nat; its cost is on single
# Gaussians of scale 0.2 .. 3 (0.5 .. 1.4 nat off, where diffusers' best is 2.4 .. 4.7 off up to scale 1).
# At 5 .. 7 levels the Gaussian-tuned entries keep the lower median (UniPC, auto's sampler there). At 8 and 9
# levels, where auto runs gauss_multistep, they ended too low (sigma 0.022 and 0.016; the 10-level entry 0.048)
# and its samples too concentrated: 2-6 nat off the exact map on digit-like 64-D mixtures. _SPREAD_10 resampled
# (benchmarks/results/samplers_short_highdim_grid.md, 136 stored mixtures in 16-256 dimensions): at 9 levels 92
# closer to the map, 40 farther, median error 64-D 0.99 -> 0.32 nat, digit-like 0.80 -> 0.31, background 3.38 ->
# 1.49, 256-D 2.99 -> 1.04, mass moved between modes about halved; at 8 levels 84 closer, 47 farther. It loses
# on narrow modes close together (16-D seeds 0-7: 0.22 -> 0.50 at 9 levels) and UniPC's medians move both ways
# (its mass moved halves). On digits U-Nets auto's distance to the net's PF-ODE map at 9 calls 0.071-0.082 ->
# 0.032-0.052 per pixel, at 8 0.084-0.099 -> 0.052-0.061 (scratch, three demo nets, 256 samples).
# Nelder-Mead over the 10-level entry's nine levels on 80 random 64-D mixtures
# (benchmarks/samplers_grid_optimise_highdim.py) lowered the training error (1.02 -> 0.77 nat) but lost held-out
# mixtures (22 -> 20 of 24 beating diffusers; wide ones +2.2 -> +4.1 nat): not adopted.
def _resample(sig: list[float], n: int) -> torch.Tensor:
    """(n - 1,) float64 log-sigmas: the levels sig (a table entry's interior sigmas) resampled to n levels,
    log-sigma interpolated linearly over the entry's positions (first and last level kept)."""
    src = torch.tensor(sig, dtype=torch.float64).log()
    pos = torch.linspace(0, len(src) - 1, n - 1, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=len(src) - 2)
    w = pos - lo
    return src[lo] * (1 - w) + src[lo + 1] * w


_SPREAD_10 = (2, [16.04, 6.205, 2.606, 1.425, 0.7519, 0.356, 0.1965, 0.09294, 0.04779])  # "high"; "low" before
_TUNED: dict[str, dict[int, tuple[int, list[float]]]] = {  # "high"/"low"/"2d" -> n -> (order, sigma_1..)
    "high": {
        5: (2, [4.283, 1.065, 0.1835, 0.0402]),
        6: (2, [5.049, 1.651, 0.3118, 0.1135, 0.0326]),
        7: (2, [6.811, 2.168, 0.5521, 0.1677, 0.0725, 0.0267]),
        8: (2, _resample(_SPREAD_10[1], 8).exp().tolist()),  # 8 and 9 levels: _SPREAD_10 resampled (see above)
        9: (2, _resample(_SPREAD_10[1], 9).exp().tolist()),
        10: _SPREAD_10,
    },
    "low": {  # benchmarks/samplers_grid_tuning_lowdim.py (issue 5): chosen on 40 random 2-D mixtures
        8: (2, _resample(_SPREAD_10[1], 8).exp().tolist()),  # 5 .. 8 levels: _SPREAD_10 resampled
        10: (2, [13.86, 6.817, 2.866, 1.357, 0.7306, 0.4452, 0.179, 0.103, 0.0431]),  # optimised (--optimise)
        14: (2, [40.0, 14.0, 6.0, 3.0, 1.857, 1.149, 0.7114, 0.4403, 0.2725, 0.1687, 0.1044, 0.06462, 0.04]),
        20: (4, [47.08, 16.93, 8.428, 4.691, 3.065, 2.072, 1.48, 1.071, 0.8132, 0.6163, 0.4393, 0.3436, 0.229,
                 0.1742, 0.1166, 0.09259, 0.05912, 0.04717, 0.03297]),  # optimised (--twenty)
    },
    "2d": {  # 2-D only, over "low" (the seventh pass's 14-level entry; in 3 .. 8 dimensions it moved more mass)
        14: (2, [34.98, 9.731, 6.016, 3.005, 1.779, 1.135, 0.7052, 0.5821, 0.3098, 0.1926, 0.1029, 0.05947, 0.04626]),
    },
}
_LOW_DIM = 8
_BAND = (0.02, 4)  # (sigma_lo, UniPC order) of the tuned grid beyond the tables


def _band_top(n: int) -> float:
    """The band's highest sigma for n levels: 10 below 20 levels, 20 from 20 levels (issue 5).

    Topped at 10 the band leaves data wider than ~4 to one step from sigma_max (157) to 10. Measured
    (benchmarks/samplers_band_top.py, error against the exact PF-ODE map): at 20 levels on 24 random 64-D
    mixtures mean |error| 0.089 -> 0.040 nat (max 0.58 -> 0.19), 64-D Gaussians of scale 0.1 .. 6 within
    0.20 nat (was 1.87); at 30 and 50 levels the same picture; the cost is <= 0.01 nat on the benchmark's and
    digit-like 64-D mixtures. Below 20 levels the evidence is mixed (15: digit-like mixtures 0.13 -> 0.25 nat)
    and 12 levels lose outright (random mixtures 0.45 -> 0.80)."""
    return 20.0 if n >= 20 else 10.0


def _table(dim):
    if dim is None or dim > _LOW_DIM:
        return _TUNED["high"]
    return {**_TUNED["low"], **_TUNED["2d"]} if dim <= 2 else _TUNED["low"]


def _tuned_entry(n, dim=None, s_max: float | None = None):
    """(order, interior log-sigmas (n - 1,)) for n levels, interpolating the table when n is not in it;
    beyond the table the log-uniform band, its top refined from _REFINE_FROM levels when s_max is given."""
    table = _table(dim)
    if n > max(table):
        lo, order = _BAND
        if s_max is not None and n >= _REFINE_FROM:
            return order, _refined_band(n, math.log(s_max))
        return order, torch.linspace(math.log(_band_top(n)), math.log(lo), n - 1, dtype=torch.float64)
    if n in table:
        order, sig = table[n]
        return order, torch.tensor(sig, dtype=torch.float64).log()
    k = min(k for k in table if k > n)
    order, sig = table[k]
    return order, _resample(sig, n)


_REFINE_FROM = 21  # from this many levels the band's top is refined too (`_refined_band`)
_TOP_STEP = 3.0    # ... with log-sigma steps this many times the band's


def _refined_band(n: int, log_s_max: float) -> torch.Tensor:
    """(n - 1,) interior log-sigmas for n >= _REFINE_FROM levels: k - 1 levels between sigma_max and the band's
    top `_band_top(n)`, log-uniform with steps _TOP_STEP x the band's, then the band top .. 0.02 (n - k levels).

    With one step from sigma_max (157 on the linear schedule) to the band top (20), the grid never resolves
    the noisiest decade, where an exact denoiser is linear in x but a trained one is not: a learned eps off by
    e(sigma) there moves x_ve by the integral of e over (20, 157), which a single evaluation at sigma_max misses.
    UniPC's error to the PF-ODE map of the demo's digits U-Net then stayed at 0.022 per pixel at 50 and 100 calls
    (refined: 0.0028 / 0.0035), a moons MLP kept 1.5-1.7 % of its samples > 0.5 from its map at 30-100 calls
    (refined: 0.24 % at 30, none at 50 and 100), and a Gaussian with a smooth eps error above sigma 5 stayed
    1.4e-2 off at 30-200 calls (refined: 3.1e-3 at 30, 6.4e-5 at 200; benchmarks/results/samplers_trained_*.md,
    tests/test_samplers_extra.py). Exact 2-D mixtures (21, n = 40000) gain too: SW2 to the exact map at 30 / 50 /
    100 levels 0.020 / 0.014 / 0.013 -> 0.016 / 0.004 / 0.000, mass moved between modes 0.050 / 0.029 / 0.027 ->
    0.040 / 0.004 / 0.000 %; median |error| 0.004 -> 0.006 nat at 30 levels, below 0.001 from 50."""
    top, lo = math.log(_band_top(n)), math.log(_BAND[0])
    a, b = log_s_max - top, top - lo
    k = 1 if a <= 0 else max(1, round((n - 1) * a / (a + _TOP_STEP * b)))  # k steps above, n - 1 - k below
    above = torch.linspace(log_s_max, top, k + 1, dtype=torch.float64)[1:-1]
    return torch.cat([above, torch.linspace(top, lo, n - k, dtype=torch.float64)])


def _grid_tuned(schedule, n, dim=None):
    """sigma_max, then the tuned levels for n (see _TUNED, `_tuned_entry`) and the data dimension, clipped to
    the range."""
    lo, hi = _range(schedule)
    s_max, s_min = _sig(lo), _sig(hi)
    if n < 3:
        return _grid_logsnr(schedule, n)
    _, log_sig = _tuned_entry(n, dim, s_max)
    sig = torch.cat([torch.tensor([s_max], dtype=torch.float64), log_sig.exp().clamp(s_min, s_max)])
    if not bool((sig[:-1] > sig[1:]).all()):  # a schedule too narrow for the table
        return _grid_logsnr(schedule, n)
    return _ab_of_sigma(sig)


def tuned_order(n: int, dim: int | None = None) -> int:
    """The UniPC order the tuned grid for n levels (and data of dimension dim) was made for."""
    return _tuned_entry(n, dim)[0] if n >= 3 else 2


GRIDS: dict[str, Callable] = {
    "uniform": _grid_uniform,
    "time": _grid_time,
    "quadratic": lambda schedule, n: _grid_time(schedule, n, 2.0),
    "logsnr": _grid_logsnr,
    "karras": _grid_karras,
    "tuned": _grid_tuned,
}


def make_grid(schedule: Schedule, n: int, kind="uniform", dim: int | None = None) -> torch.Tensor:
    """(n,) increasing float64 alpha_bars within [ab_T, ab_1], first = the noisiest level used.

    kind: a name in GRIDS ("uniform" integer steps, "time", "quadratic" (more steps at low noise),
    "logsnr", "karras" (rho = 7), "tuned"), a callable (schedule, n) -> alpha_bars, integer step
    indices in 1..T (respacing to any subset of steps), or explicit float alpha_bars. dim: the data's
    dimension (the "tuned" grid depends on it)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"a grid needs at least one level, got {n}")
    lo, hi = _range(schedule)
    if isinstance(kind, str):
        if kind not in GRIDS:
            raise ValueError(f"unknown grid {kind!r}; choose one of {', '.join(GRIDS)}")
        ab = _grid_tuned(schedule, n, dim) if kind == "tuned" else GRIDS[kind](schedule, n)
    elif callable(kind):
        ab = kind(schedule, n)
    else:
        ab = _explicit_grid(schedule, kind)
    ab = torch.as_tensor(ab, dtype=torch.float64).reshape(-1).clamp(lo, hi)
    if len(ab) > 1 and not bool((ab[1:] > ab[:-1]).all()):
        raise ValueError("grid levels must be distinct and ordered from most to least noisy")
    return ab


def _explicit_grid(schedule, grid):
    g = torch.as_tensor(grid)
    if not g.dtype.is_floating_point:
        steps = torch.unique(g.long(), sorted=True).flip(0)
        if len(steps) != g.numel():
            raise ValueError("respaced steps must be distinct")
        if steps.min() < 1 or steps.max() > schedule.T:
            raise ValueError(f"respaced steps must lie in 1..T={schedule.T}")
        return schedule.alpha_bars[steps - 1]
    g = g.double().reshape(-1)
    if len(g) and float(g[-1]) == 1.0:
        g = g[:-1]
    lo, hi = _range(schedule)
    if bool(((g < lo * (1 - 1e-12)) | (g > hi * (1 + 1e-12))).any()):
        raise ValueError(f"grid alpha_bars must lie in the schedule's range [{lo:.3g}, {hi:.6g}]")
    return g


# ============================================================================================
# small helpers shared by the samplers
# ============================================================================================
def _noise_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _record(trajectory, x):
    if trajectory is not None:
        trajectory.append(x)


def _ve_x0(denoiser, progress):
    """D(x_ve, ab) -> x0_hat: the denoiser seen in VE coordinates (x_vp = sqrt(ab) x_ve)."""
    def D(x, ab):
        return _predict(denoiser, x * math.sqrt(float(ab)), ab, progress)[0]
    return D


def _ode_final(x_ve, d, final, fit=None):
    """Last step of an ODE solver from the last level (VE state x_ve, x0_hat d there) to ab = 1.

    "ode": Euler step of dx/d(sigma^2) = (x - x0_hat) / (2 sigma^2) down to sigma = 0, i.e. (x + x0_hat) / 2;
    "denoise": x0_hat (Tweedie, slightly over-concentrated by O(sigma^2 / s^2));  "none": x_ve;
    "gauss": exact for data that are locally Gaussian, per coordinate (`_gauss_final`; needs `fit`, the
    solver's last two evaluations, so UniPC only)."""
    if final == "ode":
        return 0.5 * (x_ve + d)
    if final == "denoise":
        return d
    if final == "none":
        return x_ve
    if final == "gauss" and fit is not None:
        return _gauss_final(x_ve, d, *fit)
    if final == "gauss":
        raise ValueError("final='gauss' needs the last two levels' evaluations: only unipc supports it")
    raise ValueError(f"final must be 'ode', 'denoise', 'gauss' or 'none', got {final!r}")


# ============================================================================================
# DDPM ancestral and DDIM (seeds 001, 002, 004)
# ============================================================================================
def ancestral_variances(grid: torch.Tensor, variance="small") -> torch.Tensor:
    """(len(grid) - 1,) float64 per-step variances of ancestral sampling on `grid` (ending with ab = 1).

    For a step t -> s (a_ts = ab_t / ab_s):
        "small": beta~ = (1 - ab_s) / (1 - ab_t) (1 - a_ts);  "large": beta = 1 - a_ts;
        v in [0, 1]: exp(v log beta + (1 - v) log beta~)  (Improved DDPM's interpolation, fixed v).
    The last step (to ab = 1) has beta~ = 0; its entry is clipped to the previous step's beta~ for
    every choice (improved-diffusion's convention for log variances) so logs stay finite. Samplers add
    no noise on the last step."""
    g = torch.as_tensor(grid, dtype=torch.float64)
    ab_t, ab_s = g[:-1], g[1:]
    a_ts = ab_t / ab_s
    small = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
    large = 1 - a_ts
    if len(small) > 1:
        small[-1] = small[-2]
        large[-1] = small[-2]
    if variance == "small":
        return small
    if variance == "large":
        return large
    v = float(variance)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"variance must be 'small', 'large' or a number in [0, 1], got {variance!r}")
    if v in (0.0, 1.0):
        return large if v == 1.0 else small
    return torch.exp(v * large.log() + (1 - v) * small.log())


def ancestral(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None,
              variance=None, progress: Callable | None = None, trajectory: list | None = None):
    """DDPM ancestral sampling (seed 001 Algorithm 2), on any sub-grid of the schedule (respacing).

    Each step t -> s draws x_s ~ N(mu~(x_t, x0_hat), sigma^2) with mu~ the posterior mean (seed 004 eq. 7).
    variance: None (default): the model's own for a learned-variance denoiser (issue 4), else "analytic";
        "analytic": the reverse kernel's second moment matched (`_ancestral_analytic`, Analytic-DPM); it
        reaches the noise floor at T steps where beta~ does not (64-D mixture at T = 1000: gap -0.01 nat
        against +0.89 for beta~; benchmarks/results/samplers_vs_diffusers.md). It estimates E[eps_hat^2]
        from the batch: a batch of fewer than _ANALYTIC_MIN = 16 numbers (N x dim: N < 8 in 2-D, never
        for images) falls back to "small";
        "small" (beta~, DDPM's and diffusers' default), "large" (beta) or v in [0, 1]: fixed variances from
        `ancestral_variances`; no noise is added on their last step (to x_0).
    (Trained runs sample with their config's fixed variance: difflab.generate.resolve_sampler.)
    x: (N, ...) noise at grid[0]; grid: increasing alpha_bars ending with 1. One denoiser call per step."""
    learned = getattr(denoiser, "variance_type", None)  # a learned-variance model uses its own (issue 4)
    variance = resolve_variance(denoiser, x, variance)  # (learned: the table below is unused)
    if variance == "analytic":
        return _ancestral_analytic(denoiser, x, grid, generator, progress, trajectory)
    if variance not in ("small", "large") and not isinstance(variance, (int, float)):
        raise ValueError(f"variance must be 'small', 'large', 'analytic' or a number in [0, 1], got {variance!r}")
    var_all = ancestral_variances(grid, variance)
    if learned:
        from .vlb import model_log_variance, step_log_variances
        tables = step_log_variances(grid)
    n = x.shape[0]
    for i in range(len(grid) - 1):
        ab_t, ab_s = grid[i].expand(n), grid[i + 1].expand(n)
        x0, _ = _predict(denoiser, x, grid[i], progress)
        mean, _ = G.posterior_mean_var(x0, x, ab_t, ab_s)
        if i < len(grid) - 2:
            std = float(var_all[i]) ** 0.5 if not learned else \
                (0.5 * model_log_variance(learned, tables, i, denoiser._last_v)).exp().to(x.dtype)
            x = mean + std * _noise_like(x, generator)
        else:
            x = mean
        _record(trajectory, x)
    return x


_ANALYTIC_SHRINK = 16  # prior weight, in samples, of the pooled E[eps_hat^2] in `_eps_second_moment`
_ANALYTIC_MIN = 16  # fewer numbers in a batch (N x dim): "analytic" falls back to "small"


def _eps_second_moment(eps: torch.Tensor) -> torch.Tensor:
    """E[eps_hat^2] per coordinate (shape eps.shape[1:], float64) from a batch (N, ...) of predictions:
        (N m_d + k m) / (N + k),  m_d the batch mean of coordinate d, m the mean over batch and coordinates,
    k = _ANALYTIC_SHRINK: the per-coordinate estimate for large batches, shrunk towards the pooled (isotropic,
    Analytic-DPM's own) one for small ones. Measured with the exact denoiser of the benchmark's 64-D mixture
    (batches of N simulated independently, n = 4096): at 100 steps the per-coordinate form alone drifts from
    gap -0.20 (N = 4096) to -0.34 (N = 8) and -0.78 nat (N = 1); shrunk, -0.24 / -0.23 (beta~: +6.1).
    At T = 1000 every N from 1 to 4096 stays at the floor in 64-D (|gap| < 0.1). In 2-D, Gaussian data of
    std 0.05 / 0.1 at T = 1000 keep their variance within 2% for N = 8 (beta~: 13% / 9% low), but N = 2 and
    N = 1 give +24% / +18% on the finer scale (the clamp at 0 turns estimation noise into bias), hence the
    fall-back to beta~ below _ANALYTIC_MIN numbers per batch."""
    e2 = eps.double().pow(2)
    n = e2.shape[0]
    return (n * e2.mean(0) + _ANALYTIC_SHRINK * e2.mean()) / (n + _ANALYTIC_SHRINK)


def _ancestral_analytic(denoiser, x, grid, generator, progress, trajectory):
    """Ancestral sampling with the reverse kernel's second moment matched (Analytic-DPM, Bao et al. 2022,
    diagonal form). The true q(x_s | x_t) has covariance beta~ + c0^2 Cov(x0 | x_t), c0 = sqrt(ab_s) (1 - a_ts)
    / (1 - ab_t) the posterior mean's x0 coefficient; beta~ alone drops the second term and under-disperses
    data finer than the smallest noise levels (in 64-D, +0.9 nat at T = 1000). Averaged over x_t, per
    coordinate d:  E Var(x0_d | x_t) = (1 - ab_t) / ab_t (1 - E[eps_hat_d^2]),  with E[eps_hat_d^2] estimated
    from the batch being sampled (a Monte Carlo draw of the marginal, `_eps_second_moment`: per coordinate,
    shrunk towards the pooled value for small batches, so any batch size works; a sample therefore depends a
    little on the rest of its batch). The step to x_0 draws from N(x0_hat, that variance) too.
    One denoiser call per step."""
    n = x.shape[0]
    for i in range(len(grid) - 1):
        ab_t, ab_s = grid[i], grid[i + 1]
        x0, eps = _predict(denoiser, x, ab_t, progress)
        mean, _ = G.posterior_mean_var(x0, x, ab_t.expand(n), ab_s.expand(n))
        x = mean + analytic_step_variance(eps, ab_t, ab_s).sqrt().to(x.dtype) * _noise_like(x, generator)
        _record(trajectory, x)
    return x


def analytic_step_variance(eps: torch.Tensor, ab_t, ab_s) -> torch.Tensor:
    """The "analytic" variance of the ancestral step ab_t -> ab_s (shape eps.shape[1:], float64):
    beta~ + c0^2 (1 - ab_t) / ab_t (1 - E[eps_hat^2]), E[eps_hat^2] from the batch eps (`_eps_second_moment`)."""
    ab_t, ab_s = float(ab_t), float(ab_s)
    a_ts = ab_t / ab_s
    beta_tilde = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
    c0 = math.sqrt(ab_s) * (1 - a_ts) / (1 - ab_t)
    var_x0 = (1 - ab_t) / ab_t * (1 - _eps_second_moment(eps)).clamp(min=0)
    return beta_tilde + c0 ** 2 * var_x0


def resolve_variance(denoiser: Denoiser, x: torch.Tensor, variance=None):
    """The ancestral variance `ancestral` uses for this denoiser and batch: None -> "small" for a learned-variance
    model (its own variance is used), else "analytic"; "analytic" with fewer than _ANALYTIC_MIN numbers in the
    batch -> "small"."""
    if variance is None:
        variance = "small" if getattr(denoiser, "variance_type", None) else "analytic"
    if variance == "analytic" and x.numel() < _ANALYTIC_MIN:
        variance = "small"  # too few numbers per step to estimate E[eps_hat^2] (see _eps_second_moment)
    return variance


def ddim(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, eta: float = 0.0,
         progress: Callable | None = None, trajectory: list | None = None):
    """DDIM (Song et al. 2021), seed 002: from level t to the *next* grid level s,
        x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z,  sigma^2 = eta^2 beta~(t -> s).
    eta = 0 is deterministic (the PF-ODE's first-order exponential integrator); eta = 1 is ancestral
    with beta~. x: (N, ...); grid: increasing alpha_bars ending with 1. One call per step."""
    for i in range(len(grid) - 1):
        ab_t, ab_s = grid[i], grid[i + 1]
        x0, eps = _predict(denoiser, x, ab_t, progress)
        var = eta ** 2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
        x = float(ab_s.sqrt()) * x0 + float((1 - ab_s - var).clamp(min=0).sqrt()) * eps
        if eta > 0 and i < len(grid) - 2:
            x = x + float(var.sqrt()) * _noise_like(x, generator)
        _record(trajectory, x)
    return x


# ============================================================================================
# Langevin dynamics (seed 003) and annealed Langevin (NCSN, Song & Ermon 2019)
# ============================================================================================
def langevin(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, n_steps: int = 100,
             step_size: float = 0.02, progress: Callable | None = None, trajectory: list | None = None):
    """Langevin dynamics at one noise level (seed 003): with the VE score at sigma = sigma(grid[0])
    (by default the schedule's smallest noise level),
        x <- x + a grad log p(x) + sqrt(2 a) z,   a = step_size (in squared data units),
    run n_steps = nfe times from x (the N(0, I) prior draw). It follows the score to the modes but ignores
    their weights (the score forgets mixing coefficients: the seed's warning); it does not anneal.
    Returns x in data units (the level's VE state, ~ data + sigma noise). One call per step."""
    ab = grid[0]
    a = math.sqrt(float(ab))
    for _ in range(int(n_steps)):
        _, eps = _predict(denoiser, x * a, ab, progress)
        score = -eps * (a / math.sqrt(1 - float(ab)))  # VE score: sqrt(ab) * score_vp
        x = x + step_size * score + math.sqrt(2 * step_size) * _noise_like(x, generator)
        _record(trajectory, x)
    return x


def annealed_langevin(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None,
                      steps_per_level=5, step: float = 0.2, denoise: bool = True,
                      progress: Callable | None = None, trajectory: list | None = None):
    """Annealed Langevin dynamics (NCSN, seed 003 / Song & Ermon 2019 Algorithm 1) in VE units.

    For each level sigma_i of the grid (noisiest first), `steps_per_level` updates
        x <- x + a_i score_i(x) + sqrt(2 a_i) z,  a_i = step * sigma_i^2  (NCSN's eps sigma_i^2 / sigma_L^2),
    then, with denoise=True, one Tweedie step x0 = x + sigma_L^2 score (Jolicoeur-Martineau et al. 2021).
    steps_per_level: an int, or a list of ints per level. x: (N, ...) a N(0, I) draw, scaled to sigma_max."""
    n_lev = len(grid) - 1
    if isinstance(steps_per_level, (list, tuple)):
        per = list(steps_per_level)
    else:
        per = [int(steps_per_level)] * n_lev
    x = x * math.sqrt(1.0 / float(grid[0]))  # the VE prior: x_ve = x_vp / sqrt(ab_T)
    for i in range(n_lev):
        ab = grid[i]
        a, sig2 = math.sqrt(float(ab)), (1 - float(ab)) / float(ab)
        alpha = step * sig2
        for _ in range(per[i]):
            _, eps = _predict(denoiser, x * a, ab, progress)
            score = -eps / math.sqrt(sig2)  # VE score = -eps / sigma
            x = x + alpha * score + math.sqrt(2 * alpha) * _noise_like(x, generator)
        _record(trajectory, x)
    if denoise:
        ab = grid[n_lev - 1]
        x = _predict(denoiser, x * math.sqrt(float(ab)), ab, progress)[0]
    return x


# ============================================================================================
# reverse-time SDEs: Euler-Maruyama, stochastic Runge-Kutta, predictor-corrector (seed 002)
# ============================================================================================
def _sde_setup(denoiser, grid, sde):
    s = sdes.by_name(sde, denoiser.schedule)
    t = s.t_of_alpha_bar_eq(grid[:-1])
    return s, t


def _sde_start(s, t0, x):
    return x * float(s.prior_std(t0))


def _sde_denoise(s, denoiser, x, t, ab, progress):
    """x0_hat at SDE time t (N, ...): the VP denoiser's Tweedie estimate at ab = ab_eq(t) (a grid level)."""
    c = float(s.scale_to_vp(t))
    return _predict(denoiser, c * x, ab, progress)[0]


def _rev_drift(s, denoiser, x, t, progress, probability_flow=False):
    d = s.reverse_drift(denoiser, x, t, probability_flow)
    if progress:
        progress()
    return d


def euler_maruyama(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, sde="vp",
                   progress: Callable | None = None, trajectory: list | None = None):
    """Reverse-time SDE dx = [f - g^2 score] dt + g dw_bar by Euler-Maruyama, for sde = "vp", "subvp", "ve".

    Steps t_i -> t_{i+1} (t_i from the grid's levels, h = t_i - t_{i+1} > 0):
        x <- x - [f(x, t_i) - g(t_i)^2 score(x, t_i)] h + g(t_i) sqrt(h) z,
    then x0_hat at the last level. x: (N, ...) a N(0, I) draw (scaled to the SDE's prior); nfe = levels."""
    s, t = _sde_setup(denoiser, grid, sde)
    x = _sde_start(s, t[0], x)
    for i in range(len(t) - 1):
        h = float(t[i] - t[i + 1])
        _, g = s.sde(x, t[i])
        dw = math.sqrt(h) * _noise_like(x, generator)
        x = x - _rev_drift(s, denoiser, x, t[i], progress) * h + float(g[0]) * dw
        _record(trajectory, x)
    return _sde_denoise(s, denoiser, x, t[-1], grid[-2], progress)


def srk(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, sde="vp",
        first_euler: bool = False, progress: Callable | None = None, trajectory: list | None = None):
    """Reverse-time SDE by a stochastic Runge-Kutta method: stochastic Heun, strong order 1 for the
    additive noise of these SDEs (Kloeden & Platen 1992). With a(x, t) = f - g^2 score, h > 0, dW ~ N(0, h):
        x~ = x - a(x, t) h + g(t) dW
        x' = x - (a(x, t) + a(x~, t')) h / 2 + (g(t) + g(t')) / 2 dW
    then x0_hat at the last level. Two calls per step (first_euler: the first step is Euler-Maruyama)."""
    s, t = _sde_setup(denoiser, grid, sde)
    x = _sde_start(s, t[0], x)
    for i in range(len(t) - 1):
        h = float(t[i] - t[i + 1])
        _, g0 = s.sde(x, t[i])
        dw = math.sqrt(h) * _noise_like(x, generator)
        a0 = _rev_drift(s, denoiser, x, t[i], progress)
        x_e = x - a0 * h + float(g0[0]) * dw
        if first_euler and i == 0:
            x = x_e
        else:
            _, g1 = s.sde(x, t[i + 1])
            a1 = _rev_drift(s, denoiser, x_e, t[i + 1], progress)
            x = x - 0.5 * (a0 + a1) * h + 0.5 * float(g0[0] + g1[0]) * dw
        _record(trajectory, x)
    return _sde_denoise(s, denoiser, x, t[-1], grid[-2], progress)


def pc(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, sde="vp", snr: float = 0.16,
       n_corrector: int = 1, predictor: str = "reverse_diffusion", skip_corrector_first: int = 0,
       progress: Callable | None = None, trajectory: list | None = None):
    """Predictor-corrector sampling (Song et al. 2021, seed 002).

    At each level: `n_corrector` Langevin corrector steps at target signal-to-noise ratio r = snr,
        a = 2 alpha (r ||z|| / ||score||)^2,   x <- x + a score + sqrt(2 a) z
    (norms averaged over the batch as in score_sde; alpha = 1 - beta_i for VP, 1 otherwise), then one
    predictor step to the next level, "reverse_diffusion" (the discretised reverse SDE) or "euler_maruyama":
        VP  x' = (2 - sqrt(1 - beta_i)) x + beta_i score + sqrt(beta_i) z,
        VE  x' = x + (sig_t^2 - sig_s^2) score + sqrt(sig_t^2 - sig_s^2) z   (sub-VP: Euler-Maruyama).
    The first `skip_corrector_first` levels skip the corrector (so any nfe can be met); x0_hat at the end."""
    s, t = _sde_setup(denoiser, grid, sde)
    x = _sde_start(s, t[0], x)
    flat = (lambda v: v.reshape(v.shape[0], -1).norm(dim=1).mean())  # batch-mean norms, as score_sde
    for i in range(len(t) - 1):
        beta_i = float(1 - grid[i] / grid[i + 1])  # the discrete (respaced) beta of this step
        if i >= skip_corrector_first:
            alpha = 1 - beta_i if s.name == "vp" else 1.0
            for _ in range(int(n_corrector)):
                score = s.score(denoiser, x, t[i])
                if progress:
                    progress()
                z = _noise_like(x, generator)
                a = float(2 * alpha * (snr * flat(z) / flat(score).clamp(min=1e-12)) ** 2)
                x = x + a * score + math.sqrt(2 * a) * z
        h = float(t[i] - t[i + 1])
        if predictor == "reverse_diffusion" and s.name in ("vp", "ve"):
            score = s.score(denoiser, x, t[i])
            if progress:
                progress()
            z = _noise_like(x, generator)
            if s.name == "vp":
                x = (2 - math.sqrt(1 - beta_i)) * x + beta_i * score + math.sqrt(beta_i) * z
            else:
                d2 = float(s.sigma(t[i]) ** 2 - s.sigma(t[i + 1]) ** 2)
                x = x + d2 * score + math.sqrt(d2) * z
        elif predictor in ("euler_maruyama", "reverse_diffusion"):
            _, g = s.sde(x, t[i])
            dw = math.sqrt(h) * _noise_like(x, generator)
            x = x - _rev_drift(s, denoiser, x, t[i], progress) * h + float(g[0]) * dw
        else:
            raise ValueError(f"predictor must be 'reverse_diffusion' or 'euler_maruyama', got {predictor!r}")
        _record(trajectory, x)
    return _sde_denoise(s, denoiser, x, t[-1], grid[-2], progress)


# ============================================================================================
# probability-flow ODE: adaptive RK45, Heun, DPM-Solver++ multistep, UniPC
# ============================================================================================
def ode(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, sde="vp", rtol: float = 1e-5,
        atol: float = 1e-5, method: str = "RK45", final: str = "ode", progress: Callable | None = None,
        trajectory: list | None = None):
    """The probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t) (seed 002) solved by scipy's
    adaptive `solve_ivp` (RK45, rtol/atol) from the grid's first level to its last, then the final ODE
    step to ab = 1 (`final`, see `_ode_final`). x: (N, ...). The solver picks its own number of calls."""
    from scipy.integrate import solve_ivp

    s, t = _sde_setup(denoiser, grid, sde)
    x = _sde_start(s, t[0], x)
    shape, dtype = x.shape, x.dtype

    def rhs(tt, y):
        xt = torch.from_numpy(y).reshape(shape).to(dtype)
        return _rev_drift(s, denoiser, xt, tt, progress, probability_flow=True).double().reshape(-1).numpy()

    sol = solve_ivp(rhs, (float(t[0]), float(t[-1])), x.double().reshape(-1).numpy(), method=method,
                    rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"the probability-flow ODE solver failed: {sol.message}")
    x = torch.from_numpy(sol.y[:, -1]).reshape(shape).to(dtype)
    _record(trajectory, x)
    # to VE units at the last level, then the final step to ab = 1
    ab = grid[-2]  # the last level (= ab_eq(t[-1]) up to rounding)
    x_ve = x / float(s.marginal(t[-1])[0])
    d = _ve_x0(denoiser, progress)(x_ve, ab)
    return _ode_final(x_ve, d, final)


def heun(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, first_euler: bool = False,
         final: str = "ode", progress: Callable | None = None, trajectory: list | None = None):
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1): Heun's method on the PF-ODE in VE form,
        d_i = (x - x0_hat(x, sigma_i)) / sigma_i,  x~ = x + (sigma_{i+1} - sigma_i) d_i,
        x_{i+1} = x + (sigma_{i+1} - sigma_i) (d_i + d(x~, sigma_{i+1})) / 2,
    over the grid's levels, then the final ODE step to ab = 1. Two calls per step (first_euler: the first,
    nearly linear step at the highest noise is Euler, so that any nfe can be met) plus one at the end."""
    levels = grid[:-1]
    D = _ve_x0(denoiser, progress)
    x = x / math.sqrt(float(levels[0]))
    for i in range(len(levels) - 1):
        s0, s1 = _sig(levels[i]), _sig(levels[i + 1])
        d0 = (x - D(x, levels[i])) / s0
        x_e = x + (s1 - s0) * d0
        if first_euler and i == 0:
            x = x_e
        else:
            d1 = (x_e - D(x_e, levels[i + 1])) / s1
            x = x + (s1 - s0) * 0.5 * (d0 + d1)
        _record(trajectory, x * math.sqrt(float(levels[i + 1])))
    return _ode_final(x, D(x, levels[-1]), final)


def dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, final: str = "ode",
             progress: Callable | None = None, trajectory: list | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep, in VE form with lambda = -log sigma:
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - e^{-h}) [(1 + 1/(2r)) D_i - 1/(2r) D_{i-1}],
    h = lambda_{i+1} - lambda_i, r = h_{i-1} / h (first step: first order), then the final ODE step."""
    return _dpmpp(denoiser, x, grid, 2, final, progress, trajectory)


def dpmpp_3m(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, final: str = "ode",
             progress: Callable | None = None, trajectory: list | None = None):
    """DPM-Solver++(3M): the third-order multistep data-prediction update (Lu et al. 2022, eq. of the
    3M variant) with D1 / D2 divided differences in lambda; orders ramp up 1, 2, 3."""
    return _dpmpp(denoiser, x, grid, 3, final, progress, trajectory)


def _dpmpp(denoiser, x, grid, order, final, progress, trajectory):
    levels = grid[:-1]
    lam = [-math.log(_sig(a)) for a in levels]
    D = _ve_x0(denoiser, progress)
    x = x / math.sqrt(float(levels[0]))
    hist = []
    for i in range(len(levels)):
        d = D(x, levels[i])
        hist.append(d)
        if i == len(levels) - 1:
            break
        h = lam[i + 1] - lam[i]
        em = math.expm1(-h)  # e^{-h} - 1 = sigma_{i+1}/sigma_i - 1
        k = min(order, i + 1)
        if k == 1:
            x = (1 + em) * x - em * d
        elif k == 2:
            r = (lam[i] - lam[i - 1]) / h
            x = (1 + em) * x - em * ((1 + 0.5 / r) * d - (0.5 / r) * hist[-2])
        else:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (d - hist[-2]) / r0, (hist[-2] - hist[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = (1 + em) * x - em * d + (em / h + 1) * d1 - ((em + h) / h ** 2 - 0.5) * d2
        if len(hist) > 3:
            hist.pop(0)
        _record(trajectory, x * math.sqrt(float(levels[i + 1])))
    return _ode_final(x, hist[-1], final)


def _unipc_coefs(rks, h, p, variant):
    """Solve for UniPC's weights: sum_k a_k r_k^(j-1) = j! psi_{j+1}(h) / (h^j B(h)), j = 1..p, where
    psi_1 = 1 - e^{-h}, psi_{j+1} = h^j / j! - psi_j, and B(h) = h ("bh1") or 1 - e^{-h} ("bh2")."""
    psi = [-math.expm1(-h)]
    for j in range(1, p + 1):
        psi.append(h ** j / math.factorial(j) - psi[-1])
    B = h if variant == "bh1" else -math.expm1(-h)
    b = np.array([math.factorial(j) * psi[j] / (h ** j * B) for j in range(1, p + 1)])
    R = np.array([[rk ** (j - 1) for rk in rks] for j in range(1, p + 1)])
    return np.linalg.solve(R, b), B


def unipc(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, order: int | None = None,
          variant: str = "bh2", corrector: bool = True, final: str = "gauss", follow_width: bool = False,
          follow_spread: bool = False, progress: Callable | None = None, trajectory: list | None = None):
    """UniPC (Zhao et al. 2023), data prediction in VE form, lambda = -log sigma, h = lambda_t - lambda_s:

    predictor UniP-p:  x_t = e^{-h} x_s + (1 - e^{-h}) D_s + B(h) sum_{k<p} a_k (D_{s_k} - D_s) / r_k,
    corrector UniC-p:  the same from x_s with the new D_t added (r = 1), applied once D_t is known,
    so the corrector costs no call; r_k = (lambda_{s_k} - lambda_s) / h. Order-2 predictor and order-1
    corrector use the weight 1/2 (the h -> 0 limit), as in the paper. One call per level, then the final
    step to ab = 1: final="gauss" (default; exact for locally Gaussian data, the width fitted per coordinate
    from the last two evaluations, `_gauss_final`), "ode" or "denoise" (`_ode_final`). order: 1..4 (ramped
    up over the first steps); None: the order the tuned grid of this many levels was made for (`tuned_order`).
    follow_width: warp the levels after the third to the data's mode width (`follow_width.Follower`; data of at
    most 8 numbers per example). follow_spread: stretch the levels after the first to the spread of the data's
    modes (`follow_width.topped_levels`; any dimension)."""
    if order is None:
        order = tuned_order(len(grid) - 1, x[0].numel())
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    den = fw.Follower(denoiser, grid[:-1].tolist(), len(x), x[0].numel(), follow_width, x.dtype, progress,
                      spread=follow_spread)
    levels = den.levels  # the follower may change them (in place) after its first three calls
    x = x / math.sqrt(levels[0])
    hist, x_prev, evals = [], None, []
    for i in range(len(levels)):
        d = den(x, i).to(x.dtype)
        if i <= fw.PROBE_CALL:  # the follower may change the levels after calls 0, 1 and 2
            lam = [-math.log(s) for s in den.sig]
        evals = (evals + [(x, d, den.sig[i])])[-2:]  # for final="gauss"
        if i > 0 and corrector:
            x = _uni_update(hist, lam, i - 1, i, x_prev, min(order, i), variant, d_new=d)
        hist.append(d)
        if i == len(levels) - 1:
            break
        x_prev = x
        x = _uni_update(hist, lam, i, i + 1, x, min(order, i + 1), variant)
        if len(hist) > order:
            hist.pop(0)
        _record(trajectory, x * math.sqrt(float(levels[i + 1])))
    if final == "gauss" and len(evals) < 2:
        final = "ode"  # one level: nothing to fit
    return _ode_final(x, hist[-1], final, fit=evals if final == "gauss" else None)


def _uni_update(hist, lam, s, t, x_s, p, variant, d_new=None):
    """One UniP (d_new None) or UniC step from level s to t; hist[-1] is D_s (for UniC hist ends at s)."""
    h = lam[t] - lam[s]
    em = math.expm1(-h)
    d_s = hist[-1]
    rks, diffs = [], []
    for k in range(1, p):  # previous levels s-1, s-2, ...
        rk = (lam[s - k] - lam[s]) / h
        rks.append(rk)
        diffs.append((hist[-1 - k] - d_s) / rk)
    x_t = (1 + em) * x_s - em * d_s
    if d_new is None:
        if not diffs:
            return x_t
        if p == 2:
            a, B = [0.5], (h if variant == "bh1" else -em)
        else:
            a, B = _unipc_coefs(rks, h, p - 1, variant)
        return x_t + B * sum(float(ak) * dk for ak, dk in zip(a, diffs))
    rks.append(1.0)
    diffs.append(d_new - d_s)
    if p == 1:
        a, B = [0.5], (h if variant == "bh1" else -em)
    else:
        a, B = _unipc_coefs(rks, h, p, variant)
    return x_t + B * sum(float(ak) * dk for ak, dk in zip(a, diffs))


# ============================================================================================
# the registry and the entry point
# ============================================================================================
@dataclass
class _Spec:
    """How `sample` drives a sampler: levels(nfe) grid levels, the default grid kind, extra options(nfe)."""
    levels: Callable[[int], int] = lambda nfe: nfe
    grid: object = "uniform"
    options: Callable[[int], dict] = field(default=lambda nfe: {})


def _two_per_step(nfe):  # Heun / SRK: m steps of 2 calls (+1 final); an even nfe makes the first step Euler
    return nfe // 2 + 1


def _pc_options(nfe, n_corrector=1):
    q, r = divmod(max(nfe - 1, 0), 1 + n_corrector)
    return {"skip_corrector_first": r}


def _pc_levels(nfe, n_corrector=1):
    q, r = divmod(max(nfe - 1, 0), 1 + n_corrector)
    return q + r + 1


def _langevin_grid(schedule, n):
    return schedule.alpha_bars[:1].clone()  # the smallest noise level


def _annealed_levels(nfe, steps_per_level=5, denoise=True):
    return max(1, (nfe - int(denoise)) // steps_per_level)


def _annealed_options(nfe, steps_per_level=5, denoise=True):
    n_lev = _annealed_levels(nfe, steps_per_level, denoise)
    per = [steps_per_level] * n_lev
    per[-1] += (nfe - int(denoise)) - steps_per_level * n_lev  # the remainder at the last level
    return {"steps_per_level": per}


NAMES: dict[str, Callable] = {
    "ancestral": ancestral, "ddim": ddim,
    "langevin": langevin, "annealed_langevin": annealed_langevin,
    "euler_maruyama": euler_maruyama, "srk": srk, "pc": pc,
    "ode": ode, "heun": heun, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc,
    "gauss_multistep": gauss_multistep, "split_multistep": split_multistep,
}

_SPECS: dict[str, _Spec] = {
    "ancestral": _Spec(),
    "ddim": _Spec(),
    "langevin": _Spec(levels=lambda nfe: 1, grid=_langevin_grid, options=lambda nfe: {"n_steps": nfe}),
    "annealed_langevin": _Spec(levels=_annealed_levels, grid="karras", options=_annealed_options),
    "euler_maruyama": _Spec(grid="time"),
    "srk": _Spec(levels=_two_per_step, grid="time", options=lambda nfe: {"first_euler": nfe % 2 == 0}),
    "pc": _Spec(levels=_pc_levels, grid="time", options=_pc_options),
    "ode": _Spec(levels=lambda nfe: 2, grid="logsnr"),
    "heun": _Spec(levels=_two_per_step, grid="karras", options=lambda nfe: {"first_euler": nfe % 2 == 0}),
    "dpmpp_2m": _Spec(grid="logsnr"),
    "dpmpp_3m": _Spec(grid="logsnr"),
    "unipc": _Spec(grid="tuned"),
    "gauss_multistep": _Spec(grid="tuned"),
    "split_multistep": _Spec(grid="tuned"),
}

AUTO = "auto"  # `sample(..., sampler="auto")`: the sampler measured closest for this budget and dimension


def auto_choice(nfe: int, dim: int) -> str:
    """The sampler that sampler="auto" runs for nfe calls on data of dim numbers per example (issue 5).

    Chosen on Gaussian mixtures against the exact PF-ODE map, the issue's judge
    (benchmarks/results/samplers_auto.md, measured in 2 .. 64 dimensions at 5 .. 20 calls): split_multistep
    for 9 .. 12 calls in 1 .. 2 dimensions (at 11 and 12 on the 2-D grid resampled from its 14-level entry: on
    the 21 2-D mixtures at n = 40000 |dgap| median 0.033 / 0.024 nat, mass moved between modes 0.87 / 0.63 %
    against UniPC's 0.036 / 0.029 nat and 1.15 / 0.90 %), gauss_multistep for 8 .. 12 calls in 3 or more, UniPC
    otherwise (fewer calls, where gauss_multistep's mean error has outliers; 13 and more calls)."""
    if dim <= 2 and 9 <= nfe <= 12:
        return "split_multistep"
    if dim >= 3 and 8 <= nfe <= 12:
        return "gauss_multistep"
    return "unipc"


GAUSS_ONLY = ("principal_axes", "far_modes", "width_fit")  # auto drops these where it runs another sampler
AUTO_FOLLOW_FROM = 9  # auto's grid follows the data (`follow_width`: the mode width, `follow_spread`: the spread of
#                      the modes) from this many calls: at 8 the width moved the error around (2-D wide toys 3
#                      closer, 3 farther; 6-D and 8-D wide modes farther)
_ADAPTIVE = {"ode"}  # samplers whose call count the solver decides
_SDE_SAMPLERS = {"euler_maruyama", "srk", "pc", "ode"}  # samplers with an sde= option


@torch.inference_mode()
def sample(denoiser: Denoiser, noise: torch.Tensor, sampler: str = "ancestral", nfe: int | None = None,
           generator: torch.Generator | None = None, grid=None, **options) -> torch.Tensor:
    """x_0 (N, ...), in noise's dtype, from `noise` (N, ...), a standard normal draw of the prior at the schedule's
    largest noise level (VP units; SDE samplers rescale it to their own prior, e.g. x_ve = x / sqrt(ab_T)).

    sampler: one of NAMES, or "auto" (`auto_choice`: the sampler measured closest to the exact PF-ODE map
    for this nfe and data size, with follow_width=True and follow_spread=True from AUTO_FOLLOW_FROM calls unless
    told otherwise; principal_axes=, far_modes= and width_fit= reach gauss_multistep only);
    nfe: denoiser calls (default: the schedule's T; ignored by the adaptive
    "ode"); grid: override the sampler's default time grid (see `make_grid`); options go to the sampler
    (variance=, eta=, sde=, order=, snr=, final=, progress= (called once per call), trajectory=, ...).
    Defaults worth knowing: "ancestral" matches its kernel's second moment (variance="analytic", from batch
    statistics) unless the denoiser has a learned variance; "unipc" uses the "tuned" grid for the data's
    dimension with the order it was tuned for; "gauss_multistep" and "split_multistep" (same grid) are
    closer at about 10 calls, the first in 3 or more dimensions, the second in 2; UniPC at 20 calls
    (benchmarks/results/samplers_auto.md)."""
    if sampler == AUTO:
        calls = denoiser.schedule.T if nfe is None else int(nfe)
        sampler = auto_choice(calls, noise[0].numel())  # split_multistep, gauss_multistep or unipc
        options.setdefault("follow_width", calls >= AUTO_FOLLOW_FROM)  # `follow_width`
        options.setdefault("follow_spread", calls >= AUTO_FOLLOW_FROM)
        if sampler != "gauss_multistep":  # options of the one sampler with a per-coordinate width model
            for name in GAUSS_ONLY:
                options.pop(name, None)
    if sampler not in NAMES:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(NAMES)} or {AUTO}")
    spec = _SPECS[sampler]
    if sampler in _SDE_SAMPLERS and "sde" not in options and denoiser.schedule.name == "ve":
        options["sde"] = "ve"  # a VE-trained model (schedules.ve) runs the VE SDE unless told otherwise
    if nfe is None and grid is not None and not isinstance(grid, str) and not callable(grid) \
            and spec.levels(7) == 7 and sampler not in ("pc", "annealed_langevin"):
        nfe = len(make_grid(denoiser.schedule, 1, grid))  # one call per level: the grid sets nfe
    nfe = denoiser.schedule.T if nfe is None else int(nfe)
    if nfe < 1:
        raise ValueError(f"nfe must be at least 1, got {nfe}")
    if sampler == "pc":
        n_levels = _pc_levels(nfe, options.get("n_corrector", 1))
        auto = _pc_options(nfe, options.get("n_corrector", 1))
    elif sampler == "annealed_langevin":
        spl, den_ = options.pop("steps_per_level", 5), options.get("denoise", True)
        n_levels = _annealed_levels(nfe, spl, den_)
        auto = _annealed_options(nfe, spl, den_) if isinstance(spl, int) else {"steps_per_level": spl}
    else:
        n_levels, auto = spec.levels(nfe), spec.options(nfe)
    explicit = grid is not None and not isinstance(grid, str) and not callable(grid)
    if explicit:
        levels = make_grid(denoiser.schedule, 1, grid)
        if len(levels) != n_levels and sampler not in _ADAPTIVE:
            raise ValueError(f"sampler {sampler!r} with nfe={nfe} needs a grid of {n_levels} levels, "
                             f"got {len(levels)}")
    else:
        kind = spec.grid if grid is None else grid
        levels = make_grid(denoiser.schedule, n_levels, kind, dim=noise[0].numel())
        if sampler == "unipc" and "order" not in options:  # the order goes with the grid
            auto = {**auto, "order": tuned_order(n_levels, noise[0].numel()) if kind == "tuned" else 2}
    full = torch.cat([levels, torch.ones(1, dtype=torch.float64)])
    x = noise * G.expand(torch.ones(1, dtype=torch.float64), noise)  # a copy; noise is N(0, I) at ab_T ~ 0
    out = NAMES[sampler](denoiser, x, full, generator=generator, **{**auto, **options})
    return out.to(noise.dtype)  # a float64 fn promotes the float32 trajectory; hand back the noise's dtype
