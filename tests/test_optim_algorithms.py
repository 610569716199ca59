"""First-order optimizers: hand-derived first steps and recursions, invariances, rates on
strongly convex quadratics, saddle escape, and step-for-step agreement with torch.optim."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import optim

finite = st.floats(-1e3, 1e3, allow_nan=False).filter(lambda v: abs(v) > 1e-3)
vec = arrays(np.float64, st.integers(1, 6), elements=finite)


def quadratic(kappa, d=6, seed=0, mu=1.0):
    """H = Q diag(spectrum) Q^T with eigenvalues in [mu, kappa*mu] (both ends included)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.concatenate([[mu, kappa * mu], rng.uniform(mu, kappa * mu, d - 2)])
    return (q * lam) @ q.T, q, lam


# ----------------------------------------------------------------------------- Adam family
@given(g=vec, lr=st.floats(1e-4, 1e-1))
def test_adam_first_step_is_lr_sign_g(g, lr):
    p = {"x": np.zeros_like(g)}
    optim.Adam(p, lr=lr).step({"x": g.copy()})
    # m_hat = g, v_hat = g^2: delta = -lr * g / (|g| + eps)
    np.testing.assert_allclose(p["x"], -lr * g / (np.abs(g) + 1e-8), rtol=1e-12, atol=0)
    np.testing.assert_allclose(p["x"], -lr * np.sign(g), rtol=1e-5)


@given(c=st.floats(1e-3, 1e3), seed=st.integers(0, 100))
def test_adam_invariant_to_loss_scale(c, seed):
    """Gradients of c*f: with eps = 0 the trajectory is the same (up to rounding)."""
    h, _, _ = quadratic(50.0, seed=seed)
    x0 = np.random.default_rng(seed).standard_normal(6)
    traj = []
    for scale in (1.0, c):
        p = {"x": x0.copy()}
        opt = optim.Adam(p, lr=0.05, eps=0.0)
        for _ in range(20):
            opt.step({"x": scale * (h @ p["x"])})
        traj.append(p["x"])
    np.testing.assert_allclose(traj[1], traj[0], rtol=1e-9, atol=1e-12)


def test_adam_two_steps_closed_form():
    g1, g2 = np.array([2.0, -0.5]), np.array([-1.0, 3.0])
    b1, b2, lr, eps = 0.9, 0.99, 0.1, 1e-8
    p = {"x": np.zeros(2)}
    opt = optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps)
    opt.step({"x": g1})
    opt.step({"x": g2})
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v = b2 * (1 - b2) * g1 ** 2 + (1 - b2) * g2 ** 2
    step2 = lr * (m / (1 - b1 ** 2)) / (np.sqrt(v / (1 - b2 ** 2)) + eps)
    np.testing.assert_allclose(p["x"], -lr * g1 / (np.abs(g1) + eps) - step2, rtol=1e-12)


def test_amsgrad_uses_running_max_of_v():
    """After a large then a small gradient, AMSGrad's denominator keeps the large v."""
    gs = [np.array([10.0]), np.array([0.1]), np.array([0.1])]
    b1, b2, lr = 0.0, 0.5, 1.0
    pa, pb = {"x": np.zeros(1)}, {"x": np.zeros(1)}
    adam = optim.Adam(pa, lr=lr, betas=(b1, b2), eps=0.0)
    ams = optim.Adam(pb, lr=lr, betas=(b1, b2), eps=0.0, amsgrad=True)
    v = vmax = 0.0
    expect = 0.0
    for t, g in enumerate(gs, 1):
        adam.step({"x": g})
        ams.step({"x": g})
        v = b2 * v + (1 - b2) * g[0] ** 2
        vmax = max(vmax, v)
        expect -= lr * g[0] / (math.sqrt(vmax) / math.sqrt(1 - b2 ** t))
    assert pb["x"][0] == pytest.approx(expect, rel=1e-12)
    assert abs(pb["x"][0]) < abs(pa["x"][0])      # plain Adam takes bigger late steps


