"""Pictures: sample grids, the forward and reverse processes, schedules, loss curves, 2-D clouds.

Every `save_*`/plot function writes one PNG at `path` (parent folders are created) and returns the
path. Inputs may be torch tensors or numpy arrays. Images are in display units [0, 1] unless a function
says otherwise. Figures are drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure`, never
through pyplot, so nothing here touches the global backend or leaks open figures; grids are written
with PIL, pixel for pixel.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from .gaussian import q_sample
from .schedules import Schedule

__all__ = ["forward_process", "forward_process_2d", "grid_array", "loss_curve", "noised_frames", "read_log",
           "reverse_strip", "save_grid", "scatter_2d", "schedules_plot"]

DPI = 100
GRID_WIDTH = 512                     # target width in px of `save_grid` when no scale is given
DEFAULT_STEPS = (0, 50, 100, 200, 400, 700, 1000)   # for T = 1000; scaled to other T
_SIGNAL, _NOISE = "#1f77b4", "#d62728"


# --------------------------------------------------------------------------------------------- helpers


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _prepare(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path) -> Path:
    path = _prepare(path)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()
    return path


def _images(images) -> np.ndarray:
    """(N, C, H, W) or (N, H, W) -> float64 (N, C, H, W) in [0, 1], C in {1, 3}; NaN -> 0."""
    x = _np(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no images to draw")
    return np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _show(ax, img_chw: np.ndarray):
    """imshow one (C, H, W) image in [0, 1], grey or RGB, pixels as blocks, no ticks."""
    img = np.clip(img_chw, 0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


# ------------------------------------------------------------------------------------------- grids


def grid_array(images, nrow: int | None = None, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
    """Tile images (N, C, H, W) in [0, 1] into one uint8 array (rows*(H+pad)+pad, nrow*(W+pad)+pad, C).

    `nrow` is the number of images per row (default ceil(sqrt(N))); image k sits at grid row k // nrow,
    column k % nrow, its top-left pixel at (pad + row*(H+pad), pad + col*(W+pad)). Gaps and border are
    `pad` px of grey `pad_value`; unused cells stay `pad_value` too. C is kept (1 for grey, 3 for RGB)."""
    x = _images(images)
    n, c, h, w = x.shape
    nrow = int(nrow) if nrow else math.ceil(math.sqrt(n))
    if nrow < 1 or pad < 0:
        raise ValueError(f"nrow must be >= 1 and pad >= 0, got nrow={nrow}, pad={pad}")
    nrow = min(nrow, n)
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), _to_uint8(np.float64(pad_value)),
                   dtype=np.uint8)
    tiles = _to_uint8(x.transpose(0, 2, 3, 1))          # (N, H, W, C)
    for k in range(n):
        r, col = divmod(k, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = tiles[k]
    return grid


def save_grid(images, path, nrow: int | None = None, scale: int | None = None, pad: int = 1) -> Path:
    """Write images (N, C, H, W) in [0, 1] (C = 1 grey or 3 RGB) as a PNG grid with PIL.

    Each pixel becomes a `scale` x `scale` block (nearest neighbour); the default scale makes the grid
    about 512 px wide (8x8 digits x 64 -> 511 px), never below 1. Grey images give a grey ("L") PNG."""
    grid = grid_array(images, nrow, pad)
    if scale is None:
        scale = max(1, GRID_WIDTH // grid.shape[1])
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)     # uint8: "L" or "RGB"
    path = _prepare(path)
    img.save(path, format="PNG", optimize=True)
    return path


# --------------------------------------------------------------------------------- reverse process


def reverse_strip(frames, path, labels: Sequence[str] | None = None) -> Path:
    """The reverse process as a table: frames (K, N, C, H, W) in [0, 1], x_T first and x_0 last
    (a list of K tensors (N, C, H, W) works too). One row per sample, one column per moment, columns
    titled by `labels` (K strings, e.g. "t=1000")."""
    if isinstance(frames, (list, tuple)):
        frames = np.stack([_np(f) for f in frames])
    f = _np(frames)
    if f.ndim == 4:                                       # (K, N, H, W): grey without a channel axis
        f = f[:, :, None]
    if f.ndim != 5 or f.shape[2] not in (1, 3) or f.shape[0] == 0 or f.shape[1] == 0:
        raise ValueError(f"frames must be (K, N, C, H, W) with C = 1 or 3, got shape {tuple(f.shape)}")
    k, n = f.shape[:2]
    if labels is not None and len(labels) != k:
        raise ValueError(f"got {len(labels)} labels for {k} frames")
    f = np.clip(np.nan_to_num(f, nan=0.0), 0, 1)
    cell = min(1.0, 9.0 / max(k, n))
    fig = Figure(figsize=(k * cell + 0.3, n * cell + 0.8))
    axes = fig.subplots(n, k, squeeze=False, gridspec_kw={"wspace": 0.06, "hspace": 0.06})
    for i in range(n):
        for j in range(k):
            _show(axes[i, j], f[j, i])
    for j in range(k):
        if labels is not None:
            axes[0, j].set_title(str(labels[j]), fontsize=8)
    fig.suptitle(r"reverse process: noise $x_T$ $\rightarrow$ sample $x_0$", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.75 / (n * cell + 0.8))
    return _save(fig, path)


# --------------------------------------------------------------------------------- forward process


def _steps(schedule: Schedule, steps) -> list[int]:
    if steps is None:
        steps = sorted({round(s * schedule.T / 1000) for s in DEFAULT_STEPS})
    steps = [int(s) for s in steps]
    bad = [s for s in steps if not 0 <= s <= schedule.T]
    if bad or not steps:
        raise ValueError(f"steps must lie in 0..T = 0..{schedule.T}, got {steps}")
    return steps


def _alpha_bar_at(schedule: Schedule, steps: Sequence[int]) -> torch.Tensor:
    """alpha_bar at integer steps (0 = clean data), float64 (K,)."""
    return schedule.alpha_bars_with_zero()[torch.as_tensor(list(steps), dtype=torch.long)]


def noised_frames(x0, schedule: Schedule, steps: Iterable[int] | None = None, seed: int = 0) -> torch.Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps at each step, float32 (K, *x0.shape), in data units.

    x0: one example of any shape (an image (C, H, W) in [-1, 1], a point cloud (N, 2), ...).
    One eps ~ N(0, I) drawn from `seed` is shared by all steps, so the frames show the same image
    dissolving (each frame is still an exact draw from q(x_t | x_0)). Step 0 is x0 itself.
    steps default: 0, 50, 100, 200, 400, 700, 1000 scaled to schedule.T; each must lie in 0..T."""
    steps = _steps(schedule, steps)
    x0 = torch.as_tensor(_np(x0))
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    k = len(steps)
    xt = q_sample(x0.expand(k, *x0.shape), _alpha_bar_at(schedule, steps), eps.expand(k, *x0.shape))
    return xt.to(torch.float32)


