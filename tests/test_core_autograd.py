"""Autograd semantics: accumulation, graph freeing, deep graphs, no_grad, anomaly detection,
clear errors for bad input, and regressions found while testing the core."""
import numpy as np
import pytest

import minigrad as mg


# ---------------------------------------------------------------- regressions
@pytest.mark.parametrize("op", ["exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "neg", "square"])
def test_zero_dim_float64_stays_float64(op):
    """Ufuncs on 0-d arrays return NumPy scalars; those must keep their dtype, not become float32.

    (Regression: a float64 0-d input gave a float32 output, which ruined finite differences.)"""
    x = mg.Tensor(np.array(0.7), requires_grad=True)
    y = {"neg": lambda t: -t, "square": lambda t: t * t}.get(op, lambda t: getattr(t, op)())(x)
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float64 and x.grad.shape == ()
    assert mg.gradcheck(lambda t: getattr(t, op)() if op not in ("neg", "square") else t * t, [x])


def test_numpy_scalars_keep_their_dtype():
    assert mg.tensor(np.float64(2.0)).dtype == np.float64
    assert mg.tensor(np.float32(2.0)).dtype == np.float32
    assert mg.tensor(2.0).dtype == np.float32  # a Python float becomes float32, as in PyTorch
