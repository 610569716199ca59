"""Kronecker-factored preconditioners (Shampoo, SOAP) and Anderson acceleration of gradient descent.

* ``Shampoo`` (Gupta, Koren, Singer, ICML 2018, arXiv 1802.09568) preconditions a matrix
  gradient G from both sides with inverse fourth roots of its accumulated Gram matrices.
* ``SOAP`` (Vyas et al., ICLR 2025, arXiv 2409.11321) runs Adam in the eigenbasis of Shampoo's
  factors, refreshed every few steps.
* ``Anderson`` (Walker & Ni, SIAM J. Numer. Anal. 2011) accelerates the fixed-point map of
  gradient descent, x -> x - lr*grad f(x), by mixing its last few residuals.

A parameter with more than two dimensions (a convolution kernel) is seen by Shampoo as the matrix
``(shape[0], -1)``; SOAP keeps one factor per dimension, as its reference code does.
Statistics are kept in float32 at least (``numpy.linalg`` has no float16 eigensolver).
"""
from __future__ import annotations

import math

import numpy as np

from .base import Optimizer, check_count, check_fraction, register

__all__ = ["Shampoo", "SOAP", "Anderson"]


def _stat_dtype(p):
    return np.promote_types(p.dtype, np.float32)


def _inverse_root(a, root, eps):
    """(a + eps*I)^(-1/root) of a symmetric PSD matrix by eigendecomposition. An eigenvalue below
    the rounding level of the largest one (lambda_max * n * the dtype's eps) is not known better
    than that level (it may even come out negative), so it is raised to it. Its direction gets a
    bounded weight, cut^(-1/root), not lambda^(-1/root) of a rounding error (or of eps = 1e-12:
    a weight of 1,000 on noise), and not 0, which froze every direction of a float32 gradient
    whose singular value was below ~sqrt(n * 1.2e-7) of the largest (5 of 16 directions of a
    gradient with singular values from 1 to 1e-4). A direction the statistics have not seen yet
    (roots refreshed every k > 1 steps) gets that weight too."""
    w, v = np.linalg.eigh(a + eps * np.eye(len(a), dtype=a.dtype))
    cut = max(w.max(), 0.0) * len(a) * np.finfo(a.dtype).eps
    if cut == 0.0:                      # a zero statistic (no gradient yet, eps = 0): no step
        return np.zeros_like(a)
    return (v * np.maximum(w, cut) ** (-1.0 / root)) @ v.T


