"""LoZO and LoZO-M: zeroth-order SGD with low-rank perturbations (and momentum).

Chen, Zhang, Cao, Yuan, Wen, "Enhancing Zeroth-order Fine-tuning for Language Models with
Low-rank Structures", ICLR 2025, arXiv 2410.07698. Reference: optsuite/LOZO,
large_models/LOZOtrainer.py (``lowrank_zo_perturb_parameters``, ``lowrank_zo_step``,
``lowrank_zo_update``), medium_models/src/LOZOtrainer.py (``lowrank_zo_update_momentum``).

Each matrix W (m×n; a tensor with ndim > 2 is viewed as shape[0] × rest) is perturbed by
ε·U·Vᵀ instead of ε·Z, where

* V ∈ R^{n×r}, N(0, 1) entries, is drawn every ν steps (``step_interval``) and kept in the
  state (r·n floats per matrix) -- stored only when the step that drew it commits, so a step
  that raises or is skipped (``nonfinite="skip"``) leaves V and N as they were (a skipped step
  at a multiple of ν keeps the old V until the next multiple), and
* U ∈ R^{m×r}, N(0, 1) entries, is regenerated from (seed, t, name) every step, never stored.

Vectors (biases, norm gains) get MeZO's full Gaussian z. One step:

    θ ← θ + εP;  ℓ₊ = L(θ);  θ ← θ − 2εP;  ℓ₋ = L(θ);  θ ← θ + εP      (P = UVᵀ or z)
    c = (ℓ₊ − ℓ₋)/(2ε)
    W ← W − η·(s·c·U·Vᵀ + λW),   vector ← vector − η·(c·z + λ·vector)

Scaling of the estimator (exact on quadratics, G = ∇_W f):

* over U and V: E[c·UVᵀ] = r·G   (each of the r rank-one terms contributes G);
* over U with V fixed: E_U[c·UVᵀ] = G·V·Vᵀ (G restricted to span V, times ‖V‖-ish factors);
  its mean over V is r·G again.

The reference uses s = 1, i.e. no 1/r (the learning rate absorbs r; [unverified] against the
paper's text). That is the default here, so learning rates carry over from the reference. With
``normalize=True``, s = 1/r and the matrix part of the update has expectation exactly −η·G,
like MeZO's (vectors are never rescaled: their z-part already has expectation −η·g).

LoZO-M (``momentum=β > 0``): the momentum of a matrix is kept as N ∈ R^{m×r} (M = N·Vᵀ):

    N ← β·N + (1−β)·c·U,   W ← W − η·(s·N·Vᵀ + λW)
    on a step where V is resampled: N ← β·N·(V_oldᵀ·V_new)/n + (1−β)·c·U

(N·V_oldᵀ·V_new/n is the least-squares fit of the old M in the new factor: V_newᵀV_new ≈ n·I.)
On the first step N = c·U, as in the reference. Vectors keep a full momentum buffer
(β·m + (1−β)·c·z; vectors are small).

Memory: parameters, V (and N) per matrix and, with momentum, m per vector —
``state_bytes()`` reports them, ``expected_state_bytes()`` predicts them — plus one
tensor-sized temporary (U·Vᵀ of the matrix being visited).
"""
from __future__ import annotations

import math

from ..base import check_count, check_fraction, register
from .base import ZerothOrderOptimizer, noise_dtype

__all__ = ["LoZO"]


