"""The tape: how a graph of Functions is recorded and walked backwards.

Read this file first. Every op in minigrad is a `Function` (minigrad/tensor.py, beside the
`Tensor` it returns) with two static methods side by side:

    forward(ctx, *arrays, **options) -> ndarray     # compute the output from NumPy arrays
    backward(ctx, grad) -> tuple of ndarrays        # vector-Jacobian product: grad wrt each input

`Function.apply` runs `forward` and, when any input needs a gradient, links the output Tensor to a
`Context` (below) holding the inputs and whatever `forward` saved with `ctx.save_for_backward(...)`.
`Tensor.backward()` calls `backward` here, which sorts the recorded graph (iteratively, so deep
graphs do not overflow the Python stack), walks it from the output to the leaves, calls each op's
`backward` once with the sum of the gradients that reached its output, and accumulates into the
leaves' `.grad`. This module needs no Tensor class: it only follows `tensor._ctx` links.

`save_for_backward` is the only way an op keeps arrays alive for backward. That single path lets
`minigrad.memory` count activation bytes exactly: listeners registered with
`add_saved_listener(fn)` are called as `fn("save", ctx, objs)` when arrays are saved and
`fn("free", ctx, objs)` when backward releases them.

In-place writes (`x += y` under `no_grad`, see minigrad/tensor.py) could change an array an op
saved, and its backward would silently be wrong. Instead of torch's per-tensor version counters,
one counter `_state["inplace_ops"]` numbers the writes: each op remembers its value at forward,
each written Tensor the number of its last write (shared with the tensors `detach()` made of it,
which hold the same array), and backward raises, naming the op, when a tensor written after the
op ran shares memory with what the op saved. Not seen: writes to
`.data` itself (the caller's responsibility, as `.data` is in torch) and, unlike torch, a write
to `x` when the op saved a tensor that views `x` (basic indexing such as `x[1:]` gives a view).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import numpy as np

class _ThreadState(threading.local):
    """The modes, one set per thread, as PyTorch's grad mode is thread-local: `no_grad` entered
    on one thread (a simulated worker of `optim.dist.SimComm`, say) leaves the others recording.
    A new thread starts with the defaults. Read and written as `_state["grad_enabled"]`, or as
    `_state.grad_enabled` where it runs per op (`Function.apply`): the item form costs a Python
    call (~0.3 us), three times per op."""

    def __init__(self):
        self.grad_enabled = True
        self.anomaly = False
        self.inplace_ops = 0    # in-place writes (x += y, ...) so far: see _check_saved_unmodified

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, value):
        setattr(self, key, value)


_state = _ThreadState()
_saved_listeners: list[Callable[[str, "Context", tuple], None]] = []
_op_listeners: list[Callable[[str, "Context", Any], None]] = []


# ---------------------------------------------------------------- modes
def is_grad_enabled() -> bool:
    return _state.grad_enabled


class _Mode(contextlib.ContextDecorator):
    """Set `_state[key] = value` inside the block and restore the previous value after it.

    As a decorator, every call of the wrapped function enters a fresh instance
    (`_recreate_cm`): the modes are per thread, and calls on two threads sharing one instance
    would restore each other's saved mode. Previous values are kept on a stack, so one instance
    entered again inside itself (`with m: with m:`) restores each level."""

    key: str
    value: bool

    def __init__(self):
        self._prev: list[bool] = []

    def _recreate_cm(self):
        return type(self)()

    def __enter__(self):
        self._prev.append(_state[self.key])
        _state[self.key] = self.value
        return self

    def __exit__(self, *exc):
        _state[self.key] = self._prev.pop()
        return False


class no_grad(_Mode):
    """Disable graph recording (context manager or decorator), like `torch.no_grad`.

    Inside it ops compute only their forward and save nothing, so inference and zeroth-order
    methods use the memory of a forward pass.
    """

    key, value = "grad_enabled", False


class enable_grad(_Mode):
    """Re-enable graph recording inside a `no_grad` region (used by activation checkpointing)."""

    key, value = "grad_enabled", True


class detect_anomaly(_Mode):
    """Raise at the first op whose forward output or backward gradient holds NaN or inf.

    The error names the op, which pass produced it, and the input shapes. It costs one
    `isfinite` scan per op, so it is off by default.
    """

    key, value = "anomaly", True


def add_saved_listener(fn: Callable[[str, "Context", tuple], None]) -> None:
    """Call `fn(event, ctx, objs)` on every save ("save") and release ("free") of backward state."""
    _saved_listeners.append(fn)


def remove_saved_listener(fn) -> None:
    _saved_listeners.remove(fn)


def add_op_listener(fn: Callable[[str, "Context", Any], None]) -> None:
    """Call `fn("forward", ctx, out)` after every op's forward (ctx.inputs still set, even under
    no_grad) and `fn("backward", ctx, in_grads)` after every op's backward. Used by
    `minigrad.memory.count_flops`; keep listeners cheap."""
    _op_listeners.append(fn)


def remove_op_listener(fn) -> None:
    _op_listeners.remove(fn)


def saved_arrays(objs):
    """The NumPy arrays in `objs` (what an op saved: nested tuples/lists allowed, others skipped)."""
    for o in objs:
        if isinstance(o, np.ndarray):
            yield o
        elif isinstance(o, (tuple, list)):
            yield from saved_arrays(o)


def saved_nbytes(objs) -> int:
    """Bytes of the NumPy arrays in `objs` (other objects count 0)."""
    return sum(a.nbytes for a in saved_arrays(objs))


# ---------------------------------------------------------------- the tape
class Context:
    """What one op remembers between its forward and its backward.

    Ops may set any attribute of their own on it (ctx.shapes, ctx.axis, ...)."""

    saved: tuple = ()  # class defaults: most contexts never set them, and each store costs per op
    released = False
    inplace_mark = 0  # _state["inplace_ops"] when the op ran (set by Function.apply)

    def __init__(self, fn: type["Function"], inputs: tuple, requires_grad: bool, needs_input_grad: tuple):
        self.fn = fn
        self.inputs = inputs  # the input Tensors (kept only while the graph lives)
        self.requires_grad = requires_grad
        self.needs_input_grad = needs_input_grad  # t.requires_grad of each input

    @property
    def name(self) -> str:
        return self.fn.__name__

    def save_for_backward(self, *objs: Any) -> None:
        """Keep `objs` (arrays, or small tuples of arrays and scalars) for backward.

        Does nothing when no gradient is needed, so `no_grad` forwards hold no activations.
        """
        if not self.requires_grad:
            return
        self.saved = objs
        for fn in _saved_listeners:
            fn("save", self, objs)

    def release(self) -> None:
        if self.saved:
            for fn in _saved_listeners:
                fn("free", self, self.saved)
        self.saved = ()
        self.inputs = ()
        self.released = True


def _check_finite(arr, name, where, tensors):
    # np.generic too: a ufunc on a 0-d array returns a NumPy scalar (e.g. a scalar loss)
    if isinstance(arr, (np.ndarray, np.generic)) and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        shapes = ", ".join(str(t.shape) for t in tensors)
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise FloatingPointError(
            f"detect_anomaly: {where} of {name} produced {bad} (input shapes: {shapes})"
        )


def _check_saved_unmodified(ctx, output) -> None:
    """Raise if an input or the output of `ctx`'s op was written in place after the op ran and
    shares memory with an array the op saved for backward (torch's version-counter check)."""
    saved = list(saved_arrays(ctx.saved))
    for i, t in enumerate((*ctx.inputs, output)):
        last = t._modified_at if t._writes is None else t._writes[0]  # (or through a detach)
        if last > ctx.inplace_mark and any(np.may_share_memory(a, t.data) for a in saved):
            what = "its output" if t is output else f"input {i}"
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by an "
                f"in-place operation: {ctx.name} saved {what} (shape {t.shape}) for backward, and "
                f"it was written in place (+=, -=, *=, /=) after {ctx.name} ran. Update it after "
                "backward(), or write x = x + y to make a new tensor"
            )


