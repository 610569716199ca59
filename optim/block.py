"""Block coordinate descent and layer-wise training: BCD, LISA, BAdam, MISA (Lecture 7).

Each method trains a few blocks of parameters at a time, so that optimizer state (and, because
the training loop freezes the rest, gradients) exists only for the active set. All four wrap an
inner optimizer built on every parameter at construction; at each step the inner optimizer sees
the gradients of the active blocks and None ("no gradient": no update, no decay, no state) for
the others.

Blocks are plain data: an ordered dict block name -> parameter names. ``block_params`` turns any
iterable of objects with ``.name`` and ``.params`` into it, e.g. a GPT's ``param_blocks()``
("embeddings", "h.0" ... "h.{L-1}", "head")::

    params = {n: p.data for n, p in model.named_parameters()}
    blocks = optim.block_params(model.param_blocks())
    opt = optim.create("lisa", params, blocks=blocks, layers=1, switch_every=20, lr=3e-4)
    opt = optim.create("badam", params, blocks=blocks, switch_every=50, order="random")
    opt = optim.create("misa", params, blocks=blocks, splits=model.param_splits(), delta=0.25)
    opt = optim.create("bcd", params, blocks=blocks, selection="reshuffle", inner="adamw")

Without ``blocks`` one block holds every parameter and each method is its inner optimizer.
Every parameter must be in exactly one block.

Periods and the active set
--------------------------
The steps are cut into periods of ``switch_every`` steps; period k covers steps
[k*K, (k+1)*K). The active set of a period is chosen when it begins and is a function of
``(seed, k)`` alone (random rules draw from a Generator keyed by them), or, for the rules that
look at the run (Gauss-Southwell, MISA's scores), of state that ``state_dict`` saves. So a
resumed run, also one resumed in the middle of a period, continues the period it was in and
then switches exactly as the uninterrupted run would. The step counter counts the steps that
updated the parameters: a step skipped for non-finite gradients does not advance it.

* ``trainable_names()`` -- the parameters the coming step updates (a training loop freezes the
  others, so their gradients are not computed), or None when the step needs every gradient
  (Gauss-Southwell at the start of a period).
* ``state_bytes()`` -- the bytes the inner optimizer holds now; ``expected_state_bytes()`` --
  what it will hold after the coming step (the active set's state, plus the state of inactive
  blocks when it is kept), from shapes and dtypes alone.
* ``state`` is the inner optimizer's state, keyed by the names it optimizes: the parameter
  names, and for MISA's split matrices "name:part" (see ``optim.split_matrices``).

What happens to the state of a block that becomes inactive: freed (BCD, LISA, MISA; ``keep_state
=True`` keeps it, as a torch optimizer does implicitly when parameters are frozen), or, for
BAdam, all state including Adam's step count starts afresh at every switch.

References: Nesterov (2012), "Efficiency of coordinate descent methods on huge-scale
optimization problems", SIAM J. Optim. 22(2); Shi, Tu, Xu, Yin (2016), "A Primer on Coordinate
Descent Algorithms", arXiv 1610.00040; Nutini, Schmidt, Laradji, Friedlander, Koepke (ICML
2015), "Coordinate Descent Converges Faster with the Gauss-Southwell Rule Than Random
Selection" [arXiv id unverified: 1506.00552]; LISA: Pan et al. (2024), arXiv 2403.17919;
BAdam: Luo, Yu, Li (2024), arXiv 2404.02827; MISA: Liu, Deng, He, Wang, Yao, Yuan (NeurIPS
2025), arXiv 2511.00056.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .base import Optimizer, _copy, check_count, create, register
from .groups import _parts

__all__ = ["BlockOptimizer", "BlockCoordinateDescent", "LISA", "BAdam", "MISA", "block_params"]

# The Generator that picks the blocks of period k is keyed by (seed, k, _PICK); the last entry
# must be non-zero, since SeedSequence treats trailing zero words as absent.
_PICK = 1


def block_params(blocks) -> dict:
    """``{block.name: list(block.params)}`` of an iterable of objects with ``.name`` and
    ``.params`` (duck typing: ``model.param_blocks()`` of minigrad), in order."""
    out = {}
    for b in blocks:
        name, params = getattr(b, "name", None), getattr(b, "params", None)
        if not isinstance(name, str) or params is None or isinstance(params, str):
            raise TypeError(f"block_params: expected objects with a str .name and a list of parameter "
                            f"names .params (e.g. model.param_blocks()), got {type(b).__name__}")
        if name in out:
            raise ValueError(f"block_params: two blocks are named {name!r}")
        out[name] = list(params)
    return out


def _rng(seed, period):
    return np.random.default_rng([seed, period, _PICK])


def _check_blocks(blocks, params, where) -> dict:
    """The blocks as {name: [parameter names]}, each parameter in exactly one block."""
    if blocks is None:
        return {"all": list(params)}
    if not isinstance(blocks, Mapping) or not blocks:
        raise TypeError(f"{where}: blocks must be a non-empty dict block name -> parameter names "
                        f"(optim.block_params(model.param_blocks())), got {blocks!r}")
    owner, out = {}, {}
    for b, names in blocks.items():
        if not isinstance(b, str):
            raise TypeError(f"{where}: block names must be str, got {b!r}")
        if isinstance(names, str) or not hasattr(names, "__iter__"):
            raise TypeError(f"{where}: block {b!r} must list parameter names, got {names!r}")
        names = list(names)
        if not names:
            raise ValueError(f"{where}: block {b!r} is empty")
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"{where}: block {b!r} names unknown parameter(s) {unknown}; the parameters "
                             f"are {list(params)[:8]}{'...' if len(params) > 8 else ''}")
        for n in names:
            if owner.get(n) == b:
                raise ValueError(f"{where}: parameter {n!r} is listed twice in block {b!r}")
            if n in owner:
                raise ValueError(f"{where}: parameter {n!r} is in two blocks, {owner[n]!r} and {b!r}; "
                                 f"put it in one")
            owner[n] = b
        out[b] = names
    missing = [n for n in params if n not in owner]
    if missing:
        raise ValueError(f"{where}: parameter(s) {missing} are in no block; every parameter must be in "
                         f"exactly one (or leave a parameter out of the optimizer to keep it fixed)")
    return out


def _known_blocks(names, blocks, option, where) -> list:
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise TypeError(f"{where}: {option} must be a list of block names, got {names!r}")
    names = list(names)
    unknown = [b for b in names if b not in blocks]
    if unknown:
        raise ValueError(f"{where}: {option}={names!r} names unknown block(s) {unknown}; the blocks "
                         f"are {list(blocks)}")
    return names


def _ends(blocks) -> list:
    """The default always-trained (LISA, MISA) or excluded (BAdam) blocks: the first and the last,
    i.e. the embeddings and the head of a language model -- when there is a block between them."""
    names = list(blocks)
    return [names[0], names[-1]] if len(names) >= 3 else []


def _per_block(values, blocks, option, where) -> np.ndarray:
    """A positive number per block, given as a dict block -> value or a list in block order."""
    if isinstance(values, Mapping):
        _known_blocks(values, blocks, option, where)
        missing = [b for b in blocks if b not in values]
        if missing:
            raise ValueError(f"{where}: {option} gives no value for block(s) {missing}")
        values = [values[b] for b in blocks]
    else:
        values = list(values)
        if len(values) != len(blocks):
            raise ValueError(f"{where}: {option} has {len(values)} values for {len(blocks)} blocks "
                             f"{list(blocks)}")
    out = np.asarray(values, dtype=np.float64)
    if not (np.all(np.isfinite(out)) and np.all(out > 0)):
        raise ValueError(f"{where}: {option} must be finite numbers > 0, got {values!r}")
    return out


def _sq_norm(g) -> float:
    return float(np.sum(np.square(g, dtype=np.float64)))


class BlockOptimizer(Optimizer):
    """An inner optimizer run on the active blocks only; see the module docstring.

    Subclasses pass the inner optimizer's name and keyword arguments, then call ``_build`` with
    the selectable blocks (of units: parameter names, or "name:part" row ranges of split
    matrices), and implement ``_select(period)``: the names of the blocks active in a period.
    The param groups are the caller's (the schedule sets their lr); the inner optimizer's
    groups follow them at every step."""

    method = ""                 # the registered name, saved in the state
    _reset_each_period = False  # BAdam: all inner state starts afresh at every switch

    def __init__(self, params, *, inner, inner_kwargs, switch_every, seed, keep_state, nonfinite):
        where = type(self).__name__
        check_count(switch_every, f"{where}: switch_every")
        if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
            raise ValueError(f"{where}: seed must be an int >= 0, got {seed!r}")
        probe = create(inner, {"probe": np.zeros(1)}, **inner_kwargs)
        if isinstance(probe, BlockOptimizer):
            raise ValueError(f"{where}: the inner optimizer {inner!r} is itself a block method")
        if not probe.uses_gradients:
            raise ValueError(f"{where}: the inner optimizer {inner!r} is zeroth-order; block methods "
                             f"step a first-order optimizer on the active blocks' gradients")
        self._probe = probe          # checks the groups' options as the inner optimizer will
        self._inner_name, self._inner_kwargs = inner, dict(inner_kwargs)
        self._unsaved_hparams = probe._unsaved_hparams
        self._iterate_key = probe._iterate_key
        super().__init__(params, nonfinite=nonfinite, **probe.defaults)
        self.switch_every = int(switch_every)
        self.keep_state = bool(keep_state)
        self.global_state.update(method=self.method, seed=int(seed), switch_every=self.switch_every,
                                 step=0, period=-1, active=[])

    # -- layout ---------------------------------------------------------------------
    def decays_decoupled(self, group) -> bool:
        return self._probe.decays_decoupled(group)

    def _build(self, units, blocks, always=(), lr_scale=None):
        """Build the inner optimizer.

        units: {unit: (parameter name, (start, stop) rows or None)}; blocks: {block: [units]},
        the selectable blocks; always: units trained at every step; lr_scale: {block: factor}
        of the groups' lr. Units in neither never train."""
        self._units, self._blocks, self._always = units, blocks, list(always)
        self._lr_scale = lr_scale
        owner = {u: b for b, us in blocks.items() for u in us}
        self._layout, groups = [], []
        for gi, group in enumerate(self.param_groups):
            by_owner = {}
            for u, (name, rows) in units.items():
                if name in group["params"]:
                    by_owner.setdefault(owner.get(u), {})[u] = _rows(group["params"][name], rows)
            for b, arrays in by_owner.items():
                self._layout.append((gi, b))
                groups.append({"params": arrays, **self._options(group, b)})
        self.inner = create(self._inner_name, groups, **self._inner_kwargs)
        self._group_of = {u: g for g in self.inner.param_groups for u in g["params"]}
        self.global_state["blocks"] = list(blocks)

    def _options(self, group, block):
        opts = {k: v for k, v in group.items() if k != "params"}
        if self._lr_scale is not None and block is not None:
            opts["lr"] = opts["lr"] * self._lr_scale[block]
        return opts

    def _sync_inner(self):
        """The inner groups take the outer groups' current options (a schedule changes lr) and
        arrays (a mixed-precision wrapper may have swapped them for master copies)."""
        for (gi, b), group in zip(self._layout, self.inner.param_groups):
            outer = self.param_groups[gi]
            group.update(self._options(outer, b))
            arrays = group["params"]
            for u in arrays:
                name, rows = self._units[u]
                arrays[u] = _rows(outer["params"][name], rows)

    def add_param_group(self, group):
        if "inner" in vars(self):
            raise NotImplementedError(f"{type(self).__name__}: the blocks are laid out at construction; "
                                      f"pass every parameter group to the constructor")
        super().add_param_group(group)

    def _check_group(self, group):
        self._probe._check_group(group)

    @property
    def state(self):
        """The inner optimizer's state: {unit: {key: value}} of the units that hold any."""
        return self.inner.state

    @state.setter
    def state(self, value):
        # Optimizer.__init__ assigns an empty dict before the inner optimizer exists
        if "inner" in vars(self):
            self.inner.state = value

    # -- the active set ---------------------------------------------------------------
    def _select(self, period):
        """Names of the blocks active in ``period``; None: chosen from the gradients."""
        raise NotImplementedError

    def _select_by_gradient(self, grads):
        raise NotImplementedError

    def _ensure_period(self):
        gs = self.global_state
        period = gs["step"] // self.switch_every
        if gs["period"] != period:
            gs["active"] = self._select(period)
            gs["period"] = period

    def _active_units(self):
        active = self.global_state["active"]
        if active is None:
            return None
        return set(self._always).union(*(self._blocks[b] for b in active))

    def active_blocks(self):
        """The blocks active at the coming step (None: chosen from its gradients)."""
        self._ensure_period()
        active = self.global_state["active"]
        return None if active is None else list(active)

    def trainable_names(self):
        self._ensure_period()
        units = self._active_units()
        return None if units is None else {self._units[u][0] for u in units}

    # -- the step -----------------------------------------------------------------------
    def _begin_step(self, grads):
        """The whole step: the gradients were validated by Optimizer.step."""
        self._ensure_period()
        gs = self.global_state
        if gs["active"] is None:
            gs["active"] = self._select_by_gradient(grads)
        active = self._active_units()
        self._sync_inner()
        if self._reset_each_period:
            if gs["step"] % self.switch_every == 0:
                self.inner.state.clear()
        elif not self.keep_state:
            for u in [u for u in self.inner.state if u not in active]:
                del self.inner.state[u]
        inner_grads = {u: self._grad(grads, u) if u in active else None for u in self._units}
        self._observe(inner_grads)
        self.inner.step(inner_grads)
        gs["step"] += 1
        if gs["step"] % self.switch_every == 0:
            self._end_period()
        return False

    def _grad(self, grads, unit):
        name, rows = self._units[unit]
        return _rows(grads[name], rows)

    def _observe(self, inner_grads):
        """Hook: sees the active units' gradients of every step (MISA's scores)."""

    def _end_period(self):
        """Hook: after the last step of a period."""

    # -- state ------------------------------------------------------------------------------
    def state_bytes(self):
        return self.inner.state_bytes()

    def _fresh_bytes(self, units):
        return sum(int(self.inner._state_nbytes(self._group_of[u]["params"][u], self._group_of[u]))
                   for u in units)

    def _bytes_if_active(self, units):
        kept = 0
        if self.keep_state:
            kept = sum(v.nbytes for u, st in self.inner.state.items() if u not in units
                       for v in st.values() if isinstance(v, np.ndarray))
        glob = sum(v.nbytes for v in self.inner.global_state.values() if isinstance(v, np.ndarray))
        return self._fresh_bytes(units) + kept + glob

    def expected_state_bytes(self) -> int:
        """The bytes ``state_bytes()`` reports after the coming step: the active set's state
        (plus the state kept by inactive blocks with ``keep_state``). When the active block is
        chosen from the gradients (Gauss-Southwell), the largest over the blocks."""
        self._ensure_period()
        units = self._active_units()
        if units is not None:
            return self._bytes_if_active(units)
        return max(self._bytes_if_active(set(self._always) | set(us)) for us in self._blocks.values())

    def state_dict(self):
        sd = super().state_dict()
        sd["inner_global_state"] = {k: _copy(v) for k, v in self.inner.global_state.items()}
        return sd

    def load_state_dict(self, sd):
        where = f"{type(self).__name__}.load_state_dict"
        gs = sd.get("global_state", {})
        if gs.get("method") != self.method:
            raise ValueError(f"{where}: not a {self.method!r} state (it has method {gs.get('method')!r})")
        for key in ("blocks", "switch_every"):
            if gs.get(key) != self.global_state[key]:
                raise ValueError(f"{where}: the state was saved with {key}={gs.get(key)!r}, this "
                                 f"optimizer has {key}={self.global_state[key]!r}")
        unknown = [u for u in sd["state"] if u not in self._units]
        if unknown:
            raise ValueError(f"{where}: state for unknown parameter(s) {unknown}")
        super().load_state_dict({**sd, "state": {}})
        self.inner.state = {u: {k: _copy(v) for k, v in st.items()} for u, st in sd["state"].items()}
        self.inner.global_state = {k: _copy(v) for k, v in sd.get("inner_global_state", {}).items()}


