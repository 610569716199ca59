"""Tokenizers: round trips on arbitrary Unicode, BPE training against a naive reference, JSON."""
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, strategies as st

from models.tokenizer import (BPETokenizer, CharTokenizer, TokenizerError, _CHUNK_PATTERN,
                              load_tokenizer)

SAMPLE = ("To be, or not to be, that is the question:\n"
          "Whether 'tis nobler in the mind to suffer\n"
          "The slings and arrows of outrageous fortune,\n"
          "Or to take arms against a sea of troubles\n") * 3 + "naïve café — 東京 🙂 __init__  \t end"


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(SAMPLE, vocab_size=256 + 60)


@given(st.text())
def test_char_roundtrip_on_own_alphabet(s):
    tok = CharTokenizer.train(s)
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode_array(s).tolist() == tok.encode(s)


@given(st.text(alphabet=st.sampled_from(sorted(set(SAMPLE)))))
def test_char_roundtrip_on_trained_vocab(s):
    tok = CharTokenizer.train(SAMPLE)
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


@given(st.text())
def test_bpe_roundtrip_arbitrary_unicode(bpe, s):
    ids = bpe.encode(s)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == s


@given(st.text(min_size=1, max_size=300))
def test_bpe_trained_on_arbitrary_text_roundtrips(s):
    tok = BPETokenizer.train(s, vocab_size=256 + 20)
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


@given(st.text())
def test_chunks_rejoin_to_text(s):
    assert "".join(re.findall(_CHUNK_PATTERN, s)) == s


def _naive_bpe(text, n_merges):
    """Recount every pair after every merge: slow, obviously right."""
    words = Counter(tuple(c.encode("utf-8")) for c in re.findall(_CHUNK_PATTERN, text))
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        new = 256 + len(merges)
        merges.append(best)
        nxt = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nxt[tuple(out)] += f
        words = nxt
    return merges


@given(st.text(alphabet="ab c\n", max_size=200), st.integers(1, 30))
def test_incremental_bpe_equals_naive(s, n):
    assert BPETokenizer.train(s, 256 + n).merges == _naive_bpe(s, n)


def test_incremental_bpe_equals_naive_on_sample():
    assert BPETokenizer.train(SAMPLE, 256 + 60).merges == _naive_bpe(SAMPLE, 60)


def test_bpe_compresses_and_merges_are_frequent_pairs(bpe):
    ids = bpe.encode(SAMPLE)
    assert len(ids) < 0.6 * len(SAMPLE.encode("utf-8"))
    assert b" to" in bpe.vocab or b"to" in bpe.vocab


@pytest.mark.parametrize("make", [lambda: CharTokenizer.train(SAMPLE),
                                  lambda: BPETokenizer.train(SAMPLE, 300)])
def test_save_load_json(tmp_path, make):
    tok = make()
    path = tmp_path / "tok.json"
    tok.save(path)
    again = load_tokenizer(path)
    assert type(again) is type(tok)
    assert again.to_json() == tok.to_json()
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)
    assert load_tokenizer(tok.to_json()).encode(SAMPLE) == tok.encode(SAMPLE)


def test_char_encode_array_matches_encode():
    tok = CharTokenizer.train(SAMPLE)
    arr = tok.encode_array(SAMPLE)
    assert arr.dtype == np.int64 and arr.tolist() == tok.encode(SAMPLE)


def test_char_unknown_character_is_a_clear_error():
    tok = CharTokenizer.train("abc")
    with pytest.raises(TokenizerError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.encode_array("abz")


def test_bad_inputs():
    with pytest.raises(TokenizerError):
        BPETokenizer.train("abc", vocab_size=100)
    with pytest.raises(TokenizerError):
        load_tokenizer('{"type": "wordpiece"}')
    with pytest.raises(TokenizerError):
        BPETokenizer([(300, 1)])
    with pytest.raises(TokenizerError):
        CharTokenizer.train("ab").decode([5])


@given(st.text(max_size=20), st.integers(0xD800, 0xDFFF), st.text(max_size=20))
def test_bpe_refuses_a_lone_surrogate_naming_its_position(bpe, head, surrogate, tail):
    """A lone surrogate has no UTF-8 bytes: encode and train raise the tokenizer's own error
    with its position (they let a raw UnicodeEncodeError out)."""
    text = head + chr(surrogate) + tail
    says = f"lone surrogate U+{surrogate:04X} at position {len(head)}"
    with pytest.raises(TokenizerError, match=re.escape(says)):
        bpe.encode(text)
    with pytest.raises(TokenizerError, match=re.escape(says)):
        BPETokenizer.train(text, vocab_size=256 + 5)


@pytest.mark.parametrize("make", [lambda: CharTokenizer.train("abc"), lambda: BPETokenizer.train("abcabc " * 20, 260)])
@pytest.mark.parametrize("ids, shown", [([0, 1.9], "1.9 (float) at position 1"), ([True], "True (bool) at position 0"),
                                        (np.array([0.0, 1.0]), "0.0 (float) at position 0"),
                                        (np.array([1, 0], dtype=bool), "True (bool) at position 0"),
                                        ([0, np.float32(1)], "np.float32(1.0) (float32) at position 1")])
def test_decode_refuses_ids_that_are_not_integers(make, ids, shown):
    """decode cut them with int(): 1.9 and True decoded as the token 1."""
    tok = make()
    with pytest.raises(TokenizerError, match=re.escape(f"decode: ids must be integers, got {shown}")):
        tok.decode(ids)
    assert tok.decode(np.array([0, 1], dtype=np.uint16)) == tok.decode([0, 1]) == tok.decode([np.int64(0), 1])


@pytest.mark.parametrize("make", [lambda: CharTokenizer.train("abc"), lambda: BPETokenizer.train("abcabc " * 20, 260)])
@pytest.mark.parametrize("bad", [-1, -3, 10_000])
def test_decode_refuses_ids_out_of_range_negative_ones_too(make, bad):
    """A negative id indexed the table from its end: -1 decoded as the last character or merge."""
    tok = make()
    with pytest.raises(TokenizerError, match=r"decode: id out of range \[0, "):
        tok.decode([0, bad])
