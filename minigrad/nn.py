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
from .tensor import Tensor, as_generator, as_tensor


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
        bound = 1.0 / math.sqrt(in_features)
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
