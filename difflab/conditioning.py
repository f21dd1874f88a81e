"""Conditional sampling from the command line: `difflab sample --class/--guidance/--classifier/--reference
[--ilvr-factor | --mask]` and `difflab train-classifier`. Input checks end in one-line UserErrors.

Images (reference, mask) are PNG files or .npy arrays of shape (H, W), (C, H, W) or (1, C, H, W) with
values in [0, 1]; a mask is 1 (white) where the pixel is known, 0 (black) where it is to be filled.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import Config
from .denoiser import Denoiser
from .errors import UserError
from .generate import resolve_sampler
from .guidance import HOOK_SAMPLERS, ab_range_of_steps, guided_sample, ilvr_hook, inpaint_hook
from .runs import to_data_units
from .samplers import alpha_bar_grid

__all__ = ["load_image", "load_mask", "parse_classes", "parse_step_range", "generate_conditional",
           "cmd_sample_conditional", "cmd_train_classifier", "wants_conditioning"]

# gamma recommended by benchmarks/guidance.py on the digits (in class 0.963 with ancestral sampling, 0.932 with
# DDIM 25 steps; benchmarks/results/guidance.md). The noisy classifier is weak at high noise, hence a large gamma.
DEFAULT_CLASSIFIER_SCALE = 24.0

FLAGS = ("classes", "guidance", "classifier", "classifier_scale", "reference", "ilvr_factor", "mask")


def wants_conditioning(a) -> bool:
    """True if any conditioning flag of `difflab sample` was given."""
    return any(getattr(a, k, None) is not None for k in FLAGS)


def _read_array(path, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} '{path}' not found; give a PNG or .npy file")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UserError(f"{what} '{path}' is not a readable .npy array ({str(e)[:80]}); save it with numpy.save")
        if arr.dtype == bool:
            arr = arr.astype(np.float32)
        if not np.issubdtype(arr.dtype, np.number):
            raise UserError(f"{what} '{path}' holds {arr.dtype} values; give numbers in [0, 1]")
        return arr.astype(np.float64)
    if p.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError
        try:
            img = Image.open(p)
            img.load()
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{what} '{path}' is not a readable PNG ({str(e)[:80]})")
        arr = np.asarray(img.convert("RGB" if img.mode not in ("L", "1", "I;16", "I") else "L"), dtype=np.float64)
        arr = arr / 255.0
        return arr if arr.ndim == 2 else arr.transpose(2, 0, 1)
    raise UserError(f"{what} '{path}' must be a .png or .npy file")


def _fit_shape(arr: np.ndarray, shape, what: str, path) -> np.ndarray:
    """(H, W) / (C, H, W) / (1, C, H, W) -> (C, H, W) of the model (grey repeated, RGB averaged for C = 1)."""
    c, h, w = shape
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise UserError(f"{what} '{path}' has shape {arr.shape}; give an image of {h}x{w} pixels")
    if arr.shape[-2:] != (h, w):
        raise UserError(f"{what} '{path}' is {arr.shape[-2]}x{arr.shape[-1]} but the model makes {h}x{w} images "
                        f"({c}x{h}x{w}); give a {h}x{w} image")
    if arr.shape[0] == c:
        return arr
    if arr.shape[0] == 1:
        return np.repeat(arr, c, axis=0)
    if c == 1 and arr.shape[0] == 3:
        return arr.mean(0, keepdims=True)
    raise UserError(f"{what} '{path}' has {arr.shape[0]} channels but the model's images have {c}")


def load_image(path, shape) -> torch.Tensor:
    """A reference image -> (C, H, W) float32 in [0, 1] for a model making images of `shape` (C, H, W)."""
    arr = _fit_shape(_read_array(path, "reference"), shape, "reference", path)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise UserError(f"reference '{path}' has values outside [0, 1]; scale it to [0, 1]")
    return torch.from_numpy(arr.astype(np.float32))


def load_mask(path, shape) -> torch.Tensor:
    """A mask -> (C, H, W) float32 of 0 / 1 (1 = known pixel). PNG: white (>= 0.5) is known."""
    arr = _read_array(path, "mask")
    png = Path(path).suffix.lower() == ".png"
    arr = _fit_shape(arr, shape, "mask", path)
    if png:
        arr = (arr >= 0.5).astype(np.float64)
    elif not np.isin(arr, (0.0, 1.0)).all():
        raise UserError(f"mask '{path}' must hold only 0 (to fill) and 1 (known); found other values")
    if arr.sum() == 0:
        raise UserError(f"mask '{path}' marks no pixel as known; mark known pixels with 1 (white)")
    return torch.from_numpy(arr.astype(np.float32))


def parse_classes(values, num_classes) -> list[int]:
    """--class values ("3", "3,5", several) -> ints in [0, num_classes)."""
    out = []
    for v in values:
        for part in str(v).split(","):
            if not part.strip():
                continue
            try:
                k = int(part)
            except ValueError:
                raise UserError(f"--class must be integers, got {part!r}")
            if not 0 <= k < num_classes:
                raise UserError(f"unknown class {k}: the model has classes 0..{num_classes - 1}")
            out.append(k)
    if not out:
        raise UserError("--class needs at least one class")
    return out


def parse_step_range(text: str, T: int) -> tuple[int, int]:
    """"HI:LO" (steps, T >= HI >= LO >= 0) -> (HI, LO)."""
    try:
        hi, lo = (int(s) for s in str(text).split(":"))
    except ValueError:
        raise UserError(f"--ilvr-range must be HI:LO steps (e.g. {T}:0), got {text!r}")
    if not T >= hi >= lo >= 0:
        raise UserError(f"--ilvr-range {text} must satisfy {T} >= HI >= LO >= 0")
    return hi, lo


def generate_conditional(cfg: Config, den: Denoiser, n: int, seed: int = 0, batch_size: int = 500,
                         sampler: str | None = None, nfe: int | None = None, device="cpu", progress: bool = True,
                         classes: list[int] | None = None, guidance: float = 0.0, classifier=None,
                         classifier_scale: float = 0.0, reference: torch.Tensor | None = None,
                         ilvr_factor: int | None = None, ilvr_range: tuple[int, int] | None = None,
                         mask: torch.Tensor | None = None, resample: int = 1, **options):
    """n samples in data units and their labels (n,) (None without classes), like `generate.generate` (the
    same per-batch seeding (seed, b)), with conditioning. classes: sample i gets classes[i % len(classes)].
    reference (C, H, W) in [0, 1]; mask (C, H, W) 0 / 1."""
    sampler, nfe = resolve_sampler(cfg, den, sampler, nfe, options)
    shape = tuple(cfg.data_shape)
    ref = None if reference is None else (reference.float() * 2 - 1).to(device)  # model units
    out = []
    n_batches = (n + batch_size - 1) // batch_size
    calls = len(alpha_bar_grid(den, nfe)) - 1
    rounds = resample if mask is not None else 1
    bar = tqdm(total=n_batches * ((calls - 1) * rounds + 1), disable=not progress,
               unit="step", desc="sample", file=sys.stderr, dynamic_ncols=True)
    all_labels = None if classes is None else torch.tensor(classes)[torch.arange(n) % len(classes)]
    for b in range(n_batches):
        m = min(batch_size, n - b * batch_size)
        g = torch.Generator(device).manual_seed(seed * 1_000_003 + b)
        noise = torch.randn((m, *shape), generator=g, device=device)
        labels = None if all_labels is None else all_labels[b * batch_size: b * batch_size + m].to(device)
        hook = None
        if ref is not None and ilvr_factor is not None:
            hi, lo = ilvr_range or (den.schedule.T, 0)
            hook = ilvr_hook(ref, ilvr_factor, g, ab_range_of_steps(den.schedule, hi, lo), box=(-1.0, 1.0))
        elif ref is not None and mask is not None:
            hook = inpaint_hook(ref, mask.to(device), g)
        x = guided_sample(den, noise, sampler, nfe=nfe, generator=g, labels=labels, guidance=guidance,
                          classifier=classifier, classifier_scale=classifier_scale, after_step=hook,
                          resample=resample if mask is not None else 1, progress=lambda: bar.update(1), **options)
        out.append(to_data_units(x, cfg).cpu())
    bar.close()
    return torch.cat(out), all_labels


def _check(a, cfg: Config):
    """Validate the conditioning flags of `difflab sample` against the run; returns generate_conditional's kwargs."""
    kw = {}
    image = cfg.data_kind == "image"
    if a.guidance is not None:
        if not cfg.conditional:
            raise UserError(f"--guidance needs a class-conditional model but '{a.checkpoint}' is unconditional; "
                            "train one with 'difflab train --conditional' or use --classifier")
        if not a.guidance >= 0:
            raise UserError(f"--guidance must be >= 0 (0 = no guidance), got {a.guidance}")
        kw["guidance"] = a.guidance
    if a.classifier_scale is not None and a.classifier is None:
        raise UserError("--classifier-scale needs --classifier RUN (a folder made by 'difflab train-classifier')")
    classifier_classes = None
    if a.classifier is not None:
        from .classifier import load_classifier
        clf, meta = load_classifier(a.classifier)
        if list(meta["config"]["data_shape"]) != list(cfg.data_shape):
            raise UserError(f"classifier '{a.classifier}' was trained on {meta['config']['data_shape']} data but the "
                            f"model makes {cfg.data_shape}; train a classifier on the model's data")
        scale = DEFAULT_CLASSIFIER_SCALE if a.classifier_scale is None else a.classifier_scale
        if not scale >= 0:
            raise UserError(f"--classifier-scale must be >= 0, got {scale}")
        kw.update(classifier=clf, classifier_scale=scale)
        classifier_classes = clf.num_classes
    if a.classes is not None:
        if not cfg.conditional and a.classifier is None:
            raise UserError(f"--class needs a class-conditional model or --classifier RUN, but '{a.checkpoint}' "
                            "is unconditional")
        k = cfg.num_classes if cfg.conditional else classifier_classes
        if cfg.conditional and classifier_classes is not None:
            k = min(k, classifier_classes)
        kw["classes"] = parse_classes(a.classes, k)
    elif cfg.conditional or classifier_classes is not None:
        kw["classes"] = list(range(cfg.num_classes if cfg.conditional else classifier_classes))
    if a.reference is None and (a.ilvr_factor is not None or a.mask is not None):
        raise UserError("--ilvr-factor and --mask need --reference IMG")
    if a.reference is not None:
        if not image:
            raise UserError("--reference needs an image model; this run makes vectors")
        if (a.ilvr_factor is None) == (a.mask is None):
            raise UserError("--reference needs exactly one of --ilvr-factor N (ILVR) or --mask MASK (inpainting)")
        sampler = a.sampler or cfg.sampler
        if sampler not in HOOK_SAMPLERS:
            raise UserError(f"--reference works with --sampler {' or '.join(HOOK_SAMPLERS)}, not {sampler}")
        shape = tuple(cfg.data_shape)
        kw["reference"] = load_image(a.reference, shape)
        if a.ilvr_factor is not None:
            h, w = shape[-2:]
            if a.ilvr_factor < 1 or h % a.ilvr_factor or w % a.ilvr_factor:
                raise UserError(f"--ilvr-factor {a.ilvr_factor} must be a positive divisor of the image size {h}x{w}")
            kw["ilvr_factor"] = a.ilvr_factor
            if a.ilvr_range is not None:
                kw["ilvr_range"] = parse_step_range(a.ilvr_range, cfg.T)
        else:
            kw["mask"] = load_mask(a.mask, shape)
            kw["resample"] = a.resample
    if a.ilvr_range is not None and a.ilvr_factor is None:
        raise UserError("--ilvr-range needs --reference IMG --ilvr-factor N")
    return kw


