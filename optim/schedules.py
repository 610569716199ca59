"""Learning-rate schedules usable with any optimizer, and gradient clipping by global norm.

A schedule is a multiplier ``f(step) -> float``; ``LRScheduler(opt, f)`` sets every group's
``lr = base_lr * f(step)`` (like torch's LambdaLR: construction applies f(0), each
``sched.step()`` advances by one). Base lrs are the groups' lrs at construction, stored in
``group["initial_lr"]``. ``state_dict`` holds the step count and base lrs (not f).

    sched = optim.schedules.create("cosine", opt, total_steps=1000, warmup_steps=100)
    for it in range(1000):
        opt.step(grads); sched.step()

Multipliers (``warmup`` = linear ramp from 1/warmup_steps to 1 over the first warmup steps):

* ``constant()``                                     1
* ``step_decay(step_size, gamma)``                   gamma ** (t // step_size)
* ``cosine(total_steps, warmup_steps, min_ratio)``   warmup, then min + (1-min)(1+cos(pi*s))/2
* ``wsd(total_steps, warmup_steps, decay_frac, min_ratio)``  warmup-stable-decay (Hu et al.,
  MiniCPM 2024): warmup, constant, then linear decay to min_ratio over the last decay_frac.
* ``linear(total_steps, warmup_steps, end_ratio)``   warmup, then linear to end_ratio

Past total_steps cosine, wsd and linear hold their last value (torch's CosineAnnealingLR rises
again); up to it they equal torch's StepLR, CosineAnnealingLR, LinearLR and, with warmup,
SequentialLR(LinearLR, ...) (tests/test_optim_schedules.py).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .base import _is_parameter

__all__ = ["constant", "step_decay", "cosine", "wsd", "linear", "LRScheduler", "create",
           "available", "get", "clip_grad_norm_", "global_grad_norm"]


def _warm(t, warmup_steps):
    return (t + 1) / warmup_steps if t < warmup_steps else None


def constant():
    return lambda t: 1.0


def step_decay(step_size, gamma=0.1):
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    return lambda t: gamma ** (t // step_size)


def _warmup_then(total_steps, warmup_steps, shape):
    """Warmup, then ``shape(s)`` with s in [0, 1] the fraction of the post-warmup steps done."""
    def f(t):
        w = _warm(t, warmup_steps)
        if w is not None:
            return w
        return shape(min(max((t - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0))
    return f


def cosine(total_steps, warmup_steps=0, min_ratio=0.0):
    return _warmup_then(total_steps, warmup_steps,
                        lambda s: min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * s)))


def wsd(total_steps, warmup_steps=0, decay_frac=0.1, min_ratio=0.0):
    decay_steps = max(1, int(round(decay_frac * total_steps)))
    decay_start = total_steps - decay_steps

    def f(t):
        w = _warm(t, warmup_steps)
        if w is not None:
            return w
        if t < decay_start:
            return 1.0
        s = min((t - decay_start) / decay_steps, 1.0)
        return 1.0 + (min_ratio - 1.0) * s
    return f


def linear(total_steps, warmup_steps=0, end_ratio=0.0):
    return _warmup_then(total_steps, warmup_steps, lambda s: 1.0 + (end_ratio - 1.0) * s)


_SCHEDULES = {"constant": constant, "step": step_decay, "cosine": cosine, "wsd": wsd,
              "linear": linear}


def available():
    return sorted(_SCHEDULES)


def get(name):
    """The multiplier factory registered as ``name`` (e.g. ``get("cosine") is cosine``)."""
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; available: {available()}")
    return _SCHEDULES[name]


def create(name, optimizer, **kw):
    """``LRScheduler(optimizer, <schedule name>(**kw))``."""
    return LRScheduler(optimizer, get(name)(**kw))


class LRScheduler:
    """Sets ``group["lr"] = group["initial_lr"] * lr_lambda(t)`` for every param group."""

    def __init__(self, optimizer, lr_lambda):
        self.optimizer, self.lr_lambda = optimizer, lr_lambda
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.last_step = 0
        self._apply()

    def _apply(self):
        m = float(self.lr_lambda(self.last_step))
        if not (math.isfinite(m) and m >= 0):
            raise ValueError(f"schedule multiplier at step {self.last_step} is {m}: must be >= 0")
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * m

    def step(self):
        self.last_step += 1
        self._apply()

    def set_step(self, step):
        """Jump to ``step`` and apply its lr (a resumed run; a multiplier whose length changed)."""
        self.last_step = int(step)
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_step": self.last_step,
                "base_lrs": [g["initial_lr"] for g in self.optimizer.param_groups]}

    def load_state_dict(self, sd):
        if len(sd["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"LRScheduler.load_state_dict: {len(sd['base_lrs'])} base lrs for "
                             f"{len(self.optimizer.param_groups)} param groups")
        for g, lr in zip(self.optimizer.param_groups, sd["base_lrs"]):
            g["initial_lr"] = lr
        self.last_step = int(sd["last_step"])
        self._apply()


def _gradients(grads, where):
    """(name, array) of every gradient in ``grads``, None entries (no gradient) left out.

    ``grads``: a dict name -> ndarray, or Parameters -- one, an iterable of them
    (``model.parameters()``, named "0", "1", ... by position) or (name, Parameter) pairs -- whose
    ``.grad`` is taken (the array itself, so clipping it clips the Parameter's gradient)."""
    if isinstance(grads, Mapping):
        items = list(grads.items())
    elif isinstance(grads, np.ndarray) or _is_parameter(grads):
        items = [("0", grads)]
    else:
        items = [it if isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], str) else (str(i), it)
                 for i, it in enumerate(grads)]
    out = []
    for n, g in items:
        if _is_parameter(g):
            g = g.grad
        if g is None:
            continue
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{where}: gradient {n!r} must be an ndarray, or a Parameter whose .grad "
                            f"is used; got {type(g).__name__}")
        out.append((n, g))
    return out


