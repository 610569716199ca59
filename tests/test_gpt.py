"""GPT model: shapes, tying, init, float64 gradcheck, KV-cache decoding == full forward, generate."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minigrad
from models.gpt import GPT, GPTConfig, PRESETS, preset
from models.kv_cache import DenseKVCache, LinearAttentionCache
from models.textgen import sample_next
from strategies import by_backend

MICRO = dict(n_layer=2, n_head=2, n_embd=8, block_size=6, vocab_size=7)


def _ids(rng, cfg, B, T):
    return rng.integers(0, cfg.vocab_size, (B, T))


def test_presets_give_the_documented_shapes_and_batch_sizes():
    want = {"tiny": (2, 4, 64, 64, 32), "small": (4, 4, 128, 128, 16), "medium": (6, 6, 384, 256, 8)}
    for name, (L, H, C, T, B) in want.items():
        cfg, batch = preset(name)
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, batch) == (L, H, C, T, B)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    assert set(PRESETS) == set(want)


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)
    with pytest.raises(ValueError, match=r"GPTConfig.n_layer=True must be a positive integer"):
        GPTConfig(**{**MICRO, "n_layer": True})  # a bool is an int: it built one layer
    cfg = GPTConfig(**MICRO, checkpoint=True)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("field, value", [("bias", "no"), ("bias", None), ("bias", 1), ("checkpoint", "no"),
                                          ("dropout", "0.1"), ("dropout", None), ("dropout", True)])
def test_config_refuses_flags_that_are_not_bools_and_a_dropout_that_is_not_a_number(field, value):
    """bias="no" is truthy and built biases; dropout="0.1" failed in a comparison with a
    TypeError that named no field."""
    with pytest.raises(ValueError, match=f"GPTConfig.{field}={value!r} must be"):
        GPTConfig(**MICRO, **{field: value})


def test_config_takes_numpy_bools_and_numbers():
    cfg = GPTConfig(**MICRO, bias=np.bool_(False), checkpoint=np.bool_(True), dropout=np.float32(0.25))
    assert GPT(cfg).h[0].attn.c_attn.bias is None
    assert GPTConfig(**MICRO, dropout=0).dropout == 0


def test_shapes_tying_and_param_count():
    cfg = GPTConfig(**MICRO)
    m = GPT(cfg)
    names = [n for n, _ in m.named_parameters()]
    assert len(names) == len(set(names))
    assert "wte.weight" in names and not any("head" in n for n in names)
    C, V, L, T = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.block_size
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert m.num_parameters() == V * C + T * C + L * per_block + 2 * C
    idx = _ids(np.random.default_rng(0), cfg, 3, 5)
    logits, loss = m(idx)
    assert logits.shape == (3, 5, V) and loss is None
    # the head IS the token embedding: changing wte changes the logits through both uses
    m.wte.weight.data[2] += 1.0
    assert not np.allclose(m(idx)[0].data, logits.data)


def test_init_statistics():
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=64, block_size=32, vocab_size=50)
    m = GPT(cfg, seed=1)
    params = dict(m.named_parameters())
    proj = np.concatenate([params[f"h.{i}.attn.c_proj.weight"].data.ravel() for i in range(4)]
                          + [params[f"h.{i}.mlp.c_proj.weight"].data.ravel() for i in range(4)])
    assert proj.std() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.03)
    assert params["h.0.mlp.c_fc.weight"].data.std() == pytest.approx(0.02, rel=0.05)
    assert np.all(params["h.0.attn.c_attn.bias"].data == 0) and np.all(params["ln_f.weight"].data == 1)
    # at init the predictions are close to uniform: loss ~ ln(V)
    rng = np.random.default_rng(0)
    idx = _ids(rng, cfg, 4, 32)
    _, loss = m(idx, _ids(rng, cfg, 4, 32))
    assert loss.item() == pytest.approx(math.log(50), abs=0.1)


def _gpt2_init_by_hand(cfg, seed):
    """The weights GPT(cfg, seed) (MHA, bias=True) has, re-derived from its seed: the layers'
    Linears draw their U(-1/√in, 1/√in) weight then bias from the seeded generator as they are
    built, layer by layer (c_attn, attn c_proj, c_fc, mlp c_proj); then the GPT-2 init draws
    N(0, 0.02) (N(0, 0.02/√(2L)) for the c_proj weights) in parameter order, and sets biases to
    0 and LayerNorm gains to 1. The embeddings draw nothing from it."""
    C, L = cfg.n_embd, cfg.n_layer
    rng = np.random.default_rng(seed)
    for _ in range(L):
        for n_out, n_in in ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C)):
            bound = 1 / math.sqrt(n_in)
            rng.uniform(-bound, bound, (n_out, n_in)), rng.uniform(-bound, bound, n_out)
    normal = lambda std, *shape: rng.normal(0.0, std, shape).astype(np.float32)  # noqa: E731
    want = {"wte.weight": normal(0.02, cfg.vocab_size, C), "wpe.weight": normal(0.02, cfg.block_size, C)}
    residual = 0.02 / math.sqrt(2 * L)
    for i in range(L):
        h = f"h.{i}."
        want.update({h + "ln_1.weight": np.ones(C), h + "ln_1.bias": np.zeros(C),
                     h + "attn.c_attn.weight": normal(0.02, 3 * C, C), h + "attn.c_attn.bias": np.zeros(3 * C),
                     h + "attn.c_proj.weight": normal(residual, C, C), h + "attn.c_proj.bias": np.zeros(C),
                     h + "ln_2.weight": np.ones(C), h + "ln_2.bias": np.zeros(C),
                     h + "mlp.c_fc.weight": normal(0.02, 4 * C, C), h + "mlp.c_fc.bias": np.zeros(4 * C),
                     h + "mlp.c_proj.weight": normal(residual, C, 4 * C), h + "mlp.c_proj.bias": np.zeros(C)})
    want.update({"ln_f.weight": np.ones(C), "ln_f.bias": np.zeros(C)})
    return want


def test_a_seeded_gpt_keeps_its_weights_and_leaves_the_global_generator_alone():
    """Building GPT(cfg, seed) gives the weights its seed always gave (the docs' measured runs
    start from them) and draws nothing from minigrad.default_generator: the next unseeded draw
    (dropout masks and layers built without rng) is the one it would be without the model."""
    cfg = GPTConfig(**MICRO)
    minigrad.manual_seed(0)
    undisturbed = minigrad.default_generator.random(4)
    minigrad.manual_seed(0)
    m = GPT(cfg, seed=3)
    after_gpt = minigrad.default_generator.random(4)
    got = m.state_dict()
    want = _gpt2_init_by_hand(cfg, seed=3)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(after_gpt, undisturbed)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(bias):
    cfg = GPTConfig(**MICRO, bias=bias)
    m = GPT(cfg, dtype=np.float64, seed=2)
    # move LayerNorm gains/biases and zero biases off their init so every path is exercised
    prng = np.random.default_rng(7)
    for n, p in m.named_parameters():
        assert p.dtype == np.float64
        p.data[...] += prng.normal(0, 0.1, p.shape)
    rng = np.random.default_rng(3)
    idx, tgt = _ids(rng, cfg, 2, 6), _ids(rng, cfg, 2, 6)
    params = [p for _, p in m.named_parameters()]
    # per parameter: up to 12 random elements plus one random direction through all of them
    minigrad.gradcheck(lambda *ps: m(idx)[0], params, atol=1e-6, rtol=1e-5, max_elements=12)  # logits
    minigrad.gradcheck(lambda *ps: m(idx, tgt)[1], params, atol=1e-6, rtol=1e-5, max_elements=12)  # loss


GC_VARIANTS = dict(mha={}, linear={}, moba=dict(moba_block=2, moba_topk=2),
                  nsa=dict(nsa_cmp_block=3, nsa_cmp_stride=2, nsa_slc_block=2, nsa_slc_topn=3, nsa_window=3))


@by_backend
@settings(max_examples=14)      # each example is ~500 forwards of the model
@given(attention=st.sampled_from(list(GC_VARIANTS)),
       heads=st.sampled_from([(1, None), (2, None), (2, 1), (3, 1), (4, 2), (3, 3)]),
       head_size=st.sampled_from([1, 2, 3]), n_layer=st.integers(1, 2), B=st.integers(1, 2),
       T=st.integers(1, 6), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gradcheck_float64_over_attention_variants_head_layouts_and_lengths(
        bk, attention, heads, head_size, n_layer, B, T, bias, seed):
    """float64 gradcheck of the whole GPT (logits and loss) with respect to every parameter, for
    each attention variant, multi-head, grouped-query (n_kv_head < n_head) and multi-query heads
    of odd sizes, T from 1 to block_size, with and without biases, on each backend. The weights
    are moved off their init (zero biases, unit LayerNorm gains) so every path carries gradient."""
    n_head, n_kv_head = heads
    # (n_embd = 1 is degenerate: a LayerNorm over one channel outputs its bias, so nothing before
    # the final one gets a gradient and, without biases, the logits are identically 0)
    assume(n_head * head_size >= 2)
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_head * head_size,
                    block_size=6, vocab_size=5, bias=bias, attention=attention, **GC_VARIANTS[attention])
    m = GPT(cfg, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for p in m.parameters():
        p.data[...] += rng.normal(0, 0.3, p.shape)
    idx, tgt = _ids(rng, cfg, B, T), _ids(rng, cfg, B, T)
    params = list(m.parameters())
    with minigrad.use_backend(bk):
        # per parameter: up to 6 random elements plus one random direction through all of them
        minigrad.gradcheck(lambda *ps: m(idx)[0], params, atol=1e-6, rtol=1e-5, max_elements=6)
        minigrad.gradcheck(lambda *ps: m(idx, tgt)[1], params, atol=1e-6, rtol=1e-5, max_elements=6)


def test_loss_and_grads_matches_backward():
    cfg = GPTConfig(**MICRO)
    m = GPT(cfg, dtype=np.float64)
    rng = np.random.default_rng(0)
    idx, tgt = _ids(rng, cfg, 2, 6), _ids(rng, cfg, 2, 6)
    loss, grads = m.loss_and_grads(idx, tgt)
    assert set(grads) == {n for n, _ in m.named_parameters()}
    loss2, grads2 = m.loss_and_grads(idx, tgt)   # zeroed in between: no accumulation
    assert loss == loss2
    for n in grads:
        assert np.array_equal(grads[n], grads2[n])


def test_activation_checkpointing_gives_same_gradients():
    cfg = GPTConfig(**MICRO)
    rng = np.random.default_rng(0)
    idx, tgt = _ids(rng, cfg, 2, 6), _ids(rng, cfg, 2, 6)
    a = GPT(cfg, dtype=np.float64, seed=4)
    b = GPT(GPTConfig(**MICRO, checkpoint=True), dtype=np.float64, seed=4)
    la, ga = a.loss_and_grads(idx, tgt)
    lb, gb = b.loss_and_grads(idx, tgt)
    assert la == pytest.approx(lb, abs=1e-12)
    for n in ga:
        np.testing.assert_allclose(ga[n], gb[n], atol=1e-12)


def _cached_logits(m, idx, n_prompt):
    """Prefill n_prompt tokens, then feed the rest one at a time; return logits (B, T, V)."""
    cache = DenseKVCache.for_model(m, batch_size=idx.shape[0])
    with minigrad.no_grad():
        out = [m(idx[:, :n_prompt], cache=cache)[0].data]
        for t in range(n_prompt, idx.shape[1]):
            out.append(m(idx[:, t:t + 1], cache=cache)[0].data)
    return np.concatenate(out, axis=1)


def test_kv_cache_misuse_gets_a_clear_error():
    m = GPT(GPTConfig(**MICRO))
    bs = m.config.block_size
    idx = np.zeros((2, bs), np.int64)
    with minigrad.no_grad():
        cache = DenseKVCache.for_model(m, batch_size=2)
        m(idx[:, :3], cache=cache)
        with pytest.raises(ValueError, match="holds a batch of 2, the input has batch 1"):
            m(idx[:1, 3:4], cache=cache)
        full = DenseKVCache.for_model(m, batch_size=2)
        m(idx[:, :bs], cache=full)
        with pytest.raises(ValueError, match=f"holds {bs} positions; 1 more exceed max_len={bs}"):
            m(idx[:, :1], cache=full)
        longer = DenseKVCache.for_model(m, batch_size=2, max_len=bs + 1)   # longer than the model
        m(idx[:, :bs], cache=longer)
        with pytest.raises(ValueError, match=f"positions up to {bs}, beyond the model's block_size={bs}"):
            m(idx[:, :1], cache=longer)
        assert len(longer) == bs                    # a refused forward leaves the cache as it was
        with pytest.raises(ValueError, match="serves attention linear"):
            m(idx[:, :1], cache=LinearAttentionCache.for_model(m, batch_size=2))
    with pytest.raises(RuntimeError, match="no_grad"):
        m(idx[:, :1], cache=DenseKVCache.for_model(m, batch_size=2))


def test_a_cached_decoding_step_is_nine_ops_per_layer_plus_five():
    """Embeddings (2) and their sum, per layer ln_1, c_attn, c_proj, the residual add, ln_2,
    c_fc, GELU, c_proj and the add, then ln_f and the head; the cache attends on arrays."""
    for n_layer in (1, 3):
        m = GPT(GPTConfig(**{**MICRO, "n_layer": n_layer}))
        ops = []
        listener = lambda event, ctx, out: ops.append(ctx.name) if event == "forward" else None  # noqa: E731
        with minigrad.no_grad():
            cache = DenseKVCache.for_model(m)
            m(np.zeros((1, 3), np.int64), cache=cache)
            minigrad.autograd.add_op_listener(listener)
            try:
                m(np.zeros((1, 1), np.int64), cache=cache)
            finally:
                minigrad.autograd.remove_op_listener(listener)
        assert len(ops) == 9 * n_layer + 5, ops


def test_generate_with_a_block_of_one_token():
    m = GPT(GPTConfig(**{**MICRO, "block_size": 1}))
    out = m.generate(np.zeros((1, 1), np.int64), 3, temperature=0)
    assert out.shape == (1, 4)
    np.testing.assert_array_equal(out, m.generate(np.zeros((1, 1), np.int64), 3, temperature=0, use_cache=False))


@given(n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 4]), T=st.integers(1, 10),
       n_prompt=st.integers(1, 10), B=st.integers(1, 3), seed=st.integers(0, 1000))
@settings(max_examples=15)
def test_kv_cache_equals_full_forward(n_layer, n_head, T, n_prompt, B, seed):
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=8 * n_head, block_size=10, vocab_size=13)
    m = GPT(cfg, dtype=np.float64, seed=seed)
    m.eval()
    idx = _ids(np.random.default_rng(seed), cfg, B, T)
    with minigrad.no_grad():
        full = m(idx)[0].data
    np.testing.assert_allclose(_cached_logits(m, idx, min(n_prompt, T)), full, rtol=0, atol=1e-10)


def test_kv_cache_float32_within_1e5():
    cfg, _ = preset("tiny", vocab_size=30)
    m = GPT(cfg, seed=0)
    m.eval()
    idx = _ids(np.random.default_rng(1), cfg, 2, 40)
    with minigrad.no_grad():
        full = m(idx)[0].data
    np.testing.assert_allclose(_cached_logits(m, idx, 7), full, atol=1e-5)


def test_generate_greedy_matches_uncached_argmax():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=11)
    m = GPT(cfg, dtype=np.float64, seed=5)
    prng = np.random.default_rng(9)
    for _, p in m.named_parameters():       # sharpen the logits so argmax is well separated
        p.data[...] += prng.normal(0, 0.3, p.shape)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    out = m.generate(prompt, 10, temperature=0)
    ref = prompt.copy()
    with minigrad.no_grad():
        for _ in range(10):
            nxt = m(ref)[0].data[:, -1].argmax(-1)
            ref = np.concatenate([ref, nxt[:, None]], axis=1)
    assert np.array_equal(out, ref)
    assert np.array_equal(m.generate(prompt, 10, temperature=0, use_cache=False), ref)


def test_generate_with_a_dense_cache_longer_than_block_size_refills_at_block_size():
    """Its room never reaches 0 at block_size: generate counts the model's positions too, and
    refills there as with the default cache (it raised 'beyond the model's block_size' before)."""
    m = GPT(GPTConfig(**{**MICRO, "block_size": 8}), seed=4)
    p = np.array([[1, 2, 3]])
    want = m.generate(p, 20, temperature=0)
    np.testing.assert_array_equal(m.generate(p, 20, temperature=0, cache=DenseKVCache.for_model(m, max_len=13)),
                                  want)


@pytest.mark.parametrize("block_size, n_prompt", [(8, 3), (7, 2), (7, 10)])
def test_generate_past_block_size_refills_the_dense_cache_from_the_last_half(block_size, n_prompt):
    """Past block_size the default (dense) cache is reset and refilled from the last
    max(1, block_size // 2) tokens at positions 0, 1, ...: every greedy token, not only those
    before the first refill, equals the argmax of an uncached forward over exactly what the cache
    holds plus the newest token (the prompt's last block_size tokens at first)."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=11)
    m = GPT(cfg, dtype=np.float64, seed=4)
    prng = np.random.default_rng(104)
    for _, p in m.named_parameters():       # sharpen the logits: well separated argmaxes, varied tokens
        p.data[...] += prng.normal(0, 0.3, p.shape)
    prompt = np.random.default_rng(n_prompt).integers(0, 11, (2, n_prompt))
    n_new = 4 * block_size
    out = m.generate(prompt, n_new, temperature=0)
    ref, start, refills = prompt.copy(), max(0, n_prompt - block_size), 0
    with minigrad.no_grad():
        for _ in range(n_new):
            if ref.shape[1] - start > block_size:       # no room for the new token: keep the last half
                start, refills = ref.shape[1] - max(1, block_size // 2), refills + 1
            nxt = m(ref[:, start:])[0].data[:, -1].argmax(-1)
            ref = np.concatenate([ref, nxt[:, None]], axis=1)
    assert refills >= 3
    np.testing.assert_array_equal(out, ref)


def test_generate_sampling_seeded_top_k_and_past_block_size():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=9)
    m = GPT(cfg, seed=0)
    prompt = np.array([[1, 2]])
    a = m.generate(prompt, 30, temperature=1.0, top_k=3, rng=np.random.default_rng(0))
    b = m.generate(prompt, 30, temperature=1.0, top_k=3, rng=np.random.default_rng(0))
    assert a.shape == (1, 32) and np.array_equal(a, b)
    assert np.array_equal(a[:, :2], prompt) and a.min() >= 0 and a.max() < 9
    assert m.training    # generate restores the mode it found
    # top_k=1 is greedy
    g = m.generate(prompt, 12, temperature=1.0, top_k=1, rng=np.random.default_rng(1))
    assert np.array_equal(g, m.generate(prompt, 12, temperature=0))


@settings(max_examples=40)
@given(rows=st.integers(1, 4), vocab=st.integers(1, 70), temperature=st.sampled_from([0.3, 1.0, 2.5]),
       top_k=st.one_of(st.none(), st.integers(1, 80)), seed=st.integers(0, 2**32 - 1))
def test_sample_next_draws_what_rng_choice_draws(rows, vocab, temperature, top_k, seed):
    """The vectorised draw takes the same numbers from the generator as rng.choice(V, p=row), row
    by row, and returns the same ids (the per-row form it replaced)."""
    logits = np.random.default_rng(seed).normal(0.0, 3.0, (rows, vocab)).astype(np.float32)
    got = sample_next(logits, temperature, top_k, np.random.default_rng(seed))
    z = logits.astype(np.float64) / temperature
    if top_k is not None:
        z = np.where(z < np.sort(z, axis=-1)[:, -min(top_k, vocab)][:, None], -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    rng = np.random.default_rng(seed)
    want = [rng.choice(vocab, p=row) for row in p]
    assert got.shape == (rows,) and got.tolist() == want
    assert np.array_equal(sample_next(logits, 0, top_k, None), logits.argmax(-1))


def test_sample_next_refuses_nan_logits():
    logits = np.zeros((3, 5), np.float32)
    logits[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(rows \[1\]\)"):
        sample_next(logits, 1.0, None, np.random.default_rng(0))


@pytest.mark.parametrize("temperature,top_k,pattern", [
    (1.0, 0, "top_k must be an integer >= 1"),          # indexed the sort from its far end
    (1.0, -1, "top_k must be an integer >= 1"),
    (1.0, 2.5, "top_k must be an integer >= 1"),
    (-1.0, None, "temperature must be a finite number >= 0"),   # inverted the distribution
    (float("nan"), None, "temperature must be a finite number >= 0"),
])
def test_sampling_options_that_mean_nothing_are_refused_everywhere(temperature, top_k, pattern):
    logits = np.array([[2.0, 1.0, 0.5, 0.0, -3.0]])
    with pytest.raises(ValueError, match=f"sample_next: {pattern}"):
        sample_next(logits, temperature, top_k, np.random.default_rng(0))
    m = GPT(GPTConfig(**MICRO))                         # refused before any forward
    with pytest.raises(ValueError, match=f"GPT.generate: {pattern}"):
        m.generate(np.zeros((1, 2), np.int64), 3, temperature=temperature, top_k=top_k)


@pytest.mark.parametrize("temperature", [1e-320, 1e-300, 1e-12])
def test_a_tiny_temperature_samples_the_argmax_without_overflow(temperature):
    """logits / temperature overflowed to inf, and the NaN that followed was reported as NaN logits;
    shifted by the row's max first, the scores only fall to -inf: the limit, the argmax."""
    logits = np.random.default_rng(0).normal(0, 3, (4, 9))
    with np.errstate(invalid="raise", divide="raise"):     # no inf - inf, no NaN
        for top_k in (None, 3):
            got = sample_next(logits, temperature, top_k, np.random.default_rng(1))
            np.testing.assert_array_equal(got, logits.argmax(-1))


def test_forward_errors():
    cfg = GPTConfig(**MICRO)
    m = GPT(cfg)
    with pytest.raises(ValueError, match="block_size"):
        m(np.zeros((1, 7), dtype=np.int64))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 7\)"):
        m(np.full((1, 3), 7))
    with pytest.raises(ValueError, match="targets shape"):
        m(np.zeros((1, 3), dtype=np.int64), np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        m(np.zeros((1, 3)))


@pytest.mark.parametrize("attention, extra", [("mha", {}), ("moba", dict(moba_block=3, moba_topk=2))])
@pytest.mark.parametrize("shape", [(0, 3), (2, 0)])
def test_forward_refuses_an_empty_batch_at_its_door(attention, extra, shape):
    """MoBA failed in a reshape deep inside; MHA returned a NaN loss (a mean over no tokens)."""
    m = GPT(GPTConfig(**MICRO, attention=attention, **extra))
    empty = np.zeros(shape, dtype=np.int64)
    for targets in (None, empty):
        with pytest.raises(ValueError, match=rf"GPT.forward: idx of shape \({shape[0]}, {shape[1]}\) is empty"):
            m(empty, targets)


@pytest.mark.parametrize("prompt", [np.array([[1.7, 2.2]]), [1.0, 2.0], np.array([True, False])])
def test_generate_refuses_a_prompt_that_is_not_integer_ids(prompt):
    """forward refuses float ids; generate cast them to int64 and decoded from 1 and 2."""
    m = GPT(GPTConfig(**MICRO))
    with pytest.raises(ValueError, match="GPT.generate: the prompt must hold integer token ids"):
        m.generate(prompt, 1, temperature=0)
    assert m.generate(np.array([1, 2], dtype=np.uint16), 1, temperature=0).shape == (1, 3)


def test_dropout_train_vs_eval():
    cfg = GPTConfig(**{**MICRO, "dropout": 0.5})
    m = GPT(cfg, seed=0)
    idx = _ids(np.random.default_rng(0), cfg, 2, 6)
    m.eval()
    e1, e2 = m(idx)[0].data, m(idx)[0].data
    assert np.array_equal(e1, e2)
    m.train()
    t1, t2 = m(idx)[0].data, m(idx)[0].data
    assert not np.array_equal(t1, t2) and not np.array_equal(t1, e1)
