"""minigrad.memory on plain ops: the ledger's byte accounting (views, parameters, dropped
graphs) and exact matmul FLOP counts, which every op reports itself (`Function.flops`)."""
import gc
import importlib
import inspect
import pkgutil

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minigrad
import minigrad.functional as F
from minigrad import memory
from minigrad.tensor import Function


def test_ledger_counts_shared_memory_once_and_excludes_parameters():
    w = minigrad.nn.Parameter(np.ones((4, 4), np.float32))
    x = minigrad.Tensor(np.ones((5, 4), np.float32), requires_grad=True)
    with memory.track() as m:
        y = F.linear(x, w)          # saves x (80 B) and w (a parameter: not an activation)
        z = y * y                   # saves y twice: counted once (80 B)
        big = minigrad.Tensor(np.ones((10, 4), np.float32), requires_grad=True)
        v = big[2:4] * big[2:4]     # GetItem saves an index; Mul saves two views of one 32 B span
        assert m.current["activations"] == 80 + 80 + 32
        assert m.current["params"] == w.data.nbytes
        (z.sum() + v.sum()).backward()
    assert m.peak["activations"] == 192 and m.current["activations"] == 0
    assert m.peak["grads"] == w.data.nbytes  # tracked parameters' .grad


def test_overlapping_views_of_one_array_count_their_union():
    """Views x[0:6] and x[3:9] share rows 3-5: the ledger keeps rows 0-8 once (144 B, not 192);
    a view inside that union adds nothing, and freeing one view leaves the other's rows."""
    x = minigrad.Tensor(np.ones((10, 4), np.float32), requires_grad=True)  # 16 B a row
    with memory.track() as m:
        a = x[0:6] * x[0:6]
        assert m.current["activations"] == 6 * 16
        b = x[3:9] * x[3:9]
        assert m.current["activations"] == 9 * 16
        c = x[1:2] * x[1:2]         # inside rows 0-8
        assert m.current["activations"] == 9 * 16
        del a, c
        gc.collect()
        assert m.current["activations"] == 6 * 16  # rows 3-8 of b
        b.sum().backward()
    assert m.peak["activations"] == 9 * 16 and m.current["activations"] == 0


def test_graph_dropped_without_backward_is_released():
    x = minigrad.randn(8, 8, rng=0, requires_grad=True)
    with memory.track() as m:
        y = (x * x).tanh()
        assert m.current["activations"] == 2 * x.data.nbytes
        del y
        gc.collect()
        assert m.current["activations"] == 0


# ------------------------------------------------------------------------------------ FLOPs
dims = st.integers(1, 6)


@given(m=dims, k=dims, n=dims, p=dims, batch=st.integers(1, 3))
def test_flops_of_a_matmul_chain_are_exact(m, k, n, p, batch):
    rng = np.random.default_rng(0)
    A = minigrad.Tensor(rng.standard_normal((batch, m, k)).astype(np.float32), requires_grad=True)
    B = minigrad.Tensor(rng.standard_normal((k, n)).astype(np.float32), requires_grad=True)
    C = minigrad.Tensor(rng.standard_normal((n, p)).astype(np.float32), requires_grad=True)
    W = minigrad.Tensor(rng.standard_normal((3, p)).astype(np.float32), requires_grad=True)
    with memory.count_flops() as fc:
        out = F.linear((A @ B) @ C, W)  # (batch, m, 3)
        out.sum().backward()
    fwd = 2 * batch * m * k * n + 2 * batch * m * n * p + 2 * batch * m * p * 3
    assert fc.forward == fwd
    assert fc.backward == 2 * fwd  # each product has two operand gradients of the same size
    with memory.count_flops() as fc2, minigrad.no_grad():
        (A @ B) @ C
    assert (fc2.forward, fc2.backward) == (2 * batch * m * k * n + 2 * batch * m * n * p, 0)


def test_matmul_flops_follow_numpy_rules():
    assert memory.matmul_flops((5,), (5, 3)) == 2 * 5 * 3
    assert memory.matmul_flops((2, 1, 4, 5), (3, 5, 6)) == 2 * 6 * 4 * 5 * 6
    assert memory.matmul_flops((4, 5), (5,)) == 2 * 4 * 5


def _function_subclasses(cls=Function):
    for sub in cls.__subclasses__():
        yield sub
        yield from _function_subclasses(sub)


def test_every_op_of_minigrad_says_its_flops():
    for info in pkgutil.walk_packages(minigrad.__path__, "minigrad."):
        importlib.import_module(info.name)  # every module, so that every op class is defined
    ops = [c for c in _function_subclasses() if c.__module__.startswith("minigrad.")]
    assert {"MatMul", "Linear", "Attention", "QKVAttention", "Checkpoint", "Add"} <= {c.__name__ for c in ops}
    silent = [f"{c.__module__}.{c.__qualname__}" for c in ops if c.flops is None]
    assert not silent, f"ops without a flops(ctx) staticmethod: {silent}"
    for c in ops:  # a staticmethod of ctx
        assert isinstance(inspect.getattr_static(c, "flops"), staticmethod), c


class Square(Function):
    """A user-defined op that does not say its FLOPs."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (2 * a * g,)


def test_an_op_without_flops_is_listed_or_refused_in_strict_mode():
    x = minigrad.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    w = minigrad.Tensor(np.ones((3, 4), np.float32), requires_grad=True)
    with memory.count_flops() as fc:
        Square.apply(x @ w).sum().backward()
    assert fc.unknown_ops == {"Square"}
    assert (fc.forward, fc.backward) == (2 * 2 * 3 * 4, 2 * 2 * 2 * 3 * 4)  # the matmul only
    assert "Square" in fc.report()
    with pytest.raises(NotImplementedError, match=r"test_memory_core\.Square does not say its FLOPs"):
        with memory.count_flops(strict=True):
            Square.apply(x)
    with memory.count_flops(strict=True) as fc:  # ops that say: strict counts as usual
        (x @ w).sum().backward()
    assert fc.total == 3 * 2 * 2 * 3 * 4 and not fc.unknown_ops


@given(b=st.integers(1, 2), t=st.integers(1, 5), n_head=st.integers(1, 3), hs=st.integers(1, 4))
def test_fused_qkv_attention_counts_the_flops_of_its_split_form(b, t, n_head, hs):
    c = n_head * hs
    qkv = minigrad.Tensor(np.random.default_rng(0).standard_normal((b, t, 3 * c)).astype(np.float32))
    with memory.count_flops(strict=True) as fused:
        F.qkv_attention(qkv, n_head)
    q, k, v = (qkv[:, :, i * c:(i + 1) * c].reshape(b, t, n_head, hs).transpose(1, 2) for i in range(3))
    with memory.count_flops(strict=True) as split:
        F.scaled_dot_product_attention(q, k, v, causal=True)
    assert fused.forward == split.forward == 2 * 2 * b * n_head * t * t * hs
