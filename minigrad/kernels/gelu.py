"""GELU, tanh approximation (Hendrycks & Gimpel 2016, arXiv 1606.08415), as in GPT-2.

gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3).
Elementwise over a flat C-contiguous array; parallel over blocks of output elements, each block a
plain loop that LLVM vectorises (tanh through the vectorisable `fast_tanh`, see `_math.py`).
NumPy twins: `reference.py`.
"""
import math

import numpy as np
from numba import njit, prange

from ._math import FASTMATH, fast_tanh, typed

_BLOCK = 8192


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_fwd(x, y):
    """y = gelu(x). Fuses the cube, tanh and products (NumPy needs ~7 temporaries).
    Saves for backward: nothing beyond x itself (tanh is recomputed)."""
    n = x.shape[0]
    k0 = typed(x, 0.7978845608028654)   # sqrt(2/pi)
    k1 = typed(x, 0.044715)
    half = typed(x, 0.5)
    one = typed(x, 1.0)
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            v = x[i]
            t = fast_tanh(k0 * (v + k1 * v * v * v))
            y[i] = half * v * (one + t)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_bwd(x, dy, dx):
    """dx = dy * [0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2)], t recomputed.
    Parallel over blocks of output elements."""
    n = x.shape[0]
    k0 = typed(x, 0.7978845608028654)
    k1 = typed(x, 0.044715)
    k3 = typed(x, 3.0 * 0.044715)
    half = typed(x, 0.5)
    one = typed(x, 1.0)
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            v = x[i]
            t = fast_tanh(k0 * (v + k1 * v * v * v))
            dx[i] = dy[i] * (half * (one + t) + half * v * (one - t * t) * k0 * (one + k3 * v * v))
