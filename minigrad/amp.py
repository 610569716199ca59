"""Mixed-precision training, emulated: compute policy, FP32 master weights, loss scaling.

Reference: Micikevicius et al., "Mixed Precision Training", ICLR 2018, arXiv 1710.03740 (master
weights, loss scaling, FP32 accumulation); Micikevicius et al. 2022, "FP8 Formats for Deep
Learning", arXiv 2209.05433 (E4M3 forward, E5M2 backward, per-tensor scaling); PyTorch's
``torch.amp.GradScaler`` for the dynamic scaler's defaults and ``unscale_``. Course: lecture 6
(slides 13_mixed).

Every value still lives in a float32 array; "fp16" means "a float32 array whose values fp16 can
hold" (see `minigrad.precision`). That is enough to reproduce every failure the lecture shows:

* underflow -- gradients below 2^-24 become 0 in fp16 (fixed by loss scaling);
* update stagnation -- w + Δw == w in fp16 when |Δw| < ulp(w)/2 (fixed by fp32 master weights);
* overflow -- scaled gradients past 65504 become inf (the dynamic scaler skips the step).

The three pieces
----------------
1. ``Policy`` + ``autocast(policy)``: inside the context, ``F.linear`` and ``@`` (MatMul) round their
   inputs to ``policy.compute`` (the weight operand of linear to ``policy.weight``), multiply in
   float32 (= FP32 accumulation), and round the output to ``policy.compute`` if
   ``policy.round_output``; their backward rounds the incoming gradient to ``policy.grad``. The
   activations they save for backward are therefore their compute-format inputs. Every other op
   (softmax, layer norm, GELU, the loss, attention) runs in float32. That is the usual recipe's
   intent (fp32 for reductions and normalisations), not what torch.autocast does op by op: on
   CUDA it puts softmax, layer norm and the losses in fp32 but runs GELU in its input's dtype,
   and on the CPU (torch 2.13) GELU, softmax, layer norm and scaled_dot_product_attention came
   out in the low format, only cross-entropy in fp32. The policy is recorded per op at forward
   time, so a backward called after the ``with`` block still uses it.
2. ``LossScaler`` (static) and ``DynamicLossScaler``: multiply the loss by S before backward,
   divide the gradients by S after; the dynamic one halves S and skips the step on inf/NaN and
   doubles S after ``growth_interval`` clean steps.
3. ``MixedPrecisionOptimizer(opt, ...)``: wraps any optimizer from ``optim`` (built on the model's
   arrays as usual). It keeps FP32 master copies, points the optimizer at them, and writes the
   low-precision copy back into the model's arrays after each step; without master weights the
   optimizer updates the model's arrays, which are rounded to the low format after every step.

Typical loop (the wrapper has the optimizer's interface: optim/base.py, "The step protocol")::

    model_params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("adamw", model_params, lr=1e-3)
    mp = amp.MixedPrecisionOptimizer(opt, param_format="fp16", scaler=amp.DynamicLossScaler())
    policy = amp.Policy.preset("fp16")
    for step in range(n):
        model.zero_grad()
        with amp.autocast(policy):
            _, loss = model(x, y)
        mp.backward(loss)                     # loss.backward(grad = S), S = mp.loss_scale
        grads = {n: p.grad for n, p in model.named_parameters()}
        mp.unscale_(grads)                    # optional: round to grad_format, divide by S in place
        optim.clip_grad_norm_(grads, 1.0)     # ... so that clipping sees the true gradients
        mp.step(grads)                        # update, or skip on inf/NaN (mp.last_step_skipped)

The hook in the core is two short blocks in ``functional.Linear`` and ``tensor.MatMul`` that call
`cast_inputs`/`cast_output`/`cast_grad` only when ``ctx.amp`` (the policy at forward time) is set;
with no autocast active they cost one `current_policy()` call. Under autocast, MatMul takes its
NumPy path (its fused batched route is used only without a policy).

Limits (not emulated): FP8 scaling is "current" (amax of the tensor being cast), not Transformer
Engine's delayed scaling from an amax history; block formats (MXFP8, NVFP4) quantize every operand
along its last axis, which is the contraction axis for x and W in forward but not for every
operand of the backward products; saved arrays are still float32 in memory, so byte counts of
activations do not shrink (count them as bits_per_element(fmt)/32 of the float32 size).
"""
from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import precision as P

