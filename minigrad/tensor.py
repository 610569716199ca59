"""Function (the base class of every op), Tensor, and the primitive ops, each forward written
beside its backward.

Broadcasting: binary ops broadcast like NumPy; their backward sums the gradient back to each
input's shape with `unbroadcast`, so every gradient has its input's shape.

Dtypes: the operators `+ - * / ** @`, `where`, `maximum`, `cat` and `stack` give torch's result
dtype (`result_dtype`), not NumPy's: an integer tensor with a float32 one, or with a Python float,
is float32 (NumPy: float64), a float32 tensor with a float64 0-d tensor stays float32, and `/` of
integers is float32, as are exp, log, sqrt, tanh and sigmoid of an integer tensor. In place
(`+=` ...) the result keeps x's dtype, and a result of a higher category (a float into an integer
tensor) is refused, as in torch. A number beside a tensor is weak (it takes the tensor's dtype,
or float32 for a float beside an integer tensor), and so is an array beside a float tensor.

Names: NumPy's and PyTorch's both work where they differ. Reductions and axis arguments take
`axis=`/`keepdims=` or `dim=`/`keepdim=` (`torch_names`); `t.size` is NumPy's element count and
`t.size()` / `t.size(d)` torch's shape; `t.T`, `.t()`, `.mT`, `.clip`/`.clamp` all exist.

In-place `+=`, `-=`, `*=`, `/=` follow torch's rule. They write into `.data` (the same array, so
an optimizer-style `p -= lr * p.grad` inside `no_grad()` updates a Parameter) when no gradient is
recorded: under `no_grad`, or when neither operand requires grad. On a leaf that requires grad,
with grad mode on, they raise (torch's "a leaf Variable that requires grad is being used in an
in-place operation"). When grad mode is on and the other operand or a non-leaf `x` requires grad,
`x += y` records `x + y` as a new Tensor and rebinds the name `x` to it, so gradients are torch's;
unlike torch, other references to the old tensor do not see the change.
A tensor written in place after an op saved its array for backward would give a wrong gradient;
as torch does with version counters, backward then raises naming the op (see `autograd.backward`).
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from . import amp, autograd
from .autograd import Context, _check_finite, _op_listeners, _state
from .backend import fused_kernels as _fused


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `grad` over the axes that broadcasting added or stretched, giving an array of `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def as_rows(a: np.ndarray) -> np.ndarray:
    """a (..., K) as a 2-D (N, K) view over its last axis. Unlike reshape(-1, K) it also takes
    an empty array (NumPy cannot infer -1 from size 0 when K is 0)."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _broadcast_shape(op: str, *shapes) -> tuple:
    if shapes.count(shapes[0]) == len(shapes):  # the common case; np.broadcast_shapes costs ~2 us
        return shapes[0]
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {' and '.join(map(str, shapes))} do not broadcast "
            "(trailing dimensions must be equal or 1; reshape or unsqueeze one operand)"
        ) from None


# ================================================================ Function: the base of every op
class Function:
    """Base class of every differentiable primitive. Subclasses define `forward` and `backward`
    (see minigrad/autograd.py) and say how many matmul FLOPs their forward does.

    `flops(ctx) -> int` is a staticmethod written next to `forward`: the FLOPs of the matrix
    products in one forward (2·m·n·k each), from `ctx.inputs` (the input Tensors); 0 for an op
    without a matrix product. `minigrad.memory.count_flops` asks every op it sees. The
    base class's None means "this op does not say" (a user-defined op): counted as 0 and
    listed, or refused with `count_flops(strict=True)`.
    """

    flops = None

    @staticmethod
    def forward(ctx: Context, *arrays, **options):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        # This runs once per op (about 90 times per generated token), so it avoids genexprs and
        # reads the tape's state (autograd._state, _op_listeners) through names bound at import,
        # as attributes (its `_state["..."]` form is a method call).
        for x in inputs:
            if not isinstance(x, Tensor):
                inputs = tuple([x if isinstance(x, Tensor) else Tensor(x) for x in inputs])
                break
        needs = tuple([t.requires_grad for t in inputs])
        requires = _state.grad_enabled and True in needs
        ctx = Context(cls, inputs, requires, needs)
        out = cls.forward(ctx, *[t.data for t in inputs], **options)
        if _state.anomaly:
            _check_finite(out, cls.__name__, "forward", inputs)
        for fn in _op_listeners:
            fn("forward", ctx, out)
        result = Tensor(out, requires_grad=requires)
        if requires:
            result._ctx = ctx
            ctx.inplace_mark = _state.inplace_ops  # backward checks nothing saved changed since
        else:
            ctx.inputs = ()
        return result


def no_matmul_flops(ctx) -> int:
    """`Function.flops` of an op without a matrix product: 0 (elementwise work, reductions and
    copies are not counted, as in the 6N rule). Ops use it as `flops = staticmethod(no_matmul_flops)`."""
    return 0


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def matmul_flops(a_shape, b_shape) -> int:
    """2·m·n·k (times the broadcast batch) for a @ b with NumPy's matmul rules."""
    a2 = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)
    b2 = tuple(b_shape) + (1,) if len(b_shape) == 1 else tuple(b_shape)
    batch = _prod(np.broadcast_shapes(a2[:-2], b2[:-2]))
    m, k, n = a2[-2], a2[-1], b2[-1]
    return 2 * batch * m * n * k


