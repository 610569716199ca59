"""The language-model demos (demos/ngram.py, word2vec.py, rnn_lm.py, seq2seq.py, bert.py) on tiny
settings: each writes its table and figures into --out and reports what it measured; bad input is
one line and exit 2 with nothing written; a run stopped by Ctrl-C is one line and exit 130 with no
results written; an earlier run's checkpoint is overwritten only with --force."""
import os
import re
from pathlib import Path

import numpy as np
import pytest

import minigrad

from models.training import load_checkpoint
from strategies import assert_refused, assert_stopped, ctrl_c, files_below, load_demo


@pytest.fixture
def tiny_text(tmp_path):
    """A small UTF-8 corpus that repeats: every model learns something from it in seconds."""
    lines = ["ROMEO: but soft, what light through yonder window breaks?",
             "JULIET: o romeo, romeo, wherefore art thou romeo?",
             "ROMEO: it is the east, and juliet is the sun.",
             "JULIET: deny thy father and refuse thy name."]
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(lines * 60) + "\n", encoding="utf-8")
    return str(path)


def wide_text(n_chars=600, length=6000):
    """A text of ``n_chars`` distinct characters (CJK ideographs), too many for order 7 n-grams."""
    rng = np.random.default_rng(0)
    return "".join(chr(0x4E00 + i) for i in np.r_[np.arange(n_chars), rng.integers(0, n_chars, length)])


def test_ngram_demo_sweeps_the_orders_a_wide_vocabulary_allows_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wide.txt").write_text(wide_text(), encoding="utf-8")
    demo = load_demo("ngram.py")
    result = demo.run(demo.build_parser().parse_args(["--data", "wide.txt", "--out", "ng", "--word-max-order", "0",
                                                      "--sample-chars", "5"]))
    assert list(result["chars"]) == [1, 2, 3, 4, 5, 6]        # the default, 8, gave way to 6
    assert "this text's 600 characters allow orders up to 6: --max-order 6" in capsys.readouterr().out


