"""KV-cache policies (models/kv_cache.py): each against dense attention or the uncached forward."""
import os
import subprocess
import sys
import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad
import minigrad.functional as F
from models.gpt import GPT, GPTConfig
from minigrad.backend import numba_available
from models.kv_cache import (DenseKVCache, HalfOverflow, LinearAttentionCache, PagedKVCache, QuestCache,
                             StreamingLLMCache, cache_for, page_upper_bound)
import models.paged_attention as pa
from models.paged_attention import dense_decode, dense_decode_numpy, paged_decode, paged_decode_numpy


def _model(seed=0, block_size=24, n_kv_head=None, **kw):
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=16, block_size=block_size, vocab_size=11, n_kv_head=n_kv_head, **kw)
    m = GPT(cfg, dtype=np.float64, seed=seed)
    prng = np.random.default_rng(seed + 100)
    for _, p in m.named_parameters():       # sharpen the logits so greedy argmaxes are well separated
        p.data[...] += prng.normal(0, 0.3, p.shape)
    m.eval()
    return m


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_widened_turns_every_float16_bit_pattern_into_numpys_float32():
    """The decoding kernels read a float16 cache as its bits: `widened` (an LLVM half-to-float
    conversion when compiled, a NumPy view without Numba) must give NumPy's float16 -> float32
    for all 65,536 patterns, subnormals, infinities and NaNs included."""
    from numba import njit

    from minigrad.kernels.decode import widened

    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np.float16).astype(np.float32)

    @njit
    def widen_all(b):
        out = np.empty(b.size, np.float32)
        for i in range(b.size):
            out[i] = widened(b[i])
        return out

    for got in (widen_all(bits), np.array([widened(b) for b in bits[::97]], np.float32)):
        ref = want if got.size == want.size else want[::97]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(got[~np.isnan(got)], ref[~np.isnan(ref)])
    assert widened(np.float32(1.5)) == 1.5 and widened(2.0) == 2.0      # floats pass as they are


def _refuse_the_twin(*args):
    raise AssertionError("the decoding step took the NumPy twin, not its kernel")


def _decode(m, cache, idx, chunks):
    """Feed idx (B, T) through ``cache`` in chunks of the given sizes; logits (B, T, V)."""
    out, t = [], 0
    with minigrad.no_grad():
        for n in chunks:
            out.append(m(idx[:, t:t + n], cache=cache)[0].data)
            t += n
    return np.concatenate(out, axis=1)


def _chunks(draw_sizes, T):
    sizes, t = [], 0
    for n in draw_sizes:
        if t >= T:
            break
        sizes.append(min(n, T - t))
        t += sizes[-1]
    return sizes + [1] * (T - t)


def _ref_attention(q, k, v, allowed):
    """Dense attention with a mask through minigrad's op: q (B, nh, T, hs), k, v (B, nkv, S, hs)."""
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, np.repeat(k, g, 1), np.repeat(v, g, 1), attn_mask=allowed).data


# ------------------------------------------------------------------ dense
@given(n_kv_head=st.sampled_from([None, 2, 1]), B=st.integers(1, 3), T=st.integers(1, 24),
       sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6), seed=st.integers(0, 100))
@settings(max_examples=15)
def test_dense_cached_decoding_equals_the_uncached_forward(n_kv_head, B, T, sizes, seed):
    """MHA, GQA and MQA; prompts and steps of any length (the causal mask inside a chunk)."""
    m = _model(seed, n_kv_head=n_kv_head)
    idx = np.random.default_rng(seed).integers(0, 11, (B, T))
    with minigrad.no_grad():
        full = m(idx)[0].data
    cache = DenseKVCache.for_model(m, batch_size=B)
    np.testing.assert_allclose(_decode(m, cache, idx, _chunks(sizes, T)), full, rtol=0, atol=1e-10)
    assert len(cache) == T
    assert cache.k.shape == (2, B, m.config.kv_heads, 24, 4)          # n_kv_head heads are stored


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("make", ["dense", "dense rows", "Quest"])
def test_a_dense_cache_decodes_through_the_kernel_of_its_layout_not_the_twin(make, monkeypatch):
    """Each layout has its kernel, so a decoding step never falls back to the NumPy twin (a silent
    fallback would be right, and several times slower)."""
    monkeypatch.setattr(pa, "dense_decode_numpy", _refuse_the_twin)
    m = _model(0, n_kv_head=1)
    if make == "Quest":     # a budget covering every page: its dense step
        cache = QuestCache.for_model(m, token_budget=64, page_size=4)
    else:
        cache = DenseKVCache.for_model(m, **({"layout": "rows"} if make == "dense rows" else {}))
    assert cache.layout == ("positions" if make == "dense" else "rows")
    idx = np.random.default_rng(0).integers(0, 11, (1, 6))
    with minigrad.no_grad(), minigrad.use_backend("numba"):
        full = m(idx)[0].data
        m(idx[:, :5], cache=cache)
        last = m(idx[:, 5:], cache=cache)[0].data
    np.testing.assert_allclose(last[:, -1], full[:, -1], rtol=0, atol=1e-10)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("layout", ["positions", "rows"])
