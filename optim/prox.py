"""Proximal operators and forward-backward splitting: ISTA and FISTA (Lecture 1).

Problem: minimize f(x) + h(x), f L-smooth, h convex with a cheap prox

    prox_{eta h}(z) = argmin_x  h(x) + ||x - z||^2 / (2 eta).

Each operator is a small object: ``h(x)`` gives the value (``inf`` outside a set for an
indicator), ``h.prox(z, eta)`` returns a new array. Indicators' prox is the projection.

| class              | h(x)                                   | prox_{eta h}(z)                          |
|--------------------|----------------------------------------|------------------------------------------|
| ``L1(lam)``        | lam ||x||_1                             | soft threshold S_{eta lam}(z)            |
| ``SquaredL2(lam)`` | lam/2 ||x||^2                           | z / (1 + eta lam)                        |
| ``ElasticNet(a,b)``| a ||x||_1 + b/2 ||x||^2                 | S_{eta a}(z) / (1 + eta b)               |
| ``GroupLasso(lam)``| lam sum_g ||x_g||_2                     | z_g * max(0, 1 - eta lam/||z_g||)        |
| ``NuclearNorm(lam)``| lam sum_i sigma_i(X)                   | U diag(S_{eta lam}(sigma)) V^T           |
| ``Box(lo, hi)``    | indicator of lo <= x <= hi              | clip(z, lo, hi)                          |
| ``L2Ball(r)``      | indicator of ||x||_2 <= r               | z * min(1, r/||z||)                      |
| ``Simplex(s)``     | indicator of x >= 0, sum x = s          | sort-based projection (Held et al. 1974; Duchi et al. 2008) |

Moreau decomposition (tested): prox_h(x) + prox_{h*}(x) = x, with L1(lam)* = Box(-lam, lam) and
L2Ball(r)* = r||.||_2 = GroupLasso(r); ``h.conjugate()`` returns them.

ISTA / FISTA (Beck & Teboulle, SIAM J. Imaging Sci. 2009) act on each parameter array with its
group's ``prox`` (so h must be separable across parameters).
"""
from __future__ import annotations

import math

import numpy as np

from .base import Optimizer, register

__all__ = ["soft_threshold", "Prox", "Zero", "L1", "SquaredL2", "ElasticNet", "GroupLasso",
           "NuclearNorm", "Box", "L2Ball", "Simplex", "project_simplex", "ISTA", "FISTA"]


def soft_threshold(z, tau):
    """S_tau(z)_i = sign(z_i) * max(|z_i| - tau, 0)."""
    return np.sign(z) * np.maximum(np.abs(z) - tau, 0.0)


def project_simplex(z, s=1.0):
    """Euclidean projection of z (flattened) onto {x >= 0, sum(x) = s}; same shape as z."""
    v = np.asarray(z, dtype=np.float64).ravel()
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - s
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0).reshape(np.shape(z)).astype(np.result_type(z, np.float32),
                                                                  copy=False)


class Prox:
    """h: value ``h(x)`` and proximal map ``h.prox(z, eta)``."""

    def __call__(self, x):
        raise NotImplementedError

    def prox(self, z, eta=1.0):
        raise NotImplementedError

    def conjugate(self):
        raise NotImplementedError(f"{type(self).__name__}.conjugate")

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Zero(Prox):
    """h = 0: prox is the identity (ISTA becomes GD)."""

    def __call__(self, x):
        return 0.0

    def prox(self, z, eta=1.0):
        return np.array(z, copy=True)


class L1(Prox):
    def __init__(self, lam):
        self.lam = float(lam)

    def __call__(self, x):
        return self.lam * float(np.abs(x).sum())

    def prox(self, z, eta=1.0):
        return soft_threshold(z, eta * self.lam)

    def conjugate(self):
        return Box(-self.lam, self.lam)


class SquaredL2(Prox):
    def __init__(self, lam):
        self.lam = float(lam)

    def __call__(self, x):
        return 0.5 * self.lam * float(np.sum(np.square(x)))

    def prox(self, z, eta=1.0):
        return z / (1.0 + eta * self.lam)


class ElasticNet(Prox):
    def __init__(self, l1, l2):
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, x):
        return self.l1 * float(np.abs(x).sum()) + 0.5 * self.l2 * float(np.sum(np.square(x)))

    def prox(self, z, eta=1.0):
        return soft_threshold(z, eta * self.l1) / (1.0 + eta * self.l2)


class GroupLasso(Prox):
    """lam * sum of the L2 norms of the groups. ``axis=None``: the whole array is one group;
    ``axis=k``: each slice along the other axes is a group whose norm is taken over axis k (for a
    weight (out, in), ``axis=1`` makes every row (output unit) a group)."""

    def __init__(self, lam, axis=None):
        self.lam, self.axis = float(lam), axis

    def _norms(self, x):
        return np.sqrt(np.sum(np.square(x), axis=self.axis, keepdims=True))

    def __call__(self, x):
        return self.lam * float(self._norms(x).sum())

    def prox(self, z, eta=1.0):
        n, t = self._norms(z), eta * self.lam
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(n > t, 1.0 - t / n, 0.0)
        return z * scale

    def conjugate(self):
        if self.axis is not None:
            raise NotImplementedError("conjugate only for axis=None")
        return L2Ball(self.lam)


