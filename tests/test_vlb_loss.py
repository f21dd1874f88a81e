"""L_vlb, the hybrid loss, importance sampling of t, and learned variances in training and sampling."""
import math

import pytest
import torch

from difflab import schedules
from difflab.config import load_config
from difflab.denoiser import Denoiser
from difflab.elbo import elbo
from difflab.mixtures import GaussianMixture
from difflab.runs import load_run
from difflab.samplers import sample
from difflab.train import train
from difflab.vlb_loss import GaussianVLBLoss, LossHistorySampler

torch.set_num_threads(1)


def test_importance_weights_keep_the_estimate_unbiased():
    T = 50
    s = LossHistorySampler(T, history=4)
    f = torch.rand(T, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) ** 3 + 0.01
    torch.testing.assert_close(s.probs(), torch.full((T,), 1 / T, dtype=torch.float64))   # before warm-up
    for _ in range(4):
        s.update(torch.arange(1, T + 1), f * (1 + 0.1 * torch.randn(T, dtype=torch.float64)))
    p = s.probs()
    assert not torch.allclose(p, torch.full_like(p, 1 / T))                                 # now non-uniform
    assert float(p.sum()) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    t, w = s.sample(200_000, g)
    assert int(t.min()) >= 1 and int(t.max()) <= T
    torch.testing.assert_close(w, 1 / (T * p[t - 1]))
    est = w * f[t - 1]
    assert abs(float(est.mean()) - float(f.mean())) < 4 * float(est.std()) / math.sqrt(len(est))
    uniform = T * f[torch.randint(0, T, (200_000,), generator=g)] / T
    assert float(est.var()) < float(uniform.var())        # and it lowers the variance


def test_loss_history_keeps_the_last_entries():
    s = LossHistorySampler(3, history=4)
    for k in range(6):
        s.update(torch.tensor([2]), torch.tensor([float(k)]))
    assert s.losses[1].tolist() == [2.0, 3.0, 4.0, 5.0] and int(s.counts[1]) == 4 and int(s.counts[0]) == 0


def _exact_net(gm, learned_v=None):
    """net(x, c) of the exact eps of a mixture; c = 25 (20 - log SNR) is inverted back to alpha_bar."""
    def net(x, c):
        ab = torch.sigmoid(20 - c.double() / 25)
        eps = gm.eps(x.double(), ab).to(x.dtype)
        return eps if learned_v is None else torch.cat([eps, torch.full_like(eps, learned_v)], 1)
    return net


def test_vlb_terms_agree_with_the_elbo():
    """T * E_t[L_t] (bits/dim) of the loss, turned into nats, equals the ELBO's sum of terms for the same draws."""
    gm = GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [[0.3, 0.5], [0.6, 0.2]])
    sched = schedules.cosine(T=40)
    x0 = gm.sample(64, generator=torch.Generator().manual_seed(0))
    terms = elbo(gm.denoiser(sched), x0, generator=torch.Generator().manual_seed(5))
    loss = GaussianVLBLoss(sched, "eps", "vlb", "fixed", "small", None)
    g = torch.Generator().manual_seed(5)
    got = []
    for t in range(sched.T, 0, -1):
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        ab = sched.alpha_bars[t - 1]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        tt = torch.full((len(x0),), t)
        got.append(loss.vlb_terms(x0, x_t, tt, gm.eps(x_t, ab.expand(len(x0))), None) * math.log(2) * 2)
    got = torch.stack(got)
    torch.testing.assert_close(got[:-1], terms.kl)
    torch.testing.assert_close(got[-1], terms.decoder)


def test_hybrid_loss_trains_the_variance_only_through_vlb():
    gm = GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    sched = schedules.cosine(T=20)
    x0 = gm.sample(32, generator=torch.Generator().manual_seed(0)).float()
    w = torch.zeros(4, requires_grad=True)   # bias of the 4 output channels (2 mean, 2 variance)

    def net(x, c):
        return _exact_net(gm, 0.0)(x, c) + w
    hyb = GaussianVLBLoss(sched, "eps", "hybrid", "learned-range", levels=None)
    simple = GaussianVLBLoss(sched, "eps", "simple", "learned-range", levels=None)
    (gh,) = torch.autograd.grad(hyb(net, x0, None, torch.Generator().manual_seed(1)), w)
    (gs,) = torch.autograd.grad(simple(net, x0, None, torch.Generator().manual_seed(1)), w)
    torch.testing.assert_close(gh[:2], gs[:2])       # the mean's gradient is L_simple's alone
    assert gs[2:].abs().max() == 0 and gh[2:].abs().max() > 0
    vlb = GaussianVLBLoss(sched, "eps", "vlb", "learned-range", levels=None)
    (gv,) = torch.autograd.grad(vlb(net, x0, None, torch.Generator().manual_seed(1)), w)
    assert gv[:2].abs().max() > 0                     # undetached: L_vlb trains the mean too


@pytest.mark.parametrize("v,fixed", [(-1.0, "small"), (1.0, "large")])
def test_ancestral_uses_the_learned_variance(v, fixed):
    """learned-range v = (out + 1) / 2: out = -1 is beta-tilde, out = +1 is beta: identical samples."""
    gm = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.3], [0.3]])
    sched = schedules.linear(T=30, beta_start=1e-3, beta_end=0.2)
    learned = Denoiser.from_eps(lambda x, ab: torch.cat([gm.eps(x, ab).to(x.dtype), torch.full_like(x, v)], 1),
                                sched)
    learned.variance_type = "learned-range"
    noise = torch.randn(200, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample(learned, noise, "ancestral", nfe=30, generator=torch.Generator().manual_seed(1))
    b = sample(gm.denoiser(sched), noise, "ancestral", nfe=30, generator=torch.Generator().manual_seed(1),
               variance=fixed)
    torch.testing.assert_close(a, b)


def test_training_hybrid_learned_variance_with_importance_sampling(tmp_path):
    cfg = load_config("toy", overrides=dict(data="toy:gmm", steps=12, batch_size=64, T=20, loss="hybrid",
                                            variance_type="learned-range", importance_sampling=True,
                                            checkpoint_every=100, net_config={"hidden": 32, "depth": 1}))
    train(cfg, tmp_path / "run", progress=False)
    cfg2, net, den = load_run(tmp_path / "run")
    assert cfg2.loss == "hybrid" and den.variance_type == "learned-range" and net.out_dim == 4
    x = sample(den, torch.randn(50, 2, generator=torch.Generator().manual_seed(0)), "ancestral", nfe=20,
               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    from difflab import checkpoint as ckpt
    tensors, _ = ckpt.load(tmp_path / "run")
    assert bool((tensors["objective.sampler.counts"] == 10).all())    # 768 losses filled every t's history


def test_fixed_hybrid_is_refused():
    from difflab.errors import UserError
    with pytest.raises(UserError, match="variance_type"):
        load_config("toy", overrides=dict(loss="hybrid"))