__all__ = [
    "Policy", "autocast", "current_policy", "cast_inputs", "cast_output", "cast_grad", "grad_stats",
    "LossScaler", "DynamicLossScaler", "MixedPrecisionOptimizer", "underflow_fraction",
]


# ----------------------------------------------------------------------------------------------
# Policy and autocast
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """What precision the matmuls of a forward/backward pass use.

    compute: format of matmul/linear inputs (activations) and of saved activations.
    weight: format of linear's weight operand (default: `compute`).
    grad: format of the gradient entering a matmul's backward (default: `compute`).
    round_output: round matmul outputs to `compute` (they are accumulated in float32 first).
    scaling: "none", or "tensor" for the FP8 recipe -- each operand is scaled by max_fmt/amax
             before the cast and unscaled after (current scaling; Transformer Engine's default
             'delayed scaling' uses an amax history instead). Block formats carry their own scales.
             Scaled inputs and weights saturate (an inf becomes ±max); scaled gradients do not
             (fp8_e5m2 keeps ±inf, fp8_e4m3 gives NaN), so the loss scaler sees an overflow.
    """

    compute: str = "fp32"
    weight: str | None = None
    grad: str | None = None
    round_output: bool = True
    scaling: str = "none"
    name: str = ""

    def __post_init__(self):
        for f in (self.compute, self.weight, self.grad):
            if f is not None and f not in P.ALL_FORMATS:
                raise ValueError(f"Policy: unknown format {f!r}; choose one of {list(P.ALL_FORMATS)}")
        if self.scaling not in ("none", "tensor"):
            raise ValueError(f"Policy: scaling must be 'none' or 'tensor', got {self.scaling!r}")

    @property
    def weight_fmt(self) -> str:
        return self.weight or self.compute

    @property
    def grad_fmt(self) -> str:
        return self.grad or self.compute

    @staticmethod
    def preset(name: str) -> "Policy":
        """fp32 | fp16 | bf16 | fp8 (E4M3 forward, E5M2 gradients, per-tensor scaling) | mxfp8 |
        nvfp4 (NVFP4 matmul inputs and weights, bf16 gradients)."""
        presets = {
            "fp32": Policy("fp32", round_output=False, name="fp32"),
            "fp16": Policy("fp16", name="fp16"),
            "bf16": Policy("bf16", name="bf16"),
            "fp8": Policy("fp8_e4m3", grad="fp8_e5m2", round_output=False, scaling="tensor",
                          name="fp8"),
            "mxfp8": Policy("mxfp8_e4m3", grad="bf16", round_output=False, name="mxfp8"),
            "nvfp4": Policy("nvfp4", grad="bf16", round_output=False, name="nvfp4"),
        }
        if name not in presets:
            raise ValueError(f"Policy.preset: unknown {name!r}; choose one of {list(presets)}")
        return presets[name]


_local = threading.local()
_open = 0  # autocast blocks open in any thread: while 0, no thread-local lookup per op
_open_lock = threading.Lock()


def current_policy() -> Policy | None:
    """The innermost active autocast policy, or None (full float32)."""
    if not _open:  # every linear and matmul asks; the thread-local lookup costs ~0.7 us
        return None
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


@contextmanager
def autocast(policy: Policy | str | None):
    """Run linear / matmul under `policy` (a Policy or a preset name; None turns autocast off)."""
    if isinstance(policy, str):
        policy = Policy.preset(policy)
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"autocast: expected a Policy, a preset name or None, got {type(policy).__name__}")
    global _open
    if not hasattr(_local, "stack"):
        _local.stack = []
    _local.stack.append(policy)
    with _open_lock:
        _open += 1
    try:
        yield policy
    finally:
        _local.stack.pop()
        with _open_lock:
            _open -= 1


def _cast(x: np.ndarray, fmt: str, scaling: str, saturate: bool = True) -> np.ndarray:
    """``x`` in ``fmt``; a tensor-scaled cast saturates unless ``saturate`` is False (gradients)."""
    if fmt == "fp32" and x.dtype == np.float32:
        return x
    if scaling == "tensor" and fmt in P.FORMATS and fmt != "fp32":
        return P.scaled_quantize(x, fmt, saturate=saturate)
    return P.quantize(x, fmt)


