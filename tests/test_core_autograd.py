"""Autograd semantics: accumulation, graph freeing, deep graphs, no_grad, anomaly detection,
clear errors for bad input, and regressions found while testing the core."""
import numpy as np
import pytest

import minigrad as mg
from minigrad.tensor import Exp, Function


# ---------------------------------------------------------------- regressions
@pytest.mark.parametrize("op", ["exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "neg", "square"])
def test_zero_dim_float64_stays_float64(op):
    """Ufuncs on 0-d arrays return NumPy scalars; those must keep their dtype, not become float32.

    (Regression: a float64 0-d input gave a float32 output, which ruined finite differences.)"""
    x = mg.Tensor(np.array(0.7), requires_grad=True)
    f = {"neg": lambda t: -t, "square": lambda t: t * t}.get(op, lambda t: getattr(t, op)())
    y = f(x)
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float64 and x.grad.shape == ()
    assert mg.gradcheck(f, [x])


def test_numpy_scalars_keep_their_dtype():
    assert mg.tensor(np.float64(2.0)).dtype == np.float64
    assert mg.tensor(np.float32(2.0)).dtype == np.float32
    assert mg.tensor(2.0).dtype == np.float32  # a Python float becomes float32, as in PyTorch


# ---------------------------------------------------------------- gradcheck itself
class _ForgetsUpstream(Exp):
    """exp whose backward forgets to multiply by the upstream gradient (a classic bug)."""

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (out,)


def test_gradcheck_catches_a_backward_that_ignores_its_upstream_gradient():
    x = mg.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    with pytest.raises(mg.GradcheckError, match=r"input 0 \(shape \(2, 3\)\) element \(0, 0\): analytic .* vs numeric"):
        mg.gradcheck(_ForgetsUpstream.apply, [x])


class _RecordsAnotherFunction(Function):
    """Records 3x but computes 2x without recording; its backward is 2x's: the finite differences
    (taken under no_grad) agreed with it, while the recorded forward is another function."""

    @staticmethod
    def forward(ctx, x):
        return x * (3.0 if mg.is_grad_enabled() else 2.0)

    @staticmethod
    def backward(ctx, g):
        return (2.0 * g,)


def test_gradcheck_refuses_an_fn_whose_recorded_output_differs_from_its_probes():
    x = mg.Tensor(np.linspace(-1, 1, 4), requires_grad=True)
    with pytest.raises(mg.GradcheckError, match=r"another output under no_grad than when recorded \(max "
                                                r"difference 1\)"):
        mg.gradcheck(_RecordsAnotherFunction.apply, [x])


def test_checkpoint_warns_when_its_result_can_get_no_gradient():
    # a lambda over a module's layers with a constant input: the layers got no gradient, silently
    lin = mg.nn.Linear(3, 2, dtype=np.float64, rng=0)
    x = mg.Tensor(np.ones((4, 3)))
    with pytest.warns(UserWarning, match=r"checkpoint: no input requires grad .* params=module.parameters\(\)"):
        out = mg.checkpoint(lambda u: lin(u).tanh(), x)
    assert not out.requires_grad
    out = mg.checkpoint(lambda u: lin(u).tanh(), x, params=lin.parameters())   # the way the warning names
    out.sum().backward()
    assert lin.weight.grad is not None and np.abs(lin.weight.grad).sum() > 0


def test_gradcheck_accepts_noncontiguous_inputs_and_restores_them():
    """Regression: gradcheck used to refuse non-contiguous inputs (it perturbed a flat view)."""
    base = np.arange(24, dtype=np.float64).reshape(4, 6) / 10
    x = base[::2, ::-1].T  # strided, reversed, transposed view
    assert not x.flags.c_contiguous and not x.flags.f_contiguous
    before = x.copy()
    t = mg.Tensor(x, requires_grad=True)
    assert mg.gradcheck(lambda a: (a * a).sum(axis=0), [t])
    np.testing.assert_array_equal(x, before)  # every perturbation undone


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        mg.gradcheck(lambda a: a.exp(), [mg.Tensor(np.ones(3, np.float32), requires_grad=True)])


def test_gradcheck_large_input_uses_random_elements_and_a_direction():
    x = mg.Tensor(np.random.default_rng(0).standard_normal(3000), requires_grad=True)
    assert mg.gradcheck(lambda a: a.tanh(), [x], max_elements=50)
    with pytest.raises(mg.GradcheckError):
        mg.gradcheck(_ForgetsUpstream.apply, [mg.Tensor(x.data * 0.1, requires_grad=True)], max_elements=50)


# ---------------------------------------------------------------- accumulation
def test_two_backward_calls_double_a_leafs_grad():
    rng = np.random.default_rng(0)
    x = mg.Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    w = mg.Tensor(rng.standard_normal((2, 4)), requires_grad=True)
    loss = ((x @ w).tanh() * x.sum(axis=1, keepdims=True)).sum()
    loss.backward(retain_graph=True)
    gx, gw = x.grad.copy(), w.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * gx, rtol=1e-15)
    np.testing.assert_allclose(w.grad, 2 * gw, rtol=1e-15)


def test_grads_accumulate_across_graphs_until_cleared():
    x = mg.Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()  # 2x
    (3 * x).sum().backward()  # + 3
    np.testing.assert_array_equal(x.grad, 2 * x.data + 3)
    x.grad = None
    x.exp().sum().backward()
    np.testing.assert_array_equal(x.grad, np.exp(x.data))


def test_a_tensor_used_twice_gets_both_contributions():
    """Diamond: y = a*b + a with b = exp(a); the tape must sum the paths before a's backward."""
    a = mg.Tensor(np.array([0.3, -0.7]), requires_grad=True)
    b = a.exp()
    y = (a * b + a).sum()
    y.backward()
    np.testing.assert_allclose(a.grad, np.exp(a.data) * (1 + a.data) + 1, rtol=1e-14)


def test_gradients_never_alias_each_other_the_callers_grad_or_forward_arrays():
    """backward adds into a gradient buffer in place only when it allocated that buffer itself.

    Add.backward returns the same array for both inputs and passes the upstream grad through
    unchanged, so an in-place sum into anything else would corrupt a sibling's gradient or
    the caller's array; a .grad that aliased another array would be corrupted by the next
    accumulation or by zero_grad(set_to_none=False)."""
    rng = np.random.default_rng(0)
    a = mg.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    b = mg.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    x = mg.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    h = a + b                  # h's gradient is a sum (two uses below); Add hands it to a and b
    y = ((x + x) + x) + h + h + x * 2.0
    v = rng.standard_normal((2, 3))
    v0 = v.copy()
    y.backward(v, retain_graph=True)
    np.testing.assert_array_equal(v, v0)  # the caller's grad is never written to
    np.testing.assert_allclose(x.grad, 5 * v, rtol=1e-14)
    np.testing.assert_allclose(a.grad, 2 * v, rtol=1e-14)
    np.testing.assert_allclose(b.grad, 2 * v, rtol=1e-14)
    grads = [a.grad, b.grad, x.grad]
    arrays = grads + [v, a.data, b.data, x.data, h.data, y.data]
    for i, g in enumerate(grads):
        for other in arrays[i + 1:]:
            assert not np.shares_memory(g, other)
    # writing to one .grad leaves the others alone; a second backward adds into each .grad
    b.grad.fill(0)
    np.testing.assert_allclose(a.grad, 2 * v, rtol=1e-14)
    y.backward(v)
    np.testing.assert_array_equal(v, v0)
    np.testing.assert_allclose(x.grad, 10 * v, rtol=1e-14)
    np.testing.assert_allclose(a.grad, 4 * v, rtol=1e-14)
    np.testing.assert_allclose(b.grad, 2 * v, rtol=1e-14)


def test_a_zero_dim_tensor_used_three_times_gets_an_array_grad():
    """Ufuncs on 0-d arrays return NumPy scalars, which cannot be added into in place."""
    x = mg.Tensor(np.array(0.5), requires_grad=True)
    (x * x + x * 3.0 + x.exp()).backward()
    assert isinstance(x.grad, np.ndarray) and x.grad.shape == ()
    np.testing.assert_allclose(x.grad, 2 * 0.5 + 3 + np.exp(0.5), rtol=1e-15)

def test_backward_with_explicit_grad_and_non_leaf_grads_are_not_kept():
    x = mg.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    h = x * 2
    y = h + 1
    v = np.array([[1.0, -1.0, 2.0], [0.5, 0.0, 3.0]])
    y.backward(v)
    np.testing.assert_array_equal(x.grad, 2 * v)
    assert h.grad is None  # only leaves accumulate, as in PyTorch without retain_grad


def test_integer_inputs_pass_through_and_constants_get_no_grad():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = mg.Tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(x.grad, c.data)


# ---------------------------------------------------------------- graph freeing
def test_backward_twice_without_retain_graph_raises_a_clear_error():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"second time.*retain_graph=True"):
        y.backward()


