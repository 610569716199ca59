"""Kernel benchmark: minigrad-numba vs minigrad-numpy vs PyTorch CPU, same threads.

    python -m bench.kernels [--threads 2] [--repeat 7] [--rounds 3] [--quick] [--attention-only]

Prints the machine facts (CPU, threads, library builds, OpenBLAS settings, load, clock, command)
and one markdown table: median time (ms; wall time, or CPU time with --clock process) of each case
after warm-up (Numba compiles and the first-touch page faults are excluded), and the ratio
minigrad-numba / PyTorch (lower is better; <= 1.0 means at least as fast as PyTorch). Every
minigrad case goes through the public API (Tensors, `minigrad.functional`, `.backward()`), so the
autograd overhead counts.

The causal attention rows (fwd+bwd at (B, H, T, D) = (16,4,128,32), (8,8,256,64), (4,12,1024,64))
run each implementation in its own fresh process (`--worker`), so one library's thread pools and
allocator cannot slow another; the order alternates between rounds (numba, numpy, torch, then
reversed), and the table gives the medians over `--rounds` rounds and the per-round ratios. They
also report the peak traced memory (tracemalloc: NumPy's allocations; Numba's per-thread tile
scratch, a few KB, is not traced) of minigrad's flash kernel (numba) and of the O(T^2) version
(numpy). The other rows run in this one process, all three implementations side by side.
Run by hand, never in CI. PyTorch is optional (`pip install -e .[bench]`).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import tracemalloc

IMPLS = ("numba", "numpy", "torch")
ATTENTION_SHAPES = ((16, 4, 128, 32), (8, 8, 256, 64), (4, 12, 1024, 64))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `python -m bench.*` runs
OPENBLAS_ENV = ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def setup_threads(n: int) -> None:
    """Same thread count for every pool (call before NumPy, Numba or torch start theirs). Set
    outright: a value already in the environment would silently differ from --threads."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    # minigrad.backend.OPENBLAS_THREAD_TIMEOUT; read once when NumPy loads, so it has to be in the
    # environment before `import minigrad` (which is why that constant cannot be imported here)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")


def configure_worker(impl: str, threads: int) -> None:
    """The process-wide settings of a worker process running implementation `impl` (after
    `setup_threads`): minigrad's `configure_runtime()` and Numba's thread count for minigrad;
    for PyTorch, its thread count and the same malloc settings. glibc's malloc serves PyTorch's
    CPU tensors as it serves NumPy's arrays, so tuning it on one side only would measure the
    allocator, not the implementation. The rest of `configure_runtime()` (Numba's threading layer,
    single-threaded SciPy BLAS) concerns libraries PyTorch does not use and would load them, and
    their threads, into its process. minigrad's backend is set to `impl` before
    `configure_runtime()`, which makes NumPy's BLAS single-threaded on the numba backend only: on
    the numpy backend NumPy's BLAS does the GEMMs and keeps its `threads` threads."""
    if impl == "torch":
        # `models.gpt.preset` (the shapes) and `tune_malloc` import minigrad: without Numba
        os.environ["MINIGRAD_BACKEND"] = "numpy"
        import torch

        from minigrad.backend import tune_malloc

        tune_malloc()
        torch.set_num_threads(threads)
    else:
        import numba

        import minigrad

        minigrad.set_backend(impl)
        minigrad.configure_runtime()
        numba.set_num_threads(threads)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def positive_int(text: str) -> int:
    """argparse `type` of a count that must be at least 1 (--rounds, --threads, --steps...)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return n


def positive_ints(text: str) -> list[int]:
    """argparse `type` of a comma-separated list of counts, each at least 1 (--ranks 2,4)."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be integers >= 1 separated by commas, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """argparse `type` of a count that may be 0 (--warmup)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return n


def add_protocol_args(ap: argparse.ArgumentParser, *, warmup: int, steps_help: str) -> None:
    """The options bench.train and bench.profile share: the presets, the rounds of the protocol,
    the threads of every pool, the timed steps and the warm-up steps."""
    ap.add_argument("--presets", default="tiny,small,medium")
    ap.add_argument("--rounds", type=positive_int, default=3,
                    help="rounds of every case, the order of the implementations alternating (default 3)")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--steps", type=positive_int, default=None, help=steps_help)
    ap.add_argument("--warmup", type=non_negative_int, default=warmup)


