"""Every fused Numba kernel against its plain NumPy twin (minigrad.kernels.reference).

The kernels run in float32 (their production dtype) and are compared with the twin evaluated in
float64 on the same float32 inputs, so the tolerance measures the kernel's float32 error, not the
twin's. Shapes are drawn by hypothesis and include sizes that are not multiples of any tile or
block (attention tiles are 64, the tiled matmul's tile is drawn). Small shapes keep the suite
quick; Numba compiles each kernel once per process (cached on disk). Small inputs run in the
calling thread (below `SERIAL_BELOW` elements of work); the split into one range per thread is
held to that path by `test_parallel_drivers_match_serial`, on ranges that do not split evenly.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minigrad.kernels as K
import minigrad.kernels.reference as R

F32_RTOL, F32_ATOL = 2e-5, 2e-5   # float32 kernel vs float64 twin, values of order 1
F64_TOL = 1e-12                   # float64 kernel vs twin: the same formula in another order


def close32(got, want, scale=1.0):
    assert got.dtype == np.float32, got.dtype
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=F32_RTOL * 10, atol=F32_ATOL * scale)


def close64(got, want, scale=1.0):
    assert got.dtype == np.float64, got.dtype
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=F64_TOL, atol=F64_TOL * scale)


def f32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def f64(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def up(*arrays):
    return [a.astype(np.float64) for a in arrays]


seeds = st.integers(0, 2**31 - 1)
rows = st.integers(1, 9)
cols = st.integers(1, 300)


# ----------------------------------------------------------------------------- exp polynomial
def test_fast_exp_accuracy_over_the_float32_range():
    x = np.linspace(-88, 88, 200_001).astype(np.float32)
    # softmax of a two-element row [0, t] is 1/(1+e^t): exercises exp over the whole range
    pairs = np.stack([np.zeros_like(x), x], axis=1)
    got = K.softmax_forward(pairs)[:, 0].astype(np.float64)
    want = 1.0 / (1.0 + np.exp(x.astype(np.float64)))
    # relative error ~2 ulp; below e^-87 the polynomial is clamped (absolute error < 2e-38)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-38)


# ----------------------------------------------------------------------------- softmax family
@given(seeds, rows, cols, st.floats(0.1, 30.0))
def test_softmax_matches_twin(seed, n, v, scale):
    rng = np.random.default_rng(seed)
    x, dy = f32(rng, (n, v), scale), f32(rng, (n, v))
    y = K.softmax_forward(x)
    close32(y, R.softmax_forward(*up(x)))
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    y64 = R.softmax_forward(*up(x)).astype(np.float32)
    close32(K.softmax_backward(y64, dy), R.softmax_backward(*up(y64, dy)))


@given(seeds, rows, cols, st.floats(0.1, 30.0))
def test_log_softmax_matches_twin(seed, n, v, scale):
    rng = np.random.default_rng(seed)
    x, dy = f32(rng, (n, v), scale), f32(rng, (n, v))
    y = K.log_softmax_forward(x)
    close32(y, R.log_softmax_forward(*up(x)), scale=scale * 5)
    close32(K.log_softmax_backward(y, dy), R.log_softmax_backward(*up(y, dy)), scale=v ** 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(seeds, st.integers(1, 40), cols, st.floats(0.1, 30.0), st.booleans())
def test_cross_entropy_matches_twin(dtype, seed, n, v, scale, with_ignored):
    """float32 to its rounding; float64 to 1e-12 (a float64-only slip, a constant rounded to
    float32, hides under the float32 tolerance)."""
    close = close32 if dtype == np.float32 else close64
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, v)) * scale).astype(dtype)
    t = rng.integers(0, v, n)
    if with_ignored:
        t[rng.random(n) < 0.3] = -100
    loss, lse = K.cross_entropy_forward(x, t)
    loss_r, lse_r = R.cross_entropy_forward(*up(x), t)
    close(lse, lse_r, scale=scale * 5)
    close(loss, loss_r, scale=scale * 5)
    assert np.all(loss[t == -100] == 0)
    g = rng.standard_normal(n).astype(dtype)
    d = K.cross_entropy_backward(x, t, lse, g)
    close(d, R.cross_entropy_backward(*up(x), t, lse_r, g.astype(np.float64)),
          scale=1.0 if dtype == np.float32 else np.abs(g).max())
    assert np.all(d[t == -100] == 0)
    # each kept row of softmax - onehot sums to zero
    np.testing.assert_allclose(d.sum(-1), 0.0, atol=1e-5 * max(1.0, np.abs(g).max()))


def test_cross_entropy_rejects_bad_targets():
    x = np.zeros((3, 5), np.float32)
    with pytest.raises(IndexError, match="out of range for 5 classes"):
        K.cross_entropy_forward(x, np.array([0, 5, 1]))
    with pytest.raises(TypeError, match="integer"):
        K.cross_entropy_forward(x, np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("width, at", [(70, 0), (70, 5), (70, 63), (70, 69), (20, 0), (20, 19), (300, 150)])
def test_cross_entropy_propagates_nan(width, at):
    """A NaN logit anywhere in a row (in the vectorised loops' full lanes or their remainder, in
    a row too short for the vectorised max or long enough for it) makes that row's loss and
    log-sum-exp NaN, and only that row's."""
    x = np.tile(np.linspace(-3, 3, width, dtype=np.float32), (3, 1))
    x[1, at] = np.nan
    loss, lse = K.cross_entropy_forward(x, np.array([0, 1, 2]))
    assert np.isnan(loss[1]) and np.isnan(lse[1])
    assert np.isfinite(loss[[0, 2]]).all() and np.isfinite(lse[[0, 2]]).all()