def _curves(ax, schedule: Schedule, steps: Sequence[int]):
    """sqrt(alpha_bar_t) (signal) and sqrt(1 - alpha_bar_t) (noise) vs t, dotted lines at `steps`."""
    ab = schedule.alpha_bars_with_zero().numpy()
    t = np.arange(schedule.T + 1)
    ax.plot(t, np.sqrt(ab), color=_SIGNAL, lw=2, label=r"signal $\sqrt{\bar\alpha_t}$")
    ax.plot(t, np.sqrt(1 - ab), color=_NOISE, lw=2, label=r"noise $\sqrt{1-\bar\alpha_t}$")
    for s in steps:
        ax.axvline(s, color="0.55", lw=0.8, ls=":")
    ax.set_xlim(0, schedule.T)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step t")
    ax.set_title(f"{schedule.name} schedule, T = {schedule.T}", fontsize=9)
    ax.legend(loc="center right", fontsize=8, frameon=False)
    ax.grid(alpha=0.25)


def _forward_figure(n_panels: int, panel_in: float):
    width, curves_in = max(7.0, n_panels * panel_in + 0.6), 2.2
    height = 0.6 + panel_in + 0.75 + curves_in + 0.5       # title, images, labels + gap, curves, x label
    fig = Figure(figsize=(width, height))
    gs = fig.add_gridspec(2, n_panels, height_ratios=[panel_in, curves_in], hspace=0.75 / (panel_in + curves_in) * 2,
                          wspace=0.08, left=0.6 / width, right=1 - 0.2 / width, top=1 - 0.6 / height,
                          bottom=0.5 / height)
    tops = [fig.add_subplot(gs[0, j]) for j in range(n_panels)]
    return fig, tops, fig.add_subplot(gs[1, :])