def test_a_float16_cache_decodes_on_its_kernel_as_the_twin_does(layout, monkeypatch):
    """``for_model(dtype=np.float16)`` keeps halves, a quarter of a float64 model's bytes. A
    decoding step reads them on the compiled kernel (it used to take the NumPy twin, ~35x slower
    at 1,024 positions: bench/README.md) and gives the twin's result on the same cache, up to the
    order of float64 additions; the logits stay within float16's rounding of the keys and values
    of the uncached forward's."""
    m = _model(0)
    idx = np.random.default_rng(0).integers(0, 11, (2, 9))
    last = {}
    for backend in ("numpy", "numba"):
        cache = DenseKVCache.for_model(m, batch_size=2, dtype=np.float16, layout=layout)
        assert cache.k.dtype == cache.v.dtype == np.float16
        assert cache.nbytes * 4 == DenseKVCache.for_model(m, batch_size=2).nbytes
        with monkeypatch.context() as patch, minigrad.no_grad(), minigrad.use_backend(backend):
            if backend == "numba":
                patch.setattr(pa, "dense_decode_numpy", _refuse_the_twin)
            m(idx[:, :6], cache=cache)
            last[backend] = np.concatenate([m(idx[:, t:t + 1], cache=cache)[0].data for t in range(6, 9)], axis=1)
    np.testing.assert_allclose(last["numba"], last["numpy"], rtol=0, atol=1e-12)
    with minigrad.no_grad():
        full = m(idx)[0].data[:, 6:]
    assert 0 < np.abs(last["numba"] - full).max() < 0.05


def test_a_float16_cache_refuses_keys_it_would_store_as_inf():
    """NumPy turns 1e5 into float16 inf with a warning only, and every later step's attention
    would be NaN: the cache raises instead, naming the layer, the magnitude and the fix, and
    keeps none of that forward's positions, so a caller that goes on reads only finite keys."""
    cache = DenseKVCache(2, 1, 4, max_len=8, dtype=np.float16)
    k = np.ones((1, 1, 3, 4))
    cache.begin(1, 3)
    for layer in (0, 1):
        cache.attend(layer, k, k, k)                             # in range: stored
    big = k.copy()
    big[0, 0, 1, 2] = -1e5
    cache.begin(1, 3)
    cache.attend(0, k, k, k)
    with pytest.raises(HalfOverflow, match=r"layer 1's keys or values reach \|x\| = 1e\+05, beyond float16's "
                                            r"largest finite 65,504, so this forward's positions were not kept; "
                                            r"use a cache of the model's dtype") as err:
        cache.attend(1, k, k, big)
    assert err.value.__suppress_context__ and isinstance(err.value, OverflowError)
    assert (err.value.layer, err.value.magnitude) == (1, 1e5)
    assert cache.n == 3
    cache.begin(1, 1)
    out = cache.attend(1, k[:, :, :1], k[:, :, :1], k[:, :, :1])
    assert np.isfinite(out).all() and np.isfinite(cache.k[1, :, :, :cache.n]).all()
    float32 = DenseKVCache(2, 1, 4, max_len=8)
    float32.begin(1, 3)
    float32.attend(1, k, k, big)                                 # only float16 has the limit


def test_a_model_takes_a_cache_of_its_dtype_or_a_dense_one_of_float16():
    """A float64 model decodes through a float16 dense cache; a cache of another dtype, or a
    float16 cache of another kind (a rolling window, Quest's pages: no float16 kernel reads
    them), is refused with the dimensions it has and needs."""
    m = _model(0)
    idx = np.random.default_rng(0).integers(0, 11, (1, 5))
    with minigrad.no_grad():
        m(idx, cache=DenseKVCache.for_model(m, dtype=np.float16))
        for cache in (DenseKVCache.for_model(m, dtype=np.float32),
                      StreamingLLMCache(2, 4, 4, window=8, n_sink=2, dtype=np.float16),
                      QuestCache.for_model(m, token_budget=8, page_size=4, dtype=np.float16)):
            dtype = cache.dtype.name
            with pytest.raises(ValueError, match=rf"dtype\) = \(2, 4, 4, dtype\('{dtype}'\)\), this model has "
                                                 r"\(2, 4, 4, dtype\('float64'\)\).*float16 instead of the model's dtype: "
                                                 r"DenseKVCache only, not its subclass QuestCache"):
                m(idx, cache=cache)


@pytest.mark.parametrize("attention", ["moba", "nsa"])
def test_for_model_stores_rows_for_attentions_that_gather_blocks_of_positions(attention):
    """MoBA and NSA read the cache's k and v views themselves, gathering blocks of positions:
    rows keep a position's numbers together (position-minor made NSA's step 1.8x slower)."""
    m = _model(0, attention=attention)
    cache = DenseKVCache.for_model(m)
    assert cache.layout == "rows" and cache.k.flags.c_contiguous and cache.v.flags.c_contiguous
    assert DenseKVCache.for_model(m, layout="positions").layout == "positions"     # asked for


@pytest.mark.parametrize("max_len, dtype, layout", [(1024, np.float32, "positions"), (1025, np.float32, "rows"),
                                                     (512, np.float64, "positions"), (513, np.float64, "rows"),
                                                     (2048, np.float16, "positions"), (2049, np.float16, "rows")])
