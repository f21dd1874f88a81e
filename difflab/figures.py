"""More pictures (issue 7), drawn like difflab.plots (matplotlib `Figure`, never pyplot; one file per call):

- `score_field`: a 2-D density with the score field grad log q_t(x) as arrows and Langevin trajectories
  started from one point (seed 003, "Langevin dynamics on a mixture of Gaussians"):
      x_{i+1} = x_i + (s / 2) grad log q_t(x_i) + sqrt(s) z_i,   z_i ~ N(0, I);
- `langevin_paths`: those trajectories;
- `clouds_row`: 2-D point clouds side by side (the reverse process of a 2-D model);
- `animation_gif`: frames (2-D clouds or image grids) as an animated GIF;
- `quality_vs_nfe`: a quality figure against the number of network evaluations, one line per sampler.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from .plots import _marker, _np, _prepare, _save, grid_array

__all__ = ["langevin_paths", "score_field", "clouds_row", "animation_gif", "quality_vs_nfe", "figure_to_image"]


def langevin_paths(score: Callable[[torch.Tensor], torch.Tensor], start, n_paths: int = 3, steps: int = 300,
                   step_size: float = 0.01, seed: int = 0) -> np.ndarray:
    """Langevin dynamics x <- x + s/2 score(x) + sqrt(s) z from one `start` (2,), n_paths chains.
    score: (N, 2) float64 -> (N, 2). Returns (n_paths, steps + 1, 2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.asarray(start, dtype=np.float64)).reshape(1, -1).repeat(n_paths, 1)
    out = [x.clone()]
    for _ in range(steps):
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = x + 0.5 * step_size * score(x).double() + math.sqrt(step_size) * z
        out.append(x.clone())
    return torch.stack(out, 1).numpy()


def score_field(score: Callable[[torch.Tensor], torch.Tensor], path, lim: tuple[float, float, float, float],
                log_density: Callable[[torch.Tensor], torch.Tensor] | None = None, points=None,
                paths: np.ndarray | None = None, title: str = "", density_label: str = "density",
                grid: int = 22) -> Path:
    """Left: the density (exp of log_density on a grid, or a 2-D histogram of `points` (N, 2)) with the
    Langevin `paths` (P, S, 2); right: the score field as unit arrows coloured by log |score|, with the
    same paths. lim = (xmin, xmax, ymin, ymax)."""
    x0, x1, y0, y1 = lim
    fig = Figure(figsize=(10.5, 4.8))
    ax_d, ax_s = fig.subplots(1, 2)
    if log_density is not None:
        gx, gy = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
        lp = log_density(torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))).double().numpy()
        dens = np.exp(lp - lp.max()).reshape(gx.shape)
        ax_d.contourf(gx, gy, dens, levels=20, cmap="viridis")
    elif points is not None:
        pts = _np(points)
        ax_d.hist2d(pts[:, 0], pts[:, 1], bins=80, range=[[x0, x1], [y0, y1]], cmap="viridis")
    ax_d.set_title(density_label, fontsize=10)
    gx, gy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    s = score(torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))).double().numpy()
    norm = np.linalg.norm(s, axis=1)
    unit = s / np.maximum(norm, 1e-12)[:, None]
    q = ax_s.quiver(gx.ravel(), gy.ravel(), unit[:, 0], unit[:, 1], np.log10(np.maximum(norm, 1e-12)),
                    cmap="magma", angles="xy", pivot="mid", width=0.004)
    fig.colorbar(q, ax=ax_s, label=r"$\log_{10} |\nabla_x \log q_t(x)|$")
    ax_s.set_title(r"score field $\nabla_x \log q_t(x)$ (unit arrows)", fontsize=10)
    for ax in (ax_d, ax_s):
        if paths is not None:
            for k, p in enumerate(paths):
                ax.plot(p[:, 0], p[:, 1], lw=1.0, color=f"C{k % 10}", alpha=0.9)
                ax.plot(p[-1, 0], p[-1, 1], "o", ms=4, color=f"C{k % 10}")
            ax.plot(paths[0, 0, 0], paths[0, 0, 1], "*", ms=12, color="w", mec="k", label="start")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
    if paths is not None:
        ax_d.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _cloud_limits(frames: np.ndarray) -> float:
    f = frames[np.isfinite(frames)]
    return 1.08 * max(float(np.quantile(np.abs(f), 0.995)), 1e-6) if f.size else 1.0


