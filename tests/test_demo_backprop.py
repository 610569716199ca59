"""demos/backprop_by_hand.py: the hand-written matrix-form backward agrees with the tape, and the
command line writes its figure and tables into --out only (bad input: one line, exit 2)."""
import runpy
from pathlib import Path

import numpy as np
import pytest

from strategies import assert_refused, files_below, load_demo

DEMO = Path(__file__).resolve().parents[1] / "demos" / "backprop_by_hand.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_quick_run_writes_the_figure_and_tables_into_out(activation, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out shows up here
    demo = load_demo("backprop_by_hand.py")
    assert demo.main(["--quick", "--batch", "5", "--activation", activation, "--out", "bp"]) == 0
    assert files_below(tmp_path) == ["bp/backprop_by_hand.png", "bp/backprop_by_hand_results.md"]
    out = tmp_path / "bp"
    assert (out / "backprop_by_hand.png").read_bytes()[:8] == PNG_MAGIC
    table = (out / "backprop_by_hand_results.md").read_text()
    for name in ("W2", "b2", "W1", "b1", "X"):
        assert f"| dL/d{name} |" in table
    assert "| Z1 = X W1^T + b1 | X (for dW1) | (5, 5) |" in table   # stored arrays named with their shapes
    assert "| (5, 16) |" in table
    sweep = [row for row in table.splitlines() if row[:4] in ("| 1 ", "| 4 ", "| 16")]
    assert [row.split(" | ")[0] for row in sweep] == ["| 1", "| 4", "| 16"]
    assert "OK: largest difference" in table
    printed = capsys.readouterr().out
    assert all(row in printed for row in table.splitlines() if row.startswith("|"))


def test_hand_gradients_equal_the_tape_to_round_off():
    demo = load_demo("backprop_by_hand.py")
    rng = np.random.default_rng(3)
    B, D, H, C = 4, 3, 6, 5
    args = (rng.standard_normal((B, D)), rng.integers(0, C, B), rng.standard_normal((H, D)),
            rng.standard_normal(H), rng.standard_normal((C, H)), rng.standard_normal(C))
    loss, grads, stored = demo.forward_backward_by_hand(*args, "tanh")
    tape_loss, tape_grads, _, _ = demo.forward_backward_on_tape(*args, "tanh")
    assert abs(loss - tape_loss) < 1e-12
    for n in ("W1", "b1", "W2", "b2", "X"):
        assert grads[n].shape == tape_grads[n].shape
        np.testing.assert_allclose(grads[n], tape_grads[n], rtol=1e-10, atol=1e-12)
    # what forward stored: X, A1 (once), logits, log-sum-exp, targets
    assert stored.total() == (B * D + B * H + B * C + B) * 8 + args[1].nbytes


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_stored_bytes_grow_linearly_in_the_batch_and_the_weights_do_not(activation):
    demo = load_demo("backprop_by_hand.py")
    D, H, C = 3, 7, 4
    runs = {B: demo.both_passes(demo.make_problem(B, D, H, C, seed=1), activation) for B in (1, 3, 8)}
    per_row = (D + H + C + 1) * 8 + 8          # X, A1, logits, log-sum-exp (float64), target (int64)
    for B, r in runs.items():
        assert r["hand_bytes"] == B * per_row
        assert r["tape_bytes"] == r["hand_bytes"] + B   # + cross-entropy's boolean mask of kept rows
        assert r["weight_bytes"] == (H * D + H + C * H + C) * 8
        assert max(r["diffs"].values()) < 1e-12


def test_demo_exits_1_on_a_mismatch(tmp_path, capsys):
    demo = load_demo("backprop_by_hand.py")
    honest = demo.forward_backward_by_hand

    def buggy(*a):
        loss, g, st = honest(*a)
        g["b1"] = g["b1"] * 1.001  # a wrong gradient must be reported
        return loss, g, st

    demo.forward_backward_by_hand = buggy
    assert demo.main(["--quick", "--batch", "3", "--out", str(tmp_path)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert "MISMATCH" in (tmp_path / "backprop_by_hand_results.md").read_text()


@pytest.mark.parametrize("argv, says", [
    (["--batch", "0"], "--batch must be in [1, 1024], got 0"),
    (["--hidden", "4096"], "--hidden must be in [1, 1024], got 4096"),
    (["--inputs", "-2"], "--inputs must be in [1, 1024], got -2"),
    (["--classes", "0"], "--classes must be in [1, 1024], got 0"),
    (["--batch", "two"], "argument --batch: invalid int value: 'two'"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
    (["--tol", "nan"], "--tol must be a finite number >= 0, got nan"),
    (["--tol=-1e-3"], "--tol must be a finite number >= 0"),
    (["--activation", "gelu"], "argument --activation: invalid choice: 'gelu'"),
    (["--outdir", "x"], "unrecognized arguments: --outdir x"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("backprop_by_hand.py"), argv, says, capsys, watch=tmp_path)


def test_as_a_script_bad_input_exits_with_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["backprop_by_hand.py", "--batch", "0"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(DEMO), run_name="__main__")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "backprop_by_hand.py: error: --batch must be in [1, 1024], got 0\n"
    assert list(tmp_path.iterdir()) == []
