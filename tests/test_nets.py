"""Tests for difflab.nets: shapes, embeddings, conditioning, gradients, rebuild, a tiny overfit."""
import json
import math

import numpy as np
import pytest
import torch

from difflab.nets import MLP, UNet, build, param_count, timestep_embedding
from difflab.nets.embeddings import LabelEmbedding, TimeEmbedding

TINY = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.0,
            groups=8)


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are tiny: extra threads only add overhead (and stall badly on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def perturb(net: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Add small noise to every parameter, so zero-initialised layers pass signal and gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def unet(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**TINY, **kw})


# ---- embeddings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [8, 33, 64])
def test_timestep_embedding_matches_numpy(dim):
    c = np.array([0.0, 1.0, 17.5, 500.0, 1000.0])
    half = dim // 2
    freqs = 10000.0 ** (-np.arange(half) / half)
    want = np.concatenate([np.sin(c[:, None] * freqs), np.cos(c[:, None] * freqs)], axis=1)
    if dim % 2:
        want = np.pad(want, ((0, 0), (0, 1)))
    got = timestep_embedding(torch.tensor(c, dtype=torch.float32), dim)
    assert got.shape == (5, dim) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=2e-4)


def test_time_and_label_embedding_shapes():
    assert TimeEmbedding(16)(torch.rand(3) * 1000).shape == (3, 64)
    emb = LabelEmbedding(10, 12)
    assert emb.embedding.num_embeddings == 11
    y = torch.tensor([0, 9, -1, 10])
    out = emb(y)
    assert out.shape == (4, 12)
    torch.testing.assert_close(out[2], emb.embedding.weight[10])     # -1 -> null row
    torch.testing.assert_close(out[2], out[3])
    torch.testing.assert_close(emb(None, 2), emb.embedding.weight[[10, 10]])
    with pytest.raises(ValueError, match="labels"):
        emb(torch.tensor([11]))


# ---- U-Net shapes and errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, shape, out_ch", [
    (dict(in_channels=1), (2, 1, 8, 8), 1),
    (dict(in_channels=3), (2, 3, 8, 8), 3),
    (dict(in_channels=3, out_channels=6), (2, 3, 8, 8), 6),          # learned variance: 2 * in
    (dict(channel_mult=(1, 2, 2), attention_resolutions=(7,), image_size=28), (2, 1, 28, 28), 1),  # 28/4 = 7
    (dict(in_channels=1, channel_mult=(1,), num_heads=2), (2, 1, 5, 6), 1),
    (dict(in_channels=2, num_classes=10), (3, 2, 16, 12), 2),
])
def test_unet_output_shapes(kw, shape, out_ch):
    net = unet(**kw)
    x = torch.randn(*shape)
    out = net(x, torch.rand(shape[0]) * 1000)
    assert out.shape == (shape[0], out_ch, *shape[2:])
    assert out.is_contiguous()
    assert torch.all(out == 0)                 # zero-initialised output conv


def test_unet_attention_placement():
    assert unet().attention_levels == [1]                                   # 8x8: attention at 4x4
    net = unet(channel_mult=(1, 2, 2), attention_resolutions=(14,), image_size=28)
    assert net.attention_levels == [1]
    assert unet(attention_resolutions=()).attention_levels == []