class NuclearNorm(Prox):
    """lam * sum of singular values of a 2-D array (promotes low rank)."""

    def __init__(self, lam):
        self.lam = float(lam)

    def __call__(self, x):
        return self.lam * float(np.linalg.svd(x, compute_uv=False).sum())

    def prox(self, z, eta=1.0):
        if np.ndim(z) != 2:
            raise ValueError(f"NuclearNorm.prox needs a 2-D array, got shape {np.shape(z)}")
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        return (u * np.maximum(s - eta * self.lam, 0.0)) @ vt


class Box(Prox):
    """Indicator of {lo <= x <= hi}; prox = clip (independent of eta)."""

    def __init__(self, lo, hi):
        if np.any(np.asarray(lo) > np.asarray(hi)):
            raise ValueError(f"Box: lo={lo} > hi={hi}")
        self.lo, self.hi = lo, hi

    def __call__(self, x):
        return 0.0 if np.all((x >= self.lo) & (x <= self.hi)) else math.inf

    def prox(self, z, eta=1.0):
        return np.clip(z, self.lo, self.hi)

    def conjugate(self):
        if not (np.isscalar(self.lo) and self.lo == -self.hi):
            raise NotImplementedError("conjugate only for a symmetric scalar box")
        return L1(self.hi)


class L2Ball(Prox):
    """Indicator of {||x||_2 <= radius} (whole array); prox = projection."""

    def __init__(self, radius):
        if radius < 0:
            raise ValueError(f"L2Ball: radius must be >= 0, got {radius}")
        self.radius = float(radius)

    def __call__(self, x):
        return 0.0 if np.linalg.norm(x) <= self.radius * (1 + 1e-12) else math.inf

    def prox(self, z, eta=1.0):
        n = float(np.linalg.norm(z))
        return z * (1.0 if n <= self.radius else self.radius / n)

    def conjugate(self):
        return GroupLasso(self.radius)


class Simplex(Prox):
    """Indicator of {x >= 0, sum(x) = s} (whole array flattened)."""

    def __init__(self, s=1.0):
        if s <= 0:
            raise ValueError(f"Simplex: s must be > 0, got {s}")
        self.s = float(s)

    def __call__(self, x):
        ok = np.all(x >= 0) and abs(float(np.sum(x)) - self.s) <= 1e-9 * max(1.0, self.s) * np.size(x)
        return 0.0 if ok else math.inf

    def prox(self, z, eta=1.0):
        return project_simplex(z, self.s)


class _ProxGradBase(Optimizer):
    _unsaved_hparams = ("prox",)

    def __init__(self, params, lr=1e-2, prox=None, weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, prox=prox, weight_decay=weight_decay, nonfinite=nonfinite)

    def reads_parameters(self, group) -> bool:
        return group["prox"] is not None               # prox_{lr h}(x - lr g) depends on x

    def _forward_backward(self, group, p, g):
        """prox_{lr h}(p - lr*(g + wd*p)), in p's dtype (some prox maps promote)."""
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        z = p - group["lr"] * g
        h = group["prox"]
        return z if h is None else h.prox(z, group["lr"]).astype(p.dtype, copy=False)


@register("ista", "proxgrad")
class ISTA(_ProxGradBase):
    """Proximal gradient / forward-backward splitting (ISTA, Lecture 1):

        x <- prox_{lr h}(x - lr * (grad f(x) + wd*x)),   lr <= 1/L;  F(x_k) - F* = O(1/k).

    ``prox`` is a ``Prox`` object per group (None: plain GD). ``weight_decay`` is an L2 term
    wd/2 ||x||^2 added to the smooth part f (coupled, as torch.optim.SGD). Memory: 0."""

    def _update(self, name, p, g, state, group):
        p[...] = self._forward_backward(group, p, g)

    def _state_nbytes(self, p, group):
        return 0


@register("fista")
class FISTA(_ProxGradBase):
    """FISTA (Beck & Teboulle 2009), O(1/k^2):

        x_k = prox_{lr h}(y_k - lr * (grad f(y_k) + wd*y_k))
        t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,   t_1 = 1
        y_{k+1} = x_k + ((t_k - 1) / t_{k+1}) (x_k - x_{k-1})

    The gradient is taken at y, so **the parameter arrays hold y**; the iterate x is
    ``state[name]["x"]`` (``opt.iterates()``). ``weight_decay`` as in ``ISTA``. Memory: N."""

    _iterate_key = "x"

    def _update(self, name, p, g, state, group):
        if "x" not in state:
            state["x"], state["t"] = p.copy(), 1.0        # x_0 = y_1
        x_new = self._forward_backward(group, p, g)
        t = state["t"]
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        p[...] = x_new + ((t - 1.0) / t_next) * (x_new - state["x"])
        state["x"], state["t"] = x_new, t_next

    def _state_nbytes(self, p, group):
        return p.nbytes                                   # x (t is a Python float)
