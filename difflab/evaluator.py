"""A small domain classifier that judges samples: confident-class rate, class histogram,
and features for Frechet distances. Trained on real data (the digits' training split),
never on samples.

    conf_rate = P(max_y p(y | x) >= 0.9)          (fraction of confidently classified samples)
    TV        = 1/2 sum_y | hist(y) - 1/K |         (total variation of the class histogram from uniform)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DigitClassifier", "train_classifier", "judge"]


class DigitClassifier(nn.Module):
    """CNN for (N, C, H, W) images in [0, 1] -> logits (N, K); `features` gives (N, 128)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, 128), nn.SiLU())
        self.head = nn.Linear(128, num_classes)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        return self.body(x01 * 2 - 1)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x01))


def train_classifier(x01: torch.Tensor, labels: torch.Tensor, epochs: int = 30, seed: int = 0,
                     augment: bool = True) -> DigitClassifier:
    """Train on images (N, C, H, W) in [0, 1] with labels (N,). Light shift augmentation."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitClassifier(x01.shape[1], int(labels.max()) + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    n = len(x01)
    steps = epochs * ((n + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            xb = x01[idx]
            if augment:  # random shifts by up to one pixel
                dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
                xb = torch.roll(xb, (dy, dx), (2, 3))
            loss = F.cross_entropy(net(xb), labels[idx], label_smoothing=0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.inference_mode()
def judge(net: DigitClassifier, x01: torch.Tensor, threshold: float = 0.9) -> dict:
    """{"conf_rate", "tv_uniform", "hist", "n"} for samples (N, C, H, W) in [0, 1]."""
    p = torch.softmax(net(x01.float()), 1)
    conf, y = p.max(1)
    k = p.shape[1]
    hist = torch.bincount(y, minlength=k).double() / len(y)
    return {"conf_rate": float((conf >= threshold).double().mean()),
            "tv_uniform": float(0.5 * (hist - 1 / k).abs().sum()),
            "hist": [round(float(h), 4) for h in hist], "n": len(y)}
