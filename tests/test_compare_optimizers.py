"""demos/compare_optimizers.py: a sweep over a first-order, a zeroth-order and a layer-wise
optimizer writes the leaderboard (ranked by final validation loss) and its plots; a rerun skips
finished runs and a changed setting reruns them; a diverging lr is recorded as diverged; bad
input is one line and exit 2."""
import json
import math
import re

from strategies import assert_refused, ctrl_c, files_below, load_demo

demo = load_demo("compare_optimizers.py")

SMALL = ["--quick", "--steps", "4", "--eval-every", "2", "--eval-batches", "1", "--batch-size", "4",
         "--max-chars", "50000", "--cache-dir", "", "--no-progress"]


def _leaderboard_rows(md):
    """(optimizer, best lr, final val loss or None) of the ranked table, in its order."""
    table = md.split("## Every learning rate tried")[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and
            line.split("|")[1].strip().isdigit()]
    return [(r[1].strip(), float(r[3]), None if r[4].strip() == "diverged" else float(r[4])) for r in rows]


def _saved(out):
    runs = {}
    for p in sorted((out / "runs").glob("*.json")):
        runs[p.name] = (p.stat().st_mtime_ns, json.loads(p.read_text())["result"])
    return runs


def test_a_sweep_ranks_by_loss_keeps_the_best_lr_and_a_rerun_skips_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out shows up here
    argv = [*SMALL, "--optimizers", "adamw,mezo,lisa", "--out", "lb"]
    assert demo.main(argv) == 0
    out = tmp_path / "lb"
    names = {f"{m}_lr{lr:g}.json" for m in ("adamw", "mezo", "lisa")
             for lr in demo.lr_grid(demo.BASE[m][0], 2)}
    assert files_below(tmp_path) == sorted(["lb/loss.png", "lb/results.md", "lb/speed.json", "lb/state.png",
                                            *(f"lb/runs/{n}" for n in names)])
    assert (out / "loss.png").stat().st_size > 10_000 and (out / "state.png").stat().st_size > 5_000
    runs = _saved(out)
    results = [r for _, r in runs.values()]
    assert {r["kind"] for r in results} == {"first-order", "zeroth-order", "layer-wise"}
    for r in results:
        assert r["diverged"] is None and r["val_step"] == [0, 2, 4]
        assert r["final_val_loss"] == r["val_loss"][-1] and math.isfinite(r["final_val_loss"])
        assert r["tokens_per_second"] > 0
    state = {r["optimizer"]: r["state_bytes"] for r in results}
    assert state["mezo"] == 0 < state["lisa"] < state["adamw"]     # LISA holds Adam's moments of some layers

    speed = json.loads((out / "speed.json").read_text())          # the speed pass, one per optimizer
    assert sorted(speed["rounds"]) == ["adamw", "lisa", "mezo"]
    assert all(len(v) == 1 and v[0] > 0 for v in speed["rounds"].values())
    assert speed["settings"]["steps"] == 2                            # of 4 steps: 2 untimed, 2 timed
    md = (out / "results.md").read_text()
    assert "the speed pass after the sweep" in md and speed["cpu"] in md
    for m, v in speed["tokens_per_second"].items():                   # the table shows the pass's numbers
        assert f"| {m} |" in md and f"{v:,.0f}" in md

    rows = _leaderboard_rows(md)
    assert sorted(m for m, _, _ in rows) == ["adamw", "lisa", "mezo"]
    losses = [loss for _, _, loss in rows]
    assert losses == sorted(losses)                                   # ranked by final loss
    for m, lr, loss in rows:                                          # the best of its lrs
        assert loss == round(min(r["final_val_loss"] for r in results if r["optimizer"] == m), 4)
        assert lr == next(r["lr"] for r in results if r["optimizer"] == m and round(r["final_val_loss"], 4) == loss)
    assert rows[-1][0] == "mezo"            # 4 zeroth-order steps barely move the loss
    capsys.readouterr()

    assert demo.main([*argv, "--speed-rounds", "0"]) == 0             # same settings: nothing reruns
    said = capsys.readouterr().out
    assert "0 runs trained, 6 skipped" in said
    assert _saved(out) == runs
    assert json.loads((out / "speed.json").read_text()) == speed      # --speed-rounds 0 keeps the pass
    assert f"{speed['tokens_per_second']['adamw']:,.0f}" in (out / "results.md").read_text()

    for n in names:                       # runs saved before GPTConfig had its attention fields
        if n.startswith("adamw"):
            saved = json.loads((out / "runs" / n).read_text())
            for field in ("attention", "n_kv_head", "moba_block"):
                del saved["settings"]["config"][field]
            (out / "runs" / n).write_text(json.dumps(saved))
    assert demo.main([*argv, "--speed-rounds", "0"]) == 0             # ... still count: they have the defaults
    assert "0 runs trained, 6 skipped" in capsys.readouterr().out
    runs = _saved(out)

    assert demo.main([*argv[:-4], "--optimizers", "mezo", "--weight-decay", "0", "--out", "lb"]) == 0
    assert "2 runs trained, 0 skipped" in capsys.readouterr().out     # a changed setting: run anew
    again = _saved(out)
    for n in names:
        assert (again[n][0] != runs[n][0]) == n.startswith("mezo")