def test_adamw_decay_is_decoupled_and_adam_decay_is_l2():
    """Zero gradient: AdamW shrinks theta by (1 - lr*wd) per step; Adam+L2 feeds wd*theta
    through the moments, so it moves each coordinate by ~lr instead."""
    x0 = np.array([0.5, 1.0, 100.0])
    pw, pa = {"x": x0.copy()}, {"x": x0.copy()}
    w = optim.AdamW(pw, lr=0.01, weight_decay=0.1)
    a = optim.Adam(pa, lr=0.01, weight_decay=0.1)
    for _ in range(5):
        w.step({"x": np.zeros(3)})
        a.step({"x": np.zeros(3)})
    np.testing.assert_allclose(pw["x"], x0 * (1 - 0.01 * 0.1) ** 5, rtol=1e-12)
    np.testing.assert_allclose(x0 - pa["x"], 5 * 0.01, rtol=1e-2)   # sign-like steps of lr


def test_adagrad_constant_gradient_steps_shrink_as_one_over_sqrt_t():
    c = np.array([3.0, -0.2, 50.0])
    p = {"x": np.zeros(3)}
    opt = optim.AdaGrad(p, lr=0.1, eps=0.0)
    prev = p["x"].copy()
    for t in range(1, 6):
        opt.step({"x": c})
        np.testing.assert_allclose(prev - p["x"], 0.1 * np.sign(c) / math.sqrt(t), rtol=1e-12)
        prev = p["x"].copy()


def test_rmsprop_first_step_is_lr_over_sqrt_one_minus_alpha():
    g = np.array([1e-3, -2.0, 7.0])
    p = {"x": np.zeros(3)}
    optim.RMSProp(p, lr=0.01, alpha=0.99, eps=0.0).step({"x": g})
    np.testing.assert_allclose(p["x"], -0.01 * np.sign(g) / math.sqrt(0.01), rtol=1e-12)


# ----------------------------------------------------------------------------- momentum
def test_sgd_torch_form_momentum_recursion():
    rng = np.random.default_rng(0)
    gs = [rng.standard_normal(4) for _ in range(5)]
    mu, tau, lr = 0.8, 0.3, 0.05
    for nesterov in (False, True):
        p = {"x": np.zeros(4)}
        opt = optim.SGD(p, lr=lr, momentum=mu, dampening=0.0 if nesterov else tau, nesterov=nesterov)
        x, b = np.zeros(4), None
        for g in gs:
            opt.step({"x": g})
            b = g.copy() if b is None else mu * b + (1 - (0.0 if nesterov else tau)) * g
            x = x - lr * (g + mu * b if nesterov else b)
            np.testing.assert_allclose(p["x"], x, rtol=1e-13, atol=1e-15)


def test_heavy_ball_equals_polyak_recursion_and_torch_form_only_for_constant_lr():
    rng = np.random.default_rng(1)
    gs = [rng.standard_normal(3) for _ in range(6)]
    beta = 0.7
    ph, pt = {"x": np.ones(3)}, {"x": np.ones(3)}
    hb = optim.HeavyBall(ph, lr=0.1, beta=beta)
    tf = optim.SGD(pt, lr=0.1, momentum=beta)
    xs = [np.ones(3), np.ones(3)]           # x_{-1} = x_0
    for g in gs:
        hb.step({"x": g})
        tf.step({"x": g})
        xs.append(xs[-1] - 0.1 * g + beta * (xs[-1] - xs[-2]))
        np.testing.assert_allclose(ph["x"], xs[-1], rtol=1e-13)
        np.testing.assert_allclose(pt["x"], ph["x"], rtol=1e-12)
    for opt in (hb, tf):                    # change the lr: the forms now differ
        opt.param_groups[0]["lr"] = 0.01
        opt.step({"x": gs[0]})
    assert np.abs(ph["x"] - pt["x"]).max() > 1e-3


@pytest.mark.parametrize("kappa", [10.0, 100.0, 1000.0])
def test_gd_contracts_by_kappa_ratio_with_step_2_over_mu_plus_L(kappa):
    h, q, lam = quadratic(kappa, d=8, seed=int(kappa))
    xstar = np.linspace(-1, 1, 8)
    rho = (kappa - 1) / (kappa + 1)
    # x0 - x* on the extreme eigenvectors: every step contracts by exactly rho
    p = {"x": xstar + q[:, 0] + 2 * q[:, 1]}
    opt = optim.GD(p, lr=2.0 / (lam.min() + lam.max()))
    for _ in range(30):
        e0 = np.linalg.norm(p["x"] - xstar)
        opt.step({"x": h @ (p["x"] - xstar)})
        assert np.linalg.norm(p["x"] - xstar) / e0 == pytest.approx(rho, rel=1e-8)
    # a generic start: the contraction never exceeds rho
    p = {"x": np.random.default_rng(0).standard_normal(8)}
    opt = optim.GD(p, lr=2.0 / (lam.min() + lam.max()))
    for _ in range(30):
        e0 = np.linalg.norm(p["x"] - xstar)
        opt.step({"x": h @ (p["x"] - xstar)})
        assert np.linalg.norm(p["x"] - xstar) <= rho * e0 * (1 + 1e-10)


