"""Activation checkpointing: keep a function's inputs, recompute its inside during backward.

Chen, Xu, Zhang, Guestrin 2016, "Training Deep Nets with Sublinear Memory Cost"
(arXiv 1604.06174); Lecture 5. `checkpoint(fn, *args)` runs `fn` without recording a graph,
so none of the arrays its ops would save for backward are kept: only `args` are. When backward
reaches the result, `fn` runs again on the kept inputs with the graph on, and that small graph
is backpropagated at once (and freed) before the walk continues. Memory for a stack of L blocks
drops from L blocks' activations to L block inputs plus one block's activations, for the price
of one more forward of each block (about 1/3 more matmul FLOPs per step).

    y = minigrad.checkpoint(block, x, rng=gen)     # same value and gradients as block(x, rng=gen)

Gradients: parameters used inside `fn` receive their gradients from the recomputed graph
directly (accumulated into `.grad`, as any backward does); gradients of the tensor arguments are
returned to the outer graph. With a deterministic `fn` they are bit-for-bit those of the plain
call (tests/test_checkpoint_core.py, tests/test_checkpoint_gpt.py).

Randomness (dropout): the recomputation must draw the same masks. Every `np.random.Generator`
passed in `args`/`kwargs`, or held as an attribute by `fn`'s modules (when `fn` is an
`nn.Module` or a bound method of one), `minigrad.default_generator` (dropout's without an rng)
and NumPy's global legacy RNG, are snapshotted before the forward; backward rewinds them,
recomputes, and then puts them back where they were, so the rest of training draws exactly what
it would have drawn. Any other source of randomness (a Dropout holding its own generator inside
a plain function, a generator created inside `fn`, a global you mutate, time) makes `fn`
non-deterministic, and its gradients would be those of another function. Backward checks for
it: the recomputed output must match the forward's (three float64 sums kept from the forward,
one of them weighted by position, to a relative 1e-5; a deterministic `fn` matches bit for bit),
else it raises `RuntimeError` saying so. Randomness that leaves the output unchanged goes unseen
(a LoRA adapter's dropout while its B is still zero changes only the gradients).

Mixed precision and backends: the `minigrad.amp.autocast` policy and the kernel backend active
during the forward are restored for the recomputation, since backward usually runs outside the
`autocast` / `use_backend` block.

Parameters: the result requires grad when an argument or a parameter of `fn` does. Parameters
are found when `fn` is a Module or a bound method of one; for a plain closure over parameters
pass them with `params=[...]`.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import amp, backend
from .autograd import backward as _backward, enable_grad, is_grad_enabled, no_grad
from .nn import Module
from .tensor import Function, Tensor, default_generator, no_matmul_flops

__all__ = ["checkpoint", "Checkpoint", "is_recomputing"]

_state = {"recomputing": 0}


def is_recomputing() -> bool:
    """True while a checkpointed function is being re-run in backward (FLOP counters use it)."""
    return _state["recomputing"] > 0


def _owner_module(fn):
    if isinstance(fn, Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, Module) else None


def _generators(mod, args, kwargs) -> list:
    """The np.random.Generator objects `fn` may draw from: in its arguments and, when `fn` is
    (a method of) the Module `mod`, held by its modules (see the module docstring)."""
    found, seen = [], set()

    def add(g):
        if isinstance(g, np.random.Generator) and id(g) not in seen:
            seen.add(id(g))
            found.append(g)

    add(default_generator)
    for a in list(args) + list(kwargs.values()):
        add(a)
        if isinstance(a, (list, tuple)):
            for x in a:
                add(x)
    if mod is not None:
        for m in mod.modules():
            for v in vars(m).values():
                add(v)
    return found


class Checkpoint(Function):
    """forward: run `fn` under no_grad, keep only the tensor inputs.
    backward: rewind the RNGs, rerun `fn` with the graph on, backpropagate it, restore the RNGs.

    Inputs: the tensor arguments of `fn`, then the parameters of `fn` (passed only so that the
    result requires grad; their gradients come from the recomputed graph, so backward returns
    None for them)."""

    # The ops inside `fn` report their own FLOPs: in forward (they run under no_grad, which
    # count_flops sees) and when backward recomputes them (counted as recomputation).
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, *arrays, fn, template, kwargs, n_args, gens):
        ctx.user_fn, ctx.template, ctx.kwargs, ctx.n_args, ctx.gens = fn, template, kwargs, n_args, gens
        ctx.rng_states = [g.bit_generator.state for g in gens]
        ctx.policy = amp.current_policy()  # backward usually runs outside autocast: recompute under this
        ctx.backend = backend.get_backend()  # and on the forward's kernels, as every op's backward does
        ctx.np_state = np.random.get_state()
        with no_grad():
            out = fn(*_fill(template, [Tensor(a) for a in arrays[:n_args]]), **kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(f"checkpoint: fn must return one Tensor, got {type(out).__name__}")
        ctx.save_for_backward(*arrays[:n_args])  # the block inputs: all that is kept
        ctx.fingerprint = _fingerprint(out.data)  # not the output itself: that would be kept too
        return out.data

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved
        needs = ctx.needs_input_grad
        leaves = [Tensor(a, requires_grad=needs[i]) for i, a in enumerate(saved)]
        now = [gen.bit_generator.state for gen in ctx.gens]
        np_now = np.random.get_state()
        _state["recomputing"] += 1
        try:
            for gen, st in zip(ctx.gens, ctx.rng_states):
                gen.bit_generator.state = st
            np.random.set_state(ctx.np_state)
            with enable_grad(), amp.autocast(ctx.policy), backend.use_backend(ctx.backend):
                out = ctx.user_fn(*_fill(ctx.template, leaves), **ctx.kwargs)
        finally:
            _state["recomputing"] -= 1
            for gen, st in zip(ctx.gens, now):
                gen.bit_generator.state = st
            np.random.set_state(np_now)
        again = _fingerprint(out.data)
        if not _matches(again, ctx.fingerprint, out.data.size):
            raise RuntimeError(
                f"checkpoint: recomputing {getattr(ctx.user_fn, '__name__', type(ctx.user_fn).__name__)} in "
                f"backward gave another output than its forward (sums {_show(again)} against "
                f"{_show(ctx.fingerprint)}): it draws randomness checkpoint cannot rewind, e.g. a Dropout "
                f"with its own generator inside a plain function. Checkpoint the Module itself, pass the "
                f"generator as an argument, or do not checkpoint this function")
        if out.requires_grad:
            _backward(out, np.asarray(g, dtype=out.dtype))
        grads = tuple(
            (leaf.grad if leaf.grad is not None else np.zeros_like(leaf.data)) if needs[i] else None
            for i, leaf in enumerate(leaves)
        )
        return grads + (None,) * (len(ctx.inputs) - len(saved))


_weights: dict = {}        # n -> the fixed random weights of the positional sum (a few sizes)


def _fingerprint(a) -> tuple[float, float, float]:
    """Σx, Σx² and Σwx in float64, w fixed N(0, 1) weights per position: a recomputation that drew
    other dropout masks moves the last one even where the first two cannot move (a LayerNorm
    after the dropout fixes every row's mean and variance). One output-sized float64 vector of
    weights is kept per output size (a few sizes at most)."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    w = _weights.get(x.size)
    if w is None:
        if len(_weights) >= 4:
            _weights.pop(next(iter(_weights)))
        w = _weights[x.size] = np.random.default_rng(0).standard_normal(x.size)
    with np.errstate(invalid="ignore"):              # inf - inf in an output that has both
        return float(x.sum()), float(x @ x), float(w @ x)


def _show(fingerprint) -> str:
    return "Σx, Σx², Σwx = " + ", ".join(f"{v:.6g}" for v in fingerprint)


def _matches(got, want, n: int, rtol: float = 1e-5) -> bool:
    """Whether two fingerprints of n values agree: Σx² to ``rtol``, Σx and Σwx to ``rtol`` of
    their bound sqrt(n Σx²) (Cauchy-Schwarz; |w|² ~ n). A NaN or inf in both counts as agreeing
    (the forward already had it: a loss scaler deals with it, not this check)."""
    if not np.isfinite([*got, *want]).all():
        return np.array_equal(got, want, equal_nan=True)
    (s, q, p), (s0, q0, p0) = got, want
    bound = rtol * np.sqrt(n * q0)
    return abs(q - q0) <= rtol * q0 and abs(s - s0) <= bound and abs(p - p0) <= bound


def _needs_grad(x) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


def _fill(template, tensors):
    it = iter(tensors)
    return [next(it) if t is _SLOT else t for t in template]


_SLOT = object()


def checkpoint(fn, *args, params=None, **kwargs):
    """`fn(*args, **kwargs)` with activation checkpointing; returns the same Tensor value.

    Tensor positional arguments are the differentiable inputs; other positional arguments and
    all keyword arguments are passed through as constants (a Tensor that requires grad among
    them is refused, since its gradient would be lost). `fn` must return one Tensor and be
    deterministic given its inputs and the generators it is handed (see the module docstring).
    Outside of gradient recording (no_grad) this is just `fn(*args, **kwargs)`.
    """
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    if not is_grad_enabled():
        return fn(*args, **kwargs)
    # Only top-level positional Tensors are inputs of the recorded op; a Tensor elsewhere would
    # be treated as a constant and its gradient silently dropped.
    hidden = [f"keyword argument {k!r}" for k, v in kwargs.items() if _needs_grad(v)]
    hidden += [f"an element of positional argument {i}" for i, a in enumerate(args)
               if isinstance(a, (list, tuple)) and any(_needs_grad(x) for x in a)]
    if hidden:
        raise TypeError(
            f"checkpoint: {', '.join(hidden)} is a Tensor that requires grad; checkpoint differentiates "
            "only Tensors passed directly as positional arguments: pass it as checkpoint(fn, ..., t, ...)"
        )
    template = [_SLOT if isinstance(a, Tensor) else a for a in args]
    tensors = [a for a in args if isinstance(a, Tensor)]
    mod = _owner_module(fn)
    extra = list(params) if params is not None else (list(mod.parameters()) if mod is not None else [])
    ids = {id(t) for t in tensors}
    extra = [p for p in extra if id(p) not in ids and p.requires_grad]
    if not extra and not any(t.requires_grad for t in tensors):
        # the result is a constant: the parameters of a closure (a lambda over a module's layers)
        # would get no gradient, without a word (torch warns here too)
        warnings.warn("checkpoint: no input requires grad and no parameters were found, so the "
                      "result gets no gradient; for a closure over a module's layers pass "
                      "params=module.parameters()", stacklevel=2)
    return Checkpoint.apply(*tensors, *extra, fn=fn, template=template, kwargs=kwargs,
                            n_args=len(tensors), gens=_generators(mod, args, kwargs))
