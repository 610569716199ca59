"""Fused Numba kernels behind minigrad's ops (the "numba" backend).

Each public function here validates and reshapes its NumPy inputs, then calls one
`@njit(cache=True)` kernel from a sibling module; `minigrad.kernels.reference` holds a plain
NumPy twin with the same signature, and tests/test_kernels*.py hold each kernel to its twin.
The optimizer updates are the exception: their twins are the optimizers' own NumPy updates in
`optim/` (which the numpy backend runs; minigrad does not import optim), and
tests/test_optim_fused.py holds each pair bit-identical.

    module        kernels                                   twin
    (here)        gemm: a 2-D GEMM (+ bias) split over the  gemm (a @ b + bias)
                  pool (Linear, matmul_forward route to it)
    matmul.py     bmm (BLAS per batch item), matmul_tiled   bmm, matmul_tiled
                  (matmul_forward/backward route to them)   matmul_forward, matmul_backward
    softmax.py    softmax, log_softmax, cross_entropy       softmax_*, log_softmax_*, cross_entropy_*
    layernorm.py  layer_norm fwd/bwd (saves mean, rstd)     layer_norm_*
    gelu.py       GELU (tanh approximation) fwd/bwd         gelu_*
    attention.py  flash-style attention fwd/bwd, also       attention_* (naive O(T^2)),
                  straight from a fused qkv (B, T, 3C)      attention_qkv_*
    embedding.py  embedding backward (serial scatter-add)   embedding_backward
    adam.py       Adam/AdamW update of one parameter        optim.adaptive.adam_update
    sgd.py        SGD (momentum, Nesterov) update           optim.sgd.sgd_update
    quantize.py   rounding to a low-precision format        precision._round_arithmetic

Conventions: every kernel is parallel over output elements only (thread-private reductions):
it works on a range of rows, elements, heads or batch items with the GIL released, and
`_parallel_for` runs one range per thread for large inputs on the one pool of `pool.py`, whose
workers spin briefly between jobs; GEMMs run there too, as ranges of single-threaded BLAS calls,
so that no second pool (BLAS's) competes for the cores (below SERIAL_BELOW and its siblings the
whole range runs in the calling thread). Two exceptions: `embedding_bwd` is serial (repeated ids would
race) and the teaching `matmul_tiled` shows Numba's own `prange`. Every kernel runs in float32
or float64 (the dtype of its inputs) and computes exponentials with a vectorisable polynomial
in float32 (`_math.py`). Importing this package imports Numba and defines the kernels; each is
compiled at its first call or loaded from Numba's on-disk cache (`minigrad._numba_cache` says
where). It changes no process-wide setting: `minigrad.configure_runtime()` applies the
recommended ones (Numba's threading layer, single-threaded BLAS inside the kernels and in NumPy,
malloc tuning).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import adam as _adam, attention as _att, blas, gelu as _gelu, layernorm as _ln, sgd as _sgd, softmax as _sm
from .embedding import embedding_bwd as _embedding_bwd
from .matmul import bmm as _bmm, matmul_tiled as _matmul_tiled
from .pool import get_pool

__all__ = [
    "bmm", "matmul_tiled", "matmul_forward", "matmul_backward", "softmax_forward", "softmax_backward", "log_softmax_forward",
    "log_softmax_backward", "cross_entropy_forward", "cross_entropy_backward",
    "layer_norm_forward", "layer_norm_backward", "gelu_forward", "gelu_backward",
    "attention_forward", "attention_backward", "attention_qkv_forward", "attention_qkv_backward",
    "embedding_backward", "adam_step", "sgd_step", "gemm", "column_sums", "ATTN_BLOCK_Q", "ATTN_BLOCK_K",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # dtype objects: `x.dtype in` is fastest

# Below this much work a kernel runs in the calling thread only. Work counts elements for the row
# and elementwise kernels and multiply-adds for GEMMs, bmm and attention (B*H*T*S*D). The pool's
# workers spin between jobs (pool.py), so handing over a range costs microseconds while they are
# awake, not the ~0.14 ms of waking a sleeping thread on the 2-core VM. Measured there, serial
# against two threads: the compute-bound kernels (GELU's tanh, the exponentials of the softmax
# family and attention, GEMMs) gained from ~1.3*10^5 elements (GELU backward at (2048, 64): 151
# -> 95 us, 2026-12-06). Re-measured on 2026-12-07 (serial and split alternated in one process,
# 300 calls each, two runs), a range handed to a worker as a Python job cost ~50 us (the worker
# waits for the GIL), and GELU lost at (2048, 64) (forward 118-133 -> 158-190 us, backward
# 135-165 -> 168-199), tied at (2048, 128) and gained at (2048, 256) (forward 414-473 -> 347-375,
# backward 507-605 -> 399-438), and cross-entropy at (2048, 65) lost or tied (173 -> 198 and
# 240 -> 237 us): they split from 2^18 elements since. The memory-bound ones (layer norm, the
# optimizer updates) did not gain below 10^6 elements and lost up to there (layer norm backward
# at (2048, 128): 108 -> 169 us), as a second core adds no memory bandwidth, so they keep the old
# threshold.
# A GEMM splits from 2^23 multiply-adds (~0.25 ms on one core): its ranges run on the workers
# without the GIL (blas.py), but below that two single-threaded BLAS calls gained nothing over one
# (2-6*10^6 multiply-adds: 61 against 53 us at 128^3, 147 against 143 us at 2048x32x64, 147
# against 193 us at 512x64x192).
# Attention and bmm, counted in multiply-adds, split from 2^21: a decode step's attention
# (1 query, up to 1,024 keys: ~10^5) and a 100-token prefill (~10^6) stay in one thread.
SERIAL_BELOW = 1 << 18
MEMORY_SERIAL_BELOW = 1 << 22
PRODUCT_SERIAL_BELOW = 1 << 21
GEMM_SERIAL_BELOW = 1 << 23


def _parallel(work: int, below: int | None = None) -> bool:
    """Whether `work` is worth splitting: from `below` (default SERIAL_BELOW) units on."""
    return work >= (SERIAL_BELOW if below is None else below)


def _num_threads() -> int:
    """Threads for `_parallel_for`: Numba's setting (`numba.set_num_threads`, NUMBA_NUM_THREADS).
    Numba keeps that setting per calling thread, so it is read on every call."""
    return numba.get_num_threads()


def _parallel_for(kernel, n, parallel, *args):
    """Run `kernel(*args, lo, hi)` over items [0, n) (rows, elements, heads, batch items): in the
    calling thread, or split into one contiguous range per thread (`_num_threads`), the last
    range in the calling thread and the others on the workers of `pool.get_pool`. The kernels
    release the GIL, so the ranges run at once; each writes only its own items' outputs. It
    returns only when every range has finished, also when one of them raised (so no thread is
    still writing when the caller sees the error).

    Why not `prange`: on the 2-core VM a launch on Numba's workqueue layer cost 0.2-0.5 ms (its
    idle workers poll with short sleeps, which also slowed OpenBLAS), and `parallel=True` kernels
    compile several times slower; the pool's spinning workers take a range in microseconds."""
    threads = min(_num_threads(), n) if parallel else 1
    if threads <= 1:
        kernel(*args, 0, n)
        return
    get_pool(threads - 1).run(kernel, args, [n * i // threads for i in range(threads + 1)])


def _float_array(x, name, op):
    """C-contiguous float32/float64 view or copy of `x` (other dtypes are refused, not cast)."""
    x = np.asarray(x)
    if x.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {x.dtype}; "
                        f"cast it first, e.g. {name}.astype(np.float32)")
    return np.asarray(x, order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)


def _row_param(p, fill, c, dtype, name, op):
    """A row op's weight or bias in x's dtype, C-contiguous; None gives `c` copies of `fill`."""
    if p is None:
        return np.full(c, fill, dtype)
    if type(p) is np.ndarray and p.dtype == dtype and p.flags.c_contiguous:  # the usual case, ~1 us sooner
        return p
    return _float_array(p, name, op).astype(dtype, copy=False)


def _rows(x, name, op):
    """A validated array (see `_float_array`) as 2-D rows over its last axis (a view)."""
    if x.ndim == 0:
        raise ValueError(f"{op}: {name} must have at least one axis, got a scalar")
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (-1 cannot be inferred from size 0)


def _same_shape(a, b, names, op):
    if a.shape != b.shape:
        raise ValueError(f"{op}: {names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}; "
                         "they must match")


# ----------------------------------------------------------------------------- matmul
def bmm(a, b):
    """Batched matmul a (N, M, K) @ b (N, K, P) -> (N, M, P), one BLAS GEMM per batch item."""
    a = _float_array(a, "a", "bmm")
    b = _float_array(b, "b", "bmm")
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"bmm: need a (N, M, K) and b (N, K, P), got {a.shape} and {b.shape}")
    dtype = np.result_type(a, b)
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype)
    if a.shape[2] == 0:
        out.fill(0)
    elif out.size:
        _parallel_for(_bmm, a.shape[0], _parallel(out.size * a.shape[2], PRODUCT_SERIAL_BELOW), a, b, out,
                      blas.dot_table())
    return out


