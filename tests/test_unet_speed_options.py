"""U-Net speed/memory options change nothing but speed and memory: recompute_activations (each
ResBlock's GroupNorm-SiLU-dropout-conv halves recomputed in backward) gives the same outputs and gradients,
dropout masks included; the automatic channels_last choice (sampling only) gives the plain layout's outputs."""
import torch

from difflab import nets


def _pair(**kw):
    cfg = dict(in_channels=2, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
               image_size=8, groups=8, **kw)
    torch.manual_seed(0)
    a = nets.build("unet", **cfg)
    torch.manual_seed(0)
    b = nets.build("unet", **cfg, recompute_activations=True)
    with torch.no_grad():  # leave the zero init: every parameter then gets a gradient that matters
        for p, q in zip(a.parameters(), b.parameters()):
            p.add_(0.05 * torch.randn_like(p))
            q.copy_(p)
    return a, b


def _grads(net, x, c, seed):
    torch.manual_seed(seed)  # dropout masks
    net.zero_grad(set_to_none=True)
    out = net(x, c)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def test_recompute_activations_same_outputs_and_gradients_with_dropout():
    a, b = _pair(dropout=0.3)
    assert b.config["recompute_activations"] and nets.build("unet", **b.config).config["recompute_activations"]
    a.train(), b.train()
    x, c = torch.randn(3, 2, 8, 8), torch.tensor([10.0, 500.0, 990.0])
    out_a, ga = _grads(a, x, c, seed=5)
    out_b, gb = _grads(b, x, c, seed=5)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    for g, h in zip(ga, gb):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6)
    _, gc = _grads(a, x, c, seed=6)  # another dropout draw changes the gradients: the masks matter
    assert any(not torch.allclose(g, h) for g, h in zip(ga, gc))


def test_automatic_channels_last_only_without_autograd_and_same_outputs():
    net = nets.build("unet", in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(16,), image_size=32, groups=8).eval()
    h = torch.zeros(64, 16, 32, 32)
    assert not net._channels_last(h)                    # autograd on (training): plain layout
    with torch.inference_mode():
        assert net._channels_last(h)                    # sampling, batch >= 64, >= 32x32 maps
        assert not net._channels_last(torch.zeros(64, 16, 8, 8))
        assert not net._channels_last(torch.zeros(8, 16, 32, 32))
        x, c = torch.randn(64, 1, 32, 32), torch.rand(64) * 1000
        auto = net(x, c)
        net.channels_last = False
        plain = net(x, c)
    torch.testing.assert_close(auto, plain, atol=1e-5, rtol=1e-4)
