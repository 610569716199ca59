"""Lion, Adafactor, Muon and Adam-mini (optim/modern.py): each against torch or a direct
transcription of its paper in float64, its state bytes, a checkpoint resumed mid-run, and bad
options refused naming them."""
import numpy as np
import pytest

import optim

SHAPES = {"vec": (7,), "wide": (3, 5), "tall": (6, 2), "cube": (2, 3, 4)}
STEPS = 25


def make_params(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s) for n, s in shapes.items()}


def grads_at(params, t, seed=1):
    """Gradients of a noisy quadratic at the current parameters (so the trajectory matters)."""
    rng = np.random.default_rng([seed, t])
    return {n: p - 0.3 + 0.5 * rng.standard_normal(p.shape) for n, p in params.items()}


def run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        opt.step(grads_at(params, t))


def assert_resumes_bit_for_bit(name, shapes=SHAPES, **kw):
    """12 steps, a checkpoint through flatten/unflatten, a fresh optimizer, 13 more: the same
    parameters as 25 uninterrupted steps."""
    straight = make_params(shapes)
    run(optim.create(name, straight, **kw), straight, STEPS)
    resumed = make_params(shapes)
    first = optim.create(name, resumed, **kw)
    run(first, resumed, 12)
    sd = optim.unflatten_state_dict(optim.flatten_state_dict(first.state_dict()))
    saved = {n: p.copy() for n, p in resumed.items()}
    params = {n: p.copy() for n, p in saved.items()}
    second = optim.create(name, params, **kw)
    second.load_state_dict(sd)
    run(second, params, STEPS - 12, start=12)
    for n in straight:
        np.testing.assert_array_equal(params[n], straight[n], err_msg=n)


# ----------------------------------------------------------------------------- Lion
def lion_algorithm_2(params, grads_fn, steps, lr, b1, b2, wd):
    """Chen et al. (2023), Algorithm 2, line by line."""
    x = {n: p.copy() for n, p in params.items()}
    m = {n: np.zeros_like(p) for n, p in params.items()}
    for t in range(steps):
        g = grads_fn(x, t)
        for n in x:
            c = b1 * m[n] + (1 - b1) * g[n]
            x[n] = x[n] - lr * (np.sign(c) + wd * x[n])
            m[n] = b2 * m[n] + (1 - b2) * g[n]
    return x


@pytest.mark.parametrize("kw", [{}, {"lr": 3e-3, "betas": (0.8, 0.95), "weight_decay": 0.3}])
def test_lion_is_algorithm_2_of_the_paper(kw):
    params = make_params()
    expected = lion_algorithm_2(params, grads_at, STEPS, kw.get("lr", 1e-4),
                                *kw.get("betas", (0.9, 0.99)), kw.get("weight_decay", 0.0))
    run(optim.create("lion", params, **kw), params, STEPS)
    for n in params:
        np.testing.assert_allclose(params[n], expected[n], rtol=1e-10, atol=0, err_msg=n)


def test_lion_moves_every_coordinate_by_lr_on_the_first_step():
    params = make_params()
    before = {n: p.copy() for n, p in params.items()}
    optim.create("lion", params, lr=0.01).step(grads_at(params, 0))
    for n in params:
        np.testing.assert_allclose(np.abs(params[n] - before[n]), 0.01, rtol=1e-12)


def test_lion_state_bytes_and_resume():
    params = {n: p.astype(np.float32) for n, p in make_params().items()}
    opt = optim.create("lion", params)
    assert opt.expected_state_bytes() == sum(p.nbytes for p in params.values())
    assert_resumes_bit_for_bit("lion", lr=1e-3, weight_decay=0.1)


@pytest.mark.parametrize("kw,match", [({"betas": (1.0, 0.99)}, r"betas\[0\] must be in \[0, 1\)"),
                                      ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
                                      ({"weight_decay": -1.0}, "weight_decay"),
                                      ({"lr": -1.0}, "learning rate")])
def test_lion_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.create("lion", make_params(), **kw)
