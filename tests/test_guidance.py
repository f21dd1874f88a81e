"""Guidance, ILVR and inpainting, judged by oracles that share none of their code: the exact conditional
denoiser and the exact noisy classifier of a Gaussian mixture (Bayes' rule in closed form), finite
differences, and the ILVR posterior of Gaussian data."""
import math

import numpy as np
import pytest
import torch

from difflab import gaussian as G
from difflab import samplers as S
from difflab import schedules
from difflab.classifier import NoisyClassifier, log_prob_grad
from difflab.denoiser import Denoiser
from difflab.guidance import (
    classifier_free,
    classifier_guided,
    guided_sample,
    ilvr_hook,
    inpaint_hook,
    lowpass,
    reverse,
)
from difflab.mixtures import GaussianMixture

torch.set_num_threads(1)

SCHED = schedules.linear(T=200, beta_start=1e-4, beta_end=0.1)  # ab_T ~ 5e-5: the N(0, I) prior is exact
GM = GaussianMixture(weights=[0.6, 0.3, 0.1], means=[[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]],
                     stds=[[0.5, 0.5], [0.4, 0.6], [0.5, 0.3]])


def conditional_mixture_denoiser(gm: GaussianMixture, schedule) -> Denoiser:
    """Exact E[eps | x_t, y]: component y alone (a one-component mixture) for y >= 0, the whole mixture for -1."""
    parts = [GaussianMixture([1.0], gm.means[k:k + 1], gm.stds[k:k + 1]) for k in range(len(gm.weights))]
    den = Denoiser(None, schedule, "eps")
    den.labels = None

    def fn(x, ab):
        y = den.labels
        out = gm.eps(x.double(), ab)
        for k, part in enumerate(parts):
            rows = y == k
            if rows.any():
                out[rows] = part.eps(x[rows].double(), ab[rows])
        return out.to(x.dtype)
    den.fn = fn
    return den


def exact_classifier(gm: GaussianMixture):
    """log p(y | x_t) up to a constant: log w_y + log N(x_t; component y of q_t) (Bayes' rule)."""
    return lambda x, ab: gm.component_log_probs(x, ab)


def in_component(gm, x, k) -> float:
    """Fraction of samples whose most probable component (at ab = 1) is k."""
    return float((gm.component_log_probs(x.double()).argmax(1) == k).double().mean())


