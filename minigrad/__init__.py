"""minigrad: reverse-mode autodiff and a transformer engine in NumPy, for learning and research.

Where to read first: `autograd.py` (the tape), `tensor.py` (primitive ops, forward beside
backward), `functional.py` (fused NN ops), `nn.py` (modules), `gradcheck.py` (how we prove it).
"""
from .backend import get_backend, set_backend, use_backend  # first: sets up Numba's environment
from . import functional, nn
from .autograd import (
    add_saved_listener,
    detect_anomaly,
    enable_grad,
    is_grad_enabled,
    no_grad,
    remove_saved_listener,
)
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, as_tensor, cat, maximum, ones, randn, stack, tensor, where, zeros
from . import memory  # noqa: E402  (minigrad.memory: bytes and FLOPs, measured and predicted)
from .checkpointing import checkpoint  # noqa: E402  (activation checkpointing)

__all__ = [
    "Tensor", "tensor", "as_tensor", "zeros", "ones", "randn", "cat", "stack", "where", "maximum",
    "no_grad", "enable_grad", "is_grad_enabled", "detect_anomaly", "gradcheck", "GradcheckError",
    "add_saved_listener", "remove_saved_listener", "functional", "nn", "memory", "checkpoint",
    "set_backend", "get_backend", "use_backend",
]
