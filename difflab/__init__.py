"""difflab: a toolkit to train, sample, measure and understand diffusion models."""
import os

# OpenMP threads that spin while waiting make a shared CPU crawl (measured: 10.6 s vs 1.3 s per U-Net
# training step with another process busy on a 2-core machine). Passive waiting unless the user chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from . import gaussian, schedules
from .denoiser import Denoiser
from .errors import UserError
from .likelihood import bits_per_dim, log_prob  # noqa: F401  (exported: difflab.log_prob, difflab.bits_per_dim)
from .samplers import sample

__version__ = "0.1.0"
__all__ = ["schedules", "gaussian", "Denoiser", "sample", "UserError", "__version__"]
