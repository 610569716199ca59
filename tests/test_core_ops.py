"""Every Tensor primitive's backward, checked by `minigrad.gradcheck` under hypothesis in float64.

gradcheck compares the tape's vector-Jacobian product for a random covector with central
differences, element by element, so a backward that forgets its upstream gradient, a transpose,
or the sum that undoes broadcasting fails here. Inputs are drawn by tests/strategies.py: small
shapes, broadcastable pairs, values off kinks, and non-contiguous layouts.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minigrad as mg

from strategies import (
    arrays,
    broadcastable_shapes,
    by_backend,
    matmul_shapes,
    close,
    gc,
    int_indices,
    positive_arrays,
    shape_and_axis,
    shapes,
)


# ================================================================ binary ops, broadcasting
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a**b, np.power),
}


@pytest.mark.parametrize("name", list(BINARY))
@given(data=st.data())
def test_binary_ops_broadcast(name, data):
    sa, sb = data.draw(broadcastable_shapes(2))
    a = data.draw(positive_arrays(sa) if name == "pow" else arrays(sa))
    # divisors and exponents away from 0 so the quotient / power is well conditioned
    b = data.draw(positive_arrays(sb, 0.5, 2.0) if name in ("div", "pow") else arrays(sb))
    op, ref = BINARY[name]
    xa, xb = gc(op, a, b)
    close(op(xa, xb), ref(a, b))


@pytest.mark.parametrize("name", list(BINARY))
@given(data=st.data())
def test_binary_ops_with_constants_on_either_side(name, data):
    """Python scalars, NumPy scalars and plain ndarrays on the left and on the right."""
    shape = data.draw(shapes())
    x = data.draw(positive_arrays(shape, 0.5, 2.0))
    kind = data.draw(st.sampled_from(["float", "int", "np_scalar", "array"]))
    if kind == "array":
        c = data.draw(positive_arrays(shape[-1:], 0.5, 2.0))  # broadcasts against x
    else:
        c = data.draw(st.floats(0.5, 2.0))
        c = {"float": c, "int": int(round(c)) or 1, "np_scalar": np.float64(c)}[kind]
    op, ref = BINARY[name]
    gc(lambda t: op(t, c), x)
    gc(lambda t: op(c, t), x)
    close(op(mg.Tensor(x), c), ref(x, c))
    out = op(c, mg.Tensor(x))
    assert isinstance(out, mg.Tensor)  # ndarray (op) Tensor must reach Tensor's reflected op
    close(out, ref(c, x))


@given(x=positive_arrays(shapes()), p=st.sampled_from([2, 3, -1, 0.5, 2.5, -1.5, 0]))
def test_pow_scalar_exponent(x, p):
    (t,) = gc(lambda a: a**p, x)
    close(t**p, x**p)


@given(x=arrays(shapes()))
def test_neg(x):
    gc(lambda a: -a, x)
    close(-mg.Tensor(x), -x)


@given(data=st.data())
def test_maximum_broadcast(data):
    sa, sb = data.draw(broadcastable_shapes(2))
    # a on the quarter grid, b on the grid shifted by 1/8: never equal, never within 1/8
    a = np.round(data.draw(arrays(sa)) * 4) / 4
    b = np.round(data.draw(arrays(sb)) * 4) / 4 + 0.125
    gc(mg.maximum, a, b)
    close(mg.maximum(mg.Tensor(a), mg.Tensor(b)), np.maximum(a, b))


def test_maximum_tie_splits_the_gradient():
    a, b = mg.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True), mg.Tensor(np.array([1.0, 1.0, 4.0]), requires_grad=True)
    mg.maximum(a, b).backward(np.ones(3))
    np.testing.assert_array_equal(a.grad, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(b.grad, [0.5, 0.0, 1.0])


@by_backend  # the numba backend routes batched products to one GEMM or to bmm
@given(data=st.data())
def test_matmul(bk, data):
    sa, sb = data.draw(matmul_shapes())
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    with mg.use_backend(bk):
        xa, xb = gc(lambda u, v: u @ v, a, b)
        close(xa @ xb, a @ b)
        gc(lambda u: u @ b, a)  # ndarray on the right
        gc(lambda v: a @ v, b)  # ndarray on the left (__rmatmul__)


# ================================================================ unary elementwise
UNARY = {
    "exp": (np.exp, dict(lo=-2.0, hi=2.0)),
    "log": (np.log, dict(lo=0.1, hi=3.0)),
    "sqrt": (np.sqrt, dict(lo=0.1, hi=3.0)),
    "tanh": (np.tanh, dict(lo=-3.0, hi=3.0)),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), dict(lo=-6.0, hi=6.0)),
    "relu": (lambda x: np.maximum(x, 0), dict(kinks=(0.0,))),
    "abs": (np.abs, dict(kinks=(0.0,))),
}


@pytest.mark.parametrize("name", list(UNARY))
@given(data=st.data())
def test_unary(name, data):
    ref, kw = UNARY[name]
    x = data.draw(arrays(shapes(), **kw))
    (t,) = gc(lambda a: getattr(a, name)(), x)
    out = getattr(t, name)()
    assert out.shape == x.shape
    np.testing.assert_allclose(out.data, ref(x), rtol=1e-12, atol=1e-15)


@given(data=st.data())
def test_clip(data):
    lo = data.draw(st.none() | st.floats(-1.5, 0.0))
    hi = data.draw(st.none() | st.floats(0.5, 1.5))
    assume(lo is not None or hi is not None)
    kinks = tuple(c for c in (lo, hi) if c is not None)
    x = data.draw(arrays(shapes(), kinks=kinks))
    (t,) = gc(lambda a: a.clip(lo, hi), x)
    close(t.clip(lo, hi), np.clip(x, lo, hi))
    inside = np.ones(x.shape, bool) if lo is None else x > lo
    if hi is not None:
        inside &= x < hi
    np.testing.assert_array_equal(t.grad != 0, inside & (t.grad != 0))  # no grad outside the bounds


@given(data=st.data())
def test_clamp(data):
    lo = data.draw(st.none() | st.floats(-1.5, 0.0))
    hi = data.draw(st.none() | st.floats(0.5, 1.5))
    assume(lo is not None or hi is not None)
    x = data.draw(arrays(shapes(), kinks=tuple(c for c in (lo, hi) if c is not None)))
    (t,) = gc(lambda a: a.clamp(min=lo, max=hi), x)
    close(t.clamp(lo, hi), np.clip(x, lo, hi))


def test_clamp_and_clip_pass_the_gradient_at_a_bound_as_torch_does():
    """At x == bound the clamped value still moves with x on one side: torch passes the gradient."""
    for name in ("clamp", "clip"):
        x = mg.Tensor(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]), requires_grad=True)
        getattr(x, name)(0.0, 1.0).backward(np.full(5, 3.0))
        np.testing.assert_array_equal(x.grad, [0.0, 3.0, 3.0, 3.0, 0.0])
    x = mg.Tensor(np.array([0.0, 1.0, 2.0]), requires_grad=True)
    x.clamp(2.0, 1.0).backward(np.ones(3))  # min > max: every element is max, as in torch
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="clamp: give min, max or both"):
        x.clamp()


@given(x=positive_arrays(shapes()), p=st.sampled_from([2, -1, 0.5, 2.5]), data=st.data())
def test_pow_method(x, p, data):
    (t,) = gc(lambda a: a.pow(p), x)
    close(t.pow(p), x**p)
    e = data.draw(positive_arrays(x.shape, 0.5, 2.0))
    gc(lambda a, b: a.pow(b), x, e)


@given(data=st.data())
def test_t_and_mT(data):
    x = data.draw(arrays(shapes(max_dims=2)))
    (t,) = gc(lambda a: a.t(), x)
    close(t.t(), x.T)
    y = data.draw(arrays(shapes(min_dims=2, max_dims=4, max_side=3)))
    (u,) = gc(lambda a: a.mT, y)
    close(u.mT, np.swapaxes(y, -1, -2))


@given(data=st.data())
def test_flatten(data):
    shape = data.draw(shapes(max_dims=4, max_side=3))
    x = data.draw(arrays(shape))
    nd = max(len(shape), 1)  # a 0-d tensor flattens to (1,), as in torch
    start = data.draw(st.integers(0, nd - 1))
    end = data.draw(st.integers(start, nd - 1))
    start, end = start - data.draw(st.sampled_from([0, nd])), end - data.draw(st.sampled_from([0, nd]))
    s, e = start % nd, end % nd
    expected = x.reshape(shape[:s] + (-1,) + shape[e + 1:]) if shape else x.reshape(1)
    (t,) = gc(lambda a: a.flatten(start, end), x)
    close(t.flatten(start, end), expected)


@given(sa=shape_and_axis(), keepdims=st.booleans(), correction=st.sampled_from([0, 1, 2]), data=st.data())
def test_std(sa, keepdims, correction, data):
    shape, axis = sa
    n = int(np.prod([shape[i] for i in ((axis,) if isinstance(axis, int) else axis or range(len(shape)))]))
    assume(n > correction and n > 1)
    x = data.draw(arrays(shape, distinct=True))  # spread out: the std is far from 0, where sqrt kinks
    (t,) = gc(lambda a: a.std(axis=axis, keepdims=keepdims, correction=correction), x)
    close(t.std(axis, keepdims=keepdims, correction=correction),
          np.std(x, axis=axis, keepdims=keepdims, ddof=correction))


@given(x=arrays(shapes()), data=st.data())
def test_casts(x, data):
    """float64 -> float32 -> float64 round trip: linear, so the finite differences are exact up to
    float32 rounding (hence the looser tolerance); the gradient arrives in float64."""
    w = data.draw(arrays(x.shape, noncontiguous=False)).astype(np.float32)
    xt = mg.Tensor(x, requires_grad=True)
    assert mg.gradcheck(lambda a: (a.float() * w).double(), [xt], eps=1e-2, atol=1e-4, rtol=1e-4)
    assert xt.grad.dtype == np.float64
    assert mg.gradcheck(lambda a: a.to(np.float32).to("float64") * w, [xt], eps=1e-2, atol=1e-4, rtol=1e-4)


# ================================================================ reductions
@pytest.mark.parametrize("name", ["sum", "mean"])
@given(sa=shape_and_axis(min_dims=0), keepdims=st.booleans(), data=st.data())
def test_sum_mean(name, sa, keepdims, data):
    shape, axis = sa
    if len(shape) == 0:
        axis = None
    x = data.draw(arrays(shape))
    (t,) = gc(lambda a: getattr(a, name)(axis=axis, keepdims=keepdims), x)
    close(getattr(t, name)(axis=axis, keepdims=keepdims), getattr(np, name)(x, axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("name", ["max", "min"])
@given(sa=shape_and_axis(), keepdims=st.booleans(), data=st.data())
def test_max_min(name, sa, keepdims, data):
    shape, axis = sa
    x = data.draw(arrays(shape, distinct=True))  # no ties: the max is differentiable
    (t,) = gc(lambda a: getattr(a, name)(axis=axis, keepdims=keepdims), x)
    close(getattr(t, name)(axis=axis, keepdims=keepdims), getattr(np, name)(x, axis=axis, keepdims=keepdims))


def test_max_ties_share_the_gradient():
    x = mg.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([1.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [2.0, 0, 2.0]])


@given(sa=shape_and_axis(), keepdims=st.booleans(), correction=st.sampled_from([0, 1, 2]), data=st.data())
def test_var(sa, keepdims, correction, data):
    shape, axis = sa
    n = int(np.prod([shape[i] for i in ((axis,) if isinstance(axis, int) else axis or range(len(shape)))]))
    assume(n > correction)
    x = data.draw(arrays(shape))
    (t,) = gc(lambda a: a.var(axis=axis, keepdims=keepdims, correction=correction), x)
    close(t.var(axis=axis, keepdims=keepdims, correction=correction),
           np.var(x, axis=axis, keepdims=keepdims, ddof=correction))


@pytest.mark.parametrize("correction", [0, 1])
def test_std_of_a_constant_slice_has_a_zero_gradient_and_the_others_their_formula(correction):
    # through sqrt(var) the chain rule gives 0 * 1/(2*0) = NaN on the constant row; torch
    # defines it as 0. Elsewhere d std / d x_i = (x_i - mean) / (dof * std).
    x = np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0]])
    t = mg.Tensor(x, requires_grad=True)
    out = t.std(axis=1, correction=correction)
    out.sum().backward()
    d = x[1] - x[1].mean()
    assert np.array_equal(t.grad[0], np.zeros(3))
    close(t.grad[1], d / ((3 - correction) * np.sqrt((d * d).sum() / (3 - correction))))
    close(out, np.std(x, axis=1, ddof=correction))


def test_a_zero_exponent_has_a_zero_gradient_also_at_zero():
    # d(x^0)/dx = 0 everywhere; the formula p * x^(p-1) would give 0 * 0^-1 = NaN at x = 0
    x = mg.Tensor(np.array([0.0, 1.0, 2.0]), requires_grad=True)
    (x**0).sum().backward()
    assert np.array_equal(x.grad, np.zeros(3))
    x = mg.Tensor(np.array([0.0, 0.0, 3.0]), requires_grad=True)
    p = mg.Tensor(np.array([0.0, 2.0, 0.0]))
    (x**p).sum().backward()
    assert np.array_equal(x.grad, np.array([0.0, 0.0, 0.0]))  # 2 * 0^1 = 0 in the middle
    x = mg.Tensor(np.array([3.0]), requires_grad=True)
    (x**mg.Tensor(np.array([2.0]))).sum().backward()
    assert np.array_equal(x.grad, np.array([6.0]))


def test_a_numpy_float_exponent_keeps_a_float32_tensor_float32():
    x = mg.Tensor(np.ones(3, np.float32), requires_grad=True)
    for p in (np.float64(2.0), np.sqrt(4.0), np.float32(2.0), 2.0, 2, np.int64(2)):
        y = x**p
        assert y.dtype == np.float32, (type(p), y.dtype)
    y.sum().backward()
    assert x.grad.dtype == np.float32
    assert x.clamp(np.float64(-1), np.float64(1)).dtype == np.float32  # (was float64 too)


@by_backend
@pytest.mark.parametrize("sa, sb", [((3, 0), (0, 5)), ((2, 3, 0), (0, 4)), ((2, 3, 4), (4, 0)),
                                    ((0, 3), (3, 2))])
def test_matmul_with_an_empty_axis_gives_numpys_result_and_gradients(bk, sa, sb):
    a, b = np.ones(sa), np.ones(sb)
    with mg.use_backend(bk):
        ta, tb = mg.Tensor(a, requires_grad=True), mg.Tensor(b, requires_grad=True)
        y = ta @ tb
        (y * 2).sum().backward()
    g = 2 * np.ones((a @ b).shape)
    close(y, a @ b)  # a K of 0 gives zeros, not an empty array
    close(ta.grad, g @ b.T)
    lead = list(range(a.ndim - 1))
    close(tb.grad, np.tensordot(a, g, axes=(lead, lead)))  # summed over every row of a


# ================================================================ shape ops
@given(data=st.data())
def test_reshape(data):
    shape = data.draw(shapes())
    x = data.draw(arrays(shape))
    n = x.size
    target = data.draw(st.sampled_from([(n,), (-1,), (1, n), (n, 1, 1), tuple(reversed(shape)), (-1, 1)]))
    (t,) = gc(lambda a: a.reshape(target), x)
    close(t.reshape(*target), x.reshape(target))
    close(t.view(target), x.reshape(target))


@given(data=st.data())
def test_transpose_permute_T(data):
    shape = data.draw(shapes(min_dims=1))
    x = data.draw(arrays(shape))
    nd = len(shape)
    i, j = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    perm = data.draw(st.permutations(range(nd)))
    (t,) = gc(lambda a: a.transpose(i, j), x)
    close(t.transpose(i, j), np.swapaxes(x, i, j))  # swaps two axes, like torch.transpose
    gc(lambda a: a.permute(*perm), x)
    close(t.permute(perm), np.transpose(x, perm))
    gc(lambda a: a.T, x)
    close(t.T, x.T)
    close(t.transpose(), x.T)


@given(data=st.data())
def test_expand(data):
    shape = data.draw(shapes(max_dims=2, max_side=3))
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    target = lead + tuple(data.draw(st.integers(1, 3)) if s == 1 else s for s in shape)
    x = data.draw(arrays(shape))
    (t,) = gc(lambda a: a.expand(target), x)
    close(t.expand(*target), np.broadcast_to(x, target))
    minus = lead + (-1,) * len(shape)  # -1 keeps a size, as in torch
    close(t.expand(minus), np.broadcast_to(x, lead + shape))


@given(data=st.data())
def test_squeeze_unsqueeze(data):
    shape = data.draw(shapes(max_side=2))
    x = data.draw(arrays(shape))
    nd = len(shape)
    (t,) = gc(lambda a: a.squeeze(), x)
    close(t.squeeze(), np.squeeze(x))
    ones_ = [i for i, s in enumerate(shape) if s == 1]
    if ones_:
        ax = data.draw(st.sampled_from(ones_))
        gc(lambda a: a.squeeze(ax), x)
        close(t.squeeze(ax), np.squeeze(x, ax))
    ax = data.draw(st.integers(-nd - 1, nd))
    gc(lambda a: a.unsqueeze(ax), x)
    close(t.unsqueeze(ax), np.expand_dims(x, ax))


# ================================================================ indexing
@st.composite
def index_for(draw, shape):
    """A basic or advanced index into `shape`: ints, slices (any step), integer arrays with repeats."""
    parts = []
    array_used = False
    for n in shape[: draw(st.integers(1, len(shape)))]:
        kind = draw(st.sampled_from(["int", "slice", "array"] if not array_used else ["int", "slice"]))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            start = draw(st.none() | st.integers(-n, n))
            stop = draw(st.none() | st.integers(-n, n))
            parts.append(slice(start, stop, draw(st.sampled_from([None, 1, 2, -1, -2]))))
        else:
            array_used = True
            parts.append(draw(int_indices(n, draw(shapes(min_dims=1, max_dims=2, max_side=4)))))
    if len(parts) == 1 and draw(st.booleans()):
        return parts[0]  # a bare int / slice / array, not a tuple
    return tuple(parts)


@given(data=st.data())
def test_getitem(data):
    shape = data.draw(shapes(min_dims=1))
    x = data.draw(arrays(shape))
    index = data.draw(index_for(shape))
    (t,) = gc(lambda a: a[index], x)
    close(t[index], x[index])


@given(data=st.data())
def test_getitem_repeated_indices_add_up(data):
    shape = data.draw(shapes(min_dims=1, max_dims=2))
    x = data.draw(arrays(shape))
    idx = data.draw(int_indices(shape[0], (6,)))
    (t,) = gc(lambda a: a[idx], x)
    t.grad = None
    t[idx].backward(np.ones((6,) + shape[1:]))
    counts = np.bincount(idx, minlength=shape[0]).astype(float)
    np.testing.assert_array_equal(t.grad, np.broadcast_to(counts.reshape((-1,) + (1,) * (len(shape) - 1)), shape))
    # a list and a Tensor of indices mean the same as the array
    close(t[list(idx)], x[idx])
    close(t[mg.Tensor(idx)], x[idx])


# ================================================================ cat, stack, where
@given(data=st.data())
def test_cat(data):
    base = data.draw(shapes(min_dims=1, max_dims=3, max_side=3))
    nd = len(base)
    axis = data.draw(st.integers(-nd, nd - 1))
    count = data.draw(st.integers(1, 3))
    shapes_ = [base[: axis % nd] + (data.draw(st.integers(1, 3)),) + base[axis % nd + 1:] for _ in range(count)]
    xs = [data.draw(arrays(s)) for s in shapes_]
    ts = gc(lambda *a: mg.cat(list(a), axis=axis), *xs)
    close(mg.cat(ts, axis=axis), np.concatenate(xs, axis=axis))


@given(data=st.data())
def test_stack(data):
    shape = data.draw(shapes(max_dims=2, max_side=3))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    xs = [data.draw(arrays(shape)) for _ in range(data.draw(st.integers(1, 3)))]
    ts = gc(lambda *a: mg.stack(a, axis=axis), *xs)
    close(mg.stack(ts, axis=axis), np.stack(xs, axis=axis))


@given(data=st.data())
def test_where(data):
    sc, sa, sb = data.draw(broadcastable_shapes(3))
    cond = np.asarray(data.draw(st.lists(st.booleans(), min_size=int(np.prod(sc)), max_size=int(np.prod(sc)))),
                      dtype=bool).reshape(sc)
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    ta, tb = gc(lambda u, v: mg.where(cond, u, v), a, b)
    close(mg.where(mg.Tensor(cond), ta, tb), np.where(cond, a, b))
    gc(lambda u: mg.where(cond, u, 0.5), a)  # a scalar branch


# ================================================================ broadcasting keeps shapes
@given(data=st.data())
def test_broadcast_grads_keep_input_shapes(data):
    """A chain mixing several broadcasting ops: every leaf's grad has exactly the leaf's shape."""
    sa, sb, sc = data.draw(broadcastable_shapes(3))
    a, b, c = (mg.Tensor(data.draw(arrays(s)), requires_grad=True) for s in (sa, sb, sc))
    out = ((a * b - c) / (1.0 + b * b) + mg.maximum(a, c)).sum()
    out.backward()
    for t, s in ((a, sa), (b, sb), (c, sc)):
        assert t.grad.shape == s


@given(x=arrays(shapes(min_dims=2), noncontiguous=True), data=st.data())
def test_noncontiguous_inputs_match_contiguous(x, data):
    """The same values in a strided layout give the same outputs and gradients."""
    xc = np.ascontiguousarray(x)
    v = data.draw(arrays(x.shape[:-1], noncontiguous=False))
    outs = []
    for arr in (x, xc):
        t = mg.Tensor(arr, requires_grad=True)
        y = (t.exp() * t).sum(axis=-1) * v + (t.T * t.T).sum() + t[..., 0]
        y.sum().backward()
        outs.append((y.data, t.grad))
    # equal up to summation order (NumPy may add a strided axis in another order)
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-13, atol=1e-13)
