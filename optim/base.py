"""The optimizer interface: optimizers update raw NumPy arrays, keyed by parameter name.

A model produces ``(loss, grads)``; an optimizer turns ``(params, grads)`` into new params,
updating the arrays **in place**::

    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("adamw", params, lr=3e-4, weight_decay=0.1)
    loss, grads = ...                      # grads: dict name -> ndarray, same shape and dtype
    opt.step(grads)

``params`` may be a dict name -> array, an iterable of (name, array) pairs (objects with a
``.data`` ndarray, e.g. ``Parameter``, are unwrapped), an iterable of Parameters (see "PyTorch
habits" below), or a list of parameter groups
``[{"params": {...}, "lr": 1e-3, "weight_decay": 0.0}, ...]``; keys missing from a group are
filled from the optimizer's defaults. A group key that is not one of the optimizer's
hyperparameters (``opt.defaults``; plus ``"initial_lr"``, which ``LRScheduler`` sets) is a
``ValueError``: every key a group holds is honoured by the update.

PyTorch habits
--------------
An optimizer built from Parameters (recognised by duck typing: a ``.data`` ndarray and a
``grad`` attribute) keeps the Parameter objects besides their arrays, and is driven as in torch::

    opt = optim.AdamW(model.parameters(), lr=3e-4)   # or model.named_parameters()
    loss = model(x, y)
    loss.backward()
    optim.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()                 # reads p.grad; a parameter whose grad is None is skipped
    opt.zero_grad()            # p.grad = None (set_to_none=False: fill it with zeros)

``model.parameters()`` carries no names: the parameters are named "0", "1", ... in order,
counting on across groups, as torch numbers its optimizer state by position. An optimizer built
from raw arrays has no gradients to read: ``step()`` needs grads or a closure, and
``zero_grad()`` raises.

The step protocol
-----------------
A training loop drives every optimizer (and ``minigrad.amp.MixedPrecisionOptimizer``, which
has the same interface) the same way, without looking at its class::

    if opt.uses_gradients:
        model.zero_grad()
        loss = model(x, y)
        (loss * opt.loss_scale).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        opt.unscale_(grads)            # in place: grads are now the true gradients
        clip_grad_norm_(grads, 1.0)    # optional: anything that needs the true gradients
        opt.step(grads)
    else:                              # zeroth-order: fn() -> loss, under minigrad.no_grad()
        loss = opt.step(closure=lambda: eval_loss(model, x, y))
    if opt.last_step_skipped: ...      # nonfinite="skip", or a loss scaler found inf/NaN

* ``uses_gradients`` (class attribute): True, or False for zeroth-order methods, whose
  ``step(closure=fn)`` calls ``fn() -> loss`` itself.
* ``uses_closure`` (class attribute): False, or True for first-order methods that need several
  gradients per step; the loop then calls ``step(closure=fn)`` with ``fn() -> (loss, grads)``.
* ``loss_scale`` (1.0) and ``unscale_(grads)`` (no-op): a loss-scaling wrapper scales the loss
  and divides the gradients in place.
* ``last_step_skipped``: False after a step that updated the parameters, True after one that
  was skipped; set by every step.
* ``trainable_names()``: None, or the set of parameter names that need a gradient at the
  coming step (layer-wise methods); the loop freezes the others (``requires_grad_(False)``).
* ``expected_state_bytes()``: the bytes ``state_bytes()`` reports once every parameter has
  taken a step, computed from the parameters' shapes and dtypes and their groups' options
  (memory models ask the optimizer rather than keep a table of their own).
* ``optim.accepts(name)``: the keyword arguments the registered optimizer takes.

Writing a new optimizer
-----------------------
Subclass :class:`Optimizer`, pass the hyperparameters to ``super().__init__``, override
``_update``, which is called once per parameter that has a gradient, and ``_state_nbytes``,
the bytes of the state ``_update`` keeps for one parameter::

    @register("signsgd")
    class SignSGD(Optimizer):
        '''sign-SGD: theta <- theta - lr * sign(g).'''
        def __init__(self, params, lr=1e-3):
            super().__init__(params, lr=lr)

        def _update(self, name, p, g, state, group):
            p -= group["lr"] * np.sign(g)     # update IN PLACE; hyperparameters from the group

        def _state_nbytes(self, p, group):
            return 0                          # keeps no arrays

``state`` is this parameter's dict (persisted by ``state_dict``; put ndarrays and Python
scalars in it only). Optional hooks: ``_begin_step(grads)`` (sees all gradients before any
update, e.g. for a global norm; return False when the hook has done the whole step itself,
so that no per-parameter update runs) and ``_end_step(grads)``; ``self.global_state`` holds
optimizer-wide state (also persisted; a class that keeps arrays there adds their bytes in
``expected_state_bytes``). Methods that evaluate the loss (zeroth-order, line search) override
``step`` and use ``closure``.

Checkpoints
-----------
``state_dict()`` is a nested dict (``{"state": {name: {key: value}}, "param_groups": [...],
"global_state": {...}}``) of ndarrays and Python scalars. ``flatten_state_dict`` turns it into
``{str: ndarray}`` that ``np.savez`` stores with ``allow_pickle=False``; ``unflatten_state_dict``
inverts it exactly, so a resumed run follows the same trajectory bit for bit::

    np.savez("ckpt.npz", **optim.flatten_state_dict(opt.state_dict()))
    with np.load("ckpt.npz", allow_pickle=False) as f:
        opt.load_state_dict(optim.unflatten_state_dict(dict(f)))

Bad input (unknown/missing gradient name, shape or dtype mismatch, negative learning rate,
non-finite gradient) raises ``ValueError``/``TypeError`` naming the parameter **before any
array is modified**. A gradient given as ``None`` means "no gradient": that parameter gets no
update, no weight decay and no state this step (as PyTorch skips ``p.grad is None``); the set
of parameters with gradients may change from step to step. With ``nonfinite="skip"`` a step
whose gradients contain NaN/inf is skipped entirely (``opt.skipped_steps`` counts them,
``opt.last_step_skipped`` is True) instead of raising.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
from collections.abc import Mapping

import numpy as np

from minigrad.backend import fused_kernels as backend_kernels

__all__ = [
    "Optimizer", "register", "create", "available", "accepts", "option_default",
    "flatten_state_dict", "unflatten_state_dict",
]

# ----------------------------------------------------------------------------- registry
# The built-in optimizers register themselves when optim/__init__.py imports their modules;
# Python runs it before any import of optim.base completes, so the registry is full by the time
# create() can be called.
_REGISTRY: dict = {}


def register(name, *aliases):
    """Class/factory decorator: make ``optim.create(name, params, **kw)`` build it.

    The decorated object is any callable ``(params, **kw) -> Optimizer``. Registering a
    different object under a taken name raises (so two helpers cannot silently collide)."""
    def deco(obj):
        for n in (name, *aliases):
            key = n.lower()
            if key in _REGISTRY and _REGISTRY[key] is not obj:
                raise ValueError(f"optimizer name {n!r} is already registered to {_REGISTRY[key]!r}")
            _REGISTRY[key] = obj
        return obj
    return deco


def available():
    """Sorted list of registered optimizer names (for ``create`` and the training CLI)."""
    return sorted(_REGISTRY)


def _lookup(name):
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def create(name, params, **kw):
    """Build the optimizer registered as ``name`` (case-insensitive) on ``params``."""
    return _lookup(name)(params, **kw)


def accepts(name) -> frozenset:
    """The keyword arguments ``optim.create(name, params, ...)`` takes (read from the signature
    of the registered class or factory), e.g. to pass ``betas=`` only where it is understood::

        kw = {"betas": (0.9, 0.95)} if "betas" in optim.accepts(name) else {}
    """
    sig = inspect.signature(_lookup(name))
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        raise TypeError(f"optimizer {name!r} is registered as a callable taking **kwargs, so the "
                        f"keywords it accepts are unknown; give it an explicit signature")
    return frozenset(n for n, p in sig.parameters.items()
                     if n != "params" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def option_default(name, option):
    """The default of keyword ``option`` of ``optim.create(name, ...)`` (one of ``accepts(name)``),
    e.g. the inner optimizer GaLore runs unless told: ``option_default("galore", "inner")``."""
    if option not in accepts(name):
        raise ValueError(f"optimizer {name!r} takes no option {option!r}")
    return inspect.signature(_lookup(name)).parameters[option].default


# ----------------------------------------------------------------------------- helpers
def check_fraction(value, what: str) -> None:
    """Raise ValueError unless 0 <= value < 1 (momentum, EMA decay rates)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")


