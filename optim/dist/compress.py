"""Gradient compression for distributed training: compressors, error feedback, and a reducer that
averages compressed gradients over the workers of a communicator (Lecture 10).

Three layers, each usable alone:

* **Compressors** work on one array: ``payload = c.compress(x, rng)``, ``c.decompress(payload)``
  and ``c.wire_bytes(payload)``. A :class:`Payload` holds ``parts``, the arrays that go on the
  wire in exactly the encoding each class states (so ``wire_bytes`` is their ``nbytes``), and
  ``meta``, what a receiver recomputes without being sent (rand-k's indices drawn from a seed
  every worker shares). ``c(x, rng)`` is ``C(x)``, the decompressed compression.

      Identity     x, uncompressed                               d*b bytes
      QSGD(s)      stochastic levels, unbiased                   b + ceil(d/8) + ceil(d*bits(s)/8)
      TopK(k)      the k largest |x_i|, contractive              k*b + 4k
      RandK(k)     k random coordinates, scaled d/k (unbiased)   k*b (+ 4k without a shared seed)
                   or unscaled (contractive)
      ScaledSign   (||x||_1/d) * sign(x), contractive            ceil(d/8) + b
      PowerSGD(r)  a rank-r factor pair P, Q per matrix          (n + m)*r*b; 1-D tensors: d*b

  (b = the array's itemsize; d = its size; bits(s) = the bits of the integer s.)

* **Exchange.** ``Reducer(comm, compressor)`` compresses each worker's dict of named arrays and
  returns ``(own, mean)``: this worker's ``C_i(x_i)`` and the mean over workers of
  ``C_j(x_j)``. Compressors whose payloads are combined by summing (``exchange="allreduce"``:
  the identity, rand-k with a shared seed, and PowerSGD's P and Q) are averaged with
  ``comm.allreduce``; the others send fixed-size payloads with one ``comm.allgather`` of all
  parts as bytes, and every worker decompresses all of them. The communicator's byte counters
  then show what each worker put on the wire. A reducer is a gradient hook: ``reducer(grads)``
  replaces each array of the dict by the mean (``None`` entries, frozen parameters, are skipped).

* **Error feedback** wraps a reducer and is again a hook:
  ``EF14(reducer, lr)`` keeps e_i and sends the lr-scaled step (Seide et al. 2014; Stich,
  Cordonnier, Jaggi, NeurIPS 2018, arXiv 1809.07599; Karimireddy et al., ICML 2019,
  arXiv 1901.09847):  p = lr*g_i + e_i;  Delta_i = C(p);  e_i <- p - Delta_i;  the step is
  mean_j Delta_j.  ``EF21(reducer)`` keeps g_i, a compressed estimate of the worker's gradient
  (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021, arXiv 2106.05203):
  g_i <- g_i + C(grad f_i - g_i); the update direction is g = mean_j g_j.

  Reducers and error feedback carry state from step to step (the generators, PowerSGD's warm
  start, e_i, g_i and g): ``state_dict()`` / ``load_state_dict()`` save and restore it, and the
  Trainer keeps it in each rank's checkpoint when they are its gradient hooks.

On heterogeneous workers (different local optima) biased compressors alone stop short of the
optimum; EF14 with a constant lr reaches a neighbourhood whose size shrinks with lr (each
worker's error keeps absorbing lr * grad f_i(x*) != 0); EF21 converges like uncompressed GD,
because the differences it compresses vanish at the optimum. Compressors that act on the sum
of the workers' arrays (shared-seed rand-k, PowerSGD) have no such floor: their output sees the
workers only through the mean gradient, as on one machine. Bytes: an all-reduce sends
2(n-1)/n of the buffer per worker whatever n is, an allgather (n-1) payloads, so top-k's saving
over an uncompressed all-reduce shrinks as workers are added. :func:`loss_vs_bytes` measures
all of this on ``optim.dist.problems.HeterogeneousLeastSquares``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Callable

import numpy as np

from .comm import Communicator, LayoutCheck, per_dtype
from .launcher import launch
from .problems import HeterogeneousLeastSquares

__all__ = ["Payload", "Compressor", "Identity", "QSGD", "TopK", "RandK", "ScaledSign", "PowerSGD",
           "Reducer", "EF14", "EF21", "elias_omega_bits", "train_least_squares", "default_runs",
           "loss_vs_bytes"]


@dataclass
class Payload:
    """One compressed array. ``parts`` go on the wire (their ``nbytes`` are the wire bytes);
    ``meta`` is what every receiver recomputes itself (e.g. indices from a shared seed)."""
    shape: tuple
    dtype: np.dtype
    parts: dict
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _check_count(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _floating(x, where: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{where}: expected a floating-point array, got dtype {x.dtype}; "
                        f"cast the gradient with .astype(np.float32) or np.float64")
    return x


# ------------------------------------------------------------------ packing helpers
def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integers < 2**bits as a fixed-width bit string (least significant bit first
    within each value), packed into ceil(len * bits / 8) bytes."""
    v = values.astype(np.min_scalar_type(2**bits - 1))
    planes = np.empty((v.size, bits), np.uint8)
    for b in range(bits):
        planes[:, b] = (v >> b) & 1
    return np.packbits(planes.ravel())


