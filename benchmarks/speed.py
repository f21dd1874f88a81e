"""Speed: difflab's U-Net, trainer and samplers against diffusers' UNet2DModel of equal size, in one run.

Three networks, each built twice with the same architecture (ResNet blocks, GroupNorm(32), one-head
self-attention at the lowest level and in the middle, dropout 0.1, sinusoidal time embedding 4 x base):
    8x8-grey     base 32, channel_mult (1, 2),    1 ResBlock per level (difflab's digits preset)
    28x28-grey   base 32, channel_mult (1, 2, 2), 1 ResBlock per level, attention at 7x7
    32x32-rgb    base 64, channel_mult (1, 2, 2), 1 ResBlock per level, attention at 8x8
difflab: `difflab.nets.UNet`; diffusers: `UNet2DModel` with DownBlock2D / AttnDownBlock2D, one head
(attention_head_dim=None); parameter counts are printed and must agree within 3 %.

What is timed (both libraries do the same work; repeats interleaved A B A B ..., medians and per-repeat
ratios difflab / diffusers from this one run; torch.set_num_threads(1) so both get one core):
  train   images/s of a full training step: draw t and noise, noise the batch, forward, MSE, backward,
          grad clipping, AdamW, EMA. difflab: the real trainer (`difflab.train.train`, data on the device),
          timed between its per-step `stop_flag` polls, with diffusers' segments run inside those polls (so
          the two alternate every `k` steps). diffusers: the loop of its train_unconditional example:
          DDPMScheduler.add_noise, UNet2DModel(...).sample, F.mse_loss, clip_grad_norm_, AdamW, warm-up LR
          scheduler, diffusers' EMAModel(foreach=True), loss.item() every 10 steps as difflab logs.
  sample  images/s at NFE 10, 50, 1000: difflab.sample(den, noise, "ddim" | "ancestral", nfe) on the network
          as `load_run` wraps it (clip to [-1, 1]) vs diffusers' DDIMPipeline / DDPMPipeline loop
          (DDIMScheduler / DDPMScheduler, set_timesteps(nfe), net(x, t).sample, scheduler.step, no_grad).
          Runs longer than --max-steps network calls time their first k steps and extrapolate x nfe / k
          (said in the table: "extrap. from k").
  overhead  the sampler's per-step cost with the network replaced by a zero-cost function (returns its
          input), relative to one network forward, at batch 128.
  memory  peak RSS (VmHWM of /proc/self/status, the high-water mark getrusage's ru_maxrss also reports but
          without the parent's RSS that a forked child inherits; torch.cuda.max_memory_allocated on CUDA) of a
          fresh subprocess per measurement: train steps at batch 128 (difflab's default; with the U-Net's plain
          modules instead of its memory-lean training Functions; with recompute_activations), sampling at batch
          128, and difflab's `generate` streaming N = 512 samples in batches of 128 (DDIM, 1 step: memory does
          not grow with NFE).
  growth  training / sampling images/s against batch size, resolution (one network at 8, 16, 32 px) and T.

Run (a few minutes to ~half an hour on a busy 2-core CPU; --quick for a smoke run):
    OMP_NUM_THREADS=1 python benchmarks/speed.py [--device cpu|cuda] [--configs 8x8-grey,32x32-rgb] [--quick]
Writes benchmarks/results/speed.md and benchmarks/results/speed.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import difflab  # noqa: E402
from difflab import nets, schedules  # noqa: E402
from difflab.config import Config  # noqa: E402
from difflab.denoiser import Denoiser  # noqa: E402
from difflab.train import train  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
T_DEFAULT = 1000

CONFIGS = {
    "8x8-grey": dict(shape=(1, 8, 8), base=32, mult=(1, 2), attn_level=1, nrb=1),
    "28x28-grey": dict(shape=(1, 28, 28), base=32, mult=(1, 2, 2), attn_level=2, nrb=1),
    "32x32-rgb": dict(shape=(3, 32, 32), base=64, mult=(1, 2, 2), attn_level=2, nrb=1),
}


# ---- the two networks ------------------------------------------------------------------------
def difflab_net_config(spec: dict, size: int | None = None) -> dict:
    size = size or spec["shape"][-1]
    return dict(base_channels=spec["base"], channel_mult=list(spec["mult"]), num_res_blocks=spec["nrb"],
                attention_resolutions=[size // 2 ** spec["attn_level"]], dropout=0.1)


def make_difflab(spec: dict, size: int | None = None) -> torch.nn.Module:
    size = size or spec["shape"][-1]
    return nets.build("unet", in_channels=spec["shape"][0], image_size=size, **difflab_net_config(spec, size))


def make_diffusers(spec: dict, size: int | None = None) -> torch.nn.Module:
    from diffusers import UNet2DModel
    size = size or spec["shape"][-1]
    n = len(spec["mult"])
    down = tuple("AttnDownBlock2D" if i == spec["attn_level"] else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if b == "AttnDownBlock2D" else "UpBlock2D" for b in reversed(down))
    return UNet2DModel(sample_size=size, in_channels=spec["shape"][0], out_channels=spec["shape"][0],
                       block_out_channels=tuple(spec["base"] * m for m in spec["mult"]),
                       layers_per_block=spec["nrb"], down_block_types=down, up_block_types=up,
                       attention_head_dim=None, norm_num_groups=32, dropout=0.1)


class _DiffusersEps(torch.nn.Module):
    """UNet2DModel as a plain (x, t) -> eps module."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


