"""Modules and parameters with PyTorch's names: named_parameters, state_dict, train/eval, zero_grad.

Beyond PyTorch, a module describes its structure as plain data for name-keyed optimizers
(`optim` never imports a model): `param_blocks()` (which parameters form a layer),
`param_roles()` (what each parameter does, one of `ROLES`) and `param_splits()` (fused weights
seen as several matrices, made into views by `optim.split_matrices`).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import numpy as np

from . import functional as F
from .tensor import Tensor, as_generator, as_tensor, cat, stack


class Parameter(Tensor):
    """A Tensor that a Module registers as learnable.

    It requires grad unless frozen with `requires_grad_(False)`; a frozen parameter is still a
    parameter: `named_parameters()` lists it and `state_dict()` saves it (as in PyTorch)."""

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter " + super().__repr__()


#: What a parameter does, by role name: the vocabulary of `Module.param_roles()` and of role
#: rules in `optim.param_groups`. Layers give the generic roles (`Module.own_param_roles`);
#: a model refines them (models.gpt.GPT names its transformer matrices).
ROLES = {
    "embedding": "rows of a lookup table (Embedding.weight; also a head tied to it)",
    "norm": "a normalisation layer's gain or shift (LayerNorm weight and bias)",
    "bias": "a Linear layer's bias",
    "linear": "a Linear layer's weight that the model gives no more specific role",
    "attn_qkv": "attention's fused query/key/value projection weight (3C, C)",
    "attn_q": "the query rows [0, C) of attn_qkv (a split part)",
    "attn_k": "the key rows [C, 2C) of attn_qkv (a split part)",
    "attn_v": "the value rows [2C, 3C) of attn_qkv (a split part)",
    "attn_out": "attention's output projection weight (C, C)",
    "mlp_in": "the MLP's expanding weight (4C, C)",
    "mlp_out": "the MLP's contracting weight (C, 4C)",
    "lora_A": "a low-rank adapter's down-projection A (r, in) (minigrad.lora)",
    "lora_B": "a low-rank adapter's up-projection B (out, r), zero at the start (minigrad.lora)",
    "lora_magnitude": "DoRA's per-output-row magnitude m (out,) (minigrad.lora)",
    "other": "a parameter of a module that declares no role for it",
}


@dataclass
class ParamBlock:
    """A named set of parameters that belong together (a layer, the embeddings), as plain data.

    `params`: parameter names, in `named_parameters()` order. `roles`: {name: role} for each of
    them (see `ROLES`). `splits`: {name: ((part, role, (start, stop)), ...)} for a fused weight
    that is several matrices stacked by rows; `optim.split_matrices` turns it into views
    "name:part" of rows [start, stop), and `optim.split_roles` gives each part its role.
    """

    name: str
    params: tuple[str, ...]
    roles: dict[str, str]
    splits: dict[str, tuple[tuple[str, str, tuple[int, int]], ...]] = field(default_factory=dict)

    def __post_init__(self):
        self.params = tuple(self.params)
        if len(set(self.params)) != len(self.params):
            raise ValueError(f"ParamBlock {self.name!r}: a parameter is listed twice in {self.params}")
        if set(self.roles) != set(self.params):
            raise ValueError(
                f"ParamBlock {self.name!r}: roles must name exactly the block's parameters; "
                f"without a role: {[n for n in self.params if n not in self.roles]}, "
                f"not in the block: {[n for n in self.roles if n not in self.params]}"
            )
        outside = [n for n in self.splits if n not in self.params]
        if outside:
            raise ValueError(f"ParamBlock {self.name!r}: splits name parameters outside the block: {outside}")


def layer_roles(module: "Module") -> dict[str, str]:
    """{name: role} for every parameter of `module`, in `named_parameters()` order, as declared
    by the layer that owns it (`own_param_roles`; "other" where it declares none). A tied
    parameter takes the role from its first owner, the one `named_parameters()` names it by."""
    roles, seen = {}, set()
    for mname, mod in module.named_modules():
        for pname, p in mod._parameters.items():
            if id(p) not in seen:
                seen.add(id(p))
                roles[f"{mname}.{pname}" if mname else pname] = mod.own_param_roles.get(pname, "other")
    return roles


class Module:
    """Base class: assigning a Parameter or Module attribute registers it, in order."""

    #: role (see `ROLES`) of each parameter this module registers itself, by attribute name
    own_param_roles: ClassVar[dict[str, str]] = {}

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        if name in self._parameters and not isinstance(value, (Parameter, type(None))):
            raise TypeError(f"{type(self).__name__}.{name} is a parameter: assign an nn.Parameter "
                            f"(or None to remove it), not a {type(value).__name__}; to change its "
                            f"values in place, write into .data")
        if name in self._buffers and isinstance(value, np.ndarray):  # a new value, still a buffer
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        if name in self._buffers and value is not None:
            raise TypeError(f"{type(self).__name__}.{name} is a buffer: assign a NumPy array "
                            f"(or None to remove it), not a {type(value).__name__}")
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: np.ndarray) -> None:
        """A non-learnable array that belongs in the state_dict (e.g. running statistics)."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(attribute name, module) of each direct submodule, in registration order; a module
        registered under two names appears once, under the first (as in torch)."""
        seen = set()
        for name, mod in self._modules.items():
            if id(mod) not in seen:
                seen.add(id(mod))
                yield name, mod

    def children(self) -> Iterator["Module"]:
        return (m for _, m in self.named_children())

    def apply(self, fn) -> "Module":
        """Call `fn(module)` on every submodule, children before their parent and this module
        last (torch's order), e.g. to initialise weights; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two modules appears once."""
        seen = set()
        for mname, mod in self.named_modules(prefix):
            for pname, p in mod._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters())

    def named_buffers(self):
        for mname, mod in self.named_modules():
            for bname, b in mod._buffers.items():
                yield (f"{mname}.{bname}" if mname else bname), b

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------ structure for optimizers
    def param_blocks(self) -> list[ParamBlock]:
        """The parameters grouped into blocks, each parameter in exactly one, in
        `named_parameters()` order: first a block "" of this module's own parameters, then one
        block per direct child module (named as the child), in registration order. Blocks
        without parameters are left out. Roles come from `layer_roles`; no splits.

        Models override this to describe themselves (e.g. models.gpt.GPT)."""
        roles = layer_roles(self)
        members: dict[str, list[str]] = {}
        for name in roles:  # own parameter names have no dot; a child's start with "child."
            members.setdefault(name.split(".", 1)[0] if "." in name else "", []).append(name)
        return [ParamBlock(block, tuple(names), {n: roles[n] for n in names})
                for block, names in members.items()]

    def param_roles(self) -> dict[str, str]:
        """{parameter name: role} over all blocks (see `ROLES`)."""
        return {n: r for block in self.param_blocks() for n, r in block.roles.items()}

    def param_splits(self) -> dict[str, tuple[tuple[str, str, tuple[int, int]], ...]]:
        """{fused parameter name: its parts} over all blocks (see `ParamBlock`)."""
        return {n: parts for block in self.param_blocks() for n, parts in block.splits.items()}

    # ------------------------------------------------------------ modes and grads
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter of this module and its submodules.

        A frozen parameter gets no gradient (`p.grad is None` after backward), so an optimizer
        stepping on `{name: p.grad}` leaves it and keeps no state for it. Select the trainable
        ones with `p.requires_grad`, as in PyTorch."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.fill(0)

    # ------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed by dotted name (tied parameters once)."""
        sd = OrderedDict((n, p.data.copy()) for n, p in self.named_parameters())
        sd.update((n, np.array(b, copy=True)) for n, b in self.named_buffers())
        return sd

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into the existing parameters in place (optimizers keep their references).

        Returns (missing_keys, unexpected_keys). With strict=True either being non-empty raises.
        A shape mismatch always raises, naming the key and both shapes; nothing is written then.
        """
        own = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        missing = [k for k in list(own) + list(buffers) if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own and k not in buffers]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for k, v in state_dict.items():
            target = own[k].data if k in own else buffers.get(k)
            if target is not None and np.shape(v) != target.shape:
                raise ValueError(
                    f"load_state_dict: {k} has shape {np.shape(v)} in the state dict but "
                    f"{target.shape} in the model"
                )
        for k, v in state_dict.items():
            if k in own:
                own[k].data[...] = v
            elif k in buffers:
                buffers[k][...] = v
        return missing, unexpected

    def __repr__(self):
        lines = [f"  ({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._modules.items()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}({extra}\n" + "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


# ================================================================ layers
class Linear(Module):
    """y = x W^T + b; W (out, in) initialised U(-1/√in, 1/√in) as in PyTorch."""

    own_param_roles = {"weight": "linear", "bias": "bias"}

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        rng = as_generator(rng)  # None: minigrad.default_generator (see manual_seed)
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0  # (torch's, for an empty input)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    own_param_roles = {"weight": "embedding"}

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, rng=None):
        super().__init__()
        rng = as_generator(rng)  # None: minigrad.default_generator (see manual_seed)
        self.weight = Parameter(rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype))

    def forward(self, idx):
        return F.embedding(idx, self.weight)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class LayerNorm(Module):
    own_param_roles = {"weight": "norm", "bias": "norm"}

    def __init__(self, dim, eps=1e-5, bias=True, dtype=np.float32):
        super().__init__()
        if isinstance(dim, (tuple, list)):  # torch's normalized_shape of one axis, as (C,) or [C]
            if len(dim) != 1:
                raise ValueError(f"LayerNorm: normalizes over the last axis only; got normalized_shape "
                                 f"{tuple(dim)} (give its last size, e.g. LayerNorm({dim[-1]}))")
            dim = dim[0]
        self.eps = eps
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Dropout(Module):
    """Inverted dropout (F.dropout) while training. Masks come from `rng` (a Generator or a
    seed), or without one from minigrad.default_generator at each call, as torch's global one."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        self.p = p
        self.rng = None if rng is None else np.random.default_rng(rng)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self):
        return f"p={self.p}"