@pytest.mark.parametrize("op", [K.softmax_forward, K.log_softmax_forward])
@pytest.mark.parametrize("width, at", [(20, 0), (20, 19), (70, 0), (70, 69), (300, 150)])
def test_softmax_propagates_nan_and_inf_to_their_row_only(op, width, at):
    """As NumPy's twin: a NaN makes its whole row NaN, and so does +inf (inf - inf); the other
    rows stay finite. The max skips a NaN (`fast_max`, from 64 columns on), the sum does not."""
    for bad in (np.nan, np.inf):
        x = np.tile(np.linspace(-3, 3, width, dtype=np.float32), (3, 1))
        x[1, at] = bad
        y = op(x)
        assert np.isnan(y[1]).all(), (bad, y[1])
        assert np.isfinite(y[[0, 2]]).all()
        with np.errstate(invalid="ignore"):                  # inf - inf in the twin: the point here
            want = getattr(R, op.__name__)(x.astype(np.float64))
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))


def test_fast_max_drops_a_nan_operand_compiled_and_plain():
    """`fast_max` is LLVM's maxnum: the NaN operand of a pair is dropped, in either position, and
    the NUMBA_DISABLE_JIT version follows the same rule; the vectorised row max agrees."""
    import numba

    from minigrad.kernels._math import fast_max

    compiled = numba.njit(lambda a, b: fast_max(a, b))
    for f in (fast_max, compiled):
        for a, b, want in [(1.0, 2.0, 2.0), (2.0, 1.0, 2.0), (np.nan, 1.0, 1.0), (1.0, np.nan, 1.0),
                           (-np.inf, -3.0, -3.0)]:
            for t in (np.float32, np.float64):
                assert f(t(a), t(b)) == want, (f, a, b)
        assert np.isnan(f(np.float32(np.nan), np.float32(np.nan)))


def test_cross_entropy_extreme_logits_stay_finite():
    x = np.array([[1e4, -1e4, 0.0], [-3e4, -3e4, -3e4]], np.float32)
    loss, lse = K.cross_entropy_forward(x, np.array([1, 2]))
    assert np.isfinite(loss).all() and np.isfinite(lse).all()
    # float32 spacing at 3e4 is ~2e-3: lse = -3e4 + log 3 cannot be finer than that
    np.testing.assert_allclose(loss, [2e4, np.log(3.0)], rtol=1e-6, atol=4e-3)


# ----------------------------------------------------------------------------- float64 twins
# The float32 checks above hold the kernels to ~1e-5, loose enough to hide a float64-only slip
# (a float32 accumulator or constant, a wrong term of size 1e-7). In float64 a kernel is the
# twin's formula in another order, so it is held to 1e-12 (F64_TOL), at widths up to 300 that are
# not multiples of any unrolling or SIMD width (cross-entropy's float64 case is in its test above).
wide = st.integers(1, 300) | st.sampled_from([17, 65, 129, 255, 257, 299, 300])


@given(seeds, rows, wide, st.floats(0.1, 30.0))
def test_softmax_and_log_softmax_float64_match_twin_to_1e12(seed, n, v, scale):
    rng = np.random.default_rng(seed)
    x, dy = f64(rng, (n, v), scale), f64(rng, (n, v))
    y = K.softmax_forward(x)
    close64(y, R.softmax_forward(x))
    close64(K.softmax_backward(y, dy), R.softmax_backward(y, dy), scale=np.abs(dy).max())
    ly = K.log_softmax_forward(x)
    close64(ly, R.log_softmax_forward(x), scale=scale * 5)
    close64(K.log_softmax_backward(ly, dy), R.log_softmax_backward(ly, dy), scale=np.abs(dy).sum(-1).max())


@given(seeds, st.integers(1, 40), wide, st.booleans(), st.floats(-3, 3))
def test_layer_norm_float64_matches_twin_to_1e12(seed, n, c, affine, shift):
    rng = np.random.default_rng(seed)
    x, dy = f64(rng, (n, c)) + shift, f64(rng, (n, c))
    w, b = (f64(rng, (c,)), f64(rng, (c,))) if affine else (None, None)
    y, mean, rstd = K.layer_norm_forward(x, w, b, 1e-5)
    wr = np.ones(c) if w is None else w
    br = np.zeros(c) if b is None else b
    y_r, mean_r, rstd_r = R.layer_norm_forward(x, wr, br, 1e-5)
    close64(mean, mean_r, scale=4)
    close64(rstd, rstd_r, scale=float(rstd_r.max()))
    close64(y, y_r, scale=10)
    for got, want, scale in zip(K.layer_norm_backward(dy, x, w, mean, rstd),
                                R.layer_norm_backward(dy, x, wr, mean_r, rstd_r),
                                (10 * float(rstd_r.max()), n, n)):
        close64(got, want, scale=scale)


@given(seeds, st.integers(1, 20_000), st.floats(0.1, 20.0))
def test_gelu_float64_matches_twin_to_1e12(seed, n, scale):
    rng = np.random.default_rng(seed)
    x, dy = f64(rng, (n,), scale), f64(rng, (n,))
    close64(K.gelu_forward(x), R.gelu_forward(x), scale=scale)
    close64(K.gelu_backward(x, dy), R.gelu_backward(x, dy), scale=np.abs(dy).max())


# ----------------------------------------------------------------------------- layer norm
@given(seeds, st.integers(1, 70), st.integers(1, 200), st.booleans(), st.floats(-3, 3))
def test_layer_norm_matches_twin(seed, n, c, affine, shift):
    rng = np.random.default_rng(seed)
    x = f32(rng, (n, c)) + np.float32(shift)
    w = f32(rng, (c,)) if affine else None
    b = f32(rng, (c,)) if affine else None
    dy = f32(rng, (n, c))
    y, mean, rstd = K.layer_norm_forward(x, w, b, 1e-5)
    wr = np.ones(c) if w is None else w.astype(np.float64)
    br = np.zeros(c) if b is None else b.astype(np.float64)
    y_r, mean_r, rstd_r = R.layer_norm_forward(*up(x), wr, br, 1e-5)
    assert mean.shape == rstd.shape == (n,)
    close32(mean, mean_r)
    close32(rstd, rstd_r, scale=float(rstd_r.max()))
    close32(y, y_r, scale=10)
    dx, dw, db = K.layer_norm_backward(dy, x, w, mean, rstd)
    dx_r, dw_r, db_r = R.layer_norm_backward(*up(dy, x), wr, mean_r, rstd_r)
    close32(dx, dx_r, scale=10 * float(rstd_r.max()))
    close32(dw, dw_r, scale=n)
    close32(db, db_r, scale=n)