def _topological_order(root) -> list:
    """Nodes reachable from `root` that need grads, children before parents, without recursion."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        ctx = node._ctx
        if ctx is not None:
            for inp in ctx.inputs:
                if inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


def backward(root, grad: np.ndarray, retain_graph: bool = False) -> None:
    """Propagate `grad` (d loss / d root) from `root` to every leaf that requires grad."""
    order = _topological_order(root)
    grads = {id(root): grad}
    # Keys whose buffer this backward allocated itself (the sum of two gradients). Nothing else
    # refers to such a buffer, so it may be added into in place and become a leaf's .grad as is.
    # Any other gradient may alias an op's saved array, the caller's grad, or another gradient
    # (Add.backward returns the same g for both inputs), so it is never written to.
    owned: set[int] = set()
    for node in reversed(order):
        key = id(node)
        g = grads.pop(key, None)
        ctx = node._ctx
        if ctx is None:  # a leaf: accumulate, as PyTorch does, until zero_grad
            if g is not None:
                if node.grad is None:
                    if key in owned:  # built from gradients already cast to node.dtype
                        node.grad = g
                    else:  # a copy, so that .grad never aliases another array
                        node.grad = np.array(g, dtype=node.dtype, copy=True)
                else:
                    node.grad += g
            continue
        if ctx.released:
            raise RuntimeError(
                f"backward through {ctx.name} a second time: its saved arrays were freed by the "
                "first backward. Pass retain_graph=True to the first backward() to keep them."
            )
        if g is None:
            continue
        if ctx.inplace_mark != _state["inplace_ops"]:  # something was written in place since
            _check_saved_unmodified(ctx, node)
        in_grads = ctx.fn.backward(ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for fn in _op_listeners:
            fn("backward", ctx, in_grads)
        for inp, ig in zip(ctx.inputs, in_grads):
            if ig is None or not inp.requires_grad:
                continue
            if ig.shape != inp.shape:
                raise RuntimeError(
                    f"{ctx.name}.backward returned a gradient of shape {ig.shape} for an input "
                    f"of shape {inp.shape}"
                )
            if _state["anomaly"]:
                _check_finite(ig, ctx.name, "backward", ctx.inputs)
            if ig.dtype != inp.dtype:
                ig = ig.astype(inp.dtype)
            k = id(inp)
            acc = grads.get(k)
            if acc is None:
                grads[k] = ig
            elif k in owned:
                acc += ig
            else:
                grads[k] = acc = acc + ig
                if isinstance(acc, np.ndarray):  # not a NumPy scalar (0-d), which += would rebind
                    owned.add(k)
        if not retain_graph:
            ctx.release()