def check_presets(ap: argparse.ArgumentParser, names: list[str]) -> None:
    """Stop with a one-line usage error when a name is not a `models.gpt` preset, before any
    worker starts (a worker would fail with a traceback). Loads minigrad into this process,
    which only waits for its workers."""
    from models.gpt import PRESETS

    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        ap.error(f"--presets: unknown {', '.join(unknown)}; choose from {', '.join(PRESETS)}")


CLOCK = time.perf_counter  # time.process_time with --clock process (set by each bench's main)


def set_clock(name: str) -> None:
    """--clock wall (perf_counter: what a user waits) or process (CPU time of the process)."""
    global CLOCK
    CLOCK = time.perf_counter if name == "wall" else time.process_time


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def run_times(fn, repeat: int, warmup: int = 2) -> list:
    """Seconds of each of `repeat` runs of `fn()` after `warmup` runs, on `CLOCK`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return times


def median_time(fn, repeat: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` over `repeat` runs after `warmup` runs, on `CLOCK`."""
    return statistics.median(run_times(fn, repeat, warmup))


def peak_traced_mb(fn) -> float:
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


# ----------------------------------------------------------------------------- worker processes
def run_worker(module: str, worker_args: list[str]) -> dict:
    """Run `python -m module --worker *worker_args` in a fresh process (it inherits this process's
    environment, thread settings included) and return the JSON object of its last output line
    that starts with "{" (a library may print lines of its own, torch's profiler does)."""
    out = subprocess.run([sys.executable, "-m", module, "--worker", *worker_args], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"python -m {module} --worker {' '.join(worker_args)} failed:\n{out.stderr}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def round_order(impls, r: int) -> list:
    """Round r's order (0-based): as given in even rounds, reversed in odd ones, so no
    implementation always runs first (or right after a given other) on a machine that drifts."""
    return list(impls) if r % 2 == 0 else list(reversed(impls))


def ratio_cell(numer: list, denom: list) -> str:
    """'0.96x (0.94, 0.96, 1.01)': ratio of the medians, then the ratio within each round."""
    if not numer or not denom:
        return "n/a"
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(numer, denom))
    return f"{statistics.median(numer) / statistics.median(denom):.2f}x ({per_round})"


# ----------------------------------------------------------------------------- machine facts
def numpy_blas() -> str:
    """NumPy's BLAS: its build (numpy.show_config) and, for OpenBLAS, the core type it picked at
    load (which OPENBLAS_CORETYPE overrides)."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # show_config's layout is not a stable API
        return "BLAS unknown"
    core = openblas_core()
    return f"{text}, core {core}" if core else text


def openblas_core() -> str | None:
    """The core type NumPy's (already loaded) OpenBLAS runs its kernels for, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line and "numpy" in line}
    except OSError:
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def torch_build() -> str:
    if not torch_available():
        return "PyTorch not installed"
    import torch

    backend = next((line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
                    if line.startswith("ATen parallel backend")), "unknown")
    yes = {True: "yes", False: "no"}
    return (f"PyTorch {torch.__version__} (MKL {yes[torch.backends.mkl.is_available()]}, "
            f"oneDNN {yes[torch.backends.mkldnn.is_available()]}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, ATen parallel backend {backend})")


def machine_line(threads: int) -> str:
    """CPU, thread count and library builds on one line."""
    import numba
    import numpy as np
    import scipy

    from minigrad.backend import cpu_model

    return "; ".join([f"{cpu_model()}, {os.cpu_count()} logical CPUs, {threads} threads per process",
                      f"Python {platform.python_version()}", f"NumPy {np.__version__} ({numpy_blas()})",
                      f"SciPy {scipy.__version__}", f"Numba {numba.__version__} (LLVM target {llvm_target()})",
                      torch_build()])


