"""The sync-free guarded update (difflab/device_step.py) used on CUDA, checked on the CPU: a non-finite step
changes nothing, a finite one equals the host-checked update (non-fused AdamW + lerp EMA), consecutive bad
steps are counted, and the trainer driven through it still stops on divergence and resumes bit-identically."""
import pytest
import torch
from safetensors.torch import load_file

import difflab.train as train_mod
from difflab import checkpoint as ckpt
from difflab.config import load_config
from difflab.device_step import DeviceGuard
from difflab.errors import UserError
from difflab.train import train


def _setup(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    params = list(net.parameters())
    ema = [p.detach().clone() for p in params]
    return net, params, ema


def _loss(net, scale=1.0):
    x = torch.linspace(-1, 1, 15).reshape(5, 3)
    return net(x).square().mean() * scale


def test_guard_needs_a_fused_optimizer():
    net, params, ema = _setup()
    with pytest.raises(ValueError, match="fused"):
        DeviceGuard(torch.optim.AdamW(params), params, ema, "cpu")


def test_finite_step_equals_the_host_checked_update():
    net_a, pa, ema_a = _setup()
    net_b, pb, ema_b = _setup()
    guard = DeviceGuard(torch.optim.AdamW(pa, lr=1e-2, weight_decay=0.1, fused=True), pa, ema_a, "cpu")
    opt_b = torch.optim.AdamW(pb, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(3):
        decay = 0.9 - 0.1 * step
        guard.opt.zero_grad(set_to_none=True)
        gnorm_a = guard.step(_loss(net_a), 0.05, decay)
        opt_b.zero_grad(set_to_none=True)
        _loss(net_b).backward()
        gnorm_b = torch.nn.utils.clip_grad_norm_(pb, 0.05)
        opt_b.step()
        with torch.no_grad():
            for e, p in zip(ema_b, pb):
                e.lerp_(p, 1 - decay)
        torch.testing.assert_close(gnorm_a, gnorm_b)
        for a, b in zip(pa + ema_a, pb + ema_b):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert guard.read() == (True, 0)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_step_changes_nothing(bad_value):
    net, params, ema = _setup()
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=True)
    guard = DeviceGuard(opt, params, ema, "cpu")
    guard.step(_loss(net), 1.0, 0.5)
    saved = [t.clone() for t in params + ema]
    state = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params)}
    opt.zero_grad(set_to_none=True)
    guard.step(_loss(net, bad_value), 1.0, 0.5)
    assert guard.read() == (False, 1)
    for a, b in zip(params + ema, saved):
        assert torch.equal(a, b)
    for i, p in enumerate(params):
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[i][k]), k   # moments and the step count too


def test_consecutive_bad_steps_are_counted_and_reset():
    net, params, ema = _setup()
    guard = DeviceGuard(torch.optim.AdamW(params, lr=1e-3, fused=True), params, ema, "cpu")
    seen = []
    for scale in [1.0, float("nan"), float("nan"), 1.0, float("nan"), 1.0]:
        guard.opt.zero_grad(set_to_none=True)
        guard.step(_loss(net, scale), 1.0, 0.9)
        seen.append((guard.read(), int(guard.run)))
    assert [s[0][0] for s in seen] == [True, False, False, True, False, True]
    assert [s[1] for s in seen] == [0, 1, 2, 0, 1, 0]
    assert seen[-1][0][1] == 2  # the longest run so far


@pytest.fixture
def guard_on_cpu(monkeypatch):
    monkeypatch.setattr(train_mod, "_DEVICE_GUARD_DEVICES", {"cuda", "cpu"})


def test_trainer_through_the_guard_stops_on_divergence(tmp_path, guard_on_cpu):
    cfg = load_config("toy", overrides={"steps": 50, "batch_size": 32, "lr": 1e30, "warmup": 1, "max_bad_steps": 3})
    with pytest.raises(UserError, match="diverged"):
        train(cfg, tmp_path / "run", progress=False)


def test_trainer_through_the_guard_resumes_bit_identically(tmp_path, guard_on_cpu):
    over = {"steps": 30, "checkpoint_every": 12, "batch_size": 64, "seed": 1}
    train(load_config("toy", overrides=over), tmp_path / "ref", progress=False)
    calls = {"n": 0}

    def stop_after_a_while():
        calls["n"] += 1
        return calls["n"] > 17
    train(load_config("toy", overrides=over), tmp_path / "run", progress=False, stop_flag=stop_after_a_while)
    assert ckpt.load(tmp_path / "run")[1]["step"] == 17
    train(load_config("toy"), tmp_path / "run", resume=True, progress=False, overrides={"steps": 30})
    a = load_file(str(tmp_path / "ref" / ckpt.CHECKPOINT_NAME))
    b = load_file(str(tmp_path / "run" / ckpt.CHECKPOINT_NAME))
    assert any(k.startswith("opt.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