def matmul_tiled(a, b, tile=64):
    """a (M, K) @ b (K, P) with the teaching loop kernel (see matmul.py)."""
    a = _float_array(a, "a", "matmul_tiled")
    b = _float_array(b, "b", "matmul_tiled")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul_tiled: need a (M, K) and b (K, P), got {a.shape} and {b.shape}")
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"matmul_tiled: tile must be a positive integer, got {tile!r}")
    dtype = np.result_type(a, b)
    out = np.empty((a.shape[0], b.shape[1]), dtype)
    _matmul_tiled(a.astype(dtype, copy=False), b.astype(dtype, copy=False), out, int(tile))
    return out


def _gemm_rows(a, b, bias, out, r0, r1):
    """out[r0:r1] = a[r0:r1] @ b (+ bias): rows r0..r1-1 of `gemm`, the bias added in cache."""
    np.matmul(a[r0:r1], b, out=out[r0:r1])
    if bias is not None:
        out[r0:r1] += bias


def _gemm_cols(a, b, bias, out, c0, c1):
    """out[:, c0:c1] = a @ b[:, c0:c1] (+ bias[c0:c1]): columns c0..c1-1 of `gemm`."""
    np.matmul(a, b[:, c0:c1], out=out[:, c0:c1])
    if bias is not None:
        out[:, c0:c1] += bias[c0:c1]