def _saved_bytes_log():
    log = []

    def listener(event, ctx, objs):
        log.append((event, ctx.name, mg.autograd.saved_nbytes(objs)))

    return log, listener


def test_graph_is_freed_after_backward_and_every_saved_byte_released():
    log, listener = _saved_bytes_log()
    mg.add_saved_listener(listener)
    try:
        rng = np.random.default_rng(1)
        x = mg.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
        w = mg.Tensor(rng.standard_normal((3, 5)), requires_grad=True)
        h = (x @ w).tanh()
        loss = mg.functional.cross_entropy(h, np.array([0, 1, 4, 2]))
        saves = [e for e in log if e[0] == "save"]
        assert {n for _, n, _ in saves} >= {"MatMul", "Tanh", "CrossEntropy"}
        held = sum(b for _, _, b in saves)
        assert held >= x.data.nbytes + w.data.nbytes + 4 * 5 * 8  # matmul inputs + tanh output
        loss.backward()
        frees = [e for e in log if e[0] == "free"]
        assert sum(b for _, _, b in frees) == held
        assert sorted(n for _, n, _ in frees) == sorted(n for _, n, _ in saves)
        # the nodes dropped their inputs and saved arrays: nothing keeps the graph alive
        assert loss._ctx.released and loss._ctx.saved == () and loss._ctx.inputs == ()
        assert h._ctx.saved == () and h._ctx.inputs == ()
    finally:
        mg.remove_saved_listener(listener)


