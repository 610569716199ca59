"""minigrad.precision: formats, rounding, bit patterns, block scaling.

Cross-checks against ml_dtypes (the `precision` extra) on every representable value and every
midpoint; checks the half-ulp bound, ties-to-even and the unbiasedness of stochastic rounding;
checks that block scales never let a block overflow.
"""
import numpy as np
import pytest

try:  # the `precision` extra; only the cross-checks need it
    import ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None
needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None,
                                     reason="ml_dtypes (the `precision` extra) is not installed")

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
from hypothesis import given, strategies as st

from minigrad import precision as P

SMALL = ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1"]
IMPLS = list(P._IMPLS)  # "fast", "bits" and, when Numba imports, "numba"


def ml_type(fmt):
    name = P.finfo(fmt).ml_dtype
    return np.dtype(getattr(ml_dtypes, name, None) or getattr(np, name))


def same(a, b):
    """Equal as float32 values, NaN == NaN, and the sign of zero must agree."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a[a == 0]),
                                                                  np.signbit(b[b == 0]))


def probe_points(fmt):
    """Every finite value, every midpoint, the float32 neighbours of each, plus out-of-range values."""
    v = np.unique(P.representable_values(fmt))  # -0 and +0 collapse: add both back below
    mids = (v[:-1] + v[1:]) / 2
    f = P.finfo(fmt)
    top = np.array([f.max + P.ulp(f.max, fmt) / 2, f.max + P.ulp(f.max, fmt), 2 * f.max])
    top = np.concatenate([top, -top])
    pts = np.concatenate([v, mids, top, [0.0, -0.0]]).astype(np.float32)
    up = np.nextafter(pts, np.float32(np.inf))
    down = np.nextafter(pts, np.float32(-np.inf))
    pts = np.concatenate([pts, up, down])
    return pts[np.isfinite(pts)]


# ---------------------------------------------------------------- formats and bit patterns
@needs_ml_dtypes
@pytest.mark.parametrize("fmt", SMALL)
def test_decode_matches_ml_dtypes_on_every_code(fmt):
    f = P.finfo(fmt)
    codes = np.arange(1 << f.bits, dtype=np.uint32)
    ref = codes.astype(P._uint_for(f.bits)).view(ml_type(fmt)).astype(np.float32)
    assert same(P.decode(codes, fmt), ref)


@pytest.mark.parametrize("fmt", SMALL)
def test_encode_inverts_decode_on_every_nonnan_code(fmt):
    f = P.finfo(fmt)
    codes = np.arange(1 << f.bits)
    vals = P.decode(codes, fmt)
    keep = ~np.isnan(vals)
    assert np.array_equal(P.encode(vals[keep], fmt).astype(np.int64), codes[keep])


@needs_ml_dtypes
@pytest.mark.parametrize("fmt", SMALL)
def test_encode_matches_ml_dtypes_bits(fmt):
    pts = probe_points(fmt)
    ref = pts.astype(ml_type(fmt))
    f = P.finfo(fmt)
    refbits = ref.view(P._uint_for(f.bits)) if f.bits >= 8 else ref.view(np.uint8)
    mine = P.encode(pts, fmt)
    ok = ~np.isnan(ref.astype(np.float32))
    assert np.array_equal(mine[ok], refbits[ok])


NAN_FORMATS = [f for f in P.ELEMENT_FORMATS if P.finfo(f).nan != "none"]  # fp32 fp16 bf16 e4m3 e5m2
MX_FORMATS = [f for f, (_, _, kind) in P.BLOCK_FORMATS.items() if kind == "e8m0"]


@needs_ml_dtypes
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fmt", NAN_FORMATS)
def test_nan_encodes_to_a_nan_code(fmt, impl):
    """encode(NaN) is ml_dtypes' NaN code (the quiet NaN, exponent and top mantissa bit set, of the
    IEEE formats; S.1111.111 for fp8_e4m3), from float32 and float64 input, saturating or not.
    encode(-NaN) is a NaN code too: the module and ml_dtypes both decode it to NaN, so it is neither
    an inf nor a finite code. Its sign bit is left unchecked: the module clears it, ml_dtypes keeps
    it, and the module's docstring does not say which."""
    ut = P._uint_for(P.finfo(fmt).bits)
    for dt in (np.float32, np.float64):
        x = np.array([np.nan, np.copysign(np.nan, -1.0)], dt)
        for saturate in (None, True):
            codes = P.encode(x, fmt, saturate=saturate, impl=impl)
            assert codes.dtype == ut
            assert codes[0] == x[:1].astype(ml_type(fmt)).view(ut)[0]
            assert np.isnan(P.decode(codes, fmt)).all()
            assert np.isnan(codes.view(ml_type(fmt)).astype(np.float32)).all()


