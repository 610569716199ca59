"""The one step protocol every registered optimizer follows (optim/base.py, "The step protocol"):
uses_gradients / loss_scale / unscale_ / last_step_skipped, expected_state_bytes, accepts,
param-group keys honoured or refused, parameters without a gradient left alone."""
import copy

import numpy as np
import pytest

import optim

ALL = optim.available()


def make(name, params, **kw):
    """``optim.create`` with a fixed seed where the optimizer takes one (its noise)."""
    if "seed" in optim.accepts(name):
        kw.setdefault("seed", 0)
    return optim.create(name, params, **kw)


FIRST_ORDER = [n for n in ALL if make(n, {"x": np.zeros(2)}).uses_gradients]
ZEROTH_ORDER = [n for n in ALL if n not in FIRST_ORDER]


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype(dtype),
            "conv": rng.standard_normal((2, 3, 2)).astype(dtype),
            "b": rng.standard_normal(3).astype(dtype)}


def fixed_grads(params, t):
    """Gradients that do not depend on the parameters (so one group's options cannot reach
    another group's parameters through them)."""
    return {n: np.random.default_rng(100 * t + i).standard_normal(p.shape).astype(p.dtype)
            for i, (n, p) in enumerate(params.items())}


def quadratic(params):
    """f = sum_n ||p_n - 0.5||^2, a closure over the live arrays (for the zeroth-order ones)."""
    return lambda: float(sum(np.sum((p.astype(np.float64) - 0.5) ** 2) for p in params.values()))


def drive(opt, params, steps):
    """The training-loop side of the protocol: no look at the optimizer's class."""
    for t in range(steps):
        if opt.uses_gradients:
            grads = fixed_grads(params, t)
            grads = {n: g * np.asarray(opt.loss_scale, g.dtype) for n, g in grads.items()}
            opt.unscale_(grads)
            opt.step(grads)
        else:
            opt.step(closure=quadratic(params))
        assert opt.last_step_skipped is False


# ----------------------------------------------------------------------------- protocol attributes
def test_every_optimizer_is_driven_through_one_protocol():
    assert set(ZEROTH_ORDER) >= {"mezo", "lozo", "zo-sgd"} and "adamw" in FIRST_ORDER
    for name in ALL:
        p = make_params()
        before = {n: v.copy() for n, v in p.items()}
        opt = make(name, p, lr=1e-2)
        assert opt.loss_scale == 1.0 and opt.last_step_skipped is False
        g = fixed_grads(p, 0)
        kept = {n: v.copy() for n, v in g.items()}
        assert opt.unscale_(g) is None
        assert all(np.array_equal(g[n], kept[n]) for n in g)     # nothing to unscale
        drive(opt, p, 2)
        assert any(not np.array_equal(p[n], before[n]) for n in p), name


@pytest.mark.parametrize("name", ALL)
def test_last_step_skipped_after_a_nonfinite_step_only(name):
    p = make_params()
    opt = make(name, p, lr=1e-2, nonfinite="skip")
    drive(opt, p, 1)
    snap = {n: v.copy() for n, v in p.items()}
    if opt.uses_gradients:
        g = fixed_grads(p, 1)
        g["b"][0] = np.nan
        opt.step(g)
    else:
        opt.step(closure=lambda: float("nan"))
    assert opt.last_step_skipped is True and opt.skipped_steps == 1
    for n in p:  # (ZO: restored after the perturbation, within rounding)
        np.testing.assert_allclose(p[n], snap[n], rtol=0, atol=1e-15)
    drive(opt, p, 1)  # asserts last_step_skipped is False again


