"""What a PyTorch user types works in minigrad and means what it means in torch: `dim=`/`keepdim=`,
`t.size()`, `.t()`, `.mT`, `.to()`, `float(t)`, comparisons, `+=` under `no_grad`, `nn.ReLU`,
`nn.CrossEntropyLoss`, `Module.apply`, `manual_seed`, `zeros_like`, `arange`.

Results are compared with torch in float64 where torch is installed. The gradients of the new
differentiable ops are proven by gradcheck in test_core_ops.py / test_core_functional.py and
compared with torch's in test_core_torch_parity.py.
"""
import itertools
import operator

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad import nn

from strategies import arrays, broadcastable_shapes, shape_and_axis, shapes

try:
    import torch
except ImportError:  # the comparisons with torch are skipped; the rest runs
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (the `bench` extra) is needed to compare with torch")
RTOL, ATOL = 1e-10, 1e-12


def T(x, requires_grad=False):
    """A float64 torch copy of an array or Tensor."""
    data = x.data if isinstance(x, mg.Tensor) else x
    return torch.tensor(np.array(data), dtype=torch.float64, requires_grad=requires_grad)


def same(ours, theirs):
    """Same shape and values (to round-off) as a torch result."""
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours.data, theirs, rtol=RTOL, atol=ATOL)


# ================================================================ dim= and keepdim=
# name -> (minigrad call with torch's keywords, torch call); torch's max/min over dims is amax/amin
REDUCTIONS = {
    "sum": (lambda t, d, k: t.sum(dim=d, keepdim=k), lambda t, d, k: t.sum(dim=d, keepdim=k)),
    "mean": (lambda t, d, k: t.mean(dim=d, keepdim=k), lambda t, d, k: t.mean(dim=d, keepdim=k)),
    "max": (lambda t, d, k: t.max(dim=d, keepdim=k), lambda t, d, k: t.amax(dim=d, keepdim=k)),
    "min": (lambda t, d, k: t.min(dim=d, keepdim=k), lambda t, d, k: t.amin(dim=d, keepdim=k)),
    "var": (lambda t, d, k: t.var(dim=d, keepdim=k), lambda t, d, k: t.var(dim=d, keepdim=k)),
    "std": (lambda t, d, k: t.std(dim=d, keepdim=k), lambda t, d, k: t.std(dim=d, keepdim=k)),
    "argmax": (lambda t, d, k: t.argmax(dim=d, keepdim=k), lambda t, d, k: t.argmax(dim=d, keepdim=k)),
    "argmin": (lambda t, d, k: t.argmin(dim=d, keepdim=k), lambda t, d, k: t.argmin(dim=d, keepdim=k)),
}


@needs_torch
@pytest.mark.parametrize("name", list(REDUCTIONS))
@given(sa=shape_and_axis(multi=False), keepdim=st.booleans(), data=st.data())
def test_reductions_take_dim_and_keepdim_as_torch_does(name, sa, keepdim, data):
    shape, dim = sa
    x = data.draw(arrays(shape, distinct=True))  # no ties: argmax is unique
    n = x.size if dim is None else shape[dim]
    assume(n > 1 or name not in ("var", "std"))  # one element has no unbiased variance
    ours, theirs = REDUCTIONS[name]
    out, ref = ours(mg.Tensor(x), dim, keepdim), theirs(T(x), dim, keepdim)
    if name.startswith("arg"):
        assert out.dtype == np.int64 and not out.requires_grad
        np.testing.assert_array_equal(out.data, ref.numpy())
    else:
        same(out, ref)
    # the NumPy spelling is the same call
    numpy_spelling = getattr(mg.Tensor(x), name)(axis=dim, keepdims=keepdim)
    np.testing.assert_array_equal(numpy_spelling.data, out.data)


@needs_torch
@given(data=st.data())
def test_shape_functions_take_dim_as_torch_does(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3, max_side=3))
    x, y = data.draw(arrays(shape)), data.draw(arrays(shape))
    nd = len(shape)
    d = data.draw(st.integers(-nd, nd - 1))
    same(F.softmax(mg.Tensor(x), dim=d), torch.softmax(T(x), dim=d))
    same(F.log_softmax(mg.Tensor(x), dim=d), torch.log_softmax(T(x), dim=d))
    same(mg.cat([mg.Tensor(x), mg.Tensor(y)], dim=d), torch.cat([T(x), T(y)], dim=d))
    s = data.draw(st.integers(-nd - 1, nd))
    same(mg.stack([mg.Tensor(x), mg.Tensor(y)], dim=s), torch.stack([T(x), T(y)], dim=s))
    same(mg.Tensor(x).unsqueeze(dim=s), T(x).unsqueeze(dim=s))
    same(mg.Tensor(x).unsqueeze(dim=s).squeeze(dim=s), T(x))


