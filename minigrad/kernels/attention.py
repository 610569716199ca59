"""Causal (or full) scaled dot-product attention in the FlashAttention manner.

FlashAttention (Dao et al., NeurIPS 2022, arXiv 2205.14135) and FlashAttention-2 (Dao 2023,
arXiv 2307.08691), on a CPU: for each block of queries, loop over blocks of keys/values,
keep a running row max m, running sum l and unnormalised output O (the online softmax of
Milakov & Gimelshein 2018):

    S = Q_i K_j^T * scale (+ causal mask)     m' = max(m, rowmax S)
    P = exp(S - m')                           l  = exp(m - m') l + rowsum P
    O = exp(m - m') O + P V_j                 m  = m'
    finish: O /= l,  LSE = m + log l

Only O and one LSE per query row are saved; backward recomputes S and P tile by tile from Q,
K and LSE. Memory therefore grows as O(B*H*T*D) (plus two tiles of scratch per thread), never
O(T^2). Under the causal mask, key tiles entirely in a query tile's future are skipped (about
half the work at long T).

Layout: q (BH, T, D), k and v (BH, S, D), C-contiguous; query i sees key j iff
j <= i + causal_offset (causal_offset=0 is PyTorch's `is_causal=True`; a decoder that appends
T new queries after S - T cached keys uses causal_offset = S - T). The tile products are BLAS
GEMMs: `blas.dot` with the `table` every driver takes (`blas.dot_table()`: NumPy's OpenBLAS,
called through its address, else `np.dot` -> SciPy's OpenBLAS). Each driver runs a range of
heads h0..h1-1 and releases the GIL (`nogil=True`); `minigrad.kernels` splits the B*H heads into one range per thread and
runs them at once, so each thread owns its heads' outputs (dq, dk, dv included: no shared
writes). Why Python threads rather than `prange`: see `minigrad.kernels._parallel_for` (cheaper
launches; the `parallel=True` versions of these drivers took 15-18 s each to compile).
"""
import numpy as np

from .._numba_cache import njit
from ._math import FASTMATH, fast_exp, typed
from .blas import dot


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _attention_fwd_head(q, k, v, causal, causal_offset, sc, block_q, block_k, o, lse, table):
    """One head: q (T, D), k and v (S, D) -> o (T, D), lse (T,). Serial; see attention_fwd."""
    t_n, d_n = q.shape
    s_n = k.shape[0]
    sbuf = np.empty(block_q * block_k, q.dtype)
    pvbuf = np.empty(block_q * d_n, q.dtype)
    m = np.empty(block_q, q.dtype)
    l = np.empty(block_q, q.dtype)
    for i0 in range(0, t_n, block_q):
        i1 = min(i0 + block_q, t_n)
        br = i1 - i0
        qi = q[i0:i1]
        acc = o[i0:i1]
        for r in range(br):
            m[r] = -np.inf
            l[r] = 0.0
            for d in range(d_n):
                acc[r, d] = 0.0
        j_end = s_n
        if causal:
            j_end = min(s_n, i1 - 1 + causal_offset + 1)   # later key tiles are all masked
        for j0 in range(0, j_end, block_k):
            j1 = min(j0 + block_k, j_end)
            bc = j1 - j0
            s = sbuf[: br * bc].reshape((br, bc))
            dot(table, qi, k[j0:j1].T, s)                      # S = Q_i K_j^T
            for r in range(br):
                nvis = bc
                if causal:
                    nvis = min(bc, i0 + r + causal_offset - j0 + 1)
                if nvis <= 0:
                    for c in range(bc):
                        s[r, c] = 0.0
                    continue
                mx = m[r]
                for c in range(nvis):
                    mx = max(mx, s[r, c] * sc)                 # m' = max(m, rowmax S)
                alpha = fast_exp(m[r] - mx)
                rs = typed(q, 0.0)
                for c in range(nvis):
                    pe = fast_exp(s[r, c] * sc - mx)           # P = exp(S - m')
                    s[r, c] = pe
                    rs += pe
                for c in range(nvis, bc):
                    s[r, c] = 0.0
                l[r] = l[r] * alpha + rs                       # l = e^(m-m') l + rowsum P
                m[r] = mx
                for d in range(d_n):
                    acc[r, d] *= alpha                         # O = e^(m-m') O ...
            pv = pvbuf[: br * d_n].reshape((br, d_n))
            dot(table, s, v[j0:j1], pv)
            for r in range(br):
                for d in range(d_n):
                    acc[r, d] += pv[r, d]                      # ... + P V_j
        for r in range(br):
            inv = typed(q, 1.0) / l[r]
            for d in range(d_n):
                acc[r, d] *= inv
            lse[i0 + r] = m[r] + np.log(l[r])


