"""LoRA and DoRA: low-rank adapters on the Linear layers of any Module.

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685)
keeps a pretrained weight W0 (out, in) frozen and learns a low-rank update beside it:

    y = x W0ᵀ + b + s · dropout(x) Aᵀ Bᵀ          A (r, in), B (out, r), s = α / r

A starts random and B at zero, so the adapted model starts as the pretrained one. Training
touches only A and B: r·(in + out) numbers per layer instead of in·out, and an optimizer keeps
state for those alone (Adam: 2·r·(in + out) floats). For inference the update is folded in,
W = W0 + s·B·A, and the layer costs what the original did (`merge_lora`). The scale s = α/r
keeps the size of the update roughly independent of r when α is held fixed, so changing r needs
little retuning of the learning rate (the paper's Sec. 4.1).

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv 2402.09353) splits
the weight into a magnitude and a direction and adapts the direction with LoRA:

    V = W0 + s·B·A,    W' = m ⊙ V / ‖V‖,    y = x W'ᵀ + b

‖V‖ is taken per output feature: the norm of each row of V in the (out, in) layout used here,
i.e. of the weight vector that feeds one output unit, as in weight normalization (Salimans &
Kingma 2016, arXiv 1602.07868) and in the official code (NVlabs/DoRA, Hugging Face PEFT). The
paper writes W ∈ R^{d×k}, m ∈ R^{1×k} and a "column-wise" norm ‖·‖_c; its columns are these
output units. (Some implementations take the other axis; this one does not.) The magnitude
m (out,) starts at ‖W0‖, so again W' = W0 at the start, and trains with A and B
(r·(in + out) + out numbers). The paper's Sec. 4.3 treats ‖V‖ as a constant in
backward (no gradient flows through the norm), which saves the memory of its graph and, it
reports, costs no accuracy; `detach_norm=True` (the default) does that, `detach_norm=False`
differentiates through the norm. Both give the same forward.

With dropout on the adapter's input (training, p > 0) DoRA follows the official code (NVlabs/DoRA
`dora.py`, PEFT): the frozen product keeps the undropped input and only the dropped one carries
the rescaling,

    y = x W0ᵀ + (m/‖V‖ − 1) ⊙ dropout(x) W0ᵀ + (m/‖V‖) ⊙ s · dropout(x) Aᵀ Bᵀ + b,

which is the formula above in expectation and exactly when no dropout acts. (Until 2026-12-07
it was (m/‖V‖) ⊙ (x W0ᵀ + s · dropout(x) Aᵀ Bᵀ) + b: the same mean, another variance.)

Adapters go on Linear layers chosen by `targets` (see `apply_lora`): a glob of the layer's dotted
name ("h.*.attn.c_attn"), a regular expression ("re:h\\.[01]\\..*") or the role of its weight in
`model.param_roles()` ("role:attn_qkv"; see `minigrad.nn.ROLES`). Each chosen `nn.Linear` is
replaced in its parent by a `LoRALinear` that holds the *same* weight and bias Parameters under
the same names, plus `lora_A`, `lora_B` (and DoRA's `lora_magnitude`), so parameter names,
roles and a model's fused-weight splits stay as they were.

    from minigrad import lora
    lora.apply_lora(model, ["role:attn_qkv", "role:mlp_in"], r=8, alpha=16)  # freezes the rest
    ...train: only the adapters require grad...
    adapters = lora.lora_state_dict(model)       # a few hundred KB instead of the model
    lora.merge_lora(model)                       # inference at the original cost
"""
from __future__ import annotations

import fnmatch
import math
import re
from collections import OrderedDict

import numpy as np

from . import functional as F
from .autograd import is_grad_enabled
from .nn import Linear, Module, Parameter
from .tensor import Tensor, as_generator

__all__ = ["LoRALinear", "apply_lora", "lora_layers", "merge_lora", "unmerge_lora", "lora_state_dict",
           "load_lora_state_dict", "unload_lora"]

INITS = ("kaiming", "gaussian")


def _row_norm(w: np.ndarray) -> np.ndarray:
    """‖w[i, :]‖₂ for every output row i of an (out, in) weight."""
    return np.sqrt(np.einsum("oi,oi->o", w, w))


