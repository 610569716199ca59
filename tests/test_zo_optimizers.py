"""ZO-SGD, MeZO and LoZO (optim/zo): seed replay, restore after ±ε, expectation of the update
on quadratics, memory (tracemalloc), loss decrease on small models, checkpoints, errors."""
import tracemalloc

import numpy as np
import pytest

import optim
from optim.zo import LoZO, MeZO, ZOSGD

K = 5.0  # standard errors allowed per coordinate (see test_zo_estimators.py)


def make_params(dtype=np.float64, seed=0, scale=0.02):
    rng = np.random.default_rng(seed)
    shapes = {"w1": (5, 4), "b1": (4,), "w2": (4, 3), "b2": (3,)}
    return {n: (scale * rng.standard_normal(s)).astype(dtype) for n, s in shapes.items()}


def small_params(seed=0):
    """One matrix and one vector: enough to exercise both LoZO branches, cheap to step often."""
    rng = np.random.default_rng(seed)
    return {"w": 0.1 * rng.standard_normal((4, 3)), "b": 0.1 * rng.standard_normal(3)}


def quad_closure(P, seed=0):
    """f(θ) = Σ_n ½·a_n·‖θ_n − c_n‖² ; gradient a_n·(θ_n − c_n)."""
    rng = np.random.default_rng(seed + 100)
    a = {n: 0.5 + rng.random() for n in P}
    c = {n: rng.standard_normal(p.shape) for n, p in P.items()}

    def f():
        return sum(0.5 * a[n] * float(np.sum((P[n] - c[n]) ** 2)) for n in P)

    def grad():
        return {n: a[n] * (P[n] - c[n]) for n in P}
    return f, grad


# ----------------------------------------------------------------------------- registry / errors
def test_registered_and_created_by_name():
    P = make_params()
    for name, cls in [("mezo", MeZO), ("lozo", LoZO), ("zo-sgd", ZOSGD)]:
        assert name in optim.available()
        opt = optim.create(name, P, lr=1e-3, eps=1e-3, seed=0)
        assert type(opt) is cls and opt.global_state["seed"] == 0


def test_step_rejects_grads_and_tuple_closures_and_bad_hyperparameters():
    P = make_params()
    opt = optim.create("mezo", P, lr=1e-3, eps=1e-3, seed=0)
    with pytest.raises(TypeError, match="zeroth-order"):
        opt.step({n: np.zeros_like(p) for n, p in P.items()})
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    before = {n: p.copy() for n, p in P.items()}
    with pytest.raises(TypeError, match="only the loss"):
        opt.step(closure=lambda: (1.0, {}))
    for n in P:   # restored although the closure failed
        np.testing.assert_allclose(P[n], before[n], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="eps"):
        optim.create("mezo", P, eps=0.0)
    with pytest.raises(ValueError, match="rank"):
        optim.create("lozo", P, rank=0)
    with pytest.raises(ValueError, match="direction"):
        optim.create("zo-sgd", P, direction="uniform")
    with pytest.raises(ValueError, match="C-contiguous"):
        optim.create("lozo", {"w": np.zeros((4, 3)).T})


