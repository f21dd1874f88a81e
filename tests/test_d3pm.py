"""D3PM (difflab.d3pm) against oracles that share none of its code: transition matrices written out in numpy,
chains propagated and sampled step by step, Bayes' rule by enumeration, the exact ELBO and the exact model
likelihood by enumerating every path of a tiny chain."""
import itertools
import math

import numpy as np
import pytest
import torch

from difflab import d3pm
from difflab.d3pm import CategoricalDiffusion

TRANSITIONS = ("uniform", "absorbing", "gaussian")


def np_matrix(kind, beta, K):
    """Q_t written out entry by entry from Austin et al. (2021), App. A."""
    S = K + 1 if kind == "absorbing" else K
    Q = np.zeros((S, S))
    for i in range(S):
        for j in range(S):
            if kind == "uniform":
                Q[i, j] = beta / K + (1 - beta) * (i == j)
            elif kind == "absorbing":
                Q[i, j] = (1 - beta) * (i == j) + beta * (j == K)
            else:
                if i != j:
                    z = sum(math.exp(-4 * n * n / ((K - 1) ** 2 * beta)) for n in range(-(K - 1), K))
                    Q[i, j] = math.exp(-4 * (i - j) ** 2 / ((K - 1) ** 2 * beta)) / z
        if kind == "gaussian":
            Q[i, i] = 1 - Q[i].sum()
    return Q


def np_chain(kind, K, T):
    betas = d3pm.betas_for(kind, T).numpy()
    return [np_matrix(kind, b, K) for b in betas]