class LoRALinear(Linear):
    """A Linear layer with a low-rank adapter (LoRA), optionally weight-decomposed (DoRA).

    Built from an existing `base` Linear, whose weight and bias Parameters it takes over (same
    objects, same names); `lora_A` (r, in) is drawn from `rng` and `lora_B` (out, r) is zero.
    `init="kaiming"` draws A ~ U(-1/√in, 1/√in), PyTorch's kaiming_uniform(a=√5) that the
    reference implementation (microsoft/LoRA) uses; `init="gaussian"` draws A ~ N(0, 1/r²), the
    paper's Gaussian with the standard deviation 1/r that Hugging Face PEFT uses (the paper gives
    none). With `dora=True` the layer also holds `lora_magnitude` (out,), set to ‖W0‖ per row.
    Dropout (probability `dropout`, masks from `dropout_rng`) acts on the adapter's input only.

    `merge()` folds the adapter into the weight and `unmerge()` takes it out again; while merged
    the forward is the plain Linear's. The base Parameters' `requires_grad` is left as it is
    (`apply_lora` freezes the whole model)."""

    own_param_roles = {"weight": "linear", "bias": "bias", "lora_A": "lora_A", "lora_B": "lora_B",
                       "lora_magnitude": "lora_magnitude"}

    def __init__(self, base: Linear, r: int, alpha: float, dropout: float = 0.0, *, dora: bool = False,
                 detach_norm: bool = True, init: str = "kaiming", rng=None, dropout_rng=None):
        _check_options(r, alpha, dropout, init)
        Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.r, self.alpha, self.dropout = int(r), float(alpha), float(dropout)
        self.scaling = self.alpha / self.r
        self.dora, self.detach_norm = bool(dora), bool(detach_norm)
        rng = as_generator(rng)          # None: minigrad.default_generator (see manual_seed)
        w = self.weight.data
        if init == "kaiming":
            bound = 1.0 / math.sqrt(self.in_features)
            a = rng.uniform(-bound, bound, (self.r, self.in_features))
        else:
            a = rng.normal(0.0, 1.0 / self.r, (self.r, self.in_features))
        self.lora_A = Parameter(a.astype(w.dtype))
        self.lora_B = Parameter(np.zeros((self.out_features, self.r), dtype=w.dtype))
        self.lora_magnitude = None
        if self.dora:
            norm = _row_norm(w)
            if not np.all(norm > 0):
                raise ValueError(f"LoRALinear: DoRA divides each weight row by its norm, but rows "
                                 f"{np.flatnonzero(~(norm > 0))[:5].tolist()} of the ({w.shape[0]}, "
                                 f"{w.shape[1]}) weight are zero; use LoRA (dora=False) on this layer")
            self.lora_magnitude = Parameter(norm)
        # masks from this Generator (None: minigrad.default_generator, as nn.Dropout)
        self.dropout_rng = dropout_rng if self.dropout > 0 else None
        self.merged = False
        self._merged_norm = None     # DoRA: ‖V‖ per row at merge time, needed to undo the merge

    # ------------------------------------------------------------------ forward
    def forward(self, x):
        if self.merged:
            if is_grad_enabled() and any(p.requires_grad for p in self.adapter_parameters()):
                raise RuntimeError("LoRALinear: the adapter is merged into the weight, so it would get "
                                   "no gradient; call unmerge_lora(model) before training")
            return F.linear(x, self.weight, self.bias)
        x_adapter = F.dropout(x, self.dropout, self.training, self.dropout_rng)
        # (s·x Aᵀ) Bᵀ: two thin products, r·(in + out) per row, scaled where the activation has r
        # columns, not out; B·A (out, in) is never formed
        update = F.linear(F.linear(x_adapter, self.lora_A) * self.scaling, self.lora_B)
        if not self.dora:
            return F.linear(x, self.weight, self.bias) + update
        # DoRA: x Vᵀ with V = W0 + s·B·A, each output row then rescaled to length m
        rescale = self.lora_magnitude / self.weight_norm()
        if x_adapter is x:        # no dropout in effect (eval, p = 0)
            y = (F.linear(x, self.weight) + update) * rescale
        else:                     # the official code's form: only the dropped input is rescaled
            y = F.linear(x, self.weight) + F.linear(x_adapter, self.weight) * (rescale - 1.0) + update * rescale
        return y if self.bias is None else y + self.bias

    def weight_norm(self) -> Tensor:
        """‖W0 + s·B·A‖ per output row, (out,): DoRA's denominator. With `detach_norm` a constant
        (backward treats it as fixed, as the paper's Sec. 4.3 recommends), else part of the graph."""
        if self.detach_norm:
            v = self.weight.data + self.scaling * (self.lora_B.data @ self.lora_A.data)
            return Tensor(_row_norm(v))
        v = self.weight + (self.lora_B @ self.lora_A) * self.scaling
        return (v * v).sum(axis=1).sqrt()

    def adapter_parameters(self) -> list[Parameter]:
        """lora_A, lora_B and (DoRA) lora_magnitude."""
        return [self.lora_A, self.lora_B] + ([self.lora_magnitude] if self.dora else [])

    # ------------------------------------------------------------------ merging
    def delta_weight(self) -> np.ndarray:
        """s·B·A, (out, in): the update LoRA adds to W0."""
        return self.scaling * (self.lora_B.data @ self.lora_A.data)

    def merge(self) -> None:
        """Fold the adapter into the weight, in place: W0 + s·B·A (LoRA) or m ⊙ V/‖V‖ (DoRA)."""
        if self.merged:
            raise RuntimeError("LoRALinear.merge: already merged; unmerge() first")
        w = self.weight.data
        v = w + self.delta_weight()
        if self.dora:
            self._merged_norm = _row_norm(v)
            v *= (self.lora_magnitude.data / self._merged_norm)[:, None]
        w[...] = v
        self.merged = True

    def unmerge(self) -> None:
        """Take the adapter out of the weight again, in place, giving W0 back (up to rounding)."""
        if not self.merged:
            raise RuntimeError("LoRALinear.unmerge: not merged; merge() first")
        w = self.weight.data
        if self.dora:
            # W' = m ⊙ V/‖V‖ row by row, so V = W' ⊙ ‖V‖/m; a zero magnitude lost its row
            m = self.lora_magnitude.data
            if not np.all(m != 0):
                raise RuntimeError(f"LoRALinear.unmerge: magnitude is 0 in rows {np.flatnonzero(m == 0)[:5].tolist()}, "
                                   f"whose merged weight is zero; W0 cannot be recovered from it")
            w *= (self._merged_norm / m)[:, None]
        w -= self.delta_weight()
        self.merged, self._merged_norm = False, None

    def extra_repr(self):
        kind = "DoRA" if self.dora else "LoRA"
        opts = f", dropout={self.dropout}" if self.dropout else ""
        opts += ", detach_norm=False" if self.dora and not self.detach_norm else ""
        opts += ", merged" if self.merged else ""
        return f"{super().extra_repr()}, {kind} r={self.r}, alpha={self.alpha:g}{opts}"


