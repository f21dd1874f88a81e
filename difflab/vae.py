"""Latent-variable baselines on discrete images: a VAE and a two-level (Markovian) hierarchical VAE, as in
seed 003's derivation of the diffusion model (the ELBO, eq. 34-45; the MHVAE with T = 2, eq. 51-57).

Both decode with the discretised Gaussian of DDPM's L_0 (Ho et al. 2020, eq. 13) over the K levels of the data,
scaled to [-1, 1]: bin k has centre c_k = -1 + 2k/(K-1) and edges c_k +- 1/(K-1), the outer edges at -+inf:

    p(x = c_k | z) = Phi((c_k + d - mu) / sigma) - Phi((c_k - d - mu) / sigma),   d = 1 / (K - 1)

VAE:   p(z) N(0, I), p(x | z), q(z | x);                 -ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z))
HVAE:  p(z2) N(0, I), p(z1 | z2), p(x | z1); q(z1 | x), q(z2 | z1);
       -ELBO = E_q[-log p(x|z1) - log p(z1|z2) - log p(z2) + log q(z1|x) + log q(z2|z1)]
With k > 1 draws, `nelbo` returns the importance-weighted bound -log mean_i w_i (Burda et al. 2016), tighter.
Networks are MLPs on the flattened image; all densities are diagonal Gaussians.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import UserError

__all__ = ["discretized_gaussian_log_prob", "gaussian_log_prob", "VAE", "HVAE", "VAEObjective", "build_net",
           "build_objective", "sample"]

_LOG_2PI = math.log(2 * math.pi)
_LOG_SCALE_MIN = -7.0


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(log_std)^2) summed over the last axis: (N, D) -> (N,)."""
    return (-0.5 * ((z - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * _LOG_2PI).sum(-1)


def _log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, computed in the tail where the difference is taken (stable)."""
    upper = (lo + hi) > 0  # both far right: Phi(-lo) - Phi(-hi)
    a = torch.where(upper, torch.special.log_ndtr(-lo), torch.special.log_ndtr(hi))
    b = torch.where(upper, torch.special.log_ndtr(-hi), torch.special.log_ndtr(lo))
    return a + torch.log(-torch.expm1((b - a).clamp_max(-1e-12)))


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  levels: int) -> torch.Tensor:
    """log p(x) elementwise for x on the `levels`-point grid in [-1, 1] (any shape; mean, log_scale broadcast)."""
    d = 1.0 / (levels - 1)
    inv = torch.exp(-log_scale)
    lo = torch.where(x < -1 + d / 2, torch.full_like(x, -math.inf), (x - d - mean) * inv)
    hi = torch.where(x > 1 - d / 2, torch.full_like(x, math.inf), (x + d - mean) * inv)
    return _log_ndtr_diff(lo.double(), hi.double()).to(x.dtype if x.is_floating_point() else torch.float64)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, d_out))


class _Gaussian(nn.Module):
    """An MLP giving a diagonal Gaussian: (N, d_in) -> (mean, log_std), each (N, d_out)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.net = _mlp(d_in, hidden, 2 * d_out)

    def forward(self, h):
        mean, log_std = self.net(h).chunk(2, -1)
        return mean, log_std.clamp(_LOG_SCALE_MIN, 5.0)

    def draw(self, h, generator):
        mean, log_std = self(h)
        z = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator, device=mean.device)
        return z, gaussian_log_prob(z, mean, log_std)


class VAE(nn.Module):
    """x (N, D) in [-1, 1] on `levels` levels; latent z (N, latent)."""

    def __init__(self, dim: int, levels: int, hidden: int = 256, latent: int = 16):
        super().__init__()
        self.dim, self.levels, self.latent = dim, levels, latent
        self.encoder = _Gaussian(dim, hidden, latent)
        self.decoder = _Gaussian(latent, hidden, dim)

    def log_weights(self, x: torch.Tensor, generator) -> torch.Tensor:
        """log p(x, z) - log q(z | x) for one z ~ q(z | x): (N,)."""
        z, log_q = self.encoder.draw(x, generator)
        log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        mean, log_scale = self.decoder(z)
        log_px = discretized_gaussian_log_prob(x, mean, log_scale, self.levels).sum(-1)
        return log_px + log_pz - log_q

    @torch.no_grad()
    def sample(self, n: int, generator, device="cpu") -> torch.Tensor:
        z = torch.randn((n, self.latent), generator=generator, device=device)
        return self.decoder(z)[0]


class HVAE(nn.Module):
    """Two-level Markovian hierarchical VAE: x (N, D) <-> z1 (N, latent) <-> z2 (N, latent2)."""

    def __init__(self, dim: int, levels: int, hidden: int = 256, latent: int = 16, latent2: int = 8):
        super().__init__()
        self.dim, self.levels, self.latent, self.latent2 = dim, levels, latent, latent2
        self.q_z1 = _Gaussian(dim, hidden, latent)
        self.q_z2 = _Gaussian(latent, hidden, latent2)
        self.p_z1 = _Gaussian(latent2, hidden, latent)
        self.p_x = _Gaussian(latent, hidden, dim)

    def log_weights(self, x: torch.Tensor, generator) -> torch.Tensor:
        """log p(x, z1, z2) - log q(z1, z2 | x) for one draw (z1, z2) ~ q: (N,)."""
        z1, log_q1 = self.q_z1.draw(x, generator)
        z2, log_q2 = self.q_z2.draw(z1, generator)
        log_p2 = gaussian_log_prob(z2, torch.zeros_like(z2), torch.zeros_like(z2))
        log_p1 = gaussian_log_prob(z1, *self.p_z1(z2))
        mean, log_scale = self.p_x(z1)
        log_px = discretized_gaussian_log_prob(x, mean, log_scale, self.levels).sum(-1)
        return log_px + log_p1 + log_p2 - log_q1 - log_q2

    @torch.no_grad()
    def sample(self, n: int, generator, device="cpu") -> torch.Tensor:
        z2 = torch.randn((n, self.latent2), generator=generator, device=device)
        mean, log_std = self.p_z1(z2)
        z1 = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator, device=device)
        return self.p_x(z1)[0]


