"""Rounding to a low-precision element format in one pass: the "numba" impl of
`minigrad.precision.quantize` (fp16, bf16, fp8, fp4, ... emulated in a float32 carrier).

NumPy twins: `precision._round_arithmetic` and `precision._round_significand` (the bit-by-bit
version), which `precision._quantize_element` follows with the overflow rules this kernel applies
itself; tests/test_precision.py holds all three to ml_dtypes and to each other.
"""
import math

import numpy as np

from .._numba_cache import njit

# 2^k for k in [-1074, 1023] (every power of two float64 holds): the kernel scales by table lookup
# instead of calling ldexp, which is several times slower per element. POW2[k + POW2_OFFSET] = 2^k.
POW2_OFFSET = 1074
POW2 = np.ldexp(1.0, np.arange(-1074, 1024)).astype(np.float64)


@njit(nogil=True, cache=True)  # no fastmath: NaN and inf must behave
def round_nb(x, xbits, u, out, emin, man, maxv, rule, pow2, i0, i1):
    """Elements i0..i1-1 (GIL released: `minigrad.kernels._parallel_for` gives each thread its own
    range of output elements); see `_round_nb_serial`."""
    _round_nb_serial(x[i0:i1], xbits[i0:i1], u[i0:i1] if u.shape[0] else u, out[i0:i1],
                     emin, man, maxv, rule, pow2)


@njit(cache=True)  # no fastmath: NaN and inf must behave
def _round_nb_serial(x, xbits, u, out, emin, man, maxv, rule, pow2):
    """One pass of `_round_arithmetic` + the overflow rules, per element.

    x: flat float64; xbits: the same memory viewed as int64 (the exponent field is read from
    it); u: flat uniforms in [0, 1) for stochastic rounding, or empty for nearest-even; out:
    flat float32. rule: 0 overflow -> inf, 1 -> NaN, 2 -> saturate at maxv. pow2 is `POW2`.
    Works on |x| and puts the sign back, like the bit-by-bit version. The loop body has no
    data-dependent branch in the common path (a tie-breaking `if` made it ~25x slower):
    np.rint rounds half to even, and ±inf / NaN flow through the arithmetic unchanged
    (inf·2^k = inf, NaN stays NaN). The loop runs from index 0 over (sliced) flat arrays.
    """
    stochastic = u.shape[0] > 0
    for i in range(x.shape[0]):
        a = abs(x[i])
        efield = (xbits[i] >> 52) & 0x7FF
        q = max(efield - 1023, emin) - man  # the quantum is 2^q
        y = a * pow2[POW2_OFFSET - q]  # exact: a / 2^q
        if stochastic:
            f = math.floor(y)
            f += 1.0 if u[i] < y - f else 0.0  # up with probability = the fraction
        else:
            f = np.rint(y)  # nearest, ties to even
        r = f * pow2[POW2_OFFSET + q]  # exact: f * 2^q
        if r > maxv:  # overflow (and inf): rare, so this branch predicts well
            r = np.inf if rule == 0 else (np.nan if rule == 1 else maxv)
        out[i] = math.copysign(r, x[i])  # the sign bit back (also gives -0.0)
