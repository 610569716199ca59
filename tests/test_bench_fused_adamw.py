"""bench.train's FusedAdamW follows the optimizer step protocol: the Trainer drives it, its
schedule's lr reaches the fused kernel, and the result is optim.AdamW's."""

import numpy as np

import optim
from bench.train import BETAS, EPS, WD, FusedAdamW
from models.gpt import GPT, GPTConfig
from models.training import Trainer, lm_loss

CFG = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)


def _tokens(rng):
    return rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))


def _train(make_optimizer, steps=4):
    model = GPT(CFG, seed=0)
    trainer = Trainer(model, lm_loss, make_optimizer(model), _tokens, steps=steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": 2}, seed=0, progress=False)
    losses = [trainer.train_step() for _ in range(steps)]
    return losses, {n: p.data.copy() for n, p in model.named_parameters()}, trainer


def test_fused_adamw_through_the_trainer_equals_optim_adamw():
    lr = 1e-2
    fused_losses, fused, trainer = _train(lambda m: FusedAdamW(m.named_parameters(), lr=lr))
    ref_losses, ref, _ = _train(lambda m: optim.AdamW({n: p.data for n, p in m.named_parameters()},
                                                      lr=lr, betas=BETAS, eps=EPS, weight_decay=WD))
    assert trainer.optimizer.t == 4 and not trainer.optimizer.last_step_skipped
    # the schedule set the group's lr: step 3 of 4, cosine after 2 warmup steps, is half the peak
    np.testing.assert_allclose(trainer.lr, 0.5 * lr, rtol=1e-12)
    np.testing.assert_allclose(fused_losses, ref_losses, rtol=1e-5)
    init = GPT(CFG, seed=0).state_dict()
    for n in ref:
        assert not np.array_equal(fused[n], init[n]), n   # it moved
        # atol lr/1000: the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift of
        # all scores), and Adam turns its float32 rounding noise into updates of either sign
        np.testing.assert_allclose(fused[n], ref[n], rtol=1e-4, atol=1e-3 * lr, err_msg=n)