def test_a_dense_cache_stores_positions_while_a_row_fits_a_page_else_rows(max_len, dtype, layout):
    """The default layout: position-minor rows read from DRAM are slow once they are long, so
    positions only while max_len · itemsize <= 4 KiB; either way k and v index the same."""
    cache = DenseKVCache(2, 2, 4, max_len=max_len, dtype=dtype)
    assert cache.layout == layout and cache.k.shape == cache.v.shape == (2, 1, 2, max_len, 4)
    assert cache.k.strides[-1] == (max_len * cache.k.itemsize if layout == "positions" else cache.k.itemsize)
    assert cache.nbytes == 2 * 2 * 2 * max_len * 4 * cache.k.itemsize


def test_a_dense_cache_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match="layout must be 'positions' or 'rows', got 'columns'"):
        DenseKVCache(1, 1, 4, max_len=8, layout="columns")


@pytest.mark.parametrize("layout", ["rows", "positions"])
def test_a_dense_decoding_step_copies_nothing_it_has_cached(layout):
    """The attention reads a view of the filled part: a step at n = 3000 cached positions allocates
    far less than one layer's cached keys (which a copy of the filled part would need)."""
    n, nh, hs = 3000, 2, 32
    cache = DenseKVCache(1, nh, hs, max_len=n + 1, dtype=np.float64, layout=layout)
    rng = np.random.default_rng(0)
    cache.begin(1, n)
    cache.k[0, :, :, :n] = rng.normal(size=(1, nh, n, hs))
    cache.v[0, :, :, :n] = rng.normal(size=(1, nh, n, hs))
    q, k, v = (rng.normal(size=(1, nh, 1, hs)) for _ in range(3))
    filled = cache.k[0, :, :, :n].nbytes
    cache.begin(1, 1)
    tracemalloc.start()
    with minigrad.use_backend("numpy"):    # the twin: tracemalloc sees NumPy's allocations, not Numba's
        o = cache.attend(0, q, k, v)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < filled / 8, (peak, filled)
    np.testing.assert_allclose(o, _ref_attention(q, cache.k[0, :, :, :n + 1], cache.v[0, :, :, :n + 1], None),
                               atol=1e-12)


def test_generate_with_a_dense_cache_equals_recomputation_past_block_size():
    m = _model(3, block_size=8)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    a = m.generate(prompt, 20, temperature=0)
    b = m.generate(prompt, 20, temperature=0, use_cache=False)
    np.testing.assert_array_equal(a[:, :8], b[:, :8])       # the same context until the first refill
    c = DenseKVCache.for_model(m, batch_size=2)
    np.testing.assert_array_equal(m.generate(prompt, 20, temperature=0, cache=c), a)   # a given cache is reset


# ------------------------------------------------------------------ StreamingLLM
@given(n_sink=st.integers(0, 4), T=st.integers(1, 24), sizes=st.lists(st.integers(1, 9), max_size=4),
       seed=st.integers(0, 100))
@settings(max_examples=12)
def test_streaming_with_a_window_covering_the_context_equals_the_dense_cache(n_sink, T, sizes, seed):
    m = _model(seed, n_kv_head=2)
    idx = np.random.default_rng(seed).integers(0, 11, (2, T))
    chunks = _chunks(sizes, T)
    dense = _decode(m, DenseKVCache.for_model(m, batch_size=2), idx, chunks)
    stream = StreamingLLMCache.for_model(m, batch_size=2, n_sink=n_sink, window=24 - n_sink)
    np.testing.assert_allclose(_decode(m, stream, idx, chunks), dense, rtol=0, atol=1e-12)


@given(n_sink=st.integers(0, 4), window=st.integers(1, 8), sizes=st.lists(st.integers(1, 8), min_size=1,
       max_size=12))
@settings(max_examples=30)
def test_streaming_keeps_the_sinks_and_the_last_window_at_positions_within_the_cache(n_sink, window, sizes):
    cache = StreamingLLMCache(1, 1, 2, n_sink=n_sink, window=window)
    N = 0
    for T in sizes:
        T = min(T, cache.room())
        held = len(cache)
        pos = cache.begin(1, T)
        # as the reference: the new tokens follow what is kept after evicting for them
        kept = held if held + T <= cache.capacity else cache.capacity - T
        np.testing.assert_array_equal(pos, kept + np.arange(T))
        N += T
        expect = np.r_[0:min(n_sink, N), max(n_sink, N - window):N]
        np.testing.assert_array_equal(cache.kept_tokens(), expect)
        assert cache.slot_position.max() <= cache.capacity - 1


def test_streaming_attends_over_exactly_the_kept_tokens():
    """After evictions, each query sees the sinks, the kept window and the new tokens up to itself."""
    rng = np.random.default_rng(1)
    N, n_sink, window, hs = 24, 2, 5, 4
    q = rng.normal(size=(1, 2, N, hs))
    k, v = rng.normal(size=(1, 1, N, hs)), rng.normal(size=(1, 1, N, hs))
    cache = StreamingLLMCache(1, 1, hs, n_sink=n_sink, window=window, dtype=np.float64)
    t = 0
    for T in (4, 3, 1, 5, 2, 1, 1, 4, 2, 1):
        cache.begin(1, T)
        o = cache.attend(0, q[:, :, t:t + T], k[:, :, t:t + T], v[:, :, t:t + T])
        last = t + T                              # tokens 0 .. last-1 seen; the window is the last ones
        keep = np.zeros((T, last), bool)
        for i in range(T):
            keep[i, :min(n_sink, t + i + 1)] = True
            keep[i, max(n_sink, last - window):t + i + 1] = True
        np.testing.assert_allclose(o, _ref_attention(q[:, :, t:t + T], k[:, :, :last], v[:, :, :last], keep),
                                   atol=1e-12)
        t = last
    assert t == N