def _gemm_ranges(a, b, bias, out, threads, functions, layouts):
    """`gemm`'s ranges as BLAS descriptors (`blas.py`), one row per thread: row ranges of the
    output when it has at least as many rows as columns, else column ranges. `layouts` are
    `blas.operand` of a and b. Built from Python
    ints in one `np.array` call: column-wise NumPy assignments cost ~40 us here, a tenth of a
    `tiny` GEMM."""
    m, n = out.shape
    k, item = a.shape[1], out.itemsize
    (trans_a, lda), (trans_b, ldb) = layouts
    a_at, b_at, c_at = blas.address(a), blas.address(b), blas.address(out)
    bias_at = 0 if bias is None else blas.address(bias)
    head = [functions[item], functions["ilp64"], item, trans_a, trans_b]
    by_rows = m >= n
    size = m if by_rows else n
    rows = []
    for i in range(threads):
        lo, hi = size * i // threads, size * (i + 1) // threads
        if by_rows:   # rows lo..hi of a and out; all of b and the bias
            at = [hi - lo, n, k, a_at + lo * a.strides[0], lda, b_at, ldb,
                  c_at + lo * out.strides[0], n, bias_at]
        else:         # columns lo..hi of b, out and the bias; all of a
            at = [m, hi - lo, k, a_at, lda, b_at + lo * b.strides[1], ldb, c_at + lo * item, n,
                  bias_at and bias_at + lo * item]
        rows.append(head + at)
    return np.array(rows, np.int64)


