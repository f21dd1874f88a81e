"""`difflab eval`: named metrics computed on a trained run and/or a file of samples.

A metric is a function `fn(ctx: EvalContext) -> dict` registered with `@metric("name")`; it reads
what it needs from the context (the run's config and denoiser, held-out real data, samples), which
loads each thing once, on first use. Metric modules register themselves on import; their names are
listed in `_METRIC_MODULES`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

__all__ = ["EvalContext", "METRICS", "metric", "evaluate", "available"]

METRICS: dict[str, Callable[[EvalContext], dict]] = {}

# modules that register metrics (imported lazily by `available`)
_METRIC_MODULES: list[str] = [".elbo", ".likelihood_metric", ".metric_suite", ".families"]

# cfg.model -> fn(ctx) -> dict: where "elbo" goes for a run whose model family has its own bound
# (D3PM, VAE, HVAE register in difflab.families); other runs get the registered "elbo" metric.
ELBO_BY_MODEL: dict[str, Callable] = {}


def metric(name: str):
    """Decorator: register `fn(ctx) -> dict` as metric `name`."""
    def deco(fn):
        METRICS[name] = fn
        return fn
    return deco


def available() -> dict[str, Callable]:
    for m in _METRIC_MODULES:
        importlib.import_module(m, __package__)
    return METRICS


@dataclass
class EvalContext:
    """What a metric may need, each loaded lazily and cached.

    checkpoint: run folder or checkpoint file (None when only --samples is given).
    data: data spec of the real data; its held-out split (10%, seed 0, as in training) is the floor.
    samples_path: a .npz of samples made elsewhere (`samples`, optional `labels`); else samples are drawn.
    n, seed, sampler, nfe, batch_size, device: how samples are drawn from the checkpoint.
    out_dir: where metrics may write figures (None: no figures)."""
    checkpoint: str | None = None
    data: str | None = None
    samples_path: str | None = None
    n: int = 1000
    seed: int = 0
    sampler: str | None = None
    nfe: int | None = None
    batch_size: int = 500
    device: str = "cpu"
    progress: bool = True
    out_dir: Path | None = None
    evaluator: str | None = None     # classifier weights for image metrics (default: the one shipped for the data)
    inception: str | None = None     # Inception weights on disk for inception_fid (else $DIFFLAB_INCEPTION)
    _cache: dict = field(default_factory=dict, repr=False)

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def run(self):
        """(cfg, net, denoiser) of the checkpoint."""
        if self.checkpoint is None:
            raise UserError("this metric needs a trained model; give --checkpoint RUN")
        from .runs import load_run
        return self._cached("run", lambda: load_run(self.checkpoint, device=self.device))

    @property
    def cfg(self):
        return self.run[0]

    @property
    def data_spec(self) -> str:
        if self.data:
            return self.data
        if self.checkpoint is not None:
            return self.cfg.data
        raise UserError("this metric needs real data; give --data SPEC")

    @property
    def dataset(self):
        """The full dataset (difflab.data.Dataset) named by --data (or the run's data)."""
        from . import data
        size = self.cfg.image_size if self.checkpoint is not None else None
        return self._cached("dataset", lambda: data.load(self.data_spec, image_size=size))

    @property
    def heldout(self):
        """The held-out split (10%, seed 0), never seen in training."""
        from . import data
        return self._cached("heldout", lambda: data.split(self.dataset, 0.1, seed=0)[1])

    @property
    def train_split(self):
        from . import data
        return self._cached("train_split", lambda: data.split(self.dataset, 0.1, seed=0)[0])

    def real_units(self, ds) -> torch.Tensor:
        """A dataset's x in the units samples are written in ([0, 1] images; raw vectors)."""
        from . import data
        return data.to_unit(ds.x, ds) if ds.kind == "image" else ds.x.float()

    @property
    def samples(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(samples in data units, labels or None), from --samples or drawn from the checkpoint."""
        return self._cached("samples", self._load_or_draw)

    def _load_or_draw(self):
        if self.samples_path is not None:
            p = Path(self.samples_path)
            if not p.is_file():
                raise UserError(f"--samples '{p}' does not exist")
            try:
                z = np.load(p)
                x = torch.from_numpy(np.asarray(z["samples"], dtype=np.float32))
                y = torch.from_numpy(np.asarray(z["labels"])).long() if "labels" in z.files else None
            except (KeyError, ValueError, OSError) as e:
                raise UserError(f"--samples '{p}' is not a difflab samples file (.npz with 'samples'): "
                                f"{str(e).splitlines()[0][:80]}")
            if not torch.isfinite(x).all():
                raise UserError(f"--samples '{p}' holds NaN or infinite values")
            return x, y
        from .generate import generate
        cfg, net, den = self.run
        from .families import is_family
        if is_family(cfg.model):  # D3PM / VAE / HVAE draw their own samples (difflab.families)
            from .families import generate as family_generate
            return family_generate(cfg, net, self.n, self.seed, self.batch_size, self.device, self.progress), None
        with torch.inference_mode():
            x, _, y = generate(cfg, den, self.n, self.seed, self.batch_size, self.sampler, self.nfe, self.device,
                               self.progress)
        return x, y


def evaluate(ctx: EvalContext, names: list[str]) -> dict:
    """{metric name: its dict of figures} for each name, in order."""
    reg = available()
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(sorted(reg))}")
    return {n: _dispatch(n, ctx, reg)(ctx) for n in names}


def _dispatch(name: str, ctx: EvalContext, reg: dict) -> Callable:
    """The metric `name`; "elbo" of a run whose model family has its own bound goes to ELBO_BY_MODEL."""
    if name == "elbo" and ctx.checkpoint is not None and ctx.cfg.model in ELBO_BY_MODEL:
        return ELBO_BY_MODEL[ctx.cfg.model]
    return reg[name]
