"""The fused update kernels behind optim.Adam, AdamW and SGD (minigrad.kernels.adam_step,
sgd_step) equal the optimizers' NumPy updates (optim.adaptive.adam_update, optim.sgd.sgd_update)
bit for bit; the public classes take the kernel on the numba backend whenever it applies and
the NumPy update otherwise (numpy backend, float16, non-contiguous arrays).

Bit-identical, not close: each kernel performs its twin's operations in the same order in the
parameter's dtype, without fastmath (no FMA contraction, no reassociation), so any difference
is a bug. Runs of several steps compare every parameter and every state array."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
import minigrad.kernels as K
import optim
from optim.adaptive import adam_update
from optim.sgd import sgd_update

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40)
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**31 - 1)


def _params(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(shape).astype(dtype),
            "b": rng.standard_normal(shape[-1:]).astype(dtype)}


def _run(backend, make, params, seed, steps):
    """``steps`` steps of ``make(params)`` on ``backend``; returns the final params and state."""
    params = {n: p.copy() for n, p in params.items()}
    rng = np.random.default_rng(seed + 1)
    with mg.use_backend(backend):
        opt = make(params)
        for _ in range(steps):
            scale = rng.choice([1e-3, 1.0, 1e3])            # tiny, unit and large gradients
            opt.step({n: (scale * rng.standard_normal(p.shape)).astype(p.dtype) for n, p in params.items()})
    return params, optim.flatten_state_dict(opt.state_dict())


def _assert_identical(a, b):
    (pa, sa), (pb, sb) = a, b
    for n in pa:
        assert pa[n].dtype == pb[n].dtype and np.array_equal(pa[n], pb[n]), n
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k


@given(seeds, shapes, dtypes, st.sampled_from(["adam", "adamw"]), st.sampled_from([0.0, 1e-2, 0.3]),
       st.booleans(), st.booleans(), st.floats(1e-4, 0.3), st.sampled_from([(0.9, 0.999), (0.8, 0.95), (0.0, 0.5)]),
       st.sampled_from([1e-8, 1e-3, 0.0]), st.integers(1, 4))
def test_adam_fused_equals_numpy_update(seed, shape, dtype, name, wd, amsgrad, maximize, lr, betas, eps, steps):
    def make(params):
        return optim.create(name, params, lr=lr, betas=betas, eps=eps, weight_decay=wd, amsgrad=amsgrad,
                            maximize=maximize)

    params = _params(seed, shape, dtype)
    _assert_identical(_run("numba", make, params, seed, steps), _run("numpy", make, params, seed, steps))


@given(seeds, shapes, dtypes, st.sampled_from([0.0, 1e-2]), st.booleans(), st.floats(1e-4, 0.5),
       st.sampled_from([(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.1, False), (0.5, 0.0, True)]),
       st.integers(1, 4))
def test_sgd_fused_equals_numpy_update(seed, shape, dtype, wd, maximize, lr, momentum, steps):
    mu, dampening, nesterov = momentum

    def make(params):
        return optim.SGD(params, lr=lr, momentum=mu, dampening=dampening, weight_decay=wd,
                         nesterov=nesterov, maximize=maximize)

    params = _params(seed, shape, dtype)
    _assert_identical(_run("numba", make, params, seed, steps), _run("numpy", make, params, seed, steps))


def test_hyperparameters_given_as_numpy_scalars_give_the_same_update():
    """A group may hold NumPy float64 scalars (a loaded checkpoint, a scheduler): both updates
    compute in the parameter's dtype all the same."""
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    out = []
    for f in (float, np.float64):
        for update in (adam_update, K.adam_step):
            q, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
            update(q, g, m, v, None, step=1, lr=f(1e-2), beta1=f(0.9), beta2=f(0.99), eps=f(1e-8),
                   weight_decay=f(0.1), decoupled=True)
            out.append(q)
    assert all(q.dtype == np.float32 and np.array_equal(q, out[0]) for q in out)


def test_amsgrad_keeps_a_nan_in_its_running_max_as_the_twin_does():
    # the kernel's max(vmax, v) dropped a NaN v (Python's max), the twin's np.maximum keeps it
    p0 = np.array([1.0, 2.0, 3.0], np.float32)
    g = np.array([0.5, np.nan, -0.5], np.float32)
    out = []
    for update in (adam_update, K.adam_step):
        q, m, v, vmax = p0.copy(), np.zeros(3, np.float32), np.zeros(3, np.float32), np.full(3, 0.25, np.float32)
        update(q, g, m, v, vmax, step=1, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8)
        out.append((q, vmax))
    (q0, vmax0), (q1, vmax1) = out
    assert np.isnan(vmax0[1]) and np.isnan(vmax1[1])
    np.testing.assert_array_equal(q0, q1)  # (assert_array_equal counts NaN as equal to NaN)
    np.testing.assert_array_equal(vmax0, vmax1)


@pytest.mark.parametrize("make", [lambda p: optim.AdamW(p, lr=1e-2), lambda p: optim.Adam(p, amsgrad=True),
                                  lambda p: optim.SGD(p, lr=0.1, momentum=0.9)], ids=["adamw", "adam", "sgd"])
