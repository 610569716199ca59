"""minigrad: reverse-mode autodiff and a transformer engine in NumPy, for learning and research.

Where to read first: `autograd.py` (the tape), `tensor.py` (Function, Tensor and the primitive
ops, forward beside backward), `functional.py` (fused NN ops), `nn.py` (modules),
`gradcheck.py` (how we prove it). `memory.py` measures and predicts bytes and FLOPs;
`checkpointing.py` trades recomputation for activation memory.

Importing minigrad changes no process-wide state; `configure_runtime()` applies the recommended
speed settings (malloc, Numba threading; see `minigrad.backend`).
"""
from . import functional, lora, memory, nn
from .autograd import (
    add_saved_listener,
    detect_anomaly,
    enable_grad,
    is_grad_enabled,
    no_grad,
    remove_saved_listener,
)
from .backend import configure_runtime, get_backend, set_backend, use_backend
from .checkpointing import checkpoint
from .gradcheck import GradcheckError, gradcheck
from .tensor import (
    Tensor,
    arange,
    as_tensor,
    cat,
    chunk,
    default_generator,
    full,
    full_like,
    gather,
    index_select,
    manual_seed,
    masked_fill,
    maximum,
    ones,
    ones_like,
    randn,
    split,
    stack,
    tensor,
    where,
    zeros,
    zeros_like,
)

__all__ = [
    "Tensor", "tensor", "as_tensor", "zeros", "ones", "zeros_like", "ones_like", "full", "full_like",
    "arange", "randn",
    "manual_seed", "default_generator", "cat", "stack", "split", "chunk", "gather", "index_select",
    "masked_fill", "where", "maximum",
    "no_grad", "enable_grad", "is_grad_enabled", "detect_anomaly", "gradcheck", "GradcheckError",
    "add_saved_listener", "remove_saved_listener", "functional", "nn", "lora", "memory", "checkpoint",
    "set_backend", "get_backend", "use_backend", "configure_runtime",
]

from . import _import_time  # noqa: E402,F401  (last: the moment minigrad was imported; see that module)
