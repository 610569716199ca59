"""Decentralized SGD: every worker keeps its own copy of the parameters and averages only with
its neighbours in a communication graph (``optim.dist.topology``), never with all workers.

With the workers' copies stacked as rows of X, their gradients as rows of G and W the graph's
mixing matrix at iteration k:

    D-PSGD            X <- W X - lr G        gossip the pre-step parameters, add the local step
                      (Lian et al., NeurIPS 2017, arXiv 1705.09056)
    adapt-then-combine X <- W (X - lr G)     local step first, then gossip (the diffusion order;
                      Chen & Sayed, IEEE TSP 2012, arXiv 1111.0034)
    gradient tracking x <- W x - lr y,  y <- W y + grad f_i(x_new) - grad f_i(x_old),
                      y_0 = grad f_i(x_0)
                      (DIGing: Nedic, Olshevsky, Shi, SIAM J. Optim. 2017, arXiv 1607.03218;
                      stochastic gradients: Pu & Nedic, Math. Program. 2021, arXiv 1805.11454)

Each worker's local step is any registered optimizer built on that worker's parameters (it turns
(params, grads) into new params; with ``optim.create("sgd", params, lr=lr)`` the formulas above
hold exactly). The optimizer's state -- momentum, Adam's moments -- stays local and is not
gossiped. Gradient tracking hands the optimizer the tracker y in place of the gradient.

Why gradient tracking: when the workers' objectives f_i differ (heterogeneous data), D-PSGD with
a constant lr stops at a point where the gossip pull and the local gradients balance, a bias that
grows as the graph's spectral gap shrinks (O(lr^2 zeta^2 / gap^2) with zeta^2 the spread of the
local gradients at the optimum). The tracker y_i follows the *average* gradient (sum_i y_i =
sum_i grad f_i(x_i) after every step), so the fixed point is the global optimum.

All parameters of one dtype travel in one neighbour exchange per step (gradient tracking sends x
and y together), so a step costs degree x (1 or 2) x N values per worker.

The functions at the end produce the numbers the lecture plots: ``consensus_curve`` (gossip alone
against rho^k) and ``heterogeneous_least_squares`` (D-PSGD, adapt-then-combine and gradient
tracking on least squares with different data per worker). Every function here takes the
communicator first, so ``launch(fn, ..., workers=n)`` runs it on SimComm or under ``mpiexec``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..base import create
from .comm import per_dtype
from .problems import HeterogeneousLeastSquares
from .topology import Topology, gossip

__all__ = ["DecentralizedSGD", "GradientTracking", "consensus_error", "consensus_curve",
           "heterogeneous_least_squares", "ALGORITHMS"]

#: The names ``heterogeneous_least_squares(algorithm=...)`` accepts.
ALGORITHMS = ("dpsgd", "atc", "gradient-tracking")


def _as_topology(comm, topology) -> Topology:
    topology = Topology(topology, comm.size) if isinstance(topology, str) else topology
    if not isinstance(topology, Topology):
        raise TypeError(f"topology must be a Topology or one of its names, "
                        f"got {type(topology).__name__}")
    if topology.size != comm.size:
        raise ValueError(f"topology {topology!r} is for {topology.size} workers, the communicator "
                         f"has {comm.size}")
    return topology


def _gossip_all(comm, arrays: list, topology: Topology, k: int) -> list:
    """Gossip several arrays with one neighbour exchange per dtype (gossip works element by
    element, so the result is the same bits as gossiping each array alone). Every rank must pass
    the same shapes and dtypes in the same order."""
    return per_dtype(arrays, lambda flat: gossip(comm, flat, topology, k))


class _Decentralized:
    """What D-PSGD and gradient tracking share: the communicator, the graph, the local optimizer
    and the iteration counter that picks the mixing matrix of a time-varying graph."""

    def __init__(self, comm, topology, optimizer):
        gradients = getattr(optimizer, "uses_gradients", False)
        if not gradients or getattr(optimizer, "uses_closure", True):
            why = "needs a closure" if gradients else "evaluates the loss itself"
            raise TypeError(f"{type(self).__name__}: the local optimizer must take one gradient per "
                            f"step (step(grads)); {type(optimizer).__name__} {why}")
        self.comm = comm
        self.topology = _as_topology(comm, topology)
        self.optimizer = optimizer
        self.iteration = 0

    @property
    def params(self) -> dict:
        """This worker's parameters (the optimizer's live arrays), dict name -> array."""
        return self.optimizer.params

    def _check_grads(self, grads) -> None:
        """The gossip needs every parameter's gradient on every rank (a rank that skipped one
        would leave the others waiting), so None is refused here, before any communication."""
        if not isinstance(grads, Mapping):
            raise TypeError(f"{type(self).__name__}.step(grads): expected a dict name -> ndarray, "
                            f"got {type(grads).__name__}")
        missing = [n for n in self.params if grads.get(n) is None]
        if missing:
            raise ValueError(f"{type(self).__name__}.step: no gradient for parameter(s) {missing}; "
                             f"every parameter needs one at every step")

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, sd) -> None:
        self.optimizer.load_state_dict(sd["optimizer"])
        self.iteration = int(sd["iteration"])


class DecentralizedSGD(_Decentralized):
    """Decentralized SGD for this worker, in either order::

        opt = DecentralizedSGD(comm, Topology("ring", comm.size), optim.create("sgd", params, lr=0.1))
        opt.step(grads)      # grads at this worker's current params

    ``order="dpsgd"``: x <- sum_j w_ij x_j + (local step of x) -- the gossip mixes the parameters
    from before the step, the local optimizer's update is added to the mix. ``order="atc"``
    (adapt-then-combine): x <- sum_j w_ij (local step of x)_j. With plain SGD these are
    X <- W X - lr G and X <- W (X - lr G)."""

    def __init__(self, comm, topology, optimizer, order: str = "dpsgd"):
        if order not in ("dpsgd", "atc"):
            raise ValueError(f"DecentralizedSGD: order must be 'dpsgd' or 'atc', got {order!r}")
        super().__init__(comm, topology, optimizer)
        self.order = order

    def step(self, grads) -> None:
        self._check_grads(grads)
        params = self.params
        names = list(params)
        if self.order == "dpsgd":
            # the local step first (it validates grads before any message is sent), then the
            # gossip of the parameters from before it
            before = [params[n].copy() for n in names]
            self.optimizer.step(grads)
            mixed = _gossip_all(self.comm, before, self.topology, self.iteration)
            for n, m, b in zip(names, mixed, before):
                p = params[n]
                p[...] = m + (p - b)
        else:
            self.optimizer.step(grads)
            mixed = _gossip_all(self.comm, [params[n] for n in names], self.topology, self.iteration)
            for n, m in zip(names, mixed):
                params[n][...] = m
        self.iteration += 1


class GradientTracking(_Decentralized):
    """Gradient tracking (DIGing) for this worker::

        opt = GradientTracking(comm, Topology("ring", comm.size), optim.create("sgd", params, lr=0.05))
        opt.step(grads)      # grads = grad f_i at this worker's current params

    Step k: x_{k+1} = sum_j w_ij x_j + (local step of x_k along y_k), then
    y_{k+1} = sum_j w_ij y_j + g_{k+1} - g_k once the next gradient g_{k+1} arrives (y_0 = g_0).
    x_k and y_k are gossiped together, with the same W_k, in one exchange. With plain SGD the
    local step is -lr y, which is DIGing exactly. Keeps 2 arrays per parameter: the tracker y and
    (W y)_i - g_k."""

    def __init__(self, comm, topology, optimizer):
        super().__init__(comm, topology, optimizer)
        self.tracker: dict | None = None     # y_k
        self._carry: dict | None = None      # (W_{k-1} y_{k-1})_i - g_{k-1}: y_k = carry + g_k

    def step(self, grads) -> None:
        self._check_grads(grads)
        params = self.params
        names = list(params)
        for n in names:
            g, p = grads[n], params[n]
            if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"GradientTracking.step: gradient of {n!r} must be an ndarray of "
                                 f"shape {p.shape} and dtype {p.dtype}, got "
                                 f"{getattr(g, 'shape', type(g).__name__)} {getattr(g, 'dtype', '')}")
        if self._carry is None:
            tracker = {n: grads[n].copy() for n in names}
        else:
            tracker = {n: self._carry[n] + grads[n] for n in names}
        before = [params[n].copy() for n in names]
        self.optimizer.step(tracker)
        mixed = _gossip_all(self.comm, before + [tracker[n] for n in names], self.topology,
                            self.iteration)
        for n, m, b in zip(names, mixed, before):
            p = params[n]
            p[...] = m + (p - b)
        self._carry = {n: m - grads[n] for n, m in zip(names, mixed[len(names):])}
        self.tracker = tracker
        self.iteration += 1

    def state_dict(self) -> dict:
        sd = super().state_dict()
        if self._carry is not None:
            sd["tracker"] = {n: y.copy() for n, y in self.tracker.items()}
            sd["carry"] = {n: c.copy() for n, c in self._carry.items()}
        return sd

    def load_state_dict(self, sd) -> None:
        super().load_state_dict(sd)
        if "carry" in sd:
            self.tracker = {n: np.array(y) for n, y in sd["tracker"].items()}
            self._carry = {n: np.array(c) for n, c in sd["carry"].items()}
        else:
            self.tracker = self._carry = None


def consensus_error(comm, params) -> float:
    """Mean over workers of ||x_i - xbar||^2, xbar the average over workers (summed over the
    arrays of a dict); the same float on every rank. Computed in float64 with two all-reduces."""
    arrays = list(params.values()) if isinstance(params, Mapping) else [params]
    flat = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])
    mean = comm.allreduce(flat, op="mean")
    local = np.array([np.sum((flat - mean) ** 2)])
    return float(comm.allreduce(local, op="mean")[0])


def consensus_curve(comm, topology, steps: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Gossip alone, from x_i ~ N(0, I_dim) drawn per rank: the consensus error (see
    ``consensus_error``) before each of ``steps`` rounds and after the last, shape (steps + 1,).
    It obeys errors[k] <= topology.rate()^(2k) * errors[0] for k a multiple of
    ``topology.period`` (every k for a static graph; inside a period of a time-varying graph it
    can stay above: the one-peer exponential graph on 8 workers has rate 0, exact consensus after
    its 3 rounds, but errors[1] and errors[2] > 0), and for a static graph with a symmetric or
    circulant W it decays at that rate."""
    topology = _as_topology(comm, topology)
    x = np.random.default_rng([seed, comm.rank]).standard_normal(dim)
    errors = [consensus_error(comm, x)]
    for k in range(steps):
        x = gossip(comm, x, topology, k)
        errors.append(consensus_error(comm, x))
    return np.array(errors)