def llvm_target() -> str:
    """The CPU that Numba compiles the kernels for (LLVM's name, e.g. znver4)."""
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def environment_line(environ=None) -> str:
    """'Environment: ' and the OpenBLAS settings (OPENBLAS_ENV) in `environ` (default: this
    process's environment, which the workers inherit)."""
    environ = os.environ if environ is None else environ
    return "Environment: " + ", ".join(f"{var}={environ[var]}" if var in environ else f"{var} unset"
                                       for var in OPENBLAS_ENV)


def header(module: str, argv: list[str], threads: int, clock: str, load_before: str) -> str:
    """The lines the tables of bench.kernels, bench.train and bench.profile start with: the
    machine, the OpenBLAS settings in the environment, the clock, the load before and now, the
    command."""
    load_after = load_average()
    return "\n".join([f"Machine: {machine_line(threads)}",
                      environment_line(),
                      f"Clock: {clock}; load average (1, 5, 15 min) before the run {load_before}, "
                      f"after {load_after}",
                      f"Command: python -m {module} {shlex.join(argv)}".rstrip()])


# ----------------------------------------------------------------------------- attention rows
def attention_run(impl: str, shape: tuple):
    """A timer body: causal attention forward + backward on fixed random q, k, v of `shape`
    (B, H, T, D), by minigrad's current backend or (impl "torch") PyTorch."""
    import numpy as np

    rng = np.random.default_rng(0)
    qkv = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    if impl == "torch":
        import torch

        def run():
            out = torch.nn.functional.scaled_dot_product_attention(
                *[torch.from_numpy(a).requires_grad_() for a in qkv], is_causal=True)
            out.backward(torch.ones_like(out))
        return run

    import minigrad as mg
    import minigrad.functional as F

    def run():
        out = F.scaled_dot_product_attention(*[mg.Tensor(a, requires_grad=True) for a in qkv], causal=True)
        out.backward(np.ones(out.shape, out.dtype))
    return run


def attention_worker(impl: str, shape: tuple, repeat: int, threads: int) -> None:
    """Print {"seconds": median fwd+bwd time, "traced_mb": peak traced memory (minigrad only)}."""
    configure_worker(impl, threads)
    if impl != "torch":
        import minigrad

        minigrad.set_backend(impl)
    run = attention_run(impl, shape)
    result = {"seconds": median_time(run, repeat)}
    if impl != "torch":
        result["traced_mb"] = peak_traced_mb(run)
    print(json.dumps(result))


