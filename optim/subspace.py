"""Training in a low-rank subspace: GaLore, GoLore, Flora, RSO (Lecture 8).

Adam keeps two floats per weight, 2mn for an m x n matrix. The methods here keep the optimizer
state of a matrix in an r-dimensional subspace of one of its sides, about r*max(m, n) floats per
state array, and still change every weight of the matrix::

    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("galore", params, lr=1e-2, rank=32, update_proj_gap=200, scale=0.25,
                       roles=model.param_roles(), splits=model.param_splits())
    opt = optim.create("golore", params, lr=1e-2, rank=32, seed=0, ...)     # random subspaces
    opt = optim.create("flora", params, lr=1e-2, rank=32, update_proj_gap=1000, ...)
    opt = optim.create("rso", params, lr=1e-3, rank=32, update_proj_gap=50, ...)

Which parameters are projected
------------------------------
The *hidden matrices*: with ``roles`` ({name: role}, ``model.param_roles()``; see
``minigrad.nn.ROLES``) the 2-D parameters whose role is one of ``HIDDEN_ROLES`` (attention's
q, k, v and output projections, the MLP's two matrices); with ``splits``
(``model.param_splits()``) a fused matrix is projected part by part, e.g. a GPT's (3C, C)
c_attn weight as its q, k and v rows, each C x C, whose state is keyed "name:q", "name:k",
"name:v" (see ``optim.split_matrices``). Without ``roles`` every 2-D parameter is a hidden
matrix. Everything else -- embeddings, the head, norms, biases -- is optimized in full by the
same inner optimizer (Flora: by full Adafactor), as the GaLore reference does for parameters
outside its GaLore group.

The projection of a matrix W (m x n) with gradient G
----------------------------------------------------
``proj="std"`` reduces the smaller side (GaLore's rule), so the state is r*max(m, n):

* m >= n ("right"): P is r x n with orthonormal rows, R = G P^T (m x r), back: N P;
* m <  n ("left"):  P is m x r with orthonormal columns, R = P^T G (r x n), back: P N.

``"reverse_std"`` reduces the larger side, ``"left"``/``"right"`` force one side. The rank r
must satisfy 1 <= r <= min(m, n); ``rank=None`` takes min(m, n) // 4 (at least 1), the ratio
of GaLore's experiments (r = 128, 256, 512 for hidden sizes 512, 1024, 2048).

Randomness
----------
A random basis (GoLore, Flora, RSO) comes from a Generator keyed by
``(seed, index, crc32(name), 1)`` -- the run's seed, the index of the subspace (its period), the
name of the matrix (or "name:part") -- as ``optim.zo`` keys its noise: it is regenerated bit for
bit whenever it is needed, does not depend on the order the matrices are visited in, touches no
global RNG, and a checkpoint resumed in the middle of a period continues exactly. (SeedSequence
ignores trailing zero words, hence the constant last entry.)

Common to every method here: param groups set the inner optimizer's options (lr, weight_decay,
betas, ...; the lr schedule works as usual), ``rank``, ``update_proj_gap``, ``seed`` and the
projection options are per optimizer; a gradient given as None skips that parameter (no update,
no state); ``state_bytes()`` counts the projections, moments and subspace variables it holds
(``expected_state_bytes()`` predicts them from the shapes); ``state_dict()`` holds everything
a bit-identical resume needs. What is *not* reduced here: the full gradient G is still computed
by backward and projected afterwards (RSO's paper also saves activation memory by
differentiating with respect to the subspace variable directly; a NumPy model computing G does
not).

References: GaLore, Zhao, Zhang, Chen, Wang, Anandkumar, Tian (ICML 2024), arXiv 2403.03507,
code jiaweizzhao/GaLore (galore_torch/galore_projector.py, adamw.py). GoLore, He, Li, Hu,
Chen, Yuan (ICML 2025), arXiv 2410.11289, code pkumelon/Golore. Flora, Hao, Cao, Mou (ICML
2024), arXiv 2402.03293, code BorealisAI/flora-opt (flora_opt/optimizers/torch/flora.py).
Adafactor, Shazeer, Stern (ICML 2018), arXiv 1804.04235. RSO, Chen, Zhang, Liu, Yuan, Wen
(ICML 2025), arXiv 2502.07222 (no official code found; the paper's algorithm as summarised in
the RSO docstring, its experimental details [unverified]).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np

from .base import Optimizer, _copy, available, check_count, check_fraction, create, register
from .block import BlockOptimizer
from .groups import _parts

__all__ = ["GaLore", "GoLore", "Flora", "RSO", "HIDDEN_ROLES", "SIDES", "stiefel_uniform",
           "gaussian_projection"]

#: roles whose 2-D parameters are projected when ``roles`` is given
HIDDEN_ROLES = frozenset({"attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out"})
#: the ``proj`` options: which side of a matrix the subspace reduces
SIDES = ("std", "reverse_std", "left", "right")
# The last entry of a basis Generator's key (non-zero: SeedSequence drops trailing zeros).
_BASIS = 1
# Inner-optimizer state that is linear in the gradient (a first moment): with reproject=True it
# is mapped into the new basis at a refresh. Second moments (exp_avg_sq, square_avg, sum) are
# not linear in the gradient, have no such map, and are kept as they are (as GoLore's code does).
_FIRST_MOMENTS = ("exp_avg", "momentum_buffer", "velocity", "grad_avg")


# ----------------------------------------------------------------------------- bases
def work_dtype(dtype) -> np.dtype:
    """The dtype SVD, QR and the projections run in: float64 for float64, float32 otherwise."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def stiefel_uniform(rng, dim, r, dtype=np.float64) -> np.ndarray:
    """A dim x r matrix with orthonormal columns, uniform (Haar) on the Stiefel manifold.

    The Q factor of a Gaussian dim x r matrix Z = QR, with each column multiplied by the sign
    of R's diagonal: QR alone is not unique (LAPACK's choice of signs biases the law), the
    sign-fixed factor is the unique one with diag(R) > 0 and has the law of Z's column space,
    invariant under rotations. (GoLore's code takes Z (Z^T Z)^(-1/2), the polar factor, which
    is Haar distributed too.) E[Q Q^T] = (r/dim) I."""
    Z = rng.standard_normal((dim, r), dtype=work_dtype(dtype))
    Q, R = np.linalg.qr(Z)
    signs = np.sign(np.diag(R))
    signs[signs == 0] = 1
    return Q * signs