# ====================================================================== model-level API
def _check_options(r, alpha, dropout, init) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ValueError(f"LoRA: r (the adapter's rank) must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not (
            math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"LoRA: alpha must be a finite number > 0 (the update is scaled by alpha/r), got {alpha!r}")
    if not (isinstance(dropout, (int, float, np.number)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"LoRA: dropout must be in [0, 1), got {dropout!r}")
    if init not in INITS:
        raise ValueError(f"LoRA: init must be one of {INITS}, got {init!r}")


def lora_layers(model: Module) -> "OrderedDict[str, LoRALinear]":
    """{dotted name: LoRALinear} of every adapted layer, in `named_modules()` order."""
    return OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def _selector(target: str, linears: dict, roles: dict, model: Module):
    """The names in `linears` that `target` selects (see `apply_lora`); a target that selects
    none raises ValueError saying what it matched instead and how to fix it."""
    if not isinstance(target, str) or not target:
        raise TypeError(f"apply_lora: each target must be a non-empty string, got {target!r}")
    if target.startswith("role:"):
        role = target[len("role:"):]
        chosen = [n for n in linears if roles.get(f"{n}.weight") == role]
        if not chosen:
            parts = {r for splits in model.param_splits().values() for _, r, _ in splits}
            fused = [n for n, splits in model.param_splits().items() if any(r == role for _, r, _ in splits)]
            if role in parts:
                raise ValueError(f"apply_lora: role {role!r} names rows of the fused weight {fused[0]} "
                                 f"(role {roles.get(fused[0])!r}); LoRA adapts whole Linear layers: "
                                 f"target 'role:{roles.get(fused[0])}'")
            have = sorted({roles.get(f"{n}.weight") for n in linears} - {None})
            raise ValueError(f"apply_lora: no Linear layer's weight has role {role!r}; the roles of "
                             f"this model's Linear weights are {have}")
        return chosen
    if target.startswith("re:"):
        try:
            pattern = re.compile(target[len("re:"):])
        except re.error as e:
            raise ValueError(f"apply_lora: target {target!r} is not a valid regular expression ({e})") from None
        matches = pattern.fullmatch
    else:
        def matches(name):
            return fnmatch.fnmatchcase(name, target)
    chosen = [n for n in linears if matches(n)]
    if not chosen:
        others = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if n and matches(n)]
        hint = (f"it matches {', '.join(others[:3])}, which are not Linear layers" if others else
                f"the Linear layers are {', '.join(list(linears)[:6])}{' ...' if len(linears) > 6 else ''}")
        raise ValueError(f"apply_lora: target {target!r} matches no Linear layer; {hint} (targets are "
                         f"globs of dotted names, 're:' regular expressions or 'role:' roles)")
    return chosen


