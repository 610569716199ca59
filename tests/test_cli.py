"""models.cli: every way a demo's command line can refuse its input ends as one line and exit 2;
anything else the demo raises is a bug and propagates. Every demo that writes into --out refuses
one it cannot write before writing anything."""
import os

import pytest

from models import cli
from strategies import assert_refused, load_demo


class DemoError(Exception):
    """An error class a demo declares as bad input (as DataError, CheckpointError)."""


def _parser():
    ap = cli.ArgumentParser(prog="demo.py")
    ap.add_argument("--steps", type=int, default=1)
    return ap


def test_run_gets_the_parsed_arguments_and_its_int_is_the_exit_status():
    assert cli.main(_parser(), lambda args: args.steps, ["--steps", "3"]) == 3
    assert cli.main(_parser(), lambda args: {"summary": 1}, []) == 0     # not an int: success


@pytest.mark.parametrize("argv, error, says", [
    (["--steps", "x"], None, "argument --steps: invalid int value: 'x'"),
    (["--bogus"], None, "unrecognized arguments: --bogus"),
    ([], cli.UsageError("--steps must be >= 1, got 0"), "--steps must be >= 1, got 0"),
    ([], DemoError("corpus too short"), "corpus too short"),
])
def test_bad_input_is_one_line_naming_the_program_and_exit_2(capsys, argv, error, says):
    def run(args):
        if error is not None:
            raise error
    assert cli.main(_parser(), run, argv, errors=(DemoError,)) == 2
    captured = capsys.readouterr()
    assert captured.err == f"demo.py: error: {says}\n" and captured.out == ""


def test_help_shows_the_docstrings_first_paragraph_and_no_default_of_none(capsys):
    """--help printed the docstring's first line, cut mid-sentence, and "(default: None)" beside
    help that says what None means (a new-user walkthrough)."""
    ap = cli.ArgumentParser(prog="demo.py", description="A demo that does\nsomething useful.\n\nMore detail.",
                            formatter_class=cli.DefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="steps; default: the preset's")
    ap.add_argument("--lr", type=float, default=0.1, help="learning rate")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    help_text = " ".join(ap.format_help().split())
    assert "A demo that does something useful." in help_text and "More detail" not in help_text
    assert "learning rate (default: 0.1)" in help_text and "(default: None)" not in help_text
    assert "(default: False)" not in help_text


def test_an_interrupted_run_is_one_line_and_exit_130(capsys):
    def run(args):
        raise cli.Interrupted("interrupted at step 4 of 9; no results written")
    assert cli.main(_parser(), run, []) == 130
    captured = capsys.readouterr()
    assert captured.err == "demo.py: interrupted at step 4 of 9; no results written\n" and captured.out == ""


def test_a_diverged_run_is_one_line_and_exit_1(capsys):
    """Non-finite gradients at a huge --lr ended five demos in a traceback (a review session)."""
    def run(args):
        raise FloatingPointError("training diverged in step 3 of 9: gradient of 'w' has 4 non-finite value(s)")
    assert cli.main(_parser(), run, []) == 1
    captured = capsys.readouterr()
    assert captured.err == ("demo.py: error: training diverged in step 3 of 9: gradient of 'w' has 4 non-finite "
                            "value(s); a smaller learning rate may train\n") and captured.out == ""


def test_a_diverged_runs_line_drops_the_api_advice_and_keeps_its_own_lr_hint(capsys):
    def run(args):
        raise FloatingPointError("training diverged in step 2: gradient of 'w' has 3 non-finite value(s) (NaN/inf); "
                                 "use nonfinite='skip' to skip such steps")
    assert cli.main(_parser(), run, []) == 1
    assert capsys.readouterr().err == ("demo.py: error: training diverged in step 2: gradient of 'w' has 3 "
                                       "non-finite value(s) (NaN/inf); a smaller learning rate may train\n")

    def zo(args):
        raise FloatingPointError("MeZO: non-finite loss (nan, nan) in its step 1; lower eps/lr or use nonfinite='skip'")
    assert cli.main(_parser(), zo, []) == 1
    assert capsys.readouterr().err == "demo.py: error: MeZO: non-finite loss (nan, nan) in its step 1; lower eps/lr\n"