# ---- timing helpers --------------------------------------------------------------------------
def _sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _median(v):
    return statistics.median(v) if v else float("nan")


def _summary(a: list, b: list) -> dict:
    """Medians of two interleaved series of rates and the median of the per-repeat ratios a_i / b_i."""
    ratios = [x / y for x, y in zip(a, b)]
    return {"difflab": a, "diffusers": b, "difflab_median": _median(a), "diffusers_median": _median(b),
            "ratio_median": _median(ratios), "ratios": ratios}


def _write_images(path: Path, spec: dict, n: int):
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 256, size=(n, *spec["shape"]), dtype=np.uint8))


# ---- training --------------------------------------------------------------------------------
class DiffusersTrainer:
    """diffusers' train_unconditional loop: add_noise, net(...).sample, MSE, clip, AdamW, LR warm-up, EMAModel."""

    def __init__(self, spec, batch, dev, T=T_DEFAULT, lr=2e-4, seed=0):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel
        torch.manual_seed(seed)
        self.dev, self.batch = dev, batch
        self.unet = make_diffusers(spec).to(dev).train()
        self.sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=0.0)
        self.lr_sched = get_scheduler("constant_with_warmup", optimizer=self.opt, num_warmup_steps=100)
        self.ema = EMAModel(self.unet.parameters(), decay=0.999, foreach=True)
        self.ema.to(dev)
        g = torch.Generator().manual_seed(seed)
        n = batch * 4
        self.x_all = (torch.rand((n, *spec["shape"]), generator=g) * 2 - 1).to(dev)
        self.T, self.step_i = T, 0

    def step(self):
        s = self.step_i
        g = torch.Generator(self.dev).manual_seed(1000 + s)
        b = s % (self.x_all.shape[0] // self.batch)
        clean = self.x_all[b * self.batch:(b + 1) * self.batch]
        noise = torch.randn(clean.shape, generator=g, device=self.dev)
        t = torch.randint(0, self.T, (clean.shape[0],), generator=g, device=self.dev)
        noisy = self.sched.add_noise(clean, noise, t)
        out = self.unet(noisy, t).sample
        loss = F.mse_loss(out.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        self.lr_sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        if (s + 1) % 10 == 0:
            loss.item()
        self.step_i += 1


def difflab_train_config(spec, batch, dev, data_path, steps, T=T_DEFAULT, precision="fp32", extra=None) -> Config:
    d = dict(data=str(data_path), net="unet", net_config=difflab_net_config(spec), batch_size=batch, lr=2e-4,
             warmup=100, ema_decay=0.999, steps=steps, seed=0, device=dev.type, T=T, precision=precision,
             checkpoint_every=10 ** 9, log_every=10)
    d.update(extra or {})
    return Config(**d).validate()


def measure_train(spec, batch, dev, repeats, k, warm=1, T=T_DEFAULT, with_diffusers=True, precision="fp32",
                  extra=None) -> dict:
    """Training images/s, difflab's trainer and diffusers' loop alternating every k steps."""
    rates = {"difflab": [], "diffusers": []}
    dtrain = DiffusersTrainer(spec, batch, dev, T=T) if with_diffusers else None
    state = {"poll": 0, "t0": None}

    def diffusers_segment():
        if dtrain is None:
            return
        if dtrain.step_i == 0:
            for _ in range(warm):
                dtrain.step()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(k):
            dtrain.step()
        _sync(dev)
        rates["diffusers"].append(k * batch / (time.perf_counter() - t0))

    def stop_flag():
        p = state["poll"]
        state["poll"] += 1
        if p >= warm and (p - warm) % k == 0:
            _sync(dev)
            if state["t0"] is not None:
                rates["difflab"].append(k * batch / (time.perf_counter() - state["t0"]))
            if len(rates["difflab"]) < repeats:
                diffusers_segment()
                _sync(dev)
                state["t0"] = time.perf_counter()
        return False

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npy"
        _write_images(data, spec, int(batch / 0.9) + 8)
        cfg = difflab_train_config(spec, batch, dev, data, warm + repeats * k + 1, T, precision, extra)
        train(cfg, Path(tmp) / "run", progress=False, stop_flag=stop_flag)
    if dtrain is None:
        return {"difflab": rates["difflab"], "difflab_median": _median(rates["difflab"])}
    return _summary(rates["difflab"], rates["diffusers"])


# ---- sampling --------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _counting(fn, limit):
    """fn that raises _Stop on call limit + 1 (before calling the network)."""
    count = {"n": 0}

    def wrapped(*a):
        if count["n"] >= limit:
            raise _Stop
        count["n"] += 1
        return fn(*a)
    return wrapped


def difflab_denoiser(net, T=T_DEFAULT):
    """The network as `difflab.runs.load_run` wraps it (eps, clip to [-1, 1])."""
    return Denoiser.from_network(net, schedules.linear(T), "eps", clip=(-1.0, 1.0))


def run_difflab_sampler(net, noise, sampler, nfe, steps, T=T_DEFAULT, seed=0, progress=None):
    den = difflab_denoiser(net, T)
    den.fn = _counting(den.fn, steps)
    g = torch.Generator(noise.device).manual_seed(seed)
    opts = {"progress": progress} if progress else {}
    try:
        return difflab.sample(den, noise, sampler, nfe=nfe, generator=g, **opts)
    except _Stop:
        return None


def _diffusers_scheduler(sampler, T=T_DEFAULT):
    from diffusers import DDIMScheduler, DDPMScheduler
    kw = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True)
    return DDIMScheduler(**kw) if sampler == "ddim" else DDPMScheduler(**kw)


def diffusers_steps(model, noise, sampler, nfe, steps, T=T_DEFAULT, seed=0):
    """DDIMPipeline / DDPMPipeline's loop (no_grad, as the pipelines' __call__), one step per next()."""
    sched = _diffusers_scheduler(sampler, T)
    sched.set_timesteps(nfe)
    g = torch.Generator(noise.device).manual_seed(seed)
    x = noise.clone()
    for t in sched.timesteps[:steps]:
        with torch.no_grad():
            eps = model(x, t).sample
            x = sched.step(eps, t, x, generator=g).prev_sample
        yield x


def run_diffusers_sampler(model, noise, sampler, nfe, steps, T=T_DEFAULT, seed=0):
    *_, last = diffusers_steps(model, noise, sampler, nfe, steps, T, seed)
    return last


def measure_sample(spec, batch, dev, sampler, nfe, repeats, max_steps, T=T_DEFAULT) -> dict:
    """Images/s of both samplers, alternating step by step: difflab's progress callback (called after each of
    its network calls) runs one diffusers step, whose time is subtracted from difflab's."""
    torch.manual_seed(0)
    dnet = make_difflab(spec).to(dev).eval()
    unet = make_diffusers(spec).to(dev).eval()
    noise = torch.randn((batch, *spec["shape"]), generator=torch.Generator().manual_seed(0)).to(dev)
    steps = min(nfe, max_steps)
    run_difflab_sampler(dnet, noise, sampler, nfe, 1, T)  # warm-up
    run_diffusers_sampler(unet, noise, sampler, nfe, 1, T)
    rates = {"difflab": [], "diffusers": []}
    for _ in range(repeats):
        it = diffusers_steps(unet, noise, sampler, nfe, steps, T)
        spent = {"s": 0.0, "n": 0}

        def one_diffusers_step(it=it, spent=spent):
            _sync(dev)
            t0 = time.perf_counter()
            next(it)
            _sync(dev)
            spent["s"] += time.perf_counter() - t0
            spent["n"] += 1
        _sync(dev)
        t0 = time.perf_counter()
        run_difflab_sampler(dnet, noise, sampler, nfe, steps, T, progress=one_diffusers_step)
        _sync(dev)
        total = time.perf_counter() - t0
        assert spent["n"] == steps, (spent, steps)
        rates["difflab"].append(batch / ((total - spent["s"]) * nfe / steps))
        rates["diffusers"].append(batch / (spent["s"] * nfe / steps))
    out = _summary(rates["difflab"], rates["diffusers"])
    out.update(nfe=nfe, timed_steps=steps, extrapolated=steps < nfe, sampler=sampler, batch=batch)
    return out


# ---- sampler overhead ------------------------------------------------------------------------
class ZeroNet(torch.nn.Module):
    """A zero-cost network: returns its input (so the sampler's arithmetic runs on real-sized tensors)."""

    def forward(self, x, c, y=None):
        return x


class _ZeroDiffusers(torch.nn.Module):
    class _Out:
        def __init__(self, sample):
            self.sample = sample

    def forward(self, x, t):
        return self._Out(x)


def measure_overhead(spec, dev, batch=128, nfe=50, repeats=5, T=T_DEFAULT) -> dict:
    """Per-step time of each sampler with a zero-cost network over one network forward (batch 128)."""
    torch.manual_seed(0)
    dnet = make_difflab(spec).to(dev).eval()
    unet = make_diffusers(spec).to(dev).eval()
    x = torch.randn((batch, *spec["shape"]), generator=torch.Generator().manual_seed(0)).to(dev)
    c = torch.full((batch,), 500.0, device=dev)
    t = torch.full((batch,), 500, device=dev, dtype=torch.long)
    zero, zero_d = ZeroNet(), _ZeroDiffusers()
    series = {k: [] for k in ("difflab_net", "diffusers_net", "difflab_ddim", "difflab_ancestral",
                              "diffusers_ddim", "diffusers_ddpm")}

    def timed(fn, reps=1):
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(dev)
        return (time.perf_counter() - t0) / reps

    with torch.inference_mode():
        dnet(x, c)
    with torch.no_grad():
        unet(x, t)
    for _ in range(repeats):
        with torch.inference_mode():
            series["difflab_net"].append(timed(lambda: dnet(x, c)))
        with torch.no_grad():
            series["diffusers_net"].append(timed(lambda: unet(x, t)))
        for s in ("ddim", "ancestral"):
            series[f"difflab_{s}"].append(timed(lambda s=s: run_difflab_sampler(zero, x, s, nfe, nfe, T)) / nfe)
        for s in ("ddim", "ddpm"):
            series[f"diffusers_{s}"].append(timed(lambda s=s: run_diffusers_sampler(zero_d, x, s, nfe, nfe, T)) / nfe)
    med = {k: _median(v) for k, v in series.items()}
    return {"batch": batch, "nfe": nfe, "seconds": series, "median_s": med,
            "difflab_ddim_over_net": med["difflab_ddim"] / med["difflab_net"],
            "difflab_ancestral_over_net": med["difflab_ancestral"] / med["difflab_net"],
            "diffusers_ddim_over_net": med["diffusers_ddim"] / med["diffusers_net"],
            "diffusers_ddpm_over_net": med["diffusers_ddpm"] / med["diffusers_net"]}


# ---- memory: one fresh subprocess per measurement ---------------------------------------------
def _rss_mb() -> float:
    """Peak RSS of this process in MiB: VmHWM from /proc (Linux), else getrusage's ru_maxrss.

    (ru_maxrss of a child started by fork + exec starts at the parent's RSS at the fork, so on Linux the
    benchmark reads the new image's own high-water mark, VmHWM, which exec resets.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 1024.0


def memory_worker(job: dict) -> dict:
    """Run one job in this (fresh) process and report its peak RSS in MiB."""
    torch.set_num_threads(1)
    if "lean_training" in job:  # UNet.lean_training: False = the plain modules, not the memory-lean Functions
        from difflab.nets.unet import UNet
        UNet.lean_training = job["lean_training"]
    dev = torch.device(job["device"])
    spec = CONFIGS[job["config"]]
    batch = job["batch"]
    if job["lib"] == "diffusers":
        import diffusers.training_utils  # noqa: F401
    base = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if job["task"] == "train" and job["lib"] == "difflab":
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "images.npy"
            _write_images(data, spec, int(batch / 0.9) + 8)
            extra = {"net_config": {**difflab_net_config(spec), **job.get("net_extra", {})}}
            train(difflab_train_config(spec, batch, dev, data, job["steps"], extra=extra), Path(tmp) / "run",
                  progress=False)
    elif job["task"] == "train":
        tr = DiffusersTrainer(spec, batch, dev)
        for _ in range(job["steps"]):
            tr.step()
    elif job["task"] == "sample":
        torch.manual_seed(0)
        noise = torch.randn((batch, *spec["shape"]), device=dev)
        if job["lib"] == "difflab":
            run_difflab_sampler(make_difflab(spec).to(dev).eval(), noise, "ddim", 50, job["steps"])
        else:
            run_diffusers_sampler(make_diffusers(spec).to(dev).eval(), noise, "ddim", 50, job["steps"])
    elif job["task"] == "generate":  # difflab's streaming generator: N samples in batches
        from difflab.generate import generate
        cfg = Config(data="bench", net="unet", net_config=difflab_net_config(spec), data_kind="image",
                     data_shape=list(spec["shape"]), sampler="ddim", nfe=job["steps"])
        den = difflab_denoiser(make_difflab(spec).to(dev).eval())
        x, _, _ = generate(cfg, den, job["n"], batch_size=batch, device=dev, progress=False)
        assert x.shape[0] == job["n"]
    else:
        raise ValueError(job)
    out = {"baseline_mb": base, "peak_mb": _rss_mb()}
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def measure_memory(job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, __file__, "--memory-worker", json.dumps(job)], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        return {**job, "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return {**job, **json.loads(r.stdout.strip().splitlines()[-1])}


# ---- growth: batch size, resolution, T ---------------------------------------------------------
def measure_forward_resolution(spec, dev, sizes, batch, repeats) -> dict:
    """Inference time per image of the same network (same parameters) at several input resolutions."""
    out = {"sizes": sizes, "difflab_ms_per_image": [], "diffusers_ms_per_image": [], "ratio": []}
    for s in sizes:
        torch.manual_seed(0)
        dnet = make_difflab(spec, s).to(dev).eval()
        unet = make_diffusers(spec, s).to(dev).eval()
        x = torch.randn((batch, spec["shape"][0], s, s), device=dev)
        c = torch.full((batch,), 500.0, device=dev)
        t = torch.full((batch,), 500, device=dev, dtype=torch.long)
        a, b = [], []
        with torch.inference_mode():
            dnet(x, c)
            unet(x, t)
            for _ in range(repeats):
                for lib, lst in (("difflab", a), ("diffusers", b)):
                    _sync(dev)
                    t0 = time.perf_counter()
                    dnet(x, c) if lib == "difflab" else unet(x, t)
                    _sync(dev)
                    lst.append((time.perf_counter() - t0) / batch * 1e3)
        out["difflab_ms_per_image"].append(_median(a))
        out["diffusers_ms_per_image"].append(_median(b))
        out["ratio"].append(_median([y / x_ for x_, y in zip(a, b)]))  # diffusers time / difflab time
    return out


def _slope(xs, ys) -> float:
    """Least-squares slope of log y on log x (the exponent of a power law)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


# ---- report ----------------------------------------------------------------------------------
def _f(x, nd=1):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def write_report(res: dict):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(res, indent=1))
    m = res["meta"]
    L = ["# Speed: difflab vs diffusers at equal network size", "",
         f"One run of `{m['command']}` on {m['device_name']} ({m['device']}), torch {m['torch']}, diffusers "
         f"{m['diffusers']}, {m['threads']} thread(s), {m['date']}. All figures are medians of interleaved "
         f"repeats (difflab and diffusers alternating); ratio = median of per-repeat difflab / diffusers "
         f"(> 1: difflab faster). The machine was shared, so absolute numbers are noisy; ratios are paired.", ""]
    L += ["## Networks", "", "| config | input | difflab params | diffusers params | diff |", "|---|---|---|---|---|"]
    for name, c in res["configs"].items():
        L.append(f"| {name} | {'x'.join(map(str, c['shape']))} | {c['difflab_params']:,} | "
                 f"{c['diffusers_params']:,} | {100 * (c['difflab_params'] / c['diffusers_params'] - 1):+.2f}% |")
    L += ["", "## Training (images/s, full step: noise, forward, MSE, backward, clip, AdamW, EMA)", "",
          "| config | batch | difflab | diffusers | ratio | repeats x steps |", "|---|---|---|---|---|---|"]
    for row in res["train"]:
        L.append(f"| {row['config']} | {row['batch']} | {_f(row['difflab_median'])} | {_f(row['diffusers_median'])} "
                 f"| {_f(row['ratio_median'], 2)} | {len(row['difflab'])} x {row['k']} |")
    L += ["", "## Sampling (images/s for the whole run of NFE network calls)", "",
          "| config | batch | sampler | NFE | difflab | diffusers | ratio | timed |",
          "|---|---|---|---|---|---|---|---|"]
    for row in res["sample"]:
        timed = f"extrap. from {row['timed_steps']} steps" if row["extrapolated"] else "full run"
        L.append(f"| {row['config']} | {row['batch']} | {row['sampler']} | {row['nfe']} "
                 f"| {row['difflab_median']:.3g} | {row['diffusers_median']:.3g} | {_f(row['ratio_median'], 2)} "
                 f"| {timed} |")
    L += ["", "## Sampler overhead (step without the network / one network forward, batch 128)", "",
          "| config | net forward ms (difflab / diffusers) | difflab ddim | difflab ancestral | diffusers ddim "
          "| diffusers ddpm |", "|---|---|---|---|---|---|"]
    for row in res["overhead"]:
        md = row["median_s"]
        L.append(f"| {row['config']} | {md['difflab_net'] * 1e3:.1f} / {md['diffusers_net'] * 1e3:.1f} | "
                 f"{100 * row['difflab_ddim_over_net']:.2f}% ({md['difflab_ddim'] * 1e3:.2f} ms) | "
                 f"{100 * row['difflab_ancestral_over_net']:.2f}% ({md['difflab_ancestral'] * 1e3:.2f} ms) | "
                 f"{100 * row['diffusers_ddim_over_net']:.2f}% | {100 * row['diffusers_ddpm_over_net']:.2f}% |")
    if res.get("memory"):
        L += ["", "## Peak memory (fresh process per row; peak RSS = VmHWM, MiB)", "",
              "| task | config | lib | batch | steps | peak RSS | RSS after imports | extra |",
              "|---|---|---|---|---|---|---|---|"]
        for row in res["memory"]:
            if "error" in row:
                L.append(f"| {row['task']} | {row['config']} | {row['lib']} | {row['batch']} | {row['steps']} | "
                         f"error: {row['error']} | | |")
                continue
            parts = [f"N = {row['n']}"] if row["task"] == "generate" else []
            parts += [f"{k}={v}" for k, v in row.get("net_extra", {}).items()]
            if "lean_training" in row:
                parts.append(f"lean_training={row['lean_training']}")
            if "cuda_peak_mb" in row:
                parts.append(f"CUDA peak {row['cuda_peak_mb']:.0f} MiB")
            extra = " ".join(parts)  # (the pieces used to be glued without a space when two came together)
            L.append(f"| {row['task']} | {row['config']} | {row['lib']} | {row['batch']} | {row['steps']} | "
                     f"{row['peak_mb']:.0f} | {row['baseline_mb']:.0f} | {extra} |")
    g = res.get("growth", {})
    if g:
        L += ["", "## How the figures grow", ""]
        if "batch" in g:
            b = g["batch"]
            L.append(f"**Batch size** ({b['config']}): training images/s difflab / diffusers at batch "
                     + ", ".join(f"{n}: {_f(x)} / {_f(y)}" for n, x, y in
                                 zip(b["batches"], b["difflab"], b["diffusers"]))
                     + ". Sampling (ddim, one step) images/s at batch "
                     + ", ".join(f"{n}: {_f(x)} / {_f(y)}" for n, x, y in
                                 zip(b["sample_batches"], b["sample_difflab"], b["sample_diffusers"]))
                     + ". Throughput rises with the batch until the per-call overheads are amortised, then flattens"
                     " (time grows ~linearly in the batch: exponent of time vs batch "
                     f"{_slope(b['batches'], [n / r for n, r in zip(b['batches'], b['difflab'])]):.2f} for difflab's"
                     " training step).")
        if "resolution" in g:
            r = g["resolution"]
            px = [s * s for s in r["sizes"]]
            L.append("")
            L.append(f"**Resolution** (the {r['config']} network, same parameters, inference at batch {r['batch']}): "
                     "ms per image difflab / diffusers at "
                     + ", ".join(f"{s}x{s}: {x:.2f} / {y:.2f}" for s, x, y in
                                 zip(r["sizes"], r["difflab_ms_per_image"], r["diffusers_ms_per_image"]))
                     + f"; cost ~ pixels^{_slope(px, r['difflab_ms_per_image']):.2f} (difflab),"
                     f" ^{_slope(px, r['diffusers_ms_per_image']):.2f} (diffusers): convolutions "
                     "are linear in the pixels, attention at the lowest level quadratic.")
        if "T" in g:
            t = g["T"]
            L.append("")
            L.append(f"**T** ({t['config']}, batch {t['batch']}): difflab training images/s at T = "
                     + ", ".join(f"{T}: {_f(x)}" for T, x in zip(t["Ts"], t["difflab"]))
                     + f" (spread {100 * (max(t['difflab']) - min(t['difflab'])) / _median(t['difflab']):.0f}% of the "
                     "median). The step does the same work for any T (T only "
                     "sizes the alpha-bar table it indexes), so the spread is the shared machine's noise. Sampling "
                     "time is linear in the number of network calls NFE (not in T): see the NFE 10 / 50 / 1000 "
                     "columns above, where images/s scales as 1 / NFE.")
    if res.get("options"):
        L += ["", "## difflab options", ""]
        for k, v in res["options"].items():
            L.append(f"- {k}: {v}")
    for heading, lines in res.get("notes", {}).items():  # measurements outside the tables, kept in speed.json
        L += ["", f"## {heading}", "", *lines]
    L.append("")
    (RESULTS / "speed.md").write_text("\n".join(L))


