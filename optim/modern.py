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

__all__ = ["Lion", "Adafactor"]


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


# ----------------------------------------------------------------------------- Adafactor
@register("adafactor")
class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern, ICML 2018, arXiv 1804.04235), torch.optim.Adafactor
    semantics. At step t, with G the gradient (-G with ``maximize``)::

        beta2_t = 1 - t^beta2_decay              (0 at t = 1: no bias correction needed)
        rho_t = min(lr, 1/sqrt(t));  alpha_t = max(eps2, RMS(theta)) * rho_t
        theta <- theta * (1 - lr*wd)             (decoupled decay, with the lr itself)
        ndim >= 2, factored over the last two axes (m x n):
            R <- beta2_t*R + (1-beta2_t)*rowmean(G^2)     (m values)
            C <- beta2_t*C + (1-beta2_t)*colmean(G^2)     (n values)
            V = R C / max(mean(R), eps1)
        ndim < 2:  V <- beta2_t*V + (1-beta2_t)*G^2
        U = G / sqrt(max(V, eps1^2));  theta <- theta - alpha_t * U / max(1, RMS(U)/d)

    The step size is relative (alpha_t scales with the parameter's RMS) and ``lr`` only caps
    rho_t and scales the decay, as in torch; the paper's rho_t uses 0.01 where lr stands, which
    is torch's default. eps1 (``eps[0]``, None: the dtype's machine epsilon) guards V and U,
    not R and C: torch's reading of the paper, which adds eps1 to G^2. No first moment (the
    paper's beta1 = 0 setting).

    Pitfall: alpha_t is at least eps2*rho_t = 1e-5 at t = 1 for a zero-initialised parameter and
    grows with its RMS, whatever lr is, so a schedule on lr changes only the cap of rho_t.
    Memory: m + n per matrix (times the leading dims of a higher-order tensor), N for vectors."""

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                         weight_decay=weight_decay, maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        if not group["beta2_decay"] <= 0:
            raise ValueError(f"Adafactor: beta2_decay must be <= 0, got {group['beta2_decay']!r}")
        eps = group["eps"]
        if len(eps) != 2:
            raise ValueError(f"Adafactor: eps must be a pair (eps1 or None, eps2), got {eps!r}")
        if eps[0] is not None:
            _check_eps(eps[0], "Adafactor", "eps[0]")
        _check_eps(eps[1], "Adafactor", "eps[1]")
        if not group["d"] >= 1:
            raise ValueError(f"Adafactor: the clipping threshold d must be >= 1, got {group['d']!r}")

    def _update(self, name, p, g, state, group):
        lr, wd = group["lr"], group["weight_decay"]
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = float(np.finfo(p.dtype).eps)
        if "step" not in state:
            state["step"] = 0
            if p.ndim >= 2:
                state["row_var"] = np.zeros(p.shape[:-1] + (1,), dtype=p.dtype)
                state["col_var"] = np.zeros(p.shape[:-2] + (1, p.shape[-1]), dtype=p.dtype)
            else:
                state["variance"] = np.zeros_like(p)
        if group["maximize"]:
            g = -g
        state["step"] += 1
        t = state["step"]
        weight = t ** group["beta2_decay"]          # 1 - beta2_t
        rho = min(lr, 1.0 / math.sqrt(t))
        alpha = max(eps2, _rms(p)) * rho
        if wd:
            p *= 1.0 - lr * wd
        g2 = g * g
        if p.ndim >= 2:
            row, col = state["row_var"], state["col_var"]
            row += weight * (g2.mean(axis=-1, keepdims=True) - row)
            col += weight * (g2.mean(axis=-2, keepdims=True) - col)
            v = (row @ col) / np.maximum(row.mean(axis=-2, keepdims=True), eps1)
        else:
            v = state["variance"]
            v += weight * (g2 - v)
        u = g / np.sqrt(np.maximum(v, eps1 * eps1))
        p -= (alpha / max(1.0, _rms(u) / group["d"])) * u

    def _state_nbytes(self, p, group):
        if p.ndim < 2:
            return p.nbytes
        lead = math.prod(p.shape[:-2])
        return lead * (p.shape[-2] + p.shape[-1]) * p.itemsize


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) if a.size else 0.0
