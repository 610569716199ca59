"""Compressed gradient exchange -- the Reducer with top-k, QSGD (its own generator per rank),
PowerSGD (the shared one, warm-started), EF14 and EF21 -- and compressed gradient descent on
heterogeneous least squares: tests/test_dist_compress.py runs ``exercise`` on SimComm(n) and
on ``mpiexec -n n`` ranks (through exercise.py), and the two must agree bit for bit."""
import numpy as np

from optim.dist.compress import EF14, EF21, QSGD, PowerSGD, Reducer, TopK, train_least_squares
from optim.dist.problems import HeterogeneousLeastSquares

STEPS = 3

HOOKS = {
    "top-k": lambda comm: Reducer(comm, TopK(3), seed=1),
    "QSGD": lambda comm: Reducer(comm, QSGD(4), seed=1),
    "PowerSGD": lambda comm: Reducer(comm, PowerSGD(2), seed=1),
    "EF14 top-k": lambda comm: EF14(Reducer(comm, TopK(3), seed=1), lr=0.5),
    "EF21 top-k": lambda comm: EF21(Reducer(comm, TopK(3), seed=1)),
}


def gradients(rank: int, step: int) -> dict:
    """Float64 and float32 tensors of 1, 2 and 3 axes, different on every rank and step."""
    rng = np.random.default_rng([rank, step])
    return {"w": rng.standard_normal((5, 4)), "b": rng.standard_normal(6),
            "h": rng.standard_normal((3, 2, 2)).astype(np.float32)}


def exercise(comm) -> dict[str, np.ndarray]:
    """{name: array} of this rank: each hook's output at every step with the bytes sent and
    received, and compressed gradient descent's curves."""
    out = {}
    for label, make in HOOKS.items():
        hook = make(comm)
        comm.reset_counters()
        for step in range(STEPS):
            grads = gradients(comm.rank, step)
            hook(grads)
            out.update({f"{label} step {step} {n}": g for n, g in grads.items()})
        out[f"{label} bytes"] = np.array([comm.bytes_sent, comm.bytes_received])
    problem = HeterogeneousLeastSquares(comm.size, (6, 2), seed=2)
    for label, compressor, feedback in [("top-k EF21", TopK(2), "ef21"), ("QSGD", QSGD(8), None),
                                        ("PowerSGD", PowerSGD(1), None)]:
        run = train_least_squares(comm, problem, compressor, feedback, lr=0.5 / problem.lipschitz,
                                  steps=10, seed=3)
        out.update({f"least squares {label} {k}": v for k, v in run.items()})
    return out