def gemm(a, b, bias=None):
    """a (M, K) @ b (K, N) (+ bias (N,)) on the kernel pool: the output's rows (its columns when
    it has fewer rows than columns) split into one range per thread, each range one BLAS GEMM
    (NumPy's) that adds the bias to its block (BLAS beta = 1 on the broadcast bias). a and b may
    be transposed views (BLAS reads them as they are). The result is the same as `a @ b + bias`
    up to the order of float additions inside BLAS, which depends on the split.

    Where NumPy's BLAS is its bundled OpenBLAS (pip wheels), every range is a BLAS call from
    compiled code (`blas.py`): the pool's workers run theirs inside their spin loop without the
    GIL, with one BLAS thread. Elsewhere (another BLAS, NUMBA_DISABLE_JIT=1) the ranges are
    `np.matmul` calls in Python; the calling thread's range then uses NumPy's BLAS setting, which
    `minigrad.configure_runtime()` makes single-threaded on this backend.

    Why not let BLAS thread the GEMM itself: its threads are a second pool that spins on the
    cores the kernels' threads need next (see pool.py); here everything runs on one pool."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: need a (M, K) and b (K, N), got {a.shape} and {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"gemm: bias must be ({n},) for an output with {n} columns, got {bias.shape}")
    # one thread for small products (a decode step's take this path: keep it as short as `a @ b`,
    # so the thread count, a ~2 us call, is read only for large ones); mixed or non-float dtypes
    # get NumPy's promotion, as `a @ b` would; empty products (zero strides, which BLAS refuses) too
    serial = m * n * k < GEMM_SERIAL_BELOW or m * n * k == 0 or a.dtype != b.dtype or a.dtype not in _FLOATS
    threads = 1 if serial else min(_num_threads(), max(m, n))
    if threads <= 1:
        out = a @ b
        if bias is not None:
            out += bias
        return out
    if bias is not None:  # added in the output's dtype, as `out += bias`
        bias = np.ascontiguousarray(bias, a.dtype)
    out = np.empty((m, n), a.dtype)
    pool, functions = get_pool(threads - 1), blas.gemm_functions()
    if pool.compiled and functions is not None:
        layouts = blas.operand(a), blas.operand(b)
        if 0 in (layouts[0][0], layouts[1][0]):  # unreadable strides: copy (alive until the ranges end)
            a, b = (np.ascontiguousarray(x) if lay[0] == 0 else x for x, lay in zip((a, b), layouts))
            layouts = blas.operand(a), blas.operand(b)
        pool.run_gemms(_gemm_ranges(a, b, bias, out, threads, functions, layouts))
    elif m >= n:
        _parallel_for(_gemm_rows, m, True, a, b, bias, out)
    else:
        _parallel_for(_gemm_cols, n, True, a, b, bias, out)
    return out


def _bmm_ok(a, b) -> bool:
    """Equal batch dims (3-D and up) and one float dtype: a batch of GEMMs for `bmm`."""
    return a.ndim >= 3 and a.ndim == b.ndim and a.shape[:-2] == b.shape[:-2] and a.dtype == b.dtype \
        and a.dtype in _FLOATS


def matmul_forward(a, b):
    """a @ b with NumPy semantics, batched products routed to one GEMM where possible:
    (..., K) @ (K, P) becomes one 2-D `gemm` over all rows of a; equal-batch 3-D+ operands
    go to `bmm` (one single-threaded BLAS GEMM per batch item, items spread over threads)."""
    if a.ndim >= 2 and b.ndim == 2:
        return gemm(_rows(a, "a", "matmul"), b).reshape(a.shape[:-1] + (b.shape[1],))
    if _bmm_ok(a, b):
        lead = a.shape[:-2]
        out = bmm(a.reshape((-1,) + a.shape[-2:]), b.reshape((-1,) + b.shape[-2:]))
        return out.reshape(lead + out.shape[-2:])
    return a @ b


def column_sums(g):
    """g (N, C) -> g.sum(axis=0) (a bias gradient) as one matrix-vector product ones(N) @ g on
    NumPy's BLAS (one thread after `configure_runtime()`). NumPy's reduction over axis 0 took
    2-5x longer on the 2-core VM (2048 rows, one thread: 68 against 14 us for 64 columns, 125
    against 61 for 384, 408 against 212 for 1,536). BLAS adds the rows in another order, so the
    result differs from NumPy's pairwise sum by rounding only."""
    if g.ndim != 2:
        raise ValueError(f"column_sums: need g (N, C), got shape {g.shape}")
    if g.dtype not in _FLOATS:
        return g.sum(axis=0)
    return np.ones(g.shape[0], g.dtype) @ g


def matmul_backward(a, b, g):
    """(da, db) of y = a @ b for the two batched cases `matmul_forward` speeds up, else None
    (the caller then uses its plain NumPy backward)."""
    if a.ndim >= 2 and b.ndim == 2:  # db sums over all rows: one GEMM
        a2, g2 = _rows(a, "a", "matmul"), _rows(g, "g", "matmul")
        return gemm(g2, b.T).reshape(a.shape), gemm(a2.T, g2)
    if _bmm_ok(a, b):
        return (matmul_forward(g, np.swapaxes(b, -1, -2)),
                matmul_forward(np.swapaxes(a, -1, -2), g))
    return None


# ----------------------------------------------------------------------------- softmax family
def _row_forward(x, op, kernel):
    """y from a row-wise op's kernel over the last axis of x."""
    x = _float_array(x, "x", op)
    y = np.empty_like(x)
    x2 = _rows(x, "x", op)
    _parallel_for(kernel, x2.shape[0], _parallel(x.size), x2, _rows(y, "y", op))
    return y


def _row_backward(y, dy, op, kernel):
    """dx from a row-wise op's saved output y and upstream dy, with the op's row kernel."""
    y = _float_array(y, "y", op)
    dy = _float_array(dy, "dy", op).astype(y.dtype, copy=False)
    _same_shape(y, dy, ("y", "dy"), op)
    dx = np.empty_like(y)
    args = (_rows(y, "y", op), _rows(dy, "dy", op), _rows(dx, "dx", op))
    _parallel_for(kernel, args[0].shape[0], _parallel(y.size), *args)
    return dx


def softmax_forward(x):
    """softmax over the last axis."""
    return _row_forward(x, "softmax", _sm.softmax_fwd)


