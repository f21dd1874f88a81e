"""Where along the trajectory does the default UniPC's error arise, and two solver variants that did not help
(issue 5, fifth pass on the 10-call grid).

At 10 calls difflab's default UniPC loses to diffusers' UniPC on the 2-D validation mixtures with narrow
modes 2.4 .. 3.5 apart (samplers_lowdim_validation_n40000.md): it moves 1.3 .. 2.2 % of the mass to another
mode, and with modes that far apart that mass dominates the SW2. Two measurements here.

1. `--part where`: restart from the exact flow. For each level sigma_k of the default grid, the samples are
   carried by the exact probability-flow ODE (`samplers_lowdim_validation.exact_flow`, DOP853, rtol 1e-9)
   from sigma_max down to sigma_k, and the default UniPC runs the rest of its grid from there (its history
   restarts, so the first step after sigma_k is first order: a restart costs accuracy of its own). The level
   at which the error against the exact map (dgap, mode_tv, SW2 to the map's samples) collapses is where the
   sampler's error arises. Cases: 2-D seeds 1, 7, 15 at 10 calls and the benchmark ring at 20 calls (n =
   40000), 64-D seeds 2 and 5 (`samplers_highdim_validation.random_mixture_hd`, the two it loses at 10 calls)
   at n = 4000.
2. `--part variants`: on the 21 2-D validation mixtures (n = 40000, the noise and judge of
   samplers_lowdim_validation.py --n 40000, whose stored diffusers rows give the verdicts):
   - the default;
   - singlestep midpoints: one step of the grid gets an interior node at the middle of its log-sigma
     interval (the state predicted there by the multistep predictor, one call), and the step is then taken
     from its start with that node interpolated (UniPC's weights for r = 1/2) instead of extrapolated from
     older levels; a level elsewhere is dropped to keep 10 calls;
   - diffusers' UniPC levels (timesteps 999, 899, .., 100: sigma 157, 60, 26, 12, 6.1, 3.4, 2.0, 1.24, 0.72,
     0.34) under difflab's UniPC with its "gauss" last step.

Run:  python benchmarks/samplers_error_origin.py --part where      (~10 min, one core)
      python benchmarks/samplers_error_origin.py --part variants   (~8 min)
      python benchmarks/samplers_error_origin.py --report
Writes benchmarks/results/samplers_error_origin_{where,variants}.json and samplers_error_origin.md.
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

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import samplers_grid_tuning_lowdim as T  # noqa: E402
import samplers_highdim_validation as H  # noqa: E402
import samplers_lowdim_validation as V  # noqa: E402
import samplers_vs_diffusers as B  # noqa: E402

import difflab  # noqa: E402
from difflab import samplers as S  # noqa: E402

RESULTS = HERE / "results"
S_MAX = math.sqrt((1 - V.AB_T) / V.AB_T)
STORED = RESULTS / "samplers_lowdim_validation_n40000.json"
DEFAULT_10 = list(S._TUNED["low"][10][1])  # the default 2-D levels below sigma_max
# diffusers' UniPC at 10 steps ("linspace" spacing): timesteps 999, 899, .., 100; the levels below sigma_max
DIFFUSERS_UNIPC_10 = [math.sqrt((1 - float(B.SCHED.alpha_bars[t])) / float(B.SCHED.alpha_bars[t]))
                      for t in (899, 799, 699, 599, 500, 400, 300, 200, 100)]


def mixture(name: str):
    """('bench' | 2-D seed | 'hd<seed>') -> (GaussianMixture, the validation reports' name)."""
    if name == "bench":
        return B.mixtures()["2d"], "benchmark 2d"
    if name.startswith("hd"):
        return H.random_mixture_hd(int(name[2:]))[0], f"64-D seed {name[2:]}"
    return V.random_mixture(int(name))[0], f"seed {name}"


def setup(name: str, n: int):
    """The validation scripts' noise (seed 1), judge (seed 99) and exact map for one mixture."""
    gm, label = mixture(name)
    noise = torch.randn(n, gm.dim, generator=torch.Generator().manual_seed(1))
    judge = B.Judge(gm, n, n_floor=1)
    ref = V.exact_map(gm, noise)
    return gm, label, noise, judge, ref, judge(ref)


def score(gm, judge, x, ref, ref_scores) -> dict:
    sw, gap = judge(x)
    return {"sw2": sw, "gap": gap, "dgap": gap - ref_scores[1], **V.to_map(gm, judge, x, ref)}


# ---- 1. where the error arises -----------------------------------------------------------------------
WHERE_CASES = [("1", 10, 40000), ("7", 10, 40000), ("15", 10, 40000), ("bench", 20, 40000),
               ("hd2", 10, 4000), ("hd5", 10, 4000)]


def where(name: str, nfe: int, n: int) -> dict:
    gm, label, noise, judge, ref, ref_scores = setup(name, n)
    sig = [float(v) for v in T.chosen_sigmas(nfe, gm.dim)]
    order = S.tuned_order(nfe, gm.dim)
    rows = []
    for k in range(len(sig) - 1):
        if k == 0:
            start = noise
        else:
            start = (V.exact_flow(gm, noise, sig[k]) / math.sqrt(1 + sig[k] ** 2)).float()  # VP units at sigma_k
        den = B.FastExactMixture(gm).denoiser()
        x = difflab.sample(den, start, "unipc", grid=T.ab_of_sigmas(sig[k:]), order=order)
        rows.append({"exact_to": sig[k], **score(gm, judge, x, ref, ref_scores)})
        r = rows[-1]
        print(f"  {label} NFE {nfe}: exact to sigma {sig[k]:8.3f}: dgap {r['dgap']:+.4f} mode_tv "
              f"{100 * r['mode_tv']:.2f} % SW2 to map {r['sw2_to_map']:.4f}", flush=True)
    return {"mixture": label, "nfe": nfe, "n": n, "sigmas": sig, "order": order, "rows": rows}


# ---- 2. variants -----------------------------------------------------------------------------------------
def unipc_midpoints(den, noise, sig, mids=(), order=2, keep_previous=False):
    """difflab's UniPC (bh2, corrector, "gauss" last step) on VE levels sig (sig[0] = sigma_max), where each
    step i in mids (sig[i] -> sig[i+1]) gets an interior node at the middle of its log-sigma interval: the
    multistep predictor's state there, one call, then the step from sig[i] with that node interpolated (and,
    keep_previous, the previous level's too: one order more)."""
    lam = [-math.log(s) for s in sig]

    def den_x0(x, s):
        ab = 1 / (1 + s * s)
        return S._predict(den, x * math.sqrt(ab), ab)[0]

    def step(x_s, lam_s, d_s, others, lam_t, d_new=None):
        h = lam_t - lam_s
        em = math.expm1(-h)
        rks = [(lk - lam_s) / h for lk, _ in others] + ([1.0] if d_new is not None else [])
        diffs = [(dk - d_s) / rk for (_, dk), rk in zip(others, rks)] + ([d_new - d_s] if d_new is not None else [])
        x_t = (1 + em) * x_s - em * d_s
        if not diffs:
            return x_t
        a, b = ([0.5], -em) if len(diffs) == 1 else S._unipc_coefs(rks, h, len(diffs), "bh2")
        return x_t + b * sum(float(ak) * dk for ak, dk in zip(a, diffs))

    x = noise * math.sqrt(1 + sig[0] ** 2)
    hist, x_prev, evals = [], None, []  # hist: (lambda, x0_hat), newest last
    for i in range(len(sig)):
        d = den_x0(x, sig[i])
        evals = (evals + [(x, d, sig[i])])[-2:]
        if i > 0:  # UniC corrector with the new evaluation
            p = min(order, len(hist) + 1)
            x = step(x_prev, *hist[-1], hist[-p:-1][::-1] if p > 1 else [], lam[i], d_new=d)
        hist = (hist + [(lam[i], d)])[-order:]
        if i == len(sig) - 1:
            break
        x_prev = x
        others = hist[:-1][::-1]
        if i in mids:
            lam_m = 0.5 * (lam[i] + lam[i + 1])
            u = step(x, lam[i], d, others, lam_m)
            others = ([(lam_m, den_x0(u, math.exp(-lam_m)))] + others)[:order - 1 + keep_previous]
        x = step(x, lam[i], d, others, lam[i + 1])
    return S._gauss_final(x, hist[-1][1], *evals)


def variants() -> dict[str, tuple[list[float], tuple[int, ...], bool]]:
    """label -> (the 9 levels below sigma_max, steps with a midpoint, keep_previous)."""
    out = {"default (10 levels)": (DEFAULT_10, (), False)}
    for j in (7, 5):  # the levels 0.103 and 0.445
        lv = DEFAULT_10[:j] + DEFAULT_10[j + 1:]
        for i in (3, 4):
            for keep in (False, True):
                out[f"midpoint in {lv[i - 1]:.3g} -> {lv[i]:.3g}{' + previous level' if keep else ''}, "
                    f"level {DEFAULT_10[j]:.3g} dropped"] = (lv, (i,), keep)
    out["diffusers' UniPC levels, difflab's UniPC"] = (DIFFUSERS_UNIPC_10, (), False)
    return out


def run_variants(names) -> list[dict]:
    stored = {r["mixture"]: r for r in json.loads(STORED.read_text())}
    out = []
    for name in names:
        t0 = time.time()
        gm, label, noise, judge, ref, ref_scores = setup(name, 40000)
        b_sw, b_gap = V.best_diffusers(stored[label], 10)
        df = [r for r in stored[label]["rows"] if r["nfe_target"] == 10 and r["lib"] == "diffusers"
              and not math.isnan(r["sw2"])]
        res = {"mixture": label, "diffusers_best_sw2": b_sw["sw2"], "diffusers_best_abs_gap": abs(b_gap["gap"]),
               "diffusers_best_sw2_to_map": min(r["sw2_to_map"] for r in df), "rows": {}}
        for v, (lv, mids, keep) in variants().items():
            den = B.FastExactMixture(gm).denoiser()
            x = unipc_midpoints(den, noise.double(), [S_MAX] + lv, set(mids), keep_previous=keep).float()
            r = {"nfe": den.nfe, **score(gm, judge, x, ref, ref_scores)}
            r["pass"] = V.beats(r, b_sw, b_gap)
            res["rows"][v] = r
        out.append(res)
        print(f"  {label}: " + "  ".join(f"{'P' if r['pass'] else '-'} {r['sw2_to_map']:.3f}"
                                         for r in res["rows"].values()) + f" ({time.time() - t0:.0f}s)", flush=True)
    return out


def variant_summary(allres, subset=None) -> list[str]:
    res = [r for r in allres if subset is None or r["mixture"] in subset]
    lines = ["| variant | calls | PASS | SW2 to map below every diffusers' | mean SW2 to map | mode_tv mean | "
             "abs dgap median / mean |", "|---|---|---|---|---|---|---|"]
    for v in res[0]["rows"]:
        rows = [r["rows"][v] for r in res]
        dg = np.abs([r["dgap"] for r in rows])
        win = sum(r["rows"][v]["sw2_to_map"] < r["diffusers_best_sw2_to_map"] for r in res)
        lines.append(f"| {v} | {rows[0]['nfe']} | {sum(r['pass'] for r in rows)}/{len(rows)} | {win} | "
                     f"{np.mean([r['sw2_to_map'] for r in rows]):.4f} | "
                     f"{100 * np.mean([r['mode_tv'] for r in rows]):.2f} % | {np.median(dg):.3f} / {dg.mean():.3f} |")
    return lines


def report():
    md = ["# Where the default UniPC's error arises, and variants that did not help (issue 5)", "",
          "Generated by `benchmarks/samplers_error_origin.py` (see its docstring). Exact mixture denoiser, linear "
          "schedule T = 1000; dgap = gap - gap of the exact PF-ODE map of the same noise; mode_tv = mass moved "
          "between modes against the exact map; SW2 to map = SW2 between the sampler's and the exact map's "
          "samples.", ""]
    wj = RESULTS / "samplers_error_origin_where.json"
    if wj.exists():
        md += ["## 1. Restart from the exact flow at sigma_k", "",
               "Exact PF-ODE from sigma_max to sigma_k, then the default UniPC on the rest of its grid (history "
               "restarted there). The error left is the part that arises below sigma_k.", ""]
        for c in json.loads(wj.read_text()):
            md += [f"**{c['mixture']}, NFE {c['nfe']}** (n = {c['n']}, order {c['order']})", "",
                   "| exact to sigma | dgap | mode_tv | SW2 to map |", "|---|---|---|---|"]
            md += [f"| {r['exact_to']:.3f} | {r['dgap']:+.4f} | {100 * r['mode_tv']:.2f} % | {r['sw2_to_map']:.4f} |"
                   for r in c["rows"]]
            md.append("")
    vj = RESULTS / "samplers_error_origin_variants.json"
    if vj.exists():
        allres = json.loads(vj.read_text())
        hard = [r["mixture"] for r in allres if r["rows"]["default (10 levels)"]["sw2"] >= r["diffusers_best_sw2"]]
        md += ["## 2. Variants at 10 calls, 2-D validation mixtures (n = 40000)", "",
               "PASS: SW2 and |gap| below every diffusers scheduler's (their rows stored in "
               "samplers_lowdim_validation_n40000.json, same noise and judge).", "",
               f"All {len(allres)} mixtures:", ""] + variant_summary(allres)
        md += ["", f"The {len(hard)} the default loses on SW2 ({', '.join(hard)}):", ""] + variant_summary(allres, hard)
    (RESULTS / "samplers_error_origin.md").write_text("\n".join(md) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("where", "variants"))
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.part == "where":
        out = []
        for name, nfe, n in WHERE_CASES:
            out.append(where(name, nfe, n))
            (RESULTS / "samplers_error_origin_where.json").write_text(json.dumps(out, indent=1))
    elif a.part == "variants":
        out = run_variants(["bench"] + [str(s) for s in range(20)])
        (RESULTS / "samplers_error_origin_variants.json").write_text(json.dumps(out, indent=1))
    report()


if __name__ == "__main__":
    main()
