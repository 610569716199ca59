"""Distributed optimization, measured (Lecture 10): gossip over graphs, decentralized SGD and
gradient tracking, gradient compression with error feedback, data-parallel GPT training and Local
SGD -- the same code on simulated workers and on ``mpiexec`` ranks.

    .venv/bin/python demos/distributed.py                      # every part, simulated workers (~5-8 min)
    .venv/bin/python demos/distributed.py --quick              # a smoke run of every part (~1 min)
    .venv/bin/python demos/distributed.py --part compression   # one part
    .venv/bin/python demos/distributed.py --preset tiny --steps 50 --workers 4   # GPT data parallel
    mpiexec -n 4 .venv/bin/python demos/distributed.py --preset tiny --steps 50  # the same, on 4 ranks:
                                                                                 # the same final loss

Parts (``--part``, default ``all``; giving a GPT flag -- ``--preset``, ``--steps``,
``--batch-size``, ``--lr`` or ``--dtype`` -- without ``--part`` selects ``gpt``):

    consensus      gossip alone (``optim.dist.topology``): the consensus error of every topology --
                   ring, 2-D torus, static and one-peer exponential graphs, complete, star --
                   against rho^k, rho = ||W - 11^T/n||_2, and the spectral gap 1 - rho against n
    heterogeneous  least squares with different data on every worker (``optim.dist.decentralized``):
                   the steady-state error of D-PSGD and adapt-then-combine by topology (the
                   heterogeneity bias grows as the gap shrinks) and gradient tracking, which
                   removes it
    compression    loss against bytes communicated (``optim.dist.compress``) for top-k, rand-k,
                   scaled sign, QSGD and PowerSGD, without error feedback, with EF14 and with EF21,
                   on heterogeneous least squares: top-k alone stalls, EF14 stops at a floor
                   proportional to the step size, EF21 reaches the optimum
    gpt            GPT data parallel (``models.training.distributed.train_gpt_data_parallel``):
                   one gradient all-reduce per step, on 1, 2 and 4 workers -- the same losses, and
                   the bytes each worker sends beside 2(n-1)/n * N * itemsize
    local-sgd      Local SGD (``optim.dist.local_sgd``): loss against communication rounds for
                   H = 1, 4 and 16 local steps between averages, with stochastic and full gradients

Workers: each part has its own default number of simulated workers (consensus and heterogeneous
16, compression and local-sgd 8, gpt 1, 2 and 4); ``--workers N`` runs every selected part on N.
Under ``mpiexec -n k`` the k ranks are the workers (through ``optim.dist.launcher.launch``) and
rank 0 prints and writes. A GPT run prints ``final loss <value>`` the same way on both.

Writes to ``--out``: ``distributed_<part>.png`` for each part run, ``distributed_results.md``
with the tables printed and ``distributed_gpt.json`` (the GPT runs' losses and bytes). Bad input
prints one line and exits with code 2, writing nothing. A Ctrl-C or SIGTERM to a rank stops the GPT
part's ranks at the same step (simulated workers too: ``SimComm`` passes the signal on to their
stop vote); the demo then says in one line where and exits with code 130, without the GPT part's
files and ``distributed_results.md``.

References: Lian et al. (2017), D-PSGD, arXiv 1705.09056; Chen & Sayed (2012), diffusion
(adapt-then-combine), arXiv 1111.0034; Nedic, Olshevsky, Shi (2017), DIGing, arXiv 1607.03218;
Ying et al. (2021), exponential graphs, arXiv 2110.13363; Alistarh et al. (2017), QSGD,
arXiv 1610.02132; Stich, Cordonnier, Jaggi (2018), sparsified SGD with memory, arXiv 1809.07599;
Karimireddy et al. (2019), error feedback, arXiv 1901.09847; Richtarik, Sokolov, Fatkhullin (2021),
EF21, arXiv 2106.05203; Vogels, Karimireddy, Jaggi (2019), PowerSGD, arXiv 1905.13727; Stich
(2019), Local SGD, arXiv 1805.09767.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings

if __name__ == "__main__":
    # one BLAS thread per worker: the GEMMs are small and the MPI ranks share the cores
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import minigrad  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.training import pyplot, save_figure  # noqa: E402
from models.training.distributed import train_gpt_data_parallel  # noqa: E402
from optim.dist.comm import ring_traffic  # noqa: E402
from optim.dist.compress import QSGD, Identity, PowerSGD, RandK, ScaledSign, TopK, loss_vs_bytes  # noqa: E402
from optim.dist.decentralized import ALGORITHMS, consensus_curve, heterogeneous_least_squares  # noqa: E402
from optim.dist.launcher import launch, mpi_world_size  # noqa: E402
from optim.dist.local_sgd import compare_local_steps  # noqa: E402
from optim.dist.topology import TOPOLOGIES, Topology, mixing_matrix, spectral_gap, torus_shape  # noqa: E402

PARTS = ("consensus", "heterogeneous", "compression", "gpt", "local-sgd")
GPT_FLAGS = ("preset", "steps", "batch_size", "lr", "dtype")
# the sizes of each part: (full run, --quick)
SIZES = {
    "consensus": {"workers": (16, 8), "rounds": (60, 20)},
    "heterogeneous": {"workers": (16, 8), "steps": (500, 200)},
    "compression": {"workers": (8, 4), "steps": (1000, 150)},
    "gpt": {"workers": ((1, 2, 4), (1, 2))},
    "local-sgd": {"workers": (8, 8), "steps": (480, 96)},
}
QUICK = {"steps": 5, "batch_size": 8, "max_chars": 200_000}
FULL = {"steps": 100, "batch_size": None, "max_chars": None}
# lr 6e-3 (train_gpt's for tiny) spikes the loss to ~6 at the end of the 10-step warmup of a short run
GPT_DEFAULTS = {"preset": "tiny", "lr": 3e-3, "dtype": "float32"}
COLORS = {"ring": "tab:blue", "torus": "tab:orange", "exponential": "tab:green",
          "one-peer-exponential": "tab:red", "complete": "black", "star": "tab:purple"}
ALGORITHM_NAMES = {"dpsgd": "D-PSGD", "atc": "ATC", "gradient-tracking": "gradient tracking"}
HETEROGENEOUS_LR = 0.05          # the local SGD step of the decentralized runs
COMPRESSION_SHAPE = (50, 4)      # each worker's parameter: a matrix, so PowerSGD has one to factor
COMPRESSION_RATIO = 0.05         # top-k / rand-k keep 5% of the coordinates
COMPRESSION_LR = 0.5             # gamma * L of the compression runs (EF14 also at gamma/2, gamma/4)
LOCAL_H = (1, 4, 16)


def _mpi_rank() -> int:
    """This process's rank under mpiexec (0 without it), from the launcher's environment."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class Report:
    """What rank 0 prints and writes: progress lines, the figures, the markdown tables."""

    def __init__(self, out: str, lead: bool):
        self.out, self.lead = out, lead
        self.sections: list[str] = []
        self.written: list[str] = []      # the files the lead wrote so far: what a stopped run keeps

    def say(self, text: str) -> None:
        if self.lead:
            print(text, flush=True)

    def figure(self, fig, name: str) -> None:
        if self.lead:
            save_figure(fig, os.path.join(self.out, name), dpi=80)
        else:
            pyplot().close(fig)
        self.written.append(name)     # on every rank, so that each rank's stop message is the same

    def json(self, record: dict, name: str) -> None:
        if self.lead:
            with open(os.path.join(self.out, name), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)

    def section(self, text: str) -> None:
        self.sections.append(text)
        self.say("\n" + text)


