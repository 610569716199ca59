"""``mpiexec -n n python exercise.py PROGRAM.py OUT``: every rank runs ``exercise(comm)`` of the
program file PROGRAM.py and saves the arrays it returns to ``OUT.format(rank=comm.rank)``
(``strategies.assert_mpiexec_matches_simcomm`` runs this and compares with SimComm)."""
import importlib.util
import sys

import numpy as np

from optim.dist.launcher import launch

if __name__ == "__main__":
    program, out = sys.argv[1:]
    spec = importlib.util.spec_from_file_location("program", program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    launch(lambda comm: np.savez(out.format(rank=comm.rank), **module.exercise(comm)))