@needs_ml_dtypes
def test_nan_in_scales_and_block_formats():
    """E8M0's one NaN code is 0xFF (as ml_dtypes' float8_e8m0fnu); an MX block holding a NaN (of
    either sign) gets that scale, so the whole block decodes to NaN (OCP MX v1.0) and the other
    blocks are untouched. fp4_e2m1 and nvfp4 have no NaN code: encode refuses NaN."""
    nan_code = np.array([np.nan], np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)[0]
    assert P.encode_e8m0([np.nan])[0] == nan_code and np.isnan(P.decode_e8m0(nan_code))
    for fmt in MX_FORMATS:
        x = np.ones((2, 64), np.float32)
        x[0, 40] = np.nan
        x[1, 3] = np.copysign(np.nan, -1.0)
        enc = P.encode(x, fmt)
        nan_block = np.array([[False, True], [True, False]])
        assert np.all(enc.scales[nan_block] == nan_code) and np.all(enc.scales[~nan_block] != nan_code)
        q = P.decode(enc).reshape(2, 2, 32)
        assert np.isnan(q[nan_block]).all() and np.all(q[~nan_block] == 1)
    with pytest.raises(ValueError, match="no NaN"):
        P.encode([1.0, np.nan], "fp4_e2m1")
    with pytest.raises(ValueError, match="NaN"):
        P.encode(np.r_[np.ones(15), np.nan], "nvfp4")


@needs_ml_dtypes
def test_format_constants():
    assert P.finfo("fp16").max == 65504 and P.finfo("fp16").smallest_subnormal == 2.0 ** -24
    assert P.finfo("fp8_e4m3").max == 448 and P.finfo("fp8_e5m2").max == 57344
    assert P.finfo("fp4_e2m1").max == 6
    assert sorted(set(np.abs(P.representable_values("fp4_e2m1")))) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    for fmt in SMALL:
        fi = ml_dtypes.finfo(ml_type(fmt))
        f = P.finfo(fmt)
        assert f.max == float(fi.max) and f.eps == float(fi.eps)
        assert f.smallest_normal == float(fi.smallest_normal)
        assert f.smallest_subnormal == float(fi.smallest_subnormal)
    assert P.bits_per_element("mxfp4") == 4.25 and P.bits_per_element("nvfp4") == 4.5


# ---------------------------------------------------------------- nearest rounding
@needs_ml_dtypes
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fmt", SMALL)
def test_nearest_matches_ml_dtypes_on_values_midpoints_and_neighbours(fmt, impl):
    pts = probe_points(fmt)
    ref = pts.astype(ml_type(fmt)).astype(np.float32)
    assert same(P.quantize(pts, fmt, impl=impl), ref)


@pytest.mark.parametrize("fmt", SMALL + ["fp32"])
def test_fast_twin_equals_bit_by_bit_rounding(fmt):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(5000) * 2.0 ** rng.integers(-160, 140, 5000)
    pts = np.concatenate([x, probe_points(fmt) if fmt != "fp32" else x[:0], [0.0, -0.0]])
    ref = P.quantize(pts, fmt, impl="bits")
    for impl in IMPLS:
        assert same(P.quantize(pts, fmt, impl=impl), ref), impl
        assert same(P.quantize(pts.astype(np.float32), fmt, impl=impl),
                    P.quantize(pts.astype(np.float32), fmt, impl="bits")), impl


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fmt", SMALL)
def test_ties_go_to_even(fmt, impl):
    v = np.unique(P.representable_values(fmt))
    mids = ((v[:-1] + v[1:]) / 2).astype(np.float32)
    q = P.quantize(mids, fmt, impl=impl)
    lo, hi = v[:-1], v[1:]
    assert np.all((q == lo) | (q == hi))  # a neighbour, never anything else
    codes = P.encode(q, fmt).astype(np.int64)
    assert np.all(codes & 1 == 0), "a tie must land on the neighbour with an even last mantissa bit"


