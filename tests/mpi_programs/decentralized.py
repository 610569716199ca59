"""Gossip, D-PSGD, adapt-then-combine and gradient tracking on every topology:
tests/test_dist_decentralized.py runs ``exercise`` on SimComm(n) and on ``mpiexec -n n`` ranks
(through exercise.py), and the two must agree bit for bit."""
import numpy as np

from optim.dist.decentralized import ALGORITHMS, consensus_curve, heterogeneous_least_squares
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

