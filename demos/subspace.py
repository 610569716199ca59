"""Training in a subspace: where GaLore stalls and GoLore does not, and a GPT trained with
GaLore, GoLore, Flora and RSO beside AdamW (Lecture 8).

(a) The GoLore counterexample (He et al., ICML 2025, arXiv 2410.11289, Section 3, and the
    reference's exp/main.py): X in R^{10x10}, f(X) = 1/2 ||A X||^2 + <B, X> with A = [I_6, 0]
    and B nonzero only in its top-left 6x6 block, N(0, sigma^2) there; the stochastic gradient
    is grad f(X) + xi, xi = +-sigma diag(0_6, I_4) with a random sign per step. Rank r = 4,
    T = 100 steps between refreshes, plain SGD steps (lr 0.01) inside, projections on the row
    side ("left", as the reference). The noise has four singular values sigma = 1, in rows the
    loss does not depend on; once the true gradient's singular values fall below them,
    GaLore's SVD basis is the noise's, the projected true gradient is zero and GaLore stops.
    GoLore's random basis keeps following every direction on average (E[P P^T] = (r/m) I) and
    goes on down to a noise floor (its random P leaks a little noise into the rows that matter).
    Full SGD is not hurt: the noise stays in rows f does not depend on.

(b) GPT ``small`` (``tiny`` with --quick) on the default corpus through ``models.training.
    Trainer``: AdamW, GaLore, GoLore, Flora and RSO, each for the same steps, batches and
    schedule (warmup + cosine, decoupled weight decay 0.1 on matrices). Validation loss against
    step and wall time, the optimizer state each held (``trainer.peak_state_bytes``) as bars,
    and a markdown table; the demo checks that GaLore's and GoLore's state is at most half of
    AdamW's.

Writes into --out: subspace_counterexample.png, subspace_gpt.png, subspace_results.md (the
tables it prints) and subspace_results.json (the curves), all once both parts are done.

    python demos/subspace.py               # (a) 20k steps + (b) GPT small, 400 steps a method: ~11 min on 2 cores
    python demos/subspace.py --quick       # (a) 5k steps + (b) GPT tiny, 30 steps, a slice of the corpus
    python demos/subspace.py --part a      # the counterexample only (seconds)
    python demos/subspace.py --out docs    # redraw the figures of docs/subspace.md

Bad input (also a flag of the part --part leaves out) prints one line and exits with code 2,
writing nothing; Ctrl-C or SIGTERM stops a GPT run after the current step with one line saying
where (exit code 130) and writes no figures or results.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

# Single-threaded BLAS: the matrices are small and the machine is shared (see mixed_precision.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import minigrad  # noqa: E402
import optim  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.training import Trainer, lm_loss, pyplot, save_figure  # noqa: E402

CE_METHODS = ("sgd", "galore", "golore")
CE_LABELS = {"sgd": "SGD (full)", "galore": "GaLore (SVD basis)", "golore": "GoLore (random basis)"}
GPT_METHODS = ("adamw", "galore", "golore", "flora", "rso")
LABELS = {"adamw": "AdamW", "galore": "GaLore", "golore": "GoLore", "flora": "Flora", "rso": "RSO"}
# --quick: these unless given explicitly
QUICK = {"ce_steps": 5000, "steps": 30, "preset": "tiny", "max_chars": 200_000, "eval_every": 10}
DEFAULTS = {"ce_steps": 20_000, "steps": 400, "preset": "small", "max_chars": None, "eval_every": 50}


# ----------------------------------------------------------------------------- (a)
def counterexample(method, steps=20_000, T=100, lr=0.01, sigma=1.0, rank=4, seed=0):
    """||grad f(X_t)|| for t = 0 .. steps-1 of one method on the counterexample (see the module
    docstring). B, X_0 and the noise signs depend on ``seed`` only, so every method sees the
    same problem and the same noise."""
    n, k = 10, 6
    rng = np.random.default_rng(seed)
    B = np.zeros((n, n))
    B[:k, :k] = sigma * rng.standard_normal((k, k))
    X = np.zeros((n, n))                        # X_0 as the reference: sigma/2 [I_6, 0] over noise rows
    X[:k, :k] = sigma / 2 * np.eye(k)
    X[k:] = sigma * rng.standard_normal((n - k, n))
    rows = np.zeros((n, 1))
    rows[:k] = 1.0                              # A^T A X keeps the first k rows of X
    xi = np.zeros((n, n))
    xi[k:, k:] = sigma * np.eye(n - k)
    signs = np.where(np.random.default_rng(seed + 1).random(steps) < 0.5, 1.0, -1.0)
    params = {"X": X}
    if method == "sgd":
        opt = optim.create("sgd", params, lr=lr)
    else:
        extra = {"seed": seed} if method == "golore" else {}
        opt = optim.create(method, params, lr=lr, rank=rank, update_proj_gap=T, scale=1.0, proj="left",
                           inner="sgd", **extra)
    norms = np.empty(steps)
    for t in range(steps):
        g = rows * X + B
        norms[t] = np.linalg.norm(g)
        opt.step({"X": g + signs[t] * xi})
    return norms


def ce_table(curves, steps) -> str:
    tail = max(1, steps // 10)
    lines = ["| method | ‖∇f‖ at step 0 | at the last step | mean over the last 10% |",
             "|---|---:|---:|---:|"]
    for m, v in curves.items():
        lines.append(f"| {CE_LABELS[m]} | {v[0]:.3f} | {v[-1]:.3g} | {v[-tail:].mean():.3g} |")
    return "\n".join(lines) + "\n"


def plot_counterexample(curves, args, path):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m, v in curves.items():
        t = np.arange(0, len(v), 10)
        ax.plot(t, np.maximum(v[::10], 1e-16), lw=1.2, label=f"{CE_LABELS[m]}: last {v[-1]:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖∇f(X)‖ (true gradient)")
    ax.set_title(f"GoLore's counterexample: r = 4, T = 100, SGD lr 0.01 inside, σ = 1, seed {args.seed}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=72)


# ----------------------------------------------------------------------------- (b)
def gpt_options(method, model, args) -> dict:
    """The options of each method (lr is the peak of the schedule). GaLore and GoLore: the
    paper's recipe, lr 0.01 with scale 0.25 on the projected matrices, refresh every 200 steps;
    Flora and RSO: AdamW's lr."""
    rank = {"rank": args.rank}
    where = {"roles": model.param_roles(), "splits": model.param_splits()}
    adam = {"betas": (0.9, 0.99)}
    return {
        "adamw": dict(lr=args.lr, **adam),
        "galore": dict(lr=0.01, scale=0.25, update_proj_gap=200, inner="adamw", inner_kwargs=adam,
                       **rank, **where),
        "golore": dict(lr=0.01, scale=0.25, update_proj_gap=200, inner="adamw", inner_kwargs=adam,
                       seed=args.seed, **rank, **where),
        "flora": dict(lr=args.lr, update_proj_gap=200, seed=args.seed, **rank, **where),
        "rso": dict(lr=args.lr, update_proj_gap=50, inner="adamw", inner_kwargs=adam, seed=args.seed,
                    **rank, **where),
    }[method]


