"""Where the memory and the FLOPs of training go, measured live.

Training memory is model + gradients + optimizer state + activations (Lecture 5). This module
measures them for any model; `models.costs.gpt_costs` predicts them exactly for the GPT and sets
the lecture's formulas beside them.

1. `track()` -- a live ledger. It listens on the core's single `save_for_backward` path
   (`minigrad.autograd.add_saved_listener`) and records the bytes of every category, with the
   peak of each over the block::

       with minigrad.memory.track(model, optimizer) as m:
           loss = model(x, y)[1]; loss.backward(); optimizer.step(grads)
       print(m.report()); m.peak["activations"]

2. `count_flops()` -- counts matmul FLOPs (2·m·n·k per product), forward and backward, through
   the core's op listener; every op says the FLOPs of its forward (`Function.flops`). It gives
   model FLOPs utilisation (MFU, Chowdhery et al. 2022 "PaLM", arXiv 2204.02311, appendix B)
   against a peak you supply.

How activation bytes are counted: a saved array keeps memory alive for backward. Arrays that
are parameters (any `nn.Parameter` input of the op, or the model's parameters) are counted as
parameters, not activations. Views are resolved to the memory they span inside their base
array, and overlapping spans are counted once, so two ops that save the same array (or views of
one array, like q, k and v sliced from one fused projection) cost its bytes once. Python
objects count 0; a Python number an op saves as a 0-d array counts its itemsize (the 2.0 of
x * 2.0 is 4 bytes in float32), as the memory it holds. Not counted: transient buffers inside a
forward or backward, and the gradients flowing between ops during backward (they live for one
op at a time).
"""
from __future__ import annotations

import time
import weakref

import numpy as np

from . import autograd
from .checkpointing import is_recomputing
from .nn import Parameter
from .tensor import matmul_flops

__all__ = [
    "track", "MemoryLedger", "optimizer_bytes", "count_flops", "FlopCounter", "matmul_flops",
    "measure_peak_flops", "fmt_bytes", "CATEGORIES", "LABELS",
]

CATEGORIES = ("params", "grads", "optimizer", "activations")
LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
          "activations": "activations"}


def fmt_bytes(n: float) -> str:
    """1536 -> '1.50 KiB' (binary units)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


# ============================================================================ live ledger
def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _span(a: np.ndarray) -> tuple[int, int]:
    """[low, high) byte addresses that the array's elements occupy."""
    if a.size == 0:
        return (0, 0)
    lo = hi = a.__array_interface__["data"][0]
    for n, st in zip(a.shape, a.strides):
        if st < 0:
            lo += st * (n - 1)
        else:
            hi += st * (n - 1)
    return (lo, hi + a.itemsize)


def _union_length(spans) -> int:
    total, end = 0, None
    for lo, hi in sorted(spans):
        if end is None or lo >= end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


