"""Kernel benchmark: minigrad-numba vs minigrad-numpy vs PyTorch CPU, same process, same threads.

    python -m bench.kernels [--threads 2] [--repeat 7] [--quick]

Prints one markdown table: median wall time (ms) of each case after warm-up (Numba compiles
and the first-touch page faults are excluded), and the ratio minigrad-numba / PyTorch (lower
is better; <= 1.0 means at least as fast as PyTorch). Every minigrad case goes through the
public API (Tensors, `minigrad.functional`, `.backward()`), so the autograd overhead counts.
The attention rows also report peak traced memory (tracemalloc: NumPy's allocations; Numba's
per-thread tile scratch, a few KB, is not traced) of the flash kernel vs the O(T^2) version.
Run by hand, never in CI. PyTorch is optional (`pip install -e .[bench]`).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc


def setup_threads(n: int) -> None:
    """Same thread count for every pool (call before NumPy, Numba or torch start theirs). Set
    outright: a value already in the environment would silently differ from --threads."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    # read once when NumPy loads, so not settable by minigrad.configure_runtime (minigrad.backend)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")


CLOCK = time.perf_counter  # time.process_time with --clock process (set by either bench's main)


def set_clock(name: str) -> None:
    """--clock wall (perf_counter: what a user waits) or process (CPU time of the process)."""
    global CLOCK
    CLOCK = time.perf_counter if name == "wall" else time.process_time


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def median_time(fn, repeat: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` over `repeat` runs after `warmup` runs, on `CLOCK`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def peak_traced_mb(fn) -> float:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def machine_line(threads: int) -> str:
    import numba
    import numpy as np

    from minigrad.backend import cpu_model

    cpu = cpu_model()
    parts = [f"{cpu}, {os.cpu_count()} logical CPUs, {threads} threads",
             f"Python {platform.python_version()}", f"NumPy {np.__version__}", f"Numba {numba.__version__}"]
    try:
        import torch

        parts.append(f"PyTorch {torch.__version__}")
    except ImportError:
        parts.append("PyTorch not installed")
    return "; ".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer and smaller cases (a smoke run)")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="process = CPU time of the process (robust on a shared machine; use with --threads 1)")
    args = ap.parse_args(argv)
    set_clock(args.clock)
    setup_threads(args.threads)
    load0 = load_average()

    import minigrad as mg
    import minigrad.functional as F
    import numba
    import numpy as np

    mg.configure_runtime()
    numba.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
        tF = torch.nn.functional
    except ImportError:
        torch = None

    rng = np.random.default_rng(0)
    rows = []  # (case, numba_s, numpy_s, torch_s, note)

    def both_backends(run):
        res = {}
        for name in ("numba", "numpy"):
            with mg.use_backend(name):
                res[name] = median_time(run, args.repeat)
        return res["numba"], res["numpy"]

    def fwd_bwd(arrays, mg_fn, torch_fn):
        """Timers of fn(*leaves) forward + backward (upstream ones), leaves made from `arrays`:
        (minigrad run, PyTorch run or None). Every minigrad run goes through the public API."""
        def run_mg():
            out = mg_fn(*[mg.Tensor(a, requires_grad=True) for a in arrays])
            out.backward(np.ones(out.shape, out.dtype))

        run_t = None
        if torch is not None:
            def run_t():
                out = torch_fn(*[torch.from_numpy(a).requires_grad_() for a in arrays])
                out.backward(torch.ones_like(out))
        return run_mg, run_t

    def add(case, run_mg, run_torch, note=""):
        nb, npy = both_backends(run_mg)
        tt = median_time(run_torch, args.repeat) if (torch is not None and run_torch) else None
        rows.append((case, nb, npy, tt, note))
        print(f"  done: {case}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- GEMM (forward only)
    sizes = [256, 512] if args.quick else [256, 512, 1024, 2048]
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        ta, tb = mg.Tensor(a), mg.Tensor(b)
        run_t = None
        if torch is not None:
            xa, xb = torch.from_numpy(a), torch.from_numpy(b)
            run_t = lambda xa=xa, xb=xb: xa @ xb
        add(f"GEMM {n}x{n}x{n} (fwd)", lambda ta=ta, tb=tb: ta @ tb, run_t,
            "BLAS in both backends")

    # ---------------------------------------------------------------- softmax
    x = rng.standard_normal((64, 4, 128, 128)).astype(np.float32)
    if args.quick:
        x = x[:8]
    add(f"softmax {x.shape} fwd+bwd", *fwd_bwd([x], F.softmax, lambda t: torch.softmax(t, -1)))

    # ---------------------------------------------------------------- layer norm
    for c in (256, 768):
        n = 1024 if args.quick else 8192
        arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ((n, c), (c,), (c,))]
        add(f"layer norm {n}x{c} fwd+bwd",
            *fwd_bwd(arrays, F.layer_norm, lambda t, w, b, c=c: tF.layer_norm(t, (c,), w, b)))

    # ---------------------------------------------------------------- GELU
    xg = rng.standard_normal((8, 256, 1536)).astype(np.float32)
    add(f"GELU(tanh) {xg.shape} fwd+bwd", *fwd_bwd([xg], F.gelu, lambda t: tF.gelu(t, approximate="tanh")))

    # ---------------------------------------------------------------- cross-entropy
    xc = rng.standard_normal((8 * 256, 65)).astype(np.float32)
    tc = rng.integers(0, 65, xc.shape[0])
    ttc = torch.from_numpy(tc) if torch is not None else None
    add(f"cross-entropy {xc.shape} fwd+bwd",
        *fwd_bwd([xc], lambda t: F.cross_entropy(t, tc), lambda t: tF.cross_entropy(t, ttc)))

    # ---------------------------------------------------------------- attention
    shapes = [(16, 4, 128, 32), (8, 8, 256, 64), (4, 12, 1024, 64)]
    if args.quick:
        shapes = shapes[:2]
    for shp in shapes:
        qkv = [rng.standard_normal(shp).astype(np.float32) for _ in range(3)]
        run_mg, run_t = fwd_bwd(qkv, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True),
                                lambda q, k, v: tF.scaled_dot_product_attention(q, k, v, is_causal=True))
        note = ""
        if shp[2] >= 1024:
            with mg.use_backend("numba"):
                flash_mb = peak_traced_mb(run_mg)
            with mg.use_backend("numpy"):
                naive_mb = peak_traced_mb(run_mg)
            note = f"peak traced memory: flash {flash_mb:.0f} MB vs O(T^2) {naive_mb:.0f} MB"
        add(f"causal attention {shp} fwd+bwd", run_mg, run_t, note)

    # ---------------------------------------------------------------- table
    print()
    print(f"Machine: {machine_line(args.threads)}")
    print(f"Clock: {args.clock}. Median of {args.repeat} runs after 2 warm-up runs; times in ms; ratio = numba / PyTorch "
          f"(lower is better). Load average before the run: {load0}.")
    print()
    print("| case | minigrad-numba | minigrad-numpy | PyTorch CPU | numba / PyTorch | note |")
    print("|---|---:|---:|---:|---:|---|")
    for case, nb, npy, tt, note in rows:
        ts = f"{tt * 1e3:.2f}" if tt is not None else "n/a"
        ratio = f"{nb / tt:.2f}x" if tt else "n/a"
        print(f"| {case} | {nb * 1e3:.2f} | {npy * 1e3:.2f} | {ts} | {ratio} | {note} |")


if __name__ == "__main__":
    main()
