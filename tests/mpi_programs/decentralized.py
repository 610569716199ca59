"""Gossip, D-PSGD, adapt-then-combine and gradient tracking on every topology, run by
tests/test_dist_decentralized.py on SimComm(n) and as ``mpiexec -n n python decentralized.py OUT``:
each rank's results go to OUT with ``-rank<r>.npz`` in place of ``.npz``, and the two runs must
agree bit for bit."""
import sys

import numpy as np

from optim.dist.decentralized import ALGORITHMS, consensus_curve, heterogeneous_least_squares
from optim.dist.launcher import launch
from optim.dist.topology import TOPOLOGIES

STEPS = 10


def exercise(comm) -> dict[str, np.ndarray]:
    """{name: array} of this rank: each run's error curve and the bytes this rank sent and received
    over the runs on one topology."""
    out = {}
    for name in TOPOLOGIES:
        if name == "torus" and comm.size not in (4, 6, 8, 9):
            continue
        comm.reset_counters()
        out[f"{name} consensus"] = consensus_curve(comm, name, STEPS)
        for algorithm in ALGORITHMS:
            out[f"{name} {algorithm}"] = heterogeneous_least_squares(comm, name, algorithm, lr=0.1,
                                                                     steps=STEPS)
        out[f"{name} bytes"] = np.array([comm.bytes_sent, comm.bytes_received])
    return out


def rank_path(out: str, rank: int) -> str:
    return out[:-len(".npz")] + f"-rank{rank}.npz"


if __name__ == "__main__":
    path = sys.argv[1]

    def worker(comm):
        np.savez(rank_path(path, comm.rank), **exercise(comm))

    launch(worker)
