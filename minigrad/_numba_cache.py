"""`njit` for minigrad's kernels: Numba's, with the on-disk cache put where it can be written.

Every compiled kernel is decorated with `cache=True`, so that a warm start loads it from disk in
well under a second instead of compiling it again. Numba caches in the `__pycache__` beside the
source, else in its user-wide directory (~/.cache/numba); when neither can be written, decorating
a `cache=True` function raises, which would make `import minigrad` fail on a read-only install
with a read-only home. So when the `__pycache__` beside a kernel's source is not writable,
`njit` points Numba's `config.CACHE_DIR` (read when a kernel is decorated) at
`$XDG_CACHE_HOME/minigrad/numba` (default ~/.cache/...), else at a directory in the system temp
dir that only this user owns and can write (mode 0o700), while it decorates that kernel, and
puts the setting back afterwards: other libraries' kernels cache where they would have. A cache
directory chosen by the user (NUMBA_CACHE_DIR) always wins; with no writable place at all the
kernel is compiled at every start.

Numba keys a cached kernel on its own source file only, so a kernel that compiles in a helper of
another file kept the helper's old code after an edit. While it decorates a kernel, `njit` also
selects the locators of `minigrad._numba_locators`, whose stamp covers every source file beside
the kernel and in `minigrad/kernels` (a user's NUMBA_CACHE_LOCATOR_CLASSES is not used for
them). Another library's kernel decorated in another thread at that very moment may take these
settings too: it then caches in minigrad's directory, or is compiled again after an edit here.

This module imports only the standard library until a kernel is decorated (a leaf of the
import graph: `minigrad.kernels` and `minigrad.precision` both use it).
"""
from __future__ import annotations

import inspect
import os
import stat
import tempfile
import threading

__all__ = ["njit"]

_CONFIG_LOCK = threading.Lock()   # guards Numba's config while `njit` changes it for one kernel


def _writable_dir(path: str) -> bool:
    """True when `path` exists (or can be created) and a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".minigrad-probe-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


def _private_dir(path: str) -> bool:
    """True when `path` is a writable directory that this user owns and others cannot write
    (created with mode 0o700 when missing; a group-writable one of ours is set to 0o700). For
    the shared temp dir: Numba unpickles its cache index, so a directory another user made first
    under the predictable name, or one anyone could write, could plant code."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        return False
    if st.st_mode & 0o002:  # anyone could have written into it
        return False
    if st.st_mode & 0o020:  # ours, group-writable as an older minigrad made it (umask 002): closed
        try:
            os.chmod(path, 0o700)
        except OSError:
            return False
    return _writable_dir(path)


def _choose_cache_dir(source_dir: str) -> str | None:
    """Where Numba should cache the kernels defined in `source_dir`: "" for Numba's default (the
    `__pycache__` beside them is writable), None when no candidate is writable."""
    if _writable_dir(os.path.join(source_dir, "__pycache__")):
        return ""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = os.getuid() if hasattr(os, "getuid") else "user"
    if _writable_dir(os.path.join(base, "minigrad", "numba")):
        return os.path.join(base, "minigrad", "numba")
    shared = os.path.join(tempfile.gettempdir(), f"minigrad-numba-{user}")
    return shared if _private_dir(shared) else None


def njit(**options):
    """`numba.njit(**options)`; with `cache=True` the kernel caches in a writable place (above),
    stamped with its neighbours' sources (`minigrad._numba_locators`)."""
    import numba
    from numba.core import config

    if not options.get("cache"):
        return numba.njit(**options)

    def decorate(fn):
        from ._numba_locators import LOCATORS

        cache_dir = config.CACHE_DIR or _choose_cache_dir(os.path.dirname(os.path.abspath(inspect.getfile(fn))))
        if cache_dir is None:  # nowhere to write: compiled at every start instead
            return numba.njit(**{**options, "cache": False})(fn)
        with _CONFIG_LOCK:  # two threads that set and restore in turn could leave the setting behind
            saved = config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES
            config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES = cache_dir, LOCATORS
            try:
                return numba.njit(**options)(fn)
            finally:
                config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES = saved

    return decorate
