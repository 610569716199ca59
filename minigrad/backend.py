"""Backend choice: fused Numba kernels ("numba") or plain NumPy ("numpy"); runtime settings.

Every fused op in `minigrad.functional` has a plain NumPy forward/backward (the "numpy"
backend, the readable reference) and, when Numba imports, a call into `minigrad.kernels`
(the "numba" backend, the fast path). The ops ask `get_backend()` on every call, so a switch
takes effect immediately:

    >>> import minigrad
    >>> minigrad.set_backend("numpy")      # or "numba"
    >>> minigrad.get_backend()
    'numpy'

The start-up choice comes from the environment variable ``MINIGRAD_BACKEND`` (``numba`` or
``numpy``); without it, "numba" is the default whenever Numba imports. With
``MINIGRAD_BACKEND=numpy``, ``import minigrad`` does not import Numba (which takes longer to import
than minigrad itself); it is imported on first need: `set_backend("numba")`,
`configure_runtime()` (which sets Numba's threading layer) or an explicit
``precision.quantize(..., impl="numba")``. ``NUMBA_DISABLE_JIT=1`` still works: the kernels
then run as (slow) plain Python, which lets you step through them in a debugger.

Runtime settings. Importing minigrad changes no process-wide state (no environment variable, no
allocator or thread-pool setting). `configure_runtime()` (also `minigrad.configure_runtime()`)
is the one explicit call that applies the settings measured to speed up training on CPU; a
training script or benchmark calls it once at start:

- malloc keeps freed memory for reuse (`tune_malloc`; Linux with glibc only): glibc hands every
  buffer above its mmap threshold (128 KiB, rising to at most 32 MiB) straight to the kernel
  and back, so each new activation or gradient array page-faults on first touch. That was
  measured to cost a quarter of a `small` GPT training step (264 ms -> 194 ms per step).
- Numba's threading layer is "workqueue" unless the user chose one: Numba's default OpenMP
  layer leaves its workers spinning after a parallel (`prange`) kernel, which was measured to
  slow the next OpenBLAS GEMM by up to 7x on a 2-core machine.
- The BLAS that `np.dot` calls inside the kernels runs single-threaded (see
  `_single_thread_numba_blas`).
- On the numba backend, NumPy's own BLAS runs single-threaded too (`_single_thread_numpy_blas`):
  there the GEMMs run on minigrad's kernel pool (`minigrad/kernels/pool.py`), whose workers spin
  between jobs; a multi-threaded NumPy product elsewhere (an optimizer's Newton-Schulz, a norm)
  would start OpenBLAS's threads, and the two pools' spinning workers would fight for the
  cores (measured: Muon's Newton-Schulz on a (384, 128) matrix 1.3 ms alone, 8-9 ms beside
  the pool). `minigrad.kernels.gemm(a, b)` runs a large product on the pool instead.

One setting cannot be applied after import: OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` once,
when NumPy loads it, and `import minigrad` loads NumPy. A command-line program that wants it
sets it first, before importing NumPy or minigrad (demos/train_gpt.py and bench/ do):

    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")    # OPENBLAS_THREAD_TIMEOUT below

OpenBLAS's worker threads busy-wait for 2^n CPU cycles after each GEMM before they sleep (n = 28
by default: ~0.1 s). In a training step the next GEMM is rarely that close, but our attention
threads are: with a worker spinning on the second core, a `small` step's attention took 78 ms
instead of 43 ms. n = 22 (~1.5 ms) keeps the workers warm between back-to-back GEMMs and frees
the core soon after (measured: small 10.0k -> 12.6k tokens/s, tiny 45k -> 53k).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np

__all__ = ["set_backend", "get_backend", "use_backend", "numba_available", "fused_kernels", "BACKENDS",
           "configure_runtime", "tune_malloc", "OPENBLAS_THREAD_TIMEOUT", "cpu_model"]

BACKENDS = ("numba", "numpy")
# dtype objects: `x.dtype in` compares fastest (~0.06 us; against strings ~0.3, per op)
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
OPENBLAS_THREAD_TIMEOUT = "22"  # the value to set before NumPy loads (see the module docstring)

# Numba is a hard dependency in setup.cfg, but the package must still work without it. It is
# imported on first need, not with minigrad: importing it takes longer than the rest of
# minigrad, and the numpy backend never needs it.
_numba = {"ok": None, "error": None}


def numba_available() -> bool:
    """True when Numba imports (the "numba" backend can be chosen); the first call imports it."""
    if _numba["ok"] is None:
        try:
            import numba  # noqa: F401

            _numba["ok"] = True
        except Exception as exc:  # pragma: no cover - depends on the installation
            _numba.update(ok=False, error=exc)
    return _numba["ok"]


def _validate(name) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"minigrad backend must be one of {BACKENDS}, got {name!r}")
    name = name.lower()
    if name == "numba" and not numba_available():
        raise RuntimeError(
            f"the 'numba' backend needs Numba, which failed to import ({_numba['error']!r}); "
            "install it (`pip install numba`) or use set_backend('numpy')")
    return name


def _initial_backend() -> str:
    """MINIGRAD_BACKEND, else "numba" when Numba imports. Numba is imported here only when the
    numba backend may be chosen (MINIGRAD_BACKEND=numpy does not import it at all)."""
    requested = os.environ.get("MINIGRAD_BACKEND", "").strip().lower()
    if requested:
        if requested not in BACKENDS:
            raise ValueError(f"MINIGRAD_BACKEND must be one of {BACKENDS}, got {requested!r}")
        if requested == "numba" and not numba_available():
            import warnings
            warnings.warn(f"MINIGRAD_BACKEND=numba but Numba failed to import ({_numba['error']!r}); "
                          "using the numpy backend", RuntimeWarning, stacklevel=2)
            return "numpy"
        return requested
    return "numba" if numba_available() else "numpy"


_BACKEND = _initial_backend()


def get_backend() -> str:
    """The active backend: "numba" (fused kernels) or "numpy" (plain NumPy reference ops)."""
    return _BACKEND


def set_backend(name: str) -> str:
    """Choose the backend for all fused ops; returns the previous one.

    "numba" needs Numba to import; "numpy" always works."""
    global _BACKEND
    previous, _BACKEND = _BACKEND, _validate(name)
    return previous


_kernels = None  # minigrad.kernels once fused_kernels has imported it


def fused_kernels(x):
    """`minigrad.kernels` when the numba backend is active and `x` is float32/float64, else None.

    The ops call this once in forward and keep the answer in `ctx.fused`, so a backward always
    runs on the backend of its forward, even if the backend is switched in between."""
    global _kernels
    if _BACKEND != "numba" or getattr(x, "dtype", None) not in _FLOAT_DTYPES:
        return None
    if _kernels is None:  # imported on first use; kept, as an import statement costs ~0.7 us per op
        from . import kernels as _kernels
    return _kernels


@contextmanager
def use_backend(name: str):
    """Context manager: run a block with another backend, then restore the previous one."""
    previous = set_backend(name)
    try:
        yield name
    finally:
        set_backend(previous)


# ---------------------------------------------------------------- runtime settings
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune_malloc(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20,
                top_pad: int = 64 << 20) -> bool:
    """Let glibc's malloc reuse freed large buffers instead of returning them to the OS.

    A training step allocates and frees the same few dozen array sizes every step. By default
    glibc serves each one above its mmap threshold with a fresh `mmap` and unmaps it on free,
    so every page of every new array faults on first touch (a 4 MB gradient: 3.4 ms instead of
    0.13 ms to fill). With a fixed high mmap threshold and trim threshold, freed blocks stay in
    the heap and the next step's arrays reuse them. The price: the resident size stays near
    the peak after a large free (up to `trim_threshold` bytes are kept). Returns True when the
    settings were applied.

    Applied by `configure_runtime()`. It does nothing when MINIGRAD_MALLOC=default, when any
    of glibc's own MALLOC_*_ variables is set (the user has chosen), or without glibc."""
    if os.environ.get("MINIGRAD_MALLOC", "").strip().lower() == "default":
        return False
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _MALLOC_ENV):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt  # absent on musl: AttributeError
    except (OSError, AttributeError):
        return False
    # every setting is applied even if one fails; glibc builds that cap the mmap threshold at
    # 32 MiB (HEAP_MAX_SIZE / 2) refuse a larger one, so fall back to that cap
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 or \
        mallopt(_M_MMAP_THRESHOLD, min(int(mmap_threshold), 32 << 20)) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    pad_ok = mallopt(_M_TOP_PAD, int(top_pad)) == 1
    return mmap_ok and trim_ok and pad_ok


