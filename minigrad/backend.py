"""Backend choice: fused Numba kernels ("numba") or plain NumPy ("numpy").

Every fused op in `minigrad.functional` has a plain NumPy forward/backward (the "numpy"
backend, the readable reference) and, when Numba imports, a call into `minigrad.kernels`
(the "numba" backend, the fast path). The ops ask `get_backend()` on every call, so a switch
takes effect immediately:

    >>> import minigrad
    >>> minigrad.set_backend("numpy")      # or "numba"
    >>> minigrad.get_backend()
    'numpy'

The start-up choice comes from the environment variable ``MINIGRAD_BACKEND`` (``numba`` or
``numpy``); without it, "numba" is the default whenever Numba imports. ``NUMBA_DISABLE_JIT=1``
still works: the kernels then run as (slow) plain Python, which lets you step through them in
a debugger.

This module also prepares Numba's (and OpenBLAS's) environment *before* they are imported
(they read these variables once, at import):

- ``NUMBA_THREADING_LAYER=workqueue`` unless the user chose a layer. Numba's default OpenMP
  layer leaves its workers spinning after a parallel kernel, which was measured to slow the
  next OpenBLAS GEMM by up to 7x on a 2-core machine.
- ``NUMBA_CACHE_DIR``: the compiled kernels are cached on disk (``cache=True``) so that a warm
  start takes well under a second. Numba's default place is ``__pycache__`` beside the source;
  when that is not writable we choose ``$XDG_CACHE_HOME/minigrad/numba`` (``~/.cache/...``),
  then a directory in the system temp dir. Import never fails because of the cache.

And it keeps freed memory for reuse (Linux with glibc only; see `tune_malloc`): glibc hands
every buffer above its mmap threshold (128 KiB, rising to at most 32 MiB) straight to the
kernel and back, so each new activation or gradient array page-faults on first touch. That
was measured to cost a quarter of a `small` GPT training step (264 ms -> 194 ms per step).
"""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager

__all__ = ["set_backend", "get_backend", "use_backend", "numba_available", "fused_kernels", "BACKENDS"]

BACKENDS = ("numba", "numpy")
_FLOAT_DTYPES = ("float32", "float64")


def _writable_dir(path: str) -> bool:
    """True when `path` exists (or can be created) and a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".minigrad-probe-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


def _choose_cache_dir() -> str | None:
    """Where Numba should cache compiled kernels; None means "Numba's default is fine"."""
    kernels_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "__pycache__")
    if _writable_dir(kernels_dir):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for candidate in (os.path.join(base, "minigrad", "numba"),
                      os.path.join(tempfile.gettempdir(), f"minigrad-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}")):
        if _writable_dir(candidate):
            return candidate
    return None  # nothing writable: Numba then simply compiles without caching


def _prepare_numba_environment() -> None:
    """Set Numba's environment variables before its first import (the user's choice wins)."""
    if "numba" in sys.modules:
        # Too late for the environment: Numba read it already. The threading layer is only
        # fixed at the first parallel launch, so we may still steer it via the config object.
        try:
            from numba.core import config
            if "NUMBA_THREADING_LAYER" not in os.environ and config.THREADING_LAYER == "default":
                config.THREADING_LAYER = "workqueue"
        except Exception:  # pragma: no cover - exotic Numba builds
            pass
        return
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    if "NUMBA_CACHE_DIR" not in os.environ:
        cache_dir = _choose_cache_dir()
        if cache_dir is not None:
            os.environ["NUMBA_CACHE_DIR"] = cache_dir


_prepare_numba_environment()

# OpenBLAS's worker threads busy-wait for 2^n CPU cycles after each GEMM before they sleep
# (n = 28 by default: ~0.1 s). In a training step the next GEMM is rarely that close, but our
# attention threads are: with a worker spinning on the second core, a `small` step's attention
# took 78 ms instead of 43 ms. n = 22 (~1.5 ms) keeps the workers warm between back-to-back
# GEMMs and frees the core soon after (measured: small 10.0k -> 12.6k tokens/s, tiny 45k -> 53k).
# OpenBLAS reads this once, when NumPy loads it: it only acts if minigrad is imported first.
OPENBLAS_THREAD_TIMEOUT = "22"
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)

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

    Called once at `import minigrad`. It does nothing when MINIGRAD_MALLOC=default, when any
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


MALLOC_TUNED = tune_malloc()

try:  # Numba is a hard dependency in setup.cfg, but the package must still work without it.
    import numba  # noqa: F401

    _NUMBA_OK = True
    _NUMBA_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the installation
    _NUMBA_OK = False
    _NUMBA_ERROR = exc


def numba_available() -> bool:
    """True when Numba imported (the "numba" backend can be chosen)."""
    return _NUMBA_OK


def _validate(name) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"minigrad backend must be one of {BACKENDS}, got {name!r}")
    name = name.lower()
    if name == "numba" and not _NUMBA_OK:
        raise RuntimeError(
            f"the 'numba' backend needs Numba, which failed to import ({_NUMBA_ERROR!r}); "
            "install it (`pip install numba`) or use set_backend('numpy')")
    return name


def _initial_backend() -> str:
    requested = os.environ.get("MINIGRAD_BACKEND", "").strip().lower()
    if requested:
        if requested not in BACKENDS:
            raise ValueError(f"MINIGRAD_BACKEND must be one of {BACKENDS}, got {requested!r}")
        if requested == "numba" and not _NUMBA_OK:
            import warnings
            warnings.warn(f"MINIGRAD_BACKEND=numba but Numba failed to import ({_NUMBA_ERROR!r}); "
                          "using the numpy backend", RuntimeWarning, stacklevel=2)
            return "numpy"
        return requested
    return "numba" if _NUMBA_OK else "numpy"


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
