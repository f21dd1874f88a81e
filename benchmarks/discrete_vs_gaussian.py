"""Bits/dim and sample quality of VAE, HVAE, D3PM (uniform, absorbing, discretised-Gaussian transitions) and
Gaussian DDPMs on the digits' 17 levels, each trained for the same CPU budget (CPU minutes at 1 thread).

    OMP_NUM_THREADS=1 python benchmarks/discrete_vs_gaussian.py --minutes 4 [--models vae,hvae,...]
    python benchmarks/discrete_vs_gaussian.py --report-only      # table and figure from the saved JSON

Per model: `difflab.train.train` with the model's preset, stopped after `--minutes` of process CPU time; then
the negative ELBO in bits/dim on the first --n-heldout (100) of the 180 held-out digits (never trained on):
D3PM/VAE/HVAE their own bound (difflab.families), Gaussian DDPMs the full T-step chain with the discretised
decoder (difflab.elbo); then --n-samples samples judged by a classifier trained on the real digits' train split
(as benchmarks/judge_digits.py): the rate of samples classified with confidence >= 0.9 and the class
histogram's total variation from uniform.
Writes benchmarks/results/discrete_vs_gaussian.{json,md,png}; runs live in --runs.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflab import data  # noqa: E402
from difflab.config import load_config  # noqa: E402
from difflab.evaluate import EvalContext  # noqa: E402
from difflab.evaluator import judge, train_classifier  # noqa: E402
from difflab.train import train  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NOTES_MARKER = "## Why this order"
# name -> (preset, overrides, description)
MODELS = {
    "vae": ("vae-digits", {}, "VAE (MLP, 16-d latent), discretised Gaussian decoder"),
    "hvae": ("hvae-digits", {}, "two-level HVAE (16-d, 8-d latents), discretised Gaussian decoder"),
    "d3pm-absorbing": ("d3pm-digits", {"transition": "absorbing"}, "D3PM, absorbing (mask), T=100, hybrid loss"),
    "d3pm-uniform": ("d3pm-digits", {"transition": "uniform"}, "D3PM, uniform, T=100, hybrid loss"),
    "d3pm-gaussian": ("d3pm-digits", {"transition": "gaussian"}, "D3PM, discretised Gaussian, T=100, hybrid loss"),
    "ddpm-simple": ("digits", {}, "DDPM, L_simple, fixed variance beta-tilde, T=1000"),
    "ddpm-hybrid": ("digits", {"loss": "hybrid", "variance_type": "learned-range"},
                    "DDPM, hybrid loss (lambda=0.001), learned variance, T=1000"),
    "ddpm-vdm": ("digits", {"model": "vdm"}, "VDM, learned schedule, continuous-time bound"),
    "ddpm-priorgrad": ("digits", {"model": "priorgrad"}, "PriorGrad, N(mu, diag sigma^2) prior, L_simple"),
}


def heldout_bound(run: Path, n: int) -> dict:
    """Negative ELBO in bits/dim on the first n held-out digits: the family's own bound (difflab.families) or,
    for Gaussian models, the `difflab eval --metrics elbo` bound (full T chain with the discretised decoder;
    VDM in continuous time) on the same digits."""
    from dataclasses import replace

    from difflab import families
    from difflab.runs import load_run
    cfg, net, den = load_run(run)
    ho = data.split(data.load("digits"), 0.1, seed=0)[1]
    ho = replace(ho, x=ho.x[:n], labels=None if ho.labels is None else ho.labels[:n])
    if not families.is_family(cfg.model):
        from difflab.evaluate import evaluate
        ctx = EvalContext(checkpoint=str(run), seed=0, batch_size=100, progress=False)
        ctx._cache["heldout"] = ho   # the metric scores the context's held-out split: these n digits
        r = evaluate(ctx, ["elbo"])["elbo"]
        return {"bits_per_dim": r["bits_per_dim"], "bits_per_dim_se": r.get("bits_per_dim_se"),
                "n_heldout": len(ho.x), "elbo_steps": r.get("steps")}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        nats = torch.cat([families.nelbo_nats(cfg, net, ho.x[i:i + 100], g) for i in range(0, len(ho.x), 100)])
    bpd = nats.double() / (ho.x[0].numel() * np.log(2))
    return {"bits_per_dim": float(bpd.mean()), "bits_per_dim_se": float(bpd.std() / np.sqrt(len(bpd))),
            "n_heldout": len(bpd)}


def run_one(name: str, minutes: float, runs: Path, n_samples: int, clf, seed: int, n_heldout: int) -> dict:
    preset, over, desc = MODELS[name]
    out = runs / name
    cfg = load_config(preset, None, {**over, "seed": seed, "checkpoint_every": 10 ** 9})
    cfg.steps, cfg.minutes = 10 ** 8, None
    t0, cpu0 = time.perf_counter(), time.process_time()
    if not (out / "checkpoint.safetensors").is_file():  # budget: CPU seconds of this (1-thread) process
        train(cfg, out, progress=False, stop_flag=lambda: time.process_time() - cpu0 >= minutes * 60)
    train_cpu_s, train_s = time.process_time() - cpu0, time.perf_counter() - t0
    from difflab.checkpoint import load
    res = {"model": name, "description": desc, "preset": preset, "overrides": over, "budget_cpu_minutes": minutes,
           "train_steps": load(out)[1]["step"], "train_cpu_s": round(train_cpu_s, 1),
           "train_wall_s": round(train_s, 1)}
    t0 = time.perf_counter()
    res.update(heldout_bound(out, n_heldout))
    res["elbo_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ctx = EvalContext(checkpoint=str(out), n=n_samples, seed=1, batch_size=250, progress=False)
    x, _ = ctx.samples
    res["sample_s"] = round(time.perf_counter() - t0, 1)
    np.savez(out / "samples.npz", samples=x.numpy())
    j = judge(clf, x)
    res.update(conf_rate=j["conf_rate"], tv_uniform=j["tv_uniform"], hist=j["hist"], n_samples=j["n"])
    return res


def write_report(results: dict, real: dict, minutes: float):
    rows = [r for r in results.values() if "bits_per_dim" in r]
    rows.sort(key=lambda r: r["bits_per_dim"])
    lines = ["# Discrete vs Gaussian models on the digits (17 levels, 8x8): bits/dim and sample quality", "",
             f"Equal budget: {minutes} CPU-minutes of training each (process CPU time, 1 thread, on a 2-core CPU "
             "shared with other jobs; steps differ by model speed, not by budget). Bits/dim: negative ELBO on the "
             f"first {rows[0]['n_heldout'] if rows else 0} of the 180 held-out digits (lower is better; a bound on "
             "-log2 p(x) / 64). Quality: samples judged by a CNN "
             "trained on the real train split; conf = fraction classified with max p >= 0.9, TV = total variation "
             "of the class histogram from uniform.", "",
             "| model | bits/dim (± se) | conf >= 0.9 | TV | steps | train CPU s | wall s | what |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits_per_dim']:.3f} ± {r['bits_per_dim_se'] or 0:.3f} | "
                     f"{r['conf_rate']:.3f} | {r['tv_uniform']:.3f} | {r['train_steps']} | {r['train_cpu_s']} | "
                     f"{r['train_wall_s']} | "
                     f"{r['description']} |")
    lines += ["", f"Real held-out digits: conf >= 0.9 {real['conf_rate']:.3f}, TV {real['tv_uniform']:.3f}.",
              f"Uniform over 17 levels: log2(17) = {np.log2(17):.3f} bits/dim.", ""]
    failed = [r for r in results.values() if "error" in r]
    for r in failed:
        lines.append(f"- {r['model']}: not measured ({r['error']})")
    md = RESULTS / "discrete_vs_gaussian.md"
    notes = ""  # the hand-written explanation of the order survives a re-run
    if md.exists() and NOTES_MARKER in md.read_text():
        notes = md.read_text()[md.read_text().index(NOTES_MARKER):]
    md.write_text("\n".join(lines) + "\n" + (("\n" + notes) if notes else ""))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["model"] for r in rows]
    ax[0].barh(names, [r["bits_per_dim"] for r in rows], xerr=[r["bits_per_dim_se"] or 0 for r in rows],
               color="tab:blue")
    ax[0].axvline(np.log2(17), color="grey", ls="--", lw=1, label="uniform (4.09)")
    ax[0].set_xlabel("negative ELBO, bits/dim (held-out)")
    ax[0].invert_yaxis()
    ax[0].legend(fontsize=8)
    y = np.arange(len(rows))
    ax[1].barh(y - 0.2, [r["conf_rate"] for r in rows], 0.4, label="conf >= 0.9", color="tab:green")
    ax[1].barh(y + 0.2, [r["tv_uniform"] for r in rows], 0.4, label="TV from uniform", color="tab:red")
    ax[1].axvline(real["conf_rate"], color="tab:green", ls="--", lw=1, label="real conf")
    ax[1].set_yticks(y, names)
    ax[1].invert_yaxis()
    ax[1].set_xlim(0, 1)
    ax[1].legend(fontsize=8)
    ax[1].set_xlabel("sample quality (digit classifier)")
    fig.suptitle(f"digits, {minutes} CPU-minutes each")
    fig.tight_layout()
    fig.savefig(RESULTS / "discrete_vs_gaussian.png", dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", default="/tmp/discrete_vs_gaussian_runs")
    ap.add_argument("--n-samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-heldout", type=int, default=180, dest="n_heldout")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = Path(a.runs)
    names = a.models.split(",")
    if not a.report_only:
        torch.manual_seed(0)
        ds = data.load("digits")
        tr, ho = data.split(ds, 0.1, seed=0)
        clf = train_classifier(data.to_unit(tr.x, tr), tr.labels, epochs=40)
        real = judge(clf, data.to_unit(ho.x, ho))
        runs.mkdir(parents=True, exist_ok=True)
        (runs / "real.json").write_text(json.dumps(real))
        for name in names:
            print(f"== {name}", flush=True)
            try:
                r = run_one(name, a.minutes, runs, a.n_samples, clf, a.seed, a.n_heldout)
            except Exception as e:  # a model family not available yet is reported, not hidden
                r = {"model": name, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(json.dumps(r), flush=True)
            (runs / f"{name}.json").write_text(json.dumps(r, indent=2))
    results = {n: json.loads((runs / f"{n}.json").read_text()) for n in MODELS if (runs / f"{n}.json").exists()}
    real = json.loads((runs / "real.json").read_text())
    (RESULTS / "discrete_vs_gaussian.json").write_text(json.dumps({"minutes": a.minutes, "real": real,
                                                                   "results": results}, indent=2))
    write_report(results, real, a.minutes)

if __name__ == "__main__":
    main()