@pytest.mark.parametrize("fmt", SMALL + ["fp32"])
@given(data=st.data())
def test_nearest_errs_by_at_most_half_an_ulp(fmt, data):
    f = P.finfo(fmt)
    lim = min(f.max, 3e38)
    x = np.array(data.draw(st.lists(st.floats(-lim, lim, allow_nan=False, width=64), min_size=1,
                                    max_size=50)))
    q = P.quantize(x, fmt, impl="bits").astype(np.float64)
    err = np.abs(q - x)
    assert np.all(err <= P.ulp(x, fmt) / 2)
    assert np.all(np.abs(q) <= f.max)


def test_float64_inputs_round_once():
    """x = 1 + 2^-11 + 2^-40 is just above the fp16 midpoint: direct rounding goes up, while going
    through float32 first lands exactly on the midpoint and ties down to 1."""
    x = np.array([1 + 2 ** -11 + 2 ** -40, 1 + 2 ** -8 + 2 ** -40])
    assert P.quantize(x[:1], "fp16")[0] == 1 + 2 ** -10
    assert P.quantize(x[1:], "bf16")[0] == 1 + 2 ** -7
    rng = np.random.default_rng(0)
    y = rng.standard_normal(2000) * 10.0 ** rng.integers(-40, 38, 2000)
    y = np.concatenate([y, rng.standard_normal(200) * 1e-42])  # float32 subnormals
    assert same(P.quantize(y, "fp32"), y.astype(np.float32))
    assert same(P.quantize(y, "fp16"), y.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_overflow_saturation_and_nan_rules(impl):
    """Every implementation (the NumPy twins and the Numba kernel) applies the same rules."""
    big = np.array([1e6, -1e6, np.inf, -np.inf, np.nan])
    assert same(P.quantize(big, "fp16", impl=impl), [np.inf, -np.inf, np.inf, -np.inf, np.nan])
    assert same(P.quantize(big, "fp8_e5m2", impl=impl), [np.inf, -np.inf, np.inf, -np.inf, np.nan])
    assert np.isnan(P.quantize(big, "fp8_e4m3", impl=impl)).all()
    assert same(P.quantize(big, "fp8_e4m3", saturate=True, impl=impl), [448, -448, 448, -448, np.nan])
    assert same(P.quantize(big, "fp16", saturate=True, impl=impl), [65504, -65504, 65504, -65504, np.nan])
    assert same(P.quantize(big[:4], "fp4_e2m1", impl=impl), [6, -6, 6, -6])
    assert np.isnan(P.quantize([np.nan], "fp4_e2m1", impl=impl)[0])
    with pytest.raises(ValueError, match="no NaN"):
        P.encode([np.nan], "fp4_e2m1")
    # IEEE's threshold: 65519 rounds to 65504, 65520 (the midpoint to 65536) overflows
    assert P.quantize([65519.0], "fp16", impl=impl)[0] == 65504
    assert np.isinf(P.quantize([65520.0], "fp16", impl=impl)[0])
    assert P.quantize([464.0], "fp8_e4m3", impl=impl)[0] == 448
    assert np.isnan(P.quantize([465.0], "fp8_e4m3", impl=impl)[0])


def test_lecture_facts():
    """The numbers behind mixed-precision training (Micikevicius et al., 2018, arXiv:1710.03740):
    fp16 keeps 2^-24 (its smallest subnormal) and flushes values below 2^-25 to zero, and an
    update below half an ulp of the weight is lost (1 + 1e-4 stays 1 in fp16, 1 + 1e-3 in bf16)."""
    assert P.quantize([2 ** -25.5], "fp16")[0] == 0
    assert P.quantize([2 ** -24], "fp16")[0] == 2 ** -24
    assert P.quantize([1 + 1e-4], "fp16")[0] == 1
    assert P.quantize([1 + 6e-4], "fp16")[0] == 1 + 2 ** -10
    assert P.quantize([1 + 1e-3], "bf16")[0] == 1


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="fp16"):
        P.quantize([1.0], "fp17")
    with pytest.raises(ValueError, match="rounding"):
        P.quantize([1.0], "fp16", rounding="up")
    with pytest.raises(ValueError, match="scale_rule"):
        P.quantize([1.0], "fp16", scale_rule="ceil")
    with pytest.raises(ValueError, match="scalar"):
        P.quantize(1.0, "mxfp4")


