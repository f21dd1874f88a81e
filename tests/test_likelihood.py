"""log p(x) by the probability-flow ODE, judged against the exact density of a Gaussian mixture."""
import math

import pytest
import torch

import difflab
from difflab import schedules
from difflab.likelihood import divergence
from difflab.mixtures import GaussianMixture

SCHED = schedules.linear(T=1000)


def mixture_2d():
    angles = torch.arange(4, dtype=torch.float64) * math.pi / 2
    means = torch.stack([2 * angles.cos(), 2 * angles.sin()], 1)
    return GaussianMixture(torch.tensor([0.1, 0.2, 0.3, 0.4]), means, torch.full((4, 2), 0.3))


GM = mixture_2d()
X = GM.sample(12, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sde", ["vp", "ve", "subvp"])
def test_exact_trace_matches_the_true_log_density(sde):
    den = GM.fast_denoiser(SCHED)
    lp = difflab.log_prob(den, X, method="ode", trace="exact", sde=sde)
    true = GM.log_prob(X)
    assert lp.shape == (12,) and lp.dtype == torch.float64
    assert ((lp - true).abs() / 2).max() < 0.02, (lp - true)
    # and it is a density of *these* points: shifting them off the modes is noticed
    off = difflab.log_prob(den, X + 0.5, sde=sde)
    assert ((off - GM.log_prob(X + 0.5)).abs() / 2).max() < 0.02
    assert (off < lp).float().mean() > 0.7


def test_the_likelihood_check_can_fail():
    """A denoiser of another mixture (modes moved by 0.3) is caught by the same 0.02 nat/dim bar."""
    wrong = GaussianMixture(GM.weights, GM.means * 1.15, GM.stds)
    lp = difflab.log_prob(wrong.denoiser(SCHED), X)
    assert ((lp - GM.log_prob(X)).abs() / 2).max() > 0.02


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_the_exact_trace_within_its_standard_error(probe):
    den = GM.fast_denoiser(SCHED)
    x = X[:6]
    tol = dict(rtol=1e-4, atol=1e-4)  # the same solver tolerance for both: only the trace differs
    exact = difflab.log_prob(den, x, trace="exact", **tol)
    runs = torch.stack([difflab.log_prob(den, x, trace="hutchinson", probe=probe, **tol,
                                         generator=torch.Generator().manual_seed(s)) for s in range(10)])
    se = runs.std(0) / math.sqrt(len(runs))
    z = (runs.mean(0) - exact) / se.clamp(min=1e-6)
    assert z.abs().max() < 4.5, z
    assert bool((runs.std(0) > 0).all())  # it is an estimate: the probes matter


def test_more_probes_shrink_the_hutchinson_spread():
    den = GM.fast_denoiser(SCHED)
    x = X[:4]
    tol = dict(rtol=1e-4, atol=1e-4)
    one = torch.stack([difflab.log_prob(den, x, trace="hutchinson", probe="gaussian", **tol,
                                        generator=torch.Generator().manual_seed(s)) for s in range(6)])
    many = torch.stack([difflab.log_prob(den, x, trace="hutchinson", probe="gaussian", n_probes=8, **tol,
                                         generator=torch.Generator().manual_seed(s)) for s in range(6)])
    assert many.std(0).mean() < 0.7 * one.std(0).mean()


def test_works_on_a_from_eps_denoiser_and_counts_its_calls():
    calls = []

    def outside_model(x, alpha_bar):  # any differentiable torch function of (x_t, alpha_bar) -> eps
        calls.append(1)
        return GM.eps(x, alpha_bar)
    den = difflab.Denoiser.from_eps(outside_model, SCHED)
    lp, info = difflab.log_prob(den, X[:5], return_info=True)
    assert ((lp - GM.log_prob(X[:5])).abs() / 2).max() < 0.02
    assert info["nfe"] == den.nfe == len(calls) > 10


def test_divergence_exact_and_hutchinson_on_a_linear_field():
    a = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    out, div = divergence(lambda v: v @ a.T, z, "exact")
    assert torch.allclose(out, z @ a.T) and torch.allclose(div, torch.full((5,), 5.0, dtype=torch.float64))
    probes = torch.randn(4000, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, est = divergence(lambda v: v @ a.T, z, "hutchinson", probes)
    assert torch.allclose(est, torch.full((5,), 5.0, dtype=torch.float64), atol=0.6)  # ~4 standard errors


def test_bits_per_dim_of_quantised_data_matches_the_true_density():
    """Uniform dequantisation: bpd = -(E_u log p(x + w u) + D log w) / (D log 2), checked against the
    exact mixture density at the same dequantised points."""
    levels, lo, hi = 64, -4.0, 4.0
    w = (hi - lo) / (levels - 1)
    k = torch.round((X.clamp(lo, hi) - lo) / w)
    x01 = k / (levels - 1)
    den = GM.fast_denoiser(SCHED)
    bpd = difflab.bits_per_dim(den, x01, levels, generator=torch.Generator().manual_seed(3), lo=lo, hi=hi)
    u = torch.rand(x01.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.5
    expect = -(GM.log_prob(lo + w * k + w * u) + 2 * math.log(w)) / (2 * math.log(2))
    assert (bpd - expect).abs().max() < 0.02 / math.log(2), (bpd - expect)
    # integer levels give the same answer; out-of-range data are refused
    bpd_int = difflab.bits_per_dim(den, k.long(), levels, generator=torch.Generator().manual_seed(3),
                                   lo=lo, hi=hi)
    assert torch.allclose(bpd, bpd_int)
    with pytest.raises(ValueError):
        difflab.bits_per_dim(den, x01 + 1.0, levels)


def _correlated_gaussian(narrow=0.012):
    """A 2-D Gaussian, narrow along one tilted direction: (mean, covariance)."""
    rot = torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([0.5 ** 2, narrow ** 2], dtype=torch.float64)) @ rot.T
    return torch.tensor([0.3, -0.2], dtype=torch.float64), cov


def test_gauss_start_correction_is_exact_for_a_correlated_gaussian():
    """start_correction with the score and Jacobian of N(mu, S + s2 I) gives log N(x; mu, S) - log N(x; mu,
    S + s2 I) exactly (scipy's densities are the oracle; measured 8e-14); the first-order form is visibly off
    (0.39 nat)."""
    from scipy.stats import multivariate_normal

    from difflab.likelihood import start_correction
    mu, cov = _correlated_gaussian()
    s2 = 0.01 ** 2
    x = torch.from_numpy(multivariate_normal(mu.numpy(), cov.numpy()).rvs(8, random_state=1))
    smoothed = cov + s2 * torch.eye(2, dtype=torch.float64)
    prec = torch.linalg.inv(smoothed)
    score = -(x - mu) @ prec  # prec is symmetric
    jac = -prec.expand(8, 2, 2)
    want = torch.from_numpy(multivariate_normal(mu.numpy(), cov.numpy()).logpdf(x.numpy())
                            - multivariate_normal(mu.numpy(), smoothed.numpy()).logpdf(x.numpy()))
    got = start_correction(score, s2, jac=jac)
    assert torch.allclose(got, want, atol=1e-9), (got, want)
    first_order = start_correction(score, s2, div=jac.diagonal(dim1=1, dim2=2).sum(1))
    assert (first_order - want).abs().max() > 0.05


def test_log_density_of_modes_barely_wider_than_the_smallest_noise_level():
    """Six modes of width 0.02 (the linear schedule stops at sigma 0.01): the PF-ODE log-density stays within
    0.02 nat/dim of the true one with the default ("gauss") start (measured 0.0002); the first-order start
    does not (0.035)."""
    angles = torch.arange(6, dtype=torch.float64) * math.pi / 3
    gm = GaussianMixture(torch.ones(6, dtype=torch.float64), torch.stack([angles.cos(), angles.sin()], 1),
                         torch.full((6, 2), 0.02, dtype=torch.float64))
    x = gm.sample(12, torch.Generator().manual_seed(2))
    den = gm.fast_denoiser(SCHED)
    err = (difflab.log_prob(den, x) - gm.log_prob(x)).abs() / 2
    assert err.max() < 0.02, err
    taylor = (difflab.log_prob(den, x, correct_start="taylor") - gm.log_prob(x)).abs() / 2
    assert taylor.max() > 0.02, taylor


def test_correlated_gaussian_from_eps_log_density():
    """An outside eps for a correlated Gaussian (closed form) through the whole ODE: within 0.005 nat/dim of
    scipy's log density, also for points off the narrow axis (measured 3e-5; the first-order start with the
    plain prior: 0.44)."""
    from scipy.stats import multivariate_normal
    mu, cov = _correlated_gaussian()

    def eps(x, ab):  # x_t = sqrt(ab) x0 + sqrt(1 - ab) e:  eps = sqrt(1 - ab) (ab S + (1 - ab) I)^-1 (x - sqrt(ab) mu)
        ab = ab.double().reshape(-1, 1, 1)
        cov_t = ab * cov + (1 - ab) * torch.eye(2, dtype=torch.float64)
        r = (x.double() - ab.reshape(-1, 1).sqrt() * mu).unsqueeze(-1)
        return ((1 - ab).sqrt() * torch.linalg.solve(cov_t, r)).squeeze(-1).to(x.dtype)
    x = torch.from_numpy(multivariate_normal(mu.numpy(), cov.numpy()).rvs(8, random_state=3))
    x = torch.cat([x, x[:3] + torch.tensor([0.01, -0.015], dtype=torch.float64)])
    lp = difflab.log_prob(difflab.Denoiser.from_eps(eps, SCHED), x)
    true = torch.from_numpy(multivariate_normal(mu.numpy(), cov.numpy()).logpdf(x.numpy()))
    assert ((lp - true).abs() / 2).max() < 0.005, (lp - true)


def test_start_correction_choice_is_checked():
    with pytest.raises(ValueError, match="correct_start"):
        difflab.log_prob(GM.fast_denoiser(SCHED), X[:2], correct_start="exact")


def test_end_log_density_is_exact_for_a_gaussian_marginal():
    """end_log_density from the score (and Jacobian) of N(c, S) at z gives scipy's log N(z; c, S); the
    score-only form is exact when S is isotropic at the prior's variance, and off when it is not (33 nat here)."""
    from scipy.stats import multivariate_normal

    from difflab.likelihood import end_log_density
    c = torch.tensor([0.04, -0.03], dtype=torch.float64)
    _, cov = _correlated_gaussian(narrow=0.9)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    got = end_log_density(-(z - c) @ prec, 1.0, jac=-prec.expand(6, 2, 2))
    want = torch.from_numpy(multivariate_normal(c.numpy(), cov.numpy()).logpdf(z.numpy()))
    assert torch.allclose(got, want, atol=1e-10)
    iso = end_log_density(-(z - c) / 1.3, 1.3)
    want_iso = torch.from_numpy(multivariate_normal(c.numpy(), 1.3 * torch.eye(2).numpy()).logpdf(z.numpy()))
    assert torch.allclose(iso, want_iso, atol=1e-10)
    assert (end_log_density(-(z - c) @ prec, 1.0) - want).abs().max() > 0.01


def test_log_density_of_data_far_from_the_origin():
    """Modes around (5, -4): the plain N(0, I) prior at t_max charges each point ~ sqrt(ab_T) mu . z_T; the
    default end (the local Gaussian from the score there) does not: within 0.005 nat/dim of the true density.
    Measured: 2e-5 nat/dim (plain prior 0.046); the charge removed is up to 0.091 nat, and Hutchinson's
    score-only end removes it to within 1.3e-4."""
    means = torch.tensor([[5.0, -4.0], [5.8, -3.5], [4.4, -4.6]], dtype=torch.float64)
    gm = GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, torch.full((3, 2), 0.2, dtype=torch.float64))
    x = gm.sample(12, torch.Generator().manual_seed(5))
    den = gm.fast_denoiser(SCHED)
    err = (difflab.log_prob(den, x) - gm.log_prob(x)).abs() / 2
    plain = (difflab.log_prob(den, x, correct_end=False) - gm.log_prob(x)).abs() / 2
    assert err.max() < 0.005, err
    assert plain.max() > 0.02, plain
    def hutch(**kw):  # the same probes each time: only the end differs
        return difflab.log_prob(den, x, trace="hutchinson", generator=torch.Generator().manual_seed(0), **kw)
    # the score-only end ("shift") removes the same charge as the Jacobian one
    charge = difflab.log_prob(den, x) - difflab.log_prob(den, x, correct_end=False)
    assert charge.abs().max() > 0.04
    assert ((hutch() - hutch(correct_end=False)) - charge).abs().max() < 0.01
