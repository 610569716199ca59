"""Frozen parameters (requires_grad_(False)), as in PyTorch: no gradient, no update, no state."""
import numpy as np
import pytest

import minigrad as mg
import optim
from minigrad import autograd, nn
from models.gpt import GPT, GPTConfig

CFG = dict(n_layer=2, n_head=2, n_embd=8, block_size=6, vocab_size=7)


def _batch(seed=0, B=3, T=5):
    rng = np.random.default_rng(seed)
    return rng.integers(0, CFG["vocab_size"], (B, T)), rng.integers(0, CFG["vocab_size"], (B, T))


def test_requires_grad_switches_in_place_and_refuses_what_cannot_hold_a_gradient():
    t = mg.Tensor(np.ones(3))
    assert t.requires_grad_() is t and t.requires_grad
    assert t.requires_grad_(False) is t and not t.requires_grad
    with pytest.raises(TypeError, match="requires_grad_.*int64"):
        mg.Tensor(np.arange(3)).requires_grad_()
    mg.Tensor(np.arange(3)).requires_grad_(False)  # nothing to refuse
    y = mg.Tensor(np.ones(3), requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="not a leaf.*detach"):
        y.requires_grad_(False)


def test_frozen_linear_weight_gets_no_gradient_and_its_product_is_not_computed():
    lin = nn.Linear(3, 2, dtype=np.float64, rng=0)
    assert lin.weight.requires_grad_(False) is lin.weight
    x = mg.Tensor(np.random.default_rng(1).standard_normal((4, 3)), requires_grad=True)
    seen = []

    def record(event, ctx, payload):
        if event == "backward" and ctx.name == "Linear":
            seen.append(payload)

    autograd.add_op_listener(record)
    try:
        lin(x).sum().backward()
    finally:
        autograd.remove_op_listener(record)
    assert lin.weight.grad is None
    np.testing.assert_array_equal(lin.bias.grad, np.full(2, 4.0))
    np.testing.assert_allclose(x.grad, np.ones((4, 2)) @ lin.weight.data)
    ((gx, gw, gb),) = seen
    assert gw is None and gx is not None and gb is not None


def test_frozen_parameters_stay_parameters_listed_and_saved():
    m = nn.Sequential(nn.Linear(3, 4, rng=0), nn.LayerNorm(4), nn.Linear(4, 2, rng=1))
    names = [n for n, _ in m.named_parameters()]
    assert m[0].requires_grad_(False) is m[0]
    assert [n for n, _ in m.named_parameters()] == names
    assert list(m.state_dict()) == names
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable == names[2:]
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    out = m(np.ones((2, 3), dtype=np.float32))
    assert not out.requires_grad and out._ctx is None  # nothing to differentiate: no graph
    assert m.requires_grad_() is m and all(p.requires_grad for p in m.parameters())
    assert not nn.Parameter(np.ones(2), requires_grad=False).requires_grad


@pytest.mark.parametrize("checkpoint", [False, True])
def test_frozen_gpt_layer_gets_none_and_the_others_the_same_gradients(checkpoint):
    idx, tgt = _batch()
    full = GPT(GPTConfig(**CFG, checkpoint=checkpoint), dtype=np.float64)
    part = GPT(GPTConfig(**CFG, checkpoint=checkpoint), dtype=np.float64)
    part.h[0].requires_grad_(False)
    loss_full, g_full = full.loss_and_grads(idx, tgt)
    loss_part, g_part = part.loss_and_grads(idx, tgt)
    assert loss_part == loss_full
    assert list(g_part) == list(g_full)  # every parameter is listed, frozen ones too
    params = dict(part.named_parameters())
    for n, g in g_part.items():
        if n.startswith("h.0."):
            assert g is None and params[n].grad is None, n
        else:
            np.testing.assert_array_equal(g, g_full[n], err_msg=n)


def test_freezing_the_token_embedding_freezes_the_tied_head():
    idx, tgt = _batch()
    m = GPT(GPTConfig(**CFG), dtype=np.float64)
    m.wte.requires_grad_(False)
    _, grads = m.loss_and_grads(idx, tgt)
    assert grads["wte.weight"] is None
    assert all(g is not None for n, g in grads.items() if n != "wte.weight")


def _adamw_steps(model, opt, n, seed):
    for s in range(n):
        _, grads = model.loss_and_grads(*_batch(seed + s))
        opt.step(grads)


def test_adamw_leaves_frozen_layer_bit_identical_keeps_no_state_and_trains_it_after_unfreezing():
    m = GPT(GPTConfig(**CFG))
    params = dict(m.named_parameters())
    opt = optim.create("adamw", {n: p.data for n, p in params.items()}, lr=1e-2, weight_decay=0.1)
    m.h[1].requires_grad_(False)
    frozen = [n for n in params if n.startswith("h.1.")]
    trainable = [n for n in params if n not in frozen]
    before = {n: p.data.copy() for n, p in params.items()}

    _adamw_steps(m, opt, 3, seed=0)
    for n in frozen:  # weight decay would move them too: they were not touched at all
        assert np.array_equal(params[n].data, before[n]), n
    for n in trainable:
        assert not np.array_equal(params[n].data, before[n]), n
    assert sorted(opt.state) == sorted(trainable)
    # AdamW keeps two moments per trainable parameter, nothing for the frozen ones
    assert opt.state_bytes() == sum(2 * params[n].data.nbytes for n in trainable)

    m.h[1].requires_grad_(True)  # same model, same optimizer: the trainable set grows
    _adamw_steps(m, opt, 1, seed=3)
    for n in frozen:
        assert not np.array_equal(params[n].data, before[n]), n
    assert sorted(opt.state) == sorted(params)
    assert opt.state_bytes() == sum(2 * p.data.nbytes for p in params.values())
