"""D3PM, VAE and HVAE through the same CLI: `difflab train --preset ...`, `difflab sample`, `difflab eval`."""
import json

import numpy as np
import pytest

from difflab.cli import main

TINY_UNET = ('[net_config]\nbase_channels = 8\nchannel_mult = [1, 2]\nnum_res_blocks = 1\n'
             'attention_resolutions = []\ndropout = 0.0\n')


@pytest.mark.parametrize("preset,extra", [("d3pm-digits", 'T = 6\nbatch_size = 16\n' + TINY_UNET),
                                          ("vae-digits", 'batch_size = 32\n[net_config]\nhidden = 16\nlatent = 4\n'),
                                          ("hvae-digits", 'batch_size = 32\n[net_config]\nhidden = 16\nlatent = 4\n'
                                                          'latent2 = 2\n')])
def test_train_sample_eval(tmp_path, capsys, preset, extra):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(extra)
    run = tmp_path / "run"
    assert main(["train", "--preset", preset, "--config", str(cfg), "--data", "digits", "--out", str(run),
                 "--steps", "3", "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == preset.split("-")[0] and saved["data_levels"] == 17
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run), "--n", "5", "--out", str(out), "--quiet"]) == 0
    x = np.load(out)["samples"]
    assert x.shape == (5, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    np.testing.assert_allclose(x * 16, np.round(x * 16), atol=1e-5)   # on the 17-level grid
    js = tmp_path / "m.json"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--metrics", "elbo", "--n", "6", "--json", str(js),
                 "--quiet"]) == 0
    res = json.loads(js.read_text())["elbo"]
    assert res["model"] == saved["model"] and res["n"] == 6 and res["dim"] == 64
    # an untrained model cannot beat log2(17) = 4.09 bits/dim of the uniform distribution by much; finite & > 0
    assert 0 < res["bits_per_dim"] < 60


def test_transition_flag_and_bad_transition(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('T = 4\nbatch_size = 8\n' + TINY_UNET)
    run = tmp_path / "run"
    assert main(["train", "--preset", "d3pm-digits", "--config", str(cfg), "--transition", "gaussian",
                 "--out", str(run), "--steps", "1", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["transition"] == "gaussian"
    code = main(["train", "--preset", "d3pm-digits", "--transition", "zigzag", "--out", str(tmp_path / "r2"),
                 "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "transition" in err and len(err.strip().splitlines()) == 1
    code = main(["train", "--preset", "d3pm-digits", "--data", "toy:moons", "--out", str(tmp_path / "r3"),
                 "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "discrete levels" in err
