"""Gradient compression (optim/dist/compress.py): each compressor's defining property, its wire
encoding, the reducer's exchange through SimComm, and error feedback on heterogeneous least
squares (top-k alone stalls, EF14's floor scales with lr, EF21 converges like uncompressed GD)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optim.dist.comm import SimComm, WorkerError, ring_traffic
from optim.dist.compress import (EF14, EF21, QSGD, Identity, PowerSGD, RandK, Reducer, ScaledSign,
                                 TopK, default_runs, elias_omega_bits, loss_vs_bytes,
                                 train_least_squares)
from optim.dist.problems import HeterogeneousLeastSquares
from strategies import assert_mpiexec_matches_simcomm

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def vectors(min_size=1, max_size=300):
    return hnp.arrays(np.float64, st.integers(min_size, max_size), elements=finite)


# ------------------------------------------------------------------ wire encodings
@given(d=st.integers(1, 500), dtype=st.sampled_from([np.float32, np.float64]),
       s=st.integers(1, 300), k=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_wire_bytes_are_the_stated_encodings(d, dtype, s, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d).astype(dtype)
    b = np.dtype(dtype).itemsize
    kk = min(k, d)

    def wire(c):
        return c.wire_bytes(c.compress(x, rng))

    assert wire(Identity()) == d * b
    assert wire(QSGD(s)) == b + math.ceil(d / 8) + math.ceil(d * s.bit_length() / 8)
    assert wire(TopK(k)) == kk * b + 4 * kk
    assert wire(RandK(k)) == kk * b                     # indices come from the shared seed
    assert wire(RandK(k, shared=False)) == kk * b + 4 * kk
    assert wire(ScaledSign()) == math.ceil(d / 8) + b
    assert wire(PowerSGD(3)) == d * b                   # 1-D: uncompressed
    n = rng.integers(1, 30)
    m = rng.integers(1, 30)
    r = min(3, n, m)
    assert PowerSGD(3).wire_bytes(PowerSGD(3).compress(rng.standard_normal((n, m)).astype(dtype), rng)) \
        == (n + m) * r * b


def test_ratio_keeps_a_fraction_of_each_tensor():
    c = TopK(ratio=0.05)
    assert [c.k_for(d) for d in (1, 10, 200, 1000)] == [1, 1, 10, 50]
    assert TopK(k=7).k_for(3) == 3


# ------------------------------------------------------------------ QSGD
@given(v=vectors(), s=st.integers(1, 40))
def test_qsgd_exact_variance_and_nnz_within_the_papers_bounds(v, s):
    q, d = QSGD(s), v.size
    norm2 = float(v @ v)
    assert q.expected_error(v) <= min(d / s**2, math.sqrt(d) / s) * norm2 * (1 + 1e-12) + 1e-300
    assert q.expected_nnz(v) <= s * (s + math.sqrt(d)) + 1e-9


@given(v=vectors(), s=st.integers(1, 1000), seed=st.integers(0, 2**32 - 1))
def test_qsgd_payload_decodes_to_signed_levels_of_the_norm(v, s, seed):
    q = QSGD(s)
    out = q(v, np.random.default_rng(seed))
    norm = np.linalg.norm(v)
    levels = np.abs(out) * s / norm if norm else np.abs(out)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-9)
    ratio = np.abs(v) * s / norm if norm else np.zeros_like(v)
    # each level is floor(r) or floor(r) + 1, never more than s; the sign is v's
    assert np.all(levels <= s + 1e-9)
    assert np.all((np.round(levels) == np.floor(ratio)) | (np.round(levels) == np.floor(ratio) + 1))
    assert np.all(out * v >= 0)


@pytest.mark.parametrize("scale", [1e-30, 1e19])
def test_qsgd_float32_norm_survives_tiny_and_huge_vectors(scale):
    """In float32 the sum of squares underflows below ~1e-19 and overflows above ~1e19: the norm
    is summed in float64, so Q(v) stays unbiased and finite there (it was 0, or NaN)."""
    v = (np.array([3.0, 0.0, -4.0, 1.0]) * scale).astype(np.float32)
    q, rng = QSGD(4), np.random.default_rng(0)
    payload = q.compress(v, rng)
    assert payload.parts["norm"][0] == np.float32(np.linalg.norm(v.astype(np.float64)))
    mean = np.mean([q(v, rng) for _ in range(4000)], axis=0)
    assert np.isfinite(mean).all()
    # per coordinate at most (||v||/s)^2/4 variance: 5 standard errors over 4000 draws
    bound = 5 * np.linalg.norm(v.astype(np.float64)) / 4 / 2 / math.sqrt(4000)
    np.testing.assert_allclose(mean, v, rtol=0, atol=bound)
    assert q.expected_error(v) > 0


@pytest.mark.parametrize("s", [1, 4, 31])
def test_qsgd_is_unbiased_with_the_exact_variance_statistically(s):
    """N = 4000 draws at d = 1000. Each coordinate's mean must lie within 5.5 standard errors
    sigma_i / sqrt(N), sigma_i^2 = (||v||/s)^2 p_i (1 - p_i) (for 1000 normal coordinates a
    false alarm has probability about 4e-5); the mean squared error and the mean nnz within 5
    standard errors of their exact expectations."""
    rng = np.random.default_rng(s)
    d, draws = 1000, 4000
    v = rng.standard_normal(d) * rng.uniform(0.1, 3.0, d)
    q = QSGD(s)
    samples = np.stack([q(v, rng) for _ in range(draws)])
    ratio = np.abs(v) * s / np.linalg.norm(v)
    p = ratio - np.floor(ratio)
    sigma = np.linalg.norm(v) / s * np.sqrt(p * (1 - p))
    err = samples.mean(axis=0) - v
    random = sigma > 0
    assert np.max(np.abs(err[random]) / (sigma[random] / math.sqrt(draws))) < 5.5
    np.testing.assert_allclose(err[~random], 0, atol=1e-12)

    sq = np.sum((samples - v) ** 2, axis=1)
    assert abs(sq.mean() - q.expected_error(v)) < 5 * sq.std() / math.sqrt(draws)
    nnz = np.count_nonzero(samples, axis=1)
    assert abs(nnz.mean() - q.expected_nnz(v)) < 5 * nnz.std() / math.sqrt(draws) + 1e-9
    assert sq.mean() <= min(d / s**2, math.sqrt(d) / s) * (v @ v)
    assert nnz.mean() <= s * (s + math.sqrt(d))


def _elias_omega(n: int) -> str:
    """The Elias omega code word of n >= 1, built literally."""
    code = "0"
    while n > 1:
        code = format(n, "b") + code
        n = len(format(n, "b")) - 1
    return code


@given(st.lists(st.integers(1, 2**40), min_size=1, max_size=20))
def test_elias_omega_lengths_match_the_code_words(ns):
    assert elias_omega_bits(ns).tolist() == [len(_elias_omega(n)) for n in ns]


def test_qsgd_elias_code_at_s_sqrt_d_is_under_the_papers_2_8d_plus_32():
    """Alistarh et al.'s count for s = sqrt(d): about 2.8d + 32 bits (an o(1) term aside; at
    d = 100 we measure 2.81d + 32), against 7 bits per element for the fixed-width code."""
    rng = np.random.default_rng(0)
    d, q = 1024, QSGD(32)
    v = rng.standard_normal(d)
    payloads = [q.compress(v, rng) for _ in range(20)]
    bits = np.mean([q.elias_bits(p) for p in payloads])
    assert bits <= 2.8 * d + 32
    assert q.wire_bytes(payloads[0]) * 8 == 64 + d + 6 * d


# ------------------------------------------------------------------ sparsifiers and sign
@given(x=vectors(), k=st.integers(1, 300))
def test_top_k_is_contractive_and_keeps_the_largest(x, k):
    c = TopK(k)
    out = c(x, None)
    d, kept = x.size, out != 0
    assert np.sum((out - x) ** 2) <= (1 - min(k, d) / d) * np.sum(x ** 2) * (1 + 1e-12)
    payload = c.compress(x, None)
    chosen = np.zeros(d, bool)
    chosen[payload.parts["indices"]] = True
    assert chosen.sum() == min(k, d)
    np.testing.assert_array_equal(out[chosen], x[chosen])
    assert not np.any(out[~chosen])
    if (~chosen).any():
        assert np.abs(x[chosen]).min() >= np.abs(x[~chosen]).max()
    assert kept.sum() <= min(k, d)


def test_top_k_with_k_equal_d_is_exact():
    x = np.random.default_rng(0).standard_normal((4, 5))
    np.testing.assert_array_equal(TopK(20)(x, None), x)


@pytest.mark.parametrize("scaled", [True, False])
def test_rand_k_inclusion_mean_and_error_statistically(scaled):
    """Each coordinate is kept with probability k/d. Scaled by d/k the mean of C(x) is x
    (unbiased); unscaled, E||C(x) - x||^2 = (1 - k/d) ||x||^2 (contractive). 5 standard errors."""
    rng = np.random.default_rng(1)
    d, k, draws = 50, 5, 20000
    x = rng.standard_normal(d)
    c = RandK(k, scaled=scaled)
    samples = np.stack([c(x, rng) for _ in range(draws)])
    kept = samples != 0
    freq = kept.mean(axis=0)
    assert np.max(np.abs(freq - k / d)) < 5 * math.sqrt(k / d * (1 - k / d) / draws)
    assert np.all(kept.sum(axis=1) == k)
    # each kept coordinate is x_i times exactly d/k (or 1): a scale off by 2% ((d-1)/k) is about
    # one standard error of the mean below, so the statistical check alone would miss it
    np.testing.assert_allclose(samples[kept], np.broadcast_to(x, samples.shape)[kept] * (d / k if scaled else 1.0),
                               rtol=1e-15)
    if scaled:
        sigma = np.abs(x) * math.sqrt(d / k - 1)          # sd of one coordinate of C(x)
        assert np.max(np.abs(samples.mean(axis=0) - x) / (sigma / math.sqrt(draws))) < 5
    else:
        sq = np.sum((samples - x) ** 2, axis=1)
        assert abs(sq.mean() - (1 - k / d) * (x @ x)) < 5 * sq.std() / math.sqrt(draws)


@given(x=vectors(), zeros=st.integers(0, 5))
def test_scaled_sign_error_is_norm2_minus_norm1_squared_over_d(x, zeros):
    x = x.copy()
    x[:zeros] = 0.0                                     # a zero is sent as +scale
    out = ScaledSign()(x, None)
    d = x.size
    np.testing.assert_allclose(np.abs(out), np.abs(x).sum() / d)
    expected = x @ x - np.abs(x).sum() ** 2 / d
    assert abs(np.sum((out - x) ** 2) - expected) <= 1e-9 * (x @ x) + 1e-300


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compressors_keep_shape_and_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 7)).astype(dtype)
    for c in (Identity(), QSGD(4), TopK(5), RandK(5), RandK(5, shared=False), ScaledSign(), PowerSGD(2)):
        out = c(x, rng)
        assert out.shape == x.shape and out.dtype == x.dtype, c


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="exactly one of k"):
        TopK()
    with pytest.raises(ValueError, match="exactly one of k"):
        TopK(3, ratio=0.1)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        RandK(ratio=1.5)
    with pytest.raises(ValueError, match="QSGD: levels"):
        QSGD(0)
    with pytest.raises(ValueError, match="PowerSGD: rank"):
        PowerSGD(0)
    with pytest.raises(TypeError, match="TopK.compress: expected a floating-point array, got dtype int64"):
        TopK(1).compress(np.arange(4), None)
    c = PowerSGD(1)
    c.compress(np.ones((3, 4)), np.random.default_rng(0), name="w")
    with pytest.raises(ValueError, match="tensor 'w' changed shape to"):
        c.compress(np.ones((3, 5)), np.random.default_rng(0), name="w")


# ------------------------------------------------------------------ PowerSGD
def _matrix_with_spectrum(sigma, n, m, seed=0):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((n, len(sigma))))[0]
    v = np.linalg.qr(rng.standard_normal((m, len(sigma))))[0]
    return u @ np.diag(sigma) @ v.T


def test_power_sgd_warm_start_converges_to_the_truncated_svd():
    sigma = np.array([10.0, 8.0, 2.0, 1.0, 0.5, 0.1])
    m = _matrix_with_spectrum(sigma, 30, 20)
    u, s, vt = np.linalg.svd(m)
    best = u[:, :2] @ np.diag(s[:2]) @ vt[:2]
    rng = np.random.default_rng(1)
    warm, cold = PowerSGD(2), PowerSGD(2, warm_start=False)
    for _ in range(40):                                 # subspace iteration: error ~ (2/8)^t
        approx = warm(m, rng)
        fresh = cold(m, rng)
    np.testing.assert_allclose(np.linalg.norm(m - approx, 2), sigma[2], rtol=1e-12)
    assert np.linalg.norm(approx - best) < 1e-12 * np.linalg.norm(m)
    # one power step from a random Q each time stays a visibly worse approximation
    assert np.linalg.norm(m - fresh) > np.linalg.norm(m - best) * (1 + 1e-3)


def test_power_sgd_full_rank_is_exact():
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    np.testing.assert_allclose(PowerSGD(6)(x, np.random.default_rng(1)), x, atol=1e-12)


# ------------------------------------------------------------------ the reducer through SimComm
COMPRESSORS = [Identity(), QSGD(4), TopK(3), RandK(3), RandK(3, scaled=False, shared=False),
               ScaledSign(), PowerSGD(2)]


def _grads(rank):
    rng = np.random.default_rng(100 + rank)
    return {"w": rng.standard_normal((4, 5)), "frozen": None, "b": rng.standard_normal(5),
            "h": rng.standard_normal((3, 2, 2)).astype(np.float32)}


def _reduce_once(comm, compressor):
    reducer = Reducer(comm, compressor, seed=7)
    grads = _grads(comm.rank)
    own, mean = reducer.reduce(grads)
    before = comm.bytes_sent
    hooked = dict(grads)
    reducer(hooked)
    return own, mean, hooked, comm.bytes_sent - before


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("compressor", COMPRESSORS, ids=repr)
def test_reducer_mean_is_the_numpy_mean_of_decompressed_payloads(compressor, n):
    results = SimComm(n).run(_reduce_once, compressor)
    own = [r[0] for r in results]
    assert list(own[0]) == ["b", "h", "w"]              # sorted; None entries (frozen) skipped
    for name in own[0]:
        expected = np.mean([o[name] for o in own], axis=0)
        for rank, (_, mean, hooked, _) in enumerate(results):
            assert mean[name].dtype == own[0][name].dtype and mean[name].shape == own[0][name].shape
            np.testing.assert_array_equal(mean[name], results[0][1][name])  # identical on every rank
            if compressor.exchange == "allgather":
                np.testing.assert_array_equal(mean[name], expected)
            else:                                        # averaged by a ring all-reduce
                tol = 1e-6 if mean[name].dtype == np.float32 else 1e-13
                np.testing.assert_allclose(mean[name], expected, rtol=tol, atol=tol)
            assert hooked[name].shape == mean[name].shape
        assert results[0][2]["frozen"] is None


@pytest.mark.parametrize("compressor", [Identity(), TopK(3), ScaledSign()], ids=repr)
def test_reducer_own_part_is_the_plain_compression(compressor):
    results = SimComm(3).run(_reduce_once, compressor)
    for rank, (own, _, _, _) in enumerate(results):
        for name, x in _grads(rank).items():
            if x is not None:
                np.testing.assert_array_equal(own[name], compressor(x, None))


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("compressor", COMPRESSORS, ids=repr)
def test_bytes_on_the_wire_per_worker(compressor, n):
    """allgather payloads: (n - 1) * the payloads' wire bytes; all-reduced ones: the ring's
    2(n-1)/n share of the concatenated buffer (per dtype; PowerSGD: P and 1-D tensors, then Q)."""
    results = SimComm(n).run(_reduce_once, compressor)
    grads = {k: v for k, v in _grads(0).items() if v is not None}
    rng = np.random.default_rng(0)
    for rank, (*_, sent) in enumerate(results):
        if compressor.exchange == "allgather":
            payloads = [compressor.compress(x, rng) for x in grads.values()]
            assert sent == (n - 1) * sum(compressor.wire_bytes(p) for p in payloads)
        elif isinstance(compressor, PowerSGD):
            # rank 2: P of h (3x2) in float32, P of w (4x2) with b (5) in float64, then the Q's
            assert sent == (ring_traffic(3 * 2, n, rank)[0] * 4 + ring_traffic(4 * 2 + 5, n, rank)[0] * 8
                            + ring_traffic(5 * 2, n, rank)[0] * 8 + ring_traffic(4 * 2, n, rank)[0] * 4)
        else:
            kept = {k: min(3, x.size) if isinstance(compressor, RandK) else x.size
                    for k, x in grads.items()}
            f64 = kept["w"] + kept["b"]
            assert sent == ring_traffic(f64, n, rank)[0] * 8 + ring_traffic(kept["h"], n, rank)[0] * 4


def test_reducer_rejects_a_non_compressor():
    def body(comm):
        Reducer(comm, "topk")
    with pytest.raises(Exception, match="compressor must be a Compressor"):
        SimComm(1).run(body)


# ------------------------------------------------------------------ error feedback
def _ef_identity(comm, feedback):
    reducer = Reducer(comm, Identity())
    hook = EF14(reducer, lr=lambda: 0.5) if feedback == "ef14" else EF21(reducer)
    out = []
    for step in range(3):
        g = {"w": np.random.default_rng(10 * step + comm.rank).standard_normal(6)}
        hook(g)
        out.append(g["w"])
    return out


@pytest.mark.parametrize("feedback", ["ef14", "ef21"])
def test_error_feedback_with_no_compression_is_the_plain_mean(feedback):
    results = SimComm(3).run(_ef_identity, feedback)
    for step in range(3):
        plain = np.mean([np.random.default_rng(10 * step + r).standard_normal(6) for r in range(3)], axis=0)
        np.testing.assert_allclose(results[0][step], plain, rtol=1e-13, atol=1e-15)


def test_ef14_keeps_the_error_in_parameter_units():
    """p = lr*g + e: the error left by one lr is spent at the next lr as it is."""
    def body(comm):
        lr = [0.5]
        hook = EF14(Reducer(comm, TopK(1)), lr=lambda: lr[0])
        g = {"w": np.array([3.0, 1.0])}
        hook(g)
        error_after_first = hook.error["w"].copy()
        lr[0] = 0.25
        g = {"w": np.array([0.0, 1.0])}
        hook(g)
        return error_after_first, g["w"]

    error, step = SimComm(1).run(body)[0]
    np.testing.assert_array_equal(error, [0.0, 0.5])                  # 0.5 * [3, 1] kept [1.5, 0]
    np.testing.assert_array_equal(step, np.array([0.0, 0.5 + 0.25]) / 0.25)


def test_ef14_rejects_a_nonpositive_lr():
    def body(comm):
        EF14(Reducer(comm, TopK(1)), lr=0.0)({"w": np.ones(3)})
    with pytest.raises(Exception, match="EF14: lr must be a finite number > 0"):
        SimComm(1).run(body)


# -------------------------------------------- heterogeneous least squares, 8 workers, d = 200
@pytest.fixture(scope="module")
def problem():
    return HeterogeneousLeastSquares(8, 200, seed=0)


def _final(problem, compressor, feedback, lr_factor, steps):
    return SimComm(8).run(train_least_squares, problem, compressor, feedback,
                          lr=lr_factor / problem.lipschitz, steps=steps)[0]


def test_top_k_without_error_feedback_stalls(problem):
    """Top-k at 5% of d alone: a biased fixed point far from the optimum whatever the lr."""
    for factor in (1.0, 0.3):
        error = _final(problem, TopK(ratio=0.05), None, factor, 300)["error"]
        assert error[-1] > 0.3
        assert abs(error[-1] - error[-100]) < 0.02 * error[-1]       # settled, not still falling


def test_ef14_floor_is_proportional_to_lr_and_ef21_converges(problem):
    gd = _final(problem, Identity(), None, 1.0, 300)["error"]
    assert gd[-1] < 1e-13
    floors = [_final(problem, TopK(ratio=0.05), "ef14", f, 600)["error"][-150:].mean()
              for f in (0.2, 0.1, 0.05)]
    assert floors[0] < 0.3
    for bigger, smaller in zip(floors, floors[1:]):
        assert 1.6 < bigger / smaller < 2.4                           # halving lr ~ halves it
    ef21 = _final(problem, TopK(ratio=0.05), "ef21", 1.0, 500)["error"]
    assert ef21[-1] < 1e-13                                           # GD's rounding level too


def test_ef_with_power_sgd_matches_gd_on_matrix_least_squares():
    """Rank 2 of a 50 x 4 gradient: both runs end at rounding level, f - f* ~ 1e-30 f(0)."""
    problem = HeterogeneousLeastSquares(8, (50, 4), seed=1)
    gd = _final(problem, Identity(), None, 1.0, 300)
    ef = _final(problem, PowerSGD(2), "ef14", 1.0, 300)
    start = problem.loss_gap(np.zeros(problem.shape))
    assert gd["loss"][-1] < 1e-26 * start
    assert ef["loss"][-1] < 1e-26 * start
    # (50 + 4) * 2 values per all-reduce round instead of 200
    assert ef["bytes"][-1] == pytest.approx(108 / 200 * gd["bytes"][-1], rel=0.02)


def test_loss_vs_bytes_returns_curves_for_every_run():
    runs = [(label, c, fb, f) for label, c, fb, f in default_runs() if label in
            ("uncompressed", "top-k 0.05 + EF21", "PowerSGD r=1")]
    curves = loss_vs_bytes(workers=2, shape=(10, 2), steps=5, runs=runs)
    assert list(curves) == ["uncompressed", "top-k 0.05 + EF21", "PowerSGD r=1"]
    for c in curves.values():
        assert set(c) == {"bytes", "error", "loss"} and all(len(a) == 5 for a in c.values())
        assert np.all(np.diff(c["bytes"]) > 0) and c["loss"][-1] < c["loss"][0]
    per_step = 2 * (2 - 1) / 2 * 20 * 8                                # ring all-reduce of 20 float64
    np.testing.assert_array_equal(curves["uncompressed"]["bytes"], per_step * np.arange(1, 6))
    assert curves["top-k 0.05 + EF21"]["bytes"][-1] == 5 * (1 * 8 + 4)     # k = 1 of 20, allgather
    assert len(default_runs()) == len({label for label, *_ in default_runs()})


def test_train_least_squares_checks_its_arguments():
    problem = HeterogeneousLeastSquares(2, 5)
    with pytest.raises(Exception, match="has 2 workers but the communicator has 3 ranks"):
        SimComm(3).run(train_least_squares, problem, TopK(1), lr=0.1, steps=1)
    with pytest.raises(Exception, match="feedback must be None, 'ef14' or 'ef21'"):
        SimComm(2).run(train_least_squares, problem, TopK(1), "ef", lr=0.1, steps=1)


# ------------------------------------------------------------------ in data-parallel training
VOCAB, BLOCK = 11, 8
IDS = np.cumsum(np.random.default_rng(0).choice([1, 1, 2], size=2000)) % VOCAB

#: name -> make(comm, optimizer): the gradient exchange of a data-parallel run (None: all-reduce)
EXCHANGES = {
    "all-reduce": lambda comm, opt: None,
    "identity": lambda comm, opt: Reducer(comm, Identity()),
    "powersgd+ef14": lambda comm, opt: EF14(Reducer(comm, PowerSGD(1)), lambda: opt.param_groups[0]["lr"]),
    "topk+ef21": lambda comm, opt: EF21(Reducer(comm, TopK(ratio=0.1))),
    "qsgd": lambda comm, opt: Reducer(comm, QSGD(4)),
}


def _global_batches(rng, rows=4):
    starts = rng.integers(0, len(IDS) - BLOCK - 1, size=rows)
    return (np.stack([IDS[s:s + BLOCK] for s in starts]),
            np.stack([IDS[s + 1:s + BLOCK + 1] for s in starts]))


def _dp_gpt(comm, exchange, steps=3, save_dir=None, save_every=None, resume_from=None):
    """Data-parallel GPT training (float64, SGD on a cosine schedule) with ``EXCHANGES[exchange]``
    as the gradient exchange; returns the parameters, the bytes this rank sent while fitting and
    the losses."""
    import optim
    from models.gpt import GPT, GPTConfig
    from models.training import lm_loss
    from models.training.distributed import data_parallel_trainer, restore_ranks

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=BLOCK, vocab_size=VOCAB),
                dtype=np.float64, seed=comm.rank)
    opt = optim.create("sgd", {n: p.data for n, p in model.named_parameters()}, lr=0.3)
    tr = data_parallel_trainer(comm, model, lm_loss, opt, _global_batches,
                               reducer=EXCHANGES[exchange](comm, opt), steps=steps, seed=3,
                               schedule="cosine", progress=False, save_dir=save_dir, save_every=save_every)
    if resume_from is not None:
        restore_ranks(tr, comm, resume_from)
    start = comm.bytes_sent
    tr.fit()
    return ({n: p.data.copy() for n, p in model.named_parameters()}, comm.bytes_sent - start,
            tr.history["train_loss"])


def test_compressed_data_parallel_keeps_the_ranks_identical_and_identity_is_the_all_reduce():
    runs = {name: SimComm(2).run(_dp_gpt, name) for name in EXCHANGES}
    for name, ranks in runs.items():
        for param, p in ranks[0][0].items():
            np.testing.assert_array_equal(ranks[1][0][param], p, err_msg=f"{name} {param}")
    plain = runs["all-reduce"][0]
    for param, p in plain[0].items():                       # the same packing and ring all-reduce
        np.testing.assert_array_equal(runs["identity"][0][0][param], p)
    assert runs["identity"][0][1] == plain[1]
    for name in ("powersgd+ef14", "topk+ef21", "qsgd"):
        params, sent, _ = runs[name][0]
        assert max(np.abs(params[n] - plain[0][n]).max() for n in plain[0]) > 1e-6, name  # compressed
        assert sent < 0.5 * plain[1], name


def test_a_reducer_is_refused_with_local_sgd():
    import optim
    from optim.dist.local_sgd import LocalSGD
    from models.gpt import GPT, GPTConfig
    from models.training import lm_loss
    from models.training.distributed import data_parallel_trainer

    def body(comm):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=BLOCK, vocab_size=VOCAB))
        opt = LocalSGD(optim.create("sgd", {n: p.data for n, p in model.named_parameters()}, lr=0.1),
                       comm, local_steps=2)
        data_parallel_trainer(comm, model, lm_loss, opt, _global_batches, reducer=Reducer(comm, TopK(1)),
                              steps=2)
    with pytest.raises(Exception, match="LocalSGD averages the parameters on its own schedule"):
        SimComm(2).run(body)


@pytest.mark.parametrize("exchange", ["powersgd+ef14", "topk+ef21", "qsgd"])
def test_a_compressed_run_resumes_from_per_rank_checkpoints_bit_for_bit(tmp_path, exchange):
    """Each rank's checkpoint holds its reducer's state (generators, PowerSGD's warm start, EF
    buffers) beside the optimizer's: without it the resumed steps would differ."""
    from models.training import CheckpointError

    whole = SimComm(2).run(_dp_gpt, exchange, steps=6)
    SimComm(2).run(_dp_gpt, exchange, steps=6, save_dir=tmp_path, save_every=3)   # keeps step 3
    resumed = SimComm(2).run(_dp_gpt, exchange, steps=6, resume_from=tmp_path)
    for (params, _, loss), (params_w, _, loss_w) in zip(resumed, whole):
        assert loss == loss_w
        for name, p in params.items():
            np.testing.assert_array_equal(p, params_w[name])
    with pytest.raises(WorkerError, match="saved with stateful gradient hooks grad_hook0, this trainer "
                                          "has none") as e:
        SimComm(2).run(_dp_gpt, "all-reduce", steps=6, resume_from=tmp_path)
    assert isinstance(e.value.error, CheckpointError)



@pytest.mark.parametrize("n", [2, 4])
def test_mpiexec_ranks_give_the_simcomm_bits(tmp_path, n):
    """tests/mpi_programs/compress.py: the reducer with top-k, QSGD, PowerSGD, EF14 and EF21 and
    compressed gradient descent under ``mpiexec -n n`` equal SimComm(n): outputs and bytes."""
    assert_mpiexec_matches_simcomm("compress", n, tmp_path)
