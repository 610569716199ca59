"""Communication graphs for decentralized training: mixing matrices, spectral gap, gossip.

Decentralized methods replace the all-reduce average by a weighted average over neighbours. With
the workers' copies stacked as the rows of X, one gossip round is X <- W X: worker i computes

    x_i <- sum_j W[i, j] x_j

Row i of W holds the weights worker i *receives* with, so W[i, j] != 0 (j != i) means j sends to
i: j is a source of i and i a dest of j (what ``comm.neighbor_exchange(x, sources, dests)`` takes).
Every matrix here is a mixing matrix: nonnegative, with rows and columns summing to one (doubly
stochastic), so a round keeps the network average xbar and shrinks the distance to it,

    ||X_{k+1} - 1 xbar^T||_F <= rho ||X_k - 1 xbar^T||_F,   rho = ||W - 11^T/n||_2,

and ``spectral_gap(W) = 1 - rho`` says how fast a graph averages (1: in one round, 0: never).

Topologies (n workers; the papers give the weights):

    ring        self and the two neighbours i +- 1, weights 1/3: 1 - rho = (2/3)(1 - cos(2 pi/n)),
                O(1/n^2) (Lian et al., NeurIPS 2017, arXiv 1705.09056). n = 2: the two neighbours
                are one node, so the ring is a single edge, weights 1/2 (exact averaging);
                n = 1: W = [[1]].
    torus       2-D rows x cols grid with wrap-around, each node linked to 4 neighbours, weights
                1/5; gap O(1/n). ``rows`` defaults to the largest divisor of n that is <= sqrt(n)
                (n = 12: 3 x 4; n = 8: 2 x 4). A side of 2 (its two wrap-around neighbours are
                one node) gives 3 distinct neighbours, weights 1/4, and both sides of 2 (n = 4)
                give 2, weights 1/3 (Metropolis-Hastings, below). n prime has no such grid and
                is refused.
    exponential static exponential graph: node i averages with i + 2^0, i + 2^1, ...,
                i + 2^(tau-1) (mod n), tau = ceil(log2 n), uniform weights 1/(tau + 1). Directed:
                doubly stochastic but NOT symmetric. For n a power of two 1 - rho = 2/(1 + log2 n)
                (Ying, Yuan, Chen, Hu, Pan, Yin, NeurIPS 2021, arXiv 2110.13363).
    one-peer-exponential   time-varying: at iteration k node i averages with the single peer
                i + 2^(k mod tau), weights (1/2, 1/2). For n a power of two the product of tau
                consecutive matrices is exactly 11^T/n: exact averaging after log2 n rounds, one
                message per round (same paper).
    complete    W = 11^T/n: exact averaging in one round (what an all-reduce computes).
    star        worker ``center`` linked to all others, Metropolis-Hastings weights: 1/n on each
                edge, leaves keep 1 - 1/n; 1 - rho = 1/n for n >= 3.

Metropolis-Hastings weights make any undirected graph's matrix symmetric and doubly stochastic:
W[i, j] = 1/(1 + max(deg_i, deg_j)) on an edge and W[i, i] = 1 - sum of the others (Xiao, Boyd,
Lall, "A scheme for robust distributed sensor fusion based on average consensus", IPSN 2005).
Ring and torus are regular, so it gives them the uniform weights above.

Per worker, a ``Topology`` gives the sources, dests and weights at iteration k, and
``gossip(comm, x, topology, k)`` does one round for one worker over any communicator.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["TOPOLOGIES", "ring", "torus", "torus_shape", "exponential", "one_peer_exponential",
           "complete", "star", "metropolis_hastings", "mixing_matrix", "check_mixing_matrix",
           "spectral_gap", "Neighbors", "Topology", "gossip"]

#: The names ``Topology(name, n)`` and ``mixing_matrix(name, n, k)`` accept.
TOPOLOGIES = ("ring", "torus", "exponential", "one-peer-exponential", "complete", "star")


def _check_size(n, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{where}: the number of workers n must be an integer >= 1, got {n!r}")
    return int(n)


def _check_iteration(k, where: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"{where}: the iteration k must be an integer >= 0, got {k!r}")
    return int(k)


def _log2_ceil(n: int) -> int:
    """tau = ceil(log2 n), in integers (0 for n = 1)."""
    return (n - 1).bit_length()


def metropolis_hastings(adjacency) -> np.ndarray:
    """The Metropolis-Hastings mixing matrix of an undirected graph given by its symmetric 0/1
    adjacency matrix (no self-loops needed; the diagonal is ignored)."""
    a = np.asarray(adjacency) != 0
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"metropolis_hastings: adjacency must be a square matrix, got shape {a.shape}")
    if not (a == a.T).all():
        raise ValueError("metropolis_hastings: adjacency must be symmetric (an undirected graph)")
    n = a.shape[0]
    a = a & ~np.eye(n, dtype=bool)
    degree = a.sum(axis=1)
    if (degree == degree[0]).all():
        # regular graph: every weight, the diagonal's too, is 1/(deg + 1); written so the diagonal
        # is that float exactly rather than 1 minus the others
        return np.where(a | np.eye(n, dtype=bool), 1.0 / (degree[0] + 1.0), 0.0)
    w = np.where(a, 1.0 / (1.0 + np.maximum(degree[:, None], degree[None, :])), 0.0)
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w


def _circulant(n: int, offsets: dict) -> np.ndarray:
    """W[i, (i + offset) % n] += weight for each offset: node i averages with node i + offset."""
    w = np.zeros((n, n))
    rows = np.arange(n)
    for offset, weight in offsets.items():
        w[rows, (rows + offset) % n] += weight
    return w


def ring(n) -> np.ndarray:
    """Ring: self and the neighbours i - 1, i + 1 (mod n), each weight 1/3 (n >= 3). n = 2 gives a
    single edge with weights 1/2, n = 1 gives [[1]] (the Metropolis-Hastings weights of those
    graphs)."""
    n = _check_size(n, "ring")
    idx = np.arange(n)
    adjacency = np.zeros((n, n), dtype=bool)
    adjacency[idx, (idx + 1) % n] = adjacency[(idx + 1) % n, idx] = True
    return metropolis_hastings(adjacency)


def _has_torus_shape(n: int) -> bool:
    """Whether n = rows*cols with rows, cols >= 2 (n >= 4 and not prime)."""
    return any(n % d == 0 for d in range(2, math.isqrt(n) + 1))


def torus_shape(n, rows=None) -> tuple[int, int]:
    """(rows, cols) of the 2-D torus on n workers: ``rows`` if given, else the largest divisor of
    n that is <= sqrt(n). Both sides must be >= 2; raises ValueError naming the numbers otherwise."""
    n = _check_size(n, "torus")
    if rows is None:
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        if rows < 2:
            near = [m for m in (n - 1, n + 1) if m >= 4 and _has_torus_shape(m)]
            hint = f"use ring({n})" + (f", or n = {' or '.join(map(str, near))}" if near else "")
            raise ValueError(f"torus: n={n} {'is prime, so it ' if n > 1 else ''}has no "
                             f"factorization rows*cols with rows, cols >= 2; {hint}")
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 2 or n % rows \
            or n // rows < 2:
        raise ValueError(f"torus: rows={rows!r} must be an integer >= 2 dividing n={n} with "
                         f"cols = n/rows >= 2")
    return int(rows), n // int(rows)


def torus(n, rows=None) -> np.ndarray:
    """2-D torus: node r*cols + c linked to (r +- 1, c) and (r, c +- 1), wrapping around;
    Metropolis-Hastings weights (1/5 when rows, cols >= 3). See ``torus_shape`` for the grid."""
    rows, cols = torus_shape(n, rows)
    adjacency = np.zeros((rows * cols,) * 2, dtype=bool)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for rr, cc in ((r + 1) % rows, c), (r, (c + 1) % cols):
                adjacency[i, rr * cols + cc] = adjacency[rr * cols + cc, i] = True
    return metropolis_hastings(adjacency)


def exponential(n) -> np.ndarray:
    """Static exponential graph: node i averages with itself and i + 2^m (mod n) for
    m = 0..tau-1, tau = ceil(log2 n), each weight 1/(tau + 1). Doubly stochastic (the offsets are
    distinct and nonzero mod n), not symmetric for n >= 4."""
    n = _check_size(n, "exponential")
    tau = _log2_ceil(n)
    weight = 1.0 / (tau + 1)
    return _circulant(n, {0: weight, **{2 ** m: weight for m in range(tau)}})


def one_peer_exponential(n, k) -> np.ndarray:
    """One-peer exponential graph at iteration k: node i averages with i + 2^(k mod tau) (mod n),
    tau = ceil(log2 n), weights 1/2 and 1/2. n = 1 gives [[1]]."""
    n = _check_size(n, "one_peer_exponential")
    k = _check_iteration(k, "one_peer_exponential")
    tau = _log2_ceil(n)
    if tau == 0:
        return np.ones((1, 1))
    return _circulant(n, {0: 0.5, 2 ** (k % tau): 0.5})


def complete(n) -> np.ndarray:
    """Complete graph: every weight 1/n, so one round gives every worker the exact average."""
    n = _check_size(n, "complete")
    return np.full((n, n), 1.0 / n)


def star(n, center=0) -> np.ndarray:
    """Star: ``center`` linked to every other worker; Metropolis-Hastings weights, i.e. 1/n on each
    edge, 1/n kept by the center and 1 - 1/n by each leaf."""
    n = _check_size(n, "star")
    if isinstance(center, bool) or not isinstance(center, (int, np.integer)) or not 0 <= center < n:
        raise ValueError(f"star: center must be a rank in 0..{n - 1}, got {center!r}")
    w = np.diag(np.full(n, 1.0 - 1.0 / n))
    w[center, :] = w[:, center] = 1.0 / n       # the MH weight 1/(1 + max(n - 1, 1)) on each edge
    return w


def mixing_matrix(name: str, n, k=0, **options) -> np.ndarray:
    """The mixing matrix of topology ``name`` (one of ``TOPOLOGIES``) on n workers at iteration k
    (only the one-peer exponential graph depends on k). ``options``: ``rows`` for the torus,
    ``center`` for the star."""
    builders = {"ring": ring, "torus": torus, "exponential": exponential, "complete": complete,
                "star": star}
    allowed = {"torus": {"rows"}, "star": {"center"}}
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    unknown = set(options) - allowed.get(name, set())
    if unknown:
        raise TypeError(f"topology {name!r} takes no option(s) {sorted(unknown)}"
                        + (f"; it takes {sorted(allowed[name])}" if name in allowed else ""))
    if name == "one-peer-exponential":
        return one_peer_exponential(n, k)
    _check_iteration(k, name)
    return builders[name](n, **options)


def check_mixing_matrix(w, atol: float = 1e-12) -> np.ndarray:
    """Return ``w`` as a float64 array after checking it is a mixing matrix: square, nonnegative,
    rows and columns summing to 1 (within ``atol``). Raises ValueError naming what fails."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"mixing matrix must be square, got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("mixing matrix must be finite and nonnegative")
    for axis, what in ((1, "row"), (0, "column")):
        sums = w.sum(axis=axis)
        worst = int(np.argmax(np.abs(sums - 1.0)))
        if abs(sums[worst] - 1.0) > atol:
            raise ValueError(f"mixing matrix must be doubly stochastic: {what} {worst} sums to "
                             f"{sums[worst]!r}, not 1")
    return w


