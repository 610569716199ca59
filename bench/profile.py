"""Where one GPT training step spends its time: minigrad-numba beside PyTorch CPU, part by part.

    python -m bench.profile [--presets tiny,small,medium] [--rounds 3] [--threads 2] [--steps N]
                            [--warmup W] [--markdown]

For each preset (`models.gpt.preset`) the step of `bench.train` (same model, AdamW, random
tokens) is profiled for minigrad (numba backend) and for PyTorch, each in its own fresh process
(`python -m bench.profile --worker minigrad|torch PRESET ...`), so that the thread pools of one
never disturb the other. A worker runs W warm-up steps, times N steps without the profiler
(their median is its un-profiled step), then profiles N more steps and prints one JSON line.
As in `bench.train`, this runs in `--rounds` rounds (default 3): each round starts one worker
per side and preset, minigrad first in the first round, PyTorch first in the second, and so on,
so slow drift of a shared machine does not always fall on the same side. The parent prints one
table per preset (`--markdown`: markdown tables, for the docs) of medians over the rounds, and
under it each side's un-profiled step in every round, which shows the spread.

Rows: the step's time split into GEMM, attention, layer norm, GELU, cross-entropy, embedding,
optimizer, other ops and tape + Python overhead, in ms per step. A worker measures each part as
the mean over its profiled steps; the parts add up to its profiled step: the wall time of a step
under the profiler. The table gives, for each side, the median over the rounds of each part, of
the profiled step (the sum of the parts) and of the un-profiled step; the medians of the parts
need not add up exactly to the median of the sums. The profiled step's excess over the
un-profiled one is what profiling itself costs. Every time is wall time in the thread that runs
the step: a kernel that also runs on the pool's threads counts once, from its start to the end
of the slowest thread, which is what the step waits for.

* minigrad: while profiling, the `forward` and `backward` of every `minigrad.Function` subclass
  are wrapped with perf_counter timers, and so is the optimizer's `step`. An op's time is its
  forward's and backward's self time (an op that applies other ops inside counts only its own
  work), summed by class name and mapped to parts by `MINIGRAD_PARTS`. Linear includes its bias
  (added in the GEMM's output; its gradient a row sum). Tape + Python overhead = profiled step
  - ops - optimizer: `Function.apply` (contexts, Tensors), the topological sort and gradient
  accumulation of backward, zero_grad, drawing the batch, the trainer's Python.
* PyTorch: `torch.profiler` (CPU activity) records every aten op and autograd node. The
  optimizer is the total time of its `Optimizer.step#AdamW.step` record, with everything run
  inside it. Every other aten op contributes its self time to the part of the nearest name,
  itself first and then its callers, that `TORCH_PARTS` knows (aten::t called by aten::linear
  is GEMM, aten::fill_ called by nll_loss_backward is cross-entropy, aten::cat called by
  SplitBackward0 is attention, as minigrad's QKVAttention splits and merges the heads); the rest
  is other ops. Tape + Python overhead = profiled step - all parts: the autograd engine and its
  nodes, gradient accumulation (AccumulateGrad, and the engine's aten::add(_) of two gradients of
  one tensor, e.g. of the residual stream), the Python of the model and the step, and the
  dispatcher's time between ops. The profiler's "CPU time" is wall time in the calling thread,
  like minigrad's timers; the intra-op (OpenMP) threads record no events of their own.

Read a row's difference as where minigrad loses (positive) or gains (negative) against PyTorch.
The two columns are measured in different processes at different moments: on a shared machine,
read a small difference against the per-round spread below the table, and compare the
un-profiled step with `bench.train`. Below each table, the largest "other ops" of each side
(median ms over the rounds) are named. Run by hand, never in CI.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections import defaultdict

from bench import kernels as bench_kernels

PARTS = ["GEMM", "attention", "layer norm", "GELU", "cross-entropy", "embedding", "optimizer",
         "other ops", "tape + Python overhead"]
OVERHEAD = "tape + Python overhead"
PRESET_STEPS = {"tiny": 10, "small": 5, "medium": 3}

# minigrad op (Function subclass) -> part; an op not listed is "other ops" (in GPT: the residual
# Add, Reshape...). Linear is x @ W^T with its bias, MatMul the plain `@`; QKVAttention is GPT's
# fused split-heads + causal attention + merge-heads, Attention the separate-q/k/v form.
MINIGRAD_PARTS = {
    "Linear": "GEMM", "MatMul": "GEMM",
    "QKVAttention": "attention", "Attention": "attention",
    "LayerNorm": "layer norm",
    "GELU": "GELU",
    "CrossEntropy": "cross-entropy", "LogSoftmax": "cross-entropy",
    "Embedding": "embedding",
}

# PyTorch: a piece of an aten op's or autograd node's name (lower case, underscores removed, so
# that "gelu_backward" and "GeluBackward0" both contain "gelu") -> part. "mmbackward" is the
# backward of mm, addmm and bmm. "split" (aten::split, and SplitBackward0's aten::cat) is
# attention because minigrad's QKVAttention includes splitting qkv into heads. AccumulateGrad and
# randint are overhead, as minigrad's gradient accumulation and batch drawing are: neither is an
# op there.
TORCH_PARTS = {
    "aten::mm": "GEMM", "aten::addmm": "GEMM", "aten::bmm": "GEMM", "aten::matmul": "GEMM",
    "aten::linear": "GEMM", "mmbackward": "GEMM",
    "scaleddotproduct": "attention", "split": "attention",
    "layernorm": "layer norm",
    "gelu": "GELU",
    "logsoftmax": "cross-entropy", "nllloss": "cross-entropy", "crossentropy": "cross-entropy",
    "embedding": "embedding",
    "accumulategrad": OVERHEAD, "randint": OVERHEAD,
}
TORCH_OPTIMIZER = "Optimizer.step#"  # the record_function torch.optim wraps every step in
TORCH_ENGINE = "autograd::engine::evaluate_function"  # the record around each backward node


# ----------------------------------------------------------------------------- minigrad
class Stopwatch:
    """Self times of nested timed calls: each call's wall time minus that of the timed calls it
    made, so that nothing is counted twice."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self._inner = [0.0]  # per open call: time spent in timed calls it made

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            self._inner.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.seconds[name] += dt - self._inner.pop()
                self._inner[-1] += dt
        return timed


