"""nn.RNNCell / LSTMCell / GRUCell and the multi-layer nn.RNN / LSTM / GRU.

Two proofs: gradcheck (float64, hypothesis, a random upstream covector) of every cell and
module with respect to its input, its initial state and every parameter; and equality with
torch.nn's modules given the same weights (a torch state dict loaded with strict=True): outputs,
final states and all those gradients to 1e-10 in float64, over layers, directions, batch_first,
bias and unbatched input.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg

from strategies import seeds

try:
    import torch
except ImportError:  # the parity checks need the `bench` extra; the gradchecks do not
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (the `bench` extra) is needed for parity")
RTOL, ATOL = 1e-10, 1e-12
CELLS = {"RNNCell": {}, "RNNCell_relu": dict(nonlinearity="relu"), "LSTMCell": {}, "GRUCell": {}}
LAYERS = {"RNN": {}, "RNN_relu": dict(nonlinearity="relu"), "LSTM": {}, "GRU": {}}


def build(kind: str, options: dict, *sizes, rng=0, **config):
    """The minigrad module `kind` (a key of CELLS or LAYERS) in float64."""
    return getattr(mg.nn, kind.split("_")[0])(*sizes, **options, **config, dtype=np.float64, rng=rng)


def n_states(kind: str) -> int:
    return 2 if kind.startswith("LSTM") else 1


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def flat(out, state):
    """A module's output and states as one 1-D tensor: one covector covers all of them."""
    return mg.cat([t.reshape(-1) for t in (out, *as_tuple(state))])


# ================================================================ cells
@st.composite
def cell_case(draw):
    """(input_size, hidden_size, bias, batch shape () or (B,), give hx, seed)."""
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.booleans()),
            draw(st.sampled_from([(), (1,), (2,)])), draw(st.booleans()), draw(seeds()))


def cell_inputs(kind, case):
    n_in, hidden, bias, batch, give_hx, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(batch + (n_in,))
    hx = tuple(rng.standard_normal(batch + (hidden,)) for _ in range(n_states(kind))) if give_hx else None
    return x, hx


def cell_call(cell, x, hx):
    if hx is None:
        return cell(x)
    return cell(x, hx if len(hx) == 2 else hx[0])


@pytest.mark.parametrize("kind", list(CELLS))
@given(case=cell_case())
def test_cell_gradcheck(kind, case):
    n_in, hidden, bias = case[:3]
    cell = build(kind, CELLS[kind], n_in, hidden, bias=bias, rng=case[-1])
    x, hx = cell_inputs(kind, case)
    leaves = [mg.Tensor(a, requires_grad=True) for a in (x, *(hx or ()))]
    params = list(cell.parameters())
    assert len(params) == (4 if bias else 2)

    def fn(x, *rest):  # the parameters are passed so that gradcheck perturbs and checks them
        out = cell_call(cell, x, tuple(rest[:len(leaves) - 1]) or None)
        return flat(out[0], out[1:]) if isinstance(out, tuple) else out

    assert mg.gradcheck(fn, leaves + params)
    for p in leaves + params:
        assert p.grad is not None and p.grad.shape == p.shape


def torch_module(kind, options, *sizes, **config):
    return getattr(torch.nn, kind.split("_")[0])(*sizes, **options, **config, dtype=torch.float64)


def compare_with_torch(mine, theirs, x, hx, seed=0):
    """Load theirs' weights into mine (strict); equal outputs, states and every gradient."""
    mine.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()}, strict=True)
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    mx = [mg.Tensor(a, requires_grad=True) for a in (x, *(hx or ()))]
    tx = [torch.tensor(a, requires_grad=True) for a in (x, *(hx or ()))]
    pack = (lambda s: None if not s else s[0] if len(s) == 1 else tuple(s))
    out = mine(mx[0], pack(mx[1:]))
    tout = theirs(tx[0], pack(tx[1:]))
    outs = [o for part in (out if isinstance(out, tuple) else (out,)) for o in as_tuple(part)]
    touts = [o for part in (tout if isinstance(tout, tuple) else (tout,)) for o in as_tuple(part)]
    assert len(outs) == len(touts)
    rng = np.random.default_rng(seed)
    loss, tloss = 0, 0
    for o, t in zip(outs, touts):
        assert o.shape == tuple(t.shape)
        np.testing.assert_allclose(o.data, t.detach().numpy(), rtol=RTOL, atol=ATOL)
        v = rng.standard_normal(o.shape)
        loss, tloss = loss + (o * v).sum(), tloss + (t * torch.from_numpy(v)).sum()
    loss.backward()
    tloss.backward()
    for i, (a, b) in enumerate(zip(mx, tx)):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"gradient of input {i}")
    for (name, p), (_, tp) in zip(mine.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"gradient of {name}")


