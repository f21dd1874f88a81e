"""Conditioning at sampling time: classifier-free guidance, classifier guidance, ILVR, inpainting.

Guidance is a *denoiser wrapper*, so every sampler of `difflab.samplers` gets it:

  classifier-free (seed 003, the eq. after 150, in Ho & Salimans' scale w = gamma - 1):
      eps~(x_t, y) = (1 + w) eps(x_t, y) - w eps(x_t, null)      i.e. score = gamma s(x|y) + (1 - gamma) s(x)
      w = 0 is the plain conditional model, w > 0 pushes away from the unconditional one. The combination
      is applied to the network's raw output (eps, x0 or v: at fixed x_t they are affine in each other
      with weights summing to one, so the result is the same).
  classifier (seed 003 eq. 150, Dhariwal & Nichol 2021):
      grad log p(x_t | y) = grad log p(x_t) + gamma grad log p(y | x_t)
      eps form (DDIM, ODE and every other sampler):     eps~ = eps - sqrt(1 - ab) gamma grad log p(y | x_t)
      mean form (ancestral sampling, their Algorithm 1): mu~ = mu + gamma Sigma grad log p(y | x_t)

Per-step conditioning runs in `reverse` (ancestral or DDIM steps with a hook after each step):

  ILVR (seed 002, Algorithm 3): x_{t-1} <- x_{t-1} - phi_N(x_{t-1}) + phi_N(y_{t-1}),
      y_{t-1} = sqrt(ab_{t-1}) y + sqrt(1 - ab_{t-1}) eps (eq. 51); phi_N = average-pool by N, then
      nearest-neighbour upsampling by N (a projection: phi_N(phi_N(x)) = phi_N(x)), on steps in a range.
  inpainting (RePaint, Lugmayr et al. 2022): x_{t-1} <- m * y_{t-1} + (1 - m) * x_{t-1} with the known
      pixels m taken from the forward process of the reference; `resample` rounds per step go back
      x_t ~ q(x_t | x_{t-1}) and redo the step. At the last step y_0 = y, so known pixels are kept exactly.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

from . import gaussian as G
from . import samplers as S
from .classifier import log_prob_grad
from .denoiser import Denoiser

__all__ = ["classifier_free", "classifier_guided", "raw_to_eps", "lowpass", "box_lowpass_projection", "ilvr_hook",
           "inpaint_hook", "ab_range_of_steps", "reverse", "guided_sample", "HOOK_SAMPLERS"]

HOOK_SAMPLERS = ("ancestral", "ddim")   # the samplers `reverse` implements (with per-step hooks)


def raw_to_eps(den: Denoiser, x: torch.Tensor, out: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The network's raw output (eps, x0 or v, per den.parameterization) as eps, without clipping."""
    if den.parameterization == "eps":
        return out
    if den.parameterization == "x0":
        return G.eps_from_x0(x, out, alpha_bar)
    a, s = G.expand(alpha_bar, x).sqrt(), (1 - G.expand(alpha_bar, x)).sqrt()
    return s * x + a * out


def classifier_free(den: Denoiser, labels: torch.Tensor, scale: float) -> Denoiser:
    """Classifier-free guidance: raw~ = raw(x, y) + w (raw(x, y) - raw(x, null)), w = scale.

    den: a class-conditional denoiser with a mutable `labels` attribute (Denoiser.from_network; -1 = null).
    labels: (N,) int64 for a batch of N. One call of the result = one network call on a 2N batch."""
    if not hasattr(den, "labels"):
        raise ValueError("classifier-free guidance needs a conditional denoiser (Denoiser.from_network with labels)")
    labels = torch.as_tensor(labels).long().reshape(-1)
    w = float(scale)

    def fn(x, alpha_bar):
        saved = den.labels
        den.labels = torch.cat([labels, torch.full_like(labels, -1)]).to(x.device)
        try:
            out = den.fn(torch.cat([x, x]), torch.cat([alpha_bar, alpha_bar]))
        finally:
            den.labels = saved
        cond, uncond = out.chunk(2)
        return cond + w * (cond - uncond)
    return Denoiser(fn, den.schedule, den.parameterization, den.clip)


