"""Score-based models on the VE schedule (NCSN, seed 003 / VE SDE, seed 002), every sampler from the CLI,
and the `ode-nll` metric, judged against the exact Gaussian-mixture density where one exists."""
import math

import numpy as np
import pytest
import torch

import difflab
from difflab import schedules
from difflab.cli import main
from difflab.config import Config
from difflab.data import Dataset
from difflab.evaluate import EvalContext, evaluate
from difflab.mixtures import GaussianMixture
from difflab.samplers import NAMES

VE = schedules.ve(T=1000, sigma_min=0.01, sigma_max=50.0)


def test_ve_schedule_is_geometric_in_sigma_and_its_noising_is_x0_plus_sigma_eps():
    ab = VE.alpha_bars
    sig = ((1 - ab) / ab).sqrt()
    expect = torch.logspace(math.log10(0.01), math.log10(50.0), 1000, dtype=torch.float64)
    np.testing.assert_allclose(sig.numpy(), expect.numpy(), rtol=1e-9)
    # continuous time agrees with the table at t = k / T
    np.testing.assert_allclose(VE.alpha_bar(torch.arange(1, 1001, dtype=torch.float64) / 1000).numpy(),
                               ab.numpy(), rtol=1e-12)
    # the VP sample divided by sqrt(ab) is x0 + sigma eps: Monte Carlo variance s^2 + sigma^2
    g = torch.Generator().manual_seed(0)
    x0 = 0.7 * torch.randn(200_000, generator=g, dtype=torch.float64)
    k = 600
    eps = torch.randn(200_000, generator=g, dtype=torch.float64)
    x_ve = (ab[k].sqrt() * x0 + (1 - ab[k]).sqrt() * eps) / ab[k].sqrt()
    assert float(x_ve.var()) == pytest.approx(0.49 + float(sig[k]) ** 2, rel=0.01)


def test_eps_loss_is_dsm_with_lambda_sigma_squared():
    """sigma^2 || s(x, sigma) + eps / sigma ||^2 with s = -eps_hat / sigma equals || eps_hat - eps ||^2:
    checked numerically for an arbitrary eps_hat (a random linear map of x)."""
    g = torch.Generator().manual_seed(1)
    ab = VE.alpha_bars[::97]
    sig = ((1 - ab) / ab).sqrt()
    x0, eps = torch.randn(len(ab), 3, generator=g, dtype=torch.float64), torch.randn(len(ab), 3, generator=g,
                                                                                      dtype=torch.float64)
    x_ve = x0 + sig[:, None] * eps
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    eps_hat = torch.tanh(x_ve @ w)
    score = -eps_hat / sig[:, None]
    dsm = sig[:, None] ** 2 * (score + eps / sig[:, None]) ** 2
    np.testing.assert_allclose(dsm.numpy(), ((eps_hat - eps) ** 2).numpy(), rtol=1e-10)


def _gm():
    ang = torch.arange(3, dtype=torch.float64) * 2 * math.pi / 3
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), torch.stack([2 * ang.cos(), 2 * ang.sin()], 1),
                           torch.full((3, 2), 0.3))


@pytest.mark.parametrize("name,nfe,opts", [("euler_maruyama", 400, {}), ("pc", 400, {}),
                                           ("annealed_langevin", 1000, {}), ("ode", None, {})])
def test_ve_samplers_on_the_ve_schedule_reproduce_a_mixture(name, nfe, opts):
    """The exact denoiser on the VE schedule (sigma 0.01 .. 50): the VE samplers (the SDE samplers default to
    sde="ve" there) land on the mixture: per-mode frequencies within 4 standard errors, mean log-density
    within 0.1 nat of the truth's (the noise level of the gap is 0.025 here). Annealed Langevin (unadjusted,
    5 steps per level) converges slowly: measured -0.109 nat at 1000 calls, -0.059 at 3000, so 0.15 for it."""
    gm = _gm()
    den = gm.fast_denoiser(VE)
    n = 2000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = difflab.sample(den, noise, name, nfe=nfe, generator=torch.Generator().manual_seed(4), **opts)
    assert bool(torch.isfinite(x).all())
    freq = torch.bincount(gm.component_log_probs(x).argmax(1), minlength=3).double() / n
    se = (gm.weights * (1 - gm.weights) / n).sqrt()
    assert ((freq - gm.weights).abs() / se).max() < 4, freq
    true = gm.sample(n, torch.Generator().manual_seed(5))
    gap = float(gm.log_prob(x).mean() - gm.log_prob(true).mean())
    assert abs(gap) < (0.15 if name == "annealed_langevin" else 0.1), gap


