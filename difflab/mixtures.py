"""Gaussian mixtures, with diagonal or full covariances, and their *exact* denoiser.

If x_0 ~ sum_k w_k N(mu_k, R_k diag(s_k^2) R_k^T), every noised marginal is again a mixture:
    q_t(x) = sum_k w_k N(x; sqrt(ab) mu_k, R_k diag(ab s_k^2 + 1 - ab) R_k^T),
so the score, E[eps | x_t] and log q_t are known in closed form. Samplers,
likelihoods and guidance are judged against it, apart from any training.
R_k (orthogonal, D x D) is the identity unless `rotations` is given: a full covariance
Sigma_k = R_k diag(s_k^2) R_k^T (`GaussianMixture.from_covariances` finds R_k and s_k by eigh).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .denoiser import Denoiser
from .schedules import Schedule

__all__ = ["GaussianMixture"]


@dataclass
class GaussianMixture:
    """weights (K,), means (K, D), stds (K, D), optional rotations (K, D, D) orthogonal; float64.

    Component k is N(mu_k, R_k diag(stds_k^2) R_k^T): stds are its widths along the columns of R_k (along the
    coordinate axes when rotations is None)."""

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    rotations: torch.Tensor | None = None

    def __post_init__(self):
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64).expand_as(self.means).clone()
        if self.rotations is not None:
            k, d = self.means.shape
            self.rotations = torch.as_tensor(self.rotations, dtype=torch.float64)
            if self.rotations.shape != (k, d, d):
                raise ValueError(f"rotations must have shape {(k, d, d)} (one orthogonal D x D matrix per "
                                 f"component), got {tuple(self.rotations.shape)}")
            eye = torch.eye(d, dtype=torch.float64)
            if not torch.allclose(self.rotations.transpose(1, 2) @ self.rotations, eye.expand(k, d, d), atol=1e-8):
                raise ValueError("rotations must be orthogonal (R^T R = I): pass covariances through "
                                 "GaussianMixture.from_covariances instead")

    @classmethod
    def from_covariances(cls, weights, means, covariances) -> GaussianMixture:
        """A mixture of N(means_k, covariances_k); covariances (K, D, D) symmetric positive definite."""
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
        if not bool((evals > 0).all()):
            raise ValueError("covariances must be positive definite (an eigenvalue is <= 0)")
        return cls(weights, means, evals.sqrt(), evecs)

    @property
    def covariances(self) -> torch.Tensor:
        """(K, D, D) float64: R_k diag(s_k^2) R_k^T."""
        if self.rotations is None:
            return torch.diag_embed(self.stds ** 2)
        return self.rotations @ torch.diag_embed(self.stds ** 2) @ self.rotations.transpose(1, 2)

    def _frame(self, d: torch.Tensor) -> torch.Tensor:
        """Offsets d (N, K, D) written in each component's frame: d_k R_k (the identity without rotations)."""
        return d if self.rotations is None else torch.einsum("nkd,kde->nke", d, self.rotations)

    def _unframe(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `_frame`: z_k R_k^T."""
        return z if self.rotations is None else torch.einsum("nke,kde->nkd", z, self.rotations)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """(n, D) float64 draws (and (n,) component labels)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = self.stds[k] * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        if self.rotations is not None:
            z = torch.einsum("nd,ned->ne", z, self.rotations[k])  # R_k z
        x = self.means[k] + z
        return (x, k) if return_labels else x

    def _noised(self, alpha_bar):
        """Means (N, K, D) and variances (N, K, D) of the components of q_t, the variances along each
        component's axes (the columns of R_k); alpha_bar (N,)."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1, 1, 1)
        return ab.sqrt() * self.means, ab * self.stds ** 2 + (1 - ab)

    def component_log_probs(self, x, alpha_bar=1.0):
        """log w_k + log N(x; component k of q_t), (N, K). x: (N, D)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        m, v = self._noised(ab)
        d = self._frame(x[:, None, :] - m)
        return (self.weights.log() - 0.5 * (d * d / v + v.log() + math.log(2 * math.pi)).sum(-1))

    def log_prob(self, x, alpha_bar=1.0) -> torch.Tensor:
        """log q_t(x), (N,) float64. alpha_bar = 1 gives the data density."""
        return torch.logsumexp(self.component_log_probs(x, alpha_bar), dim=1)

    def score(self, x, alpha_bar) -> torch.Tensor:
        """grad_x log q_t(x), (N, D) float64."""
        x = torch.as_tensor(x, dtype=torch.float64)
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        r = torch.softmax(self.component_log_probs(x, ab), dim=1)  # responsibilities (N, K)
        m, v = self._noised(ab)
        return (r[:, :, None] * self._unframe(-self._frame(x[:, None, :] - m) / v)).sum(1)

    def eps(self, x, alpha_bar) -> torch.Tensor:
        """E[eps | x_t] = -sqrt(1 - ab) score, (N, D) float64."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1, 1)
        return -(1 - ab).sqrt() * self.score(x, alpha_bar)

    def denoiser(self, schedule: Schedule) -> Denoiser:
        """The exact eps-denoiser on `schedule`, for inputs of any float dtype and shape (N, D)."""
        def fn(x, alpha_bar):
            return self.eps(x.double(), alpha_bar).to(x.dtype)
        return Denoiser.from_eps(fn, schedule)

    def eps_at(self, x, alpha_bar: float) -> torch.Tensor:
        """`eps` for a whole batch x (N, D) at one noise level, by matrix products (no (N, K, D) temporaries;
        10-30x faster for samplers and benchmarks). With m_k = sqrt(ab) mu_k, v_k = ab s_k^2 + 1 - ab:
            log N(x; m_k, v_k) = -1/2 (x^2 . 1/v_k - 2 x . m_k/v_k + m_k . m_k/v_k + sum log v_k) + const,
            score = sum_k r_k (m_k - x) / v_k = r @ (m / v) - x * (r @ (1 / v)),  eps = -sqrt(1 - ab) score."""
        x = torch.as_tensor(x, dtype=torch.float64)
        ab = float(alpha_bar)
        if self.rotations is not None:
            return self._eps_at_rotated(x, ab)
        m, v = math.sqrt(ab) * self.means, ab * self.stds ** 2 + (1 - ab)
        iv, mv = 1 / v, m / v
        logn = -0.5 * ((x * x) @ iv.T - 2 * x @ mv.T + (m * mv).sum(1) + v.log().sum(1))
        r = torch.softmax(self.weights.log() + logn, dim=1)
        return -math.sqrt(1 - ab) * (r @ mv - x * (r @ iv))

    def _eps_at_rotated(self, x: torch.Tensor, ab: float) -> torch.Tensor:
        """`eps_at` with rotations, one component at a time (memory N x D per component, time N K D^2):
            z_k = (x - sqrt(ab) mu_k) R_k,  log N_k = -1/2 (z_k^2 . 1/v_k + sum log v_k) + const,
            score = sum_k r_k (-(z_k / v_k) R_k^T)."""
        v = ab * self.stds ** 2 + (1 - ab)
        zs, logn = [], []
        for k in range(len(self.weights)):
            z = (x - math.sqrt(ab) * self.means[k]) @ self.rotations[k]
            zs.append(z / v[k])
            logn.append(-0.5 * ((z * zs[-1]).sum(1) + v[k].log().sum()))
        r = torch.softmax(self.weights.log() + torch.stack(logn, 1), dim=1)
        score = sum(-(r[:, k:k + 1] * zs[k]) @ self.rotations[k].T for k in range(len(zs)))
        return -math.sqrt(1 - ab) * score

    def fast_denoiser(self, schedule: Schedule) -> Denoiser:
        """The same exact denoiser as `denoiser`, using `eps_at` when the batch shares one noise level."""
        def fn(x, alpha_bar):
            ab = alpha_bar.reshape(-1)
            if bool((ab == ab[0]).all()):
                return self.eps_at(x.double(), float(ab[0])).to(x.dtype)
            return self.eps(x.double(), alpha_bar).to(x.dtype)
        return Denoiser.from_eps(fn, schedule)
