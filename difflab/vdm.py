"""Variational diffusion models: a learned noise schedule trained on the continuous-time bound (seed 003).

    SNR(t) = exp(-gamma_eta(t)),  alpha_bar(t) = sigmoid(-gamma(t)),  1 - alpha_bar(t) = sigmoid(gamma(t))
    gamma_eta monotone increasing in t in [0, 1], endpoints gamma_0 = gamma(0) and gamma_1 = gamma(1) learned
    (seed 003, the SNR parameterisation; Kingma et al. 2021 eqs. 4, 17):
        gamma(t) = gamma_0 + (gamma_1 - gamma_0) (g(t) - g(0)) / (g(1) - g(0)),
        g(t) = l1(t) + sum_j w3_j sigmoid(w2_j l1(t) + b2_j) / H,  l1(t) = w1 t + b1, all weights positive.

    -ELBO(x) = L_prior + L_recon + L_diffusion                                  (Kingma et al. 2021 eq. 11, 17)
        L_prior     = KL(q(z_1 | x) || N(0, I))
        L_recon     = -log p(x | z_0), z_0 ~ q(z_0 | x): discretised (data levels) or Gaussian decoder
                      N(z_0 / alpha_0, sigma_0^2 / alpha_0^2) (alpha = sqrt(alpha_bar), sigma^2 = 1 - alpha_bar)
        L_diffusion = 1/2 E_{t ~ U(0, 1), eps} [gamma'(t) ||eps - eps_hat(z_t, gamma_t)||^2]   (T -> infinity)
The batch's times are low-discrepancy: t_i = (u + i / N) mod 1, one uniform u per batch. The network sees
the noise level through noise_level_input(alpha_bar(t)) like every other difflab model, so the trained net
is an ordinary Denoiser on the learned schedule discretised to T steps (`learned_schedule`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import gaussian as G
from .denoiser import noise_level_input
from .schedules import Schedule
from .vlb import decoder_nll, prior_kl

__all__ = ["MonotoneGamma", "VDMLoss", "initial_gamma_0", "learned_schedule", "continuous_elbo"]


class MonotoneGamma(nn.Module):
    """gamma(t) (N,) float64 for t (N,) in [0, 1]: monotone increasing, gamma(0) = gamma_0, gamma(1) = gamma_1."""

    def __init__(self, gamma_0: float = -13.3, gamma_1: float = 5.0, hidden: int = 64):
        super().__init__()
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_0)))
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_1)))
        self.w1 = nn.Parameter(torch.tensor(1.0))
        self.b1 = nn.Parameter(torch.tensor(0.0))
        self.w2 = nn.Parameter(torch.randn(hidden))
        self.b2 = nn.Parameter(torch.zeros(hidden))
        self.w3 = nn.Parameter(torch.randn(hidden))

    def _g(self, t):
        h = F.softplus(self.w1.double()) * t + self.b1.double()
        u = torch.sigmoid(h[:, None] * F.softplus(self.w2.double()) + self.b2.double())
        return h + (u * F.softplus(self.w3.double())).mean(1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        ends = self._g(torch.tensor([0.0, 1.0], dtype=torch.float64, device=t.device))
        frac = (self._g(t) - ends[0]) / (ends[1] - ends[0])
        return self.gamma_0.double() + (self.gamma_1.double() - self.gamma_0.double()) * frac


def initial_gamma_0(levels: int | None) -> float:
    """The starting gamma_0 = log(sigma_0^2 / alpha_0^2): sigma_0 / alpha_0 is a quarter of the half-distance
    between two data levels (1 / (levels - 1) in [-1, 1]), so z_0 / alpha_0 rounds to its own level with
    probability 1 - 6e-5 and no log-SNR is spent on noise finer than the decoder resolves. 256 levels: -13.9
    (VDM's -13.3 for CIFAR-10); 17 levels (digits): -8.3, where -13.3 cost 2.2x the bits/dim after 600 steps
    (benchmarks/results/vdm_gamma0.md). Continuous data (levels None): VDM's -13.3. Learned from there."""
    if not levels:
        return -13.3
    return 2 * math.log(0.25 / (levels - 1))


class VDMLoss(nn.Module):
    """The continuous-time -ELBO in bits per dimension, trained with the network (cfg.model = "vdm").

    levels: the data's levels (discretised decoder) or None (Gaussian decoder)."""

    def __init__(self, levels: int | None = None, gamma_0: float | None = None, gamma_1: float = 5.0,
                 hidden: int = 64):
        super().__init__()
        self.gamma = MonotoneGamma(initial_gamma_0(levels) if gamma_0 is None else gamma_0, gamma_1, hidden)
        self.levels = levels

    def terms(self, net, x0, labels, generator, times=None):
        """(L_prior, L_recon, L_diffusion), each (N,) nats, one draw of t and eps per example."""
        n, dev = x0.shape[0], x0.device
        if times is None:
            u = torch.rand(1, generator=generator, device=dev, dtype=torch.float64)
            times = (u + torch.arange(n, device=dev, dtype=torch.float64) / n) % 1.0
        keep_graph = torch.is_grad_enabled()   # training: gamma' must stay differentiable in eta
        t = times.clone().requires_grad_(True)
        with torch.enable_grad():
            gamma = self.gamma(t)
            dgamma = torch.autograd.grad(gamma.sum(), t, create_graph=keep_graph)[0]
        ab = torch.sigmoid(-gamma)
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        z_t = G.q_sample(x0, ab, eps)
        c = noise_level_input(ab)
        out = net(z_t, c) if labels is None else net(z_t, c, labels)
        l_diff = 0.5 * dgamma * (eps - out).double().pow(2).reshape(n, -1).sum(1)
        g0, g1 = self.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64, device=dev))
        l_prior = prior_kl(x0, torch.sigmoid(-g1).reshape(1).expand(n))
        eps0 = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        ab0 = torch.sigmoid(-g0)
        z0 = ab0.sqrt() * x0.double() + (1 - ab0).sqrt() * eps0.double()
        l_recon = decoder_nll(x0, z0 / ab0.sqrt(), g0, self.levels)   # log(sigma_0^2 / alpha_0^2) = gamma_0
        return l_prior, l_recon, l_diff

    def forward(self, net, x0, labels, generator):
        l_prior, l_recon, l_diff = self.terms(net, x0, labels, generator)
        return ((l_prior + l_recon + l_diff).mean() / (x0[0].numel() * math.log(2))).float()


