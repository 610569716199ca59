"""Layer-wise training, measured: block coordinate descent on a convex quadratic, and LISA,
BAdam, MISA and BCD against AdamW on a GPT (Lecture 7).

    .venv/bin/python demos/layerwise.py               # ~8 min on 2 cores, into out/layerwise/
    .venv/bin/python demos/layerwise.py --quick       # a smoke run (~10 s): 4-layer `tiny` GPT
    .venv/bin/python demos/layerwise.py --out docs    # redraw the figures of docs/layerwise.md
    .venv/bin/python demos/layerwise.py --steps 2000  # longer GPT runs

Writes to --out: layerwise_convex.png, layerwise_gpt.png, layerwise_memory.png and
layerwise_results.md (the tables it prints), all once every part is done. Bad input (also a
flag of the part --part leaves out) prints one line and exits with code 2, writing nothing;
Ctrl-C or SIGTERM stops the GPT runs after the current step with one line saying where (exit
code 130) and writes no figures or tables.

(a) Convex. f(x) = 1/2 x^T A x - b^T x on n = 8 blocks of 5 coordinates. Each diagonal block
    A_ii has its eigenvalues spread geometrically from 0.5 to a stiffness s_i (six blocks at 1,
    one at 10, one at 40), so block i's Lipschitz constant is L_i ~ s_i and every block also has
    the curvature mu ~ 0.5; a rank-3 term couples the blocks. Block coordinate descent
    (``optim.create("bcd", ...)`` stepped on raw gradient dicts, one block per step, n steps =
    1 epoch) with the rules cyclic, reshuffle, uniform, importance (p_i = L_i / sum L) and
    Gauss-Southwell-Lipschitz (the block with the largest ||g_i||^2 / L_i), all with block
    steps 1/L_i, plus uniform with the common step 1/L_max and full gradient descent (step 1/L,
    one step per epoch). The random rules are averaged over seeds (the mean of log f - f*).
    Nesterov (2012) bounds importance sampling by (1 - mu/S)^k and uniform sampling with step
    1/L_max by (1 - mu/(n L_max))^k, S = sum_i L_i: a speed-up of n L_max / S. The demo fits
    a rate to each measured curve and prints the measured speed-up beside that ratio. The
    problem is built so that the stiff blocks are also the slow ones (curvature from mu to
    L_i inside a block): there visiting them more often is what helps. When the blocks are
    only scaled (A = D M D), steps 1/L_i alone undo the scaling and uniform sampling is as
    good or better.

(b) GPT. The same model (``--preset``, default `small`, 0.82 M parameters) trained on the same
    batches for ``--steps`` steps by each method through ``models.training.Trainer`` (which
    freezes what ``opt.trainable_names()`` leaves out and records the optimizer's state bytes
    after every step): validation loss against step and against the wall time of the steps,
    peak optimizer-state bytes, parameters updated per step (counted: the elements that a step
    changed, averaged over the steps) and seconds per step. Hyperparameters:

    * AdamW: nanoGPT's recipe as demos/train_gpt.py: lr 6e-3 (its measured best at `small`),
      betas (0.9, 0.99), weight decay 0.1 on matrices only, warmup then cosine to lr/10, global
      gradient clipping at 1. LISA, BAdam and MISA are AdamW on the active set with the same
      options, so only the choice of what trains differs.
    * LISA (Pan et al. 2024): K = 20 steps per period; gamma = 1 and 2 layers,
      the embeddings (tied with the output head) and the final norm always trained.
    * BAdam (Luo, Yu, Li 2024): K = 50 steps per block, blocks in random order; the
      embeddings and the final norm never train, as in the reference, which is made for
      fine-tuning: from scratch, with the output head tied to the embeddings, the output
      layer stays at its random initialization (the table shows what that costs).
    * MISA (Liu et al. 2025): delta = 0.25, so the sampled matrices are at most a quarter of
      the parameters (with the always-trained embeddings, norms and biases about 28% move,
      beside LISA gamma=1's 27% and BAdam's 24%); T = 20 steps per period, as LISA, so the two
      differ in what they sample; eta = 20 (``--misa-eta``): the modules' scores
      (bias-corrected mean gradient norms) measured 0.01-0.45 here, and with eta = 1 (the
      default of optim.block) every exp(eta G^2) is ~1, i.e. uniform sampling.
    * BCD-SGD: ``bcd`` with random reshuffling over the model's 6 blocks (embeddings, each
      layer, final norm), K = 20 steps per block, inner SGD with momentum 0.9 (one float per
      active parameter of state), lr 0.3 (``--sgd-lr``), no weight decay. Measured at `small`
      over the default 400 steps: lr 1 ended at a validation loss of 3.18 after a spike to 42
      while the embeddings (tied with the output head) trained, lr 0.5 at 2.91 after a spike
      to 6.0, lr 0.3 at 2.84 without one; at 100 steps full SGD with momentum 0.9 was best at
      0.3 too.

    Every K is shortened to steps // (the number of blocks it cycles through) when the run is
    too short for every block to get a turn (``--quick``).

    The issue's requirement: LISA (gamma = 1) and BAdam hold at most half of AdamW's optimizer
    state at `small`; the demo prints the check (LISA with gamma = 2 holds ~52%).

References: Nesterov (2012), "Efficiency of coordinate descent methods on huge-scale
optimization problems", SIAM J. Optim. 22(2); Pan et al. (2024), LISA, arXiv 2403.17919; Luo,
Yu, Li (2024), BAdam, arXiv 2404.02827; Liu et al. (2025), MISA, arXiv 2511.00056.
"""
from __future__ import annotations

