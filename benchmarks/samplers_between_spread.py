"""Where auto's 10-call samples lose their spread on modes far apart: a per-level diagnostic (issue 5).

On the held-out sweep's 64-D mixture with narrow modes far apart (samplers_heldout_sweep.py: means 5 N(0, I), widths
U(0.05, 0.3), seed 104) auto ends +2.2 nat too concentrated against the exact PF-ODE map at 10 calls, where the map
passes. This follows auto's gauss_multistep level by level beside the exact flow of the same noise (scipy's DOP853,
`samplers_lowdim_validation.exact_flow`) and splits the state into the subspace between the modes (spanned by the
K - 1 centred means) and the rest. For the samples that end in the same mode as the map's, it prints per level

  spread ratio = E |P (x - mu_k)|^2 over the solver's samples / the same over the exact flow's,

mu_k the map's mode of the sample, P the projection on the between subspace (or on the rest), and the rms distance
to the exact flow's state. A ratio below 1 at the last level means samples too concentrated around their modes (a
higher mean log-density than the map's). Three mixtures: that one, and the follow_spread benchmark's eight modes 1
wide at means 8 N(0, I) and 16 N(0, I) in 64-D (both pass at 10 calls). Each runs three ways (`VARIANTS`): as
before `far_modes` (the width fit "trajectory", `fit_width2`; the trapezoid corrector; the tuned levels stretched),
that with the width fit "implied_mean" (`fit_width2_implied_mean`) alone, and far_modes (auto's default: that fit,
the corrector in log u, log-uniform levels below the second and the data's coordinates once the modes are chosen).
A last table gives the three's dgap and mass moved between modes (against the map) on every mixture of these kinds
where follow_spread stretches the grid's top: the held-out sweep's two 64-D ones at scale 5 and the follow_spread
benchmark's s = 8 and 16 in 16-128-D.

Run:  python benchmarks/samplers_between_spread.py      (~5 min, one core)
Writes benchmarks/results/samplers_between_spread.md.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import samplers_follow_spread as F  # noqa: E402
import samplers_gauss_multistep as G  # noqa: E402
import samplers_heldout_sweep as H  # noqa: E402
import samplers_lowdim_validation as V  # noqa: E402
import samplers_vs_diffusers as B  # noqa: E402

import difflab  # noqa: E402

NFE, N = 10, 2000
VARIANTS = {"before far_modes": {"far_modes": False}, "implied-mean fit alone": {"far_modes": False,
            "width_fit": "implied_mean"}, "far_modes": {}}  # label -> auto's options
CASES = {"held-out 64-D, means 5 N(0, I), widths 0.05-0.3": lambda: H.mixture(64, 5.0, 0.05, 0.3, 104),
         "64-D, eight modes 1 wide at means 8 N(0, I)": lambda: F.mixture(64, 8.0),
         "64-D, eight modes 1 wide at means 16 N(0, I)": lambda: F.mixture(64, 16.0)}
SUMMARY = {"held-out 64-D, scale 5, widths 0.05-0.3": lambda: H.mixture(64, 5.0, 0.05, 0.3, 104),
           "held-out 64-D, scale 5, widths 0.3-1.5": lambda: H.mixture(64, 5.0, 0.3, 1.5, 105),
           **{f"{d}-D, modes 1 wide, s = {s:g}": (lambda d=d, s=s: F.mixture(d, s))
              for d in (16, 32, 64, 128) for s in (8.0, 16.0)}}


def recording(gm, seen: list):
    """gm's exact denoiser that appends each call's alpha_bar to seen."""
    inner = gm.fast_denoiser(B.SCHED)

    def fn(x, alpha_bar):
        seen.append(float(alpha_bar.reshape(-1)[0]))
        return inner.eps(x, alpha_bar)
    return difflab.Denoiser.from_eps(fn, B.SCHED)


class Reference:
    """One mixture's exact answers, computed once and shared by every variant: the judge, the noise, the exact
    PF-ODE map and its gap, and the exact flow's state at each sigma asked for."""

    def __init__(self, gm):
        self.gm, self.judge = gm, B.Judge(gm, N, n_floor=1)
        self.noise = torch.randn(N, gm.dim, generator=torch.Generator().manual_seed(1))
        self.ref = V.exact_map(gm, self.noise)
        self.map_gap = self.judge(self.ref)[1]
        self._flows = {}

    def flow(self, sigma: float) -> torch.Tensor:
        if sigma not in self._flows:
            self._flows[sigma] = V.exact_flow(self.gm, self.noise, sigma)
        return self._flows[sigma]


