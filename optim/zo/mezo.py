"""MeZO: memory-efficient zeroth-order SGD.

Malladi, Gao, Nichani, Damian, Lee, Chen, Arora, "Fine-Tuning Language Models with Just
Forward Passes", NeurIPS 2023, arXiv 2305.17333. Reference: princeton-nlp/MeZO,
large_models/trainer.py (``zo_perturb_parameters``, ``zo_step``, ``zo_update``).

One step (θ all parameters, z ~ N(0, I) of the same size, never stored):

    1. t = step number; z is regenerated tensor by tensor from (seed, t, name)
    2. θ ← θ + εz                      (in place, one tensor at a time)
    3. ℓ₊ = closure()                  (same minibatch, eval mode, no_grad)
    4. θ ← θ − 2εz
    5. ℓ₋ = closure()
    6. θ ← θ + εz                      (restore; rounding bound in optim/zo/base.py)
    7. c = (ℓ₊ − ℓ₋)/(2ε)              (a scalar: the projected gradient)
    8. θ ← θ − η·(c·z + λ·θ)           (z regenerated once more; decay inside the update)

Scaling: ĝ = c·z is the symmetric Gaussian estimator. E ĝ = ∇f_ε (the Gaussian-smoothed
gradient; = ∇f on quadratics, and ∇f + O(ε²) in general), with no factor d, so
E[Δθ] = −η·∇f_ε: MeZO is SGD on f_ε with a noisier gradient (trace of its covariance
≈ (d+1)‖∇f‖²; see optim/zo/estimators.py). Its learning rate must be ~d times smaller than
SGD's for the same stability; the paper uses 1e−6/1e−7 for full fine-tuning of OPT-13B.

Memory: the parameters, plus one tensor-sized temporary (z of the tensor being visited,
scaled in place), plus whatever ``closure`` needs (the forward pass). No gradients, no
activations kept for backward, no optimizer state. ``state_bytes()`` is 0.

Weight decay: the reference exempts biases and layer norms; pass groups (e.g.
``optim.param_groups_no_decay(params, 0.1)``) for that. [unverified against the reference
run] the default λ = 0 matches the paper's main runs.
"""
from __future__ import annotations

import math

from ..base import register
from .base import ZerothOrderOptimizer

__all__ = ["MeZO"]


@register("mezo")
class MeZO(ZerothOrderOptimizer):
    """MeZO (``optim.create("mezo", params, lr=1e-6, eps=1e-3, seed=0)``).

    ``step(closure=fn)`` returns (ℓ₊ + ℓ₋)/2, an O(ε²) estimate of the loss at θ (the
    reference returns ℓ₊). The last projected gradient c and the two losses are kept in
    ``global_state`` ("c", "loss_plus", "loss_minus"); ``global_state["forward_passes"]``
    counts closure calls.
    """

    def __init__(self, params, lr=1e-6, eps=1e-3, weight_decay=0.0, seed=None, nonfinite="raise"):
        super().__init__(params, eps=eps, seed=seed, nonfinite=nonfinite, lr=lr,
                         weight_decay=weight_decay)

    # z for one tensor at step t
    def z(self, name, t=None):
        """Replay z of parameter ``name`` at step ``t`` (default: the current step)."""
        p = self.params[name]
        return self.noise(name, p.shape, p.dtype, self.global_state["step"] if t is None else t)

    def perturb_(self, t, scale):
        """θ ← θ + scale·ε·z(t), tensor by tensor (one temporary at a time)."""
        for group in self.param_groups:
            for name, p in group["params"].items():
                self._add_(p, self.noise(name, p.shape, p.dtype, t), scale * self.eps)

    def _zo_step(self, closure):
        t = self.global_state["step"]
        lp, lm = self._two_point_losses(closure, lambda s: self.perturb_(t, s))
        if not (math.isfinite(lp) and math.isfinite(lm)):
            return self._bad_loss(lp, lm)
        c = (lp - lm) / (2 * self.eps)
        for group in self.param_groups:
            for name, p in group["params"].items():
                self._decay_(p, group)
                # (a temporary passed straight in: it is freed before the next one exists)
                self._add_(p, self.noise(name, p.shape, p.dtype, t), -group["lr"] * c)
        self.global_state.update(step=t + 1, c=c, loss_plus=lp, loss_minus=lm)
        return 0.5 * (lp + lm)

    def _state_nbytes(self, p, group):
        return 0
