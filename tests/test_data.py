"""Corpus loading, cache, split and batch sampling."""
import os

import numpy as np
import pytest

from models.data import DataError, TextData, load_text
from models.tokenizer import BPETokenizer

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


def test_default_corpus_loads():
    text, desc = load_text(None, notice=False)
    assert len(text) > 100_000 and desc


def test_max_chars_keeps_the_start_of_the_text(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(TEXT, encoding="utf-8")
    assert load_text(p, max_chars=100) == (TEXT[:100], load_text(p)[1])
    assert load_text(p, max_chars=None)[0] == load_text(p, max_chars=0)[0] == TEXT
    corpus, desc = load_text(None, notice=False)
    assert load_text(None, notice=False, max_chars=5000) == (corpus[:5000], desc)


def test_fallback_when_package_missing(monkeypatch, capsys):
    import models.data as d
    monkeypatch.setattr(d, "DEFAULT_PACKAGE", "no_such_package_xyz")
    text, desc = d.load_text(None)
    assert "pydoc_data" in desc and len(text) > 10_000
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "falling back" in err


def test_load_text_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_text(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_text(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8.*offset 3"):
        load_text(latin)
    with pytest.raises(DataError, match="not a regular file"):
        load_text(tmp_path)


def test_utf8_file_roundtrip(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("\ufeffhéllo wörld", encoding="utf-8")
    text, _ = load_text(p)
    assert text == "héllo wörld"


def test_corpus_shorter_than_a_block():
    with pytest.raises(DataError, match="corpus too short"):
        TextData("abcdefghij" * 5, block_size=64)


def test_split_is_deterministic_90_10_and_covers_all():
    d = TextData(TEXT, block_size=16)
    n = len(TEXT)
    assert len(d.train) + len(d.val) == n
    assert len(d.val) == round(0.1 * n)
    ids = np.concatenate([d.train.ids, d.val.ids])
    assert d.tokenizer.decode(ids) == TEXT
    d2 = TextData(TEXT, block_size=16)
    assert np.array_equal(d2.val.ids, d.val.ids)


def test_cache_is_uint16_memmap_and_keyed_by_text_and_tokenizer(tmp_path):
    d = TextData(TEXT, block_size=16, cache_dir=tmp_path)
    assert os.path.exists(d.cache_path)
    again = TextData(TEXT, block_size=16, cache_dir=tmp_path)
    assert isinstance(again.ids, np.memmap) and again.ids.dtype == np.uint16
    assert again.cache_path == d.cache_path
    assert np.array_equal(np.asarray(again.ids), np.asarray(d.ids))
    other_text = TextData(TEXT + "!", block_size=16, cache_dir=tmp_path)
    bpe = BPETokenizer.train(TEXT, 280)
    other_tok = TextData(TEXT, tokenizer=bpe, block_size=16, cache_dir=tmp_path)
    assert len({d.cache_path, other_text.cache_path, other_tok.cache_path}) == 3
    assert bpe.decode(np.asarray(other_tok.ids)) == TEXT


def test_corrupt_cache_is_rebuilt(tmp_path):
    d = TextData(TEXT, block_size=16, cache_dir=tmp_path)
    with open(d.cache_path, "wb") as f:
        f.write(b"garbage")
    again = TextData(TEXT, block_size=16, cache_dir=tmp_path)
    assert again.tokenizer.decode(np.asarray(again.ids)) == TEXT


def test_batches_are_shifted_windows_and_seeded():
    d = TextData(TEXT, block_size=16)
    x, y = d.get_batch("train", 8, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    x2, _ = d.get_batch("train", 8, np.random.default_rng(0))
    assert np.array_equal(x, x2)
    train = np.asarray(d.train.ids)
    for row in x:   # each row is a contiguous window of the train split
        hits = np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(train, 16) == row, axis=1))
        assert hits.size >= 1
    xv, yv = d.get_batch("val", 4, np.random.default_rng(1))
    assert xv.max() < d.vocab_size
    assert np.array_equal(d.fixed_batches("val", 2, 4, seed=3)[1][0], d.fixed_batches("val", 2, 4, seed=3)[1][0])


def test_every_start_reachable_including_last():
    # all-distinct characters: a window's first id tells its start
    text = "".join(chr(0x100 + i) for i in range(400))
    d = TextData(text, block_size=8)
    rng = np.random.default_rng(0)
    firsts = set()
    for _ in range(50):
        x, y = d.get_batch("val", 32, rng)
        firsts.update(x[:, 0].tolist())
    val = np.asarray(d.val.ids)
    assert firsts == set(val[: len(val) - 8].tolist())


def test_a_block_size_the_split_cannot_hold_is_refused_naming_the_split():
    """get_batch failed in rng.integers with numpy's 'high <= 0'."""
    d = TextData("".join(chr(0x100 + i) for i in range(400)), block_size=8)
    n_val = len(d.val)
    assert d.get_batch("val", 2, np.random.default_rng(0), block_size=n_val - 1)[0].shape == (2, n_val - 1)
    for T in (n_val, 200, 0):
        with pytest.raises(DataError, match=rf"block_size={T} does not fit the val split of {n_val} tokens: "
                                            rf".* must be in \[1, {n_val - 1}\]"):
            d.get_batch("val", 2, np.random.default_rng(0), block_size=T)


def test_batch_at_refuses_starts_outside_the_split():
    """A negative start took a window from the end of the split; one past the last window failed
    in numpy's indexing."""
    d = TextData("".join(chr(0x100 + i) for i in range(400)), block_size=8)
    last = len(d.train) - 9
    x, y = d.batch_at("train", [0, last])
    assert np.array_equal(y[1], np.asarray(d.train.ids[-8:]))      # the last window ends the split
    for starts in ([-1], [0, last + 1], [1.0]):
        with pytest.raises(DataError, match=rf"batch_at: starts must be integers in \[0, {last}\] for windows "
                                            rf"of block_size\+1 = 9 tokens in the train split of {len(d.train)} tokens"):
            d.batch_at("train", starts)


def test_deferred_cache_write(tmp_path):
    d = TextData(TEXT, block_size=16, cache_dir=tmp_path / "c", write_cache=False)
    assert not (tmp_path / "c").exists()
    d.save_cache()
    assert os.path.exists(d.cache_path) and isinstance(d.ids, np.memmap)
    assert d.tokenizer.decode(np.concatenate([d.train.ids, d.val.ids])) == TEXT


def test_a_cache_that_cannot_be_written_is_a_note_not_a_crash(tmp_path, capsys):
    """--cache-dir naming a file (or a read-only place) ended the demos in a FileExistsError /
    PermissionError traceback (a review session): the ids stay in memory, and a note says so."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    d = TextData(TEXT, block_size=16, cache_dir=blocker)
    assert "was not written" in capsys.readouterr().err
    assert not isinstance(d.ids, np.memmap) and len(d.train.ids) > 0

