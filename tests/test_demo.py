"""The demo end to end, on a tiny budget: every promised file is written and readable, and training reaches
its floor of steps."""
import numpy as np
from PIL import Image

from difflab.demo import MIN_STEPS, run_demo


def test_demo_writes_everything(tmp_path):
    info = run_demo(tmp_path / "demo", minutes=0.2, n=12, progress=False)
    out = tmp_path / "demo"
    for name in ("samples.png", "reverse_process.png", "forward_process.png", "loss.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100
    x = np.load(out / "samples.npz")["samples"]
    assert x.shape == (12, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert (out / "run" / "checkpoint.safetensors").exists() and info["n_samples"] == 12
    # at least MIN_STEPS per 9.5 minutes of budget: a machine too slow for that trains on past the budget
    assert info["steps"] >= round(MIN_STEPS * 0.2 / 9.5)
