"""Softmax, log-softmax and fused log-softmax + negative log-likelihood (cross-entropy).

All kernels see a C-contiguous 2-D array (rows, n) and work along the last axis; the wrappers
in `minigrad.kernels` reshape. Each kernel works on a range of rows r0..r1-1 and releases the
GIL; the wrappers run it over all rows in the calling thread, or over one range of rows per
thread for large inputs (`minigrad.kernels._parallel_for`): a thread owns whole output rows and
every reduction (max, sum) lives in thread-local scalars, so there are no shared writes.
Exponentials go through `fast_exp` (vectorisable; see `_math.py`).
NumPy twins: `minigrad.kernels.reference`.
"""
import numpy as np

from .._numba_cache import njit
from ._math import FASTMATH, fast_exp, typed


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def softmax_fwd(x, y, r0, r1):
    """y[i] = exp(x[i] - max x[i]) / sum(...) for rows r0..r1-1.

    Fuses max, exp, sum and scale (three sweeps over a row that sits in L1: one pass over
    memory). Saves for backward: y (the caller)."""
    n = x.shape[1]
    for i in range(r0, r1):
        m = typed(x, -np.inf)
        for j in range(n):
            m = max(m, x[i, j])
        s = typed(x, 0.0)
        for j in range(n):
            e = fast_exp(x[i, j] - m)
            y[i, j] = e
            s += e
        inv = typed(x, 1.0) / s
        for j in range(n):
            y[i, j] *= inv


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def softmax_bwd(y, dy, dx, r0, r1):
    """dx = y * (dy - sum(dy * y)) row by row (the softmax Jacobian-vector product).
    Needs only the forward output y."""
    n = y.shape[1]
    for i in range(r0, r1):
        s = typed(y, 0.0)
        for j in range(n):
            s += dy[i, j] * y[i, j]
        for j in range(n):
            dx[i, j] = y[i, j] * (dy[i, j] - s)


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def log_softmax_fwd(x, y, r0, r1):
    """y[i] = x[i] - logsumexp(x[i]); fused max / sum-exp / subtract.
    Saves for backward: y (softmax is recomputed as exp(y))."""
    n = x.shape[1]
    for i in range(r0, r1):
        m = typed(x, -np.inf)
        for j in range(n):
            m = max(m, x[i, j])
        s = typed(x, 0.0)
        for j in range(n):
            s += fast_exp(x[i, j] - m)
        lse = m + np.log(s)
        for j in range(n):
            y[i, j] = x[i, j] - lse


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def log_softmax_bwd(y, dy, dx, r0, r1):
    """dx = dy - exp(y) * sum(dy) row by row."""
    n = y.shape[1]
    for i in range(r0, r1):
        s = typed(y, 0.0)
        for j in range(n):
            s += dy[i, j]
        for j in range(n):
            dx[i, j] = dy[i, j] - fast_exp(y[i, j]) * s


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def cross_entropy_fwd(logits, targets, ignore_index, loss, lse, r0, r1):
    """Fused log-softmax + NLL: loss[i] = logsumexp(logits[i]) - logits[i, targets[i]].

    One pass over each row of logits with an *online* max/sum (Milakov & Gimelshein 2018),
    in chunks of 32 so the exponentials vectorise: when a chunk raises the running max m to
    m', the running sum is rescaled by exp(m - m'). No probabilities are written anywhere.
    Rows whose target is `ignore_index` get loss 0.
    Saves for backward: lse (one float per row), besides the logits the caller keeps."""
    n = logits.shape[1]
    for i in range(r0, r1):
        m = typed(logits, -np.inf)
        s = typed(logits, 0.0)
        for c0 in range(0, n, 32):
            c1 = min(c0 + 32, n)
            cm = m
            for j in range(c0, c1):
                cm = max(cm, logits[i, j])
            if cm > m:
                s *= fast_exp(m - cm) if m > -np.inf else typed(logits, 0.0)
                m = cm
            for j in range(c0, c1):
                s += fast_exp(logits[i, j] - m)
        lse[i] = m + np.log(s)
        t = targets[i]
        if t == ignore_index:
            loss[i] = 0.0
        else:
            loss[i] = lse[i] - logits[i, t]


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def cross_entropy_bwd(logits, targets, ignore_index, lse, row_grad, dlogits, r0, r1):
    """dlogits[i] = row_grad[i] * (softmax(logits[i]) - onehot(targets[i])).

    softmax is recomputed as exp(logits - lse) from the saved lse, written straight into the
    gradient (one pass). `row_grad[i]` is dL/dloss[i]: it carries the reduction (1/count for
    'mean'), and ignored rows get a zero gradient."""
    n = logits.shape[1]
    for i in range(r0, r1):
        t = targets[i]
        g = row_grad[i]
        if t == ignore_index:
            for j in range(n):
                dlogits[i, j] = 0.0
            continue
        li = lse[i]
        for j in range(n):
            dlogits[i, j] = g * fast_exp(logits[i, j] - li)
        dlogits[i, t] -= g

