"""`difflab plot KIND --out FILE ...`: each picture of difflab from a user's run, data or benchmark.

KINDs (see difflab.cli_tools.PLOT_KINDS): samples, reverse, forward, schedules, score, gif, loss, nfe.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from . import figures, plots
from .errors import UserError

__all__ = ["make_plot", "model_score_fn", "reverse_frames"]

DEFAULT_NFE = 100


_RUNS: dict = {}


def _run(a):
    """(cfg, net, den) of --checkpoint, loaded once."""
    if not a.checkpoint:
        raise UserError(f"plot {a.kind} needs --checkpoint RUN")
    from .runs import load_run
    if a.checkpoint not in _RUNS:
        _RUNS.clear()
        _RUNS[a.checkpoint] = load_run(a.checkpoint)
    return _RUNS[a.checkpoint]


def _draw(cfg, den, n, seed, nfe, sampler, every):
    """(samples in data units, frames list (x_T first) every `every` steps)."""
    from .generate import generate
    nfe = min(nfe or cfg.nfe or DEFAULT_NFE, den.schedule.T)
    with torch.inference_mode():
        x, frames, _ = generate(cfg, den, n, seed, batch_size=max(n, 1), sampler=sampler, nfe=nfe, progress=False,
                                trajectory_every=max(1, every(nfe)))
    return x, frames, nfe


def reverse_frames(cfg, den, n: int, seed: int = 0, nfe: int | None = None, sampler=None, k: int = 10):
    """(frames (K, n, ...) in data units, x_T first; labels "t=..."), about k + 1 moments."""
    _, frames, nfe = _draw(cfg, den, n, seed, nfe, sampler, lambda m: m // k)
    every = max(1, nfe // k)
    steps = [round(den.schedule.T * (1 - min(i * every, nfe) / nfe)) for i in range(len(frames))]
    return torch.stack([f.cpu() for f in frames]), [f"t={s}" for s in steps]


def model_score_fn(cfg, den, alpha_bar: float):
    """grad_x log q_t(x) of a 2-D run in data units: x_model = (x - mean) / std, score = -eps / sqrt(1 - ab) / std."""
    mean = torch.tensor(cfg.data_mean, dtype=torch.float64)
    std = torch.tensor(cfg.data_std, dtype=torch.float64)

    def score(x):
        xm = ((x.double() - mean) / std).float()
        with torch.inference_mode():
            eps = den.eps(xm, alpha_bar).double()
        return -eps / math.sqrt(1 - alpha_bar) / std
    return score


def _schedule(a):
    from . import schedules
    if a.checkpoint:
        from .runs import build_schedule
        return build_schedule(_run(a)[0])
    return schedules.linear(1000)


def _data(a):
    from . import data
    spec = a.data or (_run(a)[0].data if a.checkpoint else None)
    if spec is None:
        raise UserError(f"plot {a.kind} needs --data SPEC (or --checkpoint RUN)")
    return data.load(spec)


def _plot_samples(a, out):
    if a.samples:
        z = np.load(a.samples)
        if "samples" not in z.files:
            raise UserError(f"--samples '{a.samples}' has no 'samples' array")
        x = torch.from_numpy(np.asarray(z["samples"], dtype=np.float32))
    else:
        cfg, _, den = _run(a)
        x, _, _ = _draw(cfg, den, a.n or (64 if cfg.data_kind == "image" else 2000), a.seed, a.nfe, a.sampler,
                        lambda m: 0)
    if x.ndim == 4:
        return plots.save_grid(x[:a.n or 64], out)
    if x.ndim == 2 and x.shape[1] == 2:
        ref = _data(a).x[:len(x)] if (a.data or a.checkpoint) else None
        return plots.scatter_2d(x, out, reference=ref)
    raise UserError(f"samples of shape {tuple(x.shape[1:])} are neither images nor 2-D points")


def _plot_reverse(a, out):
    cfg, _, den = _run(a)
    if cfg.data_kind == "image":
        frames, labels = reverse_frames(cfg, den, a.n or 6, a.seed, a.nfe, a.sampler)
        return plots.reverse_strip(frames, out, labels)
    _need_2d(cfg)
    frames, labels = reverse_frames(cfg, den, a.n or 2000, a.seed, a.nfe, a.sampler, k=6)
    return figures.clouds_row(frames, out, labels, title=r"reverse process: noise $x_T$ $\rightarrow$ samples $x_0$")


def _need_2d(cfg):
    if cfg.data_kind != "vector" or list(cfg.data_shape) != [2]:
        raise UserError(f"this picture is for 2-D data; the run holds {cfg.data_kind} data of shape {cfg.data_shape}")


def _plot_forward(a, out):
    ds, sched = _data(a), _schedule(a)
    if ds.kind == "image":
        if not 0 <= a.index < len(ds):
            raise UserError(f"--index must be in 0..{len(ds) - 1}, got {a.index}")
        return plots.forward_process(ds.x[a.index], sched, out, seed=a.seed)
    if ds.shape != (2,):
        raise UserError(f"the forward process is drawn for images or 2-D points; '{ds.name}' has shape {ds.shape}")
    return plots.forward_process_2d(ds.x[:a.n or 2000], sched, out, seed=a.seed)


def _plot_schedules(a, out):
    from . import schedules
    scheds = {name: fn(T=1000) for name, fn in schedules.NAMES.items()}
    if a.checkpoint:
        cfg = _run(a)[0]
        scheds[f"this run ({cfg.schedule})"] = _schedule(a)
    return plots.schedules_plot(scheds, out)


def _plot_score(a, out):
    """Model score field (with --checkpoint) or the exact one of a known mixture (--data toy:gmm / toy:gaussian)."""
    from .metric_suite import known_mixture
    t = 0.05 if a.t is None else a.t
    if not 0 < t <= 1:
        raise UserError(f"--t must be in (0, 1], got {t}")
    sched = _schedule(a)
    step = max(1, min(sched.T, round(t * sched.T)))
    ab = float(sched.alpha_bars[step - 1])
    if a.checkpoint:
        cfg, _, den = _run(a)
        _need_2d(cfg)
        score = model_score_fn(cfg, den, ab)
        pts, _, _ = _draw(cfg, den, a.n or 4000, a.seed, a.nfe, a.sampler, lambda m: 0)
        pts = pts.double().numpy()
        std = float(np.mean(cfg.data_std))
        centre = np.asarray(cfg.data_mean, dtype=np.float64)
        log_density, label = None, f"density of {len(pts)} model samples (histogram)"
        what = f"model '{a.checkpoint}'"
    else:
        gm = known_mixture(a.data or "")
        if gm is None:
            raise UserError("plot score needs --checkpoint RUN of a 2-D model, or --data toy:gmm / toy:gaussian "
                            "(known density)")
        def score(x):
            return gm.score(x, ab)

        def log_density(x):
            return gm.log_prob(x, ab)
        pts, label = gm.sample(2000).numpy(), r"exact density $q_t(x)$"
        std, centre, what = 1.0, gm.means.mean(0).numpy(), f"exact {a.data}"   # q_t's noise: (1 - ab) in data units
    half = 1.1 * float(np.quantile(np.abs(pts - centre), 0.995))
    lim = (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)
    step_size = 0.5 * (1 - ab) * std ** 2          # Langevin step, a fraction of the noise variance at level t
    paths = figures.langevin_paths(score, centre, n_paths=3, steps=400, step_size=step_size, seed=a.seed)
    return figures.score_field(score, out, lim, log_density=log_density, points=None if log_density else pts,
                               paths=paths, density_label=label,
                               title=f"{what}: t = {step}/{sched.T} ($\\bar\\alpha$ = {ab:.3f}); 3 Langevin chains "
                                     f"(step {step_size:.2g}) from one start")


def _plot_gif(a, out):
    if Path(out).suffix.lower() != ".gif":
        raise UserError(f"--out '{out}' must end in .gif for plot gif")
    cfg, _, den = _run(a)
    if cfg.data_kind == "image":
        frames, labels = reverse_frames(cfg, den, a.n or 16, a.seed, a.nfe, a.sampler, k=25)
    else:
        _need_2d(cfg)
        frames, labels = reverse_frames(cfg, den, a.n or 1500, a.seed, a.nfe, a.sampler, k=25)
    return figures.animation_gif(frames, out, labels)


def _plot_loss(a, out):
    if not a.checkpoint:
        raise UserError("plot loss needs --checkpoint RUN (a run folder with log.jsonl)")
    log = Path(a.checkpoint) / "log.jsonl"
    if not log.is_file():
        raise UserError(f"'{log}' does not exist; give a run folder made by `difflab train`")
    return plots.loss_curve(log, out)


QUALITY_KEYS = ("fd", "frechet", "fid", "sw2", "sliced_w2", "mmd", "w2", "gap", "kl")


def bench_rows(path) -> tuple[list[dict], dict]:
    """(rows, header) of a benchmark JSON: a dict with "rows", a list of such dicts (rows prefixed by their
    "mixture"/"name"), or a plain list of rows."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read benchmark JSON '{p}' ({str(e).splitlines()[0][:80]})")
    if isinstance(obj, dict) and isinstance(obj.get("rows"), list):
        return [r for r in obj["rows"] if isinstance(r, dict)], obj
    if isinstance(obj, list) and all(isinstance(o, dict) and isinstance(o.get("rows"), list) for o in obj) and obj:
        rows = []
        for o in obj:
            tag = o.get("mixture") or o.get("name")
            rows += [{**r, "method": f"{r.get('method', '')} [{tag}]"} if tag else r for r in o["rows"]]
        return rows, {}
    if isinstance(obj, list):
        return [r for r in obj if isinstance(r, dict)], {}
    raise UserError(f"'{p}' is not a benchmark JSON (a list of rows, or a dict with 'rows')")


