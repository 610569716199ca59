"""Optimizers of the large-model era: Lion, Adafactor, Muon, Adam-mini (Lecture 9).

Each one spends less memory than AdamW's two floats per weight, or changes the geometry of the
step, or both:

=============  =====================================  ==================================
optimizer      state per m x n matrix                 idea
=============  =====================================  ==================================
``lion``       mn (momentum)                          sign of an interpolated momentum
``adafactor``  m + n (row and column second moment)   rank-1 factored second moment
``muon``       mn (momentum)                          orthogonalized momentum (Newton-Schulz)
``adam-mini``  mn + one scalar per block              one second moment per block
=============  =====================================  ==================================

Muon and Adam-mini treat a parameter by what it does. Both take ``roles`` ({name: role},
``model.param_roles()``; see ``minigrad.nn.ROLES``) and ``splits`` (``model.param_splits()``:
a fused matrix such as a GPT's (3C, C) attention weight seen as its q, k and v row blocks, see
``optim.split_matrices``)::

    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("muon", params, lr=0.02, roles=model.param_roles(),
                       splits=model.param_splits(), adamw_kwargs={"lr": 3e-4})
    opt = optim.create("adam-mini", params, lr=1e-3, n_head=config.n_head,
                       roles=model.param_roles(), splits=model.param_splits())
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .base import Optimizer, check_count, check_fraction, register
from .groups import _parts

__all__ = ["Lion"]


def _check_betas(betas, where):
    if len(betas) != 2:
        raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    check_fraction(betas[0], f"{where}: betas[0]")
    check_fraction(betas[1], f"{where}: betas[1]")


def _check_eps(eps, where, name="eps"):
    if not (isinstance(eps, (int, float, np.floating)) and eps >= 0):
        raise ValueError(f"{where}: {name} must be a number >= 0, got {eps!r}")


# ----------------------------------------------------------------------------- Lion
@register("lion")
class Lion(Optimizer):
    """Lion, EvoLved Sign Momentum (Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh,
    Lu, Le, NeurIPS 2023, arXiv 2302.06675, Algorithm 2)::

        c <- b1*m + (1-b1)*g
        theta <- theta - lr*(sign(c) + wd*theta)
        m <- b2*m + (1-b2)*g

    Every coordinate moves by exactly lr (plus decay), so the update is larger than Adam's
    for the same lr: the paper uses an lr 3-10x smaller and a weight decay 3-10x larger than
    AdamW's. Defaults are the paper's (lr 1e-4, betas (0.9, 0.99)). torch has no Lion.
    Memory: N (the momentum)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        _check_betas(group["betas"], "Lion")

    def _update(self, name, p, g, state, group):
        b1, b2 = group["betas"]
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(p)
        m = state["exp_avg"]
        c = b1 * m + (1.0 - b1) * g
        p -= group["lr"] * (np.sign(c) + group["weight_decay"] * p)
        m *= b2
        m += (1.0 - b2) * g

    def _state_nbytes(self, p, group):
        return p.nbytes
