"""A run: its config, its network and schedule, and loading a trained model back as a Denoiser."""
from __future__ import annotations

import inspect
from dataclasses import replace

import torch

from . import checkpoint as ckpt
from . import nets, schedules
from .compiling import maybe_compile
from .config import Config
from .denoiser import Denoiser
from .errors import UserError
from .nets.embeddings import NOISE_EMBEDDING_SCALE

__all__ = ["build_net", "build_schedule", "normalise", "check_compatible", "load_run", "to_data_units",
           "RESUMABLE_KEYS"]

# Settings a resumed run may change; everything else must match the checkpoint.
RESUMABLE_KEYS = {"steps", "minutes", "checkpoint_every", "log_every", "device", "sampler", "nfe", "variance",
                  "max_bad_steps", "compile"}


def build_schedule(cfg: Config) -> schedules.Schedule:
    return schedules.by_name(cfg.schedule, T=cfg.T)


def build_net(cfg: Config) -> torch.nn.Module:
    """The network for cfg's data shape; the data fields must already be filled (see normalise)."""
    from .families import build_net as family_net
    from .families import is_family
    if is_family(cfg.model):  # D3PM, VAE, HVAE build their own networks (difflab.families)
        return family_net(cfg)
    shape = cfg.data_shape
    kw = dict(cfg.net_config)
    classes = cfg.num_classes if cfg.conditional else None
    if cfg.net == "unet":
        if cfg.data_kind != "image":
            raise UserError(f"net unet needs image data but '{cfg.data}' is vector data; use --net mlp")
        if learned_variance(cfg):  # 2C outputs: prediction, then the variance's v (issue 4)
            kw.setdefault("out_channels", 2 * shape[0])
        return nets.build("unet", in_channels=shape[0], num_classes=classes, image_size=shape[-1], **kw)
    if cfg.data_kind != "vector":
        raise UserError(f"net mlp needs vector data but '{cfg.data}' holds images; use --net unet")
    if learned_variance(cfg):
        kw.setdefault("out_dim", 2 * shape[0])
    return nets.build("mlp", dim=shape[0], num_classes=classes, **kw)


def learned_variance(cfg: Config) -> bool:
    """Does the network output a reverse variance too (cfg.variance_type learned | learned-range)?"""
    return getattr(cfg, "variance_type", "fixed") != "fixed"


def normalise(cfg: Config, ds) -> Config:
    """Fill cfg's data fields from a dataset (shape, levels, classes; per-dim mean/std for vectors).
    If they are already set (a resumed run), check that the data still fits."""
    fields = dict(data_kind=ds.kind, data_shape=list(ds.shape), data_levels=ds.levels, num_classes=ds.num_classes)
    if cfg.data_kind is not None:
        if cfg.data_kind != ds.kind or list(cfg.data_shape) != list(ds.shape):
            raise UserError(f"data '{cfg.data}' has shape {list(ds.shape)} but the run was trained on "
                            f"{cfg.data_shape}; use the run's own data")
        return cfg
    if ds.kind == "vector":
        x = ds.x.double()
        fields["data_mean"] = x.mean(0).tolist()
        fields["data_std"] = x.std(0).clamp(min=1e-8).tolist()
    from .families import is_family
    if is_family(cfg.model):
        return replace(cfg, **fields)
    net_config = dict(cfg.net_config)
    if ds.kind == "vector":  # vectors get the MLP
        if cfg.net == "unet":  # the default net: a U-Net's net_config is dropped, one written for the MLP kept
            fields["net"] = "mlp"
            if not set(net_config) <= set(inspect.signature(nets.MLP).parameters):
                net_config = {}
        net_config.setdefault("skip", True)  # new runs get the MLP's skip (difflab.nets.MLP) unless told not to
    # new runs embed the noise level smoothly (nets.embeddings.TimeEmbedding) unless told otherwise
    net_config.setdefault("emb_scale", NOISE_EMBEDDING_SCALE)
    fields["net_config"] = net_config
    return replace(cfg, **fields)


def check_compatible(stored: Config, overrides: dict) -> Config:
    """The stored config with the user's explicit `overrides` (key -> value) applied.
    Resumable settings may change; any other key that differs from the checkpoint is refused."""
    out = replace(stored)
    for key, new in overrides.items():
        if new is None:
            if key in ("steps", "minutes"):  # an explicit budget replaces the stored one (--minutes drops --steps)
                setattr(out, key, None)
            continue
        if key in RESUMABLE_KEYS:
            setattr(out, key, new)
        elif new != getattr(stored, key):
            raise UserError(f"--resume with {key}={new!r} does not fit the checkpoint "
                            f"({key}={getattr(stored, key)!r}); drop that option or start a new run")
    return out


def load_run(path, device="cpu", use_ema: bool = True, labels=None) -> tuple[Config, torch.nn.Module, Denoiser]:
    """(config, network in eval mode, Denoiser) from a run folder or checkpoint file."""
    tensors, meta = ckpt.load(path)
    try:
        cfg = Config.from_dict(meta["config"])
        net = build_net(cfg)
        prefix = "ema." if use_ema else "model."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"checkpoint '{path}' does not fit its config ({str(e).splitlines()[0][:100]}); "
                        "it was made by another model or version")
    net = net.to(device).eval()
    clip = (-1.0, 1.0) if cfg.data_kind == "image" else None
    den = Denoiser.from_network(maybe_compile(net, cfg.compile), build_schedule(cfg), cfg.parameterization,
                                clip=clip, labels=labels,
                                variance_type=cfg.variance_type if learned_variance(cfg) else None)
    if cfg.model in ("vdm", "priorgrad"):  # issue 4: the learned schedule / the data-dependent prior
        from .vdm import adapt_denoiser
        den = adapt_denoiser(cfg, net, den, tensors)
    return cfg, net, den


def to_data_units(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Model space -> data units: images [-1, 1] -> [0, 1]; vectors un-standardised."""
    if cfg.model == "priorgrad":  # its denoiser samples whitened coordinates (issue 4, difflab/priorgrad.py)
        from .priorgrad import to_model_space
        x = to_model_space(x, cfg)
    if cfg.data_kind == "image":
        return ((x.float() + 1) / 2).clamp(0, 1)
    mean = torch.tensor(cfg.data_mean, dtype=torch.float32, device=x.device)
    std = torch.tensor(cfg.data_std, dtype=torch.float32, device=x.device)
    return x.float() * std + mean