BOTH_SPELLINGS = {
    "sum": lambda t: t.sum(axis=0, dim=0),
    "mean keepdims": lambda t: t.mean(keepdims=True, keepdim=True),
    "max": lambda t: t.max(axis=1, dim=1),
    "min": lambda t: t.min(axis=1, dim=1),
    "var": lambda t: t.var(axis=1, dim=1),
    "std": lambda t: t.std(keepdims=False, keepdim=False),
    "argmax": lambda t: t.argmax(axis=0, dim=0),
    "argmin": lambda t: t.argmin(axis=0, dim=0),
    "all": lambda t: (t > 0).all(axis=0, dim=0),
    "any": lambda t: (t > 0).any(axis=0, dim=0),
    "squeeze": lambda t: t.squeeze(axis=0, dim=0),
    "unsqueeze": lambda t: t.unsqueeze(axis=0, dim=0),
    "softmax": lambda t: F.softmax(t, axis=0, dim=0),
    "log_softmax": lambda t: F.log_softmax(t, axis=0, dim=0),
    "cat": lambda t: mg.cat([t, t], axis=0, dim=0),
    "stack": lambda t: mg.stack([t, t], axis=0, dim=0),
}


@pytest.mark.parametrize("name", list(BOTH_SPELLINGS))
def test_giving_both_spellings_of_an_argument_is_a_type_error(name):
    t = mg.tensor(np.ones((1, 3)))
    with pytest.raises(TypeError, match=r"both (axis|keepdims)= and (dim|keepdim)="):
        BOTH_SPELLINGS[name](t)


def test_std_and_var_take_unbiased_or_correction_but_not_both():
    x = np.array([[1.0, 2.0, 4.0], [0.0, -1.0, 3.0]])
    t = mg.Tensor(x)
    np.testing.assert_allclose(t.std(dim=1, unbiased=False).data, x.std(axis=1), rtol=1e-14)
    np.testing.assert_allclose(t.std(dim=1, correction=0).data, x.std(axis=1), rtol=1e-14)
    np.testing.assert_allclose(t.var(unbiased=True).data, x.var(ddof=1), rtol=1e-14)
    np.testing.assert_allclose(t.std().data, x.std(ddof=1), rtol=1e-14)  # unbiased by default, as torch
    with pytest.raises(TypeError, match="correction= or unbiased="):
        t.std(1, unbiased=True, correction=1)
    with pytest.raises(TypeError):  # torch's positional (dim, unbiased) is not read as keepdims
        t.var(1, True)


# ================================================================ size, t, mT, flatten, casts
def test_size_called_is_torchs_size_and_uncalled_numpys_count():
    t = mg.zeros(2, 3, 4)
    assert t.size() == (2, 3, 4) and isinstance(t.size(), tuple)
    assert t.size(0) == 2 and t.size(-1) == 4 and t.size(dim=1) == 3
    assert t.size == 24 == t.numel()  # NumPy's a.size, which existing code reads as an int
    assert mg.tensor(5.0).size() == () and mg.tensor(5.0).numel() == 1
    with pytest.raises(IndexError, match=r"dim 3 is out of range for shape \(2, 3, 4\)"):
        t.size(3)
    if torch is not None:
        assert t.size() == tuple(torch.zeros(2, 3, 4).size())


@needs_torch
def test_t_mT_and_flatten_match_torch():
    x = np.arange(24.0).reshape(2, 3, 4)
    same(mg.Tensor(x[0]).t(), T(x[0]).t())
    same(mg.Tensor(x[0, 0]).t(), T(x[0, 0]).t())  # 1-D: unchanged, as torch
    same(mg.Tensor(x).mT, T(x).mT)
    for args in [(), (1,), (0, 1), (-2, -1), (1, 1), (0, -1)]:
        same(mg.Tensor(x).flatten(*args), T(x).flatten(*args))
    same(mg.Tensor(x).flatten(start_dim=1, end_dim=2), T(x).flatten(start_dim=1, end_dim=2))
    same(mg.tensor(3.0).flatten(), torch.tensor(3.0).flatten())  # 0-d -> (1,)


def test_t_mT_flatten_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"t: .*<= 2 dimensions.*\(2, 3, 4\).*mT"):
        mg.zeros(2, 3, 4).t()
    with pytest.raises(ValueError, match=r"mT: .*at least 2 dimensions.*\(3,\)"):
        mg.zeros(3).mT
    with pytest.raises(ValueError, match=r"flatten: start_dim 2 is after end_dim 1.*\(2, 3, 4\)"):
        mg.zeros(2, 3, 4).flatten(2, 1)
    with pytest.raises(ValueError, match=r"flatten: end_dim 3 is out of range.*\(2, 3, 4\)"):
        mg.zeros(2, 3, 4).flatten(0, 3)


