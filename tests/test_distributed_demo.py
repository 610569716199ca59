"""demos/distributed.py end to end: `mpiexec -n 4 ... --preset tiny --steps 50` prints the final loss
of the simulated run of the same command (its whole loss history equal bit for bit); every part's
quick run shows what the lecture says and writes its figure and table; the other parts run on MPI
ranks too and write the simulated run's tables; bad input is one line and exit 2."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from optim.dist.comm import ring_traffic
from strategies import assert_refused, assert_stopped, ctrl_c, files_below, load_demo, mpiexec as _mpiexec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "demos", "distributed.py")


@pytest.fixture(scope="module")
def demo():
    return load_demo("distributed.py")


def _final_losses(out: str) -> list:
    return re.findall(r"^final loss (\S+)$", out, flags=re.M)


def _run(demo, argv, out):
    return demo.run(demo.build_parser().parse_args(argv + ["--out", str(out), "--no-progress"]))


def _table(path) -> str:
    """distributed_results.md without its header line naming the backend and command."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("Workers: "))


def test_mpiexec_4_ranks_print_the_final_loss_of_the_simulated_run_of_the_same_command(tmp_path):
    """Both as commands, so both set the demo's one BLAS thread: float32 GEMMs round differently
    with other thread counts."""
    mpiexec = _mpiexec()
    command = [sys.executable, DEMO, "--preset", "tiny", "--steps", "50"]
    histories, printed = {}, {}
    for name, argv in (("simulated", command + ["--workers", "4"]), ("mpiexec -n 4", [mpiexec, "-n", "4", *command])):
        run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr
        printed[name] = _final_losses(run.stdout)                 # printed once, by rank 0
        with open(tmp_path / "out" / "distributed" / "distributed_gpt.json") as f:   # the default --out
            record = json.load(f)
        assert record["backend"] == name and list(record["runs"]) == ["4"]
        histories[name] = record["runs"]["4"]
    assert len(printed["simulated"]) == 1 and printed["mpiexec -n 4"] == printed["simulated"]
    for key in ("train_loss", "val_loss", "bytes_sent"):            # bit for bit: the same ring order
        assert histories["mpiexec -n 4"][key] == histories["simulated"][key], key
    loss = histories["simulated"]["train_loss"]
    assert len(loss) == 50 and loss[-1] < loss[0] - 1.0


def test_gpt_on_1_and_2_workers_has_the_same_losses_and_sends_the_ring_all_reduce(demo, tmp_path, capsys):
    runs = _run(demo, ["--part", "gpt", "--quick", "--dtype", "float64", "--cache-dir", ""], tmp_path)["gpt"]
    assert list(runs) == [1, 2]
    np.testing.assert_allclose(runs[2]["train_loss"], runs[1]["train_loss"], rtol=1e-12)
    printed = _final_losses(capsys.readouterr().out)
    assert printed == [f"{runs[1]['train_loss'][-1]:.6f}"] * 2
    per_step = np.diff(runs[2]["bytes_sent"])
    from models.data import TextData, load_text
    from models.gpt import GPT, preset
    cfg, _ = preset("tiny", vocab_size=TextData(load_text(max_chars=200_000)[0], block_size=64).vocab_size)
    vote = ring_traffic(1, 2, 0)[0] * 8                               # the int64 stop vote
    assert set(per_step) == {ring_traffic(GPT(cfg).num_parameters(), 2, 0)[0] * 8 + vote}
    assert np.all(np.diff(runs[1]["bytes_sent"]) == 0)
    assert files_below(tmp_path) == ["distributed_gpt.json", "distributed_gpt.png", "distributed_results.md"]


def test_a_stop_in_the_gpt_part_exits_130_keeping_only_the_earlier_parts_figures(demo, tmp_path, monkeypatch,
                                                                                   capsys):
    """A Ctrl-C or SIGTERM on one rank of the 2-worker run (after the 1-worker run) stops both
    ranks at the same step; the run must not then write the GPT results, or the tables, as if it
    had finished. The consensus part before it keeps its figure."""
    from models.training import distributed
    monkeypatch.setattr(demo, "PARTS", ("consensus", "gpt"))        # --part all: consensus, then gpt
    made = ctrl_c(distributed, monkeypatch, run=2)
    assert_stopped(demo, ["--quick", "--cache-dir", "", "--no-progress", "--out", str(tmp_path)],
                   "interrupted in the gpt part on 2 workers at step 2 of 5; no distributed_gpt.json, "
                   "distributed_gpt.png or distributed_results.md written; kept distributed_consensus.png", capsys)
    assert [t.step for t in made] == [5, 2, 2] and [t.interrupted for t in made] == [False, True, True]
    assert files_below(tmp_path) == ["distributed_consensus.png"]


