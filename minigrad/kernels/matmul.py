"""Matrix products: batched GEMM calling BLAS per batch item, and a tiled loop GEMM for teaching.

Each product of `bmm` is `blas.dot`: NumPy's OpenBLAS through its address, or `np.dot` (SciPy's
OpenBLAS, SciPy must be installed) where that is not found; see
`minigrad.backend._single_thread_numba_blas` (applied by `minigrad.configure_runtime()`) for why
that BLAS should run single-threaded when our threads call it.
NumPy twins: `reference.py`.
"""
from numba import prange

from .._numba_cache import njit
from ._math import FASTMATH
from .blas import dot


@njit(nogil=True, cache=True)
def bmm(a, b, out, table, i0, i1):
    """out[i] = a[i] @ b[i] for batch items i0..i1-1; a (N, M, K), b (N, K, P), out (N, M, P).

    Each thread gets its own range of batch items (whole output matrices) and the GIL is
    released; each product is one BLAS GEMM (`blas.dot` with `table`, `blas.dot_table()`).
    Saves nothing (the matmul op keeps a and b)."""
    for i in range(i0, i1):
        dot(table, a[i], b[i], out[i])


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def matmul_tiled(a, b, out, tile):
    """out = a @ b with plain loops, tiled so each (tile x tile) block of b stays in cache.

    For teaching: i-k-j loop order makes the innermost loop a contiguous axpy over a row of b
    that LLVM vectorises; tiling k and j keeps the touched part of b in L1/L2. It still reaches
    only a fraction of BLAS (no register blocking, no packing). Parallel over row tiles of the
    output; every reduction over k accumulates into the thread's own output rows."""
    m, kk = a.shape
    p = b.shape[1]
    for ti in prange((m + tile - 1) // tile):
        i0 = ti * tile
        i1 = min(m, i0 + tile)
        for i in range(i0, i1):
            for j in range(p):
                out[i, j] = 0.0
        for k0 in range(0, kk, tile):
            k1 = min(kk, k0 + tile)
            for j0 in range(0, p, tile):
                j1 = min(p, j0 + tile)
                for i in range(i0, i1):
                    for k in range(k0, k1):
                        aik = a[i, k]
                        for j in range(j0, j1):
                            out[i, j] += aik * b[k, j]
