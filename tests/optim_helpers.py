"""What the optimizer tests share: a gradient field that never vanishes, and parameter copies
compared bit for bit. Optimizers work on dicts of NumPy arrays keyed by parameter name."""
import numpy as np


def grads_at(params, t):
    """The gradient of sum((p - 0.5)^2) at the current parameters plus noise that depends on the
    step: never zero, never low rank, and a wrong update changes every later gradient."""
    out = {}
    for i, (n, p) in enumerate(params.items()):
        rng = np.random.default_rng(1000 * t + i)
        out[n] = (2.0 * (p - 0.5) + rng.standard_normal(p.shape)).astype(p.dtype)
    return out


def copy_params(params):
    """A copy of every array, to compare with after the optimizer has stepped in place."""
    return {n: p.copy() for n, p in params.items()}


def same_params(a, b):
    """The same names and bit-identical arrays."""
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
