"""The `compile` config flag (difflab/compiling.py): training and sampling through torch.compile give the
outputs of the plain module. The backend is swapped for "aot_eager" (Dynamo + AOTAutograd graphs, no C++ code
generation) so the test runs in seconds; inductor compiles the same graphs for minutes on this CPU."""
import pytest
import torch
from safetensors.torch import load_file

import difflab
from difflab import checkpoint as ckpt
from difflab import compiling
from difflab.config import load_config
from difflab.errors import UserError
from difflab.runs import load_run
from difflab.train import train


@pytest.fixture
def fast_backend(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_must_be_a_bool():
    with pytest.raises(UserError, match="compile"):
        load_config("toy", overrides={"compile": "yes"})


def test_maybe_compile_off_returns_the_module():
    net = torch.nn.Linear(2, 2)
    assert compiling.maybe_compile(net, False) is net


def test_compiled_training_and_sampling_match_the_plain_module(tmp_path, fast_backend):
    over = {"steps": 6, "batch_size": 64, "seed": 2, "net_config": {"hidden": 32, "depth": 2}}
    train(load_config("toy", overrides=over), tmp_path / "plain", progress=False)
    train(load_config("toy", overrides={**over, "compile": True}), tmp_path / "compiled", progress=False)
    a = load_file(str(tmp_path / "plain" / ckpt.CHECKPOINT_NAME))
    b = load_file(str(tmp_path / "compiled" / ckpt.CHECKPOINT_NAME))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    assert ckpt.load(tmp_path / "compiled")[1]["config"]["compile"] is True

    cfg, net, den = load_run(tmp_path / "compiled")
    cells = [c.cell_contents for c in den.fn.__closure__]
    assert any(isinstance(c, torch._dynamo.eval_frame.OptimizedModule) for c in cells)  # sampling is compiled
    assert type(net).__name__ == "MLP"   # the returned net stays the plain module
    _, _, den_plain = load_run(tmp_path / "plain")
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    x = difflab.sample(den, noise, "ddim", nfe=5)
    y = difflab.sample(den_plain, noise, "ddim", nfe=5)
    torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
