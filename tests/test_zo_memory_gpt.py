"""The memory claim of MeZO on a (very small) GPT, measured by models.training.profile:
a MeZO step peaks at about a forward pass (one tensor-sized z on top), far below a backprop
AdamW step, whose activations, gradients and moments MeZO does not have."""

import numpy as np
import pytest

import optim
from minigrad.backend import use_backend
from models.gpt import GPT, GPTConfig
from models.training import Trainer, lm_loss
from models.training.profile import forward_memory, step_memory

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=40)


def _batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, 40, (8, 32)), rng.integers(0, 40, (8, 32))


def _optimizer(method, params):
    if method == "adamw":
        return optim.create("adamw", optim.param_groups_no_decay(params, 0.0), lr=1e-3)
    if method == "mezo":
        return optim.create("mezo", params, lr=1e-4, eps=1e-3, seed=0)
    return optim.create("lozo", params, lr=1e-4, eps=1e-3, rank=2, step_interval=5, seed=0)


def _step_memory(method, batch):
    model = GPT(CFG, seed=0)
    opt = _optimizer(method, {n: p.data for n, p in model.named_parameters()})
    trainer = Trainer(model, lm_loss, opt, batches=None, steps=10, progress=False)
    return step_memory(trainer, batch, rss=False)


def test_mezo_step_peak_is_a_forward_pass_and_far_below_adamw():
    batch = _batch()
    with use_backend("numpy"):   # the numba kernels allocate the same way; this skips JIT loading
        fwd = forward_memory(GPT(CFG, seed=0), lm_loss, batch, rss=False)
        mem = {m: _step_memory(m, batch) for m in ("mezo", "lozo", "adamw")}
    largest = max(p.data.nbytes for p in GPT(CFG, seed=0).parameters())
    mezo, lozo, adamw = (mem[k].peak for k in ("mezo", "lozo", "adamw"))
    # MeZO = the forward pass + one tensor-sized z (and a little bookkeeping)
    assert mezo <= fwd.peak + largest + 64 * 1024, (mezo, fwd.peak, largest)
    assert mezo <= 1.15 * fwd.peak
    assert lozo <= 1.15 * fwd.peak
    assert mezo <= 0.5 * adamw
    # the split is consistent: MeZO/LoZO keep no gradients; AdamW keeps grads and 2 moments
    assert mem["mezo"].grads == 0 and mem["mezo"].optimizer_state == 0
    assert mem["adamw"].optimizer_state == 2 * mem["adamw"].params
    assert mem["adamw"].grads == mem["adamw"].params
    assert fwd.grads == fwd.optimizer_state == 0 and fwd.params == mem["adamw"].params
    assert fwd.ledger_activations_peak == mem["mezo"].ledger_activations_peak == 0
    assert mem["adamw"].ledger_activations_peak > 0


def test_step_memory_needs_an_optimizer_that_counts_its_state():
    class Opaque:
        uses_gradients, param_groups = True, [{"params": {}, "lr": 0.1}]

    trainer = Trainer(GPT(CFG, seed=0), lm_loss, Opaque(), batches=None, steps=1, progress=False)
    with pytest.raises(TypeError, match="step_memory: the optimizer Opaque has no state_bytes"):
        step_memory(trainer, _batch(), rss=False)