def softmax_backward(y, dy):
    """Gradient of softmax given its output y and upstream dy."""
    return _row_backward(y, dy, "softmax_backward", _sm.softmax_bwd)


def log_softmax_forward(x):
    """log-softmax over the last axis."""
    return _row_forward(x, "log_softmax", _sm.log_softmax_fwd)


def log_softmax_backward(y, dy):
    """Gradient of log-softmax given its output y and upstream dy."""
    return _row_backward(y, dy, "log_softmax_backward", _sm.log_softmax_bwd)


def _targets(targets, n, v, ignore_index, op):
    t = np.ascontiguousarray(targets)
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"{op}: targets must be integer class indices, got dtype {t.dtype}")
    t = t.reshape(-1).astype(np.int64, copy=False)
    if t.shape[0] != n:
        raise ValueError(f"{op}: {n} rows of logits but {t.shape[0]} targets")
    bad = (t != ignore_index) & ((t < 0) | (t >= v))
    if bad.any():
        raise IndexError(f"{op}: target {t[bad][0]} out of range for {v} classes "
                         f"(ignore_index={ignore_index})")
    return t


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """Fused log-softmax + NLL: per-row loss (N,) and log-sum-exp (N,) of logits (N, V)."""
    x = _float_array(logits, "logits", "cross_entropy")
    if x.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, V), got {x.shape}; reshape first")
    t = _targets(targets, x.shape[0], x.shape[1], ignore_index, "cross_entropy")
    row_max, row_sum, picked = (np.empty(x.shape[0], x.dtype) for _ in range(3))
    _parallel_for(_sm.cross_entropy_fwd, x.shape[0], _parallel(x.size), x, t, int(ignore_index),
                  row_max, row_sum, picked)
    lse = row_max + np.log(row_sum)
    loss = lse - picked
    loss[t == ignore_index] = 0.0
    return loss, lse


def cross_entropy_backward(logits, targets, lse, row_grad, ignore_index=-100):
    """dlogits (N, V) = row_grad[:, None] * (softmax - onehot); ignored rows get 0."""
    x = _float_array(logits, "logits", "cross_entropy_backward")
    t = _targets(targets, x.shape[0], x.shape[1], ignore_index, "cross_entropy_backward")
    lse = _float_array(lse, "lse", "cross_entropy_backward").astype(x.dtype, copy=False)
    if lse.shape != (x.shape[0],):  # the kernel reads lse[i] for every row i, unchecked
        raise ValueError(f"cross_entropy_backward: lse {lse.shape} must be ({x.shape[0]},), one per row "
                         f"of logits {x.shape}")
    g = np.ascontiguousarray(np.broadcast_to(np.asarray(row_grad, x.dtype), (x.shape[0],)))
    d = np.empty_like(x)
    _parallel_for(_sm.cross_entropy_bwd, x.shape[0], _parallel(x.size), x, t, int(ignore_index), lse, g, d)
    return d


# ----------------------------------------------------------------------------- layer norm
def layer_norm_forward(x, weight, bias, eps=1e-5):
    """Layer norm over the last axis; returns (y, mean, rstd), mean/rstd of shape x.shape[:-1].
    weight/bias may be None (1 and 0)."""
    x = _float_array(x, "x", "layer_norm")
    c = x.shape[-1]
    w = _row_param(weight, 1, c, x.dtype, "weight", "layer_norm")
    b = _row_param(bias, 0, c, x.dtype, "bias", "layer_norm")
    if w.shape != (c,) or b.shape != (c,):
        raise ValueError(f"layer_norm: weight {w.shape} and bias {b.shape} must be ({c},) for x {x.shape}")
    x2 = _rows(x, "x", "layer_norm")
    y = np.empty_like(x)
    mean = np.empty(x2.shape[0], x.dtype)
    rstd = np.empty(x2.shape[0], x.dtype)
    _parallel_for(_ln.layer_norm_fwd, x2.shape[0], _parallel(x.size, MEMORY_SERIAL_BELOW),
                  x2, w, b, float(eps), y.reshape(x2.shape), mean, rstd)
    return y, mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layer_norm_backward(dy, x, weight, mean, rstd):
    """Returns (dx, dweight, dbias) of layer norm from the saved mean and rstd."""
    x = _float_array(x, "x", "layer_norm_backward")
    dy = _float_array(dy, "dy", "layer_norm_backward").astype(x.dtype, copy=False)
    _same_shape(x, dy, ("x", "dy"), "layer_norm_backward")
    c = x.shape[-1]
    w = _row_param(weight, 1, c, x.dtype, "weight", "layer_norm_backward")
    x2 = _rows(x, "x", "layer_norm_backward")
    n = x2.shape[0]
    # the kernel reads w[j], mean[i] and rstd[i] unchecked: a short array would be read past its end
    if w.shape != (c,) or np.size(mean) != n or np.size(rstd) != n:
        raise ValueError(f"layer_norm_backward: weight {w.shape} must be ({c},) and mean "
                         f"{np.shape(mean)}, rstd {np.shape(rstd)} one per row ({x.shape[:-1]}) "
                         f"of x {x.shape}")
    parallel = _parallel(x.size, MEMORY_SERIAL_BELOW)
    nchunks = max(1, min(n, 16)) if parallel else 1  # fixed: dw, db do not depend on the thread count
    dw_part = np.empty((nchunks, c), x.dtype)
    db_part = np.empty((nchunks, c), x.dtype)
    dx = np.empty_like(x)
    _parallel_for(_ln.layer_norm_bwd, nchunks, parallel, dy.reshape(x2.shape), x2, w,
                  np.ascontiguousarray(mean, x.dtype).reshape(-1),
                  np.ascontiguousarray(rstd, x.dtype).reshape(-1), dx.reshape(x2.shape), dw_part, db_part)
    return dx, dw_part.sum(axis=0), db_part.sum(axis=0)