def test_gd_diverges_above_two_over_L():
    h, _, lam = quadratic(10.0)
    p = {"x": np.ones(6)}
    opt = optim.GD(p, lr=2.05 / lam.max())
    for _ in range(200):
        opt.step({"x": h @ p["x"]})
    assert np.linalg.norm(p["x"]) > 10


def _iters_to(opt_fn, h, x0, tol=1e-6, max_iter=100_000):
    p = {"x": x0.copy()}
    opt = opt_fn(p)
    for k in range(1, max_iter):
        opt.step({"x": h @ p["x"]})
        x = opt.iterates()["x"]
        if np.linalg.norm(x) <= tol * np.linalg.norm(x0):
            return k
    return max_iter


def test_accelerated_iterations_scale_with_sqrt_kappa_gd_with_kappa():
    x0 = np.ones(6)
    counts = {}
    for kappa in (1e1, 1e3):
        h, _, lam = quadratic(kappa, seed=3)
        L, mu = lam.max(), lam.min()
        sk = math.sqrt(kappa)
        counts[("gd", kappa)] = _iters_to(lambda p: optim.GD(p, lr=1 / L), h, x0)
        counts[("agd", kappa)] = _iters_to(
            lambda p: optim.AGD(p, lr=1 / L, momentum=(sk - 1) / (sk + 1)), h, x0)
        counts[("hb", kappa)] = _iters_to(
            lambda p: optim.HeavyBall(p, lr=4 / (math.sqrt(L) + math.sqrt(mu)) ** 2,
                                      beta=((sk - 1) / (sk + 1)) ** 2), h, x0)
    for m in ("agd", "hb"):
        r = counts[(m, 1e3)] / counts[(m, 1e1)]
        assert 5 < r < 20, (m, counts)                 # ~ sqrt(100) = 10
    r = counts[("gd", 1e3)] / counts[("gd", 1e1)]
    assert 50 < r < 200, counts                        # ~ 100


def test_agd_strongly_convex_rate_bound():
    """f(x_k) - f* <= (1 - 1/sqrt(kappa))^k (f(x0) - f* + mu/2 ||x0 - x*||^2) [Nesterov 2004]."""
    kappa = 100.0
    h, _, lam = quadratic(kappa, d=10, seed=5)
    L, mu = lam.max(), lam.min()
    f = lambda x: 0.5 * x @ h @ x
    x0 = np.random.default_rng(2).standard_normal(10)
    p = {"x": x0.copy()}
    sk = math.sqrt(kappa)
    opt = optim.AGD(p, lr=1 / L, momentum=(sk - 1) / (sk + 1))
    c0 = f(x0) + mu / 2 * x0 @ x0
    for k in range(1, 300):
        opt.step({"x": h @ p["x"]})
        assert f(opt.iterates()["x"]) <= (1 - 1 / sk) ** k * c0 * (1 + 1e-9) + 1e-300


