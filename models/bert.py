"""A BERT-style encoder: masked-language-model pretraining, then a classification head.

BERT (Devlin, Chang, Lee, Toutanova 2018, arXiv:1810.04805) is the transformer's *encoder*
alone: the same blocks as the GPT (models/gpt.py), but every position attends to every other,
before and after it (no causal mask), so the representation of a token uses its whole context.
That rules out next-token prediction (the answer would be visible), so BERT learns by filling
gaps, the **masked language model**:

* choose 15 % of the positions (never padding or [CLS]); for each, with probability 0.8 replace
  the input token by [MASK], 0.1 by a random token, 0.1 leave it unchanged (so the model cannot
  assume the token it sees is never the answer), and score the prediction of the original
  token at the chosen positions only (:func:`mask_tokens`).

The pretrained encoder then serves other tasks by **fine-tuning**: a small head reads the final
hidden state of the [CLS] token that starts every input (BERT's "pooler": tanh(W h_[CLS]), then
a linear classifier), and the whole network trains on the labelled task.

Here the tokens are characters (the corpus's ``CharTokenizer``) followed by four specials,
[PAD] [CLS] [SEP] [MASK] (:class:`BERTVocab`); inputs of different lengths are padded and the
attention ignores padded keys (``key_padding_mask``). The blocks are pre-LayerNorm like the GPT's
(Xiong et al. 2020, arXiv:2002.04745; BERT itself puts LayerNorm after each residual), and the
masked-LM output layer is tied to the token embedding with its own bias, as BERT's.

    vocab = BERTVocab(data.tokenizer)
    model = BERT(BERTConfig(vocab_size=vocab.size, block_size=64))
    Trainer(model, mlm_loss, opt, lambda rng: mlm_batch(train_ids, vocab, 32, 64, rng), ...).fit()
    Trainer(model, classification_loss, opt, lambda rng: task.batch(rng, 32), ...).fit()
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

import minigrad
import minigrad.functional as F
from minigrad import nn

__all__ = ["BERTConfig", "BERT", "BERTVocab", "mask_tokens", "mlm_batch", "mlm_loss", "classification_loss",
           "ShuffledWordsTask", "accuracy", "check_vocabulary", "IGNORE"]

IGNORE = -100          # the label of positions the masked LM does not score (F.cross_entropy's default)


@dataclass
class BERTConfig:
    vocab_size: int = 69
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    n_classes: int = 2
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "n_classes"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"BERTConfig.{name}={v!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(f"BERTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BERTConfig.dropout={self.dropout} must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BERTConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"BERTConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


class BERTVocab:
    """A tokenizer's ids 0..n-1 followed by the specials [PAD], [CLS], [SEP], [MASK]."""

    SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.n_tokens = tokenizer.vocab_size
        self.pad, self.cls, self.sep, self.mask = range(self.n_tokens, self.n_tokens + 4)

    @property
    def size(self) -> int:
        return self.n_tokens + len(self.SPECIALS)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode_array(text), dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.SPECIALS[i - self.n_tokens] if i >= self.n_tokens else self.tokenizer.decode([i])
                       for i in map(int, ids))


class Block(nn.Module):
    """Pre-LN transformer block with bidirectional (unmasked) self-attention over unpadded keys."""

    def __init__(self, cfg: BERTConfig, dtype, rng):
        super().__init__()
        C = cfg.n_embd
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.ln_1 = nn.LayerNorm(C, dtype=dtype)
        self.c_attn = nn.Linear(C, 3 * C, dtype=dtype, rng=rng)            # fused q, k, v
        self.c_proj = nn.Linear(C, C, dtype=dtype, rng=rng)
        self.ln_2 = nn.LayerNorm(C, dtype=dtype)
        self.c_fc = nn.Linear(C, 4 * C, dtype=dtype, rng=rng)
        self.c_proj2 = nn.Linear(4 * C, C, dtype=dtype, rng=rng)

    def forward(self, x, pad, rng=None):
        y = F.qkv_attention(self.c_attn(self.ln_1(x)), self.n_head, causal=False, key_padding_mask=pad)
        y = self.c_proj(y)                                                 # (B, T, C)
        if self.dropout and self.training:
            y = F.dropout(y, self.dropout, True, rng)
        x = x + y
        y = self.c_proj2(F.gelu(self.c_fc(self.ln_2(x))))                  # (B, T, C)
        if self.dropout and self.training:
            y = F.dropout(y, self.dropout, True, rng)
        return x + y


