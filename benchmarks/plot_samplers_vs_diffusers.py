"""The README's picture of the sampler benchmark (issue 5): SW2 and |gap| against NFE, difflab against diffusers.

Reads what benchmarks/samplers_vs_diffusers.py stored (results/samplers_vs_diffusers_{2d,64d}.json) and draws,
for the 2-D and the 64-D mixture, the sliced W2 to the true set and the |mean log-density gap| against the
number of denoiser calls: every diffusers scheduler as a thin line, difflab's `sampler="auto"` as a thick
one, difflab's default ancestral sampler at 1000 steps as a star, and the noise floor (independent true
sets: mean, and mean + 2 sd) as a band. No new sampling.

Run:  python benchmarks/plot_samplers_vs_diffusers.py      (seconds)
Writes docs/samplers_vs_diffusers.png.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "samplers_vs_diffusers.png"
OURS = "auto"
MANY = "ancestral (default)"  # the 1000-step point
TITLES = {"2d": "2-D: 8 modes on a ring", "64d": "64-D: 10 random modes"}


def series(rows, lib, method, key):
    """[(nfe, value)] of one method, sorted by nfe (the adaptive ODE row left out)."""
    pts = [(r["nfe_target"], abs(r[key]) if key == "gap" else r[key]) for r in rows
           if r["lib"] == lib and r["method"] == method and isinstance(r["nfe_target"], int)]
    return sorted(pts)


def main():
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for i, mix in enumerate(("2d", "64d")):
        res = json.loads((RESULTS / f"samplers_vs_diffusers_{mix}.json").read_text())
        rows = res["rows"]
        schedulers = sorted({r["method"] for r in rows if r["lib"] == "diffusers"})
        cmap = plt.get_cmap("tab20")
        for j, (key, label, floor, sd) in enumerate((("sw2", "sliced W2 to the true set", "floor_sw", "floor_sw_sd"),
                                                     ("gap", "|mean log-density gap| (nat)", "floor_gap",
                                                      "floor_gap_sd"))):
            ax = axes[i, j]
            for k, name in enumerate(schedulers):
                pts = series(rows, "diffusers", name, key)
                ax.plot(*zip(*pts), lw=1, color=cmap(k % 20), marker=".", ms=4, label=f"diffusers {name}")
            pts = series(rows, "difflab", OURS, key)
            ax.plot(*zip(*pts), lw=3, color="black", marker="o", ms=6, label=f'difflab sampler="{OURS}"')
            pts = [p for p in series(rows, "difflab", MANY, key) if p[0] == 1000]
            ax.plot(*zip(*pts), ls="none", color="black", marker="*", ms=14, label=f"difflab {MANY}, 1000 steps")
            lo, hi = res[floor], res[floor] + 2 * res.get(sd, 0.0)
            ax.axhspan(lo, hi, color="0.85", zorder=0, label="true-set noise floor (mean .. +2 sd)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("denoiser calls (NFE)")
            ax.set_ylabel(label)
            ax.set_title(f"{TITLES[mix]}: {label.split(' (')[0]}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Exact Gaussian-mixture denoiser, linear schedule T = 1000, n = 8000: lower is better", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.97))
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