# --------------------------------------------------------------------------------- ngram
def test_ngram_demo_writes_its_tables_and_the_best_model_is_kneser_ney(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    result = load_demo("ngram.py").run(load_demo("ngram.py").build_parser().parse_args(
        ["--data", tiny_text, "--out", "ng", "--max-order", "5", "--word-max-order", "2", "--sample-chars", "50"]))
    assert files_below(tmp_path / "ng") == ["ngram.png", "ngram_results.md", "ngram_sample.txt"]
    chars = result["chars"]
    assert chars[5]["kneser_ney"] < chars[2]["kneser_ney"] < chars[1]["kneser_ney"]
    assert result["best"]["smoothing"] == "kneser_ney"
    md = (tmp_path / "ng" / "ngram_results.md").read_text()
    best = result["best"]
    assert f"Best: order {best['order']}, kneser ney, {best['nats_per_char']:.4f} nats/char" in md
    assert md.count(f"**{best['nats_per_char']:.4f}**") == 1          # bold in its table
    assert [int(m) for m in re.findall(r"^\| (\d) \|", md, re.M)] == [1, 2, 3, 4, 5, 1, 2]   # chars, words


@pytest.mark.parametrize("argv, says", [
    (["--max-order", "0"], "--max-order must be in [1, 9]"),
    (["--word-max-order", "5"], "--word-max-order must be in [0, 4]"),
    (["--data", "missing.txt"], "--data missing.txt: no such file"),
    (["--data", "empty.txt"], "--data empty.txt: the file is empty"),
    (["--data", "short.txt"], "corpus too short: 10 tokens give 9 train / 1 val tokens, but each split needs "
                              "at least block_size+1 = 2; use a longer text"),
    # vocab^order must fit an int64: NGramLM's ValueError ended the run in a traceback
    (["--data", "wide.txt", "--max-order", "7"], "--max-order 7: this text's 600 characters allow orders up to 6"),
    (["--data", "blank_tail.txt"], "the validation part of blank_tail.txt"),
])
def test_ngram_demo_refuses_bad_input(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("abcdefghij")
    (tmp_path / "wide.txt").write_text(wide_text(), encoding="utf-8")
    (tmp_path / "blank_tail.txt").write_text("some words here " * 50 + " " * 200)
    line = assert_refused(load_demo("ngram.py"), argv + ["--out", "ng"], says, capsys, watch=tmp_path)
    assert "--preset" not in line              # a hint names only flags the demo has


# ------------------------------------------------------------------------------ word2vec
def test_word2vec_demo_trains_and_writes_neighbours_analogies_and_the_projection(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("word2vec.py")
    result = demo.run(demo.build_parser().parse_args(
        ["--data", tiny_text, "--out", "w2v", "--min-count", "1", "--steps", "60", "--minutes", "1",
         "--dim", "8", "--batch-size", "64", "--subsample", "0", "--no-progress"]))
    assert files_below(tmp_path / "w2v") == ["ckpt.npz", "manifest.json", "word2vec_loss.png",
                                             "word2vec_pca.png", "word2vec_results.md"]
    assert result["steps"] == 60
    assert result["val_loss"][-1] < result["val_loss"][0]          # the held-out SGNS loss fell
    assert "romeo" in result["neighbours"] and len(result["neighbours"]["romeo"]) == 8
    md = (tmp_path / "w2v" / "word2vec_results.md").read_text()
    assert "| romeo | " in md and "Analogies a : b :: c : ?" in md


@pytest.mark.parametrize("argv, says", [
    (["--dim", "0"], "--dim must be >= 1"),
    (["--subsample", "1"], "--subsample must be in [0, 1)"),
    (["--minutes", "0"], "--minutes must be a finite number > 0"),
    (["--min-count", "1000"], "word(s) seen 1000 times or more; word2vec needs at least 2"),
    (["--data", "empty.txt"], "--data empty.txt: the file is empty"),
    # the sampler's 'every count is 0; the corpus holds no words' blamed a text full of words
    (["--data", "blank_tail.txt", "--min-count", "1"], "the validation text (the last 10%) holds no words"),
])
def test_word2vec_demo_refuses_bad_input(argv, says, tmp_path, monkeypatch, capsys, tiny_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank_tail.txt").write_text("some words here and there " * 50 + " " * 400)
    data = [] if "--data" in argv else ["--data", tiny_text]
    assert_refused(load_demo("word2vec.py"), data + argv + ["--out", "w2v"], says, capsys, watch=tmp_path)


def w2v_argv(tiny_text, steps):
    return ["--data", tiny_text, "--out", "w2v", "--min-count", "1", "--steps", str(steps), "--minutes", "1",
            "--dim", "8", "--batch-size", "64", "--no-progress"]


def test_word2vec_demo_stopped_by_ctrl_c_exits_130_and_writes_nothing(tmp_path, monkeypatch, capsys, tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("word2vec.py")
    ctrl_c(demo, monkeypatch, run=1, step=3)
    assert_stopped(demo, w2v_argv(tiny_text, 60), "interrupted at step 3 of 60; no checkpoint, results or figures "
                                                  "written", capsys)
    assert files_below(tmp_path / "w2v") == []


def test_word2vec_demo_overwrites_an_earlier_checkpoint_only_with_force(tmp_path, monkeypatch, capsys, tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("word2vec.py")
    assert demo.main(w2v_argv(tiny_text, 10)) == 0
    capsys.readouterr()
    assert_refused(demo, w2v_argv(tiny_text, 20), "w2v already holds a checkpoint of an earlier run; "
                                                  "overwrite it with --force", capsys, watch=tmp_path)
    assert load_checkpoint("w2v").step == 10
    assert demo.main(w2v_argv(tiny_text, 20) + ["--force"]) == 0
    assert load_checkpoint("w2v").step == 20


# ------------------------------------------------------------------------------- seq2seq
def test_seq2seq_demo_writes_its_table_and_heat_maps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("seq2seq.py")
    result = demo.run(demo.build_parser().parse_args(
        ["--out", "s2s", "--tasks", "reverse,add", "--attention", "luong", "--steps", "20", "--hidden-size", "16",
         "--max-len", "4", "--add-digits", "2", "--test", "20", "--beam", "2", "--no-progress"]))
    assert files_below(tmp_path / "s2s") == ["seq2seq_attention.png", "seq2seq_loss.png", "seq2seq_results.md"]
    assert set(result) == {("reverse", "luong"), ("add", "luong")}
    for r in result.values():
        assert r["steps"] == 20 and 0 <= r["greedy"] <= 1 and 0 <= r["beam"] <= 1
        assert r["history"]["val_loss"][-1] < r["history"]["val_loss"][0]
    md = (tmp_path / "s2s" / "seq2seq_results.md").read_text()
    assert "| reverse | luong | 20 |" in md and "| add | luong | 20 |" in md


@pytest.mark.parametrize("argv, says", [
    (["--tasks", "reverse,copy"], "--tasks: unknown ['copy']; choose from reverse, sort, add"),
    (["--attention", ""], "--attention: unknown empty list"),
    (["--max-len", "31"], "--max-len must be <= 30"),
    (["--beam", "0"], "--beam must be >= 1"),
    (["--teacher-forcing", "1.5"], "--teacher-forcing must be in [0, 1], got 1.5"),
    (["--lr", "nan"], "--lr must be a number > 0, got nan"),
])
def test_seq2seq_demo_refuses_bad_input(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("seq2seq.py"), argv + ["--out", "s2s"], says, capsys, watch=tmp_path)


def test_seq2seq_demo_stopped_by_ctrl_c_exits_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """The demo keeps no checkpoints, and a table of the runs before the stopped one would pass
    for the whole run: nothing is written, and no run starts after the stopped one."""
    monkeypatch.chdir(tmp_path)
    demo = load_demo("seq2seq.py")
    made = ctrl_c(demo, monkeypatch, run=2)
    assert_stopped(demo, ["--out", "s2s", "--tasks", "reverse", "--attention", "luong,bahdanau", "--steps", "20",
                          "--hidden-size", "16", "--max-len", "4", "--test", "20", "--no-progress"],
                   "interrupted while training reverse with bahdanau attention at step 2 of 20; no results or "
                   "figures written", capsys)
    assert len(made) == 2 and files_below(tmp_path / "s2s") == []


# -------------------------------------------------------------------------------- rnn_lm
def test_rnn_lm_demo_puts_every_model_in_one_table(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("rnn_lm.py")
    result = demo.run(demo.build_parser().parse_args(
        ["--data", tiny_text, "--out", "rl", "--models", "rnn,lstm,gru,gpt", "--steps", "6", "--minutes", "0",
         "--hidden-size", "16", "--n-embd", "8", "--batch-size", "4", "--window", "8", "--gpt-preset", "tiny",
         "--val-chars", "1000", "--ngram-max-order", "4", "--sample-chars", "20", "--cache-dir", "", "--no-progress"]))
    assert files_below(tmp_path / "rl") == sorted(
        ["rnn_lm_curves.png", "rnn_lm_results.md"] + [f"{m}/{f}" for m in ("gpt", "gru", "lstm", "rnn")
                                                      for f in ("ckpt.npz", "manifest.json")])
    assert set(result["ngram"]) == {2, 3, 4}
    assert result["best_ngram"][1] == min(result["ngram"].values())
    for name, r in result["runs"].items():
        assert r["steps"] == 6 and 0 < r["val"] < 5 and len(r["sample"]) == 20
    md = (tmp_path / "rl" / "rnn_lm_results.md").read_text()
    for label in ("Kneser–Ney", "| RNN |", "| LSTM |", "| GRU |", "| GPT |"):
        assert label in md


def test_rnn_lm_demo_measures_the_gpt_once_per_character():
    """gpt_nats scores every character of the text exactly once (a model that gives every
    character the same probability scores log V)."""
    demo = load_demo("rnn_lm.py")

    class Uniform:
        def eval(self):
            pass

        def __call__(self, x):
            return minigrad.Tensor(np.zeros(x.shape + (7,))), None

    assert demo.gpt_nats(Uniform(), np.arange(1000) % 7, block=64) == pytest.approx(np.log(7))

    class Fixed(Uniform):                       # -log p[y] differs by character: counts show
        logp = np.log(np.arange(1, 8) / 28.0)

        def __call__(self, x):
            return minigrad.Tensor(np.broadcast_to(self.logp, x.shape + (7,)).copy()), None

    ids = np.random.default_rng(0).integers(0, 7, 1000)
    for block in (64, 50):                      # the last targets were skipped (993..999 at 64)
        want = -Fixed.logp[ids[1:]].mean()
        assert demo.gpt_nats(Fixed(), ids, block=block) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("argv, says", [
    (["--models", "lstm,transformer"], "--models: unknown ['transformer']; choose from rnn, lstm, gru, gpt"),
    (["--minutes", "0"], "--minutes 0 (no time limit) needs --steps"),
    (["--gpt-preset", "huge"], "--gpt-preset: unknown 'huge'"),
    (["--ngram-max-order", "1"], "--ngram-max-order must be in [2, 9]"),
    (["--window", "5000"], "too short for 32 training streams of windows of 5000"),
    # validation reads 16 streams whatever the batch: it failed after training, checkpoint written
    (["--batch-size", "1", "--val-chars", "300"], "too short for 1 training and 16 validation streams"),
    (["--data", "wide.txt", "--window", "8", "--ngram-max-order", "7"],
     "--ngram-max-order 7: this text's 600 characters allow orders up to 6"),
    (["--sample-chars", "-1"], "--sample-chars must be >= 0 (0: no sample), got -1"),
    (["--data", "empty.txt"], "--data empty.txt: the file is empty"),
])
def test_rnn_lm_demo_refuses_bad_input(argv, says, tmp_path, monkeypatch, capsys, tiny_text):
    """... and writes no token cache either: the default --cache-dir, out/cache, is below tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "wide.txt").write_text(wide_text(), encoding="utf-8")
    data = [] if "--data" in argv else ["--data", tiny_text]
    assert_refused(load_demo("rnn_lm.py"), data + argv + ["--out", "rl"], says, capsys, watch=tmp_path)


def rnn_argv(tiny_text, models, *more):
    return ["--data", tiny_text, "--out", "rl", "--models", models, "--steps", "6", "--minutes", "0",
            "--hidden-size", "8", "--n-embd", "4", "--batch-size", "4", "--window", "8", "--gpt-preset", "tiny",
            "--val-chars", "500", "--ngram-max-order", "2", "--sample-chars", "5", "--no-progress", *more]


def test_rnn_lm_demo_stopped_by_ctrl_c_keeps_the_finished_checkpoints_only(tmp_path, monkeypatch, capsys,
                                                                           tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("rnn_lm.py")
    made = ctrl_c(demo, monkeypatch, run=2)
    assert_stopped(demo, rnn_argv(tiny_text, "rnn,gru,lstm", "--cache-dir", ""),
                   "interrupted while training GRU at step 2 of 6; no results, curves or GRU checkpoint written "
                   "(the finished networks' checkpoints are in rl/rnn)", capsys)
    assert len(made) == 2 and files_below(tmp_path / "rl") == ["rnn/ckpt.npz", "rnn/manifest.json"]


def test_rnn_lm_demo_overwrites_earlier_checkpoints_only_with_force(tmp_path, monkeypatch, capsys, tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("rnn_lm.py")
    assert demo.main(rnn_argv(tiny_text, "rnn,gru")) == 0
    capsys.readouterr()
    assert_refused(demo, rnn_argv(tiny_text, "lstm,gru,rnn", "--steps", "8"),
                   "rl/gru, rl/rnn already hold checkpoints of an earlier run; overwrite them with --force", capsys, watch=tmp_path)
    assert [load_checkpoint(f"rl/{m}").step for m in ("rnn", "gru")] == [6, 6]
    assert demo.main(rnn_argv(tiny_text, "lstm,gru,rnn", "--steps", "8", "--force")) == 0
    assert [load_checkpoint(f"rl/{m}").step for m in ("rnn", "gru", "lstm")] == [8, 8, 8]


# ---------------------------------------------------------------------------------- bert
def bert_argv(tiny_text, *more, block="32"):
    """A small encoder's run; fine-tuning a --pretrained one takes its shape and pretrains nothing."""
    shape = [] if "--pretrained" in more else ["--n-layer", "1", "--n-embd", "16", "--pretrain-steps", "6"]
    return ["--data", tiny_text, *shape, *(["--block-size", block] if block else []),
            "--batch-size", "8", "--finetune-steps", "4", "--test", "100", "--no-progress", *more]


def test_bert_demo_pretrains_fine_tunes_and_compares_with_scratch(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("bert.py")
    result = demo.run(demo.build_parser().parse_args(bert_argv(tiny_text, "--out", "b")))
    assert files_below(tmp_path / "b") == ["bert_loss.png", "bert_results.md", "pretrained/ckpt.npz",
                                           "pretrained/manifest.json"]
    assert result["pretrain_steps"] == 6 and 0 <= result["mlm_accuracy"] <= 1
    assert set(result["fine_tuned"]) == {"pretrained", "from scratch"}
    assert all(r["steps"] == 4 for r in result["fine_tuned"].values())
    assert 0.5 <= result["majority"] < 0.65                                 # balanced classes
    md = (tmp_path / "b" / "bert_results.md").read_text()
    assert "| pretrained | 4 |" in md and "| from scratch | 4 |" in md and "majority class" in md
    # the saved encoder fine-tunes again without pretraining; its figure shows the loaded pretraining curve
    plotted = {}
    monkeypatch.setattr(demo, "plot", lambda curves, path: plotted.update(curves))
    again = demo.run(demo.build_parser().parse_args(bert_argv(tiny_text, "--out", "b2", "--pretrained", "b/pretrained",
                                                              "--no-scratch")))
    assert again["pretrain_steps"] == 6 and set(again["fine_tuned"]) == {"pretrained"}
    assert plotted["pretraining (masked LM)"]["val_step"][-1] == 6 and "fine-tuning, pretrained" in plotted


def test_bert_demo_refuses_a_checkpoint_of_another_vocabulary(tmp_path, monkeypatch, capsys, tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("bert.py")
    demo.run(demo.build_parser().parse_args(bert_argv(tiny_text, "--out", "b", "--finetune-steps", "1",
                                                      "--no-scratch")))
    other = tmp_path / "other.txt"
    other.write_text("zebra quagga xylophone " * 300 + "\n", encoding="utf-8")
    capsys.readouterr()
    assert_refused(demo, bert_argv(str(other), "--out", "b3", "--pretrained", "b/pretrained"),
                   "--pretrained b/pretrained has a vocabulary of", capsys, watch=tmp_path)


def test_bert_demo_fine_tunes_a_checkpoint_with_its_block_size_and_refuses_a_longer_one(tmp_path, monkeypatch,
                                                                                        capsys, tiny_text):
    """--block-size (default 64) met the checkpoint's 32 positions only in the first forward of
    the fine-tuning: a traceback after the data was built (a review session)."""
    monkeypatch.chdir(tmp_path)
    demo = load_demo("bert.py")
    assert demo.main(bert_argv(tiny_text, "--out", "b", "--finetune-steps", "1", "--no-scratch", block="32")) == 0
    capsys.readouterr()
    assert_refused(demo, bert_argv(tiny_text, "--out", "b2", "--pretrained", "b"),       # its --out, not pretrained/
                   "no checkpoint at b; the encoder a run with --out b pretrained is in b/pretrained: give "
                   "--pretrained b/pretrained", capsys, watch=tmp_path)
    assert_refused(demo, bert_argv(tiny_text, "--out", "b2", "--pretrained", "b/pretrained", block="48"),
                   "--block-size 48 is longer than the 32 positions the encoder in --pretrained b/pretrained has; "
                   "give --block-size 32 or less", capsys, watch=tmp_path)
    result = demo.run(demo.build_parser().parse_args(
        bert_argv(tiny_text, "--out", "b2", "--pretrained", "b/pretrained", "--no-scratch", "--test", "150",
                  block=None)))
    assert result["pretrain_steps"] == 6 and result["fine_tuned"]["pretrained"]["steps"] == 4
    md = (tmp_path / "b2" / "bert_results.md").read_text()
    assert "inputs of up to 32 characters" in md
    assert "150 test examples" in md                    # --test 150 tested 100 (whole hundreds only)


@pytest.mark.parametrize("run, says, kept", [
    (1, "interrupted in pretraining at step 2 of 6; the encoder so far is in b/pretrained (fine-tune it with "
        "--pretrained b/pretrained); no results written", 2),
    (2, "interrupted while fine-tuning the pretrained encoder at step 2 of 4; no results written; fine-tune the "
        "pretrained encoder again with --pretrained b/pretrained", 6),
    (3, "interrupted while fine-tuning the from scratch encoder at step 2 of 4; no results written; fine-tune the "
        "pretrained encoder again with --pretrained b/pretrained", 6),
])
def test_bert_demo_stopped_by_ctrl_c_keeps_only_the_pretrained_encoder(run, says, kept, tmp_path, monkeypatch,
                                                                       capsys, tiny_text):
    """The encoder is worth keeping (pretraining is the long part; a stopped one records its steps
    and fine-tunes later); the table and the figure are not written."""
    monkeypatch.chdir(tmp_path)
    demo = load_demo("bert.py")
    made = ctrl_c(demo, monkeypatch, run=run)
    assert_stopped(demo, bert_argv(tiny_text, "--out", "b"), says, capsys)
    assert len(made) == run
    assert files_below(tmp_path / "b") == ["pretrained/ckpt.npz", "pretrained/manifest.json"]
    assert load_checkpoint("b/pretrained").step == kept
    again = load_demo("bert.py")                                # its own Trainer: no Ctrl-C
    assert again.main(bert_argv(tiny_text, "--out", "b2", "--pretrained", "b/pretrained", "--no-scratch")) == 0


def test_bert_demo_overwrites_an_earlier_pretrained_encoder_only_with_force(tmp_path, monkeypatch, capsys,
                                                                            tiny_text):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("bert.py")
    argv = bert_argv(tiny_text, "--out", "b", "--finetune-steps", "1", "--no-scratch")
    assert demo.main(argv) == 0
    capsys.readouterr()
    assert_refused(demo, argv + ["--pretrain-steps", "8"], "b/pretrained already holds a checkpoint of an earlier "
                   "run; fine-tune it with --pretrained b/pretrained, overwrite it with --force", capsys, watch=tmp_path)
    assert load_checkpoint("b/pretrained").step == 6
    assert demo.main(argv + ["--pretrain-steps", "8", "--force"]) == 0
    assert load_checkpoint("b/pretrained").step == 8
    # fine-tuning the saved encoder in the same --out overwrites nothing: no --force needed
    assert demo.main(bert_argv(tiny_text, "--out", "b", "--pretrained", "b/pretrained", "--no-scratch")) == 0


@pytest.mark.parametrize("argv, says", [
    (["--block-size", "16"], "--block-size 16 is too short for the task's examples"),
    (["--n-embd", "30", "--n-head", "4"], "--n-embd 30 must be divisible by --n-head 4"),
    (["--finetune-minutes", "-1"], "--finetune-minutes must be a finite number >= 0 (0: no limit)"),
    (["--pretrained", "nowhere"], "no checkpoint at nowhere/ckpt.npz"),
    (["--pretrained", "nowhere", "--n-layer", "2", "--pretrain-lr", "0.1"],
     "--n-layer, --pretrain-lr: --pretrained fine-tunes a saved encoder of its own shape and pretrains nothing, "
     "so they would be ignored; drop them"),
    (["--data", "empty.txt"], "--data empty.txt: the file is empty"),
    # it drew for ever: the demo hung before printing anything
    (["--data", "oneword.txt"], "the training part: no stretch of 2 to 12 words of it holds two different words"),
    (["--data", "tail.txt"], "the validation part (the last 10%): no stretch of 2 to 12 words of it"),
])
def test_bert_demo_refuses_bad_input(argv, says, tmp_path, monkeypatch, capsys, tiny_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "oneword.txt").write_text("la " * 3000)
    (tmp_path / "tail.txt").write_text(Path(tiny_text).read_text() + "x " * 3000)
    data = [] if "--data" in argv else ["--data", tiny_text]
    assert_refused(load_demo("bert.py"), data + argv + ["--out", "b"], says, capsys, watch=tmp_path)


def test_word2vec_demo_skips_the_pca_plot_on_a_corpus_without_its_words(tmp_path):
    """The plot projects the words of its groups (titles, family, ...); a corpus holding fewer
    than two of them crashed the demo after it had written its results (a review session)."""
    import types

    from models.word2vec import Word2Vec, Word2VecConfig
    demo = load_demo("word2vec.py")
    vocab = types.SimpleNamespace(stoi={"zzz": 0, "king": 1}, itos=["zzz", "king"])
    path = tmp_path / "pca.png"
    assert demo.pca_plot(Word2Vec(Word2VecConfig(vocab_size=2, dim=4), seed=0), vocab, str(path), "t") is False
    assert not path.exists()



def test_rnn_lm_demo_asks_for_the_16_validation_streams_only_when_a_recurrent_network_runs(tmp_path, monkeypatch,
                                                                                        tiny_text):
    """500 validation characters hold no 16 windows of 64, which only the recurrent networks read."""
    monkeypatch.chdir(tmp_path)
    demo = load_demo("rnn_lm.py")
    assert demo.main(rnn_argv(tiny_text, "gpt", "--window", "64")) == 0
