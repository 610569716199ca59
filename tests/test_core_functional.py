"""Every fused op in `minigrad.functional`, checked by gradcheck under hypothesis in float64.

The fused ops hand-write their backward (softmax's Jacobian product, cross-entropy's
softmax-minus-onehot, layer norm's three-term formula, attention's chain of four products), so
each is checked against finite differences with a random upstream covector, and its forward
against a plain NumPy formula. Every test runs on each available backend (numpy, numba).
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minigrad as mg
import minigrad.functional as F

from strategies import BACKENDS, arrays, by_backend, close, gc, int_indices, seeds, shapes


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ================================================================ linear, activations
@by_backend
@given(data=st.data(), bias=st.booleans())
def test_linear(bk, data, bias):
    lead = data.draw(shapes(max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x, w = data.draw(arrays(lead + (n_in,))), data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    with mg.use_backend(bk):
        if bias:
            tx, tw, tb = gc(F.linear, x, w, b)
            close(F.linear(tx, tw, tb), x @ w.T + b)
        else:
            tx, tw = gc(F.linear, x, w)
            close(F.linear(tx, tw), x @ w.T)


@by_backend
@given(x=arrays(shapes(), kinks=(0.0,)))
def test_relu(bk, x):
    with mg.use_backend(bk):
        (t,) = gc(F.relu, x)
        close(F.relu(t), np.maximum(x, 0))


@by_backend
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@given(x=arrays(shapes(), lo=-4.0, hi=4.0))
def test_gelu(bk, approximate, x):
    from math import erf

    with mg.use_backend(bk):
        (t,) = gc(lambda a: F.gelu(a, approximate=approximate), x)
        out = F.gelu(t, approximate=approximate)
    if approximate == "tanh":
        ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    else:
        ref = 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))
    close(out, ref, tol=1e-12)


# ================================================================ softmax family
@by_backend
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data())
def test_softmax_log_softmax(bk, name, data):
    shape = list(data.draw(shapes(min_dims=1)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    # the softmax axis has >= 2 entries: over one entry softmax is 1 and log_softmax 0, whose
    # gradient is identically zero and would pass any backward (test_degenerate_... checks it)
    shape[axis] = data.draw(st.integers(2, 4))
    x = data.draw(arrays(shape, lo=-5.0, hi=5.0))
    fn = getattr(F, name)
    with mg.use_backend(bk):
        (t,) = gc(lambda a: fn(a, axis=axis), x)
        out = fn(t, axis=axis)
    p = np_softmax(x, axis)
    close(out, p if name == "softmax" else np.log(p), tol=1e-12)


@by_backend
def test_softmax_is_shift_invariant_and_stable(bk):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    with mg.use_backend(bk):
        p = F.softmax(mg.Tensor(x)).data
        lp = F.log_softmax(mg.Tensor(x)).data
    assert np.isfinite(p).all() and np.isfinite(lp).all()
    np.testing.assert_allclose(p[0], np_softmax(np.array([0.0, 1.0, 2.0])), rtol=1e-12)
    np.testing.assert_allclose(lp[1], np.log(np_softmax(np.array([0.0, -1.0, -2.0]))), rtol=1e-12)


@st.composite
def logits_and_targets(draw, allow_ignored=True):
    """(N, V) logits and N targets, some maybe ignored (-100). V >= 2 and at least one target
    kept: with one class or no kept row the loss's gradient is identically zero, which any
    backward passes (those cases are checked directly in test_degenerate_losses_have_zero_gradient)."""
    n, v = draw(st.integers(1, 5)), draw(st.integers(2, 5))
    logits = draw(arrays((n, v), lo=-4.0, hi=4.0))
    targets = draw(int_indices(v, (n,)))
    if allow_ignored:
        ignored = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        assume(not ignored.all())
        targets = np.where(ignored, -100, targets)
    return logits, targets


def np_cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    logp = np.log(np_softmax(logits))
    keep = targets != ignore_index
    per = np.where(keep, -logp[np.arange(len(targets)), np.where(keep, targets, 0)], 0.0)
    return {"none": per, "sum": per.sum(), "mean": per.sum() / max(keep.sum(), 1)}[reduction]


@by_backend
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(lt=logits_and_targets())
def test_cross_entropy(bk, reduction, lt):
    logits, targets = lt
    assume(reduction != "mean" or (targets != -100).any())  # a mean over no rows is NaN, as in torch
    with mg.use_backend(bk):
        (t,) = gc(lambda a: F.cross_entropy(a, targets, reduction=reduction), logits)
        out = F.cross_entropy(t, targets, reduction=reduction)
    close(out, np_cross_entropy(logits, targets, reduction=reduction), tol=1e-12)
    assert not t.grad[targets == -100].any()  # ignored rows get no gradient


@by_backend
def test_cross_entropy_mean_over_no_kept_target_is_nan_with_a_zero_gradient(bk):
    # as torch: an all-padding batch must not put NaN into every parameter's gradient
    with mg.use_backend(bk):
        x = mg.Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
        loss = F.cross_entropy(x, np.array([-100, -100]))
        loss.backward()
    assert np.isnan(loss.data)
    assert np.array_equal(x.grad, np.zeros((2, 3), np.float32))


@by_backend
@pytest.mark.parametrize("x_shape, w_shape", [((3, 0), (5, 0)), ((3, 4), (0, 4)), ((2, 0, 4), (5, 4))])
def test_linear_with_an_empty_axis_gives_zeros_or_empty_results(bk, x_shape, w_shape):
    x, w, b = np.ones(x_shape), np.ones(w_shape), np.ones(w_shape[0])
    with mg.use_backend(bk):
        tx, tw, tb = (mg.Tensor(v, requires_grad=True) for v in (x, w, b))
        y = F.linear(tx, tw, tb)
        (y * 2).sum().backward()
    g = 2 * np.ones(x_shape[:-1] + (w_shape[0],))
    close(y, x @ w.T + b)
    close(tx.grad, g @ w)
    lead = list(range(x.ndim - 1))
    close(tw.grad, np.tensordot(g, x, axes=(lead, lead)))  # summed over every row
    close(tb.grad, g.sum(axis=tuple(lead)))


@by_backend
@given(lt=logits_and_targets(allow_ignored=False), data=st.data())
def test_cross_entropy_custom_ignore_index_and_single_row(bk, lt, data):
    logits, targets = lt
    ignore = int(data.draw(st.sampled_from(list(targets))))  # a real class id as the ignore label
    assume((targets != ignore).any())
    with mg.use_backend(bk):
        (t,) = gc(lambda a: F.cross_entropy(a, targets, ignore_index=ignore), logits)
        close(F.cross_entropy(t, targets, ignore_index=ignore), np_cross_entropy(logits, targets, ignore))
        # a single row (V,) with a scalar target is the same as a batch of one
        gc(lambda a: F.cross_entropy(a, targets[0]), logits[0])
        close(F.cross_entropy(mg.Tensor(logits[0]), targets[0], reduction="none"),
              np_cross_entropy(logits[:1], targets[:1], reduction="none")[0])


def np_smoothed_cross_entropy(logits, targets, eps, ignore_index=-100, reduction="mean"):
    """torch's label smoothing: the target distribution (1 - eps)·onehot + eps/V, rows of (N, V)."""
    V = logits.shape[1]
    logp = np.log(np_softmax(logits))
    keep = targets != ignore_index
    q = (1 - eps) * np.eye(V)[np.where(keep, targets, 0)] + eps / V
    per = np.where(keep, -(q * logp).sum(axis=1), 0.0)
    return {"none": per, "sum": per.sum(), "mean": per.sum() / max(keep.sum(), 1)}[reduction]


