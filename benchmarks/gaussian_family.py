"""The Gaussian family at equal CPU budget: bits/dim (ELBO), sample quality, wall time (issue 4).

    OMP_NUM_THREADS=1 python benchmarks/gaussian_family.py digits --variant simple-fixed --minutes 6
    OMP_NUM_THREADS=1 python benchmarks/gaussian_family.py mixture --minutes 3
    python benchmarks/gaussian_family.py vdm-plot        # the learned log-SNR against linear and cosine
    python benchmarks/gaussian_family.py report          # -> benchmarks/results/gaussian_family.md / .json

Digits variants (same U-Net preset, same seed, same wall-clock training budget, one thread each):
    simple-fixed   L_simple, fixed variance (beta-tilde)          the DDPM baseline
    hybrid-learned L_simple + 0.001 L_vlb, learned-range variance  (improved DDPM)
    vdm            learned schedule, continuous-time bound         (VDM)
    priorgrad      L_simple toward N(mu, diag sigma^2) of the data (PriorGrad)
Bits/dim: `difflab eval --metrics elbo` on the held-out split (discrete-time bound on --elbo-nfe respaced
steps for the DDPM variants; continuous-time bound for VDM). Samples: ancestral, --sample-nfe steps, judged
by the classifier of benchmarks/judge_digits.py (confident-class rate, class-histogram TV).
Mixture: a 2-D Gaussian mixture written to .npy, `difflab train --data FILE.npy` defaults, ELBO NLL on
held-out points from the same mixture against their true NLL.
Each run writes benchmarks/results/gaussian_family/<name>.json; `report` gathers them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = RESULTS / "gaussian_family"
RUNS = Path("bench_runs/gaussian_family")

VARIANTS = {
    "simple-fixed": {},
    "hybrid-learned": dict(loss="hybrid", variance_type="learned-range"),
    "vdm": dict(model="vdm"),
    "priorgrad": dict(model="priorgrad"),
    "vlb-learned-is": dict(loss="vlb", variance_type="learned-range", importance_sampling=True),
}


def _eval(run, metrics, nfe=None, data=None, n=1000, out_dir=None, sample_nfe=None):
    from difflab.evaluate import EvalContext, evaluate
    ctx = EvalContext(checkpoint=str(run), data=data, nfe=nfe, n=n, progress=False, out_dir=out_dir)
    return evaluate(ctx, metrics)


def digits(a):
    from difflab.config import load_config
    from difflab.generate import generate, save_npz
    from difflab.runs import load_run
    from difflab.train import train
    name = a.variant + a.tag
    run = RUNS / name
    budget = dict(steps=a.steps) if a.steps else dict(minutes=a.minutes)
    overrides = dict(VARIANTS[a.variant], seed=a.seed, checkpoint_every=10**6, batch_size=a.batch_size, **budget)
    if a.base_channels:   # a smaller U-Net than the preset's (same for every variant)
        from difflab.config import PRESETS
        overrides["net_config"] = dict(PRESETS["digits"]["net_config"], base_channels=a.base_channels)
    cfg = load_config("digits", overrides=overrides)
    if not a.steps:
        cfg.steps = None
    t0, c0 = time.perf_counter(), time.process_time()
    train(cfg, run, progress=False)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    steps = _steps(run)
    t0 = time.perf_counter()
    elbo = _eval(run, ["elbo"], nfe=a.elbo_nfe, out_dir=PARTS / name)["elbo"]
    elbo_s = time.perf_counter() - t0
    cfg, _, den = load_run(run)
    t0 = time.perf_counter()
    with torch.inference_mode():
        x, _, _ = generate(cfg, den, a.n_samples, 0, 250, "ancestral", a.sample_nfe, progress=False)
    sample_s = time.perf_counter() - t0
    npz = save_npz(PARTS / f"{name}_samples.npz", x)
    quality = _judge(x)
    res = dict(variant=a.variant, config=VARIANTS[a.variant], budget=budget, base_channels=a.base_channels or 32,
               train_s=round(train_s, 1),
               train_cpu_s=round(train_cpu_s, 1),
               steps=steps, elbo=elbo, elbo_s=round(elbo_s, 1), sample_nfe=a.sample_nfe, n_samples=a.n_samples,
               sample_s=round(sample_s, 1), judge=quality, samples=str(npz))
    _write(name, res)


def _steps(run) -> int:
    from difflab import checkpoint as ckpt
    return int(ckpt.load(run)[1]["step"])


def _judge(x):
    from difflab import data
    from difflab.evaluator import judge, train_classifier
    torch.manual_seed(0)
    ds = data.load("digits")
    tr, ho = data.split(ds, 0.1, seed=0)
    net = train_classifier(data.to_unit(tr.x, tr), tr.labels, epochs=40)
    r = judge(net, x)
    real = judge(net, data.to_unit(ho.x, ho))
    return dict(conf_rate=r["conf_rate"], tv_uniform=r["tv_uniform"], real_conf_rate=real["conf_rate"])


def mixture(a):
    """Train with `difflab train --data FILE.npy` defaults; ELBO NLL of held-out points vs the true NLL."""
    from difflab.cli import main
    from difflab.mixtures import GaussianMixture
    gm = GaussianMixture([0.3, 0.5, 0.2], [[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]],
                         [[0.4, 0.6], [0.5, 0.3], [0.8, 0.4]])
    g = torch.Generator().manual_seed(a.seed)
    PARTS.mkdir(parents=True, exist_ok=True)
    train_f, held_f = PARTS / "mixture_train.npy", PARTS / "mixture_heldout.npy"
    np.save(train_f, gm.sample(20000, generator=g).float().numpy())
    held = gm.sample(a.n_heldout, generator=g).float()
    np.save(held_f, held.numpy())
    true = -gm.log_prob(held.double())
    results = {}
    for name, extra in (("default", []),) + ((("hybrid-learned", ["--loss", "hybrid", "--variance-type",
                                                                    "learned-range"]),) if a.hybrid else ()):
        run = RUNS / f"mixture-{name}"
        t0 = time.perf_counter()
        budget = ["--steps", str(a.steps)] if a.steps else ["--minutes", str(a.minutes)]
        c0 = time.process_time()
        assert main(["train", "--data", str(train_f), "--out", str(run), *budget, "--quiet", *extra]) == 0
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        steps = _steps(run)
        t0 = time.perf_counter()
        e = _eval(run, ["elbo"], data=str(held_f), nfe=a.elbo_nfe, out_dir=PARTS / f"mixture-{name}")["elbo"]
        D = 2
        true_pd = float(true.mean()) / D
        results[name] = dict(train_s=round(train_s, 1), train_cpu_s=round(train_cpu_s, 1), steps=steps, elbo=e,
                             eval_s=round(time.perf_counter() - t0, 1),
                             true_nll_per_dim=true_pd, true_nll_per_dim_se=float(true.std()) / math.sqrt(len(true)) / D,
                             gap_per_dim=e["nats_per_dim"] - true_pd,
                             gap_in_se=(e["nats_per_dim"] - true_pd) / e["nats_per_dim_se"])
    _write("mixture", dict(budget=a.steps or f"{a.minutes} min", runs=results, n_heldout=len(held)))


def reeval(a):
    """Recompute the ELBO of a finished digits run (e.g. after a fix) and update its JSON."""
    path = PARTS / f"{a.name}.json"
    res = json.loads(path.read_text())
    t0 = time.perf_counter()
    res["elbo"] = _eval(RUNS / a.name, ["elbo"], nfe=a.elbo_nfe, out_dir=PARTS / a.name)["elbo"]
    res["elbo_s"] = round(time.perf_counter() - t0, 1)
    _write(a.name, res)


def vdm_plot(a):
    """The learned log-SNR of the VDM run against the fixed schedules."""
    from difflab import schedules
    from difflab.plots import schedules_plot
    from difflab.runs import load_run
    _, _, den = load_run(RUNS / a.name)
    path = schedules_plot({"VDM learned": den.schedule, "linear": schedules.linear(1000),
                           "cosine": schedules.cosine(1000)}, RESULTS / "gaussian_family_vdm_logsnr.png")
    g = den.vdm.gamma
    print(f"{path}: gamma_0 {g.gamma_0.item():.3f}, gamma_1 {g.gamma_1.item():.3f}")


def _write(name, res):
    PARTS.mkdir(parents=True, exist_ok=True)
    (PARTS / f"{name}.json").write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res, indent=2, default=float))


def report(a):
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(PARTS.glob("*.json"))}
    lines = ["# The Gaussian family at equal CPU budget (issue 4)", "",
             "Made by `benchmarks/gaussian_family.py` (commands in its docstring); one thread per run on a shared",
             "2-core CPU. Bits/dim: the ELBO on the 180 held-out digits (17 levels, discretised decoder) +- one",
             "standard error; DDPM variants on their respaced steps, VDM in continuous time.", "",
             "| variant | steps | train wall s | train CPU s | bits/dim (ELBO) | L_T | sum L_t | L_0 | conf>=0.9 | TV |"
             " elbo + sample wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    digit_runs = sorted((k for k in parts if "variant" in parts[k]),
                        key=lambda k: (parts[k]["steps"], list(VARIANTS).index(parts[k]["variant"])))
    for name in digit_runs:
        r = parts[name]
        e = r["elbo"]
        lt = e.get("L_T", e.get("L_prior"))
        ls = e.get("L_t_sum", e.get("L_diffusion"))
        l0 = e.get("L_0", e.get("L_recon"))
        lines.append(f"| {name} | {r['steps']} | {r['train_s']:.0f} | {r['train_cpu_s']:.0f} | "
                     f"{e['bits_per_dim']:.3f} +- {e['bits_per_dim_se']:.3f} ({e['steps']} steps) | {lt:.2f} | "
                     f"{ls:.1f} | {l0:.1f} | {r['judge']['conf_rate']:.3f} | {r['judge']['tv_uniform']:.3f} | "
                     f"{r['elbo_s'] + r['sample_s']:.0f} |")
    if "mixture" in parts:
        m = parts["mixture"]
        lines += ["", "## Gaussian mixture (2-D, .npy), ELBO NLL vs true NLL on held-out points", "",
                  "| run | train s | steps | ELBO nats/dim | true nats/dim | gap | gap / SE |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in m["runs"].items():
            e = r["elbo"]
            lines.append(f"| {name} | {r['train_s']} | {r['steps']} | {e['nats_per_dim']:.4f} +- "
                         f"{e['nats_per_dim_se']:.4f} | {r['true_nll_per_dim']:.4f} | {r['gap_per_dim']:+.4f} | "
                         f"{r['gap_in_se']:+.1f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gaussian_family.md").write_text("\n".join(lines) + "\n" + a.notes)
    (RESULTS / "gaussian_family.json").write_text(json.dumps(parts, indent=2, default=float))
    print("\n".join(lines))


def main(argv=None):
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("digits")
    d.add_argument("--variant", choices=list(VARIANTS), required=True)
    d.add_argument("--minutes", type=float, default=6.0)
    d.add_argument("--steps", type=int, default=None, help="equal steps instead of equal minutes")
    d.add_argument("--base-channels", type=int, default=None, dest="base_channels",
                   help="U-Net width (default: the digits preset's 32)")
    d.add_argument("--elbo-nfe", type=int, default=250, dest="elbo_nfe")
    d.add_argument("--sample-nfe", type=int, default=100, dest="sample_nfe")
    d.add_argument("--n-samples", type=int, default=500, dest="n_samples")
    d.add_argument("--batch-size", type=int, default=None, dest="batch_size", help="default: the preset's 128")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--tag", default="", help="suffix of the run's name (e.g. -900 for a longer budget)")
    m = sub.add_parser("mixture")
    m.add_argument("--minutes", type=float, default=3.0)
    m.add_argument("--steps", type=int, default=None, help="a step budget instead of minutes")
    m.add_argument("--n-heldout", type=int, default=1000, dest="n_heldout")
    m.add_argument("--elbo-nfe", type=int, default=None, dest="elbo_nfe")
    m.add_argument("--hybrid", action="store_true", help="also train hybrid + learned-range on the same budget")
    m.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("vdm-plot")
    v.add_argument("name", nargs="?", default="vdm")
    e = sub.add_parser("reeval")
    e.add_argument("name")
    e.add_argument("--elbo-nfe", type=int, default=100, dest="elbo_nfe")
    r = sub.add_parser("report")
    r.add_argument("--notes", default="", help="markdown appended to the table")
    a = p.parse_args(argv)
    {"digits": digits, "mixture": mixture, "report": report, "vdm-plot": vdm_plot, "reeval": reeval}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
