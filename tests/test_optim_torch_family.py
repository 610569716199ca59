"""optim.torch_family against torch.optim itself: NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop
(25 float64 steps on the same gradients, relative 1e-10) and L-BFGS (the same closure-driven
problems, with and without the strong-Wolfe line search); mid-run resumes; option errors."""
import numpy as np
import pytest
import torch

import optim

STEPS = 25


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"b": rng.standard_normal(7), "w": rng.standard_normal((4, 3)),
            "conv": rng.standard_normal((2, 3, 2))}


def grads_at(params, t):
    """A gradient that depends on the parameters (a quadratic pull to 0.5) plus step noise, so
    a wrong parameter update also changes every later gradient."""
    out = {}
    for i, (n, p) in enumerate(params.items()):
        rng = np.random.default_rng(1000 * t + i)
        out[n] = 2.0 * (p - 0.5) + rng.standard_normal(p.shape)
    return out


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
]


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