def _single_thread_numba_blas() -> bool:
    """Make the BLAS that Numba calls (SciPy's OpenBLAS) single-threaded; True if it worked.

    `np.dot` inside a Numba kernel calls SciPy's bundled OpenBLAS, a *second* BLAS with its own
    thread pool (NumPy has another). Our kernels already run one GEMM per thread of
    `kernels._parallel_for` (a range of batch items or heads each), so letting each GEMM spawn
    threads too oversubscribes the cores. NumPy's own BLAS (used by `a @ b` outside the
    kernels) is not touched. This is a process-wide setting of SciPy's BLAS; code that needs
    multi-threaded `scipy.linalg` can call `scipy_openblas_set_num_threads(n)` back, or set
    MINIGRAD_NUMBA_BLAS_THREADS=n before `configure_runtime()`."""
    try:
        import ctypes
        import glob

        import scipy

        n = int(os.environ.get("MINIGRAD_NUMBA_BLAS_THREADS", "1"))
        root = os.path.dirname(os.path.dirname(scipy.__file__))
        for path in glob.glob(os.path.join(root, "scipy.libs", "libscipy_openblas*.so*")):
            fn = getattr(ctypes.CDLL(path), "scipy_openblas_set_num_threads", None)
            if fn is not None:
                fn(n)
                return True
    except Exception:  # no SciPy, another BLAS build: the kernels still work, only slower
        pass
    return False