def test_streaming_generates_past_block_size_without_refills():
    m = _model(4, block_size=8)
    cache = StreamingLLMCache.for_model(m, n_sink=2, window=6)
    out = m.generate(np.array([[1, 2, 3]]), 30, temperature=0, cache=cache)
    assert out.shape == (1, 33) and cache.n_seen == 32 and len(cache) == 8
    np.testing.assert_array_equal(cache.kept_tokens(), np.r_[0:2, 26:32])
    # within the capacity, streaming and dense generation agree
    np.testing.assert_array_equal(out[:, :9], m.generate(np.array([[1, 2, 3]]), 6, temperature=0))


def test_streaming_with_stream_positions_keeps_each_tokens_index_until_block_size():
    m = _model(4, block_size=8)
    cache = StreamingLLMCache.for_model(m, n_sink=1, window=3, positions="stream")
    with minigrad.no_grad():
        for n in (2, 3, 1, 2):
            first = cache.n_seen
            m(np.ones((1, n), np.int64), cache=cache)
            np.testing.assert_array_equal(cache.slot_position[cache._slots], first + np.arange(n))
    assert cache.room() == 0 and cache.kept_tokens().tolist() == [0, 5, 6, 7]
    with minigrad.no_grad(), pytest.raises(ValueError, match="positions up to 8, beyond the model's block_size=8"):
        m(np.ones((1, 1), np.int64), cache=cache)
    # refused before any change: no token evicted, no slot relabelled (it evicted 5 and took 8's label)
    assert cache.n_seen == 8 and cache.kept_tokens().tolist() == [0, 5, 6, 7]
    out = m.generate(np.array([[1, 2, 3]]), 12, temperature=0, cache=cache)   # refilled at block_size
    assert out.shape == (1, 15)
    # while nothing is evicted it is the dense cache; after, attention over the kept tokens
    dense = m.generate(np.array([[1, 2, 3]]), 1, temperature=0)
    np.testing.assert_array_equal(out[:, :4], dense)


def test_stream_positions_stop_at_the_models_block_size_in_a_cache_built_longer():
    """A StreamingLLMCache built with max_position past the model's block_size handed out positions
    the model has no embedding for: the forward raised IndexError after the cache had moved on."""
    m = _model(4, block_size=8)
    dims = dict(n_layer=2, n_kv_head=4, head_dim=4, dtype=np.float64)
    cache = StreamingLLMCache(**dims, n_sink=1, window=3, positions="stream", max_position=1000)
    with minigrad.no_grad():
        m(np.ones((1, 8), np.int64)[:, :4], cache=cache)
        for _ in range(4):
            m(np.ones((1, 1), np.int64), cache=cache)
        with pytest.raises(ValueError, match="positions up to 8, beyond the model's block_size=8"):
            m(np.ones((1, 1), np.int64), cache=cache)
    assert cache.n_seen == 8                                # refused before any change
    longer = StreamingLLMCache(**dims, n_sink=1, window=3, positions="stream", max_position=1000)
    out = m.generate(np.array([[1, 2, 3]]), 12, temperature=0, cache=longer)     # refills at block_size
    same = m.generate(np.array([[1, 2, 3]]), 12, temperature=0,
                      cache=StreamingLLMCache.for_model(m, n_sink=1, window=3, positions="stream"))
    np.testing.assert_array_equal(out, same)


def test_streaming_bad_input_names_the_numbers():
    m = _model(0, block_size=8)
    with pytest.raises(ValueError, match=r"n_sink=4 \+ window=6 = 10 positions exceed the model's block_size=8"):
        StreamingLLMCache.for_model(m, n_sink=4, window=6)
    cache = StreamingLLMCache(1, 1, 2, n_sink=2, window=3)
    cache.begin(1, 5)
    with pytest.raises(ValueError, match="a forward of 4 tokens does not fit a window of 3"):
        cache.begin(1, 4)
    with pytest.raises(ValueError, match="positions='stream' needs max_position"):
        StreamingLLMCache(1, 1, 2, window=3, positions="stream")
    with pytest.raises(ValueError, match="positions='absolute'; choose 'cache'"):
        StreamingLLMCache(1, 1, 2, window=3, positions="absolute")


# ------------------------------------------------------------------ Quest
@given(d=st.integers(1, 8), page=st.integers(1, 6), P=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_quest_page_bound_is_an_upper_bound_of_every_score_in_the_page(d, page, P, seed):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(P, page, d)) * rng.uniform(0.1, 3, size=(P, 1, d))
    q = rng.normal(size=(3, d))
    bound = page_upper_bound(q, keys.min(axis=1), keys.max(axis=1))            # (3, P)
    scores = np.einsum("qd,pkd->qpk", q, keys)
    assert np.all(scores <= bound[..., None] + 1e-12)
    # and it is tight where one key holds every coordinate's extreme (a page of one key)
    one = page_upper_bound(q, keys[:, 0], keys[:, 0])
    np.testing.assert_allclose(one, q @ keys[:, 0].T, atol=1e-12)


