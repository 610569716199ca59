"""Low-precision number formats, emulated bit by bit in NumPy.

Every format here is *emulated*: values are rounded to what the format can hold and then kept in a
float32 array (the "carrier"), so the rest of minigrad can compute with them unchanged. `encode` and
`decode` convert to and from the real bit patterns, so a student can see the bits.

Formats (``fmt`` argument)
--------------------------
====================  =====  =====  ====  ===========  ====================================================
name                  exp    man    bias  max finite   specials / overflow (default, ``saturate=None``)
====================  =====  =====  ====  ===========  ====================================================
``"fp32"``            8      23     127   3.40e38      IEEE: inf and NaN; overflow -> ±inf
``"fp16"``            5      10     15    65504        IEEE: inf and NaN; overflow -> ±inf
``"bf16"``            8      7      127   3.39e38      IEEE: inf and NaN; overflow -> ±inf
``"fp8_e4m3"``        4      3      7     448          no inf; NaN = S.1111.111 only; overflow -> NaN
``"fp8_e5m2"``        5      2      15    57344        IEEE: inf and NaN; overflow -> ±inf
``"fp4_e2m1"``        2      1      1     6            no inf, no NaN; overflow -> ±6 (saturates)
``"mxfp8_e4m3"``      blocks of 32 fp8_e4m3 elements sharing one E8M0 (power-of-two) scale
``"mxfp4"``           blocks of 32 fp4_e2m1 elements sharing one E8M0 (power-of-two) scale
``"nvfp4"``           blocks of 16 fp4_e2m1 elements, an fp8_e4m3 block scale, one fp32 tensor scale
====================  =====  =====  ====  ===========  ====================================================

"Overflow" means: the value rounded as if the exponent range were unbounded is larger than the
largest finite value (this is IEEE 754's rule, so 65519 rounds to 65504 in fp16 but 65520 becomes
inf). The defaults match ``ml_dtypes`` (``float16``, ``bfloat16``, ``float8_e4m3fn``,
``float8_e5m2``, ``float4_e2m1fn``), and the tests check that on every representable value and every
midpoint. In particular fp8_e4m3 is the "fn" (finite) variant: 448 is its largest value, 464 (the
midpoint to the would-be 480) ties to even and gives 448, anything above gives NaN, and ±inf gives
NaN. Pass ``saturate=True`` to clamp overflow (and ±inf) to ±max instead, as the FP8 recipes of
NVIDIA's Transformer Engine and the OCP MX spec do for scaled data; NaN stays NaN. (torch's
casts, CPU, 2.13: to float8_e5m2 as the default rule, ±inf; to float8_e4m3fn as
``saturate=True``, ±448.) ``scaled_quantize`` saturates for weights and activations; the
gradient path of ``minigrad.amp`` keeps the default rule, so an inf gradient reaches the loss
scaler instead of passing as ±max. One difference
from ``ml_dtypes``: a NaN loses its sign here, encoded as the positive quiet NaN code (0x7e00 in
fp16, 0x7f in fp8_e4m3) where ``ml_dtypes`` keeps the sign bit (0xfe00, 0xff); no rule reads it.
fp4_e2m1 has no NaN code: ``quantize`` passes a NaN through in the float32 carrier (so a loss scaler
can still see it) and ``encode`` refuses it with a ValueError (``ml_dtypes`` maps +NaN to -0 and
-NaN to +0).

Rounding
--------
``rounding="nearest"``: round to nearest, ties to even (IEEE default). ``rounding="stochastic"``:
round up with probability equal to the distance to the lower neighbour divided by the gap, so the
expectation equals the input (Gupta et al., "Deep Learning with Limited Numerical Precision", ICML
2015). Both are written on the integer significand (see `_round_significand`, ``impl="bits"``), which is
what hardware does; a NumPy-arithmetic twin (`_round_arithmetic`, ``impl="fast"``) gives
identical nearest results faster (~5x, measured once when written), and a one-pass Numba
kernel (``impl="numba"``, the default under minigrad's numba backend) faster again. All work in float64 (or exactly in float32), so
float64 inputs are rounded once (no double rounding through float32).

Block-scaled formats
--------------------
MX (OCP Microscaling Formats spec v1.0, 2023; reference code microsoft/microxcaling ``_quantize_mx``):
a block of 32 values V shares X = 2^(floor(log2 max|V|) - emax_elem), stored as E8M0 (an 8-bit
biased exponent, 255 = NaN); elements are quantize_elem(V / X) with saturation. With that "floor"
rule max|V|/X lies in [2^emax, 2^(emax+1)), so for fp4 (max 6, emax 2) values in (6, 8)·X saturate
to 6·X, and for e4m3 (max 448, emax 8) values in (448, 512)·X saturate. ``scale_rule="ceil"`` picks
the next power of two when needed so no element saturates.

NVFP4 (NVIDIA Blackwell; NVIDIA, "Pretraining Large Language Models with NVFP4", 2025, arXiv
2509.25149): per-tensor encode scale s = 448·6 / amax(tensor) (1 if amax is 0), block
scale b = e4m3(amax(block) · (s · 1/6)) (round to nearest, saturating), elements
q = e2m1(x / (b · s_dec)) with s_dec = 1/s (saturating), dequantized x̂ = q · (b · s_dec). This is
[code] NVIDIA Transformer Engine, common/cast/nvfp4/core_nvfp4.cuh
(`compute_global_encode_scaling_factor_FP4`, `compute_decoding_scaling_factor`) and the NVFP4
quantize kernel (``block_scale_inverse = 1 / (S_dec_b · S_dec)``), read in a public copy of that file;
the float32 operation order follows it, but no bit-exact comparison against TE was run (no GPU).
As in TE, the two float32 scales that can overflow are clamped at the float32 max: s when the
tensor amax is below 448·6/3.4e38 ≈ 7.9e-36, and the per-block reciprocal 1/(b · s_dec) when a
block amax is below ~6/3.4e38 ≈ 1.8e-38, since b · s_dec ≈ amax(block)/6
(``compute_scaling_coefficient`` in the same file). The clamp keeps such a block finite but
shrinks it: its elements are scaled by the float32 max instead of 1/(b · s_dec), so they land
below 6 and lose accuracy (tiny ones round to zero).
The random Hadamard transform, 2-D 16x16 weight blocks and the stochastic rounding of gradients
of the NVFP4 pretraining recipe are not part of this format function.
Because amax(block) ≤ amax(tensor) the block scale never exceeds 448, so the e4m3 scale cannot
overflow; but rounding b to nearest can put x·s/b up to 6·(1 + 2^-4), and those values saturate to 6.
``scale_rule="ceil"`` rounds b up instead (no element saturates).

Blocks run along the last axis; a last axis that is not a multiple of the block size is padded with
zeros for the scale computation (padding never changes a block's amax).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend

__all__ = [
    "Format", "FORMATS", "ELEMENT_FORMATS", "BLOCK_FORMATS", "finfo", "quantize", "encode", "decode",
    "BlockEncoded", "ulp", "bits_per_element", "scaled_quantize", "representable_values",
    "encode_e8m0", "decode_e8m0",
]


# ----------------------------------------------------------------------------------------------
# Format descriptions
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """A binary floating-point element format: 1 sign bit, `exp_bits`, `man_bits`.

    nan: "ieee" (exponent all ones and mantissa != 0 is NaN, mantissa 0 is inf),
         "all_ones" (only S.1...1.1...1 is NaN, no inf: the OCP/NVIDIA "fn" FP8 variant),
         "none" (every pattern is a finite number).
    overflow: what round-to-nearest does with values past `max` by default: "inf", "nan", "saturate".
    ml_dtype: the matching numpy / ml_dtypes type name, used by the tests to cross-check.
    """

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    nan: str
    overflow: str
    ml_dtype: str

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def emax(self) -> int:
        """Largest unbiased exponent of a finite value."""
        top = (1 << self.exp_bits) - 1  # all-ones exponent field
        return (top - 1 if self.nan == "ieee" else top) - self.bias

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (exponent field 1)."""
        return 1 - self.bias

    @property
    def max(self) -> float:
        m = self.man_bits
        if self.nan == "all_ones":  # the all-ones mantissa at the top exponent is NaN
            return (2.0 - 2.0 ** (1 - m)) * 2.0 ** self.emax
        return (2.0 - 2.0 ** -m) * 2.0 ** self.emax

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** self.emin

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.man_bits)

    @property
    def eps(self) -> float:
        """Gap between 1 and the next representable number."""
        return 2.0 ** -self.man_bits

    @property
    def has_inf(self) -> bool:
        return self.nan == "ieee"


