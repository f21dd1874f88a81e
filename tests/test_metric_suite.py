"""The metrics of `difflab eval` (difflab.metric_suite): floors at the same sample size, standard errors,
real data scoring at its floor and wrong data far above it; the shipped digit classifier."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from difflab import data
from difflab.cli import main
from difflab.evaluate import EvalContext, evaluate
from difflab.metric_suite import known_mixture, paired_figure


def _npz(path, x):
    np.savez(path, samples=np.asarray(x, dtype=np.float32))
    return str(path)


def test_paired_figure_same_sample_size_and_chunk_se():
    rng = np.random.default_rng(0)
    fake, real = rng.standard_normal(1000), rng.standard_normal(180)
    f = paired_figure(lambda v: float(v.mean()), fake, real, "floor")
    assert f["n"] == 180 and f["chunks"] == 5 and f["floor_chunks"] == 1
    chunks = [fake[i * 180:(i + 1) * 180].mean() for i in range(5)]
    assert f["value"] == pytest.approx(np.mean(chunks))
    assert f["se"] == pytest.approx(np.std(chunks, ddof=1) / math.sqrt(5))
    assert f["floor"] == pytest.approx(real.mean())
    assert f["floor_se"] == pytest.approx(1 / math.sqrt(180), rel=0.3)      # half-sampling s.e. of a mean


def test_known_mixture_is_the_toy_generator():
    """The true density of toy:gmm: its log-density integrates to 1 on a grid; the data's mean log-density
    matches the mixture's own samples'."""
    gm = known_mixture("toy:gmm")
    g = np.linspace(-3, 3, 601)
    xx, yy = np.meshgrid(g, g)
    dens = gm.log_prob(torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1))).exp().numpy()
    assert dens.sum() * (g[1] - g[0]) ** 2 == pytest.approx(1.0, abs=1e-3)
    x = data.load("toy:gmm", n=4000, seed=3).x.double()
    lp_data = gm.log_prob(x).numpy()
    lp_own = gm.log_prob(gm.sample(4000, torch.Generator().manual_seed(0))).numpy()
    assert abs(lp_data.mean() - lp_own.mean()) < 4 * math.hypot(lp_data.std(), lp_own.std()) / math.sqrt(4000)


def test_vector_metrics_real_at_floor_and_wrong_data_far(tmp_path):
    """Fresh draws of the true density score at the held-out floor (within a few s.e.); a model that dropped
    two of the eight modes scores far above it on the distribution distances and loses recall; a blurred
    one (noise sd 0.3 added) loses true log-density and precision."""
    gm = known_mixture("toy:gmm")
    good, comp = gm.sample(2000, torch.Generator().manual_seed(11), return_labels=True)
    good, comp = good.numpy(), comp.numpy()
    collapsed = good[comp >= 2][:1000]                                        # modes 0 and 1 dropped
    blurred = good[:1000] + 0.3 * np.random.default_rng(1).standard_normal((1000, 2))
    res = {}
    for tag, x, names in (("good", good[:1000], ["sliced_w2", "mmd", "frechet", "precision_recall", "true_logpdf"]),
                          ("collapsed", collapsed, ["sliced_w2", "mmd", "frechet", "precision_recall"]),
                          ("blurred", blurred, ["precision_recall", "true_logpdf"])):
        ctx = EvalContext(data="toy:gmm", samples_path=_npz(tmp_path / f"{tag}.npz", x), progress=False)
        res[tag] = evaluate(ctx, names)
    g, c, b = res["good"], res["collapsed"], res["blurred"]
    for name in ("sliced_w2", "mmd", "frechet"):
        assert g[name]["n"] == 1000 and g[name]["floor_chunks"] == 9    # floor: 9 chunks of the 9000 training points
        assert g[name]["reference_n"] == 1000                                   # the held-out split
        assert abs(g[name]["value"] - g[name]["floor"]) < 4 * math.hypot(g[name]["se"], g[name]["floor_se"]), name
        assert c[name]["value"] > g[name]["floor"] + 6 * math.hypot(c[name]["se"], g[name]["floor_se"]), name
    pr = g["precision_recall"]
    assert pr["precision"]["value"] > 0.9 and pr["recall"]["value"] > 0.9
    assert c["precision_recall"]["recall"]["value"] < pr["recall"]["floor"] - 0.15
    assert b["precision_recall"]["precision"]["value"] < pr["precision"]["floor"] - 0.2
    t = g["true_logpdf"]
    assert abs(t["value"] - t["floor"]) < 4 * math.hypot(t["se"], t["floor_se"])
    assert b["true_logpdf"]["value"] < t["floor"] - 1.0          # blurred: much lower true density


def test_digit_metrics_noise_far_real_near_floor(tmp_path):
    """Real training digits (ones the classifier saw) score near the floor (real digits it never saw, against
    the held-out reference); uniform noise scores far above it."""
    from difflab.feature_net import SHIPPED, floor_pool_split, load_classifier
    ds = data.load("digits")
    train, held = data.split(ds, 0.1, seed=0)
    pool, fit = floor_pool_split(len(train), load_classifier(SHIPPED["digits"])[1]["floor_pool_size"])
    real = data.to_unit(train.x[fit[:360]], train).numpy()
    noise = np.random.default_rng(0).uniform(0, 1, real.shape)
    names = ["frechet", "precision_recall", "inception_score", "class_histogram"]
    out = {}
    for tag, x in (("real", real), ("noise", noise)):
        js = tmp_path / f"{tag}.json"
        rc = main(["eval", "--data", "digits", "--samples", _npz(tmp_path / f"{tag}.npz", x), "--metrics", "default",
                   "--json", str(js), "--quiet"])
        assert rc == 0
        out[tag] = json.loads(js.read_text())
        assert list(out[tag]) == names
    r, z = out["real"], out["noise"]
    f = r["frechet"]
    assert f["n"] == 360 and f["chunks"] == 1 and f["floor_chunks"] == len(pool) // 360
    assert f["reference_n"] == len(held) == 180
    assert z["frechet"]["value"] > f["floor"] + 8 * (z["frechet"]["se"] + f["floor_se"])
    assert abs(f["value"] - f["floor"]) < 0.2 * (z["frechet"]["value"] - f["floor"])
    assert r["inception_score"]["value"] > 7 and z["inception_score"]["value"] < r["inception_score"]["value"] - 2
    assert r["class_histogram"]["confident"]["value"] > 0.85
    pr = z["precision_recall"]
    assert pr["precision"]["value"] < pr["precision"]["floor"] - 0.3 and pr["recall"]["value"] < 0.2


def test_eval_errors_are_one_line(tmp_path, capsys):
    p = _npz(tmp_path / "s.npz", np.zeros((10, 2)))
    assert main(["eval", "--data", "toy:moons", "--samples", p, "--metrics", "true_logpdf"]) == 2
    assert main(["eval", "--data", "toy:moons", "--samples", p, "--metrics", "inception_score"]) == 2
    assert main(["eval", "--data", "digits", "--samples", p, "--metrics", "frechet"]) == 2
    few = _npz(tmp_path / "few.npz", np.zeros((3, 2)))   # too few samples for a covariance's standard error
    assert main(["eval", "--data", "toy:moons", "--samples", few, "--metrics", "frechet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("difflab: error:") for line in err)