def spectral_gap(w) -> float:
    """1 - ||W - 11^T/n||_2 (the largest singular value, so it also holds for a non-symmetric W):
    a gossip round shrinks the distance to the average by at least a factor 1 - gap."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"spectral_gap: W must be square, got shape {w.shape}")
    return 1.0 - float(np.linalg.norm(w - 1.0 / w.shape[0], 2))


class Neighbors(NamedTuple):
    """What one worker needs for one gossip round: it receives from ``sources`` (ascending ranks,
    with ``weights`` aligned to them), keeps ``self_weight`` of its own value, and sends to
    ``dests`` (ascending)."""
    sources: tuple
    dests: tuple
    self_weight: float
    weights: tuple


class Topology:
    """A communication graph on ``size`` workers, possibly time-varying with a period::

        topo = Topology("exponential", 8)         # or Topology.from_matrices([W0, W1, ...])
        topo.matrix(k)                            # W at iteration k (n x n)
        topo.neighbors(rank, k)                   # Neighbors(sources, dests, self_weight, weights)
        topo.rate()                               # rho per iteration (0: exact averaging)

    Static topologies have period 1; the one-peer exponential graph has period ceil(log2 n).
    Every worker builds the same object; each asks only for its own neighbours."""

    def __init__(self, name: str, n, **options):
        n = _check_size(n, f"Topology({name!r})")
        period = max(1, _log2_ceil(n)) if name == "one-peer-exponential" else 1
        self._init(name, [mixing_matrix(name, n, k, **options) for k in range(period)])
        self.options = dict(options)

    @classmethod
    def from_matrices(cls, matrices, name: str = "custom") -> "Topology":
        """A topology that cycles through the given mixing matrices (one for a static graph)."""
        matrices = [check_mixing_matrix(w).copy() for w in matrices]
        if not matrices:
            raise ValueError("Topology.from_matrices: give at least one mixing matrix")
        if len({w.shape for w in matrices}) > 1:
            raise ValueError(f"Topology.from_matrices: matrices of different shapes "
                             f"{sorted({w.shape for w in matrices})}")
        topo = cls.__new__(cls)
        topo._init(name, matrices)
        topo.options = {}
        return topo

    def _init(self, name, matrices):
        self.name = name
        self.size = matrices[0].shape[0]
        self.period = len(matrices)
        self._matrices = matrices
        for w in matrices:
            w.setflags(write=False)
        self._neighbors: dict = {}

    def matrix(self, k=0) -> np.ndarray:
        """The mixing matrix at iteration k (read-only)."""
        return self._matrices[_check_iteration(k, "Topology.matrix") % self.period]

    def neighbors(self, rank, k=0) -> Neighbors:
        """Sources, dests and weights of ``rank`` at iteration k, read off ``matrix(k)``: the
        sources are the j != rank with W[rank, j] != 0, the dests the i != rank with W[i, rank] != 0."""
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
                or not 0 <= rank < self.size:
            raise ValueError(f"Topology {self.name!r}: rank must be in 0..{self.size - 1}, got {rank!r}")
        phase = _check_iteration(k, "Topology.neighbors") % self.period
        key = (int(rank), phase)
        if key not in self._neighbors:
            w = self._matrices[phase]
            sources = tuple(int(j) for j in np.flatnonzero(w[rank]) if j != rank)
            dests = tuple(int(i) for i in np.flatnonzero(w[:, rank]) if i != rank)
            self._neighbors[key] = Neighbors(sources, dests, float(w[rank, rank]),
                                             tuple(float(w[rank, j]) for j in sources))
        return self._neighbors[key]

    def spectral_gap(self) -> float:
        """1 - rho of a static topology; for a time-varying one use ``rate()``."""
        if self.period != 1:
            raise ValueError(f"Topology {self.name!r} changes every iteration (period {self.period}); "
                             f"one matrix's gap does not describe it, use rate()")
        return spectral_gap(self._matrices[0])

    def rate(self) -> float:
        """rho per iteration: ||W_{p-1} ... W_1 W_0 - 11^T/n||_2^(1/p) over one period p (the
        distance to the average shrinks at least by rho^p every p rounds). Static: 1 - gap."""
        product = np.eye(self.size)
        for w in self._matrices:
            product = w @ product
        return float(np.linalg.norm(product - 1.0 / self.size, 2)) ** (1.0 / self.period)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Topology({self.name!r}, {self.size}{extra})"


def gossip(comm, x, topology: Topology, k=0) -> np.ndarray:
    """One gossip round for this worker: sum_j W[rank, j] x_j over its neighbours at iteration k,
    as a new array of x's dtype (a float32 x is weighted and summed in float32). Summed in a fixed
    order -- its own term first, then the sources' in ascending rank:
    ((w_ii x_i + w_ij1 x_j1) + w_ij2 x_j2) + ... -- so SimComm and MPIComm give the same bits.
    Every worker of ``comm`` must call it with the same k."""
    if topology.size != comm.size:
        raise ValueError(f"gossip: topology {topology!r} is for {topology.size} workers, the "
                         f"communicator has {comm.size}")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"gossip: x must be a floating-point array (the average of integers is not "
                        f"an integer), got dtype {x.dtype}")
    nb = topology.neighbors(comm.rank, k)
    received = comm.neighbor_exchange(x, nb.sources, nb.dests)
    out = (nb.self_weight * x).astype(x.dtype, copy=False)
    for w, xj in zip(nb.weights, received):
        out += w * xj
    return out