def classifier_guided(den: Denoiser, classifier: Callable, labels: torch.Tensor, scale: float) -> Denoiser:
    """Classifier guidance in eps form: eps~ = eps(x_t) - sqrt(1 - ab) gamma grad_x log p(y | x_t).

    classifier: (x_t (N, ...), alpha_bar (N,)) -> logits (N, K); labels (N,) int64; scale = gamma.
    The result predicts eps (whatever den predicts), with den's clipping."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    gamma = float(scale)

    def fn(x, alpha_bar):
        eps = raw_to_eps(den, x, den.fn(x, alpha_bar), alpha_bar)
        g = log_prob_grad(classifier, x, alpha_bar, labels.to(x.device))
        return eps - gamma * (1 - G.expand(alpha_bar, x)).sqrt() * g
    return Denoiser(fn, den.schedule, "eps", den.clip)


# -------------------------------------------------------------------------------- ILVR, inpainting
def lowpass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """phi_N (seed 002, ILVR): average-pool by N then upsample by N (nearest), (N, C, H, W) -> same shape.

    H and W must be divisible by N; N = 1 is the identity."""
    n = int(factor)
    if n == 1:
        return x
    h, w = x.shape[-2:]
    if h % n or w % n:
        raise ValueError(f"ILVR factor {n} must divide the image size {h}x{w}")
    return F.avg_pool2d(x, n).repeat_interleave(n, dim=-2).repeat_interleave(n, dim=-1)


def _noised_reference(reference, ab_s, generator, like):
    """y_s = sqrt(ab_s) y + sqrt(1 - ab_s) eps (seed 002 eq. 51), (N, ...) like `like`; y_s = y at ab_s = 1."""
    y = reference.to(like.dtype).expand_as(like)
    if float(ab_s) >= 1.0:
        return y.clone()
    z = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return math.sqrt(float(ab_s)) * y + math.sqrt(1.0 - float(ab_s)) * z


def box_lowpass_projection(x: torch.Tensor, target: torch.Tensor, factor: int, lo: float = -1.0, hi: float = 1.0,
                           iters: int = 60) -> torch.Tensor:
    """The point of the box [lo, hi]^d nearest to x with lowpass(., factor) = lowpass(target, factor), (N, C, H, W).

    Each N x N block is independent: by the KKT conditions the answer is clamp(x + c, lo, hi) with one shift c per
    block, found by bisection (the block mean of clamp(x + c) is monotone in c). target must lie in the box."""
    n = int(factor)
    b, ch, h, w = x.shape
    blocks = x.reshape(b, ch, h // n, n, w // n, n)
    m = lowpass(target.expand_as(x), n)[..., ::n, ::n][:, :, :, None, :, None]
    c_lo = lo - blocks.amax((3, 5), keepdim=True)  # every pixel at lo: mean lo <= m
    c_hi = hi - blocks.amin((3, 5), keepdim=True)  # every pixel at hi: mean hi >= m
    for _ in range(iters):
        c = (c_lo + c_hi) / 2
        above = (blocks + c).clamp(lo, hi).mean((3, 5), keepdim=True) > m
        c_hi, c_lo = torch.where(above, c, c_hi), torch.where(above, c_lo, c)
    return (blocks + (c_lo + c_hi) / 2).clamp(lo, hi).reshape(b, ch, h, w)


def ilvr_hook(reference: torch.Tensor, factor: int, generator=None, ab_range: tuple[float, float] = (0.0, 1.0),
              box: tuple[float, float] | None = None):
    """A step hook (x_s (N, C, H, W), ab_s) -> x_s applying ILVR's refinement (seed 002 Algorithm 3, line 6)
    when ab_s lies in ab_range = (lo, hi) (the steps where it applies, as alpha_bar values; 1.0 = x_0).

    reference: (C, H, W) or (1, C, H, W) in model units. box: the data range (images: (-1, 1)); if given, the
    last step (ab_s = 1) projects onto {x in the box, phi_N(x) = phi_N(y)} (`box_lowpass_projection`) instead of
    the plain replacement, whose result may leave the box and lose phi_N(x_0) = phi_N(y) when clamped."""
    lo, hi = float(ab_range[0]), float(ab_range[1])

    def hook(x, ab_s):
        if not lo <= float(ab_s) <= hi:
            return x
        y_s = _noised_reference(reference, ab_s, generator, x)
        if box is not None and float(ab_s) >= 1.0:
            return box_lowpass_projection(x, y_s, factor, *box)
        return x - lowpass(x, factor) + lowpass(y_s, factor)
    return hook


def inpaint_hook(reference: torch.Tensor, mask: torch.Tensor, generator=None):
    """A step hook (x_s, ab_s) -> m y_s + (1 - m) x_s: known pixels (mask 1) from the forward process of the
    reference. reference: (C, H, W) model units; mask: broadcastable to it, 1 = known, 0 = to fill."""
    m = mask.to(reference.dtype)

    def hook(x, ab_s):
        y_s = _noised_reference(reference, ab_s, generator, x)
        mm = m.to(x.device, x.dtype)
        return mm * y_s + (1 - mm) * x
    return hook


def ab_range_of_steps(schedule, t_hi: int, t_lo: int) -> tuple[float, float]:
    """Steps t_lo..t_hi of the schedule (t = 0 is x_0) as an alpha_bar interval (lo, hi)."""
    ab = schedule.alpha_bars

    def at(t):
        return 1.0 if t <= 0 else float(ab[min(int(t), schedule.T) - 1])
    return at(t_hi), at(t_lo)


# ------------------------------------------------------------------------------ the reverse loop
def reverse(den: Denoiser, x: torch.Tensor, grid: torch.Tensor, generator=None, sampler: str = "ancestral",
            variance=None, eta: float = 0.0, mean_shift: Callable | None = None,
            after_step: Callable | None = None, resample: int = 1, progress: Callable | None = None,
            trajectory: list | None = None) -> torch.Tensor:
    """Ancestral (seed 001 Algorithm 2) or DDIM steps on `grid` (increasing alpha_bars ending with 1), with
    per-step conditioning. x: (N, ...) at grid[0].

    mean_shift: (x_t, ab_t) -> d; ancestral steps use mean mu + Sigma d (classifier guidance, mean form).
    after_step: (x_s, ab_s) -> x_s, applied after every step (ILVR, inpainting).
    resample: rounds per step (RePaint): after a round, x_t ~ q(x_t | x_s) is drawn and the step redone;
    the last step (to x_0) is never repeated. variance: as `samplers.ancestral` (None: "analytic", from the
    batch's eps, noise on the last step too; "small" for learned-variance models, whose own variance this loop
    does not use). With no options this is `samplers.ancestral` / `samplers.ddim`."""
    if sampler not in HOOK_SAMPLERS:
        raise ValueError(f"per-step conditioning runs on {', '.join(HOOK_SAMPLERS)}, not {sampler!r}")
    if int(resample) < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if sampler == "ancestral":
        variance = S.resolve_variance(den, x, variance)
    analytic = sampler == "ancestral" and variance == "analytic"
    var_all = S.ancestral_variances(grid, variance) if sampler == "ancestral" and not analytic else None
    n = x.shape[0]
    for i in range(len(grid) - 1):
        last = i == len(grid) - 2
        ab_t, ab_s = grid[i], grid[i + 1]
        rounds = 1 if last else int(resample)
        for r in range(rounds):
            x0, eps = den.predict(x, ab_t.reshape(1).expand(n))
            if progress:
                progress()
            if sampler == "ancestral":
                x_new, _ = G.posterior_mean_var(x0, x, ab_t.expand(n), ab_s.expand(n))
                var = S.analytic_step_variance(eps, ab_t, ab_s).to(x.dtype) if analytic else float(var_all[i])
                if mean_shift is not None:
                    x_new = x_new + var * mean_shift(x, ab_t.reshape(1).expand(n))
                if analytic or not last:  # (analytic: the last step draws from N(x0_hat, Var(x0 | x_1)) too)
                    x_new = x_new + var ** 0.5 * S._noise_like(x, generator)
            else:
                var = eta ** 2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
                x_new = float(ab_s.sqrt()) * x0 + float((1 - ab_s - var).clamp(min=0).sqrt()) * eps
                if eta > 0 and not last:
                    x_new = x_new + float(var.sqrt()) * S._noise_like(x, generator)
            if after_step is not None:
                x_new = after_step(x_new, ab_s)
            if r < rounds - 1:  # back to level t: q(x_t | x_s) = N(sqrt(ab_t / ab_s) x_s, (1 - ab_t / ab_s) I)
                a = float(ab_t / ab_s)
                x = math.sqrt(a) * x_new + math.sqrt(1 - a) * S._noise_like(x_new, generator)
            else:
                x = x_new
        S._record(trajectory, x)
    return x


def guided_sample(den: Denoiser, noise: torch.Tensor, sampler: str = "ancestral", nfe: int | None = None,
                  generator=None, labels: torch.Tensor | None = None, guidance: float = 0.0,
                  classifier: Callable | None = None, classifier_scale: float = 0.0,
                  after_step: Callable | None = None, resample: int = 1, **options) -> torch.Tensor:
    """x_0 (N, ...) from noise (N, ...) with any mix of conditioning.

    labels (N,): classes (conditional den: its labels; classifier: the y of p(y | x_t)).
    guidance: classifier-free scale w (needs a conditional den). classifier/classifier_scale: classifier
    guidance (mean form on ancestral, eps form on every other sampler). after_step / resample: a step hook
    (`ilvr_hook`, `inpaint_hook`), on ancestral or ddim. options: the sampler's (variance, eta, progress, ...).
    Without a hook, resampling or ancestral classifier guidance this is `samplers.sample` on the wrapped denoiser;
    otherwise `reverse` on the uniform grid of nfe steps (the grid `samplers.sample` uses for ancestral / ddim)."""
    if labels is not None and hasattr(den, "labels"):
        den.labels = labels
    model = classifier_free(den, labels, guidance) if guidance else den
    shift = None
    if classifier is not None:
        if sampler == "ancestral":
            gamma = float(classifier_scale)

            def shift(x, ab):
                return gamma * log_prob_grad(classifier, x, ab, labels.to(x.device))
        else:
            model = classifier_guided(model, classifier, labels, classifier_scale)
    if after_step is None and shift is None and resample == 1:
        return S.sample(model, noise, sampler, nfe=nfe, generator=generator, **options)
    if sampler not in HOOK_SAMPLERS:
        raise ValueError(f"this conditioning runs on {' or '.join(HOOK_SAMPLERS)}, not {sampler!r}")
    nfe = den.schedule.T if nfe is None else int(nfe)
    grid = torch.cat([S.make_grid(den.schedule, nfe, "uniform"), torch.ones(1, dtype=torch.float64)])
    x = noise * G.expand(torch.ones(1, dtype=torch.float64), noise)
    with torch.inference_mode():
        return reverse(model, x, grid, generator, sampler, mean_shift=shift, after_step=after_step,
                       resample=resample, **options)
