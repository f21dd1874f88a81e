"""`difflab compare RUN1 RUN2 ...`: one table of the metrics of several runs.

Each argument is a run folder (its metrics.json, written by `difflab report` or `difflab eval --json
RUN/metrics.json`, is read; if it has none, the default metric set is computed with --n samples and
saved there) or a metrics JSON file. Cells are "value ± s.e."; the floor (real held-out data at the same
sample size) of each figure is given once per row of runs that share it.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .report import METRICS_FILE, compute_metrics, flatten_figures, fmt, fmt_figure, load_metrics_json, save_metrics

__all__ = ["compare_runs", "markdown_table"]


def _metrics_of(arg: str, n: int, nfe: int, progress: bool) -> dict:
    p = Path(arg)
    if p.is_file() and p.suffix == ".json":
        res = load_metrics_json(p)
        if res is None:
            raise UserError(f"'{p}' is not a metrics JSON; write one with `difflab eval --json FILE`")
        return res
    if not p.is_dir():
        raise UserError(f"'{arg}' is neither a run folder nor a metrics JSON file")
    res = load_metrics_json(p / METRICS_FILE) if (p / METRICS_FILE).is_file() else None
    if res is None:
        res = compute_metrics(p, n=n, nfe=nfe, progress=progress)
        save_metrics(p, res)
    return res


def compare_runs(args: list[str], n: int = 500, nfe: int = 100, progress: bool = False) -> dict:
    """{"runs": [names], "figures": [names], "table": {run: {figure: figure dict}}, "meta": {run: meta}}."""
    table, meta, order = {}, {}, []
    for a in args:
        res = _metrics_of(a, n, nfe, progress)
        figs, other = flatten_figures(res)
        figs.update({k: {"value": v} for k, v in other.items()          # plain numbers, e.g. elbo.bits_per_dim
                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
        name = str(a)
        table[name] = figs
        meta[name] = res.get("_meta", {})
        order += [f for f in figs if f not in order]
    return {"runs": list(table), "figures": order, "table": table, "meta": meta}


def markdown_table(t: dict) -> str:
    """Rows: runs (then one floor row per figure set); columns: figures, "value ± s.e."."""
    figs = t["figures"]
    if not figs:
        return "(no figures)"
    head = "| run | " + " | ".join(figs) + " |"
    lines = [head, "|" + "---|" * (len(figs) + 1)]
    for run in t["runs"]:
        cells = [fmt_figure(t["table"][run][f])[0] if f in t["table"][run] else "" for f in figs]
        n = t["meta"].get(run, {}).get("n")
        lines.append(f"| {run}{f' (n={n})' if n else ''} | " + " | ".join(cells) + " |")
    floors = []
    for f in figs:
        vals = {fmt_figure(t["table"][r][f])[1] for r in t["runs"] if f in t["table"][r]} - {""}
        floors.append(" / ".join(sorted(vals)))
    lines.append("| floor: real data | " + " | ".join(floors) + " |")
    better = [str(next((t["table"][r][f].get("better", "") for r in t["runs"] if f in t["table"][r]), ""))
              for f in figs]
    lines.append("| better | " + " | ".join(better) + " |")
    ns = sorted({fmt(t["table"][r][f].get("n")) for r in t["runs"] for f in figs if f in t["table"][r]})
    return "\n".join(lines) + f"\n\nsample size n per figure (model and floor alike): {', '.join(ns)}"
