"""The command line: bad input gives one line on stderr, exit 2, and loses nothing; good input works."""
import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from difflab.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "toy"
    assert main(["train", "--data", "toy:moons", "--out", str(run), "--steps", "30", "--batch-size", "64",
                 "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits"
    cfg = run.parent / "tiny.toml"
    cfg.write_text('data = "digits"\nnet = "unet"\nbatch_size = 32\nsteps = 3\n'
                   '[net_config]\nbase_channels = 16\nchannel_mult = [1, 2]\nnum_res_blocks = 1\n'
                   'attention_resolutions = [4]\n')
    assert main(["train", "--config", str(cfg), "--out", str(run), "--quiet", "--T", "50"]) == 0
    return run


def test_python_dash_m_and_help():
    r = subprocess.run([sys.executable, "-m", "difflab", "--help"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "train" in r.stdout and "sample" in r.stdout and "demo" in r.stdout


def test_sample_help_names_every_sampler():
    """`difflab sample --sampler`'s help lists the samplers by hand (the parser does not import torch): it must
    name every entry of difflab.samplers.NAMES, and auto."""
    from difflab.cli import build_parser
    from difflab.samplers import AUTO, NAMES
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sampler_help = next(a.help for a in sub.choices["sample"]._actions if a.dest == "sampler")
    words = set(re.findall(r"\w+", sampler_help))
    missing = [name for name in [*NAMES, AUTO] if name not in words]
    assert not missing, missing


def test_sample_writes_npz_and_grid_and_is_reproducible(digits_run, tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for out in (a, b):
        assert main(["sample", "--checkpoint", str(digits_run), "--n", "7", "--seed", "4", "--out", str(out),
                     "--quiet"]) == 0
    x = np.load(a)["samples"]
    assert x.shape == (7, 1, 8, 8) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert np.array_equal(x, np.load(b)["samples"])
    assert a.with_suffix(".png").stat().st_size > 0
    c = tmp_path / "c.npz"
    main(["sample", "--checkpoint", str(digits_run), "--n", "7", "--seed", "5", "--out", str(c), "--quiet"])
    assert not np.array_equal(x, np.load(c)["samples"])


def test_vector_samples_are_in_data_units(toy_run, tmp_path):
    out = tmp_path / "t.npz"
    assert main(["sample", "--checkpoint", str(toy_run), "--n", "300", "--out", str(out), "--nfe", "100",
                 "--quiet"]) == 0
    x = np.load(out)["samples"]
    assert x.shape == (300, 2) and np.isfinite(x).all()


BAD = [
    (["train", "--data", "nosuch", "--out", "{tmp}/r", "--steps", "1"], "nosuch"),
    (["train", "--data", "toy:nosuch", "--out", "{tmp}/r", "--steps", "1"], "nosuch"),
    (["train", "--data", "{tmp}/missing.npy", "--out", "{tmp}/r", "--steps", "1"], "missing"),
    (["train", "--data", "{tmp}/nan.npy", "--out", "{tmp}/r", "--steps", "1"], "nan"),
    (["train", "--data", "{tmp}/garbage.npy", "--out", "{tmp}/r", "--steps", "1"], "garbage"),
    (["train", "--data", "toy:moons", "--out", "{tmp}/r", "--steps", "0"], "--steps"),
    (["train", "--data", "toy:moons", "--out", "{tmp}/r", "--steps", "-3"], "--steps"),
    (["train", "--data", "toy:moons", "--out", "{tmp}/r", "--steps", "2", "--schedule", "zigzag"], "zigzag"),
    (["train", "--data", "toy:moons", "--out", "{tmp}/r", "--steps", "2", "--config", "{tmp}/nope.toml"], "nope"),
    (["train", "--data", "toy:moons", "--out", "{tmp}/r", "--steps", "2", "--config", "{tmp}/bad.toml"], "TOML"),
    (["train", "--data", "toy:moons", "--out", "{tmp}/r", "--steps", "2", "--config", "{tmp}/bad.yaml"], "YAML"),
    (["train", "--data", "toy:moons", "--out", "{tmp}/r", "--steps", "2", "--config", "{tmp}/list.yml"], "mapping"),
    (["train", "--data", "toy:moons", "--out", "/proc/nope/r", "--steps", "2"], "cannot write"),
    (["eval", "--metrics", "x"], "--checkpoint"),
    (["sample", "--checkpoint", "{tmp}/nothing", "--out", "{tmp}/s.npz"], "no checkpoint"),
    (["sample", "--checkpoint", "{tmp}/corrupt.safetensors", "--out", "{tmp}/s.npz"], "corrupt"),
    (["sample", "--checkpoint", "{run}", "--out", "{tmp}/s.npz", "--n", "0"], "--n"),
    (["sample", "--checkpoint", "{run}", "--out", "{tmp}/s.npz", "--sampler", "magic"], "magic"),
    (["sample", "--checkpoint", "{run}", "--out", "{tmp}/s.npz", "--nfe", "5000"], "nfe"),
    (["sample", "--checkpoint", "{run}", "--out", "/proc/nope/s.npz"], "cannot write"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_one_line_exit_2(args, needle, tmp_path, toy_run, capsys):
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]] * 10))
    (tmp_path / "garbage.npy").write_bytes(b"this is not an array")
    (tmp_path / "bad.toml").write_text("steps = = 3")
    (tmp_path / "bad.yaml").write_text("steps: [3\nlr: 1")
    (tmp_path / "list.yml").write_text("- 1\n- 2\n")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    args = [a.format(tmp=tmp_path, run=toy_run) for a in args]
    code, err = run_cli(capsys, *args)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("difflab: error:") and needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err


def test_truncated_checkpoint_is_refused_and_run_folder_not_overwritten(toy_run, tmp_path, capsys):
    bad = tmp_path / "trunc"
    bad.mkdir()
    data = (toy_run / "checkpoint.safetensors").read_bytes()
    (bad / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
    code, err = run_cli(capsys, "sample", "--checkpoint", str(bad), "--out", str(tmp_path / "s.npz"))
    assert code == 2 and "corrupt" in err
    before = (toy_run / "checkpoint.safetensors").read_bytes()
    code, err = run_cli(capsys, "train", "--data", "toy:moons", "--out", str(toy_run), "--steps", "3")
    assert code == 2 and "--resume" in err
    assert (toy_run / "checkpoint.safetensors").read_bytes() == before


def test_checkpoint_of_another_model_is_refused(toy_run, digits_run, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    mixed = tmp_path / "mixed.safetensors"
    with safe_open(str(digits_run / "checkpoint.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(toy_run / "checkpoint.safetensors")), str(mixed), metadata=meta)
    code, err = run_cli(capsys, "sample", "--checkpoint", str(mixed), "--out", str(tmp_path / "s.npz"))
    assert code == 2 and "does not fit" in err


def test_conditional_run_writes_labels(tmp_path):
    run = tmp_path / "cond"
    assert main(["train", "--data", "toy:gmm", "--conditional", "--out", str(run), "--steps", "5", "--batch-size", "32",
                 "--quiet"]) == 0
    out = tmp_path / "c.npz"
    assert main(["sample", "--checkpoint", str(run), "--n", "20", "--nfe", "10", "--out", str(out), "--quiet"]) == 0
    z = np.load(out)
    assert z["samples"].shape == (20, 2) and z["labels"].tolist() == [i % 8 for i in range(20)]


def test_yaml_config_equals_toml_config(tmp_path):
    from difflab.config import load_config
    (tmp_path / "c.toml").write_text('lr = 0.0005\nschedule = "cosine"\n[net_config]\nhidden = 64\ndepth = 2\n')
    (tmp_path / "c.yaml").write_text("lr: 0.0005\nschedule: cosine\nnet_config:\n  hidden: 64\n  depth: 2\n")
    a = load_config("toy", str(tmp_path / "c.toml"), {"seed": 3})
    b = load_config("toy", str(tmp_path / "c.yaml"), {"seed": 3})
    assert a == b and a.lr == 0.0005 and a.schedule == "cosine" and a.net_config == {"hidden": 64, "depth": 2}


def test_vector_data_keeps_a_config_files_mlp_settings_and_gets_the_skip(tmp_path):
    """Without a preset the default net is the U-Net; vector data switches it to the MLP. A net_config
    written for the MLP (no `net = "mlp"` in the file) must survive that switch (it used to be dropped
    silently), a U-Net's must not reach the MLP, and new vector runs get the MLP's skip and the smooth noise
    embedding unless the file says otherwise."""
    import json

    from difflab.nets.embeddings import NOISE_EMBEDDING_SCALE as s
    (tmp_path / "m.toml").write_text("[net_config]\nhidden = 32\ndepth = 1\nskip = false\nemb_scale = 1.0\n")
    (tmp_path / "n.toml").write_text('net = "mlp"\n[net_config]\nhidden = 32\n')
    cases = [(["--config", str(tmp_path / "m.toml")], {"hidden": 32, "depth": 1, "skip": False, "emb_scale": 1.0}),
             (["--config", str(tmp_path / "n.toml")], {"hidden": 32, "skip": True, "emb_scale": s}),
             (["--preset", "digits"], {"skip": True, "emb_scale": s}),
             ([], {"hidden": 256, "depth": 4, "skip": True, "emb_scale": s})]
    for i, (extra, want) in enumerate(cases):
        run = tmp_path / f"r{i}"
        assert main(["train", "--data", "toy:moons", "--out", str(run), "--steps", "2", "--batch-size", "16",
                     "--quiet", *extra]) == 0
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["net"] == "mlp" and cfg["net_config"] == want, (extra, cfg["net_config"])


def test_resume_with_minutes_replaces_a_step_budget(tmp_path):
    import json
    run = tmp_path / "r"
    assert main(["train", "--data", "toy:moons", "--out", str(run), "--steps", "3", "--quiet"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--minutes", "0.05", "--quiet"]) == 0
    meta = json.loads((run / "config.json").read_text())
    assert meta["steps"] is None and meta["minutes"] == 0.05
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert max(steps) > 3
