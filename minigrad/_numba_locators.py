"""Numba cache locators whose source stamp covers the kernel's neighbours, not its file alone.

Numba keys a cached kernel on its own source file: a kernel that calls (and so compiles in) a
function of another file keeps running the old code of that function after it is edited, with
no warning. Every minigrad kernel inlines helpers of other files (`fast_exp` of
`minigrad/kernels/_math.py`, `run_gemm` of `blas.py` inside the pool's spin loop), so editing one
of them gave stale and silently wrong results until the caches were deleted by hand. These
locators are Numba's own, with a stamp that also holds one fingerprint of every `.py` file beside
the kernel and in `minigrad/kernels`: an edit of any of them recompiles the kernels that could
depend on it. `minigrad._numba_cache.njit` selects them (Numba's `CACHE_LOCATOR_CLASSES`) while it
decorates a kernel, so other libraries' kernels cache as they would have. Not covered: a kernel
with no source file on disk (a zip import, a notebook cell) takes Numba's own locators, stamped
with its own source only.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import time

from numba.core import caching

from ._import_time import IMPORTED_AT

KERNELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")


@functools.lru_cache(maxsize=None)
def _file_hash(path: str, mtime_ns: int, size: int) -> bytes:
    """SHA-256 of one file, read once per version (its mtime and size are part of the key)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:                 # unreadable: its name alone counts
        return b""


def sources_fingerprint(source_dir: str) -> str | None:
    """SHA-256 of the name and content of every `.py` file in `source_dir` and in
    `minigrad/kernels`, in order; None when one of them changed after minigrad was imported.

    Why None: a kernel is compiled from the code this process imported, not from the files on
    disk. A kernel compiled after an edit (`models/paged_attention.py` compiles its own at the
    first decoding step) would otherwise be cached under the new sources' fingerprint with the
    old code. A file that vanished (or a dangling link) is skipped."""
    now = time.time()
    digest = hashlib.sha256()
    for path in sorted({*glob.glob(os.path.join(source_dir, "*.py")), *glob.glob(os.path.join(KERNELS_DIR, "*.py"))}):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if IMPORTED_AT < st.st_mtime <= now:      # (a date in the future is no edit)
            return None
        digest.update(path.encode())
        digest.update(_file_hash(path, st.st_mtime_ns, st.st_size))
    return digest.hexdigest()


class _Fingerprinted:
    """Mixin for a source-file locator: the stamp is Numba's (the file's hash) and the fingerprint
    of its neighbours (`sources_fingerprint`). When a neighbour was edited after this process
    loaded its code, the stamp names this process and moment, so that it matches no cached
    kernel and no later process loads what this one compiles."""

    def get_source_stamp(self):
        fingerprint = sources_fingerprint(os.path.dirname(os.path.abspath(self._py_file)))
        if fingerprint is None:
            fingerprint = f"sources edited while process {os.getpid()} ran, at {time.time()}"
        return super().get_source_stamp(), fingerprint


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
