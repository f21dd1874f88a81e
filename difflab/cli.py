"""The `difflab` command line: train | sample | eval | demo.

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
    t.add_argument("--config", help="TOML or YAML (.yaml/.yml) file of config keys (see difflab.config.Config)")
    t.add_argument("--preset", help="digits | toy | mnist | cifar10 | d3pm-digits | vae-digits | hvae-digits "
                   "(default: chosen from --data)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive_int("--steps"), help="total training steps")
    budget.add_argument("--minutes", type=_positive_float("--minutes"), help="total training minutes")
    t.add_argument("--seed", type=int)
    t.add_argument("--checkpoint-every", type=_positive_int("--checkpoint-every"), dest="checkpoint_every")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--batch-size", type=_positive_int("--batch-size"), dest="batch_size")
    t.add_argument("--lr", type=_positive_float("--lr"))
    t.add_argument("--schedule", help="linear | cosine | sigmoid | ve (variance exploding: NCSN score model)")
    t.add_argument("--T", type=_positive_int("--T"))
    t.add_argument("--parameterization", help="eps | x0 | v")
    t.add_argument("--precision", help="fp32 | bf16 | fp16")
    t.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the network (slow first steps; for long runs)")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--conditional", action="store_true", default=None, help="class-conditional model")
    t.add_argument("--image-size", type=_positive_int("--image-size"), dest="image_size")
    t.add_argument("--transition", help="D3PM transition matrices: uniform | absorbing | gaussian (model d3pm)")
    t.add_argument("--loss", help="simple | vlb | hybrid (L_simple + 0.001 L_vlb; needs a learned variance)")
    t.add_argument("--variance-type", dest="variance_type", help="fixed | learned | learned-range")
    t.add_argument("--importance-sampling", dest="importance_sampling", action="store_true", default=None,
                   help="draw t from the per-t loss history (improved DDPM)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    s.add_argument("--n", type=_positive_int("--n"), default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output .npz (a PNG grid is written beside it)")
    s.add_argument("--sampler", help="a name in difflab.samplers.NAMES: ancestral, ddim, langevin, "
                   "annealed_langevin, euler_maruyama, srk, pc, ode, heun, dpmpp_2m, dpmpp_3m, unipc, "
                   "gauss_multistep, split_multistep; or auto, the closest measured for --nfe and the data's "
                   "size (default: the run's)")
    s.add_argument("--nfe", type=_positive_int("--nfe"), help="network evaluations (default: T)")
    s.add_argument("--variance", choices=["small", "large", "analytic"],
                   help="ancestral variance: beta-tilde, beta, or analytic (second moment matched per batch)")
    s.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    s.add_argument("--batch-size", type=_positive_int("--batch-size"), default=500, dest="batch_size")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    from .conditioning import add_sample_arguments as _add_conditioning  # issue 6: --class, --guidance, ...
    _add_conditioning(s, _positive_int, _positive_float)

    e = sub.add_parser("eval", help="compute metrics of a run or of a samples file")
    e.add_argument("--checkpoint", help="run folder or checkpoint file")
    e.add_argument("--data", help="real data spec (default: the run's data); its held-out split is the reference")
    e.add_argument("--samples", help="score this .npz of samples instead of drawing from --checkpoint")
    e.add_argument("--metrics", required=True, help="comma-separated metric names")
    e.add_argument("--json", help="write the figures to this JSON file")
    e.add_argument("--out-dir", dest="out_dir", help="folder for the metrics' figures")
    e.add_argument("--n", type=_positive_int("--n"), default=1000, help="samples to draw (default 1000)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--sampler")
    e.add_argument("--nfe", type=_positive_int("--nfe"))
    e.add_argument("--batch-size", type=_positive_int("--batch-size"), default=500, dest="batch_size")
    e.add_argument("--device", default="cpu")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--evaluator", help="classifier weights for image metrics (default: the one shipped for the data)")
    e.add_argument("--inception", help="Inception weights on disk for inception_fid: pytorch-fid's "
                   "pt_inception-2015-12-05 .pth (or .safetensors) or a TorchScript inception-2015-12-05.pt "
                   "(default: $DIFFLAB_INCEPTION; never downloaded)")

    d = sub.add_parser("demo", help="train on the digits, sample and draw the pictures (about 10 minutes)")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--minutes", type=_positive_float("--minutes"), default=9.5,
                   help="wall-clock budget in all (default 9.5: ~7 training, ~2 sampling)")
    d.add_argument("--n", type=_positive_int("--n"), default=1000, help="samples to draw (default 1000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")

    from .cli_tools import add_commands as _add_tool_commands  # train-evaluator, plot, report, compare (issue 7)
    _add_tool_commands(sub, _positive_int, _positive_float)
    from .conditioning import add_commands as _add_guidance_commands  # issue 6: train-classifier
    _add_guidance_commands(sub, _positive_int, _positive_float)
    return p


def cmd_train(a) -> int:
    from .config import load_config, preset_for_data
    from .train import train
    preset = a.preset or (None if a.config else preset_for_data(a.data or "digits"))
    overrides = {k: getattr(a, k) for k in ("data", "steps", "minutes", "seed", "checkpoint_every", "batch_size",
                                             "lr", "schedule", "T", "parameterization", "precision", "device",
                                             "conditional", "image_size", "transition", "loss", "variance_type",
                                             "importance_sampling", "compile")}
    if a.minutes is not None and a.steps is None:
        overrides["steps"] = None
    cfg = load_config(preset, a.config, overrides)
    if a.minutes is not None:
        cfg.steps = None
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if a.minutes is not None:
        explicit["steps"] = None
    if a.steps is not None:  # on --resume, the budget given now replaces the stored one
        explicit["minutes"] = None
    path = train(cfg, a.out, resume=a.resume, progress=not a.quiet, overrides=explicit)
    print(f"checkpoint: {path}")
    return 0


def cmd_sample(a) -> int:
    import torch

    from .conditioning import cmd_sample_conditional, wants_conditioning
    if wants_conditioning(a):  # issue 6: classes, guidance, ILVR, inpainting
        return cmd_sample_conditional(a)

    from .generate import check_writable, generate, save_npz
    from .plots import save_grid, scatter_2d
    from .runs import load_run
    out = check_writable(a.out)
    if out.suffix != ".npz":
        raise UserError(f"--out '{a.out}' must end in .npz")
    cfg, net, den = load_run(a.checkpoint, device=a.device)
    from .families import is_family
    if is_family(cfg.model):  # D3PM / VAE / HVAE (difflab.families): their own ancestral samplers
        from .families import generate as family_generate
        x = family_generate(cfg, net, a.n, a.seed, a.batch_size, a.device, not a.quiet)
        save_npz(out, x)
        save_grid(x[:256], out.with_suffix(".png"))
        print(f"samples: {out} ({tuple(x.shape)})\ngrid: {out.with_suffix('.png')}")
        return 0
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


def cmd_eval(a) -> int:
    import json

    from .evaluate import EvalContext, evaluate
    from .generate import check_writable
    if a.checkpoint is None and a.samples is None:
        raise UserError("give --checkpoint RUN or --samples FILE.npz")
    js = check_writable(a.json) if a.json else None
    out_dir = Path(a.out_dir) if a.out_dir else (js.parent if js else None)
    ctx = EvalContext(checkpoint=a.checkpoint, data=a.data, samples_path=a.samples, n=a.n, seed=a.seed,
                      sampler=a.sampler, nfe=a.nfe, batch_size=a.batch_size, device=a.device,
                      progress=not a.quiet, out_dir=out_dir)
    ctx.evaluator = a.evaluator
    ctx.inception = a.inception
    names = [m.strip() for m in a.metrics.split(",") if m.strip()]
    from .cli_tools import expand_metric_names
    names = expand_metric_names(names, ctx)   # "default": the default set for the data (issue 7)
    if "inception_fid" in names:              # fail before any metric runs
        from .inception import resolve_path
        ctx.inception = str(resolve_path(a.inception))
    res = evaluate(ctx, names)
    text = json.dumps(res, indent=2, default=float)
    if js:
        from .checkpoint import atomic_write_bytes
        atomic_write_bytes(js, lambda tmp: Path(tmp).write_text(text))
        print(f"metrics: {js}")
    print(text)
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo
    run_demo(Path(a.out), minutes=a.minutes, n=a.n, seed=a.seed, progress=not a.quiet)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "demo": cmd_demo}
from .cli_tools import COMMANDS as _TOOL_COMMANDS  # noqa: E402  (issue 7: train-evaluator, plot, report, compare)

COMMANDS.update(_TOOL_COMMANDS)
from .conditioning import COMMANDS as _GUIDANCE_COMMANDS  # noqa: E402  (issue 6: train-classifier)

COMMANDS.update(_GUIDANCE_COMMANDS)


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
