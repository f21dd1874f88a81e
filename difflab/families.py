"""The non-Gaussian model families (cfg.model): D3PM (`difflab.d3pm`), VAE and HVAE (`difflab.vae`).

One place that builds, samples and bounds them, so that the trainer, `difflab sample` and `difflab eval` need only
a one-line dispatch on cfg.model. Every family trains on images with discrete levels (the digits' 17) and reports
its negative ELBO on the held-out split in bits/dim: nelbo_nats / (D ln 2), D = C*H*W.
"""
from __future__ import annotations

import math

import torch

from .errors import UserError

__all__ = ["FAMILIES", "is_family", "build_net", "build_objective", "generate", "nelbo_nats", "elbo_metric"]

FAMILIES = ("d3pm", "vae", "hvae")


def is_family(model: str) -> bool:
    return model in FAMILIES


def _module(model: str):
    if model == "d3pm":
        from . import d3pm
        return d3pm
    if model in ("vae", "hvae"):
        from . import vae
        return vae
    raise UserError(f"unknown model family {model!r}; use one of {', '.join(FAMILIES)}")


def build_net(cfg) -> torch.nn.Module:
    return _module(cfg.model).build_net(cfg)


def build_objective(cfg) -> torch.nn.Module:
    return _module(cfg.model).build_objective(cfg)


@torch.no_grad()
def generate(cfg, net, n: int, seed: int = 0, batch_size: int = 500, device="cpu", progress: bool = True):
    """n samples (n, C, H, W) float32 in [0, 1]; batch b draws from a generator seeded (seed, b)."""
    import sys

    from tqdm import tqdm
    if n < 1:
        raise UserError(f"--n must be positive, got {n}")
    net = net.to(device).eval()
    n_batches = (n + batch_size - 1) // batch_size
    steps = cfg.T if cfg.model == "d3pm" else 1
    bar = tqdm(total=n_batches * steps, disable=not progress, unit="step", desc="sample", file=sys.stderr,
               dynamic_ncols=True)
    out = []
    for b in range(n_batches):
        m = min(batch_size, n - b * batch_size)
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + b)
        if cfg.model == "d3pm":
            from . import d3pm
            x = d3pm.sample(cfg, net, m, g, device, progress=lambda: bar.update(1))
        else:
            from . import vae
            x = vae.sample(cfg, net, m, g, device)
            bar.update(1)
        out.append(x.float().cpu())
    bar.close()
    return torch.cat(out)


@torch.no_grad()
def nelbo_nats(cfg, net, x: torch.Tensor, generator: torch.Generator, k: int = 1) -> torch.Tensor:
    """Negative ELBO (nats) per example (N,) of images x (N, C, H, W) in model units [-1, 1].
    k: importance samples for the VAEs (k = 1: the ELBO); D3PM sums all T terms, one x_t draw each."""
    net = net.eval()
    if cfg.model == "d3pm":
        from . import d3pm
        diffusion = d3pm._diffusion(cfg)
        levels = d3pm.levels_from_model_units(x, diffusion.K)
        return d3pm.nelbo(diffusion, levels, d3pm.net_x0_probs(net), generator)
    from . import vae
    return vae.nelbo(net, x, generator, k=k)


def elbo_metric(ctx, k: int = 1) -> dict:
    """{"bits_per_dim", "bits_per_dim_se", "nelbo_nats", "n", "dim"} on the first --n held-out examples."""
    cfg, net, _ = ctx.run
    x = ctx.heldout.x[: ctx.n].to(ctx.device)
    if len(x) == 0:
        raise UserError("elbo needs held-out data, but the held-out split is empty; use a larger data set")
    if not is_family(cfg.model):
        raise UserError(f"elbo-discrete is for models {', '.join(FAMILIES)}, not {cfg.model!r}; use --metrics elbo")
    g = torch.Generator(ctx.device).manual_seed(ctx.seed)
    vals = torch.cat([nelbo_nats(cfg, net, x[i:i + ctx.batch_size], g, k)
                      for i in range(0, len(x), ctx.batch_size)]).double().cpu()
    dim = x[0].numel()
    bpd = vals / (dim * math.log(2))
    return {"bits_per_dim": float(bpd.mean()), "bits_per_dim_se": float(bpd.std() / math.sqrt(len(bpd))),
            "nelbo_nats": float(vals.mean()), "n": len(vals), "dim": dim, "model": cfg.model,
            "bound": f"importance-weighted (k={k})" if k > 1 else "ELBO"}


def _register():
    from .evaluate import ELBO_BY_MODEL, metric
    metric("elbo-discrete")(elbo_metric)
    for model in FAMILIES:
        ELBO_BY_MODEL[model] = elbo_metric


_register()
