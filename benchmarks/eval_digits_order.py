"""Does difflab's Frechet metric order digit models correctly? real digits (the floor) < fully trained <
briefly trained < noise, each figure with its standard error and at the same sample size as the floor.

    OMP_NUM_THREADS=1 python benchmarks/eval_digits_order.py --run full=/tmp/ev_full --run brief=/tmp/ev_brief \
        [--run name=samples.npz] [--n 1000] [--nfe 100]

Draws n samples from each run folder (ancestral sampler, nfe steps, seed 0) or reads a samples .npz,
adds uniform noise images and Gaussian noise clipped to [0, 1], scores every set with the default image
metrics, and also with the issue's judge-style classifier (benchmarks/judge_digits.py: a classifier
trained afresh on the training split, confident-class rate) so the two rankings can be compared.
Writes benchmarks/results/eval_digits_order.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from difflab import data
from difflab.evaluate import EvalContext, evaluate
from difflab.evaluator import judge, train_classifier
from difflab.report import draw_samples

HERE = Path(__file__).parent
METRICS = ["frechet", "precision_recall", "inception_score", "class_histogram"]


def score(x: torch.Tensor) -> dict:
    ctx = EvalContext(data="digits", progress=False)
    ctx._cache["samples"] = (x, None)
    return evaluate(ctx, METRICS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", default=[],
                    help="NAME=RUN_FOLDER or NAME=SAMPLES.npz, best first (the expected order)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--nfe", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(1)
    sets, timing = {}, {}
    for spec in a.run:
        name, _, folder = spec.partition("=")
        t0 = time.time()
        if folder.endswith(".npz"):
            x = torch.from_numpy(np.load(folder)["samples"][:a.n]).float()
        else:
            _, _, x = draw_samples(folder, a.n, a.nfe, seed=0)
        sets[name] = x
        timing[name] = round(time.time() - t0, 1)
    g = torch.Generator().manual_seed(0)
    sets["uniform noise"] = torch.rand(a.n, 1, 8, 8, generator=g)
    sets["gaussian noise"] = (0.5 + 0.25 * torch.randn(a.n, 1, 8, 8, generator=g)).clamp(0, 1)
    ds = data.load("digits")
    tr, ho = data.split(ds, 0.1, seed=0)
    judge_net = train_classifier(data.to_unit(tr.x, tr), tr.labels, epochs=40, seed=1)   # not the shipped one
    rows, results = [], {}
    for name, x in sets.items():
        res = score(x)
        j = judge(judge_net, x)
        results[name] = {"metrics": res, "judge": j, "sample_seconds": timing.get(name)}
        f = res["frechet"]
        rows.append((name, f, res, j))
    floor = rows[0][1]
    real_judge = judge(judge_net, data.to_unit(ho.x, ho))
    lines = ["# Frechet distance in the shipped digit classifier's features: does it order the models?", "",
             f"n = {a.n} samples per set (ancestral, {a.nfe} steps, seed 0). Reference: the held-out split "
             f"({floor.get('reference_n')} digits no model trained on). Figures at sample size {floor['n']}, mean "
             f"over disjoint chunks; floor = the same figure for real digits that neither the reference "
             f"nor the feature classifier contains (the classifier's floor pool), at the same sample size.", "",
             "| set | FD_digits ± s.e. | precision | recall | IS | confident (>=0.9) | judge conf. rate |",
             "|---|---|---|---|---|---|---|",
             f"| real digits (floor) | {floor['floor']:.3f} ± {floor['floor_se']:.3f} | "
             f"{rows[0][2]['precision_recall']['precision']['floor']:.3f} | "
             f"{rows[0][2]['precision_recall']['recall']['floor']:.3f} | "
             f"{rows[0][2]['inception_score']['floor']:.2f} | "
             f"{rows[0][2]['class_histogram']['confident']['floor']:.3f} | {real_judge['conf_rate']:.3f} |"]
    for name, f, res, j in rows:
        pr = res["precision_recall"]
        lines.append(f"| {name} | {f['value']:.3f} ± {f['se']:.3f} | {pr['precision']['value']:.3f}"
                     f" | {pr['recall']['value']:.3f} | {res['inception_score']['value']:.2f} | "
                     f"{res['class_histogram']['confident']['value']:.3f} | {j['conf_rate']:.3f} |")
    fds = [floor["floor"]] + [f["value"] for _, f, _, _ in rows]
    ordered = all(x < y for x, y in zip(fds, fds[1:]))
    lines += ["", f"FD strictly increasing in the order given (floor, {', '.join(sets)}): **{ordered}**"]
    judge_order = sorted(sets, key=lambda k: -results[k]["judge"]["conf_rate"])
    fd_order = sorted(sets, key=lambda k: results[k]["metrics"]["frechet"]["value"])
    lines.append(f"ranking by FD: {fd_order}; by the judge's confident rate: {judge_order}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "eval_digits_order.json").write_text(json.dumps({"n": a.n, "nfe": a.nfe, "runs": a.run,
                                                            "real_judge": real_judge, "sets": results,
                                                            "ordered": ordered}, indent=1, default=float))
    (out / "eval_digits_order.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
