"""Tokenizers: characters, and a byte-level BPE trained here.

Both map a ``str`` to a list of integer ids and back, and save to / load from one JSON file.

- :class:`CharTokenizer` - one id per Unicode character seen in the training text
  (ids in sorted code-point order, so the same text always gives the same vocabulary).
- :class:`BPETokenizer` - byte-level byte-pair encoding (Sennrich et al., ACL 2016,
  "Neural Machine Translation of Rare Words with Subword Units"; byte-level variant as in
  GPT-2, Radford et al. 2019). Ids 0..255 are the raw UTF-8 bytes, so *every* string can be
  encoded and ``decode(encode(s)) == s`` holds for all text; a ``str`` holding a lone
  surrogate (U+D800..U+DFFF: not text, no UTF-8 bytes) is refused with a TokenizerError that
  names its position. Each learned merge
  ``(a, b) -> 256 + rank`` joins the two adjacent tokens. Text is first split into chunks
  (words with their leading space, runs of punctuation, runs of white space) and merges never
  cross a chunk boundary, like GPT-2's pre-tokenizer (ours is a simpler ``re`` pattern, since
  the stdlib ``re`` has no ``\\p{L}`` classes).

Training keeps pair counts and, for every pair, the set of chunks that contain it, so one merge
only revisits the chunks it changes (the "incremental" trick of Sennrich's reference code);
the most frequent pair is found with a lazy max-heap. Ties are broken by the smaller pair, so
training is deterministic.
"""
from __future__ import annotations

import heapq
import json
import os
import re
from collections import Counter, defaultdict

import numpy as np

__all__ = ["CharTokenizer", "BPETokenizer", "load_tokenizer", "TokenizerError"]

# Words with an optional leading space, runs of other symbols with an optional leading space,
# white space not followed by a word (so " word" keeps its space), remaining white space.
# The four branches together match every character, so the chunks always re-join to the text.
_CHUNK_PATTERN = r" ?[^\W_]+| ?[^\s\w]+| ?_+|\s+(?!\S)|\s+"


class TokenizerError(ValueError):
    """A string or file the tokenizer cannot handle (unknown character, bad JSON...)."""


def _no_utf8(text: str, who: str) -> TokenizerError:
    """The error for a ``text`` whose UTF-8 encoding failed: it holds a lone surrogate, which is
    no Unicode character and has no UTF-8 bytes (so no byte-level ids). Replacing it, as
    tiktoken does with U+FFFD, would break ``decode(encode(s)) == s`` without a word."""
    i = re.search(r"[\ud800-\udfff]", text).start()
    return TokenizerError(f"{who}: the text has a lone surrogate U+{ord(text[i]):04X} at position {i}, "
                          f"which UTF-8 cannot encode (half of a UTF-16 pair, or a byte kept by "
                          f"errors='surrogateescape'?); decode the text strictly or clean it first")