@register("shampoo")
class Shampoo(Optimizer):
    """Shampoo (Gupta, Koren, Singer, ICML 2018, arXiv 1802.09568). For a matrix gradient G (m x n):

        g <- g + wd*theta                                     (L2 weight decay, coupled)
        L <- L + G G^T,  R <- R + G^T G     (beta2 = 1, the paper; beta2 < 1: EMAs
                                              L <- beta2*L + (1-beta2)*G G^T, as in practical Shampoo)
        every precondition_frequency steps:  L_r = (L + eps*I)^(-1/4),  R_r = (R + eps*I)^(-1/4)
        D = L_r G R_r
        grafting="adam": D <- D * ||A|| / ||D||,  A = g / (sqrt(v/(1-b^t)) + grafting_epsilon),
                         v <- b*v + (1-b)*g^2  (b = grafting_beta2; the step length of Adam without
                         first moment, the direction of Shampoo)
        momentum > 0:    buf <- momentum*buf + D;  D <- buf
        theta <- theta - lr*D

    The paper starts from L_0 = eps*I; adding eps*I at the root is the same when beta2 = 1.
    With eps -> 0 the first step is lr*U V^T for G = U S V^T (the polar factor, as Muon's update):
    (G G^T)^(-1/4) G (G^T G)^(-1/4) = U V^T, for the singular values above the statistics'
    rounding level (``_inverse_root``; in float32 the others step by sigma / sqrt(n * 1.2e-7),
    relative to the largest). A tensor with ndim > 2 is preconditioned as the matrix
    (shape[0], -1). A side longer than ``max_preconditioner_dim`` gets no factor, and the other
    side's root becomes -1/2 (the exponent is -1/(2k) for k factors, as for an order-k tensor in
    the paper). A 1-D parameter (or a matrix with both sides too long) uses the diagonal of its
    statistic, AdaGrad's (s + eps)^(-1/2), instead of a full n x n factor.

    ``momentum``, grafting and the EMA form follow practical Shampoo (Anil et al. 2020, arXiv
    2002.09018; facebookresearch/optimizers' distributed_shampoo, whose argument names are kept);
    the details of its grafting are not checked against that code.
    Memory per matrix: 2(m^2 + n^2) (factors and their cached roots), +N with grafting, +N with
    momentum; per vector: N (+N, +N)."""

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0, epsilon=1e-12,
                 beta2=1.0, precondition_frequency=1, max_preconditioner_dim=1024, grafting=None,
                 grafting_beta2=0.999, grafting_epsilon=1e-8, *, nonfinite="raise"):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         epsilon=epsilon, beta2=beta2, precondition_frequency=precondition_frequency,
                         max_preconditioner_dim=max_preconditioner_dim, grafting=grafting,
                         grafting_beta2=grafting_beta2, grafting_epsilon=grafting_epsilon,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_fraction(group["momentum"], "Shampoo momentum")
        check_fraction(group["grafting_beta2"], "Shampoo grafting_beta2")
        if not 0.0 < group["beta2"] <= 1.0:
            raise ValueError(f"Shampoo beta2 must be in (0, 1] (1 sums the statistics as in the "
                             f"paper), got {group['beta2']!r}")
        for key in ("epsilon", "grafting_epsilon"):
            if not group[key] >= 0:
                raise ValueError(f"Shampoo {key} must be >= 0, got {group[key]!r}")
        check_count(group["precondition_frequency"], "Shampoo precondition_frequency")
        check_count(group["max_preconditioner_dim"], "Shampoo max_preconditioner_dim")
        if group["grafting"] not in (None, "adam"):
            raise ValueError(f"Shampoo grafting must be None or 'adam', got {group['grafting']!r}")

    @staticmethod
    def _sides(p, group):
        """The lengths of the preconditioned sides of ``p`` seen as a matrix, or () for diagonal."""
        if p.ndim < 2:
            return ()
        m, n = p.shape[0], p.size // p.shape[0]
        sides = tuple(d if d <= group["max_preconditioner_dim"] else 0 for d in (m, n))
        return sides if any(sides) else ()

    def _update(self, name, p, g, state, group):
        dt, sides = _stat_dtype(p), self._sides(p, group)
        if "step" not in state:
            state["step"] = 0
            if sides:
                for key, d in zip("LR", sides):
                    if d:
                        state[key] = np.zeros((d, d), dt)
                        state[key + "_root"] = np.zeros((d, d), dt)
            else:
                state["diag"] = np.zeros(p.shape, dt)
            if group["grafting"]:
                state["grafting_sq"] = np.zeros(p.shape, dt)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros(p.shape, dt)
        state["step"] += 1
        t, b2, eps = state["step"], group["beta2"], group["epsilon"]
        g = g.astype(dt)
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        new = 1.0 if b2 == 1.0 else 1.0 - b2
        if sides:
            G = g.reshape(p.shape[0], -1)
            k = sum(bool(d) for d in sides)
            refresh = (t - 1) % group["precondition_frequency"] == 0
            d = G
            if sides[0]:
                state["L"] *= b2
                state["L"] += new * (G @ G.T)
                if refresh:
                    state["L_root"][...] = _inverse_root(state["L"], 2 * k, eps)
                d = state["L_root"] @ d
            if sides[1]:
                state["R"] *= b2
                state["R"] += new * (G.T @ G)
                if refresh:
                    state["R_root"][...] = _inverse_root(state["R"], 2 * k, eps)
                d = d @ state["R_root"]
            d = d.reshape(p.shape)
        else:
            s = state["diag"]
            s *= b2
            s += new * (g * g)
            scale = np.zeros_like(s)
            np.power(s + eps, -0.5, out=scale, where=s + eps > 0)
            d = g * scale
        if group["grafting"]:
            gb = group["grafting_beta2"]
            v = state["grafting_sq"]
            v *= gb
            v += (1.0 - gb) * (g * g)
            adam = g / (np.sqrt(v / (1.0 - gb ** t)) + group["grafting_epsilon"])
            norm = np.linalg.norm(d)
            if norm > 0:
                d = d * (np.linalg.norm(adam) / norm)
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += d
            d = buf
        p -= (group["lr"] * d).astype(p.dtype)

    def _state_nbytes(self, p, group):
        n = 2 * sum(d * d for d in self._sides(p, group)) or p.size
        n += p.size * (bool(group["grafting"]) + (group["momentum"] > 0))
        return n * _stat_dtype(p).itemsize


def _rotate(x, qs, back=False):
    """Multiply every axis i of x that has a basis qs[i] by qs[i]^T (into the eigenbasis) or by
    qs[i] (``back``)."""
    for axis, q in enumerate(qs):
        if q is not None:
            x = np.moveaxis(np.tensordot(x, q, axes=([axis], [1 if back else 0])), -1, axis)
    return x


@register("soap")
class SOAP(Optimizer):
    """SOAP (Vyas et al., ICLR 2025, arXiv 2409.11321): Adam run in the eigenbasis of Shampoo's
    factors, following the reference code (nikhilvyas/SOAP, soap.py). For a matrix G:

        L <- s*L + (1-s)*G G^T,  R <- s*R + (1-s)*G^T G      (s = shampoo_beta; -1 means beta2)
        G' = Q_L^T G Q_R;        m <- b1*m + (1-b1)*G;  v <- b2*v + (1-b2)*G'^2
        theta <- theta - lr*(sqrt(1-b2^t)/(1-b1^t)) * Q_L ((Q_L^T m Q_R) / (sqrt(v) + eps)) Q_R^T
        theta <- theta*(1 - lr*wd)                     (decoupled decay, after the step)
        then L and R take the current G

    * **First gradient of a parameter:** it only fills L and R and sets Q to their eigenvectors
      (``eigh``, in descending order); the parameter does **not** move and t stays 0. The reference
      code does this so that the current gradient is never projected on a basis built from itself.
    * Every ``precondition_frequency`` steps (t % f == 0, after the update) the bases are refreshed
      by one power iteration and a QR: the eigenvalues are estimated as diag(Q^T L Q) and sorted
      descending, Q <- qr(L Q_sorted), and v is permuted to match.
    * m is kept in the original basis and rotated at use: the same as keeping it in the rotated
      basis and rotating it whenever Q changes.
    * eps is added to sqrt(v) **before** bias correction (Kingma's efficient form, not torch's).
    * One factor per dimension (a 3-D kernel has three); a dimension longer than
      ``max_precond_dim`` is left unrotated, and a 1-D parameter too unless ``precondition_1d``.
      Fully unrotated, SOAP is that form of Adam with decoupled decay after the step and the
      first step skipped. ``normalize_grads`` divides the update by its RMS.

    Defaults are the reference code's. Memory: 2N + 2*sum(d_i^2) over the rotated dimensions
    (for an m x n matrix 2mn + 2(m^2 + n^2))."""

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8,
                 weight_decay=0.01, precondition_frequency=10, max_precond_dim=10000,
                 precondition_1d=False, normalize_grads=False, correct_bias=True, *,
                 nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta, eps=eps,
                         weight_decay=weight_decay, precondition_frequency=precondition_frequency,
                         max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
                         normalize_grads=normalize_grads, correct_bias=correct_bias,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        if len(group["betas"]) != 2:
            raise ValueError(f"SOAP betas must be a pair (beta1, beta2), got {group['betas']!r}")
        for i, b in enumerate(group["betas"]):
            check_fraction(b, f"SOAP betas[{i}]")
        if group["shampoo_beta"] != -1:
            check_fraction(group["shampoo_beta"], "SOAP shampoo_beta (or -1 for beta2)")
        if not group["eps"] >= 0:
            raise ValueError(f"SOAP eps must be >= 0, got {group['eps']!r}")
        check_count(group["precondition_frequency"], "SOAP precondition_frequency")
        check_count(group["max_precond_dim"], "SOAP max_precond_dim")

    @staticmethod
    def _rotated_dims(p, group):
        """Per axis: its length if that axis gets a factor, else 0."""
        if p.ndim == 1 and not group["precondition_1d"]:
            return (0,)
        return tuple(d if d <= group["max_precond_dim"] else 0 for d in p.shape)

    def _accumulate(self, g, state, group, dims):
        s = group["shampoo_beta"] if group["shampoo_beta"] != -1 else group["betas"][1]
        for axis, d in enumerate(dims):
            if d:
                rest = [a for a in range(g.ndim) if a != axis]
                gg = state[f"GG{axis}"]
                gg *= s
                gg += (1.0 - s) * np.tensordot(g, g, axes=(rest, rest))

    def decays_decoupled(self, group) -> bool:
        return True

    def _update(self, name, p, g, state, group):
        dt, dims = _stat_dtype(p), self._rotated_dims(p, group)
        g = g.astype(dt)
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros(p.shape, dt)
            state["exp_avg_sq"] = np.zeros(p.shape, dt)
            for axis, d in enumerate(dims):
                if d:
                    state[f"GG{axis}"] = np.zeros((d, d), dt)
            self._accumulate(g, state, group, dims)
            for axis, d in enumerate(dims):
                if d:
                    gg = state[f"GG{axis}"]
                    q = np.linalg.eigh(gg + 1e-30 * np.eye(d, dtype=dt))[1]
                    state[f"Q{axis}"] = np.ascontiguousarray(q[:, ::-1])
            return
        qs = [state[f"Q{axis}"] if d else None for axis, d in enumerate(dims)]
        b1, b2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1.0 - b1) * g
        gp = _rotate(g, qs)
        v *= b2
        v += (1.0 - b2) * (gp * gp)
        step_size = group["lr"]
        if group["correct_bias"]:
            step_size *= math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        u = _rotate(_rotate(m, qs) / (np.sqrt(v) + group["eps"]), qs, back=True)
        if group["normalize_grads"]:
            u = u / (1e-30 + np.sqrt(np.mean(u * u)))
        p -= (step_size * u).astype(p.dtype)
        if group["weight_decay"] > 0:
            p -= (group["lr"] * group["weight_decay"]) * p
        self._accumulate(g, state, group, dims)
        if t % group["precondition_frequency"] == 0:
            for axis, d in enumerate(dims):
                if d:
                    gg, q = state[f"GG{axis}"], state[f"Q{axis}"]
                    order = np.argsort(-np.einsum("ij,ij->j", q, gg @ q), kind="stable")
                    state["exp_avg_sq"] = np.take(state["exp_avg_sq"], order, axis=axis)
                    state[f"Q{axis}"] = np.linalg.qr(gg @ q[:, order])[0]

    def _state_nbytes(self, p, group):
        n = 2 * p.size + 2 * sum(d * d for d in self._rotated_dims(p, group))
        return n * _stat_dtype(p).itemsize


