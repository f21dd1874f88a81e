"""The domain classifier whose feature space the image metrics use (Frechet distance, precision/recall,
classifier Inception Score, class histogram).

difflab ships one for the bundled digits (`difflab/weights/digits_classifier.safetensors`, a
`difflab.evaluator.DigitClassifier`). It is trained on the digits' training split (90 %, seed 0, the split
the trainer uses) *minus a floor pool*: min(500, N/3) training images drawn with seed 1 that it never sees.
The metrics compare samples with the held-out split (which neither model nor classifier saw) and take
their floor from that pool: real images that, like a perfect model's samples, are new to the classifier.
`difflab train-evaluator --data SPEC --out FILE` trains one the same way for any labelled image data;
`difflab eval --evaluator FILE` uses it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import UserError
from .evaluator import DigitClassifier, train_classifier

__all__ = ["SHIPPED", "shipped_for", "load_classifier", "train_evaluator", "save_classifier", "floor_pool_split"]

WEIGHTS = Path(__file__).parent / "weights"
SHIPPED = {"digits": WEIGHTS / "digits_classifier.safetensors"}


def shipped_for(data_name: str) -> Path | None:
    """The shipped classifier file for a dataset name ("digits"), or None."""
    p = SHIPPED.get(data_name)
    return p if p is not None and p.is_file() else None


def save_classifier(net: DigitClassifier, path, info: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(net.config), "info": json.dumps(info)}
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)
    return path


def load_classifier(path) -> tuple[DigitClassifier, dict]:
    """(classifier in eval mode, info dict) from a file written by `save_classifier`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"evaluator weights '{path}' do not exist; train them with "
                        "`difflab train-evaluator --data SPEC --out FILE.safetensors`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        net = DigitClassifier(**json.loads(meta["config"]))
        net.load_state_dict(tensors)
    except (KeyError, ValueError, RuntimeError, OSError) as e:
        raise UserError(f"'{path}' is not a difflab evaluator file ({str(e).splitlines()[0][:80]}); "
                        "make one with `difflab train-evaluator`")
    return net.eval(), json.loads(meta.get("info", "{}"))


POOL_SEED = 1


def floor_pool_split(n_train: int, pool_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool indices, fit indices) into a training split of n_train examples, both sorted: the pool is
    pool_size (default min(500, n_train // 3)) examples drawn with seed POOL_SEED; the classifier is fit
    on the rest."""
    k = min(500, n_train // 3) if pool_size is None else int(pool_size)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(POOL_SEED))
    return perm[:k].sort().values, perm[k:].sort().values


def train_evaluator(spec: str, out, epochs: int = 40, seed: int = 0, image_size: int | None = None) -> dict:
    """Train a classifier on the training split (90 %, seed 0) of labelled image data `spec` less its floor
    pool (see `floor_pool_split`), report its accuracy on the held-out split and on the pool, and write it
    to `out`. Returns the info dict stored with it."""
    from . import data
    ds = data.load(spec, image_size=image_size)
    if ds.kind != "image" or ds.labels is None:
        raise UserError(f"'{spec}' must be labelled images to train an evaluator (got {ds.kind} data"
                        f"{'' if ds.labels is not None else ' without labels'})")
    train, held = data.split(ds, 0.1, seed=0)
    pool, fit = floor_pool_split(len(train))
    torch.manual_seed(seed)
    net = train_classifier(data.to_unit(train.x[fit], train), train.labels[fit], epochs=epochs, seed=seed)
    with torch.inference_mode():
        acc = float((net(data.to_unit(held.x, held)).argmax(1) == held.labels).double().mean())
        pool_acc = float((net(data.to_unit(train.x[pool], train)).argmax(1) == train.labels[pool]).double().mean())
    info = {"data": ds.name, "shape": list(ds.shape), "epochs": epochs, "seed": seed, "heldout_accuracy": acc,
            "pool_accuracy": pool_acc, "floor_pool_size": len(pool), "floor_pool_seed": POOL_SEED,
            "trained_on": "training split (90 %, seed 0) less the floor pool"}
    save_classifier(net, out, info)
    return info
