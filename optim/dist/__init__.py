"""Distributed optimization on raw NumPy arrays: a communicator with two backends (``SimComm``:
n workers simulated in one process; ``MPIComm``: MPI ranks under ``mpiexec``) and the algorithms
written once against it. See ``optim.dist.comm`` for the calls, their order and their bytes."""
from .comm import CommAborted, CommError, Communicator, DeadlockError, SimComm, WorkerError
from .launcher import launch

__all__ = ["Communicator", "SimComm", "launch", "CommError", "CommAborted", "DeadlockError",
           "WorkerError"]