@by_backend
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(lt=logits_and_targets(), eps=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_cross_entropy_label_smoothing(bk, reduction, lt, eps):
    logits, targets = lt
    assume(reduction != "mean" or (targets != -100).any())
    with mg.use_backend(bk):
        (t,) = gc(lambda a: F.cross_entropy(a, targets, reduction=reduction, label_smoothing=eps), logits)
        out = F.cross_entropy(t, targets, reduction=reduction, label_smoothing=eps)
    close(out, np_smoothed_cross_entropy(logits, targets, eps, reduction=reduction), tol=1e-12)
    assert not t.grad[targets == -100].any()


@st.composite
def nd_logits_and_targets(draw):
    """torch's layout: logits (N, V, d1, ..., dk) and targets (N, d1, ..., dk), some ignored
    (V >= 2 and one target kept at least, as logits_and_targets)."""
    n, v = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    rest = draw(shapes(min_dims=1, max_dims=2, max_side=3))
    logits = draw(arrays((n, v) + rest, lo=-4.0, hi=4.0))
    targets = draw(int_indices(v, (n,) + rest))
    ignored = np.array(draw(st.lists(st.booleans(), min_size=targets.size, max_size=targets.size)))
    assume(not ignored.all())
    return logits, np.where(ignored.reshape(targets.shape), -100, targets)


@by_backend
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(lt=nd_logits_and_targets(), eps=st.sampled_from([0.0, 0.2]))
def test_cross_entropy_class_axis_1_of_nd_logits(bk, reduction, lt, eps):
    """(N, V, d1, ...) is the (N·d1·..., V) case with the class axis moved last."""
    logits, targets = lt
    assume(reduction != "mean" or (targets != -100).any())
    rows = np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])
    with mg.use_backend(bk):
        (t,) = gc(lambda a: F.cross_entropy(a, targets, reduction=reduction, label_smoothing=eps), logits)
        out = F.cross_entropy(t, targets, reduction=reduction, label_smoothing=eps)
    expected = np_smoothed_cross_entropy(rows, targets.reshape(-1), eps, reduction=reduction)
    close(out, expected.reshape(targets.shape) if reduction == "none" else expected, tol=1e-12)
    assert not np.moveaxis(t.grad, 1, -1)[targets == -100].any()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data())
