"""Convex lab (Lectures 1, 2, 6): measured suboptimality vs the theoretical rates.

    .venv/bin/python demos/convex_lab.py              # full sizes into out/convex_lab/ (~25 s)
    .venv/bin/python demos/convex_lab.py --quick      # smaller problems (the test uses this)
    .venv/bin/python demos/convex_lab.py --out docs   # redraw the figures of docs/optimizers.md

Writes to --out: convex_least_squares.png, convex_logistic_regression.png, convex_lasso.png,
convex_saddle.png, convex_stability.png and convex_lab_results.md (the table it prints: each method's last value
against its bound). Bad input prints one line and exits with code 2, writing nothing.

Problems on generated data, each solved to high accuracy first (x*):
* least squares   f(x) = 1/(2n) ||Ax - b||^2               (x* by lstsq)
* logistic        f(x) = 1/n sum log(1 + exp(-y_i a_i^T x)) + mu/2 ||x||^2   (x* by Newton)
* LASSO           f(x) = 1/(2n) ||Ax - b||^2 + lam ||x||_1  (x* by restarted FISTA + support
                  polish; verified by its optimality conditions to 1e-8)
and a strict saddle f(x, y) = x^2/2 + y^4/4 - y^2/2 where GD stalls and perturbed GD escapes,
plus the same saddle embedded in d dimensions: PGD's escape time grows like log d.

Every method is the library's optimizer driven by raw gradients (optim.create(...).step(grads)).
Theoretical curves (each line's label says which):
* GD, lr = 1/L, mu-strongly convex: f(x_k) - f* <= (1 - mu/L)^k (f(x_0) - f*).
* Nesterov, lr = 1/L, momentum (sqrt(k)-1)/(sqrt(k)+1): f(x_k) - f* <= (1 - 1/sqrt(kappa))^k
  (f(x_0) - f* + mu/2 ||x_0 - x*||^2) (Nesterov 2004, Thm 2.2.3 form) [unverified constant].
* SGD, step gamma < 1/sup_i L_i: E||x_k - x*||^2 <= (1 - 2 gamma mu (1 - gamma sup L))^k ||x_0 - x*||^2
  + gamma sigma^2 / (mu (1 - gamma sup L)), sigma^2 = E||grad f_i(x*)||^2 (Needell, Srebro, Ward
  2014, Thm 2.1) [unverified: recalled from memory]; importance sampling p_i ~ L_i replaces
  sup L by mean L and sigma^2 by the reweighted variance (a faster rate, a different floor).
  The SGD panels plot ||x_k - x*||^2, what the theorem bounds. Random reshuffling has no line (it is not covered by that theorem).
* ISTA: F(x_k) - F* <= L ||x_0 - x*||^2 / (2k); FISTA: <= 2 L ||x_0 - x*||^2 / (k+1)^2
  (Beck & Teboulle 2009).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

import optim
from models import cli
from models.training import pyplot, save_figure
from optim.prox import L1
from optim.sampling import make_sampler

FLOOR = 1e-16  # plots clip suboptimality here (float64 rounding)
ANDERSON_M = 5  # Anderson acceleration's memory on the smooth problems


# ----------------------------------------------------------------------------- problems
def make_least_squares(n, d, rng):
    """Rows with heterogeneous norms (so importance sampling matters), columns scaled for kappa."""
    a = rng.standard_normal((n, d)) * np.geomspace(1.0, 0.1, d)
    a *= np.exp(rng.normal(0.0, 0.8, n))[:, None]
    x_true = rng.standard_normal(d)
    b = a @ x_true + 0.5 * rng.standard_normal(n)
    xs = np.linalg.lstsq(a, b, rcond=None)[0]
    h = a.T @ a / n
    ev = np.linalg.eigvalsh(h)
    return {
        "name": "least squares", "a": a, "b": b, "xs": xs, "mu": ev[0], "L": ev[-1],
        "Li": np.sum(a * a, axis=1),
        "f": lambda x: 0.5 * np.mean((a @ x - b) ** 2),
        "grad": lambda x: a.T @ (a @ x - b) / n,
        "grad_i": lambda x, idx: a[idx] * (a[idx] @ x - b[idx])[:, None],
    }


def make_logistic(n, d, mu, rng):
    a = rng.standard_normal((n, d)) * np.exp(rng.normal(0.0, 0.6, n))[:, None]
    w = rng.standard_normal(d)
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-a @ w)), 1.0, -1.0)

    def f(x):
        return float(np.mean(np.logaddexp(0.0, -y * (a @ x)))) + 0.5 * mu * x @ x

    def grad(x):
        s = -y / (1 + np.exp(y * (a @ x)))
        return a.T @ s / n + mu * x

    def grad_i(x, idx):
        s = -y[idx] / (1 + np.exp(y[idx] * (a[idx] @ x)))
        return a[idx] * s[:, None] + mu * x

    xs = np.zeros(d)                                   # Newton's method to machine precision
    for _ in range(50):
        sig = 1 / (1 + np.exp(-a @ xs))
        hess = (a.T * (sig * (1 - sig))) @ a / n + mu * np.eye(d)
        step = np.linalg.solve(hess, grad(xs))
        xs -= step
        if np.linalg.norm(step) < 1e-15:
            break
    L = np.linalg.eigvalsh(a.T @ a).max() / (4 * n) + mu
    return {"name": "logistic regression", "a": a, "y": y, "xs": xs, "mu": mu, "L": L,
            "Li": np.sum(a * a, axis=1) / 4 + mu, "f": f, "grad": grad, "grad_i": grad_i}


def make_lasso(n, d, rng):
    a = rng.standard_normal((n, d))
    x_true = np.zeros(d)
    k = max(3, d // 10)
    x_true[rng.choice(d, k, replace=False)] = rng.standard_normal(k) * 2
    b = a @ x_true + 0.1 * rng.standard_normal(n)
    lam = 0.1 * np.abs(a.T @ b).max() / n
    L = np.linalg.eigvalsh(a.T @ a).max() / n
    pb = {"name": "LASSO", "a": a, "b": b, "lam": lam, "L": L,
          "f": lambda x: 0.5 * np.mean((a @ x - b) ** 2),
          "grad": lambda x: a.T @ (a @ x - b) / n}
    pb["F"] = lambda x: pb["f"](x) + lam * np.abs(x).sum()
    pb["xs"] = solve_lasso(pb)
    pb["kkt"] = lasso_kkt_residual(pb, pb["xs"])
    return pb


def lasso_kkt_residual(pb, x):
    """max violation of 0 in grad f(x) + lam * subdiff ||x||_1:
    grad_i = -lam sign(x_i) on the support, |grad_i| <= lam off it."""
    g, lam = pb["grad"](x), pb["lam"]
    on = x != 0
    r_on = np.abs(g[on] + lam * np.sign(x[on])).max(initial=0.0)
    r_off = np.maximum(np.abs(g[~on]) - lam, 0.0).max(initial=0.0)
    return float(max(r_on, r_off))


def solve_lasso(pb, tol=1e-12, max_iter=50_000):
    """FISTA with function-value restart (O'Donoghue & Candes 2015), then a support polish:
    on the support S with signs s, x_S solves (A_S^T A_S / n) x_S = A_S^T b / n - lam s."""
    d = pb["a"].shape[1]
    p = {"x": np.zeros(d)}
    opt = optim.FISTA(p, lr=1 / pb["L"], prox=L1(pb["lam"]))
    best = math.inf
    for _ in range(max_iter):
        opt.step({"x": pb["grad"](p["x"])})
        x = opt.iterates()["x"]
        val = pb["F"](x)
        if val > best:                                   # restart the momentum
            p["x"][...] = x
            opt = optim.FISTA(p, lr=1 / pb["L"], prox=L1(pb["lam"]))
        best = min(best, val)
        if lasso_kkt_residual(pb, x) < tol:
            break
    x = opt.iterates()["x"].copy()
    on = x != 0
    a, b, n = pb["a"], pb["b"], pb["a"].shape[0]
    if on.any():
        a_s = a[:, on]
        xs_on = np.linalg.solve(a_s.T @ a_s / n, a_s.T @ b / n - pb["lam"] * np.sign(x[on]))
        cand = np.zeros(d)
        cand[on] = xs_on
        if np.all(np.sign(xs_on) == np.sign(x[on])) and \
                lasso_kkt_residual(pb, cand) <= lasso_kkt_residual(pb, x):
            x = cand
    return x


# ----------------------------------------------------------------------------- runners
def run_deterministic(pb, name, iters, **kw):
    d = pb["xs"].size
    p = {"x": np.zeros(d)}
    opt = optim.create(name, p, **kw)
    obj = pb.get("F", pb["f"])
    fs = obj(pb["xs"])
    gaps = [obj(p["x"]) - fs]
    for _ in range(iters):
        opt.step({"x": pb["grad"](p["x"])})
        x = opt.iterates()["x"]
        gaps.append(obj(x) - fs)
    return np.maximum(np.array(gaps), FLOOR)


def sgd_setup(pb, kind):
    """Step size and NSW bound constants for a sampler kind."""
    n = pb["Li"].size
    g_star = pb["grad_i"](pb["xs"], np.arange(n))          # per-sample gradients at x*
    sq = np.sum(g_star ** 2, axis=1)
    if kind == "importance":
        probs = pb["Li"] / pb["Li"].sum()
        sup_l = pb["Li"].mean()
        sigma2 = float(np.mean(sq * pb["Li"].mean() / pb["Li"]))   # sum p_i ||w_i g_i||^2
    else:
        probs = None
        sup_l = pb["Li"].max()
        sigma2 = float(np.mean(sq))
    gamma = 1.0 / (2.0 * sup_l)
    return probs, gamma, sup_l, sigma2


def run_sgd(pb, kind, epochs, seed=0):
    n, d = pb["Li"].size, pb["xs"].size
    probs, gamma, sup_l, sigma2 = sgd_setup(pb, kind)
    sampler = make_sampler(kind, n, batch_size=1, seed=seed, probs=probs)
    p = {"x": np.zeros(d)}
    opt = optim.create("sgd", p, lr=gamma)
    xs = pb["xs"]
    dist = [float(np.sum((p["x"] - xs) ** 2))]
    for _ in range(epochs):
        for _ in range(n):
            idx, w = sampler.next()
            opt.step({"x": (w[:, None] * pb["grad_i"](p["x"], idx)).mean(axis=0)})
        dist.append(float(np.sum((p["x"] - xs) ** 2)))
    # the NSW bound on E||x_k - x*||^2, once per epoch (n steps)
    mu = pb["mu"]
    k = np.arange(epochs + 1) * n
    bound = ((1 - 2 * gamma * mu * (1 - gamma * sup_l)) ** k * dist[0]
             + gamma * sigma2 / (mu * (1 - gamma * sup_l)))
    return np.maximum(np.array(dist), FLOOR), bound


def strongly_convex_bounds(pb, iters):
    mu, L, xs = pb["mu"], pb["L"], pb["xs"]
    k = np.arange(iters + 1)
    f0 = pb["f"](np.zeros_like(xs)) - pb["f"](xs)
    gd = (1 - mu / L) ** k * f0
    nest = (1 - math.sqrt(mu / L)) ** k * (f0 + mu / 2 * xs @ xs)
    return gd, nest


def strongly_convex_momentum(pb):
    """Nesterov's constant momentum (√κ−1)/(√κ+1) for a μ-strongly convex, L-smooth problem."""
    sk = math.sqrt(pb["L"] / pb["mu"])
    return (sk - 1) / (sk + 1)


def lasso_bounds(pb, iters):
    """Beck & Teboulle's bounds at k = 1..iters: ISTA L r0/(2k), FISTA 2 L r0/(k+1)^2."""
    k = np.arange(1, iters + 1)
    r0 = float(pb["xs"] @ pb["xs"])
    return k, pb["L"] * r0 / (2 * k), 2 * pb["L"] * r0 / (k + 1) ** 2


# ----------------------------------------------------------------------------- figures
COLORS = {"GD": "C0", "Nesterov": "C1", "with replacement": "C2", "reshuffling": "C3",
          "importance": "C4", "ISTA": "C0", "FISTA": "C1"}


def _save(fig, path):
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def plot_smooth(pb, det, sgd, bounds, path, iters, epochs):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    k = np.arange(iters + 1)
    gd_b, nest_b = bounds
    ax1.semilogy(k, det["GD"], color=COLORS["GD"], label="GD, lr=1/L")
    ax1.semilogy(k, np.maximum(gd_b, FLOOR), "--", color=COLORS["GD"], label="(1-1/κ)^k bound")
    ax1.semilogy(k, det["Nesterov"], color=COLORS["Nesterov"], label="Nesterov")
    ax1.semilogy(k, np.maximum(nest_b, FLOOR), "--", color=COLORS["Nesterov"],
                 label="(1-1/√κ)^k bound")
    ax1.semilogy(k, det["Anderson"], color="C2", label=f"Anderson (m={ANDERSON_M}), lr=1/L")
    ax1.set_ylim(FLOOR, None)
    ax1.set_xlabel("iteration (full gradients)")
    ax1.set_ylabel("f(x_k) - f*")
    ax1.set_title(f"{pb['name']}: κ = {pb['L'] / pb['mu']:.0f}")
    ax1.legend(fontsize=7)
    e = np.arange(epochs + 1)
    for kind, label in (("replacement", "with replacement"), ("reshuffle", "reshuffling"),
                        ("importance", "importance")):
        gaps, bound = sgd[kind]
        ax2.semilogy(e, gaps, color=COLORS[label], label=f"SGD {label}")
        if kind != "reshuffle":
            ax2.semilogy(e, bound, "--", color=COLORS[label], label=f"bound ({label})")
    ax2.set_xlabel("epoch (n single-sample steps)")
    ax2.set_ylabel("‖x − x*‖²")
    ax2.set_title("SGD, constant step 1/(2 sup L_i) (IS: 1/(2 mean L_i))", fontsize=9)
    ax2.legend(fontsize=7)
    _save(fig, path)


def plot_lasso(pb, det, bounds, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    k, ista_b, fista_b = bounds
    ax.loglog(k, det["ISTA"][1:], color=COLORS["ISTA"], label="ISTA")
    ax.loglog(k, ista_b, "--", color=COLORS["ISTA"], label="L‖x0−x*‖²/(2k)")
    ax.loglog(k, det["FISTA"][1:], color=COLORS["FISTA"], label="FISTA")
    ax.loglog(k, fista_b, "--", color=COLORS["FISTA"], label="2L‖x0−x*‖²/(k+1)²")
    ax.set_ylim(FLOOR, None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("F(x_k) - F*")
    nnz = int(np.count_nonzero(pb["xs"]))
    ax.set_title(f"LASSO: {nnz}/{pb['xs'].size} nonzeros, KKT residual {pb['kkt']:.1e}", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


# ----------------------------------------------------------------------------- saddle
def saddle_f(x):
    return 0.5 * x[0] ** 2 + 0.25 * x[1] ** 4 - 0.5 * x[1] ** 2


def saddle_grad(x):
    return np.array([x[0], x[1] ** 3 - x[1]])


def run_saddle(iters=300, seed=0):
    out = {}
    for name, kw in (("GD", {}), ("perturbed GD", dict(g_thres=1e-3, radius=1e-2, t_thres=20,
                                                     seed=seed))):
        p = {"x": np.array([1.0, 0.0])}
        opt = optim.create("gd" if name == "GD" else "perturbed_gd", p, lr=0.1, **kw)
        traj = [p["x"].copy()]
        for _ in range(iters):
            opt.step({"x": saddle_grad(p["x"])})
            traj.append(p["x"].copy())
        out[name] = np.array(traj)
        if name != "GD":
            out["perturbations"] = opt.perturbations
    escaped = np.nonzero(np.abs(out["perturbed GD"][:, 1]) > 0.5)[0]
    out["escape_iter"] = int(escaped[0]) if escaped.size else None
    near = np.nonzero(np.linalg.norm(out["GD"], axis=1) < 1e-3)[0]     # when GD reached the saddle
    out["gd_at_saddle_iter"] = int(near[0]) if near.size else None
    return out


def escape_vs_dimension(dims, seeds, lr=0.1, radius=1e-2, max_iter=5000):
    """Median iterations from the first perturbation to |y| > 1/2 for the saddle embedded in d
    dimensions, f = 1/2 sum_{i<d-1} x_i^2 + y^4/4 - y^2/2 (one negative-curvature direction,
    start x_i = 1, y = 0). Prediction: the noise puts ~radius/sqrt(d) on y, which grows by
    (1 + lr) per step, so escape ~ const + ln(d) / (2 ln(1 + lr)): logarithmic in d."""
    med = []
    for d in dims:
        times = []
        for seed in seeds:
            p = {"x": np.zeros(d)}
            p["x"][:-1] = 1.0
            opt = optim.create("perturbed_gd", p, lr=lr, g_thres=1e-3, radius=radius, t_thres=20,
                               seed=seed)
            first = None
            for t in range(max_iter):
                g = p["x"].copy()
                g[-1] = p["x"][-1] ** 3 - p["x"][-1]
                opt.step({"x": g})
                if first is None and opt.perturbations:
                    first = t
                if abs(p["x"][-1]) > 0.5:
                    times.append(t - first)
                    break
            else:
                times.append(np.inf)
        med.append(float(np.median(times)))
    slope = 1.0 / (2.0 * math.log(1.0 + lr))
    return np.array(dims), np.array(med), slope


def plot_saddle(res, path):
    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
    xx, yy = np.meshgrid(np.linspace(-1.2, 1.2, 200), np.linspace(-1.5, 1.5, 200))
    ax1.contour(xx, yy, saddle_f(np.array([xx, yy])), levels=30, linewidths=0.5, cmap="gray")
    for name, c in (("GD", "C0"), ("perturbed GD", "C3")):
        t = res[name]
        ax1.plot(t[:, 0], t[:, 1], ".-", ms=2, lw=1, color=c, label=name)
        ax2.plot([saddle_f(x) for x in t], color=c, label=name)
    ax1.plot([0], [0], "kx", label="strict saddle (0,0)")
    ax1.plot([0, 0], [-1, 1], "k*", label="minima (0,±1)")
    ax1.set_title("f = x²/2 + y⁴/4 − y²/2, start (1, 0)", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.axhline(0, color="k", lw=0.5, ls=":")
    ax2.axhline(-0.25, color="k", lw=0.5, ls="--")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("f")
    ax2.set_title(f"GD stalls at f = 0; PGD escapes (iter. {res['escape_iter']}) to f* = −1/4",
                  fontsize=9)
    ax2.legend(fontsize=7)
    dims, med, slope = res["dims"], res["escape_median"], res["slope"]
    ax3.semilogx(dims, med, "o-", color="C3", label="PGD, median over seeds")
    ax3.semilogx(dims, med[0] + slope * np.log(dims / dims[0]), "k--",
                 label="ln(d)/(2 ln(1+η)) prediction")
    ax3.set_xlabel("dimension d (one negative-curvature direction)")
    ax3.set_ylabel("iterations to escape")
    ax3.set_title("escape time grows like log d", fontsize=9)
    ax3.legend(fontsize=7)
    _save(fig, path)


# ----------------------------------------------------------------------------- stability
def gd_diverges(h, lr, steps, x0):
    """GD (the library's) on f(e) = 1/2 e^T H e from x0: does ||e|| end above where it started?"""
    p = {"x": x0.copy()}
    opt = optim.create("gd", p, lr=lr)
    for _ in range(steps):
        opt.step({"x": h @ p["x"]})
        if np.linalg.norm(p["x"]) > 1e6 * np.linalg.norm(x0):
            return True
    return bool(np.linalg.norm(p["x"]) > np.linalg.norm(x0))


def gd_threshold(h, steps, rng, iters=30):
    """The largest stable lr of GD, measured by bisection on [0, 4/L]."""
    x0 = rng.standard_normal(len(h))
    lo, hi = 0.0, 4.0 / np.linalg.eigvalsh(h).max()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if gd_diverges(h, mid, steps, x0) else (mid, hi)
    return lo


def make_interpolation(n, d, rng):
    """Over-parameterized least squares (d > n, b = A x_true): every f_i = (a_i^T x - b_i)^2/2 is
    zero at the minimum, so SGD's noise vanishes there and only its stability matters. Rows have
    unequal norms (non-uniform per-sample curvature). Returned in the n-dim row space of A (the
    error never moves in the null space): per-sample Hessians H_i = q_i q_i^T, q_i = Q^T a_i."""
    a = rng.standard_normal((n, d)) * np.exp(rng.normal(0.0, 0.5, n))[:, None]
    q = np.linalg.qr(a.T)[0]                      # d x n, orthonormal basis of the row space
    rows = a @ q
    hi = np.einsum("ij,ik->ijk", rows, rows)
    return {"rows": rows, "Hi": hi, "H": hi.mean(axis=0)}


def sgd_mean_square_threshold(pb, batch, iters=50):
    """Largest lr with E[e e^T] not growing, for SGD with batches of B drawn without replacement:
    E[e e^T] <- T(E[e e^T]) with T = I - lr (I(x)H + H(x)I) + lr^2 ((1-c) H(x)H + c mean_i H_i(x)H_i),
    c = (n-B)/(B(n-1)) (the sampling-without-replacement variance factor); stable iff rho(T) <= 1.
    Exact for this linear problem; in 1-D it is Wu, Ma & E's (1 - lr a)^2 + lr^2 s^2 c <= 1."""
    h, hi = pb["H"], pb["Hi"]
    n, k = hi.shape[0], len(h)
    c = (n - batch) / (batch * (n - 1))
    eye = np.eye(k)
    first = np.kron(eye, h) + np.kron(h, eye)
    second = (1 - c) * np.kron(h, h) + c * np.mean([np.kron(m, m) for m in hi], axis=0)

    def stable(lr):
        # T is symmetric (every term is a Kronecker product of symmetric matrices)
        return np.abs(np.linalg.eigvalsh(np.eye(k * k) - lr * first + lr ** 2 * second)).max() <= 1 + 1e-12
    lo, hi_lr = 0.0, 4.0 / np.linalg.eigvalsh(h).max()
    for _ in range(iters):
        mid = 0.5 * (lo + hi_lr)
        lo, hi_lr = (mid, hi_lr) if stable(mid) else (lo, mid)
    return lo


def wu_ma_e_threshold(pb, batch):
    """The one-dimensional condition (1 - lr a)^2 + lr^2 s^2 c <= 1 with the sharpness
    a = lambda_max(H) and non-uniformity s^2 = lambda_max(mean H_i^2 - H^2) (Wu, Ma, E, NeurIPS
    2018): lr <= 2a / (a^2 + c s^2). In d > 1 a and s come from different directions, so this is a
    reading of their condition, not a bound we derived."""
    h, hi = pb["H"], pb["Hi"]
    n = hi.shape[0]
    c = (n - batch) / (batch * (n - 1))
    a = np.linalg.eigvalsh(h).max()
    s2 = max(np.linalg.eigvalsh(np.mean(hi @ hi, axis=0) - h @ h).max(), 0.0)
    return 2 * a / (a * a + c * s2)


def sgd_measured_threshold(pb, batch, steps, seeds, grid=240):
    """Largest lr on a grid over (0, 4/L] at which SGD's ||x_k - x*|| has not grown after `steps`
    steps (mean of log-growth over the seeds), lower grid points all stable too. All lrs of one
    seed run at once on the same batches (one column each)."""
    rows = pb["rows"]
    n, k = rows.shape
    top = 4.0 / np.linalg.eigvalsh(pb["H"]).max()
    lrs = np.linspace(top / grid, top, grid)
    growth = np.zeros(grid)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        e0 = rng.standard_normal((k, 1))
        e = np.repeat(e0 / np.linalg.norm(e0), grid, axis=1)     # ||e_0|| = 1
        log_scale = np.zeros(grid)
        for _ in range(steps):
            idx = rng.choice(n, batch, replace=False)
            r = rows[idx]
            e = e - lrs * (r.T @ (r @ e)) / batch
            norm = np.linalg.norm(e, axis=0)
            norm = np.where(np.isfinite(norm) & (norm > 0), norm, 1.0)
            log_scale += np.log(norm)               # renormalised: log ||e_k|| without overflow
            e = e / norm
        growth += log_scale / len(seeds)
    bad = np.nonzero(growth > 0)[0]
    last = (bad[0] - 1) if bad.size else grid - 1
    return float(lrs[last]) if last >= 0 else 0.0


def stability(ls_size, gd_steps, sgd_size, sgd_steps, sgd_seeds, rng):
    """GD's measured threshold on the least-squares Hessian against 2/L (and a scan of lr around
    it for the figure); SGD's measured largest stable lr for B = 1, 2, 4, ..., n beside the
    mean-square prediction and Wu, Ma & E's one-dimensional form."""
    h = make_least_squares(*ls_size, rng)["a"]
    h = h.T @ h / ls_size[0]
    big = np.linalg.eigvalsh(h).max()
    measured = gd_threshold(h, gd_steps, rng)
    x0 = rng.standard_normal(len(h))
    scan = np.linspace(0.9, 1.1, 21) * 2 / big
    final = []
    for lr in scan:
        p = {"x": x0.copy()}
        opt = optim.create("gd", p, lr=lr)
        for _ in range(gd_steps):
            opt.step({"x": h @ p["x"]})
        final.append(np.linalg.norm(p["x"]) / np.linalg.norm(x0))
    pb = make_interpolation(*sgd_size, rng)
    n = sgd_size[0]
    batches = [2 ** i for i in range(int(math.log2(n)) + 1)]
    return {"gd_L": float(big), "gd_measured": float(measured), "gd_steps": gd_steps,
            "gd_scan": (scan, np.array(final)),
            "sgd_n": n, "sgd_d": sgd_size[1], "sgd_a": float(np.linalg.eigvalsh(pb["H"]).max()),
            "batches": batches,
            "sgd_measured": [sgd_measured_threshold(pb, b, sgd_steps, range(sgd_seeds)) for b in batches],
            "sgd_mean_square": [sgd_mean_square_threshold(pb, b) for b in batches],
            "sgd_wu_ma_e": [wu_ma_e_threshold(pb, b) for b in batches]}


def plot_stability(res, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    lrs, final = res["gd_scan"]
    ax1.semilogy(lrs * res["gd_L"] / 2, final, "o-", ms=3, color="C0", label="‖x_K − x*‖ / ‖x_0 − x*‖")
    ax1.axvline(res["gd_measured"] * res["gd_L"] / 2, color="C3", label="bisection threshold")
    ax1.axvline(1.0, color="k", ls="--", label="η = 2/L")
    ax1.set_xlabel("η L / 2")
    ax1.set_title(f"GD on least squares, K = {res['gd_steps']} steps: "
                  f"measured/(2/L) = {res['gd_measured'] * res['gd_L'] / 2:.4f}", fontsize=9)
    ax1.legend(fontsize=7)
    b = np.array(res["batches"])
    ax2.semilogx(b, res["sgd_measured"], "o-", color="C3", label="measured (‖x−x*‖ does not grow)", base=2)
    ax2.semilogx(b, res["sgd_mean_square"], "s--", color="C0", label="mean-square stability ρ(T) ≤ 1", base=2)
    ax2.semilogx(b, res["sgd_wu_ma_e"], "^:", color="C2", label="(1−ηa)² + η²s²(n−B)/(B(n−1)) ≤ 1", base=2)
    ax2.axhline(2 / res["sgd_a"], color="k", ls="--", lw=0.8, label="2/a (GD)")
    ax2.set_xlabel("batch size B (without replacement)")
    ax2.set_ylabel("largest stable η")
    ax2.set_title(f"SGD at an interpolating minimum (n = {res['sgd_n']}, d = {res['sgd_d']})", fontsize=9)
    ax2.legend(fontsize=7)
    _save(fig, path)


# ----------------------------------------------------------------------------- the lab
# (least squares (n, d), logistic (n, d), LASSO (n, d), iterations, SGD epochs, saddle dims, seeds)
# stability panel: GD steps per bisection probe; SGD's interpolation problem (n, d), steps, seeds
STABILITY = {"full": (2000, (16, 40), 1000, 4), "quick": (800, (8, 20), 800, 3)}
SIZES = {"full": ((400, 30), (600, 20), (120, 300), 600, 20, [2, 8, 32, 128, 512, 2048, 8192], 10),
         "quick": ((120, 10), (150, 8), (40, 80), 150, 8, [2, 64, 2048], 5)}


def lab(quick=False, seed=0, out=None):
    """Run every problem; returns the summary the table is made of. With `out`, draws the PNGs
    there (convex_least_squares, convex_logistic_regression, convex_lasso, convex_saddle,
    convex_stability)."""
    t0 = time.perf_counter()
    ls_size, lg_size, lasso_size, iters, epochs, dims, n_seeds = SIZES["quick" if quick else "full"]
    rng = np.random.default_rng(seed)
    summary = {}

    def stage(what):
        print(f"[{time.perf_counter() - t0:5.1f} s] {what}", flush=True)

    for make, size in ((make_least_squares, ls_size), (lambda n, d, r: make_logistic(n, d, 1e-2, r), lg_size)):
        pb = make(*size, rng)
        stage(f"{pb['name']} (n={size[0]}, d={size[1]}): GD and Nesterov, {iters} iterations; "
              f"SGD three ways, {epochs} epochs")
        det = {"GD": run_deterministic(pb, "gd", iters, lr=1 / pb["L"]),
               "Nesterov": run_deterministic(pb, "agd", iters, lr=1 / pb["L"],
                                             momentum=strongly_convex_momentum(pb)),
               "Anderson": run_deterministic(pb, "anderson", iters, lr=1 / pb["L"],
                                             history_size=ANDERSON_M)}
        sgd = {kind: run_sgd(pb, kind, epochs, seed=seed)
               for kind in ("replacement", "reshuffle", "importance")}
        gd_b, nest_b = strongly_convex_bounds(pb, iters)
        key = pb["name"].replace(" ", "_")
        summary[key] = {
            "n": size[0], "d": size[1], "kappa": pb["L"] / pb["mu"],
            "gd_below_bound": bool(np.all(det["GD"] <= np.maximum(gd_b, FLOOR) * (1 + 1e-9))),
            "nesterov_below_bound": bool(np.all(det["Nesterov"] <= np.maximum(nest_b, FLOOR) * (1 + 1e-9))),
            "gd_final": float(det["GD"][-1]), "nesterov_final": float(det["Nesterov"][-1]),
            "anderson_final": float(det["Anderson"][-1]),
            "anderson_iters_to_floor": int(np.argmax(det["Anderson"] <= 1e-12)) if
            (det["Anderson"] <= 1e-12).any() else None,
            "gd_bound_final": float(gd_b[-1]), "nesterov_bound_final": float(nest_b[-1]),
            **{f"sgd_{k}_final": float(v[0][-1]) for k, v in sgd.items()},
            **{f"sgd_{k}_bound_final": float(v[1][-1]) for k, v in sgd.items()},
        }
        if out is not None:
            path = os.path.join(out, f"convex_{key}.png")
            plot_smooth(pb, det, sgd, (gd_b, nest_b), path, iters, epochs)
            summary[key]["png"] = path

    stage(f"LASSO (n={lasso_size[0]}, d={lasso_size[1]}): solving to optimality, then ISTA and FISTA, "
          f"{iters} iterations")
    pb = make_lasso(*lasso_size, rng)
    det = {"ISTA": run_deterministic(pb, "ista", iters, lr=1 / pb["L"], prox=L1(pb["lam"])),
           "FISTA": run_deterministic(pb, "fista", iters, lr=1 / pb["L"], prox=L1(pb["lam"]))}
    bounds = lasso_bounds(pb, iters)
    summary["lasso"] = {
        "n": lasso_size[0], "kkt_residual": pb["kkt"], "nnz": int(np.count_nonzero(pb["xs"])), "d": pb["xs"].size,
        "ista_below_bound": bool(np.all(det["ISTA"][1:] <= bounds[1] + 1e-12)),
        "fista_below_bound": bool(np.all(det["FISTA"][1:] <= bounds[2] + 1e-12)),
        "ista_final": float(det["ISTA"][-1]), "fista_final": float(det["FISTA"][-1]),
        "ista_bound_final": float(bounds[1][-1]), "fista_bound_final": float(bounds[2][-1]),
    }
    if out is not None:
        path = os.path.join(out, "convex_lasso.png")
        plot_lasso(pb, det, bounds, path)
        summary["lasso"]["png"] = path

    stage(f"strict saddle: GD and perturbed GD; escape time for d = {', '.join(map(str, dims))}, "
          f"{n_seeds} seeds each")
    res = run_saddle()
    res["dims"], res["escape_median"], res["slope"] = escape_vs_dimension(dims, range(n_seeds))
    summary["saddle"] = {"gd_final": res["GD"][-1].tolist(), "pgd_final": res["perturbed GD"][-1].tolist(),
                         "perturbations": res["perturbations"], "escape_iter": res["escape_iter"],
                         "gd_at_saddle_iter": res["gd_at_saddle_iter"],
                         "escape_median_by_d": dict(zip(map(int, res["dims"]), res["escape_median"])),
                         "escape_predicted_slope_per_ln_d": res["slope"]}
    if out is not None:
        path = os.path.join(out, "convex_saddle.png")
        plot_saddle(res, path)
        summary["saddle"]["png"] = path
    gd_steps, (sn, sd), sgd_steps, sgd_seeds = STABILITY["quick" if quick else "full"]
    stage(f"stability: GD's largest stable lr by bisection ({gd_steps} steps a probe); SGD's against "
          f"batch size at an interpolating minimum (n={sn}, d={sd})")
    res = stability(ls_size, gd_steps, (sn, sd), sgd_steps, sgd_seeds, rng)
    summary["stability"] = {k: v for k, v in res.items() if k != "gd_scan"}
    if out is not None:
        path = os.path.join(out, "convex_stability.png")
        plot_stability(res, path)
        summary["stability"]["png"] = path
    summary["seconds"] = time.perf_counter() - t0
    stage("done")
    return summary


def _value(v):
    """A suboptimality or bound for the table; the curves are clipped at FLOOR (float64 rounding)."""
    return f"≤ {FLOOR:.0e}" if v <= FLOOR else f"{v:.3g}"


def _point(p):
    return f"({p[0]:.2g}, {p[1]:.2g})"


def results_table(s) -> str:
    """The summary as markdown: each method's last value against its bound there, and the saddle."""
    def below(ok, scope):
        return f"yes ({scope})" if ok else f"**no** ({scope})"

    rows = ["| problem | method | quantity | value | bound there | below the bound |",
            "|---|---|---|---:|---:|---|"]
    for key in ("least_squares", "logistic_regression"):
        r = s[key]
        label = f"{key.replace('_', ' ')} (n={r['n']}, d={r['d']}, κ={r['kappa']:.0f})"
        for method, name in (("gd", "GD"), ("nesterov", "Nesterov")):
            rows.append(f"| {label} | {name}, lr 1/L | f − f* | {_value(r[f'{method}_final'])} | "
                        f"{_value(r[f'{method}_bound_final'])} | "
                        f"{below(r[f'{method}_below_bound'], 'every iteration')} |")
            label = ""
        at = r["anderson_iters_to_floor"]
        rows.append(f"| | Anderson (m={ANDERSON_M}), lr 1/L | f − f* | {_value(r['anderson_final'])} | — | "
                    f"no rate bound; below 1e-12 {f'at iteration {at}' if at is not None else 'never'} |")
        for kind, name in (("replacement", "with replacement"), ("reshuffle", "random reshuffling"),
                           ("importance", "importance sampling")):
            final = r[f"sgd_{kind}_final"]
            if kind == "reshuffle":     # the theorem covers independent sampling only
                bound, verdict = "—", "no theorem here"
            else:
                bound = _value(r[f"sgd_{kind}_bound_final"])
                verdict = below(final <= r[f"sgd_{kind}_bound_final"], "last epoch; the bound is on the mean")
            rows.append(f"| | SGD, {name} | ‖x − x*‖² | {_value(final)} | {bound} | {verdict} |")
    r = s["lasso"]
    label = f"LASSO (n={r['n']}, d={r['d']}, {r['nnz']} nonzeros, KKT residual {r['kkt_residual']:.1e})"
    for method, name in (("ista", "ISTA"), ("fista", "FISTA")):
        rows.append(f"| {label} | {name}, lr 1/L | F − F* | {_value(r[f'{method}_final'])} | "
                    f"{_value(r[f'{method}_bound_final'])} | {below(r[f'{method}_below_bound'], 'every iteration')} |")
        label = ""

    sad = s["saddle"]
    gd_at, esc = sad["gd_at_saddle_iter"], sad["escape_iter"]
    gd_did = (f"reaches the saddle (‖x‖ < 1e-3) at iteration {gd_at}" if gd_at is not None
              else "never comes within 1e-3 of the saddle")
    pgd_did = f"escapes (\\|y\\| > 1/2) at iteration {esc}" if esc is not None else "does not escape"
    saddle = ["| f = x²/2 + y⁴/4 − y²/2 from (1, 0), lr 0.1 | result |", "|---|---|",
              f"| GD | {gd_did}; ends at {_point(sad['gd_final'])} |",
              f"| perturbed GD | {pgd_did} after {sad['perturbations']} perturbations; "
              f"ends at {_point(sad['pgd_final'])} |"]
    by_d = sad["escape_median_by_d"]
    d0 = min(by_d)
    slope = sad["escape_predicted_slope_per_ln_d"]
    escape = [f"| d | median iterations to escape | predicted: median at d={d0} + ln(d/{d0}) / (2 ln 1.1) |",
              "|---:|---:|---:|"]
    escape += [f"| {d} | {m:g} | {by_d[d0] + slope * math.log(d / d0):.1f} |" for d, m in by_d.items()]
    st_ = s["stability"]
    ratio = st_["gd_measured"] * st_["gd_L"] / 2
    stab = ["| stability | B | measured largest stable η | mean-square prediction | "
            "Wu–Ma–E 1-D form | 2/a |", "|---|---:|---:|---:|---:|---:|",
            f"| GD on least squares (bisection, {st_['gd_steps']} steps a probe) | all | "
            f"{st_['gd_measured']:.5g} | — | — | {2 / st_['gd_L']:.5g} (ratio {ratio:.4f}) |"]
    label = f"SGD at an interpolating minimum (n={st_['sgd_n']}, d={st_['sgd_d']})"
    for b, m, ms, w in zip(st_["batches"], st_["sgd_measured"], st_["sgd_mean_square"], st_["sgd_wu_ma_e"]):
        stab.append(f"| {label} | {b} | {m:.4g} | {ms:.4g} | {w:.4g} | {2 / st_['sgd_a']:.4g} |")
        label = ""
    return "\n".join(rows + [""] + saddle + [""] + escape + [""] + stab)


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="convex_lab.py", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller problems and fewer iterations (~4 s)")
    ap.add_argument("--out", default=os.path.join("out", "convex_lab"),
                    help="directory for the convex_*.png figures and convex_lab_results.md")
    ap.add_argument("--seed", type=cli.seed, default=0, help="seed of the problems and the samplers, >= 0")
    return ap


def run(args) -> dict:
    """The lab as the parsed arguments say; prints and writes the table, returns the summary."""
    cli.check_out_dir(args.out)
    summary = lab(quick=args.quick, seed=args.seed, out=args.out)
    table = results_table(summary)
    head = (f"Convex lab, {'quick' if args.quick else 'full'} sizes, seed {args.seed} "
            f"({summary['seconds']:.1f} s). Value: the last iterate's; bound there: the theoretical "
            f"line (dashed in the figures) at the same iteration.")
    print(f"\n{head}\n\n{table}\n")
    with open(os.path.join(args.out, "convex_lab_results.md"), "w", encoding="utf-8") as f:
        f.write(f"{head}\n\n{table}\n")
    print(f"wrote convex_least_squares.png, convex_logistic_regression.png, convex_lasso.png, "
          f"convex_saddle.png, convex_stability.png and convex_lab_results.md in {args.out}/")
    return summary


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
