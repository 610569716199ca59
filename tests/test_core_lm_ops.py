"""The ops language models need beyond the GPT's: split/chunk, gather/index_select, masked_fill,
F.sigmoid/F.tanh, and attention with boolean and key-padding masks (also cross-attention, Tq != Tk).

Each is gradchecked in float64 under hypothesis (random upstream covector) and, where torch has
the same name, compared with torch's values and gradients. The padding test states what a mask
is for: attention over padded sequences with a key padding mask equals attention over the
unpadded ones.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minigrad as mg
import minigrad.functional as F

from strategies import arrays, by_backend, close, gc, int_indices, seeds, shapes, torch_parity

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the parity checks need the `bench` extra; the gradchecks do not
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (the `bench` extra) is needed for parity")


def flat(pieces):
    """Pieces of a split as one 1-D tensor, so gradcheck sees them all with one covector."""
    return mg.cat([p.reshape(-1) for p in pieces])


# ================================================================ split, chunk
@st.composite
def split_case(draw):
    """(x, axis, split_size_or_sections): an int size or a list of sizes (zeros allowed) summing to the axis."""
    shape = draw(shapes(min_dims=1, max_dims=3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    if draw(st.booleans()):
        how = draw(st.integers(1, n + 1))
    else:
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
        how = list(np.diff([0] + cuts + [n]))
    return draw(arrays(shape)), axis, how


@given(case=split_case())
def test_split(case):
    x, axis, how = case
    (t,) = gc(lambda a: flat(a.split(how, axis)), x)
    pieces = mg.split(t, how, dim=axis)
    n = x.shape[axis]
    sizes = [how] * (n // how) + ([n % how] if n % how else []) if isinstance(how, int) else how
    bounds = np.cumsum(sizes)[:-1]
    want = np.split(x, bounds, axis=axis)
    assert [p.shape for p in pieces] == [w.shape for w in want]
    for p, w in zip(pieces, want):
        close(p, w)


@given(case=split_case())
def test_only_the_used_pieces_get_a_gradient(case):
    x, axis, how = case
    t = mg.Tensor(x, requires_grad=True)
    pieces = t.split(how, axis)
    (pieces[0] * 3.0).sum().backward()
    want = np.zeros(x.shape)
    first = pieces[0].shape[axis % x.ndim]
    np.moveaxis(want, axis, 0)[:first] = 3.0
    np.testing.assert_array_equal(t.grad, want)


@given(shape=shapes(min_dims=1, max_dims=3), chunks=st.integers(1, 6), data=st.data())
def test_chunk(shape, chunks, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(shape))
    gc(lambda a: flat(a.chunk(chunks, dim=axis)), x)
    pieces = mg.chunk(mg.Tensor(x), chunks, axis)
    n, size = shape[axis], math.ceil(shape[axis] / chunks)
    assert len(pieces) == math.ceil(n / size) <= chunks
    assert all(p.shape[axis] == size for p in pieces[:-1]) and 1 <= pieces[-1].shape[axis] <= size
    close(mg.cat(pieces, axis=axis), x)


@needs_torch
@settings(max_examples=10)
@given(case=split_case(), chunks=st.integers(1, 6))
def test_split_and_chunk_match_torch(case, chunks):
    x, axis, how = case
    torch_parity(lambda a: flat(a.split(how, axis)),
                 lambda a: torch.cat([p.reshape(-1) for p in torch.split(a, how, dim=axis)]), x)
    assert [p.shape for p in mg.chunk(mg.Tensor(x), chunks, axis)] == \
        [tuple(p.shape) for p in torch.chunk(torch.from_numpy(x), chunks, dim=axis)]
    torch_parity(lambda a: flat(a.chunk(chunks, axis)),
                 lambda a: torch.cat([p.reshape(-1) for p in torch.chunk(a, chunks, dim=axis)]), x)


@needs_torch
def test_split_and_chunk_of_an_empty_axis_match_torch():
    x = np.zeros((0, 2))
    for mine, theirs in ((mg.split(x, 2), torch.split(torch.from_numpy(x), 2)),
                         (mg.chunk(x, 3), torch.chunk(torch.from_numpy(x), 3))):
        assert [p.shape for p in mine] == [tuple(p.shape) for p in theirs]


# ================================================================ gather, index_select
@st.composite
def gather_case(draw):
    """(x, axis, index): index of x's rank, no larger than x off `axis`, values in range (repeats likely)."""
    shape = draw(shapes(min_dims=1, max_dims=3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    ishape = tuple(draw(st.integers(1, 4)) if d == axis % len(shape) else draw(st.integers(1, n))
                   for d, n in enumerate(shape))
    return draw(arrays(shape)), axis, draw(int_indices(shape[axis], ishape))


@given(case=gather_case())
def test_gather(case):
    x, axis, index = case
    (t,) = gc(lambda a: a.gather(axis, index), x)
    region = x[tuple(slice(0, m) for m in index.shape[:axis % x.ndim])]  # torch reads only the index's extent
    region = region[(slice(None),) * (axis % x.ndim + 1) + tuple(slice(0, m) for m in index.shape[axis % x.ndim + 1:])]
    close(mg.gather(t, dim=axis, index=mg.Tensor(index)), np.take_along_axis(region, index, axis=axis))


@given(data=st.data())
def test_index_select(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    index = data.draw(int_indices(shape[axis], (data.draw(st.integers(1, 5)),)))
    x = data.draw(arrays(shape))
    (t,) = gc(lambda a: a.index_select(axis, index), x)
    close(mg.index_select(t, axis, index), np.take(x, index, axis=axis))
    # a row picked k times gets k upstream gradients
    t.grad = None
    t.index_select(axis, index).backward(np.ones(np.take(x, index, axis=axis).shape))
    counts = np.bincount(index, minlength=shape[axis]).reshape((-1,) + (1,) * (len(shape) - 1 - axis % len(shape)))
    np.testing.assert_array_equal(t.grad, np.broadcast_to(counts, shape))


@needs_torch
@settings(max_examples=10)
@given(case=gather_case())
def test_gather_and_index_select_match_torch(case):
    x, axis, index = case
    ti = torch.from_numpy(index)
    torch_parity(lambda a: a.gather(axis, index), lambda a: torch.gather(a, axis, ti), x)
    row = index.reshape(-1)
    torch_parity(lambda a: a.index_select(axis, row), lambda a: torch.index_select(a, axis, torch.from_numpy(row)), x)


# ================================================================ masked_fill, sigmoid, tanh
@st.composite
def masked_fill_case(draw):
    """(x, mask): the mask broadcasts against x (either may be the larger)."""
    sm, sx = draw(st.sampled_from([((2, 3), (2, 3)), ((3,), (2, 3)), ((2, 1), (2, 3)), ((2, 3), (3,)), ((), (2,))]))
    mask = np.array(draw(st.lists(st.booleans(), min_size=int(np.prod(sm)), max_size=int(np.prod(sm)))),
                    dtype=bool).reshape(sm)
    return draw(arrays(sx)), mask


@given(case=masked_fill_case(), value=st.floats(-3, 3))
def test_masked_fill(case, value):
    x, mask = case
    (t,) = gc(lambda a: a.masked_fill(mask, value), x)
    close(mg.masked_fill(t, mg.Tensor(mask), value), np.where(mask, value, x))
    # a 0-d tensor value gets the upstream gradient of every filled element
    tx, tv = gc(lambda a, c: a.masked_fill(mask, c), x, np.array(value))
    g = np.random.default_rng(0).standard_normal(np.broadcast_shapes(mask.shape, x.shape))
    tv.grad = None
    tx.masked_fill(mask, tv).backward(g)
    np.testing.assert_allclose(tv.grad, (g * mask).sum(), rtol=1e-12, atol=1e-12)


@needs_torch
@settings(max_examples=10)
@given(case=masked_fill_case(), value=st.floats(-3, 3))
def test_masked_fill_matches_torch(case, value):
    x, mask = case
    tm = torch.from_numpy(mask)
    torch_parity(lambda a: a.masked_fill(mask, value), lambda a: a.masked_fill(tm, value), x)
    torch_parity(lambda a, c: a.masked_fill(mask, c), lambda a, c: a.masked_fill(tm, c), x, np.array(value))


@needs_torch
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@given(x=arrays(shapes(), lo=-6.0, hi=6.0))
def test_functional_sigmoid_and_tanh(name, x):
    gc(getattr(F, name), x)
    torch_parity(getattr(F, name), getattr(torch, name), x)


# ================================================================ bad input
def test_pieces_and_lookups_refuse_bad_input_naming_the_shapes():
    x = mg.Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"split: sections \[1, 1\] must be sizes >= 0 summing to 3, .* axis 1 of shape \(2, 3\)"):
        x.split([1, 1], dim=1)
    with pytest.raises(ValueError, match="split: split_size must be a positive integer, got 0"):
        x.split(0)
    with pytest.raises(ValueError, match=r"split: axis 2 is out of range for shape \(2, 3\)"):
        x.split(1, 2)
    with pytest.raises(ValueError, match="chunk: chunks must be a positive integer, got 0"):
        x.chunk(0)
    with pytest.raises(ValueError, match=r"gather: index of shape \(3,\) does not fit input of shape \(2, 3\)"):
        x.gather(1, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"gather: index of shape \(3, 1\) does not fit input of shape \(2, 3\)"):
        x.gather(1, np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(IndexError, match=r"gather: index 3 is out of range for axis 1 of size 3"):
        x.gather(1, np.array([[3]]))
    with pytest.raises(IndexError, match=r"index_select: index -1 is out of range for axis 0 of size 2"):
        x.index_select(0, np.array([-1]))
    with pytest.raises(ValueError, match=r"index_select: index must be 1-D, got shape \(1, 1\)"):
        x.index_select(0, np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="index_select: index must hold integers, got dtype float64"):
        x.index_select(0, np.zeros(1))
    with pytest.raises(TypeError, match="masked_fill: mask must be boolean"):
        x.masked_fill(np.zeros((2, 3), dtype=np.int64), 1.0)
    with pytest.raises(ValueError, match=r"masked_fill: shapes \(2,\) and \(2, 3\) do not broadcast"):
        x.masked_fill(np.zeros(2, dtype=bool), 1.0)
    with pytest.raises(ValueError, match=r"masked_fill: value must be a number or a 0-d tensor, got shape \(3,\)"):
        x.masked_fill(np.zeros(3, dtype=bool), np.ones(3))


def test_cat_of_mismatched_shapes_names_them():
    with pytest.raises(ValueError, match=r"cat: shapes \(2, 3\), \(3,\) differ outside axis 1"):
        mg.cat([mg.zeros(2, 3), mg.zeros(3)], dim=1)  # one of them has fewer axes
    with pytest.raises(ValueError, match=r"cat: shapes \(2, 3\), \(3, 2\) differ outside axis 0"):
        mg.cat([mg.zeros(2, 3), mg.zeros(3, 2)])
    with pytest.raises(ValueError, match=r"cat: axis 2 is out of range for shapes \(2, 3\), \(2, 3\)"):
        mg.cat([mg.zeros(2, 3), mg.zeros(2, 3)], axis=2)


# ================================================================ attention with masks
def np_masked_attention(q, k, v, allowed, scale):
    """The definition: softmax over the allowed keys only; a query with none gets 0."""
    s = np.where(allowed, q @ np.swapaxes(k, -1, -2) * scale, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    return (e / np.where(total > 0, total, 1.0)) @ v


@st.composite
def masked_attention_case(draw):
    """q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) with Tq and Tk independent (cross-
    attention), an attn_mask of a drawn broadcastable shape and a key padding mask (either may be None)."""
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tq, tk, d, dv = (draw(st.integers(1, 4)) for _ in range(4))
    rng = np.random.default_rng(draw(seeds()))
    q, k, v = rng.standard_normal((b, h, tq, d)), rng.standard_normal((b, h, tk, d)), rng.standard_normal((b, h, tk, dv))
    mshape = draw(st.sampled_from([None, (tq, tk), (b, 1, tq, tk), (b, h, tq, tk), (b, 1, 1, tk), (1, tk)]))
    attn_mask = None if mshape is None else rng.random(mshape) < 0.7
    pad = rng.random((b, tk)) < 0.3 if draw(st.booleans()) else None
    return q, k, v, attn_mask, pad


def allowed_of(shape, attn_mask, pad):
    allowed = np.ones(shape, dtype=bool)
    if attn_mask is not None:
        allowed = allowed & attn_mask
    if pad is not None:
        allowed = allowed & ~pad[:, None, None, :]
    return allowed


@by_backend
@given(case=masked_attention_case(), scale=st.none() | st.floats(0.2, 2.0))
def test_masked_attention(bk, case, scale):
    q, k, v, attn_mask, pad = case
    kw = dict(scale=scale, attn_mask=attn_mask, key_padding_mask=pad)
    with mg.use_backend(bk):
        tq, tk, tv = gc(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **kw), q, k, v)
        out = F.scaled_dot_product_attention(tq, tk, tv, **kw)
    allowed = allowed_of(q.shape[:-1] + (k.shape[-2],), attn_mask, pad)
    close(out, np_masked_attention(q, k, v, allowed, 1 / math.sqrt(q.shape[-1]) if scale is None else scale))


@by_backend
@given(case=masked_attention_case())
def test_masks_combine_with_causal(bk, case):
    q, k, v, attn_mask, pad = case
    assume(q.shape[-2] <= k.shape[-2])  # causal needs a key for every query (bottom-right aligned)
    tq, tk = q.shape[-2], k.shape[-2]
    with mg.use_backend(bk):
        gc(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=True, attn_mask=attn_mask,
                                                          key_padding_mask=pad), q, k, v)
        out = F.scaled_dot_product_attention(q, k, v, causal=True, attn_mask=attn_mask, key_padding_mask=pad)
    allowed = allowed_of(q.shape[:-1] + (tk,), attn_mask, pad) & np.tri(tq, tk, tk - tq, dtype=bool)
    close(out, np_masked_attention(q, k, v, allowed, 1 / math.sqrt(q.shape[-1])))


@needs_torch
@settings(max_examples=15)
@given(case=masked_attention_case())
def test_masked_attention_matches_torch(case):
    """Every query keeps at least one key here (the fully masked row has its own test below)."""
    q, k, v, attn_mask, pad = case
    allowed = allowed_of(q.shape[:-1] + (k.shape[-2],), attn_mask, pad)
    assume(allowed.any(axis=-1).all())
    tmask = torch.from_numpy(allowed)  # torch's sdpa takes one boolean mask, True = may attend
    torch_parity(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=attn_mask, key_padding_mask=pad),
                 lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, attn_mask=tmask), q, k, v)