def test_a_diverging_lr_is_recorded_as_diverged_not_a_crash(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.BASE, "sgd", (1e9, {}))                  # gradients overflow in the first steps
    monkeypatch.setitem(demo.BASE, "mezo", (1e9, {}))                 # so does the zeroth-order loss
    assert demo.main([*SMALL, "--optimizers", "adamw,sgd,mezo", "--num-lrs", "1",
                      "--out", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    # which step first overflows depends on the backend (step 2 on numba, SGD's step 3 on numpy)
    assert re.search(r"sgd lr 1e\+09: diverged \(training diverged in step [1-4] of 4: gradient of", said)
    assert re.search(r"mezo lr 1e\+09: diverged \(training diverged in step [1-4] of 4: MeZO: non-finite loss",
                     said)
    rows = _leaderboard_rows((tmp_path / "results.md").read_text())
    assert rows[0][0] == "adamw" and rows[0][2] is not None
    assert {m for m, _, loss in rows[1:]} == {"sgd", "mezo"} and all(loss is None for _, _, loss in rows[1:])
    r = json.loads((tmp_path / "runs" / "sgd_lr1e+09.json").read_text())["result"]
    assert r["final_val_loss"] is None and "non-finite" in r["diverged"]


def test_an_interrupted_run_is_not_recorded_and_the_sweep_resumes_there(tmp_path, monkeypatch, capsys):
    argv = [*SMALL, "--optimizers", "adamw,sgd", "--num-lrs", "1", "--out", str(tmp_path)]
    ctrl_c(demo, monkeypatch, run=2)           # what Ctrl-C or `kill` does to the second run, sgd's
    assert demo.main(argv) == 130
    assert capsys.readouterr().err == ("compare_optimizers.py: interrupted in run 2/2 (sgd lr "
                                       f"{demo.BASE['sgd'][0]:g}), not recorded; results.md and the plots hold "
                                       "the 1 finished run(s); run the same command again to resume from here\n")
    assert [p.name for p in (tmp_path / "runs").glob("*.json")] == [f"adamw_lr{demo.BASE['adamw'][0]:g}.json"]
    assert "adamw" in (tmp_path / "results.md").read_text()
    monkeypatch.undo()
    assert demo.main(argv) == 0
    assert "1 runs trained, 1 skipped" in capsys.readouterr().out


def test_ctrl_c_in_the_speed_pass_is_one_line_and_exit_130_keeping_the_runs(tmp_path, monkeypatch, capsys):
    def ctrl_c(*args):                         # the speed pass has no Trainer.fit to catch it
        raise KeyboardInterrupt

    argv = [*SMALL, "--optimizers", "adamw", "--num-lrs", "1", "--out", str(tmp_path)]
    measure_speed = demo.measure_speed
    monkeypatch.setattr(demo, "measure_speed", ctrl_c)
    assert demo.main(argv) == 130
    assert capsys.readouterr().err == ("compare_optimizers.py: interrupted in the speed pass; results.md and the "
                                       "plots hold all 1 runs without speeds, speed.json is not written\n")
    assert not (tmp_path / "speed.json").exists() and "adamw" in (tmp_path / "results.md").read_text()
    # a finished sweep run again re-measures (every run skipped): stopped there, the table and the
    # plots are redrawn without speeds and the earlier speed.json is named as such (a review session:
    # the message said so while the earlier results.md, with its speeds, stayed)
    monkeypatch.setattr(demo, "measure_speed", measure_speed)
    assert demo.main(argv) == 0 and "the speed pass after the sweep" in (tmp_path / "results.md").read_text()
    monkeypatch.setattr(demo, "measure_speed", ctrl_c)
    assert demo.main(argv) == 130
    assert capsys.readouterr().err.endswith("without speeds, speed.json is an earlier pass\n")
    assert "the speed pass after the sweep" not in (tmp_path / "results.md").read_text()
    # a new run first, the one done before after it: the table written after the new run lacked
    # the skipped one, which the line said it held
    assert demo.main([*SMALL, "--optimizers", "sgd,adamw", "--num-lrs", "1", "--out", str(tmp_path)]) == 130
    table = (tmp_path / "results.md").read_text()
    assert "| sgd |" in table and "| adamw |" in table


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "o"
    for flags, says in ((("--optimizers", "adamw,nosuch"), "unknown optimizer(s) ['nosuch']"),
                        (("--optimizers", ","), "--optimizers: unknown optimizer"),
                        (("--steps", "0"), "--steps must be >= 1, got 0"),
                        (("--num-lrs", "9"), "--num-lrs must be from 1 to 7, got 9"),
                        (("--beta2", "1"), "--beta2 must be in [0, 1), got 1.0"),
                        (("--speed-rounds", "-1"), "--speed-rounds must be >= 0 and --speed-steps >= 1, got -1"),
                        (("--speed-steps", "0"), "--speed-rounds must be >= 0 and --speed-steps >= 1, got 1 and 0"),
                        (("--weight-decay", "nan"), "--weight-decay must be a finite number >= 0"),
                        (("--batch-size", "100000"), "more than the training split"),
                        (("--preset", "huge"), "argument --preset: invalid choice")):
        assert_refused(demo, [*SMALL, *flags, "--out", str(out)], says, capsys, tmp_path)
    assert not out.exists()


def test_an_alias_runs_as_its_canonical_name():
    """pgd and proxgrad ran at the default lr 1e-3 beside perturbed_gd and ista at theirs, four
    rows for two optimizers (a review session): an alias is its canonical name now."""
    args = demo.build_parser().parse_args(["--quick", "--optimizers", "pgd,perturbed_gd,proxgrad,ista,adamw"])
    demo._validate(args)
    assert args.optimizers == ["perturbed_gd", "ista", "adamw"]

