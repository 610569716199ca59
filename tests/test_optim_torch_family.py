"""optim.torch_family against torch.optim itself: NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop
(25 float64 steps on the same gradients, relative 1e-10) and L-BFGS (the same closure-driven
problems, with and without the strong-Wolfe line search); mid-run resumes; option errors."""
import numpy as np
import pytest

import optim
from optim_helpers import grads_at

torch = pytest.importorskip("torch", reason="optional: pip install -e .[bench] (make test installs it)")

STEPS = 25


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"b": rng.standard_normal(7), "w": rng.standard_normal((4, 3)),
            "conv": rng.standard_normal((2, 3, 2))}


def run_ours(name, kw, steps=STEPS, params=None):
    p = make_params() if params is None else params
    opt = optim.create(name, p, **kw)
    for t in range(steps):
        opt.step(grads_at(p, t))
    return p, opt


@pytest.fixture(autouse=True)
def float64_scalars():
    """torch keeps step counters and NAdam's mu product in the default dtype: float64 here, so
    that torch's own rounding of them (float32) does not set the tolerance."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def run_torch(tname, kw, steps=STEPS):
    p = make_params()
    tp = {n: torch.tensor(v.copy(), requires_grad=True) for n, v in p.items()}
    topt = getattr(torch.optim, tname)(list(tp.values()), foreach=False, **kw)
    for t in range(steps):
        g = grads_at({n: v.detach().numpy() for n, v in tp.items()}, t)
        for n in tp:
            tp[n].grad = torch.tensor(g[n])
        topt.step()
    return {n: v.detach().numpy() for n, v in tp.items()}, topt


CASES = [
    ("nadam", "NAdam", {"lr": 0.05}),
    ("nadam", "NAdam", {"lr": 0.05, "betas": (0.8, 0.95), "weight_decay": 0.1, "momentum_decay": 0.02}),
    ("nadam", "NAdam", {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam", "RAdam", {"lr": 0.05}),
    ("radam", "RAdam", {"lr": 0.05, "betas": (0.9, 0.8), "weight_decay": 0.1}),   # rho_t > 5 at t = 6
    ("radam", "RAdam", {"lr": 0.05, "betas": (0.9, 0.7), "weight_decay": 0.1,
                        "decoupled_weight_decay": True}),
    ("adamax", "Adamax", {}),
    ("adamax", "Adamax", {"lr": 0.05, "betas": (0.8, 0.9), "eps": 1e-3, "weight_decay": 0.1}),
    ("adadelta", "Adadelta", {}),
    ("adadelta", "Adadelta", {"lr": 0.5, "rho": 0.7, "eps": 1e-4, "weight_decay": 0.1}),
    ("asgd", "ASGD", {"lr": 0.05}),
    ("asgd", "ASGD", {"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 10, "weight_decay": 0.1}),
    ("rprop", "Rprop", {}),
    ("rprop", "Rprop", {"lr": 0.1, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2)}),
] + [(name, tname, {**kw, "maximize": True}) for name, tname, kw in [   # ascent, as torch's flag
    ("nadam", "NAdam", {"lr": 0.05, "weight_decay": 0.1}), ("radam", "RAdam", {"lr": 0.05}),
    ("adamax", "Adamax", {"weight_decay": 0.1}), ("adadelta", "Adadelta", {"weight_decay": 0.1}),
    ("asgd", "ASGD", {"lr": 0.05, "t0": 10}), ("rprop", "Rprop", {})]]


@pytest.mark.parametrize("name,tname,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_equals_torch_optim_for_25_float64_steps(name, tname, kw):
    ours, opt = run_ours(name, kw)
    ref, topt = run_torch(tname, kw)
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=1e-10, atol=0, err_msg=n)
    if name == "asgd":   # the averaged iterate too
        for i, n in enumerate(ours):
            tax = topt.state[topt.param_groups[0]["params"][i]]["ax"].numpy()
            np.testing.assert_allclose(opt.state[n]["ax"], tax, rtol=1e-10, atol=0, err_msg=n)


def test_asgd_averages_the_iterates_after_t0():
    """ax is the running mean of the iterates from theta_{t0+2} on (mu_t = 1/max(1, t-1-t0) is
    set at the end of step t-1, so it is 1 up to step t0+2 and 1/2 at step t0+3)."""
    t0 = 5
    p = make_params()
    opt = optim.ASGD(p, lr=0.05, t0=t0)
    seen = []
    for t in range(20):
        opt.step(grads_at(p, t))
        seen.append(p["w"].copy())      # seen[i] is theta after step i + 1
    np.testing.assert_allclose(opt.state["w"]["ax"], np.mean(seen[t0 + 1:], axis=0), rtol=1e-12)


def test_radam_takes_momentum_steps_while_rho_t_is_at_most_5():
    """b2 = 0.999: rho_t <= 5 for t <= 5, so the first steps are lr * m_hat (m_hat = g at t = 1)."""
    p = {"x": np.array([1.0, -2.0, 3.0])}
    g = np.array([0.5, -0.25, 4.0])
    optim.RAdam(p, lr=0.1).step({"x": g})
    np.testing.assert_allclose(p["x"], np.array([1.0, -2.0, 3.0]) - 0.1 * g, rtol=1e-15)


def test_rprop_moves_by_the_step_size_whatever_the_gradient_scale():
    p1, p2 = {"x": np.zeros(3)}, {"x": np.zeros(3)}
    o1, o2 = optim.Rprop(p1, lr=0.1), optim.Rprop(p2, lr=0.1)
    for g in (np.array([1.0, -1.0, 1.0]), np.array([1.0, 1.0, 0.0])):
        o1.step({"x": g})
        o2.step({"x": 1e6 * g})
    np.testing.assert_array_equal(p1["x"], p2["x"])
    # same sign twice: 0.1 then 0.12; a sign flip: no move; a zero gradient: no move
    np.testing.assert_allclose(p1["x"], [-0.22, 0.1, -0.1], rtol=1e-15)


def test_rprop_weight_decay_is_decoupled():
    """Torch has no weight decay for Rprop: here theta <- theta*(1 - lr*wd), then the sign step."""
    p = {"x": np.array([2.0, -2.0])}
    optim.Rprop(p, lr=0.1, weight_decay=0.5).step({"x": np.array([-1.0, -1.0])})
    np.testing.assert_allclose(p["x"], [2.0 * 0.95 + 0.1, -2.0 * 0.95 + 0.1], rtol=1e-15)


# ----------------------------------------------------------------------------- resume
RESUMED = [("nadam", {"lr": 0.05, "weight_decay": 0.1}), ("radam", {"lr": 0.05}),
           ("adamax", {}), ("adadelta", {}), ("asgd", {"lr": 0.05, "t0": 5}), ("rprop", {})]


@pytest.mark.parametrize("name,kw", RESUMED, ids=[n for n, _ in RESUMED])
def test_a_run_resumed_mid_way_is_bit_identical(name, kw):
    whole, _ = run_ours(name, kw)
    p = make_params()
    opt = optim.create(name, p, **kw)
    for t in range(12):
        opt.step(grads_at(p, t))
    flat = optim.flatten_state_dict(opt.state_dict())
    saved = {n: v.copy() for n, v in p.items()}
    p2 = saved
    opt2 = optim.create(name, p2, **kw)
    opt2.load_state_dict(optim.unflatten_state_dict(flat))
    for t in range(12, STEPS):
        opt2.step(grads_at(p2, t))
    for n in whole:
        np.testing.assert_array_equal(p2[n], whole[n], err_msg=n)


# ----------------------------------------------------------------------------- option errors
BAD = [("nadam", {"betas": (0.9, 1.0)}, "betas"), ("nadam", {"eps": -1.0}, "eps"),
       ("nadam", {"momentum_decay": -1.0}, "momentum_decay"),
       ("radam", {"betas": (-0.1, 0.9)}, "betas"), ("adamax", {"eps": -1e-8}, "eps"),
       ("adadelta", {"rho": 1.5}, "rho"), ("asgd", {"lambd": -1.0}, "lambd"),
       ("asgd", {"t0": -1}, "t0"), ("rprop", {"etas": (1.5, 1.2)}, "etas"),
       ("rprop", {"step_sizes": (1.0, 0.1)}, "step_sizes"), ("adamax", {"lr": -1.0}, "learning rate")]


@pytest.mark.parametrize("name,kw,word", BAD, ids=[f"{n}-{w}" for n, _, w in BAD])
def test_bad_options_are_value_errors_naming_them(name, kw, word):
    with pytest.raises(ValueError, match=word):
        optim.create(name, make_params(), **kw)


def test_state_bytes_match_the_memory_lines():
    p = make_params()
    n = sum(v.nbytes for v in p.values())
    for name, arrays in (("nadam", 2), ("radam", 2), ("adamax", 2), ("adadelta", 2), ("asgd", 1),
                         ("rprop", 2)):
        opt = optim.create(name, p)
        assert opt.expected_state_bytes() == arrays * n, name


# ----------------------------------------------------------------------------- L-BFGS
def quadratic_problem(seed=1):
    """f(x) = 1/2 x'Ax - b'x on x = (w (4x3), v (5,)) flattened, A SPD with condition ~100."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((17, 17)))
    A = Q @ np.diag(np.geomspace(1.0, 100.0, 17)) @ Q.T
    b = rng.standard_normal(17)

    def f(p):
        x = np.concatenate([p["w"].ravel(), p["v"]])
        r = A @ x - b
        return 0.5 * x @ (A @ x) - b @ x, {"w": r[:12].reshape(4, 3), "v": r[12:]}
    start = {"w": rng.standard_normal((4, 3)), "v": rng.standard_normal(5)}
    return f, start