@by_backend
def test_a_query_that_sees_no_key_gets_zero_output_and_zero_gradient(bk):
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 3, 2)), rng.standard_normal((1, 4, 2)), rng.standard_normal((1, 4, 3))
    mask = np.ones((3, 4), dtype=bool)
    mask[1] = False  # query 1 may see nothing
    with mg.use_backend(bk):
        tq, tk, tv = (mg.Tensor(a, requires_grad=True) for a in (q, k, v))
        out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
        out.backward(rng.standard_normal(out.shape))
        full = F.scaled_dot_product_attention(q, k, v)
    np.testing.assert_array_equal(out.data[0, 1], 0.0)
    np.testing.assert_array_equal(tq.grad[0, 1], 0.0)
    assert np.isfinite(tk.grad).all() and np.isfinite(tv.grad).all()
    close(out[:, [0, 2]], full.data[:, [0, 2]])  # the other queries are untouched


@st.composite
def padded_batch(draw):
    """Lengths (each >= 1) of a batch of sequences padded to the longest, plus seeds for data."""
    lengths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    return lengths, draw(seeds())


@by_backend
@given(batch=padded_batch(), tq=st.integers(1, 3), d=st.integers(1, 3))
def test_cross_attention_with_key_padding_equals_attention_on_the_unpadded_keys(bk, batch, tq, d):
    """A decoder's queries over encoder outputs padded to S: each sequence's output and gradients
    equal those of attention over its own L_b keys, and padded keys and values get no gradient."""
    lengths, seed = batch
    rng = np.random.default_rng(seed)
    b, s = len(lengths), max(lengths)
    q, k, v = rng.standard_normal((b, 2, tq, d)), rng.standard_normal((b, 2, s, d)), rng.standard_normal((b, 2, s, d))
    pad = np.arange(s)[None, :] >= np.array(lengths)[:, None]
    g = rng.standard_normal((b, 2, tq, d))
    with mg.use_backend(bk):
        padded = [mg.Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*padded, key_padding_mask=pad)
        out.backward(g)
        for i, n in enumerate(lengths):
            alone = [mg.Tensor(a[i:i + 1, :, :n] if j else a[i:i + 1], requires_grad=True) for j, a in enumerate((q, k, v))]
            want = F.scaled_dot_product_attention(*alone)
            want.backward(g[i:i + 1])
            close(out[i:i + 1], want.data)
            close(mg.Tensor(padded[0].grad[i:i + 1]), alone[0].grad)
            for full, part in zip(padded[1:], alone[1:]):
                close(mg.Tensor(full.grad[i:i + 1, :, :n]), part.grad)
                assert (full.grad[i, :, n:] == 0).all()