def test_row_kernels_refuse_saved_arrays_of_the_wrong_length():
    # the compiled loops index weight, mean, rstd and lse without bounds checks: a short array
    # was read past its end (a silently wrong gradient), where the twin raised
    rng = np.random.default_rng(0)
    x = f32(rng, (4, 6))
    _, mean, rstd = K.layer_norm_forward(x, None, None)
    dy = np.ones_like(x)
    with pytest.raises(ValueError, match=r"layer_norm_backward: weight \(3,\) must be \(6,\)"):
        K.layer_norm_backward(dy, x, np.ones(3, np.float32), mean, rstd)
    with pytest.raises(ValueError, match=r"mean \(2,\), rstd \(2,\) one per row"):
        K.layer_norm_backward(dy, x, None, mean[:2], rstd[:2])
    logits = f32(rng, (4, 5))
    _, lse = K.cross_entropy_forward(logits, np.arange(4))
    with pytest.raises(ValueError, match=r"cross_entropy_backward: lse \(3,\) must be \(4,\)"):
        K.cross_entropy_backward(logits, np.arange(4), lse[:3], np.ones(4, np.float32))


def test_layer_norm_keeps_leading_axes():
    rng = np.random.default_rng(0)
    x = f32(rng, (2, 3, 5))
    y, mean, rstd = K.layer_norm_forward(x, None, None)
    assert y.shape == x.shape and mean.shape == rstd.shape == (2, 3)
    dx, dw, db = K.layer_norm_backward(np.ones_like(x), x, None, mean, rstd)
    assert dx.shape == x.shape and dw.shape == db.shape == (5,)


# ----------------------------------------------------------------------------- GELU
@given(seeds, st.integers(1, 20_000), st.floats(0.1, 20.0))
def test_gelu_matches_twin(seed, n, scale):
    rng = np.random.default_rng(seed)
    x, dy = f32(rng, (n,), scale), f32(rng, (n,))
    close32(K.gelu_forward(x), R.gelu_forward(*up(x)), scale=scale)
    close32(K.gelu_backward(x, dy), R.gelu_backward(*up(x, dy)))


@pytest.mark.parametrize("dtype, huge", [(np.float32, [3e13, 1e18]), (np.float64, [1e103, 1e150])])
def test_gelu_saturates_without_overflow(dtype, huge):
    # at |x| >= 1.5e13 (float32) fast-math regrouped the backward's x (1 - t^2)(1 + k x^2) into
    # x^3 * ...: inf * 0 = NaN where the twin and torch give 0 or 1
    big = np.array(huge)
    x = np.concatenate([-big[::-1], [-1e6, -100, -10, 0, 10, 100, 1e6], big]).astype(dtype)
    y = K.gelu_forward(x)
    assert np.isfinite(y).all()
    with np.errstate(over="ignore"):  # the twin's x**3 is inf there, and its tanh 1
        np.testing.assert_allclose(y, R.gelu_forward(x.astype(np.float64)), rtol=1e-6, atol=1e-6)
    want = [0, 0, 0, 0, 0, 0.5, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(K.gelu_backward(x, np.ones_like(x)), want, atol=1e-6)


def test_gelu_propagates_nan():
    x = np.array([np.nan, 1.0, -np.nan], np.float32)
    y, dx = K.gelu_forward(x), K.gelu_backward(x, np.ones_like(x))
    assert np.isnan(y[0]) and np.isfinite(y[1]) and np.isnan(y[2])
    assert np.isnan(dx[0]) and np.isfinite(dx[1]) and np.isnan(dx[2])


# ----------------------------------------------------------------------------- attention
@contextlib.contextmanager
def tile_products(path):
    """The attention kernels' tile products (and bmm's) through NumPy's OpenBLAS ("numpy-blas":
    `blas.dot_table()`, the default where it is found) or through np.dot ("np.dot": SciPy's
    OpenBLAS, a zero table)."""
    from minigrad.kernels import blas

    if path == "numpy-blas" and not blas.dot_table()[0]:
        pytest.skip("NumPy's bundled OpenBLAS not found, or Numba is disabled: the tiles use np.dot")
    with pytest.MonkeyPatch.context() as mp:
        if path == "np.dot":
            mp.setattr(blas, "dot_table", lambda: np.zeros(3, np.int64))
        yield


TILES = pytest.mark.parametrize("tiles", ["numpy-blas", "np.dot"])


@TILES
@given(seeds, st.integers(1, 2), st.integers(1, 3), st.integers(1, 150), st.integers(0, 70),
       st.integers(1, 40), st.booleans())
def test_flash_attention_matches_naive_twin(tiles, seed, b, h, t, extra_keys, d, causal):
    rng = np.random.default_rng(seed)
    s = t + extra_keys                      # S >= T: a KV cache of `extra_keys` earlier keys
    q, do = f32(rng, (b, h, t, d)), f32(rng, (b, h, t, d))
    k, v = f32(rng, (b, h, s, d)), f32(rng, (b, h, s, d))
    kw = dict(causal=causal, scale=None, causal_offset=s - t)
    with tile_products(tiles):
        o, lse = K.attention_forward(q, k, v, **kw)
        o_r, lse_r = R.attention_forward(*up(q, k, v), **kw)
        close32(o, o_r)
        close32(lse, lse_r, scale=5)
        grads = K.attention_backward(q, k, v, o, lse, do, **kw)
        grads_r = R.attention_backward(*up(q, k, v), o_r, lse_r, *up(do), **kw)
        for got, want in zip(grads, grads_r):
            close32(got, want, scale=5)


@TILES
@given(seeds, st.integers(1, 2), st.integers(1, 3), st.integers(1, 150), st.integers(1, 20), st.booleans())
def test_qkv_attention_matches_twin(tiles, seed, b, n_head, t, hs, causal):
    """The fused-layout kernels (q|k|v read from one (B, T, 3C) array, o and dqkv written with the
    heads side by side) against split -> naive attention -> merge, over odd T and head sizes."""
    rng = np.random.default_rng(seed)
    c = n_head * hs
    qkv, do = f32(rng, (b, t, 3 * c)), f32(rng, (b, t, c))
    with tile_products(tiles):
        o, lse = K.attention_qkv_forward(qkv, n_head, causal=causal)
        o_r, lse_r = R.attention_qkv_forward(*up(qkv), n_head, causal=causal)
        close32(o, o_r)
        close32(lse, lse_r, scale=5)
        close32(K.attention_qkv_backward(qkv, o, lse, do, n_head, causal=causal),
                R.attention_qkv_backward(*up(qkv), o_r, lse_r, *up(do), n_head, causal=causal), scale=5)


@TILES
@given(seeds, st.integers(1, 100), st.integers(1, 16))
def test_flash_attention_float64_matches_naive_to_1e10(tiles, seed, t, d):
    # The tiled kernel (FlashAttention, Dao et al. 2022, arXiv 2205.14135) computes the same
    # softmax in another order, with online rescaling: in float64 it equals the naive O(T²)
    # one to 1e-10, also when T is not a multiple of the tile.
    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal((1, 2, t, d)) for _ in range(4))
    with tile_products(tiles):
        o, lse = K.attention_forward(q, k, v, causal=True)
        o_r, lse_r = R.attention_forward(q, k, v, causal=True)
        np.testing.assert_allclose(o, o_r, atol=1e-10)
        np.testing.assert_allclose(lse, lse_r, atol=1e-10)
        for got, want in zip(K.attention_backward(q, k, v, o, lse, do, causal=True),
                             R.attention_backward(q, k, v, o_r, lse_r, do, causal=True)):
            np.testing.assert_allclose(got, want, atol=1e-10)