def _single_thread_numpy_blas() -> bool:
    """Make NumPy's bundled OpenBLAS single-threaded process-wide (the module docstring says
    why); True if it worked. MINIGRAD_NUMPY_BLAS_THREADS=n before `configure_runtime()` keeps
    n threads instead (for a program whose heavy products are its own NumPy ones)."""
    from ._blas import numpy_blas_threads

    # (another BLAS is left as it is)
    return numpy_blas_threads(int(os.environ.get("MINIGRAD_NUMPY_BLAS_THREADS", "1"))) is not None


def _workqueue_threading_layer() -> str | None:
    """Numba's threading layer, set to "workqueue" unless the user chose one; None without Numba.

    Numba picks its layer from `config.THREADING_LAYER` at the first parallel kernel launch, so
    this acts when called before that (only the teaching `kernels.matmul_tiled` is a `prange`
    kernel). Numba re-reads its configuration when a NUMBA_* variable changes later."""
    if not numba_available():
        return None
    from numba.core import config

    if "NUMBA_THREADING_LAYER" not in os.environ and config.THREADING_LAYER == "default":
        config.THREADING_LAYER = "workqueue"
    return config.THREADING_LAYER


def configure_runtime() -> dict:
    """Apply minigrad's recommended process-wide speed settings (the module docstring says why);
    returns what each one did:

        "malloc"           True when `tune_malloc()` applied glibc's settings
        "threading_layer"  Numba's threading layer after the call (None without Numba)
        "numba_blas"       True when the BLAS inside the kernels was made single-threaded
        "numpy_blas"       True when NumPy's BLAS was made single-threaded (on the numba
                           backend only: the numpy backend's GEMMs are NumPy's, BLAS-threaded)

    Call it once, at the start of a training script or benchmark, before the first step; a
    second call changes nothing more. OPENBLAS_THREAD_TIMEOUT must be set before NumPy loads,
    so it is not applied here (module docstring)."""
    return {"malloc": tune_malloc(), "threading_layer": _workqueue_threading_layer(),
            "numba_blas": _single_thread_numba_blas(),
            "numpy_blas": _BACKEND == "numba" and _single_thread_numpy_blas()}


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU for the tables that report speed (a ratio measured on one CPU does not hold on
    another): its model name as ``lscpu`` shows it, then the family and model numbers and whether
    it has AVX-512, e.g. "AMD EPYC (family 25, model 17, AVX-512)". A virtual machine may show
    a bare "AMD EPYC", and family 25 is both Zen 3 (EPYC 7003 is model 1) and Zen 4 (EPYC 9004
    is model 17, with AVX-512), which run our kernels and PyTorch's at different speeds: the
    numbers tell them apart. ``cpuinfo`` is the file to read (a test gives its own)."""
    import platform

    fields = {}
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    details = [f"{label} {fields[key]}" for label, key in (("family", "cpu family"), ("model", "model"))
               if key in fields]
    if "avx512f" in fields.get("flags", "").split():
        details.append("AVX-512")
    return f"{name} ({', '.join(details)})" if details else name
