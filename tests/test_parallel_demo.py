"""demos/parallel.py end to end: every mode's loss equals the single process's, the measured bytes
per step per worker equal the formulas, the files are written; one mode prints the same final loss
as --mode single, on simulated workers and under `mpiexec -n 2`; bad input is one line and exit 2."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from models.data import TextData, load_text
from models.gpt import GPT, preset
from strategies import assert_refused, assert_stopped, ctrl_c, files_below, load_demo, mpiexec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--steps", "3", "--batch-size", "8", "--max-chars", "50000", "--cache-dir", "", "--no-progress"]


@pytest.fixture(scope="module")
def demo():
    return load_demo("parallel.py")


def _final_loss(out: str) -> str:
    lines = re.findall(r"^final loss (\S+)$", out, flags=re.M)
    assert len(lines) == 1, out
    return lines[0]


def test_every_mode_equals_one_process_and_sends_the_bytes_of_its_formula(demo, tmp_path, capsys):
    out = tmp_path / "out"
    runs = demo.run(demo.build_parser().parse_args(SMALL + ["--out", str(out)]))
    printed = capsys.readouterr().out
    assert list(runs) == ["single", "dp", "tp", "pp gpipe", "pp 1f1b", "dp-tp"]
    assert [len(r) for r in runs.values()] == [1, 2, 2, 2, 2, 4]
    base = np.array(runs["single"][0]["loss"])
    assert len(base) == 3 and base[-1] < base[0]
    for name, ranks in runs.items():
        for r in ranks:                                  # every worker reports the global loss
            np.testing.assert_allclose(r["loss"], base, rtol=1e-12, err_msg=f"{name} rank {r['rank']}")
    assert printed.count(f"final loss {base[-1]:.6f}\n") == 6

    # bytes: measured by the communicators == the formula, for every worker of every mode
    a = demo.build_parser().parse_args(SMALL)
    demo.cli.fill_defaults(a, demo.QUICK, demo.FULL)
    cfg, _ = preset("tiny")
    cfg.vocab_size = TextData(load_text(max_chars=50_000)[0], block_size=cfg.block_size).vocab_size
    n_params = GPT(cfg).num_parameters()
    for ranks in runs.values():
        for r in ranks:
            assert len(set(r["bytes_per_step"])) == 1              # the same every step
            want, _ = demo.formula_bytes(r, cfg, 8, a, n_params)
            assert r["bytes_per_step"][-1] == want, (r["name"], r["rank"])
    assert runs["tp"][0]["bytes_per_step"][-1] > runs["dp"][0]["bytes_per_step"][-1] > 0

    # the pipeline: GPipe stores all m micro-batches, 1F1B at most p - s
    assert [r["peak_stored"] for r in runs["pp gpipe"]] == [4, 4]
    assert [r["peak_stored"] for r in runs["pp 1f1b"]] == [2, 1]

    assert files_below(out) == ["parallel_loss.png", "parallel_results.md", "parallel_timeline_1f1b.png",
                                "parallel_timeline_gpipe.png"]
    results = (out / "parallel_results.md").read_text()
    assert "| dp-tp | 4 | rank 3 (tp 1, dp 1) |" in results and "bubble 0.4286, (p-1)/(m+p-1) = 0.4286" in results


@pytest.mark.parametrize("mode", ["tp", "dp-tp"])
def test_one_mode_prints_the_final_loss_of_the_single_process_and_writes_its_history(demo, mode, tmp_path, capsys):
    assert demo.main(SMALL + ["--mode", "single", "--out", str(tmp_path)]) == 0
    single = _final_loss(capsys.readouterr().out)
    assert demo.main(SMALL + ["--mode", mode, "--out", str(tmp_path)]) == 0
    assert _final_loss(capsys.readouterr().out) == single
    assert files_below(tmp_path) == sorted(["parallel_single.json", f"parallel_{mode}.json"])


def test_mpiexec_ranks_print_the_final_loss_of_the_simulated_run(demo, tmp_path, capsys):
    assert demo.main(SMALL + ["--mode", "single", "--out", str(tmp_path / "sim")]) == 0
    single = _final_loss(capsys.readouterr().out)
    run = subprocess.run([mpiexec(), "-n", "2", sys.executable, os.path.join(ROOT, "demos", "parallel.py"),
                          "--mode", "tp", *SMALL, "--out", str(tmp_path / "mpi")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert _final_loss(run.stdout) == single                    # printed once, by rank 0
    assert files_below(tmp_path / "mpi") == ["parallel_tp.json"]


def test_a_stop_during_all_writes_the_finished_modes_and_exits_130(demo, tmp_path, monkeypatch, capsys):
    """A Ctrl-C stopped only the mode in progress: the later modes still trained, and then the loss
    table subtracted histories of different lengths (a traceback, no results; a review). Now no
    later mode starts, the tables and figures hold the modes that finished, and one line says so."""
    made = ctrl_c(demo, monkeypatch, run=2)                # demo.Trainer: single, then tp's 2 ranks
    out = tmp_path / "out"
    assert_stopped(demo, SMALL + ["--out", str(out)],
                   "interrupted in tp on 2 workers at step 2 of 3; parallel_results.md and the figures hold "
                   "the 2 finished mode(s) (single, dp)", capsys)
    assert [(t.step, t.interrupted) for t in made] == [(3, False), (2, True), (2, True)]   # no pp started
    assert files_below(out) == ["parallel_loss.png", "parallel_results.md", "parallel_timeline_1f1b.png",
                                "parallel_timeline_gpipe.png"]
    results = (out / "parallel_results.md").read_text()
    assert "| dp | 2 |" in results and "| tp |" not in results


def test_a_stop_in_the_first_mode_of_all_writes_nothing(demo, tmp_path, monkeypatch, capsys):
    ctrl_c(demo, monkeypatch, run=1)
    assert_stopped(demo, SMALL + ["--out", str(tmp_path / "out")],
                   "interrupted in single on 1 worker at step 2 of 3; no mode finished; no results written", capsys)
    assert files_below(tmp_path) == []


def test_a_stopped_mode_prints_no_final_loss_and_exits_130_keeping_its_history(demo, tmp_path, monkeypatch, capsys):
    """One stopped mode printed "final loss" of the unfinished run and exited 0 (a review)."""
    ctrl_c(demo, monkeypatch, run=1)
    code = demo.main(SMALL + ["--mode", "tp", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 130, captured.err
    assert captured.err == ("parallel.py: interrupted in tp on 2 workers at step 2 of 3; parallel_tp.json holds "
                            "the 2 steps done\n")
    assert "final loss" not in captured.out
    record = json.loads((tmp_path / "parallel_tp.json").read_text())
    assert record["interrupted"] and record["steps_done"] == 2 and len(record["loss"]) == 2


@pytest.mark.parametrize("argv, says", [
    (["--mode", "tp", "--workers", "3"], "--mode tp --workers 3: tensor parallel: n_head=4 heads (n_embd=64, MLP "
                                         "hidden size 4*n_embd=256) do not split evenly over 3 ranks"),
    (["--mode", "pp", "--workers", "3"], "--mode pp --workers 3: pipeline: 3 stages for 2 layers"),
    (["--mode", "tp", "--schedule", "gpipe"], "--schedule: --mode tp runs no pipeline, so it would be ignored"),
    (["--mode", "dp", "--micro-batches", "2", "--tp-degree", "4"], "--micro-batches: --mode dp runs no pipeline"),
    (["--mode", "pp", "--tp-degree", "4"], "--tp-degree: --mode pp has no data x tensor grid"),
    (["--mode", "pp", "--micro-batches", "3"], "the batch of 8 sequences does not split into 3 micro-batches"),
    (["--mode", "dp", "--workers", "3"], "the batch of 8 sequences does not split over 3 data-parallel workers"),
    (["--mode", "dp-tp", "--workers", "6"], "the batch of 8 sequences does not split over 3 data-parallel groups"),
    (["--mode", "dp-tp", "--workers", "3"], "3 workers do not form a grid of TP groups of --tp-degree 2"),
    (["--mode", "single", "--workers", "2"], "--mode single runs on 1 worker, got --workers 2"),
    (["--workers", "4"], "--workers: --mode all runs every mode on its own number of workers (dp, tp, pp 2; "
                         "dp-tp 4), so it would be ignored; drop it"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--clip", "-1"], "--clip must be a finite number >= 0 (0: off), got -1.0"),
    (["--mode", "mp"], "argument --mode: invalid choice: 'mp'"),
])
def test_bad_input_is_one_line_and_exit_2_writing_nothing(demo, argv, says, tmp_path, capsys):
    assert_refused(demo, SMALL + argv + ["--out", str(tmp_path / "out")], says, capsys, watch=tmp_path)
