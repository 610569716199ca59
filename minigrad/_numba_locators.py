"""Numba cache locators whose source stamp covers the kernel's neighbours, not its file alone.

Numba keys a cached kernel on its own source file: a kernel that calls (and so compiles in) a
function of another file keeps running the old code of that function after it is edited, with
no warning. Every minigrad kernel inlines helpers of other files (`fast_exp` of
`minigrad/kernels/_math.py`, `run_gemm` of `blas.py` inside the pool's spin loop), so editing one
of them gave stale and silently wrong results until the caches were deleted by hand. These
locators are Numba's own, with a stamp that also holds one fingerprint of every `.py` file beside
the kernel and in `minigrad/kernels`: an edit of any of them recompiles the kernels that could
depend on it. `minigrad._numba_cache.njit` selects them (Numba's `CACHE_LOCATOR_CLASSES`) while it
decorates a kernel, so other libraries' kernels cache as they would have.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os

from numba.core import caching

KERNELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")


@functools.lru_cache(maxsize=None)
def sources_fingerprint(source_dir: str) -> str:
    """SHA-256 of the name and content of every `.py` file in `source_dir` and in
    `minigrad/kernels`, in order. Computed once per process and directory: a kernel edited while
    a process runs is picked up by the next process."""
    digest = hashlib.sha256()
    for path in sorted({*glob.glob(os.path.join(source_dir, "*.py")), *glob.glob(os.path.join(KERNELS_DIR, "*.py"))}):
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


class _Fingerprinted:
    """Mixin for a source-file locator: the stamp is Numba's (the file's hash) and the fingerprint
    of its neighbours (`sources_fingerprint`)."""

    def get_source_stamp(self):
        return super().get_source_stamp(), sources_fingerprint(os.path.dirname(os.path.abspath(self._py_file)))


class UserProvidedLocator(_Fingerprinted, caching.UserProvidedCacheLocator):
    """In NUMBA_CACHE_DIR (or the directory `_numba_cache` chose)."""


class InTreeLocator(_Fingerprinted, caching.InTreeCacheLocator):
    """In the `__pycache__` beside the source."""


class UserWideLocator(_Fingerprinted, caching.UserWideCacheLocator):
    """In Numba's user-wide cache directory."""


#: the value of Numba's `config.CACHE_LOCATOR_CLASSES` for minigrad's kernels, in Numba's order; a
#: kernel with no source file on disk (a notebook cell, a zip import) takes Numba's own locator
LOCATORS = ",".join([f"{__name__}.{cls.__name__}" for cls in (UserProvidedLocator, InTreeLocator, UserWideLocator)]
                    + [f"numba.core.caching.{cls.__name__}"
                       for cls in (caching.IPythonCacheLocator, caching.ZipCacheLocator)])
