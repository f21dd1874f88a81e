"""Data sets for difflab: bundled digits, 2-D toys, .npy/.npz arrays, image folders, MNIST and CIFAR-10.

Everything is local and deterministic; nothing is ever downloaded. Images are float32 (N, C, H, W) in
[-1, 1]; vectors are float32 (N, D) in data units. Mistakes in what the user asked for raise `UserError`.
"""
from __future__ import annotations

import gzip
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

__all__ = ["SPEC_HELP", "TOYS", "Dataset", "from_unit", "load", "quantize", "split", "to_unit"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_DEFAULT_TOY_N = 10000
_MAX_DEFAULT_FOLDER_SIZE = 64


@dataclass
class Dataset:
    """A whole data set in memory.

    x: float32, images (N, C, H, W) in [-1, 1] or vectors (N, D) in data units.
    labels: int64 (N,) or None.  kind: "image" or "vector".
    levels: discrete levels of the raw data (17 for digits, 256 for 8-bit images) or None if continuous.
    num_classes: number of label classes, or None without labels."""

    x: torch.Tensor
    labels: torch.Tensor | None
    kind: str
    levels: int | None
    name: str
    num_classes: int | None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple:
        """Shape of one example: (C, H, W) for images, (D,) for vectors."""
        return tuple(self.x.shape[1:])


# --------------------------------------------------------------------------------------------- helpers


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _check_positive_int(value, what: str, fix: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserError(f"{what} must be a positive integer, got {value!r}; {fix}")


# ------------------------------------------------------------------------------------------ 2-D toys


def _shuffled(x: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None):
    perm = rng.permutation(len(x))
    return (x[perm], None if labels is None else labels[perm])


def _gmm_with_labels(n: int, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    comp = rng.integers(0, 8, size=n)
    angle = comp * (2 * math.pi / 8)
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = centres + 0.1 * rng.standard_normal((n, 2))
    return x.astype(np.float32), comp.astype(np.int64)


def _gmm(n: int, seed=0) -> np.ndarray:
    """8 isotropic Gaussians (std 0.1) evenly spaced on a circle of radius 2. (n, 2)."""
    return _gmm_with_labels(n, seed)[0]


def _moons(n: int, seed=0) -> np.ndarray:
    """Two interleaving half circles with noise 0.05, centred and scaled to std ~1. (n, 2)."""
    rng = _rng(seed)
    n_out = n // 2
    t = rng.uniform(0, math.pi, size=n)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where((np.arange(n) < n_out)[:, None], outer, inner)
    x = x + 0.05 * rng.standard_normal((n, 2))
    x = (x - np.array([0.5, 0.25])) * 1.4
    return _shuffled(x, rng)[0].astype(np.float32)


def _swissroll(n: int, seed=0) -> np.ndarray:
    """2-D swiss roll (t cos t, t sin t), t in [1.5pi, 4.5pi], noise, scaled to std ~1. (n, 2)."""
    rng = _rng(seed)
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(size=n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.3 * rng.standard_normal((n, 2))
    return (x / 7.0).astype(np.float32)


def _circles(n: int, seed=0) -> np.ndarray:
    """Two concentric circles (radii 1 and 0.5, noise 0.03), scaled to std ~1. (n, 2)."""
    rng = _rng(seed)
    t = rng.uniform(0, 2 * math.pi, size=n)
    radius = np.where(np.arange(n) < n // 2, 1.0, 0.5)
    x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1) + 0.03 * rng.standard_normal((n, 2))
    return (_shuffled(x, rng)[0] * 1.8).astype(np.float32)


def _checkerboard(n: int, seed=0) -> np.ndarray:
    """Uniform density on the black squares of a 4x4 checkerboard over [-2, 2]^2. (n, 2)."""
    rng = _rng(seed)
    x1 = rng.uniform(-2, 2, size=n)
    x2 = rng.uniform(0, 1, size=n) - 2 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1).astype(np.float32)


def _spirals(n: int, seed=0) -> np.ndarray:
    """Two interleaved spirals, scaled to std ~1. (n, 2)."""
    rng = _rng(seed)
    m = np.sqrt(rng.uniform(size=n)) * 3 * math.pi
    x = np.stack([-np.cos(m) * m, np.sin(m) * m], axis=1) + 0.5 * rng.uniform(size=(n, 2))
    x = np.where((np.arange(n) < n // 2)[:, None], x, -x)
    return (_shuffled(x, rng)[0] / 4.75).astype(np.float32)


def _gaussian(n: int, seed=0) -> np.ndarray:
    """A single standard 2-D normal. (n, 2)."""
    return _rng(seed).standard_normal((n, 2)).astype(np.float32)


TOYS: dict[str, Callable[..., np.ndarray]] = {
    "gmm": _gmm,
    "moons": _moons,
    "swissroll": _swissroll,
    "circles": _circles,
    "checkerboard": _checkerboard,
    "spirals": _spirals,
    "gaussian": _gaussian,
}

SPEC_HELP = ("digits | toy:NAME (" + ", ".join(TOYS) + ") | PATH.npy | PATH.npz | FOLDER of PNG/JPEG images"
             " | mnist:DIR | cifar10:DIR")


# ------------------------------------------------------------------------------------- conversions


def to_unit(x: torch.Tensor, ds_or_kind) -> torch.Tensor:
    """Data units -> display units. Images (..., C, H, W): [-1, 1] -> [0, 1], clamped. Vectors: unchanged."""
    kind = ds_or_kind.kind if isinstance(ds_or_kind, Dataset) else ds_or_kind
    if kind == "image":
        return ((x + 1) / 2).clamp(0, 1)
    if kind == "vector":
        return x
    raise ValueError(f"kind must be 'image' or 'vector' (or a Dataset), got {ds_or_kind!r}")


def from_unit(x01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1]; any shape."""
    return x01 * 2 - 1


def quantize(x01: torch.Tensor, levels: int | None) -> torch.Tensor:
    """Round values in [0, 1] (clamped first) to the grid k / (levels - 1); any shape. levels None: unchanged."""
    if levels is None:
        return x01
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise UserError(f"levels must be an integer >= 2, got {levels!r}; use e.g. 256 for 8-bit images")
    k = levels - 1
    return torch.round(x01.clamp(0, 1) * k) / k


def split(ds: Dataset, holdout: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic split into (train, held-out); each keeps the original order of its examples.

    round(N * holdout) examples are held out (at least 1 when holdout > 0 and N >= 2, never all of them)."""
    if not (0.0 <= float(holdout) < 1.0):
        raise UserError(f"holdout fraction must be in [0, 1), got {holdout!r}; use e.g. 0.1")
    n = len(ds)
    n_hold = round(n * holdout)
    if holdout > 0 and n >= 2:
        n_hold = max(1, n_hold)
    n_hold = min(n_hold, max(n - 1, 0))
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    hold_idx = perm[:n_hold].sort().values
    train_idx = perm[n_hold:].sort().values

    def take(idx):
        return replace(ds, x=ds.x[idx], labels=None if ds.labels is None else ds.labels[idx])

    return take(train_idx), take(hold_idx)


# ------------------------------------------------------------------------------------------- loading


def load(spec: str, image_size: int | None = None, n: int | None = None, seed: int = 0) -> Dataset:
    """Load a data set from a spec (see SPEC_HELP).

    Images come back as (N, C, H, W) float32 in [-1, 1], resized to image_size x image_size when given;
    vectors as (N, D) float32. n keeps the first n examples (toys: generates n points, default 10000);
    seed only affects toys."""
    _check_positive_int(image_size, "image_size", "give e.g. --image-size 32")
    _check_positive_int(n, "n", "give a number of examples >= 1")
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise UserError(f"no data given ({spec!r}); give one of: {SPEC_HELP}")
    spec = str(spec).strip()
    low = spec.lower()

    if low == "digits":
        ds = _load_digits(n)
    elif low.startswith("toy:") or low == "toy":
        return _load_toy(spec, image_size, n, seed)
    elif low.startswith("mnist:") or low == "mnist":
        ds = _load_mnist(spec.partition(":")[2], n)
    elif low.startswith("cifar10:") or low == "cifar10":
        ds = _load_cifar10(spec.partition(":")[2], n)
    else:
        ds = _load_path(spec, image_size, n)

    if ds.kind == "vector":
        if image_size is not None:
            raise UserError(f"image_size was given but '{spec}' holds vectors, not images; drop --image-size")
        return ds
    if image_size is not None and ds.x.shape[-2:] != (image_size, image_size):
        ds.x = _resize_tensor(ds.x, image_size, ds.levels)
    return ds


def _first_n(x, labels, n):
    if n is None:
        return x, labels
    return x[:n], (None if labels is None else labels[:n])


def _resize_tensor(x: torch.Tensor, size: int, levels: int | None) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, C, size, size): bilinear resize of the short side, centre crop.
    When the data has discrete levels, the result is rounded back onto that grid."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=bool(nh < h or nw < w))
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size].clamp(-1, 1)
    if levels is not None:
        x = from_unit(quantize(to_unit(x, "image"), levels))
    return x.contiguous().float()


def _load_digits(n) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.data.reshape(-1, 1, 8, 8) / 16.0 * 2 - 1).astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    x, y = _first_n(x, y, n)
    return Dataset(x=x, labels=y, kind="image", levels=17, name="digits", num_classes=10)


def _load_toy(spec, image_size, n, seed) -> Dataset:
    name = spec.partition(":")[2].strip().lower()
    if name not in TOYS:
        choices = ", ".join(f"toy:{k}" for k in TOYS)
        raise UserError(f"unknown toy data set '{name}' in '{spec}'; give one of: {choices}")
    if image_size is not None:
        raise UserError(f"image_size was given but '{spec}' holds 2-D points, not images; drop --image-size")
    count = _DEFAULT_TOY_N if n is None else int(n)
    if name == "gmm":
        pts, comp = _gmm_with_labels(count, seed)
        return Dataset(x=torch.from_numpy(pts), labels=torch.from_numpy(comp), kind="vector", levels=None,
                       name="toy:gmm", num_classes=8)
    pts = TOYS[name](count, seed)
    return Dataset(x=torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)), labels=None,
                   kind="vector", levels=None, name=f"toy:{name}", num_classes=None)


