"""Guidance on the digits: scale against the fraction of samples in the requested class, and diversity, for
classifier-free guidance (conditional model) and classifier guidance (unconditional model + noisy classifier);
ILVR low-pass distances for several N; inpainting's known pixels. Draws docs/guidance_*.png, docs/ilvr.png,
docs/inpaint.png.

    OMP_NUM_THREADS=1 python benchmarks/guidance.py --cond /tmp/g_cond --uncond /tmp/g_uncond \
        --classifier /tmp/g_clf [--n-per-class 30] [--confirm-per-class 100]

The judge is difflab.evaluator.train_classifier trained on the real digits' training split (as in
benchmarks/judge_digits.py); it never sees samples. "in class" = the judge's argmax is the requested class.
Diversity = mean pairwise L2 distance (in [0, 1] pixel units) between samples of one class, divided by the
same for real training digits of that class (1 = as diverse as the data, 0 = copies of one image).
Writes benchmarks/results/guidance.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from difflab import data
from difflab.classifier import load_classifier
from difflab.conditioning import generate_conditional
from difflab.evaluator import DigitClassifier, train_classifier
from difflab.guidance import lowpass
from difflab.guidance_plots import guidance_grid, ilvr_figure, inpaint_figure
from difflab.runs import load_run

ROOT = Path(__file__).resolve().parents[1]


def pairwise_mean(x: torch.Tensor) -> float:
    """Mean L2 distance between distinct rows of x (n, d)."""
    d = torch.cdist(x.double(), x.double())
    n = len(x)
    return float(d.sum() / (n * (n - 1))) if n > 1 else float("nan")


def class_stats(judge, x, labels, real_div) -> dict:
    """Per-class fraction judged as requested, diversity ratio, nearest-neighbour distance; and overall."""
    with torch.inference_mode():
        p = torch.softmax(judge(x.float()), 1)
    pred = p.argmax(1)
    per, div, nn_min = {}, {}, {}
    for k in sorted(set(labels.tolist())):
        sel = labels == k
        per[k] = round(float((pred[sel] == k).double().mean()), 4)
        xs = x[sel].reshape(int(sel.sum()), -1)
        div[k] = round(pairwise_mean(xs) / real_div[k], 3)
        d = torch.cdist(xs.double(), xs.double()) + 1e9 * torch.eye(len(xs), dtype=torch.float64)
        nn_min[k] = round(float(d.min()), 3)
    return {"in_class_mean": round(float((pred == labels).double().mean()), 4),
            "in_class_min": min(per.values()), "per_class": per,
            "diversity_mean": round(sum(div.values()) / len(div), 3), "diversity": div,
            "min_nn_distance": min(nn_min.values()),
            "confident_rate": round(float((p.max(1).values >= 0.9).double().mean()), 4)}


def sweep(name, cfg, den, judge, real_div, scales, n_per_class, seed, sampler, nfe, kw_of):
    rows = []
    for s in scales:
        t0 = time.time()
        x, labels = generate_conditional(cfg, den, 10 * n_per_class, seed, 500, sampler, nfe, progress=False,
                                         classes=list(range(10)), **kw_of(s))
        r = class_stats(judge, x, labels, real_div)
        r.update(scale=s, seconds=round(time.time() - t0, 1), n=len(x))
        print(f"{name} scale {s:g}: in-class mean {r['in_class_mean']:.3f} min {r['in_class_min']:.3f} "
              f"diversity {r['diversity_mean']:.3f} ({r['seconds']} s)", flush=True)
        rows.append(r)
    return rows


def recommend(rows, target_min, target_mean=None):
    """The smallest scale reaching the target (per-class minimum, or mean) with diversity >= 0.5."""
    for r in rows:
        ok = r["in_class_min"] >= target_min if target_mean is None else r["in_class_mean"] >= target_mean
        if ok and r["diversity_mean"] >= 0.5:
            return r["scale"]
    return max(rows, key=lambda r: (r["in_class_min"], r["in_class_mean"]))["scale"]


def grid_figure(cfg, den, scales, path, title, kw_of, m=4, sampler=None, nfe=None):
    """Class-by-scale grid: the same noise in every column (seed 7), m samples per class."""
    cells = []
    for s in scales:
        x, _ = generate_conditional(cfg, den, 10 * m, 7, 500, sampler, nfe, progress=False,
                                    classes=[k for k in range(10) for _ in range(m)], **kw_of(s))
        cells.append(x.reshape(10, m, *x.shape[1:]))
    guidance_grid(torch.stack(cells, 1), scales, path, title)


def ilvr_bench(cfg, den, judge, ref01, ref_label, factors, n, sampler, nfe, seed):
    """For each N: ||phi_M(x_0) - phi_M(ref)|| (mean over samples, [0, 1] units) for M in factors and M = 1
    (pixels), the judge's in-reference-class rate and confident rate."""
    out, samples = {}, {}
    for f in factors:
        x, _ = generate_conditional(cfg, den, n, seed, 500, sampler, nfe, progress=False, reference=ref01,
                                    ilvr_factor=f)
        dist = {}
        for m in sorted(set(factors) | {1}):
            dist[f"phi_{m}"] = round(float((lowpass(x, m) - lowpass(ref01[None], m)).flatten(1).norm(dim=1)
                                           .mean()), 4)
        with torch.inference_mode():
            p = torch.softmax(judge(x), 1)
        out[f] = {"distance": dist, "own_filter_distance": dist[f"phi_{f}"],
                  "reference_class_rate": round(float((p.argmax(1) == ref_label).double().mean()), 4),
                  "confident_rate": round(float((p.max(1).values >= 0.9).double().mean()), 4),
                  "diversity_pixels": round(pairwise_mean(x.flatten(1)), 4)}
        samples[f] = x[:8]
        print(f"ILVR N={f}: {out[f]}", flush=True)
    return out, samples


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cond", required=True)
    ap.add_argument("--uncond", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--cfg-scales", default="0,0.5,1,2,3,5")
    ap.add_argument("--clf-scales", default="0,1,2,4,8,16")
    ap.add_argument("--n-per-class", type=int, default=30)
    ap.add_argument("--confirm-per-class", type=int, default=100)
    ap.add_argument("--sampler", default=None, help="default: the run's (ancestral)")
    ap.add_argument("--nfe", type=int, default=None, help="default: the run's (100)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: cfg,clf,ilvr,inpaint,figures")
    ap.add_argument("--n-reference", type=int, default=100, help="ILVR / inpainting samples per setting")
    ap.add_argument("--judge-cache", help="save / reuse the judge's weights here (a .safetensors path)")
    ap.add_argument("--merge", action="store_true", help="update the existing results instead of replacing them")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "guidance"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    skip = set(a.skip.split(","))
    t_start = time.time()

    torch.manual_seed(0)
    ds = data.load("digits")
    tr, ho = data.split(ds, 0.1, seed=0)
    if a.judge_cache and Path(a.judge_cache).exists():
        from safetensors.torch import load_file
        judge = DigitClassifier(1, 10)
        judge.load_state_dict(load_file(a.judge_cache))
        judge.eval()
    else:
        judge = train_classifier(data.to_unit(tr.x, tr), tr.labels, epochs=40)
        if a.judge_cache:
            from safetensors.torch import save_file
            save_file(judge.state_dict(), a.judge_cache)
    with torch.inference_mode():
        real_acc = float((judge(data.to_unit(ho.x, ho)).argmax(1) == ho.labels).double().mean())
    real01 = data.to_unit(tr.x, tr).flatten(1)
    real_div = {k: pairwise_mean(real01[tr.labels == k]) for k in range(10)}
    print(f"judge: held-out accuracy {real_acc:.3f}", flush=True)
    out = Path(a.out)
    res = json.loads(out.with_suffix(".json").read_text()) if a.merge and out.with_suffix(".json").exists() else {}
    res.update({"judge_heldout_accuracy": round(real_acc, 4), "real_pairwise_distance": real_div,
                "sampler": a.sampler, "nfe": a.nfe, "n_per_class": a.n_per_class, "n_reference": a.n_reference,
                "command": "OMP_NUM_THREADS=1 python benchmarks/guidance.py " + " ".join(sys.argv[1:])})
    out.parent.mkdir(parents=True, exist_ok=True)
    docs = ROOT / "docs"

    def save():
        res["total_seconds"] = round(time.time() - t_start, 1)
        out.with_suffix(".json").write_text(json.dumps(res, indent=2))

    def confirm(key, label, cfg, den, rows, rec, options):
        """Samples at the recommended scale with a fresh seed, judged and stored under res[key]."""
        x, labels = generate_conditional(cfg, den, 10 * a.confirm_per_class, 1, 500, a.sampler, a.nfe,
                                         progress=False, classes=list(range(10)), **options)
        conf = class_stats(judge, x, labels, real_div)
        conf.update(scale=rec, n=len(x), seed=1)
        print(f"{label} confirm at {rec}: {conf}", flush=True)
        res[key] = {"sweep": rows, "recommended": rec, "confirm": conf, "command": res["command"]}
        save()

    if "cfg" not in skip:
        cfg_c, _, den_c = load_run(a.cond)
        scales = [float(s) for s in a.cfg_scales.split(",")]
        rows = sweep("classifier-free", cfg_c, den_c, judge, real_div, scales, a.n_per_class, 0, a.sampler, a.nfe,
                     lambda s: {"guidance": s})
        rec = recommend(rows, 0.97)
        confirm("classifier_free", "classifier-free", cfg_c, den_c, rows, rec, {"guidance": rec})
        if "figures" not in skip:
            grid_figure(cfg_c, den_c, [0, 1, rec, max(scales)] if rec not in (0, 1, max(scales)) else
                        sorted({0.0, 1.0, rec, max(scales)}), docs / "guidance_cfg.png",
                        "classifier-free guidance\nrows: class, columns: scale w",
                        lambda s: {"guidance": s}, sampler=a.sampler, nfe=a.nfe)

    if "clf" not in skip:
        cfg_u, _, den_u = load_run(a.uncond)
        clf, _ = load_classifier(a.classifier)
        scales = [float(s) for s in a.clf_scales.split(",")]
        rows = sweep("classifier", cfg_u, den_u, judge, real_div, scales, a.n_per_class, 0, a.sampler, a.nfe,
                     lambda s: {"classifier": clf, "classifier_scale": s})
        rec = recommend(rows, 0.0, target_mean=0.93)
        confirm("classifier", "classifier", cfg_u, den_u, rows, rec, {"classifier": clf, "classifier_scale": rec})
        if "figures" not in skip:
            grid_figure(cfg_u, den_u, sorted({0.0, rec / 2, rec, max(scales)}), docs / "guidance_classifier.png",
                        "classifier guidance (unconditional model)\nrows: class, columns: scale gamma",
                        lambda s: {"classifier": clf, "classifier_scale": s}, sampler=a.sampler, nfe=a.nfe)

    if "ilvr" not in skip or "inpaint" not in skip:
        cfg_u, _, den_u = load_run(a.uncond)
        ref01 = data.to_unit(ho.x[0], ho)  # a held-out digit the model never saw
        ref_label = int(ho.labels[0])
        res["reference"] = {"split": "held-out", "index": 0, "label": ref_label}
    if "ilvr" not in skip:
        factors = [1, 2, 4, 8]
        ilvr, samples = ilvr_bench(cfg_u, den_u, judge, ref01, ref_label, factors, a.n_reference, a.sampler, a.nfe, 2)
        res["ilvr"] = ilvr
        save()
        if "figures" not in skip:
            ilvr_figure(ref01, {f: samples[f] for f in factors}, docs / "ilvr.png")

    if "inpaint" not in skip:
        masks = {"left half": torch.zeros(1, 8, 8), "top half": torch.zeros(1, 8, 8)}
        masks["left half"][..., :4] = 1
        masks["top half"][..., :4, :] = 1
        res["inpaint"] = {}
        for name, mask in masks.items():
            x, _ = generate_conditional(cfg_u, den_u, a.n_reference, 3, 500, a.sampler, a.nfe, progress=False,
                                        reference=ref01, mask=mask, resample=2)
            known = mask.bool().expand_as(x)
            dev = float((x[known] - ref01.expand_as(x)[known]).abs().max())
            with torch.inference_mode():
                p = torch.softmax(judge(x), 1)
            r = {"max_abs_known_pixel_error": dev, "resample": 2,
                 "reference_class_rate": round(float((p.argmax(1) == ref_label).double().mean()), 4),
                 "confident_rate": round(float((p.max(1).values >= 0.9).double().mean()), 4),
                 "unknown_pixel_diversity": round(pairwise_mean(x[~known].reshape(len(x), -1)), 4)}
            res["inpaint"][name] = r
            print(f"inpaint {name}: {r}", flush=True)
            if "figures" not in skip and name == "left half":
                inpaint_figure(ref01, mask, x[:8], docs / "inpaint.png",
                               "inpainting: the right half drawn, the left half kept (RePaint, 2 rounds)")
        save()
    write_markdown(res, out.with_suffix(".md"))
    save()


def write_markdown(res, path):
    lines = ["# Guidance on the digits", "",
             f"Judge: a digit classifier trained on the real training split (held-out accuracy "
             f"{res['judge_heldout_accuracy']:.3f}). \"in class\" = judged as the requested class; diversity = mean "
             "pairwise distance within a class over the same for real digits (1 = as diverse as the data, "
             f"0 = copies). Sampler: {res['sampler'] or 'the run default (ancestral)'}, nfe "
             f"{res['nfe'] or 'the run default (100)'}; {res['n_per_class']} samples per class per scale; "
             f"{res.get('n_reference', 100)} samples per ILVR / inpainting setting.", "",
             f"Command (last run): `{res.get('command', '')}`", ""]
    for what, text in res.get("models", {}).items():
        lines.append(f"- {what} model: {text}")
    lines.append("")
    for key, title, sym in (("classifier_free", "Classifier-free guidance (conditional model)", "w"),
                            ("classifier", "Classifier guidance (unconditional model + noisy classifier)", "gamma")):
        if key not in res:
            continue
        r = res[key]
        lines += [f"## {title}", "", f"| {sym} | in class (mean) | in class (worst class) | diversity | "
                  "min NN distance | confident | seconds |", "|---|---|---|---|---|---|---|"]
        for row in r["sweep"]:
            lines.append(f"| {row['scale']:g} | {row['in_class_mean']:.3f} | {row['in_class_min']:.3f} | "
                         f"{row['diversity_mean']:.3f} | {row['min_nn_distance']:.3f} | {row['confident_rate']:.3f} | "
                         f"{row['seconds']} |")
        if "default_sampler_check" in r:
            d = r["default_sampler_check"]
            form = ", mean form" if key == "classifier" else ""
            lines += ["", f"With the CLI's default sampler ({d['sampler']}, nfe {d['nfe']}{form}) at {sym} = "
                      f"{d['scale']:g}: in class {d['in_class_mean']:.3f} on average over {d['n']} samples, per class "
                      f"{[round(v, 3) for v in d['per_class']]}, confident {d['confident']:.3f}."]
        c = r["confirm"]
        lines += ["", f"**Recommended {sym} = {r['recommended']:g}.** Confirmed on {c['n']} fresh samples (seed 1): "
                  f"in class {c['in_class_mean']:.3f} on average, worst class {c['in_class_min']:.3f}, per class "
                  f"{c['per_class']}, diversity {c['diversity_mean']:.3f}, smallest distance between two samples "
                  f"{c['min_nn_distance']:.3f}.", ""]
        if "command" in r:
            lines += [f"Command: `{r['command']}`", ""]
    if "ilvr" in res:
        ks = list(next(iter(res["ilvr"].values()))["distance"])
        lines += ["## ILVR (unconditional model)", "",
                  f"Reference: held-out digit #0 (class {res['reference']['label']}). Mean L2 distance "
                  "||phi_M(x_0) - phi_M(ref)|| ([0, 1] units, 64 pixels) for samples made with factor N. phi_N is "
                  "block averaging (a projection), and the last step projects onto {x in [-1, 1]^d : phi_N(x) = "
                  "phi_N(ref)}, so each sample matches its own filter exactly (the diagonal is 0); read a column "
                  "(a fixed filter M) to see samples approach the reference as N shrinks:", "",
                  "| N | " + " | ".join(ks) + " | judged as the reference's class | confident | pixel diversity |",
                  "|---|" + "---|" * (len(ks) + 3)]
        for n, r in res["ilvr"].items():
            lines.append(f"| {n} | " + " | ".join(f"{r['distance'][k]:.3f}" for k in ks) +
                         f" | {r['reference_class_rate']:.3f} | {r['confident_rate']:.3f} | "
                         f"{r['diversity_pixels']:.3f} |")
        lines.append("")
    if "inpaint" in res:
        lines += ["## Inpainting (unconditional model, 2 resampling rounds)", "",
                  "| known region | max abs error on known pixels | judged as the reference's class | confident |",
                  "|---|---|---|---|"]
        for name, r in res["inpaint"].items():
            lines.append(f"| {name} | {r['max_abs_known_pixel_error']:.2e} | {r['reference_class_rate']:.3f} | "
                         f"{r['confident_rate']:.3f} |")
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