# ---- the command line --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ve_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "ve"
    assert main(["train", "--data", "toy:moons", "--out", str(run), "--steps", "20", "--batch-size", "64",
                 "--schedule", "ve", "--T", "200", "--quiet"]) == 0
    return run


def test_ve_run_trains_and_samples_with_every_sampler_from_the_cli(ve_run, tmp_path):
    from difflab.runs import load_run
    cfg, _, den = load_run(ve_run)
    assert cfg.schedule == "ve" and den.schedule.name == "ve"
    sig_max = math.sqrt((1 - float(den.schedule.alpha_bars[-1])) / float(den.schedule.alpha_bars[-1]))
    assert sig_max == pytest.approx(50.0, rel=1e-9)
    for name in [*NAMES, "auto"]:
        out = tmp_path / f"{name}.npz"
        assert main(["sample", "--checkpoint", str(ve_run), "--n", "40", "--sampler", name, "--nfe", "12",
                     "--out", str(out), "--quiet"]) == 0, name
        x = np.load(out)["samples"]
        assert x.shape == (40, 2) and np.isfinite(x).all(), name


# ---- the ode-nll metric -----------------------------------------------------------------------
def _context_with(gm, ds, cfg):
    """An EvalContext whose 'run' is the exact denoiser of gm in model units (no training involved)."""
    ctx = EvalContext(checkpoint="exact", n=50, batch_size=50, seed=7, progress=False)
    sched = schedules.linear(T=1000)
    if ds.kind == "image":
        shape = ds.shape

        def fn(x, ab):
            return gm.eps(x.reshape(len(x), -1).double(), ab).reshape(len(x), *shape).to(x.dtype)
        den = difflab.Denoiser.from_eps(fn, sched)
    else:
        den = gm.denoiser(sched)
    ctx._cache["run"] = (cfg, None, den)
    ctx._cache["heldout"] = ds
    return ctx


def test_ode_nll_of_vector_data_is_the_true_nll_in_data_units():
    gm = _gm()
    mean, std = torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.5])
    z = gm.sample(50, torch.Generator().manual_seed(0))
    x = (z * std + mean).float()
    cfg = Config(data="toy:x", net="mlp", data_kind="vector", data_shape=[2], data_mean=mean.tolist(),
                 data_std=std.tolist())
    ds = Dataset(x=x, labels=None, kind="vector", levels=None, name="toy:x", num_classes=None)
    res = evaluate(_context_with(gm, ds, cfg), ["ode-nll"])["ode-nll"]
    true = -(gm.log_prob((x.double() - mean.double()) / std.double()) - std.double().log().sum()).mean()
    assert res["trace"] == "exact" and res["n"] == 50
    assert abs(res["nll_nats"] - float(true)) < 0.02 * 2, (res, float(true))
    assert res["nll_nats_per_dim"] == pytest.approx(res["nll_nats"] / 2)


def test_ode_nll_of_discrete_images_is_bits_per_dim_with_uniform_dequantisation():
    """2x2 'images' on 17 levels in [-1, 1]: bits/dim = -(log p(x + w u) + D log w) / (D log 2) with the
    metric's own dequantisation draws (the first draw of its generator), p the exact mixture density."""
    g = torch.Generator().manual_seed(1)
    gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-0.4] * 4, [0.4] * 4]), torch.full((2, 4), 0.3))
    levels, w = 17, 2.0 / 16
    k = torch.round((gm.sample(50, g).clamp(-1, 1) + 1) / w)
    x = (-1 + w * k).reshape(50, 1, 2, 2).float()
    cfg = Config(data="img", net="unet", data_kind="image", data_shape=[1, 2, 2], data_levels=levels)
    ds = Dataset(x=x, labels=None, kind="image", levels=levels, name="img", num_classes=None)
    res = evaluate(_context_with(gm, ds, cfg), ["ode-nll"])["ode-nll"]
    u = torch.rand((50, 1, 2, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64) - 0.5
    y = (-1 + w * k).reshape(50, 4) + w * u.reshape(50, 4)
    expect = -(gm.log_prob(y) + 4 * math.log(w)) / (4 * math.log(2))
    assert res["levels"] == 17
    assert abs(res["bits_per_dim"] - float(expect.mean())) < 0.02 / math.log(2), (res, float(expect.mean()))


def test_ode_nll_from_the_cli_on_a_trained_run(ve_run, tmp_path):
    js = tmp_path / "nll.json"
    assert main(["eval", "--checkpoint", str(ve_run), "--metrics", "ode-nll", "--n", "20", "--json", str(js),
                 "--quiet"]) == 0
    import json
    res = json.loads(js.read_text())["ode-nll"]
    assert res["n"] == 20 and math.isfinite(res["nll_nats"])