def check_betas(betas, where: str) -> None:
    """Raise ValueError unless ``betas`` is a pair (beta1, beta2) of numbers in [0, 1) (the decay
    rates of Adam-style moments); ``where`` names the optimizer in the message."""
    if len(betas) != 2:
        raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        check_fraction(b, f"{where}: betas[{i}]")


def check_eps(eps, where: str, what: str = "eps") -> None:
    """Raise ValueError unless ``eps`` (the term that keeps a denominator off zero) is a number >= 0."""
    if not (isinstance(eps, (int, float, np.floating)) and eps >= 0):
        raise ValueError(f"{where}: {what} must be a number >= 0, got {eps!r}")


def check_count(value, what: str) -> None:
    """Raise ValueError unless value is an integer >= 1 (queries, ranks, intervals)."""
    if int(value) != value or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


def fused_kernels(p, *arrays):
    """``minigrad.kernels`` when a fused update kernel applies to parameter ``p`` and the other
    arrays of its update (gradient, state buffers; None for an unused one), else None.

    It applies on minigrad's numba backend, to a float32/float64 ``p``, when every array is
    C-contiguous with ``p``'s shape and dtype (as the optimizer creates its state). Otherwise the
    optimizer runs its NumPy update, which the kernel equals bit for bit
    (tests/test_optim_fused.py); the backend is read at every step (``minigrad.set_backend``)."""
    kernels = backend_kernels(p)
    if kernels is None or not p.flags.c_contiguous:
        return None
    for a in arrays:
        if a is not None and (a.dtype != p.dtype or a.shape != p.shape or not a.flags.c_contiguous):
            return None
    return kernels