def forward_process(x0, schedule: Schedule, path, steps: Iterable[int] | None = None, seed: int = 0) -> Path:
    """One image x0 (C, H, W) in [-1, 1] noised by q(x_t | x_0) at `steps` (top row, shown as
    (x_t + 1) / 2 clipped to [0, 1]) above the signal and noise curves sqrt(ab_t), sqrt(1 - ab_t) vs t,
    with dotted markers at the shown steps. Step 0 is the clean image. See `noised_frames`."""
    x0 = _np(x0)
    if x0.ndim == 4 and x0.shape[0] == 1:
        x0 = x0[0]
    if x0.ndim == 2:
        x0 = x0[None]
    if x0.ndim != 3 or x0.shape[0] not in (1, 3):
        raise ValueError(f"x0 must be one image (C, H, W) with C = 1 or 3, got shape {tuple(x0.shape)}")
    steps = _steps(schedule, steps)
    frames = ((noised_frames(x0, schedule, steps, seed).numpy() + 1) / 2).clip(0, 1)
    ab = _alpha_bar_at(schedule, steps).numpy()
    fig, tops, bottom = _forward_figure(len(steps), 1.25)
    for ax, img, s, a in zip(tops, frames, steps, ab):
        _show(ax, img)
        ax.set_title(f"t = {s}", fontsize=9)
        ax.set_xlabel(rf"$\sqrt{{\bar\alpha}}$={math.sqrt(a):.2f}", fontsize=7)
    fig.suptitle(r"forward process $q(x_t \mid x_0)$: $x_t = \sqrt{\bar\alpha_t}\,x_0 + "
                 r"\sqrt{1-\bar\alpha_t}\,\varepsilon$", fontsize=10)
    _curves(bottom, schedule, steps)
    return _save(fig, path)


