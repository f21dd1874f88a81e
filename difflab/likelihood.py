"""Exact likelihood by the probability-flow ODE (seed 002; Song et al. 2021, Chen et al. 2018).

Along the PF-ODE dz/dt = f~(z, t) = f(z, t) - 1/2 g(t)^2 score(z, t), the instantaneous change of
variables gives d log p_t(z_t) / dt = -div f~(z_t, t). Integrating the data point forward from the
smallest noise level t_min to t_max:

    log p_{t_min}(z_min) = log p_prior(z_max) + int_{t_min}^{t_max} div f~(z_t, t) dt,
    div f~ = div f - 1/2 g^2 div score         (div f = -beta/2 D for VP and sub-VP, 0 for VE).

The divergence is the exact trace of the score's Jacobian (D backward passes; low dimension) or
Hutchinson's estimate E_v[v^T J v] with a Rademacher or Gaussian probe v fixed along the path.

The ends: z_min = m(t_min) x (the data scaled onto the SDE's mean), so log p_0(x) = log p_{t_min}(z_min)
+ D log m(t_min), with the heat-equation correction of the remaining noise s(t_min)^2 (second order):
    log p_0(x) ~ log p_sigma(x) - s^2 / 2 (div score + |score|^2),
and the prior N(0, (m^2 + s^2) I) at t_max (VP: N(0, I)). Everything is float64; the denoiser may be any
`Denoiser`, `from_eps` ones included, as long as its function is differentiable torch code.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import sde as sdes
from .denoiser import Denoiser

__all__ = ["log_prob", "bits_per_dim", "divergence"]


def divergence(fn, z: torch.Tensor, trace: str = "exact", probes: torch.Tensor | None = None):
    """(fn(z) (N, ...), div_z fn(z) (N,)) for a per-example vector field fn.

    trace="exact": sum_j d fn_j / d z_j by D backward passes; "hutchinson": mean over probes (K, N, ...)
    of v . d(fn . v)/dz (an unbiased estimate, one backward pass per probe)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        out = fn(z)
        flat_out, n = out.reshape(out.shape[0], -1), out.shape[0]
        if trace == "exact":
            div = torch.zeros(n, dtype=torch.float64, device=z.device)
            for j in range(flat_out.shape[1]):
                (g,) = torch.autograd.grad(flat_out[:, j].sum(), z, retain_graph=True)
                div = div + g.reshape(n, -1)[:, j].double()
        elif trace == "hutchinson":
            if probes is None:
                raise ValueError("trace='hutchinson' needs probes")
            div = torch.zeros(n, dtype=torch.float64, device=z.device)
            for k, v in enumerate(probes):
                (g,) = torch.autograd.grad((out * v).sum(), z, retain_graph=k < len(probes) - 1)
                div = div + (g * v).reshape(n, -1).sum(1).double()
            div = div / len(probes)
        else:
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    return out.detach(), div.detach()


def _probes(shape, n_probes, kind, generator, dtype):
    if kind == "rademacher":
        v = torch.randint(0, 2, (n_probes, *shape), generator=generator).to(dtype) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn((n_probes, *shape), generator=generator, dtype=dtype)
    else:
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")
    return v