@njit(error_model="numpy", nogil=True, cache=True)
def attention_fwd(q, k, v, causal, causal_offset, scale, block_q, block_k, o, lse, table, h0, h1):
    """Forward for heads h0..h1-1: writes o (BH, T, D) and lse (BH, T) of those heads only.
    Saves for backward: o and lse only. Releases the GIL: `minigrad.kernels` runs disjoint
    ranges of heads in several threads at once (see `_parallel_for`)."""
    sc = typed(q, scale)
    for bh in range(h0, h1):
        _attention_fwd_head(q[bh], k[bh], v[bh], causal, causal_offset, sc, block_q, block_k,
                            o[bh], lse[bh], table)


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _attention_bwd_head(q, k, v, o, lse, do, causal, causal_offset, sc, block_q, block_k,
                        dq, dk, dv, table):
    """One head of attention_bwd: q, o, do, dq (T, D); k, v, dk, dv (S, D); lse (T,). Serial."""
    t_n, d_n = q.shape
    s_n = k.shape[0]
    sbuf = np.empty(block_q * block_k, q.dtype)
    dpbuf = np.empty(block_q * block_k, q.dtype)
    kdbuf = np.empty(block_k * d_n, q.dtype)
    qdbuf = np.empty(block_q * d_n, q.dtype)
    delta = np.empty(t_n, q.dtype)
    for i in range(t_n):
        acc = typed(q, 0.0)
        for d in range(d_n):
            acc += do[i, d] * o[i, d]
        delta[i] = acc                                         # delta_i = rowsum(dO_i * O_i)
        for d in range(d_n):
            dq[i, d] = 0.0
    for j0 in range(0, s_n, block_k):
        j1 = min(j0 + block_k, s_n)
        bc = j1 - j0
        kj = k[j0:j1]
        vj = v[j0:j1]
        dkj = dk[j0:j1]
        dvj = dv[j0:j1]
        for c in range(bc):
            for d in range(d_n):
                dkj[c, d] = 0.0
                dvj[c, d] = 0.0
        i_start = 0
        if causal:
            first = max(0, j0 - causal_offset)                 # first query row that sees key j0
            i_start = (first // block_q) * block_q
        tmp_kd = kdbuf[: bc * d_n].reshape((bc, d_n))
        for i0 in range(i_start, t_n, block_q):
            i1 = min(i0 + block_q, t_n)
            br = i1 - i0
            s = sbuf[: br * bc].reshape((br, bc))
            dp = dpbuf[: br * bc].reshape((br, bc))
            dot(table, q[i0:i1], kj.T, s)
            for r in range(br):
                nvis = bc
                if causal:
                    nvis = max(0, min(bc, i0 + r + causal_offset - j0 + 1))
                li = lse[i0 + r]
                for c in range(nvis):
                    s[r, c] = fast_exp(s[r, c] * sc - li)      # P = exp(S - LSE_i), recomputed
                for c in range(nvis, bc):
                    s[r, c] = 0.0
            dot(table, s.T, do[i0:i1], tmp_kd)
            for c in range(bc):
                for d in range(d_n):
                    dvj[c, d] += tmp_kd[c, d]                  # dV_j += P^T dO_i
            dot(table, do[i0:i1], vj.T, dp)                    # dP = dO_i V_j^T
            for r in range(br):
                dl = delta[i0 + r]
                for c in range(bc):
                    dp[r, c] = s[r, c] * (dp[r, c] - dl) * sc  # dS = P (dP - delta) scale
            tmp_qd = qdbuf[: br * d_n].reshape((br, d_n))
            dot(table, dp, kj, tmp_qd)
            for r in range(br):
                for d in range(d_n):
                    dq[i0 + r, d] += tmp_qd[r, d]              # dQ_i += dS K_j
            dot(table, dp.T, q[i0:i1], tmp_kd)
            for c in range(bc):
                for d in range(d_n):
                    dkj[c, d] += tmp_kd[c, d]                  # dK_j += dS^T Q_i


@njit(error_model="numpy", nogil=True, cache=True)
def attention_bwd(q, k, v, o, lse, do, causal, causal_offset, scale, block_q, block_k, dq, dk, dv,
                  table, h0, h1):
    """Backward (FlashAttention-2 order) for heads h0..h1-1: for each key tile j (outer) and
    query tile i (inner),

        P = exp(Q_i K_j^T scale - LSE_i)          dV_j += P^T dO_i
        dP = dO_i V_j^T                           dS = P * (dP - delta_i) * scale
        dQ_i += dS K_j                            dK_j += dS^T Q_i

    with delta_i = rowsum(dO_i * O_i). Query tiles entirely before key tile j (all masked) are
    skipped. A head's dq, dk and dv are written by the thread that owns the head only."""
    sc = typed(q, scale)
    for bh in range(h0, h1):
        _attention_bwd_head(q[bh], k[bh], v[bh], o[bh], lse[bh], do[bh], causal, causal_offset,
                            sc, block_q, block_k, dq[bh], dk[bh], dv[bh], table)


# ----------------------------------------------------------------------------- fused q/k/v layout
# GPT's self-attention gets q, k and v from one projection qkv (B, T, 3C): head h of q is the
# column block qkv[b, :, h*hs:(h+1)*hs], of k the block C further, of v 2C further (hs = C/nh).
# The kernels below read those strided blocks directly and write o (B, T, C) with the heads
# side by side, as llm.c's attention_forward does: no split, transpose or merge copies outside
# the kernel, and backward writes dq, dk, dv straight into one dqkv (B, T, 3C). Each (b, h)
# task copies its head into contiguous (T, hs) scratch (in cache), runs the per-head flash code
# above, and writes back its own columns of o / dqkv only: no two tasks write the same element.


@njit(error_model="numpy", cache=True)
def _gather_head(src, b, c0, hs):
    """Copy the column block src[b, :, c0:c0+hs] into a new C-contiguous (T, hs) array.
    (Plain loops: `np.ascontiguousarray` of a strided slice took seconds longer to compile.)
    The indices are unsigned: Numba wraps a negative signed index around, and as b and c0 are
    arguments the compiler cannot rule that out, so the signed loop copied one number at a time
    (measured at GPT `small`: a layer's q, k, v gathers 0.57 ms signed, 0.30 ms unsigned)."""
    t_n = src.shape[1]
    out = np.empty((t_n, hs), src.dtype)
    bu, cu = np.uint64(b), np.uint64(c0)
    for i in range(np.uint64(t_n)):
        for d in range(np.uint64(hs)):
            out[i, d] = src[bu, i, cu + d]
    return out


@njit(error_model="numpy", cache=True)
def _scatter_head(head, dst, b, c0):
    """dst[b, :, c0:c0+hs] = head (T, hs). Unsigned indices, as in `_gather_head`."""
    bu, cu = np.uint64(b), np.uint64(c0)
    for i in range(np.uint64(head.shape[0])):
        for d in range(np.uint64(head.shape[1])):
            dst[bu, i, cu + d] = head[i, d]


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _qkv_fwd_task(qkv, n_head, causal, sc, block_q, block_k, o, lse, table, bh):
    """Head bh = b * n_head + h of attention_qkv_fwd."""
    b, h = bh // n_head, bh % n_head
    c = o.shape[2]
    hs = c // n_head
    c0 = h * hs
    q = _gather_head(qkv, b, c0, hs)                                   # (T, hs)
    k = _gather_head(qkv, b, c + c0, hs)
    v = _gather_head(qkv, b, 2 * c + c0, hs)
    oh = np.empty_like(q)
    _attention_fwd_head(q, k, v, causal, 0, sc, block_q, block_k, oh, lse[b, h], table)
    _scatter_head(oh, o, b, c0)                                        # heads side by side


@njit(error_model="numpy", nogil=True, cache=True)
def attention_qkv_fwd(qkv, n_head, causal, scale, block_q, block_k, o, lse, table, h0, h1):
    """Forward from the fused projection for heads h0..h1-1 of the B*nh: qkv (B, T, 3C) ->
    o (B, T, C), lse (B, nh, T). Saves for backward: o and lse (the op keeps qkv, its input).
    Each head writes only its own columns of o and its own row of lse."""
    sc = typed(qkv, scale)
    for bh in range(h0, h1):
        _qkv_fwd_task(qkv, n_head, causal, sc, block_q, block_k, o, lse, table, bh)


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _qkv_bwd_task(qkv, o, lse, do, n_head, causal, sc, block_q, block_k, dqkv, table, bh):
    """Head bh of attention_qkv_bwd."""
    b, h = bh // n_head, bh % n_head
    c = o.shape[2]
    hs = c // n_head
    c0 = h * hs
    q = _gather_head(qkv, b, c0, hs)
    k = _gather_head(qkv, b, c + c0, hs)
    v = _gather_head(qkv, b, 2 * c + c0, hs)
    dq = np.empty_like(q)
    dk = np.empty_like(k)
    dv = np.empty_like(v)
    _attention_bwd_head(q, k, v, _gather_head(o, b, c0, hs), lse[b, h], _gather_head(do, b, c0, hs),
                        causal, 0, sc, block_q, block_k, dq, dk, dv, table)
    _scatter_head(dq, dqkv, b, c0)
    _scatter_head(dk, dqkv, b, c + c0)
    _scatter_head(dv, dqkv, b, 2 * c + c0)


@njit(error_model="numpy", nogil=True, cache=True)
def attention_qkv_bwd(qkv, o, lse, do, n_head, causal, scale, block_q, block_k, dqkv, table, h0, h1):
    """Backward of attention_qkv_fwd for heads h0..h1-1: dqkv (B, T, 3C) from do (B, T, C),
    recomputing scores from q, k and lse. Each head writes only its own columns of dqkv."""
    sc = typed(qkv, scale)
    for bh in range(h0, h1):
        _qkv_bwd_task(qkv, o, lse, do, n_head, causal, sc, block_q, block_k, dqkv, table, bh)