def clouds_row(frames, path, labels: Sequence[str] | None = None, title: str = "") -> Path:
    """K 2-D point clouds (K, N, 2) side by side on shared square axes, titled by `labels`."""
    f = _np(frames)
    if f.ndim != 3 or f.shape[2] != 2 or f.shape[0] == 0:
        raise ValueError(f"frames must be (K, N, 2), got shape {tuple(f.shape)}")
    k, n = f.shape[:2]
    lim = _cloud_limits(f)
    size, alpha = _marker(n)
    fig = Figure(figsize=(1.7 * k + 0.4, 2.3))
    axes = fig.subplots(1, k, squeeze=False)[0]
    for j, ax in enumerate(axes):
        ax.scatter(f[j, :, 0], f[j, :, 1], s=size, alpha=alpha, lw=0, color="k", rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if labels is not None:
            ax.set_title(str(labels[j]), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def figure_to_image(fig: Figure) -> Image.Image:
    """Render a matplotlib Figure to an RGB PIL image."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    fig.clear()
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def animation_gif(frames, path, labels: Sequence[str] | None = None, duration_ms: int = 120,
                  hold_last: int = 10) -> Path:
    """An animated GIF of K frames: 2-D clouds (K, N, 2) as scatters on fixed axes, or images
    (K, N, C, H, W) in [0, 1] as grids. The last frame is shown (1 + hold_last) times as long."""
    f = _np(frames)
    images = []
    if f.ndim == 3 and f.shape[2] == 2:
        lim = _cloud_limits(f)
        size, alpha = _marker(f.shape[1])
        for j in range(len(f)):
            fig = Figure(figsize=(4, 4.2))
            ax = fig.add_subplot()
            ax.scatter(f[j, :, 0], f[j, :, 1], s=size, alpha=alpha, lw=0, color="#08519c")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(str(labels[j]) if labels is not None else f"frame {j}", fontsize=10)
            fig.tight_layout()
            images.append(figure_to_image(fig))
    elif f.ndim == 5:
        for j in range(len(f)):
            g = grid_array(f[j])
            scale = max(1, 256 // g.shape[1])
            g = g.repeat(scale, 0).repeat(scale, 1)
            images.append(Image.fromarray(g[..., 0] if g.shape[2] == 1 else g).convert("RGB"))
    else:
        raise ValueError(f"frames must be (K, N, 2) clouds or (K, N, C, H, W) images, got shape {tuple(f.shape)}")
    if not images:
        raise ValueError("no frames to animate")
    durations = [duration_ms] * (len(images) - 1) + [duration_ms * (1 + hold_last)]
    path = _prepare(path)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def quality_vs_nfe(rows: list[dict], path, quality: str, floor: float | None = None, title: str = "") -> Path:
    """One line per sampler: `quality` against "nfe" (log x; log y when all positive). rows: dicts with
    "nfe", the quality key and a name in "method" (and optionally "lib", prefixed)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        nfe, q = r.get("nfe"), r.get(quality)
        if not isinstance(nfe, (int, float)) or not isinstance(q, (int, float)) or not math.isfinite(q):
            continue
        name = " ".join(str(r[k]) for k in ("lib", "method", "sampler") if k in r) or "samples"
        series.setdefault(name, []).append((float(nfe), float(q)))
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    if not series:
        ax.text(0.5, 0.5, f"no rows with 'nfe' and '{quality}'", ha="center", va="center", transform=ax.transAxes)
    allq = [q for pts in series.values() for _, q in pts]
    from matplotlib import colormaps
    cmap = colormaps["tab20"]
    for k, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        ls = "--" if name.startswith("diffusers") else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", ms=3, lw=1.4, color=cmap(k % 20),
                label=name)
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, color="k", lw=1, ls=":", label="floor (real vs real)")
        allq.append(floor)
    ax.set_xscale("log")
    if allq and min(allq) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel(quality)
    ax.grid(alpha=0.25, which="both")
    if series:
        ax.legend(fontsize=7, frameon=False, ncol=2)
    ax.set_title(title or f"{quality} against NFE", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
