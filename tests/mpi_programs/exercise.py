"""``mpiexec -n n python exercise.py PROGRAM.py OUT``: every rank runs ``exercise(comm)`` of the
program file PROGRAM.py and saves the arrays it returns to ``OUT.format(rank=comm.rank)``;
``python exercise.py PROGRAM.py OUT n`` does the same on ``SimComm(n)`` in one process
(``strategies.assert_mpiexec_matches_simcomm`` runs both and compares them).

The ranks apply ``minigrad.configure_runtime()`` as tests/conftest.py does for the test process,
so a SimComm run and an MPI run start from the same process-wide settings."""
import importlib.util
import sys

import numpy as np

import minigrad
from optim.dist.launcher import launch

if __name__ == "__main__":
    minigrad.configure_runtime()
    program, out, *workers = sys.argv[1:]
    spec = importlib.util.spec_from_file_location("program", program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launch(lambda comm: np.savez(out.format(rank=comm.rank), **module.exercise(comm)),
           workers=int(workers[0]) if workers else None)
