"""A time grid that follows the data's mode width, read by the sampler's own calls (issue 5).

The tuned 10-level 2-D grid was chosen on mixtures whose modes are 0.02 .. 0.5 wide. Data with wider modes far
apart (rings of radius 5 .. 20, modes 0.5 .. 1 wide) settle where that grid has few levels, and split_multistep
ends 0.05 .. 0.3 nat too spread. An oracle that scales the grid below sigma_max by c = max(1, 4 w_min), w_min the
narrowest mode width, fixes most of it and moves nothing else (benchmarks/results/samplers_width_oracle.md).
A sampler can read what it needs on the way (VE units, x = x_0 + sigma n):

- **The data's covariance C, from the second call** (sigma_1 = 13.86 on the 10-level grid): where x0_hat is
  close to linear, x0_hat - m = A (x - m) with A = C (C + sigma^2 I)^-1, so the regression of x0_hat on x over
  the batch gives A and C = sigma^2 A (I - A)^-1 (`data_covariance`; exact for Gaussian data at any sigma). The
  first call (sigma_max = 157) would do for exact denoisers, but a trained network's error there, times sigma,
  swamps C / sigma^2: on a moons MLP it read a spread of 12 (the data's is 1), on a ring MLP 0.
- **The mode width, from rows added to the third call** (`probe_rows`, `width_from_probe`): 64 points z from
  N(m, C), each sent as the pair z +- sigma_p n at sigma_p = 0.15. For the Gaussian mode that dominates near z,
  x0_hat(y) = mu + a (y - mu) with a = w^2 / (w^2 + sigma_p^2), so the slope along n,
  a = <x0_hat(z + sigma_p n) - x0_hat(z - sigma_p n), n> / (2 sigma_p |n|^2), gives w = sigma_p sqrt(a / (1 - a)).
  The estimate is the 10 % quantile over the points. Where it reads more than R / 4 (R the data's largest
  standard deviation), the "mode" is a broad background component and the grid is left as it is.

Then the levels after the third are warped, sigma' = sigma_3 (sigma / sigma_3)^p, so that the lowest becomes
c = max(1, 4 w) times its tuned value (`warped_levels`). The probe adds 128 rows to one call; the number of calls
does not change. `Follower` makes a sampler's calls this way: split_multistep, gauss_multistep and unipc take
`follow_width=True`, and sampler="auto" turns it on from 9 calls (`samplers.AUTO_FOLLOW_FROM`).

**The top of the grid follows the spread of the data's modes** (`follow_spread=True`, also auto's default from 9
calls; any dimension). The tuned grids' second level (13.9 .. 47) suits data whose modes spread up to about that;
modes far wider apart are chosen in the one long step from sigma_max (64-D, eight modes 1 wide at means
8 N(0, I): 6.5 % of the mass in other modes than the exact map's at 20 calls). The first call gives
tr(C) = E[(x0_hat - m) . (x - m)] (exact for Gaussian data; from 16 numbers per example the modes' widths, C's
median eigenvalue, taken out: `between_spread`), and where that spread S_b exceeds 1.25 x the second level the
levels after the first are stretched in log sigma about the lowest so that the second is S_b (`topped_levels`).
A first call whose x0_hat varies more than a denoiser's can (a trained network's eps error, times sigma_max = 157)
reads nothing; but a small scale error in a network's eps (x0_hat = beta x) reads as spread (the demo's digits
U-Net: 38.7 where the digits' is about 4). So the second call reads tr C again (`trace_read`, exact in expectation
for any data at any sigma) and where it differs from the first by more than TRACE_AGREE x, the tuned levels return
from the third call on, one call late (docs/samplers.md, "What is not met yet"). Measured
(benchmarks/results/samplers_follow_spread.md, eight modes 1 wide at means s N(0, I) in 8-128 dimensions):
where it triggers the mass moved falls from 0.65-14.8 % to 0.05-1.3 %. At 10 calls in 16-128 dimensions the
log-density gap first grew where it triggered (16-D s = 8: -0.08 -> -0.29 nat). That came from gauss_multistep's
width fit per data coordinate, each coordinate mixing the directions between the modes with those within them:
where the top is stretched (and the second call agreed), `Follower.basis` holds the eigenvectors of C read at the
first call (axes=True), and gauss_multistep fits its widths in those axes (16-D s = 8: -0.02 nat; 64-D s = 16:
+5.86 -> -0.33); auto passes 10 of the 20 cases at 10 calls (the tuned grid 3, the exact map 14). Of the stored
validation sets only the ring of radius 20 is wide enough to change (10 calls, -0.204 -> -0.186 nat).

Measured (auto's sampler at 10, 12 and 20 calls on the stored 2-8-D mixture sets, against the exact PF-ODE map of
the same noise; benchmarks/results/samplers_follow_width.md): the wide classic toys pass 2 of 6 at 10 calls (0),
median |error| 0.155 -> 0.061 nat, mass moved between modes 0.31 -> 0.15 %, and at 20 calls (UniPC) 0.034 ->
0.012 nat. The stored random, full-covariance, background and classic sets keep their PASS counts but one (8-D at
10 calls, 19 -> 18: a distance lost to the true set's noise while the error fell 0.182 -> 0.167); no set's median
grows by more than 0.003 nat (2-D background 0.060 -> 0.047 at 10 calls, 0.019 -> 0.012 at 20). Networks trained
by difflab see standardised data, where modes are narrow and the second call's covariance is noise: on moons,
ring and three-blob MLPs the grid stays (nearly) as tuned, samples within 0.0013 of the tuned grid's distance to
the nets' own PF-ODE maps.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .denoiser import Denoiser, predict_at

__all__ = ["data_covariance", "probe_rows", "width_from_probe", "warped_levels", "trace_read", "between_spread",
           "topped_levels", "Follower", "SIGMA_P", "N_PROBE", "PROBE_CALL"]

SIGMA_P = 0.15      # the probe's noise level (VE sigma)
N_PROBE = 64        # probe points, each sent as an antithetic pair
QUANTILE = 0.1      # the width estimate: this quantile of the probe points' widths
WIDTH_FACTOR = 4.0  # c = max(1, WIDTH_FACTOR w)
C_MAX = 6.0         # the largest scale
BACKGROUND = 0.25   # widths above BACKGROUND x R are a broad component, not a mode: no scaling
MIN_BATCH = 16      # smaller batches keep the tuned grid (the covariance would be noise)
MAX_DIM = 8         # data of more numbers per example keep the tuned grid (measured in 2-8 dimensions only)
TOP_MARGIN = 1.5    # follow_spread: the second level stays at least this factor below sigma_max
TOP_TRIGGER = 1.25  # follow_spread stretches the grid only for data whose modes spread beyond this x its 2nd level
BETWEEN_DIM = 16    # from this many numbers per example the modes' widths are taken out of the spread
SPREAD_SLACK = 2.0  # the spread is read only where sum Var(x0_hat) <= SLACK S^4 / sigma^2 (`between_spread`)
TRACE_AGREE = 2.0   # a stretched top stays only if tr C read at the second call is within this factor of the first
PROBE_CALL = 2      # the call (0-based) that carries the probe rows; the covariance from the one before
AXES_MIN_DIM = 3    # follow_spread's principal axes: from this many numbers per example (2-D samplers do not use them)
AXES_MAX_DIM = 1024  # ... and up to this many (one D x D product per call and side)


def data_covariance(x: torch.Tensor, x0_hat: torch.Tensor, sigma: float):
    """(mean (D,), eigenvectors (D, D), eigenvalues (D,)) of the data's covariance C, from one call at sigma.
    x, x0_hat: (N, D) float64 VE states and the denoiser's x0_hat there.

    x0_hat - m = A (x - m) with A = C (C + sigma^2)^-1: A from the batch's regression, C = sigma^2 A (I - A)^-1.
    Exact for Gaussian data at any sigma; for other data it reads x0_hat's linear part, close to C where sigma is
    above the data's scale (enough to place the probe's points)."""
    xc, dc = x - x.mean(0), x0_hat - x0_hat.mean(0)
    a = torch.linalg.solve(xc.T @ xc, xc.T @ dc).T  # (D, D): dc ~ xc A^T
    a = 0.5 * (a + a.T)
    lam, vec = torch.linalg.eigh(a)
    lam = lam.clamp(0.0, 1 - 1e-12)
    var = sigma * sigma * lam / (1 - lam)
    mean = x0_hat.mean(0) - (x.mean(0) - x0_hat.mean(0)) @ (vec * (lam / (1 - lam))) @ vec.T
    return mean, vec, var


def probe_rows(mean: torch.Tensor, vec: torch.Tensor, var: torch.Tensor, seed: int = 0):
    """(rows (2 N_PROBE, D), directions n (N_PROBE, D)): points z ~ N(mean, C), sent as z + sigma_p n, z - sigma_p n
    (VE units, float64)."""
    g = torch.Generator().manual_seed(seed)
    d = mean.numel()
    z = torch.randn(N_PROBE, d, generator=g, dtype=torch.float64).to(mean.device)
    n = torch.randn(N_PROBE, d, generator=g, dtype=torch.float64).to(mean.device)
    z = mean + (z * var.sqrt()) @ vec.T
    return torch.cat([z + SIGMA_P * n, z - SIGMA_P * n]), n


def width_from_probe(x0_hat_rows: torch.Tensor, n: torch.Tensor) -> float:
    """The probe's width estimate: the QUANTILE of w = sigma_p sqrt(a / (1 - a)) over the points, a the slope of
    x0_hat along n between each pair (module docstring). x0_hat_rows: (2 N_PROBE, D) for `probe_rows`' rows."""
    plus, minus = x0_hat_rows.double().chunk(2)
    a = ((plus - minus) * n).sum(1) / (2 * SIGMA_P * (n * n).sum(1))
    a = a.nan_to_num(nan=0.0).clamp(1e-12, 1 - 1e-12)
    return float(torch.quantile(SIGMA_P * (a / (1 - a)).sqrt(), QUANTILE))


