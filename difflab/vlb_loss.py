"""Training on the variational bound (seed 002, improved DDPM): L_vlb, the hybrid loss, importance sampling of t.

    L_vlb   = sum_t L_t  estimated by  T L_t  (t uniform) or  L_t / p_t  (t ~ p)                   (seed 002 eq. 16)
    L_t     = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 1,  L_1 = -log p(x_0 | x_1)
    L_hybrid = L_simple + lambda L_vlb, lambda = 0.001, the mean of p detached in L_vlb, so L_vlb trains
               only the variance                                                                      (seed 002 eq. 16)
The L_t are in bits per dimension, as in improved-diffusion (then T * 0.001 = 1 for T = 1000). The prior
term L_T has no parameters and is left out. Importance sampling (seed 002 eq. 17): p_t proportional to
sqrt(E[L_t^2]) over the last 10 losses of each t (uniform until every t has 10), mixed with 0.001 of uniform;
each example's loss is weighted by 1 / (T p_t), which keeps the estimate of the uniform-t mean unbiased.
"""
from __future__ import annotations

import math

import torch

from . import gaussian as G
from .losses import noised_forward
from .schedules import Schedule
from .vlb import decoder_nll, normal_kl, step_log_variances

__all__ = ["LossHistorySampler", "GaussianVLBLoss"]


class LossHistorySampler(torch.nn.Module):
    """Draws t in 1..T with p_t ~ sqrt(mean of the last `history` squared losses of t) (improved DDPM).

    State (buffers, checkpointed): losses (T, history) float64, counts (T,) int64."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__()
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self.register_buffer("losses", torch.zeros(T, history, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(T, dtype=torch.int64))

    def probs(self) -> torch.Tensor:
        """(T,) float64 sampling probabilities of t = 1..T."""
        if not bool((self.counts >= self.history).all()):
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64, device=self.losses.device)
        p = self.losses.pow(2).mean(1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, n: int, generator: torch.Generator):
        """(t (n,) int64 in 1..T, weights (n,) float64 = 1 / (T p_t))."""
        p = self.probs()
        idx = torch.multinomial(p, n, replacement=True, generator=generator)
        return idx + 1, 1.0 / (self.T * p[idx])

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor):
        """Push each example's loss (n,) into the history of its t (n,), oldest out first."""
        for ti, li in zip((t - 1).tolist(), losses.detach().double().tolist()):
            c = int(self.counts[ti])
            if c >= self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, c] = li
                self.counts[ti] = c + 1


class GaussianVLBLoss(torch.nn.Module):
    """L_simple / L_vlb / hybrid for a network whose output is the prediction (C channels) followed, for a
    learned variance, by the variance's v (C more channels; see difflab.vlb).

    Args:
        schedule: the forward process (T steps).
        parameterization: "eps" | "x0" | "v" (target of the MSE and what the mean is built from).
        loss: "simple" | "vlb" | "hybrid".
        variance_type: "fixed" | "learned" | "learned-range"; fixed_variance: "small" | "large" when fixed.
        levels: data levels for the discretised decoder L_1 (None: Gaussian decoder).
        vlb_weight: lambda of the hybrid loss. importance_sampling: draw t from the loss history.
    """

    def __init__(self, schedule: Schedule, parameterization="eps", loss="hybrid", variance_type="learned-range",
                 fixed_variance="small", levels=None, vlb_weight=0.001, importance_sampling=False, p_uncond=0.0):
        super().__init__()
        self.schedule, self.parameterization, self.loss = schedule, parameterization, loss
        self.variance_type, self.fixed_variance, self.levels = variance_type, fixed_variance, levels
        self.vlb_weight, self.p_uncond, self.T = vlb_weight, p_uncond, schedule.T
        ab = schedule.alpha_bars_with_zero()                  # (T + 1,), index t
        self._ab = ab
        self._tables = step_log_variances(ab.flip(0))         # index T - t for step t -> t - 1
        self.sampler = LossHistorySampler(schedule.T) if importance_sampling else None

    def _logvar(self, t, v_out, like):
        i = self.T - t
        if self.variance_type == "fixed":
            key = self.fixed_variance
            lv = torch.where(t == 1, self._tables["decoder"][i], self._tables[key][i]).to(like.device)
            return G.expand(lv, like).double()
        v = v_out.double() if self.variance_type == "learned" else (v_out.double() + 1) / 2
        lb, lbt = (G.expand(self._tables[k][i].to(like.device), like).double() for k in ("beta", "beta_tilde"))
        return v * lb + (1 - v) * lbt

    def vlb_terms(self, x0, x_t, t, pred, v_out) -> torch.Tensor:
        """L_t per example (N,) in bits per dimension, for predictions `pred` (the mean's; detach to train the
        variance alone) and the variance output v_out (None when fixed)."""
        ab_t, ab_s = self._ab.to(x0.device)[t], self._ab.to(x0.device)[t - 1]
        x64, xt64, p64 = x0.double(), x_t.double(), pred.double()
        if self.parameterization == "eps":
            x0_hat = G.x0_from_eps(xt64, p64, ab_t)
        elif self.parameterization == "x0":
            x0_hat = p64
        else:
            a, s = G.expand(ab_t, xt64).sqrt(), (1 - G.expand(ab_t, xt64)).sqrt()
            x0_hat = a * xt64 - s * p64
        logvar = self._logvar(t, v_out, xt64)
        first = t == 1
        # for t = 1 the posterior is a point mass at x0; use a dummy ab_s < 1 to keep the KL finite (unused)
        ab_s_safe = torch.where(first, self._ab[1].to(x0.device), ab_s)
        ab_t_safe = torch.where(first, self._ab[2].to(x0.device), ab_t)
        p_mean, _ = G.posterior_mean_var(x0_hat, xt64, ab_t, ab_s)
        q_mean, q_var = G.posterior_mean_var(x64, xt64, ab_t_safe, ab_s_safe)
        kl = normal_kl(q_mean, q_var.log(), p_mean, logvar).reshape(len(x0), -1).mean(1)
        dec = decoder_nll(x64, p_mean, logvar, self.levels) / x0[0].numel()
        return torch.where(first, dec, kl) / math.log(2)

    def forward(self, net, x0: torch.Tensor, labels, generator: torch.Generator):
        n, dev = x0.shape[0], x0.device
        if self.sampler is None:
            t = torch.randint(1, self.T + 1, (n,), generator=generator, device=dev)
            w = torch.ones(n, dtype=torch.float64, device=dev)
        else:
            t, w = self.sampler.sample(n, generator)
            t, w = t.to(dev), w.to(dev)
        ab = self._ab.to(dev)[t]
        x_t, eps, out = noised_forward(net, x0, ab, labels, self.p_uncond, generator)
        pred, v_out = out.chunk(2, dim=1) if self.variance_type != "fixed" else (out, None)
        per_example = torch.zeros(n, dtype=torch.float64, device=dev)
        if self.loss in ("simple", "hybrid"):
            target = {"eps": eps, "x0": x0}.get(self.parameterization)
            if target is None:
                target = G.v_from_eps_x0(eps, x0, ab)
            per_example = per_example + (pred.float() - target).pow(2).reshape(n, -1).mean(1).double()
        if self.loss in ("vlb", "hybrid"):
            vlb = self.vlb_terms(x0, x_t, t, pred.detach() if self.loss == "hybrid" else pred, v_out)
            scale = self.vlb_weight * self.T if self.loss == "hybrid" else self.T
            per_example = per_example + scale * vlb
        if self.sampler is not None and self.training:
            self.sampler.update(t, per_example)
        return (per_example * w).mean().float()