def test_mse_loss(reduction, data):
    shape = data.draw(shapes())
    x, y = data.draw(arrays(shape)), data.draw(arrays(shape))
    assume(not np.array_equal(x, y))  # at x == y the gradient is identically zero
    tx, ty = gc(lambda a, b: F.mse_loss(a, b, reduction=reduction), x, y)
    ref = (x - y) ** 2
    close(F.mse_loss(tx, ty, reduction=reduction), {"none": ref, "sum": ref.sum(), "mean": ref.mean()}[reduction])
    gc(lambda a: F.mse_loss(a, y, reduction=reduction), x)  # an ndarray target


@by_backend
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_degenerate_losses_have_zero_gradient(bk, reduction):
    """The cases the strategies above leave out, where the gradient is exactly zero whatever the
    input: softmax/log_softmax over an axis of one entry (constant 1 / 0), cross-entropy over one
    class (log_softmax is 0), with every target ignored (sum/none: no row counts; mean is NaN,
    test_cross_entropy_mean_over_no_kept_target_is_nan_with_a_zero_gradient) and mse at x == y."""
    rng = np.random.default_rng(0)

    def grads(fn, *arrays_):
        xs = [mg.Tensor(a, requires_grad=True) for a in arrays_]
        out = fn(*xs)
        out.backward(rng.standard_normal(out.shape))  # a random covector, not a plain .sum()
        return out, [x.grad for x in xs]

    with mg.use_backend(bk):
        for name in ("softmax", "log_softmax"):
            x = rng.standard_normal((3, 1, 2))
            out, (g,) = grads(lambda a: getattr(F, name)(a, axis=1), x)
            close(out, np.ones_like(x) if name == "softmax" else np.zeros_like(x))
            assert g is not None and g.shape == x.shape and not g.any(), name
        one_class = rng.standard_normal((4, 1))
        out, (g,) = grads(lambda a: F.cross_entropy(a, np.zeros(4, int), reduction=reduction), one_class)
        close(out, np.zeros(4) if reduction == "none" else 0.0)
        assert g is not None and not g.any()
        for eps in (0.0, 0.3):
            _, (g,) = grads(lambda a: F.cross_entropy(a, np.zeros(4, int), reduction=reduction,
                                                      label_smoothing=eps), one_class)
            # (1 - eps) + eps / 1 need not round to 1: zero to rounding, not exactly
            assert g is not None and np.abs(g).max() <= 1e-15, (eps, g)
        if reduction != "mean":
            logits = rng.standard_normal((3, 4))
            out, (g,) = grads(lambda a: F.cross_entropy(a, np.full(3, -100), reduction=reduction), logits)
            close(out, np.zeros(3) if reduction == "none" else 0.0)
            assert g is not None and g.shape == logits.shape and not g.any()
            nd = rng.standard_normal((2, 3, 2))
            _, (g,) = grads(lambda a: F.cross_entropy(a, np.full((2, 2), -100), reduction=reduction,
                                                      label_smoothing=0.2), nd)
            assert g is not None and not g.any()
    x = rng.standard_normal((2, 3))
    out, (gx, gy) = grads(lambda a, b: F.mse_loss(a, b, reduction=reduction), x, x.copy())
    close(out, np.zeros_like(x) if reduction == "none" else 0.0)
    assert not gx.any() and not gy.any()


