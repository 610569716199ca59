"""Attention's decoding step over one layer of a dense KV cache, compiled: the g queries of each
(row, key/value head) pair over the first n cached positions, read where they lie, with no NumPy
temporaries. The NumPy twin is `models.paged_attention.dense_decode_numpy` (tests/test_kv_cache.py
holds both kernels to it); `models.paged_attention.dense_decode` picks the kernel by the cache's
storage layout (`models.kv_cache.DenseKVCache(layout=...)`).

Shapes: q and out (B, n_kv_head, g, d) and the cache k, v either

- ``positions``: kt, vt (B, n_kv_head, d, max_len), a position-minor buffer. The scores are d
  passes of s += q_i · scale · K[i, :n], each over n contiguous keys, and the output d dot
  products of the probabilities with V[i, :n]: every loop runs along positions, 16 float32 lanes
  at a time. (Four rows of keys a pass, which reads and writes s a quarter as often, measured the
  same: the step is bound by the read of the cache.)
- ``rows``: k, v (B, n_kv_head, max_len, d). Each query's scores are one matrix-vector product
  with the n key rows, the softmax runs over them in place, the output is a second product with
  the values.

Both run in the calling thread. Split over the kernel pool's two threads (each thread a range of
the (row, head) pairs, as compiled jobs the workers ran without the GIL), four layers of GPT
`small` at 1,024 positions took 45 instead of 65 us, yet a whole decoding step of the positions
layout was no faster (538 against 532 us, medians of 16 alternated rounds; rows: 580 against
603): on the 2-core VM the second thread shares the first one's core resources (an L1-bound loop
ran only 1.26x faster on two threads), and what it gained in the attention the rest of the step
lost. Tried on 2026-12-07 and not kept.

The cache may hold the queries' dtype, or float16 (half the bytes to read: a step at 1,024
positions is mostly the read of its keys and values). Numba cannot type float16, so such a cache
comes as its bits (a uint16 view) and every element read is widened exactly (`widened`: LLVM's
half-to-float conversion, one instruction on a CPU with F16C); the arithmetic is in q's dtype.
In the positions layout that is all it takes. In rows, BLAS cannot read halves, so the two
products become loops: a float16 cache of rows decodes faster than float32 from DRAM and a
little slower from the CPU's caches (GPT `small`, block_size 8,192, tokens/s float16 against
float32: 982-1,112 against 872-1,031 at 4,096 positions, 1,701-1,832 against 1,837-1,937 at
1,024). Widening each head's block into a float array once, for BLAS, was slower at every length
(the extra pass writes twice the bytes it reads: 859-905 tokens/s at 4,096).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from .._numba_cache import njit
from . import _math
from ._math import fast_exp, typed


def widened(x):
    """x as a float: an element of a float16 cache passed as its bits (uint16) is converted
    exactly to float32; floats are returned as they are. (The plain-Python version, used with
    NUMBA_DISABLE_JIT; compiled code takes the overload below.)"""
    if isinstance(x, np.uint16):
        return np.float32(np.array(x).view(np.float16))
    return x


@intrinsic
def _half_bits_to_float32(typingctx, bits):
    """The float16 whose bits are `bits` (uint16), as float32: exact (every half is a float)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@overload(widened)
def _widened_ov(x):
    if x == types.uint16:
        return lambda x: _half_bits_to_float32(x)
    if isinstance(x, types.Float):
        return lambda x: x


def _row_scores(keys, qv):
    """keys (n, d) @ qv (d,), in qv's dtype (plain-Python version)."""
    return keys.view(np.float16).astype(qv.dtype) @ qv if keys.dtype == np.uint16 else np.dot(keys, qv)


@overload(_row_scores)
def _row_scores_ov(keys, qv):
    if keys.dtype != types.uint16:
        return lambda keys, qv: np.dot(keys, qv)

    def loop(keys, qv):      # no BLAS for halves: a dot product per position, summed in q's dtype
        s = np.empty(keys.shape[0], qv.dtype)
        for t in range(keys.shape[0]):
            acc = typed(s, 0.0)
            for i in range(keys.shape[1]):
                acc += qv[i] * widened(keys[t, i])
            s[t] = acc
        return s
    return loop


