"""Three pipeline-parallel training steps of a tiny GPT on 2 stages (float64, AdamW clipped by the
whole model's norm), once per schedule, run by tests/test_parallel_pipeline.py on SimComm(2) and as
``mpiexec -n 2 python pp_train.py OUT``: each rank writes its losses, stage parameters and last
gradients to OUT with ``-rank<r>.npz`` in place of ``.npz``; the two runs must agree bit for bit."""
import sys

import numpy as np

from models.gpt import GPTConfig
from models.parallel.pipeline import SCHEDULES, train_pipeline
from optim.dist.launcher import launch

CONFIG = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=8, vocab_size=11)


def worker(comm) -> dict:
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


def rank_path(out: str, rank: int) -> str:
    return out[:-len(".npz")] + f"-rank{rank}.npz"


if __name__ == "__main__":
    out = sys.argv[1]
    launch(lambda comm: np.savez(rank_path(out, comm.rank), **worker(comm)))