def attention_rows(shapes, impls, args) -> list:
    """Table rows of the attention cases, each implementation in its own process, alternated."""
    runs = {}  # (shape, impl) -> the worker results, one per round
    for r in range(args.rounds):
        for shape in shapes:
            for impl in round_order(impls, r):
                res = run_worker("bench.kernels", [impl, ",".join(map(str, shape)), "--threads", str(args.threads),
                                                   "--repeat", str(args.repeat), "--clock", args.clock])
                runs.setdefault((shape, impl), []).append(res)
                print(f"  round {r + 1}/{args.rounds} attention {shape} {impl}: {res['seconds'] * 1e3:.2f} ms",
                      file=sys.stderr, flush=True)
    rows = []
    for shape in shapes:
        times = {impl: [res["seconds"] for res in runs.get((shape, impl), [])] for impl in IMPLS}
        memory = {impl: statistics.median(res["traced_mb"] for res in runs[(shape, impl)])
                  for impl in ("numba", "numpy") if (shape, impl) in runs}
        note = ""
        if memory:
            note = "peak traced memory: " + ", ".join(
                f"{label} {memory[impl]:.1f} MB" for impl, label in (("numba", "flash"), ("numpy", "O(T^2)"))
                if impl in memory)
        med = {impl: statistics.median(t) if t else None for impl, t in times.items()}
        rows.append((f"causal attention {shape} fwd+bwd", med["numba"], med["numpy"], med["torch"],
                     ratio_cell(times["numba"], times["torch"]), note))
    return rows


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--repeat", type=positive_int, default=7)
    ap.add_argument("--rounds", type=positive_int, default=3, help="rounds of the own-process attention cases")
    ap.add_argument("--quick", action="store_true", help="fewer and smaller cases (a smoke run)")
    ap.add_argument("--attention-only", action="store_true", help="only the attention rows")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="process = CPU time of the process (robust on a shared machine; use with --threads 1)")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "B,H,T,D"),
                    help="internal: time one attention case with one implementation, print JSON")
    args = ap.parse_args(argv)
    set_clock(args.clock)
    setup_threads(args.threads)
    if args.worker:
        impl, shape = args.worker
        if impl not in IMPLS:
            ap.error(f"--worker: IMPL must be one of {IMPLS}, got {impl!r}")
        attention_worker(impl, tuple(int(n) for n in shape.split(",")), args.repeat, args.threads)
        return
    load0 = load_average()

    # the own-process rows first, while this process has loaded none of the libraries
    impls = [impl for impl in IMPLS if impl != "torch" or torch_available()]
    attention = attention_rows(ATTENTION_SHAPES[:2] if args.quick else ATTENTION_SHAPES, impls, args)
    rows = [] if args.attention_only else same_process_rows(args)

    print()
    print(header("bench.kernels", argv, args.threads, args.clock, load0))
    print(f"Median of {args.repeat} runs after 2 warm-up runs; times in ms; ratio = numba / PyTorch "
          "(lower is better). Attention rows: each implementation in its own process, the order "
          f"alternated, medians of {args.rounds} rounds; the ratio of the medians (the ratio in each round).")
    print()
    print("| case | minigrad-numba | minigrad-numpy | PyTorch CPU | numba / PyTorch | note |")
    print("|---|---:|---:|---:|---:|---|")

    def ms(t):
        return f"{t * 1e3:.2f}" if t is not None else "n/a"

    for case, nb, npy, tt, ratio, note in rows + attention:
        print(f"| {case} | {ms(nb)} | {ms(npy)} | {ms(tt)} | {ratio} | {note} |")


def same_process_rows(args) -> list:
    """The cases measured in this one process: GEMM, softmax, layer norm, GELU, cross-entropy."""
    import numba
    import numpy as np

    import minigrad as mg
    import minigrad.functional as F

    mg.configure_runtime()
    numba.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
        tF = torch.nn.functional
    except ImportError:
        torch = None

    rng = np.random.default_rng(0)
    rows = []  # (case, numba_s, numpy_s, torch_s, ratio, note)

    from minigrad._blas import numpy_blas_threads

    numba_blas = numpy_blas_threads()  # what configure_runtime left for the numba backend (1)

    def both_backends(run):
        """Medians of `run` on either backend, each with NumPy's BLAS threads as its worker process
        would have them (`configure_worker`): the numba backend's setting from `configure_runtime`,
        `--threads` on the numpy backend, whose GEMMs are NumPy's."""
        res = {}
        for name in ("numba", "numpy"):
            numpy_blas_threads(args.threads if name == "numpy" else numba_blas)
            with mg.use_backend(name):
                res[name] = median_time(run, args.repeat)
        numpy_blas_threads(numba_blas)
        return res["numba"], res["numpy"]

    def fwd_bwd(arrays, mg_fn, torch_fn):
        """Timers of fn(*leaves) forward + backward (upstream ones), leaves made from `arrays`:
        (minigrad run, PyTorch run or None). Every minigrad run goes through the public API."""
        def run_mg():
            out = mg_fn(*[mg.Tensor(a, requires_grad=True) for a in arrays])
            out.backward(np.ones(out.shape, out.dtype))

        if torch is None:
            return run_mg, None

        def run_t():
            out = torch_fn(*[torch.from_numpy(a).requires_grad_() for a in arrays])
            out.backward(torch.ones_like(out))
        return run_mg, run_t

    def add(case, run_mg, run_torch, note=""):
        nb, npy = both_backends(run_mg)
        tt = median_time(run_torch, args.repeat) if (torch is not None and run_torch) else None
        rows.append((case, nb, npy, tt, f"{nb / tt:.2f}x" if tt else "n/a", note))
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
    return rows


if __name__ == "__main__":
    main()
