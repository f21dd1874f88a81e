"""How smoothly a trained network depends on the noise level, by the scale of its noise embedding.

difflab's networks see the noise level as c = 25 (20 - log SNR) in 0 .. 1000 (`denoiser.noise_level_input`)
through sinusoidal features of emb_scale x c (`nets.embeddings.TimeEmbedding`). With emb_scale = 1 (DDPM's
timestep embedding) the fastest feature turns once per 6.3 units of c, a quarter of a unit of log SNR, and a
trained network's eps wobbles at about that period in the noise level. Its PF-ODE map then integrates the
wobble, and a sampler with 10-40 levels lands wherever its levels happen to fall on it.

This trains moons MLPs (linear schedule, T = 1000, skip on, `--steps`) for each scale and seed and scores:

    rough_hi / rough_mid  RMS second difference of eps_hat along consecutive timesteps, t in 700 .. 999 and
                          300 .. 599, at 500 fixed inputs (the exact eps of any data is smooth in t: ~0);
    ode_calls             calls of the adaptive PF-ODE map (RK45, rtol = atol = 1e-6) for n noise draws;
    sw2                   sliced W2 (data units) of that map's samples to 20000 fresh moons draws (the model's
                          quality, free of solver error); floor: n other fresh draws (both as
                          samplers_trained_models.ToyScorer scores them);
    <sampler>@<nfe>       RMS per coordinate to that map of the same noise (the solver's error on this
                          network): difflab's auto, unipc, gauss_multistep; diffusers' LMS and DPM++2M Karras
                          when diffusers is installed (driven as in samplers_vs_diffusers.py).

    python benchmarks/noise_embedding.py [--scales 1 0.1 0.02 0.005] [--seeds 0 1] [--steps 3000] [--n 4000]
                                         [--nfe 10 20 30 40] [--work /tmp/noise_embedding]
    -> benchmarks/results/noise_embedding.{json,md}

Runs and their scores are kept in --work (one JSON per run) and reused; the report gathers every run there,
so scales can be run by separate processes.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import samplers_trained_models as T  # same folder: the run's model, the PF-ODE reference, the toy's SW2
import torch

import difflab
from difflab.cli import main as cli

RESULTS = Path(__file__).resolve().parent / "results"
DIFFLAB = ("auto", "unipc", "gauss_multistep")
DIFFUSERS = ("LMS", "DPM++2M Karras")


def train(work: Path, scale: float, seed: int, steps: int) -> Path:
    out = work / f"scale{scale:g}_s{seed}"
    if (out / "checkpoint.safetensors").exists():
        return out
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / f"{out.name}.toml"
    cfg.write_text(f'net = "mlp"\nnet_config = {{ hidden = 256, depth = 4, skip = true, emb_scale = {scale} }}\n')
    if cli(["train", "--data", "toy:moons", "--out", str(out), "--schedule", "linear", "--steps", str(steps),
            "--config", str(cfg), "--seed", str(seed), "--quiet"]) != 0:
        raise SystemExit(f"training {out} failed")
    return out


def roughness(den, t_lo: int, t_hi: int) -> float:
    ab = den.schedule.alpha_bars.double()
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        e = torch.stack([den.eps(z, torch.full((500,), float(ab[t]), dtype=torch.float64)).double()
                         for t in range(t_lo, t_hi)])
    return float((e[2:] - 2 * e[1:-1] + e[:-2]).pow(2).mean().sqrt())


def diffusers_driver():
    """samplers_vs_diffusers (same folder) when diffusers is installed, else None: difflab's samplers only."""
    try:
        import samplers_vs_diffusers as svd
    except ImportError:
        return None
    return svd