def test_unet_bad_sizes_raise():
    net = unet(channel_mult=(1, 2, 2, 2))                                   # needs H, W divisible by 8
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 1, 28, 28), torch.zeros(1))
    with pytest.raises(ValueError, match="divisible"):
        unet(channel_mult=(1, 2, 2, 2), image_size=28)
    with pytest.raises(ValueError, match="shape"):
        unet()(torch.randn(1, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="num_heads"):
        unet(num_heads=3)


def test_unet_groups_reduced_to_divisor():
    net = UNet(base_channels=24, channel_mult=(1,), num_res_blocks=1, groups=32)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
    assert net(torch.randn(1, 1, 4, 4), torch.zeros(1)).shape == (1, 1, 4, 4)


# ---- conditioning -------------------------------------------------------------------------------------
def test_unet_depends_on_c():
    net = perturb(unet()).eval()
    x = torch.randn(2, 1, 8, 8)
    a = net(x, torch.tensor([10.0, 10.0]))
    b = net(x, torch.tensor([900.0, 900.0]))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(net(x, torch.tensor(10.0)), a)              # scalar c broadcasts


def test_unet_depends_on_label_and_null_label():
    net = perturb(unet(num_classes=10)).eval()
    x = torch.randn(3, 1, 8, 8)
    c = torch.full((3,), 300.0)
    a = net(x, c, torch.tensor([1, 1, 1]))
    b = net(x, c, torch.tensor([7, 7, 7]))
    null = net(x, c, torch.tensor([-1, -1, -1]))
    assert (a - b).abs().max() > 1e-3
    assert (a - null).abs().max() > 1e-3
    torch.testing.assert_close(net(x, c), null)                            # y=None -> null label
    torch.testing.assert_close(net(x, c, torch.tensor([10, 10, 10])), null)
    mixed = net(x, c, torch.tensor([1, -1, 7]))
    torch.testing.assert_close(mixed, torch.stack([a[0], null[1], b[2]]))


def test_channels_last_matches_contiguous():
    net = perturb(unet(num_classes=3)).eval()
    x, c, y = torch.randn(4, 1, 8, 8), torch.rand(4) * 1000, torch.tensor([0, 1, 2, -1])
    net.channels_last = True
    a = net(x, c, y)
    net.channels_last = False
    b = net(x, c, y)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---- gradients, rebuild, determinism --------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: unet(num_classes=4),
    lambda: unet(in_channels=3, out_channels=6, channel_mult=(1, 2, 2), attention_resolutions=(8, 2),
                 image_size=8, num_heads=2),
    lambda: (torch.manual_seed(0), MLP(5, hidden=32, depth=3, num_classes=4))[1],
    lambda: (torch.manual_seed(0), MLP(5, hidden=32, depth=3, num_classes=4, out_dim=10, skip=True))[1],
])
def test_gradients_reach_all_parameters(make):
    net = perturb(make())
    if isinstance(net, UNet):
        x = torch.randn(4, net.in_channels, 8, 8)
    else:
        x = torch.randn(4, net.dim)
    y = torch.tensor([0, 1, 3, -1])
    net(x, torch.rand(4) * 1000, y).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_null_row_gets_gradient_only_from_null_labels():
    net = perturb(unet(num_classes=4))
    net(torch.randn(2, 1, 8, 8), torch.rand(2) * 1000, torch.tensor([0, 1])).sum().backward()
    g = net.label_embed.embedding.weight.grad
    assert g[4].abs().sum() == 0 and g[0].abs().sum() > 0


@pytest.mark.parametrize("name, make", [
    ("unet", lambda: UNet(in_channels=3, base_channels=16, channel_mult=[1, 2, 2], num_classes=10,
                          image_size=16, groups=8)),
    ("mlp", lambda: MLP(2, hidden=64, depth=2, num_classes=3, out_dim=4)),
    ("mlp", lambda: MLP(2, hidden=64, depth=2, out_dim=4, skip=True)),
])
def test_rebuild_from_config(name, make):
    net = make()
    cfg = json.loads(json.dumps(net.config))                               # configs survive JSON
    for again in (type(net)(**net.config), build(name, **cfg)):
        assert type(again) is type(net)
        assert param_count(again) == param_count(net)
        again.load_state_dict(net.state_dict())                            # strict: same layout
        assert again.config == net.config


def test_build_and_param_count():
    net = build("UNet", **TINY)
    assert isinstance(net, UNet)
    assert param_count(net) == sum(p.numel() for p in net.parameters()) > 0
    assert param_count(torch.nn.Linear(3, 2)) == 8
    with pytest.raises(ValueError, match="unknown network"):
        build("resnet")


def test_same_seed_same_init():
    def state(make):
        torch.manual_seed(123)
        return make().state_dict()
    for make in (lambda: UNet(**TINY), lambda: MLP(3)):
        a, b = state(make), state(make)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(124)
    c = UNet(**TINY).state_dict()
    assert not torch.equal(c["input_conv.weight"], state(lambda: UNet(**TINY))["input_conv.weight"])


# ---- MLP ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, out_dim", [
    (dict(dim=2), 2), (dict(dim=5, out_dim=10), 10), (dict(dim=3, num_classes=4, norm=False), 3),
    (dict(dim=64, hidden=32, depth=1, dropout=0.1), 64),
])
def test_mlp_shapes(kw, out_dim):
    torch.manual_seed(0)
    net = MLP(**kw)
    out = net(torch.randn(7, kw["dim"]), torch.rand(7) * 1000)
    assert out.shape == (7, out_dim)
    assert 0 < out.abs().max() < 1.0                                       # small, not zero, at init