class MemoryLedger:
    """Live bytes of parameters, gradients, optimizer state and saved activations, with peaks.

    Use through `track(...)`. Attributes: `current` and `peak` (dicts by category, plus
    "total" = the peak of the sum at one moment), `peak_by_op` (activation bytes by op name at
    the activation peak), `events` (number of save/free events seen).
    """

    def __init__(self, model=None, optimizer=None, params=None):
        self._params: dict[int, object] = {}  # id(tensor) -> Parameter (strong ref while tracking)
        self._param_roots: set[int] = set()
        if model is not None:
            for _, p in model.named_parameters():
                self._add_param(p)
        for p in (params or ()):
            self._add_param(p)
        if optimizer is None:
            self._optimizers = []
        elif isinstance(optimizer, (list, tuple)):
            self._optimizers = list(optimizer)
        else:
            self._optimizers = [optimizer]
        for o in self._optimizers:
            if not hasattr(o, "state_bytes"):
                raise TypeError(f"track: optimizer {type(o).__name__} has no state_bytes(); pass an "
                                "optim.Optimizer")
        self._roots: dict[int, dict] = {}   # id(root) -> {"spans": {span: refs}, "bytes": int, "op": name}
        self._ctx: dict[int, list] = {}     # id(ctx) -> [(root id, span), ...]
        self._by_op: dict[str, int] = {}
        self.current = {c: 0 for c in CATEGORIES}
        self.current["total"] = 0
        self.peak = dict(self.current)
        self.peak_by_op: dict[str, int] = {}
        self.events = 0
        self._active = False

    # ------------------------------------------------------------------ parameters
    def _add_param(self, p):
        if id(p) not in self._params:
            self._params[id(p)] = p
            self._param_roots.add(id(_root(p.data)))

    # ------------------------------------------------------------------ listener
    def _listener(self, event, ctx, objs):
        self.events += 1
        if event == "save":
            for t in ctx.inputs:
                if isinstance(t, Parameter):
                    self._add_param(t)
            self._save(ctx, objs)
        else:
            self._release(id(ctx), sample=False)
        self._sample()

    def _save(self, ctx, objs):
        key = id(ctx)
        if key in self._ctx:  # an op saved twice: the second call replaces the first
            self._release(key, sample=False)
        entries = []
        for arr in autograd.saved_arrays(objs):
            root = _root(arr)
            rid = id(root)
            if rid in self._param_roots:
                continue
            span = _span(arr)
            if span[0] == span[1]:
                continue
            rec = self._roots.setdefault(rid, {"spans": {}, "bytes": 0, "op": ctx.name})
            rec["spans"][span] = rec["spans"].get(span, 0) + 1
            entries.append((rid, span))
            self._recount(rid)
        self._ctx[key] = entries
        # a graph dropped without backward never sends "free": catch its garbage collection
        weakref.finalize(ctx, self._release, key)

    def _release(self, key, sample=True):
        if not self._active:  # a finalizer firing after the block ended
            return
        entries = self._ctx.pop(key, None)
        if not entries:
            return
        for rid, span in entries:
            rec = self._roots[rid]
            rec["spans"][span] -= 1
            if rec["spans"][span] == 0:
                del rec["spans"][span]
            self._recount(rid)
            if not rec["spans"]:
                del self._roots[rid]
        if sample:
            self._sample()

    def _recount(self, rid):
        rec = self._roots[rid]
        new = _union_length(rec["spans"].keys())
        delta = new - rec["bytes"]
        rec["bytes"] = new
        self.current["activations"] += delta
        self._by_op[rec["op"]] = self._by_op.get(rec["op"], 0) + delta

    # ------------------------------------------------------------------ sampling
    def _sample(self):
        cur = self.current
        cur["params"] = sum(p.data.nbytes for p in self._params.values())
        cur["grads"] = sum(p.grad.nbytes for p in self._params.values() if p.grad is not None)
        cur["optimizer"] = sum(optimizer_bytes(o) for o in self._optimizers)
        cur["total"] = sum(cur[c] for c in CATEGORIES)
        for k, v in cur.items():
            if v > self.peak[k]:
                self.peak[k] = v
                if k == "activations":
                    self.peak_by_op = {op: n for op, n in self._by_op.items() if n}

    def snapshot(self) -> dict:
        """Record the current bytes now (e.g. after `optimizer.step`); returns `current`."""
        self._sample()
        return dict(self.current)

    # ------------------------------------------------------------------ context
    def __enter__(self):
        self._active = True
        autograd.add_saved_listener(self._listener)
        self._sample()
        return self

    def __exit__(self, *exc):
        autograd.remove_saved_listener(self._listener)
        self._sample()
        self._active = False
        self._params = {}  # do not keep the model alive through the ledger
        self._optimizers = []
        return False

    # ------------------------------------------------------------------ report
    def report(self, expected=None) -> str:
        """A table of live (at the end) and peak bytes per category, then the activations at
        their peak by the op that saved them.

        `expected` sets a prediction beside the measurement, e.g. `models.costs.gpt_costs(...)`:
        any object with `ledger_columns()` -> {column title: {category or "total": bytes}} (more
        columns of the table) and `ledger_lines()` -> list of lines printed after it."""
        columns = expected.ledger_columns() if expected is not None else {}
        lines = [f"{'category':<18}{'end':>13}{'peak':>13}" + "".join(f"{t:>13}" for t in columns)]
        for c in CATEGORIES + ("total",):
            lines.append(f"{LABELS.get(c, 'total'):<18}{fmt_bytes(self.current[c]):>13}"
                         f"{fmt_bytes(self.peak[c]):>13}" + "".join(f"{fmt_bytes(v[c]):>13}" for v in columns.values()))
        lines.append("(total: measured, the sum at the end and its peak over time"
                     + (f"; {', '.join(columns)}: as each column defines it)" if columns else ")"))
        if self.peak_by_op:
            lines += ["", "activations at their peak, by the op that saved them:"]
            for op, n in sorted(self.peak_by_op.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {op:<24}{fmt_bytes(n):>13}")
        if expected is not None:
            lines += expected.ledger_lines()
        return "\n".join(lines)


def optimizer_bytes(opt) -> int:
    """What an optimizer holds beside the parameters: its state, and the FP32 master copies of a
    mixed-precision wrapper (which its state_bytes() leaves out)."""
    masters = getattr(opt, "master_bytes", None)
    return opt.state_bytes() + (masters() if callable(masters) else 0)


def track(model=None, optimizer=None, params=None) -> MemoryLedger:
    """Context manager recording live bytes by category and their peaks.

    model      an nn.Module whose parameters (and their .grad) are counted; without it the
               ledger counts the Parameters it sees as inputs of recorded ops
    optimizer  an optim.Optimizer (or a list): its `state_bytes()` is the optimizer category,
               with a mixed-precision wrapper's FP32 master copies (`master_bytes()`)
    params     extra Parameters/Tensors to count as parameters
    """
    return MemoryLedger(model=model, optimizer=optimizer, params=params)


# ============================================================================ FLOPs
class FlopCounter:
    """Counts matmul FLOPs of every op run inside it (see `count_flops`).

    `unknown_ops`: names of the ops seen that do not say their FLOPs (counted 0)."""

    def __init__(self, peak_flops: float | None = None, strict: bool = False):
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"count_flops: peak_flops must be > 0 (FLOP/s), got {peak_flops}")
        self.peak_flops = peak_flops
        self.strict = strict
        self.unknown_ops: set[str] = set()
        self.forward = 0
        self.backward = 0
        self.recompute = 0  # forwards re-run by activation checkpointing (not model FLOPs)
        self.by_op: dict[str, int] = {}
        self.elapsed = 0.0

    @property
    def total(self) -> int:
        """Model FLOPs: forward + backward (recomputation excluded, as in MFU)."""
        return self.forward + self.backward

    @property
    def hardware_total(self) -> int:
        """FLOPs actually run by the counted matmuls, recomputation included (for HFU)."""
        return self.total + self.recompute

    @property
    def flops_per_second(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else float("nan")

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation: counted FLOPs / elapsed seconds / peak FLOP/s (None without peak)."""
        if self.peak_flops is None:
            return None
        return self.flops_per_second / self.peak_flops

    def _listener(self, event, ctx, payload):
        flops = ctx.fn.flops
        if flops is None:
            if self.strict:
                op = ctx.fn
                raise NotImplementedError(
                    f"count_flops(strict=True): op {op.__module__}.{op.__qualname__} does not say "
                    "its FLOPs; give it a staticmethod flops(ctx) -> int (the matmul FLOPs of one "
                    "forward; flops = staticmethod(minigrad.tensor.no_matmul_flops) for none), or "
                    "count with strict=False, which counts it 0 and lists it in unknown_ops")
            self.unknown_ops.add(ctx.name)
            return
        n = flops(ctx)
        if not n:
            return
        if event == "forward" and is_recomputing():
            self.recompute += n
            key = f"{ctx.name} recompute"
            self.by_op[key] = self.by_op.get(key, 0) + n
            return
        if event == "backward":
            # each operand gradient is one product as large as the forward's (attention: the
            # 4 products dv, dp, dq, dk = twice its 2 forward products). Model FLOPs count both,
            # also when an op skips the gradient of a frozen operand.
            n *= 2
            self.backward += n
        else:
            self.forward += n
        key = f"{ctx.name} {event}"
        self.by_op[key] = self.by_op.get(key, 0) + n

    def __enter__(self):
        self._t0 = time.perf_counter()
        autograd.add_op_listener(self._listener)
        return self

    def __exit__(self, *exc):
        autograd.remove_op_listener(self._listener)
        self.elapsed = time.perf_counter() - self._t0
        return False

    def report(self) -> str:
        lines = [f"matmul FLOPs: forward {self.forward:,}  backward {self.backward:,}  total {self.total:,}"
                 + (f"  (+ {self.recompute:,} recomputed by checkpointing)" if self.recompute else ""),
                 f"time {self.elapsed:.3f} s  ->  {self.flops_per_second / 1e9:.2f} GFLOP/s"]
        if self.peak_flops is not None:
            lines.append(f"MFU {100 * self.mfu:.1f}% of a {self.peak_flops / 1e9:.1f} GFLOP/s peak")
        if self.unknown_ops:
            lines.append(f"not counted (these ops do not say their FLOPs): {', '.join(sorted(self.unknown_ops))}")
        for k, v in sorted(self.by_op.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:<24}{v:>18,}")
        return "\n".join(lines)


def count_flops(peak_flops: float | None = None, strict: bool = False) -> FlopCounter:
    """Context manager counting matmul FLOPs (2·m·n·k per product), forward and backward, also
    under no_grad. Each op says the FLOPs of its forward (`Function.flops`: MatMul, Linear and
    the attention ops do matrix products, the others 0); backward counts twice the forward, one
    product per operand gradient. An op that does not say (a user-defined Function without
    `flops`) is counted 0 and named in `.unknown_ops`; with `strict=True` it raises instead.

    `peak_flops` (FLOP/s) is the machine's peak, which you supply (e.g. cores × GHz × FLOPs per
    cycle, or `measure_peak_flops()`); then `.mfu` = counted FLOPs / time / peak. Counted are
    *model* FLOPs: work a fused kernel redoes (flash attention recomputes q·kᵀ in backward) or
    skips (masked tiles) does not change the count, as in PaLM's MFU.
    """
    return FlopCounter(peak_flops, strict)


def measure_peak_flops(n: int = 1024, repeat: int = 5, dtype=np.float32) -> float:
    """A practical peak: the best FLOP/s of an n×n float32 matmul over `repeat` runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm up BLAS threads
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