def _row_mix(p, values):
    """p (n,) @ values (n, d), in p's dtype (plain-Python version)."""
    return p @ values.view(np.float16).astype(p.dtype) if values.dtype == np.uint16 else np.dot(p, values)


@overload(_row_mix)
def _row_mix_ov(p, values):
    if values.dtype != types.uint16:
        return lambda p, values: np.dot(p, values)

    def loop(p, values):
        o = np.zeros(values.shape[1], p.dtype)
        for t in range(values.shape[0]):
            for i in range(values.shape[1]):
                o[i] += p[t] * widened(values[t, i])
        return o
    return loop


@njit(cache=True, fastmath=_math.FASTMATH, error_model="numpy")  # (numpy's: no ZeroDivisionError branch)
def positions(q, kt, vt, n, out):
    """out = the step of q over the first n positions of a position-minor cache kt, vt
    (B, n_kv_head, d, max_len) (module docstring)."""
    B, nkv, g, d = q.shape
    scale = typed(q, 1.0 / np.sqrt(d))
    wide = n >= _math.VECTOR_MAX_FROM
    s = np.empty(n, q.dtype)                                             # one query's scores
    for b in range(B):
        for h in range(nkv):
            for j in range(g):
                s[:] = 0
                for i in range(d):                                       # s = (q · scale) K[:, :n]
                    qi, keys = q[b, h, j, i] * scale, kt[b, h, i]
                    for t in range(n):
                        s[t] += qi * widened(keys[t])
                top = _math.max_vectorised(s) if wide else _math.max_scalar(s)
                total = typed(s, 0.0)                                    # in s's dtype, as s
                for t in range(n):
                    e = fast_exp(s[t] - top)
                    s[t] = e
                    total += e
                inv = typed(s, 1.0) / total
                for i in range(d):                                       # o_i = p · V[i, :n]
                    values, acc = vt[b, h, i], typed(s, 0.0)
                    for t in range(n):
                        acc += s[t] * widened(values[t])
                    out[b, h, j, i] = acc * inv


@njit(cache=True, fastmath=_math.FASTMATH, error_model="numpy")
def rows(q, k, v, n, out):
    """out = the step of q over the first n positions of a cache of rows k, v
    (B, n_kv_head, max_len, d) (module docstring). Grouped queries take a matrix-vector product
    each, not one GEMM of g rows: OpenBLAS packs the whole key block for a GEMM of 2 rows
    (measured: 3x slower than two matrix-vector products at n = 1,024), while the second product
    reads keys still in cache."""
    B, nkv, g, d = q.shape
    scale = typed(q, 1.0 / np.sqrt(d))
    wide = n >= _math.VECTOR_MAX_FROM
    for b in range(B):
        for h in range(nkv):
            keys, values = k[b, h, :n], v[b, h, :n]
            for j in range(g):
                s = _row_scores(keys, q[b, h, j])                        # (n,) unscaled scores
                top = _math.max_vectorised(s) if wide else _math.max_scalar(s)
                total = typed(s, 0.0)                                    # in s's dtype, as s
                for t in range(n):                                       # scale > 0 keeps the max
                    e = fast_exp((s[t] - top) * scale)
                    s[t] = e
                    total += e
                o = _row_mix(s, values)
                inv = typed(s, 1.0) / total
                for i in range(d):
                    out[b, h, j, i] = o[i] * inv


def attend(q, k, v, n, layout):
    """out (B, n_kv_head, g, d): the step of the queries q (B, n_kv_head, g, d), C-contiguous,
    float32 or float64, over the first n positions of k, v stored in `layout`: "positions"
    (B, n_kv_head, d, max_len) or "rows" (B, n_kv_head, max_len, d), C-contiguous, in q's dtype
    or the bits of float16 (uint16)."""
    out = np.empty(q.shape, q.dtype)
    (positions if layout == "positions" else rows)(q, k, v, n, out)
    return out
