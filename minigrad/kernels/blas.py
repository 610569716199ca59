"""NumPy's own BLAS GEMM called from compiled code, so that a pool worker runs its range of a GEMM
without taking the GIL, and so that the attention kernels' tile products use the faster of the
two OpenBLAS builds a pip install brings (`dot`, at the end).

Why: a range that starts in Python must wait for the GIL, and on the 2-core VM a thread waiting
for the GIL sleeps on a futex that took tens of microseconds to wake: 0.1-0.2 ms per split GEMM,
3-4 ms of a GPT `tiny` step. Here a range of `minigrad.kernels.gemm` is a row of 15 int64 numbers
(a *descriptor*: the BLAS function's address, the shapes, the operands' addresses and leading
dimensions), and `run_gemm` is a nogil Numba function that calls `cblas_sgemm`/`cblas_dgemm`
through that address. The pool's spinning workers (`pool._serve`) run it the moment they see the
descriptor; the calling thread runs its own range with the same function, so every range takes
the same path.

The BLAS is NumPy's bundled OpenBLAS (scipy-openblas; `minigrad._blas`), the library `a @ b`
calls, with 64-bit integers (its ILP64 build, symbols `scipy_cblas_?gemm64_`) or 32-bit ones
(`cblas_?gemm`). Where NumPy uses another BLAS, `gemm_functions()` is None and `gemm` runs its
ranges in Python instead. The addresses are arguments, not constants of the compiled code, so it
is cached on disk like every kernel and stays right when the library moves.

Descriptor row (all int64): FN (the ?gemm address), ILP64 (1: 64-bit integers),
ITEMSIZE (4 or 8), TRANS_A, TRANS_B (CblasNoTrans 111 / CblasTrans 112), M, N, K, A, LDA, B, LDB,
C, LDC (addresses and leading dimensions, row-major as CBLAS counts them), BIAS (the address of
the N bias values of this range's columns, 0 for none). C = op(A) op(B) (+ bias broadcast over
the rows): the bias is written into C first and the GEMM adds to it (beta = 1), so it costs no
pass of its own.
"""
from __future__ import annotations

import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba.core import config, types
from numba.extending import intrinsic

from .._numba_cache import njit

SLOTS = 15
FN, ILP64, ITEMSIZE, TRANS_A, TRANS_B, M, N, K, A, LDA, B, LDB, C, LDC, BIAS = range(SLOTS)
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112                 # the CBLAS enums


def _gemm_caller(single: bool, int_bits: int):
    """An intrinsic that calls cblas_?gemm (float32 when `single`) at an address given as an
    int64, with `int_bits`-bit integer arguments: (fn, trans_a, trans_b, m, n, k, a, lda, b,
    ldb, beta, c, ldc), alpha = 1, row-major. The enums are C ints (32 bits) in both builds."""
    @intrinsic
    def call(typingctx, fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
        sig = types.void(*([types.int64] * 10 + [types.float64] + [types.int64] * 2))

        def codegen(context, builder, signature, args):
            fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc = args
            enum, size = ir.IntType(32), ir.IntType(int_bits)
            real = ir.FloatType() if single else ir.DoubleType()
            ptr = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [enum, enum, enum, size, size, size, real, ptr, size,
                                                   ptr, size, real, ptr, size])
            as_size = (lambda v: v) if int_bits == 64 else (lambda v: builder.trunc(v, size))
            builder.call(builder.inttoptr(fn, fnty.as_pointer()), [
                ir.Constant(enum, ROW_MAJOR), builder.trunc(trans_a, enum), builder.trunc(trans_b, enum),
                as_size(m), as_size(n), as_size(k), ir.Constant(real, 1.0),
                builder.inttoptr(a, ptr), as_size(lda), builder.inttoptr(b, ptr), as_size(ldb),
                builder.fptrunc(beta, real) if single else beta, builder.inttoptr(c, ptr), as_size(ldc)])
            return context.get_dummy_value()
        return sig, codegen
    return call


_sgemm64, _sgemm32 = _gemm_caller(True, 64), _gemm_caller(True, 32)
_dgemm64, _dgemm32 = _gemm_caller(False, 64), _gemm_caller(False, 32)


def _pointer_to(dtype):
    """An intrinsic turning an int64 address into a typed pointer, for `numba.carray`."""
    @intrinsic
    def cast(typingctx, address):
        ptr_type = types.CPointer(dtype)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(ptr_type))
        return ptr_type(types.int64), codegen
    return cast


_f32_pointer, _f64_pointer = _pointer_to(types.float32), _pointer_to(types.float64)


@njit(nogil=True, cache=True)
def _fill_bias(c, bias, m, n, ldc):
    """c[r * ldc + j] = bias[j] for the m x n block (the rows of C are ldc apart)."""
    for r in range(m):
        c[r * ldc:r * ldc + n] = bias


