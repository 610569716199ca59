"""Distributed optimization on raw NumPy arrays (lecture 10).

A communicator with two backends of the same semantics, bit for bit -- ``SimComm`` (n workers
simulated in one process) and ``MPIComm`` (MPI ranks under ``mpiexec``) -- and the algorithms,
each written once for one worker against it:

    comm          the calls (all-reduce in ring order, broadcast, all-gather, neighbour exchange,
                  send/recv, split), their byte counters, SimComm
    launcher      ``launch(fn, workers=n)``: SimComm, or the MPI ranks when run under mpiexec
    mpi           MPIComm (mpi4py buffer calls; the ``dist`` extra)
    data_parallel synchronous data parallel: the gradient all-reduce hook, broadcast, shards
    local_sgd     Local SGD and post-local SGD around any optimizer
    topology      mixing matrices of communication graphs, spectral gaps, gossip
    decentralized D-PSGD, adapt-then-combine, gradient tracking
    compress      QSGD, top-k, rand-k, sign, PowerSGD; error feedback (EF14, EF21)
    problems      heterogeneous least squares, the problem the demos and tests run them on
"""
from .comm import CommAborted, CommError, Communicator, DeadlockError, SimComm, WorkerError
from .compress import EF14, EF21, QSGD, PowerSGD, RandK, Reducer, ScaledSign, TopK
from .data_parallel import allreduce_grads, broadcast_params, shard_batches
from .decentralized import DecentralizedSGD, GradientTracking, consensus_error
from .launcher import launch
from .local_sgd import LocalSGD
from .problems import HeterogeneousLeastSquares
from .topology import TOPOLOGIES, Topology, gossip, mixing_matrix, spectral_gap

__all__ = ["Communicator", "SimComm", "launch", "CommError", "CommAborted", "DeadlockError",
           "WorkerError", "allreduce_grads", "broadcast_params", "shard_batches", "LocalSGD",
           "TOPOLOGIES", "Topology", "mixing_matrix", "spectral_gap", "gossip", "DecentralizedSGD",
           "GradientTracking", "consensus_error", "QSGD", "TopK", "RandK", "ScaledSign", "PowerSGD",
           "Reducer", "EF14", "EF21", "HeterogeneousLeastSquares"]
