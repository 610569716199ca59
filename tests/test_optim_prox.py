"""Proximal operators under hypothesis (defining optimality, Moreau decomposition,
nonexpansiveness) and ISTA/FISTA on LASSO (closed form with orthonormal design, KKT)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import optim
from optim.prox import (L1, Box, ElasticNet, GroupLasso, L2Ball, NuclearNorm, Simplex, SquaredL2,
                        soft_threshold)

el = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
vecs = arrays(np.float64, st.integers(1, 8), elements=el)
mats = arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=el)
pos = st.floats(0.01, 5.0)

OPERATORS = {
    "l1": lambda lam: L1(lam),
    "sql2": lambda lam: SquaredL2(lam),
    "enet": lambda lam: ElasticNet(lam, 0.5 * lam),
    "group": lambda lam: GroupLasso(lam),
    "box": lambda lam: Box(-lam, 2 * lam),
    "ball": lambda lam: L2Ball(lam),
    "simplex": lambda lam: Simplex(lam),
}


@given(z=vecs, tau=st.floats(0, 5))
def test_soft_threshold_formula(z, tau):
    s = soft_threshold(z, tau)
    for zi, si in zip(z, s):
        if abs(zi) <= tau:
            assert si == 0
        else:
            assert si == pytest.approx(zi - np.sign(zi) * tau, abs=1e-12)


@pytest.mark.parametrize("kind", list(OPERATORS))
@given(z=vecs, lam=pos, eta=pos, data=st.data())
def test_prox_is_the_argmin(kind, z, lam, eta, data):
    """prox_{eta h}(z) minimizes h(x) + ||x - z||^2/(2 eta): no feasible random point does better."""
    h = OPERATORS[kind](lam)
    x = h.prox(z, eta)
    obj = lambda y: h(y) + np.sum((y - z) ** 2) / (2 * eta)
    best = obj(x)
    assert np.isfinite(best)
    for scale in (1e-3, 1e-1, 1.0):
        d = data.draw(arrays(np.float64, z.shape, elements=st.floats(-1, 1)))
        for y in (x + scale * d, h.prox(x + scale * d, eta)):   # prox lands y in the domain
            assert obj(y) >= best - 1e-9 * (1 + abs(best))


@pytest.mark.parametrize("kind", list(OPERATORS))
@given(a=vecs, lam=pos, eta=pos, data=st.data())
def test_prox_is_firmly_nonexpansive(kind, a, lam, eta, data):
    """<P(a) - P(b), a - b> >= ||P(a) - P(b)||^2 (holds for the prox of any convex h)."""
    b = data.draw(arrays(np.float64, a.shape, elements=el))
    h = OPERATORS[kind](lam)
    pa, pb = h.prox(a, eta), h.prox(b, eta)
    assert np.dot(pa - pb, a - b) >= np.sum((pa - pb) ** 2) - 1e-9 * (1 + np.sum((a - b) ** 2))


@given(x=vecs, lam=pos)
def test_moreau_decomposition_l1(x, lam):
    """prox_f(x) + prox_{f*}(x) = x, f = lam||.||_1, f* = indicator of the inf-ball (clip)."""
    f = L1(lam)
    fstar = f.conjugate()
    np.testing.assert_allclose(f.prox(x) + fstar.prox(x), x, atol=1e-12)
    np.testing.assert_allclose(fstar.prox(x), np.clip(x, -lam, lam), atol=0)


@given(x=vecs, r=pos, eta=pos)
def test_moreau_decomposition_l2_ball(x, r, eta):
    """f = indicator of the r-ball, f* = r||.||_2 (block soft-threshold). General eta form:
    prox_{eta f}(x) + eta * prox_{f*/eta}(x/eta) = x."""
    f = L2Ball(r)
    fstar = f.conjugate()
    np.testing.assert_allclose(f.prox(x) + fstar.prox(x), x, atol=1e-10)
    np.testing.assert_allclose(f.prox(x, eta) + eta * fstar.prox(x / eta, 1.0 / eta), x, atol=1e-10)


@given(z=vecs, s=pos)
def test_simplex_projection_feasible_and_matches_kkt(z, s):
    x = Simplex(s).prox(z)
    assert np.all(x >= 0) and np.sum(x) == pytest.approx(s, rel=1e-12)
    # KKT: x = max(z - theta, 0) for a single theta
    on = x > 0
    theta = (z - x)[on]
    np.testing.assert_allclose(theta, theta[0], atol=1e-9)
    assert np.all(z[~on] <= theta[0] + 1e-9)


@given(m=mats, lam=pos)
def test_nuclear_norm_prox_soft_thresholds_singular_values(m, lam):
    x = NuclearNorm(lam).prox(m, 1.0)
    s_in = np.linalg.svd(m, compute_uv=False)
    s_out = np.linalg.svd(x, compute_uv=False)
    np.testing.assert_allclose(np.sort(s_out), np.sort(np.maximum(s_in - lam, 0)), atol=1e-9)
    # the argmin check for a matrix argument
    obj = lambda y: NuclearNorm(lam)(y) + 0.5 * np.sum((y - m) ** 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert obj(x + 1e-2 * rng.standard_normal(m.shape)) >= obj(x) - 1e-9


def test_group_lasso_rows():
    w = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = GroupLasso(1.0, axis=1).prox(w, 1.0)
    np.testing.assert_allclose(out, [[3 * 0.8, 4 * 0.8], [0, 0], [0, 0]])


# ----------------------------------------------------------------------------- ISTA / FISTA
def lasso(n=40, d=15, seed=0, lam=0.5):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d))
    xt = np.zeros(d)
    xt[:4] = rng.standard_normal(4) * 3
    b = a @ xt + 0.1 * rng.standard_normal(n)
    return a, b, lam


def test_ista_one_step_with_orthonormal_design_is_soft_threshold():
    rng = np.random.default_rng(0)
    a, _ = np.linalg.qr(rng.standard_normal((12, 6)))      # A^T A = I
    b = rng.standard_normal(12)
    p = {"x": np.zeros(6)}
    optim.ISTA(p, lr=1.0, prox=L1(0.3)).step({"x": a.T @ (a @ p["x"] - b)})
    np.testing.assert_array_equal(p["x"], soft_threshold(a.T @ b, 0.3))


@pytest.mark.parametrize("method", ["ista", "fista"])
def test_lasso_solution_satisfies_kkt(method):
    a, b, lam = lasso()
    L = np.linalg.eigvalsh(a.T @ a).max()
    p = {"x": np.zeros(a.shape[1])}
    opt = optim.create(method, p, lr=1 / L, prox=L1(lam))
    for _ in range(3000 if method == "ista" else 1500):
        opt.step({"x": a.T @ (a @ p["x"] - b)})
    x = opt.iterates()["x"]
    g = a.T @ (a @ x - b)
    nz = x != 0
    assert nz.sum() >= 1 and (~nz).sum() >= 1
    np.testing.assert_allclose(g[nz], -lam * np.sign(x[nz]), atol=1e-8)
    assert np.all(np.abs(g[~nz]) <= lam + 1e-8)


def test_fista_beats_ista_and_both_meet_their_rates():
    a, b, lam = lasso(seed=1, lam=0.05)
    L = np.linalg.eigvalsh(a.T @ a).max()
    F = lambda x: 0.5 * np.sum((a @ x - b) ** 2) + lam * np.abs(x).sum()
    ref = {"x": np.zeros(a.shape[1])}
    o = optim.FISTA(ref, lr=1 / L, prox=L1(lam))
    for _ in range(5000):
        o.step({"x": a.T @ (a @ ref["x"] - b)})
    xs = o.iterates()["x"]
    fstar = F(xs)
    r0 = np.sum(xs ** 2)
    gaps = {}
    for cls in (optim.ISTA, optim.FISTA):
        p = {"x": np.zeros(a.shape[1])}
        opt = cls(p, lr=1 / L, prox=L1(lam))
        gap = []
        for k in range(1, 101):
            opt.step({"x": a.T @ (a @ p["x"] - b)})
            x = opt.iterates()["x"]
            gap.append(F(x) - fstar)
        gaps[cls.__name__] = np.array(gap)
    k = np.arange(1, 101)
    # Beck & Teboulle 2009: ISTA L r0/(2k), FISTA 2 L r0/(k+1)^2
    assert np.all(gaps["ISTA"] <= L * r0 / (2 * k) + 1e-10)
    assert np.all(gaps["FISTA"] <= 2 * L * r0 / (k + 1) ** 2 + 1e-10)
    assert gaps["FISTA"][-1] < gaps["ISTA"][-1]


def test_projected_gradient_stays_feasible():
    rng = np.random.default_rng(0)
    c = rng.standard_normal(10)
    p = {"x": np.full(10, 0.1)}
    opt = optim.ISTA(p, lr=0.5, prox=Simplex(1.0))
    for _ in range(200):
        opt.step({"x": p["x"] - c})                  # min ||x - c||^2/2 over the simplex
        assert Simplex(1.0)(p["x"]) == 0.0
    np.testing.assert_allclose(p["x"], Simplex(1.0).prox(c), atol=1e-10)
