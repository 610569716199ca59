"""Autograd semantics: accumulation, graph freeing, deep graphs, no_grad, anomaly detection,
clear errors for bad input, and regressions found while testing the core."""
import numpy as np
import pytest

import minigrad as mg
from minigrad.autograd import Function


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


# ---------------------------------------------------------------- gradcheck itself
class _ForgetsUpstream(Function):
    """exp whose backward forgets to multiply by the upstream gradient (a classic bug)."""

    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (out,)


def test_gradcheck_catches_a_backward_that_ignores_its_upstream_gradient():
    x = mg.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    with pytest.raises(mg.GradcheckError, match=r"input 0 \(shape \(2, 3\)\) element \(0, 0\): analytic .* vs numeric"):
        mg.gradcheck(_ForgetsUpstream.apply, [x])


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
