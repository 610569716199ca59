"""One leaderboard: every registered optimizer trains the same GPT for the same steps.

Each optimizer in ``optim.available()`` (one name per optimizer: aliases such as ``zosgd`` for
``zo-sgd`` are run once, under the first name) trains GPT ``small`` (``tiny`` with --quick) on
the default corpus through ``models.training.Trainer``: the same initial weights, the same
batches, the same token budget (``--steps`` x batch x block), warmup + cosine decay to lr/10,
gradient clipping at global norm 1 (first-order methods; zeroth-order ones use no gradient),
decoupled weight decay 0.1 on matrices only and betas (0.9, 0.99) wherever the optimizer (or the
one it runs inside) takes them (``models.training.optimizers.build_optimizer``, as the train
CLI). Each optimizer runs at ``--num-lrs`` peak learning rates spaced by half a decade around
its default (``BASE``: the torch or paper default scaled to this model, see the comments
there); the best final validation loss is kept and every run is shown. The zeroth-order methods (mezo, lozo, zo-sgd)
get the same steps as everyone else although they usually need far more (one loss difference
per step instead of a gradient): the leaderboard compares equal steps and tokens, not equal
progress.

A run whose loss or gradient turns NaN/inf is recorded as diverged, not a crash: the optimizers
keep ``nonfinite="raise"``, the ``FloatingPointError`` they raise (and the one raised here when
a loss comes back non-finite, e.g. from a zeroth-order step) ends that run only, with the
curves up to that step.

Writes into --out, rewritten after every finished run:
  runs/<optimizer>_lr<lr>.json   one run's settings and curves; a rerun with the same settings
                                 skips it (an interrupted sweep resumes), a changed setting
                                 runs it anew
  results.md                     the leaderboard (best lr per optimizer, ranked by final
                                 validation loss, with tokens/s and optimizer-state bytes) and
                                 a table of every lr tried
  loss.png                       validation loss against step and against training seconds
  state.png                      the optimizer state each held (peak of ``state_bytes()``)
  speed.json                     the speed pass: once every run is done, each optimizer at its
                                 best lr is timed again for a few steps, in turn with the others
                                 over a few rounds (median), so that tokens/s compares them under
                                 the same load; a sweep takes hours and the machine's load changes
                                 under it. Run the finished command again on an idle machine to
                                 measure the speeds anew (``--speed-rounds 0`` keeps the last pass).

    python demos/compare_optimizers.py --quick                # GPT tiny, 40 steps, 2 lrs: minutes
    python demos/compare_optimizers.py                        # GPT small, 300 steps, 3 lrs: hours
    python demos/compare_optimizers.py --quick --optimizers adamw,mezo,lisa
    python demos/compare_optimizers.py --quick --out docs/leaderboard_quick   # docs/leaderboard.md

Bad input prints one line and exits with code 2.
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
from models.gpt import GPT, PRESETS, GPTConfig, preset  # noqa: E402
from minigrad.backend import cpu_model  # noqa: E402
from models.training import Diverged, Trainer, clip_grad_norm, lm_loss, pyplot, save_figure  # noqa: E402
from models.training.optimizers import build_optimizer  # noqa: E402

# Names registered for an optimizer that is already run under another name.
ALIASES = {"zosgd": "zo-sgd", "pgd": "perturbed_gd", "perturbed_sgd": "perturbed_gd",
           "proxgrad": "ista", "nesterov_agd": "agd"}

# The centre of each optimizer's lr sweep (the schedule's peak) and options beyond
# build_optimizer's. AdamW's 6e-3 is the train CLI's, measured on GPT small; methods that use
# Adam's update on their coordinates (layer-wise, subspace, Adam-mini, Shampoo's Adam grafting,
# SOAP) start from it too. The others: the torch.optim or paper default, moved to this model by
# the same factor where the paper says how (Lion: 3-10x below AdamW).
ADAM_LR = 6e-3
BASE = {
    # Adam family: AdamW's lr
    **{n: (ADAM_LR, {}) for n in ("adam", "adamw", "amsgrad", "nadam", "radam", "adam-mini",
                                  "badam", "lisa", "misa", "shampoo", "soap", "flora")},
    "adamax": (1.2e-2, {}),                  # torch's default is 2x Adam's
    "rmsprop": (2e-3, {}),                   # without bias correction it wants a smaller lr than Adam
    "adagrad": (1e-2, {}),                   # torch's default
    "adadelta": (1.0, {}),                   # torch's default (the lr only scales its unit-less step)
    "adafactor": (1e-2, {}),                 # torch's default; relative step: times RMS(theta)
    "lion": (6e-4, {}),                      # Chen et al. 2023: 3-10x smaller than AdamW's
    "muon": (2e-2, {"adamw_kwargs": {"lr": ADAM_LR, "betas": (0.9, 0.99)}}),   # Jordan et al. 2024;
                                             # AdamW (fixed at its own lr) on what is not a hidden matrix
    # SGD family: clipped gradients of norm <= 1, so lrs of order 0.1-1
    **{n: (0.3, {}) for n in ("gd", "sgd", "ista", "perturbed_gd", "asgd", "anderson")},
    **{n: (0.05, {}) for n in ("momentum", "nesterov", "heavyball", "agd", "fista")},
    "rprop": (1e-3, {}),                     # the initial step of every coordinate
    "bcd": (0.3, {}),                        # plain gradient steps on one block at a time
    # L-BFGS with torch's strong-Wolfe line search, lr 1 (its natural step); 5 iterations per
    # step on the step's batch instead of torch's 20, so it costs ~5-10 gradients per step
    "lbfgs": (1.0, {"line_search_fn": "strong_wolfe", "max_iter": 5}),
    # subspace methods: GaLore's recipe (Zhao et al. 2024, arXiv 2403.03507) scale 0.25 with
    # a larger lr; the rank is n_embd / 4 (set in options())
    "galore": (1e-2, {"scale": 0.25, "update_proj_gap": 200, "inner": "adamw"}),
    "golore": (1e-2, {"scale": 0.25, "update_proj_gap": 200, "inner": "adamw"}),
    "rso": (ADAM_LR, {"update_proj_gap": 50, "inner": "adamw"}),
    # zeroth-order: a two-point estimate's variance grows with the parameter count, so the lr
    # is orders of magnitude below SGD's
    **{n: (1e-3, {}) for n in ("mezo", "zo-sgd", "lozo")},
}
DEFAULT_LR = 1e-3                            # an optimizer registered after this table was written
RANKED = ("galore", "golore", "rso", "flora")   # take a rank

QUICK = {"preset": "tiny", "steps": 40, "num_lrs": 2, "eval_every": 10, "eval_batches": 4,
         "max_chars": 200_000, "speed_rounds": 1, "speed_steps": 5}
FULL = {"preset": "small", "steps": 300, "num_lrs": 3, "eval_every": 50, "eval_batches": 8,
        "max_chars": None, "speed_rounds": 3, "speed_steps": 20}


def lr_grid(base, n) -> list:
    """``n`` learning rates half a decade apart, centred on ``base`` (n=3: base/3.16, base, 3.16 base)."""
    return [float(f"{base * 10 ** ((k - (n - 1) / 2) / 2):.3g}") for k in range(n)]


def optimizer_names() -> list:
    return [n for n in optim.available() if n not in ALIASES]


def options(name, cfg) -> dict:
    extra = dict(BASE.get(name, (DEFAULT_LR, {}))[1])
    if name in RANKED:
        extra["rank"] = max(1, cfg.n_embd // 4)
    return extra


def kind(opt) -> str:
    if not opt.uses_gradients:
        return "zeroth-order"
    if opt.trainable_names() is not None:
        return "layer-wise"
    return "closure" if opt.uses_closure else "first-order"


# ----------------------------------------------------------------------------- one run
def make_trainer(name, lr, cfg, data, batch_size, args, **kw) -> Trainer:
    """The one recipe every run follows (the sweep's and the speed pass's): the GPT from the
    seed, the optimizer at peak ``lr``, warmup + cosine to lr/10 over ``args.steps``, clipping
    at norm 1. ``kw`` goes to the Trainer (evaluation, callbacks, progress)."""
    model = GPT(cfg, seed=args.seed)
    opt = build_optimizer(name, model, lr, args.weight_decay, args.beta2, args.seed, options(name, cfg))
    return Trainer(model, lm_loss, opt, lambda rng: data.get_batch("train", batch_size, rng),
                   steps=args.steps, schedule="cosine",
                   schedule_kwargs={"warmup_steps": max(1, args.steps // 10), "min_ratio": 0.1},
                   grad_hooks=[clip_grad_norm(1.0)], seed=args.seed + 1, **kw)


def run_one(name, lr, cfg, data, batch_size, val, args) -> dict | None:
    """Train one optimizer at one peak lr; the result (settings, curves, speed, state bytes,
    diverged or not) as a JSON-ready dict, or None when Ctrl-C / SIGTERM stopped the run."""
    tokens_per_step = batch_size * cfg.block_size
    clock = {"train": 0.0, "mark": 0.0}
    wall = []

    def on_step(tr):
        now = time.perf_counter()
        clock["train"] += now - clock["mark"]
        clock["mark"] = now
        if not math.isfinite(tr.last_loss):
            raise FloatingPointError(f"loss {tr.last_loss} at step {tr.step}")

    def on_eval(tr, v):
        wall.append(clock["train"])                    # training seconds, evaluations excluded
        clock["mark"] = time.perf_counter()

    trainer = make_trainer(name, lr, cfg, data, batch_size, args, eval_batches=val,
                           eval_every=args.eval_every, on_step=on_step, on_eval=on_eval,
                           progress=not args.no_progress, log_every=max(1, args.steps // 4))
    opt = trainer.optimizer
    diverged = None
    clock["mark"] = t0 = time.perf_counter()
    try:
        if trainer.fit().interrupted:
            return None                                # Ctrl-C / SIGTERM: not a result, not saved
    except Diverged as e:                              # it names the step itself
        diverged = str(e)
    except (FloatingPointError, np.linalg.LinAlgError) as e:
        diverged = f"step {trainer.step}: {e}"
    h = trainer.history
    final = h["val_loss"][-1] if h["val_loss"] and h["val_step"][-1] == args.steps else float("nan")
    if diverged is None and not math.isfinite(final):
        diverged = f"validation loss {final} at step {args.steps}"
    return dict(optimizer=name, lr=lr, kind=kind(opt), diverged=diverged,
                final_val_loss=None if diverged else final,
                val_step=list(h["val_step"]), val_loss=[v if math.isfinite(v) else None for v in h["val_loss"]],
                train_seconds=wall, seconds=time.perf_counter() - t0,
                tokens_per_second=trainer.step * tokens_per_step / max(clock["train"], 1e-9),
                state_bytes=int(trainer.peak_state_bytes))


def measure_speed(best, cfg, data, batch_size, args) -> dict:
    """Tokens/s of each optimizer at its best lr, measured apart from the sweep.

    A full sweep takes hours and whatever else runs on the machine changes under it, so the
    sweep's own timings compare runs made under different loads. Here every optimizer takes
    ``--speed-steps`` timed steps (after two untimed ones: first-call costs) in turn, for
    ``--speed-rounds`` rounds, and keeps its median: all of them under the same conditions.
    The steps are the runs' first steps (the same recipe, ``Trainer.train_step``), without
    evaluations. Ctrl-C stops the pass; nothing of it is kept. Returns {"tokens_per_second": {name: median}, "rounds": {name: [...]},
    "cpu", "load_average": [before, after], "settings"}."""
    timed = [r for r in best if r["diverged"] is None]
    warm = min(2, args.steps - 1)
    k = min(args.speed_steps, args.steps - warm)       # steps of the recipe, not beyond its end
    tokens_per_step = batch_size * cfg.block_size
    rounds = {r["optimizer"]: [] for r in timed}
    load_before = os.getloadavg()[0]
    for rnd in range(1, args.speed_rounds + 1):
        for r in timed:
            trainer = make_trainer(r["optimizer"], r["lr"], cfg, data, batch_size, args,
                                   progress=False, log_every=0)
            for _ in range(warm):
                trainer.train_step()
            start = time.perf_counter()
            for _ in range(k):
                trainer.train_step()
            rounds[r["optimizer"]].append(k * tokens_per_step / (time.perf_counter() - start))
        print(f"speed round {rnd}/{args.speed_rounds}: " + ", ".join(
            f"{n} {v[-1]:,.0f}" for n, v in rounds.items()) + " tokens/s", flush=True)
    return {"tokens_per_second": {n: float(np.median(v)) for n, v in rounds.items()}, "rounds": rounds,
            "cpu": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
            "load_average": [load_before, os.getloadavg()[0]],
            "settings": {"steps": k, "rounds": args.speed_rounds, "batch_size": batch_size,
                         "preset": args.preset, "lrs": {r["optimizer"]: r["lr"] for r in timed}}}


# ----------------------------------------------------------------------------- tables and plots
def best_runs(results) -> list:
    """Per optimizer, its run with the lowest final validation loss (a diverged one if all did),
    ranked by that loss; optimizers whose every run diverged come last."""
    by_opt = {}
    for r in results:
        by_opt.setdefault(r["optimizer"], []).append(r)

    def key(r):
        return (r["diverged"] is not None, r["final_val_loss"] if r["diverged"] is None else 0.0)
    best = [min(runs, key=key) for runs in by_opt.values()]
    return sorted(best, key=lambda r: (*key(r), r["optimizer"]))


def _mib(b) -> str:
    return f"{b / 2**20:.3f} MiB"


def _loss(r) -> str:
    return f"{r['final_val_loss']:.4f}" if r["diverged"] is None else "diverged"


def tables(results, head, speed=None) -> str:
    best = best_runs(results)
    measured = (speed or {}).get("tokens_per_second", {})
    adamw = next((r for r in results if r["optimizer"] == "adamw"), None)
    lines = [f"# Optimizer leaderboard\n\n{head}\n",
             "| rank | optimizer | kind | best lr | final val loss | best val loss | tokens/s | "
             "optimizer state | vs AdamW |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(best, 1):
        finite = [v for v in r["val_loss"] if v is not None]
        ratio = f"{r['state_bytes'] / adamw['state_bytes']:.2f}×" if adamw and adamw["state_bytes"] else "-"
        lines.append(f"| {i} | {r['optimizer']} | {r['kind']} | {r['lr']:g} | {_loss(r)} | "
                     f"{min(finite) if finite else float('nan'):.4f} | "
                     f"{measured.get(r['optimizer'], r['tokens_per_second']):,.0f} | "
                     f"{_mib(r['state_bytes'])} | {ratio} |")
    if speed:
        st = speed["settings"]
        how = (f"tokens/s: the speed pass after the sweep, {st['rounds']} round(s) of {st['steps']} timed "
               f"steps per optimizer at its best lr, the optimizers in turn, the median kept; "
               f"{speed['cpu']}, load average {speed['load_average'][0]:.2f} before and "
               f"{speed['load_average'][1]:.2f} after")
    else:
        how = ("tokens/s: the run's training tokens over its training seconds (evaluations excluded), "
               "measured during the sweep, so under whatever else ran then")
    lines += ["", "Final val loss: validation loss (nats/token, fixed batches) after the last step at "
              f"the best lr; best val loss: the lowest of any evaluation of that run. {how}. Optimizer "
              "state: the peak of `state_bytes()` (moments, factors, projections; not weights or "
              "gradients).",
              "", "## Every learning rate tried", "",
              "| optimizer | lr | final val loss | seconds | note |", "|---|---:|---:|---:|---|"]
    for b in best:
        for r in sorted((r for r in results if r["optimizer"] == b["optimizer"]), key=lambda r: r["lr"]):
            note = ("best" if r is b and r["diverged"] is None else "") + (r["diverged"] or "").replace("|", "/")
            lines.append(f"| {r['optimizer']} | {r['lr']:g} | {_loss(r)} | {r['seconds']:.1f} | {note} |")
    return "\n".join(lines) + "\n"


def plot(results, title, out, speed=None, tokens_per_step=None):
    """loss.png (against step, and against training seconds: at the speed pass's tokens/s when
    there is one, else as timed in the sweep) and state.png."""
    plt = pyplot()
    measured = (speed or {}).get("tokens_per_second", {})

    best = best_runs(results)
    styles = ["-", "--", ":", "-."]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(16, 7))
    for i, r in enumerate(best):
        steps = [s for s, v in zip(r["val_step"], r["val_loss"]) if v is not None]
        if r["optimizer"] in measured:
            secs = [s * tokens_per_step / measured[r["optimizer"]] for s in steps]
        else:
            secs = [s for s, v in zip(r["train_seconds"], r["val_loss"]) if v is not None]
        vals = [v for v in r["val_loss"] if v is not None]
        style = dict(color=plt.cm.tab20(i % 20), ls=styles[(i // 20) % len(styles)], marker=".", lw=1.2)
        label = f"{r['optimizer']} (lr {r['lr']:g}){' diverged' if r['diverged'] else ''}"
        ax0.plot(steps, vals, label=label, **style)
        ax1.plot(secs[: len(vals)], vals, **style)
    finite = [r["final_val_loss"] for r in best if r["diverged"] is None]
    xl = "training seconds at the speed pass's tokens/s" if measured else "training seconds (evaluations excluded)"
    for ax, xl in ((ax0, "step"), (ax1, xl)):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        if finite:      # the start (~ln vocab) and the diverged runs would flatten the interesting part
            top = max(v for r in best for v in r["val_loss"][:1] if v is not None)
            ax.set_ylim(min(finite) - 0.05, top + 0.1)
    ax0.set_title(title)
    ax1.set_title("the same runs against time")
    fig.legend(loc="center right", fontsize=8, ncol=1)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    save_figure(fig, os.path.join(out, "loss.png"), dpi=72)

    order = sorted(best, key=lambda r: r["state_bytes"])
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.28 * len(order) + 1)))
    mib = [r["state_bytes"] / 2**20 for r in order]
    ax.barh([r["optimizer"] for r in order], mib, color=["C3" if r["diverged"] else "C0" for r in order])
    for y, v in enumerate(mib):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlabel("optimizer state (MiB, peak of state_bytes())")
    ax.set_title(f"optimizer state held ({title}; red: diverged at its best lr)")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "state.png"), dpi=72)


# ----------------------------------------------------------------------------- command line
def build_parser():
    ap = cli.ArgumentParser(prog="compare_optimizers.py", description=__doc__)
    ap.add_argument("--optimizers", default=None,
                    help="comma-separated names from optim.available() (default: all of them)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 300; --quick 40)")
    ap.add_argument("--num-lrs", type=int, default=None,
                    help="learning rates per optimizer, half a decade apart around its default (default 3; --quick 2)")
    ap.add_argument("--preset", choices=list(PRESETS), default=None, help="GPT size (default small; --quick tiny)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    ap.add_argument("--eval-every", type=int, default=None, help="validate every N steps (default 50; --quick 10)")
    ap.add_argument("--eval-batches", type=int, default=None, help="fixed validation batches (default 8; --quick 4)")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="decoupled, on matrices only")
    ap.add_argument("--beta2", type=float, default=0.99,
                    help="beta2 wherever the optimizer (or the one it runs inside, GaLore's AdamW) takes betas")
    ap.add_argument("--seed", type=cli.seed, default=0)
    ap.add_argument("--speed-rounds", type=int, default=None,
                    help="rounds of the speed pass after the sweep, every optimizer timed in turn "
                         "in each, the median kept (default 3; --quick 1; 0: keep the last pass)")
    ap.add_argument("--speed-steps", type=int, default=None,
                    help="timed steps per optimizer and round (default 20; --quick 5)")
    cli.add_corpus_arguments(ap, max_chars_help="use only the first N characters (--quick 200,000)")
    cli.add_output_arguments(ap, os.path.join("out", "compare_optimizers"),
                             out_help="directory for runs/*.json, results.md, loss.png, state.png and speed.json",
                             quick_help="GPT tiny, 40 steps, 2 lrs per optimizer")
    return ap


def _validate(args):
    cli.fill_defaults(args, QUICK, FULL)
    names = optimizer_names()
    if args.optimizers is None:
        args.optimizers = names
    else:
        picked = [m.strip().lower() for m in args.optimizers.split(",") if m.strip()]
        bad = [m for m in picked if m not in optim.available()]
        if bad or not picked:
            raise cli.UsageError(f"--optimizers: unknown optimizer(s) {bad or args.optimizers!r}; "
                                 f"choose from {', '.join(names)}")
        # an alias runs as its canonical name: its lr sweep and options, one leaderboard row
        args.optimizers = list(dict.fromkeys(ALIASES.get(m, m) for m in picked))
    for name in ("steps", "eval_every", "eval_batches", "batch_size", "max_chars"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.speed_rounds < 0 or args.speed_steps < 1:
        raise cli.UsageError(f"--speed-rounds must be >= 0 and --speed-steps >= 1, got "
                             f"{args.speed_rounds} and {args.speed_steps}")
    if not 1 <= args.num_lrs <= 7:
        raise cli.UsageError(f"--num-lrs must be from 1 to 7, got {args.num_lrs}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise cli.UsageError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if not 0 <= args.beta2 < 1:
        raise cli.UsageError(f"--beta2 must be in [0, 1), got {args.beta2}")


def settings(args, name, lr, batch_size, cfg, data_key) -> dict:
    """Everything a run's result depends on: a saved run with other settings is run anew."""
    return {"optimizer": name, "lr": lr, "options": options(name, cfg), "preset": args.preset,
            "config": cfg.to_dict(), "batch_size": batch_size, "steps": args.steps,
            "eval_every": args.eval_every, "eval_batches": args.eval_batches, "seed": args.seed,
            "weight_decay": args.weight_decay, "beta2": args.beta2, "data": data_key}


