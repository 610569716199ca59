"""Gradient descent, SGD with momentum (PyTorch and heavy-ball forms), Nesterov.

Two ways to write momentum (Lecture 2):

* **PyTorch form** (``SGD``, ``momentum=mu``): ``b <- mu*b + (1-dampening)*g``,
  ``theta <- theta - lr*b``. The buffer is in *gradient* units; ``lr`` multiplies it at use.
  ``nesterov=True`` steps along ``g + mu*b`` instead of ``b``.
* **Heavy-ball / Polyak form** (``HeavyBall``): ``theta_{k+1} = theta_k - lr*g_k +
  beta*(theta_k - theta_{k-1})``, i.e. the velocity ``v <- beta*v - lr*g``, ``theta <- theta + v``
  is in *parameter* units (the Sutskever et al. 2013 form).

With a constant lr and dampening 0 the two produce the same iterates (v = -lr*b). They differ
when the lr changes: the PyTorch form rescales all past momentum by the new lr at once; the
heavy-ball form keeps past velocity and applies the new lr only to new gradients.

``AGD`` is Nesterov's accelerated gradient in its textbook form (y-sequence) with the convex
schedule (k-1)/(k+2) or a constant momentum (strongly convex case); see its docstring for how
its parameter arrays hold the extrapolated point.

``weight_decay`` is L2 coupled into the gradient in every class here (g <- g + wd*theta, as
torch.optim.SGD does).
"""
from __future__ import annotations

from numbers import Real

import numpy as np

from .base import Optimizer, check_fraction, fused_kernels, register

__all__ = ["GD", "SGD", "HeavyBall", "AGD", "sgd_update"]


@register("gd")
class GD(Optimizer):
    """Gradient descent x <- x - lr*grad (Cauchy 1847; Lecture 1).

    ``weight_decay`` adds the L2 term lr*wd*x (coupled, as in torch SGD). Memory: 0.
    With full gradients it is GD; with minibatch gradients it is plain SGD."""

    def __init__(self, params, lr=1e-2, weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, weight_decay=weight_decay, nonfinite=nonfinite)

    def _update(self, name, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        p -= group["lr"] * g

    def _state_nbytes(self, p, group):
        return 0


def sgd_update(p, g, momentum_buffer=None, *, first=False, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, maximize=False):
    """One SGD step on one parameter in the PyTorch form, in place on ``p`` and, with momentum,
    on ``momentum_buffer`` (None without), which the first step (``first``) sets to the gradient.

    The readable NumPy update that ``SGD`` runs on the numpy backend; on the numba backend it
    runs the fused kernel ``minigrad.kernels.sgd_step`` (same signature), which performs these
    operations in this order in ``p``'s dtype and so equals it bit for bit."""
    # Python floats: NumPy then computes in p's dtype (see optim.adaptive.adam_update)
    lr, momentum, dampening, weight_decay = map(float, (lr, momentum, dampening, weight_decay))
    if maximize:
        g = -g
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        b = momentum_buffer
        if first:
            b[...] = g
        else:
            b *= momentum
            b += (1.0 - dampening) * g
        g = g + momentum * b if nesterov else b
    p -= lr * g


@register("sgd")
class SGD(Optimizer):
    """SGD with optional momentum in the PyTorch form (torch.optim.SGD semantics, [doc]):

        g <- -g                                (maximize only)
        g <- g + wd*theta                      (L2 weight decay, coupled)
        b <- g                  on the first step, else  b <- mu*b + (1 - dampening)*g
        d <- g + mu*b  if nesterov  else  b
        theta <- theta - lr*d

    Each parameter's update is :func:`sgd_update`; on minigrad's numba backend a float32/float64
    parameter with a contiguous buffer takes the fused kernel ``minigrad.kernels.sgd_step``
    instead, bit-identical to it. Memory: N (the buffer) if momentum > 0, else 0. The default lr
    is 1e-2 where torch 2.13's is 1e-3 (kept: the optimizer leaderboard sweeps around it)."""

    def __init__(self, params, lr=1e-2, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_fraction(group["momentum"], "momentum")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0, got momentum="
                             f"{group['momentum']!r}, dampening={group['dampening']!r}")

    def _update(self, name, p, g, state, group):
        buf, first = None, False
        if group["momentum"]:
            first = "momentum_buffer" not in state
            if first:
                state["momentum_buffer"] = np.zeros_like(p)
            buf = state["momentum_buffer"]
        kernels = fused_kernels(p, g, buf)
        update = kernels.sgd_step if kernels is not None else sgd_update
        update(p, g, buf, first=first, lr=group["lr"], momentum=group["momentum"],
               dampening=group["dampening"], weight_decay=group["weight_decay"],
               nesterov=group["nesterov"], maximize=group["maximize"])

    def _state_nbytes(self, p, group):
        return p.nbytes if group["momentum"] else 0


@register("momentum")
def _momentum(params, lr=1e-2, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, *,
              maximize=False, nonfinite="raise"):
    """SGD with PyTorch-form momentum 0.9 by default."""
    return SGD(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
               nesterov=nesterov, maximize=maximize, nonfinite=nonfinite)


@register("nesterov")
def _nesterov(params, lr=1e-2, momentum=0.9, weight_decay=0.0, *, maximize=False, nonfinite="raise"):
    """SGD with PyTorch-form Nesterov momentum (nesterov=True), momentum 0.9 by default."""
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True,
               maximize=maximize, nonfinite=nonfinite)


