"""Checkpoints: one safetensors file holding weights, EMA and optimizer tensors, with the
config and training state as JSON in its metadata. Written atomically: a temporary file
in the same folder, fsync, then rename, so a kill at any moment leaves either the old
checkpoint or the new one, never half of one. Nothing is unpickled, ever.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError

__all__ = ["save", "load", "CHECKPOINT_NAME", "resolve", "atomic_write_bytes"]

CHECKPOINT_NAME = "checkpoint.safetensors"


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(tmp_path) then fsync and rename tmp over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors (name -> tensor) and meta (JSON-able) to `path` atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"difflab": json.dumps(meta)}))


def resolve(path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (UserError if absent)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise UserError(f"no checkpoint at '{path}'; give a run folder made by 'difflab train' "
                        f"or a {CHECKPOINT_NAME} file")
    return p


def load(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) from a checkpoint file or run folder. Corrupt files raise UserError."""
    p = resolve(path)
    try:
        tensors = load_file(str(p))
        from safetensors import safe_open
        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("difflab", "null"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint '{p}' is corrupt or truncated ({str(e).splitlines()[0][:80]}); "
                        "use another checkpoint or retrain")
    if not isinstance(meta, dict) or "config" not in meta:
        raise UserError(f"'{p}' is a safetensors file but not a difflab checkpoint; give a difflab run folder")
    return tensors, meta