import math
import os
import sys
import time

if __name__ == "__main__":
    # one BLAS thread: the GEMMs are small and a second thread competing for a core on a busy
    # 2-core machine slows them down (see demos/train_gpt.py)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import minigrad  # noqa: E402
import optim  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.training import Trainer, clip_grad_norm, lm_loss, pyplot, save_figure  # noqa: E402

# --quick: a 4-layer `tiny` GPT (the 2-layer preset has no LISA layer that is less than half of
# the model: its embeddings and one layer are 54% of it), a slice of the corpus, short runs
QUICK = {"preset": "tiny", "n_layer": 4, "steps": 24, "batch_size": 8, "max_chars": 200_000,
         "eval_batches": 2, "epochs": 60, "seeds": 2}
FULL = {"preset": "small", "n_layer": None, "steps": 400, "batch_size": None, "max_chars": None,
        "eval_batches": 8, "epochs": 300, "seeds": 10}

LABELS = {"adamw": "AdamW", "lisa1": "LISA γ=1", "lisa2": "LISA γ=2", "badam": "BAdam",
          "misa": "MISA δ=0.25", "bcd": "BCD-SGD"}
COLORS = {"adamw": "black", "lisa1": "tab:blue", "lisa2": "tab:cyan", "badam": "tab:orange",
          "misa": "tab:green", "bcd": "tab:red"}
CHECKED = ("lisa1", "badam")          # must hold <= 1/2 of AdamW's optimizer state


# ============================================================================= (a) convex
def quadratic(seed=0, stiffness=(1, 1, 1, 1, 1, 1, 10, 40), dim=5, mu=0.5, coupling=0.2):
    """f(x) = 1/2 x^T A x - b^T x: block i has eigenvalues from mu to stiffness[i] (random
    basis), plus a rank-3 coupling of the blocks. Returns A, b, x*, the block Lipschitz
    constants L_i, mu and L of A, and the block size."""
    rng = np.random.default_rng(seed)
    n = len(stiffness)
    m = n * dim
    A = np.zeros((m, m))
    for i, s in enumerate(stiffness):
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        A[i * dim:(i + 1) * dim, i * dim:(i + 1) * dim] = q @ np.diag(np.geomspace(mu, s, dim)) @ q.T
    g = rng.standard_normal((m, 3)) / math.sqrt(m)
    A += coupling * g @ g.T
    b = rng.standard_normal(m)
    L = np.array([np.linalg.eigvalsh(A[i * dim:(i + 1) * dim, i * dim:(i + 1) * dim]).max()
                  for i in range(n)])
    ev = np.linalg.eigvalsh(A)
    return {"A": A, "b": b, "x_star": np.linalg.solve(A, b), "L": L, "mu": ev[0], "L_full": ev[-1],
            "dim": dim}


def suboptimality(pb, x):
    """f(x) - f* = 1/2 (x - x*)^T A (x - x*), without the cancellation of f(x) - f*."""
    e = x - pb["x_star"]
    return 0.5 * float(e @ pb["A"] @ e)


