"""difflab: a toolkit to train, sample, measure and understand diffusion models."""
from . import gaussian, schedules
from .denoiser import Denoiser
from .errors import UserError
from .samplers import sample

__version__ = "0.1.0"
__all__ = ["schedules", "gaussian", "Denoiser", "sample", "UserError", "__version__"]
