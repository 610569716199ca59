"""Shampoo, SOAP and Anderson acceleration (optim/preconditioned.py): the polar factor of one
Shampoo step, the reductions to AdaGrad and Adam checked against torch, Shampoo's EMA factors and
momentum against its documented rule, SOAP's skipped first step, its rotation equivariance and
its every step against a NumPy transcription of the reference code, Anderson's GMRES-like
convergence and its safeguard, the state bytes, mid-run resumes and refused options."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import optim


def rng_grads(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def polar(g):
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    return u @ vt


# ----------------------------------------------------------------------------- Shampoo
@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_shampoo_first_step_is_the_polar_factor(m, n, seed):
    g = np.random.default_rng(seed).standard_normal((m, n))
    p = {"w": np.zeros((m, n))}
    optim.Shampoo(p, lr=0.5, epsilon=0.0).step({"w": g})
    np.testing.assert_allclose(p["w"], -0.5 * polar(g), atol=1e-8)


def test_shampoo_in_float32_steps_along_directions_below_the_rounding_level():
    """Eigenvalues of the float32 statistics below lambda_max * n * eps32 are raised to that level,
    not dropped: the first step's singular values are 1 above it (the polar factor) and
    sigma / sqrt(cut) below it, never 0."""
    n = 8
    sigma = np.array([1.0, 0.5, 0.2, 0.1, 0.03, 3e-4, 1e-4, 3e-5])
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    g = ((u * sigma) @ v.T).astype(np.float32)
    p = {"w": np.zeros((n, n), np.float32)}
    optim.Shampoo(p, lr=1.0).step({"w": g})
    cut = n * np.finfo(np.float32).eps               # lambda_max = sigma_max^2 = 1
    expected = np.minimum(1.0, sigma / np.sqrt(cut))
    np.testing.assert_allclose(np.linalg.svd(-p["w"].astype(np.float64), compute_uv=False), expected,
                               rtol=2e-3)


def test_shampoo_constant_gradient_steps_shrink_as_one_over_sqrt_t():
    g = np.random.default_rng(1).standard_normal((4, 3))
    p = {"w": np.zeros((4, 3))}
    opt = optim.Shampoo(p, lr=1.0, epsilon=0.0)
    for t in range(1, 6):
        before = p["w"].copy()
        opt.step({"w": g})
        np.testing.assert_allclose(before - p["w"], polar(g) / np.sqrt(t), atol=1e-10)


def test_shampoo_on_a_vector_is_adagrad_as_torch():
    grads = rng_grads(7, 25)
    x0 = np.random.default_rng(2).standard_normal(7)
    p = {"b": x0.copy()}
    opt = optim.Shampoo(p, lr=0.1, epsilon=0.0, weight_decay=0.01)
    t = torch.tensor(x0.copy(), requires_grad=True)
    ref = torch.optim.Adagrad([t], lr=0.1, eps=0.0, weight_decay=0.01)
    for g in grads:
        opt.step({"b": g})
        t.grad = torch.tensor(g)
        ref.step()
    np.testing.assert_allclose(p["b"], t.detach().numpy(), rtol=1e-10)


def test_shampoo_roots_are_refreshed_every_precondition_frequency_steps():
    g1, g2 = rng_grads((3, 2), 2, seed=3)
    p = {"w": np.zeros((3, 2))}
    opt = optim.Shampoo(p, lr=1.0, epsilon=1e-3, precondition_frequency=2)
    opt.step({"w": g1})
    left, right = opt.state["w"]["L_root"].copy(), opt.state["w"]["R_root"].copy()
    before = p["w"].copy()
    opt.step({"w": g2})                         # statistics grow, roots stay those of step 1
    np.testing.assert_allclose(before - p["w"], left @ g2 @ right, rtol=1e-12)
    np.testing.assert_allclose(opt.state["w"]["L"], g1 @ g1.T + g2 @ g2.T, rtol=1e-12)
    opt.step({"w": g1})                         # step 3: recomputed from the sums
    lam, vec = np.linalg.eigh(opt.state["w"]["L"] + 1e-3 * np.eye(3))
    np.testing.assert_allclose(opt.state["w"]["L_root"], (vec * lam ** -0.25) @ vec.T, rtol=1e-10)


def test_shampoo_grafting_takes_adams_step_length_and_its_own_direction():
    g = np.random.default_rng(4).standard_normal((5, 3))
    p = {"w": np.zeros((5, 3))}
    optim.Shampoo(p, lr=0.1, epsilon=0.0, grafting="adam", grafting_epsilon=0.0).step({"w": g})
    np.testing.assert_allclose(np.linalg.norm(p["w"]), 0.1 * np.sqrt(g.size), rtol=1e-12)
    direction = -p["w"] / np.linalg.norm(p["w"])
    np.testing.assert_allclose(direction, polar(g) / np.linalg.norm(polar(g)), atol=1e-12)


def test_shampoo_side_longer_than_max_preconditioner_dim_has_no_factor():
    g = np.random.default_rng(5).standard_normal((3, 8))
    p = {"w": np.zeros((3, 8))}
    opt = optim.Shampoo(p, lr=1.0, epsilon=0.0, max_preconditioner_dim=4)
    opt.step({"w": g})
    assert set(opt.state["w"]) == {"step", "L", "L_root"}
    lam, vec = np.linalg.eigh(g @ g.T)                     # one factor: exponent -1/2
    np.testing.assert_allclose(-p["w"], (vec * lam ** -0.5) @ vec.T @ g, rtol=1e-10)


def test_shampoo_ema_factors_and_momentum_follow_the_documented_rule():
    """beta2 < 1 and momentum > 0, against a NumPy transcription of the class docstring:
    g <- g + wd*theta; L <- b2*L + (1-b2) G G^T, R likewise (a vector: s <- b2*s + (1-b2) g^2);
    D = (L + eps I)^(-1/4) G (R + eps I)^(-1/4) (a vector: g (s + eps)^(-1/2));
    buf <- mu*buf + D (heavy ball, not an EMA of D); theta <- theta - lr*buf. Dropping the decay of
    L, R or s, or damping the momentum by (1-mu), moves the parameters far outside 1e-10."""
    lr, mu, b2, eps, wd = 0.05, 0.9, 0.8, 1e-4, 0.01
    rng = np.random.default_rng(14)
    x0 = {"w": rng.standard_normal((3, 5)), "b": rng.standard_normal(4)}
    p = {n: v.copy() for n, v in x0.items()}
    opt = optim.Shampoo(p, lr=lr, momentum=mu, beta2=b2, epsilon=eps, weight_decay=wd)

    def root(a):                                            # (a + eps I)^(-1/4)
        lam, vec = np.linalg.eigh(a + eps * np.eye(len(a)))
        return (vec * lam ** -0.25) @ vec.T

    ref = {n: v.copy() for n, v in x0.items()}
    left, right, diag = np.zeros((3, 3)), np.zeros((5, 5)), np.zeros(4)
    buf = {n: np.zeros_like(v) for n, v in x0.items()}
    for _ in range(8):
        grads = {n: rng.standard_normal(v.shape) for n, v in x0.items()}
        opt.step(grads)
        g = {n: grads[n] + wd * ref[n] for n in ref}
        left = b2 * left + (1 - b2) * g["w"] @ g["w"].T
        right = b2 * right + (1 - b2) * g["w"].T @ g["w"]
        diag = b2 * diag + (1 - b2) * g["b"] ** 2
        d = {"w": root(left) @ g["w"] @ root(right), "b": g["b"] / np.sqrt(diag + eps)}
        for n in ref:
            buf[n] = mu * buf[n] + d[n]
            ref[n] -= lr * buf[n]
            assert np.linalg.norm(p[n] - ref[n]) <= 1e-10 * np.linalg.norm(ref[n] - x0[n]), n


@pytest.mark.parametrize("kw", [{}, {"grafting": "adam", "momentum": 0.9}, {"max_preconditioner_dim": 3}])
def test_shampoo_state_bytes(kw):
    p = {"w": np.zeros((5, 3), np.float32), "conv": np.zeros((2, 3, 2), np.float32),
         "b": np.zeros(4, np.float32)}
    opt = optim.Shampoo(p, **kw)
    extra = (bool(kw.get("grafting")) + (kw.get("momentum", 0) > 0)) * 4 * (15 + 12 + 4)
    if "max_preconditioner_dim" in kw:     # w: only its side 3 (2*9); conv (2 x 6): only 2 (2*4)
        factors = 2 * 9 + 2 * 4
    else:
        factors = 2 * (25 + 9) + 2 * (4 + 36)
    assert opt.expected_state_bytes() == 4 * (factors + 4) + extra
    opt.step({n: np.ones_like(v) for n, v in p.items()})
    assert opt.state_bytes() == opt.expected_state_bytes()


# ----------------------------------------------------------------------------- SOAP
def test_soap_first_gradient_only_builds_the_eigenbasis():
    g = np.random.default_rng(6).standard_normal((4, 3))
    w0 = np.random.default_rng(7).standard_normal((4, 3))
    p = {"w": w0.copy()}
    opt = optim.SOAP(p, betas=(0.9, 0.8), weight_decay=0.1)
    opt.step({"w": g})
    np.testing.assert_array_equal(p["w"], w0)                     # no move, not even decay
    st_ = opt.state["w"]
    assert st_["step"] == 0
    np.testing.assert_allclose(st_["GG0"], 0.2 * g @ g.T, rtol=1e-14)   # shampoo_beta -1 -> beta2
    for q, gg in ((st_["Q0"], st_["GG0"]), (st_["Q1"], st_["GG1"])):
        np.testing.assert_allclose(q.T @ q, np.eye(len(q)), atol=1e-12)
        eig = np.diag(q.T @ gg @ q)
        assert np.all(np.diff(eig) <= 1e-12)                      # descending
        np.testing.assert_allclose(q.T @ gg @ q, np.diag(eig), atol=1e-12)
    opt.step({"w": g})
    assert not np.array_equal(p["w"], w0) and st_["step"] == 1


def test_soap_unrotated_is_adam_with_its_first_step_skipped_as_torch():
    """Every dimension above max_precond_dim: no rotation. With eps = 0 the efficient form equals
    torch's Adam, which sees the gradients from the second one on."""
    grads = rng_grads((3, 4), 25, seed=8)
    w0 = np.random.default_rng(9).standard_normal((3, 4))
    p = {"w": w0.copy()}
    opt = optim.SOAP(p, lr=0.01, betas=(0.9, 0.99), eps=0.0, weight_decay=0.0, max_precond_dim=2)
    t = torch.tensor(w0.copy(), requires_grad=True)
    ref = torch.optim.Adam([t], lr=0.01, betas=(0.9, 0.99), eps=0.0)
    for i, g in enumerate(grads):
        opt.step({"w": g})
        if i:
            t.grad = torch.tensor(g)
            ref.step()
    np.testing.assert_allclose(p["w"], t.detach().numpy(), rtol=1e-10)