def logistic_problem(seed=2):
    """Mean logistic loss of (w (2x3) flattened, c (1,)) on 60 noisy points in 6-D."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((60, 6))
    y = np.where(X @ rng.standard_normal(6) + rng.standard_normal(60) > 0, 1.0, -1.0)

    def f(p):
        z = y * (X @ p["w"].ravel() + p["c"][0])
        loss = np.mean(np.logaddexp(0.0, -z))
        dz = -y / (1.0 + np.exp(z)) / len(y)
        return loss, {"w": (X.T @ dz).reshape(2, 3), "c": np.array([dz.sum()])}
    start = {"w": 0.1 * rng.standard_normal((2, 3)), "c": np.zeros(1)}
    return f, start


def lbfgs_ours(f, start, steps, **kw):
    p = {n: v.copy() for n, v in start.items()}
    opt = optim.LBFGS(p, **kw)
    losses = [opt.step(closure=lambda: f(p)) for _ in range(steps)]
    return p, losses, opt


def lbfgs_torch(f, start, steps, weight_decay=0.0, **kw):
    tp = {n: torch.tensor(v.copy(), requires_grad=True) for n, v in start.items()}
    topt = torch.optim.LBFGS(list(tp.values()), **kw)

    def closure():
        p = {n: v.detach().numpy() for n, v in tp.items()}
        loss, g = f(p)
        for n in tp:   # the L2 term as part of the objective
            g[n] = g[n] + weight_decay * p[n]
            loss += 0.5 * weight_decay * float(np.sum(p[n] ** 2))
        for n in tp:
            tp[n].grad = torch.tensor(g[n])
        return torch.tensor(loss)
    losses = [float(topt.step(closure)) for _ in range(steps)]
    return {n: v.detach().numpy() for n, v in tp.items()}, losses


LBFGS_CASES = [
    ("quadratic", {"lr": 0.01, "max_iter": 3}),
    ("quadratic", {"lr": 0.01, "max_iter": 4, "history_size": 5}),
    ("quadratic", {"lr": 1.0, "max_iter": 3, "line_search_fn": "strong_wolfe"}),
    ("quadratic", {"lr": 0.05, "max_iter": 2, "history_size": 3, "weight_decay": 0.5}),
    ("logistic", {"lr": 0.5, "max_iter": 4, "history_size": 5}),
    ("logistic", {"lr": 1.0, "max_iter": 5, "line_search_fn": "strong_wolfe"}),
    ("logistic", {"lr": 1.0, "max_iter": 2, "history_size": 2, "line_search_fn": "strong_wolfe",
                  "weight_decay": 0.1}),
]


@pytest.mark.parametrize("problem,kw", LBFGS_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LBFGS_CASES)])
def test_lbfgs_equals_torch_lbfgs_on_the_same_closure(problem, kw):
    f, start = (quadratic_problem if problem == "quadratic" else logistic_problem)()
    ours, losses, opt = lbfgs_ours(f, start, STEPS, **kw)
    ref, ref_losses = lbfgs_torch(f, start, STEPS, **kw)
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=1e-10, atol=0, err_msg=n)
    if not kw.get("weight_decay"):   # (torch's closure returns the loss with the L2 term)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    assert losses[-1] < 0.9 * losses[0]                      # it optimizes
    assert opt.global_state["groups"][0]["func_evals"] > STEPS  # several evaluations per step


def test_lbfgs_step_grads_is_one_iteration_of_torch_lbfgs():
    """step(grads) with gradients from a training loop = torch's step with max_iter=1."""
    f, start = logistic_problem()
    p = {n: v.copy() for n, v in start.items()}
    opt = optim.LBFGS(p, lr=0.5, history_size=4)
    for _ in range(STEPS):
        opt.step(f(p)[1])
    ref, _ = lbfgs_torch(f, start, STEPS, lr=0.5, history_size=4, max_iter=1)
    for n in p:
        np.testing.assert_allclose(p[n], ref[n], rtol=1e-10, atol=0, err_msg=n)


