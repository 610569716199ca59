"""Count-based n-gram language models: the baseline every neural model must beat.

An n-gram model predicts the next token from the previous n-1 only:
P(w_t | w_1..w_{t-1}) ≈ P(w_t | w_{t-n+1}..w_{t-1}). Its maximum-likelihood estimate
c(h w) / c(h) (c = count in the training text, h = the history) gives zero probability to every
continuation it has not seen, so a single new n-gram in the validation text costs infinite
loss. *Smoothing* moves some probability mass from seen to unseen continuations:

* **add-k** (Lidstone; Laplace for k = 1): pretend every continuation was seen k more times,
  P(w | h) = (c(h w) + k) / (c(h) + k V). Simple, and poor at high orders: most contexts are
  seen a few times, so the k V imaginary counts swamp the real ones.

* **interpolated Kneser–Ney** (Kneser and Ney 1995, "Improved backing-off for M-gram language
  modeling", ICASSP; the interpolated form of Chen and Goodman 1998, "An Empirical Study of
  Smoothing Techniques for Language Modeling", Harvard TR-10-98): subtract a discount D from
  every seen count and give the freed mass to the lower-order model,

      P(w | h) = max(c(h w) - D, 0) / c(h) + D N1+(h •) / c(h) · P_lower(w | h'),

  where N1+(h •) is the number of distinct tokens seen after h and h' is h without its oldest
  token. The lower orders do not use raw counts but *continuation counts*
  N1+(• h' w), the number of distinct tokens seen *before* h' w: a lower order is only consulted
  when the higher one has little evidence, and then what matters is in how many contexts w
  appears, not how often ("Francisco" is frequent but follows almost only "San"). The bottom
  order interpolates with the uniform distribution 1/V, so every token of the vocabulary has a
  probability > 0 and every conditional distribution sums to 1. One discount per order,
  D = n1 / (n1 + 2 n2) (n_r = how many n-grams of that order have count r; Ney, Essen and
  Kneser 1994, "On structuring probabilistic dependences in stochastic language modelling").

Tokens are integer ids, so the same model serves characters (``CharTokenizer``) and words
(:class:`WordVocab`). Counting is vectorized: an m-gram is one int64 code
(t_1 V^{m-1} + ... + t_m), so counting is ``np.unique`` and a lookup is ``np.searchsorted``.
Fitting the whole Shakespeare corpus (4.5 M characters) at order 7 takes seconds.

    lm = NGramLM(order=5, vocab_size=tok.vocab_size, smoothing="kneser_ney").fit(train_ids)
    lm.nats_per_token(val_ids)            # mean -log P over the validation text
    lm.next_token_probs(context_ids)      # (V,), sums to 1
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

__all__ = ["NGramLM", "WordVocab", "words", "SMOOTHINGS", "max_order"]


def max_order(vocab_size: int) -> int:
    """The highest order NGramLM takes for ``vocab_size`` tokens: an n-gram is kept as one int64
    code, vocab_size^order < 2^63 (9 for a few dozen characters, 5 for 3,000)."""
    return max(1, math.ceil(63 / math.log2(max(vocab_size, 2))) - 1)

SMOOTHINGS = ("kneser_ney", "add_k")


class NGramLM:
    """An order-``order`` n-gram model over ids in [0, ``vocab_size``).

    smoothing  "kneser_ney" (interpolated, one discount per order) or "add_k"
    k          the pseudo-count of add-k smoothing (> 0)
    discount   Kneser–Ney's D for every order, in (0, 1]; None: n1 / (n1 + 2 n2) per order

    At the start of a text a position has fewer than order-1 predecessors; it is predicted by
    the model of the order it has (its top order uses raw counts, as the full order does).
    """

    def __init__(self, order: int, vocab_size: int, smoothing: str = "kneser_ney", k: float = 1.0,
                 discount: float | None = None):
        if int(order) != order or order < 1:
            raise ValueError(f"NGramLM: order must be an integer >= 1, got {order!r}")
        if int(vocab_size) != vocab_size or vocab_size < 1:
            raise ValueError(f"NGramLM: vocab_size must be an integer >= 1, got {vocab_size!r}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"NGramLM: smoothing must be one of {', '.join(SMOOTHINGS)}, got {smoothing!r}")
        if not (k > 0 and math.isfinite(k)):
            raise ValueError(f"NGramLM: k must be a finite number > 0, got {k!r}")
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(f"NGramLM: discount must be in (0, 1], got {discount!r}")
        if order > max_order(vocab_size):
            raise ValueError(f"NGramLM: vocab_size^order = {vocab_size}^{order} does not fit in an int64 "
                             f"code; use order <= {max_order(vocab_size)}")
        self.order, self.vocab_size = int(order), int(vocab_size)
        self.smoothing, self.k, self.fixed_discount = smoothing, float(k), discount
        self.tables = None

    # ------------------------------------------------------------------ counting
    def _check_ids(self, ids, what: str) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"NGramLM.{what}: ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"NGramLM.{what}: ids must be in [0, {self.vocab_size}) (the vocabulary), "
                             f"got [{ids.min()}, {ids.max()}]; the text was encoded with another vocabulary")
        return ids.astype(np.int64)

    def fit(self, ids) -> "NGramLM":
        """Count every m-gram (m = 1..order) of the 1-D id array ``ids``; returns self."""
        ids = self._check_ids(ids, "fit")
        if ids.size == 0:
            raise ValueError("NGramLM.fit: the training text is empty (0 tokens)")
        V = self.vocab_size
        keys, counts = [], []
        code = np.zeros(0, np.int64)
        for m in range(1, self.order + 1):
            # code of the m-gram ending at each position >= m-1
            code = ids.copy() if m == 1 else code[:-1] * V + ids[m - 1:]
            k, c = np.unique(code, return_counts=True)
            keys.append(k)
            counts.append(c.astype(np.float64))
        # continuation counts: N1+(• g) for each m-gram g = the number of (m+1)-gram types ending in g
        cont = []
        for m in range(1, self.order):
            suffix, n_left = np.unique(keys[m] % V ** m, return_counts=True)
            c = np.zeros(len(keys[m - 1]))
            c[np.searchsorted(keys[m - 1], suffix)] = n_left
            cont.append(c)
        self.tables = [{"keys": keys[m], "raw": self._level(keys[m], counts[m]),
                        "cont": self._level(keys[m], cont[m]) if m < self.order - 1 else None}
                       for m in range(self.order)]
        return self

    def _level(self, keys, counts) -> dict:
        """Counts of one order with their per-context totals c(h), types N1+(h •) and discount."""
        ctx, start = np.unique(keys // self.vocab_size, return_index=True)
        n1, n2 = np.count_nonzero(counts == 1), np.count_nonzero(counts == 2)
        if self.fixed_discount is not None:
            d = self.fixed_discount
        else:
            d = n1 / (n1 + 2 * n2) if n1 > 0 else 0.5
        return {"counts": counts, "ctx": ctx, "total": np.add.reduceat(counts, start),
                "types": np.add.reduceat((counts > 0).astype(np.float64), start), "discount": d}

    # ------------------------------------------------------------------ probabilities
    @staticmethod
    def _find(sorted_keys, q):
        """(index, found) of the codes ``q`` in ``sorted_keys``."""
        i = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
        return i, sorted_keys[i] == q

    def _probs(self, codes, top) -> np.ndarray:
        """P(w | h) for N rows: ``codes[m-1]`` (N,) is the code of the row's m-gram h w (ignored
        where m > top), ``top`` (N,) the order each row is predicted with."""
        if self.tables is None:
            raise RuntimeError("NGramLM: call fit(ids) first")
        V = self.vocab_size
        if self.smoothing == "add_k":
            p = np.empty(len(top))
            for m in range(1, self.order + 1):
                rows = top == m
                if rows.any():
                    t = self.tables[m - 1]
                    c, h = self._count(t["keys"], t["raw"], codes[m - 1][rows])
                    p[rows] = (c + self.k) / (h[0] + self.k * V)
            return p
        p = np.full(len(top), 1.0 / V)
        for m in range(1, self.order + 1):
            active = top >= m
            if not active.any():
                break
            t = self.tables[m - 1]
            q = codes[m - 1][active]
            is_top = top[active] == m
            new = np.empty(len(q))
            for kind, rows in (("raw", is_top), ("cont", ~is_top)):
                if rows.any():
                    c, (total, types) = self._count(t["keys"], t[kind], q[rows])
                    lower = p[active][rows]
                    d = t[kind]["discount"]
                    seen = total > 0
                    safe = np.where(seen, total, 1.0)
                    new[rows] = np.where(seen, np.maximum(c - d, 0.0) / safe + d * types / safe * lower, lower)
            p[active] = new
        return p

    def _count(self, keys, level, q):
        """Counts of the m-grams ``q`` and (c(h), N1+(h •)) of their contexts (0 when unseen)."""
        if len(keys) == 0:                        # a text shorter than the order
            zero = np.zeros(len(q))
            return zero, (zero, zero)
        i, found = self._find(keys, q)
        c = np.where(found, level["counts"][i], 0.0)
        j, seen = self._find(level["ctx"], q // self.vocab_size)
        return c, (np.where(seen, level["total"][j], 0.0), np.where(seen, level["types"][j], 0.0))

    def token_log_probs(self, ids) -> np.ndarray:
        """log P(ids[i] | up to order-1 preceding ids) for every position i: (N,) float64."""
        ids = self._check_ids(ids, "token_log_probs")
        N, V = len(ids), self.vocab_size
        codes, code = [], np.zeros(N, np.int64)
        for m in range(1, self.order + 1):
            nxt = np.zeros(N, np.int64)
            nxt[m - 1:] = (code[m - 2:-1] * V if m > 1 else 0) + ids[m - 1:]
            codes.append(nxt)
            code = nxt
        top = np.minimum(np.arange(N) + 1, self.order)
        return np.log(self._probs(codes, top))

    def nats_per_token(self, ids) -> float:
        """Mean cross-entropy of ``ids`` under the model (nats per token)."""
        if len(ids) == 0:
            raise ValueError("NGramLM.nats_per_token: the text is empty (0 tokens)")
        return float(-self.token_log_probs(ids).mean())

    def next_token_probs(self, context) -> np.ndarray:
        """The distribution (V,) of the token after ``context`` (its last order-1 ids are used)."""
        context = self._check_ids(context, "next_token_probs")
        context = context[max(0, len(context) - (self.order - 1)):] if self.order > 1 else context[:0]
        V, n = self.vocab_size, len(context)
        w = np.arange(V, dtype=np.int64)
        codes, h = [], 0
        for m in range(1, self.order + 1):
            if m > 1 and m - 1 <= n:
                h = h + int(context[n - (m - 1)]) * V ** (m - 2)   # the last m-1 context ids
            codes.append(h * V + w if m - 1 <= n else w)
        return self._probs(codes, np.full(V, n + 1))

    def generate(self, context, n_tokens: int, temperature: float = 1.0, rng=None) -> np.ndarray:
        """``n_tokens`` ids sampled after ``context`` (temperature 0: the likeliest each time)."""
        rng = np.random.default_rng(rng)
        out = list(np.asarray(context, dtype=np.int64))
        for _ in range(n_tokens):
            p = self.next_token_probs(np.array(out, np.int64))
            if temperature == 0:
                out.append(int(p.argmax()))
                continue
            logits = np.log(p) / temperature
            q = np.exp(logits - logits.max())
            out.append(int(rng.choice(len(q), p=q / q.sum())))
        return np.array(out[len(out) - n_tokens:], np.int64)

    def num_ngrams(self) -> list[int]:
        """How many distinct m-grams of each order m = 1..order the training text holds."""
        return [len(t["keys"]) for t in self.tables]


# ---------------------------------------------------------------------------------- words
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|[^\sa-z]")


def words(text: str) -> list[str]:
    """Lower-cased words (letters with inner apostrophes: "o'er") and single punctuation marks."""
    return _WORD.findall(text.lower())


class WordVocab:
    """Words to ids: the ``max_size`` most frequent words seen ``min_count`` times or more, by
    decreasing count (ties alphabetical); id 0 is ``<unk>`` for every other word."""

    UNK = "<unk>"

    def __init__(self, itos):
        itos = list(itos)
        if not itos or itos[0] != self.UNK or len(set(itos)) != len(itos):
            raise ValueError(f"WordVocab: the words must be distinct and start with {self.UNK!r}")
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def build(cls, tokens, min_count: int = 1, max_size: int | None = None) -> "WordVocab":
        counts = Counter(tokens)
        counts.pop(cls.UNK, None)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[:max_size - 1]
        return cls([cls.UNK, *kept])

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, tokens) -> np.ndarray:
        return np.array([self.stoi.get(w, 0) for w in tokens], dtype=np.int64)

    def decode(self, ids) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def to_dict(self) -> dict:
        return {"type": "words", "itos": self.itos}