def test_soap_eps_is_added_before_bias_correction_and_decay_comes_after_the_step():
    g1, g2 = rng_grads(5, 2, seed=10)
    w0 = np.random.default_rng(11).standard_normal(5)
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.99), 1e-2, 0.1
    p = {"b": w0.copy()}
    opt = optim.SOAP(p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    opt.step({"b": g1})
    opt.step({"b": g2})
    m, v = (1 - b1) * g2, (1 - b2) * g2 ** 2
    stepped = w0 - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(p["b"], stepped * (1 - lr * wd), rtol=1e-13)


@pytest.mark.parametrize("name", ["soap", "adamw"])
def test_soap_is_rotation_equivariant_and_adamw_is_not(name):
    """Optimizing W' = U W V^T with gradients U G V^T gives U W_t V^T under SOAP (its bases rotate
    with the problem; precondition_frequency 3 includes the QR refreshes); AdamW's coordinatewise
    second moment does not rotate."""
    rng = np.random.default_rng(12)
    u, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    w0, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    scale = rng.uniform(0.5, 2.0, size=(4, 3))
    kw = {"precondition_frequency": 3} if name == "soap" else {}
    a = {"w": w0.copy()}
    b = {"w": u @ w0 @ v.T}
    opt_a, opt_b = optim.create(name, a, lr=0.01, **kw), optim.create(name, b, lr=0.01, **kw)
    for _ in range(12):     # f(W) = 0.5 ||W - T||^2 weighted in the rotated frame
        g_rot = scale * (u @ a["w"] @ v.T - u @ target @ v.T)
        opt_a.step({"w": u.T @ g_rot @ v})
        opt_b.step({"w": scale * (b["w"] - u @ target @ v.T)})
    gap = np.abs(u @ a["w"] @ v.T - b["w"]).max()
    if name == "soap":
        assert gap < 1e-8       # eigen-solver rounding
    else:
        assert gap > 1e-4


def _soap_reference_step(p, g, s, lr, betas, eps, weight_decay, precondition_frequency):
    """One step of SOAP.step from the reference code (nikhilvyas/SOAP soap.py) in NumPy, every
    dimension rotated, merge_dims off, shampoo_beta -1 (beta2). Unlike optim.SOAP it keeps exp_avg in the rotated basis and
    moves it back and forth around each change of Q, as the reference does."""
    b1, b2 = betas

    def project(x, back=False):                     # torch.tensordot on dim 0, per factor
        for q in s["Q"]:
            x = np.tensordot(x, q, axes=([0], [1 if back else 0]))
        return x

    def update_preconditioner():
        if s["Q"] is not None:
            s["exp_avg"] = project(s["exp_avg"], back=True)
        for i, gg in enumerate(s["GG"]):            # GG.lerp_(outer, 1 - shampoo_beta)
            rest = [a for a in range(g.ndim) if a != i]
            gg += (1 - b2) * (np.tensordot(g, g, (rest, rest)) - gg)
        if s["Q"] is None:                          # get_orthogonal_matrix: eigh, flipped
            s["Q"] = [np.linalg.eigh(gg + 1e-30 * np.eye(len(gg)))[1][:, ::-1] for gg in s["GG"]]
        if s["step"] > 0 and s["step"] % precondition_frequency == 0:
            qs = []                                 # get_orthogonal_matrix_QR
            for i, (gg, q) in enumerate(zip(s["GG"], s["Q"])):
                order = np.argsort(-np.diag(q.T @ gg @ q))
                s["exp_avg_sq"] = np.take(s["exp_avg_sq"], order, axis=i)
                qs.append(np.linalg.qr(gg @ q[:, order])[0])
            s["Q"] = qs
        if s["step"] > 0:
            s["exp_avg"] = project(s["exp_avg"])

    if not s:
        s.update(step=0, exp_avg=np.zeros_like(g), exp_avg_sq=np.zeros_like(g), Q=None,
                 GG=[np.zeros((d, d)) for d in g.shape])
        update_preconditioner()
        return
    gp = project(g)
    s["step"] += 1
    s["exp_avg"] = b1 * s["exp_avg"] + (1 - b1) * gp
    s["exp_avg_sq"] = b2 * s["exp_avg_sq"] + (1 - b2) * gp * gp
    step_size = lr * np.sqrt(1 - b2 ** s["step"]) / (1 - b1 ** s["step"])
    p -= step_size * project(s["exp_avg"] / (np.sqrt(s["exp_avg_sq"]) + eps), back=True)
    p -= lr * weight_decay * p
    update_preconditioner()


@pytest.mark.parametrize("precondition_frequency", [1, 3])
def test_soap_matches_the_reference_code_step_by_step(precondition_frequency):
    """Against a NumPy transcription of the reference (Vyas et al., ICLR 2025, arXiv 2409.11321;
    reference code nikhilvyas/SOAP soap.py), every step: this holds the eigenbasis refresh (power
    iteration + QR of L and R, re-sorting of the estimated eigenvalues, exp_avg_sq permuted to
    follow), which rotation equivariance cannot see. Square parameters and random gradients keep
    every factor full rank from the first step, so its eigenvectors are unique up to sign (which
    SOAP does not see); with these gradients the eigenvalue order changes at many refreshes."""
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
              precondition_frequency=precondition_frequency)
    rng = np.random.default_rng(15)
    x0 = {"w": rng.standard_normal((6, 6)), "v": rng.standard_normal((4, 4))}
    p = {n: v.copy() for n, v in x0.items()}
    ref = {n: v.copy() for n, v in x0.items()}
    opt, states = optim.SOAP(p, **kw), {n: {} for n in x0}
    for _ in range(13):                              # the first call only builds the bases
        grads = {n: rng.standard_normal(v.shape) for n, v in x0.items()}
        opt.step(grads)
        for n in x0:
            _soap_reference_step(ref[n], grads[n], states[n], **kw)
            assert np.linalg.norm(p[n] - ref[n]) <= 1e-10 * np.linalg.norm(ref[n] - x0[n]), n


