"""The exact variational bound of a Gaussian diffusion, per example, in nats and bits per dimension.

    -log p(x_0) <= L_T + sum_{t>1} L_{t-1} + L_0                                              (seed 004 eq. 5)

every KL term in closed form (vlb.py), each L_{t-1} estimated with one draw x_t ~ q(x_t | x_0) per
example and step (improved DDPM's `calc_bpd_loop`). The bound is taken on the denoiser's full schedule
or on a respaced grid (a respaced model is a different latent-variable model, evaluated on its own steps).
Works for any Denoiser (networks, `from_eps` functions, learned or fixed variance).

Units: data on a grid of `levels` values in [-1, 1] (images) get the discretised decoder and a bound on
the probability of the discrete data: bits/dim = nats / (D ln 2). Continuous vectors get a Gaussian
decoder and a density bound; a run that standardised its vectors z = (x - mean) / std reports the density
of x by adding the log-Jacobian sum(log std) (`log_jacobian`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import gaussian as G
from .samplers import alpha_bar_grid
from .vlb import decoder_nll, normal_kl, p_mean_logvar, prior_kl, step_log_variances

__all__ = ["ElboTerms", "elbo", "summarize"]


@dataclass
class ElboTerms:
    """Per-example terms in nats. prior (N,) = L_T; kl (K-1, N) = L_{t-1} for the steps from the noisiest;
    decoder (N,) = L_0; steps (K,) = the grid's alpha_bars (noisiest first); dim = D."""
    prior: torch.Tensor
    kl: torch.Tensor
    decoder: torch.Tensor
    steps: torch.Tensor
    dim: int
    log_jacobian: float = 0.0

    @property
    def total(self) -> torch.Tensor:
        """-ELBO per example (N,) in nats, in the data's own units."""
        return self.prior + self.kl.sum(0) + self.decoder + self.log_jacobian


@torch.no_grad()
def elbo(den, x0: torch.Tensor, nfe: int | None = None, grid=None, levels: int | None = None,
         variance: str = "small", generator: torch.Generator | None = None, log_jacobian: float = 0.0,
         batch_size: int = 1000, decoder_affine=None) -> ElboTerms:
    """The bound for x0 (N, ...) in the model's space ([-1, 1] images, standardised vectors).

    nfe: respace the schedule to that many steps (default: all T); grid: explicit alpha_bars (K + 1,),
    noisiest first, ending with 1 (overrides nfe). levels: data levels (discretised decoder) or None
    (Gaussian). variance: "small" | "large" for fixed-variance denoisers (learned ones use their own).
    decoder_affine: (shift, scale) shaped like one example when the denoiser lives in coordinates
    y = (x - shift) / scale (PriorGrad): the KL terms are the same in y and x, the decoder is taken on x."""
    if grid is None:
        grid = alpha_bar_grid(den, nfe or den.schedule.T)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if float(grid[-1]) != 1.0 or len(grid) < 2:
        raise ValueError("grid must hold at least one noise level and end with alpha_bar = 1")
    parts = [_elbo_batch(den, x0[i:i + batch_size], grid, levels, variance, generator, decoder_affine)
             for i in range(0, len(x0), batch_size)]
    prior, kl, dec = (torch.cat([p[k] for p in parts], dim=-1) for k in range(3))
    return ElboTerms(prior, kl, dec, grid[:-1], x0[0].numel(), float(log_jacobian))


def _elbo_batch(den, x0, grid, levels, variance, generator, affine=None):
    tables = step_log_variances(grid)
    K = len(grid) - 1
    x64 = x0.double()
    prior = prior_kl(x0, grid[0])
    kls = []
    dec = None
    for i in range(K):
        n = len(x0)
        ab_t, ab_s = grid[i].expand(n), grid[i + 1].expand(n)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = G.q_sample(x0, ab_t, noise)
        _, mean, logvar = p_mean_logvar(den, x_t, grid, i, tables, variance)
        if i < K - 1:
            q_mean, q_var = G.posterior_mean_var(x64, x_t.double(), ab_t, ab_s)
            logvar = torch.as_tensor(logvar, dtype=torch.float64)
            kl = normal_kl(q_mean, q_var.log(), mean, logvar)
            kls.append(kl.reshape(n, -1).sum(1))
        else:
            if affine is None:
                dec = decoder_nll(x0, mean, logvar, levels)
            else:
                sh, sc = (a.double().to(x0.device) for a in affine)
                dec = decoder_nll(sh + sc * x64, sh + sc * mean, logvar + 2 * sc.log(), levels)
    kl = torch.stack(kls) if kls else torch.zeros(0, len(x0), dtype=torch.float64)
    return prior, kl, dec


