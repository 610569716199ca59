"""The convex lab at quick sizes: rates respected, LASSO optimality to 1e-8, saddle escape; the
command line writes its figures and table into --out only (bad input: one line, exit 2)."""
import numpy as np
import pytest

from strategies import assert_refused, files_below, load_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["convex_lasso.png", "convex_least_squares.png", "convex_logistic_regression.png",
           "convex_saddle.png", "convex_stability.png"]


def test_convex_lab_quick_respects_the_rates():
    s = load_demo("convex_lab.py").lab(quick=True)
    for key in ("least_squares", "logistic_regression"):
        r = s[key]
        assert r["gd_below_bound"] and r["nesterov_below_bound"], r
        assert r["nesterov_final"] < r["gd_final"]
        # Anderson (m=5) reaches 1e-12 well before the last iteration and ends at least as low as Nesterov
        assert r["anderson_iters_to_floor"] is not None and r["anderson_iters_to_floor"] < 100, r
        assert r["anderson_final"] <= max(r["nesterov_final"], 1e-15)
        for kind in ("replacement", "importance"):
            assert r[f"sgd_{kind}_final"] <= r[f"sgd_{kind}_bound_final"], (key, kind)
    # heterogeneous row norms: importance sampling (p_i ~ L_i) converges faster than uniform
    ls = s["least_squares"]
    assert ls["sgd_importance_final"] < 0.5 * ls["sgd_replacement_final"]
    lasso = s["lasso"]
    assert lasso["kkt_residual"] <= 1e-8
    assert lasso["ista_below_bound"] and lasso["fista_below_bound"]
    assert 0 < lasso["nnz"] < lasso["d"]
    sad = s["saddle"]
    assert np.linalg.norm(sad["gd_final"]) < 1e-8                   # GD stuck at the saddle
    assert abs(abs(sad["pgd_final"][1]) - 1) < 0.05                 # PGD at a minimum
    assert sad["escape_iter"] is not None and sad["perturbations"] >= 1
    # escape time in d dimensions grows like ln(d)/(2 ln(1+lr)), not like d
    esc = sad["escape_median_by_d"]
    dims = sorted(esc)
    assert all(np.isfinite(esc[d]) for d in dims)
    growth = esc[dims[-1]] - esc[dims[0]]
    predicted = sad["escape_predicted_slope_per_ln_d"] * np.log(dims[-1] / dims[0])
    assert 0.5 * predicted < growth < 2 * predicted, (esc, predicted)
    stab = s["stability"]
    # GD on a quadratic: the bisection finds 2/L (from above: at 2/L the top mode only oscillates)
    assert 1.0 <= stab["gd_measured"] * stab["gd_L"] / 2 < 1.005, stab
    # SGD: the largest stable lr shrinks as the batch shrinks, equals GD's 2/a at B = n, and
    # follows the mean-square prediction
    measured, predicted = np.array(stab["sgd_measured"]), np.array(stab["sgd_mean_square"])
    assert stab["batches"][-1] == stab["sgd_n"] and np.all(np.diff(measured) > 0), stab
    assert measured[0] < 0.3 * measured[-1]
    np.testing.assert_allclose(measured[-1], 2 / stab["sgd_a"], rtol=0.01)
    np.testing.assert_allclose(predicted[-1], 2 / stab["sgd_a"], rtol=1e-9)
    np.testing.assert_allclose(measured, predicted, rtol=0.1)
    assert not any("png" in r for r in (ls, lasso, sad, stab))    # no --out, no figures


def test_quick_run_writes_the_figures_and_table_into_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out shows up here
    demo = load_demo("convex_lab.py")
    assert demo.main(["--quick", "--out", "lab"]) == 0
    assert files_below(tmp_path) == [f"lab/{name}" for name in sorted(FIGURES + ["convex_lab_results.md"])]
    out = tmp_path / "lab"
    for name in FIGURES:
        png = (out / name).read_bytes()
        assert png[:8] == PNG_MAGIC and 10_000 < len(png) < 200_000, name
    table = (out / "convex_lab_results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    methods = [row.split(" | ")[1] for row in rows if " lr 1/L " in row or "| SGD, " in row]
    assert methods == ["GD, lr 1/L", "Nesterov, lr 1/L", "Anderson (m=5), lr 1/L", "SGD, with replacement",
                       "SGD, random reshuffling", "SGD, importance sampling"] * 2 + ["ISTA, lr 1/L", "FISTA, lr 1/L"]
    assert "**no**" not in table                                    # every bound held
    assert [row.split(" | ")[0] for row in rows if row[2:3].isdigit()] == ["| 2", "| 64", "| 2048"]
    assert [row.split(" | ")[1] for row in rows if row.startswith(("| SGD at", "|  | "))][-4:] == \
        ["1", "2", "4", "8"]                                       # the stability rows, B = 1..n
    printed = capsys.readouterr().out
    assert all(row in printed for row in rows)                      # the same table is printed


@pytest.mark.parametrize("argv, says", [
    (["--seed", "-3"], "argument --seed: must be an integer >= 0, got '-3'"),
    (["--seed", "1.5"], "argument --seed: must be an integer >= 0, got '1.5'"),
    (["--small"], "unrecognized arguments: --small"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("convex_lab.py"), argv, says, capsys, watch=tmp_path)
