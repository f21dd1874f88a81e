"""U-Net speed/memory options change nothing but speed and memory: recompute_activations (each
ResBlock's GroupNorm-SiLU-dropout-conv halves recomputed in backward) gives the same outputs and gradients,
dropout masks included; so do the memory-lean training Functions (GN-SiLU-dropout-conv and upsample-conv
keeping only their inputs; UNet.lean_training, automatic for large batches), which keep far less for the
backward pass; the automatic channels_last choice (sampling only) gives the plain layout's outputs."""
import pytest
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
        assert net._channels_last(h)                    # sampling, batch >= 16, >= 32x32 maps
        assert not net._channels_last(torch.zeros(64, 16, 8, 8))
        assert not net._channels_last(torch.zeros(8, 16, 32, 32))
        x, c = torch.randn(64, 1, 32, 32), torch.rand(64) * 1000
        auto = net(x, c)
        net.channels_last = False
        plain = net(x, c)
    torch.testing.assert_close(auto, plain, atol=1e-5, rtol=1e-4)


def _lean_vs_plain(cfg, x, c, y=None, seed=5):
    """Outputs, parameter and input gradients, and the RNG state after, with the memory-lean Functions and
    with the plain modules, for the same weights and dropout seed."""
    torch.manual_seed(0)
    net = nets.build("unet", **cfg).train()
    with torch.no_grad():  # leave the zero init: every parameter then gets a gradient that matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    res = {}
    for lean in (True, False):
        net.lean_training = lean
        xr = x.clone().requires_grad_(True)
        torch.manual_seed(seed)
        net.zero_grad(set_to_none=True)
        out = net(xr, c, y)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        res[lean] = out.detach(), [p.grad.clone() for p in net.parameters()], xr.grad.clone(), torch.rand(3)
    return res[True], res[False]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_memory_lean_training_same_outputs_and_gradients(dropout):
    # channel_mult (1, 2): an Upsample and 1x1-conv skips; conditional: the label path too
    cfg = dict(in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
               image_size=8, groups=8, dropout=dropout, num_classes=3)
    x, c, y = torch.randn(4, 3, 8, 8), torch.tensor([10.0, 300.0, 600.0, 990.0]), torch.tensor([0, 1, 2, -1])
    (out_f, g_f, gx_f, rng_f), (out_p, g_p, gx_p, rng_p) = _lean_vs_plain(cfg, x, c, y)
    torch.testing.assert_close(out_f, out_p, rtol=0, atol=0)          # the same ops forward
    torch.testing.assert_close(rng_f, rng_p, rtol=0, atol=0)          # the same random draws (dropout)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_f, g_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_memory_lean_training_float64():
    cfg = dict(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
               image_size=8, groups=4, dropout=0.2)
    torch.set_default_dtype(torch.float64)
    try:
        (out_f, g_f, gx_f, _), (out_p, g_p, gx_p, _) = _lean_vs_plain(
            cfg, torch.randn(2, 1, 8, 8), torch.tensor([5.0, 700.0]))
    finally:
        torch.set_default_dtype(torch.float32)
    assert out_f.dtype == torch.float64
    torch.testing.assert_close(out_f, out_p, rtol=0, atol=0)
    for a, b in zip([gx_f, *g_f], [gx_p, *g_p]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def _saved_bytes(net, x, c) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass (parameters excluded)."""
    params = {p.data_ptr() for p in net.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, c)
    return sum(seen.values())


def test_memory_lean_training_keeps_less_for_backward():
    torch.manual_seed(0)
    net = nets.build("unet", in_channels=3, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                     attention_resolutions=(4,), image_size=16, dropout=0.1).train()
    x, c = torch.randn(8, 3, 16, 16), torch.rand(8) * 1000
    net.lean_training = True
    lean = _saved_bytes(net, x, c)
    net.lean_training = False
    plain = _saved_bytes(net, x, c)
    assert lean < 0.5 * plain, (lean, plain)   # 32x32-rgb of benchmarks/speed.py: 788 MB instead of 1871 MB


def test_memory_lean_training_automatic_only_in_cpu_float_training_of_large_batches():
    net = nets.build("unet", in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), image_size=8, groups=4)
    x, c = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 700.0])
    lean = {"_NormActConvBackward", "_UpsampleConvBackward"}

    def nodes(out):
        seen, stack = set(), [out.grad_fn]
        while stack:
            f = stack.pop()
            if f is not None and f not in seen:
                seen.add(f)
                stack += [g for g, _ in f.next_functions]
        return {type(f).__name__ for f in seen}

    assert net.lean_training is None
    assert not lean & nodes(net.train()(x, c))            # a small batch: the plain modules
    big = torch.zeros(128, 64, 32, 32)                    # 32 MiB top-level map (32x32-rgb at batch 128)
    assert net._lean_training(big) and not net._lean_training(big[:32])   # 8 MiB (batch 32): plain
    net.lean_training = True
    assert nodes(net.train()(x, c)) >= lean
    with torch.no_grad():
        assert not net._lean_training(big)
    assert not lean & nodes(net.eval()(x, c))             # eval mode (likelihoods, guidance): plain modules
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lean & nodes(net(x, c))                # autocast: the plain modules' precision rules
    net.lean_training = False
    assert not net._lean_training(big)


def test_lean_training_run_resumes_bit_exactly_and_matches_the_plain_modules(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from difflab import checkpoint as ckpt
    from difflab.config import load_config
    from difflab.nets.unet import UNet
    from difflab.train import train

    def cfg():
        return load_config("digits", overrides={"steps": 6, "batch_size": 32, "checkpoint_every": 100, "seed": 3,
                                                "device": "cpu"})
    monkeypatch.setattr(UNet, "lean_training", True)   # digits maps are small: force the Functions on
    train(cfg(), tmp_path / "ref", progress=False)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3
    train(cfg(), tmp_path / "run", progress=False, stop_flag=stop)
    assert ckpt.load(tmp_path / "run")[1]["step"] == 3
    train(cfg(), tmp_path / "run", resume=True, progress=False)
    monkeypatch.setattr(UNet, "lean_training", False)
    train(cfg(), tmp_path / "plain", progress=False)
    a, b, p = (load_file(str(tmp_path / d / ckpt.CHECKPOINT_NAME)) for d in ("ref", "run", "plain"))
    for k in a:
        assert torch.equal(a[k], b[k]), k                                   # kill/resume: bit for bit
        torch.testing.assert_close(a[k], p[k], rtol=1e-4, atol=1e-6, msg=k)  # lean == plain