class BERT(nn.Module):
    """``BERT(config, dtype=np.float32, seed=0)``. ``forward(idx (B, T), padding_mask=None) ->
    hidden (B, T, C)``; :meth:`mlm_logits` and :meth:`class_logits` read it. ``padding_mask``
    is True at padded positions (default: idx == the [PAD] id, vocab_size - 4)."""

    def __init__(self, config: BERTConfig, dtype=np.float32, seed: int = 0):
        super().__init__()
        self.config = c = config
        rng = np.random.default_rng(seed)
        C = c.n_embd
        self.wte = nn.Embedding(c.vocab_size, C, dtype=dtype, rng=rng)
        self.wpe = nn.Embedding(c.block_size, C, dtype=dtype, rng=rng)
        self.h = nn.ModuleList([Block(c, dtype, rng) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(C, dtype=dtype)
        # masked-LM head: transform (dense, GELU, LayerNorm), then the tied embedding and a bias
        self.mlm_dense = nn.Linear(C, C, dtype=dtype, rng=rng)
        self.mlm_ln = nn.LayerNorm(C, dtype=dtype)
        self.mlm_bias = nn.Parameter(np.zeros(c.vocab_size, dtype=dtype))
        # classification head on [CLS]: the pooler tanh(W h), then a linear classifier
        self.pooler = nn.Linear(C, C, dtype=dtype, rng=rng)
        self.classifier = nn.Linear(C, c.n_classes, dtype=dtype, rng=rng)
        self.dropout_rng = np.random.default_rng(seed + 1)
        # BERT's init: N(0, 0.02) weights, zero biases, LayerNorms at the identity
        for name, role in nn.layer_roles(self).items():
            p = dict(self.named_parameters())[name]
            if role == "norm":
                p.data[...] = 1.0 if name.endswith("weight") else 0.0
            elif name.endswith("bias"):
                p.data[...] = 0.0
            else:
                p.data[...] = rng.normal(0.0, 0.02, size=p.shape)

    @property
    def pad_id(self) -> int:
        return self.config.vocab_size - 4

    def forward(self, idx, padding_mask=None):
        idx = np.asarray(idx.data if isinstance(idx, minigrad.Tensor) else idx)
        c = self.config
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer) or idx.shape[1] == 0:
            raise ValueError(f"BERT.forward: idx must be an integer array (B, T) with T >= 1, got {idx.dtype} {idx.shape}")
        B, T = idx.shape
        if T > c.block_size:
            raise ValueError(f"BERT.forward: a sequence of {T} tokens (idx shape {idx.shape}) is longer than "
                             f"block_size={c.block_size}, the positions the model has embeddings for; cut it "
                             f"to {c.block_size} tokens")
        if idx.min() < 0 or idx.max() >= c.vocab_size:
            raise ValueError(f"BERT.forward: token ids must be in [0, {c.vocab_size}) (the model's vocabulary), "
                             f"got [{idx.min()}, {idx.max()}]")
        pad = idx == self.pad_id if padding_mask is None else np.asarray(padding_mask)
        if pad.shape != (B, T) or pad.dtype != np.bool_:
            raise ValueError(f"BERT.forward: padding_mask has shape {pad.shape} ({pad.dtype}) but idx is {(B, T)}: "
                             f"it must be a boolean (B, T) array, True at padding")
        x = F.embedding(idx, self.wte.weight) + F.embedding(np.arange(T), self.wpe.weight)   # (B, T, C)
        if c.dropout and self.training:
            x = F.dropout(x, c.dropout, True, self.dropout_rng)
        for block in self.h:
            x = block(x, pad, rng=self.dropout_rng)
        return self.ln_f(x)

    def mlm_logits(self, hidden):
        """(B, T, V): the distribution over the vocabulary at every position."""
        x = self.mlm_ln(F.gelu(self.mlm_dense(hidden)))
        return F.linear(x, self.wte.weight) + self.mlm_bias

    def class_logits(self, hidden):
        """(B, n_classes) from the [CLS] position (the first)."""
        return self.classifier(self.pooler(hidden[:, 0]).tanh())


def mask_tokens(ids, vocab: BERTVocab, rng, p: float = 0.15):
    """BERT's masking of a batch of ids (B, T): (inputs, labels).

    Each position that is neither padding nor a special is chosen with probability ``p``; a
    chosen one becomes [MASK] with probability 0.8, a random ordinary token with 0.1, and stays
    with 0.1. labels hold the original id at chosen positions and IGNORE elsewhere."""
    ids = np.asarray(ids, dtype=np.int64)
    maskable = ids < vocab.n_tokens
    chosen = maskable & (rng.random(ids.shape) < p)
    r = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (r < 0.8)] = vocab.mask
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rng.integers(0, vocab.n_tokens, size=int(swap.sum()))
    labels = np.where(chosen, ids, IGNORE)
    return inputs, labels


def mlm_batch(ids, vocab: BERTVocab, batch_size: int, block_size: int, rng, p: float = 0.15):
    """Random windows of ``block_size - 1`` ids after a [CLS], masked: (inputs, labels) (B, T)."""
    ids = np.asarray(ids)
    n = block_size - 1
    if len(ids) < n:
        raise ValueError(f"mlm_batch: {len(ids)} ids are fewer than one window of {n}")
    starts = rng.integers(0, len(ids) - n + 1, size=batch_size)      # (no target shift: the last id too)
    windows = np.stack([ids[s:s + n] for s in starts]).astype(np.int64)
    windows = np.concatenate([np.full((batch_size, 1), vocab.cls), windows], axis=1)
    return mask_tokens(windows, vocab, rng, p)