def test_the_public_classes_take_the_kernel_where_it_applies(monkeypatch, make):
    calls = []
    for name in ("adam_step", "sgd_step"):                 # count the kernels' calls (and run them)
        real = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _real=real, **kw: calls.append(1) or _real(*a, **kw))
    base = np.random.default_rng(0).standard_normal((6, 5))
    cases = {"float32": base.astype(np.float32), "float64": base,
             "float16": base.astype(np.float16),          # no float16 kernel
             "transposed": base.astype(np.float32).T}     # not C-contiguous

    def run(backend, p0):
        p = {"x": p0.copy(order="K")}
        with mg.use_backend(backend):
            opt = make(p)
            for t in range(3):
                opt.step({"x": np.random.default_rng(t).standard_normal(p0.shape).astype(p0.dtype)})
        return p["x"]

    for case, p0 in cases.items():
        calls.clear()
        plain = run("numpy", p0)
        assert not calls, case
        fused = run("numba", p0)
        assert len(calls) == (3 if case in ("float32", "float64") else 0), case
        assert fused.dtype == p0.dtype and np.array_equal(fused, plain), case


def test_a_run_may_switch_backends_and_resume_from_a_state_dict():
    """Both paths keep the same state, so a checkpoint of one continues on the other, bit for bit."""
    rng = np.random.default_rng(3)
    p0 = {"w": rng.standard_normal((7, 3)).astype(np.float32)}
    grads = [{"w": rng.standard_normal((7, 3)).astype(np.float32)} for _ in range(6)]

    def run(backends, resume_at=None):
        p = {n: a.copy() for n, a in p0.items()}
        opt = optim.AdamW(p, lr=1e-2, amsgrad=True)
        for t, (g, backend) in enumerate(zip(grads, backends)):
            if t == resume_at:
                sd = optim.unflatten_state_dict(optim.flatten_state_dict(opt.state_dict()))
                opt = optim.AdamW(p, lr=1e-2, amsgrad=True)
                opt.load_state_dict(sd)
            with mg.use_backend(backend):
                opt.step(g)
        return p["w"]

    plain = run(["numpy"] * 6)
    assert np.array_equal(run(["numba"] * 6), plain)
    assert np.array_equal(run(["numba"] * 3 + ["numpy"] * 3, resume_at=3), plain)
    assert np.array_equal(run(["numpy", "numba"] * 3, resume_at=2), plain)


def test_kernel_wrappers_refuse_bad_buffers():
    p = np.zeros((4, 3), np.float32)
    hp = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    with pytest.raises(ValueError, match="adam_step: exp_avg must be a C-contiguous float32 array of p's shape"):
        K.adam_step(p, p.copy(), np.zeros((3, 4), np.float32), p.copy(), **hp)
    with pytest.raises(ValueError, match="adam_step: g must be a C-contiguous float32"):
        K.adam_step(p, p.astype(np.float64), p.copy(), p.copy(), **hp)
    with pytest.raises(ValueError, match="adam_step: exp_avg_sq must be a C-contiguous"):
        K.adam_step(p, p.copy(), p.copy(), np.zeros((3, 4), np.float32).T, **hp)
    with pytest.raises(TypeError, match="adam_step: p must be a float32 or float64"):
        K.adam_step(p.astype(np.float16), p.copy(), p.copy(), p.copy(), **hp)
    with pytest.raises(ValueError, match="step counts from 1"):
        K.adam_step(p, p.copy(), p.copy(), p.copy(), **{**hp, "step": 0})
    with pytest.raises(ValueError, match="sgd_step: momentum=0.9 needs a momentum_buffer"):
        K.sgd_step(p, p.copy(), None, lr=0.1, momentum=0.9)


def test_the_trainer_drives_the_fused_adamw_of_a_gpt_as_the_numpy_update(monkeypatch):
    """The bench's training step (optim.create("adamw", ...) under a cosine schedule, through the
    Trainer, model on the numba backend): the fused optimizer path gives the same losses and
    weights as the NumPy update, bit for bit, and the schedule's lr reaches the kernel."""
    from models.gpt import GPT, GPTConfig
    from models.training import Trainer, lm_loss

    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)

    def train(fused):
        model = GPT(cfg, seed=0)
        opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=1e-2,
                           betas=(0.9, 0.95), weight_decay=0.1)
        trainer = Trainer(model, lm_loss, opt, lambda rng: (rng.integers(0, 11, (4, 8)),) * 2, steps=4,
                          schedule="cosine", schedule_kwargs={"warmup_steps": 2}, seed=0, progress=False)
        if not fused:                                      # no kernel: the NumPy update
            monkeypatch.setattr(optim.base, "backend_kernels", lambda x: None)
        with mg.use_backend("numba"):
            losses = [trainer.train_step() for _ in range(4)]
        monkeypatch.undo()
        return losses, {n: p.data.copy() for n, p in model.named_parameters()}, trainer

    fused_losses, fused, trainer = train(True)
    plain_losses, plain, _ = train(False)
    np.testing.assert_allclose(trainer.lr, 0.5 * 1e-2, rtol=1e-12)   # step 3 of 4: half the peak
    assert fused_losses == plain_losses
    init = GPT(cfg, seed=0).state_dict()
    for n in plain:
        assert np.array_equal(fused[n], plain[n]), n
        assert not np.array_equal(fused[n], init[n]), n             # it moved