# ================================================================ activations and losses
class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    """GELU; `approximate="none"` (the exact x·Φ(x), torch's default) or "tanh" (GPT-2's).
    Note F.gelu defaults to "tanh", the form the GPT uses."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU: approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Tanh(Module):
    def forward(self, x):
        return as_tensor(x).tanh()


class Sigmoid(Module):
    def forward(self, x):
        return as_tensor(x).sigmoid()


def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class CrossEntropyLoss(Module):
    """F.cross_entropy(input, target, ...) as a module. The options are keyword-only: torch's
    first positional argument is a class weight, which minigrad does not support."""

    def __init__(self, *, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        _check_reduction("CrossEntropyLoss", reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class MSELoss(Module):
    def __init__(self, *, reduction: str = "mean"):
        super().__init__()
        _check_reduction("MSELoss", reduction)
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


# ================================================================ containers
class _Container(Module):
    """Indexing, len and iteration over the submodules, in registration order."""

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(_Container):
    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(_Container):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self


# ================================================================ recurrent layers
# PyTorch's modules, parameter names, shapes, gate orders and initialisation (every weight and
# bias U(-1/√H, 1/√H)), so a torch state dict loads with load_state_dict(strict=True) and gives
# the same outputs. Each step is F.rnn_cell / lstm_cell / gru_cell, composed of primitives:
# backpropagation through time is the tape walking the unrolled loop. A fused kernel for the
# whole sequence (one Function per layer) is left for later.
_RECURRENT_ROLES = {"weight_ih": "linear", "weight_hh": "linear", "bias_ih": "bias", "bias_hh": "bias"}


def _check_positive(op: str, **sizes) -> None:
    for name, n in sizes.items():
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{op}: {name} must be a positive integer, got {n!r}")


def _recurrent_weights(rng, bound, gates, hidden_size, input_size, bias, dtype):
    """(weight_ih, weight_hh, bias_ih, bias_hh) as Parameters drawn U(-bound, bound); biases None without bias."""
    def draw(*shape):
        return Parameter(rng.uniform(-bound, bound, shape).astype(dtype))

    rows = gates * hidden_size
    weight_ih, weight_hh = draw(rows, input_size), draw(rows, hidden_size)
    if not bias:
        return weight_ih, weight_hh, None, None
    return weight_ih, weight_hh, draw(rows), draw(rows)


class _RecurrentCell(Module):
    """One time step over a batch: input (B, input_size) or unbatched (input_size,)."""

    own_param_roles = _RECURRENT_ROLES
    gates: ClassVar[int]  # rows of hidden_size stacked in weight_ih / weight_hh
    state_names: ClassVar[tuple[str, ...]]

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        _check_positive(type(self).__name__, input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        rng = as_generator(rng)  # None: minigrad.default_generator (see manual_seed)
        self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh = _recurrent_weights(
            rng, 1.0 / math.sqrt(hidden_size), self.gates, hidden_size, input_size, bias, dtype)

    def _prepare(self, input, hx):
        """input as a Tensor and the state as a tuple of Tensors (zeros for None), checked."""
        name = type(self).__name__
        x = as_tensor(input)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input must be (B, {self.input_size}) or ({self.input_size},), got shape {x.shape}")
        want = x.shape[:-1] + (self.hidden_size,)
        if hx is None:
            return x, tuple(Tensor(np.zeros(want, dtype=self.weight_hh.dtype)) for _ in self.state_names)
        parts = (hx,) if len(self.state_names) == 1 else hx
        if not isinstance(parts, (tuple, list)) or len(parts) != len(self.state_names):
            raise TypeError(f"{name}: hx must be a tuple ({', '.join(self.state_names)}), got {type(hx).__name__}")
        parts = tuple(as_tensor(p) for p in parts)
        for label, p in zip(self.state_names, parts):
            if p.shape != want:
                raise ValueError(f"{name}: {label} has shape {p.shape} but input {x.shape} needs {want}")
        return x, parts

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class RNNCell(_RecurrentCell):
    """h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh) (or relu), as torch.nn.RNNCell."""

    gates, state_names = 1, ("hx",)

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=np.float32, rng=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, dtype, rng)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        x, (h,) = self._prepare(input, hx)
        return F.rnn_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)


class LSTMCell(_RecurrentCell):
    """One LSTM step (see F.lstm_cell; gates i, f, g, o), as torch.nn.LSTMCell: forward(input,
    (h, c)) returns (h', c')."""

    gates, state_names = 4, ("h", "c")

    def forward(self, input, hx=None):
        x, state = self._prepare(input, hx)
        return F.lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRUCell(_RecurrentCell):
    """One GRU step (see F.gru_cell; gates r, z, n), as torch.nn.GRUCell."""

    gates, state_names = 3, ("hx",)

    def forward(self, input, hx=None):
        x, (h,) = self._prepare(input, hx)
        return F.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class _RecurrentLayers(Module):
    """Layers of cells run over a sequence, as torch.nn.RNN / LSTM / GRU.

    input: (T, B, input_size), (B, T, input_size) with batch_first, or unbatched (T, input_size).
    Each state (h0, and c0 for the LSTM) is (num_layers * num_directions, B, hidden_size) —
    never batch first, as in torch — or (num_layers * num_directions, hidden_size) unbatched;
    None means zeros. Returns the last layer's h at every step, (T, B, num_directions *
    hidden_size) (batch first if asked), and each state after the last step, in the layout of h0.

    Layer l > 0 reads layer l-1's outputs, through dropout with probability `dropout` while
    training (masks from minigrad.default_generator). A bidirectional layer also runs over the
    sequence backwards (parameters suffixed "_reverse") and concatenates the two directions'
    outputs at each step. Parameters: weight_ih_l{l}, weight_hh_l{l}, bias_ih_l{l}, bias_hh_l{l}
    (each "_reverse" too), in torch's order. The arguments after num_layers are keyword-only.
    """

    gates: ClassVar[int]
    state_names: ClassVar[tuple[str, ...]]

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, rng=None):
        super().__init__()
        name = type(self).__name__
        _check_positive(name, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.num_directions = 2 if bidirectional else 1
        rng = as_generator(rng)  # None: minigrad.default_generator (see manual_seed)
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else self.num_directions * self.hidden_size
            for suffix in ("", "_reverse")[:self.num_directions]:
                weights = _recurrent_weights(rng, 1.0 / math.sqrt(hidden_size), self.gates, self.hidden_size,
                                             n_in, bias, dtype)
                for base, p in zip(_RECURRENT_ROLES, weights):
                    setattr(self, f"{base}_l{layer}{suffix}", p)
        self.own_param_roles = {n: _RECURRENT_ROLES[n.split("_l")[0]] for n in self._parameters}

    def _cell(self, x, state: tuple, weights: tuple) -> tuple:  # pragma: no cover - abstract
        """One step of one layer and direction: the new state tuple, its hidden state first."""
        raise NotImplementedError

    def _weights(self, layer: int, direction: int) -> tuple:
        suffix = "_reverse" if direction else ""
        return tuple(getattr(self, f"{base}_l{layer}{suffix}") for base in _RECURRENT_ROLES)

    def _run(self, input, hx) -> tuple:
        """(output, tuple of final states) for the subclasses' forward."""
        name = type(self).__name__
        x = as_tensor(input)
        batched = x.ndim == 3
        if batched:
            x = x.transpose(0, 1) if self.batch_first else x
        elif x.ndim == 2:
            x = x.unsqueeze(1)
        if x.ndim != 3 or x.shape[-1] != self.input_size or x.shape[0] == 0:
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(
                f"{name}: input must be {layout} or unbatched (T, input_size) with input_size "
                f"{self.input_size} and T >= 1, got shape {np.shape(input)}")
        T, B = x.shape[:2]  # time major from here on
        n_states = self.num_layers * self.num_directions
        want = (n_states, B, self.hidden_size) if batched else (n_states, self.hidden_size)
        if hx is None:
            zeros = Tensor(np.zeros((n_states, B, self.hidden_size), dtype=self.weight_hh_l0.dtype))
            parts = (zeros,) * len(self.state_names)
        else:
            parts = (hx,) if len(self.state_names) == 1 else hx
            if not isinstance(parts, (tuple, list)) or len(parts) != len(self.state_names):
                raise TypeError(f"{name}: hx must be a tuple ({', '.join(self.state_names)}), got {type(hx).__name__}")
            parts = tuple(as_tensor(p) for p in parts)
            for label, p in zip(self.state_names, parts):
                if p.shape != want:
                    raise ValueError(
                        f"{name}: {label} has shape {p.shape}, expected {want} (num_layers * "
                        f"num_directions, {'batch, ' if batched else ''}hidden_size) for input {np.shape(input)}")
            parts = parts if batched else tuple(p.unsqueeze(1) for p in parts)
        steps = [x[t] for t in range(T)]  # layer 0's inputs; each later layer reads a list like it
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                weights = self._weights(layer, direction)
                state = tuple(p[layer * self.num_directions + direction] for p in parts)
                out = [None] * T
                for t in (reversed(range(T)) if direction else range(T)):
                    state = self._cell(steps[t], state, weights)
                    out[t] = state[0]
                finals.append(state)
                outputs.append(out)
            steps = outputs[0] if len(outputs) == 1 else [cat(pair, axis=-1) for pair in zip(*outputs)]
            if self.dropout and self.training and layer < self.num_layers - 1:
                steps = [F.dropout(s, self.dropout) for s in steps]
        output = stack(steps, axis=0)  # (T, B, num_directions * H)
        states = tuple(stack([s[i] for s in finals], axis=0) for i in range(len(self.state_names)))
        if not batched:
            return output.squeeze(1), tuple(s.squeeze(1) for s in states)
        return (output.transpose(0, 1) if self.batch_first else output), states

    def extra_repr(self):
        options = [f"num_layers={self.num_layers}"] if self.num_layers != 1 else []
        options += ["bias=False"] if not self.bias else []
        options += ["batch_first=True"] if self.batch_first else []
        options += [f"dropout={self.dropout}"] if self.dropout else []
        options += ["bidirectional=True"] if self.num_directions == 2 else []
        return ", ".join([f"{self.input_size}, {self.hidden_size}"] + options)


