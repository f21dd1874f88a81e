"""High-dimensional check of the default samplers against diffusers' schedulers on random mixtures (64-D
by default, any dimension with --dim).

benchmarks/samplers_vs_diffusers.py judges two 64-D mixtures of its own; the "high" tuned grid of difflab's
UniPC was chosen on Gaussian scales and 1-D two-mode problems, never on a 64-D mixture. This script draws
other Gaussian mixtures in D dimensions (default 64) at random and reruns the issue's check on each:

    at NFE 10 and 20, is difflab's default UniPC (`sample(den, noise, "unipc", nfe=K)`) closer to the
    true distribution than EVERY diffusers scheduler, on both the sliced W2 and the |mean log-density gap|?

Mixtures (`random_mixture_hd(seed, dim)`): 2 .. 16 components with random weights; means i.i.d. in all
dimensions, on a random 2- or 3-D subspace, or in clusters of clusters; the typical distance between
means 0.5 .. 12; per-coordinate widths 0.03 .. 2, one scale per component or varying per coordinate;
everything then scaled by 0.3 .. 3. Same setup and scores as samplers_lowdim_validation.py (exact
denoiser, linear schedule T = 1000, shared float32 noise, the exact PF-ODE map of the same noise, dgap =
gap - gap(exact map), the sampler's own error).

`--family digits` (`digits_mixture(seed)`): image-like 64-D mixtures instead, the means taken from
scikit-learn's 8x8 digits scaled to [-1, 1] (the ten class means, or 5 .. 39 random images), widths 0.05 ..
0.4, one per component or varying per coordinate (+-0.7 in log): data that lie where images lie, not drawn
by the same generator the 10-level grid was chosen on.

Run:  python benchmarks/samplers_highdim_validation.py [--seeds 0-7] [--dim 64] [--n 2000] [--nfe 10,20]
      python benchmarks/samplers_highdim_validation.py --family digits --seeds 0-23 --n 4000
      python benchmarks/samplers_highdim_validation.py --family background --dim 2 --seeds 0-11 --n 8000
      python benchmarks/samplers_highdim_validation.py --family background --dim 64 --seeds 0-7
      python benchmarks/samplers_highdim_validation.py --family fullcov --dim 2 --seeds 0-15 --n 8000  (also --dim 3,
             16, 64; seeds 0-15, 0-7, 0-7)
      python benchmarks/samplers_highdim_validation.py [--family digits] --report
`--family background` (`background_mixture(seed, dim)`): narrow clusters (widths 0.02 .. 0.2) over one broad
component at their mean, any --dim (2 included). `--family fullcov` (`fullcov_mixture(seed, dim)`): the random
family's means with full covariances, each component elongated and turned at random.

Writes benchmarks/results/samplers_highdim_validation[_digits | _background_<D>d | _fullcov_<D>d].json and .md
(`--dim D` other than 64: samplers_highdim_validation_<D>d.json and .md; `--tag NAME` appends _NAME).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import samplers_lowdim_validation as V  # noqa: E402

from difflab.mixtures import GaussianMixture  # noqa: E402

RESULTS = HERE / "results"


def random_mixture_hd(seed: int, dim: int = 64) -> tuple[GaussianMixture, str]:
    """A random Gaussian mixture in `dim` dimensions (diagonal covariances) and a one-line description."""
    g = np.random.default_rng(10_000 + seed)
    k = int(g.integers(2, 17))
    layout = str(g.choice(["iid", "subspace", "clusters"]))
    sep = float(np.exp(g.uniform(math.log(0.5), math.log(12.0))))  # typical distance between two means
    if layout == "iid":
        mu = g.normal(size=(k, dim)) * sep / math.sqrt(2 * dim)
    elif layout == "subspace":
        r = int(g.integers(2, 4))
        basis = np.linalg.qr(g.normal(size=(dim, r)))[0]
        mu = g.normal(size=(k, r)) * sep / math.sqrt(2 * r) @ basis.T
    else:
        centres = g.normal(size=(max(2, k // 3), dim)) * sep / math.sqrt(2 * dim)
        mu = centres[g.integers(0, len(centres), size=k)] + g.normal(size=(k, dim)) * 0.3 * sep / math.sqrt(2 * dim)
    width = float(np.exp(g.uniform(math.log(0.03), math.log(2.0))))
    per_coord = bool(g.random() < 0.5)
    shape = (k, dim) if per_coord else (k, 1)
    sd = np.clip(width * np.exp(g.uniform(-0.8, 0.8, size=shape)), 0.03, 2.0) * np.ones((k, dim))
    w = g.uniform(0.2, 1.0, size=k)
    scale = float(np.exp(g.uniform(math.log(0.3), math.log(3.0))))
    desc = (f"K={k} {layout}, means ~{sep * scale:.2f} apart, widths {sd.min() * scale:.3f}..{sd.max() * scale:.3f}"
            f"{' per coordinate' if per_coord else ''}")
    return GaussianMixture(torch.tensor(w), torch.tensor(mu * scale), torch.tensor(sd * scale)), desc


def digits_mixture(seed: int) -> tuple[GaussianMixture, str]:
    """A 64-D mixture whose means are 8x8 digit images in [-1, 1] (scikit-learn's bundled set), widths
    0.05 .. 0.4: kind and width cycle with the seed, the chosen images and weights are random."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = digits.data / 8.0 - 1.0, digits.target
    g = np.random.default_rng(20_000 + seed)
    kind = ("class means", "random images", "random images, widths per coordinate")[seed % 3]
    width = (0.05, 0.1, 0.2, 0.4)[(seed // 3) % 4]
    if kind == "class means":
        mu = np.stack([x[y == c].mean(0) for c in range(10)])
    else:
        mu = x[g.choice(len(x), size=int(g.integers(5, 40)), replace=False)]
    k = len(mu)
    sd = width * (np.exp(g.uniform(-0.7, 0.7, size=(k, 64))) if "per coordinate" in kind else np.ones((k, 64)))
    w = g.uniform(0.2, 1.0, size=k)
    desc = f"digits, {kind}, K={k}, widths {sd.min():.3f}..{sd.max():.3f}"
    return GaussianMixture(torch.tensor(w), torch.tensor(mu), torch.tensor(sd)), desc


def background_mixture(seed: int, dim: int = 64) -> tuple[GaussianMixture, str]:
    """Narrow clusters over a broad background: 3 .. 11 components of widths 0.02 .. 0.2 (one per component),
    means i.i.d. with RMS distance 0.5 .. 6 between two (in 2-D sqrt(2) times that), log-normal weights, plus
    one component at their mean whose width is 0.7 .. 2 times their RMS spread and whose weight is 0.05 .. 0.4:
    clusters seen against a diffuse population, a shape the other generators do not make (their widths vary by
    at most e^1.6)."""
    g = np.random.default_rng(30_000 + seed)
    k = int(g.integers(3, 12))
    sep = float(np.exp(g.uniform(math.log(0.5), math.log(6.0))))
    mu = g.normal(size=(k, dim)) * sep / math.sqrt(2 if dim == 2 else 2 * dim)
    narrow = np.exp(g.uniform(math.log(0.02), math.log(0.2), size=(k, 1))) * np.ones((k, dim))
    spread = float(np.sqrt(((mu - mu.mean(0)) ** 2).sum(1).mean() / dim)) + 1e-3
    broad = spread * float(np.exp(g.uniform(math.log(0.7), math.log(2.0))))
    w = np.exp(g.normal(size=k))
    w_bg = float(g.uniform(0.05, 0.4))
    w = np.concatenate([w / w.sum() * (1 - w_bg), [w_bg]])
    mu = np.concatenate([mu, mu.mean(0, keepdims=True)])
    sd = np.concatenate([narrow, np.full((1, dim), broad)])
    desc = (f"K={k} + background, means ~{sep:.2f} apart, widths {narrow.min():.3f}..{narrow.max():.3f}, "
            f"background {broad:.2f} (w {w_bg:.2f})")
    return GaussianMixture(torch.tensor(w), torch.tensor(mu), torch.tensor(sd)), desc


def fullcov_mixture(seed: int, dim: int = 64) -> tuple[GaussianMixture, str]:
    """`random_mixture_hd`'s weights and means (in 2-D those of samplers_lowdim_validation's `random_mixture`),
    but full covariances: each component's widths along its own axes are its geometric-mean width times
    e^U(-1, 1) (elongated up to e^2 = 7.4 times), and its axes are turned by its own random (Haar) orthogonal
    matrix. No other generator makes components that are neither round nor
    aligned with the coordinates, which samplers fitting one width per coordinate (gauss_multistep) could
    notice; diffusers' schedulers, UniPC and split_multistep are equivariant under rotations."""
    base, desc = V.random_mixture(seed) if dim == 2 else random_mixture_hd(seed, dim)
    g = np.random.default_rng(40_000 + seed)
    k = len(base.weights)
    width = base.stds.log().mean(1, keepdim=True).exp()
    sd = width * torch.from_numpy(np.exp(g.uniform(-1.0, 1.0, size=(k, dim))))
    rot = []
    for _ in range(k):
        q, r = np.linalg.qr(g.normal(size=(dim, dim)))
        rot.append(q * np.sign(np.diag(r)))  # Haar: fix the signs of QR's columns
    desc = desc.split(", widths")[0] + f", full covariances, axis widths {sd.min():.3f}..{sd.max():.3f}"
    return GaussianMixture(base.weights, base.means, sd, torch.from_numpy(np.stack(rot))), desc


def family_mixture(family: str, seed: int, dim: int = 64) -> tuple[GaussianMixture, str]:
    """(mixture, description) of one seed of a family: "random" (`random_mixture_hd`), "digits" (64-D,
    `digits_mixture`; dim ignored), "background" (`background_mixture`) or "fullcov" (`fullcov_mixture`)."""
    if family == "digits":
        return digits_mixture(seed)
    return {"background": background_mixture, "fullcov": fullcov_mixture}.get(family, random_mixture_hd)(seed, dim)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", default="10,20")
    ap.add_argument("--family", choices=("random", "digits", "background", "fullcov"), default="random")
    ap.add_argument("--tag", default="", help="appended to the result files' names (e.g. a run at another n)")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    suffix = {"digits": "_digits", "background": f"_background_{a.dim}d", "fullcov": f"_fullcov_{a.dim}d"}.get(
        a.family, "" if a.dim == 64 else f"_{a.dim}d") + (f"_{a.tag}" if a.tag else "")
    js = RESULTS / f"samplers_highdim_validation{suffix}.json"
    nfes = [int(v) for v in a.nfe.split(",")]
    if not a.report:
        mixes = [(f"seed {s}", *family_mixture(a.family, s, a.dim)) for s in V.parse_seeds(a.seeds)]
        V.run_all(mixes, a.n, nfes, js, desc_width=70)
    allres = json.loads(js.read_text())
    dim = allres[0].get("dim", a.dim)
    what = {"digits": "64-D mixtures with digit-image means",
            "background": f"{dim}-D narrow clusters over a broad background",
            "fullcov": f"random {dim}-D mixtures with full covariances"}.get(a.family, f"random {dim}-D mixtures")
    V.report(allres, js.with_suffix(".md"), nfes, title=f"difflab's default UniPC vs diffusers on {what}",
             script="benchmarks/samplers_highdim_validation.py")


if __name__ == "__main__":
    main()