def cast_inputs(policy: Policy, a: np.ndarray, b: np.ndarray, b_is_weight: bool = True):
    """Round matmul operands: `a` to policy.compute, `b` to policy.weight (or compute)."""
    fb = policy.weight_fmt if b_is_weight else policy.compute
    return _cast(a, policy.compute, policy.scaling), _cast(b, fb, policy.scaling)


def cast_output(policy: Policy, y: np.ndarray) -> np.ndarray:
    """Round a float32-accumulated matmul result to the compute format (if the policy says so)."""
    if not policy.round_output or policy.compute not in P.FORMATS:
        return y
    return _cast(y, policy.compute, "none")


class _GradStats:
    """Counts, over all gradients rounded by `cast_grad`, how many nonzero values became 0."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.total = 0
        self.nonzero = 0
        self.underflow = 0
        self.nonfinite = 0
        self.recording = None  # set to a list to collect |g| of every gradient entering a matmul

    @property
    def underflow_fraction(self) -> float:
        return self.underflow / self.nonzero if self.nonzero else 0.0

    def __repr__(self):
        return (f"GradStats(total={self.total}, underflow={self.underflow} "
                f"({100 * self.underflow_fraction:.3f}% of nonzero), nonfinite={self.nonfinite})")


_stats = _GradStats()


def grad_stats() -> _GradStats:
    """Counters of the gradients rounded inside autocast'ed backward passes (call .reset())."""
    return _stats


def _nonzero_and_flushed(g, q) -> tuple[int, int]:
    """(nonzero values of g, how many of them q -- g rounded to a format -- flushed to 0)."""
    nz = g != 0
    return int(nz.sum()), int((nz & (q == 0)).sum())


def cast_grad(policy: Policy, g: np.ndarray) -> np.ndarray:
    """Round the gradient entering a matmul's backward to policy.grad; count underflows."""
    fmt = policy.grad_fmt
    if _stats.recording is not None:  # e.g. the demo's histogram of activation gradients
        _stats.recording.append(np.abs(g).ravel().astype(np.float32))
    if fmt == "fp32":
        return g
    # not saturated: an inf gradient (fp8_e5m2 keeps inf, fp8_e4m3 gives NaN) must reach the
    # loss scaler, which skips the step; clamped to ±max it would pass as a finite gradient
    q = _cast(g, fmt, policy.scaling, saturate=False)
    nonzero, flushed = _nonzero_and_flushed(g, q)
    _stats.total += g.size
    _stats.nonzero += nonzero
    _stats.underflow += flushed
    _stats.nonfinite += int(g.size - np.isfinite(q).sum())
    return q


def underflow_fraction(grads, fmt: str = "fp16") -> float:
    """Fraction of the nonzero values in `grads` (dict or array) that `fmt` rounds to 0."""
    arrs = grads.values() if isinstance(grads, dict) else [grads]
    nz = under = 0
    for g in arrs:
        if g is None:
            continue
        counts = _nonzero_and_flushed(g, P.quantize(g, fmt))
        nz, under = nz + counts[0], under + counts[1]
    return under / nz if nz else 0.0


# ----------------------------------------------------------------------------------------------
# Loss scaling
# ----------------------------------------------------------------------------------------------
class LossScaler:
    """Static loss scaling: backpropagate S·loss, divide the gradients by S.

    A step whose unscaled gradients contain inf/NaN is still skipped (parameters unchanged) and
    counted in `skipped_steps`; S itself never changes.
    """

    def __init__(self, scale: float = 1.0):
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"LossScaler: scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)
        self.skipped_steps = 0
        self.steps = 0

    def backward(self, loss, retain_graph: bool = False):
        """loss.backward with upstream gradient S (a minigrad Tensor with a scalar loss)."""
        loss.backward(np.full(loss.shape, self.scale, dtype=loss.dtype), retain_graph=retain_graph)

    def unscale(self, grads: dict) -> tuple[dict, bool]:
        """(grads / S in float32, all finite?)."""
        inv = np.float32(1.0 / self.scale)
        out, finite = {}, True
        for n, g in grads.items():
            if g is None:
                out[n] = None
                continue
            u = (g.astype(np.float32) * inv).astype(np.float32)
            finite = finite and bool(np.isfinite(u).all())
            out[n] = u
        return out, finite

    def update(self, found_inf: bool) -> None:
        self.steps += 1
        if found_inf:
            self.skipped_steps += 1

    def state_dict(self):
        return {"scale": self.scale, "skipped_steps": self.skipped_steps, "steps": self.steps}

    def load_state_dict(self, sd):
        self.scale = float(sd["scale"])
        self.skipped_steps = int(sd["skipped_steps"])
        self.steps = int(sd["steps"])


