"""Softmax, log-softmax and fused log-softmax + negative log-likelihood (cross-entropy).

All kernels see a C-contiguous 2-D array (rows, n) and work along the last axis; the wrappers
in `minigrad.kernels` reshape. Each kernel works on a range of rows r0..r1-1 and releases the
GIL; the wrappers run it over all rows in the calling thread, or over one range of rows per
thread for large inputs (`minigrad.kernels._parallel_for`): a thread owns whole output rows and
every reduction (max, sum) lives in thread-local scalars, so there are no shared writes.
Exponentials go through `fast_exp` and long rows' maxima through `max_vectorised` (both
vectorisable; see `_math.py`).
NumPy twins: `minigrad.kernels.reference`.
"""
import numpy as np

from .._numba_cache import njit
from ._math import FASTMATH, VECTOR_MAX_FROM, fast_exp, max_scalar, max_vectorised, typed


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def softmax_fwd(x, y, r0, r1):
    """y[i] = exp(x[i] - max x[i]) / sum(...) for rows r0..r1-1.

    Fuses max, exp, sum and scale (three sweeps over a row that sits in L1: one pass over
    memory). Saves for backward: y (the caller)."""
    n = x.shape[1]
    wide = n >= VECTOR_MAX_FROM
    for i in range(r0, r1):
        m = max_vectorised(x[i]) if wide else max_scalar(x[i])
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
    wide = n >= VECTOR_MAX_FROM
    for i in range(r0, r1):
        m = max_vectorised(x[i]) if wide else max_scalar(x[i])
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
def cross_entropy_fwd(logits, targets, ignore_index, row_max, row_sum, picked, r0, r1):
    """The reductions of cross-entropy, row by row: row_max[i] = max logits[i], row_sum[i] =
    sum_j exp(logits[i, j] - row_max[i]) and picked[i] = logits[i, targets[i]] (0 for a row whose
    target is `ignore_index`). The wrapper finishes with whole-array NumPy:
    lse = row_max + log(row_sum), loss = lse - picked (0 for ignored rows): NumPy's log is
    vectorised, Numba's is one libm call per row (~50 us for 2,048 rows, estimated as the
    kernel's time less that of its max and exponential sweeps alone). Two sweeps over a row that
    sits in L1 (the max, then the exponentials): one pass over memory, and no probabilities
    written anywhere. The kernel before this one (an online max and sum in chunks of 32, the log
    inside) took 232 us for (2048, 65) in one thread; this one with the wrapper's log, 173 us.
    Saves for backward: lse (one float per row), besides the logits the caller keeps."""
    wide = logits.shape[1] >= VECTOR_MAX_FROM
    for i in range(r0, r1):
        row = logits[i]
        m = max_vectorised(row) if wide else max_scalar(row)
        s = typed(logits, 0.0)
        for j in range(row.shape[0]):
            s += fast_exp(row[j] - m)
        row_max[i] = m
        row_sum[i] = s
        t = targets[i]
        picked[i] = 0.0 if t == ignore_index else row[t]


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