# ================================================================ layer norm
@by_backend
@pytest.mark.parametrize("affine", ["weight_bias", "weight", "none"])
@given(data=st.data(), eps=st.sampled_from([1e-5, 1e-2]))
def test_layer_norm(bk, affine, data, eps):
    lead = data.draw(shapes(max_dims=2, max_side=3))
    c = data.draw(st.integers(2, 5))
    x = data.draw(arrays(lead + (c,), distinct=True))  # distinct: variance well away from 0
    w, b = data.draw(arrays((c,))), data.draw(arrays((c,)))
    args = {"weight_bias": (x, w, b), "weight": (x, w), "none": (x,)}[affine]
    with mg.use_backend(bk):
        ts = gc(lambda *a: F.layer_norm(*a, eps=eps), *args)
        out = F.layer_norm(*ts, eps=eps)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + eps)
    if affine != "none":
        ref = ref * w
    if affine == "weight_bias":
        ref = ref + b
    close(out, ref, tol=1e-10)


# ================================================================ embedding, dropout
@by_backend
@given(data=st.data())
def test_embedding_repeated_indices(bk, data):
    num, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    w = data.draw(arrays((num, dim)))
    idx = data.draw(int_indices(num, data.draw(shapes(min_dims=1, max_dims=2, max_side=5))))
    with mg.use_backend(bk):
        (tw,) = gc(lambda a: F.embedding(idx, a), w)
        close(F.embedding(idx, tw), w[idx])
        tw.grad = None
        F.embedding(idx, tw).backward(np.ones(idx.shape + (dim,)))
    counts = np.bincount(idx.ravel(), minlength=num).astype(float)
    np.testing.assert_array_equal(tw.grad, np.repeat(counts[:, None], dim, axis=1))


@by_backend
@given(x=arrays(shapes(min_dims=1)), p=st.sampled_from([0.1, 0.5, 0.9]), seed=seeds())
def test_dropout_fixed_rng(bk, x, p, seed):
    with mg.use_backend(bk):
        (t,) = gc(lambda a: F.dropout(a, p, True, rng=seed), x)  # same seed -> same mask every call
        out = F.dropout(t, p, True, rng=seed).data
        again = F.dropout(t, p, True, rng=seed).data
    np.testing.assert_array_equal(out, again)
    kept = out != 0
    nz = x != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-12)
    # the gradient is the mask scaled by 1/(1-p): d out / d x for kept elements
    assert not t.grad[nz & ~kept].any()
    # evaluation mode and p=0 are the identity; p=1 drops everything
    assert F.dropout(t, p, training=False) is t
    assert F.dropout(t, 0.0, training=True) is t
    assert not F.dropout(t, 1.0, training=True, rng=seed).data.any()


