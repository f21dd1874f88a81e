"""Pictures of conditioning: a class-by-guidance-scale grid, ILVR rows for several N beside the reference,
inpainting before and after. Images (…, C, H, W) in display units [0, 1]; each function writes one PNG."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .guidance import lowpass
from .plots import DPI, _images, _prepare, _show, grid_array

__all__ = ["guidance_grid", "ilvr_figure", "inpaint_figure"]


def _save(fig: Figure, path):
    path = _prepare(path)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()
    return path


def guidance_grid(images, scales: Sequence[float], path, title: str = "guidance scale",
                  row_labels: Sequence[str] | None = None):
    """images (K, S, m, C, H, W): m samples of class k at scale s. One panel per scale, classes as rows."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    k, s, m = x.shape[:3]
    fig = Figure(figsize=(max(4.0, 1.0 + 0.32 * m * s), 1.0 + 0.32 * k), dpi=DPI)
    axes = fig.subplots(1, s, squeeze=False)[0]
    for j, ax in enumerate(axes):
        tiles = x[:, j].reshape(k * m, *x.shape[3:])
        ax.imshow(grid_array(tiles, nrow=m)[..., 0] if x.shape[3] == 1 else grid_array(tiles, nrow=m),
                  cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"{scales[j]:g}", fontsize=9)
        ax.set_xticks([])
        h = x.shape[-2] + 1
        ax.set_yticks([1 + h * i + h / 2 - 1 for i in range(k)] if j == 0 else [])
        if j == 0:
            ax.set_yticklabels(row_labels or [str(i) for i in range(k)], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def ilvr_figure(reference, rows: dict, path, title: str = "ILVR (seed 002, Algorithm 3)"):
    """reference (C, H, W); rows {N: samples (m, C, H, W)}. Each row: phi_N(reference), then the samples;
    the reference itself on the left of the first row."""
    ref = _images(torch.as_tensor(np.asarray(reference))[None])[0]
    factors = list(rows)
    m = max(len(v) for v in rows.values())
    fig = Figure(figsize=(0.75 * (m + 2), 0.8 * len(factors) + 0.5), dpi=DPI)
    axes = fig.subplots(len(factors), m + 2, squeeze=False)
    for i, n in enumerate(factors):
        _show(axes[i, 0], ref) if i == 0 else axes[i, 0].axis("off")
        if i == 0:
            axes[i, 0].set_title("reference", fontsize=8)
        low = lowpass(torch.from_numpy(ref)[None], int(n))[0].numpy()
        _show(axes[i, 1], low)
        axes[i, 1].set_ylabel(f"N = {n}", fontsize=8)
        if i == 0:
            axes[i, 1].set_title("phi_N(ref)", fontsize=8)
        samples = _images(rows[n])
        for j in range(m):
            if j < len(samples):
                _show(axes[i, j + 2], samples[j])
            else:
                axes[i, j + 2].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def inpaint_figure(reference, mask, samples, path, title: str = "inpainting"):
    """reference (C, H, W), mask (C, H, W) 1 = known, samples (m, C, H, W): reference | input (unknown
    pixels shown in red) | samples."""
    ref = _images(torch.as_tensor(np.asarray(reference))[None])[0]
    msk = np.asarray(mask, dtype=np.float64)[:1]
    grey = ref.mean(0, keepdims=True)
    masked = np.concatenate([grey * msk + (1 - msk) * 1.0, grey * msk, grey * msk])  # unknown -> red
    samples = _images(samples)
    m = len(samples)
    fig = Figure(figsize=(0.8 * (m + 2), 1.3), dpi=DPI)
    axes = fig.subplots(1, m + 2, squeeze=False)[0]
    _show(axes[0], ref)
    axes[0].set_title("reference", fontsize=8)
    _show(axes[1], masked)
    axes[1].set_title("known", fontsize=8)
    for j in range(m):
        _show(axes[j + 2], samples[j])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