def _size(part: str, key: str, a):
    return SIZES[part][key][1 if a.quick else 0]


def _sci(x: float) -> str:
    return "diverged" if not np.isfinite(x) or x > 1e6 else f"{x:.2e}"


# ============================================================================= consensus
def _gap_formula(name: str, n: int, rel) -> str:
    if name == "ring" and n >= 3:
        return f"(2/3)(1 - cos 2π/n) = {(2 / 3) * (1 - math.cos(2 * math.pi / n)):.4f}"
    if name == "torus" and min(torus_shape(n)) >= 3:
        # weights 1/5: W's eigenvalues are (1 + 2 cos(2πa/r) + 2 cos(2πb/c))/5, (a, b) = (0, 0) the average's
        r, c = torus_shape(n)
        a, b = np.cos(2 * np.pi * np.arange(r) / r), np.cos(2 * np.pi * np.arange(c) / c)
        waves = (1 + 2 * a[:, None] + 2 * b[None, :]) / 5
        waves[0, 0] = 0
        return f"1 - max over (a, b) ≠ 0 of abs(1 + 2cos 2πa/{r} + 2cos 2πb/{c})/5 = {1 - np.abs(waves).max():.4f}"
    if name == "exponential" and n & (n - 1) == 0 and n > 1:
        return f"2/(1 + log2 n) = {2 / (1 + math.log2(n)):.4f}"
    if name == "star" and n >= 3:
        return f"1/n = {1 / n:.4f}"
    if name == "complete":
        return "1"
    if name == "one-peer-exponential" and n & (n - 1) == 0 and n > 1:
        tau = int(math.log2(n))
        return f"exact after log2 n = {tau} rounds (measured error then: {rel[tau]:.0e})" if tau < len(rel) else ""
    return ""


def _topologies(n: int) -> tuple[list, list]:
    """(the topologies defined on n workers, the names that are not, with why)."""
    built, skipped = [], []
    for name in TOPOLOGIES:
        try:
            built.append(Topology(name, n))
        except ValueError as e:
            skipped.append(f"{name}: {e}")
    return built, skipped