def test_casts_are_differentiable_and_cast_the_gradient_back():
    x = mg.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)  # float64
    y = x.float()
    assert y.dtype == np.float32 and y.requires_grad
    (y * np.float32(2.0)).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])
    w = mg.Tensor(np.ones(3, np.float32), requires_grad=True)
    (w.double() * x).sum().backward()
    assert w.grad.dtype == np.float32
    np.testing.assert_array_equal(w.grad, [1.0, 2.0, 3.0])
    assert x.to(np.float64) is x and x.double() is x  # already that dtype: itself, as torch
    assert x.to("float32").dtype == np.float32 and x.to(np.dtype("float16")).dtype == np.float16
    assert x.to("cpu") is x  # minigrad runs on the CPU only
    i = x.to(np.int64)  # an integer copy has no gradient, as in torch
    assert i.dtype == np.int64 and not i.requires_grad
    with pytest.raises(TypeError, match="to: .*dtype.*'cuda'"):
        x.to("cuda")


def test_python_scalars_from_one_element_tensors():
    assert float(mg.tensor([[2.5]])) == 2.5 and isinstance(float(mg.tensor(2.5)), float)
    assert int(mg.tensor(7)) == 7 and int(mg.tensor(7.9)) == 7
    assert bool(mg.tensor(1.0)) is True and bool(mg.tensor([0.0])) is False
    with pytest.raises(ValueError, match=r"float\(\): .*one-element.*shape \(2, 3\)"):
        float(mg.zeros(2, 3))
    with pytest.raises(ValueError, match=r"int\(\): .*shape \(2,\)"):
        int(mg.zeros(2))
    with pytest.raises(ValueError, match=r"item\(\): .*shape \(0,\)"):
        mg.zeros(0).item()
    with pytest.raises(RuntimeError, match=r"ambiguous.*shape \(2,\).*\.all\(\)"):
        bool(mg.zeros(2))


# ================================================================ comparisons
COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
               ">": operator.gt, ">=": operator.ge}


@pytest.mark.parametrize("op", list(COMPARISONS))
@given(data=st.data())
def test_comparisons_are_elementwise_boolean_tensors_without_grad(op, data):
    f = COMPARISONS[op]
    sa, sb = data.draw(broadcastable_shapes(2))
    # on a coarse grid, so that equal elements are common
    a, b = np.round(data.draw(arrays(sa)) * 2) / 2, np.round(data.draw(arrays(sb)) * 2) / 2
    x = mg.Tensor(a, requires_grad=True)
    out = f(x, mg.Tensor(b))
    assert isinstance(out, mg.Tensor) and out.dtype == bool and not out.requires_grad
    np.testing.assert_array_equal(out.data, f(a, b))
    for left, right in [(x, 0.5), (0.5, x), (x, b), (b, x), (np.float64(0.5), x)]:
        res = f(left, right)
        assert isinstance(res, mg.Tensor), (type(left), type(right))
        plain = [v.data if isinstance(v, mg.Tensor) else v for v in (left, right)]
        np.testing.assert_array_equal(res.data, f(*plain))
    if torch is not None:
        np.testing.assert_array_equal(out.data, f(T(a), T(b)).numpy())


def test_comparison_of_shapes_that_do_not_broadcast_names_both():
    with pytest.raises(ValueError, match=r"<: shapes \(2,\) and \(3,\) do not broadcast"):
        mg.zeros(2) < mg.zeros(3)


def test_tensors_stay_hashable_by_identity():
    a, b = mg.tensor([1.0, 2.0]), mg.tensor([1.0, 2.0])
    d = {a: "a", b: "b"}
    assert d[a] == "a" and d[b] == "b" and len({a, b}) == 2
    assert a in {a} and b not in {a}
    m = nn.Linear(2, 2)
    assert m.weight in set(m.parameters()) and m.bias in {p: 0 for p in m.parameters()}
    assert [p is m.weight for p in m.parameters()] == [True, False]
    assert (a == None) is False and (a != None) is True  # noqa: E711 -- as torch
    assert (a == b).all().item() and not (a != b).any().item()
    with pytest.raises(RuntimeError, match="ambiguous"):
        if a == b:  # a comparison is elementwise: say .all() or .any()
            pass


# ================================================================ in-place +=, -=, *=, /=
INPLACE = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv}


@pytest.mark.parametrize("op", list(INPLACE))
def test_inplace_under_no_grad_updates_a_parameter_in_place(op):
    lin = nn.Linear(3, 2, dtype=np.float64, rng=0)
    w, storage = lin.weight, lin.weight.data
    before = storage.copy()
    other = np.linspace(0.5, 1.5, 6).reshape(2, 3)
    with mg.no_grad():
        result = INPLACE[op](w, mg.Tensor(other))
    assert result is w and lin.weight is w and w.data is storage  # the same Parameter and array
    np.testing.assert_allclose(storage, INPLACE[op](before.copy(), other), rtol=1e-15)
    assert w.requires_grad and w.is_leaf


