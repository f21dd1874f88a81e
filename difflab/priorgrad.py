"""PriorGrad: a diffusion toward a data-dependent prior N(mu, diag(std^2)) (seed 002; Lee et al. 2022).

    x_t = mu + sqrt(ab_t) (x_0 - mu) + sqrt(1 - ab_t) eps,   eps ~ N(0, Sigma),  Sigma = diag(std^2)
    L   = E || eps - eps_theta(x_t, t) ||^2_{Sigma^-1}                                  (PriorGrad eq. 9)
    sampling starts from x_T ~ N(mu, Sigma).
mu and std are per-dimension statistics of the training split (std floored at `min_std`), stored in the
run's config (prior_mean, prior_std). In whitened coordinates y = (x - mu) / std the process is the standard
one, so the trained net becomes an ordinary Denoiser on y: eps_y(y_t) = eps_theta(mu + std y_t) / std, and
every sampler and the ELBO run unchanged there; `to_model_space` maps samples back.
"""
from __future__ import annotations

import torch

from . import gaussian as G
from .denoiser import Denoiser, noise_level_input
from .schedules import Schedule

__all__ = ["PriorGradLoss", "prior_stats", "priorgrad_denoiser", "to_model_space", "MIN_STD"]

MIN_STD = 0.1


def prior_stats(cfg, min_std: float = MIN_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, std), each shaped like one example, from the training split of cfg.data in model space."""
    from . import data as data_lib
    ds = data_lib.load(cfg.data, image_size=cfg.image_size)
    x = data_lib.split(ds, 0.1, seed=0)[0].x.double()
    if cfg.data_mean is not None:
        x = (x - torch.tensor(cfg.data_mean, dtype=torch.float64)) / torch.tensor(cfg.data_std, dtype=torch.float64)
    return x.mean(0), x.std(0).clamp(min=min_std)


class PriorGradLoss(torch.nn.Module):
    """The PriorGrad loss (cfg.model = "priorgrad"); fills cfg.prior_mean / cfg.prior_std on first build."""

    def __init__(self, schedule: Schedule, cfg):
        super().__init__()
        if cfg.prior_mean is None:
            mu, std = prior_stats(cfg)
            cfg.prior_mean, cfg.prior_std = mu.flatten().tolist(), std.flatten().tolist()
        shape = tuple(cfg.data_shape)
        self.register_buffer("mu", torch.tensor(cfg.prior_mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(cfg.prior_std, dtype=torch.float32).reshape(shape))
        self._alpha_bars = schedule.alpha_bars
        self.T = schedule.T

    def forward(self, net, x0, labels, generator):
        n, dev = x0.shape[0], x0.device
        t = torch.randint(1, self.T + 1, (n,), generator=generator, device=dev)
        ab = self._alpha_bars.to(dev)[t - 1]
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)   # whitened noise
        x_t = self.mu + G.q_sample(x0 - self.mu, ab, self.std * eps)
        c = noise_level_input(ab)
        out = net(x_t, c) if labels is None else net(x_t, c, labels)
        return ((self.std * eps - out.float()) / self.std).pow(2).mean()


def priorgrad_denoiser(cfg, net, den: Denoiser) -> Denoiser:
    """The run's net as a Denoiser on whitened coordinates y = (x - mu) / std (prior N(0, I) there)."""
    shape = tuple(cfg.data_shape)
    mu = torch.tensor(cfg.prior_mean, dtype=torch.float32).reshape(shape)
    std = torch.tensor(cfg.prior_std, dtype=torch.float32).reshape(shape)
    fn = den.fn

    def fn_y(y, alpha_bar):
        m, s = mu.to(y.device, y.dtype), std.to(y.device, y.dtype)
        den.labels = out.labels   # class labels set on this view reach the network
        return fn(m + s * y, alpha_bar) / s
    clip = None
    if den.clip is not None:   # images: x0 in [-1, 1] is y0 in [(-1 - mu) / std, (1 - mu) / std], per pixel
        clip = ((den.clip[0] - mu) / std, (den.clip[1] - mu) / std)
    out = Denoiser(fn_y, den.schedule, "eps", clip)
    out.labels = getattr(den, "labels", None)
    out.whitening = (mu, std)
    return out


def to_model_space(y: torch.Tensor, cfg) -> torch.Tensor:
    """Whitened samples y (N, ...) -> model space x = mu + std y (images [-1, 1], standardised vectors)."""
    shape = tuple(cfg.data_shape)
    mu = torch.tensor(cfg.prior_mean, dtype=y.dtype, device=y.device).reshape(shape)
    std = torch.tensor(cfg.prior_std, dtype=y.dtype, device=y.device).reshape(shape)
    return mu + std * y