# ---------------------------------------------------------------- stochastic rounding
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1"])
def test_stochastic_rounding_is_unbiased(fmt, impl):
    """Each draw is lo or hi, hi with probability p = (x - lo)/(hi - lo); so the sample mean of N
    draws has variance p(1-p)(hi-lo)^2 / N. We require |mean - x| <= 5 sigma (two-sided
    probability of failure < 1e-6 per point for a fixed seed that we do not tune)."""
    rng = np.random.default_rng(1234)
    v = np.unique(P.representable_values(fmt))
    v = v[np.isfinite(v)]
    idx = rng.choice(len(v) - 1, size=20, replace=len(v) - 1 < 20)
    lo, hi = v[idx], v[idx + 1]
    frac = rng.uniform(0.02, 0.98, size=20)
    x = (lo + frac * (hi - lo)).astype(np.float32).astype(np.float64)
    N = 4000
    draws = P.quantize(np.broadcast_to(x, (N, 20)), fmt, "stochastic", rng, impl=impl).astype(np.float64)
    assert np.all((draws == lo) | (draws == hi))
    p = (x - lo) / (hi - lo)
    sigma = np.sqrt(p * (1 - p) / N) * (hi - lo)
    assert np.all(np.abs(draws.mean(0) - x) <= 5 * sigma)
    # representable values are left alone
    assert np.array_equal(P.quantize(v, fmt, "stochastic", rng, impl=impl), v.astype(np.float32))


def test_stochastic_rounding_rescues_tiny_updates_on_average():
    """1000 updates of +1e-4 to 1.0 in fp16: nearest stalls at 1.0, stochastic reaches ~1.1."""
    rng = np.random.default_rng(0)
    w_near = np.float32(1.0)
    w_sr = np.float32(1.0)
    for _ in range(1000):
        w_near = P.quantize([w_near + 1e-4], "fp16")[0]
        w_sr = P.quantize([np.float64(w_sr) + 1e-4], "fp16", "stochastic", rng)[0]
    assert w_near == 1.0
    assert abs(w_sr - 1.1) < 0.03


# ---------------------------------------------------------------- block formats
def heavy(rng, shape):
    return rng.standard_t(3, size=shape).astype(np.float32)


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("rule", [None, "ceil"])
def test_block_scales_never_overflow(fmt, rule):
    """Finite input -> finite output for every block, at any magnitude (scales follow the data);
    every block's scaled values stay within the element format's max."""
    rng = np.random.default_rng(3)
    elem, block, kind = P.BLOCK_FORMATS[fmt]
    emax = P.finfo(elem).max
    x = heavy(rng, (6, 4 * block + 5))  # a ragged last block
    x[0] *= 1e30
    x[1] *= 1e-30
    x[2, :block] = 0.0  # an all-zero block
    x[3] *= 60000.0
    enc = P.encode(x, fmt, scale_rule=rule)
    q = P.decode(enc)
    assert q.shape == x.shape and np.all(np.isfinite(q))
    assert same(q, P.quantize(x, fmt, scale_rule=rule))
    S = enc.block_scale_values()
    assert np.all(np.isfinite(S)) and np.all(S >= 0)
    elems = P.decode(enc.codes, elem)
    assert np.all(np.abs(elems) <= emax)
    # dequantized = element value x block scale, exactly
    recon = (elems.astype(np.float64) * S[..., None]).astype(np.float32)
    assert same(recon.reshape(6, -1)[:, : x.shape[1]], q)
    if kind == "e8m0":
        m, _ = np.frexp(S)
        assert np.all(m == 0.5), "every MX scale is a power of two"
    else:
        assert np.all(P.decode(enc.scales, "fp8_e4m3") <= 448)
    if rule == "ceil":  # no element is clipped: |x| / scale <= element max (float32 slack)
        xb = P._blockify(x, block, "t").astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(S[..., None] > 0, np.abs(xb) / S[..., None], 0)
        assert np.all(ratio <= emax * (1 + 1e-6))