@given(n_kv_head=st.sampled_from([None, 1]), T=st.integers(1, 24), seed=st.integers(0, 100))
@settings(max_examples=10)
def test_quest_with_pages_covering_the_cache_equals_the_dense_cache(n_kv_head, T, seed):
    m = _model(seed, n_kv_head=n_kv_head)
    idx = np.random.default_rng(seed).integers(0, 11, (2, T))
    chunks = _chunks([3], T)
    dense = _decode(m, DenseKVCache.for_model(m, batch_size=2), idx, chunks)
    quest = QuestCache.for_model(m, batch_size=2, token_budget=24, page_size=4, dense_layers=0)
    np.testing.assert_allclose(_decode(m, quest, idx, chunks), dense, rtol=0, atol=1e-12)


def test_quest_attends_to_the_pages_with_the_largest_bounds():
    """With a small budget each query head reads the top-K pages by bound, and the output is dense
    attention restricted to those pages' keys (the last page's empty slots masked)."""
    rng = np.random.default_rng(2)
    n, ps, hs, nkv, nh = 45, 4, 8, 2, 4
    cache = QuestCache(1, nkv, hs, max_len=64, token_budget=20, page_size=ps, dense_layers=0, dtype=np.float64)
    k, v = rng.normal(size=(1, nkv, n, hs)), rng.normal(size=(1, nkv, n, hs))
    cache.begin(1, n - 1)
    cache.attend(0, rng.normal(size=(1, nh, n - 1, hs)), k[:, :, :-1], v[:, :, :-1])   # prefill
    q = rng.normal(size=(1, nh, 1, hs))
    cache.begin(1, 1)
    o = cache.attend(0, q, k[:, :, -1:], v[:, :, -1:])
    top = cache.selected_pages(0, q)                                   # (1, nkv, g, K)
    K, P = 5, 12
    assert top.shape == (1, nkv, 2, K)
    g = nh // nkv
    for h in range(nh):
        pages = np.pad(k[0, h // g], ((0, P * ps - n), (0, 0)), constant_values=np.nan).reshape(P, ps, hs)
        bound = page_upper_bound(q[0, h, 0], np.nanmin(pages, axis=1), np.nanmax(pages, axis=1))
        assert set(top[0, h // g, h % g]) == set(np.argsort(-bound)[:K])
    allowed = np.zeros((1, nh, 1, n), bool)
    for h in range(nh):
        for p in top[0, h // g, h % g]:
            allowed[0, h, 0, p * ps:(p + 1) * ps] = True
    np.testing.assert_allclose(o, _ref_attention(q, k, v, allowed), atol=1e-12)
    assert not np.allclose(o, _ref_attention(q, k, v, None))            # the selection mattered


@pytest.mark.parametrize("ps, n0, fill", [(4, 18, 1e3), (3, 13, 1e3), (5, 17, 1e3), (4, 18, np.nan), (3, 13, np.inf)])
def test_quest_decoding_into_partly_filled_pages_keeps_exact_bounds_and_attends_to_the_top_pages(ps, n0, fill):
    """After a prefill that ends inside a page, every decoding step keeps each page's kmin/kmax equal
    to the min/max over all its filled keys (earlier keys of a partly filled page included), and
    attends exactly over the top-K pages by those bounds: the last page's unfilled slots (here
    holding 1e3, NaN or inf, as np.empty may) never reach the output (a zero probability times a
    NaN value there made whole outputs NaN until 2026-12-07)."""
    rng = np.random.default_rng(ps * 100 + n0)
    B, nkv, nh, hs, steps, K = 2, 2, 4, 4, 14, 3
    g = nh // nkv
    cache = QuestCache(1, nkv, hs, max_len=64, token_budget=K * ps, page_size=ps, dense_layers=0,
                       batch_size=B, dtype=np.float64)
    for buf in (cache.k, cache.v, cache.kmin, cache.kmax):
        buf[...] = fill                                 # what np.empty might hold in unused slots
    n_all = n0 + steps
    k, v = rng.normal(size=(B, nkv, n_all, hs)), rng.normal(size=(B, nkv, n_all, hs))
    cache.begin(B, n0)
    cache.attend(0, rng.normal(size=(B, nh, n0, hs)), k[:, :, :n0], v[:, :, :n0])      # prefill
    selection_mattered = False
    for t in range(n0, n_all):
        q = rng.normal(size=(B, nh, 1, hs)) * 3
        cache.begin(B, 1)
        o = cache.attend(0, q, k[:, :, t:t + 1], v[:, :, t:t + 1])
        n = t + 1
        P = -(-n // ps)
        assert P > K
        pages = np.pad(k[:, :, :n], ((0, 0), (0, 0), (0, P * ps - n), (0, 0)),
                       constant_values=np.nan).reshape(B, nkv, P, ps, hs)
        kmin, kmax = np.nanmin(pages, axis=3), np.nanmax(pages, axis=3)            # (B, nkv, P, hs)
        np.testing.assert_array_equal(cache.kmin[0, :, :, :P], kmin, err_msg=f"kmin after position {t}")
        np.testing.assert_array_equal(cache.kmax[0, :, :, :P], kmax, err_msg=f"kmax after position {t}")
        allowed = np.zeros((B, nh, 1, n), bool)
        for b in range(B):
            for h in range(nh):
                bound = page_upper_bound(q[b, h, 0], kmin[b, h // g], kmax[b, h // g])
                for p in np.argsort(-bound)[:K]:
                    allowed[b, h, 0, p * ps:(p + 1) * ps] = True
        np.testing.assert_allclose(o, _ref_attention(q, k[:, :, :n], v[:, :, :n], allowed), rtol=0, atol=1e-12,
                                   err_msg=f"decoding position {t}")
        selection_mattered |= not np.allclose(o, _ref_attention(q, k[:, :, :n], v[:, :, :n], None))
    assert selection_mattered


# ------------------------------------------------------------------ paged
def _dense_greedy(m, tokens, n_new):
    """Greedy continuation of ``tokens`` by the dense cache: the reference for paged decoding."""
    return m.generate(np.asarray(tokens)[None], n_new, temperature=0)[0, len(tokens):]


def _paged_greedy(m, cache, seqs, first_inputs, n_new):
    """Run each seq's first input (a prefill, rows one at a time), then n_new batched greedy steps."""
    nxt = {}
    with minigrad.no_grad():
        for s, toks in zip(seqs, first_inputs):
            nxt[s] = int(m(np.asarray(toks)[None], cache=cache.batch([s]))[0].data[0, -1].argmax())
        out = {s: [nxt[s]] for s in seqs}
        for _ in range(n_new - 1):
            logits = m(np.array([[out[s][-1]] for s in seqs]), cache=cache.batch(seqs))[0].data[:, -1]
            for s, row in zip(seqs, logits):
                out[s].append(int(row.argmax()))
    return out


def test_paged_decoding_equals_dense_decoding_with_shared_prefixes_and_copy_on_write():
    m = _model(5, block_size=40, n_kv_head=2)
    cache = PagedKVCache.for_model(m, num_blocks=40, block_size=4)
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, 11, 10)                 # 2 whole blocks and half of a third
    a = cache.add_sequence()
    with minigrad.no_grad():
        m(prefix[None], cache=cache.batch([a]))       # the shared prefix, computed once
    third = cache.tables[a][2]
    b = cache.fork(a)                                 # shares all 3 blocks, the third partly filled
    c = cache.fork(a, 8)                              # shares the 2 whole blocks
    d = cache.fork(a, 6)                              # shares a whole block and half of the second
    assert cache.refcount[cache.tables[a]].tolist() == [4, 4, 2]
    suffix = {a: rng.integers(0, 11, 3), b: rng.integers(0, 11, 5), c: rng.integers(0, 11, 4),
              d: rng.integers(0, 11, 2)}
    start = {a: 10, b: 10, c: 8, d: 6}
    e = cache.add_sequence()                          # and one sharing nothing
    suffix[e], start[e] = rng.integers(0, 11, 7), 0
    full = {s: np.concatenate([prefix[:start[s]], suffix[s]]) if s != e else suffix[e] for s in suffix}
    seqs = [a, b, c, d, e]
    out = _paged_greedy(m, cache, seqs, [full[s][start[s]:] for s in seqs], n_new=12)
    for s in seqs:
        np.testing.assert_array_equal(out[s], _dense_greedy(m, full[s], 12))
    # a (the first writer into the shared third block) copied it; b then owned the original
    assert cache.copies == 2                          # a's third block and d's second block
    assert cache.tables[b][2] == third and cache.tables[a][2] != third
    for s in seqs:
        cache.free(s)
    assert cache.refcount.sum() == 0 and sorted(cache.free_blocks) == list(range(40))


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@given(B=st.integers(1, 4), g=st.sampled_from([1, 2, 3]), bs=st.integers(1, 5), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([np.float64, np.float32]))
@settings(max_examples=15)
def test_the_paged_decoding_kernel_equals_its_numpy_twin(B, g, bs, seed, dtype):
    """Rows of different lengths whose tables share blocks (prefixes), padded tables."""
    rng = np.random.default_rng(seed)
    nkv, d, NB = 2, 8, 12
    k_pool, v_pool = (rng.normal(size=(nkv, NB, bs, d)).astype(dtype) for _ in range(2))
    tables = rng.integers(0, NB, (B, 5))
    tables[:, 0] = tables[0, 0]
    lengths = rng.integers(1, 5 * bs + 1, B)
    q = rng.normal(size=(B, nkv, g, d)).astype(dtype)
    with minigrad.use_backend("numba"):
        o = paged_decode(q, k_pool, v_pool, tables, lengths)
    np.testing.assert_allclose(o, paged_decode_numpy(q, k_pool, v_pool, tables, lengths),
                               rtol=0, atol=1e-12 if dtype == np.float64 else 2e-6)
    for b in range(B):               # and both are attention over the row's own positions
        keys = k_pool[:, tables[b]].reshape(nkv, -1, d)[:, :lengths[b]]
        values = v_pool[:, tables[b]].reshape(nkv, -1, d)[:, :lengths[b]]
        ref = _ref_attention(q[b].reshape(1, nkv * g, 1, d).astype(np.float64), keys[None].astype(np.float64),
                             values[None].astype(np.float64), None)
        np.testing.assert_allclose(o[b].reshape(-1, d), ref.reshape(-1, d), atol=1e-12 if dtype == np.float64 else 2e-6)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_the_dense_decoding_kernels_load_from_the_cache_in_a_second_process(tmp_path):
    """Both layouts' kernels, for a float32 and a float16 cache, are saved on the first run and
    loaded on the second. (They were once built inside a function that captured Numba functions,
    which pickle differently in every process: they were compiled anew at every start, 30 MB more
    peak RSS in generation.)"""
    from numba.core import config

    if config.DISABLE_JIT:
        pytest.skip("Numba is disabled: there is no compiled kernel to cache")
    code = ("import numpy as np, minigrad\n"
            "from models.paged_attention import dense_decode\n"
            "from minigrad.kernels import decode\n"
            "q, k = np.ones((1, 2, 1, 8), np.float32), np.ones((1, 2, 8, 100), np.float32)\n"
            "with minigrad.use_backend('numba'):\n"
            "    dense_decode(q, k.swapaxes(-1, -2), k.swapaxes(-1, -2), 80)\n"
            "    dense_decode(q, k.reshape(1, 2, 100, 8), k.reshape(1, 2, 100, 8), 80)\n"
            "    h = k.astype(np.float16)\n"
            "    dense_decode(q, h.swapaxes(-1, -2), h.swapaxes(-1, -2), 80)\n"
            "    dense_decode(q, h.reshape(1, 2, 100, 8), h.reshape(1, 2, 100, 8), 80)\n"
            "for s in (decode.positions.stats, decode.rows.stats):\n"
            "    print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.split())
    assert runs == [["0", "2", "0", "2"], ["2", "0", "2", "0"]]   # compiled and saved, then loaded


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@given(B=st.integers(1, 3), nkv=st.integers(1, 3), g=st.sampled_from([1, 2, 4]), n=st.integers(1, 150),
       seed=st.integers(0, 10_000), dtype=st.sampled_from([np.float64, np.float32]),
       layout=st.sampled_from(["positions", "rows"]), half=st.booleans())
@settings(max_examples=60)
def test_the_dense_decoding_kernels_equal_their_numpy_twin_and_attention(B, nkv, g, n, seed, dtype, layout, half):
    """One decoding step over the first n positions of a layer's buffer (longer than n: what lies
    past n must not be read), on the numba kernel and on the NumPy twin. n reaches past
    VECTOR_MAX_FROM (64), where the kernel's max takes its vectorised loop. k and v are stored in
    rows or position-minor, DenseKVCache's two layouts, each with its own kernel, in the queries'
    dtype or in float16 (which the kernels read as its bits and widen exactly: the reference
    attends over the same halves in float64)."""
    rng = np.random.default_rng(seed)
    d, max_len = 8, 160
    store = np.float16 if half else dtype
    if layout == "rows":
        k, v = (rng.normal(size=(B, nkv, max_len, d)).astype(store) for _ in range(2))
    else:
        k, v = (rng.normal(size=(B, nkv, d, max_len)).astype(store).swapaxes(-1, -2) for _ in range(2))
    k[:, :, n:], v[:, :, n:] = np.nan, np.nan
    q = rng.normal(size=(B, nkv, g, d)).astype(dtype)
    with minigrad.use_backend("numba"), mock.patch.object(pa, "dense_decode_numpy", _refuse_the_twin):
        o = dense_decode(q, k, v, n)
    assert o.dtype == dtype and o.shape == q.shape
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(o, dense_decode_numpy(q, k, v, n), rtol=0, atol=tol)
    ref = _ref_attention(q.reshape(B, nkv * g, 1, d).astype(np.float64),
                         np.repeat(k[:, :, :n], g, axis=1).astype(np.float64),
                         np.repeat(v[:, :, :n], g, axis=1).astype(np.float64), None)
    np.testing.assert_allclose(o.reshape(B, nkv * g, 1, d), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_paged_batched_decoding_equals_dense_on_both_backends(backend):
    if backend == "numba" and not numba_available():
        pytest.skip("numba is not installed")
    m = _model(6, block_size=32)
    cache = PagedKVCache.for_model(m, num_blocks=20, block_size=4)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 11, n) for n in (3, 9, 6)]
    seqs = [cache.add_sequence() for _ in prompts]
    with minigrad.use_backend(backend):
        out = _paged_greedy(m, cache, seqs, prompts, n_new=8)
    for s, p in zip(seqs, prompts):
        np.testing.assert_array_equal(out[s], _dense_greedy(m, p, 8))


def test_a_shared_block_is_copied_before_a_write_and_the_original_is_untouched():
    cache = PagedKVCache(1, 1, 2, num_blocks=4, block_size=4, dtype=np.float64)
    a = cache.add_sequence()
    batch = cache.batch([a])
    batch.begin(1, 3)
    kv = np.arange(6.0).reshape(1, 1, 3, 2)
    batch.attend(0, kv, kv, kv)
    before = cache.k[0, 0, cache.tables[a][0]].copy()
    b = cache.fork(a)
    assert cache.refcount[cache.tables[a][0]] == 2 and cache.copies == 0
    batch = cache.batch([b])
    batch.begin(1, 1)
    batch.attend(0, -np.ones((1, 1, 1, 2)), -np.ones((1, 1, 1, 2)), -np.ones((1, 1, 1, 2)))
    assert cache.copies == 1 and cache.tables[a][0] != cache.tables[b][0]
    np.testing.assert_array_equal(cache.k[0, 0, cache.tables[a][0]], before)       # a's block untouched
    np.testing.assert_array_equal(cache.k[0, 0, cache.tables[b][0], :3], before[:3])   # copied, then
    np.testing.assert_array_equal(cache.k[0, 0, cache.tables[b][0], 3], [-1, -1])     # written
    assert cache.refcount[cache.tables[a][0]] == 1 and cache.refcount[cache.tables[b][0]] == 1
    cache.free(a)
    cache.free(b)
    assert cache.refcount.sum() == 0 and sorted(cache.free_blocks) == [0, 1, 2, 3]


def test_paged_waste_is_less_than_a_block_per_sequence():
    cache = PagedKVCache(1, 1, 2, num_blocks=64, block_size=8)
    for n in (1, 7, 8, 9, 30):
        s = cache.add_sequence()
        cache.batch([s]).begin(1, n)
        assert len(cache.tables[s]) * 8 - n < 8


def test_paged_out_of_blocks_is_one_clear_error_and_changes_nothing():
    cache = PagedKVCache(1, 1, 2, num_blocks=3, block_size=4)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.batch([a]).begin(1, 9)                     # 3 blocks
    with pytest.raises(RuntimeError, match=r"out of blocks: 1 sequence\(s\) need 1 more blocks of 4 positions "
                                           r"for 2 new token\(s\) each, 0 of 3 are free"):
        cache.batch([b]).begin(1, 2)
    assert cache.lengths[b] == 0 and cache.tables[b] == [] and len(cache.free_blocks) == 0
    with pytest.raises(ValueError, match=r"n_tokens=10 must be in \[0, 9\]"):
        cache.fork(a, 10)
    with pytest.raises(KeyError, match="no sequence 7"):
        cache.batch([7])
    with pytest.raises(ValueError, match="distinct sequence ids"):
        cache.batch([a, a])


# ------------------------------------------------------------------ the model and its caches
def test_each_cache_reports_its_memory():
    m = _model(0, block_size=32, n_kv_head=2)
    item = 8 * 2 * 2 * 2 * 4                          # float64 · K and V · layers · kv heads · head_dim
    caches = dict(dense=DenseKVCache.for_model(m), streaming=StreamingLLMCache.for_model(m, n_sink=4, window=12),
                  quest=QuestCache.for_model(m, token_budget=8, page_size=8),
                  paged=PagedKVCache.for_model(m, num_blocks=5, block_size=8))
    assert caches["dense"].nbytes == 32 * item
    assert caches["streaming"].nbytes == 16 * item
    assert caches["quest"].nbytes == 32 * item + 4 * item            # + min and max per page of 8
    assert caches["paged"].nbytes == 40 * item
    seq = caches["paged"].add_sequence()
    with minigrad.no_grad():
        for name, c in caches.items():
            for _ in range(2):
                m(np.zeros((1, 10), np.int64), cache=c.batch([seq]) if name == "paged" else c)
    assert caches["dense"].used_bytes == 20 * item
    assert caches["streaming"].used_bytes == 16 * item
    assert caches["quest"].used_bytes == 20 * item + 3 * item        # 3 pages begun
    assert caches["paged"].used_bytes == 24 * item                   # 3 blocks of 8
    lin = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=16, block_size=32, vocab_size=11, attention="linear",
                        n_kv_head=2), dtype=np.float64)
    assert isinstance(cache_for(lin), LinearAttentionCache)
    assert cache_for(lin).nbytes == 8 * 2 * 2 * 4 * 5    # layers · kv heads · D(D + 1)


def test_the_model_refuses_a_cache_that_does_not_fit_it():
    m = _model(0)
    with minigrad.no_grad():
        with pytest.raises(ValueError, match="this model has"):
            m(np.zeros((1, 2), np.int64), cache=DenseKVCache(2, 4, 4, max_len=8, dtype=np.float32))
        with pytest.raises(ValueError, match="serves attention mha; this model's is 'moba'"):
            moba = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=16, block_size=24, vocab_size=11,
                                 attention="moba", moba_block=4), dtype=np.float64)
            moba(np.zeros((1, 2), np.int64), cache=StreamingLLMCache.for_model(moba, window=8))
    with pytest.raises(TypeError, match="serve paged sequences with models.serving"):
        m.generate(np.zeros((1, 2), np.int64), 2, cache=PagedKVCache.for_model(m, num_blocks=4))


@pytest.mark.parametrize("make", ["dense rows", "dense positions", "Quest", "paged"])
def test_float16_queries_decode_on_the_numba_backend_through_the_twin(make):
    """Numba cannot type float16: a step whose queries are float16 too (the kernels compute in the
    queries' dtype) takes the NumPy twin instead of failing with NotImplementedError, and gives
    what the numpy backend gives."""
    rng = np.random.default_rng(0)
    prompt = [rng.normal(size=(1, 2, 10, 4)).astype(np.float16) for _ in range(3)]
    step = [rng.normal(size=(1, 2, 1, 4)).astype(np.float16) for _ in range(3)]
    outs = []
    for backend in ("numba", "numpy"):
        if make == "paged":
            pool = PagedKVCache(1, 2, 4, num_blocks=4, block_size=4, dtype=np.float16)
            cache = pool.batch([pool.add_sequence()])
        elif make == "Quest":
            cache = QuestCache(1, 2, 4, max_len=16, token_budget=8, page_size=4, dense_layers=0, dtype=np.float16)
        else:
            cache = DenseKVCache(1, 2, 4, max_len=16, dtype=np.float16, layout=make.split()[1])
        with minigrad.use_backend(backend):
            cache.begin(1, 10)
            cache.attend(0, *prompt)
            cache.begin(1, 1)
            outs.append(cache.attend(0, *step))
    assert outs[0].dtype == np.float16
    np.testing.assert_array_equal(outs[0], outs[1])