# ----------------------------------------------------------------------------- GELU
def gelu_forward(x):
    """GELU, tanh approximation, elementwise."""
    x = _float_array(x, "x", "gelu")
    y = np.empty_like(x)
    _parallel_for(_gelu.gelu_fwd, x.size, _parallel(x.size), x.reshape(-1), y.reshape(-1))
    return y


def gelu_backward(x, dy):
    x = _float_array(x, "x", "gelu_backward")
    dy = _float_array(dy, "dy", "gelu_backward").astype(x.dtype, copy=False)
    _same_shape(x, dy, ("x", "dy"), "gelu_backward")
    dx = np.empty_like(x)
    _parallel_for(_gelu.gelu_bwd, x.size, _parallel(x.size), x.reshape(-1), dy.reshape(-1), dx.reshape(-1))
    return dx


# ----------------------------------------------------------------------------- attention
# Query and key rows per tile. 32 x 32 keeps a tile step's Q, K, V, score and output tiles
# (~36 KB at head size 64) near the 32 KiB L1 of the CPUs we measure on, where 64 x 64 (~80 KB)
# spilled to L2, and skips more of the masked causal work. fwd+bwd against 64 x 64 on an AMD
# EPYC Zen 4 (2 threads, three alternated rounds): GPT `tiny` / `small` / `medium` attention
# (attention_qkv_*) 0.97x / 0.91x / 0.91x the time, (4, 12, 1024, 64) 0.97x; 48 x 48 and
# 16 x 16 were slower than 32 x 32 (bench/README, fifth session).
ATTN_BLOCK_Q = 32
ATTN_BLOCK_K = 32


def _attn_inputs(q, k, v, op):
    q = _float_array(q, "q", op)
    dtype = q.dtype
    k = _float_array(k, "k", op).astype(dtype, copy=False)
    v = _float_array(v, "v", op).astype(dtype, copy=False)
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"{op}: q, k, v must be (..., T, D) with the same rank, got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{op}: need q (..., T, D), k and v (..., S, D) with equal leading dims; "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    lead = q.shape[:-2]
    t, d = q.shape[-2:]
    s = k.shape[-2]
    if s == 0:  # (checked before the reshape, which cannot infer -1 from an empty array)
        raise ValueError(f"{op}: k and v have no keys (S = 0)")
    n = math.prod(lead)  # (not -1: NumPy cannot infer it from an empty array)
    return (q.reshape(n, t, d), k.reshape(n, s, d), v.reshape(n, s, d), lead)


def attention_forward(q, k, v, causal=True, scale=None, causal_offset=0):
    """Flash-style attention over (..., T, D) arrays; returns (o, lse) with lse (..., T).

    Query i sees key j iff j <= i + causal_offset when causal (0 = PyTorch's is_causal)."""
    q3, k3, v3, lead = _attn_inputs(q, k, v, "attention")
    if causal and causal_offset < 0:
        raise ValueError("attention: causal_offset must be >= 0 (otherwise some query rows see no key)")
    t, d = q3.shape[1:]
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    o = np.empty_like(q3)
    lse = np.empty(q3.shape[:2], q3.dtype)
    if o.size:
        _parallel_for(_att.attention_fwd, q3.shape[0],
                      _parallel(q3.shape[0] * t * k3.shape[1] * d, PRODUCT_SERIAL_BELOW),
                      q3, k3, v3, bool(causal), int(causal_offset), scale, ATTN_BLOCK_Q, ATTN_BLOCK_K, o, lse,
                      blas.dot_table())
    return o.reshape(lead + (t, d)), lse.reshape(lead + (t,))