def bcd_curve(pb, epochs, seed, **kw):
    """(f(x) - f*) / (f(x_0) - f*) after every epoch of n block updates, from x_0 = 0."""
    n, d = len(pb["L"]), pb["dim"]
    x = {f"x{i}": np.zeros(d) for i in range(n)}
    opt = optim.create("bcd", x, blocks={f"block{i}": [f"x{i}"] for i in range(n)}, seed=seed, **kw)
    A, b = pb["A"], pb["b"]
    flat = lambda: np.concatenate(list(x.values()))  # noqa: E731
    gap0 = suboptimality(pb, flat())
    out = [1.0]
    for step in range(1, epochs * n + 1):
        g = A @ flat() - b
        opt.step({f"x{i}": g[i * d:(i + 1) * d] for i in range(n)})
        if step % n == 0:
            out.append(suboptimality(pb, flat()) / gap0)
    return np.array(out)


def gd_curve(pb, epochs):
    x = {"x": np.zeros(len(pb["b"]))}
    opt = optim.create("gd", x, lr=1.0 / pb["L_full"])
    gap0 = suboptimality(pb, x["x"])
    out = [1.0]
    for _ in range(epochs):
        opt.step({"x": pb["A"] @ x["x"] - pb["b"]})
        out.append(suboptimality(pb, x["x"]) / gap0)
    return np.array(out)


def fitted_rate(log_gap, burn_in=5):
    """Slope of log(f - f*) per epoch, fitted after the first ``burn_in`` epochs (the transient
    of the fast modes), over the epochs above 1e-250 (no underflow)."""
    e = np.arange(len(log_gap))
    keep = (e >= burn_in) & (log_gap > math.log(1e-250))
    return float(np.polyfit(e[keep], log_gap[keep], 1)[0])


def bcd_rules(L):
    """(key, label, bcd options, random?) of the rules compared."""
    per_block = {"lr": 1.0, "lipschitz": L}
    return [("cyclic", "cyclic, steps 1/L_i", {"selection": "cyclic", **per_block}, False),
            ("reshuffle", "reshuffle, steps 1/L_i", {"selection": "reshuffle", **per_block}, True),
            ("uniform", "uniform, steps 1/L_i", {"selection": "uniform", **per_block}, True),
            ("uniform_lmax", "uniform, step 1/L_max", {"selection": "uniform", "lr": 1.0 / L.max()}, True),
            ("importance", "importance p_i ∝ L_i, steps 1/L_i", {"selection": "importance", **per_block}, True),
            ("gauss_southwell", "Gauss-Southwell-Lipschitz, steps 1/L_i",
             {"selection": "gauss-southwell", **per_block}, False)]


def convex_part(a) -> dict:
    pb = quadratic(seed=a.seed)
    L, mu = pb["L"], pb["mu"]
    n, S = len(L), float(L.sum())
    curves = {}
    for key, label, kw, random in bcd_rules(L):
        runs = [bcd_curve(pb, a.epochs, a.seed + r, **kw) for r in range(a.seeds if random else 1)]
        log_gap = np.mean(np.log(np.maximum(np.array(runs), 1e-300)), axis=0)
        curves[key] = {"label": label, "log_gap": log_gap, "rate": fitted_rate(log_gap)}
        print(f"[layerwise] convex: {label}: fitted rate {math.exp(curves[key]['rate']):.4f} per epoch")
    log_gap = np.log(np.maximum(gd_curve(pb, a.epochs), 1e-300))
    curves["gd"] = {"label": "full GD, step 1/L", "log_gap": log_gap, "rate": fitted_rate(log_gap)}
    theory = {"importance": n * math.log(1 - mu / S), "uniform_lmax": n * math.log(1 - mu / (n * L.max()))}
    return {"problem": pb, "curves": curves, "theory": theory, "n": n, "S": S,
            "speedup_theory": n * L.max() / S,
            "speedup": curves["importance"]["rate"] / curves["uniform_lmax"]["rate"],
            "speedup_same_steps": curves["importance"]["rate"] / curves["uniform"]["rate"]}


