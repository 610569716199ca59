"""minigrad.lora: LoRA and DoRA adapters on any Module's Linear layers.

Properties: the adapted model starts as the base model (B = 0; DoRA's m = ‖W0‖); merging is
exact (float64, 1e-12) and so is unmerging; gradients are right (gradcheck of the adapted layer
as a whole, since every op in it is an existing primitive) and DoRA's detached norm gives the
gradients of a constant norm; training changes the adapters only, and an AdamW's state is
2 · 4 bytes per adapter number; targets select the layers they say; bad input is one error.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minigrad as mg
import optim
from minigrad import lora, nn
from minigrad.lora import LoRALinear, apply_lora, merge_lora, unmerge_lora
from models.gpt import GPT, GPTConfig
from models.training import Trainer, lm_loss, load_checkpoint

CFG = dict(n_layer=2, n_head=2, n_embd=8, block_size=6, vocab_size=11)
MATRICES = ["role:attn_qkv", "role:attn_out", "role:mlp_in", "role:mlp_out"]


def gpt(dtype=np.float64, seed=0):
    return GPT(GPTConfig(**CFG), dtype=dtype, seed=seed)


def tokens(seed=0, B=3, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, CFG["vocab_size"], (B, T)), rng.integers(0, CFG["vocab_size"], (B, T))


def perturb(model, seed=1, scale=0.3):
    """Give every adapter random nonzero values (B = 0 would hide most mistakes)."""
    rng = np.random.default_rng(seed)
    for layer in lora.lora_layers(model).values():
        for p in layer.adapter_parameters():
            p.data[...] += scale * rng.standard_normal(p.shape)


def logits(model, x):
    with mg.no_grad():
        return model(x)[0].data.copy()


VARIANTS = [dict(dora=False), dict(dora=True), dict(dora=True, detach_norm=False)]
IDS = ["lora", "dora", "dora-full-norm"]


# ----------------------------------------------------------------------------- the start
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("init", lora.INITS)
def test_the_adapted_model_starts_as_the_base_model(variant, init):
    model = gpt()
    x, _ = tokens()
    before = logits(model, x)
    apply_lora(model, "*", r=3, alpha=5.0, init=init, **variant)
    for layer in lora.lora_layers(model).values():
        assert np.all(layer.lora_B.data == 0) and np.any(layer.lora_A.data != 0)
        if layer.dora:
            np.testing.assert_allclose(layer.lora_magnitude.data, np.linalg.norm(layer.weight.data, axis=1),
                                       rtol=1e-15)
    np.testing.assert_allclose(logits(model, x), before, rtol=0, atol=1e-13)


def test_at_init_the_gradient_of_A_is_zero_and_that_of_B_is_not():
    model = gpt()
    apply_lora(model, MATRICES, r=2)
    x, y = tokens()
    model(x, y)[1].backward()
    for name, layer in lora.lora_layers(model).items():
        assert np.all(layer.lora_A.grad == 0), name          # dL/dA = s·Bᵀ(...) and B = 0
        assert np.abs(layer.lora_B.grad).max() > 1e-8, name
        assert layer.weight.grad is None and layer.bias.grad is None


def test_kaiming_and_gaussian_inits_have_the_stated_spread():
    rng_draws = {}
    for init in lora.INITS:
        layer = LoRALinear(nn.Linear(400, 3, rng=0), r=50, alpha=1.0, init=init, rng=0)
        rng_draws[init] = layer.lora_A.data
    a = rng_draws["kaiming"]
    assert np.abs(a).max() <= 1 / np.sqrt(400) and abs(a.std() - 1 / np.sqrt(3 * 400)) < 0.02 / np.sqrt(400)
    assert abs(rng_draws["gaussian"].std() - 1 / 50) < 0.001


# ----------------------------------------------------------------------------- merging
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_merged_and_unmerged_outputs_are_equal_and_unmerging_gives_W0_back(variant):
    model = gpt()
    x, _ = tokens()
    apply_lora(model, MATRICES, r=3, alpha=6.0, **variant)
    perturb(model)
    base = {n: m.weight.data.copy() for n, m in lora.lora_layers(model).items()}
    adapted = logits(model, x)
    assert np.abs(adapted - logits(gpt(), x)).max() > 1e-3        # the adapters do something
    merge_lora(model)
    assert all(m.merged for m in lora.lora_layers(model).values())
    np.testing.assert_allclose(logits(model, x), adapted, rtol=0, atol=1e-12)
    if variant["dora"]:                                            # merged rows have length m
        for m in lora.lora_layers(model).values():
            np.testing.assert_allclose(np.linalg.norm(m.weight.data, axis=1), np.abs(m.lora_magnitude.data),
                                       rtol=1e-13)
    unmerge_lora(model)
    for n, m in lora.lora_layers(model).items():
        np.testing.assert_allclose(m.weight.data, base[n], rtol=0, atol=1e-12)
    np.testing.assert_allclose(logits(model, x), adapted, rtol=0, atol=1e-12)


def test_merging_makes_the_forward_a_plain_linear_and_refuses_to_train():
    layer = LoRALinear(nn.Linear(5, 4, dtype=np.float64, rng=0), r=2, alpha=2.0, rng=1)
    layer.requires_grad_(False)
    for p in layer.adapter_parameters():
        p.requires_grad_(True)
    layer.lora_B.data[...] = 1.0
    x = mg.Tensor(np.random.default_rng(2).standard_normal((3, 5)))
    layer.merge()
    with mg.no_grad():                             # inference is what merging is for
        np.testing.assert_array_equal(layer(x).data, x.data @ layer.weight.data.T + layer.bias.data)
    with pytest.raises(RuntimeError, match="merged into the weight.*unmerge_lora"):
        layer(x)                                   # grad mode on and the adapter trainable


def test_unload_puts_plain_linears_back_merged_or_not():
    x, _ = tokens()
    for merge in (True, False):
        model = gpt()
        names = apply_lora(model, "*.c_proj", r=2, dora=True)
        perturb(model)
        adapted = logits(model, x)
        assert lora.unload_lora(model, merge=merge) == names
        assert not lora.lora_layers(model)
        modules = dict(model.named_modules())
        assert all(type(modules[n]) is nn.Linear for n in names)
        assert [n for n, _ in model.named_parameters()] == [n for n, _ in gpt().named_parameters()]
        want = adapted if merge else logits(gpt(), x)
        np.testing.assert_allclose(logits(model, x), want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- gradients
@st.composite
def layer_case(draw):
    n_in, n_out, r = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    return n_in, n_out, r, tuple(lead), draw(st.booleans()), draw(st.integers(0, 2**16))


def make_layer(n_in, n_out, r, bias, seed, **options):
    rng = np.random.default_rng(seed)
    layer = LoRALinear(nn.Linear(n_in, n_out, bias=bias, dtype=np.float64, rng=rng), r, 3.0, rng=rng, **options)
    for p in layer.parameters():
        p.requires_grad_(True)                 # the base too: every path of the graph is checked
    layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape)
    if layer.dora:
        layer.lora_magnitude.data[...] *= rng.uniform(0.5, 1.5, n_out)
    return layer


@given(layer_case(), st.sampled_from(["lora", "dora-full-norm"]))
def test_gradcheck_of_the_adapted_layer(case, kind):
    n_in, n_out, r, lead, bias, seed = case
    layer = make_layer(n_in, n_out, r, bias, seed, dora=kind != "lora", detach_norm=False)
    x = mg.Tensor(np.random.default_rng(seed + 1).standard_normal(lead + (n_in,)), requires_grad=True)
    mg.gradcheck(lambda x, *params: layer(x), [x, *layer.parameters()])


@given(layer_case(), st.sampled_from(["lora", "dora-full-norm"]), st.sampled_from([0.2, 0.5, 0.8]),
       st.integers(0, 2**16))
def test_gradcheck_of_the_adapted_layer_in_training_with_dropout(case, kind, p, mask_seed):
    """Training mode with dropout > 0, where DoRA takes its own branch (only the dropped input is
    rescaled): an int dropout_rng draws the same mask at every call, so the layer is a fixed
    function that gradcheck can difference, x and every parameter included."""
    n_in, n_out, r, lead, bias, seed = case
    layer = make_layer(n_in, n_out, r, bias, seed, dora=kind != "lora", detach_norm=False,
                       dropout=p, dropout_rng=mask_seed)
    layer.train()
    x = mg.Tensor(np.random.default_rng(seed + 1).standard_normal(lead + (n_in,)), requires_grad=True)
    keep = mg.functional.dropout(mg.Tensor(np.ones(x.shape)), p, True, mask_seed).data  # the layer's mask
    assume(keep.any())                  # (all dropped: A and B get no gradient)
    np.testing.assert_array_equal(layer(x).data, layer(x).data)       # one mask, every call
    mg.gradcheck(lambda x, *params: layer(x), [x, *layer.parameters()])
    # the training branch ran: where the mask drops an entry, the output is not eval's
    if not keep.all():
        train_out = layer(x).data
        layer.eval()
        assert np.abs(train_out - layer(x).data).max() > 1e-9


def dora_reference(x, w, b, a, bb, m, s, norm):
    """y = (x W0ᵀ + s·(x Aᵀ) Bᵀ) · m / norm + b, written out; `norm` is what the caller passes."""
    y = (x @ w.T + (x @ a.T) @ bb.T * s) * (m / norm)
    return y if b is None else y + b


@given(layer_case())
def test_dora_with_a_detached_norm_has_the_gradients_of_a_constant_norm(case):
    n_in, n_out, r, lead, bias, seed = case
    layer = make_layer(n_in, n_out, r, bias, seed, dora=True, detach_norm=True)
    full = make_layer(n_in, n_out, r, bias, seed, dora=True, detach_norm=False)
    x = mg.Tensor(np.random.default_rng(seed + 1).standard_normal(lead + (n_in,)), requires_grad=True)
    inputs = [x, layer.weight, layer.lora_A, layer.lora_B, layer.lora_magnitude]
    norm = mg.Tensor(layer.weight_norm().data.copy())          # frozen at the current point
    assert not layer.weight_norm().requires_grad and full.weight_norm().requires_grad

    def frozen(x, w, a, bb, m):
        return dora_reference(x, w, layer.bias, a, bb, m, layer.scaling, norm)

    def grads_of(fn, tensors, v):
        for t in tensors:
            t.grad = None
        fn().backward(v)
        return [t.grad.copy() for t in tensors]

    # finite differences of the function with the norm held fixed are what detaching computes
    mg.gradcheck(frozen, inputs)
    v = np.random.default_rng(seed + 2).standard_normal(lead + (n_out,))
    for got, want in zip(grads_of(lambda: layer(x), inputs, v), grads_of(lambda: frozen(*inputs), inputs, v)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the same forward as the full version, different gradients of A and B (the norm's path)
    np.testing.assert_allclose(layer(x).data, full(x).data, rtol=1e-13, atol=1e-13)
    detached = grads_of(lambda: layer(x), [layer.lora_A, layer.lora_B], v)
    through = grads_of(lambda: full(x), [full.lora_A, full.lora_B], v)
    assert max(np.abs(d - t).max() for d, t in zip(detached, through)) > 1e-9


def test_dropout_acts_on_the_adapter_input_only_and_only_in_training():
    layer = LoRALinear(nn.Linear(6, 4, dtype=np.float64, rng=0), r=2, alpha=2.0, dropout=0.5, rng=1,
                       dropout_rng=np.random.default_rng(3))
    layer.lora_B.data[...] = 1.0
    x = mg.Tensor(np.random.default_rng(2).standard_normal((5, 6)))
    base = x.data @ layer.weight.data.T + layer.bias.data
    keep = np.random.default_rng(3).random(x.shape) >= 0.5           # the mask the layer will draw
    want = base + layer.scaling * ((x.data * keep / 0.5) @ layer.lora_A.data.T) @ layer.lora_B.data.T
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-13)
    layer.eval()
    np.testing.assert_allclose(layer(x).data, base + x.data @ layer.delta_weight().T, rtol=1e-13)


def test_dora_with_dropout_is_the_official_codes_formula():
    """NVlabs/DoRA and PEFT: y = x W0ᵀ + (m/‖V‖ - 1)·drop(x) W0ᵀ + (m/‖V‖)·s·drop(x) Aᵀ Bᵀ + b;
    without dropout (eval) it is (m/‖V‖)·x Vᵀ + b."""
    layer = LoRALinear(nn.Linear(6, 4, dtype=np.float64, rng=0), r=2, alpha=2.0, dropout=0.5, rng=1,
                       dora=True, dropout_rng=np.random.default_rng(3))
    layer.lora_B.data[...] = np.random.default_rng(4).standard_normal(layer.lora_B.shape)
    layer.lora_magnitude.data *= 1.5
    x = mg.Tensor(np.random.default_rng(2).standard_normal((5, 6)))
    W0, b = layer.weight.data, layer.bias.data
    V = W0 + layer.delta_weight()
    rescale = layer.lora_magnitude.data / np.linalg.norm(V, axis=1)
    dropped = x.data * (np.random.default_rng(3).random(x.shape) >= 0.5) / 0.5   # the layer's mask
    want = (x.data @ W0.T + (rescale - 1) * (dropped @ W0.T)
            + rescale * (layer.scaling * dropped @ layer.lora_A.data.T @ layer.lora_B.data.T) + b)
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-13)
    layer.eval()
    np.testing.assert_allclose(layer(x).data, rescale * (x.data @ V.T) + b, rtol=1e-13)


def test_activation_checkpointing_replays_the_adapters_dropout_masks():
    grads = []
    for checkpoint in (False, True):
        model = GPT(GPTConfig(**CFG, checkpoint=checkpoint), dtype=np.float64)
        apply_lora(model, "*", r=2, dropout=0.3, seed=4)
        perturb(model)
        x, y = tokens()
        model(x, y)[1].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        np.testing.assert_allclose(grads[1][n], grads[0][n], rtol=1e-12, atol=1e-14, err_msg=n)


# ----------------------------------------------------------------------------- training
def train(model, steps=4, lr=1e-2):
    opt = optim.create("adamw", optim.param_groups_no_decay({n: p.data for n, p in model.named_parameters()}, 0.1),
                       lr=lr)
    batches = [tokens(s) for s in range(steps)]
    trainer = Trainer(model, lm_loss, opt, lambda r: batches[trainer.step], steps=steps, progress=False,
                      log_every=0)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("variant", VARIANTS[:2], ids=IDS[:2])
def test_training_changes_the_adapters_only_and_adamw_keeps_state_for_them_alone(variant):
    model = gpt(dtype=np.float32)
    names = apply_lora(model, MATRICES, r=3, **variant)
    before = model.state_dict()
    trainer = train(model)
    after = model.state_dict()
    adapters = set(lora.lora_state_dict(model))
    assert adapters and adapters == {n for n, p in model.named_parameters() if p.requires_grad}
    for n in before:
        if n in adapters:
            assert np.any(after[n] != before[n]), n
        else:
            np.testing.assert_array_equal(after[n], before[n], err_msg=n)    # bit for bit
    assert set(trainer.optimizer.state) == adapters
    # AdamW: two float32 moments per adapter number, r·(in + out) per layer (+ out for DoRA)
    layers = [lora.lora_layers(model)[n] for n in names]
    numbers = sum(3 * (m.in_features + m.out_features) + (m.out_features if m.dora else 0) for m in layers)
    assert trainer.peak_state_bytes == trainer.optimizer.state_bytes() == 2 * 4 * numbers
    assert numbers == sum(a.size for a in lora.lora_state_dict(model).values())


def test_a_trainer_checkpoint_of_an_adapted_model_resumes_bit_for_bit(tmp_path):
    def trainer_for(steps):
        model = gpt(dtype=np.float32)
        apply_lora(model, MATRICES, r=2, dropout=0.2, dora=True, seed=3)
        opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=1e-2)
        return Trainer(model, lm_loss, opt, lambda rng: tokens(int(rng.integers(1000))), steps=steps,
                       progress=False, log_every=0)

    straight = trainer_for(4)
    straight.fit()
    first = trainer_for(4)
    first.horizon = 2
    first.fit()
    first.save(str(tmp_path))
    resumed = trainer_for(4)          # the same apply_lora, then the checkpoint: weights, state, RNGs
    resumed.restore(load_checkpoint(str(tmp_path)), target=4)
    resumed.fit()
    assert resumed.history["train_loss"] == straight.history["train_loss"]
    for (n, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)


def test_the_adapter_state_dict_alone_restores_the_fine_tuned_model():
    model = gpt()
    apply_lora(model, MATRICES, r=2, dora=True)
    perturb(model)
    x, _ = tokens()
    tuned = logits(model, x)
    sd = lora.lora_state_dict(model)
    assert all(".lora_" in k for k in sd) and list(sd) == [n for n, _ in model.named_parameters() if ".lora_" in n]
    fresh = gpt()
    apply_lora(fresh, MATRICES, r=2, dora=True)
    lora.load_lora_state_dict(fresh, sd)
    np.testing.assert_array_equal(logits(fresh, x), tuned)


def test_a_gpt_with_adapters_keeps_its_blocks_roles_and_splits():
    model = gpt()
    plain_roles, plain_splits = model.param_roles(), model.param_splits()
    apply_lora(model, MATRICES, r=2, dora=True)
    roles = model.param_roles()
    assert {n: r for n, r in roles.items() if n in plain_roles} == plain_roles
    assert {r for n, r in roles.items() if n not in plain_roles} == {"lora_A", "lora_B", "lora_magnitude"}
    assert set(roles.values()) <= set(nn.ROLES)
    assert model.param_splits() == plain_splits
    assert [n for n, _ in model.named_parameters() if ".lora_" not in n] == list(plain_roles)


# ----------------------------------------------------------------------------- targets
LINEARS = [f"h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


@pytest.mark.parametrize("targets, chosen", [
    ("*", LINEARS),
    ("h.*.attn.c_attn", ["h.0.attn.c_attn", "h.1.attn.c_attn"]),
    ("*.c_proj", ["h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj"]),
    (r"re:h\.1\.mlp\..*", ["h.1.mlp.c_fc", "h.1.mlp.c_proj"]),
    ("role:attn_qkv", ["h.0.attn.c_attn", "h.1.attn.c_attn"]),
    ("role:mlp_out", ["h.0.mlp.c_proj", "h.1.mlp.c_proj"]),
    (["role:attn_out", "h.0.mlp.c_fc", "h.0.*"], ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc",
                                                    "h.0.mlp.c_proj", "h.1.attn.c_proj"]),
])
def test_targets_by_pattern_and_by_role_select_the_intended_layers(targets, chosen):
    model = gpt()
    assert apply_lora(model, targets, r=1) == chosen
    assert list(lora.lora_layers(model)) == chosen
    trainable = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(chosen)


def test_targets_on_a_plain_module_and_the_role_linear():
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Sequential(nn.Linear(4, 4, rng=1), nn.Linear(4, 2, rng=2)))
    names = [n for n, _ in model.named_parameters()]
    assert apply_lora(model, ["role:linear"], r=2) == ["0", "2.0", "2.1"]
    assert [n for n, _ in model.named_parameters() if ".lora_" not in n] == names
    model2 = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Sequential(nn.Linear(4, 4, rng=1)))
    assert apply_lora(model2, "1.*", r=1) == ["1.0"]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, error, says", [
    (dict(targets="*", r=0), ValueError, r"r \(the adapter's rank\) must be an integer >= 1, got 0"),
    (dict(targets="*", r=2.5), ValueError, "must be an integer >= 1, got 2.5"),
    (dict(targets="*", alpha=0), ValueError, "alpha must be a finite number > 0"),
    (dict(targets="*", dropout=1.0), ValueError, r"dropout must be in \[0, 1\), got 1.0"),
    (dict(targets="*", init="xavier"), ValueError, "init must be one of"),
    (dict(targets="h.*.attn.q_proj"), ValueError, "target 'h.\\*.attn.q_proj' matches no Linear layer; the Linear "
                                                  "layers are h.0.attn.c_attn"),
    (dict(targets="h.0.attn"), ValueError, "matches h.0.attn \\(CausalSelfAttention\\), which are not Linear"),
    (dict(targets="re:h\\.(0"), ValueError, "not a valid regular expression"),
    (dict(targets="role:attn_q"), ValueError, "role 'attn_q' names rows of the fused weight "
                                              "h.0.attn.c_attn.weight .*target 'role:attn_qkv'"),
    (dict(targets="role:embedding"), ValueError, "no Linear layer's weight has role 'embedding'"),
    (dict(targets=[]), ValueError, "targets is empty"),
    (dict(targets=["*", 3]), TypeError, "each target must be a non-empty string, got 3"),
])
def test_bad_options_are_one_clear_error_and_change_nothing(kwargs, error, says):
    model = gpt()
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(error, match=says):
        apply_lora(model, **kwargs)
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert all(p.requires_grad for p in model.parameters())


def test_applying_twice_merging_twice_and_loading_misfits_are_refused():
    model = gpt()
    apply_lora(model, "*.c_fc", r=2)
    with pytest.raises(ValueError, match="already has adapters on h.0.mlp.c_fc, h.1.mlp.c_fc; apply once"):
        apply_lora(model, "*.c_proj", r=2)
    with pytest.raises(RuntimeError, match="not merged; merge_lora"):
        unmerge_lora(model)
    merge_lora(model)
    with pytest.raises(RuntimeError, match="merged already; unmerge_lora"):
        merge_lora(model)
    unmerge_lora(model)
    sd = lora.lora_state_dict(model)
    with pytest.raises(ValueError, match=r"missing keys \['h.1.mlp.c_fc.lora_B'\]"):
        lora.load_lora_state_dict(model, {k: v for k, v in sd.items() if k != "h.1.mlp.c_fc.lora_B"})
    bigger = gpt()
    apply_lora(bigger, "*.c_fc", r=3)
    with pytest.raises(ValueError, match=r"h.0.mlp.c_fc.lora_A has shape \(3, 8\) in the state dict but \(2, 8\)"):
        lora.load_lora_state_dict(model, lora.lora_state_dict(bigger))
    np.testing.assert_array_equal(lora.lora_state_dict(model)["h.0.mlp.c_fc.lora_A"], sd["h.0.mlp.c_fc.lora_A"])
    with pytest.raises(ValueError, match="no LoRA adapters; apply_lora"):
        merge_lora(gpt())
    with pytest.raises(ValueError, match="is itself a Linear layer"):
        apply_lora(nn.Linear(2, 2), "*")


def test_dora_refuses_a_weight_with_a_zero_row():
    layer = nn.Linear(3, 2, dtype=np.float64, rng=0)
    layer.weight.data[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] of the \(2, 3\) weight are zero"):
        LoRALinear(layer, r=1, alpha=1.0, dora=True)
