"""Where NumPy's bundled OpenBLAS is, for the two places that set its thread count:
`minigrad.backend.configure_runtime` (process-wide) and the kernel pool's workers (their own
thread only, `minigrad/kernels/pool.py`). A leaf module: it imports nothing of minigrad."""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np


def numpy_openblas():
    """NumPy's bundled OpenBLAS (scipy-openblas, in numpy.libs) as a ctypes library, or None
    (NumPy built on another BLAS: MKL, Accelerate, a system OpenBLAS)."""
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libs, "libscipy_openblas*.so*")):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def numpy_blas_threads(n: int | None = None) -> int | None:
    """The thread count of NumPy's bundled OpenBLAS, after setting it to `n` (process-wide) when
    given; None when NumPy runs on another BLAS (nothing is set then)."""
    lib = numpy_openblas()
    if lib is None:
        return None
    prefixes = ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads", "openblas_{}_num_threads")
    put, get = (next((getattr(lib, p.format(verb)) for p in prefixes if hasattr(lib, p.format(verb))), None)
                for verb in ("set", "get"))
    if put is None:
        return None
    if n is not None:
        put(int(n))
    return int(get()) if get is not None else n