def summarize(terms: ElboTerms) -> dict:
    """Mean and standard error of the bound (nats per example, nats/dim, bits/dim) and its breakdown."""
    n, D = terms.total.shape[0], terms.dim
    tot = terms.total

    def se(v):
        return float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "nll_nats": float(tot.mean()), "nll_nats_se": se(tot),
        "nats_per_dim": float(tot.mean()) / D, "nats_per_dim_se": se(tot) / D,
        "bits_per_dim": float(tot.mean()) / (D * math.log(2)), "bits_per_dim_se": se(tot) / (D * math.log(2)),
        "L_T": float(terms.prior.mean()), "L_t_sum": float(terms.kl.sum(0).mean()), "L_0": float(terms.decoder.mean()),
        "log_jacobian": terms.log_jacobian, "steps": len(terms.steps), "n_examples": n, "dim": D,
    }


def plot_terms(terms: ElboTerms, path, title: str = "") -> None:
    """Mean per-step terms in nats/dim against the step index k (1 = the decoder L_0, K + 1 = the prior L_T)."""
    import numpy as np
    from matplotlib.figure import Figure
    K = len(terms.steps)
    kl = (terms.kl.mean(1) / terms.dim).numpy()[::-1]  # steps k = 2..K (L_1 ... L_{K-1})
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(np.arange(2, K + 1), np.maximum(kl, 1e-12), lw=1, label="L_{t-1} (KL)")
    ax.scatter([1], [max(float(terms.decoder.mean()) / terms.dim, 1e-12)], color="C3", label="L_0 (decoder, -log p)")
    ax.scatter([K + 1], [max(float(terms.prior.mean()) / terms.dim, 1e-12)], color="C2", label="L_T (prior KL)")
    ax.set_xlabel("step t")
    ax.set_ylabel("nats / dim")
    ax.set_title(title or f"ELBO terms ({K} steps)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")


def _register():
    from .evaluate import metric

    @metric("elbo")
    def elbo_metric(ctx) -> dict:
        """The bound on the held-out split (all of --data when it is not the run's own data): bits/dim for
        discrete data, nats/dim of the density in data units for vectors. VDM runs: the continuous-time bound."""
        cfg, net, den = ctx.run
        own = ctx.data is None or ctx.data == cfg.data
        ds = ctx.heldout if own else ctx.dataset
        x = ds.x.float().to(ctx.device)
        log_jac, levels = 0.0, None
        if cfg.data_kind == "vector":
            mean = torch.tensor(cfg.data_mean, dtype=torch.float32, device=x.device)
            std = torch.tensor(cfg.data_std, dtype=torch.float64)
            x = (x - mean) / std.float().to(x.device)
            log_jac = float(std.log().sum())
        else:
            levels = ds.levels
        g = torch.Generator(ctx.device).manual_seed(ctx.seed)
        if cfg.model == "vdm":
            res = _vdm_summary(den.vdm, net, x, g, log_jac, ctx.batch_size)
        else:
            # fixed variance on continuous data: beta (large) is the reverse variance at both ends of the chain;
            # beta-tilde loosens the bound by ~ Euler's gamma / 2 = 0.29 nat/dim at the low-noise end (test_elbo)
            variance = "large" if cfg.data_kind == "vector" else cfg.variance
            affine = getattr(den, "whitening", None)
            if affine is not None:   # PriorGrad: the denoiser works on y = (x - mu) / std
                mu, sd = (a.to(x.device) for a in affine)
                x = (x - mu) / sd
            terms = elbo(den, x, nfe=ctx.nfe, levels=levels, variance=variance, generator=g,
                         log_jacobian=log_jac, batch_size=ctx.batch_size, decoder_affine=affine)
            res = summarize(terms)
            res["variance"] = den.variance_type or variance
            if ctx.out_dir is not None:
                p = Path(ctx.out_dir) / "elbo_terms.png"
                plot_terms(terms, p, f"ELBO terms: {res['bits_per_dim']:.3f} bits/dim, {res['steps']} steps")
                res["plot"] = str(p)
        res["decoder"] = f"discretised Gaussian, {levels} levels" if levels else "Gaussian (density, data units)"
        res["examples"] = "held-out split of the run's data" if own else f"all of {ctx.data_spec}"
        return res

    return elbo_metric


def _vdm_summary(objective, net, x, generator, log_jac, batch_size, n_times: int = 16) -> dict:
    from .vdm import continuous_elbo
    prior, recon, diff = continuous_elbo(objective, net, x, generator, n_times, batch_size)
    terms = ElboTerms(prior, diff[None], recon, torch.zeros(0), x[0].numel(), log_jac)
    res = summarize(terms)
    res.update(steps="continuous", n_times_per_example=n_times, L_recon=res.pop("L_0"),
               L_diffusion=res.pop("L_t_sum"), L_prior=res.pop("L_T"))
    return res


_register()
