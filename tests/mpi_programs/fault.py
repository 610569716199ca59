"""A job whose rank 1 raises while the others go on to an all-reduce it will never join, run by
tests/test_dist_mpi.py as ``mpiexec -n 4 python fault.py launch|uncaught``: through ``launch``,
or with ``MPIComm`` used directly and the error left uncaught. Either way the whole job must stop
at once with ``rank 1: ValueError: ...`` on stderr and a non-zero exit code."""
import sys

import numpy as np

from optim.dist.launcher import launch
from optim.dist.mpi import MPIComm


def worker(comm):
    comm.barrier()
    if comm.rank == 1:
        raise ValueError("rank one fails on purpose")
    return comm.allreduce(np.ones(3))


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        launch(worker)
    else:
        worker(MPIComm())