def cmd_sample_conditional(a) -> int:
    """`difflab sample` with conditioning flags (see difflab/cli.py)."""
    from .generate import check_writable, save_npz
    from .plots import save_grid
    from .runs import load_run
    out = check_writable(a.out)
    if out.suffix != ".npz":
        raise UserError(f"--out '{a.out}' must end in .npz")
    cfg, _, den = load_run(a.checkpoint, device=a.device)
    kw = _check(a, cfg)
    opts = {}
    if a.variance:
        opts["variance"] = a.variance
    if a.eta is not None:
        opts["eta"] = a.eta
    x, labels = generate_conditional(cfg, den, a.n, a.seed, a.batch_size, a.sampler, a.nfe, a.device,
                                     not a.quiet, **kw, **opts)
    extra = {}
    if "reference" in kw:
        extra["reference"] = kw["reference"].numpy()
    if "mask" in kw:
        extra["mask"] = kw["mask"].numpy()
    save_npz(out, x, labels, **extra)
    png = out.with_suffix(".png")
    if cfg.data_kind == "image":
        save_grid(x[:256], png, nrow=min(len(kw.get("classes") or []), 16) or None)
        print(f"grid: {png}")
    print(f"samples: {out} ({tuple(x.shape)})")
    return 0


def cmd_train_classifier(a) -> int:
    """`difflab train-classifier --data SPEC --out RUN (--steps N | --minutes M)`."""
    from .classifier import train_noisy_classifier
    from .generate import check_writable
    check_writable(Path(a.out) / "classifier.safetensors")
    _, meta = train_noisy_classifier(a.data, a.out, steps=a.steps, minutes=a.minutes, schedule=a.schedule,
                                     T=a.T, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                     image_size=a.image_size, progress=not a.quiet)
    print(f"classifier: {Path(a.out) / 'classifier.safetensors'} ({meta['steps']} steps)")
    print(f"held-out accuracy by step t: {meta['heldout_accuracy_by_t']}")
    return 0