@by_backend
@pytest.mark.parametrize("causal", [False, True])
@given(batch=padded_batch(), n_head=st.integers(1, 2), hs=st.integers(1, 2))
def test_self_attention_with_key_padding_equals_attention_on_the_unpadded_sequences(bk, causal, batch, n_head, hs):
    """qkv_attention (a BERT encoder's, or a GPT's with causal) over right-padded sequences: the
    outputs at real positions, and the gradients reaching them, are those of each sequence alone."""
    lengths, seed = batch
    rng = np.random.default_rng(seed)
    b, t, c = len(lengths), max(lengths), n_head * hs
    x = rng.standard_normal((b, t, 3 * c))
    pad = np.arange(t)[None, :] >= np.array(lengths)[:, None]
    g = rng.standard_normal((b, t, c)) * ~pad[:, :, None]  # padded positions' outputs are not used
    with mg.use_backend(bk):
        tx = mg.Tensor(x, requires_grad=True)
        out = F.qkv_attention(tx, n_head, causal=causal, key_padding_mask=pad)
        out.backward(g)
        for i, n in enumerate(lengths):
            alone = mg.Tensor(x[i:i + 1, :n], requires_grad=True)
            want = F.qkv_attention(alone, n_head, causal=causal)
            want.backward(g[i:i + 1, :n])
            close(out[i:i + 1, :n], want.data)
            close(mg.Tensor(tx.grad[i:i + 1, :n]), alone.grad)
            assert (tx.grad[i, n:] == 0).all()