def test_dropout_keeps_about_1_minus_p_and_preserves_the_mean():
    x = mg.Tensor(np.ones(20000))
    out = F.dropout(x, 0.3, True, rng=0).data
    kept = (out != 0).mean()
    assert abs(kept - 0.7) < 4 * math.sqrt(0.3 * 0.7 / 20000)
    assert abs(out.mean() - 1.0) < 0.05


# ================================================================ attention
@st.composite
def qkv(draw, same_t=False):
    lead = draw(st.sampled_from([(), (1,), (2,), (2, 1), (1, 2)]))
    tk = draw(st.integers(1, 4))
    tq = tk if same_t else draw(st.integers(1, tk))  # Tq <= Tk (a chunk of queries over a cache)
    d, dv = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    q = draw(arrays(lead + (tq, d)))
    k = draw(arrays(lead + (tk, d)))
    v = draw(arrays(lead + (tk, dv)))
    return q, k, v


def np_attention(q, k, v, causal, scale):
    s = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        tq, tk = s.shape[-2:]
        s = np.where(np.tri(tq, tk, tk - tq, dtype=bool), s, -np.inf)  # bottom-right aligned
    return np_softmax(s) @ v


@by_backend
@pytest.mark.parametrize("causal", [False, True])
@given(t=qkv(), scale=st.none() | st.floats(0.2, 2.0))
def test_attention(bk, causal, t, scale):
    q, k, v = t
    with mg.use_backend(bk):
        tq, tk, tv = gc(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal, scale=scale), q, k, v)
        out = F.scaled_dot_product_attention(tq, tk, tv, causal=causal, scale=scale)
    close(out, np_attention(q, k, v, causal, 1 / math.sqrt(q.shape[-1]) if scale is None else scale), tol=1e-12)


@by_backend
@pytest.mark.parametrize("causal", [False, True])
@given(b=st.integers(1, 2), t=st.integers(1, 4), n_head=st.integers(1, 3), hs=st.integers(1, 2),
       scale=st.none() | st.floats(0.2, 2.0), seed=seeds())
def test_qkv_attention_is_split_heads_attention_merge(bk, causal, b, t, n_head, hs, scale, seed):
    """F.qkv_attention(qkv) equals splitting q|k|v into heads, attention, and merging the heads
    (the forward to 1e-12); its one-array backward passes gradcheck on both backends."""
    c = n_head * hs
    x = np.random.default_rng(seed).standard_normal((b, t, 3 * c))
    with mg.use_backend(bk):
        (tx,) = gc(lambda a: F.qkv_attention(a, n_head, causal=causal, scale=scale), x)
        out = F.qkv_attention(tx, n_head, causal=causal, scale=scale)
    q, k, v = (x[:, :, i * c:(i + 1) * c].reshape(b, t, n_head, hs).transpose(0, 2, 1, 3) for i in range(3))
    want = np_attention(q, k, v, causal, 1 / math.sqrt(hs) if scale is None else scale)
    close(out, want.transpose(0, 2, 1, 3).reshape(b, t, c), tol=1e-12)


def test_qkv_attention_rejects_a_width_not_split_into_heads():
    with pytest.raises(ValueError, match=r"qkv_attention: qkv must be \(B, T, 3C\) with C divisible by n_head=4"):
        F.qkv_attention(np.zeros((1, 2, 18), np.float32), 4)
    with pytest.raises(ValueError, match="n_head must be a positive integer"):
        F.qkv_attention(np.zeros((1, 2, 6), np.float32), 0)
    for bk in BACKENDS:  # the same error on both backends (numba used to return empty arrays)
        with mg.use_backend(bk), pytest.raises(ValueError, match="the sequence is empty"):
            F.qkv_attention(np.zeros((1, 0, 6), np.float32), 1)