# ----------------------------------------------------------------------------------- arrays on disk


def _load_path(spec: str, image_size, n) -> Dataset:
    path = Path(spec).expanduser()
    if not path.exists():
        if path.suffix.lower() in (".npy", ".npz"):
            raise UserError(f"cannot read '{spec}': file not found; give a path to an existing .npy/.npz file")
        if re.fullmatch(r"[A-Za-z0-9_]+:.*", spec) and not re.fullmatch(r"[A-Za-z]:[\\/].*", spec):
            raise UserError(f"unknown data '{spec}'; give one of: {SPEC_HELP}")
        if "/" in spec or "\\" in spec or path.suffix:
            raise UserError(f"cannot read '{spec}': no such file or folder; give an existing .npy/.npz file "
                            f"or folder of images")
        raise UserError(f"unknown data '{spec}' (not a known data set, file or folder); give one of: {SPEC_HELP}")
    if path.is_dir():
        return _load_folder(path, spec, image_size, n)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = _np_load(path, spec)
        labels = None
    elif suffix == ".npz":
        arr, labels = _load_npz(path, spec)
    else:
        raise UserError(f"cannot read '{spec}': unsupported file type '{path.suffix}'; "
                        f"give a .npy/.npz file or a folder of images")
    return _from_array(arr, labels, spec, n)


