"""The `difflab` command line: train | sample | demo.

Every user error ends in one line on stderr (`difflab: error: ...`) and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too by default)
        raise UserError(f"{message}; see '{self.prog} --help'")


def _positive(name, kind=int):
    """An argparse type: a positive int (or float) with a one-line message naming the flag."""
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {s!r}")
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {v}")
        return v
    return parse


def _positive_int(name):
    return _positive(name, int)


def _positive_float(name):
    return _positive(name, float)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="difflab", description="Train, sample, measure and understand diffusion models.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a diffusion model")
    t.add_argument("--data", help="digits | toy:NAME | PATH (.npy/.npz/folder) | mnist:DIR | cifar10:DIR")
    t.add_argument("--out", required=True, help="run folder (checkpoint, config, log)")
    t.add_argument("--config", help="TOML file with config keys (see difflab.config.Config)")
    t.add_argument("--preset", help="digits | toy | mnist | cifar10 (default: chosen from --data)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive_int("--steps"), help="total training steps")
    budget.add_argument("--minutes", type=_positive_float("--minutes"), help="total training minutes")
    t.add_argument("--seed", type=int)
    t.add_argument("--checkpoint-every", type=_positive_int("--checkpoint-every"), dest="checkpoint_every")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--batch-size", type=_positive_int("--batch-size"), dest="batch_size")
    t.add_argument("--lr", type=_positive_float("--lr"))
    t.add_argument("--schedule", help="linear | cosine | sigmoid")
    t.add_argument("--T", type=_positive_int("--T"))
    t.add_argument("--parameterization", help="eps | x0 | v")
    t.add_argument("--precision", help="fp32 | bf16 | fp16")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--conditional", action="store_true", default=None, help="class-conditional model")
    t.add_argument("--image-size", type=_positive_int("--image-size"), dest="image_size")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    s.add_argument("--n", type=_positive_int("--n"), default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output .npz (a PNG grid is written beside it)")
    s.add_argument("--sampler", help="ancestral | ddim (default: the run's)")
    s.add_argument("--nfe", type=_positive_int("--nfe"), help="network evaluations (default: T)")
    s.add_argument("--variance", choices=["small", "large"], help="ancestral variance: beta-tilde or beta")
    s.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    s.add_argument("--batch-size", type=_positive_int("--batch-size"), default=500, dest="batch_size")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")

    d = sub.add_parser("demo", help="train on the digits, sample and draw the pictures (about 10 minutes)")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--minutes", type=_positive_float("--minutes"), default=9.5,
                   help="wall-clock budget in all (default 9.5: ~8 training, ~1 sampling)")
    d.add_argument("--n", type=_positive_int("--n"), default=1000, help="samples to draw (default 1000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    return p


def cmd_train(a) -> int:
    from .config import load_config, preset_for_data
    from .train import train
    preset = a.preset or (None if a.config else preset_for_data(a.data or "digits"))
    overrides = {k: getattr(a, k) for k in ("data", "steps", "minutes", "seed", "checkpoint_every", "batch_size",
                                             "lr", "schedule", "T", "parameterization", "precision", "device",
                                             "conditional", "image_size")}
    if a.minutes is not None and a.steps is None:
        overrides["steps"] = None
    cfg = load_config(preset, a.config, overrides)
    if a.minutes is not None:
        cfg.steps = None
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if a.minutes is not None:
        explicit["steps"] = None
    path = train(cfg, a.out, resume=a.resume, progress=not a.quiet, overrides=explicit)
    print(f"checkpoint: {path}")
    return 0


def cmd_sample(a) -> int:
    import torch

    from .generate import check_writable, generate, save_npz
    from .plots import save_grid, scatter_2d
    from .runs import load_run
    out = check_writable(a.out)
    if out.suffix != ".npz":
        raise UserError(f"--out '{a.out}' must end in .npz")
    cfg, _, den = load_run(a.checkpoint, device=a.device)
    opts = {}
    if a.variance:
        opts["variance"] = a.variance
    if a.eta is not None:
        opts["eta"] = a.eta
    with torch.inference_mode():
        x, _, labels = generate(cfg, den, a.n, a.seed, a.batch_size, a.sampler, a.nfe, a.device, not a.quiet,
                                **opts)
    save_npz(out, x, labels)
    png = out.with_suffix(".png")
    if cfg.data_kind == "image":
        save_grid(x[:256], png)
    elif x.shape[1] == 2:
        scatter_2d(x.numpy(), png)
    print(f"samples: {out} ({tuple(x.shape)})")
    if png.exists():
        print(f"grid: {png}")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo
    run_demo(Path(a.out), minutes=a.minutes, n=a.n, seed=a.seed, progress=not a.quiet)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "demo": cmd_demo}


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)
        return COMMANDS[a.command](a)
    except UserError as e:
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
