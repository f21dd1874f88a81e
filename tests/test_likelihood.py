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