def test_lbfgs_line_search_needs_the_closure():
    f, start = quadratic_problem()
    opt = optim.LBFGS(start, line_search_fn="strong_wolfe")
    with pytest.raises(ValueError, match="line_search_fn='strong_wolfe'.*closure"):
        opt.step(f(start)[1])


def test_lbfgs_solves_a_quadratic_with_the_line_search():
    f, start = quadratic_problem()
    start_grad = np.abs(np.concatenate([g.ravel() for g in f(start)[1].values()])).max()
    p, _, _ = lbfgs_ours(f, start, 10, line_search_fn="strong_wolfe", history_size=10,
                         tolerance_grad=1e-10, tolerance_change=0.0)
    grad = np.abs(np.concatenate([g.ravel() for g in f(p)[1].values()])).max()
    assert start_grad > 1.0 and grad < 1e-6


@pytest.mark.parametrize("kw", [{"lr": 0.05, "max_iter": 3, "history_size": 4},
                                {"max_iter": 3, "line_search_fn": "strong_wolfe"}])
def test_lbfgs_resumed_mid_way_is_bit_identical(kw):
    f, start = logistic_problem()
    whole, _, _ = lbfgs_ours(f, start, STEPS, **kw)
    p, _, opt = lbfgs_ours(f, start, 12, **kw)
    flat = optim.flatten_state_dict(opt.state_dict())
    opt2 = optim.LBFGS(p, **kw)
    opt2.load_state_dict(optim.unflatten_state_dict(flat))
    for _ in range(12, STEPS):
        opt2.step(closure=lambda: f(p))
    for n in whole:
        np.testing.assert_array_equal(p[n], whole[n], err_msg=n)