def test_flash_attention_first_row_sees_only_itself():
    rng = np.random.default_rng(1)
    q, k, v = (f32(rng, (1, 1, 70, 8)) for _ in range(3))
    o, _ = K.attention_forward(q, k, v, causal=True)
    np.testing.assert_allclose(o[0, 0, 0], v[0, 0, 0], rtol=1e-6)
    # changing future keys/values leaves earlier outputs untouched (no leakage across tiles)
    k2, v2 = k.copy(), v.copy()
    k2[..., 65:, :] += 5.0
    v2[..., 65:, :] -= 3.0
    o2, _ = K.attention_forward(q, k2, v2, causal=True)
    np.testing.assert_array_equal(o[..., :65, :], o2[..., :65, :])


def test_attention_with_no_queries_gives_empty_results_as_the_twin():
    q = np.zeros((2, 0, 4), np.float32)
    k = v = np.ones((2, 3, 4), np.float32)
    o, lse = K.attention_forward(q, k, v, causal=False)
    o2, lse2 = R.attention_forward(q, k, v, causal=False)
    assert o.shape == o2.shape == (2, 0, 4) and lse.shape == lse2.shape == (2, 0)


def test_attention_rejects_mismatched_shapes():
    q = np.zeros((1, 2, 4, 8), np.float32)
    with pytest.raises(ValueError, match="attention"):
        K.attention_forward(q, np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.float32))
    empty = np.zeros((1, 2, 0, 8), np.float32)
    with pytest.raises(ValueError, match=r"attention: k and v have no keys \(S = 0\)"):
        K.attention_forward(q, empty, empty, causal=False)


# ----------------------------------------------------------------------------- matmul
@TILES
@given(seeds, st.integers(1, 5), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40))
def test_bmm_matches_twin(tiles, seed, n, m, k, p):
    rng = np.random.default_rng(seed)
    a, b = f32(rng, (n, m, k)), f32(rng, (n, k, p))
    with tile_products(tiles):
        close32(K.bmm(a, b), R.bmm(*up(a, b)), scale=k ** 0.5)


@given(seeds, st.sampled_from(["rows", "batch", "batch4", "broadcast"]), st.integers(1, 3),
       st.integers(1, 20), st.integers(1, 20), st.integers(1, 20))
def test_matmul_routes_match_twin(seed, route, n, m, k, p):
    """matmul_forward/backward on each route: (..., K) @ (K, P) as one GEMM over all rows, equal
    batch dims through bmm, and broadcast batch dims left to NumPy (backward returns None)."""
    rng = np.random.default_rng(seed)
    a_shape, b_shape = {"rows": ((n, 2, m, k), (k, p)), "batch": ((n, m, k), (n, k, p)),
                        "batch4": ((n, 2, m, k), (n, 2, k, p)), "broadcast": ((1, m, k), (n + 1, k, p))}[route]
    a, b = f32(rng, a_shape), f32(rng, b_shape)
    y = K.matmul_forward(a, b)
    close32(y, R.matmul_forward(*up(a, b)), scale=k ** 0.5)
    g = f32(rng, y.shape)
    grads = K.matmul_backward(a, b, g)
    if route == "broadcast":
        assert grads is None
        return
    for got, want in zip(grads, R.matmul_backward(*up(a, b, g))):
        assert got.shape == want.shape
        close32(got, want, scale=(n * 2 * m * max(k, p)) ** 0.5)


@given(seeds, st.integers(1, 50), st.integers(1, 50), st.integers(1, 50), st.integers(1, 20))
def test_tiled_matmul_matches_twin(seed, m, k, p, tile):
    rng = np.random.default_rng(seed)
    a, b = f32(rng, (m, k)), f32(rng, (k, p))
    close32(K.matmul_tiled(a, b, tile=tile), R.matmul_tiled(*up(a, b)), scale=k ** 0.5)


