"""minigrad.checkpoint on small modules: same values and gradients as the plain call, dropout
masks redrawn identically, fewer bytes kept, float64 gradient check."""
import numpy as np
import pytest

import minigrad
import minigrad.functional as F
from minigrad import memory, nn


class Layer(nn.Module):
    def __init__(self, dim, p, seed):
        super().__init__()
        self.fc1 = nn.Linear(dim, 3 * dim, rng=seed)
        self.fc2 = nn.Linear(3 * dim, dim, rng=seed + 1)
        self.drop = nn.Dropout(p, rng=seed + 2)  # holds its own Generator

    def forward(self, x, rng=None):
        h = F.gelu(self.fc1(x))
        if rng is not None:
            h = F.dropout(h, 0.3, True, rng)
        return x + self.drop(self.fc2(h))


def _run(layers, x0, ckpt, rng_seed=5):
    rng = np.random.default_rng(rng_seed)
    for m in layers:
        m.zero_grad()
    x = minigrad.Tensor(x0, requires_grad=True)
    with memory.track() as led:
        h = x
        for m in layers:
            h = minigrad.checkpoint(m, h, rng=rng) if ckpt else m(h, rng=rng)
        loss = (h * h).mean()
        loss.backward()
    grads = {f"{i}.{n}": p.grad.copy() for i, m in enumerate(layers) for n, p in m.named_parameters()}
    return loss.item(), x.grad.copy(), grads, led.peak["activations"], rng.random()


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_checkpointed_stack_has_identical_gradients_and_keeps_less(p):
    dim, n = 8, 4
    layers = [Layer(dim, p, seed=10 * i) for i in range(n)]
    x0 = np.random.default_rng(0).standard_normal((5, dim)).astype(np.float32)
    plain = _run(layers, x0, ckpt=False)
    layers2 = [Layer(dim, p, seed=10 * i) for i in range(n)]  # same weights, fresh generators
    ck = _run(layers2, x0, ckpt=True)
    assert plain[0] == ck[0]
    assert np.array_equal(plain[1], ck[1])
    for k in plain[2]:
        assert np.array_equal(plain[2][k], ck[2][k]), k
    assert plain[4] == ck[4]  # the caller's generator continues exactly as without checkpointing
    assert ck[3] < plain[3]


def test_closure_with_explicit_params_and_constants():
    w = nn.Parameter(np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32))
    x = minigrad.Tensor(np.ones((2, 4), np.float32))  # needs no grad: only w makes it differentiable

    def f(x, scale):
        return (x @ w * scale).tanh()

    y = minigrad.checkpoint(f, x, 0.5, params=[w])
    assert y.requires_grad
    y.sum().backward()
    g_ck = w.grad.copy()
    w.grad = None
    f(x, 0.5).sum().backward()
    assert np.array_equal(g_ck, w.grad)


def test_a_recomputation_that_draws_other_masks_is_an_error_not_wrong_gradients():
    """A Dropout holding its own generator, inside a plain function: checkpoint cannot find the
    generator, the recomputation drew other masks, and backward returned the gradients of
    another function silently. Backward now compares the recomputed output with the forward's."""
    lin = nn.Linear(8, 8, rng=0)
    drop = nn.Dropout(0.5, rng=1)
    x = minigrad.Tensor(np.random.default_rng(2).standard_normal((16, 8)).astype(np.float32))

    def block(u):
        return drop(lin(u))

    y = minigrad.checkpoint(block, x, params=list(lin.parameters()))
    with pytest.raises(RuntimeError, match=r"recomputing block in backward gave another output.*own generator"):
        y.sum().backward()
    lin.zero_grad()
    drop.rng = np.random.default_rng(1)
    y = minigrad.checkpoint(drop, lin(x))          # the module itself: its generator is rewound
    y.sum().backward()
    g_ck = lin.weight.grad.copy()
    lin.zero_grad()
    drop.rng = np.random.default_rng(1)             # the same masks again, without checkpoint
    drop(lin(x)).sum().backward()
    assert np.array_equal(g_ck, lin.weight.grad)


def test_other_masks_under_a_layer_norm_are_caught_too():
    """After a LayerNorm every row has mean 0 and variance ~1 whatever the masks: Σx and Σx² of
    the output cannot tell the recomputation from the forward (a review session), the sum
    weighted by position can."""
    lin, ln, drop = nn.Linear(32, 32, rng=0), nn.LayerNorm(32), nn.Dropout(0.1, rng=1)
    x = minigrad.Tensor(np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32))

    def post_ln(u):
        return ln(u + drop(lin(u)))

    y = minigrad.checkpoint(post_ln, x, params=list(lin.parameters()) + list(ln.parameters()))
    with pytest.raises(RuntimeError, match="recomputing post_ln in backward gave another output"):
        y.sum().backward()


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_an_output_with_inf_or_nan_recomputed_alike_is_no_error(bad):
    """A non-finite output (an fp16 overflow, which a loss scaler then skips) is recomputed with
    the same non-finite sums: backward must go through, not report a mismatch."""
    lin = nn.Linear(4, 4, rng=0)
    x = minigrad.Tensor(np.array([[1.0, bad, 0.0, 2.0]], np.float32))
    y = minigrad.checkpoint(lin, x)
    assert not np.isfinite(y.data).all()
    y.backward(np.ones_like(y.data))
    assert lin.weight.grad is not None


