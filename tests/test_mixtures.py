"""Gaussian mixtures with full covariances (difflab.mixtures, `rotations`) against oracles that share none of
their code: scipy's multivariate normal, Bayes' rule on a grid, Kolmogorov-Smirnov on 1-D projections."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from difflab.mixtures import GaussianMixture


def _random_full(k=3, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    cov = 0.3 * a @ a.transpose(1, 2) + 0.02 * torch.eye(d, dtype=torch.float64)  # elongated, turned
    mu = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    return w / w.sum(), mu, cov


def _scipy_log_q(w, mu, cov, x, ab):
    """log q_t(x) with each noised covariance ab Sigma_k + (1 - ab) I built directly (no eigh)."""
    d = mu.shape[1]
    dens = [w[k].item() * stats.multivariate_normal(math.sqrt(ab) * mu[k].numpy(),
                                                    ab * cov[k].numpy() + (1 - ab) * np.eye(d)).pdf(x)
            for k in range(len(w))]
    return np.log(np.sum(dens, 0))


@pytest.mark.parametrize("ab", [1.0, 0.6, 0.05])
def test_full_covariance_log_prob_and_score_against_scipy(ab):
    w, mu, cov = _random_full()
    gm = GaussianMixture.from_covariances(w, mu, cov)
    assert torch.allclose(gm.covariances, cov, atol=1e-12)
    x = 2.0 * torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _scipy_log_q(w, mu, cov, x.numpy(), ab)
    assert np.abs(gm.log_prob(x, ab).numpy() - ref).max() < 1e-9
    if ab < 1:  # the score against central differences of scipy's log-density
        h, xn = 1e-5, x.numpy()
        fd = np.stack([(_scipy_log_q(w, mu, cov, xn + h * e, ab) - _scipy_log_q(w, mu, cov, xn - h * e, ab)) / (2 * h)
                       for e in np.eye(3)], 1)
        abv = torch.full((50,), ab, dtype=torch.float64)
        assert np.abs(gm.score(x, abv).numpy() - fd).max() < 1e-5 * (1 + np.abs(fd).max())
        assert torch.allclose(gm.eps_at(x, ab), gm.eps(x, abv), rtol=1e-10, atol=1e-12)


def test_full_covariance_eps_is_the_posterior_mean_by_bayes_on_a_grid():
    """E[eps | x_t] = (x_t - sqrt(ab) E[x_0 | x_t]) / sqrt(1 - ab), E[x_0 | x_t] by summing over a 2-D grid of x_0
    with the prior density from scipy and the likelihood N(x_t; sqrt(ab) x_0, (1 - ab) I)."""
    w = torch.tensor([0.6, 0.4], dtype=torch.float64)
    mu = torch.tensor([[-1.0, 0.5], [1.2, -0.3]], dtype=torch.float64)
    th = 0.7
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
    cov = torch.stack([rot @ torch.diag(torch.tensor([0.8, 0.02], dtype=torch.float64)) @ rot.T,
                       rot.T @ torch.diag(torch.tensor([0.05, 0.5], dtype=torch.float64)) @ rot])
    gm = GaussianMixture.from_covariances(w, mu, cov)
    u = np.linspace(-5, 5, 1001)
    g0 = np.stack(np.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    prior = sum(w[k].item() * stats.multivariate_normal(mu[k].numpy(), cov[k].numpy()).pdf(g0) for k in range(2))
    ab = 0.5
    x = torch.tensor([[0.3, 0.1], [-1.5, 1.0], [1.0, -1.2], [0.0, 2.0]], dtype=torch.float64)
    for i in range(len(x)):
        lik = np.exp(-((x[i].numpy() - math.sqrt(ab) * g0) ** 2).sum(1) / (2 * (1 - ab)))
        post = prior * lik
        x0 = (post[:, None] * g0).sum(0) / post.sum()
        eps_ref = (x[i].numpy() - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        eps = gm.eps(x[i:i + 1], torch.tensor([ab], dtype=torch.float64))[0].numpy()
        assert np.abs(eps - eps_ref).max() < 1e-6, (i, eps, eps_ref)


def test_full_covariance_samples_have_the_mixtures_projections():
    """Kolmogorov-Smirnov on 1-D projections u . x against the mixture's exact marginal CDF,
    sum_k w_k Phi((t - u . mu_k) / sqrt(u^T Sigma_k u)); and a wrong covariance fails it."""
    w, mu, cov = _random_full(k=3, d=4, seed=3)
    gm = GaussianMixture.from_covariances(w, mu, cov)
    x = gm.sample(20000, torch.Generator().manual_seed(5)).numpy()
    r = np.random.default_rng(0).normal(size=(5, 4))

    def cdf(u, c):
        sd = [math.sqrt(u @ c[k].numpy() @ u) for k in range(3)]
        return lambda t: sum(w[k].item() * stats.norm.cdf((t - u @ mu[k].numpy()) / sd[k]) for k in range(3))

    for u in r / np.linalg.norm(r, axis=1, keepdims=True):
        assert stats.kstest(x @ u, cdf(u, cov)).pvalue > 1e-3
    wrong = GaussianMixture(w, mu, torch.diagonal(cov, dim1=1, dim2=2).sqrt())  # the diagonal alone
    xw = wrong.sample(20000, torch.Generator().manual_seed(5)).numpy()
    assert min(stats.kstest(xw @ u, cdf(u, cov)).pvalue for u in r / np.linalg.norm(r, axis=1, keepdims=True)) < 1e-6


def test_rotations_are_checked():
    w, mu, cov = _random_full()
    with pytest.raises(ValueError, match="orthogonal"):
        GaussianMixture(w, mu, torch.ones(3, 3), 2.0 * torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(w, mu, torch.ones(3, 3), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture.from_covariances(w, mu, -cov)
