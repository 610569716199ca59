"""Gradient checking by finite differences with a random upstream covector.

For f: inputs -> output and a random covector v of the output's shape, the analytic
vector-Jacobian product (v^T J, from backward) must match central differences of the scalar
<v, f(x)>. A random v (never all ones, i.e. never a plain `.sum()`) catches a backward that
forgets to multiply by its upstream gradient.
"""
from __future__ import annotations

import numpy as np

from .autograd import no_grad
from .tensor import as_tensor


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0, max_elements=2000) -> bool:
    """Check `fn(*inputs)`'s backward against float64 central differences.

    `inputs`: Tensors (those with requires_grad=True are checked; they must be float64).
    Every element of each input is checked when it has at most `max_elements`; larger inputs
    get that many random elements plus a check along one random direction covering all.
    Raises GradcheckError naming the input, the element and both values. Returns True.
    """
    inputs = [as_tensor(x) for x in inputs]
    for i, x in enumerate(inputs):
        if x.requires_grad and x.dtype != np.float64:
            raise TypeError(
                f"gradcheck: input {i} is {x.dtype}; finite differences need float64 "
                "(build it with Tensor(data.astype(np.float64), requires_grad=True))"
            )
    rng = np.random.default_rng(seed)
    for x in inputs:
        x.grad = None
    out = fn(*inputs)
    v = rng.standard_normal(out.shape)

    def probe() -> float:
        with no_grad():
            return float(np.sum(v * fn(*inputs).data))

    # the differences are taken without recording: an fn whose recorded forward computes
    # something else (a checkpoint, a mode switch) would have its backward held to the wrong
    # function, so the two outputs must agree first
    with no_grad():
        plain = fn(*inputs).data
    if not np.allclose(plain, out.data, rtol=1e-12, atol=1e-12, equal_nan=True):
        worst = float(np.max(np.abs(np.asarray(plain, np.float64) - out.data)))
        raise GradcheckError(f"gradcheck: fn gives another output under no_grad than when recorded "
                             f"(max difference {worst:.3g}); finite differences would not check its backward")
    out.backward(v)
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            continue
        analytic = np.zeros(x.shape) if x.grad is None else x.grad
        if not x.data.flags.writeable:
            raise ValueError(f"gradcheck: input {i} is read-only; pass a writable copy (x.data.copy())")
        elems = np.arange(x.size) if x.size <= max_elements else rng.choice(x.size, max_elements, replace=False)
        for e in elems:
            # a multi-index writes into x.data whatever its strides (non-contiguous inputs too)
            idx = np.unravel_index(e, x.shape)
            orig = x.data[idx]
            x.data[idx] = orig + eps
            up = probe()
            x.data[idx] = orig - eps
            down = probe()
            x.data[idx] = orig
            numeric = (up - down) / (2 * eps)
            got = analytic[idx]
            if not abs(got - numeric) <= atol + rtol * abs(numeric):
                raise GradcheckError(
                    f"gradcheck: input {i} (shape {x.shape}) element {tuple(int(j) for j in idx)}: "
                    f"analytic {got:.10g} vs numeric {numeric:.10g}"
                )
        if x.size > max_elements:  # one direction touching every element
            u = rng.standard_normal(x.shape)
            base = x.data.copy()
            x.data[...] = base + eps * u
            up = probe()
            x.data[...] = base - eps * u
            down = probe()
            x.data[...] = base
            numeric, got = (up - down) / (2 * eps), float(np.sum(analytic * u))
            if not abs(got - numeric) <= atol * np.sqrt(x.size) + rtol * abs(numeric):
                raise GradcheckError(
                    f"gradcheck: input {i} (shape {x.shape}) along a random direction: "
                    f"analytic {got:.10g} vs numeric {numeric:.10g}"
                )
    return True