@needs_torch
def test_manual_sgd_with_inplace_updates_matches_torch():
    """The loop a torch user writes: forward, backward, `p -= lr * p.grad` under no_grad."""
    rng = np.random.default_rng(0)
    lin = nn.Linear(3, 2, dtype=np.float64, rng=rng)
    tlin = torch.nn.Linear(3, 2, dtype=torch.float64)
    tlin.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    for _ in range(3):
        F.mse_loss(lin(x), y).backward()
        torch.nn.functional.mse_loss(tlin(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        with mg.no_grad():
            for p in lin.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        with torch.no_grad():
            for p in tlin.parameters():
                p -= 0.1 * p.grad
                p.grad = None
    for (name, p), (tname, tp) in zip(lin.named_parameters(), tlin.named_parameters()):
        assert name == tname
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op", list(INPLACE))
def test_inplace_on_a_leaf_that_requires_grad_raises_like_torch(op):
    p = nn.Parameter(np.ones(2))
    with pytest.raises(RuntimeError, match=r"a leaf Variable that requires grad is being used in an "
                                           r"in-place operation.*no_grad\(\).*x = x [-+*/] y"):
        INPLACE[op](p, 2.0)
    np.testing.assert_array_equal(p.data, [1.0, 1.0])  # nothing written


def test_inplace_on_a_tensor_without_grad_writes_its_data():
    t = mg.tensor([1.0, 2.0])
    storage = t.data
    t += 1
    t *= mg.tensor([2.0, 3.0])
    t -= np.array([1.0, 1.0])
    t /= 2
    assert t.data is storage
    np.testing.assert_array_equal(storage, [1.5, 4.0])
    assert t.dtype == np.float32


@needs_torch
def test_inplace_in_a_graph_gives_torchs_gradients():
    """`y += w` on an op's output, and `acc += x * x` on a constant accumulator, in grad mode."""
    xs = np.array([0.5, -1.0, 2.0])
    ws = np.array([1.5, 0.25, -0.5])
    results = []
    for lib, make in (("mg", lambda a: mg.Tensor(a, requires_grad=True)), ("torch", lambda a: T(a, True))):
        x, w = make(xs), make(ws)
        acc = mg.zeros(3, dtype=np.float64) if lib == "mg" else torch.zeros(3, dtype=torch.float64)
        y = x * 2.0
        y += w
        y *= x
        y -= 1.0
        y /= w
        acc += x * x
        (y * acc).sum().backward()
        results.append((y, acc, x.grad, w.grad))
    for ours, theirs in zip(*results):
        ours = ours.data if isinstance(ours, mg.Tensor) else ours
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=RTOL, atol=ATOL)


@given(data=st.data(), ops=st.lists(st.sampled_from(list(INPLACE)), min_size=1, max_size=3),
       target=st.sampled_from(["op output", "constant accumulator"]),
       other=st.sampled_from(["tensor", "constant tensor", "ndarray", "scalar"]))
def test_inplace_ops_in_grad_mode_pass_gradcheck(data, ops, target, other):
    """x op= y in grad mode on a tensor that is not a leaf requiring grad (an op's output, or a
    constant accumulator fed a tensor that requires grad) is recorded out of place: its backward
    is gradchecked in float64 over chains of +=, -=, *=, /= with y a tensor requiring grad, a
    constant tensor, an array or a Python number broadcast into x's shape (non-contiguous arrays
    drawn); the tensor it was called on is not written (its data may be saved for a backward)."""
    sx, sw = data.draw(broadcastable_shapes(2, max_dims=3, max_side=3))
    full = np.broadcast_shapes(sx, sw)
    x = data.draw(arrays(full, kinks=(0.0,), margin=0.4))      # x * w may divide: both off 0
    w = data.draw(arrays(sw, kinks=(0.0,), margin=0.4))
    c = data.draw(arrays(full, kinks=(0.0,), margin=0.4))

    def fn(tx, tw):
        y = tx * 1.5 if target == "op output" else mg.tensor(c.copy())
        rhs = {"tensor": tw, "constant tensor": mg.tensor(w.copy()), "ndarray": w.copy(), "scalar": -0.7}[other]
        if target == "constant accumulator":
            rhs = tx * rhs                       # the accumulator gets its gradient through rhs
        before, first = y.data.copy(), y
        for op in ops:
            y = INPLACE[op](y, rhs)
        if mg.is_grad_enabled():                 # (gradcheck's probes run under no_grad)
            assert y is not first and np.array_equal(first.data, before)  # out of place
            assert y.shape == full and y.requires_grad
        return y

    tx, tw = mg.Tensor(x, requires_grad=True), mg.Tensor(w, requires_grad=other == "tensor")
    with np.errstate(all="raise"):
        assert mg.gradcheck(fn, [tx, tw])
    # the forward is what NumPy's in-place ufuncs compute
    y = x * 1.5 if target == "op output" else c.copy()
    rhs = -0.7 if other == "scalar" else w
    rhs = x * rhs if target == "constant accumulator" else rhs
    for op in ops:
        y = INPLACE[op](y, rhs)
    np.testing.assert_allclose(fn(tx, tw).data, y, rtol=1e-13, atol=1e-13)


def test_modifying_a_tensor_saved_for_backward_is_caught_at_backward():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = mg.tensor(np.array([3.0, 4.0]))
    y = (x * c).sum()  # Mul saves c
    c += 1.0
    with pytest.raises(RuntimeError, match=r"modified by an in-place operation.*Mul saved input 1 "
                                           r"\(shape \(2,\)\)"):
        y.backward()
    if torch is not None:
        tx, tc = T([1.0, 2.0], True), T([3.0, 4.0])
        ty = (tx * tc).sum()
        tc += 1.0
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            ty.backward()


def test_a_write_through_detach_into_a_saved_tensor_is_caught():
    # detach() shares the array: d += 1 rewrote x's data after Mul saved it, and backward gave
    # 2 * (x + 1) = 4 instead of raising (torch: a shared version counter)
    x = mg.Tensor(np.ones(3), requires_grad=True)
    y = (x * x).sum()
    d = x.detach()
    d += 1.0
    with pytest.raises(RuntimeError, match=r"Mul saved input 0"):
        y.backward()
    x = mg.Tensor(np.ones(3), requires_grad=True)  # written before the op ran: nothing to catch
    d = x.detach().detach()
    d += 1.0
    (x * x).sum().backward()
    assert np.array_equal(x.grad, np.full(3, 4.0))
    if torch is not None:
        tx = T([1.0, 1.0, 1.0], True)
        ty = (tx * tx).sum()
        td = tx.detach()
        td += 1.0
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            ty.backward()


def test_an_op_output_saved_for_backward_and_modified_under_no_grad_is_caught():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.exp()  # Exp saves its output
    with mg.no_grad():
        y += 1.0
    with pytest.raises(RuntimeError, match=r"Exp saved its output"):
        y.sum().backward()


def test_a_parameter_stepped_between_forward_and_backward_is_caught():
    lin = nn.Linear(2, 2, dtype=np.float64, rng=0)
    loss = lin(np.ones((1, 2))).sum()  # Linear saves the weight
    with mg.no_grad():
        lin.weight -= 0.1
    with pytest.raises(RuntimeError, match=r"Linear saved input 1"):
        loss.backward()


def test_inplace_on_a_tensor_no_op_saved_is_fine_as_in_torch():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = mg.tensor(np.array([3.0, 4.0]))
    y = (x + c).sum()  # Add saves nothing
    c += 1.0
    y.backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])
    # and the training loop: backward freed the graph, so stepping afterwards is fine
    lin = nn.Linear(2, 2, dtype=np.float64, rng=0)
    for _ in range(2):
        lin(np.ones((1, 2))).sum().backward()
        with mg.no_grad():
            lin.weight -= 0.1 * lin.weight.grad


