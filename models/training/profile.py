"""Peak memory of one training step (or one forward pass), split into what holds it.

    from models.training import Trainer, lm_loss
    from models.training.profile import forward_memory, step_memory
    trainer = Trainer(model, lm_loss, opt, batches, steps=1)
    mem = step_memory(trainer, (x, y))          # StepMemory(peak=..., params=..., grads=..., ...)
    fwd = forward_memory(model, lm_loss, (x, y))

What is measured, and how:

* ``peak`` (primary, tracemalloc): the bytes held before the step -- the parameters and the
  optimizer state, counted exactly by ``nbytes`` -- plus the growth of the traced peak over the
  step: gradients, activations kept for backward, transient buffers. NumPy reports its
  allocations to tracemalloc, and the Numba kernels' outputs are NumPy arrays too. The held
  bytes are counted rather than taken from the traced baseline, which also holds one-off caches
  of the warm-up.
* A warm-up step first creates the optimizer state (AdamW's m and v, LoZO's V) and compiles or
  loads the kernels; the gradients are then dropped, so the ones the measured step makes count.
  The step functions therefore take two or three real steps on the trainer's model.
* ``rss_peak`` (cross-check, Linux only): the same step again without tracemalloc, as the
  growth of the peak RSS over the step (after ``malloc_trim`` and a VmHWM reset) plus the same
  held bytes. glibc raises its mmap threshold after large frees and then keeps freed buffers in
  the heap, so the RSS would count memory that is no longer live (MeZO's RSS peak exceeded the
  forward's by about the size of the parameters); asking for the RSS therefore fixes the
  threshold at 64 KiB for the rest of the process (``mallopt(M_MMAP_THRESHOLD)``, the same as
  ``MALLOC_MMAP_THRESHOLD_=65536``): every larger buffer goes to mmap and is returned on free.
* ``ledger_activations_peak``: ``minigrad.memory``'s own count of the activations saved for
  backward (0 for a step that builds no graph).
"""
from __future__ import annotations

import ctypes
import gc
import tracemalloc
from dataclasses import asdict, dataclass

import minigrad
import minigrad.memory
from minigrad import amp

__all__ = ["StepMemory", "step_memory", "forward_memory"]


@dataclass
class StepMemory:
    """Bytes at the peak of one step: ``peak`` = params + optimizer_state + grads + other;
    ``optimizer_state`` counts a mixed-precision wrapper's FP32 master copies too."""

    peak: int
    params: int
    grads: int
    optimizer_state: int
    other: int                      # activations kept for backward, transient buffers
    ledger_activations_peak: int
    rss_peak: int | None = None     # the RSS-based peak (None: not measured or not Linux)

    def as_dict(self) -> dict:
        return asdict(self)


def step_memory(trainer, batch, *, rss: bool = True) -> StepMemory:
    """Peak memory of one ``trainer.train_step(batch)``.

    The optimizer must report its state with ``state_bytes()`` (every ``optim.Optimizer`` does).
    Takes a warm-up step and the measured step (and one more with ``rss``) on the trainer."""
    opt = trainer.optimizer
    if not callable(getattr(opt, "state_bytes", None)):
        raise TypeError(f"step_memory: the optimizer {type(opt).__name__} has no state_bytes(), so "
                        f"its state cannot be counted; pass an optim.Optimizer")
    return _measure(trainer.model, opt, lambda: trainer.train_step(batch), rss)


def forward_memory(model, loss_fn, batch, *, autocast=None, rss: bool = True) -> StepMemory:
    """Peak memory of one forward pass ``loss_fn(model, batch)`` without a graph (no_grad):
    the inference baseline a zeroth-order step is compared with."""
    def forward():
        with minigrad.no_grad(), amp.autocast(autocast):
            loss_fn(model, batch)
    return _measure(model, None, forward, rss)


def _measure(model, opt, run, rss) -> StepMemory:
    if rss:
        _fixed_mmap_threshold()
    p_bytes = sum(p.data.nbytes for p in model.parameters())
    run()                              # warm-up: optimizer state, JIT compilation
    model.zero_grad()
    s_bytes = minigrad.memory.optimizer_bytes(opt) if opt is not None else 0   # (masters held before tracing)
    gc.collect()
    tracemalloc.start()
    try:
        ledger = minigrad.memory.track(model, opt)
        with ledger:
            run()
        grow = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    g_bytes = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    mem = StepMemory(peak=int(p_bytes + s_bytes + grow), params=int(p_bytes), grads=int(g_bytes),
                     optimizer_state=int(s_bytes), other=int(grow - g_bytes),
                     ledger_activations_peak=int(ledger.peak.get("activations", 0)))
    del ledger
    model.zero_grad()
    gc.collect()
    if rss and _reset_rss_peak():
        r0 = _proc_kb("VmRSS")
        run()
        mem.rss_peak = int(p_bytes + s_bytes + (_proc_kb("VmHWM") - r0) * 1024)
    return mem


def _proc_kb(field):
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _fixed_mmap_threshold(nbytes=64 * 1024) -> bool:
    """glibc: send every buffer >= ``nbytes`` to mmap (mallopt M_MMAP_THRESHOLD = -3), so that
    freed buffers leave the RSS. False where there is no glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes)))
    except (OSError, AttributeError):
        return False


def _reset_rss_peak() -> bool:
    """Linux: return freed heap pages to the OS (glibc malloc_trim), then reset VmHWM (the peak
    RSS) to the current RSS by writing 5 to /proc/self/clear_refs. False elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_kb("VmRSS") is not None
    except (OSError, AttributeError):
        return False