def global_grad_norm(grads, norm_type=2.0):
    """Norm of all gradients concatenated (None entries ignored), computed in float64.
    ``grads`` as for :func:`clip_grad_norm_`."""
    _check_norm_type(norm_type, "global_grad_norm")
    return _total_norm([g for _, g in _gradients(grads, "global_grad_norm")], norm_type)


def _check_norm_type(norm_type, where):
    if not (isinstance(norm_type, (int, float, np.integer, np.floating)) and norm_type > 0):
        raise ValueError(f"{where}: norm_type must be a number > 0 or math.inf, got {norm_type!r}")


def _total_norm(gs, norm_type):
    if not gs:
        return 0.0
    if norm_type == math.inf:                  # np.max keeps a NaN; Python's max drops one not first
        return float(np.max([np.max(np.abs(g)) for g in gs if g.size], initial=0.0))
    return float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in gs)
                 ** (1.0 / norm_type))


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False, eps=1e-6):
    """Scale all gradients IN PLACE by min(1, max_norm / (total_norm + eps)) (torch semantics).

    ``grads``: a dict name -> ndarray, or Parameters (``model.parameters()``, one Parameter, or
    ``model.named_parameters()``), whose ``.grad`` is clipped; None gradients are skipped.
    Returns the total norm before clipping, as a float. A NaN/inf total norm raises if
    ``error_if_nonfinite``, else the gradients are left alone (torch would multiply them by
    the NaN or zero coefficient)."""
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    _check_norm_type(norm_type, "clip_grad_norm_")
    named = _gradients(grads, "clip_grad_norm_")
    total = _total_norm([g for _, g in named], norm_type)
    if not math.isfinite(total):
        if error_if_nonfinite:
            bad = [n for n, g in named if not np.isfinite(g).all()]
            raise FloatingPointError(f"total gradient norm is {total}; non-finite in {bad}")
        return total
    coef = max_norm / (total + eps)
    if coef < 1.0:
        for _, g in named:
            g *= g.dtype.type(coef)
    return total