def attention_backward(q, k, v, o, lse, do, causal=True, scale=None, causal_offset=0):
    """Gradients (dq, dk, dv) of flash-style attention, recomputing scores from q, k, lse."""
    q3, k3, v3, lead = _attn_inputs(q, k, v, "attention_backward")
    t, d = q3.shape[1:]
    s = k3.shape[1]
    o3 = _float_array(o, "o", "attention_backward").astype(q3.dtype, copy=False).reshape(q3.shape)
    do3 = _float_array(do, "do", "attention_backward").astype(q3.dtype, copy=False).reshape(q3.shape)
    lse2 = _float_array(lse, "lse", "attention_backward").astype(q3.dtype, copy=False).reshape(q3.shape[:2])
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    dq = np.empty_like(q3)
    dk = np.empty_like(k3)
    dv = np.empty_like(v3)
    if q3.size and s:
        _parallel_for(_att.attention_bwd, q3.shape[0], _parallel(q3.shape[0] * t * s * d, PRODUCT_SERIAL_BELOW),
                      q3, k3, v3, o3, lse2, do3, bool(causal), int(causal_offset), scale,
                      ATTN_BLOCK_Q, ATTN_BLOCK_K, dq, dk, dv, blas.dot_table())
    return dq.reshape(lead + (t, d)), dk.reshape(lead + (s, d)), dv.reshape(lead + (s, d))


