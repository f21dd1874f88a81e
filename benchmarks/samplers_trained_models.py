"""difflab's samplers against diffusers' schedulers on *trained* networks: the digits U-Net of `difflab demo`,
or any run on the linear T = 1000 schedule (a 2-D toy's MLP, say).

The mixture benchmarks (samplers_vs_diffusers.py and the validations) feed every sampler the exact denoiser;
this one checks that the ranking survives a learned one, whose errors the tuned grids never saw. Every
sampler gets the same float32 noise (n draws of the data's shape) and the run's EMA network; diffusers' schedulers
are driven exactly as in samplers_vs_diffusers.py (the network is asked at the noise level the scheduler
names; sigma-based ones at alpha_bar = 1 / (1 + sigma^2), the fractional timestep the U-Net embeds).

Scores:
    map_rms  RMS per coordinate, in the model's units (pixels in [-1, 1]; toys standardised), to the
             adaptive PF-ODE map of the same noise (RK45, rtol = atol = 1e-6): the solver's own error on
             this network, free of sampling noise (deterministic samplers only);
digits runs:
    fd       Frechet distance in the shipped digits classifier's features to all 1797 real digits
             (`difflab eval`'s FD_digits space); floor: the FD of n real digits drawn with replacement;
    conf     share of samples the classifier labels with p >= 0.9; tv: class histogram's total
             variation from uniform.
vector runs (toy data):
    sw2      sliced Wasserstein-2 (256 directions, data units) to 20000 fresh draws of the toy;
             floor: n other fresh draws;
    far      share of samples farther from the data's mean than 1.5 x the largest distance of the reference.

    python benchmarks/samplers_trained_models.py --run demo_out/run [--n 2000] [--nfe 10 20 50] [--tag digits]
                                                 [--work DIR]
    -> benchmarks/results/samplers_trained_<tag>.{json,md}
    python benchmarks/samplers_trained_models.py --report benchmarks/results/samplers_trained_<tag>.json
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import difflab
from difflab import data
from difflab import metrics as M
from difflab.evaluator import judge
from difflab.feature_net import load_classifier, shipped_for
from difflab.runs import load_run, to_data_units

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

DIFFLAB = {  # label -> (sampler, options); deterministic unless the label says otherwise
    "ddim": ("ddim", {}),
    "heun (karras)": ("heun", {}),
    "dpmpp_2m (logsnr)": ("dpmpp_2m", {}),
    "dpmpp_3m (logsnr)": ("dpmpp_3m", {}),
    "unipc (tuned grid)": ("unipc", {}),
    "gauss_multistep (tuned grid)": ("gauss_multistep", {}),
    "split_multistep (tuned grid)": ("split_multistep", {}),
    "auto": ("auto", {}),
    "ancestral (default), stochastic": ("ancestral", {}),
}


class Model:
    """The run's EMA denoiser with the `.eps(x, ab)` the diffusers driver of samplers_vs_diffusers.py calls."""

    def __init__(self, run: str):
        self.cfg, _, self.den = load_run(run)

    def eps(self, x: torch.Tensor, ab: float) -> torch.Tensor:
        with torch.inference_mode():
            return self.den.eps(x.float(), torch.full((len(x),), ab, dtype=torch.float64))