@by_backend
@pytest.mark.parametrize("causal", [False, True])
@given(b=st.integers(1, 2), t=st.integers(1, 4), n_head=st.integers(1, 2), hs=st.integers(1, 2), seed=seeds(),
       mask_kind=st.sampled_from(["TT", "B1TT", "BHTT", "pad"]))
def test_masked_qkv_attention_is_masked_split_heads_attention(bk, causal, b, t, n_head, hs, seed, mask_kind):
    rng = np.random.default_rng(seed)
    c = n_head * hs
    x = rng.standard_normal((b, t, 3 * c))
    shape = {"TT": (t, t), "B1TT": (b, 1, t, t), "BHTT": (b, n_head, t, t)}.get(mask_kind)
    kw = (dict(key_padding_mask=rng.random((b, t)) < 0.3) if shape is None
          else dict(attn_mask=rng.random(shape) < 0.7))
    with mg.use_backend(bk):
        (tx,) = gc(lambda a: F.qkv_attention(a, n_head, causal=causal, **kw), x)
        out = F.qkv_attention(tx, n_head, causal=causal, **kw)
        q, k, v = (mg.Tensor(x[:, :, i * c:(i + 1) * c].reshape(b, t, n_head, hs).transpose(0, 2, 1, 3))
                   for i in range(3))
        want = F.scaled_dot_product_attention(q, k, v, causal=causal, **kw)
    close(out, want.data.transpose(0, 2, 1, 3).reshape(b, t, c))