def bits32(a):
    return np.asarray(a, np.float32).view(np.uint32)


def heavy_tensors(seed=11):
    """8 tensors of 256 Student-t (2 dof) values with tensor scales 1e-6 .. 1e6 and a factor
    10^U(-2, 2) per 16 values; tensor 0 starts with 32 zeros (one of them -0), tensor 1 has one
    outlier 10^4 times its max."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2, (8, 256)) * 10.0 ** np.linspace(-6, 6, 8)[:, None]
    x *= np.repeat(10.0 ** rng.uniform(-2, 2, (8, 16)), 16, axis=1)
    x[0, :32] = 0.0
    x[0, 5] = -0.0
    x[1, 77] = -1e4 * np.abs(x[1]).max()
    return x.astype(np.float32)


def mx_reference(x, fmt):
    """OCP MX v1.0 from its formulas, blocks of k along the last axis (a multiple of k here):
    X = 2^(floor(log2 max|V|) - emax_elem), the exponent clamped to [-127, 127] (so an all-zero
    block gets 2^-127), stored as E8M0; elements P = elem(V / X), nearest-even and saturating.
    Elements and scale codes come from ml_dtypes; emax_elem = floor(log2 max_elem)."""
    elem, k, _ = P.BLOCK_FORMATS[fmt]
    et = ml_type(elem)
    vmax = float(ml_dtypes.finfo(et).max)
    emax = np.frexp(vmax)[1] - 1  # 448 -> 8, 57344 -> 15, 6 -> 2
    V = x.astype(np.float64).reshape(x.shape[:-1] + (-1, k))
    amax = np.abs(V).max(-1)
    e = np.where(amax > 0, np.frexp(amax)[1] - 1, -np.inf)  # floor(log2 amax), exactly
    X = np.ldexp(1.0, np.clip(e - emax, -127, 127).astype(int))
    elems = np.clip(V / X[..., None], -vmax, vmax).astype(et).astype(np.float64)
    q = (elems * X[..., None]).astype(np.float32).reshape(x.shape)
    return q, X.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)


def nvfp4_reference(x):
    """NVFP4 from its formulas, in float32 (NVIDIA, arXiv 2509.25149; Transformer Engine's order):
    s = 448·6 / amax(tensor), s_dec = 1/s; block scale b = e4m3(amax(block) · (s · 1/6)), nearest
    and saturating; elements e2m1(x · 1/(b · s_dec)), nearest and saturating (0 where b is 0);
    dequantized e · (b · s_dec), rounded once to float32. Elements and codes come from ml_dtypes."""
    f32 = np.float32
    xb = x.reshape(-1, 16)
    amax = np.abs(x).max()
    s = f32(448 * 6) / amax if amax > 0 else f32(1)
    s_dec = f32(1) / s
    b = np.minimum(np.abs(xb).max(1) * (s * f32(1 / 6)), f32(448)).astype(ml_dtypes.float8_e4m3fn)
    dec = b.astype(f32) * s_dec
    enc = np.divide(f32(1), dec, out=np.zeros_like(dec), where=dec > 0)
    e = np.clip(xb * enc[:, None], -6, 6).astype(ml_dtypes.float4_e2m1fn)
    q = (e.astype(np.float64) * dec[:, None].astype(np.float64)).astype(f32).reshape(x.shape)
    return q, b.view(np.uint8), s_dec


@needs_ml_dtypes
@pytest.mark.parametrize("fmt", MX_FORMATS)
def test_mx_equals_the_spec_formula_bit_for_bit(fmt):
    """On heavy-tailed data from 1e-6 to 1e6 (plus a copy of one tensor scaled by 1e-33, where
    the exponent clamp at -127 acts), quantize equals `mx_reference` bit for bit in every impl,
    and the stored E8M0 scale codes are the reference's."""
    x = heavy_tensors()
    x = np.concatenate([x, x[2:3] * np.float32(1e-33)])
    q, scodes = mx_reference(x, fmt)
    assert np.array_equal(P.encode(x, fmt).scales, scodes)
    for impl in IMPLS:
        assert np.array_equal(bits32(P.quantize(x, fmt, impl=impl)), bits32(q)), impl


@needs_ml_dtypes
def test_nvfp4_equals_the_formula_bit_for_bit():
    """Each heavy-tailed tensor (1e-6 to 1e6, a zero block, an outlier that pushes its neighbours'
    block scales into e4m3's subnormals) quantizes to `nvfp4_reference` bit for bit in every impl;
    the stored e4m3 block scale codes and the fp32 tensor decode scale are the reference's."""
    for t in heavy_tensors():
        q, scodes, s_dec = nvfp4_reference(t)
        enc = P.encode(t, "nvfp4")
        assert np.array_equal(enc.scales.reshape(-1), scodes) and bits32(enc.tensor_scale) == bits32(s_dec)
        for impl in IMPLS:
            assert np.array_equal(bits32(P.quantize(t, "nvfp4", impl=impl)), bits32(q)), impl


def test_mx_floor_rule_saturates_blocks_with_large_max_mantissa():
    """Floor scaling puts amax/X in [4, 8) for fp4: a block max of mantissa > 1.5 (e.g. 7·2^k)
    saturates to 6·X, and 'ceil' avoids it."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (8, 32)).astype(np.float32)
    x[:, 0] = 1.875 * 2.0 ** np.arange(8)  # mantissa 1.875 > 1.5
    enc = P.encode(x, "mxfp4")
    X = enc.block_scale_values()[:, 0]
    assert np.all(np.abs(P.decode(enc)[:, 0]) == 6 * X)  # saturated
    assert np.all(np.abs(P.quantize(x, "mxfp4", scale_rule="ceil")[:, 0] - x[:, 0]) <= 0.25 * x[:, 0])
    # a block max with mantissa <= 1.5 does not saturate
    y = x.copy()
    y[:, 0] = 1.5 * 2.0 ** np.arange(8)
    assert np.array_equal(P.quantize(y, "mxfp4")[:, 0], y[:, 0])


@pytest.mark.parametrize("dist", ["gauss", "student_t"])
def test_rmse_orders_nvfp4_mxfp4_per_tensor_fp4(dist):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 256)) if dist == "gauss" else rng.standard_t(3, (64, 256)))
    x = x.astype(np.float32)
    rmse = {f: np.sqrt(np.mean((P.quantize(x, f) - x) ** 2)) for f in ["nvfp4", "mxfp4"]}
    rmse["tensor_fp4"] = np.sqrt(np.mean((P.scaled_quantize(x, "fp4_e2m1") - x) ** 2))
    assert rmse["nvfp4"] < rmse["mxfp4"] < rmse["tensor_fp4"]


F32 = np.finfo(np.float32)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "bf16"])
@pytest.mark.parametrize("amax", [1e-30, 1e-34, 1e-36, 1e-38, 1e-40, 1e-45])  # 1e-38 on: subnormal
def test_scaled_quantize_of_tiny_subnormal_and_zero_inputs(fmt, amax):
    """max_fmt / amax overflows float32 for a tiny amax; the scale is then the float32 max (as in
    Transformer Engine): the result is finite, zeros stay zero, and every value errs by at most
    half a format ulp at its scaled value (plus the float32 roundings of x·s and q/s)."""
    f = P.finfo(fmt)
    x = np.float32(amax) * np.array([1, -0.7, 0.3, -2**-3, 2**-6, 0.0, -0.0], np.float32)
    out = P.scaled_quantize(x, fmt)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert same(out[x == 0], x[x == 0])
    assert np.all((out == 0) | (np.sign(out) == np.sign(x)))
    s = np.float32(min(f.max / float(np.max(np.abs(x))), F32.max))
    x64 = x.astype(np.float64)
    bound = 0.5 * P.ulp(x64 * s, fmt) / s * (1 + 2**-20) + 2**-22 * np.abs(x64) + 2.0**-148
    assert np.all(np.abs(out - x64) <= bound)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_scaled_quantize_with_a_clamped_scale_round_trips_format_values(fmt):
    """With the scale clamped at the float32 max s, x = v / s for a format value v comes back
    unchanged wherever x is a normal float32 (a subnormal x has too few bits to hold v / s)."""
    v = P.representable_values(fmt).astype(np.float32)
    x = v / F32.max
    out = P.scaled_quantize(x, fmt, amax=1e-40)
    normal = np.abs(x) >= F32.tiny
    assert normal.sum() > 50 and same(out[normal], x[normal])
    assert np.all(np.isfinite(out)) and same(out[x == 0], x[x == 0])


def test_fp8_overflow_rules_against_torch():
    """torch's casts (CPU, torch 2.13): float8_e5m2 rounds overflow and ±inf to ±inf, as the
    default fp8_e5m2 rule; float8_e4m3fn saturates them to ±448, as ``saturate=True`` (the
    default fp8_e4m3 rule gives NaN, as ml_dtypes)."""
    torch = pytest.importorskip("torch", reason="torch is optional (pip install -e .[bench])")
    x = np.array([1.0, 440.0, 464.0, 500.0, 57344.0, 61439.0, 61440.0, 1e30, np.inf, -np.inf, -7e4, np.nan],
                 np.float32)

    def cast(dtype):
        return torch.from_numpy(x).to(dtype).float().numpy()

    assert same(P.quantize(x, "fp8_e5m2"), cast(torch.float8_e5m2))
    assert same(P.quantize(x, "fp8_e4m3", saturate=True), cast(torch.float8_e4m3fn))


@pytest.mark.parametrize("fmt, want", [("fp8_e5m2", [np.inf, -np.inf]), ("fp8_e4m3", [np.nan, np.nan])])
def test_scaled_quantize_keeps_an_overflow_when_told_not_to_saturate(fmt, want):
    """The gradient path's cast: an inf stays non-finite (the loss scaler must see it); the
    saturating default clamps it to ±max, as the forward recipe wants."""
    x = np.array([0.5, -3.0, np.inf, -np.inf], np.float32)
    assert same(P.scaled_quantize(x, fmt, saturate=False)[2:], np.array(want, np.float32))
    assert same(P.scaled_quantize(x, fmt)[2:], np.array([1, -1], np.float32) * np.float32(P.finfo(fmt).max))
    x = np.array([1.0, 2.0], np.float32)                     # a given amax below max|x|: finite overflow
    assert not np.isfinite(P.scaled_quantize(x, fmt, amax=0.5, saturate=False)[1])


def nvfp4_blocks(amaxes, seed=0):
    """One 16-element block per amax: ±U(0, amax) with one element at ±amax and a quarter zeros."""
    rng = np.random.default_rng(seed)
    out = []
    for a in amaxes:
        b = np.float32(a) * rng.uniform(-1, 1, 16).astype(np.float32)
        b[rng.permutation(16)[:4]] = 0.0
        b[rng.integers(16)] = np.float32(a) * rng.choice([-1, 1])
        out.append(b)
    return np.concatenate(out).astype(np.float32)


NVFP4_TINY = {  # block amaxes of one tensor; a block's reciprocal scale overflows below ~1.8e-38
    "tiny": [1e-39],
    "subnormal": [1e-42, 3e-45],
    "at-the-limit": [1.7e-38, 1e-40],
    "zeros-next-to-tiny": [1e-39, 0.0],
    "tiny-next-to-small": [1e-35, 1e-38],   # the tensor scale is finite, that block's reciprocal not
    "tiny-next-to-normal": [1.0, 1e-39],
    "all-zero": [0.0, 0.0],
}


@pytest.mark.parametrize("case", list(NVFP4_TINY))
@pytest.mark.parametrize("rule", [None, "ceil"])
def test_nvfp4_tiny_subnormal_and_zero_blocks(case, rule):
    """The per-block reciprocal 1/(b·s_dec) overflows float32 for a block amax below ~1.8e-38; it
    is clamped at the float32 max, as Transformer Engine does. Such a block's elements then land
    below 6 (none saturates), zeros stay zero, and no element decodes to more than twice itself
    (e2m1 rounds at most (0.25, 0.5) up to 0.5; the clamp only shrinks)."""
    x = nvfp4_blocks(NVFP4_TINY[case])
    enc = P.encode(x, "nvfp4", scale_rule=rule)
    q = P.decode(enc)
    assert np.all(np.isfinite(q)) and same(q[x == 0], x[x == 0])
    assert np.all((q == 0) | (np.sign(q) == np.sign(x)))
    assert np.all(np.abs(q.astype(np.float64)) <= 2 * (1 + 2**-20) * np.abs(x.astype(np.float64)))
    elems = P.decode(enc.codes, "fp4_e2m1").reshape(-1, 16)
    tiny = np.array([0 < a < 1.7e-38 for a in NVFP4_TINY[case]])
    assert np.all(np.abs(elems[tiny]) < 6)
    # the block that holds the tensor's amax is quantized as if it were alone
    top = int(np.argmax(NVFP4_TINY[case]))
    assert same(q.reshape(-1, 16)[top], P.quantize(x.reshape(-1, 16)[top], "nvfp4", scale_rule=rule))


def test_nvfp4_tiny_block_next_to_a_normal_one_becomes_zero():
    """Next to a block of amax 1, a block of amax 1e-39 is far below the smallest block scale the
    tensor scale allows (2^-9 · 1/2688): its e4m3 scale is 0 and it decodes to zeros."""
    x = nvfp4_blocks([1.0, 1e-39])
    enc = P.encode(x, "nvfp4")
    assert enc.scales[1] == 0 and np.all(P.decode(enc)[16:] == 0)


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4", "nvfp4"])
def test_block_stochastic_rounding_is_unbiased_given_the_scales(fmt):
    """Scales depend only on amax, so with the block max pinned, the mean of SR draws -> x."""
    rng = np.random.default_rng(6)
    elem, block, _ = P.BLOCK_FORMATS[fmt]
    x = rng.uniform(-1, 1, (1, block)).astype(np.float32)
    x[0, 0] = 1.0
    N = 4000
    draws = P.quantize(np.broadcast_to(x, (N, block)), fmt, "stochastic", rng).astype(np.float64)
    S = P.encode(x, fmt).block_scale_values()[0, 0]
    gap = P.ulp(x[0] / S, elem) * S  # the two neighbours are this far apart
    assert np.all(np.abs(draws.mean(0) - x[0]) <= 5 * gap * 0.5 / np.sqrt(N))


@pytest.mark.skipif("numba" not in IMPLS, reason="Numba is not installed")
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_numba_kernel_split_over_threads_equals_one_thread(monkeypatch, rounding):
    """The kernel's element ranges over 3 threads give the bits of one pass (same uniforms)."""
    import minigrad.kernels as K

    x = np.random.default_rng(3).standard_normal(10_001) * 1e3
    one = P.quantize(x, "fp8_e4m3", rounding, rng=5, impl="numba")
    monkeypatch.setattr(K, "_parallel", lambda work: True)
    monkeypatch.setattr(K, "_num_threads", lambda: 3)
    assert same(P.quantize(x, "fp8_e4m3", rounding, rng=5, impl="numba"), one)


def test_stochastic_rounding_keeps_the_sign_of_a_zero_result_in_every_impl():
    x = np.array([-1e-9, 1e-9, -0.0, 0.0])
    for impl in IMPLS:
        assert same(P.quantize(x, "fp16", "stochastic", rng=0, impl=impl), [-0.0, 0.0, -0.0, 0.0]), impl


def test_encode_checks_its_options_like_quantize():
    with pytest.raises(ValueError, match="always saturates"):
        P.encode(np.ones(32), "mxfp8_e4m3", saturate=True)
    with pytest.raises(TypeError):
        P.encode(np.ones(4), "fp16", saturte=True)
