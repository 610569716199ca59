"""PagedAttention's decoding step: each sequence's query attends over that sequence's keys and
values, read in place from the block pool through its block table (Kwon et al. 2023, "Efficient
Memory Management for Large Language Model Serving with PagedAttention", arXiv:2309.06180).

``paged_decode(q, k_pool, v_pool, tables, lengths)`` with q (B, n_kv_head, g, d) (the g query
heads of each key/value head), k_pool and v_pool (n_kv_head, num_blocks, block_size, d) of one
layer, tables (B, W) the physical block of each row's logical blocks and lengths (B,) the
positions each row holds, returns o (B, n_kv_head, g, d).

On the numba backend a compiled kernel walks each row's table block by block with an online
softmax (running max m, sum l and output o, rescaled by e^(m_old - m_new) when the max grows), so
a step reads the cache once and copies none of it. On the numpy backend the twin gathers each
row's blocks into one array and attends over it (a copy of what it reads). Both give the same
result (tests/test_kv_cache.py).

``dense_decode(q, k, v, n)`` is the same step over one layer of a dense cache, k and v
(B, n_kv_head, max_len, d) of which the first n positions are filled, read where they lie with no
NumPy temporaries or per-op Python calls. The numba backend has a kernel for each of the dense
cache's two storage layouts (``DenseKVCache(layout=...)``), in `minigrad.kernels.decode`; the
cache may hold the queries' dtype or float16 (read as its bits and widened exactly):

- ``"positions"`` (k and v views of (B, n_kv_head, d, max_len) buffers): every loop runs along
  the n contiguous positions of a row of keys or values, 16 float32 lanes at a time.
- ``"rows"`` ((B, n_kv_head, max_len, d) buffers): the scores are one matrix-vector product with
  the n key rows and the output a second one with the values. Each score is a d-element dot
  product ending in a horizontal sum: at n = 1,024 this took ~2.3x the time of reading the keys
  and values, against ~1.4x for the other (bench/README.md, eighth session). Rows keep each
  position's d numbers together, which is what a reader that gathers blocks of positions wants.

Any other layout, and the numpy backend, take the NumPy twin: the same three steps as
whole-array operations.
"""
from __future__ import annotations

import math

import numpy as np

from minigrad.backend import get_backend, numba_available

__all__ = ["paged_decode", "paged_decode_numpy", "dense_decode", "dense_decode_numpy"]

_kernel = None


def _compiles(*arrays) -> bool:
    """Whether the kernels take these arrays: the numba backend, and one dtype that Numba
    computes in (a float16 cache, which Numba cannot type, takes the NumPy twin in
    `paged_decode`; `dense_decode` reads one as its bits)."""
    dtypes = {a.dtype for a in arrays}
    return (get_backend() == "numba" and numba_available() and len(dtypes) == 1
            and dtypes <= {np.dtype(np.float32), np.dtype(np.float64)})


def paged_decode(q, k_pool, v_pool, tables, lengths):
    """o (B, n_kv_head, g, d): row b's queries over its first lengths[b] positions (see above)."""
    if _compiles(q, k_pool, v_pool):
        out = np.empty(q.shape, q.dtype)
        _compiled()(np.ascontiguousarray(q), k_pool, v_pool, np.ascontiguousarray(tables, np.int64),
                    np.ascontiguousarray(lengths, np.int64), 1.0 / math.sqrt(q.shape[-1]), out)
        return out
    return paged_decode_numpy(q, k_pool, v_pool, tables, lengths)


def paged_decode_numpy(q, k_pool, v_pool, tables, lengths):
    """The NumPy twin: gather each row's blocks (padded to the longest row, masked), then attend."""
    B, nkv, g, d = q.shape
    bs = k_pool.shape[2]
    S = tables.shape[1] * bs
    keys = k_pool[:, tables].reshape(nkv, B, S, d)                  # (nkv, B, S, d): a copy
    values = v_pool[:, tables].reshape(nkv, B, S, d)
    s = (q.transpose(1, 0, 2, 3) * (1.0 / math.sqrt(d))) @ keys.swapaxes(-1, -2)   # (nkv, B, g, S)
    s = np.where(np.arange(S) < np.asarray(lengths)[:, None, None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return (s @ values).transpose(1, 0, 2, 3)


def _compiled():
    """The numba kernel, compiled (or loaded from the on-disk cache) on first use."""
    global _kernel
    if _kernel is None:
        from minigrad._numba_cache import njit
        from minigrad.kernels import _math

        # numpy's error model: no ZeroDivisionError branch, so the loops vectorise
        @njit(cache=True, fastmath=_math.FASTMATH, error_model="numpy")
        def kernel(q, k_pool, v_pool, tables, lengths, scale, out):
            B, nkv, g, d = q.shape
            bs = k_pool.shape[2]
            s = np.empty(bs)
            acc = np.empty(d)
            for b in range(B):
                n = lengths[b]
                for h in range(nkv):
                    for j in range(g):
                        m, total = -np.inf, 0.0
                        acc[:] = 0.0
                        for ib in range((n + bs - 1) // bs):
                            blk = tables[b, ib]
                            end = min(bs, n - ib * bs)
                            top = -np.inf
                            for off in range(end):           # the block's scores and their max
                                dot = 0.0
                                for i in range(d):
                                    dot += q[b, h, j, i] * k_pool[h, blk, off, i]
                                s[off] = dot * scale
                                top = max(top, s[off])
                            if top > m:                      # a new max: rescale the sums so far
                                c = math.exp(m - top)
                                total *= c
                                for i in range(d):
                                    acc[i] *= c
                                m = top
                            for off in range(end):
                                p = math.exp(s[off] - m)
                                total += p
                                for i in range(d):
                                    acc[i] += p * v_pool[h, blk, off, i]
                        for i in range(d):
                            out[b, h, j, i] = acc[i] / total

        _kernel = kernel
    return _kernel


def dense_decode(q, k, v, n):
    """o (B, n_kv_head, g, d): the queries q (B, n_kv_head, g, d) of one decoding step over the
    first ``n`` positions of one layer's dense cache k, v (B, n_kv_head, max_len, d), stored in
    either of the cache's layouts (see above), in q's dtype or float16; others get the same
    result from the twin."""
    if _compiles(q) and k.dtype == v.dtype and k.dtype in (q.dtype, np.float16):
        kt, vt = k.swapaxes(-1, -2), v.swapaxes(-1, -2)             # (B, n_kv_head, d, max_len)
        if kt.flags.c_contiguous and vt.flags.c_contiguous:
            layout, k, v = "positions", kt, vt
        elif k.flags.c_contiguous and v.flags.c_contiguous:
            layout = "rows"
        else:
            return dense_decode_numpy(q, k, v, n)
        if k.dtype == np.float16:                                    # its bits: Numba cannot type halves
            k, v = k.view(np.uint16), v.view(np.uint16)
        from minigrad.kernels import decode          # (here: it imports Numba)

        return decode.attend(np.ascontiguousarray(q), k, v, n, layout)
    return dense_decode_numpy(q, k, v, n)


def dense_decode_numpy(q, k, v, n):
    """The NumPy twin: scores against a view of the filled keys, softmax, weighted values."""
    s = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k[:, :, :n].swapaxes(-1, -2)      # (B, nkv, g, n)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s @ v[:, :, :n]