def forward_process_2d(points, schedule: Schedule, path, steps: Iterable[int] | None = None,
                       seed: int = 0) -> Path:
    """A 2-D point cloud (N, 2) noised by q(x_t | x_0) at `steps`: one scatter per step on shared
    axes (top), the signal and noise curves below. Step 0 is the clean cloud."""
    pts = _np(points)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"points must be (N, 2), got shape {tuple(pts.shape)}")
    steps = _steps(schedule, steps)
    frames = noised_frames(pts, schedule, steps, seed).numpy()
    lim = 1.08 * max(float(np.quantile(np.abs(frames[np.isfinite(frames)]), 0.998)), 1e-6)
    size, alpha = _marker(len(pts))
    fig, tops, bottom = _forward_figure(len(steps), 1.5)
    for ax, cloud, s in zip(tops, frames, steps):
        ax.scatter(cloud[:, 0], cloud[:, 1], s=size, alpha=alpha, lw=0, color="k", rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t = {s}", fontsize=9)
    fig.suptitle(r"forward process $q(x_t \mid x_0)$ on a 2-D data set", fontsize=10)
    _curves(bottom, schedule, steps)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- schedules


def schedules_plot(schedules: dict[str, Schedule], path) -> Path:
    """alpha_bar and log-SNR against t / T for each named schedule, on two panels side by side."""
    if not schedules:
        raise ValueError("no schedules to plot")
    fig = Figure(figsize=(9, 3.6))
    ax_ab, ax_snr = fig.subplots(1, 2)
    for name, s in schedules.items():
        ab = s.alpha_bars_with_zero().numpy()
        u = np.arange(s.T + 1) / s.T
        label = f"{name} (T={s.T})"
        line, = ax_ab.plot(u, ab, lw=2, label=label)
        ax_snr.plot(u[1:], s.log_snr.numpy(), lw=2, color=line.get_color(), label=label)
    ax_ab.set_title(r"$\bar\alpha(t)$ (signal variance kept)", fontsize=10)
    ax_ab.set_ylim(-0.02, 1.02)
    ax_snr.set_title(r"log-SNR $\lambda(t) = \log \bar\alpha / (1 - \bar\alpha)$", fontsize=10)
    ax_snr.axhline(0, color="0.5", lw=0.8, ls=":")
    for ax in (ax_ab, ax_snr):
        ax.set_xlabel("t / T")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ losses


def read_log(log_path_or_records, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) float64 from a JSONL log or a list of dicts, keeping records with a finite `key`.

    Lines that are not JSON objects (a run killed mid-write leaves a partial last line) are skipped.
    A record without "step" takes the previous step + 1."""
    if isinstance(log_path_or_records, (str, Path)):
        records = []
        with open(log_path_or_records, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    else:
        records = list(log_path_or_records)
    steps, values, last = [], [], 0.0
    for rec in records:
        if not isinstance(rec, dict):
            continue
        step = rec.get("step")
        step = float(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else last + 1
        last = step
        v = rec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(step)
            values.append(float(v))
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _moving_average(v: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values, same length as v (shorter windows at the start)."""
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_curve(log_path_or_records, path, key: str = "loss") -> Path:
    """Training curve from a JSONL log (one object per line with "step" and `key`) or a list of dicts:
    raw values (light) and a trailing moving average (dark) against step, log-scale y when all
    values are positive. An empty log gives a figure that says so."""
    steps, values = read_log(log_path_or_records, key)
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    if len(values) == 0:
        ax.text(0.5, 0.5, f"no finite '{key}' records yet", ha="center", va="center", transform=ax.transAxes)
    else:
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        window = int(np.clip(len(values) // 20, 1, 200))
        ax.plot(steps, values, color="#9ecae1", lw=0.8, label=key)
        if window > 1:
            ax.plot(steps, _moving_average(values, window), color="#08519c", lw=1.8,
                    label=f"moving average ({window} records)")
        if len(values) == 1:
            ax.plot(steps, values, "o", color="#08519c")
        if (values > 0).all():
            ax.set_yscale("log")
        ax.legend(fontsize=8, frameon=False)
        ax.set_title(f"{key}: {values[-1]:.4g} at step {steps[-1]:g} (min {values.min():.4g})", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.25, which="both")
    fig.tight_layout()
    return _save(fig, path)


# -------------------------------------------------------------------------------------- 2-D clouds


def _marker(n: int) -> tuple[float, float]:
    """Marker size and alpha that keep a cloud of n points readable."""
    return (8.0, 0.8) if n <= 500 else (3.0, 0.5) if n <= 5000 else (2.0, 0.4)


def scatter_2d(points, path, reference=None, title: str | None = None) -> Path:
    """2-D samples (N, 2) as a scatter; with `reference` (M, 2) (e.g. the training data) the two are
    drawn side by side on the same axes limits. The limits cover all points but stop half a robust
    span past the 0.5-99.5 % quantiles, so a few stray samples do not squash the picture; how many
    fall outside the view is noted in the panel title."""
    pts = _np(points)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got shape {tuple(pts.shape)}")
    ref = None if reference is None else _np(reference)
    if ref is not None and (ref.ndim != 2 or ref.shape[1] != 2):
        raise ValueError(f"reference must be (M, 2), got shape {tuple(ref.shape)}")
    everything = pts if ref is None else np.concatenate([pts, ref])
    everything = everything[np.isfinite(everything).all(1)]
    if len(everything):       # the full extent, but at most half the robust span beyond the 0.5-99.5 % range
        qlo, qhi = np.quantile(everything, [0.005, 0.995], axis=0)
        reach = 0.5 * (qhi - qlo).max()
        lo = np.maximum(everything.min(0), qlo - reach)
        hi = np.minimum(everything.max(0), qhi + reach)
    else:
        lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * 1.06
    panels = [("samples", pts, "#08519c")] if ref is None else [("data", ref, "0.3"), ("samples", pts, "#08519c")]
    fig = Figure(figsize=(4.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, cloud, color) in zip(axes, panels):
        size, alpha = _marker(len(cloud))
        ax.scatter(cloud[:, 0], cloud[:, 1], s=size, alpha=alpha, lw=0, color=color, rasterized=True)
        ax.set_xlim(centre[0] - half, centre[0] + half)
        ax.set_ylim(centre[1] - half, centre[1] + half)
        ax.set_aspect("equal")
        inside = (np.abs(cloud - centre) <= half).all(1)
        out = int((~inside).sum())
        ax.set_title(f"{name} (n={len(cloud)}" + (f", {out} outside view)" if out else ")"), fontsize=10)
        ax.grid(alpha=0.2)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