def function_classes(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from function_classes(sub)


def timed_ops(watch):
    """Wrap forward and backward of every Function subclass defined so far; returns the undo."""
    from minigrad.tensor import Function

    originals = [(cls, name, cls.__dict__[name]) for cls in set(function_classes(Function))
                 for name in ("forward", "backward") if name in cls.__dict__]
    for cls, name, method in originals:
        setattr(cls, name, staticmethod(watch.wrap(cls.__name__, method.__func__)))

    def undo():
        for cls, name, method in originals:
            setattr(cls, name, method)
    return undo


def profile_minigrad(preset, steps, warmup):
    from bench.train import minigrad_trainer

    step, tokens, trainer = minigrad_trainer(preset, "numba")
    step_ms = unprofiled_ms(step, steps, warmup)

    watch = Stopwatch()
    opt = trainer.optimizer
    opt.step = watch.wrap("optimizer", opt.step)  # an instance attribute, deleted after
    undo = timed_ops(watch)
    try:
        wall = timed_steps(step, steps)
    finally:
        undo()
        del opt.step
    parts = dict.fromkeys(PARTS, 0.0)
    other = defaultdict(float)
    for name, s in watch.seconds.items():
        part = "optimizer" if name == "optimizer" else MINIGRAD_PARTS.get(name, "other ops")
        parts[part] += s
        if part == "other ops":
            other[name] += s
    return result(parts, other, wall, steps, step_ms, tokens)


# ----------------------------------------------------------------------------- PyTorch
def torch_part(event):
    """The part of the nearest name in the event's call chain (itself first) that TORCH_PARTS
    knows, or "other ops". An add right under the engine's record of a node is the engine summing
    two gradients of one tensor (the residual stream's, at the layer norm's node): gradient
    accumulation, overhead as in minigrad's backward, not the node's part."""
    parent = event.cpu_parent
    if (event.name in ("aten::add", "aten::add_") and parent is not None
            and parent.name.startswith(TORCH_ENGINE)):
        return OVERHEAD
    while event is not None:
        name = event.name.lower().replace("_", "")
        for piece, part in TORCH_PARTS.items():
            if piece in name:
                return part
        event = event.cpu_parent
    return "other ops"


def in_optimizer(event):
    """True for an event run inside the optimizer's step (not for the step's own record)."""
    event = event.cpu_parent
    while event is not None:
        if event.name.startswith(TORCH_OPTIMIZER):
            return True
        event = event.cpu_parent
    return False


def profile_torch(preset, steps, warmup):
    from torch.profiler import ProfilerActivity, profile

    from bench.train import torch_trainer

    step, tokens = torch_trainer(preset)
    step_ms = unprofiled_ms(step, steps, warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = timed_steps(step, steps)

    # The optimizer's record holds the whole step() (Python loop and ops), its total time counts
    # once; the ops inside it are skipped so no time is counted twice. Outside it, each aten op
    # counts its self time: nested aten calls then add up to the outermost op's total.
    parts = dict.fromkeys(PARTS, 0.0)
    other = defaultdict(float)
    for ev in prof.events():
        if in_optimizer(ev):
            continue
        if ev.name.startswith(TORCH_OPTIMIZER):
            parts["optimizer"] += ev.cpu_time_total * 1e-6
        elif ev.name.startswith("aten::"):
            part = torch_part(ev)
            if part == OVERHEAD:
                continue  # counted in what the other parts leave of the step (result)
            parts[part] += ev.self_cpu_time_total * 1e-6
            if part == "other ops":
                other[ev.name] += ev.self_cpu_time_total * 1e-6
    return result(parts, other, wall, steps, step_ms, tokens)


# ----------------------------------------------------------------------------- worker helpers
def unprofiled_ms(step, steps, warmup):
    """Median ms of `step()` over `steps` runs after `warmup` runs (compiles, first touches)."""
    return bench_kernels.median_time(step, steps, warmup) * 1e3


def timed_steps(step, steps):
    """Summed wall seconds of `steps` calls of `step()`, each after a gc.collect (not timed)."""
    total = 0.0
    for _ in range(steps):
        gc.collect()
        t0 = time.perf_counter()
        step()
        total += time.perf_counter() - t0
    return total


def result(parts, other, wall, steps, step_ms, tokens):
    """Per-step ms; the overhead is what the timed parts leave of the profiled step. Every "other
    op" is kept (not only the largest), so the parent can take each one's median over rounds."""
    parts[OVERHEAD] = wall - sum(s for p, s in parts.items() if p != OVERHEAD)
    return {"step_ms": step_ms, "profiled_ms": wall / steps * 1e3, "tokens": tokens,
            "parts": {p: s / steps * 1e3 for p, s in parts.items()},
            "other_ops": {n: s / steps * 1e3 for n, s in other.items()}}


def worker(impl, preset, threads, steps, warmup):
    bench_kernels.setup_threads(threads)  # before NumPy, Numba or torch start a pool
    # the process settings of bench.train's workers: minigrad's configure_runtime(), or for
    # PyTorch the same malloc settings without loading Numba or SciPy
    bench_kernels.configure_worker("torch" if impl == "torch" else "numba", threads)
    out = profile_torch(preset, steps, warmup) if impl == "torch" else profile_minigrad(preset, steps, warmup)
    print(json.dumps(out))


# ----------------------------------------------------------------------------- parent
def table(rows, markdown):
    """Rows of cells (the first row the header; columns after the first right-aligned)."""
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|---|" + "---:|" * (len(rows[0]) - 1))
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join(line(r) for r in rows)


def median_result(rounds):
    """One side's worker results over the rounds -> the medians the table shows: of each part, of
    the profiled step (each round's sum of the parts), of the un-profiled step, and of each other
    op (0 in a round where it did not run)."""
    median = statistics.median
    names = {name for res in rounds for name in res["other_ops"]}
    other = {name: median([res["other_ops"].get(name, 0.0) for res in rounds]) for name in names}
    return {"parts": {part: median([res["parts"][part] for res in rounds]) for part in PARTS},
            "profiled_ms": median([res["profiled_ms"] for res in rounds]),
            "step_ms": median([res["step_ms"] for res in rounds]),
            "top_other": sorted(other.items(), key=lambda kv: -kv[1])[:5]}


def preset_table(mg, pt, markdown):
    """The table of one preset from the two sides' medians (`median_result`)."""
    def share(res, part):
        return f"{res['parts'][part] / res['profiled_ms']:.0%}"

    rows = [["part", "minigrad ms", "share", "PyTorch ms", "share", "minigrad - PyTorch ms"]]
    for part in PARTS:
        a, b = mg["parts"][part], pt["parts"][part]
        rows.append([part, f"{a:.2f}", share(mg, part), f"{b:.2f}", share(pt, part), f"{a - b:+.2f}"])
    totals = (("profiled step (sum of the parts)", "profiled_ms"), ("un-profiled step", "step_ms"))
    for label, key in totals:
        a, b = mg[key], pt[key]
        rows.append([label, f"{a:.2f}", "", f"{b:.2f}", "", f"{a - b:+.2f}"])
    return table(rows, markdown)


def steps_for(args, preset):
    return args.steps or PRESET_STEPS.get(preset, 3)


SIDES = {"minigrad": "minigrad", "torch": "PyTorch"}  # worker IMPL -> the name in the output


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_kernels.add_protocol_args(ap, warmup=2, steps_help="timed and profiled steps per preset (default: " +
                                    ", ".join(f"{k} {v}" for k, v in PRESET_STEPS.items()) + ")")
    ap.add_argument("--markdown", action="store_true", help="markdown tables (for the docs)")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.threads, steps_for(args, args.worker[1]), args.warmup)
        return

    bench_kernels.setup_threads(args.threads)  # as the workers do, so the header shows their settings
    load0 = bench_kernels.load_average()
    presets = args.presets.split(",")
    bench_kernels.check_presets(ap, presets)
    if not bench_kernels.torch_available():
        ap.error("PyTorch is not installed, and every table compares with it: pip install -e .[bench]")

    runs = {}  # (preset, impl) -> the worker results, one per round
    for r in range(args.rounds):
        for preset in presets:
            for impl in bench_kernels.round_order(tuple(SIDES), r):
                res = bench_kernels.run_worker("bench.profile", [
                    impl, preset, "--threads", str(args.threads), "--steps", str(steps_for(args, preset)),
                    "--warmup", str(args.warmup)])
                runs.setdefault((preset, impl), []).append(res)
                print(f"  round {r + 1}/{args.rounds} {preset} {impl}: {res['step_ms']:.1f} ms per step",
                      file=sys.stderr, flush=True)

    print(bench_kernels.header("bench.profile", argv, args.threads, "wall", load0))
    print("minigrad: numba backend, optim.create('adamw'); PyTorch: eager, torch.optim.AdamW. Each side "
          "in its own fresh process per preset and round, the order alternating between rounds.")
    for preset in presets:
        medians = {impl: median_result(runs[preset, impl]) for impl in SIDES}
        tokens = runs[preset, "minigrad"][0]["tokens"]
        print(f"\n{'### ' if args.markdown else ''}`{preset}`: {tokens} tokens per step, ms per step: median "
              f"over {args.rounds} rounds of the mean of {steps_for(args, preset)} profiled steps after "
              f"{args.warmup} warm-up steps\n")
        print(preset_table(medians["minigrad"], medians["torch"], args.markdown))
        per_round = "; ".join(f"{label} " + ", ".join(f"{res['step_ms']:.2f}" for res in runs[preset, impl])
                              for impl, label in SIDES.items())
        print(f"\nUn-profiled step in each round (ms): {per_round}")
        for impl, label in SIDES.items():
            names = ", ".join(f"{n} {ms:.2f}" for n, ms in medians[impl]["top_other"]) or "none"
            print(f"\nLargest other ops, {label} (median ms): {names}")


if __name__ == "__main__":
    main()
