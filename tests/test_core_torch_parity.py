"""minigrad's names behave like their PyTorch namesakes: forward values and gradients of every
Tensor op and every `minigrad.functional` op agree with torch in float64, to round-off, on the
same inputs (drawn by hypothesis) and the same random upstream covector.

Needs torch (the `bench` extra); without it this module is skipped. Dropout is not compared:
the two libraries draw different masks (its semantics are tested in test_core_functional.py).
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

torch = pytest.importorskip("torch", reason="torch (the `bench` extra) is needed for the parity tests")
import torch.nn.functional as TF  # noqa: E402

import minigrad as mg  # noqa: E402
import minigrad.functional as F  # noqa: E402

from strategies import (arrays, broadcastable_shapes, int_indices, matmul_shapes,  # noqa: E402
                        positive_arrays, shape_and_axis, shapes, torch_parity)
torch.set_num_threads(1)  # small tensors; leave the other core to the other tests
RTOL, ATOL = 1e-10, 1e-12
# A cross-check, not the proof (gradcheck is): a third of the profile's examples keeps CI quick.
# The fused ops run on the default backend; test_core_functional.py gradchecks every backend.
parity_settings = settings(max_examples=max(8, settings().max_examples // 3))


# ================================================================ elementwise binary
BINARY = {
    "add": (lambda a, b: a + b, torch.add),
    "sub": (lambda a, b: a - b, torch.sub),
    "mul": (lambda a, b: a * b, torch.mul),
    "div": (lambda a, b: a / b, torch.div),
    "pow": (lambda a, b: a**b, torch.pow),
    "maximum": (mg.maximum, torch.maximum),
}


@pytest.mark.parametrize("name", list(BINARY))
@parity_settings
@given(data=st.data())
def test_binary(name, data):
    sa, sb = data.draw(broadcastable_shapes(2))
    if name == "maximum":  # interleaved grids: never a tie
        a = np.round(data.draw(arrays(sa)) * 4) / 4
        b = np.round(data.draw(arrays(sb)) * 4) / 4 + 0.125
    else:
        a = data.draw(positive_arrays(sa) if name == "pow" else arrays(sa))
        b = data.draw(positive_arrays(sb, 0.5, 2.0) if name in ("div", "pow") else arrays(sb))
    torch_parity(*BINARY[name], a, b)


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow"])
@parity_settings
@given(x=positive_arrays(shapes(), 0.5, 2.0), c=st.floats(0.5, 2.0))
def test_scalars_on_both_sides(name, x, c):
    op = BINARY[name][0]
    torch_parity(lambda t: op(t, c), lambda t: op(t, c), x)
    torch_parity(lambda t: op(c, t), lambda t: op(c, t), x)


@parity_settings
@given(x=positive_arrays(shapes()), p=st.sampled_from([2, 3, -1, 0.5, 2.5, -1.5]))
def test_pow_scalar(x, p):
    torch_parity(lambda t: t**p, lambda t: t**p, x)


@parity_settings
@given(data=st.data())
def test_matmul(data):
    sa, sb = data.draw(matmul_shapes())
    torch_parity(lambda a, b: a @ b, torch.matmul, data.draw(arrays(sa)), data.draw(arrays(sb)))


# ================================================================ unary
UNARY = {
    "neg": (lambda t: -t, torch.neg, {}),
    "exp": (lambda t: t.exp(), torch.exp, {}),
    "log": (lambda t: t.log(), torch.log, dict(lo=0.1, hi=3.0)),
    "sqrt": (lambda t: t.sqrt(), torch.sqrt, dict(lo=0.1, hi=3.0)),
    "tanh": (lambda t: t.tanh(), torch.tanh, dict(lo=-3.0, hi=3.0)),
    "sigmoid": (lambda t: t.sigmoid(), torch.sigmoid, dict(lo=-6.0, hi=6.0)),
    "relu": (lambda t: t.relu(), torch.relu, dict(kinks=(0.0,))),
    "abs": (lambda t: t.abs(), torch.abs, dict(kinks=(0.0,))),
}


@pytest.mark.parametrize("name", list(UNARY))
@parity_settings
@given(data=st.data())
def test_unary(name, data):
    f, tf, kw = UNARY[name]
    torch_parity(f, tf, data.draw(arrays(shapes(), **kw)))


@parity_settings
@given(data=st.data())
def test_clip(data):
    lo, hi = data.draw(st.floats(-1.5, 0.0)), data.draw(st.floats(0.5, 1.5))
    which = data.draw(st.sampled_from(["both", "min", "max"]))
    lo, hi = (lo, hi) if which == "both" else (lo, None) if which == "min" else (None, hi)
    x = data.draw(arrays(shapes(), kinks=tuple(c for c in (lo, hi) if c is not None)))
    torch_parity(lambda t: t.clip(lo, hi), lambda t: torch.clamp(t, lo, hi), x)


# ================================================================ reductions
def _dims(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return (axis,) if isinstance(axis, int) else tuple(axis)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@parity_settings
@given(sa=shape_and_axis(), keepdims=st.booleans(), data=st.data())
def test_reductions(name, sa, keepdims, data):
    shape, axis = sa
    x = data.draw(arrays(shape, distinct=name in ("max", "min")))
    tname = {"max": "amax", "min": "amin"}.get(name, name)
    torch_parity(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims),
           lambda t: getattr(torch, tname)(t, dim=_dims(axis, t.ndim), keepdim=keepdims), x)


@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_ties_split_like_torch_amax(name):
    x = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 2.0, 2.0, -4.0]]) * (1 if name == "max" else -1)
    tname = {"max": "amax", "min": "amin"}[name]
    for axis in (None, 0, 1):
        torch_parity(lambda t: getattr(t, name)(axis=axis),
               lambda t: getattr(torch, tname)(t, dim=_dims(axis, 2)), x)


@parity_settings
@given(sa=shape_and_axis(), keepdims=st.booleans(), correction=st.sampled_from([0, 1, 2]), data=st.data())
def test_var(sa, keepdims, correction, data):
    shape, axis = sa
    assume(int(np.prod([shape[i] for i in _dims(axis, len(shape))])) > correction)
    torch_parity(lambda t: t.var(axis=axis, keepdims=keepdims, correction=correction),
           lambda t: torch.var(t, dim=_dims(axis, t.ndim), correction=correction, keepdim=keepdims),
           data.draw(arrays(shape)))


@parity_settings
@given(sa=shape_and_axis(), keepdims=st.booleans(), data=st.data())
def test_std(sa, keepdims, data):
    shape, axis = sa
    assume(int(np.prod([shape[i] for i in _dims(axis, len(shape))])) > 1)
    x = data.draw(arrays(shape, distinct=True))
    unbiased = data.draw(st.booleans())
    torch_parity(lambda t: t.std(dim=axis, unbiased=unbiased, keepdim=keepdims),
           lambda t: torch.std(t, dim=_dims(axis, t.ndim), unbiased=unbiased, keepdim=keepdims), x)


@parity_settings
@given(data=st.data())
def test_clamp_on_and_off_the_bounds(data):
    """Values on the bounds too: torch passes the gradient at x == min and x == max."""
    lo, hi = data.draw(st.sampled_from([(-0.5, 0.5), (0.0, None), (None, 1.0), (1.0, -1.0)]))
    shape = data.draw(shapes())
    x = np.round(data.draw(arrays(shape)) * 2) / 2  # a grid holding both bounds
    torch_parity(lambda t: t.clamp(min=lo, max=hi), lambda t: torch.clamp(t, min=lo, max=hi), x)


# ================================================================ shapes
@parity_settings
@given(data=st.data())
def test_shape_ops(data):
    shape = data.draw(shapes(min_dims=1))
    x = data.draw(arrays(shape))
    nd = len(shape)
    i, j = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    perm = tuple(data.draw(st.permutations(range(nd))))
    torch_parity(lambda t: t.transpose(i, j), lambda t: torch.transpose(t, i, j), x)  # both swap two axes
    torch_parity(lambda t: t.permute(*perm), lambda t: t.permute(*perm), x)
    torch_parity(lambda t: t.T, lambda t: t.permute(*reversed(range(nd))), x)
    torch_parity(lambda t: t.reshape(-1, 1), lambda t: t.reshape(-1, 1), x)
    torch_parity(lambda t: t.reshape(tuple(reversed(shape))), lambda t: t.reshape(tuple(reversed(shape))), x)
    torch_parity(lambda t: t.squeeze(), lambda t: t.squeeze(), x)
    ax = data.draw(st.integers(-nd - 1, nd))
    torch_parity(lambda t: t.unsqueeze(ax), lambda t: t.unsqueeze(ax), x)
    target = (2,) + tuple(3 if s == 1 else s for s in shape)
    torch_parity(lambda t: t.expand(*target), lambda t: t.expand(*target), x)
    torch_parity(lambda t: t.expand(2, *([-1] * nd)), lambda t: t.expand(2, *([-1] * nd)), x)


@parity_settings
@given(data=st.data())
def test_torch_named_shape_ops(data):
    shape = data.draw(shapes(min_dims=2, max_dims=4, max_side=3))
    x = data.draw(arrays(shape))
    nd = len(shape)
    torch_parity(lambda t: t.mT, lambda t: t.mT, x)
    torch_parity(lambda t: t.flatten(), lambda t: t.flatten(), x)
    start = data.draw(st.integers(-nd, nd - 1))
    end = data.draw(st.integers(start % nd, nd - 1))
    torch_parity(lambda t: t.flatten(start, end), lambda t: t.flatten(start, end), x)
    matrix = (0,) * (nd - 2)  # the first matrix of the batch
    torch_parity(lambda t: t[matrix].t(), lambda t: t[matrix].t(), x)
    torch_parity(lambda t: t.float().double(), lambda t: t.float().double(), x)  # both round to nearest


@st.composite
def torch_index(draw, shape):
    """ints, slices with positive steps (torch has no negative steps), one integer array."""
    parts, used = [], False
    for n in shape[: draw(st.integers(1, len(shape)))]:
        kind = draw(st.sampled_from(["int", "slice"] + ([] if used else ["array"])))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            parts.append(slice(draw(st.none() | st.integers(-n, n)), draw(st.none() | st.integers(-n, n)),
                               draw(st.sampled_from([None, 1, 2]))))
        else:
            used = True
            parts.append(draw(int_indices(n, draw(shapes(min_dims=1, max_dims=2)))))
    return tuple(parts)


@parity_settings
@given(data=st.data())
def test_getitem(data):
    shape = data.draw(shapes(min_dims=1))
    index = data.draw(torch_index(shape))
    tindex = tuple(torch.from_numpy(i) if isinstance(i, np.ndarray) else i for i in index)
    x = data.draw(arrays(shape))
    assume(x[index].size > 0)
    torch_parity(lambda t: t[index], lambda t: t[tindex], x)


@parity_settings
@given(data=st.data())
def test_cat_stack_where(data):
    base = data.draw(shapes(min_dims=1, max_dims=3, max_side=3))
    nd = len(base)
    axis = data.draw(st.integers(-nd, nd - 1))
    s2 = base[: axis % nd] + (data.draw(st.integers(1, 3)),) + base[axis % nd + 1:]
    a, b, c = data.draw(arrays(base)), data.draw(arrays(s2)), data.draw(arrays(base))
    torch_parity(lambda u, v: mg.cat([u, v], axis=axis), lambda u, v: torch.cat([u, v], dim=axis), a, b)
    sax = data.draw(st.integers(-nd - 1, nd))
    torch_parity(lambda u, v: mg.stack([u, v], axis=sax), lambda u, v: torch.stack([u, v], dim=sax), a, c)
    cond = a > c
    torch_parity(lambda u, v: mg.where(cond, u, v), lambda u, v: torch.where(torch.from_numpy(cond), u, v), a, c)


# ================================================================ functional
@parity_settings
@given(data=st.data(), bias=st.booleans())
def test_linear(data, bias):
    lead = data.draw(shapes(max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    arrs = [data.draw(arrays(lead + (n_in,))), data.draw(arrays((n_out, n_in)))]
    if bias:
        arrs.append(data.draw(arrays((n_out,))))
    torch_parity(F.linear, TF.linear, *arrs)


@pytest.mark.parametrize("name", ["relu", "gelu_tanh", "gelu_none", "softmax", "log_softmax"])
@parity_settings
@given(data=st.data())
def test_activations(name, data):
    shape = data.draw(shapes(min_dims=1))
    x = data.draw(arrays(shape, lo=-4.0, hi=4.0, kinks=(0.0,) if name == "relu" else ()))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    fns = {
        "relu": (F.relu, TF.relu),
        "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"), lambda t: TF.gelu(t, approximate="tanh")),
        "gelu_none": (lambda t: F.gelu(t, approximate="none"), lambda t: TF.gelu(t, approximate="none")),
        "softmax": (lambda t: F.softmax(t, axis=axis), lambda t: TF.softmax(t, dim=axis)),
        "log_softmax": (lambda t: F.log_softmax(t, axis=axis), lambda t: TF.log_softmax(t, dim=axis)),
    }
    torch_parity(*fns[name], x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@parity_settings
@given(data=st.data(), ignore_index=st.sampled_from([-100, 0, 2]))
def test_cross_entropy(reduction, data, ignore_index):
    n, v = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    logits = data.draw(arrays((n, v), lo=-4.0, hi=4.0))
    targets = data.draw(int_indices(v, (n,)))
    if ignore_index == -100:
        targets = np.where(np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))), -100, targets)
    assume(reduction != "mean" or (targets != ignore_index).any())
    tt = torch.from_numpy(targets)
    torch_parity(lambda t: F.cross_entropy(t, targets, ignore_index=ignore_index, reduction=reduction),
           lambda t: TF.cross_entropy(t, tt, ignore_index=ignore_index, reduction=reduction), logits)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@parity_settings
@given(data=st.data(), label_smoothing=st.sampled_from([0.0, 0.1, 1.0]))
def test_cross_entropy_nd_and_label_smoothing(reduction, data, label_smoothing):
    """torch's layouts (N, C), (C,) and (N, C, d1, ...) with the class axis 1."""
    n, c = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    rest = data.draw(st.sampled_from([None, (), (2,), (3, 2)]))
    lshape, tshape = ((c,), ()) if rest is None else ((n, c) + rest, (n,) + rest)
    logits = data.draw(arrays(lshape, lo=-4.0, hi=4.0))
    targets = data.draw(int_indices(c, tshape))
    if targets.size > 1:
        targets.flat[:: data.draw(st.integers(2, 3))] = -100
    assume(reduction != "mean" or (targets != -100).any())
    tt = torch.from_numpy(targets)
    torch_parity(lambda t: F.cross_entropy(t, targets, reduction=reduction, label_smoothing=label_smoothing),
           lambda t: TF.cross_entropy(t, tt, reduction=reduction, label_smoothing=label_smoothing), logits)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@parity_settings
