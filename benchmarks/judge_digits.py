"""Judge digit samples with a classifier trained on real digits (train split), as the issue's judge does.

    python benchmarks/judge_digits.py demo_out/samples.npz [more.npz ...]

Prints the confident-class rate (max p >= 0.9) and the class histogram's total variation from
uniform, for real held-out digits (the floor) and for each sample file. Writes a JSON beside each file.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from difflab import data
from difflab.evaluator import judge, train_classifier


def main(paths):
    torch.manual_seed(0)
    ds = data.load("digits")
    tr, ho = data.split(ds, 0.1, seed=0)
    # judge trained on real digits (the demo trains on the same split; the judge never sees samples)
    net = train_classifier(data.to_unit(tr.x, tr), tr.labels, epochs=40)
    real = judge(net, data.to_unit(ho.x, ho))
    print(f"real held-out ({real['n']}): conf>=0.9 {real['conf_rate']:.3f}  TV {real['tv_uniform']:.3f}")
    for p in paths:
        x = torch.from_numpy(np.load(p)["samples"]).float()
        r = judge(net, x)
        print(f"{p} ({r['n']}): conf>=0.9 {r['conf_rate']:.3f}  TV {r['tv_uniform']:.3f}  hist {r['hist']}")
        Path(p).with_suffix(".judge.json").write_text(json.dumps({"samples": r, "real_heldout": real}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
