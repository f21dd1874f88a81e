"""The metrics of `difflab eval`, each with a standard error and an honest floor.

Every figure is a dict
    {"value", "se", "floor", "floor_se", "n", "chunks", "floor_chunks", "better", "reference_n"}.
Set-to-set figures (Frechet, precision/recall, sliced W2, MMD) compare a set with a fixed *reference*:
the held-out split (10 %, seed 0), which the model never trained on, so memorising the training set
earns nothing. (precision/recall on images use a larger real manifold: see `precision_recall`.) `value` is the figure
for the model's samples; `floor` the same figure for *real* data at the SAME sample size
n = min(#samples, #floor pool): a perfect model reaches the floor, not zero. The floor pool is real data
other than the reference: for images, the training-split images that the feature classifier never saw
(`feature_net.floor_pool_split`; like a perfect model's samples they are new to it); for vectors, the
training split. Both sides are cut into disjoint chunks of n (at most 10); a figure is the mean over
chunks and its standard error the spread of the chunks / sqrt(chunks) when there are at least five, else
half-sampling on the first chunk / sqrt(chunks) (the spread over random halves drawn without
replacement: `metrics.halfsample_se`); precision, recall and rates: the binomial
sqrt(p (1 - p) / (n chunks)), given the manifolds. `better` is "lower", "higher" or "floor" (closest to
the floor is best).

Images are judged in the feature space of a domain classifier (`difflab.feature_net`): shipped for the
digits, or `--evaluator FILE`. Vectors are judged in data units. `inception_fid` is the Frechet distance in
the features of TensorFlow's FID Inception from a file on the user's disk (`difflab.inception`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from . import metrics as M
from .errors import UserError
from .evaluate import EvalContext, metric

__all__ = ["paired_figure", "default_metrics", "known_mixture", "IMAGE_DEFAULT", "VECTOR_DEFAULT"]

HALFSAMPLE_REPS = 50        # the standard error of the s.e. is then about 10 % of it
REFERENCE_CAP = 2000        # reference points for k-NN manifolds and sliced W2 (a seeded subset of the held-out split)
K_NN = 3
MAX_CHUNKS = 10             # at most this many disjoint chunks per side (enough for a standard error)
IMAGE_DEFAULT = ["frechet", "precision_recall", "inception_score", "class_histogram"]
VECTOR_DEFAULT = ["sliced_w2", "mmd", "frechet", "precision_recall"]


def paired_figure(stat: Callable[[np.ndarray], float], fake: np.ndarray, real: np.ndarray, better: str,
                  reference_n: int | None = None, binomial: bool = False, seed: int = 0,
                  indexed: Callable[[np.ndarray], Callable[[np.ndarray], float]] | None = None) -> dict:
    """stat(set) for the model's samples `fake` (N, ...) and the held-out `real` (N', ...) at one sample
    size n = min(N, N') (see the module docstring). `indexed(set)` may return a faster idx -> stat(set[idx])
    (e.g. from kernel matrices computed once) for the bootstrap."""
    n = min(len(fake), len(real))
    if n < 2:
        raise UserError(f"need at least 2 samples and 2 held-out examples, got {len(fake)} and {len(real)}")

    def side(x):
        k = min(len(x) // n, MAX_CHUNKS)
        vals = [stat(x[i * n:(i + 1) * n]) for i in range(k)]
        mean = float(np.mean(vals))
        if binomial:
            se = math.sqrt(max(mean * (1 - mean), 0.0) / (n * k))
        elif k >= 5:
            se = float(np.std(vals, ddof=1) / math.sqrt(k))
        else:                   # too few chunks for their spread: half-sampling on the first, / sqrt(chunks)
            first = x[:n]
            fn = indexed(first) if indexed is not None else (lambda idx: stat(first[idx]))
            se = M.halfsample_se(fn, n, HALFSAMPLE_REPS, seed) / math.sqrt(k)
        return mean, se, k

    v, se, k = side(fake)
    f, fse, kf = side(real)
    out = {"value": v, "se": se, "floor": f, "floor_se": fse, "n": n, "chunks": k, "floor_chunks": kf,
           "better": better}
    if reference_n is not None:
        out["reference_n"] = int(reference_n)
    return out


# ------------------------------------------------------------------------------------ what is compared


def _kind(ctx: EvalContext) -> str:
    return ctx.dataset.kind


def _arrays(ctx: EvalContext) -> dict:
    """{"fake": samples, "reference": held-out split, "floor": the floor pool} as tensors in data units
    (images in [0, 1]); see the module docstring."""
    def make():
        x, _ = ctx.samples
        ho, tr = ctx.real_units(ctx.heldout), ctx.real_units(ctx.train_split)
        if tuple(x.shape[1:]) != tuple(ho.shape[1:]):
            raise UserError(f"samples have shape {tuple(x.shape[1:])} but the data '{ctx.data_spec}' has "
                            f"{tuple(ho.shape[1:])}; give the --data the model was trained on")
        pool, manifold = tr, ho
        if _kind(ctx) == "image":
            from .feature_net import floor_pool_split
            size = _classifier(ctx)[1].get("floor_pool_size")
            if size:            # the training images the classifier never saw; the rest make the k-NN manifold
                pool_idx, fit_idx = floor_pool_split(len(tr), size)
                pool, manifold = tr[pool_idx], tr[fit_idx]
        return {"fake": x, "reference": ho, "floor": pool, "manifold": manifold}
    return ctx._cached("suite_arrays", make)


def _classifier(ctx: EvalContext):
    """(classifier, its info dict), loaded once."""
    from .feature_net import load_classifier, shipped_for

    def make():
        path = getattr(ctx, "evaluator", None) or shipped_for(ctx.dataset.name)
        if path is None:
            raise UserError(f"no evaluator ships for '{ctx.dataset.name}'; train one with `difflab "
                            f"train-evaluator --data {ctx.data_spec} --out EVAL.safetensors` and pass --evaluator")
        net, info = load_classifier(path)
        if net.config["in_channels"] != ctx.dataset.shape[0]:
            raise UserError(f"evaluator '{path}' takes {net.config['in_channels']}-channel images but the data "
                            f"has {ctx.dataset.shape[0]}; train one on this data with `difflab train-evaluator`")
        return net, info
    return ctx._cached("suite_classifier", make)


def _features(ctx: EvalContext) -> dict:
    """Per set: classifier features (N, F) and class probabilities (N, K) for images; raw vectors else."""
    def make():
        a = _arrays(ctx)
        if _kind(ctx) != "image":
            return {k: {"feat": v.double().reshape(len(v), -1).numpy()} for k, v in a.items()}
        net = _classifier(ctx)[0]
        out = {}
        with torch.inference_mode():
            for k, v in a.items():
                feats, probs = [], []
                for i in range(0, len(v), 500):
                    f = net.features(v[i:i + 500].float())
                    feats.append(f.double())
                    probs.append(torch.softmax(net.head(f), 1).double())
                out[k] = {"feat": torch.cat(feats).numpy(), "probs": torch.cat(probs).numpy()}
        return out
    return ctx._cached("suite_features", make)


def _reference(ctx: EvalContext, feats: np.ndarray) -> np.ndarray:
    """A seeded subset (at most REFERENCE_CAP) of the reference rows."""
    if len(feats) <= REFERENCE_CAP:
        return feats
    idx = np.sort(np.random.default_rng(0).choice(len(feats), REFERENCE_CAP, replace=False))
    return feats[idx]


def _need_image(ctx, name):
    if _kind(ctx) != "image":
        raise UserError(f"metric '{name}' needs image data but '{ctx.data_spec}' holds vectors; "
                        f"use {', '.join(VECTOR_DEFAULT)}")


def _need_vector(ctx, name):
    if _kind(ctx) != "vector":
        raise UserError(f"metric '{name}' is for vector data but '{ctx.data_spec}' holds images; "
                        f"use {', '.join(IMAGE_DEFAULT)}")


# --------------------------------------------------------------------------------------------- metrics


@metric("frechet")
def frechet(ctx: EvalContext) -> dict:
    """Frechet distance to the held-out split: classifier features for images (FD_digits), raw vectors else."""
    f = _features(ctx)
    if len(f["fake"]["feat"]) < 4:  # the half-sampling s.e. fits a covariance to n // 2 >= 2 points
        raise UserError(f"frechet needs at least 4 samples, got {len(f['fake']['feat'])}")
    ref = M.gaussian_stats(f["reference"]["feat"])
    out = paired_figure(lambda x: M.frechet_distance(*M.gaussian_stats(x), *ref), f["fake"]["feat"],
                        f["floor"]["feat"], "lower", len(f["reference"]["feat"]))
    out["space"] = "classifier features" if _kind(ctx) == "image" else "data units"
    return out


INCEPTION_BATCH = 32        # images per Inception forward (299 x 299 activations: about 1 GB at 32)


@metric("inception_fid")
def inception_fid(ctx: EvalContext) -> dict:
    """FID: the Frechet distance in the 2048-d pool3 features of TensorFlow's FID Inception, loaded from the
    file given by --inception or $DIFFLAB_INCEPTION (`difflab.inception`; never downloaded). Same figure as
    `frechet`: samples against the held-out split, floor = real images at the same n. The floor pool is the
    training split (Inception saw none of it); only the images the chunks use go through the network."""
    _need_image(ctx, "inception_fid")
    from .data import from_unit
    from .inception import inception_features, load_inception, resolve_path
    path = resolve_path(getattr(ctx, "inception", None))
    x, _ = ctx.samples
    ref, pool = ctx.real_units(ctx.heldout), ctx.real_units(ctx.train_split)
    if tuple(x.shape[1:]) != tuple(ref.shape[1:]):
        raise UserError(f"samples have shape {tuple(x.shape[1:])} but the data '{ctx.data_spec}' has "
                        f"{tuple(ref.shape[1:])}; give the --data the model was trained on")
    n = min(len(x), len(pool))
    if n < 4:                   # the half-sampling s.e. fits a covariance to n // 2 >= 2 images
        raise UserError(f"inception_fid needs at least 4 samples and 4 real images, got {len(x)} and {len(pool)}")
    x, pool = (v[:min(len(v) // n, MAX_CHUNKS) * n] for v in (x, pool))   # only what paired_figure's chunks read
    model = load_inception(path, device=ctx.device)
    feats = {name: inception_features(model, from_unit(v), INCEPTION_BATCH, ctx.device, ctx.progress,
                                      f"inception {name}").numpy()
             for name, v in (("reference", ref), ("samples", x), ("floor", pool))}
    fd = M.frechet_to_reference(*M.gaussian_stats(feats["reference"]))
    out = paired_figure(fd, feats["samples"], feats["floor"], "lower", len(ref))
    out["space"] = f"Inception pool3 features ({feats['reference'].shape[1]}-d, {model.kind})"
    out["inception"] = str(path)
    return out


@metric("precision_recall")
def precision_recall(ctx: EvalContext) -> dict:
    """k-NN precision and recall (k = 3) against a real manifold (at most REFERENCE_CAP points): for vectors the
    held-out split; for images, whose held-out split is small (180 digits give balls too coarse to tell noise
    from digits), the training images outside the floor pool (a model that memorised them would score high)."""
    f = _features(ctx)
    ref = _reference(ctx, f["manifold"]["feat"])
    ref_radii = M.knn_radii(ref, K_NN)                  # the real manifold, computed once

    def pr(x, i):
        if i == 0:
            return float(M.inside_balls(x, ref, ref_radii).mean())
        return float(M.inside_balls(ref, x, M.knn_radii(x, K_NN)).mean())
    return {name: paired_figure(lambda x, i=i: pr(x, i), f["fake"]["feat"], f["floor"]["feat"], "higher", len(ref),
                                binomial=True)
            for i, name in enumerate(("precision", "recall"))}


@metric("inception_score")
def inception_score(ctx: EvalContext) -> dict:
    """exp(E KL(p(y|x) || p(y))) with the domain classifier (not Inception): at most the number of classes."""
    _need_image(ctx, "inception_score")
    f = _features(ctx)
    return paired_figure(M.inception_score, f["fake"]["probs"], f["floor"]["probs"], "higher")


@metric("class_histogram")
def class_histogram(ctx: EvalContext) -> dict:
    """Histogram of the classifier's predicted classes; `tv`: its total variation from the training
    split's label histogram; `confident`: the fraction classified with max p >= 0.9."""
    _need_image(ctx, "class_histogram")
    f = _features(ctx)
    k = f["floor"]["probs"].shape[1]
    labels = ctx.train_split.labels
    target = (M.class_histogram(labels.numpy(), k) if labels is not None
              else M.class_histogram(f["floor"]["probs"].argmax(1), k))

    def tv(p):
        return float(0.5 * np.abs(M.class_histogram(p.argmax(1), k) - target).sum())

    fake, real = f["fake"]["probs"], f["floor"]["probs"]
    return {"tv": paired_figure(tv, fake, real, "lower"),
            "confident": paired_figure(lambda p: float((p.max(1) >= 0.9).mean()), fake, real, "higher",
                                       binomial=True),
            "hist": [round(float(h), 4) for h in M.class_histogram(fake.argmax(1), k)],
            "floor_hist": [round(float(h), 4) for h in M.class_histogram(real.argmax(1), k)],
            "target_hist": [round(float(h), 4) for h in target]}


@metric("sliced_w2")
def sliced_w2(ctx: EvalContext) -> dict:
    """Sliced Wasserstein-2 to the held-out split (at most REFERENCE_CAP of it; 256 fixed random directions,
    exact 1-D W2 on each)."""
    _need_vector(ctx, "sliced_w2")
    f = _features(ctx)
    ref = _reference(ctx, f["reference"]["feat"])
    dirs = M.random_directions(256, ref.shape[1], seed=0)
    ref_sorted = np.sort(ref @ dirs.T, axis=0)          # projections of the reference, sorted once

    def sw2(x):
        return float(np.sqrt(M.w2sq_sorted_columns(np.sort(x @ dirs.T, axis=0), ref_sorted).mean()))
    return paired_figure(sw2, f["fake"]["feat"], f["floor"]["feat"], "lower", len(ref))


@metric("mmd")
def mmd(ctx: EvalContext) -> dict:
    """Unbiased MMD^2 to the held-out split (at most 1000 of it), RBF kernel, median-distance bandwidth."""
    _need_vector(ctx, "mmd")
    f = _features(ctx)
    ref = _reference(ctx, f["reference"]["feat"])[:1000]
    h = M.median_bandwidth(ref)
    krr = M.rbf_kernel(ref, ref, h)
    c_ref = (krr.sum() - np.trace(krr)) / (len(ref) * (len(ref) - 1))

    def indexed(x):             # kernel matrices once; a resample idx only indexes them
        kxx, kxr = M.rbf_kernel(x, x, h), M.rbf_kernel(x, ref, h).mean(1)

        def stat(idx):
            m = len(idx)
            sub = kxx[np.ix_(idx, idx)]
            return float((sub.sum() - np.trace(sub)) / (m * (m - 1)) + c_ref - 2 * kxr[idx].mean())
        return stat

    out = paired_figure(lambda x: indexed(x)(np.arange(len(x))), f["fake"]["feat"], f["floor"]["feat"], "lower",
                        len(ref), indexed=indexed)
    out["bandwidth"] = h
    return out


def known_mixture(spec: str):
    """The true density of a difflab toy that is a Gaussian mixture (toy:gmm, toy:gaussian), or None."""
    from .mixtures import GaussianMixture
    name = str(spec).strip().lower()
    if name == "toy:gmm":                      # difflab.data._gmm: 8 Gaussians, std 0.1, on a circle of radius 2
        ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return GaussianMixture(torch.full((8,), 1 / 8), 2.0 * torch.stack([ang.cos(), ang.sin()], 1),
                               torch.full((8, 2), 0.1))
    if name == "toy:gaussian":
        return GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    return None


@metric("true_logpdf")
def true_logpdf(ctx: EvalContext) -> dict:
    """Mean log p_data(x) of the samples under the true density (nats); the floor is the held-out data's
    (about minus the entropy). Above the floor: samples too concentrated; below: too spread."""
    gm = known_mixture(ctx.data_spec)
    if gm is None:
        raise UserError(f"true_logpdf needs data of known density (toy:gmm or toy:gaussian), not '{ctx.data_spec}'")
    f = _features(ctx)
    fake, real = (gm.log_prob(torch.from_numpy(f[k]["feat"])).numpy() for k in ("fake", "floor"))
    return paired_figure(lambda v: float(v.mean()), fake, real, "floor")


def default_metrics(ctx: EvalContext) -> list[str]:
    """The default set for the context's data: images or vectors (+ true_logpdf for known mixtures)."""
    if _kind(ctx) == "image":
        return list(IMAGE_DEFAULT)
    return VECTOR_DEFAULT + (["true_logpdf"] if known_mixture(ctx.data_spec) is not None else [])
