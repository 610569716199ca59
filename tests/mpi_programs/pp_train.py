"""Three pipeline-parallel training steps of a tiny GPT on 2 stages (float64, AdamW clipped by the
whole model's norm), once per schedule: tests/test_parallel_pipeline.py runs ``exercise`` on
SimComm(2) and on ``mpiexec -n 2`` ranks (through exercise.py), and the two must agree bit for bit."""
import numpy as np

from models.gpt import GPTConfig
from models.parallel.pipeline import SCHEDULES, train_pipeline

CONFIG = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=8, vocab_size=11)


def exercise(comm) -> dict:
    """{key: array} of this rank after three steps of each schedule: "<schedule>:loss",
    "<schedule>:param:<name>", "<schedule>:grad:<name>"."""
    tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (64, CONFIG.block_size + 1))

    def batches(rng):
        rows = tokens[rng.integers(0, len(tokens), 8)]
        return rows[:, :-1], rows[:, 1:]
    out = {}
    for schedule in SCHEDULES:
        last = {}
        res = train_pipeline(comm, CONFIG, batches, steps=3, micro_batches=4, schedule=schedule, lr=3e-3,
                             weight_decay=0.1, dtype=np.float64, max_grad_norm=0.5, keep_params=True,
                             grad_hooks=[lambda g: last.update({n: a.copy() for n, a in g.items()})])
        out[f"{schedule}:loss"] = np.array(res["history"]["train_loss"])
        out.update({f"{schedule}:param:{n}": a for n, a in res["params"].items()})
        out.update({f"{schedule}:grad:{n}": g for n, g in last.items()})
    return out