@given(data=st.data())
def test_mse_loss(reduction, data):
    shape = data.draw(shapes())
    torch_parity(lambda a, b: F.mse_loss(a, b, reduction=reduction),
           lambda a, b: TF.mse_loss(a, b, reduction=reduction),
           data.draw(arrays(shape)), data.draw(arrays(shape)))


@pytest.mark.parametrize("affine", ["weight_bias", "weight", "none"])
@parity_settings
@given(data=st.data(), eps=st.sampled_from([1e-5, 1e-2]))
def test_layer_norm(affine, data, eps):
    lead = data.draw(shapes(max_dims=2, max_side=3))
    c = data.draw(st.integers(2, 5))
    arrs = [data.draw(arrays(lead + (c,), distinct=True))]
    arrs += [data.draw(arrays((c,))) for _ in range({"weight_bias": 2, "weight": 1, "none": 0}[affine])]
    torch_parity(lambda *a: F.layer_norm(*a, eps=eps), lambda x, *wb: TF.layer_norm(x, (c,), *wb, eps=eps), *arrs)


@parity_settings
@given(data=st.data())
def test_embedding(data):
    num, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    idx = data.draw(int_indices(num, data.draw(shapes(min_dims=1, max_dims=2, max_side=5))))
    ti = torch.from_numpy(idx)
    torch_parity(lambda w: F.embedding(idx, w), lambda w: TF.embedding(ti, w), data.draw(arrays((num, dim))))


