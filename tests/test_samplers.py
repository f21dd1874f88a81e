"""Samplers judged with the exact denoiser of a Gaussian mixture: no training involved."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import difflab
from difflab import metrics, samplers, schedules
from difflab.mixtures import GaussianMixture


def mixture_2d():
    angles = torch.arange(4, dtype=torch.float64) * math.pi / 2
    means = torch.stack([2 * angles.cos(), 2 * angles.sin()], 1)
    return GaussianMixture(torch.tensor([0.1, 0.2, 0.3, 0.4]), means, torch.full((4, 2), 0.3))


def sliced_w2(a, b, n_proj=64, seed=0):
    """Sliced W2 on n_proj random directions (difflab.metrics.sliced_w2, tested against exact 1-D W2)."""
    return metrics.sliced_w2(a, b, n_directions=n_proj, seed=seed)


def test_mixture_score_against_finite_differences_of_log_prob():
    gm = mixture_2d()
    x = torch.randn(5, 2, dtype=torch.float64)
    ab = torch.full((5,), 0.4, dtype=torch.float64)
    h = 1e-6
    fd = torch.stack([(gm.log_prob(x + h * e, ab) - gm.log_prob(x - h * e, ab)) / (2 * h)
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    assert torch.allclose(gm.score(x, ab), fd, atol=1e-6)


def test_mixture_log_prob_against_scipy():
    gm = mixture_2d()
    x = torch.randn(7, 2, dtype=torch.float64)
    expect = np.log(sum(w * stats.multivariate_normal(m, np.diag(s ** 2)).pdf(x.numpy())
                        for w, m, s in zip(gm.weights.numpy(), gm.means.numpy(), gm.stds.numpy())))
    np.testing.assert_allclose(gm.log_prob(x).numpy(), expect, rtol=1e-10)


def test_timesteps_no_repeats_and_include_T():
    for T, nfe in [(1000, 1000), (1000, 10), (1000, 999), (50, 7), (10, 1)]:
        t = samplers.timesteps(T, nfe)
        assert len(t) == nfe and len(set(t.tolist())) == nfe
        assert t[0] == T and (t[:-1] > t[1:]).all() and t[-1] >= 1
        if nfe == T:
            assert t.tolist() == list(range(T, 0, -1))
    with pytest.raises(ValueError):
        samplers.timesteps(10, 11)


def noise_floor(gm, n, reps=6):
    """Sliced W2 between independent true sample sets of size n: what a perfect sampler reaches."""
    g = torch.Generator().manual_seed(123)
    return np.mean([sliced_w2(gm.sample(n, g).numpy(), gm.sample(n, g).numpy(), seed=r) for r in range(reps)])


@pytest.mark.parametrize("variance", [None, "small", "large"], ids=["default", "small", "large"])
def test_ancestral_sampler_reproduces_mixture_within_noise_floor(variance):
    gm = mixture_2d()
    sched = schedules.linear(T=1000)
    den = gm.denoiser(sched)
    n = 4000
    g = torch.Generator().manual_seed(0)
    opts = {} if variance is None else {"variance": variance}  # None: sample()'s own default ("analytic")
    x = difflab.sample(den, torch.randn(n, 2, generator=g, dtype=torch.float64), "ancestral", nfe=1000,
                       generator=g, **opts)
    assert den.nfe == 1000
    ref = gm.sample(n, torch.Generator().manual_seed(7)).numpy()
    floor = noise_floor(gm, n)
    d = sliced_w2(x.numpy(), ref)
    assert d < 2.5 * floor, (d, floor)
    # the mixture weights are recovered too (each component within 4 standard errors)
    k = gm.component_log_probs(x).argmax(1)
    frac = torch.bincount(k, minlength=4).double() / n
    se = (gm.weights * (1 - gm.weights) / n).sqrt()
    assert ((frac - gm.weights).abs() < 4 * se).all(), frac


def test_a_broken_sampler_fails_the_same_check():
    """The check above can fail: dropping the noise (variance 0) collapses onto the modes."""
    gm = mixture_2d()
    den = gm.denoiser(schedules.linear(T=1000))
    n = 4000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    grid = samplers.alpha_bar_grid(den, 100)
    for i in range(len(grid) - 1):  # posterior mean only: over-concentrated
        x0, _ = den.predict(x, grid[i].expand(n))
        mean, _ = difflab.gaussian.posterior_mean_var(x0, x, grid[i].expand(n), grid[i + 1].expand(n))
        x = mean
    ref = gm.sample(n, torch.Generator().manual_seed(7)).numpy()
    assert sliced_w2(x.numpy(), ref) > 3 * noise_floor(gm, n)


def test_ddim_eta_one_matches_ancestral_small_in_distribution_and_eta_zero_is_deterministic():
    gm = mixture_2d()
    den = gm.denoiser(schedules.linear(T=1000))
    noise = torch.randn(3000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = difflab.sample(den, noise, "ddim", nfe=100, eta=0.0)
    b = difflab.sample(den, noise, "ddim", nfe=100, eta=0.0)
    assert torch.equal(a, b)
    ref = gm.sample(3000, torch.Generator().manual_seed(8)).numpy()
    floor = noise_floor(gm, 3000)
    assert sliced_w2(a.numpy(), ref) < 2.5 * floor
    c = difflab.sample(den, noise, "ddim", nfe=100, eta=1.0, generator=torch.Generator().manual_seed(4))
    assert sliced_w2(c.numpy(), ref) < 2.5 * floor


def test_same_seed_same_samples():
    gm = mixture_2d()
    den = gm.denoiser(schedules.cosine(T=200))
    out = [difflab.sample(den, torch.randn(10, 2, generator=torch.Generator().manual_seed(5)), nfe=50,
                          generator=torch.Generator().manual_seed(6)) for _ in range(2)]
    assert torch.equal(*out)
