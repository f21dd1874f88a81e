"""The trainer's guarded update without host synchronisation (used on CUDA).

The trainer skips a step whose loss or gradient norm is not finite and stops after `max_bad_steps` such steps
in a row. Deciding that on the host (`bool(torch.isfinite(loss))`) makes the CPU wait for the GPU every
step. `DeviceGuard` keeps the decision on the device:

    bad    = not (isfinite(loss) and isfinite(||g||))                  0-d bool tensor, never read back here
    AdamW  fused kernel given found_inf = bad: weights, moments and step count unchanged when bad
    EMA    ema <- ema + (1 - decay) (1 - bad) (p - ema)                 (a lerp that is a no-op when bad)
    run    <- (run + 1) bad          consecutive bad steps;   worst <- max(worst, run)

The host reads `worst` and `bad` only when it wants them (the trainer: when it logs, where it reads the
loss anyway), so a divergence is reported at the next log step rather than at the very step.
Backward always runs (a non-finite loss gives non-finite gradients, which the fused kernel ignores).
"""
from __future__ import annotations

import torch

__all__ = ["DeviceGuard"]


class DeviceGuard:
    """Guarded optimizer + EMA update with device-side bookkeeping.

    opt: an optimizer whose step honours `found_inf` (torch.optim.AdamW(fused=True));
    params: the trained parameters (the first len(ema_params) of them have EMA copies)."""

    def __init__(self, opt: torch.optim.Optimizer, params: list, ema_params: list, device):
        if not opt.defaults.get("fused"):
            raise ValueError("DeviceGuard needs a fused optimizer (it passes found_inf to the kernel)")
        self.opt, self.params, self.ema_params = opt, params, ema_params
        self.run = torch.zeros((), dtype=torch.int64, device=device)
        self.worst = torch.zeros((), dtype=torch.int64, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)

    def step(self, loss: torch.Tensor, clip: float, decay: float, scale_loss=None) -> torch.Tensor:
        """backward, clip, guarded AdamW and EMA; returns the gradient norm (0-d tensor, pre-clip)."""
        (scale_loss(loss) if scale_loss else loss).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(gnorm))
        self.opt.found_inf = bad.float()
        try:
            self.opt.step()
        finally:
            self.opt.found_inf = None
        with torch.no_grad():
            ema_src = self.params[:len(self.ema_params)]
            delta = torch._foreach_sub(ema_src, self.ema_params)
            torch._foreach_mul_(delta, (~bad).to(delta[0].dtype) * (1.0 - decay))
            torch._foreach_add_(self.ema_params, delta)
        self.run = (self.run + 1) * bad
        self.worst = torch.maximum(self.worst, self.run)
        self.bad = bad
        return gnorm

    def read(self) -> tuple[bool, int]:
        """(last step was good, longest run of consecutive bad steps so far): one host read."""
        both = torch.stack([self.bad.long(), self.worst]).tolist()
        return not both[0], int(both[1])