def consensus_part(a, n: int, report: Report) -> dict:
    rounds, dim = _size("consensus", "rounds", a), 16
    topologies, skipped = _topologies(n)
    rows = {}
    for topo in topologies:
        start = time.perf_counter()
        errors = launch(consensus_curve, topo, rounds, dim=dim, seed=a.seed, workers=n)[0]
        rel = errors / errors[0]
        rho = topo.rate()
        # rho bounds a whole period of a time-varying graph (one round: only error_k <= error_0)
        ends = np.arange(0, rounds + 1, topo.period)
        bound_holds = bool(np.all(rel[ends] <= rho ** (2 * ends) * (1 + 1e-9) + 1e-28) and np.all(rel <= 1 + 1e-12))
        # measured rho: from the last period end still above the rounding noise of an exact average
        above = ends[(ends > 0) & (rel[ends] > 1e-24)]
        measured = rel[above[-1]] ** (1 / (2 * above[-1])) if above.size else None
        degree = max(len(topo.neighbors(r, t).dests) for r in range(n) for t in range(topo.period))
        reached = np.flatnonzero(rel <= 1e-6)
        rows[topo.name] = {"rel": rel, "rho": rho, "gap": 1 - rho, "measured_rho": measured,
                           "bound_holds": bound_holds,
                           "rounds_to_1e-6": int(reached[0]) if reached.size else None, "degree": degree,
                           "period": topo.period, "bytes_per_round": degree * dim * 8}
        report.say(f"[distributed] consensus, {topo.name} on {n} workers: 1 - rho = {1 - rho:.4f}, "
                   f"error after {rounds} rounds {rel[-1]:.2e} of the start ({time.perf_counter() - start:.1f} s)")

    sizes = [4, 8, 16, 32, 64, 128, 256]
    gaps = {name: [spectral_gap(mixing_matrix(name, m)) for m in sizes]
            for name in ("ring", "torus", "exponential", "star")}
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12.5, 4.6))
    ks = np.arange(rounds + 1)
    for name, r in rows.items():
        c = COLORS[name]
        ax[0].semilogy(ks, np.maximum(r["rel"], 1e-30), color=c, lw=1.8, label=f"{name} (1-ρ = {r['gap']:.3f})")
        if r["period"] == 1:
            ax[0].semilogy(ks, np.maximum(r["rho"] ** (2 * ks), 1e-30), color=c, ls=":", lw=1.2)
        else:
            ax[0].axvline(r["period"], color=c, ls=":", lw=1.2)
    ax[0].set_ylim(1e-30, 3)
    ax[0].set_xlabel("gossip round k")
    ax[0].set_ylabel("consensus error / its start  (mean_i ||x_i - x̄||²)")
    ax[0].set_title(f"{n} workers: measured (solid) against ρ^(2k) (dotted; one-peer: round log2 n)", fontsize=9)
    for name, g in gaps.items():
        ax[1].loglog(sizes, g, "o-", color=COLORS[name], label=name)
    ax[1].loglog(sizes, [(2 / 3) * (1 - math.cos(2 * math.pi / m)) for m in sizes], "k:", lw=1,
                 label="(2/3)(1 - cos 2π/n)")
    ax[1].loglog(sizes, [2 / (1 + math.log2(m)) for m in sizes], "k--", lw=1, label="2/(1 + log2 n)")
    ax[1].set_xlabel("workers n")
    ax[1].set_ylabel("spectral gap 1 - ρ")
    ax[1].set_title("the gap of each graph against n (complete: 1; one-peer: exact in log2 n rounds)", fontsize=9)
    for x in ax:
        x.grid(alpha=0.3, which="both")
        x.legend(fontsize=8)
    fig.tight_layout()
    report.figure(fig, "distributed_consensus.png")

    lines = [f"## Consensus: gossip alone on {n} workers", "",
             f"x_i ~ N(0, I_{dim}) on each worker, then x_i <- sum_j W_ij x_j for {rounds} rounds. ρ is "
             f"||W - 11ᵀ/n||₂ (for the one-peer graph: per round, over its period of log2 n matrices); the "
             f"error is mean_i ||x_i - x̄||², which shrinks at least by ρ² per round (per period: ρ^(2·period)). "
             f"Measured ρ: (error_k / error_0)^(1/2k) at the last round k (a period end) above 1e-24; "
             f"exact: the error is rounding noise from the first period end on.", "",
             "| topology | messages per round (most of any worker) | 1 - ρ | formula | measured ρ | ρ | "
             "error ≤ ρ^(2k) at every round | rounds to 1e-6 |",
             "|---|---:|---:|---|---:|---:|---|---:|"]
    for name, r in rows.items():
        measured = "exact" if r["measured_rho"] is None else f"{r['measured_rho']:.4f}"
        lines.append(f"| {name} | {r['degree']} | {r['gap']:.4f} | {_gap_formula(name, n, r['rel'])} | {measured} | "
                     f"{r['rho']:.4f} | {'yes' if r['bound_holds'] else 'NO'} | "
                     f"{r['rounds_to_1e-6'] if r['rounds_to_1e-6'] is not None else f'> {rounds}'} |")
    lines += ["", "Spectral gap against n: " + "; ".join(
        f"{name} " + ", ".join(f"{g:.3g}" for g in gs) for name, gs in gaps.items()) + f" (n = {sizes})."]
    if skipped:
        lines += ["", "Not defined on this number of workers: " + "; ".join(skipped)]
    report.section("\n".join(lines) + "\n")
    return rows