def test_mlp_conditioning():
    torch.manual_seed(0)
    net = MLP(2, hidden=32, depth=2, num_classes=3).eval()
    x = torch.randn(4, 2)
    c = torch.full((4,), 100.0)
    assert (net(x, c) - net(x, c + 500)).abs().max() > 1e-5
    assert (net(x, c, torch.zeros(4, dtype=torch.long)) - net(x, c, torch.full((4,), 2))).abs().max() > 1e-5
    torch.testing.assert_close(net(x, c), net(x, c, torch.full((4,), -1)))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(4, 3), c)


def test_mlp_skip_starts_as_the_plain_net_and_old_configs_rebuild_without_it():
    torch.manual_seed(0)
    plain = MLP(3, hidden=32, depth=2, out_dim=6)
    torch.manual_seed(0)
    skip = MLP(3, hidden=32, depth=2, out_dim=6, skip=True)
    x, c = torch.randn(5, 3), torch.rand(5) * 1000
    torch.testing.assert_close(skip(x, c), plain(x, c), rtol=0, atol=0)  # the gain starts at zero
    assert "skip" not in plain.config and skip.config["skip"] is True
    MLP(**plain.config).load_state_dict(plain.state_dict())              # strict: a run saved before skip
    with torch.no_grad():
        skip.skip_gain.bias.fill_(2.0)
    out = skip(x, c)
    torch.testing.assert_close(out[:, :3], plain(x, c)[:, :3] + 2.0 * x)  # gain x on the first dim outputs
    torch.testing.assert_close(out[:, 3:], plain(x, c)[:, 3:])            # the variance outputs untouched
    with pytest.raises(ValueError, match="out_dim"):
        MLP(4, out_dim=2, skip=True)


def _exact_eps(z, ab, m):
    """(T, N, 2): the exact eps at x_t = z of N(m, 0.25 I) data at each alpha_bar of ab (T,) (seed 004)."""
    ab = ab[:, None, None]
    return (1 - ab).sqrt() * (z.double() - ab.sqrt() * m.double()) / (0.25 * ab + 1 - ab)


def _train_eps_net(skip: bool, steps: int = 400, emb_scale: float = 1.0):
    """An eps-MLP trained on N(m, 0.25 I) in 2-D under the linear schedule (T = 1000)."""
    from difflab import schedules
    from difflab.denoiser import noise_level_input
    torch.manual_seed(0)
    net = MLP(2, hidden=64, depth=2, skip=skip, emb_scale=emb_scale)
    ab_all = schedules.linear(T=1000).alpha_bars.float()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    m = torch.tensor([1.0, -0.5])
    for _ in range(steps):
        x0 = 0.5 * torch.randn(256, 2, generator=g) + m
        ab = ab_all[torch.randint(0, 1000, (256,), generator=g)][:, None]
        eps = torch.randn(256, 2, generator=g)
        loss = (net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, noise_level_input(ab[:, 0])) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, ab_all, m


def test_mlp_skip_extrapolates_eps_beyond_the_training_range():
    """At high noise the exact eps of N(m, s^2 I) data is linear in x_t:
        eps_hat = sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab).
    Inputs 4 and 6 away from the centre are rare in training (a 2-D draw beyond 4: 1 in 3000). The plain
    MLP's output LayerNorm caps |eps_hat| there (half the exact value at 6), which the PF-ODE turns into
    samples tens of units away (benchmarks/results/mlp_skip.md); with the skip it stays within 10 %."""
    from difflab.denoiser import noise_level_input
    errs = {}
    for skip in (False, True):
        net, ab_all, m = _train_eps_net(skip)
        for t in (999, 700, 400):
            ab = ab_all[t]
            for r in (4.0, 6.0):
                x = r * torch.tensor([[0.6, 0.8]]) + ab.sqrt() * m
                with torch.no_grad():
                    e = net(x, noise_level_input(ab.reshape(1)))
                exact = _exact_eps(x, ab.double().reshape(1), m)[0]
                errs[skip, t, r] = float((e.double() - exact).norm() / exact.norm())
    assert max(v for (skip, _, _), v in errs.items() if skip) < 0.1, errs
    assert min(v for (skip, _, r), v in errs.items() if not skip and r == 6.0) > 0.3, errs  # the failure it fixes


