"""Smoke test of demos/memory_costs.py: the tables the README quotes come from these functions,
which assert that every measured activation peak equals `gpt_costs`' exact count."""
from strategies import load_demo


def test_sweeps_measure_the_exact_counts_and_write_a_png(tmp_path):
    demo = load_demo("memory_costs.py")
    table = demo.activations_vs_seq("tiny", [8, 16], 2, str(tmp_path / "seq.png"))
    assert (tmp_path / "seq.png").stat().st_size > 10_000
    assert table.count("\n") == 3  # header, rule, two rows
    assert demo.sweep_table("tiny", [8, 16], [1, 2]).count("\n") >= 5