def test_an_undeclared_exception_propagates(capsys):
    def run(args):
        raise DemoError("a bug, not bad input")
    with pytest.raises(DemoError):
        cli.main(_parser(), run, [])
    assert capsys.readouterr().err == ""


def test_check_out_dir_makes_the_directory_and_leaves_nothing_in_it(tmp_path):
    out = tmp_path / "a" / "b"
    cli.check_out_dir(str(out))
    assert out.is_dir() and os.listdir(out) == []


def test_check_out_dir_refuses_a_file_and_a_path_below_one(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(cli.UsageError, match=r"^--out .*a_file is a file, not a directory$"):
        cli.check_out_dir(str(blocker))
    with pytest.raises(cli.UsageError, match=r"^--out .*a_file/sub is not writable \(.+\); choose another"):
        cli.check_out_dir(str(blocker / "sub"))
    assert os.listdir(tmp_path) == ["a_file"] and blocker.read_text() == "x"


def test_check_out_dir_refuses_a_directory_nobody_can_write():
    # /proc refuses new entries even to root (a chmod'ed directory would not stop root)
    with pytest.raises(cli.UsageError, match=r"^--out /proc/minigrad-out is not writable \(.+\); choose another"):
        cli.check_out_dir("/proc/minigrad-out")


# the flags that keep each demo quick and its caches off, up to the --out check
DEMOS = {"backprop_by_hand.py": [], "convex_lab.py": [], "memory_costs.py": ["--peak-gflops", "1"],
         "mixed_precision.py": ["--quick", "--cache-dir", ""],
         "zo_finetune.py": ["--quick", "--cache-dir", "", "--max-chars", "200000"],
         "train_gpt.py": ["--preset", "tiny", "--max-minutes", "0", "--no-progress"],
         "layerwise.py": ["--quick", "--cache-dir", ""],
         "subspace.py": ["--quick", "--cache-dir", ""],
         "compare_optimizers.py": ["--quick", "--cache-dir", "", "--optimizers", "adamw"],
         "parallel.py": ["--quick", "--cache-dir", ""],
         "distributed.py": ["--quick", "--cache-dir", ""],
         "ngram.py": ["--quick"], "word2vec.py": ["--max-chars", "200000"], "seq2seq.py": [],
         "rnn_lm.py": ["--quick", "--cache-dir", ""], "bert.py": ["--quick"]}


def _cache_in_out(flags):
    """The flags without `--cache-dir ''`: the token cache goes to its default, <--out>/cache."""
    i = flags.index("--cache-dir")
    return flags[:i] + flags[i + 2:]


# each demo as above, and each corpus demo again with its cache in --out: tokenizing then tried
# to write the cache first (a note that it was not written, then the refusal: two lines)
OUT_CASES = [(n, f) for n, f in DEMOS.items()] + \
    [(n, _cache_in_out(f)) for n, f in DEMOS.items() if "--cache-dir" in f]


@pytest.mark.parametrize("name, flags", OUT_CASES, ids=[
    n + (" cache in --out" if "--cache-dir" in DEMOS[n] and "--cache-dir" not in f else "") for n, f in OUT_CASES])
@pytest.mark.parametrize("out, says", [("a_file", "--out a_file is a file, not a directory"),
                                       ("a_file/sub", "--out a_file/sub is not writable")])
def test_every_demo_refuses_an_out_it_cannot_write_before_writing_anything(name, flags, out, says, tmp_path,
                                                                            monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert_refused(load_demo(name), flags + ["--out", out], says, capsys, watch=tmp_path)


SEEDED_DEMOS = sorted(f for f in os.listdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       "demos")) if f.endswith(".py") and f != "memory_costs.py")


@pytest.mark.parametrize("demo", SEEDED_DEMOS)
@pytest.mark.parametrize("value", ["-1", "1.5", "x"])
def test_every_demo_refuses_a_bad_seed_in_one_line(demo, value, capsys, tmp_path, monkeypatch):
    """NumPy refuses a negative seed, and nine demos ended in its traceback (exit 1, ~28 lines,
    some with files already written); every --seed is now `cli.seed`, a one-line exit 2."""
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo(demo), ["--seed", value], f"argument --seed: must be an integer >= 0, got '{value}'",
                   capsys, tmp_path)