def gaussian_projection(rng, shape, r, dtype=np.float64) -> np.ndarray:
    """A matrix of ``shape`` with i.i.d. N(0, 1/r) entries (Flora's and RSO's projection):
    for P of shape (m, r), E[P P^T] = I_m; for P of shape (r, n), E[P^T P] = I_n."""
    return rng.standard_normal(shape, dtype=work_dtype(dtype)) * (1.0 / math.sqrt(r))


def _side(proj, shape) -> str:
    if proj in ("left", "right"):
        return proj
    tall = shape[0] >= shape[1]
    return ("right" if tall else "left") if proj == "std" else ("left" if tall else "right")


def _low_shape(side, shape, r):
    """The shape of R = G P^T ("right": m x r) or P^T G ("left": r x n)."""
    return (shape[0], r) if side == "right" else (r, shape[1])


def _basis_shape(side, shape, r):
    return (r, shape[1]) if side == "right" else (shape[0], r)


def _down(side, G, P):
    return G @ P.T if side == "right" else P.T @ G


def _up(side, R, P):
    return R @ P if side == "right" else P @ R


def _rows(a, rows):
    return a if a is None or rows is None else a[rows[0]:rows[1]]


# ----------------------------------------------------------------------------- layout
def _unit_layout(params, roles, splits, where):
    """``({unit: (parameter name, rows or None)}, [the hidden-matrix units])``: a unit is a
    parameter, or a part "name:part" of a matrix named in ``splits``."""
    splits = {} if splits is None else splits
    if not isinstance(splits, Mapping):
        raise TypeError(f"{where}: splits must be a dict name -> parts (model.param_splits()), "
                        f"got {type(splits).__name__}")
    unknown = [n for n in splits if n not in params]
    if unknown:
        raise ValueError(f"{where}: splits name unknown parameter(s) {unknown}")
    if roles is not None:
        if not isinstance(roles, Mapping):
            raise TypeError(f"{where}: roles must be a dict name -> role (model.param_roles()), "
                            f"got {type(roles).__name__}")
        missing = [n for n in params if n not in roles and n not in splits]
        if missing:
            raise ValueError(f"{where}: no role for parameter(s) {missing[:5]}; give roles for every "
                             f"parameter (model.param_roles()) or none (then every 2-D parameter "
                             f"is projected)")
    units, matrices = {}, []
    for n, p in params.items():
        if n in splits:
            if p.ndim != 2:
                raise ValueError(f"{where}: splits names {n!r} of shape {p.shape}; only a 2-D matrix "
                                 f"is split into row blocks")
            parts = [(f"{n}:{part}", rows, role) for part, role, rows in _parts(n, splits[n], p.shape[0])]
        else:
            parts = [(n, None, None if roles is None else roles[n])]
        for unit, rows, role in parts:
            units[unit] = (n, rows)
            if p.ndim == 2 and (roles is None or role in HIDDEN_ROLES):
                matrices.append(unit)
    return units, matrices