@by_backend
def test_attention_causal_first_query_sees_only_the_first_key_and_last_sees_all(bk):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 4, 2))
    with mg.use_backend(bk):
        out = F.scaled_dot_product_attention(mg.Tensor(q), mg.Tensor(k), mg.Tensor(v), causal=True).data
        full = F.scaled_dot_product_attention(mg.Tensor(q), mg.Tensor(k), mg.Tensor(v)).data
    np.testing.assert_allclose(out[0, 0], v[0, 0], rtol=1e-12)
    np.testing.assert_allclose(out[0, -1], full[0, -1], rtol=1e-12)
    # a chunk of Tq=2 queries over Tk=4 keys: the chunk's rows are the last rows of the full causal
    with mg.use_backend(bk):
        chunk = F.scaled_dot_product_attention(mg.Tensor(q[:, 2:]), mg.Tensor(k), mg.Tensor(v), causal=True).data
    np.testing.assert_allclose(chunk, out[:, 2:], rtol=1e-12)


# ================================================================ errors name the op and shapes
def test_functional_errors_are_clear():
    x = mg.Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"linear: .*\(2, 3\).*\(4, 5\)"):
        F.linear(x, mg.Tensor(np.zeros((4, 5))))
    with pytest.raises(ValueError, match=r"cross_entropy: expected logits \(N, V\)"):
        F.cross_entropy(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(IndexError, match="cross_entropy: target 3 is out of range for 3 classes"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(TypeError, match="cross_entropy: indices must be integers"):
        F.cross_entropy(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"cross_entropy: .*\(N, V, d1, \.\.\.\).*got \(2, 3, 4\) and \(2, 3\)"):
        F.cross_entropy(mg.Tensor(np.zeros((2, 3, 4))), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"cross_entropy: label_smoothing must be in \[0, 1\], got -0.1"):
        F.cross_entropy(x, np.array([0, 1]), label_smoothing=-0.1)
    with pytest.raises(IndexError, match="embedding: index 7 is out of range for a table of 3 rows"):
        F.embedding(np.array([0, 7]), x.T)
    with pytest.raises(ValueError, match=r"layer_norm: weight has shape \(2,\)"):
        F.layer_norm(x, mg.Tensor(np.ones(2)))
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        F.scaled_dot_product_attention(x, mg.Tensor(np.zeros((2, 4))), x)
    with pytest.raises(ValueError, match="dropout: p must be in"):
        F.dropout(x, 1.5)
    with pytest.raises(ValueError, match="gelu: approximate"):
        F.gelu(x, approximate="erf")
    # these used to end in a NumPy traceback, or (mse_loss) in a silently broadcast result
    with pytest.raises(ValueError, match=r"linear: bias has shape \(5,\) .* must be \(4,\)"):
        F.linear(x, mg.Tensor(np.zeros((4, 3))), mg.Tensor(np.zeros(5)))
    with pytest.raises(ValueError, match=r"embedding: weight must be a 2-D table .*\(3,\)"):
        F.embedding(np.array([0, 1]), mg.Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention: batch axes .* do not broadcast"):
        q = mg.Tensor(np.zeros((2, 3, 4)))
        F.scaled_dot_product_attention(q, np.zeros((2, 5, 4)), np.zeros((3, 5, 4)))
    with pytest.raises(ValueError, match=r"causal with 4 queries but 2 keys.*NaN"):  # was NaN rows
        F.scaled_dot_product_attention(np.zeros((1, 4, 3)), np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), causal=True)
    with pytest.raises(ValueError, match=r"mse_loss: input has shape \(4, 1\) but target has \(4,\)"):
        F.mse_loss(mg.Tensor(np.zeros((4, 1))), np.zeros(4))
    with pytest.raises(ValueError, match="mse_loss: reduction"):
        F.mse_loss(x, np.zeros((2, 3)), reduction="avg")
