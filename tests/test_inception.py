"""Inception FID (difflab.inception, metric inception_fid): the network's parameter names and shapes are those
of pytorch-fid's pt_inception-2015-12-05 state_dict (a table written from pytorch-fid's and torchvision's
inception.py, sharing no code with difflab), files load through the public loader (.pth, legacy .pth without
BatchNorm batch counters, .safetensors, TorchScript), and `difflab eval` runs end to end or stops with one line.
No real Inception weights are needed: random ones stand in."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflab import inception as I
from difflab.cli import main
from difflab.errors import UserError

# ------------------------------------------------------------------ the reference layout, written out by hand
# Sources: pytorch-fid src/pytorch_fid/inception.py (fid_inception_v3: torchvision's Inception3 with
# num_classes=1008, aux_logits=False, FIDInceptionA/C/E_1/E_2 keeping the parent blocks' layers) and
# torchvision/models/inception.py (BasicConv2d = conv without bias + BatchNorm2d; the blocks' layer tables).
# Each entry: (name, in channels, out channels, kernel height, kernel width).


def _block_a(cin, pool):
    return [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
            ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", cin, pool, 1, 1)]


def _block_b(cin):
    return [("branch3x3", cin, 384, 3, 3), ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3),
            ("branch3x3dbl_3", 96, 96, 3, 3)]


def _block_c(cin, c7):
    return [("branch1x1", cin, 192, 1, 1), ("branch7x7_1", cin, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
            ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", cin, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
            ("branch_pool", cin, 192, 1, 1)]


def _block_d(cin):
    return [("branch3x3_1", cin, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3), ("branch7x7x3_1", cin, 192, 1, 1),
            ("branch7x7x3_2", 192, 192, 1, 7), ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]


def _block_e(cin):
    return [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
            ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1), ("branch_pool", cin, 192, 1, 1)]


# (module name, its convs, its output channels: the concatenation of its branches, pools passing cin through)
REFERENCE = [
    ("Conv2d_1a_3x3", [("", 3, 32, 3, 3)], 32), ("Conv2d_2a_3x3", [("", 32, 32, 3, 3)], 32),
    ("Conv2d_2b_3x3", [("", 32, 64, 3, 3)], 64), ("Conv2d_3b_1x1", [("", 64, 80, 1, 1)], 80),
    ("Conv2d_4a_3x3", [("", 80, 192, 3, 3)], 192),
    ("Mixed_5b", _block_a(192, 32), 64 + 64 + 96 + 32), ("Mixed_5c", _block_a(256, 64), 64 + 64 + 96 + 64),
    ("Mixed_5d", _block_a(288, 64), 288), ("Mixed_6a", _block_b(288), 384 + 96 + 288),
    ("Mixed_6b", _block_c(768, 128), 4 * 192), ("Mixed_6c", _block_c(768, 160), 768),
    ("Mixed_6d", _block_c(768, 160), 768), ("Mixed_6e", _block_c(768, 192), 768),
    ("Mixed_7a", _block_d(768), 320 + 192 + 768), ("Mixed_7b", _block_e(1280), 320 + 2 * 384 + 2 * 384 + 192),
    ("Mixed_7c", _block_e(2048), 2048),
]


def _reference_shapes() -> dict[str, tuple]:
    out = {}
    for module, convs, _ in REFERENCE:
        for name, cin, cout, kh, kw in convs:
            p = f"{module}.{name}." if name else f"{module}."
            out[p + "conv.weight"] = (cout, cin, kh, kw)
            for b in ("weight", "bias", "running_mean", "running_var"):
                out[p + "bn." + b] = (cout,)
            out[p + "bn.num_batches_tracked"] = ()
    out["fc.weight"], out["fc.bias"] = (1008, 2048), (1008,)
    return out


def test_reference_table_is_consistent():
    """Each module's input channels are the previous module's output (the table has no typo)."""
    prev = 3
    for module, convs, cout in REFERENCE:
        firsts = [cin for name, cin, *_ in convs if name.endswith(("_1", "1x1", "pool", "3x3")) or name == ""]
        assert firsts and all(c == prev for c in firsts), module
        prev = cout
    assert prev == 2048


def test_state_dict_names_and_shapes_are_pytorch_fids():
    sd = I.FIDInceptionV3().state_dict()
    want = _reference_shapes()
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    assert len(sd) == 566 and sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    # torchvision's Inception3 has 27,161,264 parameters (its documented num_params); without the auxiliary
    # head (conv0 98,560 + conv1 2,459,136 + fc 769,000) and with 1008 classes (+ 8 x 2049): 23,850,960.
    n_params = sum(p.numel() for p in I.FIDInceptionV3().parameters())
    assert n_params == 27_161_264 - (98_560 + 2_459_136 + 769_000) + 8 * 2049 == 23_850_960
    assert sum(int(np.prod(s)) for k, s in want.items() if not k.endswith("num_batches_tracked")) == 23_885_392


# ------------------------------------------------------------------------------------------ loading files


@pytest.fixture(scope="module")
def random_net():
    """A FID Inception with random weights that keep activations O(1) (He init, random BN statistics)."""
    g = torch.Generator().manual_seed(0)
    net = I.FIDInceptionV3().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return net


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pth_loads_and_gives_2048_features_of_grey_8x8(random_net, tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-random.pth"
    torch.save(random_net.state_dict(), path)
    model = I.load_inception(path)
    assert model.kind == "state_dict" and _same_weights(model.net, random_net)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1       # [-1, 1], grey
    f = I.inception_features(model, x, batch_size=2)
    assert f.shape == (3, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
    # preprocessing: grey repeated to RGB, bilinear (align_corners=False) to 299 x 299, values kept in [-1, 1]
    with torch.inference_mode():
        want = random_net(F.interpolate(x[:1].repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear",
                                        align_corners=False))
    assert f[0].float() == pytest.approx(want[0], rel=1e-4, abs=1e-5)
    assert f.std(0).mean() > 1e-3                     # the features depend on the image


def test_legacy_pth_without_batch_counters_and_safetensors_load(random_net, tmp_path):
    """An old-format .pth lacking BatchNorm's num_batches_tracked (files saved before torch 0.4.1) and a
    .safetensors of the same tensors load with all weights; a wrong file stops with one line."""
    from safetensors.torch import save_file
    sd = {k: v for k, v in random_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    legacy = tmp_path / "legacy.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert _same_weights(I.load_inception(legacy).net, random_net)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in random_net.state_dict().items()}, str(st))
    assert _same_weights(I.load_inception(st).net, random_net)
    bad = dict(sd)
    bad["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(10, 2048, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="wrong shape Mixed_7c.branch_pool.conv.weight"):
        I.load_inception(tmp_path / "bad.pth")
    with pytest.raises(UserError, match="never downloads"):
        I.load_inception(tmp_path / "absent.pth")


# ------------------------------------------------------------------------------------------- TorchScript


class _TinyScripted(torch.nn.Module):
    """StyleGAN2-ADA's call convention: model(uint8 images (N, 3, H, W) in 0..255, return_features=True)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3 and return_features
        f = x.float()
        return torch.cat([F.adaptive_avg_pool2d(f, 2).flatten(1), f.amax(dim=(2, 3)), f.amin(dim=(2, 3))], 1)


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_TinyScripted()), str(path))
    return path