def mlm_loss(model, batch):
    """``loss_fn`` for the Trainer: mean cross-entropy at the masked positions of (inputs, labels)."""
    inputs, labels = batch
    logits = model.mlm_logits(model(inputs))
    V = model.config.vocab_size
    if not (labels != IGNORE).any():                 # nothing chosen: a zero loss that keeps the graph
        return (logits * 0.0).sum()
    return F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE)


def classification_loss(model, batch):
    """``loss_fn`` for the Trainer: cross-entropy of the [CLS] classifier on (inputs, labels (B,))."""
    inputs, labels = batch
    return F.cross_entropy(model.class_logits(model(inputs)), np.asarray(labels))


def accuracy(model, batches) -> float:
    """The share of right predictions of the [CLS] classifier over ``batches`` of (inputs, labels)."""
    was = model.training
    model.eval()
    right = total = 0
    try:
        with minigrad.no_grad():
            for inputs, labels in batches:
                right += int((model.class_logits(model(inputs)).data.argmax(-1) == labels).sum())
                total += len(labels)
    finally:
        model.train(was)
    return right / total


class ShuffledWordsTask:
    """Is this stretch of text real, or its words in a shuffled order? (label 1: real).

    An example is ``min_words..max_words`` consecutive words of the text (split at white space,
    joined by single spaces, so the layout gives nothing away) that fit in ``block_size - 1``
    characters (the last dropped until they do, down to 2), two of them different; half the
    examples have their words permuted (always into another order). The classes are balanced,
    so the majority-class baseline is 50 %. Inputs are [CLS] + characters, padded with [PAD] to
    the longest example of the batch."""

    def __init__(self, text: str, vocab: BERTVocab, block_size: int, min_words: int = 4, max_words: int = 12):
        self.words = text.split()
        self.vocab, self.block_size = vocab, int(block_size)
        self.min_words, self.max_words = int(min_words), int(max_words)
        if len(self.words) < self.max_words + 1:
            raise ValueError(f"ShuffledWordsTask: the text has {len(self.words)} words, fewer than "
                             f"max_words + 1 = {self.max_words + 1}")
        if not self._has_an_example():                # else sample() would draw for ever
            raise ValueError(f"ShuffledWordsTask: no stretch of 2 to {self.max_words} words of this text "
                             f"holds two different words in block_size - 1 = {self.block_size - 1} "
                             f"characters; give a text of shorter, varied words or a larger block_size")

    def _has_an_example(self) -> bool:
        """Whether some start sample() draws leads to an example: its first k words, k the fewest
        that hold two different words (at least 2, at most max_words), fit in block_size - 1.
        Most texts answer at the first start; a text with none is read once (a million words of
        one word: 0.8 s, before the refusal)."""
        W, room = self.words, self.block_size - 1
        for s in range(len(W) - self.max_words):
            width = len(W[s])
            for j in range(s + 1, s + self.max_words):
                width += 1 + len(W[j])
                if width > room:
                    break
                if W[j] != W[s]:
                    return True
        return False

    def sample(self, rng) -> tuple[str, int]:
        while True:
            start = int(rng.integers(0, len(self.words) - self.max_words))
            n = int(rng.integers(self.min_words, self.max_words + 1))
            words = self.words[start:start + n]
            while len(words) > 2 and len(" ".join(words)) > self.block_size - 1:
                words = words[:-1]
            if len(" ".join(words)) <= self.block_size - 1 and len(set(words)) > 1:
                break
        if rng.random() < 0.5:
            return " ".join(words), 1
        order = list(range(len(words)))
        while order == sorted(order) or [words[i] for i in order] == words:
            order = list(rng.permutation(len(words)))
        return " ".join(words[i] for i in order), 0

    def batch(self, rng, batch_size: int):
        """(inputs (B, T) [CLS] + characters padded with [PAD], labels (B,))."""
        examples = [self.sample(rng) for _ in range(batch_size)]
        encoded = [self.vocab.encode(t) for t, _ in examples]
        T = 1 + max(map(len, encoded))
        inputs = np.full((batch_size, T), self.vocab.pad, dtype=np.int64)
        inputs[:, 0] = self.vocab.cls
        for i, e in enumerate(encoded):
            inputs[i, 1:1 + len(e)] = e
        return inputs, np.array([label for _, label in examples])


def check_vocabulary(config: BERTConfig, vocab: BERTVocab, where: str) -> None:
    """A model's vocabulary must be the data's: raises ValueError naming both sizes otherwise."""
    if config.vocab_size != vocab.size:
        raise ValueError(f"{where} has a vocabulary of {config.vocab_size} tokens ({config.vocab_size - 4} + 4 "
                         f"specials) but this text needs {vocab.size} ({vocab.n_tokens} + 4); pretrain on "
                         f"this text, or give the text it was pretrained on")