# ================================================================ elementwise binary ops
class Add(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        _broadcast_shape("add", a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        _broadcast_shape("sub", a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(-g, sb)


class Mul(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("mul", a.shape, b.shape)
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)


class Div(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("div", a.shape, b.shape)
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return unbroadcast(g / b, a.shape), unbroadcast(-g * a / (b * b), b.shape)


class Pow(Function):
    """a ** b for a tensor exponent; `PowScalar` handles the common constant exponent."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("pow", a.shape, b.shape)
        out = a**b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved
        ga = unbroadcast(g * _pow_slope(a, b), a.shape) if ctx.needs_input_grad[0] else None
        # d(a^b)/db = a^b log a, defined only for a > 0
        gb = unbroadcast(g * out * np.log(np.where(a > 0, a, 1.0)), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


def _pow_slope(a, p):
    """d(a^p)/da = p * a^(p-1), and 0 where p == 0 (a^0 is constant; the formula would give
    0 * 0^-1 = NaN at a = 0). As torch's pow backward."""
    if np.ndim(p) == 0:
        return p * a ** (p - 1) if p != 0 else np.zeros_like(a)
    with np.errstate(divide="ignore", invalid="ignore"):  # the masked entries' 0^-1
        return np.where(p == 0, 0, p * a ** (p - 1))


class PowScalar(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, p):
        ctx.p = p
        ctx.save_for_backward(a)
        return a**p

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g * _pow_slope(a, ctx.p),)


class Maximum(Function):
    """Elementwise max; at ties the gradient is split equally between the two inputs."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("maximum", a.shape, b.shape)
        ctx.save_for_backward(a, b)
        return np.maximum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        wa = (a > b) + 0.5 * (a == b)
        return unbroadcast(g * wa, a.shape), unbroadcast(g * (1 - wa), b.shape)


class MatMul(Function):
    """a @ b with NumPy semantics (1-D operands promoted, batch dims broadcast)."""

    @staticmethod
    def flops(ctx) -> int:
        a, b = ctx.inputs
        return matmul_flops(a.shape, b.shape)

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: operands must be at least 1-D; use * for scalars")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} are not aligned: "
                f"{a.shape[-1]} (last dim of a) != {b.shape[-2 if b.ndim > 1 else 0]} "
                "(second-to-last dim of b); transpose one operand"
            )
        ctx.amp = amp.current_policy()  # mixed precision (minigrad.amp.autocast); None = float32
        if ctx.amp is not None:  # round both operands to the compute format; accumulate in fp32
            a, b = amp.cast_inputs(ctx.amp, a, b, b_is_weight=False)
        ctx.save_for_backward(a, b)
        ctx.fused = _fused(a) if ctx.amp is None else None
        if ctx.fused is not None:  # batched products as one GEMM / threads over the batch
            return ctx.fused.matmul_forward(a, b)
        return a @ b if ctx.amp is None else amp.cast_output(ctx.amp, a @ b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        if ctx.amp is not None:  # the incoming gradient is stored in the gradient format
            g = amp.cast_grad(ctx.amp, g)
        if ctx.fused is not None and (grads := ctx.fused.matmul_backward(a, b, g)) is not None:
            return grads
        a2 = a[None, :] if a.ndim == 1 else a  # promote 1-D operands as forward did
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g.reshape(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1]))
        ga = g2 @ np.swapaxes(b2, -1, -2)  # y = a @ b  =>  da = g @ b^T
        gb = np.swapaxes(a2, -1, -2) @ g2  #               db = a^T @ g
        ga = unbroadcast(ga, a2.shape).reshape(a.shape)
        gb = unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb


# ================================================================ elementwise unary ops
class Neg(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Exp(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * out,)


class Log(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g / a,)


class Sqrt(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        out = np.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g / (2 * out),)


class Tanh(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * (1 - out * out),)


class Sigmoid(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        # 0.5 * (1 + tanh(a / 2)) never overflows, unlike 1 / (1 + exp(-a))
        out = 0.5 * (1 + np.tanh(0.5 * a))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * out * (1 - out),)


class Relu(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        out = np.maximum(a, 0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * (out > 0),)


class Abs(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g * np.sign(a),)


class Clip(Function):
    """Clamp to [lo, hi]; the gradient passes where lo <= x <= hi, bounds included, as in torch
    (the output follows x on the inside side of a bound)."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, lo, hi):
        ctx.save_for_backward(a)
        ctx.bounds = (lo, hi)
        return np.clip(a, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        lo, hi = ctx.bounds
        inside = np.ones(a.shape, dtype=bool)
        if lo is not None:
            inside &= a >= lo
        if hi is not None:
            inside &= a <= hi
        return (g * inside,)


class Cast(Function):
    """a.astype(dtype); backward casts the gradient back to the input's dtype."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return (g.astype(ctx.dtype),)


class Where(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, b, *, cond):
        _broadcast_shape("where", cond.shape, a.shape, b.shape)
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, b.shape)
        return np.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved
        sa, sb = ctx.shapes
        return unbroadcast(np.where(cond, g, 0), sa), unbroadcast(np.where(cond, 0, g), sb)


# ================================================================ reductions
def _norm_axis(axis, ndim):
    """axis (None, an int, or a tuple/list of ints) -> tuple of non-negative axes, validated."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in axes:  # a 0-d tensor takes axis 0 or -1 and reduces over nothing (as in PyTorch)
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    if ndim == 0:
        return ()
    unique = tuple(sorted({a % ndim for a in axes}))
    if len(unique) != len(axes):
        raise ValueError(f"axis {axis} names an axis twice")
    return unique


def _expand_reduced(g, axes, keepdims):
    """Give a reduced gradient back its reduced axes (as size 1) so it broadcasts to the input."""
    if not keepdims:
        g = np.expand_dims(g, axes) if axes else g
    return g


class Sum(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, _norm_axis(axis, a.ndim), keepdims
        return np.asarray(a.sum(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.axes, ctx.keepdims)
        return (np.broadcast_to(g, ctx.shape).copy(),)


class Mean(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, axis=None, keepdims=False):
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, _norm_axis(axis, a.ndim), keepdims
        ctx.count = int(np.prod([a.shape[i] for i in ctx.axes]))
        return np.asarray(a.mean(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        g = _expand_reduced(g, ctx.axes, ctx.keepdims)
        return (np.broadcast_to(g / ctx.count, ctx.shape).copy(),)


class Std(Function):
    """Standard deviation over axes with Bessel's `correction`: out = sqrt(sum(d^2) / dof), with
    d = a - mean(a) and dof = n - correction. Its own op rather than var().sqrt(): on a constant
    slice the chain rule through sqrt gives 0 * 1/(2*0) = NaN, and torch defines the gradient
    there as 0."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, axis=None, keepdims=False, correction=1):
        ctx.axes, ctx.keepdims = _norm_axis(axis, a.ndim), keepdims
        ctx.dof = max(int(np.prod([a.shape[i] for i in ctx.axes])) - correction, 0)
        d = a - a.mean(axis=ctx.axes, keepdims=True)
        out = np.sqrt((d * d).sum(axis=ctx.axes, keepdims=True) / ctx.dof)
        ctx.save_for_backward(d, out)
        return out if keepdims else np.squeeze(out, axis=ctx.axes)

    @staticmethod
    def backward(ctx, g):
        d, out = ctx.saved
        g = _expand_reduced(g, ctx.axes, ctx.keepdims)
        # out = sqrt(sum(d^2) / dof)  =>  da = g * d / (dof * out)  (the mean's term sums to 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.where(out == 0, 0, g * d / (ctx.dof * out)),)


class Max(Function):
    """max over axes; when several elements tie for the max they share the gradient equally."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, axis=None, keepdims=False, reduce=np.max):
        ctx.axes, ctx.keepdims = _norm_axis(axis, a.ndim), keepdims
        out = np.asarray(reduce(a, axis=ctx.axes, keepdims=True))
        ctx.save_for_backward(a == out)
        return out if keepdims else np.asarray(out.squeeze(axis=ctx.axes) if ctx.axes else out)

    @staticmethod
    def backward(ctx, g):
        (hit,) = ctx.saved
        g = _expand_reduced(g, ctx.axes, ctx.keepdims)
        return (g * hit / hit.sum(axis=ctx.axes, keepdims=True),)


# ================================================================ shape ops
class Reshape(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, shape):
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(
                f"reshape: cannot reshape {a.shape} ({a.size} elements) into {shape}"
            ) from None

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


class Transpose(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, axes):
        ctx.axes = axes
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx, g):
        return (np.transpose(g, np.argsort(ctx.axes)),)


class Expand(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, shape):
        ctx.shape = a.shape
        if _broadcast_shape("expand", a.shape, shape) != tuple(shape):
            raise ValueError(
                f"expand: cannot expand shape {a.shape} to {tuple(shape)}: each axis keeps its size "
                "or grows from 1, and new axes go in front (to shrink an axis, index or sum it)"
            )
        return np.broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        return (unbroadcast(g, ctx.shape),)


def _is_basic(index) -> bool:
    """True for ints, slices, Ellipsis and None (a view; no element can be picked twice)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice, type(Ellipsis), type(None))) for i in parts)


class GetItem(Function):
    """a[index]; backward scatters into zeros, adding where integer indices repeat."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, a, *, index):
        ctx.shape = a.shape
        ctx.basic = _is_basic(index)
        ctx.save_for_backward(index)
        return np.asarray(a[index])

    @staticmethod
    def backward(ctx, g):
        (index,) = ctx.saved
        out = np.zeros(ctx.shape, dtype=g.dtype)
        if ctx.basic:  # a view picks each element at most once: plain assignment is exact
            out[index] = g
        else:  # integer arrays may repeat an index: add.at sums the repeats
            np.add.at(out, index, g)
        return (out,)


class Cat(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, *arrays, axis=0):
        shapes = ", ".join(str(a.shape) for a in arrays)
        nd = arrays[0].ndim
        if nd == 0 or not -nd <= axis < nd:
            raise ValueError(f"cat: axis {axis} is out of range for shapes {shapes} (0-d tensors: use stack)")
        ax = axis % nd
        if len({a.shape[:ax] + a.shape[ax + 1:] if a.ndim == nd else None for a in arrays}) > 1:
            raise ValueError(f"cat: shapes {shapes} differ outside axis {axis}")
        ctx.axis, ctx.sizes = ax, [a.shape[ax] for a in arrays]
        return np.concatenate(arrays, axis=ax)

    @staticmethod
    def backward(ctx, g):
        return tuple(np.split(g, np.cumsum(ctx.sizes)[:-1], axis=ctx.axis))


class Stack(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        if len({a.shape for a in arrays}) > 1:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ValueError(f"stack: all inputs need the same shape, got {shapes}")
        return np.stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        return tuple(np.moveaxis(g, ctx.axis, 0))


def _one_axis(op: str, axis, shape: tuple) -> int:
    """`axis` (maybe negative) of `shape` as a non-negative int, or an error naming `op`."""
    nd = len(shape)
    if not isinstance(axis, (int, np.integer)) or not -nd <= axis < nd:
        raise ValueError(f"{op}: axis {axis!r} is out of range for shape {shape} (valid: {-nd} to {nd - 1})")
    return int(axis) % nd


def _int_array(op: str, index) -> np.ndarray:
    index = index.data if isinstance(index, Tensor) else np.asarray(index)
    if index.dtype.kind not in "iu":
        raise TypeError(f"{op}: index must hold integers, got dtype {index.dtype}")
    return index


def _check_range(op: str, index: np.ndarray, n: int, axis) -> None:
    """Every index in [0, n), as torch requires of gather and index_select (no negative ones)."""
    if index.size and (index.min() < 0 or index.max() >= n):
        bad = index.min() if index.min() < 0 else index.max()
        raise IndexError(f"{op}: index {bad} is out of range for axis {axis} of size {n} (valid: 0 to {n - 1})")


def _shape_arg(args: tuple) -> tuple:
    """A shape (or axes) given as f(2, 3) or f((2, 3)): both become (2, 3)."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


# ================================================================ NumPy's and PyTorch's names
_TORCH_NAMES = (("dim", "axis"), ("keepdim", "keepdims"))


def torch_names(fn):
    """Let `fn`, which takes NumPy's `axis=` / `keepdims=`, also take PyTorch's `dim=` / `keepdim=`.

    Giving both spellings of one argument is a TypeError, as giving any argument twice is."""

    @functools.wraps(fn)
    def with_torch_names(*args, **kwargs):
        if kwargs:
            for torch_name, name in _TORCH_NAMES:
                if torch_name in kwargs:
                    if name in kwargs:
                        raise TypeError(
                            f"{fn.__name__}: got both {name}= and {torch_name}= (NumPy's and "
                            "PyTorch's name for the same argument); pass one of them"
                        )
                    kwargs[name] = kwargs.pop(torch_name)
        return fn(*args, **kwargs)

    return with_torch_names


class _Size(int):
    """`Tensor.size`: the number of elements, an int as NumPy's `a.size` (which code written for
    arrays reads), that called is PyTorch's `t.size(dim=None)`: the shape as a tuple, or the
    length of axis `dim`."""

    def __new__(cls, shape: tuple):
        self = super().__new__(cls, _prod(shape))
        self.shape = shape
        return self

    def __call__(self, dim=None):
        if dim is None:
            return self.shape
        nd = len(self.shape)
        if not -nd <= dim < nd:
            raise IndexError(
                f"size: dim {dim} is out of range for shape {self.shape} (valid: {-nd} to {nd - 1})"
            )
        return self.shape[dim]


def _correction(op: str, correction, unbiased) -> int:
    """Bessel's correction from torch's two spellings: correction=k, or unbiased=True (1) / False (0)."""
    if unbiased is not None and correction is not None:
        raise TypeError(f"{op}: give correction= or unbiased= (True is correction=1, False is 0), not both")
    if unbiased is not None:
        return 1 if unbiased else 0
    return 1 if correction is None else correction


# x += y and friends: the op recorded when a gradient must flow, the ufunc that writes into .data
_INPLACE = {
    "+=": (Add, np.add), "-=": (Sub, np.subtract), "*=": (Mul, np.multiply), "/=": (Div, np.true_divide),
}


# ================================================================ Tensor
def _as_array(data, dtype=None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.generic):  # NumPy scalars (what ufuncs return for 0-d) keep their dtype
        data = np.asarray(data)
    if isinstance(data, np.ndarray):
        return data if dtype is None else data.astype(dtype, copy=False)
    arr = np.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype == np.float64:
        arr = arr.astype(np.float32)  # Python floats become float32, as in PyTorch
    return arr


_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}  # bool < integer < floating < complex
DEFAULT_FLOAT = np.dtype(np.float32)  # what Python floats and integer division give, as torch's default


def _promote_types(a: np.dtype, b: np.dtype) -> np.dtype:
    """torch.promote_types: within a category (and between floating and complex) NumPy's answer
    (uint8 + int8 = int16, complex64 + float64 = complex128); across categories the higher one in
    its own width (int64 + float32 = float32 where NumPy says float64)."""
    ca, cb = _CATEGORY[a.kind], _CATEGORY[b.kind]
    if ca == cb or min(ca, cb) >= 2:
        return np.result_type(a, b)
    return a if ca > cb else b


def result_dtype(*tensors) -> np.dtype:
    """torch's type promotion (torch docs, "Tensor Attributes", type promotion; ATen's
    `combine_categories`). The operands with at least one axis give one dtype, the 0-d ones
    another (`_promote_types` within each group); the 0-d one counts only where it is of a higher
    category (bool < integer < floating < complex). So float16 with a float64 0-d tensor stays
    float16, int64 with a float64 0-d tensor is float64, and float64 with a complex64 0-d tensor
    is complex128. One difference: float16 with a complex operand is complex64 here, complex32 in
    torch (NumPy has no complex32)."""
    dims = [t.dtype for t in tensors if t.ndim]
    zeros = [t.dtype for t in tensors if not t.ndim]
    if not dims or not zeros:
        return functools.reduce(_promote_types, dims or zeros)
    high, low = functools.reduce(_promote_types, dims), functools.reduce(_promote_types, zeros)
    ch, cl = _CATEGORY[high.kind], _CATEGORY[low.kind]
    if cl <= ch:
        return high
    return np.result_type(high, np.complex64) if (ch, cl) == (2, 3) else low  # complex of the floats' width


def _promoted(*tensors, true_divide=False):
    """The tensors cast to their `result_dtype` (to the default float for `/` of integers)."""
    first = tensors[0].dtype
    if all(t.dtype == first for t in tensors) and (not true_divide or first.kind in "fc"):
        return tensors  # the usual case, at the cost of the comparisons
    dtype = _op_dtype(*tensors, true_divide=true_divide)
    return [t.to(dtype) for t in tensors]


def _op_dtype(*tensors, true_divide=False) -> np.dtype:
    dtype = result_dtype(*tensors)
    return DEFAULT_FLOAT if true_divide and dtype.kind not in "fc" else dtype


def _refuse_bool_operands(op, a, b, given):
    """torch refuses a bool in a subtraction (`given`: the operand as passed, a Python bool
    included) and a bool to a bool's power; say what to do instead."""
    if op is Sub and (np.bool_ in (a.dtype, b.dtype) or isinstance(given, (bool, np.bool_))):
        raise TypeError("x - y: subtraction with a bool is not supported (as in torch); to invert "
                        "a mask use ~mask or mask.logical_not(), else convert it first (mask.to(np.int64))")
    if op is Pow and a.dtype == b.dtype == np.bool_:
        raise TypeError("x ** y: a bool tensor to a bool tensor's power is not supported (as in torch); "
                        "convert one first (y.to(np.int64))")


class Tensor:
    """An n-d array that remembers how it was computed, so gradients can flow back to it.

    `data` is the NumPy array; `grad` accumulates d loss / d self for tensors that require grad.
    """

    __array_priority__ = 100  # make `ndarray + Tensor` call Tensor.__radd__
    __hash__ = object.__hash__  # == compares elementwise (as in torch); hashing stays by identity
    _modified_at = 0  # autograd._state["inplace_ops"] when += and friends last wrote .data
    _writes = None  # [number of the last write] shared with the tensors `detach` made of it

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        # every op output passes here: skip _as_array's isinstance chain for a plain ndarray
        self.data = data if dtype is None and type(data) is np.ndarray else _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(
                f"only floating-point tensors can require grad; got dtype {self.data.dtype}. "
                "Convert first, e.g. Tensor(x.astype(np.float32), requires_grad=True)"
            )
        self.requires_grad = requires_grad
        self.grad: np.ndarray | None = None
        self._ctx = None

    # ------------------------------------------------------------ attributes
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: _Size(self.data.shape))  # an int; t.size() is the shape (see _Size)
    is_leaf = property(lambda self: self._ctx is None)

    def numel(self) -> int:
        return self.data.size

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{grad})"

    def __len__(self):
        return len(self.data)

    def item(self):
        return self._one_element("item()").item()

    def _one_element(self, what: str) -> np.ndarray:
        if self.data.size != 1:
            raise ValueError(
                f"{what}: only a one-element tensor converts to a Python number; this one has shape "
                f"{self.shape}; reduce it first (.sum(), .mean(), ...) or index one element"
            )
        return self.data

    def __float__(self):
        return float(self._one_element("float()").item())

    def __int__(self):
        return int(self._one_element("int()").item())

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(
                f"Boolean value of Tensor with more than one value is ambiguous: shape {self.shape}; "
                "comparisons are elementwise, so say (a == b).all() or (a == b).any()"
            )
        return bool(self.data.item())

    def numpy(self) -> np.ndarray:
        return self.data

    def detach(self) -> "Tensor":
        """The same array, cut from the graph. A write into it in place is a write into this
        tensor's data: the two share one record of their last write, so the saved-tensor check
        sees it (as torch's shared version counter)."""
        out = Tensor(self.data)
        if self._writes is None:
            self._writes = [self._modified_at]
        out._writes = self._writes
        return out

    def to(self, dtype) -> "Tensor":
        """This tensor in `dtype` (np.float32, "float64", ...), itself if already so (as torch).

        A floating-point result is differentiable: backward casts the gradient back, so the input
        gets it in its own dtype. An integer or bool result has no gradient, as in torch.
        `"cpu"` is accepted and returns the tensor itself: minigrad runs on the CPU only."""
        if isinstance(dtype, str) and dtype == "cpu":
            return self
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(
                f"to: expected a NumPy dtype or its name (np.float32, 'float64'), or 'cpu'; got {dtype!r}"
            ) from None
        if dtype == self.dtype:
            return self
        if dtype.kind not in "fc":
            return Tensor(self.data.astype(dtype))
        return Cast.apply(self, dtype=dtype)

    def float(self) -> "Tensor":
        return self.to(np.float32)

    def double(self) -> "Tensor":
        return self.to(np.float64)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Switch gradient tracking of this leaf in place and return it (torch.Tensor.requires_grad_).

        `p.requires_grad_(False)` freezes a parameter: backward leaves `p.grad` None, and ops
        that check `ctx.needs_input_grad` (Linear, Pow) skip computing its gradient."""
        if requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(
                f"requires_grad_: only floating-point tensors can require grad; got dtype "
                f"{self.data.dtype}. Convert first, e.g. Tensor(x.astype(np.float32)).requires_grad_()"
            )
        if not requires_grad and not self.is_leaf:
            raise RuntimeError(
                "requires_grad_(False): this tensor is the output of an op, not a leaf; "
                "use .detach() for a copy without history"
            )
        self.requires_grad = bool(requires_grad)
        return self

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d self / d leaf (times `grad`) into every leaf's `.grad`."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no graph")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward: grad can be implicit only for a scalar output, but the output has "
                    f"shape {self.shape}; pass grad=<array of that shape> or reduce with .sum()"
                )
            grad = np.ones(self.shape, dtype=self.dtype)
        else:
            grad = _as_array(grad, self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape}, output has {self.shape}")
        autograd.backward(self, grad, retain_graph=retain_graph)

    # ------------------------------------------------------------ operators
    def _other(self, x, true_divide=False):
        """A constant operand as a Tensor. Next to a float tensor it takes the tensor's dtype (so
        `x * 0.5` and `x + a float64 array` stay float32), unless it is complex (a complex number:
        the complex of the tensor's width) or a bool array (kept). Next to an integer or bool tensor a
        number is weak, as in torch: an integer takes the tensor's dtype (wrapping around, as
        torch: uint8 + 300 adds 44; bool + 1 is int64; divided by, the default float32), a float
        the default float32, a complex complex64; an array (a bool array included) keeps its own
        dtype for `result_dtype`."""
        if isinstance(x, Tensor):
            return x
        if self.dtype.kind in "fc":
            if isinstance(x, np.ndarray) and x.dtype.kind in "bc":
                return Tensor(x)  # bool stays bool (for the subtraction check), complex complex
            if isinstance(x, complex) and self.dtype.kind == "f":  # the complex of x's width
                return Tensor(_as_array(x, np.result_type(self.dtype, np.complex64)))
            return Tensor(_as_array(x, self.dtype))
        if isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, (bool, np.bool_)):
            kind = np.asarray(x).dtype.kind
            if kind in "fc" or true_divide:
                return Tensor(_as_array(x, np.complex64 if kind == "c" else DEFAULT_FLOAT))
            return Tensor(np.asarray(x).astype(self.dtype if self.dtype.kind != "b" else np.int64))
        return Tensor(_as_array(x))

    def _binary(self, op, x, *, reflected=False, true_divide=False):
        if type(x) is Tensor and x.data.dtype == self.data.dtype and self.data.dtype.kind in "fc":
            return op.apply(x, self) if reflected else op.apply(self, x)  # the common case, quickly
        other = self._other(x, true_divide)
        a, b = (other, self) if reflected else (self, other)
        _refuse_bool_operands(op, a, b, x)
        return op.apply(*_promoted(a, b, true_divide=true_divide))

    def __add__(self, x): return self._binary(Add, x)
    def __radd__(self, x): return self._binary(Add, x, reflected=True)
    def __sub__(self, x): return self._binary(Sub, x)
    def __rsub__(self, x): return self._binary(Sub, x, reflected=True)
    def __mul__(self, x): return self._binary(Mul, x)
    def __rmul__(self, x): return self._binary(Mul, x, reflected=True)
    def __truediv__(self, x): return self._binary(Div, x, true_divide=True)
    def __rtruediv__(self, x): return self._binary(Div, x, reflected=True, true_divide=True)
    def __matmul__(self, x): return self._binary(MatMul, x)
    def __rmatmul__(self, x): return self._binary(MatMul, x, reflected=True)
    def __neg__(self): return Neg.apply(self)

    # comparisons: elementwise, a bool tensor, no gradient (as in torch)
    def _compare(self, x, ufunc, symbol):
        if isinstance(x, Tensor):
            x = x.data
        elif not isinstance(x, (np.ndarray, np.generic, numbers.Number)):
            return NotImplemented  # None, a string, ...: Python falls back to identity for ==, !=
        # a Python number stays one, so NumPy compares in the tensor's dtype (as torch does)
        _broadcast_shape(symbol, self.shape, np.shape(x))
        return Tensor(ufunc(self.data, x))

    def __invert__(self):
        """~t: logical not of a bool tensor, bitwise not of an integer one (as torch); no gradient."""
        if self.dtype.kind not in "biu":
            raise TypeError(f"~x: x must be a bool or integer tensor, got {self.dtype}; "
                            f"for a mask of x use x == 0 or x.logical_not()")
        return Tensor(~self.data)

    def logical_not(self):
        """A bool tensor, True where this one is 0 or False (torch.logical_not); no gradient."""
        return Tensor(np.logical_not(self.data))

    def __eq__(self, x): return self._compare(x, np.equal, "==")
    def __ne__(self, x): return self._compare(x, np.not_equal, "!=")
    def __lt__(self, x): return self._compare(x, np.less, "<")
    def __le__(self, x): return self._compare(x, np.less_equal, "<=")
    def __gt__(self, x): return self._compare(x, np.greater, ">")
    def __ge__(self, x): return self._compare(x, np.greater_equal, ">=")

    # in place (the rule is in the module docstring)
    def _inplace(self, x, symbol):
        op, ufunc = _INPLACE[symbol]
        other = self._other(x, symbol == "/=")
        _refuse_bool_operands(op, self, other, x)
        dtype = _op_dtype(self, other, true_divide=symbol == "/=")
        if _CATEGORY[dtype.kind] > _CATEGORY[self.dtype.kind]:  # torch: float into int, complex into float
            raise TypeError(
                f"x {symbol} y: the result is {dtype} and cannot be written into x's {self.dtype} in place; "
                f"write x = x {symbol[0]} y, or convert x first (x.to(np.float32))"
            )
        if _state["grad_enabled"] and (self.requires_grad or other.requires_grad):
            if self.requires_grad and self.is_leaf:
                raise RuntimeError(
                    f"a leaf Variable that requires grad is being used in an in-place operation "
                    f"(x {symbol} y on shape {self.shape}): wrap an update of a parameter in "
                    f"`with minigrad.no_grad():`, or write x = x {symbol[0]} y for a new tensor"
                )
            # recorded out of place (Python rebinds the name to it), in x's dtype as in place
            return op.apply(self.to(dtype), other.to(dtype)).to(self.dtype)
        if _broadcast_shape(symbol, self.shape, other.shape) != self.shape:
            raise ValueError(
                f"x {symbol} y: y of shape {other.shape} would make x of shape {self.shape} larger; "
                f"in place the result must keep x's shape (write x = x {symbol[0]} y for a new tensor)"
            )
        if not self.data.flags.writeable:
            raise ValueError(
                f"x {symbol} y: x (shape {self.shape}) is a read-only view, e.g. from expand; "
                f"copy it first or write x = x {symbol[0]} y"
            )
        # the category check above is torch's rule; NumPy's "same_kind" would refuse uint8 += int8
        ufunc(self.data, other.data, out=self.data, casting="unsafe")
        _state["inplace_ops"] += 1
        self._modified_at = _state["inplace_ops"]
        if self._writes is not None:
            self._writes[0] = self._modified_at
        return self

    def __iadd__(self, x): return self._inplace(x, "+=")
    def __isub__(self, x): return self._inplace(x, "-=")
    def __imul__(self, x): return self._inplace(x, "*=")
    def __itruediv__(self, x): return self._inplace(x, "/=")

    def __pow__(self, x):
        if isinstance(x, (int, float)):  # NumPy scalars too, as Python numbers: a np.float64
            # exponent would promote a float32 tensor to float64 (x * np.float64(2) does not)
            base = self  # torch: int ** float is the default float; bool ** int is int64, ** bool bool
            if isinstance(x, float) and self.dtype.kind not in "fc":
                base = self.to(DEFAULT_FLOAT)
            elif self.dtype == np.bool_:
                if isinstance(x, bool):
                    return Tensor(self.data.copy() if x else np.ones_like(self.data))
                base = self.to(np.int64)
            return PowScalar.apply(base, p=float(x) if isinstance(x, float) else int(x))
        return self._binary(Pow, x)

    def __rpow__(self, x):
        return self._binary(Pow, x, reflected=True)

    def pow(self, exponent):
        return self**exponent

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        elif isinstance(index, list):
            index = np.asarray(index)
        return GetItem.apply(self, index=index)

    # ------------------------------------------------------------ math
    def _floating(self):
        """Itself if floating (or complex), else in the default float: torch's exp of an integer
        tensor is float32 (NumPy's float64)."""
        return self if self.dtype.kind in "fc" else self.to(DEFAULT_FLOAT)

    def exp(self): return Exp.apply(self._floating())
    def log(self): return Log.apply(self._floating())
    def sqrt(self): return Sqrt.apply(self._floating())
    def tanh(self): return Tanh.apply(self._floating())
    def sigmoid(self): return Sigmoid.apply(self._floating())
    def relu(self): return Relu.apply(self)
    def abs(self): return Abs.apply(self)

    def clamp(self, min=None, max=None):
        """Limit to [min, max] (numbers; either may be None). The gradient passes where
        min <= x <= max, bounds included, as in torch. torch.clip is the same op."""
        if min is None and max is None:
            raise ValueError("clamp: give min, max or both (both None would change nothing)")
        # NumPy scalars as Python numbers: a np.float64 bound would make a float32 tensor float64
        lo, hi = (b.item() if isinstance(b, np.generic) else b for b in (min, max))
        x = self._floating() if isinstance(lo, float) or isinstance(hi, float) else self  # torch's dtype
        return Clip.apply(x, lo=lo, hi=hi)

    clip = clamp

    # Reductions take axis=/keepdims= or dim=/keepdim=. max and min return the values only, like
    # torch.amax / amin (torch's t.max(dim) also returns indices: use argmax for those).
    @torch_names
    def sum(self, axis=None, keepdims=False): return Sum.apply(self, axis=axis, keepdims=keepdims)

    @torch_names
    def mean(self, axis=None, keepdims=False): return Mean.apply(self, axis=axis, keepdims=keepdims)

    @torch_names
    def max(self, axis=None, keepdims=False): return Max.apply(self, axis=axis, keepdims=keepdims)

    @torch_names
    def min(self, axis=None, keepdims=False):
        return Max.apply(self, axis=axis, keepdims=keepdims, reduce=np.min)

    @torch_names
    def var(self, axis=None, *, keepdims=False, correction=None, unbiased=None):
        """Variance with Bessel's `correction` (default 1, unbiased, as torch.var), also spelled
        unbiased=True/False. Keyword-only after `axis`, so that torch's positional
        var(dim, unbiased) is refused rather than read as keepdims."""
        correction = _correction("var", correction, unbiased)
        n = int(np.prod([self.shape[i] for i in _norm_axis(axis, self.ndim)]))
        d = self - self.mean(axis=axis, keepdims=True)
        return (d * d).sum(axis=axis, keepdims=keepdims) / max(n - correction, 0)

    @torch_names
    def std(self, axis=None, *, keepdims=False, correction=None, unbiased=None):
        """Standard deviation: the square root of `var` (same arguments); its gradient is 0
        where a slice is constant, as torch's."""
        correction = _correction("std", correction, unbiased)
        return Std.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    # no gradient: integer indices and booleans
    @torch_names
    def argmax(self, axis=None, keepdims=False):
        """Index of the largest element along `axis` (of the flattened tensor for None), int64."""
        return Tensor(np.argmax(self.data, axis=axis, keepdims=keepdims).astype(np.int64))

    @torch_names
    def argmin(self, axis=None, keepdims=False):
        return Tensor(np.argmin(self.data, axis=axis, keepdims=keepdims).astype(np.int64))

    @torch_names
    def all(self, axis=None, keepdims=False):
        return Tensor(np.all(self.data, axis=axis, keepdims=keepdims))

    @torch_names
    def any(self, axis=None, keepdims=False):
        return Tensor(np.any(self.data, axis=axis, keepdims=keepdims))

    # ------------------------------------------------------------ shapes
    def reshape(self, *shape):
        shape = _shape_arg(shape)
        return Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def transpose(self, *axes):
        """No axes: reverse all axes. Two axes: swap them, as torch.transpose(x, i, j) does."""
        if not axes:
            return self.T
        if len(axes) != 2:
            raise ValueError(f"transpose takes two axes to swap (got {axes}); use permute for a full order")
        for a in axes:
            if not -self.ndim <= a < self.ndim:
                raise ValueError(f"transpose: axis {a} is out of range for shape {self.shape}")
        i, j = (a % self.ndim for a in axes)
        perm = list(range(self.ndim))
        perm[i], perm[j] = perm[j], perm[i]
        return Transpose.apply(self, axes=tuple(perm))

    def permute(self, *axes):
        """Reorder all axes, as torch.permute / np.transpose(x, axes)."""
        axes = _shape_arg(axes)
        if sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute: {axes} is not a permutation of the {self.ndim} axes of {self.shape}")
        return Transpose.apply(self, axes=tuple(a % self.ndim for a in axes))

    @property
    def T(self):
        return Transpose.apply(self, axes=tuple(reversed(range(self.ndim))))

    def t(self):
        """The transpose of a matrix (a 0-d or 1-D tensor unchanged), as torch.Tensor.t."""
        if self.ndim > 2:
            raise ValueError(
                f"t: expects a tensor with <= 2 dimensions, got shape {self.shape}; use .mT to "
                "transpose the last two axes, or .transpose(i, j)"
            )
        return self.T

    @property
    def mT(self):
        """Each matrix of a batch transposed: the last two axes swapped."""
        if self.ndim < 2:
            raise ValueError(f"mT: needs at least 2 dimensions (a matrix), got shape {self.shape}")
        return self.transpose(-2, -1)

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge axes start_dim..end_dim (inclusive) into one, as torch.flatten; 0-d becomes (1,)."""
        if self.ndim == 0:
            return self.reshape(1)
        for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not -self.ndim <= d < self.ndim:
                raise ValueError(f"flatten: {name} {d} is out of range for shape {self.shape}")
        s, e = start_dim % self.ndim, end_dim % self.ndim
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} is after end_dim {end_dim} for shape {self.shape}")
        return self.reshape(self.shape[:s] + (_prod(self.shape[s:e + 1]),) + self.shape[e + 1:])

    def expand(self, *shape):
        shape = _shape_arg(shape)
        # -1 keeps the existing size, as in PyTorch
        lead = len(shape) - self.ndim
        if -1 in shape[:lead]:
            raise ValueError(
                f"expand: -1 (keep the size) is not allowed in a new leading axis: {self.shape} "
                f"-> {shape}; give that axis's size"
            )
        shape = tuple(self.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
        return Expand.apply(self, shape=shape)

    @torch_names
    def squeeze(self, axis=None):
        if axis is None:
            shape = tuple(s for s in self.shape if s != 1)
        else:
            axes = _norm_axis(axis, self.ndim)
            for a in axes:
                if self.shape[a] != 1:
                    raise ValueError(f"squeeze: axis {a} has size {self.shape[a]}, not 1 (shape {self.shape})")
            shape = tuple(s for i, s in enumerate(self.shape) if i not in axes)
        return self.reshape(shape)

    @torch_names
    def unsqueeze(self, axis):
        if not -self.ndim - 1 <= axis <= self.ndim:
            raise ValueError(
                f"unsqueeze: axis {axis} is out of range for shape {self.shape} "
                f"(valid: {-self.ndim - 1} to {self.ndim})"
            )
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    # ------------------------------------------------------------ pieces and lookups
    # These are indexing, so their gradient is GetItem's: slices write the upstream gradient back
    # in place, integer indices scatter-add it (a row picked twice gets both gradients).
    @torch_names
    def split(self, split_size_or_sections, axis=0) -> tuple:
        """Pieces along `axis`, as torch.split: an int gives pieces of that size (the last one
        smaller if the size does not divide the axis); a list gives the size of each piece."""
        ax = _one_axis("split", axis, self.shape)
        n = self.shape[ax]
        if isinstance(split_size_or_sections, (int, np.integer)):
            size = int(split_size_or_sections)
            if size < 1:
                raise ValueError(f"split: split_size must be a positive integer, got {size}")
            sizes = [size] * (n // size) + ([n % size] if n % size or n == 0 else [])
        else:
            sizes = [int(s) for s in split_size_or_sections]
            if any(s < 0 for s in sizes) or sum(sizes) != n:
                raise ValueError(
                    f"split: sections {sizes} must be sizes >= 0 summing to {n}, the length of "
                    f"axis {axis} of shape {self.shape}"
                )
        ends = np.cumsum(sizes)
        lead = (slice(None),) * ax
        return tuple(self[lead + (slice(int(e - s), int(e)),)] for s, e in zip(sizes, ends))

    @torch_names
    def chunk(self, chunks: int, axis=0) -> tuple:
        """At most `chunks` pieces along `axis` of ceil(n / chunks) elements each (the last one
        smaller), as torch.chunk: chunk(4) of 5 rows gives 2, 2 and 1 rows (three pieces)."""
        if not isinstance(chunks, (int, np.integer)) or chunks < 1:
            raise ValueError(f"chunk: chunks must be a positive integer, got {chunks!r}")
        n = self.shape[_one_axis("chunk", axis, self.shape)]
        if n == 0:  # torch gives `chunks` empty pieces
            return self.split([0] * int(chunks), axis)
        return self.split(-(-n // int(chunks)), axis)

    @torch_names
    def gather(self, axis, index) -> "Tensor":
        """out[i][j][k] = self[index[i][j][k]][j][k] for axis 0 (and so on), as torch.gather:
        `index` has self's number of dimensions, at most self's size on every other axis, and
        values in [0, self.shape[axis])."""
        index = _int_array("gather", index)
        ax = _one_axis("gather", axis, self.shape)
        if index.ndim != self.ndim or any(i > n for d, (i, n) in enumerate(zip(index.shape, self.shape)) if d != ax):
            raise ValueError(
                f"gather: index of shape {index.shape} does not fit input of shape {self.shape} along "
                f"axis {axis}: it needs {self.ndim} dimensions, each no larger than the input's except axis {axis}"
            )
        _check_range("gather", index, self.shape[ax], axis)
        # the position of every output element in self: index along `axis`, its own coordinate elsewhere
        positions = tuple(index if d == ax else np.arange(m).reshape((m,) + (1,) * (index.ndim - d - 1))
                       for d, m in enumerate(index.shape))
        return self[positions]

    @torch_names
    def index_select(self, axis, index) -> "Tensor":
        """The entries `index` (a 1-D integer array) along `axis`, as torch.index_select."""
        index = _int_array("index_select", index)
        if index.ndim > 1:
            raise ValueError(f"index_select: index must be 1-D, got shape {index.shape}")
        ax = _one_axis("index_select", axis, self.shape)
        _check_range("index_select", index, self.shape[ax], axis)
        return self[(slice(None),) * ax + (index.reshape(-1),)]

    def masked_fill(self, mask, value) -> "Tensor":
        """`value` where the boolean `mask` is True, self elsewhere; mask broadcasts against self,
        as torch.masked_fill. `value` is a number or a 0-d tensor (which then gets a gradient)."""
        mask = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"masked_fill: mask must be boolean (True = fill), got dtype {mask.dtype}; "
                            "compare first, e.g. x.masked_fill(ids == pad, 0.0)")
        if np.ndim(value.data if isinstance(value, Tensor) else value) != 0:
            raise ValueError(f"masked_fill: value must be a number or a 0-d tensor, got shape {np.shape(value)}")
        _broadcast_shape("masked_fill", mask.shape, self.shape)
        return Where.apply(self._other(value), self, cond=mask)


# ================================================================ constructors
def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """A new tensor holding a copy of `data`, as torch.tensor: a later write into the caller's
    array does not reach it, nor its own writes (an optimizer step) the caller's array.
    `Tensor(array)` and `as_tensor` share the array instead."""
    return Tensor(_as_array(data, dtype).copy(), requires_grad=requires_grad)


def as_tensor(x) -> Tensor:
    """`x` itself if it is a Tensor (its graph kept), else a constant Tensor of it (torch.as_tensor)."""
    return x if isinstance(x, Tensor) else Tensor(x)


def zeros(*shape, dtype=np.float32, requires_grad=False) -> Tensor:
    shape = _shape_arg(shape)
    return Tensor(np.zeros(shape, dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, requires_grad=False) -> Tensor:
    shape = _shape_arg(shape)
    return Tensor(np.ones(shape, dtype=dtype), requires_grad=requires_grad)


def zeros_like(x, dtype=None, requires_grad=False) -> Tensor:
    """Zeros of `x`'s shape and (unless `dtype` is given) dtype; `x` a Tensor or an array."""
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(np.zeros(x.shape, dtype=x.dtype if dtype is None else dtype), requires_grad=requires_grad)


def ones_like(x, dtype=None, requires_grad=False) -> Tensor:
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(np.ones(x.shape, dtype=x.dtype if dtype is None else dtype), requires_grad=requires_grad)


def full(shape, fill_value, *, dtype=None, requires_grad=False) -> Tensor:
    """`shape` filled with `fill_value`, as torch.full: without `dtype` bool for a bool, int64
    for an integer, float32 for a float."""
    shape = _shape_arg(shape if isinstance(shape, tuple) else (shape,))
    if dtype is None:
        dtype = (np.bool_ if isinstance(fill_value, (bool, np.bool_)) else
                 np.int64 if isinstance(fill_value, numbers.Integral) else
                 DEFAULT_FLOAT if isinstance(fill_value, numbers.Real) else np.complex64)
    return Tensor(np.full(shape, fill_value, dtype=dtype), requires_grad=requires_grad)


def full_like(x, fill_value, *, dtype=None, requires_grad=False) -> Tensor:
    """`fill_value` in `x`'s shape and (unless `dtype` is given) dtype (torch.full_like)."""
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(np.full(x.shape, fill_value, dtype=x.dtype if dtype is None else dtype),
                  requires_grad=requires_grad)


def arange(start, end=None, step=1, *, dtype=None, requires_grad=False) -> Tensor:
    """start, start + step, ... below `end` (arange(n): 0..n-1), as torch.arange: int64 from
    integer arguments, float32 when any is a float (unless `dtype` says otherwise)."""
    if end is None:
        start, end = 0, start
    values = np.arange(start, end, step, dtype=dtype)
    if dtype is None:
        values = values.astype(np.float32 if values.dtype.kind == "f" else np.int64)
    return Tensor(values, requires_grad=requires_grad)


# ================================================================ the default random generator
#: What randomness draws from when no `rng=` is given: `randn`, the initial weights of
#: `nn.Linear` / `nn.Embedding`, and `F.dropout` / `nn.Dropout` masks. `manual_seed` reseeds it
#: in place (it stays the same object). NumPy's global RNG (np.random.seed) is a separate one.
default_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed `default_generator`, as torch.manual_seed seeds torch's; returns it. Randomness given
    an explicit `rng` (a Generator or a seed) neither uses nor advances it."""
    default_generator.bit_generator.state = np.random.default_rng(seed).bit_generator.state
    return default_generator


def as_generator(rng=None) -> np.random.Generator:
    """`default_generator` for None; else np.random.default_rng(rng) (a Generator is returned as
    is, a seed makes a new one)."""
    return default_generator if rng is None else np.random.default_rng(rng)


def randn(*shape, rng=None, dtype=np.float32, requires_grad=False) -> Tensor:
    """Standard normal samples from `rng` (a Generator or seed; default: `default_generator`)."""
    shape = _shape_arg(shape)
    return Tensor(as_generator(rng).standard_normal(shape).astype(dtype), requires_grad=requires_grad)


@torch_names
def cat(tensors, axis=0) -> Tensor:
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    return Cat.apply(*_promoted(*_operands(tensors)), axis=axis)


@torch_names
def stack(tensors, axis=0) -> Tensor:
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    return Stack.apply(*_promoted(*_operands(tensors)), axis=axis)


def _operands(items):
    """The items of cat, stack, where or maximum as Tensors, an array or number beside a Tensor
    converted as the operators do (`Tensor._other`): where(c, 0.5, float16_t) is float16, as torch's."""
    ref = next((t for t in items if isinstance(t, Tensor)), None)
    return [as_tensor(t) if ref is None else ref._other(t) for t in items]


@torch_names
def split(tensor, split_size_or_sections, axis=0) -> tuple:
    """torch.split: see `Tensor.split`."""
    return as_tensor(tensor).split(split_size_or_sections, axis)


@torch_names
def chunk(tensor, chunks: int, axis=0) -> tuple:
    """torch.chunk: see `Tensor.chunk`."""
    return as_tensor(tensor).chunk(chunks, axis)


@torch_names
def gather(input, axis, index) -> Tensor:
    """torch.gather: see `Tensor.gather`."""
    return as_tensor(input).gather(axis, index)


@torch_names
def index_select(input, axis, index) -> Tensor:
    """torch.index_select: see `Tensor.index_select`."""
    return as_tensor(input).index_select(axis, index)


def masked_fill(input, mask, value) -> Tensor:
    """torch.masked_fill: see `Tensor.masked_fill`."""
    return as_tensor(input).masked_fill(mask, value)


def where(cond, a, b) -> Tensor:
    cond = cond.data if isinstance(cond, Tensor) else np.asarray(cond)
    return Where.apply(*_promoted(*_operands([a, b])), cond=cond.astype(bool))


def maximum(a, b) -> Tensor:
    return Maximum.apply(*_promoted(*_operands([a, b])))
