"""Fused matrices seen as several matrices, on name-keyed arrays.

Splits come from the model as plain data, so optim imports no model::

    splits = model.param_splits()            # {"h.0.attn.c_attn.weight": (("q", "attn_q", (0, C)), ...)}
    parts = optim.split_matrices(params, splits)   # "h.0.attn.c_attn.weight:q" -> a view, no copy
    part_roles = optim.split_roles(model.param_roles(), splits)  # "h.0.attn.c_attn.weight:q" -> "attn_q"

The role names are listed, with what they mean, in ``minigrad.nn.ROLES``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["split_matrices", "split_roles"]


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