def warped_levels(rest: list[float], top: float, width: float, spread: float) -> list[float]:
    """The levels after the probe's (VE sigmas, decreasing; top: the probe's level), warped so that the lowest is
    c = max(1, WIDTH_FACTOR w) (at most C_MAX) times its tuned value: sigma' = top (sigma / top)^p with
    p = log(c sigma_low / top) / log(sigma_low / top), which keeps the tuned grid's step ratios in proportion
    (scaling them all by c instead squeezed the first step and moved mass between modes: on the wide grid toys
    1.3 -> 2.1 % and 0.5 -> 2.2 %). Unchanged where w > BACKGROUND R."""
    if not math.isfinite(width) or width > BACKGROUND * spread:
        return rest
    c = min(max(1.0, WIDTH_FACTOR * width), C_MAX)
    low = rest[-1]
    if c <= 1.0 or c * low >= top:
        return rest
    p = math.log(c * low / top) / math.log(low / top)
    return [top * (s / top) ** p for s in rest]


def trace_read(x: torch.Tensor, x0_hat: torch.Tensor) -> float:
    """tr C, the data's total variance, from one call at any sigma (x, x0_hat: (N, D)): the batch mean of
    (x0_hat - m) . (x - m). In expectation exact for any data at any sigma (Tweedie: E[x0_hat(x) . (x - m)] =
    E[x0 . (x0 - m + sigma n)] = tr C); its error is the batch's and the denoiser's."""
    xc, dc = x - x.mean(0), x0_hat - x0_hat.mean(0)
    return float((xc * dc).sum()) / (len(x) - 1)


