"""VDM on the digits from two starting gamma_0: VDM's -13.3 and difflab's initial_gamma_0(17) = -8.3 (issue 4).

    OMP_NUM_THREADS=1 python benchmarks/vdm_gamma0.py -13.3 --steps 600 --out /tmp/vdm_base
    OMP_NUM_THREADS=1 python benchmarks/vdm_gamma0.py -8.3 --steps 600 --out /tmp/vdm_g0

Trains the digits preset with model="vdm" and the given starting gamma_0, then prints the held-out
continuous-time bound (`difflab eval --metrics elbo`) as JSON. Results: benchmarks/results/vdm_gamma0.md.
"""
import argparse
import json
import time

import torch

import difflab.vdm as V
from difflab.checkpoint import load
from difflab.config import load_config
from difflab.evaluate import EvalContext, evaluate
from difflab.train import train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gamma_0", type=float)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    start = V.initial_gamma_0
    V.initial_gamma_0 = lambda levels: a.gamma_0   # the one thing that differs between the runs
    cfg = load_config("digits", overrides=dict(model="vdm", seed=0, steps=a.steps, checkpoint_every=10 ** 6))
    t0 = time.process_time()
    train(cfg, a.out, progress=False)
    cpu = time.process_time() - t0
    V.initial_gamma_0 = start
    r = evaluate(EvalContext(checkpoint=a.out, n=200, progress=False), ["elbo"])["elbo"]
    g = {k.split(".")[-1]: round(float(v), 3) for k, v in load(a.out)[0].items()
         if k.startswith("objective.gamma.gamma_")}
    print(json.dumps({"start_gamma_0": a.gamma_0, "steps": a.steps, "train_cpu_s": round(cpu), "learned": g,
                      **{k: v for k, v in r.items() if isinstance(v, (int, float, str))}}))


if __name__ == "__main__":
    main()
