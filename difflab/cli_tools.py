"""Command-line parts of issue 7: `difflab train-evaluator | plot | report | compare`, and the expansion of
`--metrics default` for `difflab eval`. `add_commands(sub)` adds the sub-parsers; `COMMANDS` maps names to
functions. Heavy imports happen inside the commands."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

__all__ = ["add_commands", "COMMANDS", "expand_metric_names", "PLOT_KINDS"]

PLOT_KINDS = {
    "samples": "a grid of samples (images) or a scatter (2-D) from --checkpoint or --samples",
    "reverse": "the reverse process x_T ... x_0 of a run (image strip, or 2-D clouds)",
    "forward": "the forward process of one image or of a 2-D point cloud, with signal/noise curves",
    "schedules": "alpha_bar and log-SNR of every schedule (and of --checkpoint's) on one plot",
    "score": "2-D: density and score field at a noise level, with Langevin trajectories",
    "gif": "2-D: an animation (GIF) of the reverse process of a point cloud",
    "loss": "the training loss curve of a run",
    "nfe": "sample quality against NFE from a sampler benchmark JSON",
}


def add_commands(sub, positive_int, positive_float) -> None:
    """Add the sub-commands to the `difflab` sub-parser collection `sub`."""
    t = sub.add_parser("train-evaluator", help="train the domain classifier used by the image metrics")
    t.add_argument("--data", default="digits", help="labelled image data (default: digits)")
    t.add_argument("--out", required=True, help="output .safetensors file")
    t.add_argument("--epochs", type=positive_int("--epochs"), default=40)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--image-size", type=positive_int("--image-size"), dest="image_size")

    p = sub.add_parser("plot", help="draw one picture: " + ", ".join(PLOT_KINDS))
    p.add_argument("kind", metavar="KIND", help="; ".join(f"{k}: {v}" for k, v in PLOT_KINDS.items()))
    p.add_argument("--out", required=True, help="output file (.png; .gif for KIND gif)")
    p.add_argument("--checkpoint", help="run folder or checkpoint file")
    p.add_argument("--samples", help=".npz of samples (KIND samples)")
    p.add_argument("--data", help="data spec (KIND forward, score; default: the run's)")
    p.add_argument("--bench", help="benchmark JSON (KIND nfe)")
    p.add_argument("--quality", help="key of the quality figure in the benchmark rows (KIND nfe; default: guessed)")
    p.add_argument("--n", type=positive_int("--n"), help="number of samples / points")
    p.add_argument("--nfe", type=positive_int("--nfe"), help="sampler steps (reverse, gif; default 100)")
    p.add_argument("--sampler", help="sampler for reverse / gif (default: the run's)")
    p.add_argument("--t", type=float, dest="t", help="noise level t/T in (0, 1] for KIND score (default 0.05)")
    p.add_argument("--index", type=int, default=0, help="which data example (KIND forward, images)")
    p.add_argument("--seed", type=int, default=0)

    r = sub.add_parser("report", help="one self-contained HTML page about a run")
    r.add_argument("run", metavar="RUN", help="run folder")
    r.add_argument("--out", required=True, help="output .html")
    r.add_argument("--n", type=positive_int("--n"), default=500, help="samples drawn for the metrics (default 500)")
    r.add_argument("--nfe", type=positive_int("--nfe"), default=100, help="sampler steps (default 100)")
    r.add_argument("--sampler", help="sampler (default: the run's)")
    r.add_argument("--metrics", help="comma-separated metric names (default: the default set for the data)")
    r.add_argument("--no-metrics", action="store_true", dest="no_metrics",
                   help="do not compute metrics (show those already in the run folder)")
    r.add_argument("--recompute", action="store_true", help="recompute metrics even if RUN/metrics.json exists")
    r.add_argument("--samples", help="show and score this .npz of the run's samples instead of drawing --n new ones")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quiet", action="store_true")

    c = sub.add_parser("compare", help="one table of the metrics of several runs")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or metrics JSON files)")
    c.add_argument("--json", help="also write the table as JSON to this file")
    c.add_argument("--n", type=positive_int("--n"), default=500,
                   help="samples drawn when a run has no metrics JSON yet (default 500)")
    c.add_argument("--nfe", type=positive_int("--nfe"), default=100, help="sampler steps for those (default 100)")
    c.add_argument("--quiet", action="store_true")


def expand_metric_names(names: list[str], ctx) -> list[str]:
    """Replace "default" by the default metric set of the context's data."""
    if "default" not in names:
        return names
    from .metric_suite import default_metrics
    out = []
    for n in names:
        for m in (default_metrics(ctx) if n == "default" else [n]):
            if m not in out:
                out.append(m)
    return out


def cmd_train_evaluator(a) -> int:
    from .feature_net import train_evaluator
    out = Path(a.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out '{a.out}' must end in .safetensors")
    info = train_evaluator(a.data, out, epochs=a.epochs, seed=a.seed, image_size=a.image_size)
    print(json.dumps(info, indent=2))
    print(f"evaluator: {out}")
    return 0


def cmd_plot(a) -> int:
    from .plot_cli import make_plot
    if a.kind not in PLOT_KINDS:
        raise UserError(f"unknown plot KIND '{a.kind}'; choose one of {', '.join(PLOT_KINDS)}")
    path = make_plot(a)
    print(f"{a.kind}: {path}")
    return 0


def cmd_report(a) -> int:
    from .report import write_report
    names = [m.strip() for m in a.metrics.split(",") if m.strip()] if a.metrics else None
    path = write_report(a.run, a.out, n=a.n, nfe=a.nfe, sampler=a.sampler, metrics=names,
                        compute=not a.no_metrics, recompute=a.recompute, seed=a.seed, progress=not a.quiet,
                        samples_path=a.samples)
    print(f"report: {path}")
    return 0


def cmd_compare(a) -> int:
    from .compare import compare_runs, markdown_table
    table = compare_runs(a.runs, n=a.n, nfe=a.nfe, progress=not a.quiet)
    if a.json:
        from .generate import check_writable
        check_writable(a.json).write_text(json.dumps(table, indent=2))
    print(markdown_table(table))
    return 0


COMMANDS = {"train-evaluator": cmd_train_evaluator, "plot": cmd_plot, "report": cmd_report, "compare": cmd_compare}