@pytest.mark.parametrize("tile", [0, -1, 2.5, True])
def test_tiled_matmul_refuses_a_tile_that_is_not_a_positive_integer(tile):
    # tile -1 gave a prange of negative length: the uninitialised output came back as the product
    with pytest.raises(ValueError, match="matmul_tiled: tile must be a positive integer"):
        K.matmul_tiled(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), tile=tile)


# ----------------------------------------------------------------------------- optimizer updates
# adam_step and sgd_step equal their twins (the optimizers' NumPy updates) bit for bit:
# tests/test_optim_fused.py. Here: the float32 kernel against PyTorch.
def test_adam_step_matches_torch_when_available():
    torch = pytest.importorskip("torch", reason="torch is optional (pip install -e .[bench])")
    rng = np.random.default_rng(3)
    p0 = f32(rng, (1000,))
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.AdamW([tp], lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(1, 4):
        g = f32(rng, (1000,))
        K.adam_step(p, g, m, v, step=step, lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                    decoupled=True)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- embedding
@given(seeds, st.integers(1, 30), st.integers(1, 70), st.integers(1, 40))
def test_embedding_backward_matches_twin(seed, num, n, dim):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num, (n,))          # repeated ids are likely: they must add up
    g = f32(rng, (n, dim))
    close32(K.embedding_backward(idx, g, (num, dim)),
            R.embedding_backward(idx, g.astype(np.float64), (num, dim)), scale=n ** 0.5)


# ----------------------------------------------------------------------------- parallel drivers
def test_parallel_drivers_match_serial(monkeypatch):
    """Split every kernel over 3 threads, on shapes whose rows, elements, heads and batch items
    do not split evenly, and compare with the calling-thread path: each item runs the same code
    in both, so results are identical -- except layer norm's dw, db, which add per-chunk partial
    sums (float32 rounding). A spy checks that the pool really ran ranges."""
    rng = np.random.default_rng(11)
    x, dy = f32(rng, (37, 129), 3), f32(rng, (37, 129))
    w, b = f32(rng, (129,)), f32(rng, (129,))
    t = rng.integers(0, 129, 37)
    q, k, v, do = (f32(rng, (7, 1, 70, 8)) for _ in range(4))      # 7 heads over 3 threads
    flat = f32(rng, (40_001,))
    a3, b3 = f32(rng, (5, 9, 6)), f32(rng, (5, 6, 4))

    def run_all():
        out = [K.softmax_forward(x), K.softmax_backward(x, dy), K.log_softmax_forward(x),
               K.log_softmax_backward(x, dy), *K.cross_entropy_forward(x, t),
               K.cross_entropy_backward(x, t, x[:, 0].copy(), dy[:, 0].copy()),
               *K.layer_norm_forward(x, w, b), *K.layer_norm_backward(dy, x, w, x[:, 1].copy(), np.abs(x[:, 2]) + 1),
               K.gelu_forward(flat), K.gelu_backward(flat, flat[::-1].copy()), K.bmm(a3, b3)]
        o, lse = K.attention_forward(q, k, v, causal=True)
        out += [o, lse, *K.attention_backward(q, k, v, o, lse, do, causal=True)]
        qkv = q.transpose(1, 2, 0, 3).reshape(1, 70, 56).repeat(3, axis=2)    # (B, T, 3C), 7 heads of 8
        o, lse = K.attention_qkv_forward(qkv, 7)
        out += [o, lse, K.attention_qkv_backward(qkv, o, lse, o[:, ::-1].copy(), 7)]
        p, m, vv, vmax = flat.copy(), np.zeros_like(flat), np.zeros_like(flat), np.zeros_like(flat)
        K.adam_step(p, flat[::-1].copy(), m, vv, vmax, step=1, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8,
                    weight_decay=0.1, decoupled=True)
        ps, buf = flat.copy(), np.zeros_like(flat)
        K.sgd_step(ps, flat[::-1].copy(), buf, first=True, lr=1e-2, momentum=0.9, weight_decay=0.1)
        return out + [p, m, vv, vmax, ps, buf]

    monkeypatch.setattr(K, "_parallel", lambda work, below=None: False)
    serial = run_all()
    monkeypatch.setattr(K, "_parallel", lambda work, below=None: True)
    monkeypatch.setattr(K, "_num_threads", lambda: 3)
    ranges = []   # the ranges handed to the pool's workers (the caller runs the last one)
    pool = K.get_pool(2)
    run = pool.run
    monkeypatch.setattr(pool, "run", lambda kernel, args, bounds:
                        ranges.extend(zip(bounds[:-2], bounds[1:-1])) or run(kernel, args, bounds))
    parallel = run_all()
    assert len(ranges) == 2 * 17 and (0, 12) in ranges    # 17 kernels, 2 pool ranges each
    ln_dw_db = {11, 12}                                    # positions of dw, db in run_all's list
    for i, (a, c) in enumerate(zip(serial, parallel)):
        if i in ln_dw_db:
            np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(c, a)


def test_parallel_for_waits_for_every_range_when_one_raises(monkeypatch):
    """An error in one range must not leave another thread still writing after the caller
    has seen it (AdamW's in-place update would go on changing the parameters)."""
    import time

    monkeypatch.setattr(K, "_num_threads", lambda: 2)
    out = np.zeros(2)

    def kernel(out, lo, hi):
        if lo == 0:      # the pool's range: slow, then writes
            time.sleep(0.2)
            out[0] = 1.0
        else:            # the calling thread's range fails at once
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        K._parallel_for(kernel, 2, True, out)
    assert out[0] == 1.0    # the pool's range had finished before the error was raised


def test_parallel_for_recovers_after_an_error(monkeypatch):
    """A range that raised leaves the pool ready: the next call runs every range again."""
    monkeypatch.setattr(K, "_num_threads", lambda: 2)

    def fails(out, lo, hi):
        raise ValueError("boom")

    def fills(out, lo, hi):
        out[lo:hi] = 1.0

    out = np.zeros(10)
    with pytest.raises(ValueError, match="boom"):
        K._parallel_for(fails, 10, True, out)
    K._parallel_for(fills, 10, True, out)
    assert out.tolist() == [1.0] * 10


