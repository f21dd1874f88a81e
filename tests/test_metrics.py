"""difflab.metrics against oracles that share none of its code: closed forms of Gaussians (checked by
scipy's sqrtm and by Monte Carlo through the optimal map), exact optimal transport by linear
programming, constructions with known overlap, scipy's entropy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg, optimize, stats

from difflab import metrics as M


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.2 * np.eye(d)


# ------------------------------------------------------------------------------------------ Frechet


def test_frechet_diagonal_closed_form():
    """Commuting (diagonal) covariances: FD = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)


def test_frechet_general_against_scipy_sqrtm():
    rng = np.random.default_rng(1)
    for d in (2, 5, 16):
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
        assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8, abs=1e-10)
    s = _random_spd(rng, 4)
    assert M.frechet_distance(np.zeros(4), s, np.zeros(4), s) == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("n, d", [(40, 64), (300, 12), (2, 5)])
def test_frechet_to_reference_is_frechet_distance(n, d):
    """The fast form against one reference (Gram-matrix route when N - 1 < D, D x D otherwise) equals
    frechet_distance on the fitted Gaussians, and is 0 for the reference itself. (When N - 1 < D the sample
    covariance is singular and frechet_distance takes square roots of round-off-sized eigenvalues, about
    1e-8 relative here, hence rel=1e-7; with N > D they agree to 1e-12.)"""
    rng = np.random.default_rng(n + d)
    ref = rng.standard_normal((3 * d, d)) @ rng.standard_normal((d, d))
    fd = M.frechet_to_reference(*M.gaussian_stats(ref))
    x = 0.5 + rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    want = M.frechet_distance(*M.gaussian_stats(x), *M.gaussian_stats(ref))
    assert fd(x) == pytest.approx(want, rel=1e-7 if n - 1 < d else 1e-12)
    assert fd(ref) == pytest.approx(0, abs=1e-8 * np.trace(np.cov(ref, rowvar=False)))


def test_frechet_is_the_transport_cost_of_the_optimal_map():
    """Monte Carlo: T(x) = mu2 + A (x - mu1), A = S1^-1/2 (S1^1/2 S2 S1^1/2)^1/2 S1^-1/2 pushes N(mu1, S1)
    onto N(mu2, S2) and E|x - T(x)|^2 equals the Frechet distance (W2^2 between the Gaussians)."""
    rng = np.random.default_rng(2)
    d, n = 3, 200_000
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r = linalg.sqrtm(s1).real
    ri = np.linalg.inv(r)
    a = ri @ linalg.sqrtm(r @ s2 @ r).real @ ri
    x = rng.multivariate_normal(mu1, s1, n)
    tx = mu2 + (x - mu1) @ a.T
    np.testing.assert_allclose(np.cov(tx, rowvar=False), s2, atol=0.03 * np.abs(s2).max())
    cost = ((x - tx) ** 2).sum(1)
    fd = M.frechet_distance(mu1, s1, mu2, s2)
    assert abs(cost.mean() - fd) < 5 * cost.std() / math.sqrt(n)
    # and the features version converges to it
    y = rng.multivariate_normal(mu2, s2, n)
    assert M.frechet_from_features(x, y) == pytest.approx(fd, abs=0.02 * fd + 0.01)


# -------------------------------------------------------------------------------- sliced W2, 1-D W2


def _w2_lp(a, b) -> float:
    """Exact W2 between two small empirical measures by linear programming over couplings."""
    n, m = len(a), len(b)
    cost = ((a[:, None] - b[None, :]) ** 2).ravel()
    rows = [np.kron(np.eye(n)[i], np.ones(m)) for i in range(n)]
    cols = [np.kron(np.ones(n), np.eye(m)[j]) for j in range(m)]
    res = optimize.linprog(cost, A_eq=np.array(rows + cols), b_eq=np.r_[np.full(n, 1 / n), np.full(m, 1 / m)],
                           bounds=(0, None), method="highs")
    assert res.success
    return math.sqrt(res.fun)


@pytest.mark.parametrize("n,m", [(7, 7), (7, 5), (3, 11), (1, 4)])
def test_w2_1d_matches_linear_programming(n, m):
    rng = np.random.default_rng(n * 100 + m)
    a, b = rng.standard_normal(n) * 2, rng.standard_normal(m) + 1
    assert M.w2_1d(a, b) == pytest.approx(_w2_lp(a, b), rel=1e-7, abs=1e-9)


def test_sliced_w2_in_one_dimension_is_exact_w2():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(300), rng.exponential(size=200)
    assert M.sliced_w2(a[:, None], b[:, None], n_directions=8) == pytest.approx(M.w2_1d(a, b), rel=1e-12)
    # equal sizes: the sorted matching
    c = rng.standard_normal(300) * 3
    assert M.w2_1d(a, c) == pytest.approx(math.sqrt(np.mean((np.sort(a) - np.sort(c)) ** 2)), rel=1e-12)


def test_sliced_w2_isotropic_gaussians_closed_form():
    """N(m1, s1^2 I) vs N(m2, s2^2 I) in R^D: along a unit direction theta the projections are N(theta.m, s^2),
    whose W2^2 is (theta.(m1 - m2))^2 + (s1 - s2)^2; SW2^2 is its mean over the directions."""
    rng = np.random.default_rng(4)
    d, n = 3, 20_000
    m1, m2, s1, s2 = np.zeros(d), np.array([1.0, -0.5, 0.5]), 1.0, 0.5
    x = m1 + s1 * rng.standard_normal((n, d))
    y = m2 + s2 * rng.standard_normal((n, d))
    dirs = M.random_directions(40, d, seed=5)
    want = math.sqrt(np.mean((dirs @ (m1 - m2)) ** 2 + (s1 - s2) ** 2))
    assert M.sliced_w2(x, y, dirs) == pytest.approx(want, rel=0.02)


