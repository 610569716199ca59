"""Optimizers of the large-model era: Lion, Adafactor, Muon, Adam-mini.

Each one spends less memory than AdamW's two floats per weight, or changes the geometry of the
step, or both:

=============  =====================================  ==================================
optimizer      state per m x n matrix                 idea
=============  =====================================  ==================================
``lion``       mn (momentum)                          sign of an interpolated momentum
``adafactor``  m + n (row and column second moment)   rank-1 factored second moment
``muon``       mn (momentum)                          orthogonalized momentum (Newton-Schulz)
``adam-mini``  mn + one scalar per block              one second moment per block
=============  =====================================  ==================================

Muon and Adam-mini treat a parameter by what it does. Both take ``roles`` ({name: role},
``model.param_roles()``; see ``minigrad.nn.ROLES``) and ``splits`` (``model.param_splits()``:
a fused matrix such as a GPT's (3C, C) attention weight seen as its q, k and v row blocks, see
``optim.split_matrices``)::

    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("muon", params, lr=0.02, roles=model.param_roles(),
                       splits=model.param_splits(), adamw_kwargs={"lr": 3e-4})
    opt = optim.create("adam-mini", params, lr=1e-3, n_head=config.n_head,
                       roles=model.param_roles(), splits=model.param_splits())
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .base import Optimizer, backend_kernels, check_betas, check_count, check_eps, check_fraction, register
from .groups import _parts

__all__ = ["Lion", "Adafactor", "Muon", "AdamMini", "newton_schulz", "MUON_ROLES"]


# ----------------------------------------------------------------------------- Lion
@register("lion")
class Lion(Optimizer):
    """Lion, EvoLved Sign Momentum (Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh,
    Lu, Le, NeurIPS 2023, arXiv 2302.06675, Algorithm 2)::

        c <- b1*m + (1-b1)*g
        theta <- theta - lr*(sign(c) + wd*theta)
        m <- b2*m + (1-b2)*g

    Every coordinate moves by exactly lr (plus decay), so the update is larger than Adam's
    for the same lr: the paper uses an lr 3-10x smaller and a weight decay 3-10x larger than
    AdamW's. Defaults are the paper's (lr 1e-4, betas (0.9, 0.99)). torch has no Lion.
    Memory: N (the momentum)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_betas(group["betas"], "Lion")

    def decays_decoupled(self, group) -> bool:
        return True

    def _update(self, name, p, g, state, group):
        b1, b2 = group["betas"]
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(p)
        m = state["exp_avg"]
        c = b1 * m + (1.0 - b1) * g
        p -= group["lr"] * (np.sign(c) + group["weight_decay"] * p)
        m *= b2
        m += (1.0 - b2) * g

    def _state_nbytes(self, p, group):
        return p.nbytes


