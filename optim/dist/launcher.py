"""``launch``: run a worker function on simulated ranks, or on the MPI ranks ``mpiexec`` started.

Kept apart from ``comm`` (the interface and SimComm) because it is the one place that picks a
backend: it imports ``mpi``, which builds on ``comm``."""
from __future__ import annotations

import os
from typing import Callable

from .comm import CommError, SimComm

__all__ = ["launch", "mpi_world_size"]

def mpi_world_size() -> int:
    """The number of ranks when this process was started by ``mpiexec`` (1 otherwise), read from
    the environment the launcher sets, so mpi4py is imported only when it is needed."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def launch(fn: Callable, *args, workers: int | None = None, **kwargs) -> list:
    """Run ``fn(comm, *args, **kwargs)`` on every worker and return all ranks' results in rank order.

    Under ``mpiexec -n k`` (k > 1) the ranks are the MPI processes (``workers`` must be None or k)
    and every process gets the full list; otherwise ``SimComm(workers or 1)`` simulates them."""
    size = mpi_world_size()
    if size > 1:
        if workers is not None and workers != size:
            raise CommError(f"launch: workers={workers} but mpiexec started {size} ranks; "
                            f"pass the same number or leave workers unset")
        from .mpi import MPIComm
        return MPIComm().run(fn, *args, **kwargs)
    return SimComm(1 if workers is None else workers).run(fn, *args, **kwargs)
