"""The trainer: AdamW with warm-up, gradient clipping, EMA, optional mixed precision,
a non-finite-step guard, JSONL logging, atomic checkpoints and exact resume.

Exact resume: everything random in step s (data order, t, noise, label dropout,
dropout masks) is drawn from generators seeded by (seed, s) or (seed, epoch), so a
run resumed from a checkpoint at step s replays steps s+1, ... bit for bit. The
checkpoint holds weights, EMA, optimizer moments, the step, the data position and
the RNG seeds; the log is cut back to the checkpoint's step on resume.

Multi-process: under torchrun (WORLD_SIZE > 1) each rank trains on its slice of the
global batch with DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 writes.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import data as data_lib
from .compiling import maybe_compile
from .config import Config
from .device_step import DeviceGuard
from .errors import UserError
from .losses import build_objective
from .runs import build_net, build_schedule, check_compatible, normalise

__all__ = ["train", "TrainingDiverged"]

_MIX = 1_000_003  # separates the per-step seed streams
# devices whose step keeps the non-finite guard on the device (no host sync per step; difflab/device_step.py)
_DEVICE_GUARD_DEVICES = {"cuda"}


class TrainingDiverged(UserError):
    """Raised when non-finite losses or gradients persist."""


def _device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(cfg.device)
    except RuntimeError:
        raise UserError(f"unknown device {cfg.device!r}; use auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def _dist():
    """(rank, world_size), initialising torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _state_tensors(net, ema, opt, objective) -> dict[str, torch.Tensor]:
    t = {f"model.{k}": v for k, v in net.state_dict().items()}
    t.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
    t.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            t[f"opt.{i}.{k}"] = torch.as_tensor(v)
    return t


def _load_optimizer(opt, tensors):
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def _lr(cfg: Config, step: int) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def _prepare_run_dir(out: Path, resume: bool) -> bool:
    """Checks the run folder; returns True when a checkpoint exists to resume from."""
    has_ckpt = (out / ckpt.CHECKPOINT_NAME).is_file()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file, not a folder; choose a folder for the run")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise UserError(f"run folder '{out}' already holds files; pass --resume to continue it "
                        "or choose a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run folder '{out}' ({e.strerror}); choose a writable --out")
    return has_ckpt