FORMATS: dict[str, Format] = {
    "fp32": Format("fp32", 8, 23, 127, "ieee", "inf", "float32"),
    "fp16": Format("fp16", 5, 10, 15, "ieee", "inf", "float16"),
    "bf16": Format("bf16", 8, 7, 127, "ieee", "inf", "bfloat16"),
    "fp8_e4m3": Format("fp8_e4m3", 4, 3, 7, "all_ones", "nan", "float8_e4m3fn"),
    "fp8_e5m2": Format("fp8_e5m2", 5, 2, 15, "ieee", "inf", "float8_e5m2"),
    "fp4_e2m1": Format("fp4_e2m1", 2, 1, 1, "none", "saturate", "float4_e2m1fn"),
}
ELEMENT_FORMATS = tuple(FORMATS)

# block format -> (element format, block size, scale kind)
BLOCK_FORMATS: dict[str, tuple[str, int, str]] = {
    "mxfp8_e4m3": ("fp8_e4m3", 32, "e8m0"),
    "mxfp4": ("fp4_e2m1", 32, "e8m0"),
    "nvfp4": ("fp4_e2m1", 16, "e4m3"),
}
ALL_FORMATS = ELEMENT_FORMATS + tuple(BLOCK_FORMATS)


def finfo(fmt: str) -> Format:
    """The `Format` record of an element format (max, eps, smallest_normal, ...)."""
    if fmt not in FORMATS:
        raise ValueError(
            f"finfo: unknown element format {fmt!r}; choose one of {list(FORMATS)} "
            f"(block formats {list(BLOCK_FORMATS)} have no single finfo)")
    return FORMATS[fmt]