def test_consensus_decays_within_rho_and_the_one_peer_graph_averages_exactly(demo, tmp_path):
    rows = _run(demo, ["--part", "consensus", "--quick"], tmp_path)["consensus"]
    assert list(rows) == ["ring", "torus", "exponential", "one-peer-exponential", "complete", "star"]
    for name, r in rows.items():
        assert r["bound_holds"], name
    for name in ("ring", "torus", "exponential", "star"):
        assert 0.9 * rows[name]["rho"] <= rows[name]["measured_rho"] <= rows[name]["rho"] + 1e-12, name
    assert rows["ring"]["gap"] == pytest.approx((2 / 3) * (1 - np.cos(2 * np.pi / 8)), abs=1e-12)
    assert rows["exponential"]["gap"] == pytest.approx(2 / (1 + 3), abs=1e-12)
    assert rows["one-peer-exponential"]["rel"][3] < 1e-25 < rows["one-peer-exponential"]["rel"][2]
    assert rows["complete"]["rel"][1] < 1e-25
    # fewer rounds to 1e-6 the larger the gap; the ring and the star do not get there in 20
    assert rows["ring"]["rounds_to_1e-6"] is None and rows["star"]["rounds_to_1e-6"] is None
    assert rows["one-peer-exponential"]["rounds_to_1e-6"] == 3 < rows["exponential"]["rounds_to_1e-6"]
    assert files_below(tmp_path) == ["distributed_consensus.png", "distributed_results.md"]
    assert "| one-peer-exponential | 1 | 1.0000 | exact after log2 n = 3 rounds" in (
        tmp_path / "distributed_results.md").read_text()


def test_decentralized_bias_grows_as_the_gap_shrinks_and_gradient_tracking_removes_it(demo, tmp_path):
    rows = _run(demo, ["--part", "heterogeneous", "--quick"], tmp_path)["heterogeneous"]
    floor = {name: r["floor"] for name, r in rows.items()}
    assert floor["star"]["dpsgd"] > floor["ring"]["dpsgd"] > floor["torus"]["dpsgd"] > floor["exponential"]["dpsgd"]
    for name, f in floor.items():
        assert f["gradient-tracking"] < 1e-6 and f["gradient-tracking"] < 1e-4 * f["dpsgd"], name
        assert f["atc"] < f["dpsgd"], name
        assert not rows[name]["falling"]["dpsgd"], name                     # D-PSGD has reached its floor
    assert files_below(tmp_path) == ["distributed_heterogeneous.png", "distributed_results.md"]


def test_compression_topk_stalls_ef14_floor_shrinks_with_the_step_ef21_converges(demo, tmp_path):
    rows = _run(demo, ["--part", "compression", "--quick"], tmp_path)["compression"]
    base = rows["uncompressed"]
    top = "top-5%"
    assert rows[top]["floor"] > 0.3                                           # a biased fixed point
    ef14 = [rows[f"{top} + EF14"], rows[f"{top} + EF14, γ/2"], rows[f"{top} + EF14, γ/4"]]
    assert [r["lr"] for r in ef14] == [0.5, 0.25, 0.125]
    assert rows[top]["floor"] > ef14[0]["floor"] > ef14[1]["floor"] > ef14[2]["floor"]
    assert rows[f"{top} + EF21"]["floor"] < min(1e-3, 1e-2 * ef14[2]["floor"])   # on its way to W*
    assert rows["QSGD s=4 + EF21"]["floor"] > 1e6                            # not contractive: diverges
    # bytes per step per worker on 4 workers, W 50 x 4 float64: ring all-reduce of 200 values;
    # top-k gathers k = 10 values and int32 indices from the 3 others
    assert base["bytes_per_step"] == 2 * 3 / 4 * 200 * 8
    assert rows[top]["bytes_per_step"] == 3 * 10 * (8 + 4)
    assert files_below(tmp_path) == ["distributed_compression.png", "distributed_results.md"]
    assert "| QSGD s=4 + EF21 | 0.5 | 324 | 0.135 | diverged |" in (tmp_path / "distributed_results.md").read_text()


def test_local_sgd_divides_the_rounds_by_h_and_its_drift_floor_grows_with_h(demo, tmp_path):
    results = _run(demo, ["--part", "local-sgd", "--quick"], tmp_path)["local-sgd"]
    full = results["full local gradients"]
    assert [full[H]["rounds"][-1] for H in (1, 4, 16)] == [96, 24, 6]
    assert full[1]["bytes_sent"][-1] == 4 * full[4]["bytes_sent"][-1] == 16 * full[16]["bytes_sent"][-1]
    assert full[1]["loss"][-1] < full[4]["loss"][-1] < full[16]["loss"][-1]
    assert files_below(tmp_path) == ["distributed_local_sgd.png", "distributed_results.md"]


@pytest.mark.parametrize("part", ["consensus", "local-sgd"])
def test_the_other_parts_on_mpiexec_ranks_write_the_tables_of_the_simulated_run(demo, part, tmp_path):
    mpiexec = _mpiexec()
    _run(demo, ["--part", part, "--quick", "--workers", "2"], tmp_path / "sim")
    run = subprocess.run([mpiexec, "-n", "2", sys.executable, DEMO, "--part", part, "--quick",
                          "--out", str(tmp_path / "mpi")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert _table(tmp_path / "mpi" / "distributed_results.md") == _table(tmp_path / "sim" / "distributed_results.md")


@pytest.mark.parametrize("argv, says", [
    (["--part", "bogus"], "argument --part: invalid choice: 'bogus'"),
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--part", "consensus", "--workers", "1"], "--part consensus needs at least 2 workers to communicate, got "
                                                "--workers 1"),
    (["--preset", "tiny", "--workers", "3"], "--workers 3: the GPT part's global batch of 32 sequences does not "
                                             "split over them; give a --batch-size divisible by 3"),
    (["--part", "compression", "--steps", "5"], "--steps set the gpt part, but --part compression does not run it"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
])
def test_bad_input_is_one_line_and_exit_2_writing_nothing(demo, argv, says, tmp_path, capsys):
    assert_refused(demo, argv + ["--cache-dir", "", "--out", str(tmp_path / "out")], says, capsys, watch=tmp_path)
