"""GPTConfig(checkpoint=True): same loss and gradients as the plain GPT, and the measured
activation peak drops to the block inputs plus one block (the exact count from gpt_costs)."""
import numpy as np
import pytest

from minigrad import memory
from minigrad.backend import use_backend
from models.costs import gpt_costs
from models.gpt import GPT, GPTConfig


def _step(cfg, x, y):
    model = GPT(cfg)
    with memory.track(model) as led:
        _, loss = model(x, y)
        loss.backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    return loss.item(), grads, led.peak["activations"], model.dropout_rng.random()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointed_gpt_gradients_equal_and_memory_drops(dropout, backend):
    kw = dict(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=11, dropout=dropout)
    rng = np.random.default_rng(0)
    b = 3
    x, y = rng.integers(0, 11, (b, 8)), rng.integers(0, 11, (b, 8))
    with use_backend(backend):
        plain = _step(GPTConfig(**kw), x, y)
        ck = _step(GPTConfig(**kw, checkpoint=True), x, y)
    assert plain[0] == ck[0]
    assert plain[1].keys() == ck[1].keys()
    for n in plain[1]:
        assert np.array_equal(plain[1][n], ck[1][n]), n
    assert plain[3] == ck[3]  # the dropout stream continues as without checkpointing
    costs = gpt_costs(GPTConfig(**kw), b, backend=backend)
    assert plain[2] == costs.bytes["activations"]
    assert ck[2] == costs.activations_checkpointed
    # one block's activations plus the l block inputs (b·s·h floats each), never l blocks'
    one_block = sum(costs.activation_layer_terms.values())
    assert ck[2] < plain[2] - (kw["n_layer"] - 2) * one_block


def test_checkpoint_flag_is_ignored_in_eval_and_generation():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=7, checkpoint=True)
    model = GPT(cfg)
    plain = GPT(GPTConfig(**{**cfg.to_dict(), "checkpoint": False}))
    idx = np.array([[1, 2, 3]])
    assert np.array_equal(model.generate(idx, 4, temperature=0), plain.generate(idx, 4, temperature=0))