def convex_table(res, a) -> str:
    pb, n = res["problem"], res["n"]
    lines = [f"Quadratic, n = {n} blocks of {pb['dim']}: L_i = "
             f"{', '.join(f'{v:.2f}' for v in pb['L'])}; mu = {pb['mu']:.3f}, L = {pb['L_full']:.2f}; "
             f"{a.epochs} epochs (n block updates each); random rules: mean of log(f - f*) over "
             f"{a.seeds} seeds.", "",
             "| rule | fitted rate per epoch | (f - f*)/(f_0 - f*) at the end | Nesterov's bound per epoch |",
             "|---|---:|---:|---:|"]
    for key, c in res["curves"].items():
        bound = f"{math.exp(res['theory'][key]):.4f}" if key in res["theory"] else ""
        lines.append(f"| {c['label']} | {math.exp(c['rate']):.4f} | {math.exp(c['log_gap'][-1]):.2e} | {bound} |")
    lines += ["", f"Importance vs uniform (step 1/L_max): measured speed-up {res['speedup']:.2f}× "
                  f"(ratio of the fitted log-rates); theory n·L_max/ΣL_i = {res['speedup_theory']:.2f}. "
                  f"Against uniform with the same steps 1/L_i: {res['speedup_same_steps']:.2f}×."]
    return "\n".join(lines) + "\n"


def plot_convex(res, a, path):
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.3))
    styles = {"gd": ("k", "--"), "cyclic": ("tab:purple", "-"), "reshuffle": ("tab:brown", "-"),
              "uniform": ("tab:gray", "-"), "uniform_lmax": ("tab:olive", "-"),
              "importance": ("tab:blue", "-"), "gauss_southwell": ("tab:red", "-")}
    log10 = 1 / math.log(10)
    epochs = np.arange(a.epochs + 1)
    for key, c in res["curves"].items():
        col, ls = styles[key]
        ax[0].plot(epochs, 10 ** (c["log_gap"] * log10), color=col, ls=ls, lw=1.4, label=c["label"])
    ax[0].set_title("block coordinate descent vs full GD (random rules: geometric mean over seeds)",
                    fontsize=9)
    for key, bound_label in (("importance", "bound (1 - μ/S)^k"), ("uniform_lmax", "bound (1 - μ/(n L_max))^k")):
        c = res["curves"][key]
        col = styles[key][0]
        ax[1].plot(epochs, np.exp(c["log_gap"]), color=col, lw=1.6,
                   label=f"{c['label']}: {math.exp(c['rate']):.4f}/epoch")
        ax[1].plot(epochs, np.exp(res["theory"][key] * epochs), color=col, ls=":", lw=1.2,
                   label=f"{bound_label}: {math.exp(res['theory'][key]):.4f}/epoch")
    ax[1].set_title(f"importance vs uniform: measured speed-up {res['speedup']:.2f}×, "
                    f"n·L_max/ΣL_i = {res['speedup_theory']:.2f}", fontsize=9)
    lowest = min(float(np.min(c["log_gap"])) for c in res["curves"].values())
    for x in ax:
        x.set_yscale("log")
        x.set_ylim(max(1e-30, math.exp(lowest) / 10), 2)
        x.set_xlabel("epoch (n block updates; GD: one full step)")
        x.set_ylabel("(f - f*) / (f_0 - f*)")
        x.grid(alpha=0.3)
        x.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