def between_spread(x: torch.Tensor, x0_hat: torch.Tensor, sigma: float) -> float | None:
    """S_b, the spread of the data's modes about their mean (sqrt of the between-mode part of trace C), from one call
    at sigma (x, x0_hat: (N, D) float64 VE states and x0_hat there); None where the call does not read as a
    denoiser's or the batch is too small for the data's dimension.

    E[(x0_hat - m) . (x - m)] = tr(A (C + sigma^2 I)) = tr(C) with A = C (C + sigma^2 I)^-1 (exact for Gaussian
    data at any sigma, close for any data far above its scale). The check: x0_hat's own spread,
    sum Var(x0_hat) = tr(C^2 (C + sigma^2 I)^-1), cannot exceed tr(C)^2 / sigma^2; SPREAD_SLACK times that is
    allowed (a trained network's error in eps, times sigma, breaks it: at sigma_max = 157 it swamps C / sigma^2).
    From 16 numbers per example the modes' own widths are taken out: C's eigenvalues (`data_covariance`, batches of
    at least 2 D) above their median are the between-mode part, the median the modes' width (high-dimensional
    mixtures hold most of tr(C) in their modes' widths: 256-D seed 3 of the stored sets 32.6 of 32.8)."""
    return _read_spread(x, x0_hat, sigma)[0]


