"""Statistics of the zeroth-order gradient estimators (optim/zo/estimators.py).

On a quadratic f(x) = ½xᵀAx + bᵀx every random estimator is unbiased for ∇f, so the sample
mean of M estimates must lie within k·σ_i/√M of g_i in every coordinate, with σ_i² the
single-estimate variance: the exact formula (optim.zo.central_variance) for the central
estimators, the sample variance for the others. k = 5 with d <= 8 coordinates: a correct
estimator fails with probability < 1e-5 (and the seeds are fixed, so the test is deterministic).
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import optim.zo as zo

K = 5.0  # standard errors allowed per coordinate


def quadratic(d, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((d, d))
    A = B @ B.T / d + np.eye(d)
    b = rng.standard_normal(d)
    x = rng.standard_normal(d)
    return (lambda v: 0.5 * v @ A @ v + b @ v), A, x, A @ x + b


def sample(fn, M):
    return np.array([fn(s) for s in range(M)])


def assert_mean_within(E, target, var=None, k=K):
    """Per coordinate |mean − target| <= k·sqrt(var/M); var defaults to the sample variance."""
    M = E.shape[0]
    var = E.var(axis=0, ddof=1) if var is None else var
    err = np.abs(E.mean(axis=0) - target)
    tol = k * np.sqrt(var / M)
    assert np.all(err <= tol), f"mean off by {err} > tolerance {tol}"


# ----------------------------------------------------------------------------- deterministic
def test_coordinate_central_is_exact_on_quadratic_and_forward_has_half_curvature_bias():
    f, A, x, g = quadratic(6)
    mu = 1e-3
    np.testing.assert_allclose(zo.coordinate_estimate(f, x, mu, "central"), g, rtol=0, atol=1e-9)
    fwd = zo.coordinate_estimate(f, x, mu, "forward")
    # f(x+μe_i) − f(x) = μ g_i + μ²/2 A_ii exactly, so the bias is μ/2·diag(A)
    np.testing.assert_allclose(fwd - g, mu / 2 * np.diag(A), rtol=1e-5, atol=1e-9)


@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_gaussian_central_single_query_equals_directional_derivative_times_u(d, seed):
    # On a quadratic the central difference is the directional derivative exactly: ĝ = (gᵀu)u.
    f, _, x, g = quadratic(d, seed)
    est = zo.gaussian_estimate(f, x, mu=1e-2, q=1, kind="central", rng=seed)
    u = np.random.default_rng(seed).standard_normal(d)
    np.testing.assert_allclose(est, (g @ u) * u, rtol=1e-7, atol=1e-9 * (1 + np.abs(g).sum()))


# ----------------------------------------------------------------------------- unbiasedness
M = 3000


def test_gaussian_central_mean_and_variance_match_theory():
    f, _, x, g = quadratic(8)
    E = sample(lambda s: zo.gaussian_estimate(f, x, 1e-2, kind="central", rng=s), M)
    var = zo.central_variance(g, "gaussian")
    assert_mean_within(E, g, var)
    # and the documented variance ‖g‖² + g_i² is the actual one (chi-square: rel. sd √(2/M) ≈ 2.6%)
    np.testing.assert_allclose(E.var(axis=0, ddof=1), var, rtol=0.15)
    # total variance (d+1)‖g‖²: the √d slowdown
    np.testing.assert_allclose(E.var(axis=0).sum(), (g.size + 1) * g @ g, rtol=0.1)


@pytest.mark.parametrize("kind", ["forward", "one-point"])
def test_gaussian_forward_and_one_point_are_unbiased(kind):
    f, _, x, g = quadratic(5, seed=1)
    mu = 0.3 if kind == "one-point" else 1e-2   # one-point: variance ≈ f(x)²/μ² per coordinate
    E = sample(lambda s: zo.gaussian_estimate(f, x, mu, kind=kind, rng=s), M)
    assert_mean_within(E, g)


@pytest.mark.parametrize("kind", ["forward", "central"])
def test_sphere_estimator_needs_factor_d(kind):
    f, _, x, g = quadratic(8, seed=2)
    d = g.size
    E = sample(lambda s: zo.sphere_estimate(f, x, 1e-2, kind=kind, rng=s), M)
    var = zo.central_variance(g, "sphere") if kind == "central" else None
    assert_mean_within(E, g, var)
    # without the factor d the same draws are too small by exactly d
    E1 = sample(lambda s: zo.sphere_estimate(f, x, 1e-2, kind=kind, rng=s, scale=1.0), 200)
    np.testing.assert_allclose(E1 * d, E[:200], rtol=1e-12, atol=1e-12)
    assert np.linalg.norm(E1.mean(0) - g) > 0.5 * np.linalg.norm(g)


def test_q_queries_divide_the_variance_by_q():
    f, _, x, g = quadratic(6, seed=3)
    q = 8
    E = sample(lambda s: zo.gaussian_estimate(f, x, 1e-2, q=q, kind="central", rng=s), 1500)
    var = zo.central_variance(g, "gaussian") / q
    assert_mean_within(E, g, var)
    np.testing.assert_allclose(E.var(axis=0, ddof=1), var, rtol=0.2)


def test_lowrank_estimate_expectation_is_gradient_with_1_over_r_and_projection_for_fixed_V():
    rng = np.random.default_rng(4)
    m, n, r = 4, 3, 2
    A = rng.standard_normal((m, n))
    W = rng.standard_normal((m, n))
    f = lambda X: 0.5 * np.sum(X * X) + np.sum(A * X) + 0.25 * np.sum(X[:, 0] ** 2)
    G = W + A
    G[:, 0] += 0.5 * W[:, 0]
    # V random each draw: E[c·UVᵀ]/r = G
    E = sample(lambda s: zo.lowrank_estimate(f, W, 1e-2, rank=r, rng=s, normalize=True), M)
    assert_mean_within(E.reshape(M, -1), G.ravel())
    # unnormalised: expectation r·G (what the LoZO optimizer uses, as in the reference)
    Eraw = sample(lambda s: zo.lowrank_estimate(f, W, 1e-2, rank=r, rng=s, normalize=False), 200)
    np.testing.assert_allclose(Eraw, E[:200] * r, rtol=1e-12, atol=1e-12)
    # V fixed: E_U[c·UVᵀ] = G·V·Vᵀ (not G)
    V = rng.standard_normal((n, r))
    EV = sample(lambda s: zo.lowrank_estimate(f, W, 1e-2, rank=r, V=V, rng=s, normalize=False), M)
    assert_mean_within(EV.reshape(M, -1), (G @ V @ V.T).ravel())


def test_bad_inputs_raise_clear_errors():
    f, _, x, _ = quadratic(3)
    with pytest.raises(ValueError, match="mu"):
        zo.gaussian_estimate(f, x, mu=0.0)
    with pytest.raises(ValueError, match="kind"):
        zo.sphere_estimate(f, x, kind="one-point")
    with pytest.raises(ValueError, match="q"):
        zo.gaussian_estimate(f, x, q=0)
    with pytest.raises(TypeError, match="floating"):
        zo.coordinate_estimate(f, np.arange(3))
    with pytest.raises(ValueError, match="V has shape"):
        zo.lowrank_estimate(f, np.zeros((3, 2)), V=np.zeros((3, 1)))