def test_soap_state_bytes_formula():
    p = {"w": np.zeros((5, 3), np.float32), "b": np.zeros(4, np.float32),
         "conv": np.zeros((2, 3, 2), np.float32)}
    opt = optim.SOAP(p)
    assert opt.expected_state_bytes() == 4 * ((2 * 15 + 2 * (25 + 9)) + 2 * 4 + (2 * 12 + 2 * (4 + 9 + 4)))
    assert optim.SOAP(p, precondition_1d=True).expected_state_bytes() == \
        opt.expected_state_bytes() + 4 * 2 * 16
    opt.step({n: np.ones_like(x) for n, x in p.items()})
    opt.step({n: np.ones_like(x) for n, x in p.items()})
    assert opt.state_bytes() == opt.expected_state_bytes()


# ----------------------------------------------------------------------------- Anderson
def quadratic(d=10, kappa=100.0, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    h = (q * np.geomspace(1.0, kappa, d)) @ q.T
    return h, rng.standard_normal(d)


def iterations_to(tol, opt, p, h, b, cap=5000):
    for k in range(cap):
        g = h @ p["x"] - b
        if np.linalg.norm(g) <= tol * np.linalg.norm(b):
            return k
        opt.step({"x": g})
    return cap


def test_anderson_solves_a_quadratic_in_about_d_steps_where_gd_needs_hundreds():
    h, b = quadratic()
    lr = 1.0 / 100.0
    aa = iterations_to(1e-8, optim.Anderson(p := {"x": np.zeros(10)}, lr=lr, history_size=10,
                                             regularization=0.0), p, h, b)
    gd = iterations_to(1e-8, optim.GD(q := {"x": np.zeros(10)}, lr=lr), q, h, b)
    assert aa <= 10 + 2 and gd > 500, (aa, gd)


def test_anderson_without_history_is_gradient_descent_with_mixing():
    h, b = quadratic(d=4, kappa=10.0)
    p, q = {"x": np.ones(4)}, {"x": np.ones(4)}
    opt = optim.Anderson(p, lr=0.05, beta=0.5)
    optim.GD(q, lr=0.025).step({"x": h @ q["x"] - b})
    opt.step({"x": h @ p["x"] - b})
    np.testing.assert_allclose(p["x"], q["x"], rtol=1e-15)


def test_anderson_safeguard_rejects_a_point_whose_gradient_grew():
    p = {"x": np.zeros(3)}
    opt = optim.Anderson(p, lr=0.1)
    opt.step({"x": np.array([1.0, 0.0, 0.0])})
    x1 = p["x"].copy()
    opt.step({"x": np.array([0.5, 0.5, 0.0])})            # the first mixed step
    assert opt.global_state["groups"][0]["accelerated"]
    opt.step({"x": np.array([0.0, 0.0, 5.0])})            # grew: back to the plain step from x1
    np.testing.assert_allclose(p["x"], x1 - 0.1 * np.array([0.5, 0.5, 0.0]), rtol=1e-15)
    assert opt.restarts == 1 and opt.global_state["groups"][0]["count"] == 0
    x3 = p["x"].copy()
    opt.step({"x": np.array([0.0, 0.0, 5.0])})            # no history: a plain step, not judged
    np.testing.assert_allclose(p["x"], x3 - 0.1 * np.array([0.0, 0.0, 5.0]), rtol=1e-15)


def test_anderson_mixes_all_parameters_of_a_group_with_one_gamma():
    """Two parameters in one group behave as their concatenation, up to rounding: the split
    group sums two dot products where the whole one takes one, and the least-squares solve for
    gamma (condition number up to kappa^2) amplifies that ulp-level difference. Measured 1.3e-12
    after 15 steps on an AMD Zen 4 (AVX-512 BLAS paths; below 1e-12 elsewhere); a gamma per
    parameter (two groups) is off by a factor of ~14."""
    h, b = quadratic(d=6, kappa=50.0, seed=3)
    split = {"a": np.zeros(2), "c": np.zeros(4)}
    whole = {"x": np.zeros(6)}
    o1, o2 = optim.Anderson(split, lr=0.02, history_size=3), optim.Anderson(whole, lr=0.02, history_size=3)
    for _ in range(15):
        g = h @ np.concatenate([split["a"], split["c"]]) - b
        o1.step({"a": g[:2], "c": g[2:]})
        o2.step({"x": h @ whole["x"] - b})
    np.testing.assert_allclose(np.concatenate([split["a"], split["c"]]), whole["x"], rtol=1e-10)


# ----------------------------------------------------------------------------- all three
@pytest.mark.parametrize("name,kw", [
    ("shampoo", {"momentum": 0.9, "grafting": "adam", "precondition_frequency": 5, "beta2": 0.99}),
    ("soap", {"precondition_frequency": 5}), ("anderson", {"history_size": 4})])
def test_resume_after_12_of_25_steps_is_bit_identical(name, kw):
    shapes = {"w": (5, 3), "conv": (2, 3, 2), "b": (4,)}
    rng = np.random.default_rng(13)
    x0 = {n: rng.standard_normal(s) for n, s in shapes.items()}
    grads = [{n: rng.standard_normal(s) for n, s in shapes.items()} for _ in range(25)]
    full = {n: v.copy() for n, v in x0.items()}
    opt = optim.create(name, full, lr=1e-2, **kw)
    for g in grads:
        opt.step(g)
    part = {n: v.copy() for n, v in x0.items()}
    opt = optim.create(name, part, lr=1e-2, **kw)
    for g in grads[:12]:
        opt.step(g)
    saved = optim.flatten_state_dict(opt.state_dict())
    resumed = {n: v.copy() for n, v in part.items()}
    opt = optim.create(name, resumed, lr=1e-2, **kw)
    opt.load_state_dict(optim.unflatten_state_dict(saved))
    for g in grads[12:]:
        opt.step(g)
    for n in shapes:
        np.testing.assert_array_equal(resumed[n], full[n])


@pytest.mark.parametrize("name,kw,match", [
    ("shampoo", {"epsilon": -1.0}, "Shampoo epsilon must be >= 0, got -1.0"),
    ("shampoo", {"beta2": 0.0}, r"Shampoo beta2 must be in \(0, 1\]"),
    ("shampoo", {"momentum": 1.0}, r"Shampoo momentum must be in \[0, 1\)"),
    ("shampoo", {"precondition_frequency": 0}, "precondition_frequency must be an integer >= 1, got 0"),
    ("shampoo", {"grafting": "sgd"}, "grafting must be None or 'adam', got 'sgd'"),
    ("soap", {"betas": (0.9, 1.0)}, r"SOAP betas\[1\] must be in \[0, 1\), got 1.0"),
    ("soap", {"shampoo_beta": 1.5}, "SOAP shampoo_beta"),
    ("soap", {"eps": -1e-8}, "SOAP eps must be >= 0"),
    ("soap", {"max_precond_dim": 0}, "max_precond_dim must be an integer >= 1"),
    ("anderson", {"history_size": 0}, "Anderson history_size must be an integer >= 1, got 0"),
    ("anderson", {"beta": 0.0}, r"Anderson beta \(mixing\) must be in \(0, 1\]"),
    ("anderson", {"regularization": -1.0}, "Anderson regularization must be >= 0"),
])
def test_bad_options_are_refused_naming_them(name, kw, match):
    with pytest.raises(ValueError, match=match):
        optim.create(name, {"w": np.zeros((2, 2))}, **kw)