def _is_parameter(p) -> bool:
    """A Parameter by duck typing (optim imports no minigrad): a ``.data`` ndarray and a ``grad``
    attribute (an ndarray, or None when it has no gradient)."""
    return (not isinstance(p, np.ndarray) and isinstance(getattr(p, "data", None), np.ndarray)
            and hasattr(p, "grad"))


def _as_array(name, p):
    if not isinstance(p, np.ndarray) and isinstance(getattr(p, "data", None), np.ndarray):
        p = p.data  # a Tensor/Parameter: optimize its storage in place
    if not isinstance(p, np.ndarray):
        raise TypeError(f"parameter {name!r}: expected a numpy ndarray, got {type(p).__name__}")
    if not np.issubdtype(p.dtype, np.floating):
        raise TypeError(f"parameter {name!r}: dtype {p.dtype} is not floating point")
    if not p.flags.writeable:
        raise ValueError(f"parameter {name!r}: array is read-only; optimizers update in place")
    return p


def _named_items(params, where="params", first=0):
    """(name, parameter) pairs of a dict, of (name, parameter) pairs, or of unnamed Parameters
    (``model.parameters()``), which are named str(first), str(first + 1), ... in order, as torch
    numbers parameters by position. The parameters are returned as given (not unwrapped)."""
    if isinstance(params, Mapping):
        items = list(params.items())
    else:
        if isinstance(params, np.ndarray) or _is_parameter(params):
            raise TypeError(f"{where}: got a single {type(params).__name__}; pass an iterable of "
                            f"parameters, e.g. [p] or {{'name': p}}")
        items = list(params)
        if items and all(_is_parameter(it) for it in items):
            return [(str(first + i), p) for i, p in enumerate(items)]
        for it in items:
            if not (isinstance(it, tuple) and len(it) == 2):
                raise TypeError(f"{where}: expected a dict name -> array, (name, array) pairs "
                                f"(model.named_parameters()) or Parameters only (model.parameters()), "
                                f"got an item of type {type(it).__name__}")
    names = set()
    for n, _ in items:
        if not isinstance(n, str):
            raise TypeError(f"{where}: parameter names must be str, got {n!r}")
        if n in names:
            raise ValueError(f"{where}: duplicate parameter name {n!r}")
        names.add(n)
    return items