def score(run_dir: Path, n: int, nfes: list[int]) -> dict:
    model = T.Model(str(run_dir))  # the run's denoiser, with the .eps the diffusers driver calls
    den = model.den
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    row = {"rough_hi": roughness(den, 700, 1000), "rough_mid": roughness(den, 300, 600)}
    t0 = time.time()
    ref, row["ode_calls"] = T.pf_ode_map(den, noise)
    row["ode_seconds"] = time.time() - t0
    toy = T.ToyScorer(model.cfg, n)  # SW2 to 20000 fresh draws, and its floor, as samplers_trained_models scores it
    row["sw2"], row["sw2_floor"] = toy(ref)["sw2"], float(np.mean(toy.floor))
    dist = {}
    svd = diffusers_driver()
    for nfe in nfes:
        for name in DIFFLAB:
            with torch.inference_mode():
                x = difflab.sample(den, noise, name, nfe=nfe)
            dist[f"{name}@{nfe}"] = float((x - ref).pow(2).mean().sqrt())
        for label in DIFFUSERS if svd else ():
            cls, extra = svd.diffusers_schedulers()[label]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = svd.run_diffusers(cls, extra, model, noise, svd.steps_for(cls, extra, nfe))[0]
            dist[f"{label}@{nfe}"] = float((x - ref).pow(2).mean().sqrt())
    row["to_map"] = dist
    return row


def report(rows: list[dict], args: dict) -> str:
    nfes = sorted({int(k.split("@")[1]) for r in rows for k in r["to_map"]})
    labels = [lab for lab in (*DIFFLAB, *DIFFUSERS) if any(f"{lab}@{nfes[0]}" in r["to_map"] for r in rows)]
    scales = sorted({r["scale"] for r in rows}, reverse=True)
    lines = ["# A trained network's smoothness in the noise level, by its noise-embedding scale", "",
             f"Generated by `python benchmarks/noise_embedding.py --steps {args['steps']} --n {args['n']}` "
             "(see its docstring): moons MLPs (hidden 256, depth 4, skip), linear schedule T = 1000, the sinusoidal "
             "noise embedding fed emb_scale x c with c = 25 (20 - log SNR) in 0 .. 1000. 1 was difflab's choice "
             "before (and is DDPM's for its timestep); new runs get 0.02. Mean over the seeds (each seed's value "
             "in the JSON).", "",
             "| emb_scale | seeds | rough_hi | rough_mid | RK45 calls | SW2 of the map's samples (floor) |",
             "|---|---|---|---|---|---|"]
    for s in scales:
        rs = [r for r in rows if r["scale"] == s]
        m = {k: np.mean([r[k] for r in rs]) for k in ("rough_hi", "rough_mid", "ode_calls", "sw2", "sw2_floor")}
        lines.append(f"| {s:g} | {len(rs)} | {m['rough_hi']:.2e} | {m['rough_mid']:.2e} | {m['ode_calls']:.0f} | "
                     f"{m['sw2']:.4f} ({m['sw2_floor']:.4f}) |")
    lines += ["", "RMS per coordinate to the network's own adaptive PF-ODE map of the same noise (mean over the "
              "seeds; max in brackets):", ""]
    for nfe in nfes:
        lines += [f"**{nfe} calls**", "", "| emb_scale | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for s in scales:
            rs = [r for r in rows if r["scale"] == s]
            cells = []
            for lab in labels:
                v = [r["to_map"][f"{lab}@{nfe}"] for r in rs if f"{lab}@{nfe}" in r["to_map"]]
                cells.append(f"{np.mean(v):.4f} ({max(v):.4f})" if v else "")
            lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.1, 0.02, 0.005])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 30, 40])
    ap.add_argument("--work", default="/tmp/noise_embedding")
    ap.add_argument("--report-only", action="store_true", help="only gather the runs in --work into the report")
    a = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(a.work)
    if not a.report_only:
        for scale in a.scales:
            for seed in a.seeds:
                js = work / f"scale{scale:g}_s{seed}.json"
                if js.exists():
                    continue
                t0 = time.time()
                row = {"scale": scale, "seed": seed, **score(train(work, scale, seed, a.steps), a.n, a.nfe)}
                js.write_text(json.dumps(row))
                print(f"scale {scale:g} seed {seed}: rough_hi {row['rough_hi']:.2e} ode_calls {row['ode_calls']} "
                      f"sw2 {row['sw2']:.4f} unipc@20 {row['to_map'].get('unipc@20', float('nan')):.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("scale*_s*.json"))]
    args = {"steps": a.steps, "n": a.n}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "noise_embedding.json").write_text(json.dumps({"args": args, "rows": rows}, indent=1))
    (RESULTS / "noise_embedding.md").write_text(report(rows, args) + "\n")
    print(report(rows, args))


if __name__ == "__main__":
    main()