class DynamicLossScaler(LossScaler):
    """Dynamic loss scaling (Micikevicius et al. 2018, §3.2; torch GradScaler defaults [doc]).

    On a step with inf/NaN gradients: skip it and S <- S·backoff_factor. After `growth_interval`
    consecutive finite steps: S <- S·growth_factor. S stays within [min_scale, max_scale].
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 min_scale: float = 2.0 ** -24, max_scale: float = 2.0 ** 64):
        super().__init__(init_scale)
        if not growth_factor > 1 or not 0 < backoff_factor < 1:
            raise ValueError(f"DynamicLossScaler: need growth_factor > 1 and 0 < backoff_factor < 1, "
                             f"got {growth_factor}, {backoff_factor}")
        if int(growth_interval) < 1:
            raise ValueError(f"DynamicLossScaler: growth_interval must be >= 1, got {growth_interval}")
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.good_steps = 0

    def update(self, found_inf: bool) -> None:
        super().update(found_inf)
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale = min(self.scale * self.growth_factor, self.max_scale)
                self.good_steps = 0

    _OPTIONS = ("growth_factor", "backoff_factor", "growth_interval", "min_scale", "max_scale")

    def state_dict(self):
        """As torch.amp.GradScaler's: the scale, the growth options and the count of clean steps
        (``good_steps``, torch's ``_growth_tracker``), plus the bounds torch does not have."""
        return {**super().state_dict(), **{k: getattr(self, k) for k in self._OPTIONS},
                "good_steps": self.good_steps}

    def load_state_dict(self, sd):
        """Takes the saved options too, as torch does; a state dict saved without them (before
        they were saved) keeps this scaler's own."""
        super().load_state_dict(sd)
        for k in self._OPTIONS:
            if k in sd:
                setattr(self, k, type(getattr(self, k))(sd[k]))
        self.good_steps = int(sd["good_steps"])


# ----------------------------------------------------------------------------------------------
# Master weights around any optimizer
# ----------------------------------------------------------------------------------------------
class MixedPrecisionOptimizer:
    """Low-precision model weights, optional FP32 masters, loss scaling, around any `optim` optimizer.

    It has the interface of the optimizer it wraps (the step protocol of optim/base.py), so a
    training loop drives it like any optimizer: `uses_gradients`, `param_groups`, `state`,
    `state_bytes()` and `expected_state_bytes()` are the wrapped optimizer's (the FP32 masters
    are not optimizer state: `master_bytes()` reports them); `loss_scale` is the scaler's S;
    `unscale_(grads)` works like torch.amp.GradScaler.unscale_; `step(grads=None, closure=None)`
    returns what the wrapped step returns, and `last_step_skipped` is True after a step that
    found inf/NaN gradients (parameters, masters and optimizer state untouched).

    optimizer: an `optim.Optimizer` built on the model's arrays (before its first step).
    param_format: the format the model's weights are stored in ("fp16", "bf16", "nvfp4", ...).
    master_weights: keep FP32 masters (the optimizer updates them; the model gets a rounded copy).
        Without masters the optimizer updates the model's arrays directly and they are rounded
        back to `param_format` after every step -- tiny updates are lost (update stagnation).
    grad_format: the format the model's parameter gradients arrive in (default: param_format for
        fp16/bf16, else fp32). Gradients are rounded to it before unscaling, which is where an
        unscaled fp16 gradient underflows; `last_underflow` reports the fraction that did.
    scaler: a `LossScaler` / `DynamicLossScaler` (default: a static scaler with S = 1).
    keep_fp32: names (or a predicate name, array -> bool) of parameters left in float32; by
        default, for block formats, every parameter with ndim < 2 (biases, norm gains).
    rounding: "nearest" or "stochastic" rounding of the model's weights (rng: seed or Generator;
        its state is part of `state_dict`, so a resumed run rounds as the uninterrupted one).

    A zeroth-order optimizer (``uses_gradients`` False) is stepped with ``step(closure=fn)``; with
    masters, the model is rewritten from the perturbed masters before every call of ``fn`` (so
    ``fn`` evaluates the low-precision model at the perturbed point). Loss scaling does not apply.

    Counters: `skipped_steps`, `steps`; `last_underflow` / `underflow_history` (fraction of nonzero
    parameter-gradient values that `grad_format` flushed to 0); `last_stalled` / `stalled_history`
    (fraction of the values the optimizer changed whose low-precision model copy did not change:
    updates below half an ulp -- lost for good without masters, accumulated in the master with).
    Optimizer state stays FP32 in both modes (the lecture's point is the weight update itself).
    """

    def __init__(self, optimizer, param_format: str = "fp16", master_weights: bool = True,
                 grad_format: str | None = None, scaler: LossScaler | None = None,
                 keep_fp32=None, rounding: str = "nearest", rng=None):
        if param_format not in P.ALL_FORMATS:
            raise ValueError(f"MixedPrecisionOptimizer: unknown param_format {param_format!r}; "
                             f"choose one of {list(P.ALL_FORMATS)}")
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "step"):
            raise TypeError("MixedPrecisionOptimizer wraps an optim.Optimizer instance "
                            f"(got {type(optimizer).__name__})")
        if getattr(optimizer, "state", None):
            raise ValueError("MixedPrecisionOptimizer: wrap the optimizer before its first step "
                             "(its state already refers to the old parameter arrays)")
        if grad_format is None:
            grad_format = param_format if param_format in ("fp16", "bf16") else "fp32"
        self.optimizer = optimizer
        self.param_format = param_format
        self.grad_format = grad_format
        self.master_weights = bool(master_weights)
        self.scaler = scaler if scaler is not None else LossScaler(1.0)
        self.rounding = rounding
        self.rng = np.random.default_rng(rng) if rounding == "stochastic" else None
        self.model_params = {n: p for g in optimizer.param_groups for n, p in g["params"].items()}
        for n, p in self.model_params.items():
            if p.dtype != np.float32:
                raise TypeError(f"MixedPrecisionOptimizer: parameter {n!r} is {p.dtype}; the "
                                f"emulation keeps low-precision values in float32 arrays")
        if keep_fp32 is None:
            keep = (lambda n, p: p.ndim < 2) if param_format in P.BLOCK_FORMATS else (lambda n, p: False)
        elif callable(keep_fp32):
            keep = keep_fp32
        else:
            names = set(keep_fp32)
            keep = lambda n, p: n in names  # noqa: E731
        self.low = {n for n, p in self.model_params.items() if not keep(n, p)}
        self.masters = {}
        if self.master_weights:
            for g in optimizer.param_groups:
                for n in list(g["params"]):
                    m = g["params"][n].astype(np.float32, copy=True)
                    self.masters[n] = m
                    g["params"][n] = m  # the optimizer now updates the fp32 master
        self.steps = 0
        self.skipped_steps = 0
        self.last_step_skipped = False
        self.last_underflow = 0.0
        self.underflow_history: list[float] = []
        self.last_stalled = 0.0
        self.stalled_history: list[float] = []
        self._found_inf = None  # set by unscale_ until the step that consumes it
        self._rng_before_write = None
        self._write_model()

    # -- the optimizer interface --------------------------------------------------------
    @property
    def uses_gradients(self) -> bool:
        return self.optimizer.uses_gradients

    @property
    def param_groups(self) -> list:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict:
        return self.optimizer.state

    def state_bytes(self) -> int:
        """The wrapped optimizer's state bytes (masters excluded: see `master_bytes`)."""
        return self.optimizer.state_bytes()

    def expected_state_bytes(self) -> int:
        return self.optimizer.expected_state_bytes()

    def master_bytes(self) -> int:
        """Bytes of the FP32 master copies (0 without master weights)."""
        return sum(m.nbytes for m in self.masters.values())

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    def trainable_names(self):
        return self.optimizer.trainable_names()

    @property
    def uses_closure(self) -> bool:
        return self.optimizer.uses_closure

    # -- helpers ------------------------------------------------------------------------
    def _round(self, a: np.ndarray) -> np.ndarray:
        return P.quantize(a, self.param_format, self.rounding, self.rng)

    def sync_model_(self) -> None:
        """Rewrite the model's arrays from the masters (round them in place without masters) after
        something other than ``step`` changed the arrays the optimizer holds, e.g. LocalSGD's
        average of the workers' masters; otherwise the model would keep its own values until the
        next step."""
        self._write_model()

    def _write_model(self):
        """Model arrays <- param_format(master) (or <- param_format(themselves) without masters)."""
        if self.rng is not None:  # kept so that a resumed run can redo this very rounding
            self._rng_before_write = self.rng.bit_generator.state
        for n, p in self.model_params.items():
            src = self.masters[n] if self.master_weights else p
            if n in self.low:
                p[...] = self._round(src)
            elif self.master_weights:
                p[...] = src

    def backward(self, loss, retain_graph: bool = False):
        """loss.backward() with the loss scaled by the scaler's S."""
        self.scaler.backward(loss, retain_graph=retain_graph)

    def _check_grads(self, grads, where: str):
        """Validate before the scaler and the counters change: a rejected call must not grow S."""
        if not isinstance(grads, dict):
            raise TypeError(f"MixedPrecisionOptimizer.{where}: expected a dict name -> ndarray, got "
                            f"{type(grads).__name__}")
        unknown = [n for n in grads if n not in self.model_params]
        if unknown:
            raise ValueError(f"MixedPrecisionOptimizer.{where}: gradients for unknown parameters {unknown}")
        missing = [n for n in self.model_params if n not in grads]
        if missing:
            raise ValueError(f"MixedPrecisionOptimizer.{where}: no gradient for parameter(s) {missing} "
                             "(pass None explicitly to skip a parameter this step)")
        for n, g in grads.items():
            if g is not None and np.shape(g) != self.model_params[n].shape:
                raise ValueError(f"MixedPrecisionOptimizer.{where}: gradient of {n!r} has shape "
                                 f"{np.shape(g)}, parameter has {self.model_params[n].shape}")

    # -- the step -----------------------------------------------------------------------
    def unscale_(self, grads: dict) -> None:
        """Turn the backpropagated gradients of S·loss into true gradients, IN PLACE in ``grads``:
        each is rounded to grad_format (where underflow happens) and divided by S in float32 (the
        entries are replaced by new float32 arrays); inf/NaN is recorded for the next `step`,
        which then does not unscale again. Call it at most once per step (then clip, inspect, ...)."""
        if self._found_inf is not None:
            raise RuntimeError("MixedPrecisionOptimizer.unscale_: already called since the last step(); "
                               "the gradients are unscaled already")
        self._check_grads(grads, "unscale_")
        stored, nz, under = {}, 0, 0
        for n, g in grads.items():
            if g is None:
                stored[n] = None
                continue
            g32 = np.asarray(g, dtype=np.float32)
            q = P.quantize(g32, self.grad_format) if self.grad_format != "fp32" else g32
            counts = _nonzero_and_flushed(g32, q)
            nz, under = nz + counts[0], under + counts[1]
            stored[n] = q
        self.last_underflow = under / nz if nz else 0.0
        self.underflow_history.append(self.last_underflow)
        unscaled, finite = self.scaler.unscale(stored)
        grads.update(unscaled)
        self._found_inf = not finite

    def step(self, grads: dict | None = None, closure=None):
        """One step of the wrapped optimizer; returns what its step returns.

        First-order: ``grads`` are the gradients of S·loss (or ``closure() -> (loss, grads)``
        gives them). Unless `unscale_` was called since the last step, they are unscaled here (a
        copy: the caller's dict is left as given). On inf/NaN the step is skipped
        (`last_step_skipped`), and a dynamic scaler lowers S. Zeroth-order: ``closure() -> loss``."""
        if not self.uses_gradients:
            return self._zeroth_order_step(grads, closure)
        if closure is not None and self.uses_closure:
            raise NotImplementedError(
                f"MixedPrecisionOptimizer: {type(self.optimizer).__name__} evaluates the loss and gradients "
                "several times per step (step(closure)), each of which would need the masters written to "
                "the model and the gradients unscaled and checked; the wrapper does not do that. Train it "
                "in float32/float64, or drive it with step(grads) (one gradient a step)")
        loss = None
        if grads is None:
            if closure is None:
                raise ValueError("MixedPrecisionOptimizer.step() needs grads or a closure returning "
                                 "(loss, grads)")
            out = closure()
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"MixedPrecisionOptimizer.step: the closure must return (loss, grads), "
                                f"got {type(out).__name__}")
            loss, grads = out
        if self._found_inf is None:
            grads = dict(grads)
            self.unscale_(grads)
        else:
            self._check_grads(grads, "step")
        found_inf, self._found_inf = self._found_inf, None
        self.scaler.update(found_inf)
        self.steps += 1
        if found_inf:
            self.skipped_steps += 1
            self.last_step_skipped = True
            return loss  # parameters (masters and model copies) untouched
        self._update(lambda: self.optimizer.step(grads))
        self.last_step_skipped = self.optimizer.last_step_skipped
        return loss

    def _zeroth_order_step(self, grads, closure):
        if callable(closure):
            # the model must hold low-precision numbers when the loss is evaluated: the masters
            # the optimizer perturbed, rounded; without masters the optimizer perturbed the model
            # arrays themselves in full precision, and rounding them in place here is the
            # low-precision arithmetic being emulated (its drift on restore included)
            def on_model():
                self._write_model()
                return closure()
        else:
            on_model = closure
        try:
            loss = self._update(lambda: self.optimizer.step(grads, closure=on_model))
        except BaseException:
            if self.master_weights:
                self._write_model()  # the model may still hold a perturbed copy
            raise
        self.steps += 1
        self.last_step_skipped = self.optimizer.last_step_skipped
        return loss

    def _update(self, inner_step):
        """Run the wrapped optimizer's step, write the model, record the stalled fraction."""
        # What is about to change: the masters (with them) or the model's arrays (without).
        src = self.masters if self.master_weights else self.model_params
        before_src = {n: src[n].copy() for n in self.low}
        before_model = {n: self.model_params[n].copy() for n in self.low}
        out = inner_step()
        moved = {n: src[n] != before_src[n] for n in self.low}  # the optimizer changed it
        self._write_model()
        tried = sum(int(m.sum()) for m in moved.values())
        stalled = sum(int((moved[n] & (self.model_params[n] == before_model[n])).sum()) for n in self.low)
        self.last_stalled = stalled / tried if tried else 0.0
        self.stalled_history.append(self.last_stalled)
        return out

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self):
        """Optimizer, scaler, masters, counters and the rounding generator (ndarrays and
        scalars only: `optim.flatten_state_dict` stores it)."""
        rng = None if self._rng_before_write is None else json.dumps(self._rng_before_write)
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "masters": {n: m.copy() for n, m in self.masters.items()},
                "steps": self.steps, "skipped_steps": self.skipped_steps, "rng": rng,
                "options": self._options()}

    def _options(self) -> dict:
        """What a saved state must have been saved with (the scaler by kind: a dynamic scaler's
        state in a static one kept the saved scale for good)."""
        return {"param_format": self.param_format, "grad_format": self.grad_format,
                "master_weights": self.master_weights, "scaler": type(self.scaler).__name__}

    def load_state_dict(self, sd):
        where = "MixedPrecisionOptimizer.load_state_dict"
        if (sd.get("rng") is None) != (self.rng is None):
            raise ValueError(f"{where}: the state_dict was saved with "
                             f"{'nearest' if sd.get('rng') is None else 'stochastic'} rounding, this "
                             f"wrapper uses {self.rounding!r}")
        mine = self._options()
        for k, saved in (sd.get("options") or {}).items():      # (none before 2026-12-07)
            if saved != mine.get(k):
                raise ValueError(f"{where}: the state_dict was saved with {k}={saved!r}, this wrapper has "
                                 f"{k}={mine.get(k)!r}; build it with the saved options")
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scaler.load_state_dict(sd["scaler"])
        for n, m in sd["masters"].items():
            self.masters[n][...] = m
        self.steps, self.skipped_steps = int(sd["steps"]), int(sd["skipped_steps"])
        self._found_inf = None
        if self.rng is not None:
            # Redo the saved run's last write of the model with the generator state it had then:
            # the model copy and the generator both end where the saved run's did.
            self.rng.bit_generator.state = json.loads(sd["rng"])
        self._write_model()

    def __repr__(self):
        return (f"MixedPrecisionOptimizer({type(self.optimizer).__name__}, param_format="
                f"{self.param_format!r}, master_weights={self.master_weights}, grad_format="
                f"{self.grad_format!r}, scale={self.scaler.scale:g}, skipped={self.skipped_steps})")
