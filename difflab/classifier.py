"""A noise-conditional classifier p(y | x_t) for classifier guidance (seed 003, eq. 150).

It is trained on noised data x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps at levels ab of the training schedule
(t uniform on 1..T), conditioned, like the diffusion networks, on `noise_level_input(ab)`, so it can be
queried at any level a sampler visits:

    loss = E_{t, x_0, eps} [ -log p_phi(y | x_t, ab_t) ]          (cross-entropy on noised inputs)

`difflab train-classifier --data digits --out RUN --minutes 4` writes RUN/classifier.safetensors (weights
and, in its metadata, the classifier's config and held-out accuracy at several noise levels).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint as ckpt
from . import data as data_lib
from . import gaussian as G
from . import schedules
from .denoiser import noise_level_input
from .errors import UserError
from .nets.embeddings import TimeEmbedding

__all__ = ["NoisyClassifier", "train_noisy_classifier", "load_classifier", "log_prob_grad", "CLASSIFIER_NAME"]

CLASSIFIER_NAME = "classifier.safetensors"


class NoisyClassifier(nn.Module):
    """CNN p(y | x_t, ab): x (N, C, H, W) in model units, alpha_bar (N,) -> logits (N, K).

    Three 3x3 convolutions (two of them followed by a FiLM scale and shift from the noise-level embedding),
    a 2x max-pool, adaptive average pooling to 4x4 and a two-layer head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width)
        self.num_classes = num_classes
        emb = 4 * width
        self.embed = TimeEmbedding(width, emb)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.film1 = nn.Linear(emb, 2 * width)
        self.film3 = nn.Linear(emb, 4 * width)
        self.norm1 = nn.GroupNorm(8, width)
        self.norm3 = nn.GroupNorm(8, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.SiLU(), nn.Linear(128, num_classes))

    @staticmethod
    def _film(h, film, e):
        scale, shift = film(e)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift

    def forward(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of p(y | x_t) at noise level alpha_bar ((N,) or scalar, float64)."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        e = F.silu(self.embed(noise_level_input(ab).to(x.device))).to(x.dtype)
        h = F.silu(self._film(self.norm1(self.conv1(x)), self.film1, e))
        h = F.silu(self.conv2(h))
        h = F.max_pool2d(h, 2) if min(h.shape[-2:]) >= 8 else h
        h = F.silu(self._film(self.norm3(self.conv3(h)), self.film3, e))
        return self.head(self.pool(h))


def log_prob_grad(classifier, x: torch.Tensor, alpha_bar, labels: torch.Tensor) -> torch.Tensor:
    """grad_{x_t} log p(y | x_t) (N, ...), the "adversarial gradient" of seed 003 eq. 148.

    classifier: (x_t (N, ...), alpha_bar (N,) float64) -> logits (N, K) (normalised or not: log_softmax is
    taken here); labels (N,) int64. Works inside torch.inference_mode (samplers run there)."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1).expand(x.shape[0])
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = classifier(xg, ab.clone())
        logp = F.log_softmax(logits, dim=1).gather(1, labels.clone().reshape(-1, 1).to(logits.device)).sum()
        (g,) = torch.autograd.grad(logp, xg)
    return g.detach().to(x.dtype)


# ------------------------------------------------------------------------------------------ training
def _accuracy_by_level(net, x0, y, schedule, steps, seed=0) -> dict[str, float]:
    """Held-out accuracy at a few steps t (x_t drawn once per t with a fixed generator)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for t in steps:
            ab = schedule.alpha_bars[t - 1].expand(len(x0))
            xt = G.q_sample(x0, ab, torch.randn(x0.shape, generator=g))
            out[str(t)] = round(float((net(xt, ab).argmax(1) == y).double().mean()), 4)
    return out


def train_noisy_classifier(data: str = "digits", out=None, steps: int | None = None, minutes: float | None = None,
                           schedule: str = "linear", T: int = 1000, batch_size: int = 128, lr: float = 2e-3,
                           width: int = 32, seed: int = 0, image_size: int | None = None,
                           progress: bool = True) -> tuple[NoisyClassifier, dict]:
    """Train a NoisyClassifier on the training split (90%, split seed 0, as the diffusion trainer) of `data`.

    Each step: t ~ U{1..T} per example, x_t ~ q(x_t | x_0), cross-entropy; random +-1 pixel shifts of x_0.
    AdamW, cosine decay to 0 over the budget (steps, or minutes of wall time). Saves RUN/classifier.safetensors
    if `out` is given. Returns (network in eval mode, metadata)."""
    if steps is None and minutes is None:
        raise UserError("no training budget; give --steps N or --minutes M")
    ds = data_lib.load(data, image_size=image_size)
    if ds.kind != "image":
        raise UserError(f"train-classifier needs image data with labels; '{data}' holds vectors")
    if ds.labels is None:
        raise UserError(f"train-classifier needs labels but data '{data}' has none; give labelled data")
    sched = schedules.by_name(schedule, T=T)
    tr, ho = data_lib.split(ds, 0.1, seed=0)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = NoisyClassifier(ds.shape[0], int(ds.num_classes), width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    ab_table = sched.alpha_bars
    x_all, y_all = tr.x, tr.labels
    n = len(x_all)
    t0, step, total = time.time(), 0, steps
    net.train()
    while True:
        elapsed = time.time() - t0
        if steps is not None and step >= steps:
            break
        if steps is None and elapsed >= 60 * minutes:
            break
        frac = step / steps if steps is not None else elapsed / (60 * minutes)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x0, y = x_all[idx], y_all[idx]
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        x0 = torch.roll(x0, (dy, dx), (2, 3))
        t = torch.randint(1, sched.T + 1, (batch_size,), generator=g)
        ab = ab_table[t - 1]
        xt = G.q_sample(x0, ab, torch.randn(x0.shape, generator=g))
        loss = F.cross_entropy(net(xt, ab), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if progress and step % 100 == 0:
            print(f"train-classifier: step {step}{'/' + str(total) if total else ''} loss {float(loss):.3f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr)
    net.eval()
    check = [t for t in (1, 100, 300, 500, 700, 900) if t <= sched.T]
    meta = {"config": {"kind": "noisy_classifier", **net.config, "data": data, "image_size": image_size,
                       "data_shape": list(ds.shape), "schedule": schedule, "T": T},
            "steps": step, "elapsed_s": round(time.time() - t0, 1),
            "heldout_accuracy_by_t": _accuracy_by_level(net, ho.x, ho.labels, sched, check)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save(out / CLASSIFIER_NAME, dict(net.state_dict()), meta)
        (out / "classifier.json").write_text(json.dumps(meta, indent=2))
    return net, meta


def load_classifier(path) -> tuple[NoisyClassifier, dict]:
    """(classifier in eval mode, metadata) from a folder made by `difflab train-classifier` or its file."""
    p = Path(path)
    if p.is_dir():
        p = p / CLASSIFIER_NAME
    if not p.is_file():
        raise UserError(f"no classifier at '{path}'; give a folder made by 'difflab train-classifier'")
    tensors, meta = ckpt.load(p)
    conf = meta.get("config", {})
    if conf.get("kind") != "noisy_classifier":
        raise UserError(f"'{path}' is not a noisy classifier; give a folder made by 'difflab train-classifier'")
    net = NoisyClassifier(conf["in_channels"], conf["num_classes"], conf["width"])
    net.load_state_dict(tensors)
    return net.eval(), meta