@pytest.mark.parametrize("kind", TRANSITIONS)
@pytest.mark.parametrize("K", [3, 17])
def test_rows_sum_to_one_and_match_the_written_out_matrices(kind, K):
    T = 50
    d = CategoricalDiffusion(K, T, kind)
    ref = np_chain(kind, K, T)
    for t in range(1, T + 1):
        np.testing.assert_allclose(d.Q[t].numpy(), ref[t - 1], atol=1e-13)
    assert (d.Q >= 0).all() and (d.Qbar >= -1e-15).all()
    np.testing.assert_allclose(d.Q.sum(-1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(d.Qbar.sum(-1).numpy(), 1.0, atol=1e-12)
    for beta in (1e-4, 0.3, 1.0):
        np.testing.assert_allclose(d3pm.transition_matrix(kind, beta, K).sum(-1).numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize("kind", TRANSITIONS)
def test_cumulative_products_equal_repeated_single_steps(kind):
    K, T = 5, 30
    d = CategoricalDiffusion(K, T, kind)
    ref = np_chain(kind, K, T)
    for x0 in range(K):
        v = np.eye(d.S)[x0]
        for t in range(1, T + 1):
            v = v @ ref[t - 1]  # one step of the chain
            got = d.q_probs(torch.tensor([x0]), torch.tensor([t]))[0].numpy()
            np.testing.assert_allclose(got, v, atol=1e-12)


def test_closed_forms_of_the_uniform_and_absorbing_marginals():
    K, T = 6, 40
    for kind in ("uniform", "absorbing"):
        d = CategoricalDiffusion(K, T, kind)
        ab = np.cumprod(1 - d.betas.numpy())
        for t in (1, 7, 20, T):
            p = d.q_probs(torch.tensor([2]), torch.tensor([t]))[0].numpy()
            if kind == "uniform":
                want = np.full(K, (1 - ab[t - 1]) / K)
                want[2] += ab[t - 1]
            else:  # unmasked with probability (T - t) / T for beta_t = 1 / (T - t + 1)
                want = np.zeros(K + 1)
                want[2], want[K] = (T - t) / T, t / T
            np.testing.assert_allclose(p, want, atol=1e-12)


@pytest.mark.parametrize("kind", TRANSITIONS)
def test_q_sample_matches_a_chain_simulated_step_by_step(kind):
    K, T, n, t = 4, 12, 20000, 7
    d = CategoricalDiffusion(K, T, kind)
    ref = np_chain(kind, K, T)
    rng = np.random.default_rng(0)
    x = np.full(n, 1)
    for s in range(t):  # simulate x_1, ..., x_t by inverse-CDF draws from the numpy rows
        cdf = np.cumsum(ref[s][x], 1)
        x = (cdf < rng.random((n, 1))).sum(1)
    emp_chain = np.bincount(x, minlength=d.S) / n
    g = torch.Generator().manual_seed(0)
    xs = d.q_sample(torch.full((n,), 1), torch.full((n,), t), g).numpy()
    emp_direct = np.bincount(xs, minlength=d.S) / n
    p = d.q_probs(torch.tensor([1]), torch.tensor([t]))[0].numpy()
    tol = 4.5 * np.sqrt(p * (1 - p) / n) + 1e-12
    assert np.all(np.abs(emp_chain - p) <= tol), (emp_chain, p)
    assert np.all(np.abs(emp_direct - p) <= tol), (emp_direct, p)


@pytest.mark.parametrize("kind", TRANSITIONS)
def test_posterior_equals_bayes_rule_by_enumeration(kind):
    K, T = 4, 10
    d = CategoricalDiffusion(K, T, kind)
    ref = np_chain(kind, K, T)
    rng = np.random.default_rng(1)
    for t in (1, 2, 5, T):
        for x0 in range(K):
            marg = np.eye(d.S)[x0]
            for s in range(t - 1):
                marg = marg @ ref[s]                       # q(x_{t-1} | x_0)
            joint = marg[:, None] * ref[t - 1]             # q(x_{t-1} = j, x_t = k | x_0)
            for k in range(d.S):
                if joint[:, k].sum() < 1e-14:
                    continue
                bayes = joint[:, k] / joint[:, k].sum()
                got = d.q_posterior(torch.tensor([k]), torch.tensor([x0]), torch.tensor([t]))[0].numpy()
                np.testing.assert_allclose(got, bayes, atol=1e-10)
        # the x0-parameterised reverse step: sum_x0 q(x_{t-1}, x_t | x_0) p~(x_0), normalised (eq. 4)
        pt = rng.dirichlet(np.ones(K))
        for k in range(d.S):
            mix = np.zeros(d.S)
            for x0 in range(K):
                m = np.eye(d.S)[x0]
                for s in range(t - 1):
                    m = m @ ref[s]
                mix += pt[x0] * m * ref[t - 1][:, k]
            if mix.sum() < 1e-14:
                continue
            got = d.p_reverse(torch.tensor([[k]]), torch.from_numpy(pt)[None, None], torch.tensor([t]))[0, 0].numpy()
            np.testing.assert_allclose(got, mix / mix.sum(), atol=1e-10)


def _tiny_model(kind, K, T, table_seed):
    """A fixed x0-predictor for one pixel: a random softmax table indexed by (t, x_t)."""
    S = K + 1 if kind == "absorbing" else K
    logits = torch.randn(T + 1, S, K, generator=torch.Generator().manual_seed(table_seed), dtype=torch.float64) * 2
    table = torch.softmax(logits, -1)
    return table, (lambda x_t, t: table[t[:, None], x_t])


def _np_reverse(ref, table, t, K, S):
    """P[k, j] = p(x_{t-1} = j | x_t = k) from the written-out chain."""
    qbar = np.eye(S)
    for s in range(t - 1):
        qbar = qbar @ ref[s]
    P = np.zeros((S, S))
    for k in range(S):
        v = ref[t - 1][:, k] * (table[t, k].numpy() @ qbar[:K])
        P[k] = v / v.sum() if v.sum() > 0 else 0
    return P


@pytest.mark.parametrize("kind", TRANSITIONS)
def test_bound_is_above_the_true_nll_of_a_tiny_model(kind):
    """Exact ELBO by enumerating all paths <= exact log p_theta(x0) (the model's own marginal); the library's
    Monte Carlo bound agrees with the enumerated one; on data with known entropy the bound is >= H."""
    K, T = 3, 4
    d = CategoricalDiffusion(K, T, kind)
    S = d.S
    ref = np_chain(kind, K, T)
    prior = np.eye(S)[K] if kind == "absorbing" else np.full(S, 1 / K)
    p_data = np.array([0.6, 0.3, 0.1])
    # p~ = p_data (for one pixel the exact reverse chain, see the sampler test) and an arbitrary p~
    exact = torch.from_numpy(p_data).expand(T + 1, S, K)
    random_table, random_fn = _tiny_model(kind, K, T, 3)
    for table, fn in ((exact, lambda x_t, t: exact[t[:, None], x_t]), (random_table, random_fn)):
        rev = {t: _np_reverse(ref, table, t, K, S) for t in range(1, T + 1)}
        # the model's marginal p_theta(x_0), pushing p(x_T) down the reverse chain
        m = prior.copy()
        for t in range(T, 0, -1):
            m = m @ rev[t]
        exact_nelbo = np.zeros(K)
        for x0 in range(K):
            total = 0.0
            for path in itertools.product(range(S), repeat=T):   # x_1, ..., x_T
                xs = (x0,) + path
                q = np.prod([ref[t - 1][xs[t - 1], xs[t]] for t in range(1, T + 1)])
                if q == 0:
                    continue
                logp = math.log(prior[xs[T]]) + sum(math.log(rev[t][xs[t], xs[t - 1]]) for t in range(1, T + 1))
                total += q * (logp - math.log(q))
            exact_nelbo[x0] = -total
            assert exact_nelbo[x0] >= -math.log(m[x0]) - 1e-12           # -ELBO >= -log p_theta(x0)
        n = 6000
        g = torch.Generator().manual_seed(5)
        for x0 in range(K):
            est = d3pm.nelbo(d, torch.full((n, 1), x0), fn, g).numpy()
            se = est.std() / math.sqrt(n)
            assert abs(est.mean() - exact_nelbo[x0]) <= 5 * se + 1e-9, (x0, est.mean(), exact_nelbo[x0], se)
        entropy = -(p_data * np.log(p_data)).sum()
        assert (p_data * exact_nelbo).sum() >= entropy - 1e-12              # E_data[-ELBO] >= H(p_data)
        assert (p_data * -np.log(m[:K])).sum() >= entropy - 1e-12               # cross-entropy >= entropy


@pytest.mark.parametrize("kind", TRANSITIONS)
def test_ancestral_sampler_with_the_exact_denoiser_recovers_the_data(kind):
    """One pixel: eq. 4 weights p~(x0 | x_t) by q(x_t | x0), so p~ = p_data(x0) gives
    p(x_{t-1} | x_t) ∝ sum_x0 p_data(x0) q(x_{t-1}, x_t | x0) = q(x_{t-1} | x_t), the exact reverse chain:
    its samples follow p_data (up to KL(q(x_T) || p(x_T)), ~0 here)."""
    K, T, n = 4, 20, 20000
    d = CategoricalDiffusion(K, T, kind)
    p_data = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    x = d3pm.ancestral(d, lambda x_t, t: p_data.expand(x_t.shape[0], 1, K), (n, 1), torch.Generator().manual_seed(2))
    emp = torch.bincount(x[:, 0], minlength=K).double() / n
    tol = 4.5 * torch.sqrt(p_data * (1 - p_data) / n)
    assert (x < K).all()
    assert torch.all((emp - p_data).abs() <= tol), (emp, p_data)


def test_digit_levels_are_recovered_exactly():
    from sklearn.datasets import load_digits

    from difflab import data
    ds = data.load("digits")
    levels = d3pm.levels_from_model_units(ds.x, 17)
    assert torch.equal(levels.reshape(len(ds), -1), torch.from_numpy(load_digits().data.astype(np.int64)))


def test_objective_and_network_shapes_and_gradient():
    torch.manual_seed(0)
    d = CategoricalDiffusion(17, 10, "absorbing")
    net = d3pm.D3PMNet(1, 17, 10, True, 8, base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                       attention_resolutions=[], dropout=0.0)
    x0 = torch.randint(0, 17, (6, 1, 8, 8)).float() / 16 * 2 - 1
    loss = d3pm.D3PMObjective(d, 0.01)(net, x0, None, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    out = net(torch.randint(0, 18, (2, 1, 8, 8)), torch.tensor([1, 10]))
    assert out.shape == (2, 1, 8, 8, 17)
