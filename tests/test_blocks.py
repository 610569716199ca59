"""Parameter blocks, roles and q/k/v splits (minigrad.nn, models.gpt) and rule-based groups (optim)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import optim
from minigrad import nn
from models.gpt import GPT, GPTConfig

MICRO = dict(n_layer=2, n_head=2, n_embd=8, block_size=6, vocab_size=7)

GPT_LAYER_ROLES = {  # name inside a layer -> role, as GPT.param_blocks documents
    "ln_1.weight": "norm", "ln_1.bias": "norm", "ln_2.weight": "norm", "ln_2.bias": "norm",
    "attn.c_attn.weight": "attn_qkv", "attn.c_attn.bias": "bias",
    "attn.c_proj.weight": "attn_out", "attn.c_proj.bias": "bias",
    "mlp.c_fc.weight": "mlp_in", "mlp.c_fc.bias": "bias",
    "mlp.c_proj.weight": "mlp_out", "mlp.c_proj.bias": "bias",
}


def _gpt(**kw):
    return GPT(GPTConfig(**{**MICRO, **kw}), dtype=np.float64)


# ---------------------------------------------------------------- GPT blocks and roles
@pytest.mark.parametrize("n_layer", [1, 2, 11])  # 11: "h.1" must not collect "h.10"
def test_gpt_blocks_cover_every_parameter_once_in_order(n_layer):
    m = GPT(GPTConfig(n_layer=n_layer, n_head=1, n_embd=4, block_size=3, vocab_size=5))
    blocks = m.param_blocks()
    assert [b.name for b in blocks] == ["embeddings", *(f"h.{i}" for i in range(n_layer)), "head"]
    assert [n for b in blocks for n in b.params] == [n for n, _ in m.named_parameters()]
    assert blocks[0].params == ("wte.weight", "wpe.weight")
    assert blocks[-1].params == ("ln_f.weight", "ln_f.bias")
    for i, b in enumerate(blocks[1:-1]):
        assert all(n.startswith(f"h.{i}.") for n in b.params) and len(b.params) == 12


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_roles_are_the_documented_ones(bias):
    m = _gpt(bias=bias)
    roles = m.param_roles()
    want = {"wte.weight": "embedding", "wpe.weight": "embedding",
            "ln_f.weight": "norm", **({"ln_f.bias": "norm"} if bias else {})}
    for i in range(MICRO["n_layer"]):
        want.update({f"h.{i}.{k}": r for k, r in GPT_LAYER_ROLES.items() if bias or "bias" not in k})
    assert roles == want
    assert list(roles) == [n for n, _ in m.named_parameters()]
    assert set(roles.values()) <= set(nn.ROLES)


def test_gpt_splits_the_fused_qkv_weight_into_three_row_blocks():
    m = _gpt()
    C = MICRO["n_embd"]
    splits = m.param_splits()
    parts = (("q", "attn_q", (0, C)), ("k", "attn_k", (C, 2 * C)), ("v", "attn_v", (2 * C, 3 * C)))
    assert splits == {f"h.{i}.attn.c_attn.weight": parts for i in range(MICRO["n_layer"])}
    assert m.param_blocks()[1].splits == {"h.0.attn.c_attn.weight": parts}
    assert {r for _, r, _ in parts} <= set(nn.ROLES)


# ---------------------------------------------------------------- split_matrices / split_roles
def test_split_parts_are_views_that_write_through_and_others_pass_through():
    m = _gpt()
    C = MICRO["n_embd"]
    params = {n: p.data for n, p in m.named_parameters()}
    splits = m.param_splits()
    parts = optim.split_matrices(params, splits)
    fused = params["h.0.attn.c_attn.weight"]
    assert "h.0.attn.c_attn.weight" not in parts
    names = list(parts)
    i = names.index("h.0.attn.c_attn.weight:q")
    assert names[i:i + 3] == [f"h.0.attn.c_attn.weight:{p}" for p in "qkv"]
    assert names[:i] == list(params)[:list(params).index("h.0.attn.c_attn.weight")]
    for k, part in enumerate("qkv"):
        view = parts[f"h.0.attn.c_attn.weight:{part}"]
        assert view.shape == (C, C) and np.shares_memory(view, fused) and view.base is not None
        np.testing.assert_array_equal(view, fused[k * C:(k + 1) * C])
    parts["h.0.attn.c_attn.weight:k"][...] = 7.0  # an optimizer writing the part writes the parameter
    assert (m.h[0].attn.c_attn.weight.data[C:2 * C] == 7.0).all()
    assert (m.h[0].attn.c_attn.weight.data[:C] != 7.0).all()
    for n in params:
        if n not in splits:
            assert parts[n] is params[n]
    assert optim.split_roles(m.param_roles(), splits)["h.1.attn.c_attn.weight:v"] == "attn_v"
    assert list(optim.split_roles(m.param_roles(), splits)) == list(parts)


def test_split_gradients_and_a_missing_gradient():
    m = _gpt()
    splits = m.param_splits()
    grads = {n: np.ones_like(p.data) for n, p in m.named_parameters()}
    grads["h.1.attn.c_attn.weight"] = None  # a frozen parameter: no gradient, no parts either
    parts = optim.split_matrices(grads, splits)
    assert [parts[f"h.1.attn.c_attn.weight:{p}"] for p in "qkv"] == [None, None, None]
    assert np.shares_memory(parts["h.0.attn.c_attn.weight:v"], grads["h.0.attn.c_attn.weight"])


def test_an_optimizer_on_the_parts_updates_the_fused_weight():
    m = _gpt()
    params = {n: p.data for n, p in m.named_parameters()}
    splits = m.param_splits()
    before = params["h.0.attn.c_attn.weight"].copy()
    grads = {n: np.random.default_rng(0).standard_normal(p.shape) for n, p in params.items()}
    opt = optim.create("sgd", optim.split_matrices(params, splits), lr=0.5)
    opt.step(optim.split_matrices(grads, splits))
    np.testing.assert_array_equal(params["h.0.attn.c_attn.weight"],
                                  before - 0.5 * grads["h.0.attn.c_attn.weight"])


def test_split_specs_that_do_not_tile_the_rows_are_refused():
    w = {"w": np.zeros((6, 2))}
    with pytest.raises(ValueError, match=r"'w'.*tile the 6 rows"):
        optim.split_matrices(w, {"w": (("a", "attn_q", (0, 3)), ("b", "attn_k", (2, 6)))})
    with pytest.raises(ValueError, match="tile the 6 rows"):
        optim.split_matrices(w, {"w": (("a", "attn_q", (0, 3)),)})
    with pytest.raises(ValueError, match="start < stop"):
        optim.split_roles({"w": "attn_qkv"}, {"w": (("a", "attn_q", (3, 3)), ("b", "attn_k", (0, 6)))})
    with pytest.raises(ValueError, match=r"expected \(\(part, role, \(start, stop\)\)"):
        optim.split_matrices(w, {"w": ("a", "attn_q", 0, 6)})
    with pytest.raises(TypeError, match="'w' must be an ndarray"):
        optim.split_matrices({"w": np.float64(1.0)}, {"w": (("a", "attn_q", (0, 1)),)})


# ---------------------------------------------------------------- default blocks of any Module
def test_default_blocks_of_a_sequential_are_its_children_with_layer_roles():
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Dropout(0.1), nn.LayerNorm(4), nn.Linear(4, 2, bias=False, rng=1))
    blocks = m.param_blocks()
    assert [b.name for b in blocks] == ["0", "2", "3"]  # the Dropout has no parameters
    assert [b.params for b in blocks] == [("0.weight", "0.bias"), ("2.weight", "2.bias"), ("3.weight",)]
    assert m.param_roles() == {"0.weight": "linear", "0.bias": "bias", "2.weight": "norm",
                               "2.bias": "norm", "3.weight": "linear"}
    assert m.param_splits() == {}


def test_default_blocks_put_own_parameters_first_and_a_tied_one_once():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(np.ones(1))
            self.emb = nn.Embedding(5, 3, rng=0)
            self.head = nn.Linear(3, 5, bias=False, rng=0)
            self.head.weight = self.emb.weight  # tied: named (and given a role) by its first owner

    m = Model()
    blocks = m.param_blocks()
    assert [(b.name, b.params) for b in blocks] == [("", ("scale",)), ("emb", ("emb.weight",))]
    assert m.param_roles() == {"scale": "other", "emb.weight": "embedding"}


def test_param_block_checks_its_roles_and_splits():
    with pytest.raises(ValueError, match=r"'b'.*without a role: \['y'\]"):
        nn.ParamBlock("b", ("x", "y"), {"x": "norm"})
    with pytest.raises(ValueError, match=r"not in the block: \['z'\]"):
        nn.ParamBlock("b", ("x",), {"x": "norm", "z": "bias"})
    with pytest.raises(ValueError, match="listed twice"):
        nn.ParamBlock("b", ("x", "x"), {"x": "norm"})
    with pytest.raises(ValueError, match=r"splits name parameters outside the block: \['w'\]"):
        nn.ParamBlock("b", ("x",), {"x": "linear"}, {"w": (("a", "attn_q", (0, 1)),)})


# ---------------------------------------------------------------- param_groups
def test_param_groups_with_gpt_roles():
    m = _gpt()
    params = {n: p.data for n, p in m.named_parameters()}
    roles = m.param_roles()
    groups = optim.param_groups(params, [
        {"role": ["norm", "bias", "embedding"], "weight_decay": 0.0},
        {"role": "mlp_out", "lr": 1e-4},
    ], roles=roles, lr=1e-3, weight_decay=0.1)
    no_decay, mlp_out, rest = groups
    assert list(no_decay["params"]) == [n for n in params if roles[n] in ("norm", "bias", "embedding")]
    assert list(mlp_out["params"]) == ["h.0.mlp.c_proj.weight", "h.1.mlp.c_proj.weight"]
    assert set(rest["params"]) == {n for n in params if roles[n] in ("attn_qkv", "attn_out", "mlp_in")}
    assert {k: v for k, v in no_decay.items() if k != "params"} == {"lr": 1e-3, "weight_decay": 0.0}
    assert {k: v for k, v in mlp_out.items() if k != "params"} == {"lr": 1e-4, "weight_decay": 0.1}
    assert {k: v for k, v in rest.items() if k != "params"} == {"lr": 1e-3, "weight_decay": 0.1}
    assert all(g["params"][n] is params[n] for g in groups for n in g["params"])
    opt = optim.create("adamw", groups)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4, 1e-3]


def test_param_groups_first_matching_rule_wins_and_empty_groups_are_dropped():
    params = {"a.weight": np.ones((2, 2)), "a.bias": np.ones(2), "b.weight": np.ones((2, 2)), "c": np.ones(())}
    groups = optim.param_groups(params, [
        {"name": ["a.*", "nothing"], "ndim": ">=2", "lr": 1.0},
        {"name": "a.*", "lr": 2.0},
        {"name": "zzz*", "lr": 3.0},  # matches nothing: dropped
        {"ndim": 0, "lr": 4.0},
    ])
    assert [(list(g["params"]), g["lr"]) for g in groups[:3]] == [
        (["a.weight"], 1.0), (["a.bias"], 2.0), (["c"], 4.0)]
    assert list(groups[3]["params"]) == ["b.weight"] and set(groups[3]) == {"params"}
    everything = optim.param_groups(params, [{"lr": 5.0}])  # a rule without matchers takes all
    assert len(everything) == 1 and list(everything[0]["params"]) == list(params)
    assert optim.param_groups(params, [{"momentum_typo": 1}])[0]["momentum_typo"] == 1  # the optimizer refuses it


def test_param_groups_split_parts_with_their_roles():
    m = _gpt()
    splits = m.param_splits()
    parts = optim.split_matrices({n: p.data for n, p in m.named_parameters()}, splits)
    roles = optim.split_roles(m.param_roles(), splits)
    q, rest = optim.param_groups(parts, [{"role": "attn_q", "lr": 0.1}], roles=roles)
    assert list(q["params"]) == ["h.0.attn.c_attn.weight:q", "h.1.attn.c_attn.weight:q"]
    with pytest.raises(ValueError, match="'h.0.attn.c_attn.weight:q' has no entry in roles.*split_roles"):
        optim.param_groups(parts, [{"role": "attn_q"}], roles=m.param_roles())


def test_param_groups_bad_rules_are_refused_with_the_fix():
    params = {"w": np.ones((2, 2))}
    with pytest.raises(ValueError, match=r"rule 0 .*role.*no roles were given.*param_roles\(\)"):
        optim.param_groups(params, [{"role": "norm", "weight_decay": 0.0}])
    with pytest.raises(ValueError, match=r"rule 1 .*ndim must be an int or a comparison"):
        optim.param_groups(params, [{"ndim": 2}, {"ndim": "=>2"}])
    with pytest.raises(ValueError, match="cannot list them under 'params'"):
        optim.param_groups(params, [{"params": {"w": params["w"]}}])
    with pytest.raises(ValueError, match="name must be a string or a non-empty list"):
        optim.param_groups(params, [{"name": []}])
    with pytest.raises(TypeError, match="rule 0 must be a dict"):
        optim.param_groups(params, ["w"])
    with pytest.raises(TypeError, match="rules must be a list"):
        optim.param_groups(params, {"name": "w"})


def _old_param_groups_no_decay(params, weight_decay, **group_kw):
    """The two-group split as it was written before param_groups existed."""
    decay = {n: p for n, p in params.items() if p.ndim >= 2}
    no_decay = {n: p for n, p in params.items() if p.ndim < 2}
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, **group_kw})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **group_kw})
    return groups


@given(ndims=st.lists(st.integers(0, 3), min_size=1, max_size=8),
       wd=st.floats(0, 1), extra=st.dictionaries(st.sampled_from(["lr", "eps"]), st.floats(0, 1)))
def test_param_groups_no_decay_gives_the_same_groups_in_the_same_order(ndims, wd, extra):
    params = {f"p{i}": np.zeros((2,) * d) for i, d in enumerate(ndims)}
    new = optim.param_groups_no_decay(params, wd, **extra)
    old = _old_param_groups_no_decay(params, wd, **extra)
    assert [list(g["params"]) for g in new] == [list(g["params"]) for g in old]
    assert [{k: v for k, v in g.items() if k != "params"} for g in new] == \
           [{k: v for k, v in g.items() if k != "params"} for g in old]
    assert all(g["params"][n] is params[n] for g in new for n in g["params"])


def test_name_patterns_are_fnmatch_and_case_sensitive():
    params = {"h.0.mlp.c_fc.weight": np.ones((2, 2)), "H.0.mlp.c_fc.weight": np.ones((2, 2))}
    (hit, _) = optim.param_groups(params, [{"name": "h.?.mlp.*", "lr": 1.0}])
    assert list(hit["params"]) == ["h.0.mlp.c_fc.weight"]