def learned_schedule(gamma: MonotoneGamma, T: int) -> Schedule:
    """The learned schedule on T steps: alpha_bar_k = sigmoid(-gamma(k / T)), k = 1..T (alpha_bar_0 = 1)."""
    with torch.no_grad():
        ab = torch.sigmoid(-gamma(torch.arange(0, T + 1, dtype=torch.float64) / T))
    ab[0] = 1.0
    betas = (1.0 - ab[1:] / ab[:-1]).clamp(1e-12, 0.999)

    def alpha_bar_fn(t):
        with torch.no_grad():
            return torch.sigmoid(-gamma(torch.as_tensor(t, dtype=torch.float64).reshape(-1))).reshape(
                torch.as_tensor(t).shape)
    return Schedule("vdm", betas, alpha_bar_fn, {"T": T})


@torch.no_grad()
def continuous_elbo(objective: VDMLoss, net, x0, generator, n_times: int = 16, batch_size: int = 500):
    """-ELBO per example (N,) nats and its parts, with `n_times` low-discrepancy times per example."""
    objective.eval()
    prior, recon, diff = [], [], []
    for i in range(0, len(x0), batch_size):
        xb = x0[i:i + batch_size]
        d = 0.0
        for k in range(n_times):  # stratified: one time in each [k / n, (k + 1) / n) per example
            times = (k + torch.rand(len(xb), generator=generator, dtype=torch.float64)) / n_times
            lp, lr, ld = objective.terms(net, xb, None, generator, times=times)
            d = d + ld / n_times
        prior.append(lp)
        recon.append(lr)
        diff.append(d)
    return torch.cat(prior), torch.cat(recon), torch.cat(diff)


def adapt_denoiser(cfg, net, den, tensors: dict):
    """A loaded run's Denoiser on its own process: the learned schedule (vdm) or the whitened prior (priorgrad)."""
    if cfg.model == "priorgrad":
        from .priorgrad import priorgrad_denoiser
        return priorgrad_denoiser(cfg, net, den)
    objective = VDMLoss(cfg.data_levels if cfg.data_kind == "image" else None)
    objective.load_state_dict({k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")})
    den.schedule = learned_schedule(objective.gamma, cfg.T)
    den.vdm = objective
    return den
