"""The optimizer interface: registry, groups, validation (params untouched on error),
state_dict round trips (bit-identical resumes, through an allow_pickle=False .npz)."""
import numpy as np
import pytest

import optim
from optim.base import Optimizer
from optim_helpers import grads_at

MINE = ["adagrad", "adam", "adamw", "agd", "amsgrad", "fista", "gd", "heavyball", "ista",
        "momentum", "nesterov", "perturbed_gd", "rmsprop", "sgd"]
EXTRA = {"perturbed_gd": dict(g_thres=100.0, t_thres=1, radius=0.1),
         "ista": dict(prox=optim.prox.L1(0.01)), "fista": dict(prox=optim.prox.L1(0.01)),
         "adamw": dict(weight_decay=0.1), "sgd": dict(momentum=0.9, weight_decay=0.01)}


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {"emb.weight": rng.standard_normal((5, 3)).astype(dtype),
            "ln.bias": rng.standard_normal(3).astype(dtype),
            "head.weight": rng.standard_normal((3, 4)).astype(dtype)}


def test_registry_lists_and_creates_everything():
    names = optim.available()
    for n in MINE:
        assert n in names
        opt = optim.create(n.upper(), make_params())  # case-insensitive
        assert isinstance(opt, Optimizer)
    with pytest.raises(ValueError, match="unknown optimizer 'nope'.*available"):
        optim.create("nope", make_params())


def test_register_refuses_silent_collision():
    with pytest.raises(ValueError, match="already registered"):
        optim.register("adam")(lambda params, **kw: None)


def test_param_forms_and_groups():
    p = make_params()
    a = optim.SGD(p, lr=0.1)
    b = optim.SGD(list(p.items()), lr=0.1)
    assert list(a.params) == list(b.params) == list(p)
    groups = optim.param_groups_no_decay(p, 0.1)
    assert set(groups[0]["params"]) == {"emb.weight", "head.weight"} and groups[0]["weight_decay"] == 0.1
    assert set(groups[1]["params"]) == {"ln.bias"} and groups[1]["weight_decay"] == 0.0
    opt = optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
    # the no-decay group is not decayed: with zero gradient, only decayed params move
    before = {n: v.copy() for n, v in p.items()}
    opt.step({n: np.zeros_like(v) for n, v in p.items()})
    assert np.array_equal(p["ln.bias"], before["ln.bias"])
    np.testing.assert_allclose(p["emb.weight"], before["emb.weight"] * (1 - 1e-3 * 0.1), rtol=1e-6)


def test_tensor_parameters_are_updated_in_place():
    from minigrad import nn
    lin = nn.Linear(3, 2)
    opt = optim.SGD(lin.named_parameters(), lr=0.5)
    w0 = lin.weight.data.copy()
    opt.step({n: np.ones_like(p.data) for n, p in lin.named_parameters()})
    np.testing.assert_array_equal(lin.weight.data, w0 - np.float32(0.5))


def test_duplicate_and_tied_params_rejected():
    p = make_params()
    with pytest.raises(ValueError, match="same array"):
        optim.SGD({"a": p["ln.bias"], "b": p["ln.bias"]})
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": {"a": p["ln.bias"]}}, {"params": {"a": p["emb.weight"]}}])