# ---- main ------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (few repeats, small batches)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=10, help="network calls timed per sampling run at most")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: train,sample,overhead,memory,growth")
    ap.add_argument("--sample-batch", type=int, help="batch for the sampling table (default: the training batch)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of results/speed.json for other configs / parts and replace these")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    import diffusers
    dev = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    names = [n for n in args.configs.split(",") if n]
    reps = 2 if args.quick else args.repeats
    res = {"meta": {"command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]), "device": str(dev),
                    "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
                    or platform.machine(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
           "configs": {}, "train": [], "sample": [], "overhead": [], "memory": [], "growth": {}}
    # batch for the main training / sampling tables: 128 where it fits a short run on one core
    if args.merge and (RESULTS / "speed.json").exists():
        old = json.loads((RESULTS / "speed.json").read_text())
        parts = [k for k in ("train", "sample", "overhead") if k not in skip]
        for k in parts:
            res[k] = [r for r in old[k] if r["config"] not in names]
        for k in ("train", "sample", "overhead", "memory", "growth"):
            if k not in parts:
                res[k] = old.get(k, res[k])
        res["configs"] = old["configs"]
        for k in ("options", "notes"):  # written by hand into speed.json: kept
            if k in old:
                res[k] = old[k]
        if "memory" not in skip:  # the memory rows are measured afresh (one config), not appended to the old
            res["memory"] = []
        res["meta"]["command"] = old["meta"]["command"] + "` then `" + res["meta"]["command"]
    train_batch = {"8x8-grey": 128, "28x28-grey": 32, "32x32-rgb": 32}
    train_reps = {k: 3 if args.quick else (15 if k == "8x8-grey" else 5) for k in train_batch}
    if dev.type == "cuda":
        train_batch = {k: 128 for k in train_batch}
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    for name in names:
        spec = CONFIGS[name]
        a, b = nets.param_count(make_difflab(spec)), nets.param_count(make_diffusers(spec))
        res["configs"][name] = {"shape": list(spec["shape"]), "difflab_params": a, "diffusers_params": b,
                                "difflab_net_config": difflab_net_config(spec)}
        log(f"{name}: params difflab {a:,} diffusers {b:,} ({100 * (a / b - 1):+.2f}%)")
        if abs(a / b - 1) > 0.03:
            raise SystemExit(f"{name}: parameter counts differ by more than 3%")
    mem_thread = None
    if "memory" not in skip:  # fresh subprocesses, one after another, while the timings run
        mem_name = "32x32-rgb" if "32x32-rgb" in names else names[-1]
        mb = 16 if args.quick else 128
        jobs = [dict(task=t, lib=lib, config=mem_name, batch=mb, steps=2) for lib in ("difflab", "diffusers")
                for t in ("train", "sample")]
        jobs.insert(1, dict(task="train", lib="difflab", config=mem_name, batch=mb, steps=2,
                            net_extra={"recompute_activations": True}))
        jobs.insert(1, dict(task="train", lib="difflab", config=mem_name, batch=mb, steps=2,
                            lean_training=False))  # the U-Net's plain modules (the default before issue 9)
        jobs.append(dict(task="generate", lib="difflab", config=mem_name, batch=mb, steps=1,
                         n=64 if args.quick else 512))

        def run_memory_jobs():
            for job in jobs:
                row = measure_memory({**job, "device": str(dev)})
                res["memory"].append(row)
                log(f"memory {row}")
        mem_thread = threading.Thread(target=run_memory_jobs)
        mem_thread.start()
    for name in names:
        spec = CONFIGS[name]
        batch = 16 if args.quick else train_batch[name]
        if "train" not in skip:
            k = 1  # alternate every step: the machine's load changes within seconds
            row = measure_train(spec, batch, dev, train_reps[name], k)
            res["train"].append({"config": name, "batch": batch, "k": k, **row})
            log(f"train {name} b{batch}: difflab {row['difflab_median']:.1f} diffusers {row['diffusers_median']:.1f} "
                f"img/s ratio {row['ratio_median']:.2f}")
        if "sample" not in skip:
            for sampler, nfe in (("ddim", 10), ("ddim", 50), ("ddim", 1000), ("ancestral", 1000)):
                max_steps = 2 if args.quick else args.max_steps
                if dev.type == "cpu" and not args.quick:  # a forward takes seconds on one busy core
                    max_steps = min(max_steps, {"8x8-grey": 10, "28x28-grey": 4}.get(name, 3))
                row = measure_sample(spec, args.sample_batch or batch, dev, sampler, nfe, reps, max_steps)
                res["sample"].append({"config": name, **row})
                log(f"sample {name} {sampler} nfe {nfe}: difflab {row['difflab_median']:.2f} diffusers "
                    f"{row['diffusers_median']:.2f} img/s ratio {row['ratio_median']:.2f}")
        if "overhead" not in skip:
            row = measure_overhead(spec, dev, batch=128, nfe=5 if args.quick else 20, repeats=reps)
            res["overhead"].append({"config": name, **row})
            log(f"overhead {name}: difflab ddim {100 * row['difflab_ddim_over_net']:.2f}% ancestral "
                f"{100 * row['difflab_ancestral_over_net']:.2f}% of the net")
        write_report(res)
    if mem_thread is not None:
        mem_thread.join()
        write_report(res)
    if "growth" not in skip:
        gname = "8x8-grey" if "8x8-grey" in names else names[0]
        spec = CONFIGS[gname]
        batches = [8, 32] if args.quick else [16, 64, 256]
        bt = {"config": gname, "batches": batches, "difflab": [], "diffusers": [], "sample_batches": batches,
              "sample_difflab": [], "sample_diffusers": []}
        for n in batches:
            row = measure_train(spec, n, dev, 3 if args.quick else 5, 1)
            bt["difflab"].append(row["difflab_median"])
            bt["diffusers"].append(row["diffusers_median"])
            row = measure_sample(spec, n, dev, "ddim", 10, reps, 2 if args.quick else 10)
            bt["sample_difflab"].append(row["difflab_median"] * 10)  # per network call
            bt["sample_diffusers"].append(row["diffusers_median"] * 10)
            log(f"growth batch {n}: train {bt['difflab'][-1]:.1f}/{bt['diffusers'][-1]:.1f} "
                f"sample-step {bt['sample_difflab'][-1]:.1f}/{bt['sample_diffusers'][-1]:.1f}")
        res["growth"]["batch"] = bt
        rname = "28x28-grey"
        sizes = [8, 16] if args.quick else [8, 16, 32]
        res["growth"]["resolution"] = {"config": rname, "batch": 32,
                                       **measure_forward_resolution(CONFIGS[rname], dev, sizes, 8 if args.quick else 32,
                                                                    reps)}
        log(f"growth resolution {res['growth']['resolution']}")
        Ts = [100, 1000, 4000]
        tb = 16 if args.quick else 64
        res["growth"]["T"] = {"config": gname, "batch": tb, "Ts": Ts,
                              "difflab": [measure_train(spec, tb, dev, reps, 2 if args.quick else 4, T=T,
                                                        with_diffusers=False)["difflab_median"] for T in Ts]}
        log(f"growth T {res['growth']['T']}")
        write_report(res)
    log(f"done: {RESULTS / 'speed.md'}")


if __name__ == "__main__":
    main()
