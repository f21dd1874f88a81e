"""Tests for difflab.plots: every figure is a valid PNG, grids are laid out pixel-exactly,
logs killed mid-write are read, and the forward-process frames really come from the schedule."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import plots, schedules


def _png(path, min_w=100, min_h=100):
    """Open `path` as a PNG, check it is not tiny, return the PIL image."""
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path)
    assert im.format == "PNG"
    assert im.width >= min_w and im.height >= min_h, im.size
    return im


# -------------------------------------------------------------------------------------------- grids


def test_grid_array_layout():
    n, h, w, pad, nrow = 7, 3, 5, 2, 3
    imgs = np.zeros((n, 1, h, w))
    for k in range(n):
        imgs[k, 0, 1, 2] = (k + 1) / 10           # one marked pixel per image, value identifies k
    g = plots.grid_array(imgs, nrow=nrow, pad=pad)
    rows = -(-n // nrow)
    assert g.dtype == np.uint8
    assert g.shape == (rows * (h + pad) + pad, nrow * (w + pad) + pad, 1)
    for k in range(n):
        r, c = k // nrow, k % nrow
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        assert g[y0 + 1, x0 + 2, 0] == round((k + 1) / 10 * 255)
        cell = g[y0:y0 + h, x0:x0 + w, 0].copy()
        cell[1, 2] = 0
        assert (cell == 0).all()                   # the rest of the image is where it should be
    assert g[0, 0, 0] == 128 and g[-1, -1, 0] == 128   # border / unused cell: grey padding


def test_grid_array_default_nrow_and_clipping():
    imgs = torch.linspace(-1, 2, 10 * 3 * 2 * 2).reshape(10, 3, 2, 2)
    g = plots.grid_array(imgs, pad=0)
    assert g.shape == (3 * 2, 4 * 2, 3)            # nrow = ceil(sqrt(10)) = 4, three rows
    assert g.min() == 0 and g.max() == 255         # values outside [0, 1] are clipped
    assert (g[4:6, 4:8] == 128).all()              # cells 10 and 11 are empty: grey


def test_save_grid_grey_and_rgb(tmp_path):
    grey = torch.rand(64, 1, 8, 8)
    p = plots.save_grid(grey, tmp_path / "sub" / "grey.png")
    im = _png(p, 400, 400)
    assert im.mode == "L"
    assert 400 <= im.width <= 600                  # ~512 px wide by default
    assert p.stat().st_size < 100_000

    rgb = torch.rand(5, 3, 8, 8)
    im = _png(plots.save_grid(rgb, tmp_path / "rgb.png", nrow=5, scale=3, pad=1), 50, 20)
    assert im.mode == "RGB"
    assert im.size == ((5 * 9 + 1) * 3, (1 * 9 + 1) * 3)
    # nearest-neighbour upscaling: the grid is exactly grid_array with each pixel repeated
    g = plots.grid_array(rgb, nrow=5, pad=1)
    np.testing.assert_array_equal(np.asarray(im), g.repeat(3, 0).repeat(3, 1))


def test_save_grid_rejects_bad_channels(tmp_path):
    with pytest.raises(ValueError):
        plots.save_grid(torch.rand(4, 2, 8, 8), tmp_path / "x.png")


# ---------------------------------------------------------------------------------------- figures


def test_reverse_strip(tmp_path):
    frames = torch.rand(5, 3, 1, 8, 8)             # K=5 moments, N=3 samples
    labels = [f"t={t}" for t in (1000, 750, 500, 250, 0)]
    _png(plots.reverse_strip(frames, tmp_path / "rev.png", labels=labels), 200, 100)
    as_list = [torch.rand(2, 3, 8, 8) for _ in range(4)]
    _png(plots.reverse_strip(as_list, tmp_path / "rev_rgb.png"), 150, 50)
    with pytest.raises(ValueError):
        plots.reverse_strip(frames, tmp_path / "bad.png", labels=["t=0"])


def test_forward_process_figure(tmp_path):
    x0 = torch.rand(1, 8, 8) * 2 - 1
    _png(plots.forward_process(x0, schedules.linear(1000), tmp_path / "fwd.png"), 500, 300)
    # a schedule with fewer steps gets the default steps scaled to its T
    _png(plots.forward_process(torch.rand(3, 16, 16) * 2 - 1, schedules.cosine(100), tmp_path / "fwd2.png"))
    with pytest.raises(ValueError):
        plots.forward_process(x0, schedules.linear(100), tmp_path / "bad.png", steps=(0, 500))


def test_noised_frames_follow_the_schedule():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 32, 32, generator=g) * 2 - 1
    s = schedules.linear(1000)
    steps = (0, 100, 1000)
    f = plots.noised_frames(x0, s, steps, seed=1)
    assert f.shape == (3, 1, 32, 32)
    torch.testing.assert_close(f[0], x0)           # step 0 is the clean image

    def corr(a, b):
        return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])

    assert abs(corr(f[-1], x0)) < 0.05             # sqrt(ab_T) ~ 0.006: pure noise
    assert corr(f[1], x0) > 0.8                    # sqrt(ab_100) ~ 0.95: mostly signal
    # exactly q_sample with the schedule's alpha_bar and the seeded eps
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ab = float(s.alpha_bars[99])
    torch.testing.assert_close(f[1].double(), ab ** 0.5 * x0.double() + (1 - ab) ** 0.5 * eps,
                               atol=1e-6, rtol=0)
    # same seed, same frames; other seed, other noise
    torch.testing.assert_close(plots.noised_frames(x0, s, steps, seed=1), f)
    assert not torch.allclose(plots.noised_frames(x0, s, steps, seed=2)[-1], f[-1])


def test_forward_process_2d(tmp_path):
    pts = torch.randn(500, 2) * 0.3 + torch.tensor([1.0, -1.0])
    _png(plots.forward_process_2d(pts, schedules.cosine(1000), tmp_path / "fwd2d.png"), 500, 300)


def test_schedules_plot(tmp_path):
    scheds = {"linear": schedules.linear(1000), "cosine": schedules.cosine(1000),
              "sigmoid": schedules.sigmoid(200)}
    _png(plots.schedules_plot(scheds, tmp_path / "sched.png"), 500, 200)


def test_scatter_2d(tmp_path):
    ref = np.random.default_rng(0).normal(size=(1000, 2))
    samples = ref[:300] + 0.1
    samples[0] = (1e6, -1e6)                       # one wild sample must not break the figure
    _png(plots.scatter_2d(samples, tmp_path / "sc.png", reference=ref, title="gaussian"), 400, 200)
    _png(plots.scatter_2d(torch.as_tensor(ref), tmp_path / "sc1.png"), 200, 200)
    with pytest.raises(ValueError):
        plots.scatter_2d(np.zeros((5, 3)), tmp_path / "bad.png")


# --------------------------------------------------------------------------------------------- loss


def test_loss_curve_reads_a_log_killed_mid_write(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": 10 * (i + 1), "loss": 1.0 / (i + 1), "lr": 1e-3}) for i in range(60)]
    lines.insert(5, json.dumps({"step": 55, "note": "no loss here"}))
    lines.insert(7, json.dumps({"step": 65, "loss": float("nan")}))
    lines.append("")
    lines.append('{"step": 610, "lo')                  # partial last line, no newline
    log.write_text("\n".join(lines))
    steps, values = plots.read_log(log)
    assert len(steps) == 60 and steps[0] == 10 and steps[-1] == 600
    assert np.isfinite(values).all()
    _png(plots.loss_curve(log, tmp_path / "out" / "loss.png"), 300, 200)


def test_loss_curve_records_and_empty(tmp_path):
    recs = [{"step": i, "loss": 0.5 + 0.1 * np.sin(i)} for i in range(200)] + [{"step": 200}]
    _png(plots.loss_curve(recs, tmp_path / "loss.png"), 300, 200)
    _png(plots.loss_curve([{"step": 1, "grad_norm": 2.0}], tmp_path / "gn.png", key="grad_norm"))
    (tmp_path / "empty.jsonl").write_text("")
    _png(plots.loss_curve(tmp_path / "empty.jsonl", tmp_path / "empty.png"))
