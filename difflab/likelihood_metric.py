"""`difflab eval --metrics ode-nll`: log p of held-out data under a trained run, by the probability-flow ODE.

For each held-out example x (data units) the PF-ODE gives log p_model(z) of its model-space image z
(`difflab.log_prob`; exact trace for D <= 16, Hutchinson with one Rademacher probe above). Reported:
    continuous data (vectors, standardised z = (x - mean) / std):
        nll_nats = -mean log p_data(x),  log p_data(x) = log p_model(z) - sum_d log std_d,
        and nll_nats_per_dim = nll_nats / D;
    discrete data (images on `levels` values, model units [-1, 1]):
        bits_per_dim with uniform dequantisation (`difflab.bits_per_dim`, a bound on the discrete NLL).
Examples: the first min(n, held-out) of the held-out split (`--n`, default 1000).
"""
from __future__ import annotations

import math

import torch

from .denoiser import Denoiser
from .evaluate import EvalContext, metric
from .likelihood import bits_per_dim, log_prob

__all__ = ["ode_nll"]

EXACT_TRACE_MAX_DIM = 16


@metric("ode-nll")
def ode_nll(ctx: EvalContext) -> dict:
    cfg, _, den = ctx.run
    ds = ctx.heldout
    x = ds.x[: ctx.n].double()
    if len(x) == 0:
        from .errors import UserError
        raise UserError("ode-nll needs held-out data, but the held-out split is empty; use a larger data set")
    d = x[0].numel()
    trace = "exact" if d <= EXACT_TRACE_MAX_DIM else "hutchinson"
    # float64 arithmetic around a float32 network, and no x0 clipping: the density of the model's own score
    net_den = Denoiser(lambda z, ab: den.fn(z.float(), ab).to(z.dtype), den.schedule, den.parameterization)
    g = torch.Generator().manual_seed(ctx.seed)
    values = []
    with torch.inference_mode(False):
        for b in range(0, len(x), ctx.batch_size):
            xb = x[b:b + ctx.batch_size]
            if cfg.conditional:
                den.labels = torch.full((len(xb),), -1, dtype=torch.long)
            # correct_end=False: the plain prior N(0, I) at t_max, the density of what the run's samplers draw
            # (they start there), as in score_sde; the score-read end would fold the net's error at t_max in
            kw = dict(trace=trace, generator=g, rtol=1e-4, atol=1e-4, correct_end=False)
            if ds.levels is not None and ds.kind == "image":
                x01 = ((xb + 1) / 2).clamp(0, 1)
                values.append(bits_per_dim(net_den, x01, ds.levels, lo=-1.0, hi=1.0, **kw))
            else:
                if ds.kind == "vector":
                    mean = torch.tensor(cfg.data_mean, dtype=torch.float64)
                    std = torch.tensor(cfg.data_std, dtype=torch.float64)
                    z, log_jac = (xb - mean) / std, -std.log().sum()
                else:
                    z, log_jac = xb, torch.zeros((), dtype=torch.float64)
                values.append(log_prob(net_den, z, method="ode", **kw) + log_jac)
    v = torch.cat(values)
    out = {"n": len(v), "dim": d, "trace": trace}
    if ds.levels is not None and ds.kind == "image":
        out.update(bits_per_dim=float(v.mean()), bits_per_dim_se=float(v.std() / math.sqrt(len(v))),
                   levels=ds.levels)
    else:
        nll = -v
        out.update(nll_nats=float(nll.mean()), nll_nats_se=float(nll.std() / math.sqrt(len(v))),
                   nll_nats_per_dim=float(nll.mean()) / d)
    return out