def _read_spread(x: torch.Tensor, x0_hat: torch.Tensor, sigma: float):
    """(S_b or None as `between_spread`, tr C (`trace_read`), C's eigenvectors (D, D) where they were needed for S_b,
    else None): the first call's readings, each made once."""
    n, d = x.shape
    s2 = trace_read(x, x0_hat)
    if not (math.isfinite(s2) and s2 > 0):
        return None, s2, None
    dc = x0_hat - x0_hat.mean(0)
    if float((dc * dc).sum()) / (n - 1) > SPREAD_SLACK * s2 * s2 / (sigma * sigma):
        return None, s2, None
    if d < BETWEEN_DIM:
        return math.sqrt(s2), s2, None
    if n < 2 * d:
        return None, s2, None
    try:
        _, vec, var = data_covariance(x, x0_hat, sigma)
    except torch.linalg.LinAlgError:
        return None, s2, None
    return float((var - var.median()).clamp(min=0).sum().sqrt()), s2, vec


def topped_levels(rest: list[float], sigma_max: float, spread: float) -> list[float]:
    """The levels after the first (VE sigmas, decreasing), stretched in log sigma about the lowest so that the
    first of them is the spread of the data's modes S_b (`between_spread`; at most sigma_max / TOP_MARGIN):
    sigma' = low (sigma / low)^q, q = log(S_b / low) / log(sigma_1 / low). Only where S_b > TOP_TRIGGER sigma_1: the
    tuned grids' second level (13.9 .. 47) suits data whose modes spread up to about that; wider data choose their
    modes where such a grid has one long step (64-D, eight modes 1 wide at means 8 N(0, I), S_b = 64: 6.5 % of the
    mass in other modes than the exact map's at 20 calls). Unchanged otherwise."""
    top, low = min(spread, sigma_max / TOP_MARGIN), rest[-1]
    if len(rest) < 2 or spread <= TOP_TRIGGER * rest[0] or top <= rest[0] or rest[0] <= low:
        return rest
    q = math.log(top / low) / math.log(rest[0] / low)
    return [low * (s / low) ** q for s in rest]


def _call_with_rows(denoiser, x_vp, ab: float, rows_ve, progress):
    """One denoiser call on the batch x_vp (N, ...) at level ab and on extra VE rows (M, D) at sigma_p: (x0_hat of
    the batch, x0_hat of the rows), float64."""
    ab_p = 1.0 / (1.0 + SIGMA_P ** 2)
    rows = (rows_ve * math.sqrt(ab_p)).to(x_vp.dtype).reshape(-1, *x_vp.shape[1:])
    levels = torch.cat([torch.full((len(x_vp),), ab, dtype=torch.float64),
                        torch.full((len(rows),), ab_p, dtype=torch.float64)]).to(x_vp.device)
    x0 = denoiser.predict(torch.cat([x_vp, rows]), levels)[0].double()
    if progress:
        progress()
    return x0[:len(x_vp)], x0[len(x_vp):].reshape(len(rows), -1)