def test_agd_convex_rate_bound():
    """Convex but not strongly convex (singular H): f(x_k) - f* <= 2L||x0 - x*||^2/(k+1)^2."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((5, 12))
    h = a.T @ a
    L = np.linalg.eigvalsh(h).max()
    b = h @ rng.standard_normal(12)
    xs = np.linalg.lstsq(h, b, rcond=None)[0]
    f = lambda x: 0.5 * x @ h @ x - b @ x
    p = {"x": np.zeros(12)}
    opt = optim.AGD(p, lr=1 / L, momentum="convex")
    bound0 = 2 * L * np.sum((0 - xs) ** 2)
    for k in range(1, 400):
        opt.step({"x": h @ p["x"] - b})
        assert f(opt.iterates()["x"]) - f(xs) <= bound0 / (k + 1) ** 2 + 1e-12


# ----------------------------------------------------------------------------- saddle
def saddle_grad(x):
    """f(x, y) = x^2/2 + y^4/4 - y^2/2: strict saddle at 0, minima at (0, +-1)."""
    return np.array([x[0], x[1] ** 3 - x[1]])


def test_gd_stalls_at_strict_saddle_perturbed_gd_escapes():
    pg, pp = {"x": np.array([1.0, 0.0])}, {"x": np.array([1.0, 0.0])}
    gd = optim.GD(pg, lr=0.1)
    pgd = optim.PerturbedGD(pp, lr=0.1, g_thres=1e-3, radius=1e-2, t_thres=20, seed=0)
    for _ in range(400):
        gd.step({"x": saddle_grad(pg["x"])})
        pgd.step({"x": saddle_grad(pp["x"])})
    assert np.linalg.norm(pg["x"]) < 1e-10            # converged to the saddle
    assert abs(abs(pp["x"][1]) - 1) < 1e-3 and abs(pp["x"][0]) < 1e-3
    assert pgd.perturbations >= 1


def test_perturbation_only_when_gradient_small_and_spaced_and_inside_ball():
    p = {"x": np.zeros(50)}
    opt = optim.PerturbedGD(p, lr=0.0, g_thres=1.0, radius=0.5, t_thres=3, seed=1)
    moves = []
    for t in range(12):
        before = p["x"].copy()
        opt.step({"x": np.zeros(50)})            # gradient always small, lr = 0
        moves.append(np.linalg.norm(p["x"] - before))
    moved = [t for t, m in enumerate(moves) if m > 0]
    assert moved == [0, 4, 8]                     # spaced by t_thres + 1
    assert all(0 < moves[t] <= 0.5 for t in moved)
    p = {"x": np.zeros(3)}
    opt = optim.PerturbedGD(p, lr=0.0, g_thres=1.0, radius=0.5, t_thres=0)
    opt.step({"x": np.full(3, 2.0)})             # large gradient: no perturbation
    assert opt.perturbations == 0 and np.all(p["x"] == 0)


# ----------------------------------------------------------------------------- torch reference
try:
    import torch
except ImportError:  # optional dev dependency (setup.cfg extra "bench")
    torch = None

TORCH_CASES = [
    ("adamw", dict(lr=1e-2, weight_decay=0.1), "AdamW"),
    ("adamw", dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1, amsgrad=True), "AdamW"),
    ("adam", dict(lr=1e-2, weight_decay=0.05), "Adam"),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01), "SGD"),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), "SGD"),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
     "Adagrad"),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01),
     "RMSprop"),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-3, amsgrad=True, maximize=True), "Adam"),
    ("sgd", dict(lr=0.05, momentum=0.9, maximize=True, weight_decay=0.01), "SGD"),
    ("adagrad", dict(lr=0.05, eps=1e-3, maximize=True), "Adagrad"),
    ("rmsprop", dict(lr=0.01, eps=1e-3), "RMSprop"),
    ("rmsprop", dict(lr=0.01, alpha=0.8, eps=1e-3, centered=True, maximize=True), "RMSprop"),
]


@pytest.mark.skipif(torch is None, reason="torch not installed: reference-step tests skipped")
@pytest.mark.parametrize("name,kw,tname", TORCH_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_matches_torch_optim_for_10_steps(name, kw, tname):
    # float64 and a relative 1e-10: where eps sits (outside the root, on the corrected moment)
    # moves a step by ~1e-6, which a float32 comparison at 1e-6 could not see
    rng = np.random.default_rng(0)
    shapes = {"w": (5, 4), "b": (4,)}
    p = {n: rng.standard_normal(s) for n, s in shapes.items()}
    tp = {n: torch.tensor(v.copy(), requires_grad=True) for n, v in p.items()}
    groups = optim.param_groups_no_decay(p, kw.get("weight_decay", 0.0))
    opt = optim.create(name, groups, **kw)
    tgroups = [{"params": [tp[n] for n in g["params"]], "weight_decay": g["weight_decay"]}
               for g in groups]
    topt = getattr(torch.optim, tname)(tgroups, **{k: v for k, v in kw.items() if k != "weight_decay"})
    for _ in range(10):
        g = {n: rng.standard_normal(s) for n, s in shapes.items()}
        opt.step(g)
        for n in tp:
            tp[n].grad = torch.tensor(g[n])
        topt.step()
        for n in p:
            np.testing.assert_allclose(p[n], tp[n].detach().numpy(), atol=0, rtol=1e-10)