def _np_load(path: Path, spec: str):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure to parse means a bad file
        raise UserError(f"cannot read '{spec}': not a valid {path.suffix} file ({_one_line(e)}); "
                        f"save it with numpy.save/numpy.savez") from None


def _load_npz(path: Path, spec: str):
    z = _np_load(path, spec)
    try:
        with z:
            keys = list(z.files)
            data_key = next((k for k in ("x", "samples", "data") if k in keys), None)
            if data_key is None:
                data_key = next((k for k in keys if k not in ("labels", "y")), None)
            if data_key is None:
                raise UserError(f"cannot read '{spec}': the .npz holds no data array (keys: {keys or 'none'}); "
                                f"save the data under key 'x'")
            arr = z[data_key]
            label_key = next((k for k in ("labels", "y") if k in keys), None)
            labels = z[label_key] if label_key is not None else None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read '{spec}': corrupt .npz file ({_one_line(e)}); "
                        f"save it again with numpy.savez") from None
    return arr, labels


def _check_labels(labels, count: int, spec: str) -> tuple[torch.Tensor, int]:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != count:
        raise UserError(f"'{spec}': labels have shape {tuple(lab.shape)} but there are {count} examples; "
                        f"give one integer label per example")
    whole = lab.dtype.kind in "iub" or (lab.dtype.kind == "f" and np.all(np.isfinite(lab))
                                        and np.all(lab == np.round(lab)))
    if not whole:
        raise UserError(f"'{spec}': labels must be whole numbers (got dtype {lab.dtype}); "
                        f"store class indices 0, 1, 2, ...")
    lab = lab.astype(np.int64)
    if count and lab.min() < 0:
        raise UserError(f"'{spec}': labels must be >= 0 (found {lab.min()}); store class indices 0, 1, 2, ...")
    return torch.from_numpy(np.ascontiguousarray(lab)), (int(lab.max()) + 1 if count else 0)