def _load(path, want):
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    got = saved.get("settings")
    if isinstance(got, dict) and isinstance(got.get("config"), dict):
        # a GPTConfig field added after the run was saved has its default: the model the run trained
        got = {**got, "config": {**GPTConfig().to_dict(), **got["config"]}}
    return saved["result"] if got == json.loads(json.dumps(want)) else None


def _speed(results, cfg, data, batch_size, args) -> dict | None:
    """The speed pass's numbers: measured now (``--speed-rounds`` > 0) and saved to speed.json,
    or the saved ones when they were measured for the same best lrs and batch; else None."""
    path = os.path.join(args.out, "speed.json")
    best = best_runs(results)
    if args.speed_rounds > 0:
        speed = measure_speed(best, cfg, data, batch_size, args)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(speed, f, indent=1)
        return speed
    try:
        with open(path, encoding="utf-8") as f:
            speed = json.load(f)
    except (OSError, ValueError):
        return None
    lrs = {r["optimizer"]: r["lr"] for r in best if r["diverged"] is None}
    same = (speed["settings"]["lrs"] == lrs and speed["settings"]["batch_size"] == batch_size
            and speed["settings"]["preset"] == args.preset)
    return speed if same else None


def run(args) -> list:
    """The sweep as the parsed arguments say; returns every run's result."""
    _validate(args)
    text, desc = load_text(notice=False, max_chars=args.max_chars)
    cfg, preset_batch = preset(args.preset)
    data = TextData(text, block_size=cfg.block_size, cache_dir=args.cache_dir or None, description=desc,
                    write_cache=False)        # written below, once every input is good
    cfg.vocab_size = data.vocab_size
    batch_size = args.batch_size or preset_batch
    if batch_size * cfg.block_size > len(data.train):
        raise cli.UsageError(f"--batch-size {batch_size} x block {cfg.block_size} is more than the "
                             f"training split ({len(data.train):,} tokens); use a smaller batch")
    cli.check_out_dir(args.out)               # the inputs are good: from here on we may write
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    data.save_cache()
    minigrad.configure_runtime()
    val = data.fixed_batches("val", args.eval_batches, batch_size, seed=args.seed + 123)
    head = (f"GPT '{args.preset}' ({cfg.n_layer} layers, n_embd {cfg.n_embd}, "
            f"{GPT(cfg, seed=args.seed).num_parameters():,} parameters) on {desc}"
            f"{f' (first {args.max_chars:,} characters)' if args.max_chars else ''}: {args.steps} steps "
            f"x batch {batch_size} x block {cfg.block_size} tokens, seed {args.seed}, "
            f"{args.num_lrs} lr(s) per optimizer.")
    plan = [(n, lr) for n in args.optimizers for lr in lr_grid(BASE.get(n, (DEFAULT_LR,))[0], args.num_lrs)]
    print(f"{head}\n{len(args.optimizers)} optimizers, {len(plan)} runs; results in {args.out}/", flush=True)
    warm = GPT(cfg, seed=args.seed)           # the first forward and backward pay one-time costs
    lm_loss(warm, val[0]).backward()          # (kernel compilation, caches), not the first run
    results, skipped = [], 0

    def write(speed=None):
        with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
            f.write(tables(results, head, speed))
        plot(results, f"GPT '{args.preset}', {args.steps} steps, best lr each", args.out, speed,
             batch_size * cfg.block_size)

    for i, (name, lr) in enumerate(plan, 1):
        want = settings(args, name, lr, batch_size, cfg, data.key)
        path = os.path.join(args.out, "runs", f"{name}_lr{lr:g}.json")
        r = _load(path, want)
        skipped_now = r is not None
        if skipped_now:
            skipped += 1
            print(f"[{i}/{len(plan)}] {name} lr {lr:g}: done before ({_loss(r)}), skipped", flush=True)
        else:
            r = run_one(name, lr, cfg, data, batch_size, val, args)
            if r is None:                     # the finished runs are saved; this one is not
                if results:
                    write()
                kept = f"results.md and the plots hold the {len(results)} finished" if results else "no"
                raise cli.Interrupted(f"interrupted in run {i}/{len(plan)} ({name} lr {lr:g}), not recorded; "
                                      f"{kept} run(s); run the same command again to resume from here")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"settings": want, "result": r}, f, indent=1)
            end = f"diverged ({r['diverged']})" if r["diverged"] else f"val loss {r['final_val_loss']:.4f}"
            print(f"[{i}/{len(plan)}] {name} lr {lr:g}: {end} in {r['seconds']:.1f} s, "
                  f"{r['tokens_per_second']:,.0f} tok/s, state {_mib(r['state_bytes'])}", flush=True)
        results.append(r)
        if not skipped_now:
            write()                           # an interrupted sweep leaves its table and plots
    if skipped_now:
        write()                               # the runs skipped since the last write, before the speed pass
    try:
        speed = _speed(results, cfg, data, batch_size, args)
    except KeyboardInterrupt:                 # no Trainer here to catch Ctrl-C: a traceback otherwise
        earlier = os.path.exists(os.path.join(args.out, "speed.json"))
        raise cli.Interrupted(f"interrupted in the speed pass; results.md and the plots hold all {len(results)} "
                              f"runs without speeds, speed.json is "
                              f"{'an earlier pass' if earlier else 'not written'}") from None
    write(speed)
    print("\n" + tables(results, head, speed))
    print(f"{len(plan) - skipped} runs trained, {skipped} skipped (done before); wrote results.md, "
          f"loss.png, state.png{', speed.json' if args.speed_rounds else ''} in {args.out}/")
    return results


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