def test_inplace_errors_name_the_dtypes_or_shapes():
    t = mg.tensor([1, 2])  # int64
    with pytest.raises(TypeError, match=r"x \+= y: .*float32.*int64.*x = x \+ y"):  # torch's dtype
        t += 0.5
    u = mg.zeros(3)
    with pytest.raises(ValueError, match=r"x \+= y: .*\(2, 3\).*\(3,\)"):
        u += np.ones((2, 3))
    v = mg.zeros(3).expand(2, 3)  # a read-only broadcast view
    with pytest.raises(ValueError, match=r"x \*= y: .*read-only"):
        v *= 2.0


# ----------------------------------------------------------------- result dtypes of the operators
PROMO_DTYPES = ["bool", "uint8", "int8", "int32", "int64", "float16", "float32", "float64"]
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}
OPERATOR_DTYPES = PROMO_DTYPES + ["complex64", "complex128"]


def _operand(dtype, zero_dim):
    """The same small tensor for minigrad and torch: 0-d, or two elements (one of them 0 for bool)."""
    v = (np.array(True if dtype == "bool" else 2, dtype) if zero_dim
         else np.array([True, False] if dtype == "bool" else [1, 3], dtype))
    return mg.Tensor(v), torch.tensor(v)


def _as_torch_does(f, ours, theirs, case):
    """f gives torch's dtype and values on our operands, or a TypeError where torch refuses."""
    try:
        want = f(*theirs)
    except RuntimeError:
        with pytest.raises((TypeError, OverflowError)):     # (uint8 ** 300: NumPy's OverflowError)
            f(*ours)
        return
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):     # 1 / 0, float16 ** 300: as torch
        got = f(*ours)
    assert str(got.dtype) == str(want.dtype).removeprefix("torch."), case
    np.testing.assert_allclose(got.data, want.detach().numpy(), rtol=1e-3, err_msg=case)


def _complex_half(*dtypes):
    """torch makes float16 with a complex operand complex32 (ComplexHalf), which NumPy does not
    have (minigrad gives complex64); those pairs are left out."""
    return "float16" in dtypes and any(d.startswith("complex") for d in dtypes)


@needs_torch
@pytest.mark.parametrize("symbol", list(OPERATORS))
def test_operators_give_torchs_dtype_for_every_pair_of_dtypes_and_of_0d_or_not(symbol):
    """NumPy's promotion made int64 + float32 float64 and float32 + a float64 0-d tensor float64;
    torch's (minigrad's now) gives float32 for both, and int / int is float32."""
    op = OPERATORS[symbol]
    for (da, za), (db, zb) in itertools.product(itertools.product(OPERATOR_DTYPES, (False, True)), repeat=2):
        if _complex_half(da, db):
            continue
        (a, ta), (b, tb) = _operand(da, za), _operand(db, zb)
        _as_torch_does(op, (a, b), (ta, tb), f"{da}{'' if za else '[2]'} {symbol} {db}{'' if zb else '[2]'}")


