"""The training CLI: resume == uninterrupted, Ctrl-C saves, outputs, and bad input -> one line, exit 2."""
import json
import shutil
import re
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from models import cli
from strategies import assert_refused, load_demo


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "demos", "train_gpt.py")
train_gpt = load_demo("train_gpt.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data import topics
    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))[:40_000]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _args(corpus, out, *extra):
    return ["--preset", "tiny", "--data", corpus, "--out", str(out), "--steps", "12", "--batch-size", "4",
            "--eval-every", "4", "--eval-batches", "2", "--warmup", "3", "--max-minutes", "0",
            "--sample-chars", "20", "--no-progress", "--seed", "7", *extra]


def _load(out):
    with np.load(os.path.join(out, "ckpt.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert train_gpt.main(_args(corpus, out)) == 0
    return out


def test_outputs_of_a_run(full_run, capsys):
    names = set(os.listdir(full_run))
    assert {"ckpt.npz", "manifest.json", "loss.png", "samples.txt", "cache"} <= names
    assert not [n for n in names if ".tmp" in n]
    man = json.loads(Path(os.path.join(full_run, "manifest.json")).read_text())
    assert man["step"] == 12 and man["config"]["n_layer"] == 2 and man["last_val_loss"] > 0
    ck = _load(full_run)
    meta = json.loads(str(ck["meta"]))
    assert meta["step"] == 12 and meta["model"]["config"] == man["config"]
    assert ck["history/val_step"].tolist() == [0, 4, 8, 12]
    assert len(ck["history/train_loss"]) == 12
    assert any(k.startswith("optim/") for k in ck)
    assert "=== step 12" in Path(full_run, "samples.txt").read_text(encoding="utf-8")
    with open(os.path.join(full_run, "loss.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # training made progress on the fixed validation batches
    assert ck["history/val_loss"][-1] < ck["history/val_loss"][0]


def test_interrupt_then_resume_equals_uninterrupted(corpus, full_run, tmp_path, capsys):
    out = tmp_path / "resumed"

    def ctrl_c_at_5(step):
        if step == 5:
            signal.raise_signal(signal.SIGINT)      # what Ctrl-C does; the handler saves and stops

    before = signal.getsignal(signal.SIGINT)   # SIG_IGN when the suite runs as a background job
    assert train_gpt.main(_args(corpus, out), on_step=ctrl_c_at_5) == 130
    assert capsys.readouterr().err == (f"train_gpt.py: interrupted at step 5 of 12: checkpoint saved to "
                                       f"{out / 'ckpt.npz'}, no sample written; continue with --resume --out {out}\n")
    assert not (out / "samples.txt").exists()
    part = _load(out)
    assert json.loads(str(part["meta"]))["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before                      # handler restored

    assert train_gpt.main(_args(corpus, out, "--resume")) == 0
    a, b = _load(full_run), _load(out)
    assert a["history/train_loss"].tolist() == b["history/train_loss"].tolist()   # bit for bit
    assert a["history/val_loss"].tolist() == b["history/val_loss"].tolist()
    for k in a:
        if k.startswith(("param/", "optim/")):
            assert np.array_equal(a[k], b[k]), k


def test_real_ctrl_c_in_a_subprocess(corpus, tmp_path):
    out = tmp_path / "sig"
    args = _args(corpus, out)
    args[args.index("--steps") + 1] = "100000"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:                # wait until training runs
            if line.startswith("step 4:"):
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.startswith("train_gpt.py: interrupted at step ") and "checkpoint saved" in stderr, stderr
    meta = json.loads(str(_load(out)["meta"]))
    assert meta["step"] >= 4


def test_bad_data_files(tmp_path, capsys, corpus):
    out = str(tmp_path / "o")
    assert_refused(train_gpt, _args(str(tmp_path / "nope.txt"), out), "no such file", capsys, out)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_refused(train_gpt, _args(str(empty), out), "empty", capsys, out)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Schön".encode("latin-1") * 100)
    assert_refused(train_gpt, _args(str(latin), out), "not UTF-8", capsys, out)
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 20)     # 380 chars: val split < one block of 65
    assert_refused(train_gpt, _args(str(short), out), "corpus too short", capsys, out)


def test_bad_options(tmp_path, capsys, corpus):
    out = str(tmp_path / "o")
    for flags, said in ((("--preset", "huge"), "argument --preset: invalid choice: 'huge' (choose from 'tiny', 'small', 'medium')"),
                        (("--optimizer", "sgdd"), "unknown optimizer 'sgdd'"),
                        (("--steps", "0"), "--steps"),
                        (("--steps", "many"), "invalid int"),
                        (("--resume",), "no checkpoint"),
                        (("--resume", "--quick"), "--quick starts a smoke run and --resume continues"),
                        (("--vocab-size", "300"), "--vocab-size is the size of a BPE vocabulary"),   # ignored
                        (("--blas-threads", "-2"), "--blas-threads must be >= 0, got -2")):
        assert_refused(train_gpt, _args(corpus, out, *flags), said, capsys, out)


def test_quick_is_a_short_run_of_the_tiny_preset_into_its_own_out(tmp_path, monkeypatch, capsys, corpus):
    """--quick: the tiny preset, QUICK's steps without a time budget, into out/quick (not the
    out/ of a real run); a flag given explicitly wins."""
    monkeypatch.chdir(tmp_path)
    assert train_gpt.main(["--quick", "--data", corpus, "--batch-size", "4", "--eval-batches", "1",
                           "--no-progress"]) == 0
    assert "model: tiny 2 layers" in capsys.readouterr().out
    man = json.loads(Path(tmp_path / "out" / "quick" / "manifest.json").read_text())
    assert man["step"] == train_gpt.QUICK["steps"] == 60 and not (tmp_path / "out" / "ckpt.npz").exists()
    ck = _load(tmp_path / "out" / "quick")
    assert ck["history/val_step"].tolist() == [0, 20, 40, 60]              # --eval-every 20
    args = json.loads(str(ck["meta"]))["args"]
    assert args["max_minutes"] == 0 and args["warmup"] == 10 and args["eval_batches"] == 1   # explicit wins


def test_quick_runs_again_and_replaces_its_own_smoke_run_only(tmp_path, monkeypatch, capsys, corpus):
    """A second --quick was refused ('already holds a checkpoint; continue it with --resume'),
    and --quick --resume is refused too: the documented smoke command ran once (a review
    session). out/quick is the smoke run's own and each --quick replaces it; an --out given
    explicitly keeps the rule of every run, without a --resume hint --quick cannot take."""
    monkeypatch.chdir(tmp_path)
    quick = ["--quick", "--data", corpus, "--batch-size", "4", "--eval-batches", "1", "--no-progress",
             "--steps", "4", "--eval-every", "2"]
    assert train_gpt.main(quick) == 0 and train_gpt.main(quick + ["--seed", "3"]) == 0
    assert json.loads(str(_load(tmp_path / "out" / "quick")["meta"]))["args"]["seed"] == 3
    capsys.readouterr()
    shutil.copytree(tmp_path / "out" / "quick", tmp_path / "mine")
    assert_refused(train_gpt, quick + ["--out", "mine"], "mine already holds a checkpoint of an earlier run; overwrite it with "
                   "--force, or choose another --out", capsys, str(tmp_path / "mine"))


def test_a_fresh_run_stopped_early_leaves_no_sample_of_the_run_it_replaced(tmp_path, capsys, corpus, full_run):
    """--force over a finished run, stopped by Ctrl-C before its sample: the old run's samples.txt
    stayed beside the new checkpoint (and a --resume appended to it). A run the budget sizes
    names no step count in its stop line (its target is an unfitted bound)."""
    out = tmp_path / "again"
    shutil.copytree(full_run, out)
    args = [a for a in _args(corpus, out, "--force") if a not in ("--steps", "12", "--max-minutes", "0")]
    assert train_gpt.main(args, on_step=lambda s: s == 2 and signal.raise_signal(signal.SIGINT)) == 130
    assert capsys.readouterr().err.startswith("train_gpt.py: interrupted at step 2: checkpoint saved to ")
    assert not (out / "samples.txt").exists() and json.loads(Path(out / "manifest.json").read_text())["step"] == 2


def test_a_forced_run_takes_the_earlier_runs_samples_away_with_its_checkpoint_not_before(
        tmp_path, capsys, corpus, full_run):
    """--force removed the earlier run's samples.txt at its start: a run that then diverged (or
    was killed) before its first checkpoint left that run's checkpoint without its samples; and
    its loss.png stayed beside the new run's checkpoint."""
    out = tmp_path / "kept"
    shutil.copytree(full_run, out)
    before = {n: (out / n).read_bytes() for n in ("ckpt.npz", "manifest.json", "samples.txt", "loss.png")}
    assert train_gpt.main(_args(corpus, out, "--force", "--lr", "1e9", "--optimizer", "adamw")) == 1
    assert re.search(r"diverged in step [1-4] ", capsys.readouterr().err)   # before the save at step 4
    assert {n: (out / n).read_bytes() for n in before} == before            # the earlier run, whole

    def crash_at_5(step):
        if step == 5:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):                    # after the save at step 4
        train_gpt.main(_args(corpus, out, "--force"), on_step=crash_at_5)
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 4
    assert not (out / "samples.txt").exists() and not (out / "loss.png").exists()   # another run's


def test_a_diverging_run_is_one_line_and_exit_1(tmp_path, capsys, corpus):
    """--lr 1e9: non-finite gradients ended the demo in a traceback (a review session)."""
    assert train_gpt.main(_args(corpus, tmp_path / "d", "--lr", "1e9", "--optimizer", "adamw")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"train_gpt.py: error: training diverged in step \d+ of 12: gradient "
                                              r"of '.+' has \d+ non-finite value\(s\).*a smaller learning rate", err)


def test_sample_quick_without_the_smoke_run_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("sample.py"), ["--quick"], "no checkpoint at out/quick: --quick samples the model "
                   "that `python demos/train_gpt.py --quick` trains there; run that first", capsys, str(tmp_path))


def test_checkpoint_from_another_run(tmp_path, capsys, corpus, full_run):
    out = tmp_path / "other"
    shutil.copytree(full_run, out)
    for flags, said in ((("--preset", "small"), "--preset small contradicts"),
                        (("--batch-size", "8"), "--batch-size 8 contradicts"),
                        (("--optimizer", "sgd"), "trained with --optimizer muon"),
                        (("--lr", "0.1"), "--lr 0.1 contradicts")):
        assert "fresh --out" in assert_refused(train_gpt, _args(corpus, out, "--resume", *flags), said, capsys, out)
    other_text = tmp_path / "other.txt"                     # same flags, but the text changed
    other_text.write_text(Path(corpus).read_text(encoding="utf-8")[:-500], encoding="utf-8")
    assert_refused(train_gpt, _args(str(other_text), out, "--resume"), "the data differ", capsys, out)
    (out / "ckpt.npz").write_bytes(b"not a checkpoint")
    assert_refused(train_gpt, _args(corpus, out, "--resume"), "does not match its manifest.json", capsys, out)


def test_a_fresh_run_never_replaces_a_checkpoint(tmp_path, capsys, corpus, full_run):
    out = tmp_path / "taken"
    shutil.copytree(full_run, out)
    line = assert_refused(train_gpt, _args(corpus, out), "already holds a checkpoint", capsys, out)
    assert "--resume" in line and "--force" in line
    assert train_gpt.main(_args(corpus, out, "--force", "--steps", "3")) == 0
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 3
    assert re.findall(r"=== step \d+", (out / "samples.txt").read_text(encoding="utf-8")) == ["=== step 3"]


def test_resume_with_new_steps_extends_the_run(tmp_path, capsys, corpus, full_run):
    out = tmp_path / "longer"
    shutil.copytree(full_run, out)
    assert train_gpt.main(["--resume", "--out", str(out), "--steps", "16", "--no-progress"]) == 0
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 16
    assert "resuming at step 12 of 16" in capsys.readouterr().out
    headers = re.findall(r"=== step \d+", (out / "samples.txt").read_text(encoding="utf-8"))
    assert headers == ["=== step 12", "=== step 16"]                     # appended to the run's own


def test_periodic_checkpoints_survive_a_crash(tmp_path, corpus):
    out = tmp_path / "crash"

    def crash_at_9(step):
        if step == 9:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_gpt.main(_args(corpus, out, "--save-every", "4"), on_step=crash_at_9)
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 8           # lost one step, not nine


def _wait_for(proc, prefix):
    """The lines the process printed up to and including the first that starts with ``prefix``."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return "".join(seen)
    raise AssertionError(f"the run ended before printing {prefix!r}: {proc.stderr.read()}")


def _signalled_run(argv, prefix, sig):
    """Run the CLI as a process, send ``sig`` once it printed a line starting with ``prefix``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, SCRIPT, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        before = _wait_for(proc, prefix)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, before + stdout, stderr


def test_sigterm_and_ctrl_c_then_resume_with_only_out_equals_the_uninterrupted_run(corpus, tmp_path):
    reference = tmp_path / "reference"          # a process too: the CLI sets its BLAS threads as a script
    ran = subprocess.run([sys.executable, SCRIPT, *_args(corpus, reference, "--steps", "60")],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr

    out = str(tmp_path / "stopped")
    argv = _args(corpus, out, "--steps", "60")
    code, stdout, stderr = _signalled_run(argv, "step 4:", signal.SIGTERM)
    assert code == 130 and "Traceback" not in stderr and "checkpoint saved" in stderr, stderr
    first = json.loads(Path(os.path.join(out, "manifest.json")).read_text())["step"]
    assert 4 <= first < 60
    code, stdout, stderr = _signalled_run(["--resume", "--out", out, "--no-progress"], f"step {first + 4 - first % 4}:",
                                          signal.SIGINT)
    assert code == 130 and "Traceback" not in stderr, stderr
    assert f"resuming at step {first} of 60" in stdout
    ran = subprocess.run([sys.executable, SCRIPT, "--resume", "--out", out, "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    a, b = _load(reference), _load(out)
    assert a["history/train_loss"].tolist() == b["history/train_loss"].tolist()      # bit for bit
    assert a["history/val_loss"].tolist() == b["history/val_loss"].tolist()
    for k in a:
        if k.startswith(("param/", "optim/")):
            assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("flags, said", [
    (("--beta2", "1.5"), "--beta2 must be in [0, 1), got 1.5"),
    (("--weight-decay", "-1"), "--weight-decay must be a finite number >= 0, got -1.0"),
    (("--warmup", "-10"), "--warmup must be >= 0, got -10"),
    (("--grad-clip", "-1"), "--grad-clip must be a finite number >= 0"),
    (("--min-lr-ratio", "5"), "--min-lr-ratio must be in [0, 1], got 5.0"),
    (("--sample-chars", "-1"), "--sample-chars must be >= 0, got -1"),
    (("--dropout", "1"), "--dropout must be in [0, 1)"),
    (("--lr", "nan"), "--lr must be a finite number > 0, got nan"),
    (("--max-minutes", "-1"), "--max-minutes must be a finite number >= 0"),
    (("--save-every", "0"), "--save-every must be >= 1, got 0"),
    (("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    (("--eval-every", "0"), "--eval-every must be >= 1, got 0"),
    (("--tokenizer", "words"), "argument --tokenizer: invalid choice: 'words'"),
    (("--tokenizer", "bpe", "--vocab-size", "100"), "--vocab-size must be in (256, 65536]"),
    (("--resume", "--force"), "--force starts afresh and --resume continues"),
    (("--batch-size", "100000"), "more than the whole training split"),
])
def test_every_flag_is_checked_before_anything_is_written(tmp_path, capsys, corpus, flags, said):
    out = str(tmp_path / "o")
    assert_refused(train_gpt, _args(corpus, out, *flags), said, capsys, out)


def test_out_that_cannot_be_written_and_a_batch_that_cannot_fit(tmp_path, capsys, corpus, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_refused(train_gpt, _args(corpus, blocker / "sub"), "is not writable", capsys, tmp_path)
    monkeypatch.setattr(cli, "available_memory", lambda: 10_000_000)   # a 10 MB machine
    out = str(tmp_path / "o")
    assert_refused(train_gpt, _args(corpus, out, "--batch-size", "64"), "more than 80% of the 9.54 MiB available",
                   capsys, out)


def test_the_fit_check_gives_no_estimate_for_a_model_gpt_costs_has_no_formulas_for(monkeypatch):
    """gpt_costs refuses grouped-query attention; the check let its ValueError through, and
    train_gpt.py --init-from such a checkpoint ended in a traceback."""
    from models.gpt import GPTConfig
    monkeypatch.setattr(cli, "available_memory", lambda: 10_000)       # nothing fits: no estimate made
    cfg = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=11)
    cli.check_gpt_step_fits(GPTConfig(**cfg, n_kv_head=1), 8)
    with pytest.raises(cli.UsageError, match="more than 80% of the"):
        cli.check_gpt_step_fits(GPTConfig(**cfg), 8)


def test_warmup_longer_than_the_run_warns(tmp_path, capsys, corpus):
    assert train_gpt.main(_args(corpus, tmp_path / "w", "--warmup", "20")) == 0
    assert "warning: --warmup 20 >= --steps 12" in capsys.readouterr().err


def test_init_from_starts_a_new_run_from_the_weights(tmp_path, capsys, corpus, full_run):
    part = tmp_path / "part.txt"                       # other text, the same characters
    part.write_text(Path(corpus).read_text(encoding="utf-8")[5000:], encoding="utf-8")
    out = tmp_path / "ft"
    assert train_gpt.main(_args(str(part), out, "--init-from", str(full_run), "--steps", "2",
                                "--lr", "1e-9", "--optimizer", "sgd")) == 0
    assert "weights from" in capsys.readouterr().out
    start, tuned = _load(full_run), _load(out)
    assert json.loads(str(tuned["meta"]))["trainer"]["step"] == 2          # a new run: counted from 0
    for k in start:
        if k.startswith("param/"):
            np.testing.assert_allclose(tuned[k], start[k], atol=1e-6)     # lr 1e-9: the weights it began from
    odd = tmp_path / "odd.txt"
    odd.write_text("\u4e2d" * 5000, encoding="utf-8")
    assert_refused(train_gpt, _args(str(odd), tmp_path / "o2", "--init-from", str(full_run)), "not in the vocabulary",
                   capsys, tmp_path / "o2")


def test_bpe_tokenizer(tmp_path, capsys, corpus):
    out = tmp_path / "bpe"
    assert train_gpt.main(_args(corpus, out, "--tokenizer", "bpe", "--vocab-size", "300", "--steps", "2")) == 0
    meta = json.loads(str(_load(out)["meta"]))
    assert meta["tokenizer"]["type"] == "bpe" and meta["model"]["config"]["vocab_size"] == 300


def test_zeroth_order_optimizer_trains_through_the_cli(corpus, tmp_path, capsys):
    """--optimizer mezo: steps go through step(closure=...) and touch the parameters."""
    out = tmp_path / "mezo"
    assert train_gpt.main(_args(corpus, out, "--optimizer", "mezo", "--lr", "1e-4")) == 0
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["optimizer"] == "mezo"
    params = {k: v for k, v in _load(out).items() if k.startswith("param")}
    fresh = train_gpt.GPT(train_gpt.preset("tiny", vocab_size=manifest["config"]["vocab_size"])[0], seed=7)
    moved = [k for k, v in params.items() if not np.array_equal(v, fresh.state_dict().get(k.split("/", 1)[-1], v))]
    assert moved, "MeZO left every parameter where it started"
    again = tmp_path / "mezo_again"   # the run's --seed fixes MeZO's noise too: the same run again
    assert train_gpt.main(_args(corpus, again, "--optimizer", "mezo", "--lr", "1e-4")) == 0
    for k, v in _load(again).items():
        if k.startswith("param"):
            np.testing.assert_array_equal(v, params[k])


# ----------------------------------------------------------------------------- demos/sample.py
SAMPLE = os.path.join(ROOT, "demos", "sample.py")


def _sample(*argv):
    return subprocess.run([sys.executable, SAMPLE, *argv], capture_output=True, text=True, timeout=120)


def test_sample_cli_prints_text_from_a_checkpoint(full_run):
    first = _sample("--out", str(full_run), "--prompt", "The ", "--tokens", "40", "--temperature", "0.8",
                    "--top-k", "5", "--seed", "0")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("The ") and len(first.stdout.rstrip("\n")) >= 4 + 10
    again = _sample("--out", os.path.join(str(full_run), "ckpt.npz"), "--prompt", "The ", "--tokens", "40",
                    "--temperature", "0.8", "--top-k", "5", "--seed", "0")
    assert again.stdout == first.stdout                       # same seed, same text
    other = _sample("--out", str(full_run), "--prompt", "The ", "--tokens", "40", "--seed", "1")
    assert other.stdout != first.stdout


def test_sample_kv_dtype_float16_decodes_through_a_float16_dense_cache(full_run, monkeypatch, capsys):
    """--kv-dtype float16 hands `sample_text` a dense cache of float16 for the model (the default
    passes none: the model's own); a model whose attention has no dense cache is refused in one
    line naming the flag."""
    sample = load_demo("sample.py")
    seen = []

    def record(model, tokenizer, n, **kw):
        seen.append(kw["cache"])
        return "x" * n
    monkeypatch.setattr(sample, "sample_text", record)
    for argv in (["--kv-dtype", "float16"], []):
        assert sample.main(["--out", str(full_run), "--tokens", "5", *argv]) == 0
    cache, default = seen
    assert type(cache).__name__ == "DenseKVCache" and cache.k.dtype == np.float16 and default is None
    capsys.readouterr()

    def overflow(*args, **kw):
        raise sample.HalfOverflow("DenseKVCache", 2, np.ones(3), np.array([1.0, -7e4]))
    monkeypatch.setattr(sample, "sample_text", overflow)
    assert sample.main(["--out", str(full_run), "--tokens", "5", "--kv-dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sample.py: error: --kv-dtype float16: layer 2's keys or values reach "
                   "|x| = 7e+04, beyond float16's largest finite 65,504; use --kv-dtype model"]
    monkeypatch.setattr(sample.DenseKVCache, "attentions", ("linear",))
    assert sample.main(["--out", str(full_run), "--tokens", "5", "--kv-dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sample.py: error: --kv-dtype float16: this model's attention is 'mha'")


def test_sample_cli_decodes_through_a_float16_kv_cache(full_run):
    """A real run through a float16 cache prints the prompt and as many tokens as one through the
    model's own. (Not the same text: this 12-step model's logits are too close together for the
    rounding not to move an argmax; tests/test_kv_cache.py bounds the logits themselves.)"""
    runs = [_sample("--out", str(full_run), "--prompt", "The ", "--tokens", "30", "--seed", "3",
                    "--kv-dtype", kv) for kv in ("float16", "model")]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout.startswith("The ") and len(runs[0].stdout) == len(runs[1].stdout) == len("The ") + 31


def test_sample_cli_bad_input_is_one_line(full_run, tmp_path):
    cases = {"missing": (str(tmp_path / "nowhere"), "no checkpoint")}
    bad = tmp_path / "corrupt"
    shutil.copytree(full_run, bad)
    (bad / "ckpt.npz").write_bytes(b"garbage")
    cases["corrupt"] = (str(bad), "does not match")
    for name, (out, what) in cases.items():
        r = _sample("--out", out)
        assert r.returncode == 2, name
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sample.py: error:") and what in lines[0], r.stderr
    r = _sample("--out", str(full_run), "--prompt", "\u00e9\u00e9\u00e9\u4e2d")
    assert r.returncode == 2 and "--prompt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "train with `train_gpt.py --tokenizer bpe`" in r.stderr      # a flag, not a class name
    r = _sample("--out", str(full_run), "--tokens", "0")
    assert r.returncode == 2 and "--tokens" in r.stderr


def test_sample_cli_refuses_a_checkpoint_with_non_finite_weights_in_one_line(full_run, tmp_path):
    """A run whose last step diverged was saved (before fit caught that) and sample.py ended in a
    traceback from the sampler: 'the logits hold NaN or inf'."""
    from models.training import load_checkpoint, save_checkpoint
    ck = load_checkpoint(full_run)
    model = ck.build_model()
    next(iter(model.named_parameters()))[1].data[0] = np.nan
    meta = {k: v for k, v in ck.meta.items() if k not in ("format_version", "model")}
    save_checkpoint(tmp_path, model, meta=meta)
    r = _sample("--out", str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "holds non-finite weights" in lines[0] and "its run diverged" in lines[0]


def test_default_optimizer_is_muon_with_adamw_at_the_presets_lr():
    """No --optimizer: Muon at MUON_LR on the hidden matrices, its AdamW part at the preset's AdamW
    lr with betas (0.9, --beta2); an --opt-arg adamw_kwargs replaces that part, and another
    optimizer gets the preset's lr and no adamw_kwargs."""
    parse = train_gpt.build_parser().parse_args
    args = parse(["--preset", "medium", "--beta2", "0.95"])
    train_gpt._validate(args)
    assert args.optimizer == "muon" and args.lr == train_gpt.MUON_LR
    assert train_gpt.optimizer_options(args) == {
        "adamw_kwargs": {"lr": train_gpt.PRESET_LR["medium"], "betas": (0.9, 0.95)}}
    args = parse(["--opt-arg", 'adamw_kwargs={"lr": 0.001}'])
    assert train_gpt.optimizer_options(args) == {"adamw_kwargs": {"lr": 0.001}}
    args = parse(["--optimizer", "adamw"])
    train_gpt._validate(args)
    assert args.lr == train_gpt.PRESET_LR["small"] and train_gpt.optimizer_options(args) == {}


def test_opt_arg_reaches_the_optimizer_and_a_bad_one_is_one_line(tmp_path, capsys, corpus):
    out = tmp_path / "sgd"
    assert train_gpt.main(_args(corpus, out, "--optimizer", "sgd", "--lr", "0.05", "--steps", "2",
                                "--opt-arg", "momentum=0.9", "--opt-arg", "nesterov=true")) == 0
    capsys.readouterr()
    groups = json.loads(str(_load(out)["meta"]))["args"]["opt_arg"]
    assert groups == ["momentum=0.9", "nesterov=true"]
    state = {k for k in _load(out) if k.startswith("optim/") and "momentum_buffer" in k}
    assert state, "momentum=0.9 did not reach SGD"
    o = str(tmp_path / "o")
    for flags, said in ((("--opt-arg", "momentun=0.9"), "--opt-arg momentun: optimizer 'sgd' takes none such"),
                        (("--opt-arg", "momentum=1.5"), "--optimizer sgd: momentum must be in [0, 1), got 1.5"),
                        (("--opt-arg", "momentum"), "--opt-arg 'momentum': expected name=value (e.g. momentum=0.9)"),
                        # not JSON, so the string 'abc': SGD's '<=' between float and str named neither
                        # the flag nor the item; --steps 2 < --warmup 3 warned before the refusal too
                        (("--opt-arg", "momentum=abc", "--steps", "2"),
                         "--opt-arg momentum=abc: sgd refused a value of the wrong type")):
        assert_refused(train_gpt, _args(corpus, o, "--optimizer", "sgd", *flags), said, capsys, o)
    # the optimizer's name is taken in any case, also where --resume compares it with the saved one
    assert train_gpt.main(["--resume", "--out", str(out), "--optimizer", "SGD", "--steps", "3", "--no-progress"]) == 0
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 3


def test_layerwise_optimizers_get_the_models_blocks(tmp_path, capsys, corpus):
    out = tmp_path / "lisa"
    assert train_gpt.main(_args(corpus, out, "--optimizer", "lisa", "--opt-arg", "layers=1",
                                "--opt-arg", "switch_every=5")) == 0
    said = capsys.readouterr().out
    assert re.search(r"optimizer state [\d.]+ KiB at its peak \(lisa\)", said), said
    ck = _load(out)
    # keys look like "optim/8:/state/h.0.attn.c_attn.weight/exp_avg"
    layers_with_state = {k.split("/state/h.", 1)[1].split(".")[0] for k in ck
                         if k.startswith("optim/") and "/state/h." in k}
    assert len(layers_with_state) == 1            # one of the two layers holds Adam state, not both
    o = str(tmp_path / "o")
    for flags, said in ((("--optimizer", "lisa", "--opt-arg", "layers=3"), "layers=3 must be an integer from 1"),
                        (("--optimizer", "badam", "--opt-arg", "switch_every=0"), "switch_every must be an integer >= 1"),
                        (("--optimizer", "misa", "--opt-arg", "delta=1.5"), "delta (the fraction")):
        assert_refused(train_gpt, _args(corpus, o, *flags), said, capsys, o)


def test_resume_keeps_the_runs_time_budget_and_can_extend_a_run_the_budget_cut_short(tmp_path, capsys, corpus):
    out = tmp_path / "budget"
    assert train_gpt.main(_args(corpus, out, "--max-minutes", "0.0001")) == 0      # stops after one step
    said = capsys.readouterr().out
    assert "ended the run at step 1 of 12" in said and f"--resume --out {out} --max-minutes M" in said
    assert train_gpt.main(["--resume", "--out", str(out), "--no-progress"]) == 0   # keeps its budget ...
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 2                     # ... so one more step
    capsys.readouterr()
    assert train_gpt.main(["--resume", "--out", str(out), "--no-progress", "--max-minutes", "0"]) == 0
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 12                    # the full target
    assert json.loads(str(_load(out)["meta"]))["args"]["max_minutes"] == 0
    o = str(out)
    assert_refused(train_gpt, ["--resume", "--out", o, "--steps", "4"], "--steps 4 is below the step", capsys, o)


def test_without_steps_the_time_budget_sets_the_runs_length(tmp_path, capsys, corpus):
    """No --steps: under --max-minutes the target is a bound no run reaches (the trainer fits the
    schedule to the budget, so a faster machine trains longer); without a budget, 3000 steps."""
    assert train_gpt.default_steps(10) == train_gpt.BUDGET_STEPS >= 100 * 3000
    assert train_gpt.default_steps(0) == train_gpt.FIXED_STEPS == 3000
    out = tmp_path / "uncapped"
    args = _args(corpus, out, "--max-minutes", "0.0001")                      # stops after one step
    del args[args.index("--steps"):args.index("--steps") + 2]
    assert train_gpt.main(args) == 0
    said = capsys.readouterr().out
    # one step is too few to fit the schedule (it fits after 40): the message must not say it did
    assert "ended the run at step 1 (spent before the schedule could be fitted to it, which takes 40" in said
    assert f"--resume --out {out} and --max-minutes M or --steps N" in said
    meta = json.loads(str(_load(out)["meta"]))
    assert meta["trainer"]["target"] == train_gpt.BUDGET_STEPS and meta["args"]["steps"] == train_gpt.BUDGET_STEPS
    # without a budget nothing bounds it: not a 1,000,000-step run, a question for --steps
    # (stopped at step 3 should it start training anyway)
    ctrl_c_at_3 = types.SimpleNamespace(__file__=train_gpt.__file__, main=lambda argv: train_gpt.main(
        argv, on_step=lambda step: step == 3 and signal.raise_signal(signal.SIGINT)))
    assert_refused(ctrl_c_at_3, ["--resume", "--out", str(out), "--no-progress", "--max-minutes", "0"],
                   f"--max-minutes 0: the run in {out} had no --steps, its time budget set its length; give "
                   f"--steps N (N > 1) to train on without a budget", capsys, str(out))
    assert train_gpt.main(["--resume", "--out", str(out), "--no-progress", "--steps", "5", "--max-minutes", "0"]) == 0
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 5    # --steps still sets the target


def test_a_resumed_fine_tune_needs_not_its_source_and_init_from_takes_the_sources_preset(tmp_path, capsys,
                                                                                        corpus, full_run):
    source = tmp_path / "source"
    shutil.copytree(full_run, source)
    out = tmp_path / "ft"
    args = ["--init-from", str(source), "--data", corpus, "--out", str(out), "--steps", "6", "--max-minutes", "0",
            "--no-progress", "--eval-every", "3", "--eval-batches", "2", "--sample-chars", "5"]
    assert train_gpt.main(args, on_step=lambda s: s == 3 and signal.raise_signal(signal.SIGINT)) == 130
    assert "model: tiny 2 layers" in capsys.readouterr().out   # the source's preset, not the default 'small'
    shutil.rmtree(source)
    assert train_gpt.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert json.loads(Path(out / "manifest.json").read_text())["step"] == 6


def test_sample_quick_prints_100_tokens_of_the_model_train_gpt_quick_saves(tmp_path, monkeypatch, capsys, full_run):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(full_run, tmp_path / "out" / "quick")          # where train_gpt.py --quick saves
    sample = load_demo("sample.py")
    assert sample.main(["--quick"]) == 0
    assert len(capsys.readouterr().out) == len("\n") + 100 + len("\n")   # the prompt, 100 characters
    assert sample.main(["--quick", "--tokens", "7", "--prompt", "a"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("a") and len(printed) == 1 + 7 + 1             # --tokens given wins


def test_sample_without_a_prompt_on_a_text_without_newlines(tmp_path):
    flat = tmp_path / "flat.txt"
    flat.write_text("abcabcabd" * 3000, encoding="utf-8")
    out = tmp_path / "flat"
    assert train_gpt.main(_args(str(flat), out, "--steps", "2")) == 0
    r = _sample("--out", str(out), "--tokens", "8")
    assert r.returncode == 0 and len(r.stdout.strip()) == 8, r.stderr


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path, capsys, corpus):
    """--init-from and --resume on another demo's checkpoint (word2vec, an RNN) ended in a
    traceback on its config (a review session): one line now, naming what the file holds."""
    import minigrad.nn as nn
    from models.training import save_checkpoint

    other = tmp_path / "other"
    save_checkpoint(str(other), nn.Linear(3, 2, rng=0))
    assert_refused(train_gpt, _args(corpus, tmp_path / "run", "--init-from", str(other)),
                   f"--init-from {other} holds a Linear, not a GPT", capsys, tmp_path)
    assert_refused(train_gpt, _args(corpus, other, "--resume"), f"--resume --out {other} holds a Linear, not a GPT",
                   capsys, tmp_path)


def test_init_from_refuses_a_tokenizer_of_its_own(tmp_path, capsys, corpus, full_run):
    """--init-from trains on with the checkpoint's tokenizer: a --tokenizer beside it was ignored,
    yet recorded, so a later --resume refused the run's true tokenizer (a review session)."""
    assert_refused(train_gpt, _args(corpus, tmp_path / "ft", "--init-from", str(full_run), "--tokenizer", "bpe"),
                   "--init-from trains on with the checkpoint's tokenizer; drop --tokenizer", capsys, tmp_path)