def test_attention_masks_of_the_wrong_shape_or_type_are_refused_naming_the_shapes():
    q, k, v = np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 6, 5)), np.zeros((2, 3, 6, 5))
    sdpa = F.scaled_dot_product_attention
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention: attn_mask of shape \(6, 4\) does not "
                                         r"broadcast to the attention scores \(2, 3, 4, 6\) .*\(Tq, Tk\) = \(4, 6\)"):
        sdpa(q, k, v, attn_mask=np.ones((6, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 2, 3, 4, 6\) does not broadcast"):
        sdpa(q, k, v, attn_mask=np.ones((5, 2, 3, 4, 6), dtype=bool))  # would enlarge the output
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \(2, 4\) but the attention scores are "
                                         r"\(2, 3, 4, 6\) .*must be \(B, Tk\)"):
        sdpa(q, k, v, key_padding_mask=np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \(6,\) but the attention scores are \(4, 6\)"):
        sdpa(q[0, 0], k[0, 0], v[0, 0], key_padding_mask=np.ones(6, dtype=bool))
    with pytest.raises(TypeError, match=r"attn_mask must be boolean \(True = may attend\), got dtype float64"):
        sdpa(q, k, v, attn_mask=np.zeros((4, 6)))
    qkv = np.zeros((2, 4, 12))
    with pytest.raises(ValueError, match=r"qkv_attention: attn_mask of shape \(4, 5\) does not broadcast to "
                                         r"the attention scores \(2, 2, 4, 4\)"):
        F.qkv_attention(qkv, 2, attn_mask=np.ones((4, 5), dtype=bool))
    with pytest.raises(ValueError, match=r"qkv_attention: key_padding_mask has shape \(4, 2\)"):
        F.qkv_attention(qkv, 2, key_padding_mask=np.ones((4, 2), dtype=bool))
    with pytest.raises(TypeError, match=r"qkv_attention: key_padding_mask must be boolean \(True = padded key\)"):
        F.qkv_attention(qkv, 2, key_padding_mask=np.ones((2, 4), dtype=np.int64))
