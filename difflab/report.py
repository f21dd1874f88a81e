"""`difflab report RUN --out FILE.html`: one self-contained HTML page about a run.

Everything is embedded (images as data: URIs, CSS inline, no script, nothing fetched): the config, the
loss curve, samples, the reverse and forward processes, the metrics with their standard errors and
floors (computed and saved to RUN/metrics.json, or read from it), and whatever other JSON results lie in
the run folder (ELBO terms, sampler comparisons, ...: shown as tables, skipped if unreadable).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import tempfile
from pathlib import Path

import torch

from .errors import UserError

__all__ = ["write_report", "load_metrics_json", "flatten_figures", "compute_metrics", "fmt_figure"]

METRICS_FILE = "metrics.json"
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:4px 0}figure{margin:10px 0}figcaption{font-size:0.88em;color:#555}
.note{color:#666;font-size:0.9em}.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
code{background:#f5f5f5;padding:0 3px}
"""


# -------------------------------------------------------------------------------------------- figures


def fmt(v, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def fmt_figure(f: dict) -> tuple[str, str]:
    """("value ± se", "floor ± se") of a figure dict (floor "" when absent)."""
    val = fmt(f.get("value"))
    if isinstance(f.get("se"), (int, float)):
        val += f" ± {fmt(f['se'], 2)}"
    floor = ""
    if isinstance(f.get("floor"), (int, float)):
        floor = fmt(f["floor"])
        if isinstance(f.get("floor_se"), (int, float)):
            floor += f" ± {fmt(f['floor_se'], 2)}"
    return val, floor


def flatten_figures(results: dict) -> tuple[dict[str, dict], dict[str, object]]:
    """({"metric" or "metric.sub": figure dict with "value"}, {"metric.key...": other scalar/list}) of a
    metrics dict {metric: dict}. Keys starting with "_" are skipped."""
    figs, other = {}, {}

    def walk(prefix, obj, depth):
        if isinstance(obj, dict) and isinstance(obj.get("value"), (int, float)) and depth > 0:
            figs[prefix] = obj
            return
        if isinstance(obj, dict) and depth < 4:
            for k, v in obj.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        else:
            other[prefix] = obj
    walk("", results, 0)
    return figs, other


def load_metrics_json(path) -> dict | None:
    """The {metric: figures} dict of a metrics JSON (as `difflab eval --json` or `report` write it), or None."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("metrics"), dict):
        obj = obj["metrics"]
    return obj if isinstance(obj, dict) else None


# ------------------------------------------------------------------------------------------ computing


def draw_samples(run, n: int, nfe: int, sampler=None, seed: int = 0, progress: bool = False):
    """(cfg, den, samples in data units (n, ...)) of a run."""
    from .generate import generate
    from .runs import load_run
    cfg, _, den = load_run(run)
    nfe = min(nfe, den.schedule.T)
    with torch.inference_mode():
        x, _, _ = generate(cfg, den, n, seed, batch_size=min(n, 500), sampler=sampler, nfe=nfe, progress=progress)
    return cfg, den, x


def compute_metrics(run, n: int = 500, nfe: int = 100, sampler=None, names=None, seed: int = 0,
                    progress: bool = False, samples=None) -> dict:
    """{metric: figures} of a run with `n` samples (or the given `samples` tensor), plus "_meta"."""
    from .cli_tools import expand_metric_names
    from .evaluate import EvalContext, evaluate
    ctx = EvalContext(checkpoint=str(run), n=n, seed=seed, sampler=sampler, nfe=nfe, progress=progress)
    if samples is not None:
        ctx._cache["samples"] = (samples, None)
    res = evaluate(ctx, expand_metric_names(names or ["default"], ctx))
    res["_meta"] = {"n": int(len(ctx.samples[0])), "nfe": nfe, "sampler": sampler or ctx.cfg.sampler, "seed": seed,
                    "data": ctx.data_spec, "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return res


def save_metrics(run, res: dict) -> Path:
    from .checkpoint import atomic_write_bytes
    p = Path(run) / METRICS_FILE
    text = json.dumps(res, indent=2, default=float)
    atomic_write_bytes(p, lambda tmp: Path(tmp).write_text(text))
    return p


# ------------------------------------------------------------------------------------------------ HTML


def _img(path, alt: str, caption: str = "") -> str:
    p = Path(path)
    mime = {".png": "image/png", ".gif": "image/gif"}.get(p.suffix.lower(), "image/png")
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">{cap}</figure>'


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = []
    for r in rows:
        cells = "".join(f'<td{" class=num" if j >= numeric_from else ""}>{html.escape(str(c))}</td>'
                        for j, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _metrics_html(res: dict) -> str:
    figs, other = flatten_figures(res)
    parts = []
    if figs:
        rows = []
        for name, f in figs.items():
            val, floor = fmt_figure(f)
            rows.append([name, val, floor, fmt(f.get("n", "")), str(f.get("better", ""))])
        parts.append(_table(["figure", "model ± s.e.", "floor: real data ± s.e.", "n", "better"], rows))
        parts.append('<p class="note">Set-to-set figures compare with the held-out split, which the model never '
                     'saw. A floor is the same figure for real data (for images: digits the feature classifier '
                     'never saw) at the same sample size n: a perfect model reaches the floor, not zero.</p>')
    if other:
        rows = [[k, _short(v)] for k, v in other.items()]
        parts.append(_table(["other figure", "value"], rows))
    meta = res.get("_meta")
    if isinstance(meta, dict):
        parts.append(f'<p class="note">{html.escape(", ".join(f"{k} = {v}" for k, v in meta.items() if v is not None))}'
                     '</p>')
    return "".join(parts) or '<p class="note">no figures</p>'


def _short(v, limit: int = 160) -> str:
    if isinstance(v, float):
        return fmt(v)
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        s = "[" + ", ".join(fmt(x, 3) for x in v) + "]"
    else:
        s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _json_section(path: Path) -> tuple[str, str] | None:
    """(title, HTML) for another JSON file of the run folder, or None if unreadable."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    name = path.stem.lower()
    text = json.dumps(obj, default=str).lower()[:4000]
    if any(k in name or k in text for k in ("elbo", "vlb", "bpd", "bits_per_dim", "nll")):
        title = f"ELBO / likelihood terms ({path.name})"
    elif any(k in name or k in text for k in ("sampler", "nfe")):
        title = f"Sampler comparison ({path.name})"
    else:
        title = f"Other results ({path.name})"
    rows = obj.get("rows") if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        keys = list(dict.fromkeys(k for r in rows[:500] for k in r))[:12]
        body = _table(keys, [[_short(r.get(k, ""), 40) for k in keys] for r in rows[:500]], numeric_from=0)
        if isinstance(obj, dict):
            scalars = [[k, _short(v)] for k, v in obj.items() if k != "rows" and not isinstance(v, (dict, list))]
            body = (_table(["key", "value"], scalars) if scalars else "") + body
        return title, body
    if isinstance(obj, dict):
        figs, other = flatten_figures(obj)
        html_parts = _metrics_html(obj) if figs else ""
        if not figs:
            rows = [[k, _short(v)] for k, v in other.items()][:300]
            html_parts = _table(["key", "value"], rows)
        for k, v in other.items():       # pictures the JSON points at (e.g. the ELBO terms plot) are embedded
            if isinstance(v, str) and v.lower().endswith((".png", ".gif")):
                pic = Path(v) if Path(v).is_absolute() else path.parent / v
                if pic.is_file():
                    html_parts += _img(pic, k, f"{k}: {pic.name}")
        return title, html_parts
    return title, f"<pre>{html.escape(_short(obj, 2000))}</pre>"


def write_report(run, out, n: int = 500, nfe: int = 100, sampler=None, metrics=None, compute: bool = True,
                 recompute: bool = False, seed: int = 0, progress: bool = False, samples_path=None) -> Path:
    """Write the HTML report of run folder `run` to `out` (see the module docstring); returns its path.
    samples_path: a .npz of this run's samples (as `difflab sample` writes) to show and score instead of
    drawing n new ones."""
    from . import plots
    from .generate import check_writable
    run = Path(run)
    out = check_writable(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out '{out}' must end in .html")
    if not (run / "config.json").is_file() and not (run / "checkpoint.safetensors").is_file():
        raise UserError(f"'{run}' is not a run folder (no config.json / checkpoint.safetensors); "
                        "give the --out folder of `difflab train`")
    sections: list[tuple[str, str]] = []
    cfg_dict = {}
    if (run / "config.json").is_file():
        try:
            cfg_dict = json.loads((run / "config.json").read_text())
        except ValueError:
            cfg_dict = {}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        # --- config and training state
        state = ""
        try:
            from . import checkpoint as ckpt
            _, meta = ckpt.load(run)
            state = (f'<p>{html.escape(str(cfg_dict.get("data", "?")))}: trained {meta.get("step")} steps in '
                     f'{fmt(meta.get("elapsed_s", 0) / 60, 3)} min (stopped: '
                     f'{html.escape(str(meta.get("reason", "?")))}).</p>')
        except (UserError, OSError, KeyError, ValueError, TypeError):
            state = '<p class="note">no readable checkpoint</p>'
        # --- samples, processes, metrics
        sample_html, metrics_res = [], None
        mfile = run / METRICS_FILE
        if mfile.is_file() and not recompute:
            metrics_res = load_metrics_json(mfile)
        try:
            if samples_path is not None:
                from .evaluate import EvalContext
                from .runs import load_run
                x = EvalContext(samples_path=str(samples_path)).samples[0]
                cfg, _, den = load_run(run)
            else:
                cfg, den, x = draw_samples(run, n if (compute and (metrics_res is None)) else min(n, 256), nfe,
                                           sampler, seed, progress)
            sample_html.append(_sample_pictures(cfg, den, x, tmp, nfe, sampler, seed,
                                                f"from {Path(samples_path).name}" if samples_path else None))
            if compute and metrics_res is None:
                metrics_res = compute_metrics(run, n, nfe, sampler, metrics, seed, progress, samples=x)
                if samples_path is not None:
                    metrics_res["_meta"].update(samples=str(samples_path), nfe=None, sampler=None, seed=None)
                save_metrics(run, metrics_res)
        except UserError as e:
            sample_html.append(f'<p class="note">samples could not be drawn: {html.escape(str(e))}</p>')
        if metrics_res is not None:
            sections.append((f"Metrics ({METRICS_FILE})", state + _metrics_html(metrics_res)))
        else:
            sections.append(("Metrics", state + '<p class="note">none computed (run without --no-metrics, or '
                                        '<code>difflab eval --checkpoint RUN --metrics default</code>)</p>'))
        sections.append(("Samples and the diffusion processes", "".join(sample_html)))
        # --- loss
        if (run / "log.jsonl").is_file():
            p = plots.loss_curve(run / "log.jsonl", tmp / "loss.png")
            sections.append(("Loss curve", _img(p, "training loss curve", "training loss (JSONL log)")))
        # --- other JSON results of the run folder (ELBO terms, sampler comparison, ...)
        for p in sorted(run.glob("*.json")):
            if p.name in ("config.json", METRICS_FILE):
                continue
            sec = _json_section(p)
            if sec is not None:
                sections.append(sec)
        # --- config, in three side-by-side tables
        items = [[k, _short(v, 60)] for k, v in cfg_dict.items()]
        third = -(-len(items) // 3) or 1
        tables = "".join(_table(["key", "value"], items[i:i + third], numeric_from=2)
                         for i in range(0, len(items), third))
        sections.append(("Config", f'<div class="grid">{tables}</div>'))
        page = _page(run, sections)
    from .checkpoint import atomic_write_bytes
    atomic_write_bytes(out, lambda t: Path(t).write_text(page, encoding="utf-8"))
    return out


def _sample_pictures(cfg, den, x, tmp: Path, nfe: int, sampler, seed: int, source: str | None = None) -> str:
    from . import data, figures, plots
    from .plot_cli import reverse_frames
    from .runs import build_schedule
    parts = []
    sched = build_schedule(cfg)
    if cfg.data_kind == "image":
        k = min(len(x), 64)
        parts.append(_img(plots.save_grid(x[:k], tmp / "samples.png"), f"{k} samples",
                          f"{k} samples ({source or f'{sampler or cfg.sampler}, {min(nfe, sched.T)} steps'})"))
        frames, labels = reverse_frames(cfg, den, 6, seed, nfe, sampler)
        parts.append(_img(plots.reverse_strip(frames, tmp / "reverse.png", labels), "reverse process",
                          "the reverse process x_T ... x_0 for six samples"))
        ds = data.load(cfg.data, image_size=cfg.image_size)
        parts.append(_img(plots.forward_process(ds.x[0], sched, tmp / "forward.png"), "forward process",
                          "the forward process of one training image, with the signal and noise curves"))
    elif list(cfg.data_shape) == [2]:
        ds = data.load(cfg.data)
        parts.append(_img(plots.scatter_2d(x, tmp / "samples.png", reference=ds.x[:len(x)]), "samples vs data",
                          "training data (left) and samples (right)"))
        frames, labels = reverse_frames(cfg, den, min(len(x), 1000), seed, nfe, sampler, k=6)
        parts.append(_img(figures.clouds_row(frames, tmp / "reverse.png", labels), "reverse process",
                          "the reverse process of a point cloud"))
        parts.append(_img(plots.forward_process_2d(ds.x[:1000], sched, tmp / "forward.png"), "forward process",
                          "the forward process of the data, with the signal and noise curves"))
    else:
        parts.append(f'<p class="note">{len(x)} samples of shape {tuple(x.shape[1:])} (no picture for this '
                     f'data shape)</p>')
    parts.append(_img(plots.schedules_plot({cfg.schedule: sched}, tmp / "schedule.png"), "noise schedule",
                      "the run's noise schedule: alpha_bar and log-SNR"))
    return '<div class="grid">' + "".join(parts) + "</div>"


def _page(run: Path, sections: list[tuple[str, str]]) -> str:
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#s{i}">{html.escape(t)}</a></li>' for i, (t, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(t)}</h2>{h}' for i, (t, h) in enumerate(sections))
    title = f"difflab report: {run.resolve().name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(str(run))} &middot; written {when} by "
            f"<code>difflab report</code></p><ul>{toc}</ul>{body}</body></html>")
