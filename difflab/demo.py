"""`difflab demo`: a DDPM on scikit-learn's 8x8 digits, trained, sampled and drawn in ~10 minutes.

Writes into one folder: samples.png (64 samples), reverse_process.png (x_T ... x_0),
forward_process.png (one digit noised, with the signal and noise curves), loss.png,
samples.npz (>= 1000 samples, as `difflab sample` writes them) and the run folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import load_config
from .errors import UserError
from .generate import generate, save_npz

__all__ = ["run_demo"]


def run_demo(out: Path, minutes: float = 8.0, n: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Train, sample and plot into `out`. Returns a dict of the written paths and timings."""
    from . import data as data_lib
    from . import plots
    from .runs import build_schedule, load_run
    from .train import train

    t0 = time.perf_counter()
    out = Path(out)
    run = out / "run"
    if (run / "checkpoint.safetensors").exists():
        raise UserError(f"'{out}' already holds a demo; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("digits", overrides={"seed": seed, "minutes": minutes})
    cfg.steps = None
    _say(progress, f"[1/3] training a DDPM on the 8x8 digits for {minutes:g} minutes -> {run}")
    train(cfg, run, progress=progress)
    t_train = time.perf_counter() - t0

    _say(progress, f"[2/3] drawing {n} samples with the ancestral sampler (T = {cfg.T})")
    cfg, _, den = load_run(run)
    with torch.inference_mode():
        x, frames = generate(cfg, den, n, seed=seed, batch_size=500, progress=progress, trajectory_every=100)
    paths = {"samples_npz": save_npz(out / "samples.npz", x)}
    t_sample = time.perf_counter() - t0 - t_train

    _say(progress, "[3/3] drawing the pictures")
    paths["samples_png"] = plots.save_grid(x[:64], out / "samples.png")
    strip = torch.stack([f[:6].cpu() for f in frames])  # (K, 6, C, H, W)
    steps = [cfg.T - 100 * i for i in range(len(frames))]
    paths["reverse_png"] = plots.reverse_strip(strip, out / "reverse_process.png",
                                               labels=[f"t={max(s, 0)}" for s in steps])
    digit = data_lib.load("digits").x[0]
    paths["forward_png"] = plots.forward_process(digit, build_schedule(cfg), out / "forward_process.png")
    paths["loss_png"] = plots.loss_curve(run / "log.jsonl", out / "loss.png")
    info = {"train_s": round(t_train, 1), "sample_s": round(t_sample, 1),
            "total_s": round(time.perf_counter() - t0, 1), "n_samples": n,
            "steps": json.loads((run / "config.json").read_text()).get("steps"),
            **{k: str(v) for k, v in paths.items()}}
    (out / "demo.json").write_text(json.dumps(info, indent=2))
    print(f"demo done in {info['total_s'] / 60:.1f} min (training {t_train / 60:.1f}, sampling {t_sample / 60:.1f})")
    for k, v in paths.items():
        print(f"  {k:12s} {v}")
    print(f"  {'run':12s} {run}")
    return info


def _say(progress: bool, msg: str):
    if progress:
        print(msg, flush=True)
