"""demos/backprop_by_hand.py: the hand-written matrix-form backward agrees with the tape."""
import runpy
from pathlib import Path

import numpy as np
import pytest

from strategies import load_demo


DEMO = Path(__file__).resolve().parents[1] / "demos" / "backprop_by_hand.py"


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_demo_runs_and_every_gradient_matches_the_tape(activation, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["backprop_by_hand.py", "--batch", "5", "--activation", activation])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(DEMO), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    for name in ("W2", "b2", "W1", "b1", "X"):
        assert f"dL/d{name}" in out
    assert "X (for dW1)" in out and "(5, 16)" in out  # stored arrays named with their shapes
    assert "OK: largest difference" in out


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


def test_demo_exits_nonzero_on_a_mismatch(capsys):
    demo = load_demo("backprop_by_hand.py")
    honest = demo.forward_backward_by_hand

    def buggy(*a):
        loss, g, st = honest(*a)
        g["b1"] = g["b1"] * 1.001  # a wrong gradient must be reported
        return loss, g, st

    demo.forward_backward_by_hand = buggy
    assert demo.main(["--batch", "3"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
