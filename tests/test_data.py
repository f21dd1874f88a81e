"""Tests for difflab.data: every source format, conversions, split, and one-line UserErrors."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import data
from difflab.errors import UserError


def _raises_one_line(fn, *args, match=None, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    assert ";" in msg, f"message should name the problem and the fix: {msg}"
    return msg


# ------------------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits(digits):
    ds = digits
    assert len(ds) == 1797 and ds.shape == (1, 8, 8) and ds.x.shape == (1797, 1, 8, 8)
    assert ds.x.dtype == torch.float32 and ds.kind == "image" and ds.levels == 17
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x.min().item() == -1.0 and ds.x.max().item() == 1.0
    assert ds.labels.dtype == torch.int64 and sorted(ds.labels.unique().tolist()) == list(range(10))
    k = (ds.x + 1) / 2 * 16
    assert torch.equal(k, k.round())
    assert torch.equal(data.quantize(data.to_unit(ds.x, ds), 17), data.to_unit(ds.x, ds))


def test_digits_n_and_resize():
    ds = data.load("digits", n=50, image_size=16)
    assert ds.x.shape == (50, 1, 16, 16) and ds.labels.shape == (50,)
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    k = (ds.x + 1) / 2 * 16  # resized data stays on the 17-level grid
    assert torch.allclose(k, k.round(), atol=1e-5)
    assert data.load("digits", image_size=8).x.shape == (1797, 1, 8, 8)


# -------------------------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toys(name):
    ds = data.load(f"toy:{name}", n=2000, seed=3)
    assert ds.x.shape == (2000, 2) and ds.x.dtype == torch.float32
    assert ds.kind == "vector" and ds.levels is None and ds.name == f"toy:{name}" and ds.shape == (2,)
    assert torch.isfinite(ds.x).all()
    std = ds.x.std(0)
    assert ((std > 0.4) & (std < 2.0)).all(), std
    assert torch.equal(ds.x, data.load(f"toy:{name}", n=2000, seed=3).x)
    assert not torch.equal(ds.x, data.load(f"toy:{name}", n=2000, seed=4).x)
    raw = data.TOYS[name](100, 0)
    assert raw.shape == (100, 2) and raw.dtype == np.float32
    assert np.array_equal(raw, data.TOYS[name](100, 0))


def test_toy_default_n_and_gmm_labels():
    assert len(data.load("toy:moons")) == 10000
    g = data.load("toy:gmm", n=500)
    assert g.labels.shape == (500,) and g.num_classes == 8 and int(g.labels.max()) <= 7
    assert data.load("toy:moons").labels is None


# ------------------------------------------------------------------------------------- conversions


def test_unit_conversions_and_quantize():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert torch.equal(data.to_unit(x, "image"), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.equal(data.to_unit(x, "vector"), x)
    assert torch.equal(data.from_unit(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    q = data.quantize(torch.tensor([0.0, 0.1, 0.13, 0.5, 0.99, 1.2, -0.1]), 5)
    assert torch.allclose(q, torch.tensor([0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 0.0]))
    q256 = data.quantize(torch.rand(100), 256) * 255
    assert torch.allclose(q256, q256.round(), atol=1e-4)
    assert torch.equal(data.quantize(x, None), x)


def test_split(digits):
    tr, ho = data.split(digits, 0.1, seed=0)
    assert len(tr) + len(ho) == 1797 and len(ho) == 180
    assert tr.kind == ho.kind == "image" and ho.levels == 17 and ho.num_classes == 10
    tr2, ho2 = data.split(digits, 0.1, seed=0)
    assert torch.equal(tr.x, tr2.x) and torch.equal(ho.labels, ho2.labels)
    _, ho3 = data.split(digits, 0.1, seed=1)
    assert not torch.equal(ho.x, ho3.x)
    both = torch.cat([tr.x, ho.x]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == torch.unique(digits.x.flatten(1), dim=0).shape[0]
    tiny = data.load("toy:gaussian", n=3)
    t, h = data.split(tiny, 0.01)
    assert (len(t), len(h)) == (2, 1)
    _raises_one_line(data.split, digits, 1.0)


# ------------------------------------------------------------------------------------------ arrays


def test_npy_vectors(tmp_path):
    p = tmp_path / "v.npy"
    arr = np.arange(30, dtype=np.float64).reshape(10, 3)
    np.save(p, arr)
    ds = data.load(str(p))
    assert ds.kind == "vector" and ds.x.shape == (10, 3) and ds.x.dtype == torch.float32
    assert ds.levels is None and ds.labels is None and ds.name == str(p)
    assert torch.equal(ds.x, torch.from_numpy(arr).float())
    assert len(data.load(str(p), n=4)) == 4


def test_npy_uint8_images(tmp_path):
    p = tmp_path / "u8.npy"
    arr = np.zeros((4, 3, 6, 6), dtype=np.uint8)
    arr[0] = 255
    arr[1, :, 0, 0] = 51
    np.save(p, arr)
    ds = data.load(str(p))
    assert ds.kind == "image" and ds.x.shape == (4, 3, 6, 6) and ds.levels == 256
    assert ds.x.min() == -1 and ds.x.max() == 1
    assert ds.x[1, 0, 0, 0].item() == pytest.approx(51 / 255 * 2 - 1)
    p3 = tmp_path / "hw.npy"
    np.save(p3, np.full((5, 7, 9), 128, dtype=np.uint8))
    assert data.load(str(p3)).x.shape == (5, 1, 7, 9)
    r = data.load(str(p3), image_size=4)
    assert r.x.shape == (5, 1, 4, 4) and torch.allclose(r.x, torch.full_like(r.x, 128 / 255 * 2 - 1), atol=1e-6)


def test_npy_float_images(tmp_path):
    p = tmp_path / "f.npy"
    arr = np.random.default_rng(0).uniform(0, 1, (3, 1, 5, 5)).astype(np.float32)
    np.save(p, arr)
    ds = data.load(str(p))
    assert ds.levels is None and ds.kind == "image"
    assert torch.allclose(ds.x, torch.from_numpy(arr) * 2 - 1)
    channels_last = tmp_path / "nhwc.npy"
    np.save(channels_last, np.zeros((2, 8, 8, 3), dtype=np.uint8))
    assert data.load(str(channels_last)).shape == (3, 8, 8)


def test_npz_with_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((6, 4), np.float32), labels=np.array([0, 1, 2, 0, 1, 4]))
    ds = data.load(str(p))
    assert ds.x.shape == (6, 4) and ds.labels.dtype == torch.int64 and ds.num_classes == 5
    q = tmp_path / "s.npz"
    np.savez(q, samples=np.zeros((3, 1, 4, 4), np.float32), y=np.array([1, 1, 0]))
    ds = data.load(str(q), n=2)
    assert ds.x.shape == (2, 1, 4, 4) and ds.labels.tolist() == [1, 1] and ds.num_classes == 2
    r = tmp_path / "other.npz"
    np.savez(r, whatever=np.zeros((2, 3)))
    ds = data.load(str(r))
    assert ds.x.shape == (2, 3) and ds.labels is None and ds.num_classes is None


# ----------------------------------------------------------------------------------- image folders


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_grey_and_rgb(tmp_path):
    _png(tmp_path / "a.png", np.full((12, 16), 200, np.uint8))
    _png(tmp_path / "b.png", np.full((20, 10, 3), [255, 0, 0], np.uint8))
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "c.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = data.load(str(tmp_path))
    assert ds.x.shape == (3, 3, 9, 9) and ds.levels == 256 and ds.labels is None
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    assert torch.allclose(ds.x[0], torch.full((3, 9, 9), 200 / 255 * 2 - 1), atol=1e-6)  # grey -> RGB
    assert torch.allclose(ds.x[1, 0], torch.ones(9, 9)) and torch.allclose(ds.x[1, 1], -torch.ones(9, 9))
    grey = tmp_path / "grey"
    for i, size in enumerate([(30, 40), (70, 100)]):
        _png(grey / f"{i}.png", np.full(size, 10 * i, np.uint8))
    ds = data.load(str(grey))
    assert ds.x.shape == (2, 1, 30, 30)
    big = tmp_path / "big"
    _png(big / "x.png", np.zeros((100, 120), np.uint8))
    assert data.load(str(big)).shape == (1, 64, 64)  # default size capped at 64
    assert data.load(str(big), image_size=16).shape == (1, 16, 16)


def test_folder_centre_crop(tmp_path):
    img = np.zeros((10, 20), np.uint8)  # H=10, W=20: centre 10x10 (columns 5..14) is white
    img[:, 5:15] = 255
    _png(tmp_path / "wide.png", img)
    ds = data.load(str(tmp_path))
    assert ds.x.shape == (1, 1, 10, 10) and torch.equal(ds.x, torch.ones(1, 1, 10, 10))
    big = np.zeros((20, 40), np.uint8)  # resized to 10x20 it has the same white centre
    big[:, 10:30] = 255
    _png(tmp_path / "big" / "wide.png", big)
    ds = data.load(str(tmp_path / "big"), image_size=10)
    assert ds.x.shape == (1, 1, 10, 10) and ds.x[..., 1:9].min() > 0.9 and ds.x.min() > 0.5
    ds = data.load(str(tmp_path / "big"), image_size=4)
    assert ds.x.shape == (1, 1, 4, 4) and ds.x[..., 1:3].min() > 0.9


def test_folder_class_subfolders(tmp_path):
    for cls, count in [("cat", 2), ("dog", 3)]:
        for i in range(count):
            _png(tmp_path / cls / f"{i}.png", np.full((8, 8), 40 * i, np.uint8))
    (tmp_path / "empty").mkdir()
    ds = data.load(str(tmp_path))
    assert ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.num_classes == 2 and ds.shape == (1, 8, 8)


# --------------------------------------------------------------------------------- MNIST / CIFAR-10


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">i", magic) + struct.pack(">" + "i" * arr.ndim, *arr.shape) + arr.tobytes()


def _write_mnist(d, n=5, gz=False, prefix="train"):
    d.mkdir(parents=True, exist_ok=True)
    imgs = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28) % 256
    labs = np.arange(n) % 10
    for name, arr, magic in [("images-idx3-ubyte", imgs, 2051), ("labels-idx1-ubyte", labs, 2049)]:
        raw = _idx_bytes(arr.astype(np.uint8), magic)
        if gz:
            with gzip.open(d / f"{prefix}-{name}.gz", "wb") as fh:
                fh.write(raw)
        else:
            (d / f"{prefix}-{name}").write_bytes(raw)
    return imgs, labs


@pytest.mark.parametrize("gz", [False, True])
def test_mnist(tmp_path, gz):
    imgs, labs = _write_mnist(tmp_path / "m", gz=gz)
    ds = data.load(f"mnist:{tmp_path / 'm'}")
    assert ds.x.shape == (5, 1, 28, 28) and ds.levels == 256 and ds.num_classes == 10 and ds.name == "mnist"
    assert torch.allclose(ds.x[:, 0], torch.from_numpy(imgs / 255 * 2 - 1).float(), atol=1e-6)
    assert ds.labels.tolist() == labs.tolist()
    assert data.load(f"mnist:{tmp_path / 'm'}", image_size=14, n=2).x.shape == (2, 1, 14, 14)


def test_mnist_t10k_fallback(tmp_path):
    _write_mnist(tmp_path, n=3, prefix="t10k")
    assert len(data.load(f"mnist:{tmp_path}")) == 3


def _write_cifar(path, n, seed=0):
    rng = np.random.default_rng(seed)
    labs = rng.integers(0, 10, n).astype(np.uint8)
    imgs = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.concatenate([labs[:, None], imgs], axis=1).tobytes())
    return labs, imgs


def test_cifar10(tmp_path):
    l1, i1 = _write_cifar(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin", 3, 0)
    l2, _ = _write_cifar(tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin", 2, 1)
    ds = data.load(f"cifar10:{tmp_path}")
    assert ds.x.shape == (5, 3, 32, 32) and ds.levels == 256 and ds.num_classes == 10 and ds.name == "cifar10"
    assert ds.labels.tolist() == l1.tolist() + l2.tolist()
    assert torch.allclose(ds.x[0], torch.from_numpy(i1[0].reshape(3, 32, 32) / 255 * 2 - 1).float(),
                          atol=1e-6)
    test_only = tmp_path / "t"
    _write_cifar(test_only / "test_batch.bin", 4)
    ds = data.load(f"cifar10:{test_only}", image_size=8, n=3)
    assert ds.x.shape == (3, 3, 8, 8)


# ------------------------------------------------------------------------------------------ errors


def test_bad_specs_and_options(tmp_path):
    assert "toy:NAME" in _raises_one_line(data.load, "imagenet")
    assert "toy:NAME" in _raises_one_line(data.load, "foo:bar")
    _raises_one_line(data.load, "")
    msg = _raises_one_line(data.load, "toy:moon")
    assert "toy:moons" in msg and "toy:spirals" in msg
    assert "file not found" in _raises_one_line(data.load, str(tmp_path / "x.npy"))
    _raises_one_line(data.load, str(tmp_path / "nofolder" / "imgs"))
    for bad in (0, -3, 2.5, True, "32"):
        _raises_one_line(data.load, "digits", image_size=bad)
    for bad in (0, -1):
        _raises_one_line(data.load, "toy:moons", n=bad)
        _raises_one_line(data.load, "digits", n=bad)
    _raises_one_line(data.load, "toy:moons", image_size=8)
    (tmp_path / "x.txt").write_text("hello")
    _raises_one_line(data.load, str(tmp_path / "x.txt"))


def test_bad_arrays(tmp_path):
    def save(name, arr):
        np.save(tmp_path / name, arr)
        return str(tmp_path / name)

    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    _raises_one_line(data.load, str(tmp_path / "corrupt.npy"))
    (tmp_path / "corrupt.npz").write_bytes(b"PK not a zip")
    _raises_one_line(data.load, str(tmp_path / "corrupt.npz"))
    assert "NaN" in _raises_one_line(data.load, save("nan.npy", np.array([[1.0, np.nan]])))
    assert "NaN" in _raises_one_line(data.load, save("inf.npy", np.array([[1.0, np.inf]])))
    assert "dimensions" in _raises_one_line(data.load, save("1d.npy", np.zeros(5)))
    _raises_one_line(data.load, save("5d.npy", np.zeros((1, 1, 1, 1, 1))))
    assert "empty" in _raises_one_line(data.load, save("empty.npy", np.zeros((0, 3))))
    assert "[0, 1]" in _raises_one_line(data.load, save("range.npy", np.full((2, 1, 3, 3), 2.0)))
    _raises_one_line(data.load, save("neg.npy", -np.ones((2, 1, 3, 3), dtype=np.int16)))
    np.savez(tmp_path / "badlab.npz", x=np.zeros((4, 2)), labels=np.array([0, 1, 2]))
    assert "labels" in _raises_one_line(data.load, str(tmp_path / "badlab.npz"))
    np.savez(tmp_path / "onlylab.npz", labels=np.array([0, 1]))
    _raises_one_line(data.load, str(tmp_path / "onlylab.npz"))


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert "no PNG/JPEG" in _raises_one_line(data.load, str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _raises_one_line(data.load, str(broken))


def test_bad_mnist_and_cifar(tmp_path):
    _raises_one_line(data.load, "mnist:")
    _raises_one_line(data.load, f"mnist:{tmp_path / 'missing'}")
    _raises_one_line(data.load, f"mnist:{tmp_path}")  # folder without files
    d = tmp_path / "trunc"
    _write_mnist(d)
    raw = (d / "train-images-idx3-ubyte").read_bytes()
    (d / "train-images-idx3-ubyte").write_bytes(raw[:-100])
    assert "truncated" in _raises_one_line(data.load, f"mnist:{d}")
    (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + raw[4:])
    assert "magic" in _raises_one_line(data.load, f"mnist:{d}")
    d2 = tmp_path / "mismatch"
    _write_mnist(d2, n=4)
    (d2 / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8), 2049))
    _raises_one_line(data.load, f"mnist:{d2}")
    d3 = tmp_path / "badgz"
    d3.mkdir()
    (d3 / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    (d3 / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    _raises_one_line(data.load, f"mnist:{d3}")
    c = tmp_path / "c"
    c.mkdir()
    _raises_one_line(data.load, f"cifar10:{c}")
    (c / "data_batch_1.bin").write_bytes(b"\x00" * 3000)
    _raises_one_line(data.load, f"cifar10:{c}")