BAD = [
    ("unknown", lambda g, p: g.update({"nope": np.zeros(2, np.float32)}), ValueError, "nope"),
    ("missing", lambda g, p: g.pop("ln.bias"), ValueError, "ln.bias"),
    ("shape", lambda g, p: g.update({"ln.bias": np.zeros(4, np.float32)}), ValueError, r"ln.bias.*\(4,\)"),
    ("dtype", lambda g, p: g.update({"ln.bias": np.zeros(3)}), TypeError, "ln.bias.*float64"),
    ("nan", lambda g, p: g["head.weight"].__setitem__((1, 1), np.nan), FloatingPointError, "head.weight"),
    ("inf", lambda g, p: g["head.weight"].__setitem__((0, 1), np.inf), FloatingPointError, "head.weight"),
    ("type", lambda g, p: g.update({"ln.bias": [0.0, 0.0, 0.0]}), TypeError, "ln.bias"),
]


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_grads_raise_naming_param_and_leave_everything_unchanged(name, case):
    _, corrupt, exc, pattern = case
    p = make_params()
    opt = optim.create(name, p, **EXTRA.get(name, {}))
    opt.step(grads_at(p, 0))                       # build some state first
    snap_p = {n: v.copy() for n, v in p.items()}
    snap_s = optim.flatten_state_dict(opt.state_dict())
    g = grads_at(p, 1)
    corrupt(g, p)
    with pytest.raises(exc, match=pattern):
        opt.step(g)
    for n in p:
        assert np.array_equal(p[n], snap_p[n]), n
    after = optim.flatten_state_dict(opt.state_dict())
    assert after.keys() == snap_s.keys()
    assert all(np.array_equal(after[k], snap_s[k]) for k in after)


@pytest.mark.parametrize("lr", [-1e-3, float("nan")])
def test_bad_lr_rejected_at_construction_and_at_step(lr):
    p = make_params()
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam(p, lr=lr)
    opt = optim.Adam(p, lr=1e-3)
    opt.param_groups[0]["lr"] = lr                  # e.g. a broken schedule
    snap = {n: v.copy() for n, v in p.items()}
    with pytest.raises(ValueError, match="learning rate"):
        opt.step(grads_at(p, 0))
    assert all(np.array_equal(p[n], snap[n]) for n in p)


@pytest.mark.parametrize("make", [
    lambda p: optim.HeavyBall(p, beta=1.5),
    lambda p: optim.AGD(p, momentum="strong"),   # refused at construction, not at the first step
    lambda p: optim.AGD(p, momentum=-0.1),
    lambda p: optim.SGD(p, momentum=1.0),
    lambda p: optim.RMSProp(p, momentum=-0.5),          # ran silently without momentum
])
def test_bad_momentum_rejected_at_construction(make):
    with pytest.raises(ValueError, match="(beta|momentum) must be"):
        make(make_params())


@pytest.mark.parametrize("name,kw", [
    ("adagrad", {"initial_accumulator_value": -1.0}),    # moved x from 1 to -1e8 in one step
    ("adagrad", {"lr_decay": -0.1}), ("adagrad", {"eps": -1e-10}), ("rmsprop", {"eps": -1e-8}),
])
def test_adagrad_and_rmsprop_refuse_negative_options_as_torch(name, kw):
    key = next(iter(kw))
    with pytest.raises(ValueError, match=f"{key} must be a number >= 0, got {kw[key]}"):
        optim.create(name, make_params(), **kw)


def test_nonfinite_skip_option_skips_whole_step():
    p = make_params()
    opt = optim.Adam(p, lr=1e-2, nonfinite="skip")
    g = grads_at(p, 0)
    g["ln.bias"][0] = np.nan
    snap = {n: v.copy() for n, v in p.items()}
    opt.step(g)
    assert opt.skipped_steps == 1 and opt.state == {}
    assert all(np.array_equal(p[n], snap[n]) for n in p)
    opt.step(grads_at(p, 1))
    assert not np.array_equal(p["ln.bias"], snap["ln.bias"])


def test_none_grad_skips_that_parameter_only():
    p = make_params()
    opt = optim.Adam(p, lr=1e-2)
    g = grads_at(p, 0)
    g["ln.bias"] = None
    snap = p["ln.bias"].copy()
    opt.step(g)
    assert np.array_equal(p["ln.bias"], snap) and "ln.bias" not in opt.state
    assert "emb.weight" in opt.state


def test_closure_returns_loss_and_steps():
    p = make_params(np.float64)
    opt = optim.GD(p, lr=0.1)

    def closure():
        return sum(float(np.sum((v - 0.5) ** 2)) for v in p.values()), \
            {n: 2 * (v - 0.5) for n, v in p.items()}
    l0 = opt.step(closure=closure)
    l1 = opt.step(closure=closure)
    assert l1 < l0
    with pytest.raises(TypeError, match="closure must return"):
        opt.step(closure=lambda: 1.0)