def test_kernels_called_from_several_threads_at_once_stay_correct():
    """The simulated ranks of SimComm call kernels from their own threads: while one caller holds
    the pool's workers, another runs its whole range itself; every result is the serial one."""
    import threading

    rng = np.random.default_rng(3)
    xs = [f32(rng, (300_000,)) for _ in range(3)]
    want = [K.gelu_forward(x) for x in xs]
    errors = []

    def caller(i):
        try:
            for _ in range(20):
                np.testing.assert_array_equal(K.gelu_forward(xs[i]), want[i])
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ----------------------------------------------------------------------------- GEMM on the pool
@pytest.mark.parametrize("ranges", ["compiled", "python"])
@given(m=st.integers(0, 40), k=st.integers(0, 20), n=st.integers(0, 40), ta=st.booleans(),
       tb=st.booleans(), strided=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gemm_matches_numpy_split_by_rows_or_columns(ranges, m, k, n, ta, tb, strided, with_bias, seed):
    """`gemm` split over 3 threads (every size, by rows when m >= n, else by columns), on
    C-contiguous, transposed or every-other-element operands, with and without the fused bias,
    against its NumPy twin in float64 on the same float32 inputs; with the ranges as BLAS calls
    from compiled code (`blas.run_gemm`, NumPy's bundled OpenBLAS) and as `np.matmul` in Python
    (the path for another BLAS)."""
    from minigrad.kernels import blas

    if ranges == "compiled" and blas.gemm_functions() is None:
        pytest.skip("NumPy is not linked to its bundled OpenBLAS: gemm runs its ranges in Python")
    rng = np.random.default_rng(seed)
    a = f32(rng, (k, m)).T if ta else f32(rng, (m, k))
    b = f32(rng, (n, k)).T if tb else f32(rng, (k, n))
    if strided:  # neither axis of unit stride: BLAS cannot read it, gemm copies it first
        a = np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)[::2, ::2]
        assert blas.operand(a) == (0, 0) or min(m, k) <= 1  # (every-other-row alone BLAS reads)
    bias = f32(rng, (n,)) if with_bias else None
    want = R.gemm(a.astype(np.float64), b.astype(np.float64), None if bias is None else bias.astype(np.float64))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "GEMM_SERIAL_BELOW", 0)
        mp.setattr(K, "_num_threads", lambda: 3)
        if ranges == "python":
            mp.setattr(blas, "gemm_functions", lambda: None)
        got = K.gemm(a, b, bias)
    close32(got, want, scale=max(k, 1) ** 0.5)


