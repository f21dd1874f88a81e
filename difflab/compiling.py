"""Optional `torch.compile` of a network: config field `compile` (`difflab train --compile`).

The trainer compiles the module it calls (forward and backward); `load_run` compiles the network the
Denoiser calls for sampling (the returned `net` stays the plain module). Off by default: on a CPU the
first call compiles C++ kernels for minutes (229 s for a small MLP on the 2-core test machine), which only
long runs amortise; `BACKEND` is the torch.compile backend used.
"""
from __future__ import annotations

import torch

__all__ = ["maybe_compile", "BACKEND"]

BACKEND = "inductor"


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`torch.compile(module, backend=BACKEND)` when enabled, else module unchanged."""
    return torch.compile(module, backend=BACKEND) if enabled else module