def test_nonfinite_loss_restores_then_raises_or_skips():
    P = make_params()
    before = {n: p.copy() for n, p in P.items()}
    opt = optim.create("mezo", P, lr=1e-3, eps=1e-3, seed=0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* in its step 1 \(parameters were restored\)"):
        opt.step(closure=lambda: float("nan"))
    skip = optim.create("lozo", P, lr=1e-3, eps=1e-3, seed=0, nonfinite="skip")
    skip.step(closure=lambda: float("inf"))
    assert skip.skipped_steps == 1 and skip.global_state["step"] == 1
    for n in P:
        np.testing.assert_allclose(P[n], before[n], rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- seed replay
def _capture(P):
    seen = []

    def closure():
        seen.append({n: p.copy() for n, p in P.items()})
        return float(sum(np.sum(p) for p in P.values()))
    return closure, seen


def test_mezo_replay_reproduces_z_bit_for_bit():
    # From θ = 0 the perturbed point is exactly fl(ε·z): it shows the z that was used.
    for dtype in (np.float64, np.float32):
        P = {n: np.zeros_like(p) for n, p in make_params(dtype).items()}
        opt = MeZO(P, lr=0.5, eps=1e-3, seed=7)
        closure, seen = _capture(P)
        opt.step(closure=closure)
        c = opt.global_state["c"]
        for n, p in P.items():
            z = opt.z(n, t=0)
            assert z.dtype == dtype
            np.testing.assert_array_equal(z, opt.z(n, t=0))                 # replay
            np.testing.assert_array_equal(seen[0][n], z * dtype(1e-3))      # θ + εz
            np.testing.assert_array_equal(seen[1][n], z * dtype(-1e-3))     # θ − εz
            # restore is exact from 0, and the update regenerated the same z
            np.testing.assert_array_equal(p, z * dtype(-0.5 * c))
        assert not np.array_equal(opt.z("w1", 0), opt.z("w1", 1))          # fresh z per step
        assert not np.array_equal(opt.z("w1", 0), MeZO(P, seed=8).z("w1", 0))


def test_lozo_replay_reproduces_U_and_V_across_resample_steps():
    # ν = 2: steps 0 and 2 resample V (drawing V must not shift U's stream; optim/zo/base.py).
    P = {n: np.zeros_like(p) for n, p in make_params().items()}
    opt = LoZO(P, lr=0.5, eps=1e-3, rank=2, step_interval=2, seed=3)
    Vs = []
    for t in range(4):
        for p in P.values():
            p[...] = 0.0
        closure, seen = _capture(P)
        opt.step(closure=closure)
        c = opt.global_state["c"]
        V = opt.state["w1"]["V"]
        Vs.append(V.copy())
        D = opt.U("w1", t) @ V.T
        np.testing.assert_array_equal(opt.U("w1", t), opt.U("w1", t))
        np.testing.assert_array_equal(seen[0]["w1"], D * 1e-3)
        np.testing.assert_array_equal(P["w1"], D * (-0.5 * c))
        np.testing.assert_array_equal(P["b1"], opt.noise("b1", (4,), np.float64, t) * (-0.5 * c))
    np.testing.assert_array_equal(Vs[0], Vs[1])            # kept for ν steps
    np.testing.assert_array_equal(Vs[2], Vs[3])
    assert not np.array_equal(Vs[1], Vs[2])                # resampled at t = 2


@pytest.mark.parametrize("name,kw", [
    ("mezo", {}), ("lozo", {"rank": 2, "step_interval": 3, "momentum": 0.9}),
    ("zo-sgd", {"q": 3, "direction": "sphere", "momentum": 0.5}),
])
def test_run_is_reproducible_from_seed_and_resumable_from_state_dict(name, kw, tmp_path):
    def run(seed, steps, P=None, sd=None):
        P = make_params() if P is None else P
        f, _ = quad_closure(P)
        opt = optim.create(name, P, lr=1e-2, eps=1e-3, seed=seed, **kw)
        if sd is not None:
            opt.load_state_dict(sd)
        for _ in range(steps):
            opt.step(closure=f)
        return P, opt
    A, _ = run(1, 6)
    B, _ = run(1, 6)
    C, _ = run(2, 6)
    for n in A:
        np.testing.assert_array_equal(A[n], B[n])
    assert any(not np.array_equal(A[n], C[n]) for n in A)
    # interrupt after 3 steps, checkpoint through npz, resume
    half, opt = run(1, 3)
    np.savez(tmp_path / "o.npz", **optim.flatten_state_dict(opt.state_dict()))
    with np.load(tmp_path / "o.npz", allow_pickle=False) as fh:
        sd = optim.unflatten_state_dict(dict(fh))
    D, _ = run(999, 3, P=half, sd=sd)   # the seed comes from the state_dict
    for n in A:
        np.testing.assert_array_equal(A[n], D[n])


# ----------------------------------------------------------------------------- restore after ±ε
def _restore_error(dtype, eps=1e-3):
    P = make_params(dtype, seed=5)
    before = {n: p.copy() for n, p in P.items()}
    opt = MeZO(P, lr=0.0, eps=eps, seed=11)   # lr = 0: the step is perturb, perturb, restore
    opt.step(closure=lambda: 0.0)
    rel = []
    for n, p in P.items():
        a = np.abs(opt.z(n, 0).astype(np.float64) * eps)
        err = np.abs(p.astype(np.float64) - before[n].astype(np.float64))
        rel.append(err / (np.abs(before[n].astype(np.float64)) + a))
    return np.concatenate([r.ravel() for r in rel])


def test_restore_after_perturbation_within_documented_bound():
    # |θ_restored − θ| <= 3u(|θ| + ε|z|), u the unit roundoff (optim/zo/base.py).
    r64 = _restore_error(np.float64)
    r32 = _restore_error(np.float32)
    r16 = _restore_error(np.float16)
    assert r64.max() <= 3 * 2.0**-53
    assert r32.max() <= 3 * 2.0**-24
    assert r16.max() <= 3 * 2.0**-11
    assert (r64 == 0).mean() > 0.3          # most float64 elements come back bitwise
    assert r16.max() > 1e3 * r32.max()       # fp16 drift is visible


# ----------------------------------------------------------------------------- expectation
def _mean_update(make_opt, P, P0, f, M):
    """Run M single steps from the same θ0 (a fresh z each step): the updates Δθ.
    ``P`` is the live dict that the closure ``f`` reads."""
    opt = make_opt(P)
    D = {n: np.empty((M,) + p.shape) for n, p in P.items()}
    for i in range(M):
        for n in P:
            P[n][...] = P0[n]
        opt.step(closure=f)
        for n in P:
            D[n][i] = P[n] - P0[n]
    return D


def _assert_mean(D, target, k=K):
    for n in D:
        M = D[n].shape[0]
        err = np.abs(D[n].mean(0) - target[n])
        tol = k * np.sqrt(D[n].var(0, ddof=1) / M)
        assert np.all(err <= tol), (n, err.max(), tol.min())


@pytest.mark.parametrize("make", [lambda P, wd: MeZO(P, lr=0.05, eps=1e-3, weight_decay=wd, seed=3),
                                  lambda P, wd: LoZO(P, lr=0.05, eps=1e-3, rank=2, momentum=0.9,
                                                     weight_decay=wd, seed=3),
                                  lambda P, wd: ZOSGD(P, lr=0.05, eps=1e-3, q=2, momentum=0.9,
                                                      weight_decay=wd, seed=3)],
                         ids=["mezo", "lozo", "zo-sgd"])
def test_weight_decay_is_decoupled_and_scaled_by_lr(make):
    """theta <- theta - lr*(g_hat + wd*theta) with theta before the step: the losses, and so the
    estimate, are taken before any decay, so two runs from one seed that differ only in wd
    differ by exactly -lr*wd*theta_0 after one step (a decay not scaled by lr, or applied after
    the step, or not at all, breaks it)."""
    wd, runs = 0.1, []
    for decay in (0.0, wd):
        P = make_params(np.float64, scale=1.0)
        start = {n: p.copy() for n, p in P.items()}
        make(P, decay).step(closure=quad_closure(P)[0])
        runs.append(P)
    for n, p0 in start.items():
        np.testing.assert_allclose(runs[1][n] - runs[0][n], -0.05 * wd * p0, rtol=1e-9, atol=1e-15)


def test_mezo_expected_update_is_minus_lr_times_gradient():
    P0 = small_params()
    lr = 1e-2
    P = {n: p.copy() for n, p in P0.items()}
    f, grad = quad_closure(P)
    D = _mean_update(lambda Q: MeZO(Q, lr=lr, eps=1e-3, seed=0), P, P0, f, 1500)
    g = {n: -lr * v for n, v in _grad_at(grad, P, P0).items()}
    _assert_mean(D, g)
    # its total variance is lr²(d+1)‖g‖² (Gaussian central estimator, exact on a quadratic)
    gg = sum(float(np.sum(v * v)) for v in g.values())
    d = sum(v.size for v in g.values())
    np.testing.assert_allclose(sum(D[n].var(0).sum() for n in D), (d + 1) * gg, rtol=0.15)


def _grad_at(grad, P, P0):
    for n in P:
        P[n][...] = P0[n]
    return grad()


@pytest.mark.parametrize("normalize", [False, True])
def test_lozo_expected_update_is_r_times_gradient_or_gradient_when_normalized(normalize):
    P0 = small_params(seed=1)
    lr, r = 1e-2, 2
    P = {n: p.copy() for n, p in P0.items()}
    f, grad = quad_closure(P, seed=1)
    D = _mean_update(lambda Q: LoZO(Q, lr=lr, eps=1e-3, rank=r, step_interval=1,
                                       normalize=normalize, seed=0), P, P0, f, 1500)
    g = _grad_at(grad, P, P0)
    s = 1.0 if normalize else float(r)
    _assert_mean(D, {n: -lr * (s if v.ndim == 2 else 1.0) * v for n, v in g.items()})


def test_lozo_with_fixed_V_projects_the_gradient():
    P0 = small_params(seed=2)
    lr = 1e-2
    P = {n: p.copy() for n, p in P0.items()}
    f, grad = quad_closure(P, seed=2)
    holder = {}

    def make(Q):
        holder["opt"] = LoZO(Q, lr=lr, eps=1e-3, rank=2, step_interval=10**9, seed=0)
        return holder["opt"]
    D = _mean_update(make, P, P0, f, 1500)
    g = _grad_at(grad, P, P0)
    V = {n: holder["opt"].state[n]["V"] for n in g if g[n].ndim == 2}
    _assert_mean(D, {n: -lr * (v @ V[n] @ V[n].T if v.ndim == 2 else v) for n, v in g.items()})


@pytest.mark.parametrize("kw", [{"direction": "sphere", "kind": "forward"},
                                {"direction": "gaussian", "kind": "central", "q": 4}])
def test_zo_sgd_expected_update(kw):
    P0 = small_params(seed=3)
    lr = 1e-2
    P = {n: p.copy() for n, p in P0.items()}
    f, grad = quad_closure(P, seed=3)
    D = _mean_update(lambda Q: ZOSGD(Q, lr=lr, eps=1e-4, seed=0, **kw), P, P0, f,
                     1500 // kw.get("q", 1))
    _assert_mean(D, {n: -lr * v for n, v in _grad_at(grad, P, P0).items()})


def test_zo_sgd_q1_gaussian_central_equals_mezo_in_distribution_and_momentum_accumulates():
    P = make_params()
    f, grad = quad_closure(P)
    opt = ZOSGD(P, lr=1e-2, eps=1e-3, momentum=0.9, seed=0)
    opt.step(closure=f)
    buf1 = {n: st["momentum_buffer"].copy() for n, st in opt.state.items()}
    c1 = opt.global_state["c"][0]
    for n in P:
        np.testing.assert_allclose(buf1[n], c1 * opt.u(n, 0, 0), rtol=1e-12)
    opt.step(closure=f)
    c2 = opt.global_state["c"][0]
    for n in P:
        np.testing.assert_allclose(opt.state[n]["momentum_buffer"],
                                   0.9 * buf1[n] + c2 * opt.u(n, 1, 0), rtol=1e-10, atol=1e-14)


def test_lozo_m_keeps_m_by_r_momentum_and_reprojects_on_resample():
    P = make_params()
    f, _ = quad_closure(P)
    beta, nu = 0.8, 2
    opt = LoZO(P, lr=1e-3, eps=1e-3, rank=2, step_interval=nu, momentum=beta, seed=0)
    opt.step(closure=f)
    N0 = opt.state["w1"]["N"].copy()
    assert N0.shape == (5, 2) and opt.state["w1"]["V"].shape == (4, 2)
    np.testing.assert_allclose(N0, opt.global_state["c"] * opt.U("w1", 0), rtol=1e-12)
    V_old = opt.state["w1"]["V"].copy()
    opt.step(closure=f)   # t = 1: plain EMA
    N1 = opt.state["w1"]["N"].copy()
    np.testing.assert_allclose(N1, beta * N0 + (1 - beta) * opt.global_state["c"] * opt.U("w1", 1),
                               rtol=1e-12)
    opt.step(closure=f)   # t = 2: V resampled, N re-projected
    V = opt.state["w1"]["V"]
    expect = beta * N1 @ (V_old.T @ V) / 4 + (1 - beta) * opt.global_state["c"] * opt.U("w1", 2)
    np.testing.assert_allclose(opt.state["w1"]["N"], expect, rtol=1e-10)
    # state is O(r·(m+n)) per matrix, full only for vectors
    assert opt.state_bytes() == 8 * (2 * (5 + 4) + 2 * (4 + 3) + 4 + 3)


def _lozo_state(opt, P):
    """Parameters and every array LoZO-M keeps (V, N per matrix, m per vector), copied."""
    return {**{n: p.copy() for n, p in P.items()},
            **{f"{n}/{k}": v.copy() for n, st in opt.state.items() for k, v in st.items()}}


def _assert_same_bits(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _put_back(P, saved):
    """Restoring θ after ±ε is exact only up to rounding (optim/zo/base.py): after checking the
    bound, put the saved bits back, so that the rest of the state can be compared bit for bit."""
    for n, p in P.items():
        np.testing.assert_allclose(p, saved[n], rtol=4 * 2.0**-53, atol=1e-17)
        p[...] = saved[n]


@pytest.mark.parametrize("failure", ["raise", "skip"])
def test_lozo_m_step_that_fails_at_a_resample_point_keeps_V_and_N(failure):
    """A step at a V-resample point that raises (then is retried) or is skipped for a non-finite
    loss leaves V and N (and the vectors' m) exactly as they were; the run then goes on as the
    run in which that step never happened."""
    nu, resample_at, steps = 2, 2, 6
    kw = dict(lr=1e-2, eps=1e-3, rank=2, step_interval=nu, momentum=0.9, seed=0)

    def bad_closure():
        if failure == "raise":
            raise RuntimeError("data loader died")
        return float("nan")

    P = small_params()
    f, _ = quad_closure(P)
    opt = LoZO(P, nonfinite=failure, **kw)
    ref_P = small_params()
    ref_f, _ = quad_closure(ref_P)
    ref = LoZO(ref_P, nonfinite=failure, **kw)
    for t in range(steps):
        if t == resample_at:
            before = _lozo_state(opt, P)
            if failure == "raise":
                with pytest.raises(RuntimeError, match="data loader"):
                    opt.step(closure=bad_closure)
            else:
                opt.step(closure=bad_closure)
                assert opt.last_step_skipped
                ref.global_state["step"] += 1     # a skipped step still uses up its step number
            _put_back(P, before)
            _assert_same_bits(_lozo_state(opt, P), before)
            assert opt.global_state["step"] == ref.global_state["step"]
        opt.step(closure=f)
        ref.step(closure=ref_f)
    _assert_same_bits(_lozo_state(opt, P), _lozo_state(ref, ref_P))
    assert "N" in opt.state["w"] and "m" in opt.state["b"]


# ----------------------------------------------------------------------------- memory
def test_no_parameter_sized_temporaries():
    """tracemalloc peak during a step − baseline <= 2 tensors of the largest parameter
    (z, and U·Vᵀ or the accumulator) + small slack; the parameters total 6× the largest."""
    rng = np.random.default_rng(0)
    P = {f"w{i}": rng.standard_normal((300, 200)) for i in range(5)}
    P["b"] = rng.standard_normal(300)
    P["big"] = rng.standard_normal((400, 200))
    largest = P["big"].nbytes
    total = sum(p.nbytes for p in P.values())

    def closure():     # allocation-free loss: Σ‖θ_n‖²
        return sum(float(np.vdot(p, p)) for p in P.values())
    for name, kw, allowed in [("mezo", {}, 1), ("lozo", {"rank": 2}, 1), ("zo-sgd", {"q": 2}, 2)]:
        opt = optim.create(name, P, lr=1e-6, eps=1e-3, seed=0, **kw)
        opt.step(closure=closure)   # warm up (LoZO allocates its V once)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        opt.step(closure=closure)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert peak <= allowed * largest + 64 * 1024, (name, peak, largest, total)
        assert peak < total / 2


# ----------------------------------------------------------------------------- small model
def _mlp_problem(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((128, 6))
    Y = np.tanh(X @ rng.standard_normal((6, 2)))
    P = {"w1": 0.5 * rng.standard_normal((6, 16)), "b1": np.zeros(16),
         "w2": 0.3 * rng.standard_normal((16, 2)), "b2": np.zeros(2)}

    def loss():
        h = np.tanh(X @ P["w1"] + P["b1"])
        return float(np.mean((h @ P["w2"] + P["b2"] - Y) ** 2))
    return P, loss


@pytest.mark.parametrize("name,kw", [
    ("mezo", {"lr": 2e-2}),
    ("lozo", {"lr": 1e-2, "rank": 2, "step_interval": 20}),
    ("lozo", {"lr": 1e-2, "rank": 2, "step_interval": 20, "momentum": 0.9}),
    ("zo-sgd", {"lr": 1e-2, "q": 2, "momentum": 0.5}),
])
def test_zo_optimizers_decrease_the_loss_of_a_small_mlp(name, kw):
    P, loss = _mlp_problem()
    l0 = loss()
    opt = optim.create(name, P, eps=1e-3, seed=0, **kw)
    for _ in range(400):
        opt.step(closure=loss)
    assert loss() < 0.5 * l0, (l0, loss())
    assert opt.global_state["forward_passes"] == 400 * (2 * kw.get("q", 1))


def test_mezo_and_lozo_train_a_minigrad_module_under_no_grad():
    import minigrad

    nn = minigrad.nn
    F = minigrad.functional
    rng = np.random.default_rng(1)
    X = minigrad.Tensor(rng.standard_normal((64, 8)).astype(np.float32))
    y = np.argmax(X.data @ rng.standard_normal((8, 3)), axis=1)   # a learnable labelling
    for name, kw in [("mezo", {"lr": 3e-2}), ("lozo", {"lr": 1e-2, "rank": 2, "step_interval": 10})]:
        model = nn.Sequential(nn.Linear(8, 16, rng=np.random.default_rng(0)),
                              nn.Linear(16, 3, rng=np.random.default_rng(1)))
        params = {n: p.data for n, p in model.named_parameters()}

        def closure():
            with minigrad.no_grad():
                out = F.cross_entropy(model(X), y)
            assert not out.requires_grad
            return out
        l0 = float(closure().item())
        opt = optim.create(name, params, eps=1e-3, seed=0, **kw)
        for _ in range(200):
            opt.step(closure=closure)
        assert float(closure().item()) < 0.6 * l0


from hypothesis import given, strategies as st  # noqa: E402


@given(st.sampled_from(["mezo", "lozo"]), st.sampled_from([np.float64, np.float32, np.float16]),
       st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=3),
       st.floats(1e-4, 1e-1), st.integers(0, 2**31 - 1))
def test_perturb_and_restore_bound_holds_for_any_shapes_dtypes_eps(name, dtype, shapes, eps, seed):
    rng = np.random.default_rng(seed)
    P = {f"p{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}
    P["v"] = rng.standard_normal(3).astype(dtype)
    before = {n: p.astype(np.float64) for n, p in P.items()}
    opt = optim.create(name, P, lr=0.0, eps=eps, seed=seed, rank=2) if name == "lozo" else \
        optim.create(name, P, lr=0.0, eps=eps, seed=seed)
    opt.step(closure=lambda: 0.0)
    u = float(np.finfo(dtype).eps) / 2
    for n, p in P.items():
        if name == "mezo" or p.ndim < 2:
            a = np.abs(opt.noise(n, p.shape, dtype, 0).astype(np.float64) * eps)
        else:
            a = np.abs((opt.U(n, 0) @ opt.state[n]["V"].T).astype(np.float64) * eps)
        err = np.abs(p.astype(np.float64) - before[n])
        # 3u(|θ| + |a|), plus the rounding of a itself (a LoZO matmul in float16/32 adds ~r·u)
        assert np.all(err <= 4 * u * (np.abs(before[n]) + a) + 1e-300), (n, err.max())
