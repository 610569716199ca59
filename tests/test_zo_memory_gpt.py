"""The memory claim of MeZO on a (very small) GPT, measured the way demos/zo_finetune.py does:
a MeZO step peaks at about a forward pass (one tensor-sized z on top), far below a backprop
AdamW step, whose activations, gradients and moments MeZO does not have."""

import numpy as np

from minigrad.backend import use_backend
from models.gpt import GPT, GPTConfig

from strategies import load_demo


class _Args:
    adamw_lr, mezo_lr, lozo_lr, eps, rank, nu, lozo_momentum, seed = 1e-3, 1e-4, 1e-4, 1e-3, 2, 5, 0.0, 0


def test_mezo_step_peak_is_a_forward_pass_and_far_below_adamw():
    demo = load_demo("zo_finetune.py")
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=40)
    base = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, (8, 32))
    y = rng.integers(0, 40, (8, 32))
    with use_backend("numpy"):   # the numba kernels allocate the same way; this skips JIT loading
        mem = demo.measure_memory(base, x, y, _Args(), rss=False)
    largest = max(p.data.nbytes for p in base.parameters())
    fwd, mezo, lozo, adamw = (mem[k]["peak"] for k in ("forward", "mezo", "lozo", "adamw"))
    # MeZO = the forward pass + one tensor-sized z (and a little bookkeeping)
    assert mezo <= fwd + largest + 64 * 1024, (mezo, fwd, largest)
    assert mezo <= 1.15 * fwd
    assert lozo <= 1.15 * fwd
    assert mezo <= 0.5 * adamw
    # the split is consistent: MeZO/LoZO keep no gradients; AdamW keeps grads and 2 moments
    assert mem["mezo"]["grads"] == 0 and mem["mezo"]["optimizer_state"] == 0
    assert mem["adamw"]["optimizer_state"] == 2 * mem["adamw"]["params"]
    assert mem["adamw"]["grads"] == mem["adamw"]["params"]
    assert mem["mezo"]["ledger_activations_peak"] == 0 < mem["adamw"]["ledger_activations_peak"]