def _plot_nfe(a, out):
    path = a.bench or next((p for p in ("benchmarks/results/samplers_vs_diffusers.json",
                                        "benchmarks/samplers_results.json") if Path(p).is_file()), None)
    if path is None:
        raise UserError("plot nfe needs --bench FILE.json (e.g. benchmarks/results/samplers_vs_diffusers_2d.json)")
    rows, head = bench_rows(path)
    keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in ("nfe", "nfe_target")}
    quality = a.quality or next((k for k in QUALITY_KEYS if k in keys), None)
    if quality is None or quality not in keys:
        raise UserError(f"no quality figure {a.quality or ''} in '{path}'; give --quality one of "
                        f"{', '.join(sorted(keys)) or '(none found)'}")
    floor = head.get(f"floor_{quality}", head.get("floor_sw") if quality == "sw2" else None)
    return figures.quality_vs_nfe(rows, out, quality, floor if isinstance(floor, (int, float)) else None,
                                  title=f"{quality} against NFE ({Path(path).name})")


def make_plot(a) -> Path:
    """Draw picture `a.kind` into `a.out`; returns the path."""
    out = Path(a.out)
    if a.kind != "gif" and out.suffix.lower() != ".png":
        raise UserError(f"--out '{a.out}' must end in .png")
    fn = {"samples": _plot_samples, "reverse": _plot_reverse, "forward": _plot_forward, "schedules": _plot_schedules,
          "score": _plot_score, "gif": _plot_gif, "loss": _plot_loss, "nfe": _plot_nfe}[a.kind]
    return fn(a, out)