def _noise(n, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------ scale 0 = unguided
@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp_2m", "heun"])
def test_classifier_free_scale_zero_is_the_conditional_sampler(sampler):
    den = conditional_mixture_denoiser(GM, SCHED)
    labels = torch.arange(60) % 3
    den.labels = labels
    ref = S.sample(den, _noise(60), sampler, nfe=20, generator=torch.Generator().manual_seed(1))
    got = S.sample(classifier_free(den, labels, 0.0), _noise(60), sampler, nfe=20,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(ref, got)
    assert den.labels is labels  # the wrapper restores the labels it borrowed


def test_classifier_free_scale_zero_with_a_network():
    from difflab.nets import build
    torch.manual_seed(0)
    net = build("unet", in_channels=1, num_classes=10, image_size=8, base_channels=16, channel_mult=[1, 2],
                num_res_blocks=1, attention_resolutions=[4], groups=4).eval()
    for p in net.parameters():  # the zero-initialised output layer would make every prediction 0
        p.data.add_(0.1 * torch.randn_like(p))
    den = Denoiser.from_network(net, SCHED)
    labels = torch.tensor([0, 3, 7, 9])
    den.labels = labels
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = S.sample(den, noise, "ddim", nfe=5)
    got = S.sample(classifier_free(den, labels, 0.0), noise, "ddim", nfe=5)
    assert torch.allclose(ref, got, atol=1e-5)
    ab = torch.full((4,), 0.5, dtype=torch.float64)
    e0, e3 = den.eps(noise, ab), classifier_free(den, labels, 3.0).eps(noise, ab)
    den.labels = torch.full((4,), -1)
    eu = den.eps(noise, ab)
    assert (e3 - e0).abs().max() > 1e-3  # the scale does something: (1 + w) e(y) - w e(null)
    assert torch.allclose(e3, 4 * e0 - 3 * eu, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_classifier_guidance_scale_zero_and_reverse_match_the_samplers(sampler):
    den = GM.denoiser(SCHED)
    labels = torch.zeros(50, dtype=torch.long)
    ref = S.sample(den, _noise(50), sampler, nfe=25, generator=torch.Generator().manual_seed(2))
    # gamma = 0 through the mean form (ancestral, in `reverse`) or the eps wrapper (ddim, in samplers.sample)
    got = guided_sample(den, _noise(50), sampler, nfe=25, generator=torch.Generator().manual_seed(2),
                        labels=labels, classifier=exact_classifier(GM), classifier_scale=0.0)
    assert torch.allclose(ref, got, atol=1e-12, rtol=0)
    # the hook loop `reverse` with a do-nothing hook is the library's sampler
    got = guided_sample(den, _noise(50), sampler, nfe=25, generator=torch.Generator().manual_seed(2),
                        after_step=lambda x, ab: x)
    assert torch.allclose(ref, got, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------ classifier gradient
def test_classifier_gradient_matches_finite_differences():
    torch.manual_seed(0)
    clf = NoisyClassifier(1, 10, width=8).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    ab = torch.tensor([0.9, 0.5, 0.05], dtype=torch.float64)
    y = torch.tensor([1, 4, 9])
    with torch.inference_mode():  # as inside a sampler
        g = log_prob_grad(clf, x, ab, y)

    def logp(xx):
        with torch.no_grad():
            return torch.log_softmax(clf(xx, ab), 1).gather(1, y[:, None]).squeeze(1)
    h = 1e-6
    fd = torch.zeros_like(x)
    for idx in range(64):
        e = torch.zeros(64, dtype=torch.float64)
        e[idx] = h
        e = e.reshape(1, 1, 8, 8)
        fd.view(3, -1)[:, idx] = (logp(x + e) - logp(x - e)) / (2 * h)
    assert torch.allclose(g, fd, atol=1e-7, rtol=1e-5)
    assert g.abs().max() > 1e-4


def test_classifier_gradient_of_the_exact_mixture_classifier_is_the_score_difference():
    x = _noise(40, seed=3) * 2
    ab = torch.full((40,), 0.4, dtype=torch.float64)
    y = torch.arange(40) % 3
    g = log_prob_grad(exact_classifier(GM), x, ab, y)
    # closed form: grad log p(y | x_t) = grad log N(x_t; sqrt(ab) mu_y, ab s_y^2 + 1 - ab) - grad log q_t(x_t)
    m = math.sqrt(0.4) * GM.means[y]
    v = 0.4 * GM.stds[y] ** 2 + 0.6
    expected = -(x - m) / v - GM.score(x, ab)
    assert torch.allclose(g, expected, atol=1e-10)


# ------------------------------------------------------------------------------ landing in the component
@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_classifier_free_guided_samples_land_in_the_requested_component(scale):
    den = conditional_mixture_denoiser(GM, SCHED)
    labels = torch.arange(600) % 3
    x = guided_sample(den, _noise(600, seed=4), "ddim", nfe=50, labels=labels, guidance=scale)
    for k in range(3):
        assert in_component(GM, x[labels == k], k) >= 0.99


def test_unguided_unconditional_samples_do_not_land_in_one_component():  # the oracle can fail
    x = S.sample(GM.denoiser(SCHED), _noise(600, seed=4), "ddim", nfe=50)
    assert in_component(GM, x, 2) < 0.2


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "dpmpp_2m"])
def test_classifier_guidance_with_the_exact_classifier_samples_the_component(sampler):
    # gamma = 1 with the exact p(y | x_t) is the exact conditional score (seed 003 eq. 148)
    labels = torch.arange(900) % 3
    x = guided_sample(GM.denoiser(SCHED), _noise(900, seed=5), sampler, nfe=100,
                      generator=torch.Generator().manual_seed(5), labels=labels,
                      classifier=exact_classifier(GM), classifier_scale=1.0)
    for k in range(3):
        xk = x[labels == k]
        assert in_component(GM, xk, k) >= 0.98
        # moments of component k: mean within 4 standard errors (+ discretisation), std within 12%
        se = GM.stds[k] / math.sqrt(len(xk))
        assert ((xk.mean(0) - GM.means[k]).abs() <= 4 * se + 0.05).all(), (k, xk.mean(0))
        assert ((xk.std(0) / GM.stds[k] - 1).abs() <= 0.12).all(), (k, xk.std(0))


# ------------------------------------------------------------------------------ ILVR
def test_lowpass_is_block_averaging_and_a_projection():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    p = lowpass(x, 4)
    blocks = x.reshape(2, 3, 2, 4, 2, 4).mean((3, 5))
    assert torch.allclose(p[:, :, ::4, ::4], blocks) and torch.allclose(p[:, :, 3::4, 3::4], blocks)
    assert torch.allclose(lowpass(p, 4), p) and torch.equal(lowpass(x, 1), x)
    assert torch.allclose(lowpass(x, 8), x.mean((2, 3), keepdim=True).expand_as(x))


def test_ilvr_on_gaussian_data_gives_the_exact_conditional():
    # data x_0 ~ N(0, I) on 4x4 images: q_t = N(0, I), E[eps | x_t] = sqrt(1 - ab) x_t. The low- and high-pass
    # parts of x_0 are independent, so p(x_0 | phi_N(x_0) = phi_N(y)) has phi_N(x_0) = phi_N(y) and a
    # high-pass part with per-pixel variance 1 - 1/N^2: ILVR must produce exactly that.
    sched = schedules.linear(T=200, beta_start=1e-4, beta_end=0.06)
    den = Denoiser.from_eps(lambda x, ab: (1 - G.expand(ab, x)).sqrt() * x, sched)
    y = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    n = 2000
    noise = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    x = guided_sample(den, noise, "ancestral", nfe=200, generator=g, after_step=ilvr_hook(y[0], 2, g))
    assert torch.allclose(lowpass(x, 2), lowpass(y, 2).expand_as(x), atol=1e-10)
    high = x - lowpass(x, 2)
    var = high.var(0).mean()
    # 12 free directions x 2000 samples: the variance estimate's s.e. is about 0.75 sqrt(2 / n) / sqrt(12) = 0.007
    assert abs(float(var) - 0.75) < 0.03, float(var)


def test_ilvr_range_leaves_other_steps_alone():
    den = Denoiser.from_eps(lambda x, ab: (1 - G.expand(ab, x)).sqrt() * x, SCHED)
    y = torch.ones(1, 4, 4, dtype=torch.float64)
    noise = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = S.sample(den, noise, "ddim", nfe=10)
    never = guided_sample(den, noise, "ddim", nfe=10, after_step=ilvr_hook(y, 2, None, ab_range=(2.0, 3.0)))
    assert torch.equal(plain, never)


# ------------------------------------------------------------------------------ inpainting
@pytest.mark.parametrize("sampler,resample", [("ancestral", 1), ("ancestral", 3), ("ddim", 2)])
def test_inpainting_keeps_the_known_pixels_exactly(sampler, resample):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    den = Denoiser.from_eps(lambda x, ab: conv(x).detach(), SCHED, clip=(-1, 1))
    ref = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    mask = torch.zeros(1, 8, 8, dtype=torch.float64)
    mask[:, :, :4] = 1
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    opts = {"eta": 0.5} if sampler == "ddim" else {}
    x = guided_sample(den, noise, sampler, nfe=12, generator=g, after_step=inpaint_hook(ref, mask, g),
                      resample=resample, **opts)
    known = mask.bool().expand_as(x)
    assert torch.equal(x[known], ref.expand_as(x)[known])
    assert (x[~known] - ref.expand_as(x)[~known]).abs().max() > 1e-3  # the rest is drawn, not copied


def test_resampling_calls_the_denoiser_rounds_times_per_step():
    den = GM.denoiser(SCHED)
    calls = []
    ref = torch.zeros(2, dtype=torch.float64)
    grid = torch.cat([S.make_grid(SCHED, 10), torch.ones(1, dtype=torch.float64)])
    reverse(den, _noise(4), grid, torch.Generator().manual_seed(0), "ancestral",
            after_step=inpaint_hook(ref, torch.tensor([1.0, 0.0]), None), resample=3,
            progress=lambda: calls.append(1))
    assert len(calls) == 9 * 3 + 1


def test_guided_hook_needs_a_hook_sampler():
    with pytest.raises(ValueError, match="ancestral"):
        guided_sample(GM.denoiser(SCHED), _noise(4), "dpmpp_2m", nfe=5, after_step=lambda x, ab: x)


def test_cfg_label_batches_are_independent():
    # classifier-free guidance on a batch equals guidance on each example alone (no mixing across the 2N batch)
    den = conditional_mixture_denoiser(GM, SCHED)
    labels = torch.tensor([0, 1, 2, 2])
    x = _noise(4, seed=9)
    full = classifier_free(den, labels, 1.5).eps(x, torch.full((4,), 0.3, dtype=torch.float64))
    for i in range(4):
        one = classifier_free(den, labels[i:i + 1], 1.5).eps(x[i:i + 1], torch.full((1,), 0.3, dtype=torch.float64))
        assert torch.allclose(full[i:i + 1], one)
    # and the closed form (1 + w) eps(x | y) - w eps(x)
    den.labels = labels
    c = den.eps(x, torch.full((4,), 0.3, dtype=torch.float64))
    u = GM.eps(x, torch.full((4,), 0.3, dtype=torch.float64))
    assert torch.allclose(full, 2.5 * c - 1.5 * u)
    np.testing.assert_array_equal(labels.numpy(), [0, 1, 2, 2])


def test_classifier_guided_wrapper_predicts_eps_from_x0_networks():
    # a network that predicts x0: the wrapper converts to eps before shifting it
    den0 = GM.denoiser(SCHED)
    x0_den = Denoiser(lambda x, ab: den0.x0(x, ab), SCHED, "x0")
    x = _noise(10, seed=6)
    ab = torch.full((10,), 0.5, dtype=torch.float64)
    wrapped = classifier_guided(x0_den, exact_classifier(GM), torch.zeros(10, dtype=torch.long), 0.0)
    assert torch.allclose(wrapped.eps(x, ab), den0.eps(x, ab), atol=1e-10)


def test_guidance_figures_are_written(tmp_path):
    from PIL import Image

    from difflab.guidance_plots import guidance_grid, ilvr_figure, inpaint_figure
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(10, 3, 2, 1, 8, 8, generator=g)
    p = guidance_grid(imgs, [0, 1, 3], tmp_path / "grid.png")
    ref = torch.rand(1, 8, 8, generator=g)
    q = ilvr_figure(ref, {2: torch.rand(4, 1, 8, 8, generator=g), 4: torch.rand(3, 1, 8, 8, generator=g)},
                    tmp_path / "ilvr.png")
    mask = torch.zeros(1, 8, 8)
    mask[..., :4] = 1
    r = inpaint_figure(ref, mask, torch.rand(5, 1, 8, 8, generator=g), tmp_path / "inpaint.png")
    for path in (p, q, r):
        w, h = Image.open(path).size
        assert w > 100 and h > 50


def test_box_lowpass_projection_is_the_nearest_feasible_point():
    from difflab.guidance import box_lowpass_projection
    g = torch.Generator().manual_seed(0)
    x = 2.5 * torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    p = box_lowpass_projection(x, y, 2)
    assert p.min() >= -1 and p.max() <= 1
    assert torch.allclose(lowpass(p, 2), lowpass(y, 2).expand_as(p), atol=1e-12)
    # nearest: no feasible point (random feasible moves within a block) is closer to x
    for _ in range(200):
        d = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) * 0.1
        q = (p + d - lowpass(d, 2))
        ok = (q >= -1).all(dim=(1, 2, 3)) & (q <= 1).all(dim=(1, 2, 3))
        dist_p, dist_q = (p - x).flatten(1).norm(dim=1), (q - x).flatten(1).norm(dim=1)
        assert (dist_q[ok] >= dist_p[ok] - 1e-9).all()