def _replace_module(model: Module, old: Module, new: Module) -> None:
    """Put `new` wherever `old` is registered as a child, keeping the registration order (and so
    the order of `named_parameters()`; `setattr` would move it to the end)."""
    for mod in list(model.modules()):
        for key, child in list(mod._modules.items()):
            if child is old:
                mod._modules[key] = new
                object.__setattr__(mod, key, new)


def apply_lora(model: Module, targets, *, r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
               dora: bool = False, detach_norm: bool = True, init: str = "kaiming", seed: int = 0) -> list[str]:
    """Put an adapter on every Linear layer of `model` that `targets` selects, and freeze the rest.

    targets      a string or a list of them; a layer is adapted when any selects it, and each
                 must select at least one Linear layer:
                 "role:NAME"  its weight's role in `model.param_roles()` is NAME (e.g. attn_qkv,
                              attn_out, mlp_in, mlp_out, or linear for a plain Linear);
                 "re:REGEX"   `re.fullmatch` of its dotted name (e.g. "re:h\\.[01]\\.mlp\\..*");
                 otherwise    an `fnmatch` glob of its dotted name (e.g. "h.*.attn.c_attn", "*").
    r, alpha     the rank and the scale: the update is (alpha / r)·B·A
    dropout      dropout probability on the adapter's input (training mode only)
    dora         weight-decomposed adapters (DoRA) instead of plain LoRA; `detach_norm` treats
                 the row norm as a constant in backward (the paper's choice) or not
    init         "kaiming" (the reference code's A) or "gaussian" (the paper's); B is zero
    seed         A is drawn from np.random.default_rng(seed), dropout masks from seed + 1 (one
                 Generator shared by the adapters; checkpoints save its state with the model's)

    Every parameter of `model` is frozen (`requires_grad_(False)`), then the adapters' are
    trainable; unfreeze others after this call (a bias, a norm) if you want them trained too.
    Returns the dotted names of the adapted layers. Raises ValueError for a bad option, a target
    that selects nothing, or a model that already has adapters (apply once with all targets)."""
    _check_options(r, alpha, dropout, init)
    existing = list(lora_layers(model))
    if existing:
        raise ValueError(f"apply_lora: the model already has adapters on {', '.join(existing[:4])}"
                         f"{' ...' if len(existing) > 4 else ''}; apply once with all targets, or "
                         f"unload_lora(model) first")
    if isinstance(model, Linear):
        raise ValueError("apply_lora: the model is itself a Linear layer, which cannot replace itself; "
                         "wrap it in a container, e.g. nn.Sequential(layer)")
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise ValueError("apply_lora: targets is empty; name the layers to adapt, e.g. '*' for every Linear")
    linears = OrderedDict((n, m) for n, m in model.named_modules() if n and type(m) is Linear)
    roles = model.param_roles()
    chosen = set()
    for t in targets:
        chosen.update(_selector(t, linears, roles, model))
    init_rng, dropout_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    model.requires_grad_(False)
    names = [n for n in linears if n in chosen]
    for name in names:
        base = linears[name]
        _replace_module(model, base, LoRALinear(base, r, alpha, dropout, dora=dora, detach_norm=detach_norm,
                                                init=init, rng=init_rng, dropout_rng=dropout_rng))
    return names


