"""Parameter groups chosen by rules, and fused matrices seen as several matrices.

Both work on name-keyed arrays plus plain data from the model, so optim imports no model::

    roles = model.param_roles()              # {name: role}, e.g. "norm", "mlp_out"
    groups = optim.param_groups(params, [
        {"role": ["norm", "bias", "embedding"], "weight_decay": 0.0},
        {"role": "mlp_out", "lr": 3e-5},
    ], roles=roles, lr=3e-4, weight_decay=0.1)

    splits = model.param_splits()            # {"h.0.attn.c_attn.weight": (("q", "attn_q", (0, C)), ...)}
    parts = optim.split_matrices(params, splits)   # "h.0.attn.c_attn.weight:q" -> a view, no copy
    part_roles = optim.split_roles(roles, splits)  # "h.0.attn.c_attn.weight:q" -> "attn_q"

The role names are listed, with what they mean, in ``minigrad.nn.ROLES``.
"""
from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Mapping

import numpy as np

from .base import _as_array, _named_items

__all__ = ["param_groups", "param_groups_no_decay", "split_matrices", "split_roles"]

#: rule keys that select parameters; every other key of a rule is a group option
MATCHERS = ("name", "role", "ndim")

_COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
            ">": operator.gt, "<": operator.lt}


def _ndim_test(spec, where):
    """An int n means ndim == n; a string such as ">=2" or "<2" compares."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return lambda ndim: ndim == spec
    m = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)?\s*(\d+)\s*", spec) if isinstance(spec, str) else None
    if m is None:
        raise ValueError(f"{where}: ndim must be an int or a comparison such as '>=2' or '<2', got {spec!r}")
    compare, n = _COMPARE[m.group(1) or "=="], int(m.group(2))
    return lambda ndim: compare(ndim, n)


def _strings(spec, key, where):
    values = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: {key} must be a string or a non-empty list of strings, got {spec!r}")
    return values


def _matcher(rule, where, roles):
    """The predicate (name, array) -> bool of one rule: all its matchers must hold."""
    tests = []
    if "name" in rule:
        patterns = _strings(rule["name"], "name", where)
        tests.append(lambda n, p: any(fnmatch.fnmatchcase(n, pat) for pat in patterns))
    if "role" in rule:
        wanted = set(_strings(rule["role"], "role", where))
        if roles is None:
            raise ValueError(f"{where} matches on role {rule['role']!r} but no roles were given; "
                             f"pass roles=model.param_roles()")

        def has_role(n, p):
            if n not in roles:
                raise ValueError(f"{where}: parameter {n!r} has no entry in roles; give roles for "
                                 f"these parameters (split ones: optim.split_roles(roles, splits))")
            return roles[n] in wanted
        tests.append(has_role)
    if "ndim" in rule:
        ndim_ok = _ndim_test(rule["ndim"], where)
        tests.append(lambda n, p: ndim_ok(p.ndim))
    return lambda n, p: all(test(n, p) for test in tests)


def param_groups(params, rules, roles=None, **defaults):
    """Parameter groups for an optimizer, chosen by ``rules``.

    ``params``: dict name -> array (or Parameter), (name, array) pairs, or Parameters
    (``model.parameters()``, named "0", "1", ... by position); Parameters stay Parameters in
    the groups, so that an optimizer built from them reads their ``.grad``. ``rules``: a list of
    dicts. Their matcher keys select parameters, all of a rule's matchers must hold:

    * ``name``: an fnmatch pattern or a list of them (any may match), e.g. ``"h.*.mlp.*"``;
    * ``role``: a role or a list of roles (see ``minigrad.nn.ROLES``); needs ``roles``,
      {name: role}, e.g. ``model.param_roles()``;
    * ``ndim``: an int (equal) or a comparison string such as ``">=2"`` or ``"<2"``.

    Every other key is a group option (lr, weight_decay, ...) passed through as is: the
    optimizer refuses options it does not know. Each parameter joins the group of the FIRST rule
    that matches it; the unmatched ones form a last group. Every group holds ``**defaults``
    overridden by its rule's options. Groups come out in rule order; empty ones are dropped.
    """
    items = _named_items(params)
    if not isinstance(rules, (list, tuple)):
        raise TypeError(f"param_groups: rules must be a list of dicts, got {type(rules).__name__}")
    selected = []
    for i, rule in enumerate(rules):
        where = f"param_groups: rule {i} {rule!r}"
        if not isinstance(rule, Mapping):
            raise TypeError(f"param_groups: rule {i} must be a dict, got {type(rule).__name__}")
        if "params" in rule:
            raise ValueError(f"{where}: a rule selects parameters by {', '.join(MATCHERS)}; "
                             f"it cannot list them under 'params'")
        options = {k: v for k, v in rule.items() if k not in MATCHERS}
        selected.append((_matcher(rule, where, roles), {"params": {}, **defaults, **options}))
    rest = {"params": {}, **defaults}
    for n, p in items:
        array = _as_array(n, p)
        group = next((g for matches, g in selected if matches(n, array)), rest)
        group["params"][n] = p
    return [g for g in [g for _, g in selected] + [rest] if g["params"]]


def param_groups_no_decay(params, weight_decay, **group_kw):
    """Two groups: parameters with ndim >= 2 (matrices, embeddings) get ``weight_decay``;
    1-D/0-D ones (biases, norm gains) get 0. Empty groups are dropped. Extra keys
    (e.g. ``lr``) go into both groups."""
    return param_groups(params, [{"ndim": ">=2", "weight_decay": weight_decay},
                                 {"ndim": "<2", "weight_decay": 0.0}], **group_kw)


def _parts(name, spec, rows):
    """Check that the parts of `name` tile its rows [0, rows) and return them."""
    try:
        parts = [(str(part), role, (int(start), int(stop))) for part, role, (start, stop) in spec]
    except (TypeError, ValueError):
        raise ValueError(f"split of {name!r}: expected ((part, role, (start, stop)), ...), got {spec!r}") from None
    ranges = sorted(r for _, _, r in parts)
    if any(start >= stop for start, stop in ranges):
        raise ValueError(f"split of {name!r}: every part needs start < stop, got {[r for _, _, r in parts]}")
    ends = [0] + [stop for _, stop in ranges]
    if rows is not None and ([start for start, _ in ranges] != ends[:-1] or ends[-1] != rows):
        raise ValueError(f"split of {name!r}: the row ranges {[r for _, _, r in parts]} must tile the "
                         f"{rows} rows of the array exactly (no gap, no overlap)")
    return parts


def split_matrices(arrays, splits):
    """``arrays`` with every fused matrix named in ``splits`` replaced by its parts, in place.

    ``arrays``: dict name -> ndarray (parameters or gradients; None, "no gradient", gives None
    parts). ``splits``: {name: ((part, role, (start, stop)), ...)} row ranges, e.g.
    ``model.param_splits()``. Part ``part`` of ``name`` is keyed ``"name:part"`` and is the view
    ``array[start:stop]``, no copy: an optimizer updating it updates the parameter. The ranges
    must tile the rows. Other entries pass through unchanged, in order."""
    out = {}
    for name, a in arrays.items():
        if name not in splits:
            out[name] = a
            continue
        if a is not None and not (isinstance(a, np.ndarray) and a.ndim >= 1):
            raise TypeError(f"split_matrices: {name!r} must be an ndarray with at least one axis "
                            f"(or None), got {type(a).__name__} {getattr(a, 'shape', '')}")
        for part, _, (start, stop) in _parts(name, splits[name], None if a is None else a.shape[0]):
            out[f"{name}:{part}"] = None if a is None else a[start:stop]
    return out


def split_roles(roles, splits):
    """``roles`` ({name: role}) with every split parameter replaced by its parts'
    ``"name:part": role`` (the roles that ``splits`` gives them), in order."""
    out = {}
    for name, role in roles.items():
        if name not in splits:
            out[name] = role
            continue
        for part, part_role, _ in _parts(name, splits[name], None):
            out[f"{name}:{part}"] = part_role
    return out
