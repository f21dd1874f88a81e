"""Outside models that know only a 0-based timestep (diffusers' UNets): Schedule.timestep and
Denoiser.from_diffusers, against a table built here with numpy and the exact Gaussian-mixture denoiser."""
import math

import numpy as np
import pytest
import torch

import difflab
from difflab import schedules
from difflab.mixtures import GaussianMixture

T = 1000
# diffusers' DDPMScheduler(beta_schedule="linear"): betas = linspace(1e-4, 0.02, T), alphas_cumprod[t] for t = 0..T-1
ALPHAS_CUMPROD = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


def ab_of_timestep(t: torch.Tensor) -> torch.Tensor:
    """What a model trained with 0-based steps reads from its timestep: alphas_cumprod at t, log-linear between."""
    return torch.from_numpy(np.exp(np.interp(t.double().numpy(), np.arange(T), np.log(ALPHAS_CUMPROD))))


def test_timestep_inverts_the_0_based_table():
    sched = schedules.linear(T)
    t = torch.arange(T, dtype=torch.float64)
    assert torch.allclose(sched.timestep(torch.from_numpy(ALPHAS_CUMPROD)), t, atol=1e-9)
    mid = torch.from_numpy(np.sqrt(ALPHAS_CUMPROD[:-1] * ALPHAS_CUMPROD[1:]))  # halfway in log alpha_bar
    assert torch.allclose(sched.timestep(mid), t[:-1] + 0.5, atol=1e-9)
    assert sched.timestep(torch.tensor([1.0, 1e-12])).tolist() == [0.0, T - 1.0]  # clamped to the table


class TimestepOnlyModel:
    """A 'UNet' that sees x_t and a timestep only: the exact mixture eps at alphas_cumprod[t + shift]."""

    def __init__(self, gm, shift=0):
        self.gm, self.shift, self.seen = gm, shift, []

    def __call__(self, x, timestep):
        self.seen.append(timestep.clone())
        return self.gm.eps(x.double(), ab_of_timestep(timestep + self.shift)).to(x.dtype)


@pytest.mark.parametrize("sampler", ["unipc", "split_multistep", "ddim", "ancestral"])
def test_from_diffusers_drives_the_samplers_like_the_exact_denoiser(sampler):
    """Ten calls on the tuned or uniform grid, from the same noise: a timestep-only model wrapped by
    from_diffusers gives the samples of the exact denoiser (max difference measured 2e-14 .. 9e-8); the same
    model read one step off (the 1-based mistake) lands elsewhere (measured 5e-3 .. 0.17, mean log-density
    -0.04 .. -0.44 nat)."""
    ang = torch.arange(4, dtype=torch.float64) * math.pi / 2
    gm = GaussianMixture(torch.ones(4), torch.stack([2 * ang.cos(), 2 * ang.sin()], 1), torch.full((4, 2), 0.05))
    sched = schedules.linear(T)
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda den: difflab.sample(den, noise, sampler, nfe=10, generator=torch.Generator().manual_seed(1))  # noqa: E731
    exact = run(gm.denoiser(sched))
    model = TimestepOnlyModel(gm)
    ours = run(difflab.Denoiser.from_diffusers(model, sched))
    off = run(difflab.Denoiser.from_diffusers(TimestepOnlyModel(gm, shift=1), sched))
    assert len(model.seen) == 10 and all(bool(((t >= 0) & (t <= T - 1)).all()) for t in model.seen)
    assert float((ours - exact).abs().max()) < 1e-6
    assert float((off - exact).abs().max()) > 1e-3


def test_from_diffusers_names_its_prediction_types():
    sched = schedules.linear(T)
    assert difflab.Denoiser.from_diffusers(lambda x, t: x, sched, "v_prediction").parameterization == "v"
    assert difflab.Denoiser.from_diffusers(lambda x, t: x, sched, "sample").parameterization == "x0"
    with pytest.raises(ValueError, match="prediction_type"):
        difflab.Denoiser.from_diffusers(lambda x, t: x, sched, "eps")


def test_a_diffusers_unet_samples_through_difflab():
    """Where diffusers is installed (it is not a dependency): a small random UNet2DModel, wrapped, sampled by
    UniPC in 5 calls; its output object's .sample is what the denoiser reads."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    sched = schedules.from_betas(diffusers.DDPMScheduler(num_train_timesteps=T).betas)
    den = difflab.Denoiser.from_diffusers(unet, sched)
    x = difflab.sample(den, torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), "unipc", nfe=5)
    assert x.shape == (3, 1, 8, 8) and bool(torch.isfinite(x).all()) and den.nfe == 5