@register("heavyball")
class HeavyBall(Optimizer):
    """Polyak's heavy ball (1964) in parameter units:

        v <- beta*v - lr*(g + wd*theta),   theta <- theta + v

    i.e. theta_{k+1} = theta_k - lr*g_k + beta*(theta_k - theta_{k-1}). Quadratic-optimal
    constants: beta = ((sqrt(k)-1)/(sqrt(k)+1))^2, lr = 4/(sqrt(L)+sqrt(mu))^2 [unverified].
    Memory: N."""

    def __init__(self, params, lr=1e-2, beta=0.9, weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, beta=beta, weight_decay=weight_decay, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_fraction(group["beta"], "beta")

    def _update(self, name, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        v = state.setdefault("velocity", np.zeros_like(p))
        v *= group["beta"]
        v -= group["lr"] * g
        p += v

    def _state_nbytes(self, p, group):
        return p.nbytes


def nesterov_momentum(k, schedule):
    """Momentum coefficient beta_k of the y-sequence for iteration k >= 1.

    ``"convex"``: (k-1)/(k+2) (Nesterov 1983, rate 2L||x0-x*||^2/(k+1)^2);
    a float: constant momentum, e.g. (sqrt(kappa)-1)/(sqrt(kappa)+1) for mu-strongly convex."""
    if schedule == "convex":
        return (k - 1) / (k + 2)
    return float(schedule)


@register("agd", "nesterov_agd")
class AGD(Optimizer):
    """Nesterov's accelerated gradient, y-sequence form (Nesterov 1983; Lecture 2):

        x_{k+1} = y_k - lr*grad f(y_k)
        y_{k+1} = x_{k+1} + beta_{k+1} * (x_{k+1} - x_k)

    The gradient must be taken at y, so **the parameter arrays hold y_k** and the iterate x_k
    lives in ``state[name]["x"]`` (``opt.iterates()`` returns them all). ``momentum`` is
    ``"convex"`` ((k-1)/(k+2)) or a float (strongly convex: (sqrt(kappa)-1)/(sqrt(kappa)+1)
    with lr = 1/L gives rate (1-1/sqrt(kappa))^k [unverified]). ``weight_decay`` adds
    wd*y to the gradient (L2 on f, taken at y like the gradient). Memory: N."""

    _iterate_key = "x"

    def __init__(self, params, lr=1e-2, momentum="convex", weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        m = group["momentum"]
        if not (isinstance(m, str) and m == "convex" or isinstance(m, Real) and 0.0 <= m < 1.0):
            raise ValueError(f"momentum must be 'convex' or a number in [0, 1), got {m!r}")

    def _update(self, name, p, g, state, group):
        k = state.get("step", 0) + 1           # this step produces x_{k+1}
        state["step"] = k
        x_old = state.get("x")
        if x_old is None:
            x_old = p.copy()                   # x_1 = y_1
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        x_new = p - group["lr"] * g
        beta = nesterov_momentum(k + 1, group["momentum"])
        p[...] = x_new + beta * (x_new - x_old)
        state["x"] = x_new

    def _state_nbytes(self, p, group):
        return p.nbytes                        # x (the step counter is a Python int)
