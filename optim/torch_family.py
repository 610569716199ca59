"""The rest of torch.optim: NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop and L-BFGS.

Each one follows ``torch.optim.X`` (its single-tensor, ``foreach=False`` code path) step for
step, with the same argument names and defaults; the tests compare 25 float64 steps with torch's
own to a relative 1e-10. Where torch has no ``weight_decay`` (Rprop, L-BFGS) it is added here,
default 0 giving torch exactly: decoupled for Rprop (``theta <- theta*(1 - lr*wd)``, since an L2
term in the gradient acts only when it flips a sign), and L2 on the objective for L-BFGS.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Optimizer, check_count, check_fraction, register

__all__ = ["NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop"]


def _check_betas(betas):
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")


def _check_eps(eps):
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")


def _l2(p, g, group):
    """``g + wd*theta`` (coupled weight decay), or ``g`` itself without decay."""
    return g + group["weight_decay"] * p if group["weight_decay"] else g


@register("nadam")
class NAdam(Optimizer):
    """NAdam, Adam with Nesterov momentum (Dozat, ICLR 2016 workshop, "Incorporating Nesterov
    Momentum into Adam"), torch.optim.NAdam semantics, step t = 1, 2, ...:

        g <- g + wd*theta                  (or decoupled: theta <- theta*(1 - lr*wd))
        mu_t = b1 * (1 - 0.5 * 0.96^(t*momentum_decay))      (the momentum schedule)
        prod_t = mu_1 * ... * mu_t
        m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;  denom = sqrt(v/(1-b2^t)) + eps
        theta <- theta - lr*(1-mu_t)/(1-prod_t) * g/denom
                       - lr*mu_{t+1}/(1-prod_t*mu_{t+1}) * m/denom

    ``decoupled_weight_decay=True`` is NAdamW (the AdamW rule for the decay). The product of the
    mu's is kept per parameter (``mu_product``), as torch does. Memory: 2N."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         momentum_decay=momentum_decay,
                         decoupled_weight_decay=decoupled_weight_decay, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        _check_betas(group["betas"])
        _check_eps(group["eps"])
        if not group["momentum_decay"] >= 0:
            raise ValueError(f"momentum_decay must be >= 0, got {group['momentum_decay']!r}")

    def _update(self, name, p, g, state, group):
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["mu_product"] = 1.0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        if wd:
            if group["decoupled_weight_decay"]:
                p *= 1.0 - lr * wd
            else:
                g = g + wd * p
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * group["momentum_decay"]))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * group["momentum_decay"]))
        state["mu_product"] *= mu
        mu_product = state["mu_product"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - b1) * (g - m)        # torch's lerp
        v *= b2
        v += (1.0 - b2) * (g * g)
        denom = np.sqrt(v / (1.0 - b2 ** t)) + group["eps"]
        p -= (lr * (1.0 - mu) / (1.0 - mu_product)) * (g / denom)
        p -= (lr * mu_next / (1.0 - mu_product * mu_next)) * (m / denom)

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("radam")
class RAdam(Optimizer):
    """RAdam, rectified Adam (Liu et al., ICLR 2020, arXiv 1908.03265), torch.optim.RAdam
    semantics, step t = 1, 2, ...:

        g <- g + wd*theta                  (or decoupled: theta <- theta*(1 - lr*wd))
        m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;  m_hat = m/(1-b1^t)
        rho_inf = 2/(1-b2) - 1;  rho_t = rho_inf - 2 t b2^t/(1-b2^t)
        rho_t > 5:  r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
                    theta <- theta - lr * m_hat * r_t * sqrt(1-b2^t)/(sqrt(v) + eps)
        else:       theta <- theta - lr * m_hat            (SGD with momentum, while the
                                                            variance estimate is unreliable)

    With the default b2 = 0.999 the first 5 steps are the un-adapted momentum steps. Note eps sits
    on the uncorrected sqrt(v) here, unlike torch's Adam. Memory: 2N."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        _check_betas(group["betas"])
        _check_eps(group["eps"])

    def _update(self, name, p, g, state, group):
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        if wd:
            if group["decoupled_weight_decay"]:
                p *= 1.0 - lr * wd
            else:
                g = g + wd * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - b1) * (g - m)
        v *= b2
        v += (1.0 - b2) * (g * g)
        m_hat = m / (1.0 - b1 ** t)
        bias_correction2 = 1.0 - b2 ** t
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2 ** t / bias_correction2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                             / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            adaptive = math.sqrt(bias_correction2) / (np.sqrt(v) + group["eps"])
            p -= m_hat * lr * adaptive * rect
        else:
            p -= m_hat * lr

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("adamax")
class Adamax(Optimizer):
    """Adamax, Adam in the infinity norm (Kingma & Ba, ICLR 2015, arXiv 1412.6980, section 7.1),
    torch.optim.Adamax semantics:

        g <- g + wd*theta
        m <- b1*m + (1-b1)*g;  u <- max(b2*u, |g| + eps)
        theta <- theta - (lr/(1-b1^t)) * m/u

    eps sits inside the max, so u > 0 from the first step. Memory: 2N."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        _check_betas(group["betas"])
        _check_eps(group["eps"])

    def _update(self, name, p, g, state, group):
        b1, b2 = group["betas"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_inf"] = np.zeros_like(p)
        state["step"] += 1
        g = _l2(p, g, group)
        m, u = state["exp_avg"], state["exp_inf"]
        m += (1.0 - b1) * (g - m)
        u *= b2
        np.maximum(u, np.abs(g) + group["eps"], out=u)
        p -= (group["lr"] / (1.0 - b1 ** state["step"])) * (m / u)

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("adadelta")
class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012, arXiv 1212.5701), torch.optim.Adadelta semantics:

        g <- g + wd*theta
        v <- rho*v + (1-rho)*g^2
        delta = sqrt(u + eps)/sqrt(v + eps) * g        (u: the running average of delta^2)
        u <- rho*u + (1-rho)*delta^2
        theta <- theta - lr*delta

    The paper has no learning rate (lr = 1, torch's default); the first step moves each
    coordinate by about sqrt(eps/(1-rho)) = 3.2e-3 in the direction of -g (eps = 1e-6). Memory: 2N."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        if not 0.0 <= group["rho"] <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {group['rho']!r}")
        _check_eps(group["eps"])

    def _update(self, name, p, g, state, group):
        rho, eps = group["rho"], group["eps"]
        if "square_avg" not in state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p)
            state["acc_delta"] = np.zeros_like(p)
        state["step"] += 1
        g = _l2(p, g, group)
        v, u = state["square_avg"], state["acc_delta"]
        v *= rho
        v += (1.0 - rho) * (g * g)
        delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u *= rho
        u += (1.0 - rho) * (delta * delta)
        p -= group["lr"] * delta

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("asgd")
class ASGD(Optimizer):
    """Averaged SGD (Polyak & Juditsky, SIAM J. Control Optim. 1992; the step-size schedule of
    Bottou, "Stochastic Gradient Descent Tricks", 2012), torch.optim.ASGD semantics, step t = 1, 2, ...
    with eta_1 = lr, mu_1 = 1:

        g <- g + wd*theta
        theta <- theta*(1 - lambd*eta_t) - eta_t*g
        ax <- ax + mu_t*(theta - ax)                   (ax <- theta while mu_t = 1)
        eta_{t+1} = lr / (1 + lambd*lr*t)^alpha;  mu_{t+1} = 1/max(1, t - t0)

    The parameters follow the SGD iterates; the average ``ax`` (``state[name]["ax"]``) is the
    estimate to evaluate: it starts averaging after t0 steps (default 1e6, i.e. a plain copy
    of theta in short runs). eta is computed from the group's lr at the previous step, as in
    torch. Memory: N."""

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, *,
                 nonfinite="raise"):
        super().__init__(params, lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                         weight_decay=weight_decay, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        for key in ("lambd", "alpha", "t0"):
            if not group[key] >= 0:
                raise ValueError(f"{key} must be >= 0, got {group[key]!r}")

    def _update(self, name, p, g, state, group):
        lr, lambd = group["lr"], group["lambd"]
        if "ax" not in state:
            state["step"] = 0
            state["eta"] = float(lr)
            state["mu"] = 1.0
            state["ax"] = np.zeros_like(p)
        state["step"] += 1
        t, eta, mu = state["step"], state["eta"], state["mu"]
        g = _l2(p, g, group)
        p *= 1.0 - lambd * eta
        p -= eta * g
        ax = state["ax"]
        if mu != 1:
            ax += (p - ax) * mu
        else:
            ax[...] = p
        state["eta"] = lr / (1.0 + lambd * lr * t) ** group["alpha"]
        state["mu"] = 1.0 / max(1.0, t - group["t0"])

    def _state_nbytes(self, p, group):
        return p.nbytes


@register("rprop")
class Rprop(Optimizer):
    """Rprop, resilient backpropagation (Riedmiller & Braun, ICNN 1993), torch.optim.Rprop
    semantics (the variant without weight backtracking), per coordinate:

        theta <- theta*(1 - lr*wd)          (decoupled decay; not in torch, default wd 0)
        s = sign(g * g_prev)
        step <- clip(step * (etaplus if s > 0, etaminus if s < 0, 1 if s = 0),
                     step_size_min, step_size_max)
        g <- 0 where s < 0                  (a sign change: no move, and no sign test next time)
        theta <- theta - sign(g)*step;  g_prev <- g

    Each step size starts at lr; the update ignores the gradient's magnitude, so Rprop suits
    full-batch problems only. Memory: 2N."""

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0),
                 weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes),
                         weight_decay=weight_decay, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        etaminus, etaplus = group["etas"]
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"etas must be (etaminus, etaplus) with 0 < etaminus < 1 < etaplus, "
                             f"got {group['etas']!r}")
        low, high = group["step_sizes"]
        if not 0.0 <= low <= high:
            raise ValueError(f"step_sizes must be (min, max) with 0 <= min <= max, "
                             f"got {group['step_sizes']!r}")

    def _update(self, name, p, g, state, group):
        etaminus, etaplus = group["etas"]
        low, high = group["step_sizes"]
        if "prev" not in state:
            state["step"] = 0
            state["prev"] = np.zeros_like(p)
            state["step_size"] = np.full_like(p, group["lr"])
        state["step"] += 1
        if group["weight_decay"]:
            p *= 1.0 - group["lr"] * group["weight_decay"]
        s = np.sign(g * state["prev"])
        factor = np.where(s > 0, etaplus, np.where(s < 0, etaminus, 1.0)).astype(p.dtype)
        step_size = state["step_size"]
        step_size *= factor
        np.clip(step_size, low, high, out=step_size)
        g = np.where(s < 0, 0, g).astype(p.dtype, copy=False)
        p -= np.sign(g) * step_size
        state["prev"][...] = g

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes
