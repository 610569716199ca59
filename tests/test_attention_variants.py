"""Attention variants (models/attention.py) and the GPT built on them: grouped-query attention
against multi-head and multi-query attention, linear attention's two forms, MoBA and NSA
against full causal attention where they reduce to it, their selection rules and causality,
gradchecks, cached decoding, training through the Trainer and config errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
import minigrad.functional as F
import optim
from models.attention import (BlockCompressor, elu_feature_map, grouped_query_attention,
                              linear_attention, linear_attention_recurrent, moba_attention,
                              moba_mask, nsa_attention, nsa_select)
from models.gpt import GPT, GPTConfig
from models.kv_cache import cache_for
from models.training import Trainer, lm_loss
from strategies import as_noncontiguous

VARIANTS = dict(mha={}, linear={}, moba=dict(moba_block=3, moba_topk=2),
                nsa=dict(nsa_cmp_block=4, nsa_cmp_stride=2, nsa_slc_block=3, nsa_slc_topn=3, nsa_window=4))
MICRO = dict(n_layer=2, n_head=4, n_embd=16, block_size=12, vocab_size=11)


def _qkv(rng, B, H, Hkv, Tq, Tk, D):
    """Float64 q (B, H, Tq, D), k and v (B, Hkv, Tk, D)."""
    return (rng.standard_normal((B, H, Tq, D)), rng.standard_normal((B, Hkv, Tk, D)),
            rng.standard_normal((B, Hkv, Tk, D)))


def _full(q, k, v):
    """Full causal softmax attention with the query heads of a group reading one key/value head,
    one head at a time: the reference every reduction is held to."""
    G = q.shape[1] // k.shape[1]
    heads = [F.scaled_dot_product_attention(q[:, h], k[:, h // G], v[:, h // G], causal=True).data
             for h in range(q.shape[1])]
    return np.stack(heads, axis=1)


sizes = st.tuples(st.integers(1, 2), st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2)]),
                  st.integers(1, 9), st.integers(1, 3), st.integers(0, 2**32 - 1))


# ---------------------------------------------------------------- grouped-query attention
@given(sizes)
def test_gqa_with_as_many_kv_heads_as_query_heads_is_multi_head_attention(s):
    B, (H, _), T, D, seed = s
    q, k, v = _qkv(np.random.default_rng(seed), B, H, H, T, T, D)
    ref = F.scaled_dot_product_attention(q, k, v, causal=True).data
    np.testing.assert_allclose(grouped_query_attention(mg.tensor(q), mg.tensor(k), mg.tensor(v)).data,
                               ref, rtol=0, atol=1e-12)


@given(sizes)
def test_gqa_with_one_kv_head_is_multi_query_attention(s):
    B, (H, _), T, D, seed = s
    q, k, v = _qkv(np.random.default_rng(seed), B, H, 1, T, T, D)
    mqa = np.stack([F.scaled_dot_product_attention(q[:, h], k[:, 0], v[:, 0], causal=True).data
                    for h in range(H)], axis=1)   # every head reads the one key/value head
    np.testing.assert_allclose(grouped_query_attention(mg.tensor(q), mg.tensor(k), mg.tensor(v)).data,
                               mqa, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_gpt_equals_the_mha_gpt_whose_kv_heads_are_repeated(n_kv_head):
    """Same weights mapped: the MHA model's key/value rows of head h are the GQA model's rows of
    key/value head h // G; everything else is copied as is."""
    gqa = GPT(GPTConfig(**MICRO, n_kv_head=n_kv_head), dtype=np.float64, seed=3)
    mha = GPT(GPTConfig(**MICRO), dtype=np.float64, seed=4)
    C, H = MICRO["n_embd"], MICRO["n_head"]
    hs, G = C // H, H // n_kv_head
    kv = n_kv_head * hs
    params = dict(gqa.named_parameters())
    for name, p in mha.named_parameters():
        src = params[name].data
        if name.endswith("c_attn.weight") or name.endswith("c_attn.bias"):
            assert src.shape[0] == C + 2 * kv
            heads = [h // G for h in range(H)]
            rows = np.concatenate([np.arange(C)] + [C + off + np.arange(j * hs, (j + 1) * hs)
                                                    for off in (0, kv) for j in heads])
            src = src[rows]
        p.data[...] = src
    idx = np.random.default_rng(0).integers(0, MICRO["vocab_size"], (2, MICRO["block_size"]))
    np.testing.assert_allclose(gqa(idx)[0].data, mha(idx)[0].data, rtol=0, atol=1e-12)


def test_gqa_state_dict_shapes_splits_and_a_smaller_cache():
    m = GPT(GPTConfig(**MICRO, n_kv_head=2))
    C, hs = 16, 4
    sd = m.state_dict()
    assert sd["h.0.attn.c_attn.weight"].shape == (C + 2 * 2 * hs, C)
    assert sd["h.0.attn.c_attn.bias"].shape == (C + 2 * 2 * hs,)
    assert m.param_splits()["h.1.attn.c_attn.weight"] == (
        ("q", "attn_q", (0, 16)), ("k", "attn_k", (16, 24)), ("v", "attn_v", (24, 32)))
    views = optim.split_matrices({n: p.data for n, p in m.named_parameters()}, m.param_splits())
    assert views["h.0.attn.c_attn.weight:k"].shape == (8, 16)
    cache = cache_for(m)
    with mg.no_grad():
        m(np.zeros((1, 3), np.int64), cache=cache)
    assert cache.k[0].shape == (1, 2, MICRO["block_size"], hs)   # n_kv_head heads, not n_head


def test_the_default_config_is_the_gpt2_layout_and_old_configs_load():
    old = dict(n_layer=1, n_head=2, n_embd=8, block_size=6, vocab_size=7, dropout=0.0, bias=True,
               checkpoint=False)   # a config saved before the variants existed
    cfg = GPTConfig.from_dict(old)
    assert (cfg.attention, cfg.n_kv_head, cfg.kv_heads) == ("mha", None, 2)
    m = GPT(cfg)
    assert m.state_dict()["h.0.attn.c_attn.weight"].shape == (24, 8)
    assert not any("nsa" in n for n in m.state_dict())
    same = GPT(GPTConfig(**old, n_kv_head=2))
    idx = np.array([[1, 2, 3, 4]])
    assert np.array_equal(m(idx)[0].data, same(idx)[0].data)


# ---------------------------------------------------------------- linear attention
def test_elu_feature_map_is_elu_plus_one_with_finite_gradients_for_large_inputs():
    x = np.array([-30.0, -1.0, -0.25, 0.5, 3.0, 800.0])
    t = mg.tensor(x, requires_grad=True)
    y = elu_feature_map(t)
    exp = np.exp(np.minimum(x, 0.0))   # elu(x) + 1 for x <= 0, without overflow elsewhere
    np.testing.assert_allclose(y.data, np.where(x > 0, x + 1, exp), rtol=1e-15)
    y.sum().backward()
    np.testing.assert_allclose(t.grad, np.where(x > 0, 1.0, exp), rtol=1e-15)


@given(sizes, st.integers(0, 8))
def test_linear_attention_recurrent_equals_parallel(s, split):
    """The recurrent form (a state carried over two calls) equals the parallel masked form."""
    B, (H, Hkv), T, D, seed = s
    q, k, v = _qkv(np.random.default_rng(seed), B, H, Hkv, T, T, D)
    parallel = linear_attention(mg.tensor(q), mg.tensor(k), mg.tensor(v)).data
    cut = min(split, T - 1)
    parts = []
    state = None
    for a, b in ((0, cut), (cut, T)):
        if b > a:
            o, state = linear_attention_recurrent(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], state)
            parts.append(o)
    np.testing.assert_allclose(np.concatenate(parts, axis=2), parallel, rtol=0, atol=1e-10)
    assert state[0].shape == (B, Hkv, D, D) and state[1].shape == (B, Hkv, D)


def test_linear_attention_is_the_normalised_kernel_sum():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, 2, 1, 5, 5, 3)
    phi = lambda x: np.where(x > 0, x + 1, np.exp(x))  # noqa: E731
    out = linear_attention(mg.tensor(q), mg.tensor(k), mg.tensor(v)).data
    for h in range(2):
        for i in range(5):
            w = phi(k[0, 0, :i + 1]) @ phi(q[0, h, i])
            np.testing.assert_allclose(out[0, h, i], w @ v[0, 0, :i + 1] / (w.sum() + 1e-6), rtol=1e-12)


# ---------------------------------------------------------------- MoBA
@given(sizes, st.integers(1, 4))
def test_moba_with_topk_covering_all_blocks_is_full_causal_attention(s, block):
    B, (H, Hkv), T, D, seed = s
    q, k, v = _qkv(np.random.default_rng(seed), B, H, Hkv, T, T, D)
    n_blocks = -(-T // block)
    out = moba_attention(mg.tensor(q), mg.tensor(k), mg.tensor(v), block=block, topk=n_blocks)
    np.testing.assert_allclose(out.data, _full(q, k, v), rtol=0, atol=1e-12)


@given(sizes, st.integers(1, 4), st.integers(1, 3))
def test_moba_selects_its_own_block_never_a_later_one_and_the_best_gates(s, block, topk):
    B, (H, Hkv), T, D, seed = s
    q, k, _ = _qkv(np.random.default_rng(seed), B, H, Hkv, T, T, D)
    mask = moba_mask(q, k, block, topk)                              # (B, Hkv, G, T, T)
    blocks = mask[..., ::block]                                      # one column per block
    n_blocks = blocks.shape[-1]
    means = np.stack([k[:, :, b * block:(b + 1) * block].mean(axis=2) for b in range(n_blocks)], axis=2)
    gate = np.einsum("bkgtd,bknd->bkgtn", q.reshape(B, Hkv, H // Hkv, T, D), means)
    for t in range(T):
        own = t // block
        row, g = blocks[..., t, :], gate[..., t, :]
        assert row[..., own].all() and not row[..., own + 1:].any()
        assert (row.sum(-1) == min(topk, own + 1)).all()
        past = g[..., :own]
        chosen = np.where(row[..., :own], past, np.inf).min(-1, initial=np.inf)
        passed = np.where(row[..., :own], -np.inf, past).max(-1, initial=-np.inf)
        assert (chosen >= passed).all()


# ---------------------------------------------------------------- NSA
NSA_SIZES = dict(cmp_block=4, cmp_stride=2, slc_block=3, slc_topn=3, window=4)


def _compressors(D, seed):
    rng = np.random.default_rng(seed)
    return [BlockCompressor(NSA_SIZES["cmp_block"], D, dtype=np.float64, rng=rng) for _ in range(2)]


def _nsa(q, k, v, gates, ck, cv, **sizes):
    return nsa_attention(mg.tensor(q), mg.tensor(k), mg.tensor(v), mg.tensor(gates), ck, cv,
                         **{**NSA_SIZES, **sizes}).data


def _gates(B, H, T, g):
    return np.broadcast_to(np.array(g, float), (B, H, T, 3)).copy()


@given(sizes)
def test_nsa_reduced_to_a_window_covering_the_context_is_full_causal_attention(s):
    """Gates (g_cmp, g_slc, g_win) = (0, 0, 1) and w >= T; and (0, 1, 0) with n >= the number of
    selection blocks: either way every query attends to all of its past."""
    B, (H, Hkv), T, D, seed = s
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, B, H, Hkv, T, T, D)
    ck, cv = _compressors(D, seed)
    full = _full(q, k, v)
    np.testing.assert_allclose(_nsa(q, k, v, _gates(B, H, T, (0, 0, 1)), ck, cv, window=T), full,
                               rtol=0, atol=1e-12)
    n_blocks = -(-T // NSA_SIZES["slc_block"])
    np.testing.assert_allclose(_nsa(q, k, v, _gates(B, H, T, (0, 1, 0)), ck, cv, slc_topn=max(3, n_blocks)),
                               full, rtol=0, atol=1e-12)


def test_nsa_window_branch_is_banded_causal_attention():
    rng = np.random.default_rng(5)
    B, H, T, D, w = 1, 2, 9, 3, 3
    q, k, v = _qkv(rng, B, H, H, T, T, D)
    out = _nsa(q, k, v, _gates(B, H, T, (0, 0, 1)), *_compressors(D, 0), window=w)
    i, j = np.arange(T)[:, None], np.arange(T)
    band = (j <= i) & (j > i - w)
    np.testing.assert_allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=band).data, atol=1e-12)


@given(st.integers(1, 20), st.integers(1, 4), st.integers(3, 6), st.integers(0, 2**32 - 1))
def test_nsa_select_forces_initial_and_local_blocks_and_ranks_the_rest(T, slc_block, topn, seed):
    n_blocks = -(-T // slc_block)
    scores = np.random.default_rng(seed).random((2, T, n_blocks))
    pos = np.arange(T)
    chosen = nsa_select(scores, pos, slc_block, topn)
    for t in range(T):
        own = t // slc_block
        row = chosen[:, t]
        assert row[:, [0, own, max(own - 1, 0)]].all() and not row[:, own + 1:].any()
        assert (row.sum(-1) == min(topn, own + 1)).all()
        free = np.arange(n_blocks) < max(own - 1, 1)    # blocks chosen by score, not forced
        free[0] = False
        for b in range(2):
            picked, left = scores[b, t][free & row[b]], scores[b, t][free & ~row[b]]
            assert picked.size == 0 or left.size == 0 or picked.min() >= left.max()


@pytest.mark.parametrize("variant", ["linear", "moba", "nsa", "gqa"])
def test_no_future_leakage_and_queries_at_the_end_equal_the_last_rows(variant):
    """Changing the keys/values after position t leaves outputs <= t unchanged; Tq < Tk queries
    (a decoding step) give the last Tq rows of the full computation."""
    rng = np.random.default_rng(7)
    B, H, Hkv, T, D = 2, 4, 2, 11, 3
    q, k, v = _qkv(rng, B, H, Hkv, T, T, D)
    gates = rng.random((B, H, T, 3))
    ck, cv = _compressors(D, 1)

    def run(q, k, v, gates):
        q, k, v = mg.tensor(q), mg.tensor(k), mg.tensor(v)
        if variant == "linear":
            return linear_attention(q, k, v).data
        if variant == "moba":
            return moba_attention(q, k, v, block=3, topk=2).data
        if variant == "gqa":
            return grouped_query_attention(q, k, v).data
        return nsa_attention(q, k, v, mg.tensor(gates), ck, cv, **NSA_SIZES).data

    out = run(q, k, v, gates)
    for t in (0, 4, 8):
        k2, v2 = k.copy(), v.copy()
        k2[:, :, t + 1:] += rng.standard_normal(k2[:, :, t + 1:].shape)
        v2[:, :, t + 1:] += 1.0
        np.testing.assert_allclose(run(q, k2, v2, gates)[:, :, :t + 1], out[:, :, :t + 1], rtol=0, atol=1e-12)
    for n in (1, 4):
        np.testing.assert_allclose(run(q[:, :, -n:], k, v, gates[:, :, -n:]), out[:, :, -n:],
                                   rtol=0, atol=1e-12)


# ---------------------------------------------------------------- gradchecks
@st.composite
def grad_case(draw, min_tk=1, max_tk=7):
    """Float64 q (B, H, Tq, D), k, v (B, Hkv, Tk, D) and a rng: B in 1..2, grouped, multi-query
    and multi-head layouts, Tq in 1..Tk (Tq < Tk: a chunk of queries after cached keys), D in
    1..3, and the arrays maybe non-contiguous (a drawn axis order and a step-2 slice)."""
    B = draw(st.integers(1, 2))
    H, Hkv = draw(st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (3, 1)]))
    Tk = draw(st.integers(min_tk, max_tk))
    Tq, D = draw(st.integers(1, Tk)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = _qkv(rng, B, H, Hkv, Tq, Tk, D)
    if draw(st.booleans()):
        arrays = tuple(draw(as_noncontiguous(a)) for a in arrays)
    return arrays, rng


def _leaves(*arrays):
    return [mg.Tensor(a, requires_grad=True) for a in arrays]


@given(grad_case(min_tk=2), st.integers(1, 3), st.integers(1, 3))  # (over one key q, k get no gradient)
@settings(max_examples=12)
def test_gradcheck_gqa_linear_and_moba(case, block, topk):
    arrays, _ = case
    Tq, Tk = arrays[0].shape[2], arrays[1].shape[2]
    q, k, v = _leaves(*arrays)
    assert mg.gradcheck(grouped_query_attention, [q, k, v])
    assert mg.gradcheck(linear_attention, [q, k, v])
    assert mg.gradcheck(lambda q, k, v: moba_attention(q, k, v, block=block, topk=topk), [q, k, v])
    # the chunk's rows are the last Tq rows of the full forward over all Tk queries (the cache case)
    if Tq < Tk:
        full_q = np.concatenate([np.random.default_rng(0).standard_normal(q.shape[:2] + (Tk - Tq, q.shape[3])),
                                 q.data], axis=2)
        for fn in (grouped_query_attention, linear_attention):
            np.testing.assert_allclose(fn(q, k, v).data, fn(mg.tensor(full_q), k, v).data[:, :, -Tq:],
                                       rtol=1e-12, atol=1e-12)


@given(grad_case(min_tk=6, max_tk=9))   # two compressed blocks at least: over one, the key compressor gets none
@settings(max_examples=8)
def test_gradcheck_nsa_through_all_branches_gates_and_compressors(case):
    (q, k, v), rng = case
    B, H, Tq, D = q.shape
    q, k, v, gates = _leaves(q, k, v, rng.random((B, H, Tq, 3)))
    ck, cv = _compressors(D, int(rng.integers(2**16)))
    for p in (*ck.parameters(), *cv.parameters()):
        p.data[...] = rng.standard_normal(p.shape)
    weights = [*ck.parameters(), *cv.parameters()]
    fn = lambda q, k, v, g, *_: nsa_attention(q, k, v, g, ck, cv, **NSA_SIZES)  # noqa: E731
    assert mg.gradcheck(fn, [q, k, v, gates, *weights])


def test_every_compressor_weight_reaches_nsa_output_but_the_key_compressors_output_bias():
    """The key compressor's output bias b adds q·b to all compressed scores of a query, which
    its softmax (and so the selection scores) ignores, as it ignores the key rows of GPT-2's
    c_attn bias: moving b leaves the output as it was, and its gradient is zero up to rounding.
    Every other weight's gradient is of the size of the largest. (Weights of std 0.5 keep the
    GELUs and softmaxes off saturation, where a real gradient can be tiny too.)"""
    rng = np.random.default_rng(0)
    T = 16                                      # 7 compressed blocks, 6 selection blocks
    q, k, v, gates = _leaves(*_qkv(rng, 2, 4, 2, T, T, 3), rng.random((2, 4, T, 3)))
    ck, cv = _compressors(3, 0)
    for p in (*ck.parameters(), *cv.parameters()):
        p.data[...] = 0.5 * rng.standard_normal(p.shape)
    out = nsa_attention(q, k, v, gates, ck, cv, **NSA_SIZES)
    (out * mg.tensor(rng.standard_normal(out.shape))).sum().backward()
    grads = {f"{which}.{n}": p.grad for which, c in (("compress_k", ck), ("compress_v", cv))
             for n, p in c.named_parameters()}
    largest = max(np.abs(g).max() for g in grads.values())
    assert np.abs(grads.pop("compress_k.proj.bias")).max() <= 1e-13 * largest
    for name, g in grads.items():
        assert np.abs(g).max() > 1e-3 * largest, name
    with mg.no_grad():
        ck.proj.bias.data += 5.0
        np.testing.assert_allclose(nsa_attention(q, k, v, gates, ck, cv, **NSA_SIZES).data, out.data,
                                   rtol=0, atol=1e-12)
        cv.proj.bias.data += 5.0                # the value compressor's is no such shift
        assert np.abs(nsa_attention(q, k, v, gates, ck, cv, **NSA_SIZES).data - out.data).max() > 1e-2


# ---------------------------------------------------------------- the GPT with each variant
def _variant(name, n_kv_head=None, **kw):
    return GPTConfig(**{**MICRO, **VARIANTS[name], **kw}, attention=name, n_kv_head=n_kv_head)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("n_kv_head", [None, 1])
def test_cached_decoding_equals_the_full_forward(name, n_kv_head):
    m = GPT(_variant(name, n_kv_head), dtype=np.float64, seed=2)
    m.eval()
    idx = np.random.default_rng(3).integers(0, MICRO["vocab_size"], (2, MICRO["block_size"]))
    cache = cache_for(m, batch_size=2)
    with mg.no_grad():
        full = m(idx)[0].data
        out = [m(idx[:, :4], cache=cache)[0].data]
        for t in range(4, idx.shape[1]):
            out.append(m(idx[:, t:t + 1], cache=cache)[0].data)
    np.testing.assert_allclose(np.concatenate(out, axis=1), full, rtol=0, atol=1e-10)
    if name == "linear":   # a recurrent state, not keys and values: its size does not grow
        assert not hasattr(cache, "k") and cache.state[0][0].shape == (2, m.h[0].attn.n_kv_head, 4, 4)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_generation_with_cache_equals_without(name):
    m = GPT(_variant(name, 2), dtype=np.float64, seed=5)
    prng = np.random.default_rng(9)
    for _, p in m.named_parameters():       # sharpen the logits so argmax is well separated
        p.data[...] += prng.normal(0, 0.3, p.shape)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    cached = m.generate(prompt, 8, temperature=0)
    assert np.array_equal(cached, m.generate(prompt, 8, temperature=0, use_cache=False))


def test_nsa_gpt_with_saturated_gates_and_a_full_window_is_the_mha_gpt():
    """The checkable reduction at the model level: gate weights 0 and biases -40 (cmp, slc) and
    +40 (win) make the gates (0, 0, 1) to 1e-17, and w >= block_size covers the context."""
    nsa = GPT(_variant("nsa", nsa_window=MICRO["block_size"]), dtype=np.float64, seed=6)
    mha = GPT(GPTConfig(**MICRO), dtype=np.float64, seed=7)
    params = dict(nsa.named_parameters())
    for name, p in mha.named_parameters():
        p.data[...] = params[name].data
    H = MICRO["n_head"]
    for block in nsa.h:
        block.attn.nsa.gate.weight.data[...] = 0
        block.attn.nsa.gate.bias.data[...] = np.repeat([-40.0, -40.0, 40.0], H)
    idx = np.random.default_rng(1).integers(0, MICRO["vocab_size"], (2, MICRO["block_size"]))
    np.testing.assert_allclose(nsa(idx)[0].data, mha(idx)[0].data, rtol=0, atol=1e-12)
    assert {n for n in params if ".nsa." in n} == {
        f"h.{i}.attn.nsa.{p}" for i in range(2) for p in (
            "gate.weight", "gate.bias", *(f"compress_{kv}.{w}" for kv in "kv" for w in (
                "pos", "fc.weight", "fc.bias", "proj.weight", "proj.bias")))}


IDS = np.cumsum(np.random.default_rng(0).choice([1, 1, 1, 2], size=3000)) % MICRO["vocab_size"]


def _batches(rng, B=8, T=MICRO["block_size"]):
    starts = rng.integers(0, len(IDS) - T - 1, size=B)
    return (np.stack([IDS[s:s + T] for s in starts]), np.stack([IDS[s + 1:s + T + 1] for s in starts]))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_trains_through_the_trainer(name):
    m = GPT(_variant(name, 2, n_layer=1), seed=0)
    params = {n: p.data for n, p in m.named_parameters()}
    opt = optim.create("adamw", optim.param_groups_no_decay(params, 0.1), lr=1e-2)
    val = [_batches(np.random.default_rng(100))]
    trainer = Trainer(m, lm_loss, opt, _batches, steps=30, eval_batches=val, eval_every=30,
                      progress=False, log_every=0, seed=1)
    trainer.fit()
    first, last = trainer.history["val_loss"][0], trainer.history["val_loss"][-1]
    assert last < first - 0.5, (first, last)


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize("kw, says", [
    (dict(n_kv_head=3), "n_head=4 must be divisible by n_kv_head=3"),
    (dict(n_kv_head=0), r"n_kv_head=0 must be a positive integer"),
    (dict(attention="flash"), "attention='flash'; choose one of mha, linear, moba, nsa"),
    (dict(attention="moba", moba_block=12), "moba_block=12 must be smaller than block_size=12"),
    (dict(attention="moba", moba_topk=0), "moba_topk=0 must be a positive integer"),
    (dict(attention="nsa", nsa_cmp_block=4, nsa_cmp_stride=5), "nsa_cmp_stride=5 exceeds nsa_cmp_block=4"),
    (dict(attention="nsa", nsa_slc_topn=2), "nsa_slc_topn=2 must be >= 3"),
    (dict(attention="nsa", nsa_slc_block=13), "nsa_slc_block=13 must not exceed block_size=12"),
])
def test_bad_configs_name_the_numbers(kw, says):
    with pytest.raises(ValueError, match=says):
        GPTConfig(**{**MICRO, **kw})


def test_bad_attention_inputs_are_refused():
    rng = np.random.default_rng(0)
    q, k, v = (mg.tensor(a) for a in _qkv(rng, 1, 3, 2, 4, 4, 2))
    with pytest.raises(ValueError, match="q has 3 heads and k, v have 2"):
        grouped_query_attention(q, k, v)
    q, k, v = (mg.tensor(a) for a in _qkv(rng, 1, 2, 2, 5, 4, 2))
    with pytest.raises(ValueError, match="5 queries and 4 keys"):
        linear_attention(q, k, v)
