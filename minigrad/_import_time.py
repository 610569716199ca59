"""The moment minigrad was imported, recorded by `minigrad/__init__.py` after everything it
imports: the compiled kernels come later, on first use, so a kernel source file edited after this
moment may differ from the code this process runs (`minigrad/_numba_locators.py`). A leaf module."""
import time

IMPORTED_AT = time.time()