def test_gradcheck_float64():
    rng = np.random.default_rng(2)
    lin = nn.Linear(3, 3, dtype=np.float64, rng=3)
    x = minigrad.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    minigrad.gradcheck(lambda t: minigrad.checkpoint(lambda u: lin(u).tanh() * u, t), [x])


def test_numpys_global_rng_is_rewound_for_recomputation_and_restored_after():
    """An op drawing from NumPy's legacy global RNG (np.random.*) inside `fn`: backward rewinds
    that RNG so the recomputation draws the forward's numbers (same gradients), then puts it back
    where it was, so draws made after the checkpoint (in the forward and after backward)
    are those of the run without checkpointing."""
    w = nn.Parameter(np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32))
    x0 = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)

    def f(t):
        noise = np.random.standard_normal(t.shape).astype(np.float32)
        return (t @ w).tanh() * minigrad.Tensor(noise)

    def run(ckpt):
        w.grad = None
        np.random.seed(7)
        x = minigrad.Tensor(x0, requires_grad=True)
        h = minigrad.checkpoint(f, x, params=[w]) if ckpt else f(x)
        h = h * minigrad.Tensor(np.random.standard_normal(h.shape).astype(np.float32))  # drawn after fn
        (h * h).sum().backward()
        return x.grad.copy(), w.grad.copy(), np.random.random()

    saved = np.random.get_state()
    try:
        plain, ck = run(False), run(True)
    finally:
        np.random.set_state(saved)
    assert np.array_equal(plain[0], ck[0]) and np.array_equal(plain[1], ck[1])
    assert plain[2] == ck[2]  # the global RNG continues as without checkpointing


def test_recomputation_uses_the_forwards_autocast_policy():
    """Backward runs outside `autocast`; recomputing in fp32 gave gradients of another forward."""
    from minigrad import amp

    lin = nn.Linear(8, 8, rng=0)
    x0 = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)

    def run(ckpt):
        lin.zero_grad()
        x = minigrad.Tensor(x0, requires_grad=True)
        with amp.autocast("bf16"):
            y = minigrad.checkpoint(lin, x) if ckpt else lin(x)
            y = y.tanh()
        (y * y).sum().backward()
        return x.grad.copy(), lin.weight.grad.copy()

    (gx, gw), (cx, cw) = run(False), run(True)
    assert np.array_equal(gx, cx) and np.array_equal(gw, cw)


def test_recomputation_uses_the_forwards_backend():
    """Forward on the numpy backend, backward on numba: the recomputation must use numpy again
    (every op's backward runs on its forward's backend), or the gradients differ in round-off."""
    from minigrad import backend

    lin, ln = nn.Linear(16, 16, rng=0), nn.LayerNorm(16)
    params = list(lin.parameters()) + list(ln.parameters())

    def f(t):
        return F.gelu(lin(ln(t)))

    x0 = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)

    def run(ckpt):
        lin.zero_grad()
        ln.zero_grad()
        x = minigrad.Tensor(x0, requires_grad=True)
        with backend.use_backend("numpy"):
            y = minigrad.checkpoint(f, x, params=params) if ckpt else f(x)
        with backend.use_backend("numba"):
            (y * y).sum().backward()
        return x.grad.copy(), lin.weight.grad.copy(), ln.weight.grad.copy()

    for plain, ck in zip(run(False), run(True)):
        assert np.array_equal(plain, ck)


def test_no_grad_is_a_plain_call_and_bad_fn_is_named():
    x = minigrad.randn(3, 3, rng=0, requires_grad=True)
    with minigrad.no_grad():
        y = minigrad.checkpoint(lambda t: t * 2.0, x)
    assert not y.requires_grad and np.array_equal(y.data, x.data * 2)
    with pytest.raises(TypeError, match="one Tensor"):
        minigrad.checkpoint(lambda t: (t, t), x)
    with pytest.raises(TypeError, match="callable"):
        minigrad.checkpoint(3, x)
    # a differentiable Tensor outside the top-level positional arguments used to lose its grad
    w = minigrad.randn(3, 3, rng=1, requires_grad=True)
    with pytest.raises(TypeError, match="keyword argument 'w' is a Tensor that requires grad"):
        minigrad.checkpoint(lambda t, w: t @ w, x, w=w)
    with pytest.raises(TypeError, match="an element of positional argument 1"):
        minigrad.checkpoint(lambda t, ws: t @ ws[0], x, [w])
    const = minigrad.randn(3, 3, rng=2)  # constants (no grad) may go anywhere
    assert minigrad.checkpoint(lambda t, c: t @ c, x, c=const).requires_grad


def test_flop_counter_separates_recomputation():
    lin = nn.Linear(6, 6, rng=0)
    x = minigrad.randn(4, 6, rng=1, requires_grad=True)
    with memory.count_flops() as plain:
        lin(x).sum().backward()
    with memory.count_flops() as ck:
        minigrad.checkpoint(lin, x).sum().backward()
    assert (ck.forward, ck.backward) == (plain.forward, plain.backward)
    assert ck.recompute == plain.forward == 2 * 4 * 6 * 6
    assert ck.hardware_total == ck.total + ck.recompute
