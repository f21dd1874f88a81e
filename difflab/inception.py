"""The Inception network of FID (Heusel et al. 2017), loaded only from a file the user has on disk.

difflab never downloads weights. `difflab eval --metrics inception_fid --inception PATH` (or the environment
variable DIFFLAB_INCEPTION) accepts either of the two files in common use:

* pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a state_dict; `.safetensors` of the same tensors too):
  loaded with `torch.load(..., weights_only=True)` into `FIDInceptionV3` below with `strict=True`. This is
  TensorFlow's 2015-12-05 InceptionV3 graph (the one of the original FID code) in torchvision's layout and
  parameter names (classifier of 1008 classes, no auxiliary head), with the FID graph's quirks: the average
  pools of the A, C and first E blocks leave padded zeros out of their means, and the last E block pools
  with a max. Input: (N, 3, H, W) in [-1, 1], resized bilinearly (align_corners=False) to 299 x 299 as
  pytorch-fid does (pytorch-fid resizes [0, 1] images and then maps them to [-1, 1]; both maps are
  linear, so resizing after the map gives the same numbers). Features: the 2048-d global average pool
  after Mixed_7c (pool3).
* a TorchScript file such as StyleGAN2-ADA's / clean-fid's `inception-2015-12-05.pt` (recognised by its
  zip holding TorchScript code): called as `model(images, return_features=True)` -> (N, D) with images
  uint8 (N, 3, H, W) in 0..255 at their own size; that model resizes to 299 x 299 itself, as in
  StyleGAN2-ADA's metrics.

Grey images (1 channel) are repeated to 3 channels. `inception_features` runs in batches with a progress
bar, so any number of images streams through a bounded amount of memory.
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

__all__ = ["FIDInceptionV3", "InceptionFeatures", "load_inception", "inception_features", "resolve_path",
           "ENV_VAR", "FEATURE_DIM", "MISSING_PATH_MESSAGE"]

ENV_VAR = "DIFFLAB_INCEPTION"
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008          # the classifier of the TF graph (stored in the .pth, unused for FID)
BN_EPS = 1e-3
MISSING_PATH_MESSAGE = ("inception_fid needs --inception PATH (a pt_inception-2015-12-05 .pth or TorchScript "
                        "file on disk; difflab never downloads it)")


# ------------------------------------------------------------------------------------------- the network


class _ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; parameters `conv.weight`, `bn.*` as in torchvision."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):
    """3x3 stride-1 average pool whose means leave the zero padding out (TensorFlow's SAME average pool)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1; out 64 + 64 + 96 + pool_ch."""

    def __init__(self, cin: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_ch, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class _ReduceB(nn.Module):
    """35 -> 17 grid reduction: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2; out 384 + 96 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 and 7x1); out 4 x 192."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class _ReduceD(nn.Module):
    """17 -> 8 grid reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2; out 320 + 192 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; out 320 + 768 + 768 + 192 = 2048. `pool`: "avg" (padding left
    out of the mean) in Mixed_7b, "max" in Mixed_7c (the FID graph's quirk)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        u = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(u), self.branch3x3dbl_3b(u)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _tf_avg_pool(x)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 of TensorFlow's FID graph with pytorch-fid's parameter names (`Conv2d_1a_3x3.conv.weight`,
    ..., `Mixed_7c.branch_pool.bn.running_var`, `fc.weight` (1008, 2048)). `forward(x)`: x (N, 3, H, W) in
    [-1, 1] -> pool3 features (N, 2048); the input is resized bilinearly to 299 x 299 unless it has that size."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReduceB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReduceD(768)
        self.Mixed_7b = _MixedE(1280, "avg")
        self.Mixed_7c = _MixedE(2048, "max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)     # kept so the file loads strictly; not used by FID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


# ----------------------------------------------------------------------------------------------- loading


class InceptionFeatures(nn.Module):
    """A loaded feature network with one calling convention: `forward(x)` with x (N, 3, H, W) in [-1, 1]
    -> features (N, D). `kind`: "state_dict" (FIDInceptionV3) or "torchscript"."""

    def __init__(self, net: nn.Module, kind: str, path: Path):
        super().__init__()
        self.net, self.kind, self.path = net, kind, Path(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "torchscript":      # StyleGAN2-ADA's convention: uint8 0..255, the model resizes itself
            u8 = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            f = self.net(u8, return_features=True)
        else:
            f = self.net(x.float())
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or len(f) != len(x):
            raise UserError(f"Inception file '{self.path}' did not return features (N, D) for {len(x)} images "
                            f"(got {type(f).__name__} {tuple(getattr(f, 'shape', ()))}); give pytorch-fid's "
                            "pt_inception-2015-12-05 .pth or a TorchScript model(x, return_features=True)")
        return f


def resolve_path(path=None) -> Path:
    """The Inception file: `path` (from --inception), else $DIFFLAB_INCEPTION; it must exist."""
    p = path or os.environ.get(ENV_VAR) or None
    if not p:
        raise UserError(MISSING_PATH_MESSAGE)
    p = Path(p).expanduser()
    if not p.is_file():
        raise UserError(f"Inception weights '{p}' do not exist (difflab never downloads them); give the path of "
                        "pytorch-fid's pt_inception-2015-12-05-6726825d.pth or of inception-2015-12-05.pt")
    return p


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding code/ and constants.pkl; torch.save's zip holds only data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"holds a {type(sd).__name__}, not a state_dict")
    return sd


def load_inception(path, device: str = "cpu") -> InceptionFeatures:
    """The feature network in a file on disk (see the module docstring), in eval mode on `device`."""
    path = resolve_path(path)
    if _is_torchscript(path):
        try:
            net = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError, OSError) as e:
            raise UserError(f"cannot load TorchScript Inception '{path}': {str(e).splitlines()[0][:100]}")
        return InceptionFeatures(net.eval(), "torchscript", path)
    try:
        sd = _state_dict(path)
    except Exception as e:     # unpickling refusals, corrupt files: all end in the same one-line error
        raise UserError(f"'{path}' is neither a TorchScript file nor a readable state_dict "
                        f"({str(e).splitlines()[0][:100] if str(e) else type(e).__name__}); give pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth or inception-2015-12-05.pt")
    net = FIDInceptionV3()
    own = net.state_dict()
    for k in own:          # files saved before BatchNorm counted its batches lack these buffers
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k].clone()
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        missing = sorted(set(own) - set(sd))
        extra = sorted(set(sd) - set(own))
        shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
        what = "; ".join(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                         for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes))
                         if keys) or str(e).splitlines()[0][:100]
        raise UserError(f"'{path}' is not pytorch-fid's FID Inception state_dict ({what})")
    return InceptionFeatures(net.to(device).eval(), "state_dict", path)


# -------------------------------------------------------------------------------------------- features


def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 32, device: str = "cpu",
                       progress: bool = False, desc: str = "inception") -> torch.Tensor:
    """Features (N, D) float64 of images (N, C, H, W) in [-1, 1] (C = 1 is repeated to 3), `batch_size`
    at a time, with a progress bar when `progress`."""
    from tqdm import tqdm
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"Inception features need images (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    out = []
    with torch.inference_mode(), tqdm(total=len(images), disable=not progress, unit="img", desc=desc,
                                      file=sys.stderr, leave=False) as bar:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device=device, dtype=torch.float32)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            out.append(model(x).double().cpu())
            bar.update(len(x))
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
