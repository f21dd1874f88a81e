"""Sample-quality formulas: Frechet distance, k-NN precision/recall, Inception Score, sliced
Wasserstein-2, MMD, and a bootstrap standard error. Pure functions of arrays, float64 throughout.

    FD(P, Q)   = |mu_P - mu_Q|^2 + tr(S_P + S_Q - 2 (S_P^1/2 S_Q S_P^1/2)^1/2)
                 (Frechet / W2^2 between Gaussians, Dowson & Landau 1982; FID of Heusel et al. 2017)
    precision  = 1/M sum_j 1[ exists i: |g_j - r_i| <= NN_k(r_i) ]      (Kynkaanniemi et al. 2019)
    recall     = 1/N sum_i 1[ exists j: |r_i - g_j| <= NN_k(g_j) ]
    IS         = exp( E_x KL( p(y|x) || p(y) ) ),  p(y) = E_x p(y|x)    (Salimans et al. 2016)
    SW2(P, Q)  = ( E_theta W2^2(theta#P, theta#Q) )^1/2,  theta uniform on the unit sphere
    W2^2 in 1-D= int_0^1 (F^-1(u) - G^-1(u))^2 du                        (quantile coupling)
    MMD^2      = E k(x,x') + E k(y,y') - 2 E k(x,y), unbiased U-statistic, k(x,y) = exp(-|x-y|^2 / (2 h^2))
    s.e.       = standard deviation over random halves (half-sampling) or bootstrap resamples
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["frechet_distance", "gaussian_stats", "frechet_from_features", "frechet_to_reference", "pairwise_distances",
           "knn_radii",
           "inside_balls",
           "precision_recall", "inception_score", "class_histogram", "w2_1d", "w2sq_sorted_columns",
           "random_directions", "sliced_w2", "rbf_kernel", "mmd2", "median_bandwidth", "bootstrap_se",
           "halfsample_se"]


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues set to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ------------------------------------------------------------------------------------------ Frechet


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) for means (D,) and covariances (D, D).

    The trace of the matrix square root is the sum of sqrt(eigenvalues) of the symmetric PSD matrix
    S1^1/2 S2 S1^1/2 (same spectrum as S1 S2), which stays real and stable where sqrtm(S1 S2) does not."""
    mu1, mu2, cov1, cov2 = _f64(mu1), _f64(mu2), np.atleast_2d(_f64(cov1)), np.atleast_2d(_f64(cov2))
    r = _psd_sqrt(cov1)
    m = r @ cov2 @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = mu1 - mu2
    return float(d @ d + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), unbiased covariance (D, D)) of features (N, D), N >= 2."""
    f = _f64(features)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_from_features(f1, f2) -> float:
    """FD between the Gaussians fitted to two feature sets (N1, D), (N2, D)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def frechet_to_reference(mu_ref, cov_ref) -> Callable[[np.ndarray], float]:
    """features (N, D) -> frechet_distance(*gaussian_stats(features), mu_ref, cov_ref), for many feature sets
    against one reference (e.g. 2048-d Inception features). The same formula, arranged for speed: R = S_ref^1/2
    once; with A the centred features, S = A^T A / (N - 1) and R S R = B^T B / (N - 1) for B = A R, so
    tr (R S R)^1/2 is the sum of the singular values of B / sqrt(N - 1): an N x D problem, not D x D."""
    mu_ref, cov_ref = _f64(mu_ref), np.atleast_2d(_f64(cov_ref))
    r = _psd_sqrt(cov_ref)
    tr_ref = float(np.trace(cov_ref))

    def fd(features) -> float:
        f = _f64(features)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
        mu = f.mean(0)
        a = f - mu
        if len(f) - 1 < f.shape[1]:
            tr_sqrt = np.linalg.svd(a @ r, compute_uv=False).sum() / np.sqrt(len(f) - 1)
        else:
            m = r @ (a.T @ a / (len(f) - 1)) @ r
            tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
        d = mu - mu_ref
        return float(d @ d + (a * a).sum() / (len(f) - 1) + tr_ref - 2 * tr_sqrt)
    return fd