def _check_fmt(fmt, where):
    if fmt not in ALL_FORMATS:
        raise ValueError(f"{where}: unknown format {fmt!r}; choose one of {list(ALL_FORMATS)}")


def bits_per_element(fmt: str, numel: int | None = None) -> float:
    """Storage cost in bits per value, counting block and tensor scales.

    mxfp8_e4m3: 8 + 8/32 = 8.25; mxfp4: 4 + 8/32 = 4.25; nvfp4: 4 + 8/16 (+ 32/numel) = 4.5.
    """
    _check_fmt(fmt, "bits_per_element")
    if fmt in FORMATS:
        return float(FORMATS[fmt].bits)
    elem, block, kind = BLOCK_FORMATS[fmt]
    b = FORMATS[elem].bits + 8.0 / block
    if kind == "e4m3" and numel:
        b += 32.0 / numel
    return b


# ----------------------------------------------------------------------------------------------
# The rounding itself, on integer significands
# ----------------------------------------------------------------------------------------------
_U1 = np.uint64(1)
_MAX_SHIFT = 62  # keep (rem + random) inside uint64


def _round_significand(x64: np.ndarray, fmt: Format, rounding: str, rng) -> np.ndarray:
    """Round finite float64 values to `fmt`'s precision, with an unbounded exponent range above.

    Teaching walk-through. A finite float64 is (-1)^s · sig · 2^(e-52) with an integer significand
    `sig` (53 bits, the leading 1 made explicit for normal numbers). In the target format, numbers
    near |x| are the integer multiples of the quantum 2^q with q = max(e, emin) - man_bits: `man_bits`
    bits after the leading one, and below the smallest normal the spacing stays fixed (subnormals).
    So we drop the r = q - (e - 52) lowest bits of `sig`:

        kept = sig >> r           (truncate toward zero)
        rem  = sig & (2^r - 1)    (the dropped bits; the "half" point is 2^(r-1))

    nearest-even: add one to `kept` if rem > half, or rem == half and kept is odd (a tie goes to the
    neighbour whose last bit is 0).
    stochastic:   add one to `kept` if rem + R >= 2^r with R uniform on {0, ..., 2^r - 1}, i.e. with
                  probability rem / 2^r -- the fractional distance to the lower neighbour, so the
                  expected result is exactly x.

    The result kept · 2^q may carry into the next binade (kept = 2^(man_bits+1)); that is still the
    right value. Overflow past the format's max is decided by the caller.
    If r > 62 the lowest (r - 62) bits are shifted out first; then |x| < 2^-9 · quantum, nearest
    rounding gives 0 either way and stochastic rounding's probability is off by < 2^-62.
    """
    bits = x64.view(np.uint64)
    sign = (bits >> np.uint64(63)).astype(bool)
    efield = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
    frac = bits & np.uint64((1 << 52) - 1)
    normal = efield != 0
    sig = np.where(normal, frac | np.uint64(1 << 52), frac)
    e = np.where(normal, efield - 1023, -1022)  # exponent of the leading bit (for normals)

    q = np.maximum(e, fmt.emin) - fmt.man_bits  # exponent of the target's quantum at this magnitude
    r = q - (e - 52)  # bits to drop; >= 52 - man_bits >= 29 for every format here
    pre = np.maximum(r - _MAX_SHIFT, 0).astype(np.uint64)
    sig = sig >> pre
    r = np.minimum(r, _MAX_SHIFT).astype(np.uint64)

    kept = sig >> r
    rem = sig & ((_U1 << r) - _U1)
    if rounding == "nearest":
        half = _U1 << (r - _U1)
        odd = (kept & _U1).astype(bool)
        up = (rem > half) | ((rem == half) & odd)
    else:  # stochastic
        R = rng.integers(0, (_U1 << r).astype(np.int64), dtype=np.int64).astype(np.uint64)
        up = (rem + R) >= (_U1 << r)
    n = kept + up.astype(np.uint64)
    mag = np.ldexp(n.astype(np.float64), q)
    return np.where(sign, -mag, mag)