def pf_ode_map(den, noise: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The reference every sampler is scored against: the adaptive PF-ODE map of noise (RK45, rtol = atol =
    1e-6) and the denoiser calls it took."""
    calls = den.nfe
    with torch.inference_mode():
        ref = difflab.sample(den, noise, "ode", rtol=1e-6, atol=1e-6)
    return ref, den.nfe - calls


class DigitsScorer:
    keys = ("fd", "conf", "tv")

    def __init__(self, n: int):
        path = shipped_for("digits")
        if path is None:
            raise SystemExit("the shipped digits classifier is missing (difflab/weights)")
        self.net = load_classifier(path)[0]
        ds = data.load("digits")
        fr = self.feat(ds.x)  # data units: pixels in [-1, 1], as the model sees them
        self.ref = M.gaussian_stats(fr)
        rng = np.random.default_rng(0)
        self.floor = [M.frechet_distance(*M.gaussian_stats(fr[rng.integers(0, len(fr), n)]), *self.ref)
                      for _ in range(5)]

    def feat(self, x_pm1: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            x01 = data.to_unit(x_pm1.float(), "image")
            return torch.cat([self.net.features(x01[i:i + 500]) for i in range(0, len(x01), 500)]).double().numpy()

    def __call__(self, x: torch.Tensor) -> dict:
        j = judge(self.net, data.to_unit(x.float(), "image"))  # the judge of benchmarks/judge_digits.py
        return {"fd": M.frechet_distance(*M.gaussian_stats(self.feat(x)), *self.ref),
                "conf": j["conf_rate"], "tv": j["tv_uniform"]}

    def floor_line(self) -> str:
        f = self.floor
        return (f"- **FD**: Frechet distance in the digits classifier's features to the 1797 real digits; n real "
                f"digits drawn with replacement score {np.mean(f):.2f} (sd {np.std(f, ddof=1):.2f}).\n"
                "- **conf**: share classified with p >= 0.9; **TV**: class histogram's distance from uniform.")


class ToyScorer:
    keys = ("sw2", "far")

    def __init__(self, cfg, n: int):
        spec, self.cfg = cfg.data, cfg
        self.ref = data.load(spec, n=20000, seed=12345).x.double().numpy()
        self.mean = self.ref.mean(0)
        self.radius = 1.5 * np.linalg.norm(self.ref - self.mean, axis=1).max()
        self.dirs = M.random_directions(256, self.ref.shape[1], seed=0)
        self.floor = [M.sliced_w2(data.load(spec, n=n, seed=s).x.numpy(), self.ref, self.dirs) for s in range(5)]

    def __call__(self, x: torch.Tensor) -> dict:
        x = to_data_units(x, self.cfg).double().numpy()  # the trainer standardised the toy
        return {"sw2": M.sliced_w2(x, self.ref, self.dirs),
                "far": float((np.linalg.norm(x - self.mean, axis=1) > self.radius).mean())}

    def floor_line(self) -> str:
        f = self.floor
        return (f"- **SW2**: sliced W2 to 20000 fresh draws of the toy; n other fresh draws score {np.mean(f):.4f} "
                f"(sd {np.std(f, ddof=1):.4f}).\n- **far**: share of samples beyond 1.5 x the reference's largest "
                f"distance from its mean ({self.radius:.2f}).")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="demo_out/run")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None, help="results name (default: the run's data, e.g. digits, moons)")
    ap.add_argument("--work", default=None, help="folder to keep the PF-ODE reference in (reused when present)")
    ap.add_argument("--report", default=None, metavar="JSON", help="only rewrite the markdown of a results file")
    a = ap.parse_args()
    if a.report:
        res = json.loads(Path(a.report).read_text())
        Path(a.report).with_suffix(".md").write_text(report(res))
        return
    torch.manual_seed(0)
    import samplers_vs_diffusers as svd  # same folder: its diffusers driver and NFE counting

    model = Model(a.run)
    if model.cfg.schedule != "linear" or model.cfg.T != svd.T:
        raise SystemExit("this benchmark drives diffusers with the linear T = 1000 schedule; "
                         f"the run has {model.cfg.schedule} T = {model.cfg.T}")
    spec = model.cfg.data
    scorer = DigitsScorer(a.n) if spec == "digits" else ToyScorer(model.cfg, a.n)
    tag = a.tag or spec.partition(":")[2] or spec
    shape = data.load(spec, n=1).x.shape[1:]
    noise = torch.randn(a.n, *shape, generator=torch.Generator().manual_seed(a.seed))
    rows = []

    t0 = time.time()
    cache = Path(a.work) / f"ref_{tag}_n{a.n}_s{a.seed}.pt" if a.work else None
    if cache is not None and cache.exists():
        ref, calls = torch.load(cache)
    else:
        ref, calls = pf_ode_map(model.den, noise)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save((ref, calls), cache)
    rows.append({"lib": "reference", "label": "PF-ODE RK45 rtol 1e-6", "nfe": calls, "map_rms": 0.0,
                 **scorer(ref), "s": time.time() - t0})
    print(rows[-1], flush=True)

    def record(lib, label, target, x, calls, t, deterministic=True):
        x = x.float()
        row = {"lib": lib, "label": label, "target": target, "nfe": calls,
               "map_rms": float(((x - ref) ** 2).mean().sqrt()) if deterministic else None,
               **scorer(x), "s": time.time() - t}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    for nfe in a.nfe:
        for label, (name, opts) in DIFFLAB.items():
            t = time.time()
            model.den.nfe = 0
            with torch.inference_mode():
                x = difflab.sample(model.den, noise, name, nfe=nfe, generator=torch.Generator().manual_seed(1),
                                   **opts)
            record("difflab", label, nfe, x, model.den.nfe, t, "stochastic" not in label)
        for label, (cls, extra) in svd.diffusers_schedulers().items():
            steps = svd.steps_for(cls, extra, nfe)
            if steps is None:
                continue
            t = time.time()
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                x, calls = svd.run_diffusers(cls, extra, model, noise, steps, seed=1)
            record("diffusers", label, nfe, x, calls, t, label not in ("DDPM", "Euler a"))

    out = {"run": str(a.run), "data": spec, "n": a.n, "seed": a.seed, "keys": list(scorer.keys),
           "floor": scorer.floor, "floor_line": scorer.floor_line(), "rows": rows}
    path = RESULTS / f"samplers_trained_{tag}"
    path.with_suffix(".json").write_text(json.dumps(out, indent=1))
    path.with_suffix(".md").write_text(report(out))
    print(report(out))


def report(res: dict) -> str:
    rows, keys = res["rows"], res["keys"]
    lines = [f"# Samplers on a trained network: {res['data']} (issue 5)", "",
             "Generated by `benchmarks/samplers_trained_models.py` (see its docstring). "
             f"n = {res['n']} samples from the same noise (seed {res['seed']}) for every sampler; run `{res['run']}`.",
             "", "- **map_rms**: RMS per coordinate (model units: pixels in [-1, 1], toys standardised) to the "
             "adaptive PF-ODE map of the same noise; deterministic samplers only.", res["floor_line"], ""]
    refrow = next(r for r in rows if r["lib"] == "reference")
    lines.append(f"Reference, {refrow['label']} ({refrow['nfe']} calls): "
                 + ", ".join(f"{k} {refrow[k]:.4g}" for k in keys) + ".")
    for nfe in sorted({r["target"] for r in rows if "target" in r}):
        sub = [r for r in rows if r.get("target") == nfe]
        det = [r for r in sub if r["map_rms"] is not None]
        best_d = min((r for r in det if r["lib"] == "diffusers"), key=lambda r: r["map_rms"])
        lines += ["", f"## NFE {nfe}", "",
                  f"Closest diffusers scheduler to the map: {best_d['label']} ({best_d['map_rms']:.4f}).", "",
                  "| library | sampler | calls | map_rms | " + " | ".join(keys) + " |",
                  "|---|---|---|---|" + "---|" * len(keys)]
        for r in sorted(sub, key=lambda r: (r["map_rms"] is None, r["map_rms"] or 0, r[keys[0]])):
            mr = "-" if r["map_rms"] is None else f"{r['map_rms']:.4f}"
            lines.append(f"| {r['lib']} | {r['label']} | {r['nfe']} | {mr} | "
                         + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