@needs_torch
@pytest.mark.parametrize("kind", list(CELLS))
@given(case=cell_case())
def test_cell_matches_torch(kind, case):
    n_in, hidden, bias = case[:3]
    theirs = torch_module(kind, CELLS[kind], n_in, hidden, bias=bias)
    compare_with_torch(build(kind, CELLS[kind], n_in, hidden, bias=bias), theirs, *cell_inputs(kind, case))


# ================================================================ multi-layer modules
@st.composite
def layers_case(draw, max_side=3):
    """A module config and inputs: layers, directions, batch_first, bias, unbatched, h0 given."""
    config = dict(num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
                  batch_first=draw(st.booleans()), bias=draw(st.booleans()))
    sizes = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    t, b = draw(st.integers(1, 3)), draw(st.sampled_from([None, 1, 2]))
    return config, sizes, (t, b), draw(st.booleans()), draw(seeds())


def layers_inputs(kind, case):
    config, (n_in, hidden), (t, b), give_hx, seed = case
    rng = np.random.default_rng(seed)
    if b is None:  # unbatched: (T, I), states (L*D, H)
        x, state_batch = rng.standard_normal((t, n_in)), ()
    else:
        x = rng.standard_normal((b, t, n_in) if config["batch_first"] else (t, b, n_in))
        state_batch = (b,)
    n = config["num_layers"] * (2 if config["bidirectional"] else 1)
    hx = tuple(rng.standard_normal((n,) + state_batch + (hidden,)) for _ in range(n_states(kind))) if give_hx else None
    return x, hx


@pytest.mark.parametrize("kind", list(LAYERS))
@settings(max_examples=8)  # each example checks every parameter element by finite differences
@given(case=layers_case(max_side=2))
def test_layers_gradcheck(kind, case):
    config, sizes = case[:2]
    module = build(kind, LAYERS[kind], *sizes, **config, rng=case[-1])
    x, hx = layers_inputs(kind, case)
    leaves = [mg.Tensor(a, requires_grad=True) for a in (x, *(hx or ()))]

    def fn(x, *rest):  # the parameters are passed so that gradcheck perturbs and checks them
        states = tuple(rest[:len(leaves) - 1])
        out, state = module(x, (states if len(states) == 2 else states[0]) if states else None)
        return flat(out, state)

    params = list(module.parameters())
    assert mg.gradcheck(fn, leaves + params)
    for p in leaves + params:
        assert p.grad is not None and p.grad.shape == p.shape


@needs_torch
@pytest.mark.parametrize("kind", list(LAYERS))
@given(case=layers_case())
def test_layers_match_torch(kind, case):
    config, sizes = case[:2]
    theirs = torch_module(kind, LAYERS[kind], *sizes, **config)
    compare_with_torch(build(kind, LAYERS[kind], *sizes, **config), theirs, *layers_inputs(kind, case))


@needs_torch
@pytest.mark.parametrize("kind", list(LAYERS))
def test_a_minigrad_state_dict_loads_into_torch_and_back(kind):
    """The other direction: minigrad's weights, loaded into torch (strict), compute the same."""
    config = dict(num_layers=3, bidirectional=True)
    mine = build(kind, LAYERS[kind], 3, 4, **config, rng=1)
    theirs = torch_module(kind, LAYERS[kind], 3, 4, **config)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in mine.state_dict().items()}, strict=True)
    x = np.random.default_rng(2).standard_normal((5, 2, 3))
    out, _ = mine(x)
    np.testing.assert_allclose(out.data, theirs(torch.from_numpy(x))[0].detach().numpy(), rtol=RTOL, atol=ATOL)
    assert mine.param_roles() == {n: "bias" if n.startswith("bias") else "linear" for n, _ in theirs.named_parameters()}


