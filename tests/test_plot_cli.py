"""`difflab plot KIND`: every picture from a tiny run (a few training steps), and the Langevin/score
picture's dynamics against the exact mixture."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import figures
from difflab.cli import main
from difflab.metric_suite import known_mixture


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    toy, dig = root / "toy", root / "digits"
    assert main(["train", "--data", "toy:gmm", "--out", str(toy), "--steps", "10", "--batch-size", "64",
                 "--quiet"]) == 0
    assert main(["train", "--data", "digits", "--out", str(dig), "--steps", "2", "--batch-size", "8", "--quiet"]) == 0
    return {"toy": str(toy), "digits": str(dig)}


def _png(p, min_size=100):
    im = Image.open(p)
    assert im.width >= min_size and im.height >= min_size
    return im


@pytest.mark.parametrize("kind,run,extra", [
    ("samples", "digits", ["--n", "16", "--nfe", "3"]),
    ("samples", "toy", ["--n", "200", "--nfe", "5"]),
    ("reverse", "digits", ["--n", "3", "--nfe", "5"]),
    ("reverse", "toy", ["--n", "200", "--nfe", "6"]),
    ("forward", "digits", []),
    ("forward", "toy", ["--n", "300"]),
    ("schedules", "digits", []),
    ("score", "toy", ["--n", "300", "--nfe", "5"]),
    ("loss", "toy", []),
])
def test_plot_kinds_from_a_run(runs, tmp_path, kind, run, extra):
    out = tmp_path / f"{kind}.png"
    assert main(["plot", kind, "--checkpoint", runs[run], "--out", str(out), *extra]) == 0
    _png(out)


def test_plot_gif_and_data_only_kinds(runs, tmp_path):
    gif = tmp_path / "rev.gif"
    assert main(["plot", "gif", "--checkpoint", runs["toy"], "--out", str(gif), "--n", "100", "--nfe", "8"]) == 0
    im = Image.open(gif)
    assert im.format == "GIF" and im.n_frames == 9                # x_T and the 8 steps
    im.seek(8)
    assert im.info["duration"] == 11 * 120                         # the last frame is held
    for kind, data in (("forward", "toy:moons"), ("score", "toy:gmm")):
        out = tmp_path / f"{kind}_{data.replace(':', '_')}.png"
        assert main(["plot", kind, "--data", data, "--out", str(out)]) == 0
        _png(out)


def test_plot_nfe_from_benchmark_json(tmp_path):
    rows = [{"lib": "difflab", "method": m, "nfe": n, "sw2": 1.0 / n + k * 0.01}
            for k, m in enumerate(["ddim", "heun"]) for n in (5, 10, 20, 50)]
    js = tmp_path / "bench.json"
    js.write_text(json.dumps({"mixture": "2d", "floor_sw": 0.01, "rows": rows}))
    out = tmp_path / "nfe.png"
    assert main(["plot", "nfe", "--bench", str(js), "--out", str(out)]) == 0
    _png(out)


def test_plot_errors_are_one_line(runs, tmp_path, capsys):
    assert main(["plot", "nope", "--out", str(tmp_path / "a.png")]) == 2
    assert main(["plot", "score", "--checkpoint", runs["digits"], "--out", str(tmp_path / "a.png")]) == 2
    assert main(["plot", "gif", "--checkpoint", runs["toy"], "--out", str(tmp_path / "a.png")]) == 2
    assert main(["plot", "score", "--data", "toy:moons", "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(e.startswith("difflab: error:") for e in err)


def test_langevin_with_the_exact_score_samples_the_mixture():
    """Langevin dynamics with the exact score of a 1-D two-component mixture, many chains from one start,
    lands on both modes in proportion to the weights' *local* basins: here symmetric, so about half each,
    and each chain's end point has the component's spread (sd 0.3 plus O(step) bias)."""
    from difflab.mixtures import GaussianMixture
    gm = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [[0.3], [0.3]])
    paths = figures.langevin_paths(lambda x: gm.score(x, 1.0), [0.0], n_paths=400, steps=400, step_size=0.01)
    end = paths[:, -1, 0]
    assert paths.shape == (400, 401, 1)
    right = (end > 0).mean()
    assert abs(right - 0.5) < 4 * math.sqrt(0.25 / 400)
    assert np.abs(np.abs(end) - 2).mean() == pytest.approx(0.3 * math.sqrt(2 / math.pi), rel=0.15)


def test_known_mixture_score_matches_finite_differences():
    gm = known_mixture("toy:gmm")
    x = torch.tensor([[0.3, 1.7], [-1.0, 0.2]], dtype=torch.float64)
    h = 1e-5
    fd = torch.stack([(gm.log_prob(x + h * e, 0.9) - gm.log_prob(x - h * e, 0.9)) / (2 * h)
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(gm.score(x, 0.9), fd, rtol=1e-5, atol=1e-6)


def test_compare_computes_missing_metrics(runs, capsys):
    """A run without metrics.json: compare computes the default vector set (toy:gmm: + true_logpdf) and saves it."""
    from pathlib import Path
    assert main(["compare", runs["toy"], "--n", "120", "--nfe", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    head = [c.strip() for c in out.splitlines()[0].strip("|").split("|")]
    for name in ("sliced_w2", "mmd", "frechet", "precision_recall.precision", "true_logpdf"):
        assert name in head
    saved = json.loads((Path(runs["toy"]) / "metrics.json").read_text())
    assert saved["_meta"]["n"] == 120 and saved["sliced_w2"]["n"] == 120
