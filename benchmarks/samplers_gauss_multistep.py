"""difflab's `gauss_multistep` against its default UniPC and diffusers' schedulers on the stored validation
mixtures (issue 5).

`gauss_multistep` (difflab/gauss_multistep.py) integrates the probability-flow ODE with the integrating
factor sqrt(s^2 + sigma^2) of a Gaussian whose width s it fits per sample and coordinate from the last two
evaluations, so the part of the flow that settles samples inside a mode of that width is integrated exactly
and only the implied mean is extrapolated (a line in 1 / sqrt(s^2 + sigma^2)).

For each stored validation file (samplers_lowdim_validation*.json, samplers_highdim_validation*.json: the
mixtures, n, and diffusers' rows at NFE 10 and 20), this recomputes the same noise, judge and exact PF-ODE
map, runs `unipc` and `gauss_multistep` with their defaults (the same "tuned" grid), and scores both against
the exact map (dgap = gap - gap of the map; mode_tv = mass moved between modes) and with the issue's verdict
(PASS: SW2 and |gap| below every diffusers scheduler's stored at that NFE).

`--ablation`: the same on the 64d and 2d sets for gauss_multistep with its fitted s^2 scaled by 0, 0.25,
0.5 (width_scale; 0 is a plain multistep in 1 / sigma): does the fitted width do the work?

Run:  python benchmarks/samplers_gauss_multistep.py --sets 64d_n20000,64d,64d_digits,128d,256d,784d --part a
      python benchmarks/samplers_gauss_multistep.py --sets 2d_n40000,2d,4d,16d --part b     (~12 min each, one core)
      python benchmarks/samplers_gauss_multistep.py --sets 8d,16d_s8_31,32d,32d_s8_31 --part c
      python benchmarks/samplers_gauss_multistep.py --sets 3d --part d                      (~2 min each)
      (the 3d .. 32d validation files: samplers_highdim_validation.py --dim 3 --seeds 0-23, --dim 8 --seeds 0-23,
      --dim 16 --seeds 8-31 --tag s8_31, --dim 32, --dim 32 --seeds 8-31 --tag s8_31)
      python benchmarks/samplers_gauss_multistep.py --ablation        (~4 min)
      python benchmarks/samplers_gauss_multistep.py --report
Writes benchmarks/results/samplers_gauss_multistep_<part>.json, and samplers_gauss_multistep.md from all parts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import samplers_highdim_validation as H  # noqa: E402
import samplers_lowdim_validation as V  # noqa: E402
import samplers_vs_diffusers as B  # noqa: E402

import difflab  # noqa: E402

RESULTS = HERE / "results"
SETS = {  # label -> (stored validation json, mixture family)
    "2d_n40000": ("samplers_lowdim_validation_n40000.json", "2d"),
    "2d": ("samplers_lowdim_validation.json", "2d"),
    "3d": ("samplers_highdim_validation_3d.json", "random"),
    "4d": ("samplers_highdim_validation_4d.json", "random"),
    "8d": ("samplers_highdim_validation_8d.json", "random"),
    "16d": ("samplers_highdim_validation_16d.json", "random"),
    "16d_s8_31": ("samplers_highdim_validation_16d_s8_31.json", "random"),
    "32d": ("samplers_highdim_validation_32d.json", "random"),
    "32d_s8_31": ("samplers_highdim_validation_32d_s8_31.json", "random"),
    "64d_n20000": ("samplers_highdim_validation_n20000.json", "random"),
    "64d": ("samplers_highdim_validation.json", "random"),
    "64d_digits": ("samplers_highdim_validation_digits.json", "digits"),
    "128d": ("samplers_highdim_validation_128d.json", "random"),
    "256d": ("samplers_highdim_validation_256d.json", "random"),
    "784d": ("samplers_highdim_validation_784d.json", "random"),
    "2d_background": ("samplers_highdim_validation_background_2d.json", "background"),
    "64d_background": ("samplers_highdim_validation_background_64d.json", "background"),
    "2d_fullcov": ("samplers_highdim_validation_fullcov_2d.json", "fullcov"),
    "3d_fullcov": ("samplers_highdim_validation_fullcov_3d.json", "fullcov"),
    "16d_fullcov": ("samplers_highdim_validation_fullcov_16d.json", "fullcov"),
    "64d_fullcov": ("samplers_highdim_validation_fullcov_64d.json", "fullcov"),
}
SAMPLERS = {"unipc": ("unipc", {}), "gauss_multistep": ("gauss_multistep", {})}  # label -> (sampler, options)
ABLATION = {**SAMPLERS, **{f"gauss_multistep s2 x {c}": ("gauss_multistep", {"width_scale": c})
                           for c in (0.0, 0.25, 0.5)}}


def mixture(stored: dict, family: str):
    name, dim = stored["mixture"], stored.get("dim") or 2
    if name.startswith("benchmark"):
        return B.mixtures()["2d"]
    seed = int(name.split()[-1])
    return V.random_mixture(seed)[0] if family == "2d" else H.family_mixture(family, seed, dim)[0]


def run_set(label: str, samplers: dict = SAMPLERS, nfes=(10, 20)) -> list[dict]:
    """Every mixture of a stored set: each sampler (label -> (name, options)) at each nfe against the exact map of
    the same noise; PASS (and the exact map's own) where the set stores diffusers' rows (NFE 10 and 20)."""
    path, family = SETS[label]
    out = []
    for res in json.loads((RESULTS / path).read_text()):
        t0 = time.time()
        gm, n = mixture(res, family), res["n"]
        noise = torch.randn(n, gm.dim, generator=torch.Generator().manual_seed(1))
        judge = B.Judge(gm, n, n_floor=1)
        ref = V.exact_map(gm, noise)
        sw_ref, gap_ref = judge(ref)
        row = {"mixture": res["mixture"], "dim": gm.dim, "n": n, "rows": {}}
        for nfe in nfes:
            best = V.best_diffusers(res, nfe) if nfe in (10, 20) else None
            if best is not None:
                row["rows"][f"exact map@{nfe}"] = {"pass": V.beats({"sw2": sw_ref, "gap": gap_ref}, *best)}
            for label_s, (name, opts) in samplers.items():
                den = B.FastExactMixture(gm).denoiser()
                x = difflab.sample(den, noise, name, nfe=nfe, **opts)
                sw, gap = judge(x)
                r = {"calls": den.nfe, "sw2": sw, "gap": gap, "dgap": gap - gap_ref, **V.to_map(gm, judge, x, ref)}
                if best is not None:
                    r["pass"] = V.beats(r, *best)
                row["rows"][f"{label_s}@{nfe}"] = r
        out.append(row)
        print(f"  {label} {res['mixture']}: " + "  ".join(
            f"{k} {'P' if r.get('pass') else '-'}" + (f" {r['dgap']:+.3f}" if "dgap" in r else "")
            for k, r in row["rows"].items())
            + f" ({time.time() - t0:.0f}s)", flush=True)
    return out


def run_into_part(js: Path, labels: list[str], run) -> None:
    """run(label) for each stored set, written into the part file js after each set: a rerun set replaces its
    rows there, the file's other sets stay (samplers_auto.py's parts too)."""
    done = json.loads(js.read_text()) if js.exists() else {}
    for label in labels:
        done[label] = run(label)
        js.write_text(json.dumps(done, indent=1))


def merged_parts(pattern: str, skip: str | None = None):
    """The part files RESULTS/pattern in name order (those whose stem ends with skip left out), merged: lists
    concatenated, dicts updated (a later part's set replaces an earlier one's)."""
    merged = None
    for js in sorted(RESULTS.glob(pattern)):
        if skip and js.stem.endswith(skip):
            continue
        part = json.loads(js.read_text())
        if merged is None:
            merged = part
        elif isinstance(part, list):
            merged += part
        else:
            merged.update(part)
    return {} if merged is None else merged


def run_part(jobs, name: str) -> list:
    """Run jobs, (label, thunk returning one row), in order; print each label with its time and rewrite RESULTS/name
    with the rows so far after each (JSON round-tripped, so integer keys read back as strings)."""
    rows = []
    for label, job in jobs:
        t0 = time.time()
        rows.append(json.loads(json.dumps(job())))
        print(f"{label} ({time.time() - t0:.0f}s)", flush=True)
        (RESULTS / name).write_text(json.dumps(rows, indent=1))
    return rows


def publish(name: str, text: str) -> None:
    """Write a generated report to RESULTS/name and print it."""
    (RESULTS / name).write_text(text)
    print(text)


def stats(rows: list[dict], key: str) -> tuple[int, np.ndarray, float]:
    """(PASS count, |dgap| per mixture, mean mode_tv in %) of one sampler at one NFE (key "label@nfe")."""
    r = [row["rows"][key] for row in rows]
    return (sum(v["pass"] for v in r), np.abs([v["dgap"] for v in r]),
            100 * float(np.mean([v["mode_tv"] for v in r])))


def summary_lines(allres: dict) -> list[str]:
    lines = ["| set | mixtures | NFE | PASS unipc / gauss_multistep / exact map | abs dgap median unipc / "
             "gauss_multistep | abs dgap max unipc / gauss_multistep | gauss_multistep closer to the map | "
             "mode_tv mean unipc / gauss_multistep |", "|---|---|---|---|---|---|---|---|"]
    for label, rows in allres.items():
        for nfe in (10, 20):
            pu, du, tu = stats(rows, f"unipc@{nfe}")
            pg, dg, tg = stats(rows, f"gauss_multistep@{nfe}")
            mp = sum(r["rows"][f"exact map@{nfe}"]["pass"] for r in rows)
            lines.append(
                f"| {label} (dim {rows[0]['dim']}, n {rows[0]['n']}) | {len(rows)} | {nfe} | {pu} / {pg} / {mp} | "
                f"{np.median(du):.3f} / {np.median(dg):.3f} | {du.max():.3f} / {dg.max():.3f} | "
                f"{int((dg < du).sum())}/{len(rows)} | {tu:.2f} % / {tg:.2f} % |")
    return lines


def report(allres: dict):
    md = ["# gauss_multistep vs the default UniPC (and diffusers) on the validation mixtures (issue 5)", "",
          "Generated by `benchmarks/samplers_gauss_multistep.py` (see its docstring). Exact mixture denoiser, "
          "linear schedule T = 1000, both samplers with their defaults on the same \"tuned\" grid. dgap: gap - gap "
          "of the exact PF-ODE map of the same noise (the sampler's own error, nat); PASS: SW2 and |gap| below "
          "every diffusers scheduler's (rows stored in the validation files); mode_tv: mass moved between modes "
          "against the exact map.", ""] + summary_lines(allres)
    (RESULTS / "samplers_gauss_multistep.md").write_text("\n".join(md) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--part", default="all",
                    help="names the json file, so that parts can run side by side; the sets run replace theirs in it")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--ablation", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if not a.report and not a.ablation:
        run_into_part(RESULTS / f"samplers_gauss_multistep_{a.part}.json", a.sets.split(","), run_set)
    allres = merged_parts("samplers_gauss_multistep_*.json", skip="ablation")
    report({k: allres[k] for k in SETS if k in allres})
    abl = RESULTS / "samplers_gauss_multistep_ablation.json"
    if a.ablation:
        res = {label: run_set(label, ABLATION) for label in ("64d", "2d")}
        abl.write_text(json.dumps(res, indent=1))
    if abl.exists():
        ablation_report(json.loads(abl.read_text()))


def ablation_report(res: dict):
    md = ["# gauss_multistep ablation: the fitted width scaled (issue 5)", "",
          "Generated by `benchmarks/samplers_gauss_multistep.py --ablation`. As samplers_gauss_multistep.md; "
          "`s2 x c`: the fitted s^2 multiplied by c (c = 0: a plain multistep in 1 / sigma).", "",
          "| set | NFE | sampler | PASS | abs dgap median / mean / max | mode_tv mean |", "|---|---|---|---|---|---|"]
    for label, rows in res.items():
        for nfe in (10, 20):
            for name in ABLATION:
                passes, dg, tv = stats(rows, f"{name}@{nfe}")
                md.append(f"| {label} | {nfe} | {name} | {passes}/{len(rows)} | {np.median(dg):.3f} / "
                          f"{dg.mean():.3f} / {dg.max():.3f} | {tv:.2f} % |")
    (RESULTS / "samplers_gauss_multistep_ablation.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