class RNN(_RecurrentLayers):
    """Elman RNN layers (tanh or relu), as torch.nn.RNN: forward(input, h0=None) returns
    (output, h_n). See `_RecurrentLayers` for the shapes and options."""

    gates, state_names = 1, ("h0",)

    def __init__(self, input_size, hidden_size, num_layers=1, *, nonlinearity="tanh", **options):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, **options)
        self.nonlinearity = nonlinearity

    def _cell(self, x, state, weights):
        return (F.rnn_cell(x, state[0], *weights, nonlinearity=self.nonlinearity),)

    def forward(self, input, hx=None):
        output, (h_n,) = self._run(input, hx)
        return output, h_n


class LSTM(_RecurrentLayers):
    """LSTM layers (see F.lstm_cell), as torch.nn.LSTM: forward(input, (h0, c0)=None) returns
    (output, (h_n, c_n)). See `_RecurrentLayers` for the shapes and options."""

    gates, state_names = 4, ("h0", "c0")

    def _cell(self, x, state, weights):
        return F.lstm_cell(x, state, *weights)

    def forward(self, input, hx=None):
        output, (h_n, c_n) = self._run(input, hx)
        return output, (h_n, c_n)


class GRU(_RecurrentLayers):
    """GRU layers (see F.gru_cell), as torch.nn.GRU: forward(input, h0=None) returns
    (output, h_n). See `_RecurrentLayers` for the shapes and options."""

    gates, state_names = 3, ("h0",)

    def _cell(self, x, state, weights):
        return (F.gru_cell(x, state[0], *weights),)

    def forward(self, input, hx=None):
        output, (h_n,) = self._run(input, hx)
        return output, h_n