@needs_torch
@pytest.mark.parametrize("symbol", list(OPERATORS))
def test_operators_with_a_python_number_give_torchs_dtype(symbol):
    """A Python number is weak: int_t * 0.5 is float32 (NumPy: float64), int32_t + 2 int32, uint8 + 300
    wraps around (NumPy: OverflowError)."""
    op = OPERATORS[symbol]
    for dtype, zero_dim, number, left in itertools.product(OPERATOR_DTYPES, (False, True), (True, 2, 0.5, 1j, 300),
                                                           (False, True)):
        if _complex_half(dtype, "complex" if isinstance(number, complex) else ""):
            continue
        (x, tx) = _operand(dtype, zero_dim)
        f = (lambda t: op(number, t)) if left else (lambda t: op(t, number))
        _as_torch_does(f, (x,), (tx,), f"{number!r} {symbol} {dtype}" if left else f"{dtype} {symbol} {number!r}")


@needs_torch
@pytest.mark.parametrize("dtype", PROMO_DTYPES)
def test_float_functions_of_integer_tensors_and_mixed_where_maximum_cat_stack_clamp_are_torchs(dtype):
    """exp of an int64 tensor was float64 (NumPy); torch's, and minigrad's now, is float32; where,
    maximum, cat and stack promote their operands as the operators do."""
    for zero_dim in (False, True):
        x, tx = _operand(dtype, zero_dim)
        for name in ("exp", "log", "sqrt", "tanh", "sigmoid", "abs", "relu"):
            if dtype == "bool" and name in ("abs", "relu"):
                continue  # torch has no abs / relu of bools; NumPy's are defined: not a dtype question
            _as_torch_does(lambda t: getattr(t, name)(), (x,), (tx,), f"{dtype} {name}")
        _as_torch_does(lambda t: t.clamp(0.5, 2.5), (x,), (tx,), f"{dtype} clamp(0.5, 2.5)")
        for other in PROMO_DTYPES:
            (y, ty) = _operand(other, False)
            cond = np.array([True, False])
            case = f"{dtype}{'' if zero_dim else '[2]'}, {other}[2]"
            _as_torch_does(lambda a, b: (mg if isinstance(a, mg.Tensor) else torch).where(
                mg.tensor(cond) if isinstance(a, mg.Tensor) else torch.tensor(cond), a, b), (x, y), (tx, ty),
                "where " + case)
            if "bool" not in (dtype, other):  # torch.maximum of bools is defined, but not a promotion case
                _as_torch_does(lambda a, b: (mg if isinstance(a, mg.Tensor) else torch).maximum(a, b), (x, y),
                               (tx, ty), "maximum " + case)
            if not zero_dim:
                for fn in ("cat", "stack"):
                    _as_torch_does(lambda a, b: getattr(mg if isinstance(a, mg.Tensor) else torch, fn)([a, b]),
                                   (x, y), (tx, ty), f"{fn} {case}")


@needs_torch
@pytest.mark.parametrize("fill", [True, 3, 2.5])
def test_full_and_full_like_take_torchs_dtype_from_the_fill_value(fill):
    assert str(mg.full((2, 3), fill).dtype) == str(torch.full((2, 3), fill).dtype).removeprefix("torch.")
    np.testing.assert_array_equal(mg.full([2, 3], fill).data, torch.full((2, 3), fill).numpy())
    like = mg.full_like(mg.tensor([1, 2]), fill)
    assert like.dtype == np.int64 and like.shape == (2,)                       # x's dtype, as torch's
    assert mg.full_like(mg.zeros(2), fill, dtype=np.float64).dtype == np.float64


@needs_torch
def test_in_place_keeps_x_dtype_and_refuses_what_torch_refuses_with_or_without_a_graph():
    """In grad mode `x += y` is recorded out of place: it took NumPy's dtype (float32 += float64
    gave float64, int += a float parameter float64) where torch keeps x's or refuses."""
    def cases(lib):
        dt = (lambda name: getattr(np, name)) if lib is mg else (lambda name: getattr(torch, name))
        param = lambda v, d="float32": lib.tensor(v, dtype=dt(d), requires_grad=True)  # noqa: E731
        return [
            ("int += float param", lambda: (lib.tensor([1, 2]), param([.5, .5]), operator.iadd)),
            ("f32 graph += f64", lambda: (param([1., 2.]) * 1, lib.tensor([.5, .5], dtype=dt("float64")),
                                          operator.iadd)),
            ("f16 graph *= f32 param", lambda: (param([1., 2.], "float16") * 1, param([2., 3.]), operator.imul)),
            ("f32 -= True", lambda: (lib.tensor([1., 2.]), True, operator.isub)),
            ("int /= 2", lambda: (lib.tensor([1, 2]), 2, operator.itruediv)),
            ("uint8 += int8", lambda: (lib.tensor([1, 2], dtype=dt("uint8")), lib.tensor([1, -1], dtype=dt("int8")),
                                       operator.iadd)),
            ("f64 += complex64", lambda: (lib.tensor([1., 2.], dtype=dt("float64")),
                                          lib.tensor([1j, 1j], dtype=dt("complex64")), operator.iadd)),
        ]
    for (case, ours), (_, theirs) in zip(cases(mg), cases(torch)):
        _as_torch_does(lambda x, y, op: op(x, y), ours(), theirs(), case)


