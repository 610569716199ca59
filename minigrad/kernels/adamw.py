"""Fused AdamW update over flat buffers (Loshchilov & Hutter, ICLR 2019, arXiv 1711.05101).

The same arithmetic as `torch.optim.AdamW` (decoupled weight decay applied first):
    p <- p * (1 - lr * wd)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
NumPy twin: `reference.adamw_step`.
"""
import numpy as np
from numba import njit, prange

from ._math import FASTMATH, typed

_BLOCK = 16384


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step in place on flat arrays p, m, v (g read only); `step` counts from 1.

    Fuses decay, both moment updates, bias correction and the parameter update: one pass over
    four arrays instead of ~10 NumPy temporaries. Parallel over blocks of elements; each
    element is touched by one thread only. Saves nothing (m and v are the optimizer state)."""
    n = p.shape[0]
    b1 = typed(p, beta1)
    b2 = typed(p, beta2)
    omb1 = typed(p, 1.0 - beta1)
    omb2 = typed(p, 1.0 - beta2)
    decay = typed(p, 1.0 - lr * weight_decay)
    step_size = typed(p, lr / (1.0 - beta1 ** step))
    inv_sqrt_bc2 = typed(p, 1.0 / np.sqrt(1.0 - beta2 ** step))
    e = typed(p, eps)
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            gi = g[i]
            mi = b1 * m[i] + omb1 * gi
            vi = b2 * v[i] + omb2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * decay - step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + e)