def test_lbfgs_a_nonfinite_evaluation_inside_a_step_leaves_everything_as_before():
    f, start = quadratic_problem()
    p = {n: v.copy() for n, v in start.items()}
    opt = optim.LBFGS(p, lr=0.05, max_iter=4, nonfinite="skip")
    opt.step(closure=lambda: f(p))
    before, state = {n: v.copy() for n, v in p.items()}, optim.flatten_state_dict(opt.state_dict())
    calls = []

    def bad_second_call():
        calls.append(1)
        loss, g = f(p)
        if len(calls) == 2:
            g["v"][0] = np.inf
        return loss, g
    opt.step(closure=bad_second_call)
    assert opt.last_step_skipped and opt.skipped_steps == 1 and len(calls) == 2
    for n in p:
        np.testing.assert_array_equal(p[n], before[n])
    after = optim.flatten_state_dict(opt.state_dict())
    assert all(np.array_equal(after[k], state[k]) for k in state if not k.endswith("__optim_meta__"))


def test_lbfgs_memory_line():
    p = make_params()
    n = sum(v.nbytes for v in p.values())
    opt = optim.LBFGS(p, history_size=7)
    assert opt.expected_state_bytes() == 16 * n
    opt.step(grads_at(p, 0))
    assert opt.state_bytes() == 16 * n


@pytest.mark.parametrize("kw,word", [({"max_iter": 0}, "max_iter"), ({"history_size": 1.5}, "history_size"),
                                     ({"max_eval": 0}, "max_eval"), ({"tolerance_grad": -1.0}, "tolerance_grad"),
                                     ({"tolerance_change": -1e-9}, "tolerance_change"),
                                     ({"line_search_fn": "armijo"}, "line_search_fn")])
def test_lbfgs_bad_options_are_value_errors_naming_them(kw, word):
    with pytest.raises(ValueError, match=word):
        optim.LBFGS(make_params(), **kw)