@needs_torch
def test_numbers_and_arrays_beside_a_tensor_are_weak_in_where_maximum_and_cat_too():
    c, h, i8 = np.array([True, False]), np.array(1.0, np.float16), np.array(3, np.int8)
    assert mg.where(mg.tensor(c), 0.5, mg.Tensor(h)).dtype == torch.where(torch.tensor(c), 0.5,
                                                                            torch.tensor(h)).numpy().dtype
    assert mg.where(mg.tensor(c), 2, mg.Tensor(i8)).dtype == np.int8 == torch.where(torch.tensor(c), 2,
                                                                                     torch.tensor(i8)).numpy().dtype
    x, arr = mg.tensor([1.0, 2.0]), np.array([1.0, 2.0])                   # float32 and a float64 array
    for result in (x + arr, arr + x, mg.maximum(arr, x), mg.maximum(x, arr), mg.where(mg.tensor(c), arr, x),
                   mg.cat([x, arr]), mg.cat([arr, x]), mg.stack([arr, x])):
        assert result.dtype == np.float32


@needs_torch
def test_a_promoted_operand_gets_its_gradient_in_its_own_dtype():
    w = mg.Tensor(np.array([0.5, -1.5], np.float16), requires_grad=True)
    s = mg.Tensor(np.array(3.0), requires_grad=True)                        # float64, 0-d
    idx = mg.tensor([1, 2])                                                 # int64, no gradient
    y = ((w * s) * idx).sum()
    assert (w * s).dtype == np.float16 and y.dtype == np.float16           # torch: float16
    y.backward()
    tw = torch.tensor([0.5, -1.5], dtype=torch.float16, requires_grad=True)
    ts = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    ((tw * ts) * torch.tensor([1, 2])).sum().backward()
    assert w.grad.dtype == np.float16 and s.grad.dtype == np.float64
    np.testing.assert_array_equal(w.grad, tw.grad.numpy())
    np.testing.assert_allclose(s.grad, ts.grad.numpy(), rtol=1e-3)


def test_a_float_tensor_keeps_its_dtype_beside_numpy_scalars_and_arrays():
    x = mg.tensor([1.0, 2.0])
    assert (x * np.float64(2)).dtype == (x + np.array([1.0, 2.0])).dtype == (x ** np.float64(2)).dtype == np.float32
    assert (mg.tensor([1, 2]) * np.float32(0.5)).dtype == np.float32


def test_subtracting_a_bool_says_what_to_do_instead():
    mask = mg.tensor([True, False])
    for f in (lambda: 1 - mask, lambda: mask - mask, lambda: mg.tensor([1.0]) - True):
        with pytest.raises(TypeError, match=r"~mask or mask.logical_not\(\)"):
            f()


@needs_torch
def test_invert_and_logical_not_match_torch():
    for v in (np.array([True, False]), np.array([0, 3, -2]), np.array([0.0, 1.5], np.float32)):
        t, tt = mg.Tensor(v), torch.tensor(v)
        np.testing.assert_array_equal(t.logical_not().data, torch.logical_not(tt).numpy())
        if v.dtype.kind == "f":
            with pytest.raises(TypeError, match="bool or integer tensor, got float32"):
                ~t
        else:
            np.testing.assert_array_equal((~t).data, (~tt).numpy())


# ================================================================ nn
ACTIVATIONS = [("ReLU", {}), ("GELU", {}), ("GELU", {"approximate": "tanh"}), ("GELU", {"approximate": "none"}),
               ("Tanh", {}), ("Sigmoid", {})]


@needs_torch
@pytest.mark.parametrize("name,kwargs", ACTIVATIONS)
def test_activation_modules_match_torch(name, kwargs):
    x = np.random.default_rng(0).standard_normal((2, 3, 4)) * 3
    ours, theirs = getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    xm, xt = mg.Tensor(x, requires_grad=True), T(x, True)
    out, ref = ours(xm), theirs(xt)
    same(out, ref)
    v = np.random.default_rng(1).standard_normal(x.shape)
    out.backward(v)
    ref.backward(torch.from_numpy(v))
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    assert repr(ours) == repr(theirs)


def test_gelu_module_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none', got 'fast'"):
        nn.GELU(approximate="fast")