@register("lozo")
class LoZO(ZerothOrderOptimizer):
    """LoZO / LoZO-M (``optim.create("lozo", params, lr=1e-6, eps=1e-3, rank=2,
    step_interval=50, momentum=0.0, seed=0)``). See the module docstring.

    ``step(closure=fn)`` returns (ℓ₊ + ℓ₋)/2; ``global_state`` keeps "c", "loss_plus",
    "loss_minus", "forward_passes". Per matrix, ``state[name]["V"]`` (and "N" for LoZO-M).
    """

    _saved_options = ZerothOrderOptimizer._saved_options + ("rank", "step_interval", "momentum", "normalize")

    def __init__(self, params, lr=1e-6, eps=1e-3, rank=2, step_interval=50, momentum=0.0,
                 weight_decay=0.0, normalize=False, seed=None, nonfinite="raise"):
        check_count(rank, "LoZO: rank")
        check_count(step_interval, "LoZO: step_interval (ν)")
        check_fraction(momentum, "LoZO: momentum β")
        super().__init__(params, eps=eps, seed=seed, nonfinite=nonfinite, lr=lr,
                         weight_decay=weight_decay)
        self.rank, self.step_interval = int(rank), int(step_interval)
        self.momentum, self.normalize = float(momentum), bool(normalize)
        for n, p in self.params.items():
            if p.ndim >= 2 and not p.flags.c_contiguous:
                raise ValueError(f"LoZO: matrix parameter {n!r} (shape {p.shape}) must be C-contiguous "
                                 f"to be updated in place as a {p.shape[0]}×{p.size // p.shape[0]} view; "
                                 f"pass np.ascontiguousarray of it")

    # -- directions -------------------------------------------------------------
    @staticmethod
    def _mat(p):
        return p.reshape(p.shape[0], -1)  # a view (checked C-contiguous)

    def U(self, name, t=None):
        """Replay U (m×r) of matrix ``name`` at step ``t`` (default: the current step)."""
        p = self.params[name]
        t = self.global_state["step"] if t is None else t
        return self.noise(name, (p.shape[0], self.rank), p.dtype, t, tag=1)

    def _bases(self, t):
        """{name: V} of every matrix at step ``t``: the stored V, or a fresh draw where ``t`` is a
        multiple of ν (or there is no V yet). Nothing is stored here: the step stores fresh V only
        once it commits, so a step that raises or is skipped leaves V and N as they were."""
        V = {}
        for name, p in self.params.items():
            if p.ndim < 2:
                continue
            st = self.state.get(name, {})
            if t % self.step_interval == 0 or "V" not in st:
                V[name] = self.noise(name, (p.size // p.shape[0], self.rank), p.dtype, t, tag=2)
            else:
                V[name] = st["V"]
        return V

    def _direction(self, name, p, t, V):
        """The perturbation direction of one tensor, a fresh temporary: U·Vᵀ or z."""
        if p.ndim >= 2:
            return self.U(name, t) @ V[name].T
        return self.noise(name, p.shape, p.dtype, t, tag=1)

    def _perturb_(self, t, scale, V):
        """θ ← θ + scale·ε·P(t), tensor by tensor; ``V`` = ``self._bases(t)``."""
        for name, p in self.params.items():
            tgt = self._mat(p) if p.ndim >= 2 else p
            self._add_(tgt, self._direction(name, p, t, V), scale * self.eps)

    # -- step -------------------------------------------------------------------
    def _zo_step(self, closure):
        t = self.global_state["step"]
        bases = self._bases(t)
        lp, lm = self._two_point_losses(closure, lambda s: self._perturb_(t, s, bases))
        if not (math.isfinite(lp) and math.isfinite(lm)):
            return self._bad_loss(lp, lm)
        c = (lp - lm) / (2 * self.eps)
        s = 1.0 / self.rank if self.normalize else 1.0
        beta = self.momentum
        for group in self.param_groups:
            lr = group["lr"]
            for name, p in group["params"].items():
                st = self.state.setdefault(name, {})
                if p.ndim >= 2:
                    W, V, U = self._mat(p), bases[name], self.U(name, t)
                    if beta == 0.0:
                        D = U  # the update is c·U·Vᵀ
                        alpha = -lr * s * c
                    else:
                        if "N" not in st:
                            st["N"] = c * U
                        elif V is not st["V"]:  # resampled: re-project N onto the new V
                            n = V.shape[0]
                            st["N"] = beta * st["N"] @ ((st["V"].T @ V) / n) + (1 - beta) * c * U
                        else:
                            st["N"] *= beta
                            st["N"] += (1 - beta) * c * U
                        D = st["N"]
                        alpha = -lr * s
                    st["V"] = V
                    self._decay_(W, group)
                    self._add_(W, D @ V.T, alpha)
                else:
                    z = self.noise(name, p.shape, p.dtype, t, tag=1)
                    self._decay_(p, group)
                    if beta == 0.0:
                        self._add_(p, z, -lr * c)
                    else:
                        if "m" not in st:
                            z *= c
                            st["m"] = z.copy()
                        else:
                            z *= (1 - beta) * c
                            st["m"] *= beta
                            st["m"] += z
                            z[...] = st["m"]
                        self._add_(p, z, -lr)
                    del z  # free it before the next tensor's z is drawn
        self.global_state.update(step=t + 1, c=c, loss_plus=lp, loss_minus=lm)
        return 0.5 * (lp + lm)

    def _state_nbytes(self, p, group):
        item = noise_dtype(p.dtype).itemsize  # V, N and m are built from the noise
        if p.ndim < 2:
            return p.size * item if self.momentum else 0
        m, n = p.shape[0], p.size // p.shape[0]
        return self.rank * (n + (m if self.momentum else 0)) * item
