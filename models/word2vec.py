"""word2vec: skip-gram with negative sampling (SGNS), the word embeddings of lecture 3.

Mikolov et al. 2013 ("Efficient Estimation of Word Representations in Vector Space",
arXiv:1301.3781; "Distributed Representations of Words and Phrases and their
Compositionality", arXiv:1310.4546). Every word w has two vectors: v_w when it is the centre
word, u_w when it is a context word. For a centre word c and a word o seen within its window,
skip-gram wants o to be predictable from c. The full softmax over the vocabulary is
replaced by *negative sampling*: tell the true context word apart from K "noise" words
n_1..n_K drawn from a noise distribution, with logistic regression on the dot products,

    loss(c, o) = -log σ(u_o · v_c) - Σ_k log σ(-u_{n_k} · v_c).

The pieces that make it work, all here:

* **the noise distribution** is the unigram distribution raised to the power 3/4,
  P_n(w) ∝ count(w)^0.75: rare words are drawn more often than by frequency. As in the
  reference C code it is a table of ``table_size`` word ids, word w repeated in proportion to
  count(w)^0.75, and a noise word is a uniform draw from the table.
* **subsampling of frequent words**: each occurrence of w is dropped from the training text with
  probability 1 - sqrt(t / f(w)) (f = relative frequency, t ≈ 1e-3 to 1e-5), so "the" and ","
  stop dominating the pairs and the windows reach further.
* **dynamic windows**: for each centre the window radius b is uniform in 1..R, so a context word
  at distance d is used with probability (R - d + 1) / R: near words count more. We draw pairs
  directly with that law: a random centre, a distance d with probability ∝ R - d + 1, a side.
* the centre vectors start small and uniform, U(-0.5/D, 0.5/D), the context vectors at zero
  (the C code's initialization).

After training, the (normalized) centre vectors are the embeddings: :meth:`Word2Vec.nearest`
lists the words of highest cosine similarity, :meth:`Word2Vec.analogy` answers "a is to b as c
is to ?" with the word nearest to v_b - v_a + v_c (Mikolov, Yih, Zweig 2013, "Linguistic
Regularities in Continuous Space Word Representations", NAACL).

    vocab = WordVocab.build(words(text), min_count=5)
    pairs = SkipGramSampler(vocab.encode(words(text)), vocab.vocab_size, window=5, negatives=5)
    model = Word2Vec(Word2VecConfig(vocab_size=vocab.vocab_size, dim=100))
    Trainer(model, sgns_loss, opt, lambda rng: pairs.batch(rng, 1024), steps=2000).fit()
    model.nearest(vocab.stoi["king"])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

import minigrad
import minigrad.functional as F
from minigrad import nn

__all__ = ["Word2VecConfig", "Word2Vec", "SkipGramSampler", "sgns_loss", "log_sigmoid", "noise_table",
           "keep_probabilities"]


@dataclass
class Word2VecConfig:
    vocab_size: int = 1000
    dim: int = 100

    def __post_init__(self):
        for name in ("vocab_size", "dim"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Word2VecConfig.{name}={v!r} must be a positive integer")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Word2VecConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Word2VecConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def log_sigmoid(x):
    """log σ(x) = x - log(1 + e^x) = log_softmax([x, 0])[0]: stable for large |x|, and its
    gradient σ(-x) is exact everywhere (also at x = 0, where every score starts)."""
    return F.log_softmax(minigrad.stack([x, minigrad.zeros_like(x)], axis=-1), axis=-1)[..., 0]


class Word2Vec(nn.Module):
    """Centre vectors ``in_embed`` (V, D) and context vectors ``out_embed`` (V, D);
    ``forward(center (B,), context (B,), negatives (B, K)) -> mean SGNS loss``."""

    def __init__(self, config: Word2VecConfig, dtype=np.float32, seed: int = 0):
        super().__init__()
        self.config = config
        rng = np.random.default_rng(seed)
        V, D = config.vocab_size, config.dim
        self.in_embed = nn.Embedding(V, D, dtype=dtype, rng=rng)
        self.out_embed = nn.Embedding(V, D, dtype=dtype, rng=rng)
        self.in_embed.weight.data[...] = rng.uniform(-0.5 / D, 0.5 / D, (V, D))
        self.out_embed.weight.data[...] = 0.0

    def forward(self, center, context, negatives):
        center, context, negatives = (np.asarray(a) for a in (center, context, negatives))
        B = center.shape[0] if center.ndim == 1 else -1
        if center.ndim != 1 or context.shape != (B,) or negatives.ndim != 2 or negatives.shape[0] != B:
            raise ValueError(f"Word2Vec.forward: expected center (B,), context (B,) and negatives (B, K), "
                             f"got {center.shape}, {context.shape} and {negatives.shape}")
        v = self.in_embed(center)                                    # (B, D) centre vectors
        u_pos = self.out_embed(context)                              # (B, D) true context vectors
        u_neg = self.out_embed(negatives)                            # (B, K, D) noise vectors
        pos = (u_pos * v).sum(axis=-1)                               # (B,) u_o · v_c
        neg = (u_neg * v.reshape(B, 1, -1)).sum(axis=-1)             # (B, K) u_n · v_c
        loss = -(log_sigmoid(pos) + log_sigmoid(-neg).sum(axis=-1))  # (B,)
        return loss.mean()

    # ------------------------------------------------------------------ using the vectors
    def vectors(self) -> np.ndarray:
        """The centre vectors, each scaled to unit length (V, D), float64."""
        w = self.in_embed.weight.data.astype(np.float64)
        return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)

    def nearest(self, query, k: int = 8, exclude=()) -> list[tuple[int, float]]:
        """The ``k`` words of highest cosine similarity to ``query`` (a word id or a vector), as
        (id, cosine), the query word itself and ``exclude`` left out."""
        vecs = self.vectors()
        if np.ndim(query) == 0:
            exclude = {int(query), *exclude}
            query = vecs[int(query)]
        q = np.asarray(query, np.float64)
        sims = vecs @ (q / max(np.linalg.norm(q), 1e-12))
        sims[list(exclude)] = -np.inf
        top = np.argsort(-sims)[:k]
        return [(int(i), float(sims[i])) for i in top]

    def analogy(self, a: int, b: int, c: int, k: int = 1) -> list[tuple[int, float]]:
        """a : b :: c : ? -- the words nearest to v_b - v_a + v_c (unit vectors), a, b, c excluded."""
        vecs = self.vectors()
        return self.nearest(vecs[b] - vecs[a] + vecs[c], k, exclude=(a, b, c))


def sgns_loss(model, batch):
    """``loss_fn`` for the Trainer: a batch is (center, context, negatives)."""
    return model(*batch)


def keep_probabilities(counts, t: float) -> np.ndarray:
    """P(keep an occurrence of w) = min(1, sqrt(t / f(w))), f(w) = count(w) / total."""
    counts = np.asarray(counts, np.float64)
    f = counts / counts.sum()
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, np.sqrt(t / f))


def noise_table(counts, size: int = 1_000_000, power: float = 0.75) -> np.ndarray:
    """The noise table: word w fills a share count(w)^power / Σ count^power of ``size`` slots
    (words of count 0 get none), as word2vec.c's InitUnigramTable."""
    weights = np.asarray(counts, np.float64) ** power
    weights[np.asarray(counts) == 0] = 0.0
    if weights.sum() <= 0:
        raise ValueError("noise_table: every count is 0; the corpus holds no words")
    edges = np.round(np.cumsum(weights) / weights.sum() * size).astype(np.int64)
    return np.repeat(np.arange(len(weights)), np.diff(edges, prepend=0))