def test_retain_graph_keeps_saved_arrays():
    log, listener = _saved_bytes_log()
    mg.add_saved_listener(listener)
    try:
        x = mg.Tensor(np.array([0.5, 1.5]), requires_grad=True)
        y = (x.sqrt() * x).sum()
        y.backward(retain_graph=True)
        assert not [e for e in log if e[0] == "free"]
        y.backward()
        assert len([e for e in log if e[0] == "free"]) == len([e for e in log if e[0] == "save"])
    finally:
        mg.remove_saved_listener(listener)


def test_chain_of_100000_ops_backpropagates_without_recursion_error():
    """An iterative topological sort: no RecursionError. Twice (retain_graph), then the retained
    100,000-node graph is dropped, which must not overflow the C stack while deallocating."""
    x = mg.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = -y
    y.sum().backward(retain_graph=True)  # an even number of negations: d y / d x = 1
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
    del y


# ---------------------------------------------------------------- no_grad
def test_no_grad_context_records_nothing():
    log, listener = _saved_bytes_log()
    mg.add_saved_listener(listener)
    try:
        x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
        assert mg.is_grad_enabled()
        with mg.no_grad():
            assert not mg.is_grad_enabled()
            y = (x.exp() * x).sum()
        assert mg.is_grad_enabled()
        assert not y.requires_grad and y._ctx is None and log == []
        with pytest.raises(RuntimeError, match="does not require grad"):
            y.backward()
    finally:
        mg.remove_saved_listener(listener)


def test_no_grad_decorator_and_nesting_restore_the_mode():
    @mg.no_grad()
    def infer(t):
        assert not mg.is_grad_enabled()
        with mg.enable_grad():
            inner = t * 2
        return t * 3, inner

    x = mg.Tensor(np.ones(2), requires_grad=True)
    out, inner = infer(x)
    assert not out.requires_grad and inner.requires_grad
    assert mg.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with mg.no_grad():
            1 / 0
    assert mg.is_grad_enabled()  # restored after an exception

    @mg.no_grad()
    def recursive(n):  # one decorator instance entered again before it exits
        return recursive(n - 1) if n else mg.is_grad_enabled()

    assert recursive(3) is False
    assert mg.is_grad_enabled()  # was left False: the inner call overwrote the saved mode


def test_a_decorated_function_running_on_two_threads_restores_each_threads_mode():
    # the modes are per thread; one decorator instance kept one stack of saved modes, so two
    # threads inside the same function popped each other's (A left grad on inside its no_grad)
    import threading

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    @mg.no_grad()
    def work(me_in, wait_for, after=None):
        me_in.set()
        assert wait_for.wait(10)
        if after:
            after.set()

    seen = {}

    def a():
        with mg.no_grad():
            work(a_in, b_in, a_out)
            seen["a"] = mg.is_grad_enabled()

    def b():
        assert a_in.wait(10)
        work(b_in, a_out)
        seen["b"] = mg.is_grad_enabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": False, "b": True}