def log_prob(denoiser: Denoiser, x: torch.Tensor, method: str = "ode", trace: str = "exact",
             probe: str = "rademacher", n_probes: int = 1, sde: str = "vp", rtol: float = 1e-5,
             atol: float = 1e-5, generator: torch.Generator | None = None, correct_start: bool = True,
             return_info: bool = False):
    """log p(x) in nats per example, (N,) float64, for data x (N, ...) in the model's units.

    method: "ode" (the probability-flow ODE; the only one); trace: "exact" | "hutchinson" (probe:
    "rademacher" | "gaussian", n_probes per evaluation, drawn once from `generator`); sde: "vp", "subvp" or
    "ve" (the same density, different paths); rtol/atol: scipy RK45 tolerances. With return_info a dict
    (nfe, prior term, integral, start correction) comes back too."""
    from scipy.integrate import solve_ivp

    if method != "ode":
        raise ValueError(f"method must be 'ode', got {method!r}")
    s = sdes.by_name(sde, denoiser.schedule)
    t_min, t_max = s.t_range()
    x = torch.as_tensor(x)
    dtype = x.dtype if x.dtype.is_floating_point else torch.float64
    n, shape, d = x.shape[0], x.shape, x[0].numel()
    probes = _probes(shape, n_probes, probe, generator, dtype) if trace == "hutchinson" else None
    nfe0 = denoiser.nfe

    def score_div(z, t):
        return divergence(lambda zz: s.score(denoiser, zz, t), z, trace, probes)

    m_min, s_min = (float(v) for v in s.marginal(t_min))
    z0 = (x.double() * m_min).to(dtype)
    correction = torch.zeros(n, dtype=torch.float64)
    if correct_start:
        sc, dv = score_div(z0, t_min)
        correction = -0.5 * s_min ** 2 * (dv + sc.double().reshape(n, -1).pow(2).sum(1))

    def rhs(t, y):
        z = torch.from_numpy(y[:-n]).reshape(shape).to(dtype)
        sc, dv = score_div(z, t)
        f, g = s.sde(z, t)
        g2 = float(g[0]) ** 2
        dz = f.double() - 0.5 * g2 * sc.double()
        div_f = -0.5 * float(s.beta(t)) * d if s.name in ("vp", "subvp") else 0.0
        return np.concatenate([dz.reshape(-1).numpy(), (div_f - 0.5 * g2 * dv).numpy()])

    y0 = np.concatenate([z0.double().reshape(-1).numpy(), np.zeros(n)])
    sol = solve_ivp(rhs, (t_min, t_max), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"the probability-flow ODE solver failed: {sol.message}")
    z_T = torch.from_numpy(sol.y[:-n, -1]).reshape(n, -1)
    integral = torch.from_numpy(sol.y[-n:, -1])
    std_T = float(s.prior_std(t_max))
    prior = sdes.gaussian_prior_logp(z_T, std_T)
    logp = prior + integral + d * math.log(m_min) + correction
    if return_info:
        return logp, {"nfe": denoiser.nfe - nfe0, "prior": prior, "integral": integral,
                      "correction": correction, "t_range": (t_min, t_max)}
    return logp


def bits_per_dim(denoiser: Denoiser, x01_levels: torch.Tensor, levels: int, n_dequant: int = 1,
                 generator: torch.Generator | None = None, lo: float = -1.0, hi: float = 1.0, **kw):
    """Bits per dimension of discrete data under the PF-ODE density with uniform dequantisation, (N,) float64.

    x01_levels: (N, ...) data in [0, 1] on `levels` values k / (levels - 1) (or integer levels k). Each
    value k is the centre of a bin of width w = (hi - lo) / (levels - 1) in model units
    x = lo + (hi - lo) k / (levels - 1); with u ~ U(-1/2, 1/2)^D,
        log P(k) >= E_u[log p(x + w u)] + D log w      (Jensen; the bins are disjoint),
        bits/dim = -(E_u[log p(x + w u)] + D log w) / (D log 2), averaged over n_dequant draws.
    kw go to `log_prob` (trace=, probe=, n_probes=, sde=, rtol=, atol=)."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    x = torch.as_tensor(x01_levels)
    k = x.long() if not x.dtype.is_floating_point else torch.round(x.double() * (levels - 1))
    if bool((k < 0).any() or (k > levels - 1).any()):
        raise ValueError(f"data must lie in [0, 1] (or levels 0..{levels - 1})")
    w = (hi - lo) / (levels - 1)
    centre = lo + w * k.double()
    d = centre[0].numel()
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(int(n_dequant)):
        u = torch.rand(centre.shape, generator=generator, dtype=torch.float64) - 0.5
        total = total + log_prob(denoiser, centre + w * u, generator=generator, **kw)
    logp = total / n_dequant + d * math.log(w)
    return -logp / (d * math.log(2))
