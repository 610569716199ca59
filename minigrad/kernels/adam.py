"""Fused Adam/AdamW update of one parameter (Kingma & Ba 2015, arXiv 1412.6980; decoupled decay:
Loshchilov & Hutter 2019, arXiv 1711.05101), the fast path of `optim.Adam` and `optim.AdamW`.

One pass over p, g, m, v (and vmax with AMSGrad) instead of ~10 NumPy temporaries. The
arithmetic is the NumPy update's (`optim.adaptive.adam_update`, its twin) operation by
operation, in the same order and in the parameter's dtype, so the two agree bit for bit: no
fastmath here (contraction into FMAs or reassociation would round differently), products
written as the NumPy code groups them, divisions kept as divisions. The loop has no reduction,
so LLVM vectorises it without reassociation. The scalars (bias corrections, decay factor) are
computed once in Python by the wrapper `minigrad.kernels.adam_step`, exactly as the NumPy update
computes them.
"""
import numpy as np

from .._numba_cache import njit
from ._math import typed


@njit(error_model="numpy", cache=True)
def _adam_serial(p, g, m, v, vmax, maximize, l2, decay, beta1, one_minus_beta1, beta2,
                 one_minus_beta2, step_size, bias_correction2_sqrt, eps, amsgrad):
    """One Adam step, in place on flat arrays p, m, v (and vmax when `amsgrad`); g is read only.
    Per element, in this order (the twin's):

        g <- -g if maximize;  g <- g + l2*p (Adam's coupled decay; l2 = 0 for AdamW)
        p <- p*decay (AdamW's decoupled decay 1 - lr*wd; 1 for Adam)
        m <- m*beta1 + (1-beta1)*g;  v <- v*beta2 + (1-beta2)*(g*g);  vmax <- max(vmax, v)
        p <- p - step_size * (m / (sqrt(v or vmax) / bias_correction2_sqrt + eps))

    Indices start at 0 so that the loop vectorises (see gelu.py). Saves nothing: m, v and vmax
    are the optimizer's state."""
    b1, omb1 = typed(p, beta1), typed(p, one_minus_beta1)
    b2, omb2 = typed(p, beta2), typed(p, one_minus_beta2)
    wd, dec = typed(p, l2), typed(p, decay)
    lr_t, bc2, e = typed(p, step_size), typed(p, bias_correction2_sqrt), typed(p, eps)
    for i in range(p.shape[0]):
        gi = -g[i] if maximize else g[i]
        pi = p[i]
        if l2 != 0.0:
            gi = gi + wd * pi
        pi = pi * dec
        mi = m[i] * b1 + omb1 * gi
        vi = v[i] * b2 + omb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        if amsgrad:  # np.maximum's rule: a NaN on either side is kept (Python's max drops one)
            vi = vi if vi != vi or vi > vmax[i] else vmax[i]
            vmax[i] = vi
        p[i] = pi - lr_t * (mi / (np.sqrt(vi) / bc2 + e))


@njit(nogil=True, cache=True)
def adam_step(p, g, m, v, vmax, maximize, l2, decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
              step_size, bias_correction2_sqrt, eps, amsgrad, i0, i1):
    """Elements i0..i1-1 (each element touched by one thread), GIL released. `vmax` is an empty
    array when `amsgrad` is False."""
    _adam_serial(p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1], vmax[i0:i1] if amsgrad else vmax,
                 maximize, l2, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                 bias_correction2_sqrt, eps, amsgrad)
