"""VAE / HVAE (difflab.vae): the discretised decoder against scipy, and the bounds against the exact marginal
likelihood of tiny models computed by quadrature over their latents."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from difflab import vae


def test_discretized_gaussian_matches_an_exact_oracle_and_sums_to_one():
    """Against Phi differences in 50-digit arithmetic (mpmath), far tails included; and scipy where it is exact."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    K = 17
    grid = torch.linspace(-1, 1, K, dtype=torch.float64)
    d = mpmath.mpf(1) / (K - 1)
    for mean, log_scale in [(0.0, -1.0), (0.93, -6.5), (-3.0, 0.5), (0.2, -4.0), (5.0, -6.9), (-0.47, -2.0)]:
        lp = vae.discretized_gaussian_log_prob(grid, torch.tensor(mean, dtype=torch.float64),
                                               torch.tensor(log_scale, dtype=torch.float64), K)
        s = mpmath.exp(log_scale)
        ref = []
        for k in range(K):
            c = mpmath.mpf(-1) + 2 * mpmath.mpf(k) / (K - 1)
            hi = 1 if k == K - 1 else mpmath.ncdf((c + d - mean) / s)
            lo = 0 if k == 0 else mpmath.ncdf((c - d - mean) / s)
            ref.append(float(mpmath.log(hi - lo)) if hi > lo else -math.inf)
        ref = np.array(ref)
        finite = np.isfinite(ref) & (ref > -700)
        np.testing.assert_allclose(lp.numpy()[finite], ref[finite], rtol=1e-9, atol=1e-9)
        assert abs(lp.exp().sum().item() - 1) < 1e-12
        with np.errstate(divide="ignore"):
            sp = np.log(stats.norm.cdf(np.append(grid.numpy()[:-1] + 1 / 16, np.inf), mean, math.exp(log_scale))
                        - stats.norm.cdf(np.insert(grid.numpy()[1:] - 1 / 16, 0, -np.inf), mean, math.exp(log_scale)))
        ok = np.exp(sp) > 1e-6   # where scipy's difference of CDFs is itself accurate
        np.testing.assert_allclose(lp.numpy()[ok], sp[ok], rtol=1e-8)


def test_gaussian_log_prob_matches_scipy():
    g = torch.Generator().manual_seed(0)
    z, m, ls = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    ref = stats.norm.logpdf(z.numpy(), m.numpy(), np.exp(ls.numpy())).sum(1)
    np.testing.assert_allclose(vae.gaussian_log_prob(z, m, ls).numpy(), ref, rtol=1e-12)


def _log_px_vae(model, x, z_grid):
    """log p(x) = log ∫ N(z; 0, 1) p(x | z) dz by the trapezoid rule on a fine grid (latent dim 1)."""
    with torch.no_grad():
        mean, log_scale = model.decoder(z_grid[:, None])
        lpx = vae.discretized_gaussian_log_prob(x[None, :], mean.double(), log_scale.double(), model.levels).sum(1)
        lpz = -0.5 * z_grid ** 2 - 0.5 * math.log(2 * math.pi)
        f = torch.exp(lpx + lpz)
        return math.log(torch.trapezoid(f, z_grid).item())


def _log_px_hvae(model, x, grid):
    """log p(x) = log ∫∫ N(z2; 0, 1) p(z1 | z2) p(x | z1) dz1 dz2 on a grid (latent dims 1 and 1)."""
    with torch.no_grad():
        m1, ls1 = model.p_z1(grid[:, None])                                         # rows: z2
        lp1 = -0.5 * ((grid[None, :] - m1.double()) / ls1.double().exp()) ** 2 - ls1.double() \
            - 0.5 * math.log(2 * math.pi)                                           # (z2, z1)
        mean, log_scale = model.p_x(grid[:, None])
        lpx = vae.discretized_gaussian_log_prob(x[None, :], mean.double(), log_scale.double(), model.levels).sum(1)
        lp2 = -0.5 * grid ** 2 - 0.5 * math.log(2 * math.pi)
        f = torch.exp(lp2[:, None] + lp1 + lpx[None, :])
        return math.log(torch.trapezoid(torch.trapezoid(f, grid, dim=1), grid).item())


@pytest.mark.parametrize("kind", ["vae", "hvae"])
def test_bounds_are_above_the_exact_nll_and_tighten_with_importance_samples(kind):
    torch.manual_seed(0)
    levels, dim = 5, 2
    model = (vae.VAE(dim, levels, hidden=16, latent=1) if kind == "vae"
             else vae.HVAE(dim, levels, hidden=16, latent=1, latent2=1)).double()
    x = torch.tensor([-0.5, 1.0], dtype=torch.float64)
    grid = torch.linspace(-9, 9, 4001 if kind == "vae" else 1201, dtype=torch.float64)
    nll = -(_log_px_vae(model, x, grid) if kind == "vae" else _log_px_hvae(model, x, grid))
    g = torch.Generator().manual_seed(1)
    n = 4000
    with torch.no_grad():
        elbo1 = vae.nelbo(model, x.expand(n, dim), g, k=1)
        iw = vae.nelbo(model, x.expand(200, dim), g, k=500)
    se1 = elbo1.std().item() / math.sqrt(n)
    assert elbo1.mean().item() - 4 * se1 >= nll, (elbo1.mean().item(), se1, nll)     # -ELBO >= -log p(x)
    assert iw.mean().item() <= elbo1.mean().item()                                   # IWAE is tighter
    assert abs(iw.mean().item() - nll) < 0.05 + 0.2 * (elbo1.mean().item() - nll)     # and approaches -log p(x)


@pytest.mark.parametrize("kind", ["vae", "hvae"])
def test_training_lowers_the_bound_on_digits(kind):
    from difflab import data
    torch.manual_seed(0)
    ds = data.load("digits", n=256)
    model = vae.VAE(64, 17, hidden=32, latent=8) if kind == "vae" else vae.HVAE(64, 17, hidden=32, latent=8,
                                                                                 latent2=4)
    obj = vae.VAEObjective()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = vae.nelbo(model, ds.x, g).mean().item()
    for i in range(80):
        loss = obj(model, ds.x[(i * 64) % 256:(i * 64) % 256 + 64], None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = vae.nelbo(model, ds.x, g).mean().item()
        samples = model.sample(8, g)
    assert after < 0.8 * before, (before, after)
    assert samples.shape == (8, 64) and torch.isfinite(samples).all()