def _from_array(arr: np.ndarray, labels, spec: str, n) -> Dataset:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise UserError(f"'{spec}': array has dtype {arr.dtype}, not numbers; save a float or uint8 array")
    if arr.ndim not in (2, 3, 4):
        raise UserError(f"'{spec}': array has shape {tuple(arr.shape)} ({arr.ndim} dimensions); give (N, D) "
                        f"vectors, (N, H, W) or (N, C, H, W) images")
    if arr.size == 0:
        raise UserError(f"'{spec}': array of shape {tuple(arr.shape)} is empty; give at least one example")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise UserError(f"'{spec}': array has {bad} NaN/inf values; remove or replace them before loading")
    count = arr.shape[0]
    lab_t, num_classes = (None, None)
    if labels is not None:
        lab_t, num_classes = _check_labels(labels, count, spec)
    arr, lab_t = _first_n(arr, lab_t, n)

    if arr.ndim == 2:
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return Dataset(x=x, labels=lab_t, kind="vector", levels=None, name=spec, num_classes=num_classes)

    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.shape[1] not in (1, 2, 3, 4) and arr.shape[-1] in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)  # channels-last (N, H, W, C) -> (N, C, H, W)
    if arr.dtype.kind == "b":
        x01, levels = arr.astype(np.float32), 2
    elif arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise UserError(f"'{spec}': integer images must be in 0..255, found {lo}..{hi}; "
                            f"save 8-bit images (uint8) or floats in [0, 1]")
        x01, levels = arr.astype(np.float32) / 255.0, 256
    else:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise UserError(f"'{spec}': float images must be in [0, 1], found [{lo:.4g}, {hi:.4g}]; "
                            f"rescale to [0, 1] (e.g. (x + 1) / 2 for [-1, 1]) or save uint8 0..255")
        x01, levels = np.clip(arr.astype(np.float32), 0, 1), None
    x = from_unit(torch.from_numpy(np.ascontiguousarray(x01))).clamp(-1, 1)
    return Dataset(x=x, labels=lab_t, kind="image", levels=levels, name=spec, num_classes=num_classes)


# ------------------------------------------------------------------------------------ image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def _load_folder(folder: Path, spec: str, image_size, n) -> Dataset:
    from PIL import Image, ImageOps

    top = _image_files(folder)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = list(top)
    labels: list[int] | None = None
    num_classes = None
    if top:
        for d in subdirs:  # mixed layout: everything, unlabelled
            files += [f for f in sorted(d.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                      and not any(part.startswith(".") for part in f.relative_to(folder).parts)]
    else:
        classes = [(d, _image_files(d)) for d in subdirs]
        classes = [(d, fs) for d, fs in classes if fs]
        labels = []
        for k, (_, fs) in enumerate(classes):
            files += fs
            labels += [k] * len(fs)
        num_classes = len(classes)
    if not files:
        raise UserError(f"folder '{spec}' has no PNG/JPEG images; put images in it (or one sub-folder per class)")
    if n is not None:
        files = files[:n]
        labels = None if labels is None else labels[:n]

    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = ImageOps.exif_transpose(im)
                im.load()
                images.append(im.copy())
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
            raise UserError(f"cannot read image '{f}': {_one_line(e)}; remove or replace the file") from None

    grey_modes = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
    grey = all(im.mode in grey_modes for im in images)
    mode = "L" if grey else "RGB"
    size = image_size or min(_MAX_DEFAULT_FOLDER_SIZE, min(min(im.size) for im in images))
    out = np.empty((len(images), 1 if grey else 3, size, size), dtype=np.uint8)
    for i, im in enumerate(images):
        im = im.convert(mode)
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR)
        left, top_ = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top_, left + size, top_ + size))
        a = np.asarray(im, dtype=np.uint8)
        out[i] = a[None] if grey else a.transpose(2, 0, 1)
    x = from_unit(torch.from_numpy(out).float() / 255.0)
    lab_t = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return Dataset(x=x, labels=lab_t, kind="image", levels=256, name=spec, num_classes=num_classes)