def _ranks(rank, shapes, where) -> dict:
    """{unit: r} for the matrices' shapes; ``rank=None``: min(m, n) // 4, at least 1."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer))
                             or rank < 1):
        raise ValueError(f"{where}: rank must be an integer >= 1 (or None for min(m, n) // 4), "
                         f"got {rank!r}")
    out = {}
    for unit, (m, n) in shapes.items():
        if rank is None:
            out[unit] = max(1, min(m, n) // 4)
        elif rank > min(m, n):
            raise ValueError(f"{where}: rank={rank} is larger than min(m, n) = {min(m, n)} of the "
                             f"{m}x{n} matrix {unit!r}; use rank <= {min(m, n)} (a subspace of that "
                             f"rank is the whole side, and saves no memory)")
        else:
            out[unit] = int(rank)
    return out


def _check_seed(seed, where):
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"{where}: seed must be an int >= 0, got {seed!r}")


class _Subspace(Optimizer):
    """What the four methods share: units, ranks, keyed bases, state keyed by unit, the whole
    step done in ``_begin_step`` over the units, and checkpoints that check their layout."""

    method = ""

    def _lay_out(self, roles, splits, rank, seed, where):
        units, matrices = _unit_layout(self.params, roles, splits, where)
        self._units, self._matrices = units, set(matrices)
        shapes = {u: _rows(self.params[units[u][0]], units[u][1]).shape for u in matrices}
        self._shape = shapes
        self.ranks = _ranks(rank, shapes, where)
        self._group_index = {u: gi for gi, g in enumerate(self.param_groups)
                             for u, (n, _) in units.items() if n in g["params"]}
        self._key = {}
        for u in units:
            k = zlib.crc32(u.encode())
            clash = [v for v, kk in self._key.items() if kk == k]
            if clash:  # astronomically unlikely, but two matrices sharing a stream would correlate
                raise ValueError(f"{where}: names {u!r} and {clash[0]!r} have the same crc32; rename one")
            self._key[u] = k
        self.global_state.update(method=self.method, ranks=dict(self.ranks))
        if seed is not None:
            _check_seed(seed, where)
            self.global_state["seed"] = int(seed)

    def _generator(self, unit, index):
        return np.random.default_rng([self.global_state["seed"], int(index), self._key[unit], _BASIS])

    def matrices(self) -> list:
        """The projected units (parameter names, or "name:part" of split matrices), in order."""
        return [u for u in self._units if u in self._matrices]

    def add_param_group(self, group):
        if "_units" in vars(self):
            raise NotImplementedError(f"{type(self).__name__}: the subspaces are laid out at "
                                      f"construction; pass every parameter group to the constructor")
        super().add_param_group(group)

    def _unit_grads(self, grads):
        return {u: _rows(grads[n], rows) for u, (n, rows) in self._units.items()}

    def _array(self, unit):
        n, rows = self._units[unit]
        return _rows(self.param_groups[self._group_index[unit]]["params"][n], rows)

    # -- checkpoints ----------------------------------------------------------------
    def _check_loadable(self, sd):
        where = f"{type(self).__name__}.load_state_dict"
        gs = sd.get("global_state", {})
        if gs.get("method") != self.method:
            raise ValueError(f"{where}: not a {self.method!r} state (it has method {gs.get('method')!r})")
        if gs.get("ranks") != self.global_state["ranks"]:
            raise ValueError(f"{where}: the state was saved with ranks {gs.get('ranks')}, this optimizer "
                             f"has {self.global_state['ranks']}")
        unknown = [u for u in sd["state"] if u not in self._units]
        if unknown:
            raise ValueError(f"{where}: state for unknown parameter(s) {unknown}")


# ----------------------------------------------------------------------------- GaLore family
class _Projected(_Subspace):
    """An inner optimizer run on the projected gradients of the hidden matrices and on the full
    gradients of everything else (GaLore, GoLore, RSO).

    The inner optimizer (a registered first-order optimizer that steps its parameter itself from
    one gradient per step, and whose step does not read the parameter's value: not Adafactor,
    ASGD, Anderson, ISTA with a prox, L-BFGS) is built once on the units: the other parameters
    as they are, and for each hidden matrix an array of the projected shape. For a hidden matrix the step is: the projected gradient R goes
    to the inner optimizer, which moves the low-rank array by -lr * N(R) (N: its normalised
    direction, e.g. Adam's m_hat / (sqrt(v_hat) + eps)); that move is projected back and added
    to W. So the inner optimizer's state is r*max(m, n) per array, and SGD, momentum, Adam,
    AdamW, RMSProp, AdaGrad, Lion, Muon, ... work inside. Weight decay acts on the full W
    the way the inner optimizer applies it (its ``decays_decoupled(group)``): decoupled
    optimizers (AdamW, Lion, Adafactor, SOAP, NAdam/RAdam with decoupled_weight_decay, ...) decay
    W after the update, W <- W - lr*wd*W (as GaLore's code does), the others add wd*W to G before
    the projection (L2)."""

    _saved_options = ("proj", "_inner_name")

    def __init__(self, params, *, lr, weight_decay, rank, update_proj_gap, proj, inner,
                 inner_kwargs, roles, splits, seed, nonfinite):
        where = type(self).__name__
        check_count(update_proj_gap, f"{where}: update_proj_gap")
        if proj not in SIDES:
            raise ValueError(f"{where}: proj must be one of {SIDES}, got {proj!r}")
        if inner_kwargs is not None and not isinstance(inner_kwargs, Mapping):
            raise TypeError(f"{where}: inner_kwargs must be a dict of the inner optimizer's options, "
                            f"got {type(inner_kwargs).__name__}")
        inner_kwargs = dict(inner_kwargs or {})
        taken = [k for k in ("lr", "weight_decay", "nonfinite") if k in inner_kwargs]
        if taken:
            raise ValueError(f"{where}: inner_kwargs must not set {taken}; pass lr and weight_decay to "
                             f"{where} itself")
        if not isinstance(inner, str) or inner.lower() not in available():
            raise ValueError(f"{where}: inner={inner!r} is not a registered optimizer; choose one of "
                             f"{', '.join(available())}")
        probe = create(inner, {"probe": np.zeros((1, 1))}, lr=lr, weight_decay=weight_decay,
                       **inner_kwargs)
        if isinstance(probe, (_Subspace, BlockOptimizer)):
            raise ValueError(f"{where}: inner={inner!r} is itself a subspace or block method; the inner "
                             f"optimizer must update its parameters directly (e.g. 'sgd', 'adamw')")
        if not probe.uses_gradients:
            raise ValueError(f"{where}: inner={inner!r} is zeroth-order; the inner optimizer steps on "
                             f"the projected gradients")
        if probe._iterate_key is not None:
            raise ValueError(f"{where}: inner={inner!r} keeps its iterate apart from the parameter "
                             f"(extrapolation); the low-rank arrays are reset every step, which it "
                             f"cannot follow. Use 'sgd' with nesterov=True instead")
        if probe.uses_closure:
            raise ValueError(f"{where}: inner={inner!r} evaluates the gradient several times per step "
                             f"(step(closure)); {where} gives its inner optimizer one projected "
                             f"gradient per step. Use e.g. 'adamw' or 'sgd'")
        self._probe = probe
        self._inner_name, self._inner_kwargs = inner.lower(), inner_kwargs
        self._unsaved_hparams = probe._unsaved_hparams
        super().__init__(params, nonfinite=nonfinite, **probe.defaults)
        self._lay_out(roles, splits, rank, seed, where)
        self.update_proj_gap, self.proj = int(update_proj_gap), proj
        self._sides = {u: _side(proj, self._shape[u]) for u in self._matrices}
        self.global_state["step"] = 0
        self._build_inner()

    def _check_group(self, group):
        self._probe._check_group(group)
        if self._probe.reads_parameters(group):
            raise ValueError(f"{type(self).__name__}: inner={self._inner_name!r} computes its step from "
                             f"its parameters' values (with these options), but here it moves a "
                             f"low-rank array that starts at 0 every step, so that step would be "
                             f"wrong. Use an inner optimizer whose step depends on the gradients "
                             f"only, e.g. 'adamw' or 'sgd'")

    def decays_decoupled(self, group) -> bool:
        return self._probe.decays_decoupled(group)

    def _low(self, unit):
        return _low_shape(self._sides[unit], self._shape[unit], self.ranks[unit])

    def _build_inner(self):
        groups, self._layout, self._inner_group = [], [], {}
        for gi, group in enumerate(self.param_groups):
            full, low = {}, {}
            for u, (n, rows) in self._units.items():
                if n not in group["params"]:
                    continue
                a = _rows(group["params"][n], rows)
                if u in self._matrices:
                    low[u] = np.zeros(self._low(u), a.dtype)
                else:
                    full[u] = a
            for kind, arrays in (("full", full), ("low", low)):
                if arrays:
                    self._layout.append((gi, kind))
                    groups.append({"params": arrays, **self._options(group, kind)})
        self.inner = create(self._inner_name, groups, **self._inner_kwargs)
        for g in self.inner.param_groups:
            for u in g["params"]:
                self._inner_group[u] = g
                if u in self._matrices:    # (built on writable zeros: optimizers refuse read-only arrays)
                    g["params"][u] = _placeholder(g["params"][u].shape, g["params"][u].dtype)

    @staticmethod
    def _options(group, kind):
        opts = {k: v for k, v in group.items() if k != "params"}
        if kind == "low":
            opts["weight_decay"] = 0.0  # decay acts on the full W (see the class docstring)
        return opts

    def _sync_inner(self):
        """The inner groups take the outer groups' options (a schedule changes lr) and arrays (a
        mixed-precision wrapper may have swapped them for master copies)."""
        for (gi, kind), group in zip(self._layout, self.inner.param_groups):
            outer = self.param_groups[gi]
            group.update(self._options(outer, kind))
            if kind == "full":
                for u in group["params"]:
                    n, rows = self._units[u]
                    group["params"][u] = _rows(outer["params"][n], rows)

    @property
    def state(self):
        """The inner optimizer's state, {unit: {key: value}}: its own entries plus the method's
        ("proj", "proj_step"; RSO's "B", "period")."""
        return self.inner.state

    @state.setter
    def state(self, value):
        # Optimizer.__init__ assigns an empty dict before the inner optimizer exists
        if "inner" in vars(self):
            self.inner.state = value

    # -- the step ---------------------------------------------------------------------
    def _begin_step(self, grads):
        self._sync_inner()
        unit_grads = self._unit_grads(grads)
        inner_grads, entered = {}, []
        for u, g in unit_grads.items():
            if u not in self._matrices or g is None:
                inner_grads[u] = g
                continue
            group = self.param_groups[self._group_index[u]]
            inner_grads[u] = self._enter(u, self._array(u), g, group)
            entered.append(u)
        self.inner.step(inner_grads)
        for u in entered:
            self._leave(u, self._array(u), self.param_groups[self._group_index[u]])
        self.global_state["step"] += 1
        return False

    def _gradient(self, w, g, group):
        """G in the work dtype, with L2 decay added for a coupled-decay inner optimizer."""
        G = g.astype(work_dtype(w.dtype))
        wd = group["weight_decay"]
        if wd and not self._probe.decays_decoupled(group):
            G += wd * w
        return G

    def _apply(self, w, delta, group):
        """W <- W + delta, then the decoupled decay."""
        w += delta.astype(w.dtype, copy=False)
        wd = group["weight_decay"]
        if wd and self._probe.decays_decoupled(group):
            w -= (group["lr"] * wd) * w

    # -- state ------------------------------------------------------------------------
    def _unit_state_nbytes(self, unit):
        """Bytes the method adds to the inner optimizer's state of a hidden matrix."""
        raise NotImplementedError

    def expected_state_bytes(self) -> int:
        total = 0
        for u in self._units:
            group = self._inner_group[u]
            if u in self._matrices:
                like = np.empty(self._low(u), self._array(u).dtype)
                total += int(self.inner._state_nbytes(like, group)) + self._unit_state_nbytes(u)
            else:
                total += int(self.inner._state_nbytes(self._array(u), group))
        return total

    def state_dict(self):
        sd = super().state_dict()
        sd["inner_global_state"] = {k: _copy(v) for k, v in self.inner.global_state.items()}
        return sd

    def load_state_dict(self, sd):
        self._check_loadable(sd)
        super().load_state_dict({**sd, "state": {}})
        self.inner.state = {u: {k: _copy(v) for k, v in st.items()} for u, st in sd["state"].items()}
        self.inner.global_state = {k: _copy(v) for k, v in sd.get("inner_global_state", {}).items()}


@register("galore")
class GaLore(_Projected):
    """GaLore, gradient low-rank projection (Zhao et al., ICML 2024, arXiv 2403.03507; code
    jiaweizzhao/GaLore).

    For each hidden matrix, every ``update_proj_gap`` = T of its steps (steps 0, T, 2T, ...)
    the basis P is refreshed from the SVD of the current gradient G = U S V^T (in float32, or
    float64 for float64 parameters): the top-r right singular vectors, P = V^T[:r] (r x n), when
    the side is "right", else the top-r left ones, P = U[:, :r] (m x r). In between, the inner
    optimizer (``inner``, default "adamw", with ``inner_kwargs``) steps on R = G P^T (or P^T G)
    and the matrix moves by ``scale`` = alpha times its move projected back:
    W <- W - lr * alpha * N(R) P (or P N(R)). See the module docstring for the sides and the
    parameters that are not projected. The inner AdamW is ``optim.AdamW`` as it is (eps 1e-8,
    added to the bias-corrected sqrt(v), torch's form); the reference's GaLoreAdamW adds eps 1e-6
    to the uncorrected sqrt(v), which differs where the projected gradients are small (early
    steps, or |R| near 1e-5): ``inner_kwargs={"eps": 1e-6}`` comes close after the first hundred
    steps. The reference also decays the unprojected parameters after their step, AdamW before.

    At a refresh the inner optimizer's moments stay as they are, now read in the new basis (as
    in the reference; GaLore issue #54 [unverified]). ``reproject=True`` maps the first moments
    into the new basis instead, M <- M P_old P_new^T (right side) or P_new^T P_old M (left),
    exact for the part of M in the new subspace; second moments (Adam's v) have no linear map
    and stay.

    With ``rank = min(m, n)``, ``scale = 1`` and ``inner="sgd"`` (no momentum) this is SGD: P
    is square and orthogonal, so G P^T P = G up to rounding (float64: ~1e-16 relative).

    Memory per hidden matrix: P, r*min(m, n), plus the inner state of an m x r (or r x n) array,
    2r*max(m, n) for Adam(W). The SVD costs O(mn min(m, n)) every T steps."""

    method = "galore"

    _saved_options = _Projected._saved_options + ("scale", "reproject")

    def __init__(self, params, lr=1e-3, weight_decay=0.0, *, rank=None, update_proj_gap=200,
                 scale=0.25, proj="std", inner="adamw", inner_kwargs=None, reproject=False,
                 roles=None, splits=None, nonfinite="raise"):
        self._setup(params, scale=scale, reproject=reproject, seed=None, lr=lr,
                    weight_decay=weight_decay, rank=rank, update_proj_gap=update_proj_gap, proj=proj,
                    inner=inner, inner_kwargs=inner_kwargs, roles=roles, splits=splits,
                    nonfinite=nonfinite)

    def _setup(self, params, *, scale, reproject, **kw):
        _check_scale(scale, type(self).__name__)
        _Projected.__init__(self, params, **kw)
        self.scale, self.reproject = float(scale), bool(reproject)

    def _new_basis(self, unit, G, t):
        """The basis for the period that starts at the unit's step t (G: its gradient)."""
        U, _, Vh = np.linalg.svd(G, full_matrices=False)
        r = self.ranks[unit]
        # a copy: Vh[:r] is contiguous, and as a view it kept all of Vh (min(m, n)^2) alive
        return (Vh[:r] if self._sides[unit] == "right" else U[:, :r]).copy()

    def basis(self, unit):
        """The basis P the matrix ``unit`` is projected with now (None before its first step)."""
        return self.state.get(unit, {}).get("proj")

    def _enter(self, unit, w, g, group):
        st = self.inner.state.setdefault(unit, {})
        t = st.get("proj_step", 0)
        G = self._gradient(w, g, group)
        if t % self.update_proj_gap == 0:
            P = self._new_basis(unit, G, t)
            if self.reproject and "proj" in st:
                self._reproject(unit, st, st["proj"], P)
            st["proj"] = P
        # the array the inner optimizer moves, from 0, for this step only (see _placeholder)
        shadow = np.zeros(self._low(unit), self._array(unit).dtype)
        self._inner_group[unit]["params"][unit] = shadow
        return _down(self._sides[unit], G, st["proj"]).astype(shadow.dtype, copy=False)

    def _leave(self, unit, w, group):
        st = self.inner.state[unit]
        shadow = self._inner_group[unit]["params"][unit]
        delta = _up(self._sides[unit], shadow.astype(st["proj"].dtype, copy=False), st["proj"])
        self._inner_group[unit]["params"][unit] = _placeholder(shadow.shape, shadow.dtype)
        if self.scale != 1.0:
            delta *= self.scale
        self._apply(w, delta, group)
        st["proj_step"] = st.get("proj_step", 0) + 1

    def _reproject(self, unit, st, old, new):
        for key in _FIRST_MOMENTS:
            M = st.get(key)
            if isinstance(M, np.ndarray) and M.shape == self._low(unit):
                if self._sides[unit] == "right":
                    moved = M @ (old @ new.T).astype(M.dtype)
                else:
                    moved = (new.T @ old).astype(M.dtype) @ M
                M[...] = moved

    def _unit_state_nbytes(self, unit):
        shape = _basis_shape(self._sides[unit], self._shape[unit], self.ranks[unit])
        return math.prod(shape) * work_dtype(self._array(unit).dtype).itemsize


@register("golore")
class GoLore(GaLore):
    """GoLore, gradient random low-rank projection (He, Li, Hu, Chen, Yuan, ICML 2025, arXiv
    2410.11289; code pkumelon/Golore).

    GaLore with a random basis: at each refresh P is drawn uniformly (Haar) from the Stiefel
    manifold, ``stiefel_uniform`` keyed by (seed, refresh index, name), so E[P^T P] = (r/n) I
    (right side) or E[P P^T] = (r/m) I (left): in expectation every direction of G is followed,
    at rate r/n. GaLore's SVD basis, in contrast, is the gradient's top singular subspace: once
    the true gradient is smaller than the noise of the stochastic one, that subspace is the
    noise's and GaLore stops making progress (the paper's counterexample, in
    ``demos/subspace.py``); GoLore does not.

    Hybrid (the reference's ``rand_ratio``): the SVD basis for the refreshes at a matrix's steps
    t < ``rand_ratio`` * ``total_steps``, random ones afterwards; ``rand_ratio=0`` (default) is
    random throughout and needs no ``total_steps``. The reference re-projects Adam's first
    moment at every refresh; here that is ``reproject=True`` (default False, as GaLore).

    Memory as GaLore: P, r*min(m, n), plus the inner state in the subspace."""

    method = "golore"

    def __init__(self, params, lr=1e-3, weight_decay=0.0, *, rank=None, update_proj_gap=200,
                 scale=0.25, proj="std", inner="adamw", inner_kwargs=None, reproject=False,
                 rand_ratio=0.0, total_steps=None, seed=0, roles=None, splits=None, nonfinite="raise"):
        where = type(self).__name__
        if not (isinstance(rand_ratio, (int, float, np.floating)) and 0.0 <= rand_ratio <= 1.0):
            raise ValueError(f"{where}: rand_ratio (the fraction of the steps with SVD bases) must be "
                             f"in [0, 1], got {rand_ratio!r}")
        if rand_ratio > 0:
            if total_steps is None:
                raise ValueError(f"{where}: rand_ratio={rand_ratio} needs total_steps, the run's length "
                                 f"(SVD bases for the first rand_ratio * total_steps steps)")
            check_count(total_steps, f"{where}: total_steps")
        self._setup(params, scale=scale, reproject=reproject, seed=seed, lr=lr,
                    weight_decay=weight_decay, rank=rank, update_proj_gap=update_proj_gap, proj=proj,
                    inner=inner, inner_kwargs=inner_kwargs, roles=roles, splits=splits,
                    nonfinite=nonfinite)
        self.rand_ratio = float(rand_ratio)
        self.random_from = 0 if self.rand_ratio == 0 else self.rand_ratio * int(total_steps)

    def _new_basis(self, unit, G, t):
        if t < self.random_from:
            return super()._new_basis(unit, G, t)
        side, (m, n), r = self._sides[unit], self._shape[unit], self.ranks[unit]
        Q = stiefel_uniform(self._generator(unit, t // self.update_proj_gap), n if side == "right" else m,
                            r, G.dtype)
        return np.ascontiguousarray(Q.T) if side == "right" else Q


def _check_scale(scale, where):
    if not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: scale (alpha) must be a finite number > 0, got {scale!r}")


# ----------------------------------------------------------------------------- RSO
@register("rso")
class RSO(_Projected):
    """RSO, randomized subspace optimization (Chen, Zhang, Liu, Yuan, Wen, ICML 2025, arXiv
    2502.07222).

    Outer iteration k, for each hidden matrix W (the side rule as GaLore's, ``proj``):

        P_k random: "gaussian", N(0, 1/r) entries (E[P^T P] = I), or "haar" (orthonormal);
        B_k ~ argmin_B f(W_k + B P_k) + ||B||^2 / (2 eta)    ("left" side: W_k + P_k B)
        W_{k+1} = W_k + B_k P_k

    The subproblem is solved approximately by ``update_proj_gap`` = K steps of the inner
    optimizer (``inner``, default "adamw") from B = 0 with fresh state, on the gradient
    G P^T + B / eta (G: the gradient of f at the current point, W_k + B P_k, which is what the
    parameter array holds during the subproblem). So W needs no copy of W_k: it moves by
    (B_new - B_old) P at each inner step, and at the end of the subproblem it *is* W_{k+1}.

    Two ways to drive it:

    * ``step(grads)`` -- one inner step, on the gradients at the current point (a training
      loop's minibatch); K calls make one outer iteration. This is how ``Trainer`` drives it.
    * ``step(closure=fn)`` with ``fn() -> (loss, grads)`` -- the rest of the current subproblem
      (K inner steps from its start), calling ``fn`` at every inner point; returns the first
      loss. For problems on arrays, e.g. the same minibatch at every inner step.

    ``eta=None`` drops the proximal term (eta = infinity); the paper's analysis takes
    eta <= 1/(2 L) [unverified]. What the paper leaves open (choices here): the number of inner
    steps and the inner optimizer (K and ``inner``), whether the inner steps see one minibatch
    or fresh ones (``step`` vs ``step(closure=...)``), which side of a matrix P acts on (GaLore's
    rule), and how non-matrix parameters train (by the inner optimizer, every step).

    One inner GD step from B = 0 (``inner="sgd"``, lr = eta_in): W = W_k - eta_in * P P^T G
    ("left"; "right": W_k - eta_in * G P^T P). Memory per hidden matrix: B, r*max(m, n), and
    the inner state of B (2r*max(m, n) for Adam); P is regenerated from its key (nothing
    stored)."""

    method = "rso"
    PROJECTIONS = ("gaussian", "haar")

    def __init__(self, params, lr=1e-3, weight_decay=0.0, *, rank=None, update_proj_gap=50,
                 eta=None, projection="gaussian", proj="std", inner="adamw", inner_kwargs=None,
                 seed=0, roles=None, splits=None, nonfinite="raise"):
        where = type(self).__name__
        if eta is not None and not (isinstance(eta, (int, float, np.floating)) and math.isfinite(eta)
                                    and eta > 0):
            raise ValueError(f"{where}: eta (the proximal step) must be a finite number > 0 or None "
                             f"(no proximal term), got {eta!r}")
        if projection not in self.PROJECTIONS:
            raise ValueError(f"{where}: projection must be one of {self.PROJECTIONS}, got {projection!r}")
        super().__init__(params, lr=lr, weight_decay=weight_decay, rank=rank,
                         update_proj_gap=update_proj_gap, proj=proj, inner=inner,
                         inner_kwargs=inner_kwargs, roles=roles, splits=splits, seed=seed,
                         nonfinite=nonfinite)
        self.eta = None if eta is None else float(eta)
        self.projection = projection
        self._before = {}

    def period(self) -> int:
        """The index k of the subproblem the coming step works on."""
        return self.global_state["step"] // self.update_proj_gap

    def basis(self, unit, period=None):
        """P of the matrix ``unit`` in subproblem ``period`` (default: the coming step's)."""
        k = self.period() if period is None else int(period)
        side, (m, n), r = self._sides[unit], self._shape[unit], self.ranks[unit]
        dtype = self._array(unit).dtype
        rng = self._generator(unit, k)
        if self.projection == "gaussian":
            return gaussian_projection(rng, _basis_shape(side, (m, n), r), r, dtype)
        Q = stiefel_uniform(rng, n if side == "right" else m, r, dtype)
        return np.ascontiguousarray(Q.T) if side == "right" else Q

    def _enter(self, unit, w, g, group):
        k = self.period()
        st = self.inner.state.get(unit)
        if st is None or st.get("period") != k:  # a new subproblem: B = 0, the inner state afresh
            st = self.inner.state[unit] = {"period": k, "B": np.zeros(self._low(unit), w.dtype)}
        P = self.basis(unit)
        R = _down(self._sides[unit], self._gradient(w, g, group), P)
        if self.eta is not None:
            R += st["B"] / self.eta
        self._inner_group[unit]["params"][unit] = st["B"]
        self._before[unit] = (st["B"].copy(), P)
        return R.astype(w.dtype, copy=False)

    def _leave(self, unit, w, group):
        before, P = self._before.pop(unit)
        moved = self.inner.state[unit]["B"] - before
        self._apply(w, _up(self._sides[unit], moved.astype(P.dtype, copy=False), P), group)

    def step(self, grads=None, closure=None):
        if grads is not None or closure is None:
            return super().step(grads, closure)
        K, first = self.update_proj_gap, None
        while True:
            out = closure()
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"RSO.step(closure=fn): fn() must return (loss, grads), got "
                                f"{type(out).__name__}")
            loss, g = out
            first = loss if first is None else first
            super().step(g)
            if self.last_step_skipped or self.global_state["step"] % K == 0:
                return first

    def _unit_state_nbytes(self, unit):
        return math.prod(self._low(unit)) * self._array(unit).dtype.itemsize   # B


# ----------------------------------------------------------------------------- Flora
@register("flora")
class Flora(_Subspace):
    """Flora, random-projection compressed momentum on Adafactor (Hao, Cao, Mou, ICML 2024,
    arXiv 2402.03293; code BorealisAI/flora-opt, ``flora_step_``).

    The base is a minimal Adafactor (Shazeer, Stern 2018, arXiv 1804.04235, in the form of the
    HuggingFace/Flora code), per parameter, step t = 1, 2, ...:

        beta2_t = 1 - t^decay_rate;   S = G*G + eps[0]
        2-D:  row <- beta2_t*row + (1-beta2_t)*mean_cols(S)   (m),  col likewise (n);
              u_hat = G / sqrt(V_hat), V_hat = row col^T / mean(row)   (factored: m + n floats)
        else: v <- beta2_t*v + (1-beta2_t)*S;  u_hat = G / sqrt(v)
        u = (1-beta1)*u_hat + beta1*M                       (momentum; below for hidden matrices)
        u <- u / max(1, RMS(u)/clip_threshold)
        lr_t = lr * max(eps[1], RMS(W)) if scale_parameter else lr
        W <- W - lr_t*wd*W;   W <- W - lr_t*u

    Momentum of a hidden matrix, compressed by a random A (P here, N(0, 1/r) entries,
    ``gaussian_projection``; the side rule of GaLore's "std": C = M P^T, m x r, when m >= n,
    else C = P^T M, r x n):

        u = (1-beta1)*u_hat + beta1*up(C)           (up: C P or P C; E[P^T P] = I)
        every update_proj_gap = kappa steps:  C <- down_new(up_old(C))    (a new P, the old M)
        C <- beta1*C + (1-beta1)*down(u_hat)

    P is regenerated from (seed, t // kappa, name) whenever it is needed, never stored. Other
    parameters keep a full momentum. ``beta1=0``: no momentum (Adafactor without first moment).

    Memory per hidden matrix: C, r*max(m, n), plus row and col, m + n (float32; float64 for
    float64 parameters). Differences from the reference: ``scale_parameter`` defaults to False
    here (lr is then an absolute step, comparable to Adam's; the reference's True scales it by
    the parameter's RMS and suits lr ~ 1e-2 .. 1e-1), there is no relative-step schedule (use
    ``optim.schedules``), and which matrices are compressed is chosen by roles (the reference
    compresses 2-D parameters with max/min side ratio <= 4, leaving out embeddings)."""

    method = "flora"

    def __init__(self, params, lr=1e-3, weight_decay=0.0, beta1=0.9, decay_rate=-0.8,
                 eps=(1e-30, 1e-3), clip_threshold=1.0, scale_parameter=False, *, rank=None,
                 update_proj_gap=1000, seed=0, roles=None, splits=None, nonfinite="raise"):
        where = type(self).__name__
        check_count(update_proj_gap, f"{where}: update_proj_gap")
        eps = tuple(eps) if isinstance(eps, (list, tuple)) else eps
        super().__init__(params, nonfinite=nonfinite, lr=lr, weight_decay=weight_decay, beta1=beta1,
                         decay_rate=decay_rate, eps=eps, clip_threshold=clip_threshold,
                         scale_parameter=scale_parameter)
        self._lay_out(roles, splits, rank, seed, where)
        self.update_proj_gap = int(update_proj_gap)

    def decays_decoupled(self, group) -> bool:
        return True

    def _check_group(self, group):
        super()._check_group(group)
        check_fraction(group["beta1"], "Flora: beta1")
        d = group["decay_rate"]
        if not (isinstance(d, (int, float, np.floating)) and math.isfinite(d) and d <= 0):
            raise ValueError(f"Flora: decay_rate must be a finite number <= 0 (beta2_t = 1 - t^decay_rate), "
                             f"got {d!r}")
        e = group["eps"]
        if not (isinstance(e, tuple) and len(e) == 2 and all(isinstance(x, (int, float)) and x >= 0
                                                             for x in e)):
            raise ValueError(f"Flora: eps must be two numbers >= 0 (regulariser of G^2, floor of the "
                             f"parameter scale), got {e!r}")
        c = group["clip_threshold"]
        if not (isinstance(c, (int, float, np.floating)) and c > 0):
            raise ValueError(f"Flora: clip_threshold must be a number > 0, got {c!r}")

    def basis(self, unit, index):
        """P of the hidden matrix ``unit`` in its ``index``-th period of update_proj_gap steps."""
        side = _side("std", self._shape[unit])
        shape = _basis_shape(side, self._shape[unit], self.ranks[unit])
        return gaussian_projection(self._generator(unit, index), shape, self.ranks[unit],
                                   self._array(unit).dtype)

    def _begin_step(self, grads):
        for u, g in self._unit_grads(grads).items():
            if g is not None:
                self._adafactor(u, self._array(u), g, self.state.setdefault(u, {}),
                                self.param_groups[self._group_index[u]])
        return False

    def _adafactor(self, unit, w, g, st, group):
        work = work_dtype(w.dtype)
        G = g.astype(work)
        p = w if w.dtype == work else w.astype(work)
        t = st["step"] = st.get("step", 0) + 1
        beta2t = 1.0 - t ** group["decay_rate"]
        eps1, eps2 = group["eps"]
        S = G * G + eps1
        if G.ndim == 2:
            row = st.setdefault("exp_avg_sq_row", np.zeros(G.shape[0], work))
            col = st.setdefault("exp_avg_sq_col", np.zeros(G.shape[1], work))
            row *= beta2t
            row += (1.0 - beta2t) * S.mean(axis=1)
            col *= beta2t
            col += (1.0 - beta2t) * S.mean(axis=0)
            u_hat = G * (1.0 / np.sqrt(row / row.mean()))[:, None] * (1.0 / np.sqrt(col))[None, :]
        else:
            v = st.setdefault("exp_avg_sq", np.zeros_like(G))
            v *= beta2t
            v += (1.0 - beta2t) * S
            u_hat = G / np.sqrt(v)
        b1 = group["beta1"]
        if not b1:
            u = u_hat
        elif unit in self._matrices:
            side = _side("std", G.shape)
            C = st.setdefault("exp_avg", np.zeros(_low_shape(side, G.shape, self.ranks[unit]), work))
            P = self.basis(unit, (t - 1) // self.update_proj_gap)
            u = (1.0 - b1) * u_hat + b1 * _up(side, C, P)
            if t % self.update_proj_gap == 0:   # move C to the next period's basis
                P_next = self.basis(unit, t // self.update_proj_gap)
                C[...] = _down(side, _up(side, C, P), P_next)
                P = P_next
            C *= b1
            C += (1.0 - b1) * _down(side, u_hat, P)
        else:
            M = st.setdefault("exp_avg", np.zeros_like(G))
            M *= b1
            M += (1.0 - b1) * u_hat
            u = M.copy()
        u /= max(1.0, _rms(u) / group["clip_threshold"])
        lr = group["lr"] * (max(eps2, _rms(p)) if group["scale_parameter"] else 1.0)
        if group["weight_decay"]:
            p -= (lr * group["weight_decay"]) * p
        p -= lr * u
        if p is not w:
            w[...] = p

    def _state_nbytes_of(self, unit):
        shape = self._array(unit).shape
        group = self.param_groups[self._group_index[unit]]
        n = (shape[0] + shape[1]) if len(shape) == 2 else math.prod(shape)
        if group["beta1"]:
            if unit in self._matrices:
                n += math.prod(_low_shape(_side("std", shape), shape, self.ranks[unit]))
            else:
                n += math.prod(shape)
        return n * work_dtype(self._array(unit).dtype).itemsize

    def expected_state_bytes(self) -> int:
        return sum(self._state_nbytes_of(u) for u in self._units)

    def load_state_dict(self, sd):
        self._check_loadable(sd)
        super().load_state_dict({**sd, "state": {}})
        self.state = {u: {k: _copy(v) for k, v in st.items()} for u, st in sd["state"].items()}


def _placeholder(shape, dtype):
    """What the inner optimizer holds as a hidden matrix's low-rank array between steps: a
    read-only view of one zero with the array's shape and dtype, 0 bytes. GaLore's array exists
    only during a step (it held r*max(m, n) for good, uncounted, before 2026-12-07); RSO binds
    its B, which is state."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))
