"""minigrad.memory on plain ops: the ledger's byte accounting (views, parameters, dropped
graphs) and exact matmul FLOP counts."""
import gc

import numpy as np
from hypothesis import given, strategies as st

import minigrad
import minigrad.functional as F
from minigrad import memory


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
