"""Shared machinery of the zeroth-order optimizers: seeded noise, closure calls, in-place
perturbation with guaranteed restore.

Seeds and streams
-----------------
Every random tensor is drawn from its own ``numpy.random.Generator`` keyed by
``(seed, t, crc32(name), tag)``: the run's seed, the step number t, the parameter's *name*
and a tag (1 = the perturbation z / U, 2 = LoZO's V, k+1 = query k of ZO-SGD). So

* a tensor is regenerated bit for bit whenever it is needed again (perturb, un-perturb,
  update), and nothing parameter-sized is ever stored;
* the streams are independent of the order in which parameters are visited, and drawing V
  cannot shift the stream of U (in the LoZO reference code, optsuite/LOZO
  large_models/LOZOtrainer.py, V and U come from one ``torch.manual_seed`` stream, so whether
  a call draws V changes the U it draws);
* no global RNG is touched (re-seeding the global RNG, as the MeZO reference does, makes all
  later randomness of the program a function of the step seed).

The key always has four entries and a non-zero last entry: ``SeedSequence`` treats trailing
zero words as absent, so ``[a, b, c]`` and ``[a, b, c, 0]`` would give the same stream.

Restore after ±ε and its rounding error
---------------------------------------
θ ← θ + a, θ ← θ − 2a, θ ← θ + a with a = fl(ε·z) regenerated bitwise identically each time
(and fl(2ε·z) = 2·fl(ε·z) exactly) leaves, per element,
|θ_restored − θ| ≤ 3·u·(|θ| + |a|) + O(u²), u = 2⁻⁵³ (float64), 2⁻²⁴ (float32), 2⁻¹¹ (float16):
each of the three roundings errs by at most u times the magnitude of its result. It is zero
whenever the three sums are exact, but **bitwise restoration is impossible in general**,
in any precision: θ ↦ fl(fl(θ + a) − 2a) is not injective (θ = 1e−20 and θ = 2e−20 with
a = 1 both give −1), so no computation can recover θ from θ₋ without storing the lost bits.
Measured on θ ~ N(0, 0.02²), ε = 1e−3: about 54% of the elements come back bitwise, the
others within 2u·(|θ|+|a|), i.e. ≲1e−17 absolute in float64, ≲1e−8 in float32.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from ..base import Optimizer

__all__ = ["ZerothOrderOptimizer", "noise_dtype"]


def _as_float(v, where):
    if isinstance(v, tuple):
        raise TypeError(f"{where}: a zeroth-order closure returns only the loss (a float or a "
                        f"0-d Tensor, evaluated under minigrad.no_grad()), got a tuple of {len(v)}")
    v = v.item() if hasattr(v, "item") else v
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: the closure must return a scalar loss, got {type(v).__name__}") from None


def noise_dtype(dtype) -> np.dtype:
    """The dtype noise for a parameter of ``dtype`` is drawn in (and what state built from it,
    e.g. LoZO's V, is stored in): float32/float64 natively, float32 for narrower types."""
    dt = np.dtype(dtype)
    return dt if dt in (np.float32, np.float64) else np.dtype(np.float32)


class ZerothOrderOptimizer(Optimizer):
    """Base class of ZO-SGD, MeZO and LoZO: ``step(closure=...)`` only.

    ``closure()`` evaluates the loss at the *current* parameters, on the same minibatch every
    time it is called within one step, in eval mode (no dropout) and without building a graph
    (``with minigrad.no_grad(): ...``). The optimizer calls it, perturbs the parameters in
    place between calls, and always restores them (also when the closure raises).

    ``seed``: the run's seed (int >= 0). ``None`` draws one from the OS and records it in
    ``global_state["seed"]``, so the run can still be replayed from the state_dict.

    Param groups may set ``lr`` and ``weight_decay`` (decoupled: θ ← θ − η·(ĝ + λθ)); ``eps``,
    ``seed`` and the method's other options are per optimizer (a group cannot set them).
    ``last_step_skipped`` is True after a step whose losses were non-finite with
    ``nonfinite="skip"``.
    """

    uses_gradients = False
    _saved_options = ("eps",)

    def __init__(self, params, *, eps, seed=None, nonfinite="raise", **defaults):
        super().__init__(params, nonfinite=nonfinite, **defaults)
        if not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"{type(self).__name__}: eps (the perturbation size) must be a finite "
                             f"number > 0, got {eps!r}")
        self.eps = float(eps)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ValueError(f"{type(self).__name__}: seed must be an int >= 0, got {seed!r}")
        self.global_state.update(seed=int(seed), step=0, forward_passes=0)
        self._key = {}
        for n in self.params:
            k = zlib.crc32(n.encode())
            clash = [m for m, kk in self._key.items() if kk == k]
            if clash:  # astronomically unlikely, but two names sharing a stream would correlate
                raise ValueError(f"parameter names {n!r} and {clash[0]!r} have the same crc32; rename one")
            self._key[n] = k

    # -- noise ------------------------------------------------------------------
    def generator(self, name, t, tag=1):
        """The Generator of tensor ``name`` at step ``t`` (tag 1: z/U, 2: V, k+1: query k)."""
        return np.random.default_rng([self.global_state["seed"], int(t), self._key[name], int(tag)])

    def noise(self, name, shape, dtype, t, tag=1):
        """N(0, 1) array of ``shape`` for tensor ``name`` at step ``t``; the same bits every call.

        Drawn in ``dtype`` for float32/float64 (NumPy draws each natively), in float32 for
        narrower types (the update then adds it in float32 and rounds once)."""
        return self.generator(name, t, tag).standard_normal(shape, dtype=noise_dtype(dtype))

    # -- closure ----------------------------------------------------------------
    def _loss(self, closure):
        v = _as_float(closure(), f"{type(self).__name__}.step")
        self.global_state["forward_passes"] += 1
        return v

    def step(self, grads=None, closure=None):
        if grads is not None:
            raise TypeError(f"{type(self).__name__} is zeroth-order: it uses no gradients. Call "
                            f"step(closure=fn) where fn() returns the loss under minigrad.no_grad()")
        if closure is None or not callable(closure):
            raise ValueError(f"{type(self).__name__}.step needs closure=fn, fn() -> loss "
                             f"(the same minibatch on every call, evaluated under no_grad)")
        for g in self.param_groups:
            self._check_group(g)
        skipped = self.skipped_steps
        loss = self._zo_step(closure)
        self.last_step_skipped = self.skipped_steps > skipped
        return loss

    def _zo_step(self, closure):
        raise NotImplementedError

    def _two_point_losses(self, closure, perturb, central=True):
        """(f(θ+δ), f(θ−δ)) -- or (f(θ+δ), None) when not ``central`` -- where ``perturb(s)``
        adds s·δ to θ in place. θ is restored afterwards, also when the closure raises."""
        offset = 0  # how many δ are currently added to θ
        lm = None
        try:
            perturb(+1)
            offset = 1
            lp = self._loss(closure)
            if central:
                perturb(-2)
                offset = -1
                lm = self._loss(closure)
        finally:
            if offset:
                perturb(-offset)
        return lp, lm

    def _bad_loss(self, *losses):
        """Called with non-finite losses after the parameters were restored. A skipped step returns
        their mean (non-finite), as a step returns its loss: a loop records it (it returned None,
        and the Trainer's float(loss) raised TypeError)."""
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            self.global_state["step"] += 1
            return float(np.mean(losses))
        raise FloatingPointError(f"{type(self).__name__}: non-finite loss {losses} in its step "
                                 f"{self.global_state['step'] + 1} (parameters were restored); lower eps/lr "
                                 f"or use nonfinite='skip'")

    # -- in-place helpers ---------------------------------------------------------
    @staticmethod
    def _add_(p, z, alpha):
        """p += alpha·z in place, z a temporary we own (scaled in place: no new array)."""
        z *= alpha
        np.add(p, z, out=p, casting="unsafe")

    @staticmethod
    def _decay_(p, group):
        wd = group["weight_decay"]
        if wd:
            p *= (1.0 - group["lr"] * wd)