def _truncate_log(path: Path, step: int):
    """Keep log records with step <= `step` (a resumed run rewrites what came after)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a partial last line of a killed run
    path.write_text("".join(s + "\n" for s in keep))


def train(cfg: Config, out, resume: bool = False, progress: bool = True, stop_flag=None,
          overrides: dict | None = None) -> Path:
    """Train a model described by `cfg` into run folder `out`. Returns the checkpoint path.

    resume: continue the checkpoint in `out` (if there is one) with its stored config, changed
    only by the user's explicit `overrides` (e.g. {"steps": 8000}); without a checkpoint, start `cfg`.
    Budget: cfg.steps (total steps) and/or cfg.minutes (total wall minutes, across resumes).
    stop_flag: optional callable polled before each step; True stops (and saves) like Ctrl-C."""
    out = Path(out)
    rank, world = _dist()
    has_ckpt = _prepare_run_dir(out, resume) if rank == 0 else (out / ckpt.CHECKPOINT_NAME).is_file()
    if world > 1:
        import torch.distributed as dist
        flag = torch.tensor([int(has_ckpt)])
        dist.broadcast(flag, 0)
        has_ckpt = bool(flag.item())
    tensors, meta = (None, None)
    if resume and has_ckpt:
        tensors, meta = ckpt.load(out)
        cfg = check_compatible(Config.from_dict(meta["config"]), overrides or {})
    if cfg.steps is None and cfg.minutes is None:
        raise UserError("no training budget; give --steps N or --minutes M")
    dev = _device(cfg)

    ds = data_lib.load(cfg.data, image_size=cfg.image_size)
    train_ds, _ = data_lib.split(ds, 0.1, seed=0)
    cfg = normalise(cfg, train_ds)
    x_all = _standardise(train_ds.x, cfg).to(dev)
    y_all = train_ds.labels.to(dev) if (cfg.conditional and train_ds.labels is not None) else None
    if cfg.conditional and train_ds.labels is None:
        raise UserError(f"--conditional needs labels but data '{cfg.data}' has none; drop --conditional")
    n_data = x_all.shape[0]
    if n_data < cfg.batch_size:
        cfg.batch_size = n_data
    per_rank = cfg.batch_size // world
    if per_rank < 1:
        raise UserError(f"batch size {cfg.batch_size} is smaller than the {world} processes; raise it")

    torch.manual_seed(cfg.seed)
    net = build_net(cfg).to(dev)
    ema = build_net(cfg).to(dev)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    loss_fn = build_objective(cfg, build_schedule(cfg)).to(dev)
    use_guard = dev.type in _DEVICE_GUARD_DEVICES and cfg.precision != "fp16"
    opt = torch.optim.AdamW(list(net.parameters()) + list(loss_fn.parameters()), lr=cfg.lr,
                            weight_decay=cfg.weight_decay, fused=True if use_guard else None)
    step, elapsed = 0, 0.0
    if tensors is not None:
        net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        loss_fn.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("objective.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        _load_optimizer(opt, tensors)
        step, elapsed = meta["step"], meta.get("elapsed_s", 0.0)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    model = maybe_compile(model, cfg.compile)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise UserError("fp16 training needs a CUDA GPU; use --precision bf16 on the CPU")
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    if scaler is not None and meta and "grad_scale" in meta:
        scaler.update(meta["grad_scale"])

    log_path = out / "log.jsonl"
    if rank == 0:
        if tensors is None:
            log_path.unlink(missing_ok=True)
        _truncate_log(log_path, step)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    def save(reason: str):
        if rank != 0:
            return
        m = {"config": cfg.to_dict(), "step": step, "elapsed_s": elapsed, "reason": reason,
             "data_position": {"epoch": step // batches_per_epoch, "batch_in_epoch": step % batches_per_epoch},
             "rng": {"seed": cfg.seed, "scheme": "per-step generators seeded (seed, step) and (seed, epoch)"},
             "version": 1}
        if scaler is not None:
            m["grad_scale"] = float(scaler.get_scale())
        ckpt.save(out / ckpt.CHECKPOINT_NAME, _state_tensors(net, ema, opt, loss_fn), m)

    batches_per_epoch = max(1, n_data // cfg.batch_size)
    perm_cache: dict[int, torch.Tensor] = {}

    def batch_indices(s: int) -> torch.Tensor:
        epoch, b = divmod(s, batches_per_epoch)
        if epoch not in perm_cache:
            perm_cache.clear()
            g = torch.Generator().manual_seed(cfg.seed * _MIX + epoch)
            perm_cache[epoch] = torch.randperm(n_data, generator=g).to(dev)
        idx = perm_cache[epoch][b * cfg.batch_size:(b + 1) * cfg.batch_size]
        return idx[rank * per_rank:(rank + 1) * per_rank]

    interrupted = {"flag": False}
    old_handler = None
    if rank == 0 and stop_flag is None:
        def on_sigint(signum, frame):
            interrupted["flag"] = True
        try:
            old_handler = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread
            old_handler = None

    total = cfg.steps
    bar = tqdm(total=total, initial=step, disable=not progress or rank != 0, unit="step",
               dynamic_ncols=True, desc="train", file=sys.stderr)
    if cfg.minutes is not None and total is None:
        bar.total = None
    params = list(net.parameters()) + list(loss_fn.parameters())
    ema_params = [p for p in ema.parameters()]
    guard = DeviceGuard(opt, params, ema_params, dev) if use_guard else None
    bad = 0
    t_last, n_last = time.perf_counter(), 0
    t_start = time.perf_counter() - elapsed
    autocast = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    reason = "done"
    try:
        while True:
            if cfg.steps is not None and step >= cfg.steps:
                break
            if cfg.minutes is not None and elapsed >= cfg.minutes * 60:
                break
            if interrupted["flag"] or (stop_flag is not None and stop_flag()):
                reason = "interrupted"
                break
            g = torch.Generator(dev).manual_seed((cfg.seed * _MIX + step) * 4 + rank)
            torch.manual_seed((cfg.seed * _MIX + step) * 4 + 2 + rank)  # dropout masks
            idx = batch_indices(step)
            xb = x_all[idx]
            yb = y_all[idx] if y_all is not None else None
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step)
            with autocast():
                loss = loss_fn(model, xb, yb, g)
            opt.zero_grad(set_to_none=True)
            ok = guard is None and bool(torch.isfinite(loss))
            if guard is not None:  # the same guard without reading anything back but when logging
                gnorm = guard.step(loss, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"),
                                   min(cfg.ema_decay, (1 + step) / (10 + step)))
                ok = True
                if dev.type != "cuda" or (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    ok, worst = guard.read()
                    if worst >= cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"training diverged: {worst} consecutive steps with a non-finite loss or gradient by "
                            f"step {step}; lower --lr (now {cfg.lr}) or use --precision fp32")
            elif ok:
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(opt)
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                ok = bool(torch.isfinite(gnorm))
            if ok and guard is None:
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params[:len(ema_params)], 1 - decay)
                bad = 0
            elif guard is None:
                bad += 1
                if scaler:
                    scaler.update()
                if bad >= cfg.max_bad_steps:
                    raise TrainingDiverged(
                        f"training diverged: {bad} consecutive steps with a non-finite loss or gradient at "
                        f"step {step}; lower --lr (now {cfg.lr}) or use --precision fp32")
            step += 1
            elapsed = time.perf_counter() - t_start
            bar.update(1)
            n_last += cfg.batch_size
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                rec = {"step": step, "loss": loss.item(), "lr": _lr(cfg, step - 1),
                       "grad_norm": gnorm.item() if ok else None, "images_per_s": n_last / (now - t_last),
                       "elapsed_s": round(elapsed, 3), "skipped": not ok}
                t_last, n_last = now, 0
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            if step % cfg.checkpoint_every == 0:
                save("periodic")
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    save(reason)
    if reason == "interrupted" and rank == 0:
        print(f"interrupted: checkpoint at step {step} saved to {out / ckpt.CHECKPOINT_NAME}; "
              f"continue with --resume", file=sys.stderr)
    return out / ckpt.CHECKPOINT_NAME


def _standardise(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    if cfg.data_mean is None:
        return x.float()
    mean = torch.tensor(cfg.data_mean, dtype=torch.float32)
    std = torch.tensor(cfg.data_std, dtype=torch.float32)
    return (x.float() - mean) / std
