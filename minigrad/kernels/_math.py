"""Scalar helpers shared by the kernels: a vectorisable exp, tanh, typed constants, flags.

Why a hand-written exp? Numba's `np.exp`/`math.exp` on a scalar lowers to a call into libm
that LLVM cannot vectorise (the pip build of Numba ships no SVML), so a softmax written with it
ran 8.5x slower than PyTorch. `fast_exp` on float32 is the classic Cody-Waite range reduction
x = n*ln2 + r, |r| <= ln2/2, followed by a degree-6 minimax polynomial for e^r (the Cephes
`expf` coefficients) and 2^n built directly in the exponent bits. Measured max relative error
2.5e-7 (about 2 ulp) over N(0, 5^2) inputs; it is branch-free, so LLVM turns a loop of it into
AVX2 code (12x faster than Numba's libm call, 5x faster than `np.exp` on this machine).
Inputs are clamped to [-87, 88]: below, the result is ~1.6e-38 instead of 0 (harmless in a
softmax, whose terms are compared with 1); above, it stays finite. NaN propagates.
float64 inputs use `math.exp`, so float64 gradchecks see full double precision.

`typed(arr, value)` turns a Python float constant into the array's dtype: in Numba a float32
times a Python float literal is promoted to float64, which halves the SIMD width and changes
rounding. Every constant in a dtype-generic kernel goes through it.

FASTMATH keeps every LLVM fast-math flag except `nnan` and `ninf`: reassociation lets loops
vectorise, but the compiler may not assume away NaN/inf, so overflow stays detectable.

Why a `fast_max`? Without `nnan`, LLVM will not vectorise a running max written with `max` or a
compare-and-select: a row's max stays a chain of scalar `vmaxss`, half of a cross-entropy
forward at V = 512. `fast_max` is LLVM's `maxnum`, whose NaN rule is fixed (a NaN operand is
dropped, the other returned), and LLVM vectorises a `maxnum` reduction without any fast-math
assumption: 16 lanes, 4 vectors interleaved, so 64 elements a pass on AVX-512. A shorter row
never enters that loop, and `maxnum`'s scalar form (a compare and a blend for its NaN rule) is
slower than `max`'s, so a kernel tests `n >= VECTOR_MAX_FROM` once per call and then takes
`max_vectorised(row)` or `max_scalar(row)` for every row. (One helper holding both loops and the
test, called per row, ran rows of 8-32 elements 1.2-1.8x slower than the plain loop.) A NaN in
a row may be skipped by the max but is not lost: the kernels' next sweep, exp(x - max), turns
it into a NaN sum, as NumPy's `x.max()` would.

Every serial kernel is compiled with `error_model="numpy"` as well. Numba's default ("python")
checks each float division for a zero divisor so that it can raise ZeroDivisionError; that
branch stops LLVM from vectorising any loop that divides (measured: the serial GELU ran 3.4x
slower than the same loop inside a `parallel=True` kernel, where Numba always uses the NumPy
model). With it, x/0 gives inf or NaN as in NumPy, which the NaN/inf checks then see.

Caching note: every kernel compiles these helpers in. Numba's on-disk cache alone keys a kernel
on its own source file, so an edit here would not reach the cached kernels; minigrad's kernels
cache with a stamp that covers every file of this package (`minigrad._numba_locators`), so they
are compiled again after an edit here.
"""
import math

import numpy as np
from numba import njit, types
from numba.core import config
from numba.extending import intrinsic, overload

FASTMATH = set({"nsz", "arcp", "contract", "afn", "reassoc"})


def typed(arr, value):
    """`value` as a scalar of `arr`'s dtype (plain-Python version, used with NUMBA_DISABLE_JIT)."""
    return arr.dtype.type(value)


@overload(typed)
def _typed_ov(arr, value):
    if isinstance(arr, types.Array) and arr.dtype == types.float32:
        return lambda arr, value: np.float32(value)
    return lambda arr, value: np.float64(value)


if config.DISABLE_JIT:
    def _int_bits_as_f32(i):
        return np.int32(i).view(np.float32)
else:
    @intrinsic
    def _int_bits_as_f32(typingctx, i):
        """Reinterpret the bits of an int32 as a float32 (no conversion)."""
        from llvmlite import ir

        sig = types.float32(types.int32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return sig, codegen


@njit(fastmath=FASTMATH)
def _exp_f32(x):
    x = x if not (x < np.float32(-87.0)) else np.float32(-87.0)
    x = x if not (x > np.float32(88.0)) else np.float32(88.0)
    n = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    r = x - n * np.float32(0.693359375)          # ln2 split in two (Cody-Waite):
    r = r - n * np.float32(-2.12194440e-4)       # hi part exact in float32
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _int_bits_as_f32((np.int32(n) + np.int32(127)) << np.int32(23))


def fast_exp(x):
    """e**x; float32 via the vectorisable polynomial above, float64 via math.exp."""
    return np.exp(x)


@overload(fast_exp)
def _fast_exp_ov(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


def fast_max(a, b):
    """max(a, b) with LLVM `maxnum`'s NaN rule: a NaN operand is dropped (module docstring).
    This plain version runs under NUMBA_DISABLE_JIT; compiled, a and b must share a float type."""
    return b if a != a or b > a else a


if not config.DISABLE_JIT:
    @intrinsic
    def _maxnum(typingctx, a, b):
        """`llvm.maxnum` on two floats of one type: a vectorisable max."""
        from llvmlite import ir

        if not isinstance(a, types.Float) or a != b:
            return None

        def codegen(context, builder, signature, args):
            ty = context.get_value_type(signature.return_type)
            fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
            return builder.call(fn, args)

        return a(a, b), codegen

    @overload(fast_max)
    def _fast_max_ov(a, b):
        if isinstance(a, types.Float) and a == b:
            return lambda a, b: _maxnum(a, b)


#: the shortest row whose `max_vectorised` loop vectorises (16 lanes x 4 interleaved vectors)
VECTOR_MAX_FROM = 64


@njit(fastmath=FASTMATH, error_model="numpy")
def max_vectorised(row):
    """The max of a 1-D float array through `fast_max` (-inf when empty): for rows of
    VECTOR_MAX_FROM elements or more."""
    m = typed(row, -np.inf)
    for j in range(row.shape[0]):
        m = fast_max(m, row[j])
    return m


@njit(fastmath=FASTMATH, error_model="numpy")
def max_scalar(row):
    """The max of a 1-D float array through `max` (-inf when empty): for shorter rows."""
    m = typed(row, -np.inf)
    for j in range(row.shape[0]):
        m = max(m, row[j])
    return m


def fast_tanh(x):
    """tanh(x); float32 as 1 - 2/(e^{2x}+1) with `fast_exp` (abs. error ~1e-7), float64 exact."""
    return np.tanh(x)


@overload(fast_tanh)
def _fast_tanh_ov(x):
    if x == types.float32:
        def impl(x):
            return np.float32(1.0) - np.float32(2.0) / (_exp_f32(np.float32(2.0) * x) + np.float32(1.0))
        return impl
    return lambda x: math.tanh(x)

