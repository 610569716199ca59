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


def _floats(block, like):
    """`block` in `like`'s dtype: a float block as it is (no copy), a float16 block passed as its
    bits widened into a new array (plain-Python version; compiled code takes the overload)."""
    return block.view(np.float16).astype(like.dtype) if block.dtype == np.uint16 else block


@overload(_floats)
def _floats_ov(block, like):
    if block.dtype != types.uint16:
        return lambda block, like: block

    def widen(block, like):          # (a cache's rows are contiguous: one flat loop that vectorises)
        bits = np.ascontiguousarray(block).reshape(-1)
        out = np.empty(bits.size, like.dtype)
        for t in range(bits.size):
            out[t] = widened(bits[t])
        return out.reshape(block.shape)
    return widen


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
            keys, values = _floats(k[b, h, :n], q), _floats(v[b, h, :n], q)   # float16: widened once
            for j in range(g):
                s = np.dot(keys, q[b, h, j])                             # (n,) unscaled scores
                top = _math.max_vectorised(s) if wide else _math.max_scalar(s)
                total = typed(s, 0.0)                                    # in s's dtype, as s
                for t in range(n):                                       # scale > 0 keeps the max
                    e = fast_exp((s[t] - top) * scale)
                    s[t] = e
                    total += e
                o = np.dot(s, values)
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
