"""GELU, tanh approximation (Hendrycks & Gimpel 2016, arXiv 1606.08415), as in GPT-2.

gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3).
Elementwise over flat C-contiguous arrays. `_gelu_fwd_serial`/`_gelu_bwd_serial` loop over a
whole (sub)array from index 0 (tanh through the vectorisable `fast_tanh`, see `_math.py`); the
`parallel=True` drivers hand them slices of BLOCK output elements, and the wrappers call them
directly for arrays too small to pay for waking the worker threads. Two details make LLVM
vectorise the loop (measured 2.5x and 3.4x): `error_model="numpy"` (no ZeroDivisionError branch
for the tanh's division) and indices that start at 0 (a loop over `range(i0, i1)` may see
negative indices, and Numba's wrap-around handling of those blocks vectorisation).
NumPy twins: `reference.py`.
"""
from numba import njit, prange

from ._math import FASTMATH, fast_tanh, typed

BLOCK = 8192


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _gelu_fwd_serial(x, y):
    """y = gelu(x). Fuses the cube, tanh and products (NumPy needs ~7 temporaries).
    Saves for backward: nothing beyond x itself (tanh is recomputed)."""
    k0 = typed(x, 0.7978845608028654)   # sqrt(2/pi)
    k1 = typed(x, 0.044715)
    half = typed(x, 0.5)
    one = typed(x, 1.0)
    for i in range(x.shape[0]):
        v = x[i]
        t = fast_tanh(k0 * (v + k1 * v * v * v))
        y[i] = half * v * (one + t)


@njit(parallel=True, cache=True)
def gelu_fwd(x, y):
    """Parallel over blocks of output elements; see `_gelu_fwd_serial`."""
    n = x.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        i0, i1 = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        _gelu_fwd_serial(x[i0:i1], y[i0:i1])


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _gelu_bwd_serial(x, dy, dx):
    """dx = dy * [0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2)], t recomputed."""
    k0 = typed(x, 0.7978845608028654)
    k1 = typed(x, 0.044715)
    k3 = typed(x, 3.0 * 0.044715)
    half = typed(x, 0.5)
    one = typed(x, 1.0)
    for i in range(x.shape[0]):
        v = x[i]
        t = fast_tanh(k0 * (v + k1 * v * v * v))
        dx[i] = dy[i] * (half * (one + t) + half * v * (one - t * t) * k0 * (one + k3 * v * v))


@njit(parallel=True, cache=True)
def gelu_bwd(x, dy, dx):
    """Parallel over blocks of output elements; see `_gelu_bwd_serial`."""
    n = x.shape[0]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        i0, i1 = blk * BLOCK, min(n, (blk + 1) * BLOCK)
        _gelu_bwd_serial(x[i0:i1], dy[i0:i1], dx[i0:i1])