def test_random_directions_are_uniform_on_the_sphere():
    """E[theta theta^T] = I / D for theta uniform on the sphere; all unit length."""
    v = M.random_directions(20_000, 4, seed=1)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(v.T @ v / len(v), np.eye(4) / 4, atol=0.01)


# ------------------------------------------------------------------------------- precision / recall


def test_precision_recall_lattice_exact():
    """Real: the 10 x 10 integer lattice (k = 1: every ball has radius 1). Fake: 30 points at (i + .3, j + .4),
    i < 5, j < 6 (inside), and 20 points on a far line spaced 10 apart (outside, radius 10).
    precision = 30 / 50. A real (a, b) lies within 1 of some inside fake iff a in 0..5 and b in 0..6
    (distances .5, .81, .67, .92 to the four nearest fakes; > 1 otherwise): recall = 42 / 100."""
    real = np.array([(a, b) for a in range(10) for b in range(10)], dtype=float)
    inside = np.array([(i + 0.3, j + 0.4) for i in range(5) for j in range(6)])
    outside = np.array([(100.0 + 10 * k, 100.0) for k in range(20)])
    p, r = M.precision_recall(real, np.concatenate([inside, outside]), k=1)
    assert p == pytest.approx(30 / 50, abs=1e-12)
    assert r == pytest.approx(42 / 100, abs=1e-12)


def test_precision_recall_half_overlapping_squares():
    """Uniform on [0,1]^2 vs on [.5,1.5]x[0,1]: half of each lies in the other's support; the k-NN balls
    (radius ~ sqrt(k / (pi n)) ~ 0.02) blur the boundary by a few hundredths."""
    rng = np.random.default_rng(6)
    n = 1500
    real = rng.uniform(0, 1, (n, 2))
    fake = rng.uniform(0, 1, (n, 2)) + [0.5, 0.0]
    p, r = M.precision_recall(real, fake, k=3)
    assert abs(p - 0.5) < 0.05 and abs(r - 0.5) < 0.05
    p, r = M.precision_recall(real, real.copy(), k=3)
    assert p == 1.0 and r == 1.0
    p, r = M.precision_recall(real, real + 5.0, k=3)
    assert p == 0.0 and r == 0.0


# -------------------------------------------------------------------------------- IS, histogram, MMD


def test_inception_score_against_entropies():
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.full(10, 0.3), 500)
    want = math.exp(stats.entropy(p.mean(0)) - np.mean([stats.entropy(q) for q in p]))
    assert M.inception_score(p) == pytest.approx(want, rel=1e-9)
    assert M.inception_score(np.eye(10)[np.arange(100) % 10]) == pytest.approx(10, rel=1e-6)
    assert M.inception_score(np.tile(p[:1], (50, 1))) == pytest.approx(1, rel=1e-9)


def test_class_histogram():
    h = M.class_histogram([0, 0, 1, 3], 4)
    np.testing.assert_allclose(h, [0.5, 0.25, 0, 0.25])


def test_mmd_gaussians_closed_form():
    """RBF kernel of bandwidth h, P = N(m1, s^2 I), Q = N(m2, s^2 I) in R^D:
    E k(X, X') = c = (h^2 / (h^2 + 2 s^2))^(D/2), E k(X, Y) = c exp(-|dm|^2 / (2 (h^2 + 2 s^2))),
    MMD^2 = 2 c (1 - exp(...)); the U-statistic is unbiased for it."""
    rng = np.random.default_rng(8)
    d, n, s, h = 2, 600, 1.0, 1.5
    dm = np.array([1.0, 0.5])
    c = (h * h / (h * h + 2 * s * s)) ** (d / 2)
    want = 2 * c * (1 - math.exp(-(dm @ dm) / (2 * (h * h + 2 * s * s))))
    vals = [M.mmd2(rng.standard_normal((n, d)) * s, dm + rng.standard_normal((n, d)) * s, h) for _ in range(8)]
    se = np.std(vals, ddof=1) / math.sqrt(len(vals))
    assert abs(np.mean(vals) - want) < 4 * se + 1e-3, (np.mean(vals), want, se)
    same = [M.mmd2(rng.standard_normal((n, d)), rng.standard_normal((n, d)), h) for _ in range(8)]
    assert abs(np.mean(same)) < 4 * np.std(same, ddof=1) / math.sqrt(8) + 1e-3


def test_bootstrap_se_of_a_mean():
    rng = np.random.default_rng(9)
    x = rng.standard_normal(400) * 2
    se = M.bootstrap_se(lambda idx: x[idx].mean(), len(x), reps=400, seed=1)
    assert se == pytest.approx(x.std() / math.sqrt(len(x)), rel=0.15)


def test_halfsample_se_of_a_mean():
    rng = np.random.default_rng(10)
    x = rng.exponential(size=300)
    se = M.halfsample_se(lambda idx: x[idx].mean(), len(x), reps=400, seed=2)
    assert se == pytest.approx(x.std() / math.sqrt(len(x)), rel=0.12)
