"""The picture of what is not met on wide data (issue 5): samples too spread within wide modes at 10 calls.

On the ring of 8 modes of radius 8 and width 0.5 (`samplers_classic_toys.WIDE_TOYS["ring8 r8"]`, the noise and
n of samplers_classic_toys.py --wide) at 10 denoiser calls, the distance of each sample to its nearest mode's
centre, in units of the mode's width, for the exact PF-ODE map of the same noise, difflab's `auto`
(split_multistep there), gauss_multistep and diffusers' scheduler closest to the exact map (read from the stored
results/samplers_classic_toys_wide.json). For Gaussian modes that distance follows the Rayleigh density
r exp(-r^2 / 2), so the share farther than r is exp(-r^2 / 2) and the mean of r^2 is 2: a sampler whose samples
end too spread lies above that curve. Left: that share on a log scale; right: the samples around one mode.

Run:  python benchmarks/plot_wide_toys.py      (~1 min, needs diffusers)
Writes docs/wide_toys.png.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import samplers_classic_toys as C  # noqa: E402
import samplers_lowdim_validation as V  # noqa: E402
import samplers_vs_diffusers as B  # noqa: E402

import difflab  # noqa: E402

OUT = HERE.parent / "docs" / "wide_toys.png"
TOY, NFE, WIDTH = "ring8 r8", 10, 0.5


def main():
    torch.set_num_threads(1)
    gm = C.WIDE_TOYS[TOY][0]
    stored = [r for r in json.loads((HERE / "results" / "samplers_classic_toys_wide.json").read_text())
              if r["mixture"] == TOY][0]
    n = stored["n"]
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    fast = B.FastExactMixture(gm)
    gap_ref = stored["exact_map"]["gap"]
    rows = [r for r in stored["rows"] if r["nfe_target"] == NFE]
    closest = min((r for r in rows if r["lib"] == "diffusers"), key=lambda r: abs(r["dgap"]))
    cls, extra = B.diffusers_schedulers()[closest["method"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_diff, _ = B.run_diffusers(cls, extra, fast, noise, B.steps_for(cls, extra, NFE))
    sets = {"exact PF-ODE map": V.exact_map(gm, noise)}
    for name in ("auto", "gauss_multistep"):
        sets[f"difflab {name}"] = difflab.sample(fast.denoiser(), noise, name, nfe=NFE)
    sets[f"diffusers {closest['method']} (closest to the map)"] = x_diff
    judge = B.Judge(gm, n, n_floor=1)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    r_grid = np.linspace(0, 5, 200)
    ax.semilogy(r_grid, np.exp(-r_grid ** 2 / 2), "k", lw=2.5, label="true: exp(-r^2 / 2)")
    for (label, x), color in zip(sets.items(), ("0.45", "C3", "C0", "C2")):
        x = x.double()
        d = np.sort(torch.cdist(x, gm.means).min(1).values.numpy() / WIDTH)
        dgap = judge.gap(x) - gap_ref
        ax.semilogy(d, 1 - np.arange(len(d)) / len(d), color=color, lw=1.6,
                    label=f"{label}: mean r^2 {np.mean(d ** 2):.2f}, dgap {dgap:+.3f} nat")
    ax.set_xlim(0, 5)
    ax.set_ylim(1e-4, 1.2)
    ax.set_xlabel("r = distance to the nearest mode's centre / mode width (true mean r^2: 2)")
    ax.set_ylabel("share of samples farther than r")
    ax.set_title(f"{C.WIDE_TOYS[TOY][1]}, {NFE} calls, n = {n}", fontsize=9)
    ax.legend(fontsize=7.5)
    centre = gm.means[0].numpy()
    for label, color in (("exact PF-ODE map", "0.45"), ("difflab auto", "C3")):
        x = sets[label].double().numpy()
        near = np.abs(x - centre).max(1) < 4 * WIDTH
        ax2.scatter(*(x[near] - centre).T, s=2, alpha=0.5, color=color, label=label)
    t = np.linspace(0, 2 * math.pi, 200)
    for k in (1, 2, 3):
        ax2.plot(k * WIDTH * np.cos(t), k * WIDTH * np.sin(t), "k", lw=0.8)
    ax2.set_aspect("equal")
    ax2.set_title("samples around one mode, with its 1, 2 and 3 width circles", fontsize=9)
    ax2.legend(fontsize=7.5, markerscale=4)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
