"""demos/memory_costs.py: the tables docs/memory.md quotes come from these functions, which assert
that every measured activation peak equals `gpt_costs`' exact count; the command line writes its
figures and tables into --out only (bad input: one line, exit 2)."""
import pytest

from strategies import assert_refused, files_below, load_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sweeps_measure_the_exact_counts_and_write_a_png(tmp_path):
    demo = load_demo("memory_costs.py")
    table = demo.activations_vs_seq("tiny", [8, 16], 2, str(tmp_path / "seq.png"), progress=False)
    assert (tmp_path / "seq.png").stat().st_size > 10_000
    assert table.count("\n") == 3  # header, rule, two rows
    assert demo.sweep_table("tiny", [8, 16], [1, 2], progress=False).count("\n") >= 5


def test_quick_run_writes_the_figures_and_tables_into_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out shows up here
    demo = load_demo("memory_costs.py")
    assert demo.main(["--quick", "--out", "mem", "--peak-gflops", "50", "--no-progress"]) == 0
    assert files_below(tmp_path) == [
        "mem/memory_activations_seq.png", "mem/memory_costs_bars.png", "mem/memory_costs_results.md"]
    out = tmp_path / "mem"
    for name in ("memory_activations_seq.png", "memory_costs_bars.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC and (out / name).stat().st_size > 10_000
    table = (out / "memory_costs_results.md").read_text()
    rows = table.splitlines()
    # one block per --quick preset, measured == exact in every category of the numpy backend
    for preset in ("tiny", "small"):
        start = next(i for i, row in enumerate(rows) if row.startswith(f"| {preset} (l="))
        for row in rows[start:start + 4]:
            measured, exact = row.split(" | ")[3:5]
            assert measured == exact, row
    assert not any(row.startswith("| medium") for row in rows)
    assert "peak = 50 GFLOP/s, as given by --peak-gflops" in table
    printed = capsys.readouterr().out
    assert all(row in printed for row in rows if row.startswith("|"))   # the same tables are printed


@pytest.mark.parametrize("argv, says", [
    (["--peak-gflops", "0"], "--peak-gflops must be a positive number, got 0.0"),
    (["--peak-gflops", "inf"], "--peak-gflops must be a positive number, got inf"),
    (["--peak-gflops", "fast"], "argument --peak-gflops: invalid float value: 'fast'"),
    (["--outdir", "x"], "unrecognized arguments: --outdir x"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("memory_costs.py"), argv, says, capsys, watch=tmp_path)