def test_time_runs_forwards_and_the_reverse_direction_backwards():
    """output[t] of a one-layer forward RNN depends on inputs <= t only; the reverse
    direction's half of a bidirectional output on inputs >= t only."""
    x = np.random.default_rng(0).standard_normal((4, 1, 2))
    for bidirectional in (False, True):
        module = mg.nn.GRU(2, 3, bidirectional=bidirectional, dtype=np.float64, rng=0)
        base = module(x)[0].data
        moved = x.copy()
        moved[2] += 1.0  # change the input at t = 2 only
        diff = np.abs(module(moved)[0].data - base).max(axis=(1,))  # (T, D*H)
        assert (diff[:2, :3] == 0).all() and (diff[2:, :3] > 0).all()  # forward half
        if bidirectional:
            assert (diff[3:, 3:] == 0).all() and (diff[:3, 3:] > 0).all()  # reverse half


def test_dropout_acts_between_layers_only_and_only_while_training():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 2))
    two = mg.nn.LSTM(2, 3, num_layers=2, dropout=1.0, dtype=np.float64, rng=0)
    top = mg.nn.LSTM(3, 3, dtype=np.float64)
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in two.state_dict().items() if "_l1" in k})
    # dropout 1 zeroes all of layer 0's outputs: layer 1 then runs on zeros
    out, (h_n, _) = two(x)
    np.testing.assert_allclose(out.data, top(np.zeros((3, 2, 3)))[0].data, rtol=1e-14, atol=1e-15)
    two.eval()
    assert np.abs(two(x)[0].data - out.data).max() > 1e-3
    one = mg.nn.GRU(2, 3, dropout=0.5, dtype=np.float64, rng=0)  # nothing after the last layer
    np.testing.assert_array_equal(one(x)[0].data, one.eval()(x)[0].data)


# ================================================================ bad input
def test_recurrent_modules_refuse_bad_input_naming_the_shapes():
    lstm = mg.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    with pytest.raises(ValueError, match=r"LSTM: input must be \(B, T, input_size\) or unbatched \(T, input_size\) "
                                         r"with input_size 3 and T >= 1, got shape \(2, 5, 2\)"):
        lstm(np.zeros((2, 5, 2), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(2, 0, 3\)"):
        lstm(np.zeros((2, 0, 3), np.float32))
    with pytest.raises(ValueError, match=r"LSTM: c0 has shape \(2, 2, 5\), expected \(2, 2, 4\) \(num_layers \* "
                                         r"num_directions, batch, hidden_size\) for input \(2, 5, 3\)"):
        lstm(np.zeros((2, 5, 3), np.float32), (np.zeros((2, 2, 4), np.float32), np.zeros((2, 2, 5), np.float32)))
    with pytest.raises(TypeError, match=r"LSTM: hx must be a tuple \(h0, c0\), got ndarray"):
        lstm(np.zeros((2, 5, 3), np.float32), np.zeros((2, 2, 4), np.float32))
    gru = mg.nn.GRU(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match=r"GRU: h0 has shape \(1, 2, 4\), expected \(2, 2, 4\)"):
        gru(np.zeros((5, 2, 3), np.float32), np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"RNNCell: input must be \(B, 3\) or \(3,\), got shape \(2, 4\)"):
        mg.nn.RNNCell(3, 4)(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"LSTMCell: c has shape \(2, 3\) but input \(2, 3\) needs \(2, 4\)"):
        mg.nn.LSTMCell(3, 4)(np.zeros((2, 3), np.float32), (np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32)))
    with pytest.raises(ValueError, match="RNN: nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        mg.nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="GRU: num_layers must be a positive integer, got 0"):
        mg.nn.GRU(3, 4, num_layers=0)
    with pytest.raises(ValueError, match=r"LSTM: dropout must be in \[0, 1\], got 1.5"):
        mg.nn.LSTM(3, 4, dropout=1.5)
