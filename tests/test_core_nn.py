"""minigrad.nn: PyTorch's module conventions (names, tying, state dicts, modes, zero_grad)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad import nn

from strategies import BACKENDS


class Block(nn.Module):
    def __init__(self, dim, rng):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim, rng=rng)
        self.drop = nn.Dropout(0.5, rng=rng)

    def forward(self, x):
        return x + self.drop(F.gelu(self.fc(self.ln(x))))


class TinyLM(nn.Module):
    """Embedding -> blocks -> LayerNorm -> head whose weight is tied to the embedding."""

    def __init__(self, vocab=7, dim=4, n_blocks=2, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.emb = nn.Embedding(vocab, dim, rng=rng)
        self.blocks = nn.ModuleList([Block(dim, rng) for _ in range(n_blocks)])
        self.ln_f = nn.LayerNorm(dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False, rng=rng)
        self.head.weight = self.emb.weight  # weight tying

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


EXPECTED_NAMES = [
    "emb.weight",
    "blocks.0.ln.weight", "blocks.0.ln.bias", "blocks.0.fc.weight", "blocks.0.fc.bias",
    "blocks.1.ln.weight", "blocks.1.ln.bias", "blocks.1.fc.weight", "blocks.1.fc.bias",
    "ln_f.weight",
]


def test_named_parameters_are_dotted_in_registration_order_and_tied_once():
    m = TinyLM()
    names = [n for n, _ in m.named_parameters()]
    assert names == EXPECTED_NAMES
    assert "head.weight" not in names  # the tied weight appears once, under its first owner
    assert m.head.weight is m.emb.weight
    assert len(list(m.parameters())) == len(EXPECTED_NAMES)
    assert m.num_parameters() == sum(p.size for _, p in m.named_parameters())
    assert list(m.state_dict()) == EXPECTED_NAMES


def test_tied_parameter_receives_both_gradients():
    m = TinyLM().eval()
    idx = np.array([[1, 2, 3], [3, 3, 0]])
    loss = F.cross_entropy(m(idx).reshape(-1, 7), np.array([2, 3, 4, 0, 1, 6]))
    loss.backward()
    g_total = m.emb.weight.grad.copy()
    # the same loss with the head untied from the embedding (a copy of the weight) splits the grad
    m2 = TinyLM().eval()
    m2.head.weight = nn.Parameter(m2.emb.weight.data.copy())
    F.cross_entropy(m2(idx).reshape(-1, 7), np.array([2, 3, 4, 0, 1, 6])).backward()
    np.testing.assert_allclose(g_total, m2.emb.weight.grad + m2.head.weight.grad, rtol=1e-5, atol=1e-6)


def test_sequential_names_and_indexing():
    s = nn.Sequential(nn.Linear(3, 4, rng=0), nn.LayerNorm(4), nn.Linear(4, 2, bias=False, rng=1))
    assert [n for n, _ in s.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight"]
    assert len(s) == 3 and isinstance(s[2], nn.Linear) and [type(m) for m in s][1] is nn.LayerNorm
    x = mg.Tensor(np.ones((5, 3), np.float32))
    assert s(x).shape == (5, 2)


def test_parameters_default_to_float32_and_float64_works():
    lin = nn.Linear(3, 2, rng=0)
    assert lin.weight.dtype == np.float32 and lin.weight.shape == (2, 3) and lin.bias.shape == (2,)
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.requires_grad
    assert np.abs(lin.weight.data).max() <= 1 / np.sqrt(3)  # U(-1/sqrt(in), 1/sqrt(in))
    lin64 = nn.Linear(3, 2, dtype=np.float64, rng=0)
    x = mg.Tensor(np.random.default_rng(0).standard_normal((4, 3)), requires_grad=True)
    assert mg.gradcheck(lambda t: lin64(t), [x])
    assert lin64.weight.grad.dtype == np.float64
    assert nn.Embedding(5, 3).weight.dtype == np.float32 and nn.LayerNorm(3).weight.dtype == np.float32


# ---------------------------------------------------------------- state dicts
def test_state_dict_round_trip_into_a_fresh_model():
    a, b = TinyLM(seed=0).eval(), TinyLM(seed=1).eval()
    idx = np.array([[0, 1, 2, 6]])
    assert not np.allclose(a(idx).data, b(idx).data)
    sd = a.state_dict()
    refs = {n: p for n, p in b.named_parameters()}
    missing, unexpected = b.load_state_dict(sd)
    assert missing == [] and unexpected == []
    np.testing.assert_array_equal(a(idx).data, b(idx).data)
    # loading writes in place (an optimizer's references stay valid), and the tie survives
    assert all(refs[n] is p for n, p in b.named_parameters())
    assert b.head.weight is b.emb.weight
    # the state dict holds copies: changing the model later does not change it
    a.emb.weight.data += 1
    assert not np.array_equal(sd["emb.weight"], a.emb.weight.data)


def test_state_dict_includes_buffers():
    m = nn.Linear(2, 2, rng=0)
    m.register_buffer("steps", np.array([3.0]))
    sd = m.state_dict()
    assert list(sd) == ["weight", "bias", "steps"]
    fresh = nn.Linear(2, 2, rng=1)
    fresh.register_buffer("steps", np.array([0.0]))
    fresh.load_state_dict(sd)
    assert fresh.steps[0] == 3.0


@pytest.mark.parametrize("bk", BACKENDS)
def test_modules_with_an_empty_axis_build_and_backpropagate(bk):
    # nn.Linear(0, n) divided by sqrt(0) when built; Embedding(5, 0)'s backward reshaped with -1
    with mg.use_backend(bk):
        lin = nn.Linear(0, 3, rng=0)
        y = lin(mg.Tensor(np.ones((2, 0), np.float32)))
        (y * 2).sum().backward()
        emb = nn.Embedding(5, 0, rng=0)
        emb(np.array([[1, 2]])).sum().backward()
    np.testing.assert_array_equal(y.data, np.zeros((2, 3)))      # the bias, 0 (torch's bound is 0)
    np.testing.assert_array_equal(lin.bias.grad, np.full(3, 4.0))
    assert lin.weight.grad.shape == (3, 0) and emb.weight.grad.shape == (5, 0)


def test_layer_norm_takes_torchs_one_axis_shape_and_refuses_more_axes_when_built():
    # LayerNorm((3, 4)) was built and failed at its first call with a broadcasting error
    assert nn.LayerNorm((4,)).weight.shape == nn.LayerNorm([4]).weight.shape == (4,)
    with pytest.raises(ValueError, match=r"LayerNorm: normalizes over the last axis only; got "
                                         r"normalized_shape \(3, 4\)"):
        nn.LayerNorm((3, 4))


def test_assigning_over_a_parameter_or_buffer_keeps_it_registered_or_is_refused():
    # a plain Tensor assigned over a parameter silently left named_parameters, the optimizer and
    # the state dict; a new array for a buffer dropped the buffer from the state dict
    m = nn.Linear(2, 3, rng=0)
    with pytest.raises(TypeError, match=r"Linear.weight is a parameter: assign an nn.Parameter"):
        m.weight = mg.Tensor(np.zeros((3, 2), np.float32), requires_grad=True)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    m.weight = nn.Parameter(np.zeros((3, 2), np.float32))  # a Parameter replaces it
    assert np.array_equal(m.state_dict()["weight"], np.zeros((3, 2)))
    m.bias = None  # None removes it, as in torch
    assert [n for n, _ in m.named_parameters()] == ["weight"]

    m.register_buffer("steps", np.zeros(1))
    m.steps = m.steps + 1  # the usual way to update a buffer
    assert m.state_dict()["steps"][0] == 1.0
    with pytest.raises(TypeError, match=r"Linear.steps is a buffer: assign a NumPy array"):
        m.steps = 2.0
    m.steps = None
    assert "steps" not in m.state_dict()


def test_load_state_dict_wrong_shape_names_the_key_and_both_shapes_and_writes_nothing():
    m = TinyLM()
    before = {n: p.data.copy() for n, p in m.named_parameters()}
    sd = TinyLM(seed=3).state_dict()
    sd["blocks.1.fc.weight"] = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"blocks\.1\.fc\.weight has shape \(4, 5\) .* but \(4, 4\) in the model"):
        m.load_state_dict(sd)
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.data, before[n])


def test_load_state_dict_missing_and_unexpected_keys():
    m = TinyLM()
    sd = TinyLM(seed=5).state_dict()
    del sd["ln_f.weight"]
    sd["extra.weight"] = np.ones(3, np.float32)
    with pytest.raises(KeyError, match=r"missing keys \['ln_f.weight'\], unexpected keys \['extra.weight'\]"):
        m.load_state_dict(sd)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["ln_f.weight"] and unexpected == ["extra.weight"]
    np.testing.assert_array_equal(m.emb.weight.data, sd["emb.weight"])  # the rest was loaded
    assert not np.array_equal(m.ln_f.weight.data, np.zeros(4))


# ---------------------------------------------------------------- modes and grads
def test_train_eval_toggle_dropout_everywhere():
    m = TinyLM()
    assert all(mod.training for mod in m.modules())
    x = mg.Tensor(np.ones((2, 50), np.float32))
    drop = nn.Dropout(0.5, rng=0)
    assert (drop(x).data == 0).any()
    assert drop.eval() is drop and not drop.training
    np.testing.assert_array_equal(drop(x).data, x.data)  # eval: the identity
    m.eval()
    assert not any(mod.training for mod in m.modules())
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(m(idx).data, m(idx).data)  # deterministic in eval
    m.train()
    assert all(mod.training for mod in m.modules())
    assert not np.array_equal(m(idx).data, m(idx).data)  # dropout active again


def test_zero_grad():
    m = TinyLM().eval()
    F.cross_entropy(m(np.array([1, 2])), np.array([3, 4])).backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_optimizer_bridge_updates_in_place():
    """params/grads dicts keyed by name share memory with the model, as optimizers expect."""
    m = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, rng=0))
    x = np.random.default_rng(0).standard_normal((4, 3))
    loss0 = F.mse_loss(m(x), np.zeros((4, 2)))
    loss0.backward()
    params = {n: p.data for n, p in m.named_parameters()}
    grads = {n: p.grad for n, p in m.named_parameters()}
    for n in params:
        params[n] -= 0.1 * grads[n]  # one SGD step on raw arrays
    assert F.mse_loss(m(x), np.zeros((4, 2))).item() < loss0.item()


def test_module_errors():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgot()
    with pytest.raises(NotImplementedError, match="does not define forward"):
        nn.Module()(1)


@given(n_in=st.integers(1, 4), n_out=st.integers(1, 4), lead=st.integers(1, 3))
def test_modules_match_functional(n_in, n_out, lead):
    rng = np.random.default_rng(n_in * 10 + n_out)
    x = rng.standard_normal((lead, n_in))
    lin = nn.Linear(n_in, n_out, dtype=np.float64, rng=rng)
    np.testing.assert_array_equal(lin(x).data, F.linear(x, lin.weight, lin.bias).data)
    ln = nn.LayerNorm(n_in, eps=1e-3, dtype=np.float64)
    np.testing.assert_array_equal(ln(x).data, F.layer_norm(x, ln.weight, ln.bias, 1e-3).data)
    emb = nn.Embedding(n_out, n_in, dtype=np.float64, rng=rng)
    idx = rng.integers(0, n_out, size=lead)
    np.testing.assert_array_equal(emb(idx).data, emb.weight.data[idx])