def _rows(a, rows):
    return a if a is None or rows is None else a[rows[0]:rows[1]]


def _whole(params) -> dict:
    return {n: (n, None) for n in params}


# ----------------------------------------------------------------------------- BCD
@register("bcd")
class BlockCoordinateDescent(BlockOptimizer):
    """Block coordinate descent: one block at a time, ``switch_every`` steps each.

    ``selection`` picks the block of period k (n blocks):

    * "cyclic": k mod n;
    * "reshuffle": a fresh random permutation of the blocks per epoch of n periods;
    * "uniform": uniform with replacement;
    * "importance": with probability p_i proportional to ``weights`` (default: ``lipschitz``);
    * "gauss-southwell": the block with the largest gradient norm ||g_i|| -- with ``lipschitz``,
      the largest ||g_i||^2 / L_i (Gauss-Southwell-Lipschitz, Nutini et al. 2015). It needs
      every gradient at the start of a period, so ``trainable_names()`` is None there.

    ``inner`` is the step taken on the active block: "gd" (x_i <- x_i - lr*g_i), "prox" (block
    proximal-linear: x_i <- prox_{lr h}(x_i - lr*g_i) with ``prox`` an ``optim.prox`` operator,
    i.e. ISTA on the block), or any registered first-order optimizer, ``inner_kwargs`` passed
    to it besides ``lr`` and ``weight_decay``. ``lipschitz`` (block constants L_i) makes block
    i's learning rate lr/L_i: ``lr=1`` gives the textbook step 1/L_i.

    Rates for f mu-strongly convex, block Lipschitz constants L_i, S = sum_i L_i (Nesterov
    2012): p_i = L_i/S with steps 1/L_i gives E f(x_k) - f* <= (1 - mu/S)^k (f(x_0) - f*);
    uniform p_i = 1/n with the common step 1/L_max gives (1 - mu/(n L_max))^k. The first is
    faster by up to n L_max / S: much when a few blocks are stiff. Uniform sampling with the
    per-block steps 1/L_i has the rate of mu measured in the norm sum_i L_i ||x_i||^2 instead.
    Gauss-Southwell makes at least the uniform rule's expected progress at every step.
    Memory: the inner optimizer's state of the active block (``keep_state`` keeps all)."""

    method = "bcd"
    SELECTIONS = ("cyclic", "reshuffle", "uniform", "importance", "gauss-southwell")

    def __init__(self, params, blocks=None, lr=1e-2, weight_decay=0.0, *, selection="cyclic",
                 switch_every=1, inner="gd", inner_kwargs=None, prox=None, lipschitz=None,
                 weights=None, keep_state=False, seed=0, nonfinite="raise"):
        where = "BlockCoordinateDescent"
        if selection not in self.SELECTIONS:
            raise ValueError(f"{where}: selection must be one of {self.SELECTIONS}, got {selection!r}")
        inner_kwargs = dict(inner_kwargs or {})
        taken = [k for k in ("lr", "weight_decay", "nonfinite") if k in inner_kwargs]
        if taken:
            raise ValueError(f"{where}: inner_kwargs must not set {taken}; pass lr and weight_decay to "
                             f"the block method itself")
        if inner == "prox":
            if prox is None:
                raise ValueError(f"{where}: inner='prox' needs prox=..., an optim.prox operator such as "
                                 f"optim.prox.L1(0.1)")
            inner, inner_kwargs["prox"] = "ista", prox
        elif prox is not None:
            raise ValueError(f"{where}: prox={prox!r} is used by inner='prox' only, got inner={inner!r}")
        super().__init__(params, inner=inner, inner_kwargs=dict(lr=lr, weight_decay=weight_decay,
                                                                **inner_kwargs),
                         switch_every=switch_every, seed=seed, keep_state=keep_state,
                         nonfinite=nonfinite)
        blocks = _check_blocks(blocks, self.params, where)
        self.selection = selection
        self.lipschitz = None if lipschitz is None else _per_block(lipschitz, blocks, "lipschitz", where)
        if selection == "importance":
            if weights is None and self.lipschitz is None:
                raise ValueError(f"{where}: selection='importance' needs weights (or lipschitz), e.g. "
                                 f"the blocks' Lipschitz constants")
            w = self.lipschitz if weights is None else _per_block(weights, blocks, "weights", where)
            self.probabilities = w / w.sum()
            self._cdf = np.cumsum(self.probabilities)
            self._cdf[-1] = 1.0
        elif weights is not None:
            raise ValueError(f"{where}: weights are used by selection='importance' only, got "
                             f"selection={selection!r}")
        scale = None if self.lipschitz is None else dict(zip(blocks, 1.0 / self.lipschitz))
        self._build(_whole(self.params), blocks, lr_scale=scale)

    def _select(self, period):
        names, seed = list(self._blocks), self.global_state["seed"]
        n = len(names)
        if self.selection == "cyclic":
            i = period % n
        elif self.selection == "reshuffle":
            i = _rng(seed, period // n).permutation(n)[period % n]
        elif self.selection == "uniform":
            i = _rng(seed, period).integers(n)
        elif self.selection == "importance":
            i = np.searchsorted(self._cdf, _rng(seed, period).random(), side="right")
        else:
            return None
        return [names[int(i)]]

    def _select_by_gradient(self, grads):
        scores = []
        for i, units in enumerate(self._blocks.values()):
            s = sum(_sq_norm(g) for g in (self._grad(grads, u) for u in units) if g is not None)
            scores.append(s if self.lipschitz is None else s / self.lipschitz[i])
        return [list(self._blocks)[int(np.argmax(scores))]]


# ----------------------------------------------------------------------------- LISA
@register("lisa")
class LISA(BlockOptimizer):
    """LISA, layerwise importance sampled AdamW (Pan et al. 2024, arXiv 2403.17919).

    The blocks named in ``always`` (default: the first and the last, i.e. a GPT's embeddings
    with the tied head, and the final norm; none when there are fewer than three blocks) train
    at every step; the others are the layers. Every ``switch_every`` = K steps, step 0
    included, ``layers`` = gamma of them are drawn uniformly without replacement (keyed by
    (seed, period)) and the rest are frozen. The inner optimizer is AdamW with the given
    options. The state of a layer that becomes inactive is freed (``keep_state=True`` keeps it,
    as a torch optimizer keeps the state of parameters it no longer sees); a layer drawn again
    in the next period keeps its state. (The reference callback, OptimalScale/LMFlow
    ``DynamicLayerActivationCallback``, has in its newer versions dropped every layer's state at
    each switch; older versions kept it all.)

    The inner optimizer owns every parameter from construction, so a layer frozen when the
    run starts still trains when drawn later (the LMFlow issue #726 pitfall, an optimizer
    built after freezing, cannot happen). Memory: AdamW's 2 floats per parameter of the
    always-trained blocks and the gamma active layers."""

    method = "lisa"

    def __init__(self, params, blocks=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, layers=1, switch_every=20, always=None, keep_state=False, seed=0,
                 nonfinite="raise"):
        where = "LISA"
        super().__init__(params, inner="adamw",
                         inner_kwargs=dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                           amsgrad=amsgrad),
                         switch_every=switch_every, seed=seed, keep_state=keep_state,
                         nonfinite=nonfinite)
        blocks = _check_blocks(blocks, self.params, where)
        always = _ends(blocks) if always is None else _known_blocks(always, blocks, "always", where)
        layers_of = {b: ns for b, ns in blocks.items() if b not in always}
        if not (isinstance(layers, (int, np.integer)) and 1 <= layers <= len(layers_of)):
            raise ValueError(f"{where}: layers={layers!r} must be an integer from 1 to the number of "
                             f"layers, {len(layers_of)} ({list(layers_of)}; always trained: {always})")
        self.layers = int(layers)
        self._build(_whole(self.params), layers_of, [n for b in always for n in blocks[b]])

    def _select(self, period):
        names = list(self._blocks)
        picked = _rng(self.global_state["seed"], period).choice(len(names), self.layers, replace=False)
        return [names[i] for i in sorted(picked)]