# ---- it can learn ---------------------------------------------------------------------------------------
def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(0)
    net = UNet(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, dropout=0.0, groups=8)
    x = torch.randn(8, 1, 8, 8)
    c = torch.linspace(0, 1000, 8)
    target = torch.randn(8, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (net(x, c) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1])
    assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])


def test_resblock_keeps_the_embedding_through_group_norm():
    """A ResBlock adds Linear(emb) per channel and then normalises; with one channel per group that offset
    would be erased and the block's output would not depend on the noise level or label at all."""
    from difflab.nets.unet import ResBlock
    torch.manual_seed(0)
    for ch in (8, 32, 64):
        block = ResBlock(ch, ch, emb_dim=16, groups=32).eval()
        torch.nn.init.normal_(block.conv2.weight)  # zero at init
        x = torch.randn(2, ch, 8, 8)
        e1, e2 = torch.randn(2, 16), torch.randn(2, 16)
        with torch.no_grad():
            d = (block(x, e1) - block(x, e2)).abs().max().item()
        assert d > 1e-3, (ch, d)


def test_noise_embedding_scale_rescales_the_noise_level_and_old_configs_rebuild_without_it():
    torch.manual_seed(0)
    a = TimeEmbedding(16, 32)
    b = TimeEmbedding(16, 32, scale=0.02)
    b.load_state_dict(a.state_dict())
    c = torch.rand(7) * 1000
    torch.testing.assert_close(b(c), a(c * 0.02))
    old_mlp, old_unet = MLP(3, hidden=32, depth=1), UNet(base_channels=32, channel_mult=(1, 2), image_size=8)
    assert "emb_scale" not in old_mlp.config and "emb_scale" not in old_unet.config  # runs saved before it
    for make in (lambda **k: MLP(3, hidden=32, depth=1, **k),
                 lambda **k: UNet(base_channels=32, channel_mult=(1, 2), image_size=8, **k)):
        net = make(emb_scale=0.02)
        assert net.config["emb_scale"] == 0.02
        again = type(net)(**net.config)
        again.load_state_dict(net.state_dict())
        x = torch.randn(2, 3) if isinstance(net, MLP) else torch.randn(2, 1, 8, 8)
        cc = torch.tensor([10.0, 900.0])
        torch.testing.assert_close(again.eval()(x, cc), net.eval()(x, cc))
        plain = make()
        plain.load_state_dict(net.state_dict())  # same weights, scale 1: the net at c x 0.02
        torch.testing.assert_close(plain.eval()(x, cc * 0.02), net(x, cc))


def test_a_smooth_noise_embedding_makes_the_trained_eps_smooth_in_the_noise_level():
    """Oracle: the exact eps of N(m, 0.25 I), smooth in t. With scale 1 (DDPM's timestep embedding) the trained
    eps wobbles from one timestep to the next at high noise (second differences ~300x the scaled net's); with
    NOISE_EMBEDDING_SCALE it does not, and it is as close to the exact eps."""
    from difflab.denoiser import noise_level_input
    from difflab.nets.embeddings import NOISE_EMBEDDING_SCALE
    def second(v):  # RMS second difference along consecutive timesteps
        return float((v[2:] - 2 * v[1:-1] + v[:-2]).pow(2).mean().sqrt())

    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(5))
    rough, err = {}, {}
    for scale in (1.0, NOISE_EMBEDDING_SCALE):
        net, ab_all, m = _train_eps_net(skip=True, emb_scale=scale)
        ab = ab_all[700:1000].double()
        with torch.no_grad():
            e = torch.stack([net(z, noise_level_input(torch.full((300,), float(a)))).double() for a in ab])
        rough[scale] = second(e)
        err[scale] = float((e - _exact_eps(z, ab, m)).pow(2).mean().sqrt())
    assert second(_exact_eps(z, ab, m)) < 1e-5
    assert rough[NOISE_EMBEDDING_SCALE] < rough[1.0] / 20, rough
    assert rough[NOISE_EMBEDDING_SCALE] < 1e-4, rough
    assert err[NOISE_EMBEDDING_SCALE] < 1.5 * err[1.0], err