def _round_arithmetic(x: np.ndarray, fmt: Format, rounding: str, rng) -> np.ndarray:
    """The fast twin of `_round_significand`, in floating-point arithmetic.

    With q the quantum exponent as above, x·2^-q is exact (a power-of-two scaling), so
    rint (which rounds half to even) or floor + a uniform draw gives the rounded multiple of 2^q.
    Works in x's own dtype: float32 inputs stay float32 (every step is exact there too, since the
    target formats are no wider than float32). For nearest rounding the tests require it to equal
    the bit-by-bit version on every probe.
    """
    _, ex = np.frexp(x)  # |x| = m·2^ex with m in [0.5, 1): the leading bit has exponent ex-1
    q = np.maximum(ex - 1, fmt.emin) - fmt.man_bits
    y = np.ldexp(x, -q)
    if rounding == "nearest":
        n = np.rint(y)
    else:
        lo = np.floor(y)
        n = lo + (rng.random(y.shape, dtype=y.dtype) < (y - lo))  # up with probability = fraction
        n = np.copysign(n, x)  # keep the sign of a zero result (and of x == 0), as the bit version
    return np.ldexp(n, q)


_RULE_CODE = {"inf": 0, "nan": 1, "saturate": 2}


def _quantize_numba(x, fmt: Format, rounding, rng, saturate) -> np.ndarray:
    """The "numba" impl: round and apply the overflow rules in one pass (kernels/quantize.py)."""
    from .kernels import _parallel, _parallel_for
    from .kernels.quantize import POW2, round_nb

    x = np.asarray(x)
    xf = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    u = rng.random(xf.size) if rounding == "stochastic" else np.empty(0)
    out = np.empty(xf.size, np.float32)
    rule = _RULE_CODE["saturate" if saturate else fmt.overflow]
    _parallel_for(round_nb, xf.size, _parallel(xf.size), xf, xf.view(np.int64), u, out,
                  fmt.emin, fmt.man_bits, fmt.max, rule, POW2)
    return out.reshape(x.shape)


# impl name -> rounding function; "numba" (minigrad/kernels/quantize.py) also applies the overflow
# rules itself, so `_quantize_element` calls it apart from the other two. Listed whether or not
# Numba imports: choosing it imports Numba only when it runs.
_IMPLS = {"fast": _round_arithmetic, "bits": _round_significand, "numba": _quantize_numba}


def _resolve_impl(impl):
    if impl == "auto":
        return "numba" if backend.get_backend() == "numba" else "fast"
    if impl not in _IMPLS:
        raise ValueError(f"quantize: impl must be 'auto', {', '.join(map(repr, _IMPLS))}; got {impl!r}")
    if impl == "numba" and not backend.numba_available():
        raise RuntimeError("quantize: impl='numba' needs Numba, which failed to import; use impl='fast'")
    return impl