class SkipGramSampler:
    """Draws (center, context, negatives) batches from a word-id text.

    ids        the text as word ids (1-D)
    window     the largest window radius R (dynamic windows: a pair at distance d has weight R-d+1)
    negatives  K noise words per pair, from the count^0.75 table
    subsample  t of the frequent-word subsampling (0: keep every word); the text is subsampled
               once, with ``seed``
    skip_ids   ids that are never a centre or a context word (e.g. <unk>), still counted in f(w)
    """

    def __init__(self, ids, vocab_size: int, window: int = 5, negatives: int = 5, subsample: float = 1e-3,
                 table_size: int = 1_000_000, seed: int = 0, skip_ids=(0,)):
        ids = np.asarray(ids, np.int64)
        if window < 1 or negatives < 1:
            raise ValueError(f"SkipGramSampler: window and negatives must be >= 1, got {window} and {negatives}")
        if ids.ndim != 1 or ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"SkipGramSampler: ids must be a 1-D array in [0, {vocab_size}), got shape "
                             f"{ids.shape}" + (f" with values in [{ids.min()}, {ids.max()}]" if ids.size else ""))
        self.counts = np.bincount(ids, minlength=vocab_size)
        self.window, self.negatives = int(window), int(negatives)
        self.table = noise_table(np.where(np.isin(np.arange(vocab_size), skip_ids), 0, self.counts), table_size)
        rng = np.random.default_rng(seed)
        keep = ~np.isin(ids, skip_ids)
        if subsample > 0:
            keep &= rng.random(len(ids)) < keep_probabilities(self.counts, subsample)[ids]
        self.text = ids[keep]
        if len(self.text) < 2 * window:      # a context past one end is reflected to the other side
            raise ValueError(f"SkipGramSampler: {len(self.text)} words are left after subsampling, fewer "
                             f"than a window (radius {window}, 2 x {window} words) needs; use a longer "
                             f"text or subsample=0")
        w = self.window - np.arange(self.window, dtype=np.float64)  # R - d + 1 for d = 1..R
        self.distance_probs = w / w.sum()

    def batch(self, rng, batch_size: int):
        """(center (B,), context (B,), negatives (B, K)) int64 arrays."""
        n, R = len(self.text), self.window
        d = rng.choice(np.arange(1, R + 1), size=batch_size, p=self.distance_probs)
        d = np.where(rng.random(batch_size) < 0.5, -d, d)
        i = rng.integers(0, n, size=batch_size)
        j = i + d
        j = np.where((j < 0) | (j >= n), i - d, j)                   # reflect at the ends of the text
        negatives = self.table[rng.integers(0, len(self.table), size=(batch_size, self.negatives))]
        return self.text[i], self.text[j], negatives