def heterogeneous_least_squares(comm, topology, algorithm: str = "dpsgd", lr: float = 0.05,
                                steps: int = 500, dim: int = 10, rows: int = 40,
                                heterogeneity: float = 1.0, seed: int = 0,
                                optimizer: str = "sgd") -> np.ndarray:
    """Minimize f(x) = mean_i f_i(x) on ``HeterogeneousLeastSquares(comm.size, dim, rows=rows,
    heterogeneity=heterogeneity, seed=seed)`` with full local gradients (so any error left is
    bias, not noise), every worker starting at x = 0. ``algorithm``: "dpsgd", "atc" or
    "gradient-tracking"; the local step is ``optim.create(optimizer, params, lr=lr)``.

    Returns the relative squared distance to the global minimizer x*, mean_i ||x_i - x*||^2 /
    ||x*||^2, before the first step and after each step: shape (steps + 1,)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"heterogeneous_least_squares: algorithm must be one of {ALGORITHMS}, "
                         f"got {algorithm!r}")
    topology = _as_topology(comm, topology)
    problem = HeterogeneousLeastSquares(comm.size, dim, rows=rows, heterogeneity=heterogeneity,
                                        seed=seed)
    x_star = problem.optimum
    params = {"x": np.zeros(dim)}
    local = create(optimizer, params, lr=lr)
    if algorithm == "gradient-tracking":
        opt = GradientTracking(comm, topology, local)
    else:
        opt = DecentralizedSGD(comm, topology, local, order=algorithm)

    def error():
        local_error = np.array([np.sum((params["x"] - x_star) ** 2)])
        return float(comm.allreduce(local_error, op="mean")[0]) / float(x_star @ x_star)

    errors = [error()]
    for _ in range(steps):
        opt.step({"x": problem.gradient(comm.rank, params["x"])})
        errors.append(error())
    return np.array(errors)