def _quantize_element(x, fmt: Format, rounding: str, rng, saturate, impl="auto") -> np.ndarray:
    """Round to an element format; apply the overflow / inf / NaN rules; return float32."""
    impl = _resolve_impl(impl)
    if impl == "numba":
        return _quantize_numba(x, fmt, rounding, rng, saturate)
    x = np.asarray(x)
    narrow = impl == "fast" and x.dtype in (np.float32, np.float16)
    xw = np.ascontiguousarray(x, dtype=np.float32 if narrow else np.float64)
    all_finite = bool(np.isfinite(xw).all())
    xin = xw if all_finite else np.where(np.isfinite(xw), xw, 0)
    with np.errstate(over="ignore"):
        y = _IMPLS[impl](xin, fmt, rounding, rng)
    if all_finite and (y.size == 0 or np.max(np.abs(y)) <= fmt.max):  # the common case: done
        return y.astype(np.float32, copy=False)

    over = np.abs(y) > fmt.max
    rule = "saturate" if saturate else fmt.overflow
    isinf = np.isinf(xw)
    sgn = np.where(np.signbit(xw), -1.0, 1.0)
    if rule == "saturate":
        y = np.where(over | isinf, sgn * fmt.max, y)
    elif rule == "inf":
        y = np.where(over | isinf, sgn * np.inf, y)
    else:  # "nan"
        y = np.where(over | isinf, np.nan, y)
    y = np.where(np.isnan(xw), np.nan, y)
    with np.errstate(over="ignore"):
        return y.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Public API: quantize
# ----------------------------------------------------------------------------------------------
def _rng(rounding, rng, where):
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"{where}: rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    if rounding == "stochastic":
        if rng is None:
            return np.random.default_rng()
        if isinstance(rng, (int, np.integer)):
            return np.random.default_rng(rng)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"{where}: rng must be a numpy Generator or a seed, got {type(rng).__name__}")
    return rng


def quantize(x, fmt: str, rounding: str = "nearest", rng=None, *, saturate: bool | None = None,
             scale_rule: str | None = None, impl: str = "auto") -> np.ndarray:
    """Round `x` to format `fmt`; return float32 values that the format represents exactly.

    x: array-like (float16/32/64). fmt: one of `ALL_FORMATS`. rounding: "nearest" (ties to even) or
    "stochastic" (unbiased; `rng` is a numpy Generator or a seed). saturate: element formats only --
    True clamps overflow and ±inf to ±max (default: the format's own rule, see the module docstring).
    scale_rule: block formats only -- "floor" (MX default, OCP spec) / "nearest" (NVFP4 default) or
    "ceil" (never saturate an element).
    impl: "bits" runs the bit-by-bit integer version written for reading (`_round_significand`),
    "fast" its NumPy-arithmetic twin (`_round_arithmetic`), "numba" a one-pass Numba kernel
    (`kernels.quantize.round_nb`); "auto" (default) is "numba" under the numba backend, else "fast". Nearest
    rounding is identical in all three (tested); stochastic rounding is unbiased in each (the
    random draws differ).
    The output has x's shape; for block formats blocks run along the last axis.
    """
    _check_fmt(fmt, "quantize")
    rng = _rng(rounding, rng, "quantize")
    impl = _resolve_impl(impl)
    if fmt in FORMATS:
        if scale_rule is not None:
            raise ValueError(f"quantize: scale_rule applies to block formats only, not {fmt!r}")
        return _quantize_element(x, FORMATS[fmt], rounding, rng, saturate, impl)
    if saturate is not None:
        raise ValueError(f"quantize: block format {fmt!r} always saturates its elements; drop saturate=")
    return decode(_encode_block(x, fmt, rounding, rng, scale_rule, impl, "quantize"))


def ulp(x, fmt: str) -> np.ndarray:
    """Spacing of `fmt`'s numbers at |x| (the gap to the next larger magnitude), as float64.

    For a value in [2^e, 2^(e+1)) with e >= emin it is 2^(e - man_bits); below the smallest normal it
    is the subnormal spacing 2^(emin - man_bits).
    """
    f = finfo(fmt)
    a = np.abs(np.asarray(x, dtype=np.float64))
    _, ex = np.frexp(a)
    e = np.where(a > 0, ex - 1, f.emin)
    return np.ldexp(1.0, np.maximum(e, f.emin) - f.man_bits)


