"""Minibatch samplers for SGD on a finite sum f(x) = (1/n) sum_i f_i(x) (Lecture 2).

Each sampler's ``next()`` returns ``(idx, w)``: the sample indices and per-sample weights such
that ``mean_j w_j * grad f_{idx_j}(x)`` is an unbiased estimate of grad f(x) (for
random reshuffling it is unbiased over an epoch, not per step).

* ``WithReplacement(n, batch)``: i.i.d. uniform indices, w = 1.
* ``RandomReshuffling(n, batch)``: a fresh permutation each epoch, consumed in order, w = 1
  (without replacement; the last batch of an epoch may be shorter if batch does not divide n).
* ``ImportanceSampling(p, batch)``: i.i.d. indices with probability p_i, w_i = 1/(n p_i), the
  unbiased reweighting (E[w_i grad f_i] = sum_i p_i grad f_i/(n p_i) = grad f). With p_i
  proportional to the smoothness L_i the variance bound depends on mean(L_i), not max(L_i)
  (Needell, Srebro, Ward 2014).

Samplers carry their RNG state in ``state_dict`` (ndarray/str only) for exact resumes.
``stateful_source(batches)`` finds what holds a batch source's state, for whoever saves it.
"""
from __future__ import annotations

import json

import numpy as np

__all__ = ["WithReplacement", "RandomReshuffling", "ImportanceSampling", "make_sampler", "stateful_source"]


class _Sampler:
    def __init__(self, n, batch_size, seed):
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"n and batch_size must be > 0, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size = int(n), int(batch_size)
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def state_dict(self):
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, sd):
        self.rng.bit_generator.state = json.loads(sd["rng"])


class WithReplacement(_Sampler):
    def __init__(self, n, batch_size=1, seed=0):
        super().__init__(n, batch_size, seed)

    def next(self):
        return self.rng.integers(0, self.n, self.batch_size), np.ones(self.batch_size)


class RandomReshuffling(_Sampler):
    def __init__(self, n, batch_size=1, seed=0):
        super().__init__(n, batch_size, seed)
        self._perm, self._pos = None, 0

    def next(self):
        if self._perm is None or self._pos >= self.n:
            self._perm, self._pos = self.rng.permutation(self.n), 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += len(idx)
        return idx, np.ones(len(idx))

    def state_dict(self):
        sd = super().state_dict()
        sd.update(perm=np.array([] if self._perm is None else self._perm, dtype=np.int64),
                  pos=self._pos)
        return sd

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self._perm = np.array(sd["perm"]) if len(sd["perm"]) else None
        self._pos = int(sd["pos"])


class ImportanceSampling(_Sampler):
    def __init__(self, probs, batch_size=1, seed=0):
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 1 or np.any(p < 0) or not np.all(np.isfinite(p)) or p.sum() <= 0:
            raise ValueError("probs must be a 1-D array of non-negative finite weights, sum > 0")
        super().__init__(p.size, batch_size, seed)
        self.p = p / p.sum()
        self._cdf = np.cumsum(self.p)
        self._cdf[-1] = 1.0

    def next(self):
        # inverse-CDF sampling (rng.choice(p=...) re-validates p on every call: ~10x slower)
        idx = np.searchsorted(self._cdf, self.rng.random(self.batch_size), side="right")
        return idx, 1.0 / (self.n * self.p[idx])


def make_sampler(kind, n, batch_size=1, seed=0, probs=None):
    """``kind`` in {"replacement", "reshuffle", "importance"} (importance needs ``probs``)."""
    if kind == "replacement":
        return WithReplacement(n, batch_size, seed)
    if kind == "reshuffle":
        return RandomReshuffling(n, batch_size, seed)
    if kind == "importance":
        if probs is None:
            raise ValueError("importance sampling needs probs")
        return ImportanceSampling(probs, batch_size, seed)
    raise ValueError(f"unknown sampler {kind!r}; use replacement, reshuffle or importance")


def stateful_source(batches):
    """What holds the state of a batch source ``batches(rng)``: ``batches`` itself or the object
    it is a bound method of, whichever has ``state_dict`` and ``load_state_dict`` (torchdata's
    protocol); None if neither. The Trainer saves and restores it; a data-parallel shard passes
    it on."""
    for source in (batches, getattr(batches, "__self__", None)):
        if hasattr(source, "state_dict") and hasattr(source, "load_state_dict"):
            return source
    return None
