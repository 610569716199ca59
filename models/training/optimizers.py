"""Build any registered optimizer for a GPT the way the training CLIs do.

``build_optimizer`` asks the optimizer what it takes (``optim.accepts``) and passes what the
model and the run can give: weight decay on 2-D parameters only (nanoGPT's groups), betas
(0.9, beta2) (to the inner optimizer of a method that runs one, GaLore's AdamW, unless
``extra``'s ``inner_kwargs`` sets them), the run's seed (zeroth-order noise, layer sampling,
random subspaces), the model's blocks, roles, fused-matrix splits and head count (layer-wise,
subspace and per-head methods; the heads its weights hold, ``model.heads_held()``, when it says:
a tensor-parallel shard holds n_head / t), then ``extra`` on top.
"""
from __future__ import annotations

import optim

__all__ = ["build_optimizer", "UnknownOptionError"]


class UnknownOptionError(ValueError):
    """An ``extra`` option the optimizer does not take; ``key`` names it."""

    def __init__(self, name, key, takes):
        self.key = key
        super().__init__(f"{key}: optimizer {name!r} takes none such; it takes "
                         f"{', '.join(sorted(takes - {'params'}))}")


def build_optimizer(name, model, lr, weight_decay=0.0, beta2=0.999, seed=0, extra=None):
    """``optim.create(name, ...)`` on ``model``'s parameter arrays (see the module docstring).

    Raises :class:`UnknownOptionError` for a key of ``extra`` the optimizer does not take, and
    the optimizer's own ValueError/TypeError for a value it refuses."""
    params = {n: p.data for n, p in model.named_parameters()}
    takes = optim.accepts(name)
    unknown = sorted(set(extra or {}) - takes)
    if unknown:
        raise UnknownOptionError(name, unknown[0], takes)
    # the heads the model's q and k weights hold: a tensor-parallel shard's are n_head / t
    heads = getattr(model, "heads_held", lambda: (model.config.n_head, model.config.kv_heads))
    given = {"betas": (0.9, beta2), "seed": seed,
             "blocks": lambda: {b.name: list(b.params) for b in model.param_blocks()},
             "roles": model.param_roles, "splits": model.param_splits, "n_head": lambda: heads()[0],
             "n_kv_head": lambda: heads()[1]}
    kw = {k: (v() if callable(v) else v) for k, v in given.items() if k in takes}
    kw.update(extra or {})
    if "inner_kwargs" in takes:
        inner = kw.get("inner", optim.option_default(name, "inner"))
        if isinstance(inner, str) and "betas" in optim.accepts(inner):
            kw["inner_kwargs"] = {"betas": (0.9, beta2), **(kw.get("inner_kwargs") or {})}
    groups = optim.param_groups_no_decay(params, weight_decay) if "weight_decay" in takes else params
    return optim.create(name, groups, lr=lr, **kw)
