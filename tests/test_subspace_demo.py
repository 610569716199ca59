"""demos/subspace.py: GaLore stalls on GoLore's counterexample while GoLore goes on down; the
GPT comparison runs every method through Trainer, writes its figures and tables into --out, and
GaLore's and GoLore's optimizer state is at most half of AdamW's (GPT tiny); bad input is one
line and exit 2."""
import json
import math

import pytest

from strategies import assert_refused, ctrl_c, files_below, load_demo

demo = load_demo("subspace.py")


def test_galore_stalls_above_1_on_the_counterexample_and_golore_goes_below_0_3():
    """5000 steps are enough: GaLore stops within the first ~1000 (its basis is the noise's),
    GoLore is at its noise floor, and full SGD is not hurt by the noise at all."""
    steps = 5000
    curves = {m: demo.counterexample(m, steps=steps, seed=0) for m in demo.CE_METHODS}
    assert curves["galore"][0] == curves["golore"][0] == curves["sgd"][0] > 4
    assert curves["galore"][-1000:].min() > 1.0
    assert abs(curves["galore"][-1] - curves["galore"][-3000]) < 1e-12    # stalled for good
    assert curves["golore"][-500:].mean() < 0.3
    assert curves["sgd"][-1] < 1e-8


def test_the_demo_runs_every_method_and_writes_into_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out shows up here
    assert demo.main(["--quick", "--ce-steps", "300", "--steps", "4", "--eval-every", "2",
                      "--eval-batches", "2", "--batch-size", "4", "--cache-dir", "", "--out", "sub",
                      "--no-progress"]) == 0
    assert files_below(tmp_path) == ["sub/subspace_counterexample.png", "sub/subspace_gpt.png",
                                     "sub/subspace_results.json", "sub/subspace_results.md"]
    out = tmp_path / "sub"
    assert (out / "subspace_gpt.png").stat().st_size > 10_000
    results = json.loads((out / "subspace_results.json").read_text())
    assert list(results["gpt"]) == list(demo.GPT_METHODS)
    for r in results["gpt"].values():
        assert r["val_step"] == [0, 2, 4] and all(math.isfinite(v) for v in r["val_loss"])
        assert len(r["train_loss"]) == 4 and r["state_bytes"] > 0
    assert len(results["counterexample"]["golore"]) == 30         # every 10th of 300 steps
    table = (out / "subspace_results.md").read_text()
    printed = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 + 3 + 5 and all(row in printed for row in rows)   # printed too


def test_galore_and_golore_hold_at_most_half_of_adamws_state_on_gpt_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    summary = demo.run(demo.build_parser().parse_args([
        "--part", "b", "--preset", "tiny", "--steps", "2", "--eval-every", "2", "--eval-batches", "1",
        "--batch-size", "2", "--max-chars", "50000", "--methods", "adamw,galore,golore",
        "--cache-dir", "", "--out", "sub", "--no-progress"]))
    runs = summary["gpt"]
    adamw = runs["adamw"]["state_bytes"]
    for m in ("galore", "golore"):
        assert 0 < runs[m]["state_bytes"] <= 0.5 * adamw, m
    assert "GaLore state / AdamW state = 0.3" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["--methods", "adamw,adafactor"], "--methods: unknown method(s) ['adafactor']"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--ce-steps", "-5"], "--ce-steps must be >= 1, got -5"),
    (["--rank", "0"], "--rank must be >= 1, got 0"),
    (["--rank", "65", "--preset", "tiny", "--max-chars", "50000", "--cache-dir", ""],
     "--rank 65 is larger than the smallest side of the GPT's matrices, n_embd = 64"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--part", "c"], "invalid choice: 'c'"),
    (["--part", "a", "--steps", "10", "--preset", "tiny"],
     "--steps, --preset: --part a runs no GPT comparison, so they would be ignored"),
    (["--part", "b", "--ce-steps", "100"], "--ce-steps: --part b runs no counterexample, so it would be ignored"),
    (["--methods", "galore,golore", "--lr", "0.5"], "--lr: --methods galore,golore trains none of adamw, flora, rso"),
    (["--methods", "adamw", "--rank", "4"], "--rank: --methods adamw trains none of galore, golore, flora, rso"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert_refused(demo, argv, says, capsys, watch=tmp_path)


def test_an_out_that_is_a_file_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    assert_refused(demo, ["--part", "a", "--ce-steps", "10", "--out", "taken"], "--out taken is a file",
                   capsys, watch=tmp_path)


def test_an_interrupted_run_is_one_line_exit_130_and_writes_no_results(tmp_path, monkeypatch, capsys):
    """Ctrl-C in (b) after (a) finished: no figure of (a) either, which beside the figures of an
    older run in --out would pass for a finished one."""
    monkeypatch.chdir(tmp_path)
    made = ctrl_c(demo, monkeypatch, run=2)
    assert demo.main(["--quick", "--ce-steps", "200", "--steps", "2", "--eval-every", "2", "--eval-batches", "1",
                      "--batch-size", "2", "--max-chars", "50000", "--methods", "adamw,galore,golore",
                      "--cache-dir", "", "--out", "sub", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err == "subspace.py: interrupted in GaLore at step 2 of 2; no figures, subspace_results.md " \
                  "or .json written to sub\n"
    assert len(made) == 2 and files_below(tmp_path) == []