# ----------------------------------------------------------------------------- Adafactor
@register("adafactor")
class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern, ICML 2018, arXiv 1804.04235), torch.optim.Adafactor
    semantics. At step t, with G the gradient (-G with ``maximize``)::

        beta2_t = 1 - t^beta2_decay              (0 at t = 1: no bias correction needed)
        rho_t = min(lr, 1/sqrt(t));  alpha_t = max(eps2, RMS(theta)) * rho_t
        theta <- theta * (1 - lr*wd)             (decoupled decay, with the lr itself)
        ndim >= 2, factored over the last two axes (m x n):
            R <- beta2_t*R + (1-beta2_t)*rowmean(G^2)     (m values)
            C <- beta2_t*C + (1-beta2_t)*colmean(G^2)     (n values)
            V = R C / max(mean(R), eps1)
        ndim < 2:  V <- beta2_t*V + (1-beta2_t)*G^2
        U = G / sqrt(max(V, eps1^2));  theta <- theta - alpha_t * U / max(1, RMS(U)/d)

    The step size is relative (alpha_t scales with the parameter's RMS) and ``lr`` only caps
    rho_t and scales the decay, as in torch; the paper's rho_t uses 0.01 where lr stands, which
    is torch's default. eps1 (``eps[0]``, None: the dtype's machine epsilon) guards V and U,
    not R and C: torch's reading of the paper, which adds eps1 to G^2. No first moment (the
    paper's beta1 = 0 setting).

    Pitfall: alpha_t is at least eps2*rho_t = 1e-5 at t = 1 for a zero-initialised parameter and
    grows with its RMS, whatever lr is, so a schedule on lr changes only the cap of rho_t.
    Memory: m + n per matrix (times the leading dims of a higher-order tensor), N for vectors."""

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                         weight_decay=weight_decay, maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        if not group["beta2_decay"] <= 0:
            raise ValueError(f"Adafactor: beta2_decay must be <= 0, got {group['beta2_decay']!r}")
        eps = group["eps"]
        if len(eps) != 2:
            raise ValueError(f"Adafactor: eps must be a pair (eps1 or None, eps2), got {eps!r}")
        if eps[0] is not None:
            check_eps(eps[0], "Adafactor", "eps[0]")
        check_eps(eps[1], "Adafactor", "eps[1]")
        if not group["d"] >= 1:
            raise ValueError(f"Adafactor: the clipping threshold d must be >= 1, got {group['d']!r}")

    def decays_decoupled(self, group) -> bool:
        return True

    def reads_parameters(self, group) -> bool:
        return True                                    # alpha_t scales with RMS(theta)

    def _update(self, name, p, g, state, group):
        lr, wd = group["lr"], group["weight_decay"]
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = float(np.finfo(p.dtype).eps)
        if "step" not in state:
            state["step"] = 0
            if p.ndim >= 2:
                state["row_var"] = np.zeros(p.shape[:-1] + (1,), dtype=p.dtype)
                state["col_var"] = np.zeros(p.shape[:-2] + (1, p.shape[-1]), dtype=p.dtype)
            else:
                state["variance"] = np.zeros_like(p)
        if group["maximize"]:
            g = -g
        state["step"] += 1
        t = state["step"]
        weight = t ** group["beta2_decay"]          # 1 - beta2_t
        rho = min(lr, 1.0 / math.sqrt(t))
        alpha = max(eps2, _rms(p)) * rho
        if wd:
            p *= 1.0 - lr * wd
        g2 = g * g
        if p.ndim >= 2:
            row, col = state["row_var"], state["col_var"]
            row += weight * (g2.mean(axis=-1, keepdims=True) - row)
            col += weight * (g2.mean(axis=-2, keepdims=True) - col)
            v = (row @ col) / np.maximum(row.mean(axis=-2, keepdims=True), eps1)
        else:
            v = state["variance"]
            v += weight * (g2 - v)
        u = g / np.sqrt(np.maximum(v, eps1 * eps1))
        p -= (alpha / max(1.0, _rms(u) / group["d"])) * u

    def _state_nbytes(self, p, group):
        if p.ndim < 2:
            return p.nbytes
        lead = math.prod(p.shape[:-2])
        return lead * (p.shape[-2] + p.shape[-1]) * p.itemsize


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) if a.size else 0.0


# ----------------------------------------------------------------------------- roles and parts
def _layout(params, roles, splits, where) -> dict:
    """{name: [(rows or None, role or None), ...]}: a parameter as a whole, or, when ``splits``
    names it, its row blocks with the roles ``splits`` gives them."""
    splits = {} if splits is None else splits
    if not isinstance(splits, Mapping):
        raise TypeError(f"{where}: splits must be a dict name -> parts (model.param_splits()), "
                        f"got {type(splits).__name__}")
    if roles is not None and not isinstance(roles, Mapping):
        raise TypeError(f"{where}: roles must be a dict name -> role (model.param_roles()), "
                        f"got {type(roles).__name__}")
    out = {}
    for n, p in params.items():
        if n in splits:
            if p.ndim != 2:
                raise ValueError(f"{where}: splits names {n!r} of shape {p.shape}; only a 2-D matrix "
                                 f"is split into row blocks")
            out[n] = [(rows, role) for _, role, rows in _parts(n, splits[n], p.shape[0])]
        elif roles is None:
            out[n] = [(None, None)]
        elif n in roles:
            out[n] = [(None, roles[n])]
        else:
            raise ValueError(f"{where}: no role for parameter {n!r}; give roles for every parameter "
                             f"(model.param_roles()) or none")
    return out


class _ByRole(Optimizer):
    """An optimizer whose update of a parameter depends on its role and parts (see ``_layout``),
    laid out as the parameters join, so that ``add_param_group`` works as usual."""

    def __init__(self, params, *, roles, splits, **defaults):
        self._roles, self._splits, self._plan = roles, splits, {}
        super().__init__(params, **defaults)
        unknown = [n for n in (splits or {}) if n not in self.params]
        if unknown:
            raise ValueError(f"{type(self).__name__}: splits name unknown parameter(s) {unknown}")

    def add_param_group(self, group):
        before = len(self.param_groups)
        super().add_param_group(group)
        for g in self.param_groups[before:]:
            layout = _layout(g["params"], self._roles, self._splits, type(self).__name__)
            self._plan.update((n, self._plan_of(n, g["params"][n], parts)) for n, parts in layout.items())

    def _plan_of(self, name, p, parts):
        raise NotImplementedError

    def _planned(self, p, group):
        """The plan of array ``p`` of ``group`` (by identity; an array this optimizer was not
        built on, as a wrapper may ask about, is planned as a parameter without role)."""
        name = next((n for n, q in group["params"].items() if q is p), None)
        return self._plan[name] if name is not None else self._plan_of(None, p, [(None, None)])


# ----------------------------------------------------------------------------- Muon
#: roles whose 2-D parameters Muon orthogonalizes when ``roles`` is given: the hidden matrices
#: ("linear", a weight without a more specific role, may be a classifier head: not included)
MUON_ROLES = frozenset({"attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out"})


def newton_schulz(G, steps=5, coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7):
    """The quintic Newton-Schulz iteration of Muon, in G's dtype: X = G/max(||G||_F, eps) (on
    the wide orientation, so that X X^T is the smaller Gram matrix), then ``steps`` times
    X <- a X + (b A + c A^2) X with A = X X^T. Each singular value s of X goes to
    phi(s) = a s + b s^3 + c s^5; Jordan's (a, b, c) maximise the slope at 0 (3.4445) and after
    5 steps map [1.5e-3, 1] (relative to ||G||_F) into about [0.68, 1.21]: an approximate
    U V^T of G = U S V^T, not the exact polar factor. torch runs it in bfloat16."""
    a, b, c = coefficients
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G
    X = X / max(float(np.linalg.norm(X.astype(np.float64))), eps)
    # numba backend: the products on the kernels' thread pool, as the model's GEMMs (BLAS's own
    # threads would spin on the cores the pool's workers hold; minigrad/kernels/pool.py)
    kernels = backend_kernels(X)
    mm = np.matmul if kernels is None else kernels.gemm
    for _ in range(steps):
        A = mm(X, X.T)
        X = a * X + mm(b * A + c * mm(A, A), X)
    return X.T if tall else X


def _adjusted_lr(lr, fn, shape):
    A, B = shape[:2]
    if fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    return lr * math.sqrt(max(1.0, A / B))


_ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay")


@register("muon")
class Muon(_ByRole):
    """Muon, MomentUm Orthogonalized by Newton-Schulz (Jordan, Jin, Boza, You, Cesista, Newhouse,
    Bernstein 2024, kellerjordan.github.io/posts/muon; torch.optim.Muon), for each hidden
    matrix W (m x n) with gradient G::

        B <- momentum*B + (1-momentum)*G                 (torch: B.lerp_(G, 1-momentum))
        U = G + momentum*(B - G) if nesterov else B
        O = newton_schulz(U, ns_steps, ns_coefficients, eps)
        W <- W*(1 - lr*wd) - lr_adj*O
        lr_adj = lr*sqrt(max(1, m/n))          adjust_lr_fn None or "original" (Jordan)
                 lr*0.2*sqrt(max(m, n))        "match_rms_adamw" (Liu et al. 2025, Moonlight,
                                               arXiv 2502.16982: the update RMS of AdamW, so
                                               AdamW's lr and decay carry over)

    Newton-Schulz runs in the parameter's dtype (torch casts to bfloat16).

    Which parameters are Muon matrices: with ``roles`` the 2-D ones whose role is in
    ``MUON_ROLES``; with ``splits`` a fused matrix is orthogonalized part by part (a GPT's
    c_attn weight as its q, k and v rows, as Jordan recommends; all parts must be hidden
    matrices). Without ``roles`` every 2-D parameter is one. Everything else -- embeddings, the
    head, norms, biases, higher-order tensors -- takes an AdamW step (torch form, see
    ``optim.AdamW``) with the group's lr and weight_decay and ``adamw_kwargs`` (betas, eps
    and, to replace the group's, lr and weight_decay). An ``adamw_kwargs`` lr is multiplied by
    the factor a schedule applied to the group (``lr / initial_lr``), so one schedule drives
    both. Defaults are torch.optim.Muon's; the AdamW ones, betas (0.9, 0.95) and eps 1e-10, are
    Jordan's reference (KellerJordan/Muon, muon.py), which uses lr 0.02 for Muon and 3e-4 for
    AdamW. Muon on the embedding or the head trains worse (Muon issue #13), hence the roles.
    Memory: mn per Muon matrix (the momentum), 2N per AdamW parameter."""

    _saved_options = ("adamw_kwargs",)

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None,
                 *, roles=None, splits=None, adamw_kwargs=None, nonfinite="raise"):
        adamw = {"betas": (0.9, 0.95), "eps": 1e-10, **(adamw_kwargs or {})}
        unknown = [k for k in adamw if k not in _ADAMW_KEYS]
        if unknown:
            raise ValueError(f"Muon: adamw_kwargs takes {list(_ADAMW_KEYS)}, got unknown {unknown}")
        adamw["betas"] = tuple(adamw["betas"])
        check_betas(adamw["betas"], "Muon: adamw_kwargs")
        check_eps(adamw["eps"], "Muon: adamw_kwargs")
        for k in ("lr", "weight_decay"):
            if k in adamw and not (isinstance(adamw[k], (int, float)) and math.isfinite(adamw[k])
                                   and adamw[k] >= 0):
                raise ValueError(f"Muon: adamw_kwargs {k} must be a finite number >= 0, got {adamw[k]!r}")
        self.adamw_kwargs = adamw
        super().__init__(params, roles=roles, splits=splits, lr=lr, weight_decay=weight_decay,
                         momentum=momentum, nesterov=nesterov, ns_coefficients=tuple(ns_coefficients),
                         eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_fraction(group["momentum"], "Muon: momentum")
        check_count(group["ns_steps"], "Muon: ns_steps")
        if len(group["ns_coefficients"]) != 3:
            raise ValueError(f"Muon: ns_coefficients must be three numbers (a, b, c), got "
                             f"{group['ns_coefficients']!r}")
        check_eps(group["eps"], "Muon")
        if group["adjust_lr_fn"] not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Muon: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', "
                             f"got {group['adjust_lr_fn']!r}")

    def _plan_of(self, name, p, parts):
        """The row ranges to orthogonalize (None: the whole matrix), or None for AdamW."""
        hidden = [p.ndim == 2 and (role is None or role in MUON_ROLES) for _, role in parts]
        if all(hidden):
            return [rows for rows, _ in parts]
        if any(hidden):
            raise ValueError(f"Muon: the parts of {name!r} have roles {[r for _, r in parts]}; "
                             f"either all or none of them must be hidden matrices {sorted(MUON_ROLES)}")
        return None

    def is_muon(self, name) -> bool:
        """Whether parameter ``name`` takes Muon's step (else AdamW's)."""
        return self._plan[name] is not None

    def decays_decoupled(self, group) -> bool:
        return True

    def _update(self, name, p, g, state, group):
        plan = self._plan[name]
        if plan is None:
            return self._adamw(p, g, state, group)
        mu, lr = group["momentum"], group["lr"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = np.zeros_like(p)
        buf = state["momentum_buffer"]
        buf += (1.0 - mu) * (g - buf)
        u = g + mu * (buf - g) if group["nesterov"] else buf
        if group["weight_decay"]:
            p *= 1.0 - lr * group["weight_decay"]
        for rows in plan:
            w, part = (p, u) if rows is None else (p[rows[0]:rows[1]], u[rows[0]:rows[1]])
            o = newton_schulz(part, group["ns_steps"], group["ns_coefficients"], group["eps"])
            w -= _adjusted_lr(lr, group["adjust_lr_fn"], w.shape) * o

    def _adamw(self, p, g, state, group):
        opts = self.adamw_kwargs
        b1, b2 = opts["betas"]
        lr = group["lr"]
        if "lr" in opts:
            lr = opts["lr"] * (lr / group["initial_lr"] if group.get("initial_lr") else 1.0)
        wd = opts.get("weight_decay", group["weight_decay"])
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        if wd:
            p *= 1.0 - lr * wd
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + opts["eps"]
        p -= (lr / (1.0 - b1 ** t)) * (m / denom)

    def _state_nbytes(self, p, group):
        return p.nbytes * (1 if self._planned(p, group) is not None else 2)


# ----------------------------------------------------------------------------- Adam-mini
#: roles with one second moment per output neuron (a row; a token for embeddings)
_PER_ROW = frozenset({"embedding", "attn_v", "attn_out", "mlp_in", "mlp_out", "linear"})


@register("adam-mini")
class AdamMini(_ByRole):
    """Adam-mini (Zhang, Chen, Li, Ding, Chen, Ye, Luo, Sun, ICLR 2025, arXiv 2406.16793): Adam
    with one second moment per block b of parameters instead of one per weight::

        theta <- theta*(1 - lr*wd)
        m <- b1*m + (1-b1)*g                              (full size)
        v_b <- b2*v_b + (1-b2)*mean_{i in b}(g_i^2)       (one scalar per block)
        theta_i <- theta_i - (lr/(1-b1^t)) * m_i / (sqrt(v_b)/sqrt(1-b2^t) + eps),  i in b

    The blocks follow the Hessian's near-block-diagonal structure, by role (with ``roles``;
    the official code, zyushun/Adam-mini, matches parameter names instead):

    * attn_q, attn_k: one block per head (the rows of a head: the (C, C) weight viewed as
      (n_head, C*C/n_head)); needs ``n_head``, and ``n_kv_head`` for k under grouped-query
      attention (k has n_kv_head heads; default n_head);
    * attn_qkv (fused, without ``splits``): per head for its q and k rows, per row for v;
    * embedding (per token), attn_v, attn_out, mlp_in, mlp_out, linear: one per output neuron,
      i.e. per row;
    * bias: one per element (plain Adam), as the official v1.1.1 code does;
    * norm and every other role: one per tensor.

    Without ``roles``: one block per row of a parameter with >= 2 axes (its first axis), one per
    tensor otherwise. Checked against the v1.1.1 source (zyushun/Adam-mini @402aadf, run beside
    this class on a small model with grouped-query attention): the same blocks for every kind
    above and the same updates to float64 rounding, with and without weight decay.
    Torch-form eps (outside the root, on the bias-corrected moment); the code's default 1e-8
    (its docstring says 1e-6). The official code also sets weight_decay 0 for names
    containing "norm", "ln" or "bias"; here the groups' weight_decay is honoured as given (use
    ``optim.param_groups_no_decay`` for that). Memory: N + #blocks (about half of AdamW's 2N)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 n_head=None, n_kv_head=None, roles=None, splits=None, nonfinite="raise"):
        if n_head is not None:
            check_count(n_head, "Adam-mini: n_head")
        if n_kv_head is not None:
            check_count(n_kv_head, "Adam-mini: n_kv_head")
        self.n_head = n_head
        self.n_kv_head = n_head if n_kv_head is None else n_kv_head
        super().__init__(params, roles=roles, splits=splits, lr=lr, betas=tuple(betas), eps=eps,
                         weight_decay=weight_decay, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_betas(group["betas"], "Adam-mini")
        check_eps(group["eps"], "Adam-mini")

    def _heads(self, name, role, rows, cols):
        """Elements per head of a (rows, cols) q or k block (k: n_kv_head heads)."""
        if self.n_head is None:
            raise ValueError(f"Adam-mini: {name!r} has role {role!r}, whose blocks are the attention "
                             f"heads; pass n_head= (the model's number of heads)")
        heads, which = (self.n_kv_head, "n_kv_head") if role == "attn_k" else (self.n_head, "n_head")
        if rows % heads:
            raise ValueError(f"Adam-mini: {name!r} ({role}) has {rows} rows, not divisible by "
                             f"{which}={heads}")
        return rows // heads * cols

    def _plan_of(self, name, p, parts):
        """Segments (start, stop, block size) of the flattened parameter: [start, stop) is cut
        into blocks of ``size`` consecutive elements."""
        segments = []
        row = math.prod(p.shape[1:]) if p.ndim >= 1 else 1
        for rows, role in parts:
            start, stop = (0, p.size) if rows is None else (rows[0] * row, rows[1] * row)
            n_rows = (stop - start) // row if p.ndim >= 1 else 1
            if role is None:
                size = row if p.ndim >= 2 else stop - start
            elif role == "bias":
                size = 1
            elif role in ("attn_q", "attn_k"):
                size = self._heads(name, role, n_rows, row)
            elif role == "attn_qkv" and p.ndim == 2:
                if self.n_kv_head != self.n_head:
                    raise ValueError(f"Adam-mini: the fused q/k/v weight {name!r} of grouped-query "
                                     f"attention needs splits= (its q, k and v rows) to find the heads")
                if n_rows % 3:
                    raise ValueError(f"Adam-mini: the fused q/k/v weight {name!r} has {n_rows} rows, "
                                     f"not a multiple of 3")
                qk = 2 * n_rows // 3 * row
                segments.append((start, start + qk, self._heads(name, role, n_rows // 3, row)))
                start, size = start + qk, row
            elif role in _PER_ROW and p.ndim >= 2:
                size = row
            else:
                size = stop - start
            if stop > start:
                segments.append((start, stop, max(size, 1)))
        # in row order: the update lays the blocks' denominators out one after another from row
        # 0 (splits may list a parameter's parts in any order, e.g. v before q and k)
        return sorted(segments)

    def blocks(self, name) -> int:
        """The number of second-moment blocks of parameter ``name``."""
        return sum((stop - start) // size for start, stop, size in self._plan[name])

    def decays_decoupled(self, group) -> bool:
        return True

    def _update(self, name, p, g, state, group):
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        plan = self._plan[name]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros(self.blocks(name), dtype=p.dtype)
        state["step"] += 1
        t = state["step"]
        if wd:
            p *= 1.0 - lr * wd
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1.0 - b1) * g
        flat = g.reshape(-1)
        g2 = np.concatenate([np.mean(np.square(flat[a:b].reshape(-1, s)), axis=1) for a, b, s in plan])
        v *= b2
        v += (1.0 - b2) * g2
        h = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + group["eps"]
        sizes = np.concatenate([np.full((b - a) // s, s) for a, b, s in plan])
        denom = np.repeat(h, sizes).reshape(p.shape)
        p -= (lr / (1.0 - b1 ** t)) * (m / denom)

    def _state_nbytes(self, p, group):
        blocks = sum((stop - start) // size for start, stop, size in self._planned(p, group))
        return p.nbytes + blocks * p.itemsize
