"""`difflab sample --class/--guidance/--classifier/--reference/--ilvr-factor/--mask` and `difflab train-classifier`:
good input works end to end, bad input gives one line on stderr and exit 2."""
import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main

torch.set_num_threads(1)

TINY = ('data = "digits"\nnet = "unet"\nbatch_size = 32\nsteps = 3\n'
        '[net_config]\nbase_channels = 16\nchannel_mult = [1, 2]\nnum_res_blocks = 1\nattention_resolutions = [4]\n')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guidance")
    (root / "tiny.toml").write_text(TINY)
    cond, uncond, clf = root / "cond", root / "uncond", root / "clf"
    assert main(["train", "--config", str(root / "tiny.toml"), "--out", str(cond), "--quiet", "--T", "50",
                 "--conditional"]) == 0
    assert main(["train", "--config", str(root / "tiny.toml"), "--out", str(uncond), "--quiet", "--T", "50"]) == 0
    assert main(["train-classifier", "--data", "digits", "--out", str(clf), "--steps", "5", "--T", "50",
                 "--quiet"]) == 0
    ref = np.zeros((8, 8), dtype=np.float64)
    ref[1:7, 3:5] = 1.0  # a "1"
    np.save(root / "ref.npy", ref)
    Image.fromarray((ref * 255).astype(np.uint8)).save(root / "ref.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return {"cond": cond, "uncond": uncond, "clf": clf, "root": root}


def sample(runs, run, tmp_path, *args, out="s.npz"):
    return main(["sample", "--checkpoint", str(runs[run]), "--out", str(tmp_path / out), "--n", "6", "--nfe", "4",
                 "--quiet", *[str(a) for a in args]])


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflab: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_classifier_free_guidance_writes_the_requested_labels(runs, tmp_path):
    assert sample(runs, "cond", tmp_path, "--class", "3", "5", "--guidance", "1.5") == 0
    z = np.load(tmp_path / "s.npz")
    assert z["labels"].tolist() == [3, 5, 3, 5, 3, 5]
    assert z["samples"].shape == (6, 1, 8, 8) and (tmp_path / "s.png").exists()


def test_classifier_guidance_on_an_unconditional_model(runs, tmp_path):
    assert sample(runs, "uncond", tmp_path, "--class", "2", "--classifier", runs["clf"], "--classifier-scale", "2",
                  "--sampler", "ddim") == 0
    assert np.load(tmp_path / "s.npz")["labels"].tolist() == [2] * 6
    assert sample(runs, "uncond", tmp_path, "--class", "2,7", "--classifier", runs["clf"], out="t.npz") == 0
    assert np.load(tmp_path / "t.npz")["labels"].tolist() == [2, 7] * 3


def test_inpainting_keeps_known_pixels_end_to_end(runs, tmp_path):
    root = runs["root"]
    assert sample(runs, "uncond", tmp_path, "--reference", root / "ref.png", "--mask", root / "mask.png",
                  "--resample", "2") == 0
    x = np.load(tmp_path / "s.npz")["samples"]
    ref = np.load(root / "ref.npy")
    np.testing.assert_allclose(x[:, 0, :, :4], np.broadcast_to(ref[:, :4], (6, 8, 4)), atol=1e-6)


def test_ilvr_with_factor_one_returns_the_reference(runs, tmp_path):
    # phi_1 is the identity and the last step's noised reference is the reference itself
    root = runs["root"]
    assert sample(runs, "uncond", tmp_path, "--reference", root / "ref.npy", "--ilvr-factor", "1") == 0
    x = np.load(tmp_path / "s.npz")["samples"]
    np.testing.assert_allclose(x[:, 0], np.broadcast_to(np.load(root / "ref.npy"), (6, 8, 8)), atol=1e-6)
    # factor 2 on the first half of the steps only: runs, and the samples differ from the reference
    assert sample(runs, "uncond", tmp_path, "--reference", root / "ref.npy", "--ilvr-factor", "2",
                  "--ilvr-range", "50:25") == 0
    x = np.load(tmp_path / "s.npz")["samples"][:, 0]
    assert np.abs(x - np.load(root / "ref.npy")).max() > 1e-2


def test_bad_input_gives_one_line_and_exit_2(runs, tmp_path, capsys):
    root = runs["root"]
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--class", "3", "--guidance", "2"),
                   "--guidance needs a class-conditional model")
    one_line_error(capsys, sample(runs, "cond", tmp_path, "--class", "12"), "unknown class 12")
    one_line_error(capsys, sample(runs, "cond", tmp_path, "--class", "x"), "--class must be integers")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--class", "3"), "--class needs a class-conditional")
    one_line_error(capsys, sample(runs, "cond", tmp_path, "--guidance", "-1"), "--guidance must be >= 0")
    big = root / "big.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(big)
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", big, "--ilvr-factor", "2"),
                   "is 16x16 but the model makes 8x8 images")
    np.save(root / "small_mask.npy", np.ones((4, 4)))
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "ref.png", "--mask",
                                  root / "small_mask.npy"), "mask", "is 4x4")
    np.save(root / "half_mask.npy", np.full((8, 8), 0.5))
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "ref.png", "--mask",
                                  root / "half_mask.npy"), "only 0 (to fill) and 1 (known)")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--mask", root / "mask.png"), "need --reference")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "ref.png", "--ilvr-factor", "3"),
                   "positive divisor")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "ref.png"), "exactly one of")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "ref.png", "--ilvr-factor", "2",
                                  "--sampler", "dpmpp_2m"), "--sampler ancestral or ddim")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "nope.png", "--ilvr-factor", "2"),
                   "not found")
    np.save(root / "bright.npy", np.full((8, 8), 255.0))
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "bright.npy", "--ilvr-factor", "2"),
                   "outside [0, 1]")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--classifier", runs["cond"]), "no classifier")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--classifier-scale", "2"), "needs --classifier")
    one_line_error(capsys, sample(runs, "uncond", tmp_path, "--reference", root / "ref.png", "--ilvr-factor", "2",
                                  "--ilvr-range", "10:20"), "--ilvr-range")
    assert not (tmp_path / "s.npz").exists()  # nothing written by a refused command