def nelbo(model: VAE | HVAE, x: torch.Tensor, generator, k: int = 1) -> torch.Tensor:
    """-log mean_{i<=k} w_i with w_i = p(x, z_i) / q(z_i | x): the negative ELBO for k = 1, the importance-
    weighted bound for k > 1 (both >= -log p(x)); x (N, ...) in [-1, 1] -> (N,) nats."""
    flat = x.reshape(x.shape[0], -1)
    lw = torch.stack([model.log_weights(flat, generator) for _ in range(k)])
    return -(torch.logsumexp(lw.double(), 0) - math.log(k))


class VAEObjective(nn.Module):
    """objective(net, x0, labels, generator) -> the batch's mean negative ELBO per dimension (nats)."""

    def forward(self, net, x0: torch.Tensor, labels, generator) -> torch.Tensor:
        return (nelbo(net, x0, generator).mean() / x0[0].numel()).float()


def build_net(cfg) -> VAE | HVAE:
    if cfg.data_kind != "image" or not cfg.data_levels:
        raise UserError(f"model {cfg.model} needs images on discrete levels (e.g. --data digits), but "
                        f"'{cfg.data}' is continuous")
    if cfg.conditional:
        raise UserError(f"model {cfg.model} is unconditional; drop --conditional")
    dim = math.prod(cfg.data_shape)
    kw = dict(cfg.net_config)
    allowed = {"hidden", "latent"} | ({"latent2"} if cfg.model == "hvae" else set())
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise UserError(f"net_config key(s) {', '.join(unknown)} do not fit model {cfg.model}; "
                        f"use {', '.join(sorted(allowed))}")
    return (HVAE if cfg.model == "hvae" else VAE)(dim, cfg.data_levels, **kw)


def build_objective(cfg) -> VAEObjective:
    return VAEObjective()


@torch.no_grad()
def sample(cfg, net: VAE | HVAE, n: int, generator, device="cpu") -> torch.Tensor:
    """n images (n, C, H, W) in [0, 1]: z from the prior, then per pixel the level nearest the decoder's mean
    (the usual VAE sample picture; pixel noise from p(x | z) is not added)."""
    mean = net.sample(n, generator, device).clamp(-1, 1)
    k = cfg.data_levels - 1
    return (torch.round((mean + 1) / 2 * k) / k).reshape(n, *cfg.data_shape)
