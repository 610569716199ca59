"""Smoke test of demos/mixed_precision.py on the GPT: a few steps of three recipes, one PNG."""

import numpy as np

from strategies import load_demo


def test_demo_runs_on_the_gpt_and_writes_a_png(tmp_path):
    demo = load_demo("mixed_precision.py")
    out = tmp_path / "mp.png"
    runs = demo.main(["--steps", "3", "--batch-size", "4", "--recipes",
                      "fp32,fp16_master_dynamic,nvfp4", "--out", str(out),
                      "--max-chars", "200000", "--cache-dir", ""])
    assert out.exists() and out.stat().st_size > 10_000
    assert set(runs) == {"fp32", "fp16_master_dynamic", "nvfp4"}
    for r in runs.values():
        assert len(r["losses"]) == 3 and np.all(np.isfinite(r["losses"])) and np.isfinite(r["val"])
    # same seed, same batches: the first loss differs only by the rounding of the forward pass
    first = [r["losses"][0] for r in runs.values()]
    assert max(first) - min(first) < 0.05 * first[0]
