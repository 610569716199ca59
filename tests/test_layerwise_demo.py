"""demos/layerwise.py: a --quick run writes its figures and table into --out, the table shows
LISA (gamma = 1) and BAdam at no more than half of AdamW's optimizer-state bytes, importance
sampling beats uniform sampling on the quadratic by about Nesterov's n L_max / sum L_i, and bad
input is one line and exit 2 with nothing written."""
import os
import re
import subprocess
import sys

import pytest

from strategies import assert_refused, ctrl_c, files_below, load_demo

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos", "layerwise.py")
FILES = ["lw/layerwise_convex.png", "lw/layerwise_gpt.png", "lw/layerwise_memory.png",
         "lw/layerwise_results.md"]


def table_rows(text, header):
    """{first cell: cells} of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The demo as a user runs it: a script with one BLAS thread (in this process NumPy's BLAS
    has its default thread count, which on a busy 2-core machine made the run 8x slower)."""
    root = tmp_path_factory.mktemp("layerwise")
    done = subprocess.run([sys.executable, DEMO, "--quick", "--out", "lw", "--cache-dir", "", "--no-progress"],
                          cwd=root, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root, done.stdout, (root / "lw" / "layerwise_results.md").read_text(encoding="utf-8")


def test_quick_run_writes_the_figures_and_the_table_into_out(quick_run):
    root, printed, table = quick_run
    assert files_below(root) == FILES
    for name in FILES[:3]:
        assert (root / name).stat().st_size > 10_000
    assert all(line in printed for line in table.splitlines())      # the same tables are printed


def test_lisa_and_badam_hold_at_most_half_of_adamws_optimizer_state(quick_run):
    _, printed, table = quick_run
    rows = table_rows(table, "method")
    assert list(rows) == ["AdamW", "LISA γ=1", "LISA γ=2", "BAdam", "MISA δ=0.25", "BCD-SGD"]
    fraction = {m: float(cells[3]) for m, cells in rows.items()}
    assert fraction["AdamW"] == 1.0
    assert fraction["LISA γ=1"] <= 0.5 and fraction["BAdam"] <= 0.5
    for m in ("LISA γ=1", "BAdam"):
        assert f"{m} holds {fraction[m]:.3f} of AdamW's optimizer-state bytes (requirement <= 0.5: OK)" in table
    # a step of AdamW changes (nearly) every element, BAdam's one layer of the four
    share = {m: float(re.search(r"\(([\d.]+)%\)", cells[4]).group(1)) for m, cells in rows.items()}
    assert share["AdamW"] >= 99.9 and 20 < share["BAdam"] < 30
    # every method lowered the validation loss
    for m in rows:
        start, end = map(float, re.search(rf"\] {re.escape(m)}: val ([\d.]+) -> ([\d.]+),", printed).groups())
        assert end < start, m


def test_importance_sampling_speedup_is_near_n_lmax_over_sum_l(quick_run):
    _, _, table = quick_run
    measured, theory = map(float, re.search(r"measured speed-up ([\d.]+)× .* theory n·L_max/ΣL_i = (\d+\.\d+)",
                                            table).groups())
    assert theory == 5.70
    assert measured == pytest.approx(theory, rel=0.25)
    # every rule converges; Nesterov's bounds hold for the rules they are about
    rows = table_rows(table, "rule")
    assert len(rows) == 7
    for rule, cells in rows.items():
        assert float(cells[2]) < 0.2, rule
        if cells[3]:
            assert float(cells[1]) <= float(cells[3]), rule


@pytest.mark.parametrize("argv, says", [
    (["--methods", "adamw,lisa3"], "unknown method(s) ['lisa3']"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--epochs", "5"], "--epochs must be >= 10"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--sgd-lr", "-1"], "--sgd-lr must be a positive number"),
    (["--misa-eta", "inf"], "--misa-eta must be a finite number >= 0"),
    (["--quick", "--n-layer", "1", "--methods", "lisa2"], "LISA: layers=2 must be an integer from 1"),
    # flags the part asked for does not read: refused, not ignored
    (["--part", "convex", "--steps", "10"], "--steps: --part convex runs no GPT part, so it would be ignored"),
    (["--methods", "adamw", "--sgd-lr", "0.1"], "--sgd-lr: --methods adamw trains none of bcd, so it would be ignored"),
    (["--methods", "bcd", "--misa-eta", "3"], "--misa-eta: --methods bcd trains none of misa"),
    (["--methods", "bcd", "--lr", "0.01"], "--lr: --methods bcd trains none of adamw, lisa1, lisa2, badam, misa"),
    (["--part", "gpt", "--epochs", "20", "--seeds", "3"],
     "--epochs, --seeds: --part gpt runs no convex part, so they would be ignored; drop them"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("layerwise.py"), argv + ["--cache-dir", ""], says, capsys, watch=tmp_path)


@pytest.mark.parametrize("argv, says", [
    (["--n-layer", "1", "--methods", "lisa2"], "LISA: layers=2 must be an integer from 1"),
    (["--out", "a_file"], "--out a_file is a file"),
])
def test_a_refused_run_leaves_no_token_cache(tmp_path, monkeypatch, capsys, argv, says):
    """Both checks come after the corpus is tokenized: the cache (default out/cache) must wait."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert_refused(load_demo("layerwise.py"), ["--quick", "--max-chars", "50000"] + argv, says, capsys,
                   watch=tmp_path)


def test_an_interrupted_run_is_one_line_exit_130_and_writes_no_results(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the GPT part after the convex part finished: no convex figure either, which
    beside the figures of an older run in --out would pass for a finished one."""
    monkeypatch.chdir(tmp_path)
    demo = load_demo("layerwise.py")
    made = ctrl_c(demo, monkeypatch, run=2)
    assert demo.main(["--quick", "--steps", "2", "--batch-size", "2", "--eval-batches", "1", "--epochs", "10",
                      "--seeds", "1", "--max-chars", "50000", "--methods", "adamw,badam,bcd", "--out", "lw",
                      "--cache-dir", "", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err == "layerwise.py: interrupted in BAdam at step 2 of 2; no figures and no layerwise_results.md " \
                  "written to lw\n"
    assert len(made) == 2 and files_below(tmp_path) == []