# -------------------------------------------------------------------------------- MNIST / CIFAR-10


def _data_dir(dirname: str, what: str) -> Path:
    if not dirname.strip():
        raise UserError(f"'{what}' needs a folder; give {what}:DIR with the {what} files in DIR")
    d = Path(dirname.strip()).expanduser()
    if not d.is_dir():
        raise UserError(f"cannot read '{what}:{dirname}': folder not found; give {what}:DIR for an existing "
                        f"folder holding the {what} files")
    return d


def _read_maybe_gz(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read '{path}': {_one_line(e)}; download the file again") from None


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    raw = _read_maybe_gz(path)
    if len(raw) < 4:
        raise UserError(f"cannot read '{path}': truncated idx file ({len(raw)} bytes); download it again")
    (got,) = struct.unpack(">i", raw[:4])
    if got != magic:
        raise UserError(f"cannot read '{path}': not an MNIST idx file (magic number {got}, expected {magic}); "
                        f"give the original MNIST files")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"cannot read '{path}': truncated idx header; download the file again")
    dims = struct.unpack(">" + "i" * ndim, raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header < expected:
        raise UserError(f"cannot read '{path}': truncated idx file ({len(raw) - header} of {expected} data "
                        f"bytes); download it again")
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _find_file(d: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _load_mnist(dirname: str, n) -> Dataset:
    d = _data_dir(dirname, "mnist")
    for prefix in ("train", "t10k"):
        img = _find_file(d, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
        lab = _find_file(d, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
        if img is not None and lab is not None:
            break
    else:
        raise UserError(f"no MNIST files in '{d}'; put train-images-idx3-ubyte and train-labels-idx1-ubyte "
                        f"(or their .gz / t10k- versions) there")
    images = _parse_idx(img, 2051)
    labels = _parse_idx(lab, 2049)
    if images.ndim != 3 or labels.ndim != 1:
        raise UserError(f"cannot read '{img}': unexpected idx shapes {images.shape} and {labels.shape}; "
                        f"give the original MNIST files")
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"MNIST in '{d}': {images.shape[0]} images but {labels.shape[0]} labels; "
                        f"use matching image and label files")
    if images.shape[0] == 0:
        raise UserError(f"MNIST in '{d}' holds no images; download the files again")
    images, labels = _first_n(images, labels, n)
    x = from_unit(torch.from_numpy(images[:, None].astype(np.float32) / 255.0))
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x=x, labels=y, kind="image", levels=256, name="mnist", num_classes=10)


def _load_cifar10(dirname: str, n) -> Dataset:
    d = _data_dir(dirname, "cifar10")
    record = 1 + 3 * 32 * 32
    files: list[Path] = []
    for base in (d, d / "cifar-10-batches-bin"):
        files = [base / f"data_batch_{i}.bin" for i in range(1, 6) if (base / f"data_batch_{i}.bin").is_file()]
        if not files and (base / "test_batch.bin").is_file():
            files = [base / "test_batch.bin"]
        if files:
            break
    if not files:
        raise UserError(f"no CIFAR-10 files in '{d}'; put data_batch_1.bin .. data_batch_5.bin (binary version) "
                        f"there or in {d}/cifar-10-batches-bin/")
    chunks = []
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read '{f}': {_one_line(e)}; download the file again") from None
        if len(raw) == 0 or len(raw) % record:
            raise UserError(f"cannot read '{f}': {len(raw)} bytes is not a whole number of {record}-byte "
                            f"CIFAR-10 records; download the binary version again")
        chunks.append(np.frombuffer(raw, dtype=np.uint8).reshape(-1, record))
    recs = np.concatenate(chunks)
    labels = recs[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise UserError(f"CIFAR-10 in '{d}': label {labels.max()} is not in 0..9; give the CIFAR-10 binary "
                        f"version (not CIFAR-100)")
    images = recs[:, 1:].reshape(-1, 3, 32, 32)
    images, labels = _first_n(images, labels, n)
    x = from_unit(torch.from_numpy(images.astype(np.float32) / 255.0))
    return Dataset(x=x, labels=torch.from_numpy(labels), kind="image", levels=256, name="cifar10",
                   num_classes=10)
