"""Drawing many samples from a trained run, in batches, reproducibly, and saving them."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import atomic_write_bytes
from .config import Config
from .denoiser import Denoiser
from .errors import UserError
from .runs import to_data_units
from .samplers import AUTO, alpha_bar_grid, auto_choice, sample
from .samplers import NAMES as SAMPLERS

__all__ = ["generate", "resolve_sampler", "save_npz", "check_writable"]


def resolve_sampler(cfg: Config, den: Denoiser, sampler: str | None, nfe: int | None, options: dict):
    """(sampler, nfe) with the run's defaults filled in and checked; sets the run's ancestral variance in
    `options` unless given."""
    sampler = sampler or cfg.sampler
    if sampler not in SAMPLERS and sampler != AUTO:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)} or {AUTO}")
    nfe = nfe or cfg.nfe or den.schedule.T
    if not 1 <= nfe <= den.schedule.T:
        raise UserError(f"--nfe must be between 1 and T={den.schedule.T}, got {nfe}")
    if sampler == AUTO:
        sampler = auto_choice(nfe, math.prod(cfg.data_shape))
    if sampler == "ancestral":
        options.setdefault("variance", cfg.variance)
    return sampler, nfe


def generate(cfg: Config, den: Denoiser, n: int, seed: int = 0, batch_size: int = 500, sampler: str | None = None,
             nfe: int | None = None, device="cpu", progress: bool = True, trajectory_every: int = 0,
             **options) -> tuple[torch.Tensor, list, torch.Tensor | None]:
    """n samples in data units (images (n, C, H, W) in [0, 1]; vectors (n, D)), the reverse-process
    frames of the first batch every `trajectory_every` steps (list of (B, ...) tensors, x_T first),
    and the class labels (n,) for conditional runs (None otherwise).

    Batch b draws its noise from a generator seeded (seed, b): the same seed and batch size give
    the same samples."""
    if n < 1:
        raise UserError(f"--n must be positive, got {n}")
    sampler, nfe = resolve_sampler(cfg, den, sampler, nfe, options)
    shape = tuple(cfg.data_shape)
    out, frames = [], []
    n_batches = (n + batch_size - 1) // batch_size
    bar = tqdm(total=n_batches * len(alpha_bar_grid(den, nfe)) - n_batches, disable=not progress, unit="step",
               desc=f"sample ({sampler})", file=sys.stderr, dynamic_ncols=True)
    for b in range(n_batches):
        m = min(batch_size, n - b * batch_size)
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + b)
        noise = torch.randn((m, *shape), generator=g, device=device)
        traj = [] if (b == 0 and trajectory_every) else None
        if cfg.conditional:  # classes in turn 0, 1, ..., K-1, 0, ... (written as `labels`)
            den.labels = torch.arange(b * batch_size, b * batch_size + m, device=device) % cfg.num_classes
        x = sample(den, noise, sampler, nfe=nfe, generator=g, progress=lambda: bar.update(1),
                   trajectory=traj, **options)
        if traj is not None:
            frames = [to_data_units(noise, cfg)] + [to_data_units(f, cfg) for f in traj[trajectory_every - 1::
                                                                                         trajectory_every]]
            if len(traj) % trajectory_every:
                frames.append(to_data_units(traj[-1], cfg))
        out.append(to_data_units(x, cfg).cpu())
    bar.close()
    labels = torch.arange(n) % cfg.num_classes if cfg.conditional else None
    return torch.cat(out), frames, labels


def check_writable(path) -> Path:
    """UserError unless `path`'s folder exists (or can be made) and is writable."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        probe = p.parent / f".{p.name}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write '{path}' ({e.strerror}); choose a writable output path")
    if p.is_dir():
        raise UserError(f"'{path}' is a folder; give a file name ending in .npz")
    return p


def save_npz(path, samples: torch.Tensor, labels: torch.Tensor | None = None, **extra) -> Path:
    """Atomically write `samples` (float32) and optional `labels` (int64) to an .npz file."""
    p = check_writable(path)
    arrays = {"samples": samples.detach().cpu().float().numpy()}
    if labels is not None:
        arrays["labels"] = labels.detach().cpu().long().numpy()
    arrays.update({k: np.asarray(v) for k, v in extra.items()})

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_write_bytes(p, write)
    return p