# ============================================================================= heterogeneous
def heterogeneous_part(a, n: int, report: Report) -> dict:
    steps = _size("heterogeneous", "steps", a)
    topologies, skipped = _topologies(n)
    tail = max(1, steps // 10)
    rows = {}
    for topo in topologies:
        start = time.perf_counter()
        curves = {alg: launch(heterogeneous_least_squares, topo, alg, lr=HETEROGENEOUS_LR, steps=steps,
                              seed=a.seed, workers=n)[0] for alg in ALGORITHMS}
        floors = {alg: float(np.mean(c[-tail:])) for alg, c in curves.items()}
        # still converging, not at a floor: the last tenth well below the tenth before it (and above
        # the rounding noise of float64, where a tenth's mean wanders either way)
        falling = {alg: 1e-15 < floors[alg] < 0.9 * float(np.mean(c[-2 * tail:-tail])) for alg, c in curves.items()}
        rows[topo.name] = {"curves": curves, "floor": floors, "falling": falling, "rho": topo.rate(),
                           "period": topo.period}
        report.say(f"[distributed] heterogeneous, {topo.name} on {n} workers: steady-state error "
                   + ", ".join(f"{ALGORITHM_NAMES[k]} {v:.2e}" for k, v in floors.items())
                   + f" ({time.perf_counter() - start:.1f} s)")

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12.5, 4.6))
    for name, r in rows.items():
        c = COLORS[name]
        ax[0].semilogy(np.maximum(r["curves"]["dpsgd"], 1e-20), color=c, lw=1.6, label=f"{name}: D-PSGD")
        ax[0].semilogy(np.maximum(r["curves"]["gradient-tracking"], 1e-20), color=c, ls="--", lw=1.2,
                       label=f"{name}: gradient tracking")
    ax[0].set_ylim(1e-20, 3)
    ax[0].set_xlabel("iteration")
    ax[0].set_ylabel("mean_i ||x_i - x*||² / ||x*||²")
    ax[0].set_title(f"{n} workers, local SGD step lr = {HETEROGENEOUS_LR}, full local gradients", fontsize=9)
    ax[0].legend(fontsize=7, ncol=2)
    names = list(rows)
    width = 0.27
    for i, alg in enumerate(ALGORITHMS):
        ax[1].bar(np.arange(len(names)) + (i - 1) * width, [max(rows[m]["floor"][alg], 1e-20) for m in names],
                  width, label=ALGORITHM_NAMES[alg], color=("tab:blue", "tab:cyan", "tab:gray")[i])
    ax[1].set_yscale("log")
    ax[1].set_ylim(1e-20, 1e3)
    ax[1].set_xticks(np.arange(len(names)))
    ax[1].set_xticklabels([f"{m.replace('-exponential', ' exp.')}\n1-ρ = {1 - rows[m]['rho']:.2f}" for m in names],
                          fontsize=7)
    ax[1].set_ylabel(f"steady-state error (mean of the last {tail} iterations)")
    ax[1].set_title("the heterogeneity bias by topology; gradient tracking removes it", fontsize=9)
    ax[1].legend(fontsize=8, ncol=3, loc="upper center")
    for x in ax:
        x.grid(alpha=0.3, which="both")
    fig.tight_layout()
    report.figure(fig, "distributed_heterogeneous.png")

    lines = [f"## Heterogeneous least squares on {n} workers", "",
             f"`HeterogeneousLeastSquares({n}, 10, rows=40)` (optim.dist.problems): f(x) = mean_i "
             f"||A_i x - b_i||² / (2·40), each worker's b_i from its own minimizer (heterogeneity 1); full "
             f"local gradients (any error left is bias, not noise), x_i = 0 at the start, local SGD step "
             f"lr = {HETEROGENEOUS_LR}, {steps} iterations. Steady-state error: mean_i "
             f"||x_i - x*||² / ||x*||² averaged over the last {tail} iterations (1e-19 and below: machine "
             f"precision; falling: still converging, the last {tail} iterations' mean below 0.9 times the "
             f"{tail} before).", "",
             "| topology | 1 - ρ | D-PSGD | adapt-then-combine | gradient tracking |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        gap = f"{1 - r['rho']:.4f}" + (" (per round over the period)" if r["period"] > 1 else "")
        lines.append(f"| {name} | {gap} | " + " | ".join(_sci(r["floor"][alg]) + " (falling)" * r["falling"][alg]
                                                         for alg in ALGORITHMS) + " |")
    if skipped:
        lines += ["", "Not defined on this number of workers: " + "; ".join(skipped)]
    report.section("\n".join(lines) + "\n")
    return rows


# ============================================================================= compression
def compression_runs(ratio: float = COMPRESSION_RATIO, lr: float = COMPRESSION_LR) -> list:
    """(label, compressor, feedback, gamma·L, panel) of every compression run."""
    pct = f"{ratio:.0%}"
    top, rand = TopK(ratio=ratio), RandK(ratio=ratio, scaled=False)
    return [
        ("uncompressed", Identity(), None, lr, None),
        (f"top-{pct}", top, None, lr, "top-k"),
        (f"top-{pct} + EF14", top, "ef14", lr, "top-k"),
        (f"top-{pct} + EF21", top, "ef21", lr, "top-k"),
        (f"top-{pct} + EF14, γ/2", top, "ef14", lr / 2, "EF14 floor"),
        (f"top-{pct} + EF14, γ/4", top, "ef14", lr / 4, "EF14 floor"),
        # rand-k with a shared seed: the unscaled version moves k/d of the way, so it runs at
        # gamma·k/d like the scaled (unbiased) one; EF's contraction k/d needs that small a step too
        (f"rand-{pct} scaled d/k", RandK(ratio=ratio, scaled=True), None, lr * ratio, "rand-k"),
        (f"rand-{pct} + EF14", rand, "ef14", lr * ratio, "rand-k"),
        (f"rand-{pct} + EF21", rand, "ef21", lr * ratio, "rand-k"),
        ("sign", ScaledSign(), None, lr, "scaled sign"),
        ("sign + EF14", ScaledSign(), "ef14", lr, "scaled sign"),
        ("sign + EF21", ScaledSign(), "ef21", lr, "scaled sign"),
        ("QSGD s=4", QSGD(4), None, lr, "QSGD"),
        ("QSGD s=4 + EF21", QSGD(4), "ef21", lr, "QSGD"),
        ("PowerSGD r=1", PowerSGD(1), None, lr, "PowerSGD"),
        ("PowerSGD r=1 + EF14", PowerSGD(1), "ef14", lr, "PowerSGD"),
        ("PowerSGD r=1 + EF21", PowerSGD(1), "ef21", lr, "PowerSGD"),
    ]


def compression_part(a, n: int, report: Report) -> dict:
    steps = _size("compression", "steps", a)
    runs = compression_runs()
    tail = max(1, steps // 4)
    start = time.perf_counter()
    report.say(f"[distributed] compression: {len(runs)} runs of {steps} steps on {n} workers ...")
    with warnings.catch_warnings():
        # QSGD inside error feedback is meant to blow up (it is not contractive): its overflow
        # is the measurement, not a fault
        warnings.simplefilter("ignore", RuntimeWarning)
        results = loss_vs_bytes(workers=n, shape=COMPRESSION_SHAPE, steps=steps, seed=a.seed,
                                runs=[(label, c, fb, lr) for label, c, fb, lr, _ in runs])
    report.say(f"[distributed] compression done ({time.perf_counter() - start:.1f} s)")
    rows = {}
    for label, _, feedback, lr, panel in runs:
        r = results[label]
        err = r["error"]
        rows[label] = {"lr": lr, "panel": panel, "feedback": feedback, "bytes": r["bytes"], "error": err,
                       "bytes_per_step": float(r["bytes"][-1] / steps),
                       "floor": float(np.mean(err[-tail:])) if np.all(np.isfinite(err[-tail:])) else math.inf}

    plt = pyplot()
    panels = ["top-k", "rand-k", "scaled sign", "QSGD", "PowerSGD", "EF14 floor"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    base = rows["uncompressed"]
    styles = {None: "-", "ef14": "--", "ef21": ":"}
    for ax, panel in zip(axes.ravel(), panels):
        ax.loglog(base["bytes"], base["error"], color="0.6", lw=2.5, label="uncompressed")
        for i, (label, r) in enumerate((k, v) for k, v in rows.items() if v["panel"] == panel
                                        or (panel == "EF14 floor" and k == f"top-{COMPRESSION_RATIO:.0%} + EF14")):
            err = np.where(np.isfinite(r["error"]), r["error"], 1e300)
            ax.loglog(r["bytes"], np.clip(err, 1e-17, 1e3), ls=styles[r["feedback"]], lw=1.6,
                      color=f"C{i}", label=f"{label}  (γL = {r['lr']:g})")
        ax.set_ylim(1e-17, 1e3)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("bytes sent per worker")
        ax.set_ylabel("||W - W*|| / ||W*||")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"Gradient descent on heterogeneous least squares, {n} workers, W in R^{COMPRESSION_SHAPE}, "
                 f"{steps} steps; solid: no error feedback, dashed: EF14, dotted: EF21", fontsize=10)
    fig.tight_layout()
    report.figure(fig, "distributed_compression.png")

    dense = base["bytes_per_step"]
    lines = [f"## Compression: loss against bytes on {n} workers", "",
             f"`HeterogeneousLeastSquares({n}, {COMPRESSION_SHAPE})` (each worker its own minimizer), W in "
             f"R^{COMPRESSION_SHAPE[0]}x{COMPRESSION_SHAPE[1]}, float64, deterministic local gradients, "
             f"{steps} steps of gradient descent from W = 0 with step γ (given as γL, L the smoothness "
             f"constant). Bytes: what one worker put on the wire, counted by its communicator. Error: "
             f"||W - W*|| / ||W*||, averaged over the last {tail} steps.", "",
             "| run | γL | bytes per step per worker | of uncompressed | final error |",
             "|---|---:|---:|---:|---:|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['lr']:g} | {r['bytes_per_step']:,.0f} | {r['bytes_per_step'] / dense:.3f} | "
                     f"{_sci(r['floor'])} |")
    top = f"top-{COMPRESSION_RATIO:.0%}"
    lines += ["", "EF14's floor against the step size (top-k):", "",
              "| γL | no feedback | EF14 floor | EF14 floor / γL |", "|---:|---:|---:|---:|"]
    for label in (f"{top} + EF14", f"{top} + EF14, γ/2", f"{top} + EF14, γ/4"):
        r = rows[label]
        lines.append(f"| {r['lr']:g} | {'' if label != f'{top} + EF14' else _sci(rows[top]['floor'])} | "
                     f"{_sci(r['floor'])} | {r['floor'] / r['lr']:.3f} |")
    report.section("\n".join(lines) + "\n")
    return rows


# ============================================================================= GPT data parallel
def gpt_part(a, counts, data, report: Report, backend: str) -> dict:
    cfg, preset_batch = preset(a.preset, vocab_size=data.vocab_size)
    batch = a.batch_size or preset_batch
    dtype = np.dtype(a.dtype)
    n_params = GPT(cfg).num_parameters()
    runs = {}
    for n in counts:
        report.say(f"[distributed] gpt '{a.preset}' data parallel on {n} worker{'s' * (n > 1)} ({backend}), "
                   f"{a.steps} steps, global batch {batch} x {cfg.block_size} tokens, {dtype.name}")
        record = launch(train_gpt_data_parallel, data, preset=a.preset, steps=a.steps, batch_size=batch,
                        lr=a.lr, seed=a.seed, dtype=dtype, progress=not a.no_progress,
                        workers=n)[0]
        if record["interrupted"]:      # the same on every rank: they voted to stop at the same step
            kept = f"; kept {', '.join(report.written)}" if report.written else ""
            raise cli.Interrupted(f"interrupted in the gpt part on {n} worker{'s' * (n > 1)} at step "
                                  f"{len(record['train_loss'])} of {a.steps}; no distributed_gpt.json, "
                                  f"distributed_gpt.png or distributed_results.md written{kept}")
        runs[n] = record
        report.say(f"[distributed] gpt: {n} worker{'s' * (n > 1)}, {a.steps} steps, {record['seconds']:.1f} s")
        report.say(f"final loss {record['train_loss'][-1]:.6f}")

    report.json({"preset": a.preset, "steps": a.steps, "batch_size": batch, "dtype": dtype.name, "lr": a.lr,
                 "seed": a.seed, "backend": backend,
                 "runs": {str(n): {k: r[k] for k in ("train_loss", "val_step", "val_loss", "bytes_sent", "seconds")}
                          for n, r in runs.items()}}, "distributed_gpt.json")
    plt = pyplot()
    reference = runs.get(1)
    compare = reference is not None and len(runs) > 1
    fig, ax = plt.subplots(1, 2 if compare else 1, figsize=(12, 4.3) if compare else (6.5, 4.3), squeeze=False)
    ax = ax[0]
    for i, (n, r) in enumerate(runs.items()):
        ax[0].plot(np.arange(1, len(r["train_loss"]) + 1), r["train_loss"], color=f"C{i}", lw=3.2 - i,
                   ls=("-", "--", ":", "-.")[i % 4], label=f"{n} worker{'s' * (n > 1)}")
        if compare and n != 1:
            diff = np.abs(np.array(r["train_loss"]) - reference["train_loss"])
            ax[1].semilogy(np.arange(1, len(diff) + 1), np.maximum(diff, 1e-17), color=f"C{i}",
                           label=f"{n} workers")
    ax[0].set_ylabel("training loss of the global batch [nats/token]")
    if compare:
        ax[1].set_ylabel("abs(loss - 1 worker)  (1e-17: equal)")
    for x in ax:
        x.set_xlabel("step")
        x.grid(alpha=0.3)
        x.legend(fontsize=8)
    fig.suptitle(f"GPT '{a.preset}' ({n_params / 1e6:.2f} M parameters), {a.steps} steps x global batch {batch} "
                 f"x {cfg.block_size} tokens, {dtype.name}, AdamW lr {a.lr:g}, {backend}", fontsize=10)
    fig.tight_layout()
    report.figure(fig, "distributed_gpt.png")

    lines = [f"## GPT data parallel ({backend})", "",
             f"GPT `{a.preset}`: N = {n_params:,} parameters, {dtype.name} ({dtype.itemsize} bytes each); "
             f"global batch {batch} sequences of {cfg.block_size} tokens split over the workers; AdamW, "
             f"10 warmup steps then cosine decay to lr/10 (peak lr {a.lr:g}), clipping at norm 1, seed "
             f"{a.seed}. Bytes: what worker 0 sent per step (after the first, which also holds the initial "
             f"broadcast), beside the ring all-reduce's "
             f"2(n-1)/n · N · {dtype.itemsize} and the stop vote's one int64 (the ranks agree before "
             f"every step whether a Ctrl-C stops them). Wall time is the fit on worker 0 (the first run also "
             f"compiles the kernels)" + (": simulated workers take turns on one core, so it measures no "
                                         "speed-up." if backend == "simulated" else "."), "",
             "| workers | final loss | max over steps of abs(loss - 1 worker) | final val loss | "
             "bytes per step per worker | formula | wall time [s] |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in runs.items():
        per_step = np.diff(r["bytes_sent"])
        measured = int(per_step[-1]) if per_step.size else 0
        formula = ring_traffic(n_params, n, 0)[0] * dtype.itemsize + ring_traffic(1, n, 0)[0] * 8
        diff = (f"{np.max(np.abs(np.array(r['train_loss']) - reference['train_loss'])):.1e}"
                if reference is not None else "")
        lines.append(f"| {n} | {r['train_loss'][-1]:.6f} | {diff} | {r['val_loss'][-1]:.4f} | {measured:,} | "
                     f"{formula:,} | {r['seconds']:.1f} |")
    report.section("\n".join(lines) + "\n")
    return runs


# ============================================================================= Local SGD
def local_sgd_part(a, n: int, report: Report) -> dict:
    steps = _size("local-sgd", "steps", a)
    settings = {"stochastic gradients (batch 4 per worker)": 4, "full local gradients": None}
    results = {}
    start = time.perf_counter()
    for label, batch in settings.items():
        results[label] = launch(compare_local_steps, local_steps=LOCAL_H, steps=steps, batch_size=batch,
                                seed=a.seed, workers=n)[0]
    report.say(f"[distributed] local-sgd on {n} workers, H = {LOCAL_H}, {steps} local steps "
               f"({time.perf_counter() - start:.1f} s)")

    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.3))
    for x, (label, res) in zip(ax, results.items()):
        for i, H in enumerate(LOCAL_H):
            x.semilogy(res[H]["rounds"], np.maximum(res[H]["loss"], 1e-17), color=f"C{i}",
                       marker="o" if H == 16 else None, ms=3, label=f"H = {H}")
        x.set_xscale("symlog", linthresh=1)
        x.set_xlabel("communication rounds (parameter averages)")
        x.set_ylabel("f(x̄) - f*")
        x.set_title(f"{n} workers, {steps} local steps, SGD lr 0.05: {label}", fontsize=9)
        x.grid(alpha=0.3, which="both")
        x.legend(fontsize=8)
    fig.tight_layout()
    report.figure(fig, "distributed_local_sgd.png")

    lines = [f"## Local SGD on {n} workers", "",
             f"`HeterogeneousLeastSquares({n}, 20, rows=200, heterogeneity=0.5)`, SGD lr 0.05, "
             f"{steps} local steps per worker; the parameters are averaged (one all-reduce) after every H "
             f"steps. Loss: f(x̄) - f* at the averages; with stochastic gradients the mean over the last "
             f"quarter of the rounds, with full gradients the last.", "",
             "| gradients | H | communication rounds | f - f* | bytes sent per worker |", "|---|---:|---:|---:|---:|"]
    for label, res in results.items():
        for H in LOCAL_H:
            loss = res[H]["loss"]
            value = np.mean(loss[-max(1, (len(loss) - 1) // 4):]) if "stochastic" in label else loss[-1]
            lines.append(f"| {label} | {H} | {res[H]['rounds'][-1]} | {value:.3e} | "
                         f"{int(res[H]['bytes_sent'][-1]):,} |")
    report.section("\n".join(lines) + "\n")
    return results


# ============================================================================= CLI
def build_parser():
    p = cli.ArgumentParser(prog="distributed.py", description=__doc__)
    p.add_argument("--part", default=None, choices=PARTS + ("all",),
                   help="what to run (default: all; gpt when a GPT flag is given)")
    p.add_argument("--workers", type=int, default=None,
                   help="simulated workers for every selected part (default: each part's own); under "
                        "mpiexec the ranks")
    p.add_argument("--preset", default=None, choices=[k for k in PRESETS if k != "medium"],
                   help=f"gpt: the GPT size (default {GPT_DEFAULTS['preset']})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"gpt: optimizer steps (default {FULL['steps']}; --quick: {QUICK['steps']})")
    p.add_argument("--batch-size", type=int, default=None,
                   help="gpt: sequences per step, all workers together (default: the preset's; --quick: "
                        f"{QUICK['batch_size']})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"gpt: peak AdamW learning rate (default {GPT_DEFAULTS['lr']})")
    p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="gpt: parameter dtype (default float32; float64 makes 1, 2, 4 workers agree to ~1e-12)")
    p.add_argument("--seed", type=cli.seed, default=0, help="seed of every part")
    cli.add_corpus_arguments(p)
    cli.add_output_arguments(p, os.path.join("out", "distributed"),
                             out_help="directory for the figures and distributed_results.md",
                             quick_help="a smoke run: fewer workers and steps, a slice of the corpus "
                                        "(explicit flags win)")
    return p


def _validate(a, world: int) -> list:
    """Every check of the input, before anything is computed or written; returns the parts to run."""
    if a.part is None:
        a.part = "gpt" if any(getattr(a, f) is not None for f in GPT_FLAGS) else "all"
    parts = list(PARTS) if a.part == "all" else [a.part]
    if "gpt" not in parts:
        given = [f"--{f.replace('_', '-')}" for f in GPT_FLAGS if getattr(a, f) is not None]
        if given:
            raise cli.UsageError(f"{', '.join(given)} set the gpt part, but --part {a.part} does not run it; "
                                 f"drop them or give --part gpt or all")
    cli.fill_defaults(a, QUICK, FULL)
    for key, value in GPT_DEFAULTS.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.steps < 1:
        raise cli.UsageError(f"--steps must be >= 1, got {a.steps}")
    for name in ("batch_size", "max_chars"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        raise cli.UsageError(f"--lr must be a positive number, got {a.lr}")
    if world > 1:
        if a.workers is not None and a.workers != world:
            raise cli.UsageError(f"--workers {a.workers} but mpiexec started {world} ranks; drop --workers "
                                 f"or give {world}")
        a.workers = world
    if a.workers is not None:
        if a.workers < 1:
            raise cli.UsageError(f"--workers must be >= 1, got {a.workers}")
        alone = [p for p in parts if p != "gpt"]
        if a.workers == 1 and alone:
            raise cli.UsageError(f"--part {alone[0]} needs at least 2 workers to communicate, got "
                                 f"{'1 MPI rank' if world > 1 else '--workers 1'}")
    if "gpt" in parts:
        batch = a.batch_size or preset(a.preset)[1]
        for n in _gpt_counts(a):
            if batch % n:
                given = f"--workers {n}" if a.workers is not None else f"{n} workers"
                raise cli.UsageError(f"{given}: the GPT part's global batch of {batch} sequences does not split "
                                     f"over them; give a --batch-size divisible by {n}")
    return parts


def _gpt_counts(a) -> tuple:
    return (a.workers,) if a.workers is not None else _size("gpt", "workers", a)


def run(a):
    world = mpi_world_size()
    parts = _validate(a, world)
    data = None
    if "gpt" in parts:
        text, desc = load_text(notice=_mpi_rank() == 0, max_chars=a.max_chars)
        data = TextData(text, block_size=preset(a.preset)[0].block_size, cache_dir=a.cache_dir or None,
                        description=desc)
    cli.check_out_dir(a.out)                        # the inputs are good: from here on we may write
    minigrad.configure_runtime()
    report = Report(a.out, lead=_mpi_rank() == 0)
    backend = f"mpiexec -n {world}" if world > 1 else "simulated"
    report.say(f"[distributed] parts: {', '.join(parts)}; workers: "
               + (f"{a.workers} ({backend})" if a.workers is not None else "each part's default (simulated)")
               + (" (quick)" if a.quick else ""))
    results = {}
    for part in parts:
        n = a.workers or _size(part, "workers", a)
        if part == "consensus":
            results[part] = consensus_part(a, n, report)
        elif part == "heterogeneous":
            results[part] = heterogeneous_part(a, n, report)
        elif part == "compression":
            results[part] = compression_part(a, n, report)
        elif part == "gpt":
            results[part] = gpt_part(a, _gpt_counts(a), data, report, backend)
        else:
            results[part] = local_sgd_part(a, n, report)
    if report.lead:
        command = "python demos/distributed.py " + " ".join(sys.argv[1:]) if __name__ == "__main__" else ""
        header = ["# Distributed optimization: measured", "",
                  f"Workers: {backend}. " + (f"Command: `{command.strip()}`." if command else ""), ""]
        path = os.path.join(a.out, "distributed_results.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(header) + "\n".join(report.sections))
        report.say(f"[distributed] figures and {os.path.basename(path)} in {a.out}/")
    return results


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    raise SystemExit(main())