# ---------------------------------------------------------------- detect_anomaly
def test_detect_anomaly_forward_names_the_op():
    x = mg.Tensor(np.array([-1.0, 1.0]), requires_grad=True)
    with np.errstate(invalid="ignore"):
        assert np.isnan(x.log().data[0])  # off by default: NaN just propagates
        with mg.detect_anomaly():
            with pytest.raises(FloatingPointError, match=r"forward of Log produced NaN \(input shapes: \(2,\)\)"):
                x.log()


def test_detect_anomaly_backward_names_the_op():
    x = mg.Tensor(np.array([0.0, 4.0]), requires_grad=True)
    with np.errstate(divide="ignore"), mg.detect_anomaly():
        y = (x.sqrt() * 3.0).sum()  # sqrt(0) is fine, its derivative is not
        with pytest.raises(FloatingPointError, match=r"backward of Sqrt produced inf"):
            y.backward()
    assert not mg.autograd._state["anomaly"]


def test_detect_anomaly_sees_zero_dim_results():
    """Ufuncs on 0-d arrays return NumPy scalars; a NaN loss or an inf scalar gradient must
    still be caught (scalar losses are where anomaly detection is used most)."""
    with np.errstate(invalid="ignore", divide="ignore"), mg.detect_anomaly():
        with pytest.raises(FloatingPointError, match="forward of Log produced NaN"):
            mg.Tensor(np.array(-1.0), requires_grad=True).log()
        y = mg.Tensor(np.array(0.0), requires_grad=True).sqrt()
        with pytest.raises(FloatingPointError, match="backward of Sqrt produced inf"):
            y.backward()


def test_detect_anomaly_as_decorator():
    @mg.detect_anomaly()
    def f(t):
        return t / 0.0

    with np.errstate(divide="ignore"), pytest.raises(FloatingPointError, match="Div"):
        f(mg.Tensor(np.ones(1), requires_grad=True))


# ---------------------------------------------------------------- clear errors
@pytest.mark.parametrize(
    "op, name",
    [
        (lambda a, b: a + b, "add"),
        (lambda a, b: a - b, "sub"),
        (lambda a, b: a * b, "mul"),
        (lambda a, b: a / b, "div"),
        (lambda a, b: a**b, "pow"),
        (lambda a, b: mg.maximum(a, b), "maximum"),
        (lambda a, b: mg.where(np.ones((2, 3), bool), a, b), "where"),
    ],
)
def test_incompatible_shapes_name_the_op_and_both_shapes(op, name):
    a = mg.Tensor(np.ones((2, 3)), requires_grad=True)
    b = mg.Tensor(np.ones((4,)), requires_grad=True)
    with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and .*\(4,\)"):
        op(a, b)


def test_shape_errors_of_matmul_reshape_cat_stack_expand_squeeze():
    a = mg.Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(2, 3\) are not aligned"):
        a @ a
    with pytest.raises(ValueError, match=r"reshape: cannot reshape \(2, 3\) \(6 elements\) into \(4, 2\)"):
        a.reshape(4, 2)
    with pytest.raises(ValueError, match=r"cat: shapes \(2, 3\), \(2, 4\) differ outside axis 0"):
        mg.cat([a, mg.Tensor(np.ones((2, 4)))])
    with pytest.raises(ValueError, match=r"stack: all inputs need the same shape"):
        mg.stack([a, a.T])
    with pytest.raises(ValueError, match=r"expand: shapes \(2, 3\) and \(2, 4\)"):
        a.expand(2, 4)
    with pytest.raises(ValueError, match=r"squeeze: axis 0 has size 2"):
        a.squeeze(0)
    with pytest.raises(ValueError, match=r"permute"):
        a.permute(0, 0)
    # out-of-range axes used to wrap around silently (transpose(0, 2) swapped axis 0 with itself)
    with pytest.raises(ValueError, match=r"transpose: axis 2 is out of range for shape \(2, 3\)"):
        a.transpose(0, 2)
    with pytest.raises(ValueError, match=r"unsqueeze: axis 3 is out of range .*-3 to 2"):
        a.unsqueeze(3)
    for target in ((2, 1), (3,), (1, 3)):  # a smaller axis, fewer axes: numpy's remapping error
        with pytest.raises(ValueError, match=r"expand: cannot expand shape \(2, 3\) to"):
            a.expand(*target)
    with pytest.raises(ValueError, match=r"expand: -1 .* new leading axis"):
        a.expand(-1, 2, 3)  # used to read a size from the wrong end of the shape