# ------------------------------------------------------------------------------- precision / recall


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (N, M) between rows of a (N, D) and b (M, D)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def knn_radii(x, k: int = 3) -> np.ndarray:
    """Distance of each point of x (N, D) to its k-th nearest other point, (N,). Needs N > k."""
    x = _f64(x)
    if len(x) <= k:
        raise ValueError(f"need more than k = {k} points for k-NN radii, got {len(x)}")
    d = pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def inside_balls(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(N,) bool: point i lies in at least one ball (centre_j, radius_j)."""
    return (pairwise_distances(points, centres) <= radii[None, :] * (1 + 1e-12)).any(1)


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of fake (M, D) against real (N, D) with k-NN balls as manifolds (see top)."""
    real, fake = _f64(real), _f64(fake)
    precision = inside_balls(fake, real, knn_radii(real, k)).mean()
    recall = inside_balls(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


# ------------------------------------------------------------------------------ classifier figures


def inception_score(probs) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) for class probabilities (N, K); 1 <= IS <= K."""
    p = np.clip(_f64(probs), 1e-12, 1.0)
    p = p / p.sum(1, keepdims=True)
    marginal = p.mean(0)
    kl = (p * (np.log(p) - np.log(marginal)[None])).sum(1)
    return float(np.exp(kl.mean()))


def class_histogram(predicted, num_classes: int) -> np.ndarray:
    """Fraction of each class among predicted labels (N,) ints, (K,)."""
    y = np.asarray(predicted, dtype=np.int64)
    return np.bincount(y, minlength=num_classes)[:num_classes] / max(len(y), 1)


# --------------------------------------------------------------------------------------- Wasserstein


def w2sq_sorted_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact W2^2 between the empirical measures of each column of a (N, L) and b (M, L), both sorted
    along axis 0: the integral over u of (F^-1(u) - G^-1(u))^2, both quantile functions being step
    functions whose pieces end at i/N and j/M. Returns (L,)."""
    n, m = len(a), len(b)
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    du = np.diff(np.concatenate([[0.0], u]))
    mid = u - du / 2                                         # a point inside each constant piece
    qa = a[np.minimum((mid * n).astype(np.int64), n - 1)]
    qb = b[np.minimum((mid * m).astype(np.int64), m - 1)]
    return (((qa - qb) ** 2) * du[:, None]).sum(0)


def w2_1d(a, b) -> float:
    """Exact W2 between the empirical measures of a (N,) and b (M,) (uniform weights, any N, M)."""
    a, b = np.sort(_f64(a).ravel()), np.sort(_f64(b).ravel())
    return float(np.sqrt(w2sq_sorted_columns(a[:, None], b[:, None])[0]))


def random_directions(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n directions uniform on the unit sphere in R^dim, (n, dim)."""
    v = np.random.default_rng(seed).standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sliced_w2(x, y, directions=None, n_directions: int = 256, seed: int = 0) -> float:
    """SW2 between x (N, D) and y (M, D): sqrt of the mean over `directions` (L, D) (default: n_directions
    uniform ones from `seed`) of the exact 1-D W2^2 of the projections."""
    x, y = _f64(x).reshape(len(x), -1), _f64(y).reshape(len(y), -1)
    if directions is None:
        directions = random_directions(n_directions, x.shape[1], seed)
    px, py = np.sort(x @ directions.T, axis=0), np.sort(y @ directions.T, axis=0)
    return float(np.sqrt(w2sq_sorted_columns(px, py).mean()))


# ------------------------------------------------------------------------------------------------ MMD


def median_bandwidth(x, max_points: int = 1000) -> float:
    """Median pairwise distance of (the first max_points of) x (N, D): the usual RBF bandwidth h."""
    x = _f64(x).reshape(len(x), -1)[:max_points]
    d = pairwise_distances(x, x)[np.triu_indices(len(x), 1)]
    return float(np.median(d)) if len(d) else 1.0


def rbf_kernel(a, b, bandwidth: float) -> np.ndarray:
    """k(a_i, b_j) = exp(-|a_i - b_j|^2 / (2 h^2)), (N, M)."""
    return np.exp(-0.5 * pairwise_distances(_f64(a), _f64(b)) ** 2 / bandwidth ** 2)


def mmd2(x, y, bandwidth: float) -> float:
    """Unbiased MMD^2 (U-statistic) between x (N, D) and y (M, D), RBF kernel of bandwidth h (see top)."""
    x, y = _f64(x).reshape(len(x), -1), _f64(y).reshape(len(y), -1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("MMD needs at least 2 points on each side")
    kxx, kyy, kxy = rbf_kernel(x, x, bandwidth), rbf_kernel(y, y, bandwidth), rbf_kernel(x, y, bandwidth)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


# ----------------------------------------------------------------------------------------- bootstrap


def bootstrap_se(stat: Callable[[np.ndarray], float], n: int, reps: int = 100, seed: int = 0) -> float:
    """Standard deviation of stat(idx) over `reps` bootstrap index draws idx (n,) with replacement."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(reps)]
    return float(np.std(vals, ddof=1))


def halfsample_se(stat: Callable[[np.ndarray], float], n: int, reps: int = 50, seed: int = 0) -> float:
    """Half-sampling (delete-d jackknife with d = n/2) standard error: the standard deviation of stat(idx)
    over `reps` random halves idx (n // 2,) drawn without replacement. For a mean it is exactly sigma / sqrt(n)
    in expectation (finite-population correction 1/2 times variance sigma^2 / (n/2)); unlike the bootstrap it
    never duplicates points, which would shrink k-NN radii and covariance ranks."""
    rng = np.random.default_rng(seed)
    vals = [stat(np.sort(rng.choice(n, n // 2, replace=False))) for _ in range(reps)]
    return float(np.std(vals, ddof=1))