@njit(nogil=True, cache=True)
def run_gemm(desc, row):
    """The GEMM described by desc[row] (module docstring). GIL released: a pool worker runs it
    inside its spin loop, the calling thread through Numba's dispatcher."""
    d = desc[row]
    m, n, k = d[M], d[N], d[K]
    if m == 0 or n == 0:
        return
    beta = 0.0
    if d[BIAS] != 0:
        extent = (m - 1) * d[LDC] + n                       # the elements from C's first to last
        if d[ITEMSIZE] == 4:
            _fill_bias(numba.carray(_f32_pointer(d[C]), extent), numba.carray(_f32_pointer(d[BIAS]), n),
                       m, n, d[LDC])
        else:
            _fill_bias(numba.carray(_f64_pointer(d[C]), extent), numba.carray(_f64_pointer(d[BIAS]), n),
                       m, n, d[LDC])
        beta = 1.0
    args = (d[FN], d[TRANS_A], d[TRANS_B], m, n, k, d[A], d[LDA], d[B], d[LDB], beta, d[C], d[LDC])
    if d[ITEMSIZE] == 4:
        if d[ILP64]:
            _sgemm64(*args)
        else:
            _sgemm32(*args)
    elif d[ILP64]:
        _dgemm64(*args)
    else:
        _dgemm32(*args)


@njit(cache=True)
def address(x):
    """The address of x's first element: `x.ctypes.data` in a fifth of its time (0.5 us against
    2.5 us), which counts when a `tiny` GEMM takes 0.3 ms and needs four of them."""
    return x.ctypes.data


_functions = {}


def gemm_functions():
    """{itemsize: address} of NumPy's cblas_sgemm (4) and cblas_dgemm (8), with "ilp64": 1 or 0;
    None where NumPy's BLAS is not its bundled OpenBLAS or lacks them."""
    if "found" not in _functions:
        from .._blas import numpy_openblas

        _functions["found"] = find_gemm(numpy_openblas())
    return _functions["found"]


def find_gemm(lib):
    """`gemm_functions()` of the ctypes library `lib` (None for no library): the CBLAS GEMMs
    under the names scipy-openblas exports, with 64-bit integers (ILP64, NumPy's wheels) or
    32-bit ones (LP64, e.g. SciPy's wheels), or plain CBLAS names."""
    for names, ilp64 in ((("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"), 1),
                         (("cblas_sgemm64_", "cblas_dgemm64_"), 1),
                         (("scipy_cblas_sgemm", "scipy_cblas_dgemm"), 0), (("cblas_sgemm", "cblas_dgemm"), 0)):
        try:
            fns = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
        except AttributeError:                              # (also when lib is None)
            continue
        return {4: fns[0], 8: fns[1], "ilp64": ilp64}
    return None


@njit(nogil=True, cache=True)
def operand(x):
    """(trans, ld) telling CBLAS how to read the 2-D array x in row-major terms: a C-ordered x
    as it is, a transposed view (F-ordered) as the transpose of a row-major array; (0, 0) when
    its strides fit neither (negative, or both non-unit), and it must be copied first. Compiled,
    as `dot` calls it too; `gemm` calls it from Python."""
    rows, cols = x.shape
    s0, s1 = x.strides
    item = x.itemsize
    if (s1 == item or cols <= 1) and s0 > 0 and s0 % item == 0 and s0 // item >= max(1, cols):
        return NO_TRANS, s0 // item
    if (s0 == item or rows <= 1) and s1 > 0 and s1 % item == 0 and s1 // item >= max(1, rows):
        return TRANS, s1 // item
    if rows <= 1 and cols <= 1:
        return NO_TRANS, 1
    return 0, 0


@njit(nogil=True, cache=True)
def dot(table, a, b, out):
    """out = a @ b for float32 or float64 2-D arrays a and b whose rows or columns are contiguous
    (a C-ordered array or its `.T`) and a C-contiguous out (both paths need it: BLAS is given
    ldc = n, and Numba's `np.dot` refuses another out), through the GEMM of `dot_table()`
    (NumPy's OpenBLAS), or `np.dot` (SciPy's OpenBLAS, which Numba calls) where the table is
    zeros or a or b has strides BLAS cannot read.

    Why not always `np.dot`: on the attention kernels' tiles NumPy's OpenBLAS build was faster
    than SciPy's (measured on the 2-core VM: (64, 16) x (16, 64) in 2.4 against 2.9 us, (64, 32)
    x (32, 64) in 3.9 against 4.8 us; the call path costs the same), which made causal attention
    forward + backward in one thread 10-27% faster at GPT `tiny` and `small`."""
    ta, lda = operand(a)
    tb, ldb = operand(b)
    if table[0] == 0 or ta == 0 or tb == 0:
        np.dot(a, b, out)
        return
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        out[:] = 0.0
        return
    args = (ta, tb, m, n, k, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, out.ctypes.data, n)
    if a.itemsize == 4:
        if table[2]:
            _sgemm64(table[0], *args)
        else:
            _sgemm32(table[0], *args)
    elif table[2]:
        _dgemm64(table[1], *args)
    else:
        _dgemm32(table[1], *args)


def dot_table():
    """The int64 table `dot` takes: the addresses of NumPy's cblas_sgemm and cblas_dgemm and 1
    for 64-bit integers (`gemm_functions()`), or zeros (np.dot) where they are not found or under
    NUMBA_DISABLE_JIT, where the call through an address cannot run."""
    if "table" not in _functions:
        found = None if config.DISABLE_JIT else gemm_functions()
        _functions["table"] = np.array([0, 0, 0] if found is None else [found[4], found[8], found["ilp64"]],
                                       np.int64)
    return _functions["table"]
