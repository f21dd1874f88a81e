"""Run configuration: one flat dataclass, presets, TOML files, command-line overrides.

Precedence: defaults < preset < config file (TOML, or YAML by suffix) < flags. The full config is written to
RUN/config.json and into every checkpoint, so a run can always be rebuilt.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "PRESETS", "load_config", "preset_for_data"]


@dataclass
class Config:
    data: str = "digits"
    image_size: int | None = None
    # network (difflab.nets.build(net, **net_config))
    net: str = "unet"
    net_config: dict = field(default_factory=dict)
    # process: the model family (a key of difflab.losses.OBJECTIVES) and its settings
    model: str = "gaussian"
    schedule: str = "linear"
    T: int = 1000
    parameterization: str = "eps"   # what the network predicts: eps | x0 | v
    loss: str = "simple"            # mse on the parameterisation's target (L_simple for eps) | vlb | hybrid
    variance_type: str = "fixed"    # reverse variance: fixed (cfg.variance) | learned | learned-range (issue 4)
    vlb_weight: float = 0.001       # lambda of the hybrid loss L_simple + lambda L_vlb
    importance_sampling: bool = False  # t drawn from the per-t loss history (improved DDPM)
    prior_mean: list | None = None  # PriorGrad's N(mu, diag std^2) in model space (filled from the data)
    prior_std: list | None = None
    conditional: bool = False
    p_uncond: float = 0.1
    # discrete and latent-variable families (model d3pm | vae | hvae; difflab.families)
    transition: str = "absorbing"   # D3PM transition matrices: uniform | absorbing | gaussian
    aux_weight: float = 0.01        # D3PM hybrid loss L_vb + aux_weight * E[-log p(x_0 | x_t)]
    # optimisation
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "fp32"         # fp32 | bf16 | fp16 (fp16 on CUDA only)
    max_bad_steps: int = 20         # consecutive non-finite steps before giving up
    compile: bool = False           # torch.compile the network for training and sampling (difflab/compiling.py)
    # budget and bookkeeping
    steps: int | None = None
    minutes: float | None = None
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    device: str = "auto"
    # sampling defaults for this run
    sampler: str = "ancestral"
    nfe: int | None = None
    variance: str = "small"
    # filled in by the trainer from the data (not user settings)
    data_kind: str | None = None
    data_shape: list | None = None
    data_levels: int | None = None
    num_classes: int | None = None
    data_mean: list | None = None
    data_std: list | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        return cls(**d)

    def validate(self) -> Config:
        def need(ok, msg):
            if not ok:
                raise UserError(msg)
        from . import schedules
        need(self.schedule in schedules.NAMES, f"unknown schedule {self.schedule!r}; use one of "
             f"{', '.join(schedules.NAMES)}")
        need(isinstance(self.T, int) and self.T >= 2, f"T must be an integer >= 2, got {self.T!r}")
        need(self.parameterization in ("eps", "x0", "v"),
             f"unknown parameterization {self.parameterization!r}; use eps, x0 or v")
        need(self.loss in ("simple", "vlb", "hybrid"), f"unknown loss {self.loss!r}; use simple, vlb or hybrid")
        need(self.variance_type in ("fixed", "learned", "learned-range"),
             f"unknown variance_type {self.variance_type!r}; use fixed, learned or learned-range")
        need(self.loss == "simple" or self.model != "gaussian" or self.variance_type != "fixed"
             or self.loss == "vlb", f"loss {self.loss!r} trains the variance; set variance_type = learned-range "
             "(or learned)")
        need(self.net in ("unet", "mlp"), f"unknown net {self.net!r}; use unet or mlp")
        need(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        need(self.precision in ("fp32", "bf16", "fp16"), f"unknown precision {self.precision!r}; "
             "use fp32, bf16 or fp16")
        need(self.batch_size >= 1, f"batch_size must be positive, got {self.batch_size}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(self.steps is None or self.steps >= 1, f"--steps must be positive, got {self.steps}")
        need(self.minutes is None or self.minutes > 0, f"--minutes must be positive, got {self.minutes}")
        need(self.checkpoint_every >= 1, f"--checkpoint-every must be positive, got {self.checkpoint_every}")
        need(0 <= self.p_uncond < 1, f"p_uncond must be in [0, 1), got {self.p_uncond}")
        need(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        need(self.variance in ("small", "large"), f"unknown variance {self.variance!r}; use small or large")
        need(self.transition in ("uniform", "absorbing", "gaussian"),
             f"unknown transition {self.transition!r}; use uniform, absorbing or gaussian")
        need(self.aux_weight >= 0, f"aux_weight must be >= 0, got {self.aux_weight}")
        return self


# Sized for a 2-core CPU: ~0.7 M parameters, 32 MFLOP per 8x8 image.
_UNET_DIGITS = dict(base_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4],
                    dropout=0.1)
PRESETS: dict[str, dict] = {
    "digits": dict(data="digits", net="unet", net_config=_UNET_DIGITS, batch_size=128, lr=1e-3,
                   warmup=100, ema_decay=0.999, steps=4000, checkpoint_every=500, nfe=100),
    "toy": dict(data="toy:moons", net="mlp", net_config=dict(hidden=256, depth=4), batch_size=512,
                lr=1e-3, warmup=100, ema_decay=0.995, steps=5000, checkpoint_every=1000),
    "mnist": dict(data="mnist:data/mnist", net="unet",
                  net_config=dict(base_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2,
                                  attention_resolutions=[7], dropout=0.1),
                  batch_size=128, lr=2e-4, warmup=1000, ema_decay=0.9999, steps=100000),
    "cifar10": dict(data="cifar10:data/cifar10", net="unet",
                    net_config=dict(base_channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2,
                                    attention_resolutions=[16], dropout=0.1),
                    batch_size=128, lr=2e-4, warmup=5000, ema_decay=0.9999, steps=800000),
}

# Discrete-state diffusion and latent-variable baselines on the digits' 17 levels (issue 8, difflab.families):
# D3PM with the digits U-Net (17 logits per pixel), VAE and two-level HVAE with MLPs.
PRESETS.update({
    "d3pm-digits": dict(data="digits", model="d3pm", transition="absorbing", T=100, aux_weight=0.01, net="unet",
                        net_config=_UNET_DIGITS, batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999, steps=4000,
                        checkpoint_every=500),
    "vae-digits": dict(data="digits", model="vae", net="mlp", net_config=dict(hidden=256, latent=16),
                       batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999, steps=10000, checkpoint_every=1000),
    "hvae-digits": dict(data="digits", model="hvae", net="mlp", net_config=dict(hidden=256, latent=16, latent2=8),
                        batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999, steps=10000, checkpoint_every=1000),
})


def preset_for_data(spec: str) -> str:
    """The preset that fits a data spec when the user names none."""
    if spec.startswith("toy:"):
        return "toy"
    if spec.startswith("mnist:"):
        return "mnist"
    if spec.startswith("cifar10:"):
        return "cifar10"
    return "digits"


def _read_config_file(p: Path) -> dict:
    """A TOML file, or YAML when the name ends in .yaml/.yml; a mapping of Config keys."""
    yaml_file = p.suffix.lower() in (".yaml", ".yml")
    kind = "YAML" if yaml_file else "TOML"
    try:
        if yaml_file:
            import yaml
            d = yaml.safe_load(p.read_text())
        else:
            d = tomllib.loads(p.read_text())
    except UnicodeDecodeError as e:
        raise UserError(f"config file '{p}' is not text ({e.reason}); give a {kind} file")
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise UserError(f"config file '{p}' is not valid {kind} ({str(e).splitlines()[0]}); fix the file")
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UserError(f"config file '{p}' must hold a mapping of config keys, not {type(d).__name__}")
    return d


def load_config(preset: str | None = None, file: str | None = None, overrides: dict | None = None) -> Config:
    """defaults < preset < TOML/YAML file < overrides (None values in overrides are ignored)."""
    d: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        d.update(json.loads(json.dumps(PRESETS[preset])))
    if file is not None:
        p = Path(file)
        if not p.is_file():
            raise UserError(f"config file {file!r} not found; give the path of a TOML or YAML file")
        d.update(_read_config_file(p))
    for k, v in (overrides or {}).items():
        if v is not None:
            d[k] = v
    return Config.from_dict(d).validate()
