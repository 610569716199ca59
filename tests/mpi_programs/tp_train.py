"""Three tensor-parallel training steps of a tiny GPT (float64, clipped AdamW):
tests/test_parallel_tensor.py runs ``exercise`` on SimComm(2) and on ``mpiexec -n 2`` ranks
(through exercise.py), and the two must agree bit for bit."""
import numpy as np

from models.gpt import GPTConfig
from models.parallel.tensor import TensorParallelGPT, clip_grad_norm_tp
from models.training import Trainer, lm_loss
from models.training.optimizers import build_optimizer

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=11)


def exercise(comm) -> dict:
    """{key: array} of this rank after three steps: "loss", "param:<name>", "grad:<name>"."""
    tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (64, CONFIG.block_size + 1))

    def batches(rng):
        rows = tokens[rng.integers(0, len(tokens), 4)]
        return rows[:, :-1], rows[:, 1:]
    model = TensorParallelGPT(CONFIG, comm, dtype=np.float64, seed=0)
    last = {}
    trainer = Trainer(model, lm_loss, build_optimizer("adamw", model, lr=3e-3, weight_decay=0.1), batches,
                      steps=3, grad_hooks=[clip_grad_norm_tp(model, 0.5), lambda g: last.update(g)],
                      progress=False)
    trainer.fit()
    return {"loss": np.array(trainer.history["train_loss"]),
            **{f"param:{n}": a for n, a in model.state_dict().items()},
            **{f"grad:{n}": g.copy() for n, g in last.items()}}