def _qkv_input(qkv, n_head, op):
    qkv = _float_array(qkv, "qkv", op)
    if qkv.ndim != 3 or qkv.shape[2] % 3 or (qkv.shape[2] // 3) % max(int(n_head), 1) or n_head < 1:
        raise ValueError(f"{op}: qkv must be (B, T, 3C) with C divisible by n_head={n_head}, "
                         f"got shape {qkv.shape}")
    return qkv


def attention_qkv_forward(qkv, n_head, causal=True, scale=None):
    """Flash-style self-attention straight from the fused projection qkv (B, T, 3C).

    Returns (o, lse): o (B, T, C) with the heads side by side (what the output projection
    reads), lse (B, n_head, T). Equal to splitting q, k, v into heads (B, nh, T, hs) and calling
    `attention_forward`, without the split and merge copies."""
    qkv = _qkv_input(qkv, n_head, "attention_qkv")
    b, t, c3 = qkv.shape
    c = c3 // 3
    hs = c // n_head
    scale = 1.0 / np.sqrt(hs) if scale is None else float(scale)
    o = np.empty((b, t, c), qkv.dtype)
    lse = np.empty((b, n_head, t), qkv.dtype)
    if o.size:
        _parallel_for(_att.attention_qkv_fwd, b * n_head,
                      _parallel(b * n_head * t * t * hs, PRODUCT_SERIAL_BELOW),
                      qkv, int(n_head), bool(causal), scale, ATTN_BLOCK_Q, ATTN_BLOCK_K, o, lse,
                      blas.dot_table())
    return o, lse


def attention_qkv_backward(qkv, o, lse, do, n_head, causal=True, scale=None):
    """dqkv (B, T, 3C) of `attention_qkv_forward`, given its o, lse and the upstream do (B, T, C)."""
    qkv = _qkv_input(qkv, n_head, "attention_qkv_backward")
    b, t, c3 = qkv.shape
    hs = c3 // 3 // n_head
    o = _float_array(o, "o", "attention_qkv_backward").astype(qkv.dtype, copy=False)
    do = _float_array(do, "do", "attention_qkv_backward").astype(qkv.dtype, copy=False)
    lse = _float_array(lse, "lse", "attention_qkv_backward").astype(qkv.dtype, copy=False)
    if o.shape != (b, t, c3 // 3) or do.shape != o.shape or lse.shape != (b, n_head, t):
        raise ValueError(f"attention_qkv_backward: o {o.shape}, do {do.shape}, lse {lse.shape} do not "
                         f"match qkv {qkv.shape} with n_head={n_head}")
    scale = 1.0 / np.sqrt(hs) if scale is None else float(scale)
    dqkv = np.empty_like(qkv)
    if qkv.size:
        _parallel_for(_att.attention_qkv_bwd, b * n_head,
                      _parallel(b * n_head * t * t * hs, PRODUCT_SERIAL_BELOW),
                      qkv, o, lse, do, int(n_head), bool(causal), scale, ATTN_BLOCK_Q, ATTN_BLOCK_K, dqkv,
                      blas.dot_table())
    return dqkv


# ----------------------------------------------------------------------------- embedding
def embedding_backward(idx, g, shape):
    """Gradient (num, dim) of `weight[idx]` given the output gradient g (idx.shape + (dim,))."""
    num, dim = shape
    g2 = _rows(_float_array(g, "g", "embedding_backward"), "g", "embedding_backward")
    i = np.asarray(idx).reshape(-1).astype(np.int64, copy=False)
    if i.shape[0] != g2.shape[0] or g2.shape[1] != dim:
        raise ValueError(f"embedding_backward: {i.shape[0]} indices and a table of {dim} columns, but "
                         f"gradient rows {g2.shape}")
    if i.size and (i.min() < 0 or i.max() >= num):
        raise IndexError(f"embedding_backward: index out of range for a table of {num} rows")
    out = np.zeros((num, dim), g2.dtype)
    _embedding_bwd(i, g2, out)
    return out


# ----------------------------------------------------------------------------- optimizer updates
def _update_arrays(op, p, arrays):
    """Flat views of parameter `p` and the arrays of one optimizer update (name -> array, None
    for an unused buffer, which becomes an empty array): all C-contiguous, of p's shape and of
    one float dtype, as the optimizer keeps them (it falls back to its NumPy update otherwise)."""
    if not isinstance(p, np.ndarray) or p.dtype not in _FLOATS:
        raise TypeError(f"{op}: p must be a float32 or float64 ndarray, got "
                        f"{getattr(p, 'dtype', type(p).__name__)}")
    out = []
    for name, a in {"p": p, **arrays}.items():
        if a is None:
            out.append(np.empty(0, p.dtype))
            continue
        if not isinstance(a, np.ndarray) or a.dtype != p.dtype or a.shape != p.shape or not a.flags.c_contiguous:
            raise ValueError(f"{op}: {name} must be a C-contiguous {p.dtype} array of p's shape {p.shape}, "
                             f"got {getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}; "
                             f"make it with np.ascontiguousarray(x, dtype=p.dtype)")
        out.append(a.reshape(-1))
    return out


def adam_step(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr, beta1, beta2, eps,
              weight_decay=0.0, decoupled=False, maximize=False):
    """One Adam step on one parameter, in place on p, exp_avg, exp_avg_sq and, with AMSGrad,
    max_exp_avg_sq (None without): L2 weight decay (torch.optim.Adam), or decoupled decay with
    `decoupled=True` (torch.optim.AdamW). `step` counts from 1, this step included.

    Bit-identical to its NumPy twin `optim.adaptive.adam_update` (same signature), which
    `optim.Adam`/`AdamW` run on the numpy backend; see adam.py."""
    arrays = _update_arrays("adam_step", p, {"g": g, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                                             "max_exp_avg_sq": max_exp_avg_sq})
    if step < 1:
        raise ValueError(f"adam_step: step counts from 1, got {step}")
    lr, beta1, beta2, eps, wd = float(lr), float(beta1), float(beta2), float(eps), float(weight_decay)
    decay = 1.0 - lr * wd if decoupled and wd else 1.0
    l2 = 0.0 if decoupled else wd
    # the scalars of the twin, computed by the same Python expressions
    scalars = (bool(maximize), l2, decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
               lr / (1.0 - beta1 ** step), math.sqrt(1.0 - beta2 ** step), eps, max_exp_avg_sq is not None)
    _parallel_for(_adam.adam_step, p.size, _parallel(p.size, MEMORY_SERIAL_BELOW), *arrays, *scalars)


def sgd_step(p, g, momentum_buffer=None, *, first=False, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False):
    """One SGD step on one parameter in the torch.optim.SGD form, in place on p and, with
    momentum > 0, on momentum_buffer (None without momentum), which the first step (`first`)
    overwrites with the gradient.

    Bit-identical to its NumPy twin `optim.sgd.sgd_update` (same signature), which `optim.SGD`
    runs on the numpy backend; see sgd.py."""
    momentum = float(momentum)
    if momentum and momentum_buffer is None:
        raise ValueError(f"sgd_step: momentum={momentum} needs a momentum_buffer of p's shape")
    p1, g1, buf = _update_arrays("sgd_step", p, {"g": g, "momentum_buffer": momentum_buffer if momentum else None})
    scalars = (bool(maximize), float(weight_decay), momentum, 1.0 - float(dampening), bool(nesterov),
               bool(first), float(lr))
    _parallel_for(_sgd.sgd_step, p.size, _parallel(p.size, MEMORY_SERIAL_BELOW), p1, g1, buf, *scalars)
