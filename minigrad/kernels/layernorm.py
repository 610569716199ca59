"""Layer normalisation forward/backward (Ba, Kiros & Hinton 2016, arXiv 1607.06450).

y = (x - mean) * rstd * w + b over the last axis, rstd = 1/sqrt(var + eps) (biased variance,
like PyTorch). The kernels see C-contiguous (N, C) arrays and work on a range of rows (or row
chunks), releasing the GIL; the wrappers split large inputs into one range per thread.
NumPy twins: `reference.py`.
"""
import numpy as np

from .._numba_cache import njit
from ._math import FASTMATH, typed


@njit(fastmath=FASTMATH, error_model="numpy", nogil=True, cache=True)
def layer_norm_fwd(x, w, b, eps, y, mean, rstd, r0, r1):
    """Fuses mean, variance (two-pass, for accuracy), normalise, scale and shift for rows
    r0..r1-1. Saves for backward only mean (N,) and rstd (N,); x-hat is recomputed."""
    c = x.shape[1]
    inv_c = typed(x, 1.0 / c)
    e = typed(x, eps)
    for i in range(r0, r1):
        s = typed(x, 0.0)
        for j in range(c):
            s += x[i, j]
        mu = s * inv_c
        ss = typed(x, 0.0)
        for j in range(c):
            d = x[i, j] - mu
            ss += d * d
        r = typed(x, 1.0) / np.sqrt(ss * inv_c + e)
        mean[i] = mu
        rstd[i] = r
        for j in range(c):
            y[i, j] = (x[i, j] - mu) * r * w[j] + b[j]


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _layer_norm_bwd_rows(dy, x, w, mean, rstd, dx, dw_row, db_row, r0, r1):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, xhat recomputed, for rows
    r0..r1-1; their contributions to dw = sum dy * xhat and db = sum dy go to the private
    partial rows dw_row, db_row (set to zero first)."""
    c = x.shape[1]
    inv_c = typed(x, 1.0 / c)
    for j in range(c):
        dw_row[j] = 0.0
        db_row[j] = 0.0
    for i in range(r0, r1):
        mu = mean[i]
        r = rstd[i]
        sg = typed(x, 0.0)
        sgx = typed(x, 0.0)
        for j in range(c):
            xh = (x[i, j] - mu) * r
            g = dy[i, j] * w[j]
            sg += g
            sgx += g * xh
            dw_row[j] += dy[i, j] * xh
            db_row[j] += dy[i, j]
        sg *= inv_c
        sgx *= inv_c
        for j in range(c):
            xh = (x[i, j] - mu) * r
            dx[i, j] = r * (dy[i, j] * w[j] - sg - xh * sgx)


@njit(error_model="numpy", nogil=True, cache=True)
def layer_norm_bwd(dy, x, w, mean, rstd, dx, dw_part, db_part, p0, p1):
    """dw and db are reductions over rows; to keep "parallel over output elements only", the
    rows are split into P = dw_part.shape[0] chunks, chunk p owns row p of dw_part/db_part
    (thread-private partial sums), and the caller adds the few partial rows. Runs chunks
    p0..p1-1 (a thread gets a range of chunks); see `_layer_norm_bwd_rows`."""
    n = x.shape[0]
    nchunks = dw_part.shape[0]
    for p in range(p0, p1):
        _layer_norm_bwd_rows(dy, x, w, mean, rstd, dx, dw_part[p], db_part[p],
                             n * p // nchunks, n * (p + 1) // nchunks)
