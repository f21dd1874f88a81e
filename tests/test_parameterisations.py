"""The posterior-mean (mu) and score parameterisations of the one denoiser view, against Bayes' rule on a grid."""
import numpy as np
import torch
from scipy import stats

from difflab import gaussian as G
from difflab import schedules
from difflab.denoiser import Denoiser
from difflab.mixtures import GaussianMixture

torch.set_num_threads(1)


def test_posterior_mean_is_e_of_x_s_given_x_t_by_bayes_on_a_grid():
    gm = GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [[0.3], [0.5]])
    sched = schedules.cosine(T=50)
    ab_t, ab_s = float(sched.alpha_bars[30]), float(sched.alpha_bars[25])
    x_t = torch.tensor([[-1.2], [0.1], [0.9], [2.0]], dtype=torch.float64)
    got = gm.denoiser(sched).posterior_mean(x_t, ab_t, ab_s)[:, 0].numpy()
    grid = np.linspace(-6, 6, 24001)
    w, m, s = gm.weights.numpy(), gm.means[:, 0].numpy(), gm.stds[:, 0].numpy()
    q_s = sum(wk * stats.norm.pdf(grid, np.sqrt(ab_s) * mk, np.sqrt(ab_s * sk ** 2 + 1 - ab_s))
              for wk, mk, sk in zip(w, m, s))
    a = ab_t / ab_s
    for xi, gi in zip(x_t[:, 0].numpy(), got):
        post = q_s * stats.norm.pdf(xi, np.sqrt(a) * grid, np.sqrt(1 - a))
        assert abs((grid * post).sum() / post.sum() - gi) < 1e-6


def test_score_model_converts_to_every_other_quantity():
    gm = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[0.4, 0.4], [0.3, 0.6]])
    sched = schedules.linear(T=100)
    ab = sched.alpha_bars[60].expand(5)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    from_score = Denoiser.from_score(lambda x, a: gm.score(x, a), sched)
    exact = gm.denoiser(sched)
    torch.testing.assert_close(from_score.eps(x, ab), exact.eps(x, ab))
    torch.testing.assert_close(from_score.score(x, ab), gm.score(x, ab))
    x0 = from_score.x0(x, ab)      # Tweedie: x0 = (x + (1 - ab) score) / sqrt(ab)
    torch.testing.assert_close(x0, (x + (1 - ab[:, None]) * gm.score(x, ab)) / ab[:, None].sqrt())
    torch.testing.assert_close(from_score.v(x, ab), G.v_from_eps_x0(exact.eps(x, ab), x0, ab))
