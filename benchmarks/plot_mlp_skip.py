"""The picture of benchmarks/mlp_skip.py: UniPC-20 samples of the moons runs with the MLP's skip off and on.

Each panel plots the samples in polar form about the data's mean, distance on a log axis, so that the few
samples thrown 70-220 units away show beside the 99 % that sit on the moons; "far" is mlp_skip.py's.

    python benchmarks/plot_mlp_skip.py [--work /tmp/mlp_skip] [--seed 0] -> docs/mlp_skip.png

Reads the runs and samples that `python benchmarks/mlp_skip.py` left in --work.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/mlp_skip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs" / "mlp_skip.png"))
    a = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlp_skip import held_out
    centre = held_out().mean(0)
    report = json.loads((ROOT / "benchmarks" / "results" / "mlp_skip.json").read_text())
    far = report["far_radius"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharey=True)
    panels = [(s, k) for s in ("linear", "ve") for k in (False, True)]
    for ax, (schedule, skip) in zip(axes, panels):
        x = np.load(Path(a.work) / f"{schedule}_{'skip' if skip else 'plain'}_s{a.seed}" / "unipc_20.npz")["samples"]
        x = x - centre
        d = np.linalg.norm(x, axis=1)
        ang = np.arctan2(x[:, 1], x[:, 0])
        out = d > far
        ax.scatter(ang[~out], d[~out], s=1, alpha=0.3, color="tab:blue", label="within reach of the data")
        ax.scatter(ang[out], d[out], s=8, color="tab:red", label=f"farther than {far:.1f}: {100 * out.mean():.2f} %")
        ax.axhline(far, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("angle (rad)")
        ax.set_title(f"{schedule}, skip {'on' if skip else 'off'}")
        ax.legend(loc="upper left", fontsize=8, markerscale=2)
    axes[0].set_ylabel("distance from the data's mean")
    fig.suptitle(f"UniPC, 20 calls, {len(x)} samples of a moons MLP trained {report['steps']} steps (seed {a.seed})")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
