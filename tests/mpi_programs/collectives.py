"""Every call of the communicator on fixed inputs, run by tests/test_dist_mpi.py on SimComm(n) and
as ``mpiexec -n n python collectives.py OUT``: each rank's results go to OUT with ``-rank<r>.npz``
in place of ``.npz``, and the two runs must agree bit for bit, byte counters and error messages
included. Under MPI the program also runs ``mpi_only`` (the native all-reduce, the tag bound),
whose results go beside the others under keys starting with ``mpi:``."""
import sys

import numpy as np

from optim.dist.comm import CommError
from optim.dist.launcher import launch

SHAPES = [(), (0,), (3,), (5, 7), (64,)]    # sizes 1, 0, 3 (< 4 ranks: empty chunks), 35, 64
DTYPES = ["float64", "float32", "int64"]


def inputs(rank: int, shape: tuple, dtype: str) -> np.ndarray:
    """Rank-dependent values spread over many magnitudes, so a different summation order would
    round differently."""
    rng = np.random.default_rng([rank, len(shape), sum(shape), DTYPES.index(dtype)])
    if dtype == "int64":
        return rng.integers(-1000, 1000, shape)
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6, shape)).astype(dtype)


def exercise(comm) -> dict[str, np.ndarray]:
    """{name: array} of this rank; every call is followed by a ``<name>:bytes`` entry holding
    (bytes_sent, bytes_received) of that call alone."""
    out = {}
    r, n = comm.rank, comm.size

    def record(name, value):
        out[name] = np.asarray(value)
        out[name + ":bytes"] = np.array([comm.bytes_sent, comm.bytes_received])
        comm.reset_counters()

    def error_message(call):
        try:
            call()
        except CommError as error:
            return str(error)
        return "no error"

    for dtype in DTYPES:
        for shape in SHAPES:
            x, key = inputs(r, shape, dtype), f"{dtype}{list(shape)}"
            record(f"allreduce sum {key}", comm.allreduce(x))
            record(f"allreduce mean {key}", comm.allreduce(x, op="mean"))
            record(f"broadcast {key}", comm.broadcast(x, root=n - 1))
            record(f"allgather {key}", comm.allgather(x))
    fortran = np.asfortranarray(inputs(r, (5, 7), "float64"))
    record("allreduce fortran-ordered", comm.allreduce(fortran))

    # A ring (both neighbours are the same rank when n = 2), arrays of a different shape per rank.
    left, right = (r - 1) % n, (r + 1) % n
    got = comm.neighbor_exchange(inputs(r, (r + 1, 2), "float32"), sources=[left, right], dests=[right, left])
    for i, a in enumerate(got):
        record(f"neighbor_exchange {i}", a)
    # Peers listed many times (legal: the lists agree as sets) make a header longer than one slot.
    got = comm.neighbor_exchange(inputs(r, (2,), "float64"), sources=[left] * 40, dests=[right] * 40)
    record("neighbor_exchange repeated peers", np.stack(got))

    # Point to point: two messages to the right, received in the other order (matched by tag).
    comm.send(inputs(r, (4,), "float64"), right, tag=0)
    comm.send(inputs(r, (), "int64"), right, tag=5)
    record("recv tag 5", comm.recv(left, tag=5))
    record("recv tag 0", comm.recv(left, tag=0))

    comm.barrier()
    record("barrier", np.zeros(0))

    halves = comm.split(r % 2)
    record("split rank, size", [halves.rank, halves.size])
    record("split allreduce", halves.allreduce(inputs(r, (5, 7), "float64")))
    record("split bytes of the parent", [comm.bytes_sent, comm.bytes_received])
    negative = comm.split(-1 if r < 2 else 7)   # any int is a color
    record("split negative color", [negative.rank, negative.size, negative.allreduce(np.int64(r))])
    with halves:                                 # freed at the end of the block
        record("split in a with block", halves.allreduce(np.int64(r)))
    negative.free()
    record("error freed", error_message(lambda: negative.allreduce(np.zeros(2))))
    record("error freed twice", error_message(halves.free))
    record("error free the world", error_message(comm.free))

    # Faults every rank sees: a rank with another shape, another dtype, another call, a bad graph.
    record("error shape", error_message(lambda: comm.allreduce(np.zeros(r + 1))))
    record("error dtype", error_message(
        lambda: comm.allgather(np.zeros(2, "float32" if r == 0 else "float64"))))
    record("error call", error_message(lambda: comm.barrier() if r == 0 else comm.broadcast(np.zeros(2))))
    record("error graph", error_message(lambda: comm.neighbor_exchange(
        np.zeros(2), sources=[left], dests=[right] if r > 0 else [])))
    record("after the errors", comm.allreduce(inputs(r, (3,), "float64")))
    return out


def mpi_only(comm) -> dict[str, np.ndarray]:
    """The MPI backend's own options, checked against the ring results by the test."""
    out = {}
    for dtype in DTYPES:
        for shape in SHAPES:
            key = f"{dtype}{list(shape)}"
            comm.reset_counters()
            out[f"mpi:native {key}"] = comm.allreduce(inputs(comm.rank, shape, dtype), algorithm="native")
            out[f"mpi:native {key}:bytes"] = np.array([comm.bytes_sent, comm.bytes_received])
    try:
        comm.send(np.zeros(1), (comm.rank + 1) % comm.size, tag=-1)
    except ValueError as error:
        out["mpi:bad tag"] = np.array(str(error))
    return out


def rank_path(out: str, rank: int) -> str:
    return out[:-len(".npz")] + f"-rank{rank}.npz"


if __name__ == "__main__":
    path = sys.argv[1]

    def worker(comm):
        np.savez(rank_path(path, comm.rank), **exercise(comm), **mpi_only(comm))
        return comm.rank
    ranks = launch(worker)
    if ranks != list(range(len(ranks))):     # launch gives every rank all results, in rank order
        raise AssertionError(f"launch returned {ranks}")