def per_level(r: Reference, options: dict, levels: bool = True) -> tuple[list[str], float, float]:
    """Table rows (one per level after the first; none unless levels), auto's dgap and its mass moved between
    modes against the map, for one mixture and one variant's options."""
    gm, judge, noise, ref = r.gm, r.judge, r.noise, r.ref
    seen, traj = [], []
    x = difflab.sample(recording(gm, seen), noise, "auto", nfe=NFE, trajectory=traj, **options)
    dgap = judge(x)[1] - r.map_gap
    moved = V.to_map(gm, judge, x, ref)["mode_tv"]
    if not levels:
        return [], dgap, moved
    k_ref = gm.component_log_probs(ref.double()).argmax(1)
    same = gm.component_log_probs(x.double()).argmax(1) == k_ref
    w = gm.weights / gm.weights.sum()
    q = torch.linalg.qr((gm.means - (w[:, None] * gm.means).sum(0)).T)[0][:, :len(w) - 1]  # between subspace (D, K-1)
    mu = gm.means[k_ref[same]]
    rows = []
    for ab, state in zip(seen[1:], traj):
        sigma = math.sqrt((1 - ab) / ab)
        xs = state.double()[same] / math.sqrt(ab) - mu
        xe = r.flow(sigma)[same] - mu

        def split(t):
            b = t @ q
            return b, t - b @ q.T
        (bs, rs), (be, re_), (bd, rd) = split(xs), split(xe), split(xs - xe)
        def ms(t):
            return t.pow(2).sum(1).mean()
        rows.append(f"| {sigma:.3f} | {ms(bs) / ms(be):.3f} | {ms(rs) / ms(re_):.4f} | {ms(bd).sqrt():.3f} | "
                    f"{ms(rd).sqrt():.3f} |")
    return rows, dgap, moved


def main():
    torch.set_num_threads(1)
    lines = ["# Where auto loses the spread between modes far apart, level by level (issue 5)", "",
             "Generated by `benchmarks/samplers_between_spread.py` (see its docstring): auto at 10 calls "
             "(gauss_multistep with follow_spread and principal axes) beside the exact flow of the same noise, "
             "n = 2000, samples that end in the map's mode. Spread ratio: the solver's mean squared distance to "
             "the sample's mode over the exact flow's, in the subspace between the modes (K - 1 = 7 dimensions) "
             "and in the rest.", ""]
    for name, make in CASES.items():
        r = Reference(make())
        for label, options in VARIANTS.items():
            rows, dgap, _ = per_level(r, options)
            lines += [f"## {name}, {label}: dgap {dgap:+.3f} nat", "",
                      "| sigma | spread ratio, between | spread ratio, rest | rms to exact flow, between | rest |",
                      "|---|---|---|---|---|", *rows, ""]
            print(name, label, flush=True)
    lines += ["## The three where follow_spread stretches the top (auto at 10 calls)", "",
              "| mixture | dgap: " + " / ".join(VARIANTS) + " | mass moved %: the same |", "|---|---|---|"]
    for name, make in SUMMARY.items():
        r = Reference(make())
        got = [per_level(r, options, levels=False)[1:] for options in VARIANTS.values()]
        lines.append(f"| {name} | {' / '.join(f'{d:+.3f}' for d, _ in got)} | "
                     f"{' / '.join(f'{100 * m:.2f}' for _, m in got)} |")
        print(name, flush=True)
    G.publish("samplers_between_spread.md", "\n".join(lines))


if __name__ == "__main__":
    main()
