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

from . import checkpoint as ckpt
from .config import load_config
from .errors import UserError
from .generate import generate, save_npz

__all__ = ["run_demo"]


NFE = 200  # the demo samples with the ancestral sampler respaced to 200 of the T = 1000 steps (measured on one
# checkpoint: 91.5% confident at 200 against 89.0% at 100, 87.1% with unipc at 20)


MIN_STEPS = 1600  # training steps per 9.5 minutes of budget, at least: a host that trains slower trains on past
# the budget (fresh-clone runs judged by benchmarks/judge_digits.py: 85.0 % confident after 1070 steps on a host
# at 2.7 steps/s, 88.9 % after 1359, 89.4 % after 1619, 88.9-92.5 % after ~2100 at 5.2 steps/s; the target is 88 %)


def _sampling_seconds(cfg, n: int, nfe: int) -> float:
    """Estimated wall time to draw n samples: one timed forward pass at batch 500, scaled."""
    from .runs import build_net
    net = build_net(cfg).eval()
    x, c = torch.randn(500, *cfg.data_shape), torch.full((500,), 500.0)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            t = time.perf_counter()
            net(x, c)
            times.append(time.perf_counter() - t)
    return min(times) * nfe * -(-n // 500) * 1.1


def run_demo(out: Path, minutes: float = 9.5, n: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Train, sample and plot into `out` within about `minutes` of wall time in all (training gets
    what the measured cost of sampling leaves, but at least MIN_STEPS x minutes / 9.5 steps: a slow machine takes
    longer). Returns a dict of the written paths and timings."""
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
    from .runs import normalise
    cfg = load_config("digits", overrides={"seed": seed, "nfe": NFE})
    sample_s = _sampling_seconds(normalise(cfg, data_lib.load("digits")), n, NFE)
    train_min = max(0.1, (minutes * 60 - sample_s - 25 - (time.perf_counter() - t0)) / 60)
    cfg.steps, cfg.minutes = None, train_min
    _say(progress, f"[1/3] training a DDPM on the 8x8 digits for {train_min:.1f} minutes -> {run}")
    train(cfg, run, progress=progress)
    floor = round(MIN_STEPS * minutes / 9.5)
    done = ckpt.load(run)[1]["step"]
    if done < floor:  # a slow host: quality needs the steps, so the budget gives way
        _say(progress, f"      this machine trained {done} steps in the budget; training on to {floor} "
             f"(~{(floor - done) * train_min * 60 / max(done, 1) / 60:.1f} more minutes)")
        train(cfg, run, resume=True, progress=progress, overrides={"steps": floor, "minutes": None})
        done = ckpt.load(run)[1]["step"]
    t_train = time.perf_counter() - t0

    _say(progress, f"[2/3] drawing {n} samples with the ancestral sampler ({NFE} of T = {cfg.T} steps, "
         f"~{sample_s / 60:.1f} min)")
    cfg, _, den = load_run(run)
    with torch.inference_mode():
        x, frames, _ = generate(cfg, den, n, seed=seed, batch_size=500, progress=progress, trajectory_every=NFE // 10)
    paths = {"samples_npz": save_npz(out / "samples.npz", x)}
    t_sample = time.perf_counter() - t0 - t_train

    _say(progress, "[3/3] drawing the pictures")
    paths["samples_png"] = plots.save_grid(x[:64], out / "samples.png")
    strip = torch.stack([f[:6].cpu() for f in frames])  # (K, 6, C, H, W)
    steps = [round(cfg.T * (1 - i / 10)) for i in range(len(frames))]
    paths["reverse_png"] = plots.reverse_strip(strip, out / "reverse_process.png",
                                               labels=[f"t={max(s, 0)}" for s in steps])
    digit = data_lib.load("digits").x[0]
    paths["forward_png"] = plots.forward_process(digit, build_schedule(cfg), out / "forward_process.png")
    paths["loss_png"] = plots.loss_curve(run / "log.jsonl", out / "loss.png")
    info = {"train_s": round(t_train, 1), "sample_s": round(t_sample, 1),
            "total_s": round(time.perf_counter() - t0, 1), "n_samples": n,
            "steps": done,
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