def _checked_ids(ids, vocab_size: int, who: str) -> list[int]:
    """``ids`` as a list of ints, each an integer in [0, vocab_size). A float or a bool would be
    cut to an int (1.9 -> 1, True -> 1) and a negative id would index the table from its end,
    each decoding a token nobody asked for."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":     # the usual case: one vectorised check
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise TokenizerError(f"{who}: id out of range [0, {vocab_size}), got {ids.min()}..{ids.max()}")
        return ids.ravel().tolist()
    ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)   # an array's items as Python scalars
    for pos, i in enumerate(ids):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TokenizerError(f"{who}: ids must be integers, got {i!r} ({type(i).__name__}) at position "
                                 f"{pos}; give the token ids as ints, not floats or bools")
    ids = [int(i) for i in ids]
    if any(not 0 <= i < vocab_size for i in ids):
        raise TokenizerError(f"{who}: id out of range [0, {vocab_size}), got {min(ids)}..{max(ids)}")
    return ids


class _Base:
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=True, sort_keys=True)

    def encode_array(self, text: str) -> np.ndarray:
        """Encode to a 1-D int64 array (subclasses may do this faster than ``encode``)."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def save(self, path) -> None:
        """Write the tokenizer as JSON (to a temporary name, then rename)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(_Base):
    """One id per character; the vocabulary is the sorted set of characters of the text."""

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("CharTokenizer: chars must be distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        # sorted code points and their ids, for the vectorised encode_array
        cps = np.array([ord(c) for c in chars], dtype=np.int64)
        order = np.argsort(cps)
        self._cps_sorted = cps[order]
        self._ids_sorted = order.astype(np.int64)

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def _unknown(self, text: str):
        bad = sorted(set(text) - set(self.stoi))
        shown = ", ".join(repr(c) for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        return TokenizerError(
            f"CharTokenizer: {len(bad)} character(s) not in the vocabulary of {self.vocab_size}: "
            f"{shown}; train the tokenizer on text that contains them, or use BPETokenizer")

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise self._unknown(text) from None

    def encode_array(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(0, dtype=np.int64)
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._cps_sorted, cps)
        pos_c = np.minimum(pos, len(self._cps_sorted) - 1)
        if len(self._cps_sorted) == 0 or not np.array_equal(self._cps_sorted[pos_c], cps):
            raise self._unknown(text)
        return self._ids_sorted[pos_c]

    def decode(self, ids) -> str:
        ids = _checked_ids(ids, self.vocab_size, "CharTokenizer.decode")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"type": "char", "version": 1, "chars": "".join(self.chars)}


def _merge(word: list, pair: tuple, new_id: int) -> list:
    """`word` with every occurrence of the adjacent `pair` replaced by `new_id`, left to right."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class BPETokenizer(_Base):
    """Byte-level BPE: ids 0..255 are bytes, id 256+r is the r-th learned merge."""

    def __init__(self, merges, pattern: str = _CHUNK_PATTERN):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._re = re.compile(pattern)
        self.ranks = {}
        self.vocab = [bytes([i]) for i in range(256)]
        for r, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + r and 0 <= b < 256 + r):
                raise TokenizerError(f"BPETokenizer: merge {r} = ({a}, {b}) refers to a later token")
            self.ranks[(a, b)] = r
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self._cache: dict[str, tuple[int, ...]] = {}

    # ---- training ---------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, verbose: bool = False) -> "BPETokenizer":
        """Learn ``vocab_size - 256`` merges from ``text``.

        Stops early when no pair occurs twice (further merges would only memorise).
        """
        if vocab_size < 256:
            raise TokenizerError(f"BPETokenizer.train: vocab_size={vocab_size} must be >= 256 (the bytes)")
        if vocab_size > 65536:
            raise TokenizerError(f"BPETokenizer.train: vocab_size={vocab_size} must be <= 65536 (ids are uint16)")
        chunk_counts = Counter(re.findall(_CHUNK_PATTERN, text))
        try:
            words = [list(c.encode("utf-8")) for c in chunk_counts]   # each chunk as a list of ids
        except UnicodeEncodeError:
            raise _no_utf8(text, "BPETokenizer.train") from None
        freq = list(chunk_counts.values())                        # how often each chunk occurs

        pair_count: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks containing it
        for w, (word, f) in enumerate(zip(words, freq)):
            for p in zip(word, word[1:]):
                pair_count[p] += f
                where[p].add(w)
        heap = [(-c, p) for p, c in pair_count.items()]
        heapq.heapify(heap)

        merges = []
        while len(merges) < vocab_size - 256 and heap:
            negc, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -negc:          # stale heap entry
                continue
            if -negc < 2:
                break
            new_id = 256 + len(merges)
            merges.append(pair)
            changed = set()
            for w in where.pop(pair):
                word, f = words[w], freq[w]
                for p in zip(word, word[1:]):                # forget this chunk's old pairs
                    pair_count[p] -= f
                    changed.add(p)
                out = _merge(word, pair, new_id)
                words[w] = out
                for p in zip(out, out[1:]):                  # count its new pairs
                    pair_count[p] += f
                    where[p].add(w)
                    changed.add(p)
            pair_count.pop(pair, None)
            changed.discard(pair)
            for p in changed:
                c = pair_count.get(p, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    pair_count.pop(p, None)
            if verbose and len(merges) % 100 == 0:
                print(f"bpe: {len(merges)} merges")
        return cls(merges)

    # ---- encode / decode ----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        word = list(chunk.encode("utf-8"))
        while len(word) > 1:
            # the adjacent pair with the lowest merge rank is merged first, as in training
            best = min(zip(word, word[1:]), key=lambda p: self.ranks.get(p, 1 << 30))
            r = self.ranks.get(best)
            if r is None:
                break
            word = _merge(word, best, 256 + r)
        ids = tuple(word)
        if len(self._cache) < 200_000:
            self._cache[chunk] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; TokenizerError (naming the position) for a lone surrogate."""
        out: list[int] = []
        try:
            for chunk in self._re.findall(text):
                out.extend(self._encode_chunk(chunk))
        except UnicodeEncodeError:
            raise _no_utf8(text, "BPETokenizer.encode") from None
        return out

    def decode(self, ids) -> str:
        """Join the tokens' bytes; invalid UTF-8 (possible mid-generation) becomes U+FFFD."""
        ids = _checked_ids(ids, self.vocab_size, "BPETokenizer.decode")
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": "bpe", "version": 1, "pattern": self.pattern,
                "merges": [list(m) for m in self.merges]}


def tokenizer_from_dict(d: dict):
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "bpe":
        return BPETokenizer(d["merges"], d.get("pattern", _CHUNK_PATTERN))
    raise TokenizerError(f"unknown tokenizer type {kind!r}; expected 'char' or 'bpe'")


def load_tokenizer(path_or_json):
    """Load a tokenizer from a JSON file path, or from a JSON string starting with '{'."""
    s = os.fspath(path_or_json) if not isinstance(path_or_json, str) else path_or_json
    try:
        if s.lstrip().startswith("{"):
            d = json.loads(s)
        else:
            with open(s, encoding="utf-8") as f:
                d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot load tokenizer: {e}") from None
    return tokenizer_from_dict(d)