# ----------------------------------------------------------------------------- BAdam
@register("badam")
class BAdam(BlockOptimizer):
    """BAdam, block coordinate descent with Adam (Luo, Yu, Li 2024, arXiv 2404.02827; reference
    Ledzy/BAdam ``BlockOptimizer``).

    One block is active for ``switch_every`` = K Adam steps; at every switch Adam's state,
    step count included, starts afresh, so the state is that of one block. The blocks named in
    ``include`` and all but the first and the last (a GPT's embeddings and final norm; all when
    there are fewer than three blocks) take turns; the excluded ones never train, as in the
    reference. ``order``:

    * "descending": last block first, then down (the reference's default);
    * "ascending": first block first, then up;
    * "fixed": the blocks of ``block_order`` in turn (the reference's "fixed" keeps one block:
      give a one-block ``block_order``);
    * "random": a fresh random permutation of the blocks per block-epoch (random reshuffling).

    The inner optimizer is AdamW with the given options (``weight_decay=0`` is Adam). The
    reference switches for the first time after K-1 steps, later after every K; here every
    block gets K steps. Memory: Adam's 2 floats per parameter of the active block."""

    method = "badam"
    _reset_each_period = True
    ORDERS = ("descending", "ascending", "fixed", "random")

    def __init__(self, params, blocks=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, switch_every=50, order="descending", block_order=None,
                 include=None, seed=0, nonfinite="raise"):
        where = "BAdam"
        if order not in self.ORDERS:
            raise ValueError(f"{where}: order must be one of {self.ORDERS}, got {order!r}")
        super().__init__(params, inner="adamw",
                         inner_kwargs=dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                           amsgrad=amsgrad),
                         switch_every=switch_every, seed=seed, keep_state=False, nonfinite=nonfinite)
        blocks = _check_blocks(blocks, self.params, where)
        include = [] if include is None else _known_blocks(include, blocks, "include", where)
        trained = {b: ns for b, ns in blocks.items() if b not in _ends(blocks) or b in include}
        if order == "fixed":
            if block_order is None:
                raise ValueError(f"{where}: order='fixed' needs block_order, the blocks to train in turn")
            block_order = _known_blocks(block_order, blocks, "block_order", where)
            excluded = [b for b in block_order if b not in trained]
            if not block_order or excluded:
                raise ValueError(f"{where}: block_order={block_order!r} must name trained blocks; "
                                 f"excluded: {excluded} (add them to include)")
        elif block_order is not None:
            raise ValueError(f"{where}: block_order is used by order='fixed' only, got order={order!r}")
        self.order = order
        names = list(trained)
        self._turns = {"ascending": names, "descending": names[::-1], "fixed": block_order,
                       "random": names}[order]
        self._build(_whole(self.params), trained)

    def _select(self, period):
        turns = self._turns
        n = len(turns)
        if self.order == "random":
            return [turns[_rng(self.global_state["seed"], period // n).permutation(n)[period % n]]]
        return [turns[period % n]]


# ----------------------------------------------------------------------------- MISA
@register("misa")
class MISA(BlockOptimizer):
    """MISA, module-wise importance sampling (Liu, Deng, He, Wang, Yao, Yuan, NeurIPS 2025,
    arXiv 2511.00056; official code pkumelon/MISA ``BlockCoordinateDesentOptimizer``).

    Modules. The blocks named in ``always`` (default: the first and the last, as in LISA; the
    reference trains them always when asked, include_embedding_and_lm_head, and freezes them
    otherwise) train at every step. In the other blocks, with ``granularity="module"``, every
    matrix is a module: each parameter with ndim >= 2, and each part of a fused matrix given in
    ``splits`` ({name: ((part, role, (start, stop)), ...)}, ``model.param_splits()``: a GPT's
    q, k, v rows of c_attn), i.e. q, k, v, attention output, MLP in, MLP out of each layer.
    Their vectors (norm gains and shifts, biases: ndim < 2) train at every step: a GPT layer
    has 13C of them beside its 12C^2 matrix entries (the reference freezes them for good); a
    block without matrices is one module. With ``granularity="layer"`` each block is one module. When only some parts of a fused matrix are active, the whole matrix
    gets a gradient (it is one array), but the inner AdamW works on the parts: only the active
    rows are updated and hold state.

    Sampling (periods of ``switch_every`` = T AdamW steps). Each module b has a score G_b, an
    exponential moving average, with decay ``score_decay`` (beta), of its mean gradient norm
    over the periods in which it was active, and probability
    p_b = exp(min(c, eta * Ghat_b^2)) / sum_j exp(min(c, eta * Ghat_j^2)), where Ghat_b is G_b
    bias-corrected for the t_b periods it has been averaged over, G_b / (1 - beta^t_b) (0 before
    its first), c = ``score_clip`` and eta = ``eta`` (eta = 0: uniform). A period's modules
    are drawn so that their parameters are at most ``delta`` (in (0, 1]) of all parameters:
    first every module not yet trained, then the ``revisit`` least recently trained ones, each
    taken if it still fits; then modules drawn one at a time with probabilities p among those
    left (without replacement), each taken if it fits, until none is left. The default delta = 1
    fits every module, so it trains everything every period (AdamW); give the budget you want
    (the paper's value for it was not read [unverified]). The state of a
    module that stays active is kept, that of the others freed.

    Checked against the paper (Algorithm 1: P^1 uniform, G^0 = 0, modules sampled by P^n under
    the budget delta) and its official code (the rest: eta, the clip 5, beta 0.8, the
    never-trained-first and least-recently-trained rules, ``sample_last`` there). The paper's
    own formulas for G and P were not read [unverified]. Differences from the code: the code
    re-samples after every step until each module has been trained once, here every period
    has T steps; the code stores the bias-corrected G and averages it again, which inflates
    the scores of rarely drawn modules, here the raw average is kept and corrected when used,
    as Adam does. Memory: AdamW's 2 floats per parameter of the active modules, the
    always-trained blocks and the vectors."""

    method = "misa"
    GRANULARITIES = ("module", "layer")

    def __init__(self, params, blocks=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, splits=None, delta=1.0, switch_every=50, granularity="module",
                 eta=1.0, score_decay=0.8, score_clip=5.0, revisit=2, always=None, seed=0,
                 nonfinite="raise"):
        where = "MISA"
        if not (isinstance(delta, (int, float, np.floating)) and 0 < delta <= 1):
            raise ValueError(f"{where}: delta (the fraction of the parameters trained per period) must "
                             f"be in (0, 1], got {delta!r}")
        if granularity not in self.GRANULARITIES:
            raise ValueError(f"{where}: granularity must be one of {self.GRANULARITIES}, got {granularity!r}")
        for option, value in (("eta", eta), ("score_clip", score_clip)):
            if not (isinstance(value, (int, float, np.floating)) and 0 <= value < math.inf):
                raise ValueError(f"{where}: {option} must be a finite number >= 0, got {value!r}")
        if not (isinstance(score_decay, (int, float, np.floating)) and 0 <= score_decay < 1):
            raise ValueError(f"{where}: score_decay must be in [0, 1), got {score_decay!r}")
        if not (isinstance(revisit, (int, np.integer)) and revisit >= 0):
            raise ValueError(f"{where}: revisit must be an integer >= 0, got {revisit!r}")
        super().__init__(params, inner="adamw",
                         inner_kwargs=dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                           amsgrad=amsgrad),
                         switch_every=switch_every, seed=seed, keep_state=False, nonfinite=nonfinite)
        params = self.params
        blocks = _check_blocks(blocks, params, where)
        always = _ends(blocks) if always is None else _known_blocks(always, blocks, "always", where)
        units = self._split_units(params, splits or {}, where)
        units_of = {n: [u for u, (name, _) in units.items() if name == n] for n in params}
        modules, always_units = {}, []
        for b, names in blocks.items():
            block_units = [u for n in names for u in units_of[n]]
            if b in always:
                always_units += block_units
            elif granularity == "layer" or all(params[n].ndim < 2 for n in names):
                modules[b] = block_units
            else:
                for u in block_units:
                    if params[units[u][0]].ndim >= 2:
                        modules[u] = [u]
                    else:
                        always_units.append(u)
        if not modules:
            raise ValueError(f"{where}: no modules to sample: every block is in always={always}")
        size = {u: _rows(params[n], rows).size for u, (n, rows) in units.items()}
        self._size = [sum(size[u] for u in us) for us in modules.values()]
        total = sum(p.size for p in params.values())
        self.budget = delta * total
        smallest = int(np.argmin(self._size))
        if self._size[smallest] > self.budget:
            need = self._size[smallest] / total
            digits = 10.0 ** (math.floor(math.log10(need)) - 2)
            advice = float(f"{math.ceil(need / digits) * digits:.3g}")   # rounded up, to 3 digits
            while advice * total < self._size[smallest]:                 # 0.29 * 100 < 29 in floats
                advice = float(f"{advice + digits:.3g}")
            raise ValueError(f"{where}: delta={delta} allows {math.floor(self.budget)} of the {total} "
                             f"parameters per period, fewer than the smallest module "
                             f"{list(modules)[smallest]!r} ({self._size[smallest]}); raise delta to at "
                             f"least {advice:g}")
        self.delta, self.granularity, self.eta = float(delta), granularity, float(eta)
        self.score_decay, self.score_clip, self.revisit = float(score_decay), float(score_clip), int(revisit)
        B = len(modules)
        self.global_state.update(score=[0.0] * B, score_periods=[0] * B, period_norm=[0.0] * B,
                                 last_active=[-1] * B, probs=[1.0 / B] * B)
        self._build(units, modules, always_units)
        self._index = {m: i for i, m in enumerate(modules)}

    @staticmethod
    def _split_units(params, splits, where):
        if not isinstance(splits, Mapping):
            raise TypeError(f"{where}: splits must be a dict name -> parts (model.param_splits()), "
                            f"got {splits!r}")
        unknown = [n for n in splits if n not in params]
        if unknown:
            raise ValueError(f"{where}: splits name unknown parameter(s) {unknown}")
        units = {}
        for n, p in params.items():
            if n in splits:
                for part, _, rows in _parts(n, splits[n], p.shape[0] if p.ndim else None):
                    units[f"{n}:{part}"] = (n, rows)
            else:
                units[n] = (n, None)
        return units

    def module_probabilities(self) -> dict:
        """{module: the probability its next draw has}."""
        return dict(zip(self._blocks, self.global_state["probs"]))

    def _select(self, period):
        gs = self.global_state
        last, size = gs["last_active"], self._size
        B = len(size)
        chosen, used = [], 0.0

        def take(i):
            nonlocal used
            if used + size[i] <= self.budget:
                chosen.append(i)
                used += size[i]

        oldest_first = sorted(range(B), key=lambda i: (last[i], i))
        forced = [i for rank, i in enumerate(oldest_first) if last[i] < 0 or rank < self.revisit]
        for i in forced:
            take(i)
        rest = [i for i in range(B) if i not in forced]
        weights = [gs["probs"][i] for i in rest]
        rng = _rng(gs["seed"], period)
        while rest:
            cdf = np.cumsum(weights)
            j = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(rest) - 1)
            take(rest.pop(j))
            weights.pop(j)
        for i in chosen:
            last[i] = period
        names = list(self._blocks)
        return [names[i] for i in sorted(chosen)]

    def _observe(self, inner_grads):
        gs = self.global_state
        for m in gs["active"]:
            norms = [_sq_norm(g) for g in (inner_grads[u] for u in self._blocks[m]) if g is not None]
            if norms:
                gs["period_norm"][self._index[m]] += math.sqrt(sum(norms)) / self.switch_every

    def _end_period(self):
        gs = self.global_state
        beta = self.score_decay
        for m in gs["active"]:
            i = self._index[m]
            if gs["period_norm"][i] > 0:   # a module without gradients (frozen) keeps its score
                gs["score"][i] = beta * gs["score"][i] + (1.0 - beta) * gs["period_norm"][i]
                gs["score_periods"][i] += 1
                gs["period_norm"][i] = 0.0
        logits = np.array([min(self.score_clip, self.eta * (g / (1.0 - beta ** t)) ** 2) if t else 0.0
                           for g, t in zip(gs["score"], gs["score_periods"])])
        w = np.exp(logits)
        gs["probs"] = [float(v) for v in w / w.sum()]
