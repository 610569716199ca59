"""PyTorch habits on top of the raw-array interface: optimizers built from ``model.parameters()``
or ``model.named_parameters()`` read ``p.grad`` in ``step()`` and clear it in ``zero_grad()``;
``clip_grad_norm_`` takes Parameters. Compared with torch.optim in float64."""
import math

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
import optim
from minigrad import nn

torch = pytest.importorskip("torch", reason="torch (the `bench` extra) is needed for the comparison")
torch.set_num_threads(1)


class MLP(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.fc1 = nn.Linear(4, 5, dtype=np.float64, rng=rng)
        self.fc2 = nn.Linear(5, 2, dtype=np.float64, rng=rng)

    def __call__(self, x):
        return self.fc2(self.fc1(x).tanh())


def torch_twin(model):
    """The same MLP in torch, with copies of the minigrad weights."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    with torch.no_grad():
        for (_, tp), (_, p) in zip(net.named_parameters(), model.named_parameters()):
            tp.copy_(torch.from_numpy(p.data))
    return net


def batches(steps=3, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 4)), rng.standard_normal((6, 2))) for _ in range(steps)]


def decay_matrices_only(params):
    """Two groups, weight decay on matrices only (params: minigrad or torch parameters)."""
    params = list(params)
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


CASES = {  # name -> (minigrad optimizer from the model, torch optimizer from the torch model)
    "sgd-momentum-parameters": (
        lambda m: optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda t: torch.optim.SGD(t.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)),
    "sgd-nesterov-named": (
        lambda m: optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9, nesterov=True),
        lambda t: torch.optim.SGD(t.parameters(), lr=0.1, momentum=0.9, nesterov=True)),
    "adamw-named": (
        lambda m: optim.AdamW(m.named_parameters(), lr=1e-2, weight_decay=0.1),
        lambda t: torch.optim.AdamW(t.parameters(), lr=1e-2, weight_decay=0.1)),
    "adamw-amsgrad-parameters": (
        lambda m: optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True),
        lambda t: torch.optim.AdamW(t.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "adamw-param-groups": (  # optim.param_groups keeps the Parameters, so step() finds .grad
        lambda m: optim.AdamW(optim.param_groups_no_decay(m.named_parameters(), 0.1), lr=1e-2),
        lambda t: torch.optim.AdamW(decay_matrices_only(t.parameters()), lr=1e-2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_torch_loop_matches_torch_optim(case):
    make, make_torch = CASES[case]
    model = MLP()
    net = torch_twin(model)
    opt, topt = make(model), make_torch(net)
    for x, y in batches():
        loss = F.mse_loss(model(mg.Tensor(x)), mg.Tensor(y))
        loss.backward()
        opt.step()
        opt.zero_grad()
        tloss = torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        topt.zero_grad()
        assert float(loss.data) == pytest.approx(tloss.item(), rel=1e-12)
    for (n, p), tp in zip(model.named_parameters(), net.parameters()):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=n)
        assert p.grad is None
    # model.parameters() gets positional names, as torch numbers parameters
    names = [n for n, _ in model.named_parameters()]
    assert sorted(opt.state) == sorted(["0", "1", "2", "3"] if "-parameters" in case else names)


def test_unnamed_parameters_are_numbered_across_groups():
    model = MLP()
    opt = optim.SGD([{"params": model.fc1.parameters()},
                     {"params": model.fc2.parameters(), "lr": 0.5}], lr=0.1)
    assert [list(g["params"]) for g in opt.param_groups] == [["0", "1"], ["2", "3"]]
    assert all(a is p.data for a, p in zip(opt.params.values(), model.parameters()))


def test_step_reads_grads_skips_none_and_zero_grad_clears_them():
    model = MLP()
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    frozen = model.fc1.bias
    frozen.requires_grad_(False)
    before = frozen.data.copy()
    x, y = batches(1)[0]
    F.mse_loss(model(mg.Tensor(x)), mg.Tensor(y)).backward()
    assert frozen.grad is None
    w_before = model.fc1.weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(frozen.data, before)      # None grad: no update, no decay,
    assert "1" not in opt.state and "0" in opt.state         # and no state (as torch)
    assert not np.array_equal(model.fc1.weight.data, w_before)
    g = model.fc1.weight.grad
    opt.zero_grad(set_to_none=False)                         # zeros in place, None stays None
    assert model.fc1.weight.grad is g and not g.any() and frozen.grad is None
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_raw_array_optimizers_keep_the_explicit_interface():
    model = MLP()
    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="needs grads or a closure"):
        opt.step()
    with pytest.raises(TypeError, match="zero_grad.*raw arrays.*model.zero_grad"):
        opt.zero_grad()
    with pytest.raises(TypeError, match=r"a single Parameter.*\[p\]"):
        optim.SGD(model.fc1.weight, lr=0.1)
    with pytest.raises(TypeError, match="model.parameters"):
        optim.SGD([model.fc1.weight, ("b", model.fc1.bias.data)], lr=0.1)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.05, 1e3])
def test_clip_grad_norm_on_parameters_matches_torch(norm_type, max_norm):
    model = MLP()
    net = torch_twin(model)
    x, y = batches(1)[0]
    F.mse_loss(model(mg.Tensor(x)), mg.Tensor(y)).backward()
    torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    model.fc2.bias.grad = None                 # a parameter without gradient is left out
    net[2].bias.grad = None
    grads = [p.grad for p in model.parameters()]
    total = optim.clip_grad_norm_(model.parameters(), max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm, norm_type=norm_type)
    assert total == pytest.approx(ttotal.item(), rel=1e-12)
    for p, g, tp in zip(model.parameters(), grads, net.parameters()):
        assert p.grad is g                     # in place
        if g is not None:
            np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-12, atol=1e-15)
    # a dict name -> gradient is clipped the same way
    fresh = {n: np.full((3,), 2.0) for n in "ab"}
    assert optim.clip_grad_norm_(fresh, 1.0) == pytest.approx(math.sqrt(24))
    np.testing.assert_allclose(optim.schedules.global_grad_norm(fresh), 1.0, rtol=1e-6)