class Follower:
    """A sampler's denoiser calls, one per level, that warp the levels after the first call (follow_spread) and
    after call PROBE_CALL (follow_width; module docstring).

    levels: the grid's alpha_bars without the final 1.0 (floats, one per call); `sig` and `levels` (lists) are
    the VE sigmas and alpha_bars the sampler must read after each call (they change after the first and the
    probe's call). follow: the width (off for grids of fewer than 5 levels, batches of fewer than MIN_BATCH or data
    of more than MAX_DIM numbers per example); spread: the top (`topped_levels`; off for grids of fewer than 3
    levels or batches of fewer than MIN_BATCH). Both False: plain calls. dtype: the denoiser's input.
    axes: where the top was stretched (and the second call's check agreed), `basis` becomes the eigenvectors of C
    read at the first call (D, D), for a sampler whose per-coordinate model should run in the data's principal axes
    (gauss_multistep; data of AXES_MIN_DIM .. AXES_MAX_DIM numbers per example and batches of at least 2 D)."""

    def __init__(self, denoiser: Denoiser, levels: list[float], n: int, dim: int, follow: bool, dtype,
                 progress: Callable | None = None, spread: bool = False, axes: bool = False):
        self.denoiser, self.progress, self.dtype = denoiser, progress, dtype
        self.levels = [float(a) for a in levels]
        self.sig = [math.sqrt((1 - a) / a) for a in self.levels]
        self.follow = follow and len(self.levels) >= PROBE_CALL + 3 and n >= MIN_BATCH and dim <= MAX_DIM
        self.follow_spread = spread and len(self.levels) >= 3 and n >= MIN_BATCH
        self.axes = axes and self.follow_spread and AXES_MIN_DIM <= dim <= AXES_MAX_DIM and n >= 2 * dim
        self.width = self.spread = None  # the readings (mode width, spread of the modes), once made
        self.basis = None  # the principal axes (axes=True; set at the second call)
        self._probe = self._largest_std = self._check = self._axes = None

    def set_rest(self, i: int, rest: list[float]):
        """Replace the levels after level i by rest (VE sigmas, decreasing), in sig and levels alike."""
        self.sig[i + 1:] = rest
        self.levels[i + 1:] = [1.0 / (1.0 + s * s) for s in rest]

    def __call__(self, x_ve: torch.Tensor, i: int) -> torch.Tensor:
        """x0_hat (float64, x_ve's shape) at level i for VE states x_ve: one call."""
        x_vp = (x_ve * math.sqrt(self.levels[i])).to(self.dtype)
        if self._probe is not None and i == PROBE_CALL:  # the probe rows ride along; the levels after this follow
            d, d_rows = _call_with_rows(self.denoiser, x_vp, self.levels[i], self._probe[0], self.progress)
            self.width = width_from_probe(d_rows, self._probe[1])
            rest = self.sig[i + 1:]
            if (warped := warped_levels(rest, self.sig[i], self.width, self._largest_std)) is not rest:
                self.set_rest(i, warped)
            return d
        d = predict_at(self.denoiser, x_vp, self.levels[i], self.progress)[0].double()
        if i >= PROBE_CALL:
            return d
        x, x0 = x_ve.double().reshape(len(x_ve), -1), d.reshape(len(x_ve), -1)  # (N, D) for the readings
        if self.follow_spread and i == 0:  # the data's total spread from the first call: the levels after it follow
            self.spread, trace, vec = _read_spread(x, x0, self.sig[0])
            rest = self.sig[1:]
            if self.spread is not None and (topped := topped_levels(rest, self.sig[0], self.spread)) is not rest:
                self.set_rest(0, topped)  # only when changed: alpha_bars recomputed from sigma differ in rounding
                self._check = (trace, rest[:-1])
                if self.axes and vec is None:  # below BETWEEN_DIM the spread needed no decomposition
                    try:
                        vec = data_covariance(x, x0, self.sig[0])[1]
                    except torch.linalg.LinAlgError:
                        pass
                self._axes = vec if self.axes else None
        elif self._check is not None and i == 1:  # the second reading of tr C must agree, or the tuned levels return
            if not 1 / TRACE_AGREE < trace_read(x, x0) / self._check[0] < TRACE_AGREE:
                self.set_rest(1, self._check[1])  # the tuned levels from the second on, one call late (the lowest
                # dropped): below the stretched second level, so the grid stays ordered
            else:
                self.basis = self._axes
            self._check = self._axes = None
        if self.follow and i == PROBE_CALL - 1:  # the data's covariance from this call: where to probe, the spread
            try:
                mean, vec, var = data_covariance(x, x0, self.sig[i])
            except torch.linalg.LinAlgError:  # a degenerate batch (e.g. repeated noise): the tuned grid
                return d
            self._largest_std = float(var.max().sqrt())
            self._probe = probe_rows(mean, vec, var)
        return d
