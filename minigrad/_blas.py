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