@pytest.mark.parametrize("name", MINE)
def test_state_dict_round_trip_is_bit_identical(name, tmp_path):
    """Run 6 steps; vs run 3, checkpoint to .npz (allow_pickle=False), restore into a fresh
    optimizer (and a scheduler), run 3 more: the parameters must be equal bit for bit."""
    def build(p):
        opt = optim.create(name, p, lr=0.01, **EXTRA.get(name, {}))
        return opt, optim.schedules.create("cosine", opt, total_steps=6, warmup_steps=2)

    def run(opt, sched, p, steps):
        for t in steps:
            opt.step(grads_at(p, t))
            sched.step()

    pa = make_params()
    run(*build(pa), pa, range(6))

    pb = make_params()
    opt, sched = build(pb)
    run(opt, sched, pb, range(3))
    np.savez(tmp_path / "ck.npz", **{f"p.{n}": v for n, v in pb.items()},
             **optim.flatten_state_dict(opt.state_dict(), prefix="opt."),
             **optim.flatten_state_dict(sched.state_dict(), prefix="sched."))
    with np.load(tmp_path / "ck.npz", allow_pickle=False) as f:
        ck = dict(f)
    pc = {n: ck[f"p.{n}"] for n in pb}
    opt, sched = build(pc)
    opt.load_state_dict(optim.unflatten_state_dict(ck, prefix="opt."))
    sched.load_state_dict(optim.unflatten_state_dict(ck, prefix="sched."))
    run(opt, sched, pc, range(3, 6))
    for n in pa:
        assert np.array_equal(pa[n], pc[n]), (name, n)
    if name == "perturbed_gd":
        assert opt.perturbations >= 2          # the RNG state was exercised across the resume


def test_load_state_dict_rejects_other_names():
    p = make_params()
    opt = optim.Adam(p)
    opt.step(grads_at(p, 0))
    sd = opt.state_dict()
    other = optim.Adam({"x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="do not match"):
        other.load_state_dict(sd)


def test_state_bytes_counts_moments():
    p = make_params()
    n = sum(v.nbytes for v in p.values())
    opt = optim.Adam(p)
    assert opt.state_bytes() == 0
    opt.step(grads_at(p, 0))
    assert opt.state_bytes() == 2 * n
    ams = optim.create("amsgrad", make_params())
    ams.step(grads_at(p, 0))
    assert ams.state_bytes() == 3 * n
    gd = optim.GD(make_params())
    gd.step(grads_at(p, 0))
    assert gd.state_bytes() == 0


@pytest.mark.parametrize("name", optim.available())
def test_a_misspelled_hyperparameter_is_an_error_for_every_optimizer(name):
    """A typo such as momentun=0.9 must not be stored silently in the group (and ignored)."""
    with pytest.raises(TypeError, match="momentun"):
        optim.create(name, {"x": np.zeros(3)}, lr=0.1, momentun=0.9)


@pytest.mark.parametrize("name, kw, says", [
    ("adam", {"betas": (0.9, 1.0)}, r"Adam: betas\[1\] must be in \[0, 1\), got 1.0"),
    ("adamw", {"eps": -1e-8}, "AdamW: eps must be a number >= 0"),
    ("nadam", {"betas": (0.9,)}, r"NAdam: betas must be a pair \(beta1, beta2\)"),
    ("radam", {"betas": (-0.1, 0.999)}, r"RAdam: betas\[0\] must be in \[0, 1\)"),
    ("adamax", {"eps": -1.0}, "Adamax: eps must be a number >= 0"),
    ("lion", {"betas": (0.9, 0.99, 0.9)}, "Lion: betas must be a pair"),
])
def test_betas_and_eps_are_checked_alike_and_name_the_optimizer(name, kw, says):
    params = make_params()
    before = {n: p.copy() for n, p in params.items()}
    with pytest.raises(ValueError, match=says):
        optim.create(name, params, **kw)
    assert all(np.array_equal(params[n], before[n]) for n in params)