def _adapted(model: Module, op: str) -> "OrderedDict[str, LoRALinear]":
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{op}: the model has no LoRA adapters; apply_lora(model, targets) first")
    return layers


def merge_lora(model: Module) -> None:
    """Fold every adapter into its layer's weight (see `LoRALinear.merge`): the forward then costs
    what the original model's did. Raises RuntimeError if they are merged already."""
    layers = _adapted(model, "merge_lora")
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        raise RuntimeError(f"merge_lora: the adapters of {', '.join(merged[:4])} are merged already; "
                           "unmerge_lora(model) first")
    for m in layers.values():
        m.merge()


def unmerge_lora(model: Module) -> None:
    """Undo `merge_lora`: the weights are W0 again (up to rounding) and the adapters train."""
    layers = _adapted(model, "unmerge_lora")
    unmerged = [n for n, m in layers.items() if not m.merged]
    if unmerged:
        raise RuntimeError(f"unmerge_lora: the adapters of {', '.join(unmerged[:4])} are not merged; "
                           "merge_lora(model) first")
    for m in layers.values():
        m.unmerge()


def lora_state_dict(model: Module) -> "OrderedDict[str, np.ndarray]":
    """Copies of the adapter parameters only (lora_A, lora_B, lora_magnitude), keyed by their
    names in `model.state_dict()`; the frozen base is not in it."""
    return OrderedDict((f"{name}.{attr}", getattr(layer, attr).data.copy())
                       for name, layer in _adapted(model, "lora_state_dict").items()
                       for attr in ("lora_A", "lora_B", "lora_magnitude")
                       if getattr(layer, attr) is not None)


def load_lora_state_dict(model: Module, state_dict) -> None:
    """Copy adapter arrays saved by `lora_state_dict` into `model`'s adapters, in place. The keys
    must be exactly the model's adapter parameters and the shapes must agree (apply_lora with the
    same targets, r and dora first); otherwise ValueError naming them, and nothing is written."""
    own = lora_state_dict(model)
    merged = [n for n, m in lora_layers(model).items() if m.merged]
    if merged:
        raise RuntimeError(f"load_lora_state_dict: the adapters of {', '.join(merged[:4])} are merged; "
                           "unmerge_lora(model) first")
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise ValueError(f"load_lora_state_dict: missing keys {missing[:4]}, unexpected keys {unexpected[:4]}; "
                         "apply_lora with the targets (and dora) the adapters were saved with")
    for k, v in state_dict.items():
        if np.shape(v) != own[k].shape:
            raise ValueError(f"load_lora_state_dict: {k} has shape {np.shape(v)} in the state dict but "
                             f"{own[k].shape} in the model; apply_lora with the r they were saved with")
    params = dict(model.named_parameters())
    for k, v in state_dict.items():
        params[k].data[...] = v


def unload_lora(model: Module, merge: bool = True) -> list[str]:
    """Put plain Linear layers back in place of the adapted ones (the same weight and bias
    Parameters): with `merge` the adapters are folded in first, else they are dropped and W0 is
    kept. Returns the names of the layers. `requires_grad` of the weights is left as it is."""
    layers = _adapted(model, "unload_lora")
    for layer in layers.values():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        plain = Linear.__new__(Linear)
        Module.__init__(plain)
        plain.in_features, plain.out_features = layer.in_features, layer.out_features
        plain.weight, plain.bias = layer.weight, layer.bias
        plain.training = layer.training
        _replace_module(model, layer, plain)
    return list(layers)