@needs_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(5, 4), (2, 4, 3), (2, 4, 2, 3)])
def test_loss_modules_match_torch(reduction, label_smoothing, shape):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape) * 2
    targets = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    targets.flat[::3] = -100  # some ignored positions
    out = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=label_smoothing)(mg.Tensor(logits), targets)
    ref = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=label_smoothing)(
        T(logits), torch.from_numpy(targets))
    same(out, ref)
    target = rng.standard_normal(shape)
    same(nn.MSELoss(reduction=reduction)(mg.Tensor(logits), target),
         torch.nn.MSELoss(reduction=reduction)(T(logits), T(target)))


def test_loss_modules_check_their_options_when_built():
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction must be"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(TypeError):  # torch's first positional argument is a class weight: refused
        nn.CrossEntropyLoss(None)


def test_children_named_children_and_apply_visit_as_torch_does():
    inner = nn.Sequential(nn.Linear(3, 3, rng=0), nn.Tanh())
    m = nn.Sequential(nn.Linear(2, 3, rng=0), nn.ReLU(), inner)
    assert [n for n, _ in m.named_children()] == ["0", "1", "2"]
    assert [type(c).__name__ for c in m.children()] == ["Linear", "ReLU", "Sequential"]
    assert list(m.children())[2] is inner and list(inner.children())[1] is inner[1]
    order = []
    assert m.apply(lambda mod: order.append(type(mod).__name__)) is m
    # children first, then the module itself (torch's order)
    assert order == ["Linear", "ReLU", "Linear", "Tanh", "Sequential", "Sequential"]
    m.apply(lambda mod: mod.weight.data.fill(0.0) if isinstance(mod, nn.Linear) else None)
    assert all(not mod.weight.data.any() for mod in m.modules() if isinstance(mod, nn.Linear))
    if torch is not None:
        t = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh()))
        torder = []
        t.apply(lambda mod: torder.append(type(mod).__name__))
        assert torder == order
        assert [n for n, _ in t.named_children()] == [n for n, _ in m.named_children()]


def test_a_module_registered_twice_is_one_child():
    lin = nn.Linear(2, 2, rng=0)
    m = nn.Module()
    m.a, m.b = lin, lin
    assert [n for n, _ in m.named_children()] == ["a"]


# ================================================================ seeds and constructors
def test_manual_seed_makes_the_default_randomness_repeatable():
    def draws():
        lin, emb, drop = nn.Linear(3, 2), nn.Embedding(4, 2), nn.Dropout(0.5)
        return [lin.weight.data.copy(), emb.weight.data.copy(), mg.randn(5).data,
                drop(mg.ones(50)).data, F.dropout(mg.ones(50), 0.5).data]

    mg.manual_seed(0)
    first = draws()
    mg.manual_seed(0)
    for a, b in zip(first, draws()):
        np.testing.assert_array_equal(a, b)
    mg.manual_seed(1)
    assert all(not np.array_equal(a, b) for a, b in zip(first, draws()))


def test_an_explicit_rng_does_not_touch_the_default_generator():
    mg.manual_seed(3)
    expected = mg.randn(4).data
    mg.manual_seed(3)
    nn.Linear(3, 2, rng=7)
    mg.randn(5, rng=np.random.default_rng(1))
    F.dropout(mg.ones(10), 0.5, rng=2)
    np.testing.assert_array_equal(mg.randn(4).data, expected)
    assert mg.manual_seed(0) is mg.default_generator  # one generator object, reseeded in place


def test_checkpoint_recomputes_default_generator_dropout_with_the_same_masks():
    mg.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4, dtype=np.float64, rng=0), nn.Dropout(0.5))
    x = np.random.default_rng(1).standard_normal((3, 4))
    grads = []
    for use_checkpoint in (False, True):
        mg.manual_seed(5)
        xt = mg.Tensor(x, requires_grad=True)
        out = mg.checkpoint(block, xt) if use_checkpoint else block(xt)
        out.sum().backward()
        grads.append((out.data, xt.grad, block[0].weight.grad))
        block.zero_grad()
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


@needs_torch
def test_zeros_like_ones_like_and_arange_match_torch():
    x = mg.Tensor(np.ones((2, 3)))
    for ours, theirs in ((mg.zeros_like, torch.zeros_like), (mg.ones_like, torch.ones_like)):
        out = ours(x)
        assert out.dtype == np.float64 and not out.requires_grad
        same(out, theirs(T(x)))
        assert ours(x, dtype=np.float32).dtype == np.float32 and ours(x, requires_grad=True).requires_grad
        assert ours(np.ones(4, np.int32)).dtype == np.int32
    cases = [(5,), (2, 7), (7, 2, -2), (0.0, 1.0, 0.25), (1, 2, 0.5), (-1.5, 1.0)]
    for args in cases:
        out, ref = mg.arange(*args), torch.arange(*args)
        assert str(out.dtype) == str(ref.dtype).replace("torch.", ""), args  # int64 or float32
        np.testing.assert_array_equal(out.data, ref.numpy())
    assert mg.arange(3, dtype=np.float64).dtype == np.float64