def test_torchscript_file_is_loaded_and_called_with_uint8(tiny_pt):
    model = I.load_inception(tiny_pt)
    assert model.kind == "torchscript"
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    f = I.inception_features(model, x, batch_size=2)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)
    assert f.shape == (5, 18) and torch.allclose(f, _TinyScripted()(u8, True).double())


# ------------------------------------------------------------------------------------- difflab eval CLI


def _noise_npz(path, n=200):
    np.savez(path, samples=np.random.default_rng(0).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32))
    return str(path)


def test_eval_without_inception_path_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(I.ENV_VAR, raising=False)
    out = tmp_path / "m.json"
    args = ["eval", "--samples", _noise_npz(tmp_path / "s.npz"), "--data", "digits", "--json", str(out)]
    assert main(args + ["--metrics", "frechet,inception_fid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["difflab: error: inception_fid needs --inception PATH (a pt_inception-2015-12-05 .pth or "
                   "TorchScript file on disk; difflab never downloads it)"]
    assert main(args + ["--metrics", "inception_fid", "--inception", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pth" in err[0] and "never downloads" in err[0]
    assert not out.exists()


def test_eval_inception_fid_end_to_end(tiny_pt, tmp_path, capsys, monkeypatch):
    """Noise images against the digits: the value is far above the floor (real digits at the same n); the
    figure has the fields of `frechet`. The environment variable stands in for the flag; vectors are refused."""
    monkeypatch.delenv(I.ENV_VAR, raising=False)
    out = tmp_path / "m.json"
    s = _noise_npz(tmp_path / "s.npz")
    assert main(["eval", "--samples", s, "--data", "digits", "--metrics", "inception_fid", "--inception",
                 str(tiny_pt), "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())["inception_fid"]
    assert {"value", "se", "floor", "floor_se", "n", "chunks", "floor_chunks", "better", "reference_n"} <= set(r)
    assert r["n"] == 200 and r["reference_n"] == 180 and r["floor_chunks"] == 8 and r["better"] == "lower"
    assert all(np.isfinite(r[k]) for k in ("value", "se", "floor", "floor_se"))
    assert r["value"] > r["floor"] + 8 * (r["se"] + r["floor_se"])
    assert "torchscript" in r["space"]
    monkeypatch.setenv(I.ENV_VAR, str(tiny_pt))
    out2 = tmp_path / "m2.json"
    assert main(["eval", "--samples", s, "--data", "digits", "--metrics", "inception_fid", "--json", str(out2),
                 "--quiet"]) == 0
    assert json.loads(out2.read_text())["inception_fid"]["value"] == pytest.approx(r["value"])
    capsys.readouterr()
    v = tmp_path / "v.npz"
    np.savez(v, samples=np.zeros((10, 2), np.float32))
    assert main(["eval", "--samples", str(v), "--data", "toy:moons", "--metrics", "inception_fid"]) == 2
    assert "needs image data" in capsys.readouterr().err
    assert main(["eval", "--samples", _noise_npz(tmp_path / "three.npz", 3), "--data", "digits", "--metrics",
                 "inception_fid"]) == 2
    assert "at least 4 samples" in capsys.readouterr().err
