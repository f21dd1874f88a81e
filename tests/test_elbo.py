"""The variational bound: every KL and likelihood against scipy, the bound of the exact denoiser of Gaussian
data against its closed form (written here in numpy, sharing no code), the bound above the true NLL of a
mixture, reverse variances, and `difflab eval --metrics elbo`."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from difflab import schedules
from difflab.cli import main
from difflab.denoiser import Denoiser
from difflab.elbo import elbo, summarize
from difflab.mixtures import GaussianMixture
from difflab.vlb import (
    discretized_gaussian_log_likelihood,
    interpolate_log_variance,
    model_log_variance,
    normal_kl,
    prior_kl,
    step_log_variances,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -1.0, 2.0), (2.0, 3.0, 0.1, 0.7)])
def test_normal_kl_against_quadrature(m1, s1, m2, s2):
    integrand = lambda x: stats.norm.pdf(x, m1, s1) * (stats.norm.logpdf(x, m1, s1) - stats.norm.logpdf(x, m2, s2))
    want = integrate.quad(integrand, m1 - 20 * s1, m1 + 20 * s1, limit=200)[0]
    got = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, 2 * math.log(s1), m2, 2 * math.log(s2))))
    assert float(got) == pytest.approx(want, rel=1e-7, abs=1e-10)


def test_prior_kl_against_monte_carlo():
    x0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    ab = 0.3
    rng = np.random.default_rng(0)
    m, s = math.sqrt(ab) * x0.numpy()[0], math.sqrt(1 - ab)
    z = m + s * rng.standard_normal((400_000, 3))
    ratio = (stats.norm.logpdf(z, m, s) - stats.norm.logpdf(z)).sum(1)
    got = float(prior_kl(x0, torch.tensor([ab], dtype=torch.float64))[0])
    assert abs(got - ratio.mean()) < 4 * ratio.std() / math.sqrt(len(ratio))


@pytest.mark.parametrize("levels", [17, 256])
def test_discretized_likelihood_against_scipy(levels):
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    for mean, std in [(0.1, 0.05), (-0.9, 0.3), (0.95, 0.01), (3.0, 0.2)]:
        lp = discretized_gaussian_log_likelihood(grid, torch.tensor(mean, dtype=torch.float64),
                                                 torch.tensor(2 * math.log(std), dtype=torch.float64), levels)
        edges = np.concatenate([[-np.inf], (grid[:-1].numpy() + grid[1:].numpy()) / 2, [np.inf]])
        lo, hi = edges[:-1], edges[1:]
        upper = lo > mean   # upper tail: differences of survival functions keep their digits
        p = np.where(upper, stats.norm.sf(lo, mean, std) - stats.norm.sf(hi, mean, std),
                     stats.norm.cdf(hi, mean, std) - stats.norm.cdf(lo, mean, std))
        ok = p > 1e-300
        assert torch.isfinite(lp).all()
        np.testing.assert_allclose(lp.numpy()[ok], np.log(p[ok]), rtol=1e-6, atol=1e-9)
        assert float(torch.logsumexp(lp, 0)) == pytest.approx(0.0, abs=1e-9)
    # far in the tails, where Phi(b) - Phi(a) underflows in a naive difference, still finite and right
    f64 = dict(dtype=torch.float64)
    lp = discretized_gaussian_log_likelihood(torch.tensor(0.0, **f64), torch.tensor(0.9, **f64),
                                             torch.tensor(2 * math.log(0.02), **f64), levels)
    d = 1 / (levels - 1)
    a, b = (0 - d - 0.9) / 0.02, (0 + d - 0.9) / 0.02
    want = stats.norm.logcdf(b) + np.log1p(-np.exp(stats.norm.logcdf(a) - stats.norm.logcdf(b)))
    assert want < -500
    assert float(lp) == pytest.approx(want, rel=1e-6)


def test_reverse_variances():
    sched = schedules.linear(T=100, beta_start=1e-3, beta_end=0.05)
    grid = torch.cat([sched.alpha_bars.flip(0), torch.ones(1, dtype=torch.float64)])
    tab = step_log_variances(grid)
    beta = sched.betas.flip(0)
    beta_tilde = sched.posterior_variance.flip(0)
    for k in tab:
        assert torch.isfinite(tab[k]).all(), k
    torch.testing.assert_close(tab["beta"], beta.log())
    torch.testing.assert_close(tab["small"][:-1], beta_tilde[:-1].log())
    assert float(tab["small"][-1]) == pytest.approx(float(beta_tilde[-2].log()))   # clipped as improved DDPM
    assert float(tab["large"][-1]) == pytest.approx(float(beta_tilde[-2].log()))   # finite first step
    torch.testing.assert_close(tab["large"][:-1], beta[:-1].log())
    v0, v1 = torch.zeros(3), torch.ones(3)
    i = 40
    torch.testing.assert_close(interpolate_log_variance(v0.double(), tab["beta"][i], tab["beta_tilde"][i]),
                               beta_tilde[i].log().expand(3))
    torch.testing.assert_close(interpolate_log_variance(v1.double(), tab["beta"][i], tab["beta_tilde"][i]),
                               beta[i].log().expand(3))
    torch.testing.assert_close(model_log_variance("learned", tab, i, v1), beta[i].log().expand(3))
    torch.testing.assert_close(model_log_variance("learned-range", tab, i, -v1), beta_tilde[i].log().expand(3))
    torch.testing.assert_close(model_log_variance("learned-range", tab, i, v1), beta[i].log().expand(3))


def _analytic_gaussian_elbo(x0, m, s, grid, variance="small"):
    """Expected -ELBO per example (nats) of the exact denoiser of N(m, s^2) per dimension, fixed variances
    (beta-tilde or beta), Gaussian decoder with variance (1 - ab_1) / ab_1: numpy, from the definitions."""
    x0 = np.asarray(x0, dtype=np.float64)
    g = np.asarray(grid, dtype=np.float64)
    K = len(g) - 1
    ab_T = g[0]
    total = 0.5 * (-1 - np.log(1 - ab_T) + (1 - ab_T) + ab_T * x0 ** 2)
    btilde = [(1 - g[i + 1]) / (1 - g[i]) * (1 - g[i] / g[i + 1]) for i in range(K)]
    for i in range(K):
        ab, ab_s = g[i], g[i + 1]
        k = math.sqrt(ab) * s ** 2 / (ab * s ** 2 + 1 - ab)          # x0_hat = m + k (x_t - sqrt(ab) m)
        err2 = (k * math.sqrt(ab) - 1) ** 2 * (x0 - m) ** 2 + k ** 2 * (1 - ab)   # E (x0_hat - x0)^2
        if i < K - 1:
            c_x0 = math.sqrt(ab_s) * (1 - ab / ab_s) / (1 - ab)
            var_q, var_p = btilde[i], (btilde[i] if variance == "small" else 1 - ab / ab_s)
            total = total + 0.5 * (-1 + np.log(var_p / var_q) + var_q / var_p + c_x0 ** 2 * err2 / var_p)
        else:
            var_d = (1 - ab) / ab
            total = total + 0.5 * (np.log(2 * np.pi * var_d) + err2 / var_d)
    return total.sum(-1)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_elbo_of_exact_gaussian_denoiser_matches_closed_form(variance):
    m, s = np.array([0.5, -1.0]), np.array([0.8, 1.5])
    gm = GaussianMixture([1.0], [m.tolist()], [s.tolist()])
    sched = schedules.cosine(T=60)
    den = gm.denoiser(sched)
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(3000, generator=g)
    terms = elbo(den, x0, generator=g, variance=variance)
    grid = torch.cat([sched.alpha_bars.flip(0), torch.ones(1, dtype=torch.float64)])
    want = _analytic_gaussian_elbo(x0.numpy(), m, s, grid.numpy(), variance)
    diff = terms.total.numpy() - want
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff))
    # the bound sits above the true NLL (in expectation and as measured)
    nll = -gm.log_prob(x0).numpy()
    res = summarize(terms)
    assert res["nll_nats"] - nll.mean() > -2 * res["nll_nats_se"]
    assert float(want.mean() - nll.mean()) > 0


def test_elbo_bounds_mixture_nll_and_respacing_uses_own_steps():
    gm = GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [1.5, 1.0]], [[0.3, 0.6], [0.5, 0.2]])
    sched = schedules.linear(T=200, beta_start=1e-4, beta_end=0.1)
    den = gm.denoiser(sched)
    g = torch.Generator().manual_seed(1)
    x0 = gm.sample(2000, generator=g)
    nll = float(-gm.log_prob(x0).mean())
    full = summarize(elbo(den, x0, generator=g, variance="large"))
    assert full["steps"] == 200
    assert full["nll_nats"] > nll - 2 * full["nll_nats_se"]
    assert (full["nll_nats"] - nll) / 2 < 0.05            # the exact denoiser with beta: nearly tight
    small = summarize(elbo(den, x0, generator=g, variance="small"))
    assert small["nll_nats"] > full["nll_nats"] + 0.5      # beta-tilde is far from the true reverse variance
    den.nfe = 0
    coarse = summarize(elbo(den, x0, nfe=20, generator=g, variance="large", batch_size=len(x0)))
    assert coarse["steps"] == 20 and den.nfe == 20
    assert coarse["nll_nats"] > nll - 2 * coarse["nll_nats_se"]
    assert coarse["nll_nats"] > full["nll_nats"]            # fewer steps: a looser bound


def test_learned_variance_denoiser_at_v0_matches_fixed_small():
    gm = GaussianMixture([1.0], [[0.0, 1.0]], [[1.0, 0.5]])
    sched = schedules.cosine(T=30)
    fixed = gm.denoiser(sched)
    learned = Denoiser.from_eps(lambda x, ab: torch.cat([gm.eps(x, ab).to(x.dtype), torch.zeros_like(x)], 1), sched)
    learned.variance_type = "learned"
    x0 = gm.sample(50, generator=torch.Generator().manual_seed(0))
    a = elbo(fixed, x0, generator=torch.Generator().manual_seed(3))
    b = elbo(learned, x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.kl, b.kl)
    torch.testing.assert_close(a.prior, b.prior)


def test_discrete_elbo_is_a_bound_on_the_probability_of_levels():
    """Data on 5 levels in 1-D: exact probabilities known; the bound with the exact mixture denoiser of the
    levels (a mixture of narrow Gaussians at the levels) is >= -log P for both fixed variances."""
    levels = 5
    vals = torch.linspace(-1, 1, levels, dtype=torch.float64)
    probs = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    gm = GaussianMixture(probs, vals[:, None], [[1e-3]] * levels)
    sched = schedules.cosine(T=100)
    g = torch.Generator().manual_seed(0)
    idx = torch.multinomial(probs, 2000, replacement=True, generator=g)
    x0 = vals[idx][:, None]
    true = float(-probs.log()[idx].mean())
    res = {}
    for variance in ("small", "large"):
        res[variance] = r = summarize(elbo(gm.denoiser(sched), x0, levels=levels, generator=g, variance=variance))
        assert r["nll_nats"] > true - 2 * r["nll_nats_se"]
        assert r["bits_per_dim"] == pytest.approx(r["nll_nats"] / math.log(2))
    # discrete data: at low noise the reverse variance collapses to beta-tilde, so "small" is the tighter one
    assert res["small"]["nll_nats"] < res["large"]["nll_nats"]


def test_cli_eval_elbo_reports_data_units(tmp_path, capsys):
    """A run on X and one on 10 X (same seed) standardise to the same data and learn the same model: the
    density of 10 X is that of X / 10, so nats/dim must differ by exactly log 10 (the log-Jacobian)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 0.5, (300, 2)), rng.normal(2, 0.5, (300, 2))]).astype(np.float32)
    out = {}
    for scale in (1, 10):
        f = tmp_path / f"x{scale}.npy"
        np.save(f, x * scale)
        run = tmp_path / f"run{scale}"
        toml = tmp_path / "tiny.toml"
        toml.write_text('net = "mlp"\nbatch_size = 64\n[net_config]\nhidden = 32\ndepth = 1\n')
        assert main(["train", "--data", str(f), "--out", str(run), "--steps", "10", "--T", "30", "--config", str(toml),
                     "--quiet"]) == 0
        js = tmp_path / f"e{scale}.json"
        assert main(["eval", "--checkpoint", str(run), "--metrics", "elbo", "--json", str(js), "--out-dir",
                     str(tmp_path / f"figs{scale}"), "--quiet"]) == 0
        out[scale] = json.loads(js.read_text())["elbo"]
    capsys.readouterr()
    for r in out.values():
        assert r["steps"] == 30 and r["dim"] == 2 and r["n_examples"] == 60
        for k in ("L_T", "L_t_sum", "L_0", "nll_nats", "nll_nats_se", "bits_per_dim"):
            assert math.isfinite(r[k])
        assert (tmp_path / "figs1" / "elbo_terms.png").is_file()
    assert out[10]["nats_per_dim"] - out[1]["nats_per_dim"] == pytest.approx(math.log(10), abs=1e-3)