def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(packed, count=count * bits).reshape(count, bits)
    out = np.zeros(count, np.min_scalar_type(2**bits - 1))
    for b in range(bits):
        out |= planes[:, b].astype(out.dtype) << b
    return out


def _as_bytes(payloads) -> np.ndarray:
    """Every part of every payload, in order, as one byte string."""
    chunks = [np.ascontiguousarray(a).reshape(-1).view(np.uint8)
              for p in payloads for a in p.parts.values()]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)


def _from_bytes(row: np.ndarray, templates) -> list:
    """The inverse of ``_as_bytes``: payloads laid out like ``templates`` (fixed-size parts)."""
    out, offset = [], 0
    for t in templates:
        parts = {}
        for key, a in t.parts.items():
            parts[key] = row[offset:offset + a.nbytes].copy().view(a.dtype).reshape(a.shape)
            offset += a.nbytes
        out.append(Payload(t.shape, t.dtype, parts))
    return out


def _allreduce_mean(comm: Communicator, arrays: list) -> list:
    """The mean over ranks of each array, with one allreduce per dtype."""
    return per_dtype(arrays, lambda flat: comm.allreduce(flat, op="mean"))


# ------------------------------------------------------------------ compressors
class Compressor:
    """The interface (see the module docstring). Subclasses define ``compress`` and ``decompress``;
    ``exchange`` says how a :class:`Reducer` averages payloads over workers:

    "allgather"  every worker's parts are gathered (fixed sizes) and each payload decompressed;
    "allreduce"  decompress is linear in the parts and the meta is the same on every worker when
                 ``compress`` draws from the shared generator, so the parts' mean is the mean's
                 payload."""
    exchange = "allgather"

    def compress(self, x, rng: np.random.Generator) -> Payload:
        raise NotImplementedError

    def decompress(self, payload: Payload) -> np.ndarray:
        raise NotImplementedError

    def wire_bytes(self, payload: Payload) -> int:
        """Bytes this payload takes on the wire in the class's stated encoding."""
        return sum(a.nbytes for a in payload.parts.values())

    def __call__(self, x, rng: np.random.Generator) -> np.ndarray:
        return self.decompress(self.compress(x, rng))

    def reduce(self, tensors: dict, comm: Communicator, rng: np.random.Generator,
               shared_rng: np.random.Generator) -> tuple[dict, dict]:
        """``(own, mean)`` for this worker's ``tensors`` (see :class:`Reducer`)."""
        if self.exchange == "allreduce":
            payloads = {n: self.compress(x, shared_rng) for n, x in tensors.items()}
            parts = [a for p in payloads.values() for a in p.parts.values()]
            means = iter(_allreduce_mean(comm, parts))
            mean = {n: self.decompress(Payload(p.shape, p.dtype, {k: next(means) for k in p.parts}, p.meta))
                    for n, p in payloads.items()}
        else:
            payloads = {n: self.compress(x, rng) for n, x in tensors.items()}
            rows = comm.allgather(_as_bytes(payloads.values()))
            mean = {n: np.zeros(p.shape, p.dtype) for n, p in payloads.items()}
            for row in rows:        # in rank order, then / size: the plain mean of the decompressed
                for n, p in zip(payloads, _from_bytes(row, payloads.values())):
                    mean[n] += self.decompress(p)
            for m in mean.values():
                m /= comm.size
        return {n: self.decompress(p) for n, p in payloads.items()}, mean

    def state_dict(self) -> dict:
        """What the compressor carries from one call to the next (PowerSGD's warm start; none
        for the others), for checkpoints."""
        return {}

    def load_state_dict(self, sd) -> None:
        if sd:
            raise ValueError(f"{type(self).__name__} keeps no state, but the state dict holds "
                             f"{sorted(sd)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Compressor):
    """No compression: the reducer's all-reduce of the raw gradient (data-parallel SGD's baseline).
    Wire: the d values."""
    exchange = "allreduce"

    def compress(self, x, rng=None) -> Payload:
        x = _floating(x, "Identity.compress")
        return Payload(x.shape, x.dtype, {"values": x.reshape(-1).copy()})

    def decompress(self, payload: Payload) -> np.ndarray:
        return payload.parts["values"].reshape(payload.shape).copy()


class QSGD(Compressor):
    """QSGD with ``s`` levels (Alistarh, Grubic, Li, Tomioka, Vojnovic, NeurIPS 2017,
    arXiv 1610.02132): Q(v)_i = ||v||_2 * sign(v_i) * l_i / s, where with r = |v_i| s / ||v||
    the level l_i is floor(r) + 1 with probability r - floor(r), else floor(r).

    Unbiased; E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2; E nnz <= s(s + sqrt(d)).
    Exactly, E||Q(v) - v||^2 = (||v||/s)^2 * sum_i p_i (1 - p_i) with p_i = r_i - floor(r_i)
    (:meth:`expected_error`), and E nnz = sum_i [r_i >= 1] + p_i [r_i < 1] (:meth:`expected_nnz`).

    Wire (fixed width, so every worker's payload has the same size): the norm (one value of the
    array's dtype), one sign bit per element, and each level in ``bits = s.bit_length()`` bits:
    b + ceil(d/8) + ceil(d*bits/8) bytes. The paper's Elias coding of the nonzeros would need
    :meth:`elias_bits` instead: about 2.8d + 32 bits at s = sqrt(d) by the paper's count (an o(1)
    term aside; on Gaussian vectors we measure 2.76d + 32 at d = 1024, 2.81d + 32 at d = 100),
    against 7d + 64 fixed-width bits at d = 1024, s = 32 in float64; but its length depends on
    the draw, so workers' payloads would differ in size."""

    def __init__(self, levels: int):
        self.levels = _check_count(levels, "QSGD: levels (s)")
        self.bits = self.levels.bit_length()

    @staticmethod
    def _norm(v: np.ndarray):
        """||v|| in v's dtype, its squares summed in float64: float32's own sum underflows to 0
        for elements below ~1e-19 and overflows to inf above ~1e19, and Q(v) was then 0 (biased)
        or NaN."""
        return v.dtype.type(np.linalg.norm(v.astype(np.float64, copy=False)))

    def _ratios(self, v: np.ndarray) -> np.ndarray:
        norm = self._norm(v)
        if norm == 0:
            return np.zeros_like(v)
        # rounding can put |v_i| s / ||v|| an ulp above s; the level must stay <= s
        return np.minimum(np.abs(v) * (self.levels / norm), self.levels)

    def compress(self, x, rng: np.random.Generator) -> Payload:
        x = _floating(x, "QSGD.compress")
        v = x.reshape(-1)
        r = self._ratios(v)
        floor = np.floor(r)
        levels = floor + (rng.random(v.size) < r - floor)
        norm = np.array([self._norm(v)], dtype=x.dtype)
        return Payload(x.shape, x.dtype, {"norm": norm, "signs": np.packbits(v < 0),
                                          "levels": _pack_bits(levels, self.bits)})

    def decompress(self, payload: Payload) -> np.ndarray:
        d, parts = payload.size, payload.parts
        levels = _unpack_bits(parts["levels"], self.bits, d).astype(payload.dtype)
        magnitude = parts["norm"][0] * levels / self.levels
        negative = np.unpackbits(parts["signs"], count=d).astype(bool)
        return np.where(negative, -magnitude, magnitude).reshape(payload.shape)

    def expected_error(self, x) -> float:
        """E||Q(x) - x||^2, exactly."""
        v = _floating(x, "QSGD.expected_error").reshape(-1)
        p = self._ratios(v) % 1.0
        return (float(self._norm(v)) / self.levels) ** 2 * float(np.sum(p * (1 - p), dtype=np.float64))

    def expected_nnz(self, x) -> float:
        """E(number of nonzeros of Q(x)), exactly."""
        r = self._ratios(_floating(x, "QSGD.expected_nnz").reshape(-1))
        return float(np.sum(np.where(r >= 1, 1.0, r)))

    def elias_bits(self, payload: Payload, norm_bits: int = 32) -> int:
        """Bits of the paper's variable-length code of this payload: the norm in ``norm_bits``,
        then for each nonzero the Elias omega code of its gap from the previous nonzero's
        position (1-based), a sign bit, and the Elias omega code of its level."""
        d = payload.size
        levels = _unpack_bits(payload.parts["levels"], self.bits, d).astype(np.int64)
        where = np.flatnonzero(levels)
        gaps = np.diff(where, prepend=-1)
        return int(norm_bits + elias_omega_bits(gaps).sum() + where.size
                   + elias_omega_bits(levels[where]).sum())

    def __repr__(self) -> str:
        return f"QSGD(levels={self.levels})"


def elias_omega_bits(n) -> np.ndarray:
    """Length in bits of the Elias omega code of each positive integer in ``n``: 1 for the final
    0, plus the binary lengths of n, of (its length - 1), ... down to a length of 2."""
    n = np.array(n, dtype=np.int64, ndmin=1)
    if np.any(n < 1):
        raise ValueError(f"elias_omega_bits: the integers must be >= 1, got min {n.min()}")
    bits = np.ones_like(n)
    while np.any(n > 1):
        big = n > 1
        length = np.frexp(n[big].astype(np.float64))[1].astype(np.int64)   # = bit_length (n < 2**53)
        bits[big] += length
        n[big] = length - 1
    return bits


def _count_k(k, ratio, where: str) -> tuple:
    if (k is None) == (ratio is None):
        raise ValueError(f"{where}: give exactly one of k (coordinates per tensor) or ratio "
                         f"(fraction of each tensor), got k={k!r}, ratio={ratio!r}")
    if k is not None:
        return _check_count(k, f"{where}: k"), None
    if not (isinstance(ratio, Real) and 0 < ratio <= 1):
        raise ValueError(f"{where}: ratio must be in (0, 1], got {ratio!r}")
    return None, float(ratio)


class _Sparsifier(Compressor):
    """k coordinates per tensor: ``k`` fixed (at most the tensor's size) or ``ratio`` of it
    (at least 1)."""

    def __init__(self, k=None, *, ratio=None):
        self.k, self.ratio = _count_k(k, ratio, type(self).__name__)

    def k_for(self, d: int) -> int:
        """How many coordinates a tensor of ``d`` elements keeps."""
        k = self.k if self.k is not None else max(1, round(self.ratio * d))
        return min(k, d)

    def _flat(self, x, where: str) -> np.ndarray:
        x = _floating(x, where)
        if x.size >= 2**31:
            raise ValueError(f"{where}: int32 indices address at most 2**31 - 1 elements, got a "
                             f"tensor of {x.size}; split it")
        return x

    def decompress(self, payload: Payload) -> np.ndarray:
        indices = payload.parts.get("indices", payload.meta.get("indices"))
        out = np.zeros(payload.size, payload.dtype)
        out[indices] = payload.parts["values"]
        return out.reshape(payload.shape)

    def _describe_k(self) -> str:
        return f"k={self.k}" if self.k is not None else f"ratio={self.ratio}"


class TopK(_Sparsifier):
    """Top-k: the k entries of largest magnitude (Stich, Cordonnier, Jaggi, NeurIPS 2018,
    arXiv 1809.07599). Contractive: ||C(x) - x||^2 <= (1 - k/d) ||x||^2; biased.
    Wire: k values and their k int32 indices, k*b + 4k bytes."""

    def compress(self, x, rng=None) -> Payload:
        x = self._flat(x, "TopK.compress")
        v = x.reshape(-1)
        k = self.k_for(v.size)
        top = np.sort(np.argpartition(np.abs(v), v.size - k)[v.size - k:]) if k else np.zeros(0, np.intp)
        return Payload(x.shape, x.dtype, {"values": v[top], "indices": top.astype(np.int32)})

    def __repr__(self) -> str:
        return f"TopK({self._describe_k()})"


class RandK(_Sparsifier):
    """Rand-k: k coordinates drawn uniformly without replacement (Stich, Cordonnier, Jaggi 2018).

    ``scaled=True`` multiplies them by d/k: unbiased, E||C(x) - x||^2 = (d/k - 1)||x||^2, for use
    without error feedback. ``scaled=False``: contractive, E||C(x) - x||^2 = (1 - k/d)||x||^2, for
    use with error feedback (a scaled rand-k inside EF is not contractive for k < d/2).

    ``shared=True`` (default): every worker draws the same indices from a shared seed, so the
    indices are not sent (``meta``), the compression is linear and a reducer averages the values
    with an all-reduce: k*b bytes. ``shared=False``: own indices per worker, sent as int32 and
    exchanged by allgather: k*b + 4k bytes."""

    def __init__(self, k=None, *, ratio=None, scaled: bool = True, shared: bool = True):
        super().__init__(k, ratio=ratio)
        self.scaled, self.shared = bool(scaled), bool(shared)
        self.exchange = "allreduce" if self.shared else "allgather"

    def compress(self, x, rng: np.random.Generator) -> Payload:
        x = self._flat(x, "RandK.compress")
        v = x.reshape(-1)
        k = self.k_for(v.size)
        chosen = np.sort(rng.choice(v.size, size=k, replace=False)).astype(np.int32)
        values = v[chosen] * (v.size / k) if self.scaled and k else v[chosen]
        if self.shared:
            return Payload(x.shape, x.dtype, {"values": values.astype(x.dtype)}, {"indices": chosen})
        return Payload(x.shape, x.dtype, {"values": values.astype(x.dtype), "indices": chosen})

    def __repr__(self) -> str:
        return f"RandK({self._describe_k()}, scaled={self.scaled}, shared={self.shared})"


class ScaledSign(Compressor):
    """Scaled sign: C(x) = (||x||_1 / d) * sign(x) (Bernstein, Wang, Azizzadenesheli, Anandkumar,
    ICML 2018, arXiv 1802.04434, for signSGD; the scaling from Karimireddy et al., ICML 2019,
    arXiv 1901.09847). A zero is sent as +, which leaves ||C(x) - x||^2 = ||x||^2 - ||x||_1^2/d
    exactly (the scale is the mean |x_i| over all d), so it is contractive with
    delta = ||x||_1^2 / (d ||x||_2^2) >= 1/d. Wire: one bit per element and the scale,
    ceil(d/8) + b bytes."""

    def compress(self, x, rng=None) -> Payload:
        x = _floating(x, "ScaledSign.compress")
        v = x.reshape(-1)
        scale = np.array([np.abs(v).sum() / v.size if v.size else 0.0], dtype=x.dtype)
        return Payload(x.shape, x.dtype, {"scale": scale, "signs": np.packbits(v < 0)})

    def decompress(self, payload: Payload) -> np.ndarray:
        scale = payload.parts["scale"][0]
        negative = np.unpackbits(payload.parts["signs"], count=payload.size).astype(bool)
        return np.where(negative, -scale, scale).astype(payload.dtype).reshape(payload.shape)


def _orthonormalize(p: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``p``'s (Householder QR: stable when columns are dependent)."""
    return np.linalg.qr(p)[0]


class PowerSGD(Compressor):
    """PowerSGD, rank r (Vogels, Karimireddy, Jaggi, NeurIPS 2019, arXiv 1905.13727).

    Every tensor with 2 or more axes is viewed as a matrix M (shape[0], rest) and approximated
    with one step of subspace iteration, warm-started from the previous step's Q (initially
    N(0, 1) from the shared generator, identical on every worker):

        P = M Q;   all-reduce the mean of P;   P^ = orthonormalize(P);
        Q = M^T P^;   all-reduce the mean of Q;   the update is P^ Q^T.

    Over workers the update is P^ mean_j(M_j^T P^) = mean_j P^ P^^T M_j, so this worker's own
    C_i(M_i) = P^ P^^T M_i (returned as ``own``, what error feedback keeps the rest of). The
    reference code keeps M_i - P^ Q^T instead; both errors have the same sum over workers and
    PowerSGD's output depends on the workers' matrices only through their sum, so the model's
    iterates are the same up to rounding. Tensors with fewer than 2 axes are all-reduced
    uncompressed (with P). ``warm_start=False`` draws a new Q every step. With a fixed M,
    warm-started steps are subspace iteration and P^ Q^T converges to the best rank-r
    approximation (the truncated SVD).

    Wire: P and Q, (n + m) * r values per matrix (r = min(rank, n, m)), against n * m; 1-D: d.
    As a single-worker compressor, ``compress(x, rng, name)`` keeps the warm start per ``name``.
    ``state_dict()`` holds the warm-start Q of every tensor."""

    exchange = "allreduce"

    def __init__(self, rank: int = 1, *, warm_start: bool = True):
        self.rank = _check_count(rank, "PowerSGD: rank")
        self.warm_start = bool(warm_start)
        self._queries: dict = {}        # name -> warm-start Q, (m, r)

    @staticmethod
    def _matrix(x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def _query(self, name, matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, m = matrix.shape
        q = self._queries.get(name) if self.warm_start else None
        if q is None:
            return rng.standard_normal((m, min(self.rank, n, m))).astype(matrix.dtype)
        if q.shape[0] != m:
            raise ValueError(f"PowerSGD: tensor {name!r} changed shape to {matrix.shape} (its warm "
                             f"start Q has {q.shape[0]} rows); use a new PowerSGD for new shapes")
        return q

    def compress(self, x, rng: np.random.Generator, name: str = "") -> Payload:
        x = _floating(x, "PowerSGD.compress")
        if x.ndim < 2:
            return Payload(x.shape, x.dtype, {"values": x.reshape(-1).copy()})
        matrix = self._matrix(x)
        p = _orthonormalize(matrix @ self._query(name, matrix, rng))
        q = matrix.T @ p
        if self.warm_start:
            self._queries[name] = q
        return Payload(x.shape, x.dtype, {"p": p, "q": q})

    def decompress(self, payload: Payload) -> np.ndarray:
        parts = payload.parts
        if "values" in parts:
            return parts["values"].reshape(payload.shape).copy()
        return (parts["p"] @ parts["q"].T).reshape(payload.shape)

    def reduce(self, tensors: dict, comm: Communicator, rng: np.random.Generator,
               shared_rng: np.random.Generator) -> tuple[dict, dict]:
        for n, x in tensors.items():
            _floating(x, f"PowerSGD.reduce ({n!r})")
        matrices = {n: self._matrix(x) for n, x in tensors.items() if x.ndim >= 2}
        vectors = [n for n, x in tensors.items() if x.ndim < 2]
        ps = [m @ self._query(n, m, shared_rng) for n, m in matrices.items()]
        first = _allreduce_mean(comm, ps + [tensors[n].reshape(-1) for n in vectors])
        bases = [_orthonormalize(p) for p in first[:len(ps)]]
        own_qs = [m.T @ p for m, p in zip(matrices.values(), bases)]
        mean_qs = _allreduce_mean(comm, own_qs)
        own, mean = {}, {}
        for n, p, q_own, q_mean in zip(matrices, bases, own_qs, mean_qs):
            shape = tensors[n].shape
            own[n] = (p @ q_own.T).reshape(shape)
            mean[n] = (p @ q_mean.T).reshape(shape)
            if self.warm_start:
                self._queries[n] = q_mean
        for n, v in zip(vectors, first[len(ps):]):
            own[n] = tensors[n].copy()
            mean[n] = v.reshape(tensors[n].shape)
        order = list(tensors)
        return {n: own[n] for n in order}, {n: mean[n] for n in order}

    def state_dict(self) -> dict:
        return {"queries": {n: q.copy() for n, q in self._queries.items()}}

    def load_state_dict(self, sd) -> None:
        self._queries = {n: np.array(q) for n, q in sd["queries"].items()}

    def __repr__(self) -> str:
        return f"PowerSGD(rank={self.rank}, warm_start={self.warm_start})"


# ------------------------------------------------------------------ exchange and error feedback
class Reducer:
    """The mean over the workers of ``comm`` of each worker's compressed arrays.

    ``reduce(arrays) -> (own, mean)``: dicts keyed like ``arrays`` (``None`` entries skipped):
    this worker's decompressed ``C_i(x_i)`` and the mean over workers of the decompressed
    ``C_j(x_j)`` (the same on every worker), in sorted name order. ``reducer(grads)`` is the
    gradient hook: each entry of ``grads`` is replaced by the mean. Every worker must pass the
    same names, shapes and dtypes (a mismatch raises ``CommError`` on every worker:
    ``comm.LayoutCheck``, an allgather of a checksum when the layout changes). Randomness: ``rng`` is
    this worker's own (QSGD's rounding, rand-k without a shared seed), ``shared_rng`` the same
    on every worker (shared rand-k indices, PowerSGD's first Q); both derive from ``seed``."""

    def __init__(self, comm: Communicator, compressor: Compressor, *, seed: int = 0):
        if not isinstance(compressor, Compressor):
            raise TypeError(f"Reducer: compressor must be a Compressor (e.g. TopK(ratio=0.01)), "
                            f"got {type(compressor).__name__}")
        self.comm = comm
        self.compressor = copy.deepcopy(compressor)     # its state (PowerSGD's Q) is this worker's
        shared, *own = np.random.SeedSequence(seed).spawn(1 + comm.size)
        self.shared_rng = np.random.default_rng(shared)
        self.rng = np.random.default_rng(own[comm.rank])
        self._check_layout = LayoutCheck(comm, "Reducer")

    def reduce(self, arrays: dict) -> tuple[dict, dict]:
        self._check_layout(arrays)
        # sorted, so the payload layout does not depend on the order each rank built its dict in
        tensors = {n: np.asarray(arrays[n]) for n in sorted(arrays) if arrays[n] is not None}
        return self.compressor.reduce(tensors, self.comm, self.rng, self.shared_rng)

    def __call__(self, grads: dict) -> None:
        grads.update(self.reduce(grads)[1])

    def state_dict(self) -> dict:
        """This worker's generators and the compressor's state (for a per-rank checkpoint)."""
        return {"rng": self.rng.bit_generator.state, "shared_rng": self.shared_rng.bit_generator.state,
                "compressor": self.compressor.state_dict()}

    def load_state_dict(self, sd) -> None:
        self.compressor.load_state_dict(sd["compressor"])
        self.rng.bit_generator.state = sd["rng"]
        self.shared_rng.bit_generator.state = sd["shared_rng"]

    def __repr__(self) -> str:
        return f"Reducer({self.compressor!r}, rank {self.comm.rank} of {self.comm.size})"


class EF14:
    """Error feedback on the lr-scaled step (Seide et al., Interspeech 2014; Stich, Cordonnier,
    Jaggi, NeurIPS 2018, arXiv 1809.07599; Karimireddy, Rebjock, Stich, Jaggi, ICML 2019,
    arXiv 1901.09847). Per worker, with lr the current learning rate:

        p = lr * g_i + e_i;   Delta_i = C(p);   e_i <- p - Delta_i;   step = mean_j Delta_j

    As a hook it sets each gradient to step / lr, so an optimizer that moves by lr * grad (SGD)
    applies exactly the step. The error is kept in parameter units, so a changing lr (pass a
    callable, e.g. ``lambda: opt.param_groups[0]["lr"]``) is applied to new gradients only.
    Memory: one error array per tensor (N)."""

    def __init__(self, reducer: Reducer, lr: float | Callable[[], float]):
        self.reducer, self.lr = reducer, lr
        self.error: dict = {}

    def _current_lr(self) -> float:
        lr = self.lr() if callable(self.lr) else self.lr
        if not (isinstance(lr, Real) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"EF14: lr must be a finite number > 0 (the step is divided by it), "
                             f"got {lr!r}")
        return float(lr)

    def __call__(self, grads: dict) -> None:
        lr = self._current_lr()
        steps = {n: lr * np.asarray(g) + self.error[n] if n in self.error else lr * np.asarray(g)
                 for n, g in grads.items() if g is not None}
        own, mean = self.reducer.reduce(steps)
        for n, p in steps.items():
            self.error[n] = p - own[n]
            grads[n] = mean[n] / lr

    def state_dict(self) -> dict:
        """This worker's errors e_i and its reducer's state (for a per-rank checkpoint)."""
        return {"reducer": self.reducer.state_dict(), "error": {n: e.copy() for n, e in self.error.items()}}

    def load_state_dict(self, sd) -> None:
        self.reducer.load_state_dict(sd["reducer"])
        self.error = {n: np.array(e) for n, e in sd["error"].items()}

    def __repr__(self) -> str:
        return f"EF14({self.reducer!r}, lr={self.lr!r})"


class EF21:
    """EF21 (Richtarik, Sokolov, Fatkhullin, NeurIPS 2021, arXiv 2106.05203). Per worker, with
    g_i = 0 before the first call (so the first g_i is C(grad f_i)):

        c_i = C(grad f_i(x) - g_i);   g_i <- g_i + c_i;   g <- g + mean_j c_j  (= mean_j g_j)

    and the hook sets each gradient to g. Compressing differences that vanish at the optimum
    removes the heterogeneity floor of EF14. Memory: g_i and g per tensor (2N)."""

    def __init__(self, reducer: Reducer):
        self.reducer = reducer
        self.local: dict = {}
        self.average: dict = {}

    def __call__(self, grads: dict) -> None:
        diffs = {n: np.asarray(g) - self.local[n] if n in self.local else np.asarray(g)
                 for n, g in grads.items() if g is not None}
        own, mean = self.reducer.reduce(diffs)
        for n in diffs:
            self.local[n] = self.local[n] + own[n] if n in self.local else own[n]
            self.average[n] = self.average[n] + mean[n] if n in self.average else mean[n]
            grads[n] = self.average[n].copy()

    def state_dict(self) -> dict:
        """g_i, g and the reducer's state of this worker (for a per-rank checkpoint)."""
        return {"reducer": self.reducer.state_dict(),
                "local": {n: g.copy() for n, g in self.local.items()},
                "average": {n: g.copy() for n, g in self.average.items()}}

    def load_state_dict(self, sd) -> None:
        self.reducer.load_state_dict(sd["reducer"])
        self.local = {n: np.array(g) for n, g in sd["local"].items()}
        self.average = {n: np.array(g) for n, g in sd["average"].items()}

    def __repr__(self) -> str:
        return f"EF21({self.reducer!r})"


# ------------------------------------------------------------------ the measured experiment
def train_least_squares(comm: Communicator, problem: HeterogeneousLeastSquares,
                        compressor: Compressor, feedback: str | None = None, *, lr: float, steps: int,
                        seed: int = 0) -> dict:
    """Gradient descent from W = 0 on ``problem``, worker ``comm.rank`` holding f_rank, with the
    gradients averaged through ``Reducer(comm, compressor)`` wrapped in ``feedback`` (None,
    "ef14" or "ef21"). Run on every rank (``launch(train_least_squares, ...)``). Returns arrays
    over the steps (after each step): ``bytes`` this worker has sent, ``error`` ||W - W*|| / ||W*||,
    ``loss`` f(W) - f(W*)."""
    if comm.size != problem.workers:
        raise ValueError(f"train_least_squares: the problem has {problem.workers} workers but the "
                         f"communicator has {comm.size} ranks; build "
                         f"HeterogeneousLeastSquares({comm.size}, ...)")
    steps = _check_count(steps, "train_least_squares: steps")
    if feedback not in (None, "ef14", "ef21"):
        raise ValueError(f"train_least_squares: feedback must be None, 'ef14' or 'ef21', got {feedback!r}")
    reducer = Reducer(comm, compressor, seed=seed)
    hook = EF14(reducer, lr) if feedback == "ef14" else EF21(reducer) if feedback == "ef21" else reducer
    w = np.zeros(problem.shape)
    start = comm.bytes_sent
    sent, error, loss = (np.empty(steps) for _ in range(3))
    for t in range(steps):
        grads = {"w": problem.gradient(comm.rank, w)}
        hook(grads)
        w = w - lr * grads["w"]
        sent[t] = comm.bytes_sent - start
        error[t] = problem.relative_error(w)
        loss[t] = problem.loss_gap(w)
    return {"bytes": sent, "error": error, "loss": loss}


def default_runs(ratio: float = 0.05) -> list:
    """(label, compressor, feedback, lr as a multiple of 1/L) for :func:`loss_vs_bytes`: each
    compressor alone and with error feedback, each at an lr it is stable with on heterogeneous
    least squares (EF14 with top-k and sign at 0.1/L, to show its floor; rand-k at ratio/L: a
    rand-k step moves only k of d coordinates, and EF with larger steps diverges)."""
    top, rand, sign = TopK(ratio=ratio), RandK(ratio=ratio, scaled=False), ScaledSign()
    return [
        ("uncompressed", Identity(), None, 1.0),
        (f"top-k {ratio:g}", top, None, 1.0),
        (f"top-k {ratio:g} + EF14", top, "ef14", 0.1),
        (f"top-k {ratio:g} + EF21", top, "ef21", 1.0),
        (f"rand-k {ratio:g} scaled", RandK(ratio=ratio, scaled=True), None, ratio),
        (f"rand-k {ratio:g} + EF14", rand, "ef14", ratio),
        (f"rand-k {ratio:g} + EF21", rand, "ef21", ratio),
        ("sign", sign, None, 1.0),
        ("sign + EF14", sign, "ef14", 0.1),
        ("sign + EF21", sign, "ef21", 1.0),
        ("QSGD s=4", QSGD(4), None, 0.5),
        ("QSGD s=16", QSGD(16), None, 0.5),
        ("PowerSGD r=1", PowerSGD(1), None, 1.0),
        ("PowerSGD r=1 + EF14", PowerSGD(1), "ef14", 1.0),
    ]


def loss_vs_bytes(workers: int = 8, shape=(50, 4), *, steps: int = 1000, runs=None,
                  seed: int = 0) -> dict:
    """Loss against bytes communicated on heterogeneous least squares for each compressor with and
    without error feedback: ``{label: {"bytes", "error", "loss"}}`` (arrays over the steps, rank
    0's bytes sent; see :func:`train_least_squares`). ``runs`` is a list of
    ``(label, compressor, feedback, lr_factor)`` with lr = lr_factor / L (default
    :func:`default_runs`). Workers are simulated, or the MPI ranks under ``mpiexec``."""
    problem = HeterogeneousLeastSquares(workers, shape, seed=seed)
    results = {}
    for label, compressor, feedback, factor in (default_runs() if runs is None else runs):
        ranks = launch(train_least_squares, problem, compressor, feedback, workers=workers,
                       lr=factor / problem.lipschitz, steps=steps, seed=seed)
        results[label] = ranks[0]
    return results