def scaled_quantize(x, fmt: str, amax: float | None = None, margin: int = 0, rounding="nearest",
                    rng=None, *, saturate: bool = True) -> np.ndarray:
    """Per-tensor scaled cast, the FP8 recipe (Micikevicius et al. 2022; Transformer Engine):
    s = max_fmt / amax / 2^margin, x̂ = quantize(x·s, saturate=saturate) / s.

    ``saturate=True`` clamps overflow and ±inf to ±max: the recipe's rule for weights and
    activations (and what torch's cast to float8_e4m3fn does). ``saturate=False`` keeps the
    format's own rule -- fp8_e5m2: ±inf, as torch's cast to float8_e5m2; fp8_e4m3: NaN -- which
    gradients need, so that a loss scaler sees their overflow and skips the step. With the
    current amax only an inf or NaN in ``x`` can overflow; a given ``amax`` or ``margin`` may
    leave finite values past the range too.

    `amax` defaults to max|x| (current scaling; Transformer Engine's default "delayed scaling"
    takes it from a history of earlier steps instead). A zero or non-finite amax gives s = 1.
    An amax so tiny that s overflows float32 (below ~1.3e-36 for fp8_e4m3, ~1.7e-34 for
    fp8_e5m2) gives s = the float32 max, as in [code] NVIDIA Transformer Engine,
    common/recipe/recipe_common.cuh (`compute_scale_from_amax`): an infinite s would turn every
    element into 0 and every zero into NaN (0·inf).
    """
    f = finfo(fmt)
    x = np.asarray(x, dtype=np.float32)
    if amax is None:
        amax = float(np.max(np.abs(x))) if x.size else 0.0
    s = f.max / amax / 2.0 ** margin if (amax > 0 and np.isfinite(amax)) else 1.0
    s = np.float32(min(s, float(np.finfo(np.float32).max)))
    return (quantize(x * s, fmt, rounding, rng, saturate=saturate) / s).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Bit patterns
# ----------------------------------------------------------------------------------------------
def _uint_for(bits):
    return np.uint8 if bits <= 8 else (np.uint16 if bits <= 16 else np.uint32)


def _encode_element(v: np.ndarray, f: Format) -> np.ndarray:
    """Bit patterns of values that are already exactly representable in `f`."""
    v = np.asarray(v, dtype=np.float64)
    nan = np.isnan(v)
    if f.nan == "none" and nan.any():
        raise ValueError(f"encode: {f.name} has no NaN encoding ({int(nan.sum())} NaN values in input)")
    a = np.abs(np.where(nan, 0.0, v))
    inf = np.isinf(a)
    a = np.where(inf, 0.0, a)
    m, bias = f.man_bits, f.bias
    _, ex = np.frexp(a)
    e = ex - 1  # exponent of the leading bit (zero gives -1, which is < emin for every format here)
    sub = (e < f.emin) | (a == 0)
    efield = np.where(sub, 0, e + bias).astype(np.int64)
    mfield = np.where(sub, np.ldexp(a, -(f.emin - m)), (np.ldexp(a, -e) - 1.0) * 2.0 ** m)
    mfield = np.rint(mfield).astype(np.int64)
    top = (1 << f.exp_bits) - 1
    if f.has_inf:
        efield = np.where(inf | nan, top, efield)
        mfield = np.where(inf, 0, np.where(nan, 1 << (m - 1), mfield))  # quiet NaN
    elif f.nan == "all_ones":
        efield = np.where(nan, top, efield)
        mfield = np.where(nan, (1 << m) - 1, mfield)
    sign = np.signbit(v) & ~nan
    code = (sign.astype(np.int64) << (f.exp_bits + m)) | (efield << m) | mfield
    return code.astype(_uint_for(f.bits))


def _decode_element(code, f: Format) -> np.ndarray:
    c = np.asarray(code).astype(np.int64)
    m = f.man_bits
    if np.any((c < 0) | (c >= (1 << f.bits))):
        raise ValueError(f"decode: codes for {f.name} must lie in [0, {1 << f.bits})")
    sign = (c >> (f.exp_bits + m)) & 1
    efield = (c >> m) & ((1 << f.exp_bits) - 1)
    mfield = c & ((1 << m) - 1)
    mag = np.where(efield == 0,
                   np.ldexp(mfield.astype(np.float64), f.emin - m),  # subnormal: 0.mmm · 2^emin
                   np.ldexp(1.0 + mfield / 2.0 ** m, efield - f.bias))  # normal: 1.mmm · 2^(E-bias)
    top = (1 << f.exp_bits) - 1
    if f.has_inf:
        mag = np.where((efield == top) & (mfield == 0), np.inf, mag)
        mag = np.where((efield == top) & (mfield != 0), np.nan, mag)
    elif f.nan == "all_ones":
        mag = np.where((efield == top) & (mfield == (1 << m) - 1), np.nan, mag)
    return np.where(sign == 1, -mag, mag).astype(np.float32)


