"""Fused AdamW update over flat buffers (Loshchilov & Hutter, ICLR 2019, arXiv 1711.05101).

The same arithmetic as `torch.optim.AdamW` (decoupled weight decay applied first):
    p <- p * (1 - lr * wd)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
NumPy twin: `reference.adamw_step`.
"""
import numpy as np

from .._numba_cache import njit
from ._math import FASTMATH, typed


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def _adamw_serial(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step in place on flat arrays p, m, v (g read only); indices start at 0 so
    that the loop vectorises (see gelu.py).

    Fuses decay, both moment updates, bias correction and the parameter update: one pass over
    four arrays instead of ~10 NumPy temporaries. Saves nothing (m, v are the optimizer state)."""
    b1 = typed(p, beta1)
    b2 = typed(p, beta2)
    omb1 = typed(p, 1.0 - beta1)
    omb2 = typed(p, 1.0 - beta2)
    decay = typed(p, 1.0 - lr * weight_decay)
    step_size = typed(p, lr / (1.0 - beta1 ** step))
    inv_sqrt_bc2 = typed(p, 1.0 / np.sqrt(1.0 - beta2 ** step))
    e = typed(p, eps)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + omb1 * gi
        vi = b2 * v[i] + omb2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + e)


@njit(nogil=True, cache=True)
def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, i0, i1):
    """Elements i0..i1-1 (each element touched by one thread), GIL released; `step` from 1."""
    _adamw_serial(p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1], lr, beta1, beta2, eps, weight_decay, step)
