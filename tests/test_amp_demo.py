"""Smoke test of demos/mixed_precision.py on the GPT: a few steps of three recipes write the PNG,
the markdown table and the per-step losses into --out; bad input is one line and exit 2."""

import json
import math
import warnings

import pytest

from strategies import assert_refused, ctrl_c, files_below, load_demo


def test_demo_runs_on_the_gpt_and_writes_into_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out shows up here
    demo = load_demo("mixed_precision.py")
    assert demo.main(["--quick", "--steps", "3", "--batch-size", "4", "--recipes",
                      "fp32,fp16_master_dynamic,nvfp4", "--out", "mp", "--cache-dir", "",
                      "--no-progress"]) == 0
    assert files_below(tmp_path) == [
        "mp/mixed_precision.png", "mp/mixed_precision_results.json", "mp/mixed_precision_results.md"]
    out = tmp_path / "mp"
    assert (out / "mixed_precision.png").stat().st_size > 10_000
    runs = json.loads((out / "mixed_precision_results.json").read_text())
    assert list(runs) == ["fp32", "fp16_master_dynamic", "nvfp4"]
    for r in runs.values():
        assert len(r["losses"]) == 3 and all(math.isfinite(v) for v in r["losses"]) and math.isfinite(r["val"])
    # same seed, same batches: the first loss differs only by the rounding of the forward pass
    first = [r["losses"][0] for r in runs.values()]
    assert max(first) - min(first) < 0.05 * first[0]
    table = (out / "mixed_precision_results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| recipe")]
    assert [row.split(" | ")[0][2:] for row in rows] == [r["label"] for r in runs.values()]
    printed = capsys.readouterr().out
    assert all(row in printed for row in rows)      # the same table is printed


@pytest.mark.parametrize("argv, notes, diverges", [
    (["--recipes", "bf16", "--lr", "1e9"], ["nothing to compare"], True),       # and no fp32 to compare with
    (["--recipes", "fp32"], ["nothing to compare", "no low-precision weights updated"], False),
])
def test_a_panel_with_no_curves_says_why_instead_of_a_legend_warning(tmp_path, monkeypatch, argv, notes,
                                                                     diverges):
    """A panel with nothing to draw called legend(): matplotlib warned "No artists with labels"."""
    monkeypatch.chdir(tmp_path)
    demo = load_demo("mixed_precision.py")
    texts, save = [], demo.save_figure

    def save_figure(fig, path, dpi):                  # the notes drawn in the panels, then the file
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        return save(fig, path, dpi)

    monkeypatch.setattr(demo, "save_figure", save_figure)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert demo.main(["--quick", "--steps", "3", "--batch-size", "2", "--max-chars", "50000", *argv,
                          "--out", "mp", "--cache-dir", "", "--no-progress"]) == 0
    assert not [w for w in caught if "No artists with labels" in str(w.message)]
    assert [n for n in notes if any(t.startswith(n) for t in texts)] == notes
    runs = json.loads((tmp_path / "mp" / "mixed_precision_results.json").read_text())
    assert [not math.isfinite(r["val"]) for r in runs.values()] == [diverges]


@pytest.mark.parametrize("argv, says", [
    (["--recipes", "fp32,fp17"], "--recipes: unknown recipe(s) ['fp17']"),
    (["--recipes", ","], "--recipes: no recipe given"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--model", "mlp", "--preset", "small"], "--preset: --model mlp trains no GPT, so it would be ignored"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("mixed_precision.py"), argv, says, capsys, watch=tmp_path)


def test_a_batch_the_machine_cannot_hold_is_one_line_not_a_killed_process(tmp_path, monkeypatch, capsys):
    from models import cli
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "available_memory", lambda: 10_000_000)       # a 10 MB machine
    assert_refused(load_demo("mixed_precision.py"), ["--quick", "--max-chars", "50000", "--batch-size", "64"],
                   "more than 80% of the 9.54 MiB available", capsys, watch=tmp_path)


def test_the_token_cache_goes_inside_out_by_default(tmp_path, monkeypatch):
    # it went to ./out/cache of whatever directory the demo was started from, whatever --out said
    monkeypatch.chdir(tmp_path)
    demo = load_demo("mixed_precision.py")
    assert demo.main(["--quick", "--steps", "1", "--batch-size", "2", "--recipes", "fp32",
                      "--max-chars", "50000", "--out", "mp", "--no-progress"]) == 0
    cached = [f for f in files_below(tmp_path) if not f.startswith("mp/mixed_precision")]
    assert len(cached) == 1 and cached[0].startswith("mp/cache/tokens-"), files_below(tmp_path)


def test_a_refused_out_leaves_no_token_cache(tmp_path, monkeypatch, capsys):
    """The --out check comes after the corpus is tokenized: the cache (default out/cache) must not
    be written by a run that is then refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert_refused(load_demo("mixed_precision.py"), ["--quick", "--max-chars", "50000", "--out", "a_file"],
                   "--out a_file is a file", capsys, watch=tmp_path)


def test_an_interrupted_run_is_one_line_exit_130_and_writes_no_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("mixed_precision.py")
    made = ctrl_c(demo, monkeypatch, run=2)          # Ctrl-C during the second recipe
    assert demo.main(["--quick", "--steps", "2", "--batch-size", "2", "--recipes", "fp32,bf16,fp8",
                      "--out", "mp", "--cache-dir", "", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err == "mixed_precision.py: interrupted in recipe bf16 at step 2 of 2; no table, JSON or figure " \
                  "written to mp\n"
    assert len(made) == 2 and files_below(tmp_path) == []