def encode_e8m0(exponent) -> np.ndarray:
    """E8M0 scale codes (OCP MX): code = exponent + 127 for exponents in [-127, 127]; 255 = NaN."""
    e = np.asarray(exponent, dtype=np.float64)
    bad = ~np.isfinite(e) | (e > 127)
    code = np.where(bad, 255, np.clip(e, -127, 127) + 127)
    return code.astype(np.uint8)


def decode_e8m0(code) -> np.ndarray:
    """Scale values 2^(code - 127); code 255 is NaN."""
    c = np.asarray(code).astype(np.int64)
    return np.where(c == 255, np.nan, np.ldexp(1.0, c - 127))


@dataclass
class BlockEncoded:
    """A block-scaled tensor as stored: element codes, block scale codes, optional tensor scale.

    codes: uint8 element codes (one per value, not nibble-packed), shape (..., nblocks, block).
    scales: uint8 block-scale codes, shape (..., nblocks): E8M0 for MX, fp8_e4m3 for NVFP4.
    tensor_scale: NVFP4's fp32 per-tensor *decode* scale amax/(448·6) (None for MX).
    shape: the original shape (the last axis is cropped back after decoding).
    """

    fmt: str
    codes: np.ndarray
    scales: np.ndarray
    tensor_scale: np.float32 | None
    shape: tuple

    def block_scale_values(self) -> np.ndarray:
        """Each block's dequantization multiplier as float64."""
        elem, _, kind = BLOCK_FORMATS[self.fmt]
        if kind == "e8m0":
            return decode_e8m0(self.scales)
        return (_decode_element(self.scales, FORMATS["fp8_e4m3"]).astype(np.float32)
                * np.float32(self.tensor_scale)).astype(np.float64)