# ============================================================================= (b) GPT
def period(preferred, steps, n):
    """``preferred`` steps per period, fewer when the run is too short for n periods."""
    return max(1, min(preferred, steps // n))


def make_optimizer(method, model, a):
    """(optimizer, the call that built it as text) for one method; see the module docstring."""
    params = {n: p.data for n, p in model.named_parameters()}
    blocks = optim.block_params(model.param_blocks())
    layers = model.config.n_layer
    adam = {"lr": a.lr, "betas": (0.9, 0.99)}
    groups = optim.param_groups_no_decay(params, 0.1)
    if method == "adamw":
        kw = {}
    elif method in ("lisa1", "lisa2"):
        kw = {"blocks": blocks, "layers": int(method[-1]), "switch_every": period(20, a.steps, layers)}
    elif method == "badam":
        kw = {"blocks": blocks, "switch_every": period(50, a.steps, layers), "order": "random"}
    elif method == "misa":
        kw = {"blocks": blocks, "splits": model.param_splits(), "delta": 0.25,
              "switch_every": period(20, a.steps, layers), "eta": a.misa_eta}
    else:
        kw = {"blocks": blocks, "selection": "reshuffle", "switch_every": period(20, a.steps, len(blocks)),
              "inner": "sgd", "inner_kwargs": {"momentum": 0.9}}
        adam, groups = {"lr": a.sgd_lr}, params
    name = {"lisa1": "lisa", "lisa2": "lisa"}.get(method, method)
    try:
        opt = optim.create(name, groups, seed=a.seed, **adam, **kw) if name != "adamw" else \
            optim.create(name, groups, **adam)
    except (ValueError, TypeError) as e:
        raise cli.UsageError(f"--methods {method}: {e}") from None
    shown = {k: v for k, v in {**adam, **kw}.items() if k not in ("blocks", "splits", "betas")}
    call = f"{name}(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in shown.items()) + ")"
    return opt, call


class Log:
    """``on_step`` / ``on_eval`` callbacks: the wall time of the steps (evaluations and this
    bookkeeping excluded) at every evaluation, and how many elements each step changed."""

    def __init__(self, model):
        self.model = model
        self.before = self._snapshot()
        self.changed = []
        self.val = {"step": [], "time": [], "loss": []}
        self.train_seconds = 0.0
        self._mark = time.perf_counter()

    def _snapshot(self):
        return {n: p.data.copy() for n, p in self.model.named_parameters()}

    def on_step(self, trainer):
        self.train_seconds += time.perf_counter() - self._mark
        now = self._snapshot()
        self.changed.append(sum(int(np.count_nonzero(now[n] != self.before[n])) for n in now))
        self.before = now
        self._mark = time.perf_counter()

    def on_eval(self, trainer, loss):
        for key, v in (("step", trainer.step), ("time", self.train_seconds), ("loss", loss)):
            self.val[key].append(v)
        self._mark = time.perf_counter()


def train(method, cfg, data, eval_batches, batch_size, a) -> dict:
    model = GPT(cfg, seed=a.seed)
    opt, call = make_optimizer(method, model, a)
    log = Log(model)
    trainer = Trainer(model, lm_loss, opt, lambda rng: data.get_batch("train", batch_size, rng),
                      steps=a.steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": min(40, a.steps // 10), "min_ratio": 0.1},
                      grad_hooks=[clip_grad_norm(1.0)], eval_batches=eval_batches,
                      eval_every=max(1, a.steps // 10), seed=a.seed + 1, on_step=log.on_step,
                      on_eval=log.on_eval, progress=not a.no_progress)
    if trainer.fit().interrupted:
        raise cli.Interrupted(f"interrupted in {LABELS[method]} at step {trainer.step} of {a.steps}; "
                              f"no figures and no layerwise_results.md written to {a.out}")
    return {"label": LABELS[method], "call": call, "val": log.val, "final_val": log.val["loss"][-1],
            "peak_state_bytes": trainer.peak_state_bytes, "state_bytes": trainer.history["state_bytes"],
            "updated_per_step": float(np.mean(log.changed)), "n_params": model.num_parameters(),
            "sec_per_step": log.train_seconds / a.steps}


def gpt_table(runs, title) -> str:
    base = runs.get("adamw")
    lines = [title, "",
             "| method | final val loss | peak optimizer state | × AdamW's | parameters updated per step "
             "| s/step | optimizer |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in runs.values():
        frac = f"{r['peak_state_bytes'] / base['peak_state_bytes']:.3f}" if base else "-"
        lines.append(f"| {r['label']} | {r['final_val']:.4f} | {r['peak_state_bytes'] / 2**20:.2f} MiB | {frac} | "
                     f"{r['updated_per_step']:,.0f} ({100 * r['updated_per_step'] / r['n_params']:.1f}%) | "
                     f"{r['sec_per_step']:.3f} | `{r['call']}` |")
    lines += ["", "final val loss: mean over the fixed validation batches after the last step; "
                  "peak optimizer state: the largest `opt.state_bytes()` the Trainer recorded after a "
                  "step; parameters updated per step: elements a step changed, mean over the steps; "
                  "s/step: wall time of the steps, evaluations excluded."]
    return "\n".join(lines) + "\n"


def memory_check(runs) -> list:
    """Lines saying whether LISA (gamma = 1) and BAdam hold <= 1/2 of AdamW's optimizer state."""
    if "adamw" not in runs:
        return []
    base = runs["adamw"]["peak_state_bytes"]
    out = []
    for m in CHECKED:
        if m in runs:
            frac = runs[m]["peak_state_bytes"] / base
            out.append(f"{LABELS[m]} holds {frac:.3f} of AdamW's optimizer-state bytes "
                       f"(requirement <= 0.5: {'OK' if frac <= 0.5 else 'FAILS'})")
    return out


def plot_gpt(runs, title, path):
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.3))
    # the y range is that of the curves below the initial loss: a spike above it would flatten
    # every other curve, so it leaves the chart and its legend entry gives its height
    top = max(r["val"]["loss"][0] for r in runs.values()) + 0.1
    bottom = min(min(r["val"]["loss"]) for r in runs.values()) - 0.1
    for m, r in runs.items():
        v = r["val"]
        label = r["label"] + (f" (peak {max(v['loss']):.1f}, off the chart)" if max(v["loss"]) > top else "")
        ax[0].plot(v["step"], v["loss"], "-o", ms=3, color=COLORS[m], label=label)
        ax[1].plot(v["time"], v["loss"], "-o", ms=3, color=COLORS[m], label=label)
    ax[0].set_xlabel("step")
    ax[1].set_xlabel("wall time of the steps [s] (evaluations excluded)")
    for x in ax:
        x.set_ylim(bottom, top)
        x.set_ylabel("validation loss [nats/token]")
        x.grid(alpha=0.3)
        x.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def plot_memory(runs, title, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    keys = list(runs)
    mib = np.array([runs[m]["peak_state_bytes"] for m in keys]) / 2**20
    ax.bar([runs[m]["label"] for m in keys], mib, color=[COLORS[m] for m in keys])
    base = runs.get("adamw")
    for i, m in enumerate(keys):
        note = f"{mib[i]:.2f} MiB"
        if base:
            note += f"\n{runs[m]['peak_state_bytes'] / base['peak_state_bytes']:.2f}× AdamW"
        ax.text(i, mib[i], note, ha="center", va="bottom", fontsize=8)
    if base:
        ax.axhline(base["peak_state_bytes"] / 2**20 / 2, color="k", ls="--", lw=1, label="½ of AdamW's")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("peak optimizer state [MiB]")
    ax.set_ylim(0, mib.max() * 1.25)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


# ============================================================================= CLI
def build_parser():
    p = cli.ArgumentParser(prog="layerwise.py", description=__doc__)
    p.add_argument("--part", choices=("all", "convex", "gpt"), default="all", help="what to run")
    p.add_argument("--methods", default=",".join(LABELS),
                   help=f"comma-separated GPT methods, from {', '.join(LABELS)} (default: all)")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help=f"GPT size (default {FULL['preset']}; --quick: {QUICK['preset']})")
    p.add_argument("--n-layer", type=int, default=None,
                   help="layers of the GPT (default: the preset's; --quick: 4)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps per method (default {FULL['steps']}; --quick: {QUICK['steps']})")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    p.add_argument("--lr", type=float, default=6e-3, help="peak lr of AdamW, LISA, BAdam and MISA")
    p.add_argument("--sgd-lr", type=float, default=0.3, help="peak lr of BCD-SGD")
    p.add_argument("--misa-eta", type=float, default=20.0, help="MISA's eta (0: uniform sampling)")
    p.add_argument("--eval-batches", type=int, default=None, help="fixed validation batches (default 8)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"convex: epochs of block updates (default {FULL['epochs']})")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"convex: runs averaged per random rule (default {FULL['seeds']})")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_corpus_arguments(p)
    cli.add_output_arguments(p, os.path.join("out", "layerwise"),
                             out_help="directory for the figures and layerwise_results.md",
                             quick_help="a smoke run: a 4-layer tiny GPT, few steps, a short convex run "
                                        "(explicit flags win)")
    return p


# the flags only one part reads
GPT_FLAGS = ("methods", "preset", "n_layer", "steps", "batch_size", "lr", "sgd_lr", "misa_eta", "eval_batches",
             "max_chars")
CONVEX_FLAGS = ("epochs", "seeds")


def _validate(a):
    if a.part != "all":
        cli.refuse_unused(build_parser(), a, GPT_FLAGS if a.part == "convex" else CONVEX_FLAGS,
                          f"--part {a.part} runs no {'GPT' if a.part == 'convex' else 'convex'} part")
    cli.fill_defaults(a, QUICK, FULL)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in LABELS]
    if bad or not a.methods:
        raise cli.UsageError(f"unknown method(s) {bad}; choose from {', '.join(LABELS)}")
    if a.part != "convex":
        cli.refuse_flags_of_untrained(build_parser(), a, a.methods, {
            "lr": ("adamw", "lisa1", "lisa2", "badam", "misa"), "sgd_lr": ("bcd",), "misa_eta": ("misa",)})
    for name in ("steps", "eval_batches", "seeds"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.epochs < 10:
        raise cli.UsageError(f"--epochs must be >= 10 (a rate is fitted after 5), got {a.epochs}")
    for name in ("batch_size", "max_chars", "n_layer"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("lr", "sgd_lr"):
        v = getattr(a, name)
        if not (v > 0 and math.isfinite(v)):
            raise cli.UsageError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if not (a.misa_eta >= 0 and math.isfinite(a.misa_eta)):
        raise cli.UsageError(f"--misa-eta must be a finite number >= 0, got {a.misa_eta}")


def run(a) -> dict:
    """The demo as the parsed arguments ``a`` say; returns the results of both parts."""
    _validate(a)
    gpt = a.part in ("all", "gpt")
    if gpt:
        text, desc = load_text(notice=True, max_chars=a.max_chars)
        cfg, batch_size = preset(a.preset, **({"n_layer": a.n_layer} if a.n_layer else {}))
        batch_size = a.batch_size or batch_size
        data = TextData(text, block_size=cfg.block_size, cache_dir=a.cache_dir or None, description=desc,
                        write_cache=False)     # written below, once every input is good
        cfg.vocab_size = data.vocab_size
        probe = GPT(cfg, seed=a.seed)
        for m in a.methods:                 # an option a method refuses fails here, not mid-run
            make_optimizer(m, probe, a)
        del probe
    cli.check_out_dir(a.out)                # the inputs are good: from here on we may write
    minigrad.configure_runtime()
    results, tables = {}, []
    if a.part in ("all", "convex"):
        res = convex_part(a)
        results["convex"] = res
        tables.append("## (a) Block coordinate descent on a quadratic\n\n" + convex_table(res, a))
        print("\n" + tables[-1])
    if gpt:
        data.save_cache()
        eval_batches = data.fixed_batches("val", a.eval_batches, batch_size)
        n_params = GPT(cfg, seed=a.seed).num_parameters()
        title = (f"GPT '{a.preset}'{f' with {cfg.n_layer} layers' if a.n_layer else ''} "
                 f"({n_params / 1e6:.2f} M parameters) on {desc}: {a.steps} steps × batch {batch_size} "
                 f"× {cfg.block_size} tokens, seed {a.seed}")
        print(f"[layerwise] {title}")
        runs = {}
        for i, m in enumerate(a.methods):
            print(f"[layerwise] method {i + 1}/{len(a.methods)}: {LABELS[m]}", flush=True)
            runs[m] = r = train(m, cfg, data, eval_batches, batch_size, a)
            print(f"[layerwise] {LABELS[m]}: val {r['val']['loss'][0]:.4f} -> {r['final_val']:.4f}, peak "
                  f"optimizer state {r['peak_state_bytes'] / 2**20:.2f} MiB, {r['sec_per_step']:.3f} s/step",
                  flush=True)
        results["gpt"] = runs
        check = memory_check(runs)
        tables.append("## (b) Layer-wise training of a GPT\n\n" + gpt_table(runs, title)
                      + "".join(f"\n{line}\n" for line in check))
        print("\n" + tables[-1])
    # the files last: a run stopped by Ctrl-C in (b) leaves no figure of (a) beside old ones of (b)
    if "convex" in results:
        plot_convex(results["convex"], a, os.path.join(a.out, "layerwise_convex.png"))
    if gpt:
        plot_gpt(runs, title, os.path.join(a.out, "layerwise_gpt.png"))
        plot_memory(runs, f"GPT '{a.preset}'{f' with {cfg.n_layer} layers' if a.n_layer else ''}: "
                          f"peak optimizer state per method",
                    os.path.join(a.out, "layerwise_memory.png"))
    path = os.path.join(a.out, "layerwise_results.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tables))
    print(f"[layerwise] figures and {os.path.basename(path)} in {a.out}/")
    return results


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