def test_gemm_ranges_run_on_the_workers_in_compiled_code(monkeypatch):
    """On the compiled path a GEMM hands its ranges to `Pool.run_gemms` (the workers run them in
    their spin loop, not in Python: no `Pool.run` call), and a float64 product is exact to
    rounding: the descriptors carry the right addresses, strides and transposes."""
    from minigrad.kernels import blas

    if blas.gemm_functions() is None or not K.get_pool(1).compiled:
        pytest.skip("NumPy is not linked to its bundled OpenBLAS, or Numba is disabled")
    pool = K.get_pool(1)
    calls = []
    run_gemms = pool.run_gemms
    monkeypatch.setattr(pool, "run_gemms", lambda desc: (calls.append(desc.copy()), run_gemms(desc)))
    monkeypatch.setattr(pool, "run", lambda *args: pytest.fail("a GEMM range ran in Python"))
    monkeypatch.setattr(K, "GEMM_SERIAL_BELOW", 0)
    monkeypatch.setattr(K, "_num_threads", lambda: 2)
    rng = np.random.default_rng(0)
    a, b, bias = rng.standard_normal((60, 30)), rng.standard_normal((50, 30)).T, rng.standard_normal(50)
    np.testing.assert_allclose(K.gemm(a, b, bias), a @ b + bias, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(K.gemm(b.T, a.T), b.T @ a.T, rtol=1e-12, atol=1e-12)   # by columns
    assert len(calls) == 2
    rows, cols = calls
    assert rows[:, blas.M].tolist() == [30, 30] and rows[:, blas.N].tolist() == [50, 50]
    assert rows[:, blas.TRANS_B].tolist() == [blas.TRANS] * 2 and rows[0, blas.BIAS] != 0
    assert cols[:, blas.N].tolist() == [30, 30] and cols[:, blas.BIAS].tolist() == [0, 0]


def _sleeping_pool():
    """A private pool of one worker, compiled, whose worker has ended its spin and sleeps."""
    import time

    from minigrad.kernels.pool import Pool

    if not K.get_pool(1).compiled:
        pytest.skip("Numba is disabled: the pool runs no compiled jobs")
    pool = Pool(1)
    deadline = time.monotonic() + 5
    while not pool.sleeping[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.sleeping[0]
    return pool


def _settled(pool, job):
    """Waits (up to 5 s) until worker 0 has finished job number `job`."""
    import time

    deadline = time.monotonic() + 5
    while pool.done[0] != job and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pool.done[0] == job


def test_the_caller_runs_a_gemm_range_its_worker_has_not_started():
    """A worker that does not wake (here: never notified; on the VM, a core the host lent
    elsewhere) does not hold up a GEMM: the caller claims its range and runs it, exactly once.
    When the worker wakes later it finds the range taken and runs nothing; the pool goes on."""
    from minigrad.kernels import blas

    functions = blas.gemm_functions()
    if functions is None:
        pytest.skip("NumPy is not linked to its bundled OpenBLAS")
    pool = _sleeping_pool()
    rng = np.random.default_rng(0)
    a, b, bias = rng.standard_normal((40, 20)), rng.standard_normal((20, 30)), rng.standard_normal(30)

    def product():
        out = np.full((40, 30), np.nan)
        pool.run_gemms(K._gemm_ranges(a, b, bias, out, 2, functions, (blas.operand(a), blas.operand(b))))
        return out

    notify = pool.cond.notify_all
    pool.cond.notify_all = lambda: None                             # the worker sleeps on
    try:
        out = product()
    finally:
        pool.cond.notify_all = notify
    np.testing.assert_allclose(out, a @ b + bias, rtol=1e-12, atol=1e-12)
    assert pool.claimed[0] == pool.done[0] == pool.gen[0] == 1      # the caller ran range 0
    with pool.cond:
        pool.cond.notify_all()                                       # it wakes to a taken range
    np.testing.assert_allclose(product(), a @ b + bias, rtol=1e-12, atol=1e-12)
    assert pool.done[0] == pool.gen[0] == 2


def test_a_python_job_runs_once_when_its_worker_wakes_late_for_a_claimed_gemm():
    """The race `python_job` closes: the worker sleeps through a GEMM range the caller claims and
    runs, then wakes while the caller has written its next (Python) job but not yet published
    it. It must not run that job early; published, the job runs exactly once."""
    from minigrad.kernels import blas

    functions = blas.gemm_functions()
    if functions is None:
        pytest.skip("NumPy is not linked to its bundled OpenBLAS")
    pool = _sleeping_pool()
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((40, 20)), rng.standard_normal((20, 30))
    out = np.full((40, 30), np.nan)
    notify = pool.cond.notify_all
    pool.cond.notify_all = lambda: None                                  # it sleeps through the GEMM
    try:
        pool.run_gemms(K._gemm_ranges(a, b, None, out, 2, functions, (blas.operand(a), blas.operand(b))))
    finally:
        pool.cond.notify_all = notify
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)
    calls = []
    pool.jobs[0] = (lambda *args: calls.append(args), ("range",))       # `run`'s first two steps ...
    pool.python_job[0] = pool.gen[0] + 1
    with pool.cond:
        pool.cond.notify_all()                                           # ... and the worker wakes
    _settled(pool, 1)                                                    # (it saw job 1: taken)
    assert calls == [] and pool.jobs[0] is not None
    pool._hand_over(0)                                                   # published: job 2
    _settled(pool, 2)
    assert calls == [("range",)] and pool.errors[0] is None


def test_a_worker_sleeps_again_after_a_gemm_range():
    """After a GEMM range (a compiled job) the worker spins SPIN_SECONDS, then sleeps on the
    condition: it must not keep a core busy until the next Python job comes."""
    import time

    from minigrad.kernels import blas

    functions = blas.gemm_functions()
    if functions is None:
        pytest.skip("NumPy is not linked to its bundled OpenBLAS")
    pool = _sleeping_pool()
    a, b, out = np.ones((40, 20)), np.ones((20, 30)), np.empty((40, 30))   # (alive: the worker writes out)
    pool.run_gemms(K._gemm_ranges(a, b, None, out, 2, functions, (blas.operand(a), blas.operand(b))))
    assert (out == 20).all()
    _settled(pool, 1)
    deadline = time.monotonic() + 5
    while not pool.sleeping[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.sleeping[0]


def test_a_job_is_claimed_once_and_never_after_a_later_one():
    """`_claim`: claimed[i] only grows, so a worker held up after reading job J cannot take J
    once the caller has taken J + 1 (it would run whatever desc[i] holds by then)."""
    from numba.core import config

    from minigrad.kernels.pool import _claim

    if config.DISABLE_JIT:
        pytest.skip("Numba is disabled: the atomics of `_claim` need the compiler")
    claimed = np.array([0, 2], np.int64)
    assert _claim(claimed, 1, 3) and claimed[1] == 3
    assert not _claim(claimed, 1, 3)                   # taken
    assert not _claim(claimed, 1, 2) and claimed[1] == 3   # an older job: stale, refused
    assert _claim(claimed, 0, 1) and claimed.tolist() == [1, 3]


def test_the_caller_waits_for_the_value_it_compared_not_a_second_read(monkeypatch):
    """`Pool._wait` replayed at the worst moment: the worker stores its final done[i] just after
    the caller compared done[i] with the job's number. Reading done[i] again for the spin's
    "changed from" value gave the final value, and the spin waited for a change that never
    came, 2^20 polls (~20 ms on the VM, 8% of GPT `tiny` steps). The spin must be given the
    value that was compared."""
    from types import SimpleNamespace

    from minigrad.kernels import pool as pool_module

    class WorkerFinishesAfterTheFirstRead:
        reads = 0

        def __getitem__(self, i):
            self.reads += 1
            return 4 if self.reads == 1 else 5          # job 5 done right after the first read

    spun_from = []

    def spin(counters, i, old, max_iter):
        spun_from.append(old)
        assert old != 5, "the spin waits for done[i] to leave the job's own number: it never will"
        return counters[i] != old

    monkeypatch.setattr(pool_module, "_spin_until_changed", spin)
    pool = SimpleNamespace(gen=[5], done=WorkerFinishesAfterTheFirstRead(), spin_iters=1)
    pool_module.Pool._wait(pool, 0)
    assert spun_from == [4]


FORK_RIGHT_AFTER_THE_POOL_STARTS = """
import os, signal, sys, time
from minigrad.kernels.pool import Pool, get_pool
Pool(1)                                   # its worker starts, while the process forks
pid = os.fork()
if pid == 0:
    got = []
    get_pool(1).run(lambda lo, hi: got.append((lo, hi)), (), [0, 1, 2])
    os._exit(0 if sorted(got) == [(0, 1), (1, 2)] else 1)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.WEXITSTATUS(status))
    time.sleep(0.05)
os.kill(pid, signal.SIGKILL)
sys.exit("the child's pool hung")
"""


def test_a_child_forked_while_the_workers_start_gets_a_pool_that_runs():
    """A fork while a new pool's workers were still starting (importing the BLAS setter) left the
    child with a half-imported module; its new worker died on it and the child waited for good.
    The setter is now looked up before the workers start. Fresh processes, three times."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", FORK_RIGHT_AFTER_THE_POOL_STARTS], cwd=root,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]


def test_compiled_gemm_ranges_with_32_bit_blas_integers():
    """The LP64 call (32-bit integers, as SciPy's bundled OpenBLAS and most system BLAS take them)
    gives the product too: descriptors for SciPy's OpenBLAS, run by `blas.run_gemm` row by row."""
    import ctypes
    import glob
    import os

    from minigrad.kernels import blas

    scipy = pytest.importorskip("scipy")
    paths = glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs",
                                   "libscipy_openblas*.so*"))
    functions = blas.find_gemm(ctypes.CDLL(paths[0])) if paths else None
    if functions is None or functions["ilp64"] or not K.get_pool(1).compiled:
        pytest.skip("no LP64 scipy-openblas beside SciPy, or Numba is disabled")
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        a, b, bias = (rng.standard_normal(s).astype(dtype) for s in ((37, 11), (23, 11), (23,)))
        out = np.empty((37, 23), dtype)
        desc = K._gemm_ranges(a, b.T, bias, out, 3, functions, (blas.operand(a), blas.operand(b.T)))
        for row in range(3):
            blas.run_gemm(desc, row)
        np.testing.assert_allclose(out, a.astype(np.float64) @ b.T.astype(np.float64) + bias,
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("path", ["numpy-blas", "np.dot"])
@given(m=st.integers(0, 30), k=st.integers(0, 20), n=st.integers(0, 30), ta=st.booleans(), tb=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_blas_dot_is_a_matmul_on_c_ordered_and_transposed_arrays(path, m, k, n, ta, tb, dtype, seed):
    """`blas.dot` (the attention kernels' tile product) against a @ b, through NumPy's OpenBLAS
    and through np.dot, on C-ordered arrays and transposed views, empty ones included."""
    from minigrad.kernels import blas

    table = blas.dot_table() if path == "numpy-blas" else np.zeros(3, np.int64)
    if path == "numpy-blas" and not table[0]:
        pytest.skip("NumPy's bundled OpenBLAS not found, or Numba is disabled")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m)).astype(dtype).T if ta else rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T if tb else rng.standard_normal((k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    blas.dot(table, a, b, out)
    tol = 1e-5 * max(k, 1) ** 0.5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, a.astype(np.float64) @ b.astype(np.float64), rtol=tol, atol=tol)


def test_blas_operand_reads_c_ordered_and_transposed_arrays_and_refuses_the_rest():
    from minigrad.kernels import blas

    x = np.zeros((6, 4), np.float32)
    assert blas.operand(x) == (blas.NO_TRANS, 4)
    assert blas.operand(x.T) == (blas.TRANS, 4)
    assert blas.operand(x[:, :3]) == (blas.NO_TRANS, 4)          # a column slice keeps its row pitch
    assert blas.operand(x[::2]) == (blas.NO_TRANS, 8)
    assert blas.operand(x[:, ::2]) == (0, 0)                     # no unit stride: must be copied
    assert blas.operand(x[::-1]) == (0, 0)                       # negative stride


@given(n=st.integers(0, 300), c=st.integers(0, 40), transposed=st.booleans(), seed=seeds)
def test_column_sums_match_the_numpy_twin(n, c, transposed, seed):
    """The bias gradient as a BLAS product ones @ g, against g.sum(axis=0) in float64 (float32
    inputs; C-ordered and transposed), and exactly in float64 up to the order of additions."""
    rng = np.random.default_rng(seed)
    g = f32(rng, (c, n)).T if transposed else f32(rng, (n, c))
    close32(K.column_sums(g), R.column_sums(g.astype(np.float64)), scale=max(n, 1) ** 0.5)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(K.column_sums(g64), R.column_sums(g64), rtol=1e-12, atol=1e-12 * max(n, 1))


def test_column_sums_refuse_other_ranks_and_keep_integer_sums():
    with pytest.raises(ValueError, match=r"column_sums: need g \(N, C\), got shape \(2, 3, 4\)"):
        K.column_sums(np.zeros((2, 3, 4), np.float32))
    ints = np.arange(12).reshape(4, 3)
    assert K.column_sums(ints).tolist() == [18, 22, 26]


def test_gemm_keeps_numpy_semantics_for_mixed_dtypes_and_refuses_bad_shapes():
    a, b = np.ones((4, 3), np.float32), np.ones((3, 5))
    assert K.gemm(a, b).dtype == np.float64              # promoted as a @ b
    assert K.gemm(a, b.astype(np.float32), np.ones(5)).dtype == np.float32   # bias cast to the output
    with pytest.raises(ValueError, match=r"gemm: need a \(M, K\) and b \(K, N\), got \(4, 3\) and \(4, 3\)"):
        K.gemm(a, a)
    with pytest.raises(ValueError, match=r"bias must be \(5,\)"):
        K.gemm(a, b, np.ones(4))


def test_linear_op_on_the_pool_matches_the_numpy_backend():
    """F.linear forward and backward (numba backend: `gemm` on the pool) against the numpy
    backend, in float64, on a shape large enough to be split."""
    import minigrad as mg
    from minigrad import functional as F

    rng = np.random.default_rng(5)
    x, w, b, g = rng.standard_normal((3, 50, 40)), rng.standard_normal((70, 40)), rng.standard_normal(70), \
        rng.standard_normal((3, 50, 70))
    results = {}
    for backend in ("numpy", "numba"):
        with mg.use_backend(backend):
            xt, wt, bt = mg.tensor(x, requires_grad=True), mg.tensor(w, requires_grad=True), mg.tensor(b, requires_grad=True)
            y = F.linear(xt, wt, bt)
            y.backward(g)
            results[backend] = (y.data, xt.grad, wt.grad, bt.grad)
    for got, want in zip(results["numba"], results["numpy"]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
