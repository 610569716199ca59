"""Embedding backward: scatter-add of the output gradient rows into the table's gradient.

NumPy twin: `reference.embedding_backward` (np.add.at, which is correct but slow: it runs an
unbuffered generic loop per element).
"""
from .._numba_cache import njit
from ._math import FASTMATH


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def embedding_bwd(idx, g, out):
    """out[idx[i], :] += g[i, :] for every row i; out must start at zero.

    Deliberately serial: a repeated token id sends several rows to the same output row, so
    running rows in parallel would race (lost updates). The inner loop over channels is a
    contiguous axpy that vectorises; at GPT sizes the whole scatter is one pass over g."""
    c = g.shape[1]
    for i in range(idx.shape[0]):
        r = idx[i]
        for j in range(c):
            out[r, j] += g[i, j]
