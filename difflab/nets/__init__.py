"""Networks conditioned on a noise level c (N,) in [0, 1000] and optional class labels y (N,)."""
from __future__ import annotations

from torch import nn

from .embeddings import LabelEmbedding, TimeEmbedding, timestep_embedding
from .mlp import MLP
from .unet import UNet

__all__ = ["UNet", "MLP", "timestep_embedding", "TimeEmbedding", "LabelEmbedding", "build", "param_count",
           "NETS"]

NETS = {"unet": UNet, "mlp": MLP}


def build(name: str, **config) -> nn.Module:
    """The network `name` ("unet" or "mlp") built from its constructor kwargs (e.g. another net's .config)."""
    key = name.lower()
    if key not in NETS:
        raise ValueError(f"unknown network {name!r}; choose from {sorted(NETS)}")
    return NETS[key](**config)


def param_count(module: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in module.parameters())
