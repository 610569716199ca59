"""LR schedules (shape, use with any optimizer), clipping by global norm, SGD samplers."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optim
from optim import schedules
from optim.sampling import ImportanceSampling, RandomReshuffling, WithReplacement, make_sampler


def lrs(name, n, base=0.1, **kw):
    p = {"x": np.zeros(2)}
    opt = optim.SGD(p, lr=base)
    s = schedules.create(name, opt, **kw)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        s.step()
    return np.array(out)


def test_cosine_with_warmup():
    lr = lrs("cosine", 110, total_steps=100, warmup_steps=10, min_ratio=0.1)
    np.testing.assert_allclose(lr[:10], 0.1 * np.arange(1, 11) / 10)
    assert lr[10] == pytest.approx(0.1)
    assert lr[55] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))      # halfway through the decay
    np.testing.assert_allclose(lr[100:], 0.01)
    assert np.all(np.diff(lr[10:]) <= 1e-15)


def test_wsd_linear_step_constant():
    lr = lrs("wsd", 100, total_steps=100, warmup_steps=5, decay_frac=0.2, min_ratio=0.0)
    assert np.all(lr[5:80] == 0.1) and lr[80] == pytest.approx(0.1) and lr[99] == pytest.approx(0.1 / 20)
    lr = lrs("linear", 11, total_steps=10, end_ratio=0.5)
    np.testing.assert_allclose(lr, 0.1 * np.r_[np.linspace(1, 0.5, 11)[:10], 0.5])
    lr = lrs("step", 7, step_size=3, gamma=0.5)
    np.testing.assert_allclose(lr, 0.1 * 0.5 ** np.array([0, 0, 0, 1, 1, 1, 2]))
    assert np.all(lrs("constant", 5) == 0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.create("nope", optim.SGD({"x": np.zeros(1)}))


def test_scheduler_scales_every_group_and_drives_any_optimizer():
    p = optim.param_groups_no_decay({"w": np.ones((2, 2)), "b": np.ones(2)}, 0.1, lr=1.0)
    p[1]["lr"] = 0.5
    for name in ("adamw", "rmsprop", "heavyball", "fista"):
        opt = optim.create(name, [dict(g) for g in p])
        s = schedules.create("step", opt, step_size=1, gamma=0.5)
        s.step()
        s.step()
        assert s.get_last_lr() == [0.25, 0.125]


def test_scheduler_state_dict_resumes_and_rejects_other_group_counts():
    p = {"w": np.ones((2, 2)), "b": np.ones(2)}
    a = optim.schedules.create("cosine", optim.SGD(p, lr=0.1), total_steps=10, warmup_steps=2)
    for _ in range(4):
        a.step()
    b = optim.schedules.create("cosine", optim.SGD(dict(p), lr=0.1), total_steps=10, warmup_steps=2)
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr() and b.last_step == 4
    two = optim.SGD(optim.param_groups_no_decay(p, 0.0), lr=0.1)  # two groups
    c = optim.schedules.create("cosine", two, total_steps=10)
    with pytest.raises(ValueError, match="1 base lrs for 2 param groups"):
        c.load_state_dict(a.state_dict())  # used to set the first group and ignore the second


@given(seed=st.integers(0, 1000), max_norm=st.floats(0.01, 10))
def test_clip_grad_norm(seed, max_norm):
    rng = np.random.default_rng(seed)
    g = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5),
         "c": None}
    orig = {k: v.copy() for k, v in g.items() if v is not None}
    total = schedules.clip_grad_norm_(g, max_norm)
    expect = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in orig.values()))
    assert total == pytest.approx(expect, rel=1e-12)
    new = schedules.global_grad_norm(g)
    assert new == pytest.approx(min(expect, max_norm), rel=1e-5)
    coef = new / expect
    for k in orig:                                   # direction kept, dtype kept
        np.testing.assert_allclose(g[k], orig[k] * coef, rtol=1e-5)
        assert g[k].dtype == orig[k].dtype


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("where", [0, 1])
def test_clip_nonfinite(norm_type, where):
    """A NaN in any tensor makes the norm NaN (the inf-norm took Python's max, which keeps a NaN
    only when it comes first: one in the second tensor was dropped and the gradients scaled)."""
    g = {"a": np.array([4.0, -3.0]), "b": np.array([0.5, 0.25])}
    g["ab"[where]][1] = np.nan
    before = {n: a.copy() for n, a in g.items()}
    assert math.isnan(schedules.clip_grad_norm_(g, 1.0, norm_type=norm_type))
    assert math.isnan(schedules.global_grad_norm(g, norm_type=norm_type))
    for n in g:                                           # left alone
        np.testing.assert_array_equal(g[n], before[n])
    with pytest.raises(FloatingPointError, match=f"'{'ab'[where]}'"):
        schedules.clip_grad_norm_(g, 1.0, norm_type=norm_type, error_if_nonfinite=True)


@pytest.mark.parametrize("norm_type", [0, -1.0, -math.inf, "fro"])
def test_clip_refuses_a_norm_type_that_is_no_norm(norm_type):
    with pytest.raises(ValueError, match="norm_type must be a number > 0 or math.inf"):
        schedules.clip_grad_norm_({"a": np.ones(3)}, 1.0, norm_type=norm_type)


def test_random_reshuffling_visits_each_index_once_per_epoch():
    s = RandomReshuffling(10, batch_size=4, seed=0)
    for _ in range(3):
        idx = np.concatenate([s.next()[0] for _ in range(3)])   # 4 + 4 + 2
        assert sorted(idx) == list(range(10))


def test_with_replacement_is_uniform():
    s = WithReplacement(5, batch_size=20000, seed=1)
    idx, w = s.next()
    assert np.all(w == 1)
    np.testing.assert_allclose(np.bincount(idx, minlength=5) / 20000, 0.2, atol=0.015)


def test_importance_sampling_weights_make_the_estimate_unbiased():
    rng = np.random.default_rng(0)
    n = 7
    grads = rng.standard_normal((n, 3))
    raw = rng.uniform(0.1, 2.0, n)
    s = ImportanceSampling(raw, batch_size=40000, seed=2)
    idx, ws = s.next()
    assert set(idx) == set(range(n))
    # each index always carries the same weight; read the sampler's weight of every index
    w = np.empty(n)
    for i in range(n):
        assert np.ptp(ws[idx == i]) == 0
        w[i] = ws[idx == i][0]
    # exact expectation over the sampling distribution p = raw / sum(raw) (computed here, not
    # read from the sampler): sum_i p_i w_i grad_i = mean_i grad_i
    np.testing.assert_allclose((raw / raw.sum() * w) @ grads, grads.mean(0), rtol=1e-12)
    # and the indices come at the frequencies p
    np.testing.assert_allclose(np.bincount(idx, minlength=n) / 40000, raw / raw.sum(), atol=0.01)


def test_sampler_state_round_trip():
    for kind in ("replacement", "reshuffle", "importance"):
        a = make_sampler(kind, 9, 2, seed=3, probs=np.arange(1, 10))
        a.next()
        sd = optim.unflatten_state_dict(optim.flatten_state_dict(a.state_dict()))
        rest = [a.next()[0] for _ in range(7)]
        b = make_sampler(kind, 9, 2, seed=99, probs=np.arange(1, 10))
        b.load_state_dict(sd)
        assert all(np.array_equal(x, b.next()[0]) for x in rest)


# ----------------------------------------------------------------------------- against torch
def _torch_lrs(make, n, base=0.1):
    torch = pytest.importorskip("torch", reason="optional: pip install -e .[bench] (make test installs it)")
    opt = torch.optim.SGD([torch.zeros(2, dtype=torch.float64, requires_grad=True)], lr=base)
    sched = make(torch.optim.lr_scheduler, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name, kw, make", [
    ("step", dict(step_size=7, gamma=0.5), lambda S, o: S.StepLR(o, step_size=7, gamma=0.5)),
    ("cosine", dict(total_steps=40, min_ratio=0.1),
     lambda S, o: S.CosineAnnealingLR(o, T_max=40, eta_min=0.01)),
    ("linear", dict(total_steps=30, end_ratio=0.2),
     lambda S, o: S.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=30)),
    ("cosine", dict(total_steps=40, warmup_steps=5, min_ratio=0.1),      # warmup (t+1)/W, then cosine
     lambda S, o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=4),
                                     S.CosineAnnealingLR(o, T_max=35, eta_min=0.01)], milestones=[5])),
], ids=["step_decay", "cosine", "linear", "warmup_cosine"])
def test_schedules_equal_torchs_lr_schedulers(name, kw, make):
    # up to the schedule's end: past it ours holds min_ratio where CosineAnnealingLR rises again
    n = kw["total_steps"] if "total_steps" in kw else 30
    np.testing.assert_allclose(lrs(name, n, **kw), _torch_lrs(make, n), rtol=1e-12, atol=1e-15)


def test_lr_scheduler_equals_lambda_lr_through_a_resume():
    f = lambda t: 0.9 ** t + 0.01 * (t % 3)                              # noqa: E731
    torch_lrs = _torch_lrs(lambda S, o: S.LambdaLR(o, f), 20)
    p = {"x": np.zeros(2)}
    opt = optim.SGD(p, lr=0.1)
    sched = schedules.LRScheduler(opt, f)
    ours = []
    for t in range(20):
        ours.append(opt.param_groups[0]["lr"])
        if t == 9:                                                        # resume from a state dict
            sd = sched.state_dict()
            opt = optim.SGD(p, lr=0.1)
            sched = schedules.LRScheduler(opt, f)
            sched.load_state_dict(sd)
        sched.step()
    np.testing.assert_allclose(ours, torch_lrs, rtol=1e-12, atol=0)
