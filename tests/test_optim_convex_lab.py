"""The convex lab at small sizes: rates respected, LASSO optimality to 1e-8, saddle escape."""
import os

import numpy as np

from strategies import load_demo


def test_convex_lab_small(tmp_path):
    s = load_demo("convex_lab.py").main(small=True, outdir=str(tmp_path), verbose=False)
    for key in ("least_squares", "logistic_regression"):
        r = s[key]
        assert r["gd_below_bound"] and r["nesterov_below_bound"], r
        assert r["nesterov_final"] < r["gd_final"]
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
    for r in (ls, s["logistic_regression"], lasso, sad):
        assert os.path.getsize(r["png"]) < 200_000
