"""Subspace methods (optim/subspace.py): GaLore, GoLore, Flora, RSO on small arrays -- the
reduction of full-rank GaLore to SGD, the side rule, the bases' laws (GoLore's Haar P, Flora's
Gaussian compression), RSO's inner step, the state bytes against the formulas, option errors,
roles and splits -- and a tiny GPT trained through Trainer, resumed bit for bit mid-period."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optim
from models.gpt import GPT, GPTConfig
from models.training import Trainer, lm_loss
from optim.subspace import gaussian_projection, stiefel_uniform
from optim_helpers import assert_resumes_mid_period, copy_params, grads_at

TALL, WIDE = (8, 5), (5, 8)


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"tall": rng.standard_normal(TALL).astype(dtype),
            "wide": rng.standard_normal(WIDE).astype(dtype),
            "bias": rng.standard_normal(5).astype(dtype)}


def span_projector(P, side):
    """The orthogonal projector onto the subspace a basis spans (columns for "left", rows for
    "right"): equal for two bases of one subspace, whatever their signs."""
    Q = P if side == "left" else P.T
    return Q @ np.linalg.pinv(Q)


# ----------------------------------------------------------------------------- GaLore
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_full_rank_galore_with_sgd_inside_is_sgd_to_float64_rounding(weight_decay):
    """rank = min(m, n), scale 1, inner SGD: P is square and orthogonal, so G P^T P = G -- but
    only to rounding (P^T P = I to ~1e-16; SVD's P is not the identity), hence not bit-identical.
    Refreshes every 2 steps, so a change of basis happens in between."""
    p, q = make_params(), make_params()
    galore = optim.create("galore", p, lr=0.05, weight_decay=weight_decay, rank=5, scale=1.0,
                          update_proj_gap=2, inner="sgd")
    sgd = optim.create("sgd", q, lr=0.05, weight_decay=weight_decay)
    for t in range(5):
        galore.step(grads_at(p, t))
        sgd.step(grads_at(q, t))
    for n in p:
        np.testing.assert_allclose(p[n], q[n], rtol=1e-13, atol=1e-14)
    assert np.array_equal(p["bias"], q["bias"])         # not projected: the same SGD step
    assert not np.array_equal(p["tall"], q["tall"])     # rounding of the projection is there


@pytest.mark.parametrize("proj,sides", [("std", ("right", "left")), ("reverse_std", ("left", "right")),
                                        ("left", ("left", "left")), ("right", ("right", "right"))])
def test_side_rule_on_tall_and_wide_matrices(proj, sides):
    """std: the basis reduces the smaller side (tall 8x5: P is r x 5, state 8 x r; wide 5x8:
    P is 5 x r, state r x 8); the basis spans the gradient's top-r singular vectors."""
    p = make_params()
    opt = optim.create("galore", p, lr=1e-2, rank=2, proj=proj)
    g = grads_at(p, 0)
    opt.step(g)
    for name, side in zip(("tall", "wide"), sides):
        m, n = p[name].shape
        P = opt.basis(name)
        assert P.shape == ((2, n) if side == "right" else (m, 2)), (name, side)
        assert opt.state[name]["exp_avg"].shape == ((m, 2) if side == "right" else (2, n))
        U, _, Vh = np.linalg.svd(g[name])
        top = Vh[:2] if side == "right" else U[:, :2]
        np.testing.assert_allclose(span_projector(P, side), span_projector(top, side), atol=1e-12)


def test_one_galore_step_is_w_minus_lr_scale_times_the_projected_back_update():
    p = make_params()
    w0 = p["wide"].copy()
    opt = optim.create("galore", p, lr=0.1, rank=3, scale=0.25, inner="sgd")
    g = grads_at(p, 0)
    opt.step(g)
    P = opt.basis("wide")                                   # wide: left side, 5 x 3
    np.testing.assert_allclose(p["wide"], w0 - 0.1 * 0.25 * P @ (P.T @ g["wide"]), rtol=0, atol=1e-15)


def test_the_basis_is_refreshed_every_update_proj_gap_steps_only():
    p = make_params()
    opt = optim.create("galore", p, lr=1e-2, rank=2, update_proj_gap=3)
    bases = []
    for t in range(7):
        opt.step(grads_at(p, t))
        bases.append(opt.basis("tall").copy())
    same = [np.array_equal(bases[t], bases[t - 1]) for t in range(1, 7)]
    assert same == [True, True, False, True, True, False]   # new P at steps 3 and 6


def test_reproject_maps_the_first_moment_into_the_new_basis():
    """At a refresh, m <- b1 * (m P_old P_new^T) + (1 - b1) R_new (right side); v is kept."""
    p = make_params()
    opt = optim.create("golore", p, lr=1e-2, rank=2, update_proj_gap=2, reproject=True,
                       inner_kwargs={"betas": (0.9, 0.999)}, seed=3)
    for t in range(2):
        opt.step(grads_at(p, t))
    m_old, v_old = opt.state["tall"]["exp_avg"].copy(), opt.state["tall"]["exp_avg_sq"].copy()
    P_old = opt.basis("tall").copy()
    g = grads_at(p, 2)
    opt.step(g)
    P_new = opt.basis("tall")
    R = g["tall"] @ P_new.T
    np.testing.assert_allclose(opt.state["tall"]["exp_avg"], 0.9 * m_old @ (P_old @ P_new.T) + 0.1 * R,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(opt.state["tall"]["exp_avg_sq"], 0.999 * v_old + 0.001 * R * R,
                               rtol=1e-12, atol=1e-14)


def test_galore_with_adamw_inside_and_weight_decay_equals_the_documented_rule_at_every_step():
    """GaLore (Zhao et al., ICML 2024, arXiv 2403.03507) with AdamW inside, against a float64
    reference, 8 steps, T = 3: P from the SVD of G at steps 0, 3, 6 (tall: right side, wide:
    left), Adam's moments on R kept when P changes, W <- W - lr*alpha*back(N), *then* the
    decoupled decay W <- W - lr*wd*W; the bias by plain AdamW (decay first). To 1e-12."""
    lr, wd, alpha, T, r, (b1, b2), eps = 0.05, 0.1, 0.25, 3, 2, (0.9, 0.999), 1e-8
    p, q = make_params(), make_params()
    opt = optim.create("galore", p, lr=lr, weight_decay=wd, rank=r, update_proj_gap=T, scale=alpha)
    ref = {n: {"m": 0.0, "v": 0.0} for n in q}
    for t in range(8):
        opt.step(grads_at(p, t))
        g, k = grads_at(q, t), t + 1
        for n, w in q.items():
            s, G, right = ref[n], g[n], w.ndim == 2 and w.shape[0] >= w.shape[1]
            if w.ndim == 2 and t % T == 0:
                U, _, Vh = np.linalg.svd(G, full_matrices=False)
                s["P"] = Vh[:r] if right else U[:, :r]
            R = G if w.ndim == 1 else G @ s["P"].T if right else s["P"].T @ G
            s["m"] = b1 * s["m"] + (1 - b1) * R
            s["v"] = b2 * s["v"] + (1 - b2) * R * R
            N = (s["m"] / (1 - b1 ** k)) / (np.sqrt(s["v"] / (1 - b2 ** k)) + eps)
            if w.ndim == 2:
                w -= lr * alpha * (N @ s["P"] if right else s["P"] @ N)
                w -= lr * wd * w
            else:
                w *= 1 - lr * wd
                w -= lr * N
        for n in p:
            np.testing.assert_allclose(p[n], q[n], rtol=1e-12, atol=1e-14, err_msg=f"{n}, step {t}")


# ----------------------------------------------------------------------------- GoLore
@settings(max_examples=20, deadline=None)
@given(dim=st.integers(2, 12), data=st.data())
def test_stiefel_uniform_is_orthonormal(dim, data):
    r = data.draw(st.integers(1, dim))
    Q = stiefel_uniform(np.random.default_rng(data.draw(st.integers(0, 2**31))), dim, r)
    assert Q.shape == (dim, r)
    np.testing.assert_allclose(Q.T @ Q, np.eye(r), atol=1e-12)


def test_stiefel_uniform_has_mean_zero_and_second_moment_r_over_m():
    """E[Q] = 0 (LAPACK's unsigned Q has E[Q_11] ~ -0.34 here: the sign fix matters) and
    E[Q Q^T] = (r/m) I, within 6 standard errors."""
    m, r, S = 6, 2, 4000
    rng = np.random.default_rng(0)
    Qs = np.array([stiefel_uniform(rng, m, r) for _ in range(S)])
    assert np.all(np.abs(Qs.mean(0)) <= 6 * Qs.std(0) / math.sqrt(S))
    outer = np.einsum("sir,sjr->sij", Qs, Qs)
    assert np.all(np.abs(outer.mean(0) - (r / m) * np.eye(m)) <= 6 * outer.std(0) / math.sqrt(S) + 1e-12)


def test_gaussian_projection_has_second_moment_identity():
    """N(0, 1/r) entries: E[P P^T] = I for P of shape (m, r), within 6 standard errors."""
    m, r, S = 5, 3, 4000
    rng = np.random.default_rng(1)
    outer = np.array([P @ P.T for P in (gaussian_projection(rng, (m, r), r) for _ in range(S))])
    assert np.all(np.abs(outer.mean(0) - np.eye(m)) <= 6 * outer.std(0) / math.sqrt(S))


def test_golore_bases_are_orthonormal_keyed_and_new_every_period():
    p = make_params()
    opt = optim.create("golore", p, lr=1e-2, rank=2, update_proj_gap=2, seed=7)
    seen = []
    for t in range(4):
        opt.step(grads_at(p, t))
        seen.append(opt.basis("wide").copy())
    np.testing.assert_allclose(seen[0].T @ seen[0], np.eye(2), atol=1e-12)      # wide: 5 x 2
    assert np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
    again = optim.create("golore", make_params(), lr=1e-2, rank=2, update_proj_gap=2, seed=7)
    again.step(grads_at(make_params(seed=1), 0))            # other weights, other gradient: same P
    assert np.array_equal(again.basis("wide"), seen[0])


def test_golore_hybrid_uses_svd_bases_first_then_random_ones():
    p, q = make_params(), make_params()
    hybrid = optim.create("golore", p, lr=1e-2, rank=2, update_proj_gap=1, rand_ratio=0.5,
                          total_steps=4, seed=1)
    galore = optim.create("galore", q, lr=1e-2, rank=2, update_proj_gap=1)
    for t in range(4):
        hybrid.step(grads_at(p, t))
        galore.step(grads_at(q, t))
        assert np.array_equal(hybrid.basis("tall"), galore.basis("tall")) == (t < 2), t


# ----------------------------------------------------------------------------- Flora
def test_flora_compression_is_unbiased_with_error_sqrt_m_over_r_s():
    """mean over S seeds of A^T A X -> X (A = P^T, r x m, N(0, 1/r) entries), relative error
    about sqrt(m / (r S)): between half and twice that for S = 16 and 256."""
    p = {"w": np.zeros((20, 40))}                           # wide: P is 20 x r
    opt = optim.create("flora", p, rank=4, seed=0)
    X = np.random.default_rng(1).standard_normal((20, 40))
    errors = {}
    for S in (16, 256):
        mean = sum(P @ (P.T @ X) for P in (opt.basis("w", k) for k in range(S))) / S
        errors[S] = np.linalg.norm(mean - X) / np.linalg.norm(X)
        assert 0.5 <= errors[S] / math.sqrt(20 / (4 * S)) <= 2.0, (S, errors[S])
    assert errors[256] < errors[16] / 3


def test_flora_first_step_is_adafactor_and_its_momentum_is_the_compressed_update():
    """t = 1: beta2_t = 0, so row/col are the means of G^2 + eps; u_hat = G / sqrt(V_hat), the
    momentum starts at C = (1 - b1) * down(u_hat) and the step is lr * (1 - b1) * u_hat clipped."""
    p = {"w": np.random.default_rng(0).standard_normal((4, 6))}
    w0 = p["w"].copy()
    g = np.random.default_rng(1).standard_normal((4, 6))
    opt = optim.create("flora", p, lr=0.1, rank=2, beta1=0.9, clip_threshold=10.0, seed=2)
    opt.step({"w": g})
    S = g * g + 1e-30
    row, col = S.mean(1), S.mean(0)
    u_hat = g / np.sqrt(np.outer(row, col) / row.mean())
    P = opt.basis("w", 0)                                   # wide 4x6: left side, 4 x 2
    np.testing.assert_allclose(opt.state["w"]["exp_avg"], 0.1 * P.T @ u_hat, rtol=1e-12)
    u = 0.1 * u_hat
    u /= max(1.0, np.sqrt(np.mean(u * u)) / 10.0)
    np.testing.assert_allclose(p["w"], w0 - 0.1 * u, rtol=1e-12)


def test_flora_moves_its_momentum_to_the_new_basis_every_update_proj_gap_steps():
    """With beta1 -> the transfer C <- P_new^T (P_old C) at step kappa, before the new update."""
    p = {"w": np.random.default_rng(0).standard_normal((4, 6))}
    opt = optim.create("flora", p, lr=0.01, rank=2, beta1=0.5, update_proj_gap=2, seed=3)
    opt.step({"w": np.ones((4, 6))})
    C1 = opt.state["w"]["exp_avg"].copy()
    P0, P1 = opt.basis("w", 0), opt.basis("w", 1)
    g = np.random.default_rng(4).standard_normal((4, 6))
    st = opt.state["w"]
    row, col = st["exp_avg_sq_row"].copy(), st["exp_avg_sq_col"].copy()
    opt.step({"w": g})
    b2 = 1 - 2 ** -0.8
    S = g * g + 1e-30
    row, col = b2 * row + (1 - b2) * S.mean(1), b2 * col + (1 - b2) * S.mean(0)
    u_hat = g / np.sqrt(np.outer(row, col) / row.mean())
    expected = 0.5 * (P1.T @ (P0 @ C1)) + 0.5 * (P1.T @ u_hat)
    np.testing.assert_allclose(opt.state["w"]["exp_avg"], expected, rtol=1e-12)


def test_flora_clips_the_update_after_the_momentum_when_the_threshold_binds():
    """clip_threshold d = 0.05 < RMS(u) at every step (checked): u_hat enters the momentum
    unclipped, u = (1-b1)*u_hat + b1*up(C) (full M for the bias) is divided by RMS(u)/d, and
    W <- W - lr*u -- the documented rule, as flora_step_. 5 steps, a transfer at step 2, 1e-12."""
    lr, b1, d, kappa, r = 0.1, 0.9, 0.05, 2, 2
    p, q = make_params(), make_params()
    opt = optim.create("flora", p, lr=lr, rank=r, beta1=b1, clip_threshold=d, update_proj_gap=kappa,
                       seed=5)
    ref = {n: {} for n in q}
    for t in range(1, 6):
        opt.step(grads_at(p, t))
        g, b2 = grads_at(q, t), 1 - t ** -0.8
        for n, w in q.items():
            s, G = ref[n], g[n]
            S = G * G + 1e-30
            if w.ndim == 2:
                right = w.shape[0] >= w.shape[1]
                up = (lambda C, P: C @ P) if right else (lambda C, P: P @ C)
                down = (lambda X, P: X @ P.T) if right else (lambda X, P: P.T @ X)
                s["row"] = b2 * s.get("row", 0.0) + (1 - b2) * S.mean(1)
                s["col"] = b2 * s.get("col", 0.0) + (1 - b2) * S.mean(0)
                u_hat = G / np.sqrt(np.outer(s["row"], s["col"]) / s["row"].mean())
                P = opt.basis(n, (t - 1) // kappa)
                C = s.get("C", np.zeros((w.shape[0], r) if right else (r, w.shape[1])))
                u = (1 - b1) * u_hat + b1 * up(C, P)
                if t % kappa == 0:
                    C, P = down(up(C, P), opt.basis(n, t // kappa)), opt.basis(n, t // kappa)
                s["C"] = b1 * C + (1 - b1) * down(u_hat, P)
            else:
                s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * S
                s["M"] = u = b1 * s.get("M", 0.0) + (1 - b1) * G / np.sqrt(s["v"])
            rms = np.sqrt(np.mean(u * u))
            assert rms > d, (n, t)                          # the clip binds
            w -= lr * u / (rms / d)
        for n in p:
            np.testing.assert_allclose(p[n], q[n], rtol=1e-12, atol=1e-14, err_msg=f"{n}, step {t}")


# ----------------------------------------------------------------------------- RSO
@pytest.mark.parametrize("projection", ["gaussian", "haar"])
def test_one_inner_gd_step_of_rso_from_b_zero_is_theta_minus_eta_p_pt_grad(projection):
    p = make_params()
    theta = copy_params(p)
    eta = 0.05
    opt = optim.create("rso", p, lr=eta, rank=2, inner="sgd", projection=projection, eta=1.0, seed=4)
    P = {n: opt.basis(n) for n in ("tall", "wide")}
    g = grads_at(p, 0)
    opt.step(g)
    np.testing.assert_allclose(p["wide"], theta["wide"] - eta * P["wide"] @ P["wide"].T @ g["wide"],
                               rtol=0, atol=1e-15)          # wide: left side, P is 5 x 2
    np.testing.assert_allclose(p["tall"], theta["tall"] - eta * g["tall"] @ P["tall"].T @ P["tall"],
                               rtol=0, atol=1e-15)          # tall: right side, P is 2 x 5
    np.testing.assert_array_equal(p["bias"], theta["bias"] - eta * g["bias"])


def test_rso_with_a_closure_solves_one_subproblem_and_stays_in_its_subspace():
    """step(closure) runs update_proj_gap inner steps on f(W) = 0.5 ||W - T||^2 + the proximal
    term: W moves inside span(P) (left side: W - W_k = P B), f decreases, and the next call
    draws a new P and starts from B = 0 with fresh inner state."""
    target = np.random.default_rng(5).standard_normal(WIDE)
    p = {"wide": np.zeros(WIDE)}
    opt = optim.create("rso", p, lr=0.1, rank=2, update_proj_gap=5, eta=10.0, inner="adam", seed=6)

    def closure():
        return 0.5 * float(np.sum((p["wide"] - target) ** 2)), {"wide": p["wide"] - target}

    P0 = opt.basis("wide")
    f0 = opt.step(closure=closure)
    assert opt.global_state["step"] == 5 and opt.period() == 1
    B = opt.state["wide"]["B"]
    np.testing.assert_allclose(p["wide"], P0 @ B, atol=1e-14)
    assert closure()[0] < f0
    opt.step(closure=closure)
    assert opt.state["wide"]["period"] == 1 and opt.state["wide"]["step"] == 5   # Adam restarted
    assert not np.array_equal(opt.basis("wide", 1), P0)


def test_rso_steps_one_inner_step_per_call_without_a_closure():
    p = make_params()
    opt = optim.create("rso", p, lr=1e-2, rank=2, update_proj_gap=3, seed=0)
    periods = []
    for t in range(7):
        opt.step(grads_at(p, t))
        periods.append(opt.state["tall"]["period"])
    assert periods == [0, 0, 0, 1, 1, 1, 2]


def test_rso_inner_steps_from_a_nonzero_b_follow_the_proximal_gradient():
    """Inner SGD (lr eta_in), K = 3 inner steps per subproblem, eta = 0.2: each moves B by
    -eta_in * (G P^T + B/eta) (wide, left side: P^T G + B/eta) and W by that move times P, so
    from the second inner step on the proximal term pulls B toward 0 (a sizeable pull, checked);
    step 3 starts a new subproblem, new P, B = 0. W and B agree with the formula to 1e-12."""
    eta_in, eta, K = 0.1, 0.2, 3
    p, q = make_params(), make_params()
    opt = optim.create("rso", p, lr=eta_in, rank=2, update_proj_gap=K, eta=eta, inner="sgd", seed=4)
    B, pull = {}, 0.0
    for t in range(5):
        opt.step(grads_at(p, t))
        g = grads_at(q, t)
        q["bias"] -= eta_in * g["bias"]
        for n, right in (("tall", True), ("wide", False)):
            P = opt.basis(n, t // K)
            b = 0.0 if t % K == 0 else B[n]
            move = -eta_in * ((g[n] @ P.T if right else P.T @ g[n]) + b / eta)
            B[n] = b + move
            q[n] += move @ P if right else P @ move
            pull = max(pull, float(np.max(np.abs(eta_in * b / eta))))
            np.testing.assert_allclose(opt.state[n]["B"], B[n], rtol=1e-12, atol=1e-14)
        for n in p:
            np.testing.assert_allclose(p[n], q[n], rtol=1e-12, atol=1e-14, err_msg=f"{n}, step {t}")
    assert pull > 1e-2


# ----------------------------------------------------------------------------- memory
def _adam_bytes(shape, r, itemsize):
    m, n = shape
    return (r * min(m, n) + 2 * r * max(m, n)) * itemsize


@pytest.mark.parametrize("name", ["galore", "golore"])
def test_galore_state_bytes_equal_r_min_plus_2r_max_per_matrix_with_adam_inside(name):
    p = make_params(np.float32)
    opt = optim.create(name, p, lr=1e-3, rank=3)
    expected = _adam_bytes(TALL, 3, 4) + _adam_bytes(WIDE, 3, 4) + 2 * p["bias"].nbytes
    assert opt.expected_state_bytes() == expected
    opt.step(grads_at(p, 0))
    assert opt.state_bytes() == expected


@pytest.mark.parametrize("name", ["galore", "golore", "rso"])
def test_what_the_optimizer_keeps_between_steps_is_its_state_bytes(name):
    """Traced by tracemalloc from before the optimizer is built to after its second step: the
    memory it keeps is state_bytes() and a little bookkeeping. GaLore's low-rank array (r*max per
    matrix, 128 KiB here) was kept for good and counted nowhere; it now lives during a step."""
    import tracemalloc

    rng = np.random.default_rng(0)
    p = {"w": rng.standard_normal((1024, 256)).astype(np.float32)}
    grads = [{"w": rng.standard_normal((1024, 256)).astype(np.float32)} for _ in range(2)]
    warm = {"w": p["w"].copy()}                  # first calls: kernels compiled, LAPACK loaded
    optim.create(name, warm, lr=1e-3, rank=32, roles={"w": "mlp_in"}).step(grads[0])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        opt = optim.create(name, p, lr=1e-3, rank=32, roles={"w": "mlp_in"})
        for g in grads:
            opt.step(g)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert opt.state_bytes() == opt.expected_state_bytes()
    assert opt.state_bytes() <= kept <= opt.state_bytes() + 32 * 1024, (kept, opt.state_bytes())


def test_flora_and_rso_state_bytes_equal_their_formulas():
    p = make_params(np.float32)
    flora = optim.create("flora", p, lr=1e-3, rank=3)
    # hidden matrix: C (r * max) + row (m) + col (n); vector: momentum + second moment
    expected = sum(3 * max(s) + sum(s) for s in (TALL, WIDE)) * 4 + 2 * p["bias"].nbytes
    flora.step(grads_at(p, 0))
    assert flora.expected_state_bytes() == flora.state_bytes() == expected
    rso = optim.create("rso", p, lr=1e-3, rank=3)
    rso.step(grads_at(p, 0))                                 # B + Adam's m, v of B: 3 r max
    assert rso.expected_state_bytes() == rso.state_bytes() == \
        sum(3 * 3 * max(s) for s in (TALL, WIDE)) * 4 + 2 * p["bias"].nbytes


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("name", ["galore", "golore", "flora", "rso"])
@pytest.mark.parametrize("kw,pattern", [
    ({"rank": 0}, "rank must be an integer >= 1.*got 0"),
    ({"rank": 6}, r"rank=6 is larger than min\(m, n\) = 5 of the 8x5 matrix 'tall'"),
    ({"rank": 2.5}, "rank must be an integer.*2.5"),
    ({"update_proj_gap": 0}, "update_proj_gap must be an integer >= 1, got 0"),
])
def test_bad_rank_and_gap_are_refused_naming_option_and_value(name, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.create(name, make_params(), **kw)


@pytest.mark.parametrize("name,kw,pattern", [
    ("galore", {"proj": "diagonal"}, "proj must be one of.*'diagonal'"),
    ("galore", {"inner": "adamx"}, "inner='adamx' is not a registered optimizer"),
    ("golore", {"inner": "mezo"}, "inner='mezo' is zeroth-order"),
    ("galore", {"inner": "agd"}, "inner='agd' keeps its iterate"),
    ("galore", {"inner": "lisa"}, "inner='lisa' is itself a subspace or block method"),
    ("rso", {"inner": "galore"}, "inner='galore' is itself"),
    ("galore", {"inner_kwargs": {"lr": 0.1}}, r"inner_kwargs must not set \['lr'\]"),
    ("galore", {"scale": 0}, "scale.*got 0"),
    ("golore", {"rand_ratio": 0.5}, "rand_ratio=0.5 needs total_steps"),
    ("golore", {"rand_ratio": 2}, r"rand_ratio.*\[0, 1\], got 2"),
    ("rso", {"projection": "sparse"}, "projection must be one of.*'sparse'"),
    ("rso", {"eta": 0}, "eta.*got 0"),
    ("flora", {"decay_rate": 0.5}, "decay_rate.*got 0.5"),
    ("golore", {"seed": -1}, "seed must be an int >= 0, got -1"),
])
def test_bad_options_are_refused_naming_them(name, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.create(name, make_params(), **kw)


def test_inner_options_go_to_the_inner_optimizer():
    p = make_params()
    opt = optim.create("galore", p, lr=1e-2, rank=2, inner="sgd", inner_kwargs={"momentum": 0.9})
    opt.step(grads_at(p, 0))
    assert opt.state["tall"]["momentum_buffer"].shape == (8, 2)
    assert opt.state["bias"]["momentum_buffer"].shape == (5,)
    assert optim.accepts("galore") >= {"rank", "update_proj_gap", "scale", "inner", "inner_kwargs",
                                       "proj", "roles", "splits", "reproject"}


def _inner_is_accepted(name):
    try:
        optim.create("galore", {"w": np.zeros((6, 4))}, rank=4, inner=name)
    except ValueError:
        return False
    return True


ACCEPTED_INNER = [n for n in sorted(set(optim.available())) if _inner_is_accepted(n)]


def test_the_usual_inner_optimizers_are_accepted():
    assert {"sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "lion", "muon", "ista"} <= set(ACCEPTED_INNER)


@pytest.mark.parametrize("name", ACCEPTED_INNER)
def test_every_inner_optimizer_galore_accepts_runs_as_it_runs_alone(name):
    """A first gradient with a signed identity for its SVD basis, full rank, scale 1, the basis
    kept: GaLore(inner=X) must step W exactly as X does. An optimizer whose step reads its
    parameter would read GaLore's zero low-rank array instead: it must be refused (below)."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((6, 4)) * 0.7
    g0 = np.zeros((6, 4))
    g0[np.arange(4), np.arange(4)] = [4.0, 3.0, 2.0, 1.0]
    grads = [g0] + [rng.standard_normal((6, 4)) for _ in range(5)]
    no_decay = {"weight_decay": 0.0} if "weight_decay" in optim.accepts(name) else {}
    alone, inside = {"w": w0.copy()}, {"w": w0.copy()}
    plain = optim.create(name, alone, lr=1e-2, **no_decay)
    galore = optim.create("galore", inside, lr=1e-2, weight_decay=0.0, rank=4, scale=1.0, inner=name,
                          update_proj_gap=10**6)
    for g in grads:
        plain.step({"w": g.copy()})
        galore.step({"w": g.copy()})
    np.testing.assert_allclose(inside["w"], alone["w"], rtol=0, atol=1e-12 * np.abs(alone["w"] - w0).max())


@pytest.mark.parametrize("method", ["galore", "golore", "rso"])
@pytest.mark.parametrize("inner,kw,pattern", [
    ("adafactor", {}, "computes its step from its parameters' values"),
    ("anderson", {}, "computes its step from its parameters' values"),
    ("asgd", {}, "computes its step from its parameters' values"),
    ("ista", {"prox": optim.prox.L1(0.1)}, "computes its step from its parameters' values"),
    ("lbfgs", {}, r"several times per step \(step\(closure\)\)"),
])
def test_inner_optimizers_that_read_their_parameters_or_need_a_closure_are_refused(method, inner, kw,
                                                                                   pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.create(method, make_params(), rank=2, inner=inner, inner_kwargs=kw or None)


# ----------------------------------------------------------------------------- roles and splits
CFG = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)


def _model(seed=0):
    return GPT(GPTConfig(**CFG, dropout=0.0), seed=seed)


def _arrays(model):
    return {n: p.data for n, p in model.named_parameters()}


def test_with_roles_and_splits_only_the_hidden_matrices_are_projected():
    model = _model()
    opt = optim.create("galore", _arrays(model), lr=1e-3, rank=4, roles=model.param_roles(),
                       splits=model.param_splits())
    projected = set(opt.matrices())
    assert "h.0.attn.c_attn.weight:q" in projected and "h.1.mlp.c_proj.weight" in projected
    assert "h.0.attn.c_attn.weight" not in opt._units              # seen as its three parts
    assert not any(n.startswith(("wte", "wpe", "ln_f")) or "ln_" in n for n in projected)
    assert len(projected) == 2 * 6                                 # q, k, v, out, mlp in, mlp out
    without = optim.create("galore", _arrays(model), lr=1e-3, rank=4)
    assert {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight"} <= set(without.matrices())
    roles = model.param_roles()
    del roles["wte.weight"]
    with pytest.raises(ValueError, match=r"no role for parameter\(s\) \['wte.weight'\]"):
        optim.create("galore", _arrays(model), roles=roles)


# ----------------------------------------------------------------------------- through Trainer
IDS = (np.cumsum(np.random.default_rng(0).choice([1, 1, 1, 2], size=4000)) % CFG["vocab_size"]).astype(np.int64)


def batches(rng, B=8, T=CFG["block_size"]):
    starts = rng.integers(0, len(IDS) - T - 1, size=B)
    return (np.stack([IDS[s:s + T] for s in starts]), np.stack([IDS[s + 1:s + T + 1] for s in starts]))


VAL = [batches(np.random.default_rng(100 + i)) for i in range(2)]

METHODS = {
    "galore": dict(rank=4, update_proj_gap=3, scale=0.25, lr=1e-2, weight_decay=0.1),
    "golore": dict(rank=4, update_proj_gap=3, scale=0.25, lr=1e-2, reproject=True),
    "flora": dict(rank=4, update_proj_gap=3, lr=1e-2),
    "rso": dict(rank=4, update_proj_gap=3, lr=1e-2, eta=10.0),
}


def _opt(name, model, **kw):
    return optim.create(name, _arrays(model), roles=model.param_roles(), splits=model.param_splits(),
                        **{**METHODS[name], **kw})


def _trainer(model, opt, steps, **kw):
    kw = {"schedule": "cosine", "schedule_kwargs": {"warmup_steps": 2, "min_ratio": 0.1},
          "eval_batches": VAL, "eval_every": 5, "progress": False, "seed": 3, **kw}
    return Trainer(model, lm_loss, opt, batches, steps=steps, **kw)


@pytest.mark.parametrize("name", list(METHODS))
def test_checkpoint_in_the_middle_of_a_period_resumes_bit_identically(name, tmp_path):
    seeded = {"seed": 99} if "seed" in optim.accepts(name) else {}
    full = assert_resumes_mid_period(_model, lambda model, **kw: _opt(name, model, **kw), _trainer, tmp_path,
                                     other_seeds=seeded)
    assert full.history["train_loss"][-1] < full.history["train_loss"][0]


def test_a_checkpoint_of_another_method_or_rank_is_refused():
    model = _model()
    opt = _opt("galore", model)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="not a 'golore' state"):
        _opt("golore", model).load_state_dict(sd)
    with pytest.raises(ValueError, match="saved with ranks"):
        _opt("galore", model, rank=2).load_state_dict(sd)