@register("anderson")
class Anderson(Optimizer):
    """Anderson acceleration, type II (Walker & Ni, SIAM J. Numer. Anal. 49(4), 2011), of the
    gradient-descent map G(x) = x - lr*grad f(x). With the residual r_k = G(x_k) - x_k and the
    differences of the last m_k = min(history_size, k) pairs, dX = [x_{i+1} - x_i] and
    dR = [r_{i+1} - r_i]:

        gamma = argmin ||r_k - dR gamma||^2 + lam*||dR||_F^2 * ||gamma||^2   (lam = regularization)
        x_{k+1} = x_k + beta*r_k - (dX + beta*dR) gamma

    With beta = 1 this is x_{k+1} = G(x_k) - dG gamma, and with no history it is gradient descent
    with step lr*beta. On a quadratic f, G is affine and type II with unbounded memory matches
    GMRES (Walker & Ni, Thm 2.2): it converges in at most d + 1 steps in exact arithmetic.
    ``weight_decay`` is L2 in the gradient.

    * **One problem per parameter group.** x is the concatenation of the group's parameters that
      have a gradient (gamma is shared by them); each group mixes its own history. When the set
      of parameters with a gradient changes, that group's history restarts.
    * **Safeguard** (``safeguard=True``; a common practical rule, not from the paper): the
      optimizer sees gradients only, so it watches the residual. If the gradient norm at an
      accelerated point exceeds the one at the point it came from (a plain step with
      lr <= 2/L never increases it on a convex f), the point is rejected: the parameters go to
      the plain step G(x_k) instead, the history is cleared and that gradient is not used.
      ``restarts`` counts rejections.

    Memory: (2*history_size + 2) N (dX, dR, and the last x and r)."""

    def __init__(self, params, lr=1e-2, history_size=5, beta=1.0, regularization=1e-10,
                 safeguard=True, weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, history_size=history_size, beta=beta,
                         regularization=regularization, safeguard=safeguard,
                         weight_decay=weight_decay, nonfinite=nonfinite)
        self.global_state["groups"] = [self._fresh() for _ in self.param_groups]

    @staticmethod
    def _fresh():
        return {"names": [], "count": 0, "head": 0, "has_previous": False,
                "accelerated": False, "grad_norm": 0.0, "restarts": 0}

    @property
    def restarts(self) -> int:
        return sum(gs["restarts"] for gs in self.global_state["groups"])

    def _check_group(self, group):
        super()._check_group(group)
        check_count(group["history_size"], "Anderson history_size")
        if not (math.isfinite(group["beta"]) and 0.0 < group["beta"] <= 1.0):
            raise ValueError(f"Anderson beta (mixing) must be in (0, 1], got {group['beta']!r}")
        if not group["regularization"] >= 0:
            raise ValueError(f"Anderson regularization must be >= 0, got {group['regularization']!r}")

    def reads_parameters(self, group) -> bool:
        return True                                    # it mixes its history of iterates

    def _begin_step(self, grads):
        groups = self.global_state["groups"]
        groups += [self._fresh() for _ in range(len(self.param_groups) - len(groups))]
        for group, gs in zip(self.param_groups, groups):
            active = [n for n in group["params"] if grads[n] is not None]
            if active:
                self._group_step(group, gs, {n: grads[n] for n in active})
        return False

    def _group_step(self, group, gs, grads):
        params, lr, beta, size = group["params"], group["lr"], group["beta"], group["history_size"]
        for n, g in grads.items():
            st = self.state.setdefault(n, {})
            if "dx" not in st:
                p = params[n]
                st.update(x=np.zeros_like(p), r=np.zeros_like(p),
                          dx=np.zeros((size, *p.shape), p.dtype), dr=np.zeros((size, *p.shape), p.dtype))
        if gs["names"] != list(grads):
            gs.update(names=list(grads), count=0, head=0, has_previous=False, accelerated=False)
        wd = group["weight_decay"]
        r = {n: -lr * (g + wd * params[n] if wd else g) for n, g in grads.items()}
        grad_norm = math.sqrt(sum(float(np.sum(np.square(g + wd * params[n] if wd else g,
                                                         dtype=np.float64)))
                                  for n, g in grads.items()))
        if group["safeguard"] and gs["accelerated"] and grad_norm > gs["grad_norm"]:
            for n in grads:
                st = self.state[n]
                params[n][...] = st["x"] + beta * st["r"]
            gs.update(count=0, head=0, has_previous=False, accelerated=False,
                      restarts=gs["restarts"] + 1)
            return
        if gs["has_previous"]:
            slot = gs["head"]
            for n in grads:
                st = self.state[n]
                st["dx"][slot] = params[n] - st["x"]
                st["dr"][slot] = r[n] - st["r"]
            gs.update(head=(slot + 1) % size, count=min(gs["count"] + 1, size))
        k = gs["count"]
        gamma = None
        if k:
            gram, rhs = np.zeros((k, k)), np.zeros(k)
            for n in grads:
                dr = self.state[n]["dr"][:k].reshape(k, -1).astype(np.float64)
                gram += dr @ dr.T
                rhs += dr @ r[n].reshape(-1).astype(np.float64)
            gram += group["regularization"] * np.trace(gram) * np.eye(k)
            gamma = np.linalg.lstsq(gram, rhs, rcond=None)[0]
        for n in grads:
            st, p = self.state[n], params[n]
            st["x"][...] = p
            st["r"][...] = r[n]
            step = beta * r[n]
            if gamma is not None:
                mix = np.tensordot(gamma, st["dx"][:k] + beta * st["dr"][:k], axes=1)
                step = step - mix.astype(p.dtype)
            p += step.astype(p.dtype)
        gs.update(has_previous=True, accelerated=gamma is not None, grad_norm=grad_norm)

    def _state_nbytes(self, p, group):
        return (2 * group["history_size"] + 2) * p.nbytes