# ----------------------------------------------------------------------------- state bytes
VARIANTS = [(n, {}) for n in ALL] + [
    ("sgd", {"momentum": 0.9}), ("adam", {"amsgrad": True}), ("rmsprop", {"centered": True}),
    ("rmsprop", {"centered": True, "momentum": 0.5}), ("rmsprop", {"momentum": 0.5}),
    ("zo-sgd", {"momentum": 0.9}), ("zo-sgd", {"momentum": 0.5, "q": 2}),
    ("lozo", {"momentum": 0.9}), ("lozo", {"rank": 3}),
    ("perturbed_gd", {"noise": "always"}), ("perturbed_gd", {"g_thres": 1e3}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name,kw", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_state_bytes_equal_expected_state_bytes_once_every_parameter_stepped(name, kw, dtype):
    p = make_params(dtype)
    opt = make(name, p, lr=1e-3, **kw)
    expected = opt.expected_state_bytes()      # known before any step
    assert opt.state_bytes() == 0
    drive(opt, p, 2)
    assert opt.state_bytes() == expected


@pytest.mark.parametrize("name,option,values", [
    ("sgd", "momentum", (0.0, 0.9)), ("adam", "amsgrad", (False, True)),
    ("rmsprop", "centered", (False, True)), ("rmsprop", "momentum", (0.0, 0.5)),
])
def test_expected_state_bytes_follow_each_groups_options(name, option, values):
    p = make_params(np.float32)
    groups = [{"params": {"w": p["w"], "conv": p["conv"]}, option: values[0]},
              {"params": {"b": p["b"]}, option: values[1]}]
    opt = optim.create(name, groups, lr=1e-3)
    expected = opt.expected_state_bytes()
    drive(opt, p, 1)
    assert opt.state_bytes() == expected
    per_param = {"sgd": 0, "adam": 2, "rmsprop": 1}[name] * sum(v.nbytes for v in p.values())
    assert expected == per_param + p["b"].nbytes     # the option adds one array, for b only


def test_expected_state_bytes_known_values():
    p = make_params(np.float32)
    n = sum(v.nbytes for v in p.values())
    assert make("adamw", p).expected_state_bytes() == 2 * n
    assert make("amsgrad", p).expected_state_bytes() == 3 * n
    assert make("sgd", p).expected_state_bytes() == 0
    assert make("momentum", p).expected_state_bytes() == n
    assert make("rmsprop", p, centered=True, momentum=0.9).expected_state_bytes() == 3 * n
    for name in ("heavyball", "agd", "fista", "adagrad"):
        assert make(name, p).expected_state_bytes() == n, name
    for name in ("gd", "ista", "perturbed_gd", "mezo"):
        assert make(name, p).expected_state_bytes() == 0, name
    # LoZO: V (n x r) per matrix (conv is 2 x 6), and N (m x r) / m for vectors with momentum
    assert make("lozo", p, rank=2).expected_state_bytes() == 4 * 2 * (3 + 6)
    assert make("lozo", p, rank=2, momentum=0.9).expected_state_bytes() == 4 * (2 * (3 + 6 + 4 + 2) + 3)
    # float16 parameters: ZO noise and what is built from it is float32
    h = make_params(np.float16)
    assert make("zo-sgd", h, momentum=0.9).expected_state_bytes() == 2 * sum(v.nbytes for v in h.values())


# ----------------------------------------------------------------------------- None gradients
MISSING = [("b", "conv"), (), ("w",), ("b",)]   # the parameters without a gradient, step by step


@pytest.mark.parametrize("name,kw", [(n, {}) for n in FIRST_ORDER] + [
    ("perturbed_gd", {"g_thres": 1e3, "t_thres": 1}), ("perturbed_gd", {"noise": "always"}),
    ("sgd", {"momentum": 0.9}), ("ista", {"prox": optim.prox.L1(0.1)}),
    ("fista", {"prox": optim.prox.L1(0.1)})])
def test_a_parameter_without_gradient_is_untouched_and_gets_no_state(name, kw):
    p = make_params()
    if "weight_decay" in optim.accepts(name):
        kw = {"weight_decay": 0.1, **kw}          # decay must not touch it either
    opt = make(name, p, lr=1e-2, **kw)
    for t, missing in enumerate(MISSING):
        g = fixed_grads(p, t)
        for n in missing:
            g[n] = None
        had_state = {n: copy.deepcopy(opt.state[n]) for n in missing if n in opt.state}
        snap = {n: p[n].copy() for n in missing}
        # SOAP's first gradient of a parameter only builds its preconditioner (as its reference code)
        others = {n: p[n].copy() for n in p if n not in missing and (name != "soap" or n in opt.state)}
        opt.step(g)
        for n in missing:
            assert np.array_equal(p[n], snap[n]), (name, t, n)
            if n in had_state:
                assert optim.flatten_state_dict(opt.state[n]).keys() == \
                    optim.flatten_state_dict(had_state[n]).keys()
                assert all(np.array_equal(a, b) for a, b in zip(
                    optim.flatten_state_dict(opt.state[n]).values(),
                    optim.flatten_state_dict(had_state[n]).values())), (name, t, n)
            else:
                assert n not in opt.state, (name, t, n)
        assert all(not np.array_equal(p[n], others[n]) for n in others), (name, t)
    assert "conv" in opt.state and opt.iterates().keys() == p.keys()


# ----------------------------------------------------------------------------- accepts
def test_accepts_reads_the_signatures():
    for name in ALL:
        kw = optim.accepts(name)
        assert isinstance(kw, frozenset) and "params" not in kw and "lr" in kw, name
        assert "nonfinite" in kw and "weight_decay" in kw, name
    assert "betas" in optim.accepts("adamw") and "betas" not in optim.accepts("sgd")
    assert "seed" in optim.accepts("mezo") and "seed" in optim.accepts("perturbed_gd")
    assert "seed" not in optim.accepts("adam")
    # the factories have explicit signatures matching what they build
    assert optim.accepts("amsgrad") == optim.accepts("adam") - {"amsgrad"}
    assert optim.accepts("momentum") == optim.accepts("sgd")
    assert optim.accepts("nesterov") == optim.accepts("sgd") - {"nesterov", "dampening"}
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
        optim.accepts("nope")


@pytest.mark.parametrize("name", ALL)
def test_every_accepted_keyword_is_taken_and_others_refused(name):
    """Passing each accepted keyword with its own default builds the optimizer; a keyword not
    in accepts() is a TypeError."""
    import inspect
    sig = inspect.signature(optim.base._lookup(name))
    for kw in optim.accepts(name):
        default = sig.parameters[kw].default
        if default is not inspect.Parameter.empty:
            make(name, make_params(), **{kw: default})
    with pytest.raises(TypeError):
        make(name, make_params(), not_a_keyword=1)


def test_accepts_refuses_a_factory_taking_kwargs(monkeypatch):
    monkeypatch.setitem(optim.base._REGISTRY, "loose", lambda params, **kw: optim.SGD(params, **kw))
    with pytest.raises(TypeError, match="'loose'.*kwargs.*explicit signature"):
        optim.accepts("loose")


# ----------------------------------------------------------------------------- group keys
def _two_groups(name, params, opt_a, opt_b, **kw):
    groups = [{"params": {"w": params["w"], "conv": params["conv"]}, **opt_a},
              {"params": {"b": params["b"]}, **opt_b}]
    return make(name, groups, **kw)


def _run_groups(name, opt_a, opt_b):
    p = make_params()
    opt = _two_groups(name, p, opt_a, opt_b)
    # zeroth-order: one step (after it, b's value enters the loss and so a's next update)
    drive(opt, p, 3 if opt.uses_gradients else 1)
    return p


@pytest.mark.parametrize("name", ALL)
def test_per_group_lr_is_honoured(name):
    x = 1e-2
    same = _run_groups(name, {"lr": x}, {"lr": x})
    double = _run_groups(name, {"lr": x}, {"lr": 2 * x})
    for n in ("w", "conv"):
        assert np.array_equal(same[n], double[n]), (name, n)
    assert not np.array_equal(same["b"], double["b"]), name


@pytest.mark.parametrize("name", ALL)
def test_per_group_weight_decay_is_honoured_or_refused(name):
    x = 1e-2
    if "weight_decay" not in make(name, make_params()).defaults:
        with pytest.raises(ValueError, match="weight_decay"):
            _run_groups(name, {"lr": x}, {"lr": x, "weight_decay": 0.5})
        return
    none = _run_groups(name, {"lr": x, "weight_decay": 0.0}, {"lr": x, "weight_decay": 0.0})
    some = _run_groups(name, {"lr": x, "weight_decay": 0.0}, {"lr": x, "weight_decay": 0.5})
    for n in ("w", "conv"):
        assert np.array_equal(none[n], some[n]), (name, n)
    assert not np.array_equal(none["b"], some["b"]), name


@pytest.mark.parametrize("name", ALL)
def test_an_unknown_group_key_is_refused_naming_it(name):
    p = make_params()
    with pytest.raises(ValueError, match=r"unknown param group key\(s\) \['momentun'\].*may set"):
        _two_groups(name, p, {}, {"momentun": 0.9})
    # initial_lr (set by LRScheduler, as torch's schedulers do) is allowed
    _two_groups(name, p, {"initial_lr": 0.1}, {})


@pytest.mark.parametrize("name,key", [("perturbed_gd", "radius"), ("perturbed_gd", "seed"),
                                      ("mezo", "eps"), ("mezo", "seed"), ("lozo", "rank"),
                                      ("zo-sgd", "q")])
def test_per_optimizer_options_are_refused_in_a_group(name, key):
    with pytest.raises(ValueError, match=key):
        _two_groups(name, make_params(), {}, {key: 1})


def test_sgd_checks_nesterov_per_group():
    p = make_params()
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        optim.SGD([{"params": {"w": p["w"]}, "momentum": 0.9, "nesterov": True},
                   {"params": {"b": p["b"]}, "nesterov": True}], lr=0.1)


# ----------------------------------------------------------------------------- weight decay added
# options that keep a step's other moves out of the probe below: ASGD's own decay, the perturbed
# methods' noise
QUIET = {"asgd": {"lambd": 0.0}, **{n: {"radius": 0.0} for n in ("perturbed_gd", "perturbed_sgd", "pgd")}}


@pytest.mark.parametrize("name", [n for n in FIRST_ORDER if "weight_decay" in make(n, make_params()).defaults])
def test_decays_decoupled_says_how_each_optimizer_decays(name):
    """``decays_decoupled(group)`` is what GaLore, GoLore and RSO read to decay the full W the way
    their inner optimizer would (with Lion or NAdamW inside they took the L2 path before and did
    no decoupled decay at all). Decoupled: a zero gradient moves theta to theta*(1 - lr*wd)
    exactly. L2: the gradient -wd*theta cancels the term g + wd*theta, and theta stays. Block and
    subspace methods answer for their inner optimizer (AdamW by default: decoupled). SOAP's
    first step only builds its preconditioner, so it decays once in two steps."""
    lr, wd = 1e-2, 0.1
    p = make_params()
    start = {n: a.copy() for n, a in p.items()}
    opt = make(name, p, lr=lr, weight_decay=wd, **QUIET.get(name, {}))
    decoupled = opt.decays_decoupled(opt.param_groups[0])
    steps = 2 if name == "soap" else 1
    for _ in range(steps):
        grads = {n: np.zeros_like(a) if decoupled else -wd * a for n, a in p.items()}
        if opt.uses_closure:
            opt.step(closure=lambda: (0.0, grads))
        else:
            opt.step(grads)
    for n in p:
        want = start[n] * (1.0 - lr * wd) if decoupled else start[n]
        np.testing.assert_allclose(p[n], want, rtol=1e-12, atol=1e-15, err_msg=f"{name} {n} decoupled={decoupled}")
    assert decoupled == (name in {"adamw", "lion", "adafactor", "muon", "adam-mini", "soap", "rprop", "flora",
                                  "galore", "golore", "rso", "badam", "lisa", "misa"}), name


@pytest.mark.parametrize("inner,kw", [("lion", {}), ("nadam", {"decoupled_weight_decay": True}),
                                      ("radam", {"decoupled_weight_decay": True}), ("muon", {})])
def test_galore_decays_the_full_weights_as_its_decoupled_inner_optimizer_does(inner, kw):
    """A zero gradient: the inner optimizer alone moves W to W*(1 - lr*wd); GaLore around it must
    too (it added wd*W to the gradient instead, which these optimizers' sign or normalisation
    turned into a move ~10x larger)."""
    lr, wd = 1e-2, 0.1
    for name, extra in ((inner, kw), ("galore", dict(rank=2, inner=inner, inner_kwargs=kw))):
        p = make_params()
        start = {n: a.copy() for n, a in p.items()}
        opt = optim.create(name, p, lr=lr, weight_decay=wd, **extra)
        assert opt.decays_decoupled(opt.param_groups[0])
        opt.step({n: np.zeros_like(a) for n, a in p.items()})
        for n in p:
            np.testing.assert_allclose(p[n], start[n] * (1 - lr * wd), rtol=1e-12, err_msg=f"{name} {n}")
    for flag in (False, True):
        opt = optim.create(inner, make_params(), weight_decay=wd, **{**kw, **({"decoupled_weight_decay": flag}
                                                                          if kw else {})})
        assert opt.decays_decoupled(opt.param_groups[0]) is (flag or not kw)


def test_weight_decay_of_ista_agd_fista_is_l2_in_the_gradient():
    x0, g, lr, wd = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -0.2]), 0.1, 0.5
    x1 = x0 - lr * (g + wd * x0)
    p = {"x": x0.copy()}
    optim.ISTA(p, lr=lr, weight_decay=wd).step({"x": g})
    np.testing.assert_array_equal(p["x"], x1)
    for cls in (optim.AGD, optim.FISTA):            # first step: y_2 = x_1 + beta (x_1 - x_0)
        p = {"x": x0.copy()}
        opt = cls(p, lr=lr, weight_decay=wd)
        opt.step({"x": g})
        np.testing.assert_array_equal(opt.iterates()["x"], x1)
        beta = 0.25 if cls is optim.AGD else 0.0    # AGD: (k-1)/(k+2) at k=2; FISTA: t_1 = 1
        np.testing.assert_allclose(p["x"], x1 + beta * (x1 - x0), rtol=1e-15)


def test_perturbed_gd_threshold_sees_the_decayed_gradient():
    """Zero gradient of f far from 0: with weight decay the objective's gradient wd*x is large,
    so no perturbation; without, the small-gradient test fires."""
    for wd, perturbs in ((0.0, 1), (0.5, 0)):
        p = {"x": np.full(4, 3.0)}
        opt = optim.PerturbedGD(p, lr=0.1, g_thres=0.1, radius=0.01, weight_decay=wd)
        opt.step({"x": np.zeros(4)})
        assert opt.perturbations == perturbs
        if wd:
            np.testing.assert_array_equal(p["x"], 3.0 - 0.1 * (0.5 * 3.0))