# ------------------------------------------------------------------------------------- the parsers
def add_sample_arguments(s, positive_int, positive_float) -> None:
    """The conditioning flags of `difflab sample`."""
    s.add_argument("--class", nargs="+", dest="classes", metavar="K",
                   help="class(es) to draw (e.g. --class 3 or --class 0 1 2); samples cycle through them")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale w >= 0: "
                   "eps = (1 + w) eps(x, y) - w eps(x, null); needs a --conditional run")
    s.add_argument("--classifier", help="classifier guidance with a run of 'difflab train-classifier'")
    s.add_argument("--classifier-scale", type=float, dest="classifier_scale",
                   help=f"classifier guidance scale gamma >= 0 (default {DEFAULT_CLASSIFIER_SCALE:g}, the scale "
                   "benchmarks/guidance.py recommends for the digits)")
    s.add_argument("--reference", help="reference image (PNG or .npy in [0, 1]) for --ilvr-factor or --mask")
    s.add_argument("--ilvr-factor", type=int, dest="ilvr_factor", help="ILVR low-pass factor N (divides the size)")
    s.add_argument("--ilvr-range", dest="ilvr_range", metavar="HI:LO",
                   help="ILVR applies on steps t with HI >= t >= LO (default T:0, every step)")
    s.add_argument("--mask", help="inpainting mask (PNG or .npy): 1 / white = known pixel, 0 / black = fill")
    s.add_argument("--resample", type=positive_int("--resample"), default=1,
                   help="inpainting: resampling rounds per step (RePaint; default 1)")


def add_commands(sub, positive_int, positive_float) -> None:
    """`difflab train-classifier`."""
    c = sub.add_parser("train-classifier", help="train a noise-conditional classifier for classifier guidance")
    c.add_argument("--data", default="digits", help="labelled image data (default digits)")
    c.add_argument("--out", required=True, help="folder for classifier.safetensors")
    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int("--steps"))
    budget.add_argument("--minutes", type=positive_float("--minutes"))
    c.add_argument("--schedule", default="linear", help="noise schedule x_t is drawn from (default linear)")
    c.add_argument("--T", type=positive_int("--T"), default=1000)
    c.add_argument("--batch-size", type=positive_int("--batch-size"), default=128, dest="batch_size")
    c.add_argument("--lr", type=positive_float("--lr"), default=2e-3)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--image-size", type=positive_int("--image-size"), dest="image_size")
    c.add_argument("--quiet", action="store_true")


COMMANDS = {"train-classifier": cmd_train_classifier}