def test_backward_on_a_non_scalar_without_grad_is_refused():
    x = mg.Tensor(np.ones((2, 2)), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"only for a scalar output.*shape \(2, 2\).*\.sum\(\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), output has \(2, 2\)"):
        y.backward(np.ones(3))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
def test_requires_grad_on_integer_data_is_refused(dtype):
    with pytest.raises(TypeError, match="only floating-point tensors can require grad"):
        mg.Tensor(np.zeros(3, dtype=dtype), requires_grad=True)


# ---------------------------------------------------------------- small API facts
def test_constructors_and_accessors():
    assert mg.zeros(2, 3).shape == (2, 3) and mg.zeros((2, 3)).dtype == np.float32
    assert mg.ones(4).data.sum() == 4
    a, b = mg.randn(3, 2, rng=7), mg.randn(3, 2, rng=7)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.dtype == np.float32 and a.ndim == 2 and a.size == 6 and len(a) == 3
    t = mg.tensor([[1.0, 2.0]], requires_grad=True)
    assert t.requires_grad and t.is_leaf and not (t * 2).is_leaf
    assert mg.tensor(np.array(3.5)).item() == 3.5
    src = np.ones(2)
    copied = mg.tensor(src)  # a copy, as torch.tensor; Tensor(src) shares it
    src[0] = 5.0
    assert copied.data[0] == 1.0 and mg.Tensor(src).data[0] == 5.0
    d = (t * 2).detach()
    assert not d.requires_grad and d._ctx is None
    assert isinstance(t.numpy(), np.ndarray)
    assert mg.Tensor(np.ones(2), dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_preserved_through_forward_and_backward(dtype):
    rng = np.random.default_rng(0)
    x = mg.Tensor(rng.standard_normal((3, 4)).astype(dtype), requires_grad=True)
    w = mg.Tensor(rng.standard_normal((4,)).astype(dtype), requires_grad=True)
    y = (x * w + 1.5).tanh().mean() * 2.0
    assert y.dtype == dtype
    y.backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_float_constants_are_not_truncated_by_an_integer_tensor():
    t = mg.Tensor(np.array([1, 2, 3]))
    np.testing.assert_array_equal((t * 0.5).data, [0.5, 1.0, 1.5])
    np.testing.assert_array_equal((0.5 * t).data, [0.5, 1.0, 1.5])
    np.testing.assert_array_equal((t / np.array([2.0, 4.0, 4.0])).data, [0.5, 0.5, 0.75])
    assert (t + 1).dtype == t.dtype  # integer constants keep an integer tensor integer
    np.testing.assert_array_equal(mg.where(np.array([True, False, True]), t, 0.5).data, [1.0, 0.5, 3.0])
    np.testing.assert_array_equal(mg.maximum(t, 1.5).data, [1.5, 2.0, 3.0])
    assert (mg.Tensor(np.ones(2, np.float32)) * 0.5).dtype == np.float32  # floats: tensor's dtype


def test_reduction_axis_as_list_and_out_of_range():
    import numpy as np
    import minigrad as mg

    x = mg.Tensor(np.arange(24.0).reshape(2, 3, 4), requires_grad=True)
    assert x.sum(axis=[0, 2]).shape == (3,)
    np.testing.assert_array_equal(x.max(axis=[0, -1]).data, x.data.max(axis=(0, 2)))
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        x.sum(axis=3)
    with pytest.raises(ValueError, match=r"axis \(0, -3\) names an axis twice"):
        x.mean(axis=(0, -3))  # was the mean over axis 0 alone; torch refuses it
    s = mg.Tensor(np.array(2.0))
    assert s.sum(axis=0).item() == s.sum(axis=-1).item() == 2.0  # a 0-d tensor: 0 or -1
    with pytest.raises(ValueError, match="axis 5 is out of range for a tensor with 0 dimensions"):
        s.sum(axis=5)
    with pytest.raises(ValueError, match="non-empty"):
        mg.stack([])
