"""The forward process and its posterior against oracles that share no code with difflab:
Monte Carlo with tolerances from the sample size, and Bayes' rule on a grid."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from difflab import gaussian as G
from difflab import schedules


def test_linear_schedule_matches_ddpm_definition():
    s = schedules.linear(T=1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert s.betas.dtype == torch.float64
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=0, atol=1e-15)
    np.testing.assert_allclose(s.alpha_bars.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    # float64 matters: beta-tilde_2 = (1 - ab_1)/(1 - ab_2) beta_2 loses ~1e-4 relative in float32,
    # ours matches numpy's float64 to 1e-12.
    ab = np.cumprod(1 - betas)
    bt2 = (1 - ab[0]) / (1 - ab[1]) * betas[1]
    ab32 = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float32), 0)
    bt2_32 = ((1 - ab32[0]) / (1 - ab32[1]) * float(betas[1])).item()
    assert abs(bt2_32 / bt2 - 1) > 1e-5
    assert s.posterior_variance[1].item() == pytest.approx(bt2, rel=1e-12)


def test_cosine_schedule_definition_and_clipping():
    s = schedules.cosine(T=1000)
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    ab = f(np.arange(1001)) / f(0)
    betas = np.minimum(1 - ab[1:] / ab[:-1], 0.999)
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-12, atol=1e-15)
    assert s.betas.max().item() == pytest.approx(0.999)
    assert (s.alpha_bars[1:] < s.alpha_bars[:-1]).all()


@pytest.mark.parametrize("make", [schedules.linear, schedules.cosine, schedules.sigmoid])
def test_discretise_any_T_is_monotone_and_matches_continuous(make):
    s = make(T=1000)
    for T in (10, 37, 250):
        d = s.discretise(T)
        assert d.T == T
        ab = d.alpha_bars
        assert (ab[1:] < ab[:-1]).all()
        t = torch.arange(1, T + 1, dtype=torch.float64) / T
        expect = s.alpha_bar(t).clamp(min=1e-30)
        mask = expect > 1e-6
        np.testing.assert_allclose(ab[mask].numpy(), expect[mask].numpy(), rtol=1e-9)


def test_continuous_linear_is_close_to_discrete():
    s = schedules.linear(T=1000)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    # exp(-sum beta) vs prod(1 - beta): relative gap of order sum beta^2 / 2 < 0.07
    assert torch.allclose(s.alpha_bar(t), s.alpha_bars, rtol=0.08, atol=1e-6)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError):
        schedules.linear(T=0)
    with pytest.raises(ValueError):
        schedules.by_name("nope")
    with pytest.raises(ValueError):
        schedules.from_betas([0.1, 1.5])


def test_q_sample_moments_monte_carlo():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    ab = torch.full((n,), 0.3, dtype=torch.float64)
    xt = G.q_sample(x0, ab, torch.randn(n, 1, generator=g, dtype=torch.float64))
    mean, var = G.q_mean_var(x0[:1], ab[:1])
    se_mean = math.sqrt(0.7 / n)
    assert abs(xt.mean().item() - mean.item()) < 5 * se_mean
    se_var = 0.7 * math.sqrt(2 / (n - 1))
    assert abs(xt.var().item() - var.item()) < 5 * se_var


def test_posterior_against_bayes_rule_on_a_grid():
    """q(x_{t-1} | x_t, x_0) propto q(x_t | x_{t-1}) q(x_{t-1} | x_0), normalised numerically."""
    s = schedules.linear(T=1000)
    ab = s.alpha_bars_with_zero()
    f64 = dict(dtype=torch.float64)
    for t, x0_val, z in [(1, 0.3, 0.5), (2, -0.5, 1.1), (100, 0.8, -0.4), (999, 0.2, 1.3)]:
        ab_t, ab_s, beta = ab[t].item(), ab[t - 1].item(), s.betas[t - 1].item()
        xt_val = math.sqrt(ab_t) * x0_val + math.sqrt(1 - ab_t) * z  # a typical x_t given x_0
        mean, var = G.posterior_mean_var(torch.tensor([[x0_val]], **f64), torch.tensor([[xt_val]], **f64),
                                         torch.tensor([ab_t], **f64), torch.tensor([ab_s], **f64))
        if t == 1:  # x_0 is known: the posterior is a point mass at x_0
            assert mean.item() == pytest.approx(x0_val, abs=1e-12) and var.item() == pytest.approx(0, abs=1e-15)
            continue
        sd_prior = math.sqrt(1 - ab_s)
        centres = [math.sqrt(ab_s) * x0_val, xt_val / math.sqrt(1 - beta)]
        grid = np.linspace(min(centres) - 10 * sd_prior, max(centres) + 10 * sd_prior, 400_001)
        logp = (stats.norm.logpdf(xt_val, math.sqrt(1 - beta) * grid, math.sqrt(beta))
                + stats.norm.logpdf(grid, math.sqrt(ab_s) * x0_val, sd_prior))
        p = np.exp(logp - logp.max())
        p /= p.sum()
        m = (p * grid).sum()
        v = (p * (grid - m) ** 2).sum()
        assert mean.item() == pytest.approx(m, rel=1e-6, abs=1e-9)
        assert var.item() == pytest.approx(v, rel=1e-4)
        assert var.item() == pytest.approx(s.posterior_variance[t - 1].item(), rel=1e-10)


def test_posterior_of_skipped_steps_against_monte_carlo():
    """For s < t - 1 (respaced sampling), draw x_s ~ q(x_s|x_0), x_t ~ q(x_t|x_s) and regress."""
    g = torch.Generator().manual_seed(1)
    ab_s, ab_t, x0 = 0.6, 0.2, 0.5
    n = 400_000
    xs = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * torch.randn(n, generator=g, dtype=torch.float64)
    xt = math.sqrt(ab_t / ab_s) * xs + math.sqrt(1 - ab_t / ab_s) * torch.randn(n, generator=g, dtype=torch.float64)
    # E[x_s | x_t] is linear in x_t for jointly Gaussian variables; fit it by least squares.
    A = torch.stack([torch.ones(n, dtype=torch.float64), xt], 1)
    coef = torch.linalg.lstsq(A, xs[:, None]).solution[:, 0]
    resid_var = (xs - A @ coef).var().item()
    c_x0, c_xt, var = G.posterior_coefs(torch.tensor(ab_t), torch.tensor(ab_s))
    assert coef[1].item() == pytest.approx(c_xt.item(), abs=0.01)
    assert coef[0].item() == pytest.approx(c_x0.item() * x0, abs=0.01)
    assert resid_var == pytest.approx(var.item(), rel=0.01)


def test_parameterisation_conversions_round_trip():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 3, generator=g, dtype=torch.float64)
    ab = torch.rand(16, generator=g, dtype=torch.float64) * 0.98 + 0.01
    xt = G.q_sample(x0, ab, eps)
    assert torch.allclose(G.x0_from_eps(xt, eps, ab), x0)
    assert torch.allclose(G.eps_from_x0(xt, x0, ab), eps)
    assert torch.allclose(G.eps_from_score(G.score_from_eps(eps, ab), ab), eps)
