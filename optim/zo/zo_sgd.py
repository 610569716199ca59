"""ZO-SGD (and ZO-SGD with momentum): SGD on a random-direction gradient estimate.

Ghadimi & Lan, "Stochastic first- and zeroth-order methods for nonconvex stochastic
programming", SIAM J. Optim. 2013 (RSGF); Nesterov & Spokoiny, FoCM 2017 (Gaussian
smoothing); Flaxman, Kalai & McMahan, SODA 2005 (sphere directions).

One step, treating all parameters as one vector θ ∈ R^d:

    for k = 1..q:  u_k = Gaussian z_k                       (direction="gaussian")
                   u_k = z_k / ‖z_k‖                         (direction="sphere")
                   c_k = (f(θ+μu_k) − f(θ−μu_k)) / (2μ)      (kind="central", 2q calls)
                   c_k = (f(θ+μu_k) − f(θ)) / μ              (kind="forward", q+1 calls)
    ĝ = (1/q)·Σ_k c_k·u_k            (×d for sphere directions, because E[uuᵀ] = I/d)
    m ← β·m + ĝ                      (heavy ball, PyTorch SGD convention; m = ĝ if β = 0)
    θ ← θ − η·(m + λθ)

E ĝ = ∇f_μ (Gaussian) or ∇f̂_μ (sphere), both = ∇f on quadratics; Cov ĝ is the single-query
covariance / q (optim/zo/estimators.py), so ZO-SGD needs about d/q times more steps than SGD.

Like MeZO, the directions are regenerated tensor by tensor from (seed, t, name, k) rather than
stored (the sphere normalisation first regenerates them once to get ‖z_k‖). Memory:
parameters + the momentum buffer (d floats, only when β > 0) + two tensor-sized temporaries.
With q = 1, direction="gaussian", kind="central", β = 0 this is MeZO: the same z, but the update
rounds fl(fl(z·c)·lr) where MeZO rounds fl(z·(lr·c)), so equal up to rounding.
"""
from __future__ import annotations

import math

import numpy as np

from ..base import check_count, check_fraction, register
from .base import ZerothOrderOptimizer, noise_dtype

__all__ = ["ZOSGD"]


@register("zo-sgd", "zosgd")
class ZOSGD(ZerothOrderOptimizer):
    """ZO-SGD (``optim.create("zo-sgd", params, lr=1e-3, eps=1e-3, q=1,
    direction="gaussian", kind="central", momentum=0.0, seed=0)``). See the module docstring.
    ``step(closure=fn)`` returns f(θ) (forward kind) or the mean of the 2q evaluations."""

    _saved_options = ZerothOrderOptimizer._saved_options + ("q", "direction", "kind", "momentum")

    def __init__(self, params, lr=1e-3, eps=1e-3, q=1, direction="gaussian", kind="central",
                 momentum=0.0, weight_decay=0.0, seed=None, nonfinite="raise"):
        if direction not in ("gaussian", "sphere"):
            raise ValueError(f"ZO-SGD: direction must be 'gaussian' or 'sphere', got {direction!r}")
        if kind not in ("central", "forward"):
            raise ValueError(f"ZO-SGD: kind must be 'central' or 'forward', got {kind!r}")
        check_count(q, "ZO-SGD: q (queries per step)")
        check_fraction(momentum, "ZO-SGD: momentum")
        super().__init__(params, eps=eps, seed=seed, nonfinite=nonfinite, lr=lr,
                         weight_decay=weight_decay)
        self.q, self.direction, self.kind = int(q), direction, kind
        self.momentum = float(momentum)
        self.dim = sum(p.size for p in self.params.values())

    def u(self, name, t, k):
        """Replay the *unnormalised* Gaussian z_k of tensor ``name`` at step t (query k)."""
        p = self.params[name]
        return self.noise(name, p.shape, p.dtype, t, tag=k + 1)

    def _norms(self, t):
        """1/‖z_k‖ for each query (sphere) or 1 (Gaussian), by regenerating z_k tensor by tensor."""
        if self.direction == "gaussian":
            return [1.0] * self.q
        out = []
        for k in range(self.q):
            ss = 0.0
            for name in self.params:
                z = self.u(name, t, k)
                ss += float(np.dot(z.ravel(), z.ravel()))  # (views: no copy)
                del z  # free it before the next tensor's z is drawn
            out.append(1.0 / math.sqrt(ss))
        return out

    def _perturb_(self, t, k, alpha):
        for name, p in self.params.items():
            self._add_(p, self.u(name, t, k), alpha)

    def _zo_step(self, closure):
        t = self.global_state["step"]
        inv = self._norms(t)
        mu = self.eps
        losses, coef, cs = [], [], []
        f0 = self._loss(closure) if self.kind == "forward" else None
        if f0 is not None and not math.isfinite(f0):
            return self._bad_loss(f0)
        for k in range(self.q):
            lp, lm = self._two_point_losses(
                closure, lambda s, k=k: self._perturb_(t, k, s * mu * inv[k]), central=self.kind == "central")
            if self.kind == "central":
                losses += [lp, lm]
                c = (lp - lm) / (2 * mu)
            else:
                losses.append(lp)
                c = (lp - f0) / mu
            if not math.isfinite(c):
                return self._bad_loss(*losses)
            cs.append(c)
            # ĝ = (1/q)·Σ c_k·scale·u_k with u_k = inv_k·z_k and scale = d for the sphere
            coef.append(c * inv[k] * (self.dim if self.direction == "sphere" else 1.0) / self.q)
        beta = self.momentum
        for group in self.param_groups:
            for name, p in group["params"].items():
                g = self.u(name, t, 0)
                g *= coef[0]
                for k in range(1, self.q):
                    z = self.u(name, t, k)
                    z *= coef[k]
                    g += z
                    del z
                if beta:
                    st = self.state.setdefault(name, {})
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = g.copy()
                    else:
                        st["momentum_buffer"] *= beta
                        st["momentum_buffer"] += g
                    g[...] = st["momentum_buffer"]
                self._decay_(p, group)
                self._add_(p, g, -group["lr"])
                del g
        loss = f0 if f0 is not None else float(np.mean(losses))
        self.global_state.update(step=t + 1, c=cs, loss=loss)
        return loss

    def _state_nbytes(self, p, group):
        return p.size * noise_dtype(p.dtype).itemsize if self.momentum else 0
