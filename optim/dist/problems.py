"""Heterogeneous least squares: the one test problem of the distributed algorithms (lecture 10).

Worker i holds its own data (A_i, b_i) and objective f_i(x) = ||A_i x - b_i||^2 / (2 rows); the
workers minimize f(x) = mean_i f_i(x). Each worker's targets come from its own minimizer
x_c + heterogeneity * u_i (x_c shared, u_i ~ N(0, I) its own), so with heterogeneity > 0
grad f_i(x*) != 0 at the common minimizer x*: what makes decentralized SGD stall on sparse graphs,
Local SGD drift between averages, and biased compressors without error feedback stop short.

Every rank builds the same problem from ``seed`` (worker i's data from its own child of
``SeedSequence(seed)``), so the global optimum and loss need no communication::

    problem = HeterogeneousLeastSquares(comm.size, 10, rows=40)
    x = x - lr * problem.gradient(comm.rank, x)          # this worker's full gradient
    problem.loss_gap(x)                                  # f(x) - f(x*)
"""
from __future__ import annotations

from numbers import Integral

import numpy as np

__all__ = ["HeterogeneousLeastSquares"]


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"HeterogeneousLeastSquares: {what} must be an integer >= 1, got {value!r}")
    return int(value)


class HeterogeneousLeastSquares:
    """f(x) = mean_i ||A_i x - b_i||^2 / (2 rows) over ``workers`` workers.

    shape          x's shape: ``d`` or ``(d,)`` for a vector, ``(d, c)`` for a matrix (c targets)
    rows           rows of each worker's A_i (default 2d)
    heterogeneity  the spread of the workers' own minimizers around the shared x_c

    A_i ~ N(0, 1) of shape (rows, d); b_i = A_i (x_c + heterogeneity * u_i), so f_i reaches 0 at
    worker i's own minimizer and f(x*) > 0 when heterogeneity > 0.
    Attributes: ``workers``, ``shape``, ``rows``, ``hessian`` H = mean_i A_i^T A_i / rows,
    ``optimum`` x* (solves H x = mean_i A_i^T b_i / rows), ``lipschitz`` L (the largest
    eigenvalue of H)."""

    def __init__(self, workers: int, shape=10, *, rows: int | None = None, heterogeneity: float = 1.0,
                 seed: int = 0):
        self.workers = _count(workers, "workers")
        self.shape = (shape,) if isinstance(shape, Integral) else tuple(shape)
        if len(self.shape) not in (1, 2) or not all(isinstance(s, Integral) and s >= 1 for s in self.shape):
            raise ValueError(f"HeterogeneousLeastSquares: shape must be d, (d,) or (d, c) with positive "
                             f"integer sizes, got {shape!r}")
        self.shape = tuple(int(s) for s in self.shape)
        dim = self.shape[0]
        self.rows = _count(2 * dim if rows is None else rows, "rows")
        shared, *own = np.random.SeedSequence(seed).spawn(1 + self.workers)
        center = np.random.default_rng(shared).standard_normal(self.shape)
        self.features, self.targets = [], []
        for seq in own:
            rng = np.random.default_rng(seq)
            a = rng.standard_normal((self.rows, dim))
            self.features.append(a)
            self.targets.append(a @ (center + heterogeneity * rng.standard_normal(self.shape)))
        # per worker H_i = A_i^T A_i / rows and c_i = A_i^T b_i / rows: a full gradient costs d^2 c
        self.hessians = np.stack([a.T @ a for a in self.features]) / self.rows
        self.moments = np.stack([a.T @ b for a, b in zip(self.features, self.targets)]) / self.rows
        self.hessian = self.hessians.mean(axis=0)
        self.optimum = np.linalg.solve(self.hessian, self.moments.mean(axis=0))
        self.lipschitz = float(np.linalg.eigvalsh(self.hessian)[-1])

    def _worker(self, worker) -> int:
        if isinstance(worker, bool) or not isinstance(worker, Integral) or not 0 <= worker < self.workers:
            raise IndexError(f"HeterogeneousLeastSquares: worker must be in 0..{self.workers - 1}, "
                             f"got {worker!r}")
        return int(worker)

    def data(self, worker: int) -> tuple[np.ndarray, np.ndarray]:
        """Worker ``worker``'s (A_i, b_i)."""
        i = self._worker(worker)
        return self.features[i], self.targets[i]

    def gradient(self, worker: int, x, rows=None) -> np.ndarray:
        """grad f_worker(x) = H_i x - c_i, or with ``rows`` (indices into the worker's rows) the
        minibatch estimate A_i[rows]^T (A_i[rows] x - b_i[rows]) / len(rows)."""
        i = self._worker(worker)
        if rows is None:
            return self.hessians[i] @ x - self.moments[i]
        a, b = self.features[i][rows], self.targets[i][rows]
        return a.T @ (a @ x - b) / len(b)

    def loss(self, x) -> float:
        """f(x) = mean_i ||A_i x - b_i||^2 / (2 rows)."""
        return float(np.mean([np.sum((a @ x - b) ** 2) for a, b in zip(self.features, self.targets)])
                     / (2 * self.rows))

    def loss_gap(self, x) -> float:
        """f(x) - f(x*) = (x - x*)^T H (x - x*) / 2, exactly (grad f(x*) = 0), without the
        cancellation of subtracting two losses."""
        e = x - self.optimum
        return float(np.sum(e * (self.hessian @ e)) / 2)

    def relative_error(self, x) -> float:
        """||x - x*|| / ||x*||."""
        return float(np.linalg.norm(x - self.optimum) / np.linalg.norm(self.optimum))

    def __repr__(self) -> str:
        return f"HeterogeneousLeastSquares(workers={self.workers}, shape={self.shape}, rows={self.rows})"
