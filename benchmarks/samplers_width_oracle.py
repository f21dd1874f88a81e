"""Would a time grid that follows the data's mode width fix the wide classic toys? An oracle study (issue 5).

At 10 calls in 2-D, `auto` runs split_multistep on the tuned grid (sigma_max, 13.86, 6.817, 2.866, 1.357,
0.731, 0.445, 0.179, 0.103, 0.043), chosen on random mixtures whose modes are 0.02 .. 0.5 wide. On the wide
classic toys (modes 0.5 .. 1 wide, 4 .. 15 apart) it passes none of six (benchmarks/results/
samplers_classic_toys_wide.md). Scaling the whole grid below sigma_max by c = 1.5 .. 4 fixed most of them, but
no per-run statistic seen so far told which c to use. This study asks the question with an oracle first:

- **tuned**: the tuned grid (what auto runs; its levels rounded to 3-4 digits);
- **oracle**: the grid below sigma_max scaled by c = max(1, 4 w_min) (at most 6), w_min the mixture's narrowest width
  (over modes and axes; known to the oracle only);
- **oracle, topped**: what a sampler could do after its first two calls: the first call gives the data's
  covariance (below), so the second level becomes max(13.86, 2.5 R), R the data's largest standard deviation;
  the levels below it are the tuned ones scaled by the oracle's c, capped so the third stays below the second;
- **probe**: the oracle's c with w_min replaced by an estimate that costs no extra call of the denoiser but
  128 extra rows in its second call: 64 points drawn from the Gaussian fit of the data (from the first call), each
  evaluated at sigma_p = 0.15 as an antithetic pair z +- sigma_p n; the denoiser's slope along n,
  a = <D(z + sigma_p n) - D(z - sigma_p n), n> / (2 sigma_p |n|^2), is w^2 / (w^2 + sigma_p^2) for the Gaussian
  mode that dominates there, so w = sigma_p sqrt(a / (1 - a)); the estimate is the 10 % quantile over the points.
  Here it scales the whole grid, which a sampler could not do (the second level comes before the probe's answer);
- **probe, topped**: what a sampler could do: "oracle, topped" with the probe's c, left at 1 where the probe
  reads a width above a quarter of R (a broad background component, not a mode; a guard chosen on these sets).

The first call's covariance: at sigma_max the exact x0_hat of Gaussian data N(m, C) is m + A (x - m) with
A = C (C + sigma^2)^-1, so the batch's regression of x0_hat on x gives C = sigma^2 A (I - A)^-1
(`follow_width.data_covariance`). The table reports how far this R is from the true largest standard deviation.
The probe is `follow_width.probe_rows` and `width_from_probe` (what the sampler runs, there in its third call).

Scored at 10 calls against the exact PF-ODE map of the same noise (dgap) and with the issue's verdict (PASS: SW2
and |gap| below every diffusers scheduler's stored row), on the stored 2-D sets.

Run:  python benchmarks/samplers_width_oracle.py          (~10 min, one core)
Writes benchmarks/results/samplers_width_oracle.{json,md}.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import samplers_classic_toys as C  # noqa: E402
import samplers_gauss_multistep as G  # noqa: E402
import samplers_grid_tuning_lowdim as T  # noqa: E402
import samplers_lowdim_validation as V  # noqa: E402
import samplers_vs_diffusers as B  # noqa: E402

import difflab  # noqa: E402
from difflab import follow_width as fw  # noqa: E402

RESULTS = HERE / "results"
# auto's 10-level 2-D grid below sigma_max (samplers._TUNED["low"][10]) rounded to 3-4 digits; on these sets it
# reproduces auto's stored figures (random 2-D 15/21, median |dgap| 0.023; wide toys 0/6, 0.155)
TUNED = [13.86, 6.817, 2.866, 1.357, 0.731, 0.445, 0.179, 0.103, 0.043]
C_MAX = 6.0  # the top interior level stays below sigma_max (157)
SETS = ["2d", "2d_background", "2d_fullcov", "toys", "wide"]


def stored(label: str):
    """[(stored result, mixture)] of a stored 2-D set (its diffusers rows give the PASS verdict)."""
    if label in ("toys", "wide"):
        name, table = ("samplers_classic_toys.json", C.TOYS) if label == "toys" else \
            ("samplers_classic_toys_wide.json", C.WIDE_TOYS)
        return [(r, table[r["mixture"]][0]) for r in json.loads((RESULTS / name).read_text())]
    path, family = G.SETS[label]
    return [(r, G.mixture(r, family)) for r in json.loads((RESULTS / path).read_text())]


def largest_std(gm) -> float:
    """The mixture's largest standard deviation (square root of its covariance's top eigenvalue)."""
    w = gm.weights / gm.weights.sum()
    dm = gm.means - (w[:, None] * gm.means).sum(0)
    cov = (dm.T * w) @ dm + (w[:, None, None] * gm.covariances).sum(0)
    return float(torch.linalg.eigvalsh(cov).max().sqrt())


def first_call_fit(gm, noise):
    """(mean, eigenvectors, eigenvalues of C) of the data, read from x0_hat at sigma_max alone by
    `follow_width.data_covariance` (the batch's regression of x0_hat on x)."""
    ab = float(B.SCHED.alpha_bars[-1])
    s = math.sqrt((1 - ab) / ab)
    x = noise.double() / math.sqrt(ab)
    return fw.data_covariance(x, x - s * gm.eps_at(x * math.sqrt(ab), ab), s)


def probe_width(gm, mean, vec, var, seed=5) -> float:
    """The width read by `follow_width`'s probe (antithetic pairs at sigma_p around points of the Gaussian fit)."""
    rows, n = fw.probe_rows(mean, vec, var, seed)
    ab = 1 / (1 + fw.SIGMA_P ** 2)
    return fw.width_from_probe(rows - fw.SIGMA_P * gm.eps_at(rows * math.sqrt(ab), ab), n)


def scale(w: float) -> float:
    """The grid's scale c for data whose narrowest mode is w wide: 4 w, within [1, C_MAX]."""
    return min(max(1.0, 4 * w), C_MAX)


def topped(c: float, r_est: float) -> list[float]:
    """The second level from the spread, max(13.86, 2.5 R), then the tuned levels scaled by c (capped)."""
    top = max(TUNED[0], 2.5 * r_est)
    return [top] + [s * min(c, 0.85 * top / TUNED[1]) for s in TUNED[1:]]


def grids(w_min: float, r_est: float, w_probe: float) -> dict[str, list[float]]:
    """The interior sigmas (below sigma_max) of each variant."""
    c_probe = scale(w_probe) if w_probe < r_est / 4 else 1.0  # a "mode" a quarter of the data wide: a background
    return {"tuned": TUNED, "oracle": [s * scale(w_min) for s in TUNED],
            "oracle, topped": topped(scale(w_min), r_est),
            "probe": [s * scale(w_probe) for s in TUNED],
            "probe, topped": topped(c_probe, r_est)}


def setup(res: dict, gm):
    """(noise, judge, exact PF-ODE map, its gap, best diffusers SW2 row and |gap| row at NFE 10) of a stored mixture:
    the stored set's noise seed (1), n and diffusers rows."""
    noise = torch.randn(res["n"], gm.dim, generator=torch.Generator().manual_seed(1))
    judge = B.Judge(gm, res["n"], n_floor=1)
    ref = V.exact_map(gm, noise)
    return (noise, judge, ref, judge(ref)[1], *V.best_diffusers(res, 10))


def run_set(label: str) -> list[dict]:
    """Each mixture of a stored 2-D set: its width and spread estimates, and each grid's SW2, gap, dgap, PASS and
    mass moved."""
    out = []
    for res, gm in stored(label):
        t0 = time.time()
        noise, judge, ref, gap_ref, b_sw, b_gap = setup(res, gm)
        mean, vec, var = first_call_fit(gm, noise)
        w_min, r_est, w_probe = float(gm.stds.min()), float(var.max().sqrt()), probe_width(gm, mean, vec, var)
        row = {"mixture": res["mixture"], "n": res["n"], "w_min": w_min, "w_probe": w_probe,
               "r_true": largest_std(gm), "r_est": r_est, "map_pass": V.map_passes(res, 10), "rows": {}}
        for name, sig in grids(w_min, r_est, w_probe).items():
            grid = T.ab_of_sigmas([T.S_MAX] + sig)
            x = difflab.sample(gm.fast_denoiser(B.SCHED), noise, "split_multistep", grid=grid)
            sw, gap = judge(x)
            row["rows"][name] = {"sigmas": [round(s, 4) for s in sig], "sw2": sw, "gap": gap, "dgap": gap - gap_ref,
                                 "pass": V.beats({"sw2": sw, "gap": gap}, b_sw, b_gap),
                                 "mode_tv": V.to_map(gm, judge, x, ref)["mode_tv"]}
        out.append(row)
        print(f"  {label} {res['mixture']}: w_min {w_min:.3f} probe {w_probe:.3f} R {row['r_true']:.2f}/{r_est:.2f} "
              + "  ".join(f"{k} {'P' if r['pass'] else '-'} {r['dgap']:+.3f}" for k, r in row["rows"].items())
              + f" ({time.time() - t0:.0f}s)", flush=True)
    return out


def report(allres: dict) -> str:
    names = list(next(iter(allres.values()))[0]["rows"])
    lines = ["# A grid that follows the mode width: oracle study (issue 5)", "",
             "Generated by `benchmarks/samplers_width_oracle.py` (its docstring defines the five grids). "
             "split_multistep at 10 calls, exact mixture denoisers, linear schedule, the stored 2-D sets' mixtures, n "
             "and diffusers rows. "
             "Each cell: PASS count (the exact map's own in the header), median / mean |dgap| (nat, against the exact "
             "PF-ODE map of the same noise), mixtures whose grid differs from the tuned one.", "",
             "| set | mixtures (map PASS) | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, rows in allres.items():
        cells = []
        for k in names:
            d = np.abs([r["rows"][k]["dgap"] for r in rows])
            changed = sum(r["rows"][k]["sigmas"] != [round(s, 4) for s in TUNED] for r in rows)
            cells.append(f"{sum(r['rows'][k]['pass'] for r in rows)}, {np.median(d):.3f} / {np.mean(d):.3f}, "
                         f"{changed} changed")
        lines.append(f"| {label} | {len(rows)} ({sum(r['map_pass'] for r in rows)}) | " + " | ".join(cells) + " |")
    r_err = max(abs(r["r_est"] / r["r_true"] - 1) for rows in allres.values() for r in rows)
    lines += ["", f"The first call's estimate of the data's largest standard deviation R is within {100 * r_err:.2g} % "
              "of the truth on every mixture.", "",
              "The probe's width estimate against the narrowest true width, where the two give different c "
              "(|c_probe - c_oracle| > 0.2):", "", "| set | mixture | w_min | probe | c oracle | c probe |",
              "|---|---|---|---|---|---|"]
    for label, rows in allres.items():
        for r in rows:
            co, cp = scale(r["w_min"]), scale(r["w_probe"])
            if abs(co - cp) > 0.2:
                lines.append(f"| {label} | {r['mixture']} | {r['w_min']:.3f} | {r['w_probe']:.3f} | {co:.2f} | "
                             f"{cp:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    allres = {label: run_set(label) for label in SETS}
    (RESULTS / "samplers_width_oracle.json").write_text(json.dumps(allres, indent=1))
    (RESULTS / "samplers_width_oracle.md").write_text(report(allres))
    print(report(allres))


if __name__ == "__main__":
    main()
