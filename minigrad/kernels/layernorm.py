"""Layer normalisation forward/backward (Ba, Kiros & Hinton 2016, arXiv 1607.06450).

y = (x - mean) * rstd * w + b over the last axis, rstd = 1/sqrt(var + eps) (biased variance,
like PyTorch). The kernels see C-contiguous (N, C) arrays. NumPy twins: `reference.py`.
"""
import numpy as np
from numba import njit, prange

from ._math import FASTMATH, typed


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layer_norm_fwd(x, w, b, eps, y, mean, rstd):
    """Fuses mean, variance (two-pass, for accuracy), normalise, scale and shift.

    Parallel over rows (each thread owns whole output rows). Saves for backward only
    mean (N,) and rstd (N,); x-hat is recomputed from x in backward."""
    n, c = x.shape
    inv_c = typed(x, 1.0 / c)
    e = typed(x, eps)
    for i in prange(n):
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


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layer_norm_bwd(dy, x, w, mean, rstd, dx, dw_part, db_part):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, xhat recomputed.

    dw = sum_i dy * xhat and db = sum_i dy are reductions over rows; to keep "parallel over
    output elements only", rows are split into dw_part.shape[0] chunks, chunk p owns row p of
    dw_part/db_part (thread-private partial sums), and the caller adds the few partial rows.
    Parallel over row chunks."""
    n, c = x.shape
    nchunks = dw_part.shape[0]
    inv_c = typed(x, 1.0 / c)
    per = (n + nchunks - 1) // nchunks
    for p in prange(nchunks):
        for j in range(c):
            dw_part[p, j] = 0.0
            db_part[p, j] = 0.0
        for i in range(p * per, min(n, (p + 1) * per)):
            mu = mean[i]
            r = rstd[i]
            sg = typed(x, 0.0)
            sgx = typed(x, 0.0)
            for j in range(c):
                xh = (x[i, j] - mu) * r
                g = dy[i, j] * w[j]
                sg += g
                sgx += g * xh
                dw_part[p, j] += dy[i, j] * xh
                db_part[p, j] += dy[i, j]
            sg *= inv_c
            sgx *= inv_c
            for j in range(c):
                xh = (x[i, j] - mu) * r
                dx[i, j] = r * (dy[i, j] * w[j] - sg - xh * sgx)
