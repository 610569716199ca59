"""Fused SGD update of one parameter in the PyTorch form (momentum, dampening, Nesterov, coupled
weight decay), the fast path of `optim.SGD`.

One pass over p, g and the momentum buffer instead of 3-5 NumPy temporaries. As in adam.py, the
arithmetic is the NumPy update's (`optim.sgd.sgd_update`, its twin) operation by operation in
the parameter's dtype, so the two agree bit for bit: no fastmath, products grouped as the NumPy
code groups them.
"""
from .._numba_cache import njit
from ._math import typed


@njit(error_model="numpy", cache=True)
def _sgd_serial(p, g, buf, maximize, weight_decay, momentum, one_minus_dampening, nesterov, first, lr):
    """One SGD step, in place on flat arrays p and buf (the momentum buffer, used when
    momentum > 0); g is read only. Per element, in this order (the twin's):

        g <- -g if maximize;  g <- g + weight_decay*p
        buf <- g on the first step, else buf*momentum + (1-dampening)*g
        d <- g + momentum*buf if nesterov else buf   (d <- g without momentum)
        p <- p - lr*d

    Indices start at 0 so that the loop vectorises (see gelu.py)."""
    wd, mu = typed(p, weight_decay), typed(p, momentum)
    omd, lr_t = typed(p, one_minus_dampening), typed(p, lr)
    for i in range(p.shape[0]):
        gi = -g[i] if maximize else g[i]
        if weight_decay != 0.0:
            gi = gi + wd * p[i]
        if momentum != 0.0:
            bi = gi if first else buf[i] * mu + omd * gi
            buf[i] = bi
            gi = gi + mu * bi if nesterov else bi
        p[i] = p[i] - lr_t * gi


@njit(nogil=True, cache=True)
def sgd_step(p, g, buf, maximize, weight_decay, momentum, one_minus_dampening, nesterov, first, lr, i0, i1):
    """Elements i0..i1-1 (each element touched by one thread), GIL released. `buf` is an empty
    array when momentum is 0."""
    _sgd_serial(p[i0:i1], g[i0:i1], buf[i0:i1] if momentum != 0.0 else buf, maximize, weight_decay,
                momentum, one_minus_dampening, nesterov, first, lr)
