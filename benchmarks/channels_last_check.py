"""Paired check of the U-Net's channels_last (NHWC) choice for sampling (issue 9).

    OMP_NUM_THREADS=1 python benchmarks/channels_last_check.py [--config 32x32-rgb] [--batches 32,16] [--pairs 4]

Times two forwards of the speed benchmark's difflab network in NCHW and in NHWC, alternating the order per
pair, under inference mode, and prints the time ratio NCHW / NHWC per pair (> 1: NHWC faster). The automatic
rule in difflab.nets.unet.UNet._channels_last was set from these ratios (benchmarks/results/speed.md).
"""
import argparse
import time

import speed
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="32x32-rgb")
    ap.add_argument("--batches", default="32,16")
    ap.add_argument("--pairs", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    spec = speed.CONFIGS[a.config]
    net = speed.make_difflab(spec).eval()
    for bs in (int(b) for b in a.batches.split(",")):
        x, c = torch.randn(bs, *spec["shape"]), torch.rand(bs) * 100
        ratios = []
        with torch.inference_mode():
            for r in range(a.pairs):
                t = {}
                for nhwc in ((False, True) if r % 2 == 0 else (True, False)):
                    net.channels_last = nhwc
                    net(x, c)   # warm-up in this layout
                    t0 = time.perf_counter()
                    net(x, c)
                    net(x, c)
                    t[nhwc] = time.perf_counter() - t0
                ratios.append(t[False] / t[True])
        print(f"{a.config} batch {bs}: NCHW / NHWC time per pair {[round(v, 3) for v in ratios]}")


if __name__ == "__main__":
    main()