# ----------------------------------------------------------------------------- base class
class Optimizer:
    """Base class. ``Optimizer(params, **defaults)``; see the module docstring."""

    #: False for zeroth-order methods: ``step(closure=fn)`` with ``fn() -> loss``, no gradients.
    uses_gradients: bool = True
    #: True for first-order methods that evaluate the gradient several times per step (an inner
    #: solve, a line search): ``step(closure=fn)`` with ``fn() -> (loss, grads)`` at the current
    #: parameters, called as often as the method needs.
    uses_closure: bool = False
    #: group keys not saved by ``state_dict`` (objects such as prox operators; they are
    #: rebuilt by the constructor and kept by ``load_state_dict``).
    _unsaved_hparams: tuple = ()
    #: methods whose parameters hold an extrapolated point (AGD, FISTA) keep the iterate x_k in
    #: ``state[name][_iterate_key]``; for all others the parameter is the iterate.
    _iterate_key: str | None = None
    #: options the method keeps as attributes rather than in ``param_groups`` (MeZO's eps, LoZO's
    #: rank): ``state_dict`` records them and ``load_state_dict`` refuses a state saved with others
    _saved_options: tuple = ()

    def __init__(self, params, *, nonfinite="raise", **defaults):
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.defaults = dict(defaults)
        self.nonfinite = nonfinite
        self.param_groups: list = []
        self.state: dict = {}          # name -> {key: ndarray | scalar}
        self.global_state: dict = {}   # optimizer-wide scalars/arrays (e.g. FISTA's t_k)
        self.skipped_steps = 0
        self.last_step_skipped = False
        self._tensors: dict = {}       # name -> the Parameter given for it (step() reads .grad)
        if isinstance(params, (list, tuple)) and params and isinstance(params[0], Mapping):
            groups = list(params)
        else:
            groups = [{"params": params}]
        for g in groups:
            self.add_param_group(g)
        if not self.param_groups:
            raise ValueError("optimizer got an empty parameter list")

    # -- groups ---------------------------------------------------------------
    def add_param_group(self, group):
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError("a parameter group is a dict with a 'params' entry")
        g = {k: v for k, v in group.items() if k != "params"}
        unknown = [k for k in g if k not in self.defaults and k != "initial_lr"]
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown param group key(s) {unknown}; a group "
                             f"may set {sorted(self.defaults)} (and 'initial_lr')")
        for k, v in self.defaults.items():
            g.setdefault(k, v)
        items = _named_items(group["params"], "param group",
                             first=sum(len(grp["params"]) for grp in self.param_groups))
        g = {"params": {n: _as_array(n, p) for n, p in items}, **g}
        if not g["params"]:
            return
        taken = {n for grp in self.param_groups for n in grp["params"]}
        by_id = {id(p): n for grp in self.param_groups for n, p in grp["params"].items()}
        for n, p in g["params"].items():
            if n in taken:
                raise ValueError(f"parameter {n!r} appears in more than one group")
            if id(p) in by_id:
                raise ValueError(f"parameters {n!r} and {by_id[id(p)]!r} are the same array "
                                 f"(tied weights must be passed once)")
            by_id[id(p)] = n
        self._check_group(g)
        self.param_groups.append(g)
        self._tensors.update((n, p) for n, p in items if _is_parameter(p))

    def _check_group(self, group):
        """Validate a group's hyperparameters; subclasses extend (call super())."""
        lr = group.get("lr", 0.0)
        if not (isinstance(lr, (int, float, np.floating)) and math.isfinite(lr) and lr >= 0):
            names = list(group["params"])[:3]
            raise ValueError(f"invalid learning rate {lr!r} for parameters {names}...: "
                             f"must be a finite number >= 0")
        wd = group.get("weight_decay", 0.0)
        if wd is not None and not (math.isfinite(wd) and wd >= 0):
            raise ValueError(f"invalid weight_decay {wd!r}: must be >= 0")

    @property
    def params(self):
        """All parameters, dict name -> array (the live arrays)."""
        return {n: p for g in self.param_groups for n, p in g["params"].items()}

    # -- validation -----------------------------------------------------------
    def _check_grads(self, grads):
        """Check everything before touching anything. Returns False if the step is skipped."""
        if not isinstance(grads, Mapping):
            raise TypeError(f"step(grads): expected a dict name -> ndarray, got {type(grads).__name__}")
        params = self.params
        unknown = [n for n in grads if n not in params]
        if unknown:
            raise ValueError(f"gradient given for unknown parameter(s) {unknown}; "
                             f"known: {list(params)[:8]}{'...' if len(params) > 8 else ''}")
        missing = [n for n in params if n not in grads]
        if missing:
            raise ValueError(f"no gradient for parameter(s) {missing} (pass None explicitly to "
                             f"skip a parameter this step)")
        for group in self.param_groups:
            self._check_group(group)  # a scheduler may have changed lr
        finite = True
        for n, g in grads.items():
            if g is None:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"gradient of {n!r}: expected a numpy ndarray, got {type(g).__name__}"
                                f" (for a Tensor pass .grad or .data)")
            p = params[n]
            if g.shape != p.shape:
                raise ValueError(f"gradient of {n!r} has shape {g.shape}, parameter has {p.shape}")
            if g.dtype != p.dtype:
                raise TypeError(f"gradient of {n!r} has dtype {g.dtype}, parameter has {p.dtype}; "
                                f"cast it (g.astype(p.dtype)) or keep master weights in {g.dtype}")
            if not np.isfinite(g).all():
                if self.nonfinite == "raise":
                    bad = int(np.size(g) - np.isfinite(g).sum())
                    raise FloatingPointError(f"gradient of {n!r} has {bad} non-finite value(s) "
                                             f"(NaN/inf); use nonfinite='skip' to skip such steps")
                finite = False
        if not finite:
            self.skipped_steps += 1
        return finite

    # -- stepping -------------------------------------------------------------
    def step(self, grads=None, closure=None):
        """Update the parameters in place from ``grads`` (dict name -> ndarray).

        ``closure`` (used when ``grads`` is None) is called once and must return
        ``(loss, grads)``; its loss is returned. Returns None when given ``grads``.
        With neither, an optimizer built from Parameters reads their ``.grad`` (torch's
        ``opt.step()``)."""
        loss = None
        if grads is None:
            if closure is None:
                grads = self._parameter_grads()
            else:
                out = closure()
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(f"{type(self).__name__} needs gradients: the closure must return "
                                    f"(loss, grads), got {type(out).__name__}")
                loss, grads = out
        finite = self._check_grads(grads)
        self.last_step_skipped = not finite
        if not finite or self._begin_step(grads) is False:
            return loss
        for group in self.param_groups:
            for name, p in group["params"].items():
                g = grads[name]
                if g is None:
                    continue
                self._update(name, p, g, self.state.setdefault(name, {}), group)
        self._end_step(grads)
        return loss

    def _parameter_grads(self):
        """dict name -> ``p.grad`` of the Parameters the optimizer was built from."""
        arrays = [n for n in self.params if n not in self._tensors]
        if arrays:
            raise ValueError(f"step() needs grads or a closure returning (loss, grads): parameter(s) "
                             f"{arrays[:5]}{'...' if len(arrays) > 5 else ''} were given as arrays, "
                             f"which hold no .grad (build the optimizer from model.parameters() to "
                             f"step() on their .grad)")
        return {n: p.grad for n, p in self._tensors.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the ``.grad`` of the Parameters the optimizer was built from (torch semantics):
        set it to None, or with ``set_to_none=False`` fill an existing one with zeros in place."""
        if not self._tensors:
            raise TypeError(f"{type(self).__name__}.zero_grad: the optimizer was built from raw "
                            f"arrays, which hold no gradients; call model.zero_grad() instead")
        for p in self._tensors.values():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.fill(0)

    def decays_decoupled(self, group) -> bool:
        """Whether ``group``'s weight decay is decoupled, theta <- theta*(1 - lr*wd) apart from the
        gradient (AdamW's form), rather than the L2 term g <- g + wd*theta (the default here). A
        method that steps this optimizer on other arrays (GaLore's projected gradients) applies
        the decay to the full weights itself, and must apply it the same way."""
        return False

    def reads_parameters(self, group) -> bool:
        """Whether ``group``'s step reads the parameters' values beyond weight decay (a step size
        relative to the parameter, an average or history of iterates, a proximal map). A method
        that steps this optimizer on stand-in arrays (GaLore's low-rank arrays, which start at 0
        every step) refuses those: their step would be computed from the stand-in."""
        return False

    def _begin_step(self, grads):
        """Hook: sees all (validated) gradients before any update. Return False when it has
        done the whole step itself (no per-parameter update runs then)."""
        return True

    def _update(self, name, p, g, state, group):
        """Update one parameter ``p`` IN PLACE from its gradient ``g``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _update")

    def _end_step(self, grads):
        """Hook: after all parameters were updated."""

    # -- the rest of the step protocol (see the module docstring) ------------------
    @property
    def loss_scale(self) -> float:
        """The factor the loss is multiplied by before backward (a loss-scaling wrapper's S)."""
        return 1.0

    def unscale_(self, grads) -> None:
        """Turn backpropagated gradients of ``loss * loss_scale`` into true gradients, in place.
        Nothing to do without loss scaling."""

    def trainable_names(self):
        """The names of the parameters that need a gradient at the coming step, or None for all.

        Layer-wise methods (block coordinate descent, LISA, BAdam) return their active set; a
        training loop freezes the others for that step, so their gradients are not even computed."""
        return None

    # -- state ----------------------------------------------------------------
    def state_bytes(self):
        """Bytes held by optimizer state arrays (not the parameters or gradients)."""
        n = sum(v.nbytes for st in self.state.values() for v in st.values() if isinstance(v, np.ndarray))
        return n + sum(v.nbytes for v in self.global_state.values() if isinstance(v, np.ndarray))

    def expected_state_bytes(self) -> int:
        """``state_bytes()`` once every parameter has taken a step, computed from the shapes,
        dtypes and group options alone (no step needed)."""
        return sum(int(self._state_nbytes(p, group))
                   for group in self.param_groups for p in group["params"].values())

    def _state_nbytes(self, p, group) -> int:
        """Bytes of the state arrays ``_update`` keeps for parameter ``p`` of ``group``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _state_nbytes(p, group) "
                                  f"for expected_state_bytes()")

    def iterates(self) -> dict:
        """dict name -> the iterate x_k the method is at (the parameter itself, except for
        methods that take gradients at an extrapolated point; see ``_iterate_key``)."""
        key = self._iterate_key
        return {n: self.state[n][key] if key and n in self.state else p for n, p in self.params.items()}

    def state_dict(self):
        """Deep copy of the state: ndarrays and Python scalars only (see module docstring)."""
        groups = [{**{k: copy.deepcopy(v) for k, v in g.items()
                      if k != "params" and k not in self._unsaved_hparams},
                   "params": list(g["params"])} for g in self.param_groups]
        return {"state": {n: {k: _copy(v) for k, v in st.items()} for n, st in self.state.items()},
                "param_groups": groups,
                "global_state": {k: _copy(v) for k, v in self.global_state.items()},
                "skipped_steps": self.skipped_steps,
                "kind": type(self).__name__,
                "options": {k: copy.deepcopy(getattr(self, k)) for k in self._saved_options}}

    def load_state_dict(self, sd):
        """Restore a ``state_dict``; it must be of this class, saved with the same options kept
        outside the groups (``_saved_options``), and the parameter names and groups must match
        exactly. (A state_dict saved before 2026-12-07 names no class and no options.)"""
        where = f"{type(self).__name__}.load_state_dict"
        kind = sd.get("kind")
        if kind is not None and kind != type(self).__name__:
            raise ValueError(f"{where}: the state_dict was saved by {kind}, not {type(self).__name__}; load "
                             f"it into the optimizer it was saved by")
        for k, saved in (sd.get("options") or {}).items():
            mine = getattr(self, k, None)
            if saved != mine:
                raise ValueError(f"{where}: the state_dict was saved with {k}={saved!r}, this optimizer "
                                 f"has {k}={mine!r}; build it with the saved options")
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, optimizer has "
                             f"{len(self.param_groups)}")
        for i, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if list(saved["params"]) != list(mine["params"]):
                raise ValueError(f"param group {i}: saved names {list(saved['params'])[:5]} do not "
                                 f"match the optimizer's {list(mine['params'])[:5]}")
        params = self.params
        unknown = [n for n in sd["state"] if n not in params]
        if unknown:
            raise ValueError(f"state_dict has state for unknown parameter(s) {unknown}")
        for saved, mine in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params" and k not in self._unsaved_hparams:
                    mine[k] = copy.deepcopy(v)
        self.state = {n: {k: _copy(v) for k, v in st.items()} for n, st in sd["state"].items()}
        self.global_state = {k: _copy(v) for k, v in sd.get("global_state", {}).items()}
        self.skipped_steps = int(sd.get("skipped_steps", 0))

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines) + "\n)"


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v)


# ----------------------------------------------------------------------------- flat checkpoints
_META = "__optim_meta__"


def flatten_state_dict(sd, prefix=""):
    """Nested optimizer ``state_dict`` -> ``{str: ndarray}`` (savable with allow_pickle=False).

    Arrays are stored as themselves; every scalar, string, tuple and the structure go into one
    JSON string under ``prefix + "__optim_meta__"`` (JSON round-trips Python floats exactly)."""
    flat, arrays = {}, []

    def enc(v, path):
        if isinstance(v, np.ndarray):
            key = f"{prefix}{len(arrays)}:{path}"
            flat[key] = v.copy()
            arrays.append(key)
            return {"__array__": key}
        if isinstance(v, np.generic):
            return {"__npscalar__": v.dtype.str, "v": v.item()}
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x, f"{path}/{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, f"{path}/{i}") for i, x in enumerate(v)]
        if isinstance(v, Mapping):
            if not all(isinstance(k, str) for k in v):
                raise TypeError(f"state_dict key at {path!r} is not a str")
            return {"__dict__": {k: enc(x, f"{path}/{k}") for k, x in v.items()}}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"cannot flatten state_dict entry {path!r} of type {type(v).__name__}")

    meta = enc(sd, "")
    flat[prefix + _META] = np.array(json.dumps(meta))
    return flat


def unflatten_state_dict(flat, prefix=""):
    """Inverse of :func:`flatten_state_dict`."""
    if prefix + _META not in flat:
        raise KeyError(f"{prefix + _META!r} not found: not a flattened optimizer state_dict")

    def dec(v):
        if isinstance(v, list):
            return [dec(x) for x in v]
        if isinstance(v, dict):
            if "__array__" in v:
                return np.array(flat[v["__array__"]])
            if "__npscalar__" in v:
                return np.dtype(v["__npscalar__"]).type(v["v"])
            if "__tuple__" in v:
                return tuple(dec(x) for x in v["__tuple__"])
            return {k: dec(x) for k, x in v["__dict__"].items()}
        return v

    return dec(json.loads(str(flat[prefix + _META][()])))
