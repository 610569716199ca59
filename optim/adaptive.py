"""Adaptive methods: AdaGrad, RMSProp, Adam, AdamW (with the AMSGrad flag). Lecture 2.

Where epsilon and weight decay sit (they decide whether a step-for-step comparison with
torch.optim passes):

* eps is added **outside** the square root, to the **bias-corrected** second moment:
  ``theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m/(1-b1^t)``,
  ``v_hat = v/(1-b2^t)`` (torch form; computed as torch does: ``denom = sqrt(v)/sqrt(1-b2^t) + eps``,
  ``step = lr/(1-b1^t)``). The "efficient" Kingma form puts eps on the uncorrected sqrt(v) and
  differs only through eps.
* ``Adam(weight_decay=wd)`` is **L2**: ``g <- g + wd*theta`` before the moments (torch.optim.Adam).
* ``AdamW(weight_decay=wd)`` is **decoupled** (Loshchilov & Hutter 2019, torch form): first
  ``theta <- theta*(1 - lr*wd)``, then the Adam step. Note torch multiplies wd by the full lr,
  the paper by the schedule multiplier only (lambda_torch = lambda_paper/alpha).
* AdaGrad and RMSProp have **no bias correction** (first RMSProp step is lr/sqrt(1-alpha)).
"""
from __future__ import annotations

import math

import numpy as np

from .base import Optimizer, check_betas, check_eps, check_fraction, fused_kernels, register

__all__ = ["AdaGrad", "RMSProp", "Adam", "AdamW", "adam_update"]


@register("adagrad")
class AdaGrad(Optimizer):
    """AdaGrad (Duchi, Hazan, Singer, JMLR 2011), torch.optim.Adagrad semantics:

        g <- g + wd*theta;  G <- G + g^2;  lr_t = lr / (1 + (t-1)*lr_decay)
        theta <- theta - lr_t * g / (sqrt(G) + eps)

    Memory: N."""

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_eps(group["eps"], "AdaGrad")
        for key in ("lr_decay", "initial_accumulator_value"):   # a negative G: sqrt of < 0
            check_eps(group[key], "AdaGrad", key)

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        if "sum" not in state:
            state["step"] = 0
            state["sum"] = np.full_like(p, group["initial_accumulator_value"])
        state["step"] += 1
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        clr = group["lr"] / (1.0 + (state["step"] - 1) * group["lr_decay"])
        state["sum"] += g * g
        p -= clr * (g / (np.sqrt(state["sum"]) + group["eps"]))

    def _state_nbytes(self, p, group):
        return p.nbytes


@register("rmsprop")
class RMSProp(Optimizer):
    """RMSProp (Hinton, Coursera lecture 6e), torch.optim.RMSprop semantics:

        g <- g + wd*theta;  v <- alpha*v + (1-alpha)*g^2
        centered: a <- alpha*a + (1-alpha)*g;  denom = sqrt(v - a^2) + eps, else sqrt(v) + eps
        momentum > 0: buf <- momentum*buf + g/denom; theta <- theta - lr*buf
        else:         theta <- theta - lr*g/denom

    Memory: N (+N centered, +N momentum)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_fraction(group["alpha"], "alpha")
        check_eps(group["eps"], "RMSProp")
        check_eps(group["momentum"], "RMSProp", "momentum")     # < 0 ran silently without momentum

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        a = group["alpha"]
        if "square_avg" not in state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(p)
        state["step"] += 1
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        v = state["square_avg"]
        v *= a
        v += (1.0 - a) * (g * g)
        if group["centered"]:
            ga = state["grad_avg"]
            ga *= a
            ga += (1.0 - a) * g
            denom = np.sqrt(v - ga * ga) + group["eps"]
        else:
            denom = np.sqrt(v) + group["eps"]
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += g / denom
            p -= group["lr"] * buf
        else:
            p -= group["lr"] * (g / denom)

    def _state_nbytes(self, p, group):
        return p.nbytes * (1 + bool(group["centered"]) + (group["momentum"] > 0))


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr, beta1, beta2, eps,
                weight_decay=0.0, decoupled=False, maximize=False):
    """One Adam step on one parameter, in place on ``p``, the moments ``exp_avg`` (m) and
    ``exp_avg_sq`` (v) and, with AMSGrad, ``max_exp_avg_sq`` (None without); ``step`` counts
    from 1, this step included. ``decoupled`` chooses AdamW's decay over Adam's L2 term.

    The readable NumPy update that ``Adam`` runs on the numpy backend; on the numba backend it
    runs the fused kernel ``minigrad.kernels.adam_step`` (same signature), which performs these
    operations in this order in ``p``'s dtype and so equals it bit for bit."""
    # Python floats: NumPy then computes in p's dtype (a NumPy float64 scalar, as a scheduler or
    # a loaded checkpoint may leave in a group, would promote float32 arithmetic to float64)
    lr, beta1, beta2, eps, weight_decay = map(float, (lr, beta1, beta2, eps, weight_decay))
    if maximize:
        g = -g
    if weight_decay:
        if decoupled:
            p *= 1.0 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m, v = exp_avg, exp_avg_sq
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, v, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    step_size = lr / (1.0 - beta1 ** step)
    denom = np.sqrt(v) / math.sqrt(1.0 - beta2 ** step) + eps
    p -= step_size * (m / denom)


@register("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba, ICLR 2015, arXiv 1412.6980) in the torch form; ``weight_decay`` is L2
    (coupled).

        g <- -g                                             (maximize only)
        g <- g + wd*theta                                   (Adam only)
        theta <- theta*(1 - lr*wd)                          (AdamW only, before the step)
        m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;  vmax <- max(vmax, v) if amsgrad
        theta <- theta - (lr/(1-b1^t)) * m / (sqrt(v or vmax)/sqrt(1-b2^t) + eps)

    First step: m_hat = g, v_hat = g^2, so every coordinate moves by lr*g/(|g|+eps) ~ lr*sign(g).
    ``maximize=True`` ascends the objective (torch's flag). Each parameter's update is
    :func:`adam_update`; on minigrad's numba backend a float32/float64 parameter with contiguous
    state takes the fused kernel ``minigrad.kernels.adam_step`` instead, bit-identical to it.
    Memory: 2N (3N with amsgrad)."""

    decoupled = False

    def decays_decoupled(self, group) -> bool:
        return self.decoupled

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_betas(group["betas"], type(self).__name__)
        check_eps(group["eps"], type(self).__name__)

    def _update(self, name, p, g, state, group):
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        vmax = state["max_exp_avg_sq"] if group["amsgrad"] else None
        b1, b2 = group["betas"]
        kernels = fused_kernels(p, g, m, v, vmax)
        update = kernels.adam_step if kernels is not None else adam_update
        update(p, g, m, v, vmax, step=state["step"], lr=group["lr"], beta1=b1, beta2=b2,
               eps=group["eps"], weight_decay=group["weight_decay"], decoupled=self.decoupled,
               maximize=group["maximize"])

    def _state_nbytes(self, p, group):
        return p.nbytes * (3 if group["amsgrad"] else 2)


@register("adamw")
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, ICLR 2019, arXiv 1711.05101), torch.optim.AdamW form:
    decoupled decay ``theta <- theta*(1 - lr*wd)`` first, then the Adam step (see ``Adam``).
    Default wd 1e-2."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, nonfinite=nonfinite)


@register("amsgrad")
def _amsgrad(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, maximize=False,
             nonfinite="raise"):
    """Adam with amsgrad=True (Reddi, Kale, Kumar, ICLR 2018, arXiv 1904.09237)."""
    return Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=True,
                maximize=maximize, nonfinite=nonfinite)
