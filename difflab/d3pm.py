"""D3PM: diffusion on categorical states (Austin et al. 2021, "Structured denoising diffusion models in discrete
state-spaces"; seed 002 points to it).

Each of the M = C*H*W pixels of an image with K levels is a categorical variable on S states (S = K, or K + 1 with
the absorbing [MASK] state, index K). Row-vector convention, [Q_t]_ij = q(x_t = j | x_{t-1} = i):

    q(x_t | x_{t-1}) = Cat(x_t; x_{t-1} Q_t)                                     (Austin eq. 1)
    q(x_t | x_0)     = Cat(x_t; x_0 Qbar_t),   Qbar_t = Q_1 Q_2 ... Q_t           (eq. 3)
    q(x_{t-1} | x_t, x_0) ∝ (x_t Q_t^T) ⊙ (x_0 Qbar_{t-1})                        (eq. 3)
    p(x_{t-1} | x_t) ∝ (x_t Q_t^T) ⊙ (p~(x_0 | x_t) Qbar_{t-1})                   (eq. 4, x0-parameterisation)

Transition matrices (float64), beta_t from the schedule the paper pairs with each:
    uniform:    Q_t = (1 - b_t) I + b_t / K 11^T,            cosine schedule (alpha_bar of Nichol & Dhariwal)
    absorbing:  Q_t = (1 - b_t) I + b_t 1 e_mask^T,          b_t = 1 / (T - t + 1)
    gaussian:   [Q_t]_ij ∝ exp(-4 (i-j)^2 / ((K-1)^2 b_t)) for i != j, normalised over -(K-1)..K-1,
                diagonal = 1 - sum of the row's off-diagonal entries,   linear b_t from 0.02 to 1    (eq. 7)

Loss (eq. 5): L_vb + aux_weight * E[-log p~(x_0 | x_t)], with L_vb's term at a uniform t in 1..T:
    t = 1: -log p(x_0 | x_1);   t >= 2: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)).
The negative ELBO (`nelbo`) sums every term: KL(q(x_T | x_0) || p(x_T)) + sum_{t>=2} L_{t-1} + L_0.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserError

__all__ = ["TRANSITIONS", "betas_for", "transition_matrix", "CategoricalDiffusion", "D3PMNet", "D3PMObjective",
           "levels_from_model_units", "build_net", "build_objective", "ancestral", "sample", "nelbo",
           "net_x0_probs", "categorical_kl",
           "sample_categorical"]

TRANSITIONS = ("uniform", "absorbing", "gaussian")
_TINY = 1e-300


def betas_for(transition: str, T: int) -> torch.Tensor:
    """(T,) float64 beta_1..beta_T: cosine (uniform), 1/(T-t+1) (absorbing), linear 0.02 -> 1 (gaussian)."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    if transition == "uniform":
        s = 0.008
        f = torch.cos((torch.arange(0, T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        return (1 - ab[1:] / ab[:-1]).clamp(0.0, 1.0)
    if transition == "absorbing":
        return 1.0 / (T - t + 1)
    if transition == "gaussian":
        return torch.linspace(0.02, 1.0, T, dtype=torch.float64)
    raise UserError(f"unknown transition {transition!r}; use one of {', '.join(TRANSITIONS)}")


def transition_matrix(transition: str, beta: float, K: int) -> torch.Tensor:
    """One step's Q_t (S, S) float64 for K data levels (S = K + 1 for absorbing: the mask is state K)."""
    beta = float(beta)
    if transition == "uniform":
        return (1 - beta) * torch.eye(K, dtype=torch.float64) + beta / K
    if transition == "absorbing":
        q = (1 - beta) * torch.eye(K + 1, dtype=torch.float64)
        q[:, K] += beta
        return q
    if transition == "gaussian":
        n = torch.arange(-(K - 1), K, dtype=torch.float64)
        norm = torch.exp(-4 * n ** 2 / ((K - 1) ** 2 * beta)).sum()
        i = torch.arange(K, dtype=torch.float64)
        q = torch.exp(-4 * (i[:, None] - i[None, :]) ** 2 / ((K - 1) ** 2 * beta)) / norm
        q.fill_diagonal_(0.0)
        q += torch.diag(1 - q.sum(1))
        return q
    raise UserError(f"unknown transition {transition!r}; use one of {', '.join(TRANSITIONS)}")


def categorical_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the last axis, (..., S) probabilities -> (...); terms with q = 0 contribute 0."""
    return torch.where(q > 0, q * (torch.log(q.clamp_min(_TINY)) - torch.log(p.clamp_min(_TINY))), 0.0).sum(-1)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of (..., S) probabilities (rows need not be normalised) -> (...) int64."""
    c = probs.double().cumsum(-1)
    u = torch.rand(c.shape[:-1] + (1,), generator=generator, device=c.device, dtype=torch.float64) * c[..., -1:]
    return (c <= u).sum(-1).clamp_max(probs.shape[-1] - 1)


class CategoricalDiffusion:
    """The forward process of one transition type on K levels over T steps; tables in float64.

    Q[t] = Q_t (t = 1..T; Q[0] = I) and Qbar[t] = Q_1 ... Q_t (Qbar[0] = I), both (T + 1, S, S).
    States: 0..K-1 are the data levels; absorbing adds the mask state K."""

    def __init__(self, K: int, T: int, transition: str = "absorbing", betas: torch.Tensor | None = None):
        if transition not in TRANSITIONS:
            raise UserError(f"unknown transition {transition!r}; use one of {', '.join(TRANSITIONS)}")
        self.K, self.T, self.transition = int(K), int(T), transition
        self.S = self.K + 1 if transition == "absorbing" else self.K
        self.betas = betas_for(transition, T) if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        eye = torch.eye(self.S, dtype=torch.float64)
        self.Q = torch.stack([eye] + [transition_matrix(transition, b, self.K) for b in self.betas])
        qbar = [eye]
        for t in range(1, T + 1):
            qbar.append(qbar[-1] @ self.Q[t])
        self.Qbar = torch.stack(qbar)

    @property
    def mask(self) -> int | None:
        return self.K if self.transition == "absorbing" else None

    def prior(self) -> torch.Tensor:
        """p(x_T) (S,): all mass on the mask (absorbing), else uniform on the K levels (the stationary law)."""
        p = torch.zeros(self.S, dtype=torch.float64)
        if self.transition == "absorbing":
            p[self.K] = 1.0
        else:
            p[:] = 1.0 / self.K
        return p

    @staticmethod
    def _bt(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """t (N,) broadcast to like's shape (N, ...)."""
        return t.reshape(-1, *([1] * (like.dim() - 1))).expand_as(like)

    def q_probs(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = x_0 Qbar_t: x0 (N, ...) int64 states, t (N,) in 0..T -> (N, ..., S) float64."""
        return self.Qbar.to(x0.device)[self._bt(t, x0), x0]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0): (N, ...) int64."""
        return sample_categorical(self.q_probs(x0, t), generator)

    def _likelihood_of_xt(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t Q_t^T, i.e. q(x_t | x_{t-1} = s) for every s: (N, ..., S)."""
        return self.Q.to(x_t.device).transpose(1, 2)[self._bt(t, x_t), x_t]

    def q_posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_{t-1} | x_t, x_0) ∝ (x_t Q_t^T) ⊙ (x_0 Qbar_{t-1}): x_t, x0 (N, ...) int64, t (N,) >= 1
        -> (N, ..., S) float64 (eq. 3)."""
        p = self._likelihood_of_xt(x_t, t) * self.q_probs(x0, t - 1)
        return p / p.sum(-1, keepdim=True)

    def p_reverse(self, x_t: torch.Tensor, x0_probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p(x_{t-1} | x_t) ∝ (x_t Q_t^T) ⊙ (p~(x_0|x_t) Qbar_{t-1}) (eq. 4): x_t (N, ...) int64, x0_probs
        (N, ..., K) over the data levels, t (N,) >= 1 -> (N, ..., S) float64. At t = 1 it is p(x_0 | x_1).
        Note eq. 4 weights p~(x_0) by q(x_t | x_0): for one pixel, p~ = p_data(x_0) gives the exact reverse chain."""
        qbar = self.Qbar.to(x_t.device)[t - 1][:, :self.K, :]                 # (N, K, S)
        flat = x0_probs.double().reshape(x0_probs.shape[0], -1, self.K)       # (N, M, K)
        mix = torch.bmm(flat, qbar).reshape(*x_t.shape, self.S)
        p = self._likelihood_of_xt(x_t, t) * mix
        return p / p.sum(-1, keepdim=True)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || p(x_T)): x0 (N, ...) -> (N, ...) nats."""
        t = torch.full((x0.shape[0],), self.T, dtype=torch.long, device=x0.device)
        return categorical_kl(self.q_probs(x0, t), self.prior().to(x0.device))

    def loss_term(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0_probs: torch.Tensor):
        """L_{t-1} per pixel (N, ...) nats: -log p(x_0 | x_1) where t = 1, else KL(q(x_{t-1}|x_t,x_0) || p(.|x_t))."""
        p = self.p_reverse(x_t, x0_probs, t)
        kl = categorical_kl(self.q_posterior(x_t, x0, t), p)
        nll = -torch.log(p.gather(-1, x0.unsqueeze(-1)).squeeze(-1).clamp_min(_TINY))
        return torch.where(self._bt(t, x0) == 1, nll, kl)


def levels_from_model_units(x: torch.Tensor, K: int) -> torch.Tensor:
    """Images in model units [-1, 1] on the K-level grid -> int64 levels 0..K-1 (exact: rounds to the grid)."""
    return torch.round((x.double().clamp(-1, 1) + 1) / 2 * (K - 1)).long()


class D3PMNet(nn.Module):
    """x0-parameterised reverse model: x_t (N, C, H, W) int64 states, t (N,) int64 -> logits (N, C, H, W, K).

    Input to the U-Net: each channel's level scaled to [-1, 1]; with the absorbing state a second channel per
    image channel is the mask indicator (masked pixels read 0 in the first). Output: C*K logits channels."""

    def __init__(self, channels: int, levels: int, T: int, absorbing: bool, image_size: int, **unet_config):
        super().__init__()
        from . import nets
        self.C, self.K, self.T, self.absorbing = channels, levels, T, absorbing
        self.unet = nets.build("unet", in_channels=channels * (2 if absorbing else 1), out_channels=channels * levels,
                               image_size=image_size, **unet_config)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x_t.shape
        scaled = x_t.float() / (self.K - 1) * 2 - 1
        if self.absorbing:
            masked = x_t == self.K
            inp = torch.cat([torch.where(masked, 0.0, scaled), masked.float()], 1)
        else:
            inp = scaled
        noise_level = t.float() * (1000.0 / self.T)
        out = self.unet(inp, noise_level)
        return out.reshape(n, c, self.K, h, w).permute(0, 1, 3, 4, 2)


class D3PMObjective(nn.Module):
    """The hybrid loss (eq. 5): mean over pixels of L_vb's term at t ~ U{1..T} + aux_weight * E[-log p~(x_0|x_t)].

    Called as objective(net, x0, labels, generator) with x0 (N, C, H, W) in model units [-1, 1]; returns a scalar."""

    def __init__(self, diffusion: CategoricalDiffusion, aux_weight: float = 0.01):
        super().__init__()
        self.diffusion, self.aux_weight = diffusion, float(aux_weight)

    def forward(self, net, x0: torch.Tensor, labels, generator: torch.Generator) -> torch.Tensor:
        d = self.diffusion
        lv = levels_from_model_units(x0, d.K)
        t = torch.randint(1, d.T + 1, (lv.shape[0],), generator=generator, device=lv.device)
        x_t = d.q_sample(lv, t, generator)
        logp = F.log_softmax(net(x_t, t).double(), -1)                  # (N, C, H, W, K)
        vb = d.loss_term(lv, x_t, t, logp.exp())
        ce = -logp.gather(-1, lv.unsqueeze(-1)).squeeze(-1)
        return (vb.mean() + self.aux_weight * ce.mean()).float()


def _diffusion(cfg) -> CategoricalDiffusion:
    if cfg.data_kind != "image" or not cfg.data_levels:
        raise UserError(f"model d3pm needs images on discrete levels (e.g. --data digits), but '{cfg.data}' "
                        "is continuous; use a Gaussian model")
    return CategoricalDiffusion(cfg.data_levels, cfg.T, cfg.transition)


def build_net(cfg) -> D3PMNet:
    if cfg.conditional:
        raise UserError("model d3pm is unconditional; drop --conditional")
    d = _diffusion(cfg)
    c, h, w = cfg.data_shape
    return D3PMNet(c, d.K, d.T, d.transition == "absorbing", h, **dict(cfg.net_config))


def build_objective(cfg) -> D3PMObjective:
    return D3PMObjective(_diffusion(cfg), cfg.aux_weight)


@torch.no_grad()
def ancestral(diffusion: CategoricalDiffusion, x0_probs_fn, shape: tuple, generator: torch.Generator,
              device="cpu", progress=None) -> torch.Tensor:
    """Ancestral sampling: x_T ~ p(x_T), then x_{t-1} ~ p(x_{t-1} | x_t) for t = T..1 (eq. 4).
    x0_probs_fn(x_t, t) -> (N, ..., K) p~(x_0 | x_t). Returns x_0 (shape) int64 levels 0..K-1."""
    d = diffusion
    x = sample_categorical(d.prior().to(device).expand(*shape, d.S), generator)
    for step in range(d.T, 0, -1):
        t = torch.full((shape[0],), step, dtype=torch.long, device=device)
        x = sample_categorical(d.p_reverse(x, x0_probs_fn(x, t), t), generator)
        if progress is not None:
            progress()
    return x


@torch.no_grad()
def sample(cfg, net: D3PMNet, n: int, generator: torch.Generator, device="cpu", progress=None) -> torch.Tensor:
    """n images of a trained run by ancestral sampling: (n, C, H, W) float in [0, 1] (level / (K - 1))."""
    d = _diffusion(cfg)
    x = ancestral(d, net_x0_probs(net), (n, *cfg.data_shape), generator, device, progress)
    return x.float() / (d.K - 1)


@torch.no_grad()
def nelbo(diffusion: CategoricalDiffusion, x0: torch.Tensor, x0_probs_fn, generator: torch.Generator,
          return_terms: bool = False):
    """Negative ELBO in nats per example (N,) of x0 (N, ...) int64 levels (every term, eq. 5's L_vb):
        KL(q(x_T|x_0) || p(x_T)) + sum_{t=2}^T KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) - log p(x_0|x_1),
    each term with one draw x_t ~ q(x_t | x_0) (an unbiased estimate of the bound).
    x0_probs_fn(x_t, t) -> (N, ..., K) p~(x_0 | x_t). return_terms: also (T + 1, N) with row 0 = L_0,
    row t-1 = L_{t-1}, row T = L_T."""
    n = x0.shape[0]
    terms = torch.zeros(diffusion.T + 1, n, dtype=torch.float64, device=x0.device)
    terms[diffusion.T] = diffusion.prior_kl(x0).reshape(n, -1).sum(1)
    for step in range(1, diffusion.T + 1):
        t = torch.full((n,), step, dtype=torch.long, device=x0.device)
        x_t = diffusion.q_sample(x0, t, generator)
        term = diffusion.loss_term(x0, x_t, t, x0_probs_fn(x_t, t))
        terms[step - 1] = term.reshape(n, -1).sum(1)
    total = terms.sum(0)
    return (total, terms) if return_terms else total


def net_x0_probs(net: D3PMNet):
    """The network as x0_probs_fn(x_t, t) -> softmax of its logits, float64."""
    return lambda x_t, t: torch.softmax(net(x_t, t).double(), -1)
