"""VDM's learned schedule and continuous-time bound; PriorGrad's data-dependent prior. Oracles: closed forms
for Gaussian data (quadrature with scipy), Monte Carlo moments."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from difflab import schedules
from difflab.cli import main
from difflab.config import load_config
from difflab.mixtures import GaussianMixture
from difflab.priorgrad import PriorGradLoss, priorgrad_denoiser, to_model_space
from difflab.runs import load_run, to_data_units
from difflab.samplers import sample
from difflab.train import train
from difflab.vdm import MonotoneGamma, VDMLoss, initial_gamma_0, learned_schedule

torch.set_num_threads(1)


def _exact_net(eps_fn):
    """net(x, c) from an exact eps(x, alpha_bar); c = 25 (20 - log SNR) is inverted back to alpha_bar."""
    def net(x, c):
        return eps_fn(x.double(), torch.sigmoid(20 - c.double() / 25)).to(x.dtype)
    return net


def test_gamma_is_monotone_with_its_endpoints():
    torch.manual_seed(0)
    gam = MonotoneGamma(-10.0, 4.0, hidden=16)
    with torch.no_grad():
        gam.w2.mul_(5)
        gam.b2.normal_()
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    g = gam(t).detach()
    assert float(g[0]) == pytest.approx(-10.0) and float(g[-1]) == pytest.approx(4.0)
    assert bool((g[1:] > g[:-1]).all())
    sched = learned_schedule(gam, 50)
    torch.testing.assert_close(sched.alpha_bars, torch.sigmoid(-gam(torch.arange(1, 51) / 50)).detach())


@pytest.mark.parametrize("levels", [17, 256])
def test_initial_gamma_0_resolves_the_data_levels(levels):
    """At the starting gamma_0, z_0 / alpha_0 rounds to its own level with probability 1 - P(|Z| > 4) per
    interior value (scipy), and the discretised decoder's -log p is of that order; 4 units of log-SNR less
    (noise 7.4x wider) already costs > 0.1 nat/dim. 256 levels land next to VDM's -13.3 for CIFAR-10."""
    from scipy import stats

    from difflab.vlb import decoder_nll
    g0 = initial_gamma_0(levels)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(1, levels - 1, (4000, 16), generator=g).double() / (levels - 1)) * 2 - 1  # interior
    ab0 = 1 / (1 + math.exp(g0))
    z0 = math.sqrt(ab0) * x0 + math.sqrt(1 - ab0) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    rounded = torch.round((z0 / math.sqrt(ab0) + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    miss = float((rounded != x0).double().mean())
    p_miss = 2 * stats.norm.sf(4.0)
    assert abs(miss - p_miss) < 5 * math.sqrt(p_miss / x0.numel()) + 1e-5
    nll = decoder_nll(x0, z0 / math.sqrt(ab0), g0, levels) / 16
    # oracle: the decoder N(z_0 / alpha_0, sigma_0^2 / alpha_0^2) with z_0 / alpha_0 = x0 + e sigma_0 / alpha_0
    # gives the bin of half-width 4 sigma_0 / alpha_0 the mass Phi(4 - e) - Phi(-4 - e), e ~ N(0, 1)
    exact = integrate.quad(lambda e: -math.log(stats.norm.cdf(4 - e) - stats.norm.cdf(-4 - e))
                           * stats.norm.pdf(e), -12, 12)[0]
    assert abs(float(nll.mean()) - exact) < 4 * float(nll.std()) / math.sqrt(len(nll)) and exact < 0.01
    wide = float(decoder_nll(x0, x0 + math.exp((g0 + 4) / 2) * torch.randn(x0.shape, generator=g,
                                                                             dtype=torch.float64),
                             g0 + 4, levels).mean()) / 16
    assert wide > 0.1
    if levels == 256:
        assert abs(g0 - (-13.3)) < 1.0
    assert initial_gamma_0(None) == -13.3


def test_continuous_elbo_of_exact_gaussian_denoiser():
    """Data N(m, s^2) in 1-D: E[||eps - eps_hat||^2] at alpha_bar is a s^2 / (a s^2 + 1 - a), so
    L_diffusion = 1/2 int mmse dgamma (quadrature); prior and Gaussian decoder in closed form; and -ELBO is
    within a hair of the true NLL."""
    m, s = 0.7, 1.3
    gm = GaussianMixture([1.0], [[m]], [[s]])
    obj = VDMLoss(None, gamma_0=-8.0, gamma_1=6.0, hidden=8)
    obj.eval()
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(20000, generator=g)
    with torch.no_grad():
        lp, lr, ld = obj.terms(_exact_net(gm.eps), x0, None, g)
    total = (lp + lr + ld).numpy()

    def mmse(gamma):
        a = 1 / (1 + math.exp(gamma))
        return a * s * s / (a * s * s + 1 - a)
    want_diff = 0.5 * integrate.quad(mmse, -8.0, 6.0)[0]
    a1 = 1 / (1 + math.exp(6.0))
    want_prior = 0.5 * (-1 - math.log(1 - a1) + (1 - a1) + a1 * (m * m + s * s))
    want_recon = 0.5 * math.log(2 * math.pi * math.exp(-8.0)) + 0.5
    d = ld.numpy()
    assert abs(d.mean() - want_diff) < 4 * d.std() / math.sqrt(len(d))
    assert float(lp.mean()) == pytest.approx(want_prior, rel=0.03)
    assert float(lr.mean()) == pytest.approx(want_recon, abs=0.03)
    nll = float(-gm.log_prob(x0).mean())
    se = total.std() / math.sqrt(len(total))
    assert total.mean() > nll - 2 * se and total.mean() < nll + 0.02


def test_vdm_trains_its_schedule_and_samples(tmp_path, capsys):
    cfg = load_config("toy", overrides=dict(data="toy:gmm", steps=15, batch_size=64, T=50, model="vdm",
                                            checkpoint_every=100, net_config={"hidden": 32, "depth": 1}))
    train(cfg, tmp_path / "run", progress=False)
    _, net, den = load_run(tmp_path / "run")
    assert den.schedule.name == "vdm" and den.schedule.T == 50
    g0 = den.vdm.gamma.gamma_0.item()
    assert g0 != torch.tensor(-13.3).item() and den.vdm.gamma.gamma_1.item() != 5.0   # endpoints were trained
    x = sample(den, torch.randn(30, 2, generator=torch.Generator().manual_seed(0)), "ancestral", nfe=50,
               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    js = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--metrics", "elbo", "--json", str(js), "--quiet"]) == 0
    r = json.loads(js.read_text())["elbo"]
    capsys.readouterr()
    assert r["steps"] == "continuous" and math.isfinite(r["nats_per_dim"]) and r["nats_per_dim_se"] > 0


def test_priorgrad_forward_process_and_loss_norm():
    """With the exact PriorGrad network of Gaussian data the loss equals the whitened eps-MMSE averaged over t:
    a wrong forward process (noise not ~ N(0, Sigma), not toward mu) or norm would not."""
    sched = schedules.linear(T=100, beta_start=1e-3, beta_end=0.1)
    mu, sd = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    m, s = torch.tensor([1.5, -1.0], dtype=torch.float64), torch.tensor([0.4, 2.0], dtype=torch.float64)
    cfg = load_config("toy", overrides=dict(data="toy:gmm"))
    cfg.data_shape, cfg.prior_mean, cfg.prior_std = [2], mu.tolist(), sd.tolist()
    loss = PriorGradLoss(sched, cfg)
    gm_y = GaussianMixture([1.0], [((m - mu.double()) / sd.double()).tolist()], [(s / sd.double()).tolist()])

    def eps_x(x, ab):   # network output ~ std * eps_y at x_t = mu + std y_t
        return sd.double() * gm_y.eps((x - mu.double()) / sd.double(), ab)
    x0 = (m + s * torch.randn(40000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).float()
    with torch.no_grad():
        got = float(loss(_exact_net(eps_x), x0, None, torch.Generator().manual_seed(1)))
    v = (s / sd.double()) ** 2
    ab = sched.alpha_bars[:, None]
    want = float((ab * v / (ab * v + 1 - ab)).mean())
    assert got == pytest.approx(want, rel=0.03)
    zero = float(loss(lambda x, c: torch.zeros_like(x), x0, None, torch.Generator().manual_seed(1)))
    assert zero == pytest.approx(1.0, rel=0.02)       # || eps ||^2 in the Sigma^-1 norm: whitened noise


def test_priorgrad_samples_start_from_its_prior_and_match_the_data(tmp_path):
    cfg = load_config("toy", overrides=dict(data="toy:gmm", steps=5, batch_size=64, T=40, model="priorgrad",
                                            checkpoint_every=100, net_config={"hidden": 16, "depth": 1}))
    train(cfg, tmp_path / "run", progress=False)
    cfg2, net, den = load_run(tmp_path / "run")
    assert cfg2.prior_mean is not None and len(cfg2.prior_std) == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prior_std"] == cfg2.prior_std
    # the whitened view: y = (x - mu) / std; x_T ~ N(mu, Sigma) maps to N(0, I)
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    x_prior = to_model_space(noise, cfg2)
    np.testing.assert_allclose(x_prior.mean(0).numpy(), cfg2.prior_mean, atol=0.1)
    np.testing.assert_allclose(x_prior.std(0).numpy(), cfg2.prior_std, rtol=0.05)
    # the exact denoiser of whitened Gaussian data samples that data (in data units) through to_data_units
    mu, sd = (torch.tensor(v, dtype=torch.float64) for v in (cfg2.prior_mean, cfg2.prior_std))
    m, s = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.5, 0.8], dtype=torch.float64)
    gm_y = GaussianMixture([1.0], [((m - mu) / sd).tolist()], [(s / sd).tolist()])
    net_x = _exact_net(lambda x, ab: sd * gm_y.eps((x - mu) / sd, ab))
    from difflab.denoiser import Denoiser
    view = priorgrad_denoiser(cfg2, net_x, Denoiser.from_network(net_x, schedules.cosine(400)))
    y = sample(view, noise.double(), "ancestral", nfe=400, generator=torch.Generator().manual_seed(1))
    x = to_model_space(y, cfg2)
    np.testing.assert_allclose(x.mean(0).numpy(), m.numpy(), atol=0.05)
    np.testing.assert_allclose(x.std(0).numpy(), s.numpy(), rtol=0.08)
    assert torch.isfinite(to_data_units(y.float(), cfg2)).all()