def train_gpt(method, cfg, data, batch_size, val, args) -> dict:
    """One method through the Trainer: the same model seed, batches and schedule for every method."""
    model = GPT(cfg, seed=args.seed)
    params = {n: p.data for n, p in model.named_parameters()}
    opts = gpt_options(method, model, args)
    opt = optim.create(method, optim.param_groups_no_decay(params, args.weight_decay), **opts)
    wall = []
    t0 = time.perf_counter()
    trainer = Trainer(model, lm_loss, opt, lambda rng: data.get_batch("train", batch_size, rng),
                      steps=args.steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": max(1, args.steps // 10), "min_ratio": 0.1},
                      eval_batches=val, eval_every=args.eval_every, seed=args.seed + 1,
                      on_eval=lambda tr, v: wall.append(time.perf_counter() - t0),
                      progress=not args.no_progress, log_every=max(1, args.steps // 4))
    fit = trainer.fit()
    if fit.interrupted:
        raise cli.Interrupted(f"interrupted in {LABELS[method]} at step {fit.step} of {args.steps}; no "
                              f"figures, subspace_results.md or .json written to {args.out}")
    h = trainer.history
    return dict(label=LABELS[method], lr=opts["lr"], val_step=list(h["val_step"]),
                val_loss=list(h["val_loss"]), wall=wall, train_loss=list(h["train_loss"]),
                state_bytes=int(trainer.peak_state_bytes), seconds=fit.seconds,
                sec_per_step=fit.seconds / max(1, fit.step))


def gpt_table(runs) -> str:
    adamw = runs.get("adamw")
    lines = ["| method | peak lr | final val loss | best val loss | optimizer state | vs AdamW | s/step | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs.values():
        ratio = f"{r['state_bytes'] / adamw['state_bytes']:.2f}×" if adamw else "-"
        lines.append(f"| {r['label']} | {r['lr']:g} | {r['val_loss'][-1]:.4f} | {min(r['val_loss']):.4f} | "
                     f"{r['state_bytes'] / 2**20:.2f} MiB | {ratio} | {r['sec_per_step']:.3f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + (
        "\n\nval loss on fixed validation batches (nats/token); optimizer state = the peak of "
        "state_bytes() over the run (moments, projections, subspace variables; not weights or "
        "gradients); s/step includes the evaluations\n")


def plot_gpt(runs, title, path):
    plt = pyplot()

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(16, 4.6))
    for r in runs.values():
        ax0.plot(r["val_step"], r["val_loss"], marker=".", lw=1.2, label=r["label"])
        ax1.plot(np.asarray(r["wall"]) / 60, r["val_loss"], marker=".", lw=1.2, label=r["label"])
    for ax, xl in ((ax0, "step"), (ax1, "wall time (minutes, evaluations included)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    ax0.set_title(title)
    names = [r["label"] for r in runs.values()]
    mib = [r["state_bytes"] / 2**20 for r in runs.values()]
    bars = ax2.bar(names, mib, color=[f"C{i}" for i in range(len(names))])
    for b, v in zip(bars, mib):
        ax2.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
    ax2.set_ylabel("optimizer state (MiB, peak)")
    ax2.set_title("optimizer state held")
    fig.tight_layout()
    save_figure(fig, path, dpi=72)


# ----------------------------------------------------------------------------- command line
def build_parser():
    ap = cli.ArgumentParser(prog="subspace.py", description=__doc__)
    ap.add_argument("--part", choices=("a", "b", "both"), default="both",
                    help="a: the counterexample; b: the GPT comparison; both (default)")
    ap.add_argument("--ce-steps", type=int, default=None, help="counterexample steps (default 20000; --quick 5000)")
    ap.add_argument("--steps", type=int, default=None, help="GPT steps per method (default 400; --quick 30)")
    ap.add_argument("--preset", choices=list(PRESETS), default=None, help="GPT size (default small; --quick tiny)")
    ap.add_argument("--methods", default=",".join(GPT_METHODS),
                    help=f"comma-separated subset of {', '.join(GPT_METHODS)} for (b)")
    ap.add_argument("--rank", type=int, default=None, help="subspace rank (default n_embd // 4)")
    ap.add_argument("--lr", type=float, default=6e-3, help="peak lr of AdamW, Flora and RSO")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="decoupled, on matrices only")
    ap.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default 50; --quick 10)")
    ap.add_argument("--eval-batches", type=int, default=8, help="fixed validation batches")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    ap.add_argument("--seed", type=cli.seed, default=0)
    cli.add_corpus_arguments(ap, max_chars_help="use only the first N characters (--quick 200,000)")
    cli.add_output_arguments(ap, os.path.join("out", "subspace"),
                             out_help="directory for the figures, subspace_results.md and .json",
                             quick_help="a smoke run: short (a), GPT tiny for 30 steps")
    return ap


# the flags only one part reads
GPT_FLAGS = ("steps", "preset", "methods", "rank", "lr", "weight_decay", "eval_every", "eval_batches",
             "batch_size", "max_chars")
CE_FLAGS = ("ce_steps",)


def _validate(args):
    if args.part != "both":
        cli.refuse_unused(build_parser(), args, GPT_FLAGS if args.part == "a" else CE_FLAGS,
                          f"--part {args.part} runs no {'GPT comparison' if args.part == 'a' else 'counterexample'}")
    cli.fill_defaults(args, QUICK, DEFAULTS)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in GPT_METHODS]
    if bad or not args.methods:
        raise cli.UsageError(f"--methods: unknown method(s) {bad}; choose from {', '.join(GPT_METHODS)}")
    if args.part != "a":
        cli.refuse_flags_of_untrained(build_parser(), args, args.methods, {
            "lr": ("adamw", "flora", "rso"), "rank": ("galore", "golore", "flora", "rso")})
    for name in ("ce_steps", "steps", "eval_every", "eval_batches", "batch_size", "max_chars", "rank"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise cli.UsageError(f"--lr must be a positive number, got {args.lr}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise cli.UsageError(f"--weight-decay must be a number >= 0, got {args.weight_decay}")


def run(args) -> dict:
    """The demo as the parsed arguments say; returns {"counterexample": ..., "gpt": ...}."""
    _validate(args)
    summary, md, curves = {}, [], {}
    do_a, do_b = args.part in ("a", "both"), args.part in ("b", "both")
    if do_b:
        text, desc = load_text(notice=False, max_chars=args.max_chars)
        cfg, preset_batch = preset(args.preset)
        data = TextData(text, block_size=cfg.block_size, cache_dir=args.cache_dir or None, description=desc,
                        write_cache=False)     # written below, once every input is good
        cfg.vocab_size = data.vocab_size
        batch_size = args.batch_size or preset_batch
        if args.rank is not None and args.rank > cfg.n_embd:
            raise cli.UsageError(f"--rank {args.rank} is larger than the smallest side of the GPT's "
                                 f"matrices, n_embd = {cfg.n_embd}")
    cli.check_out_dir(args.out)          # the inputs are good: from here on we may write
    written = ["subspace_results.md", "subspace_results.json"]

    if do_a:
        print(f"(a) GoLore's counterexample: {args.ce_steps} steps, r = 4, T = 100, SGD lr 0.01 inside")
        for m in CE_METHODS:
            t0 = time.perf_counter()
            curves[m] = counterexample(m, steps=args.ce_steps, seed=args.seed)
            print(f"  {CE_LABELS[m]:24s} ‖∇f‖ {curves[m][0]:.3f} -> {curves[m][-1]:.3g} "
                  f"({time.perf_counter() - t0:.1f} s)")
        table = ce_table(curves, args.ce_steps)
        print("\n" + table)
        md.append(f"## (a) GoLore's counterexample, {args.ce_steps} steps, seed {args.seed}\n\n{table}")
        summary["counterexample"] = {m: {"first": float(v[0]), "last": float(v[-1]),
                                         "tail_mean": float(v[-max(1, len(v) // 10):].mean())}
                                     for m, v in curves.items()}

    if do_b:
        data.save_cache()
        minigrad.configure_runtime()
        val = data.fixed_batches("val", args.eval_batches, batch_size, seed=args.seed + 123)
        head = (f"GPT '{args.preset}' ({cfg.n_layer} layers, n_embd {cfg.n_embd}) on {desc}: {args.steps} "
                f"steps x batch {batch_size} x T={cfg.block_size}, seed {args.seed}, rank "
                f"{args.rank or 'n_embd/4 = ' + str(max(1, cfg.n_embd // 4))}")
        print(f"(b) {head}")
        warm = GPT(cfg, seed=args.seed)   # the first forward and backward pay one-time costs
        lm_loss(warm, val[0]).backward()  # (kernel compilation, caches): not the first method's
        runs = {}
        for i, m in enumerate(args.methods):
            print(f"  method {i + 1}/{len(args.methods)}: {LABELS[m]}", flush=True)
            runs[m] = train_gpt(m, cfg, data, batch_size, val, args)
        table = gpt_table(runs)
        print("\n" + table)
        checks = []
        if "adamw" in runs:
            for m in ("galore", "golore"):
                if m in runs:
                    ratio = runs[m]["state_bytes"] / runs["adamw"]["state_bytes"]
                    verdict = "at most half: ok" if ratio <= 0.5 else "MORE than half of AdamW's"
                    checks.append(f"{LABELS[m]} state / AdamW state = {ratio:.3f} ({verdict})")
        for line in checks:
            print(line)
        md.append(f"## (b) {head}\n\n{table}" + "".join(f"\n{c}" for c in checks) + ("\n" if checks else ""))
        summary["gpt"] = runs

    # the files last: a run stopped by Ctrl-C in (b) leaves no figure of (a) beside old ones of (b)
    if do_a:
        plot_counterexample(curves, args, os.path.join(args.out, "subspace_counterexample.png"))
        written.append("subspace_counterexample.png")
    if do_b:
        plot_gpt(runs, f"GPT '{args.preset}', {args.steps} steps", os.path.join(args.out, "subspace_gpt.png"))
        written.append("subspace_gpt.png")
    with open(os.path.join(args.out, "subspace_results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.out, "subspace_results.json"), "w", encoding="utf-8") as f:
        json.dump({"counterexample": {m: v[::10].tolist() for m, v in curves.items()},
                   "gpt": summary.get("gpt", {})}, f, indent=1)
    print(f"wrote {', '.join(sorted(written))} in {args.out}/")
    return summary


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