def _blockify(x, block, where):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError(f"{where}: block formats need an array with at least one axis, got a scalar")
    n = x.shape[-1]
    pad = (-n) % block
    if pad:
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,), np.float32)], axis=-1)
    return x.reshape(x.shape[:-1] + (x.shape[-1] // block, block))


def _encode_block(x, fmt, rounding, rng, scale_rule, impl, where) -> BlockEncoded:
    elem_name, block, kind = BLOCK_FORMATS[fmt]
    ef = FORMATS[elem_name]
    shape = np.shape(x)
    B = _blockify(x, block, where).astype(np.float64)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(B), axis=-1)  # NaN propagates
    if kind == "e8m0":
        rule = scale_rule or "floor"
        if rule not in ("floor", "ceil"):
            raise ValueError(f"quantize: MX scale_rule must be 'floor' or 'ceil', got {rule!r}")
        # shared exponent = floor(log2 amax) - emax_elem  (OCP MX v1.0, section 6.3)
        _, ex = np.frexp(np.where(np.isfinite(amax) & (amax > 0), amax, 1.0))
        shared = (ex - 1 - ef.emax).astype(np.float64)
        if rule == "ceil":  # one more if the block max would saturate
            shared = np.where(np.ldexp(amax, -shared.astype(np.int64)) > ef.max, shared + 1, shared)
        shared = np.where(amax > 0, shared, -127.0)
        shared = np.where(np.isfinite(amax), np.maximum(shared, -127.0), np.nan)
        scodes = encode_e8m0(shared)
        X = decode_e8m0(scodes)[..., None]
        with np.errstate(invalid="ignore"):
            P = _quantize_element(B / X, ef, rounding, rng, True, impl)
        P = np.where(np.isnan(X), np.nan, P)
        codes = _encode_element(np.where(np.isnan(P), 0.0, P), ef)
        codes = np.where(np.isnan(P), 0, codes).astype(np.uint8)  # block NaN lives in its scale
        return BlockEncoded(fmt, codes, scodes, None, shape)

    # NVFP4: two-level scale
    rule = scale_rule or "nearest"
    if rule not in ("nearest", "ceil"):
        raise ValueError(f"quantize: NVFP4 scale_rule must be 'nearest' or 'ceil', got {rule!r}")
    f32 = np.float32
    e4m3 = FORMATS["fp8_e4m3"]
    B32 = B.astype(f32)
    amax_t = f32(np.max(amax)) if amax.size else f32(0)
    if not np.isfinite(amax_t):
        raise ValueError("quantize: nvfp4 input contains inf or NaN; it has no encoding for them")
    with np.errstate(divide="ignore", over="ignore"):
        s_enc = f32(min(f32(6.0 * 448.0) / amax_t, np.finfo(f32).max)) if amax_t > 0 else f32(1.0)
    s_dec = f32(f32(1.0) / s_enc)
    # the ideal block decode scale (<= 448), in TE's operation order: amax · (s_enc · (1/6))
    b_target = np.minimum(amax.astype(f32) * (s_enc * f32(1.0 / 6.0)), np.finfo(f32).max)
    b = _quantize_element(b_target, e4m3, "nearest", None, saturate=True)
    if rule == "ceil":  # next e4m3 value up wherever nearest rounded down
        b = np.where(b < b_target, _next_up_e4m3(b), b)
    scodes = _encode_element(b, e4m3)
    block_dec = (b.astype(f32) * s_dec).astype(f32)  # what `decode` multiplies by
    # For a block amax below ~1.8e-38, block_dec < 1/float32 max and its reciprocal overflows;
    # clamp it at the float32 max as TE does: an inf would saturate every element and make 0·inf NaN
    with np.errstate(divide="ignore", over="ignore"):
        enc = np.where(block_dec > 0, np.minimum(f32(1.0) / block_dec, np.finfo(f32).max),
                       f32(0.0)).astype(f32)
    P = _quantize_element(B32 * enc[..., None], ef, rounding, rng, True, impl)
    codes = _encode_element(P, ef).astype(np.uint8)
    return BlockEncoded(fmt, codes, scodes, s_dec, shape)


def _next_up_e4m3(b):
    """The next larger fp8_e4m3 value (capped at 448)."""
    f = FORMATS["fp8_e4m3"]
    return np.minimum(b + ulp(b, "fp8_e4m3"), f.max).astype(np.float32)


def encode(x, fmt: str, rounding: str = "nearest", rng=None, *, saturate: bool | None = None,
           scale_rule: str | None = None, impl: str = "auto"):
    """Bit patterns of quantize(x, fmt, ...) (the same options, checked the same way).

    Element formats: an unsigned integer array (uint8 for 8- and 4-bit formats, uint16, uint32),
    laid out sign | exponent | mantissa. Block formats: a `BlockEncoded` record.
    """
    _check_fmt(fmt, "encode")
    rng = _rng(rounding, rng, "encode")
    if fmt in FORMATS:
        q = quantize(x, fmt, rounding, rng, saturate=saturate, scale_rule=scale_rule, impl=impl)
        return _encode_element(q, FORMATS[fmt])
    if saturate is not None:
        raise ValueError(f"encode: block format {fmt!r} always saturates its elements; drop saturate=")
    return _encode_block(x, fmt, rounding, rng, scale_rule, impl, "encode")


def decode(codes, fmt: str | None = None) -> np.ndarray:
    """float32 values of bit patterns (element formats) or of a `BlockEncoded` record."""
    if isinstance(codes, BlockEncoded):
        enc = codes
        P = _decode_element(enc.codes, FORMATS[BLOCK_FORMATS[enc.fmt][0]])
        # a <= 3-bit significand times a <= 24-bit scale is exact in float64: one rounding
        with np.errstate(invalid="ignore"):
            out = (P.astype(np.float64) * enc.block_scale_values()[..., None]).astype(np.float32)
        out = out.reshape(out.shape[:-2] + (-1,))[..., : enc.shape[-1]]
        return out.reshape(enc.shape)
    if fmt is None:
        raise ValueError("decode: pass fmt= for element codes (or a BlockEncoded record)")
    _check_fmt(fmt, "decode")
    if fmt not in FORMATS:
        raise ValueError(f"decode: block format {fmt!r} needs a BlockEncoded record, not raw codes")
    return _decode_element(codes, FORMATS[fmt])


def representable_values(fmt: str, finite_only: bool = True) -> np.ndarray:
    """Every value of an element format with <= 16 bits, sorted, as float64 (+0 and -0 both kept)."""
    f = finfo(fmt)
    if f.bits > 16:
        raise ValueError(f"representable_values: {fmt} has 2^{f.bits} values; too many to list")
    v = _decode_element(np.arange(1 << f.bits), f).astype(np.float64)
    if finite_only:
        v = v[np.isfinite(v)]
    return np.sort(v)