@pytest.mark.parametrize("causal", [False, True])
@parity_settings
@given(data=st.data(), scale=st.none() | st.floats(0.2, 2.0))
def test_attention(causal, data, scale):
    lead = data.draw(st.sampled_from([(1,), (2,), (2, 1), (1, 2)]))
    tk = data.draw(st.integers(1, 4))
    tq = tk if causal else data.draw(st.integers(1, tk))  # torch's is_causal is top-left aligned: Tq == Tk
    d, dv = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    q, k, v = (data.draw(arrays(lead + s)) for s in ((tq, d), (tk, d), (tk, dv)))
    torch_parity(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal, scale=scale),
           lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, is_causal=causal, scale=scale), q, k, v)


def test_modules_match_torch_modules():
    """nn.Linear / LayerNorm / Embedding with the same weights compute what torch.nn computes."""
    rng = np.random.default_rng(0)
    lin = mg.nn.Linear(4, 3, dtype=np.float64, rng=rng)
    tlin = torch.nn.Linear(4, 3, dtype=torch.float64)
    tlin.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
    x = rng.standard_normal((2, 4))
    np.testing.assert_allclose(lin(x).data, tlin(torch.from_numpy(x)).detach().numpy(), rtol=RTOL, atol=ATOL)
    assert [n for n, _ in lin.named_parameters()] == [n for n, _ in tlin.named_parameters()]
    ln = mg.nn.LayerNorm(4, dtype=np.float64)
    tln = torch.nn.LayerNorm(4, dtype=torch.float64)
    assert [n for n, _ in ln.named_parameters()] == [n for n, _ in tln.named_parameters()]
    np.testing.assert_allclose(ln(x).data, tln(torch.from_numpy(x)).detach().numpy(), rtol=RTOL, atol=ATOL)
