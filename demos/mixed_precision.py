"""Mixed precision, watched: gradient underflow, loss scaling, master weights, FP8 and NVFP4.

Four panels in one PNG, ``--out/mixed_precision.png``:

1. Histogram of log2 |gradient| of the GPT at initialisation (fp32): parameter gradients and the
   activation gradients entering every linear layer in backward, with fp16's limits marked.
   Below 2^-24 (fp16's smallest subnormal) fp16 keeps no digit: up to 2^-25 a value rounds to
   zero, above it to 2^-24 (the printout gives both fractions) -- without loss scaling; a scale S
   moves every value up by log2 S.
2. Training curves (same seed, same batches; AdamW with warmup + cosine decay) for
     fp32 | fp16 without master weights and without loss scaling | fp16 + fp32 master weights, no
     loss scaling | fp16 + master + dynamic loss scaling | bf16 + master | fp8 (E4M3 forward, E5M2
     gradients, per-tensor scaling) | NVFP4 weights (fp32 master, fp32 compute).
3. The gap of each recipe's loss to fp32's on the same batch, and 4. the fraction of weight
   updates smaller than half an ulp of the stored weight (lost without master weights, kept in the
   master with them).

Every recipe runs through ``models.training.Trainer`` with
``minigrad.amp.MixedPrecisionOptimizer`` and the recipe's autocast policy; the per-step counters
come from its ``on_step`` callback. The results table is printed and written to
``--out/mixed_precision_results.md`` (the per-step losses to ``mixed_precision_results.json``).
Reference: Micikevicius et al. 2018, "Mixed Precision Training", arXiv 1710.03740.

Everything is emulated in NumPy by `minigrad.precision` (rounding) and `minigrad.amp` (autocast,
loss scaling, master weights), so a run is slower than fp32, not faster.

    python demos/mixed_precision.py                      # GPT `tiny` preset, ~3 min on 2 cores
    python demos/mixed_precision.py --quick              # 20 steps on a slice of the corpus
    python demos/mixed_precision.py --steps 60 --model mlp    # quick look
    python demos/mixed_precision.py --recipes fp32,fp16_master_dynamic,bf16
    python demos/mixed_precision.py --out docs           # redraw docs/mixed_precision.png

Bad input (also --preset with --model mlp) prints one line and exits with code 2, writing nothing
(not even the token cache); Ctrl-C or SIGTERM stops the recipe's run after the current step with
one line saying where (exit code 130) and writes no table, JSON or figure.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

# Single-threaded BLAS: the matrices here are small, and on a shared 2-core machine BLAS threads
# competing with other work made each step ~3x slower (measured). Set the variable to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import minigrad.functional as F  # noqa: E402
import optim  # noqa: E402
from minigrad import amp, nn  # noqa: E402
from minigrad import precision as P  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.training import Trainer, evaluate, lm_loss, pyplot, save_figure  # noqa: E402

# key: (label, autocast policy, param_format, master weights, loss scaler factory)
RECIPES = {
    "fp32": ("fp32", None, "fp32", True, None),
    "fp16_nomaster": ("fp16, no master weights, no loss scaling", "fp16", "fp16", False, None),
    "fp16_master": ("fp16 + fp32 master weights, no loss scaling", "fp16", "fp16", True, None),
    "fp16_master_dynamic": ("fp16 + master + dynamic loss scaling", "fp16", "fp16", True,
                            lambda: amp.DynamicLossScaler(init_scale=2.0 ** 16, growth_interval=100)),
    "bf16": ("bf16 + master weights", "bf16", "bf16", True, None),
    "fp8": ("fp8: E4M3 forward, E5M2 gradients (per-tensor scaled)", "fp8", "fp32", True, None),
    "nvfp4": ("NVFP4 weights (fp32 master, fp32 compute)", None, "nvfp4", True, None),
    # optional (not in the default plot): bf16 weights without masters, nearest vs stochastic rounding
    "bf16_nomaster": ("bf16, no master weights", "bf16", "bf16", False, None),
    "bf16_nomaster_sr": ("bf16, no master weights, stochastic rounding", "bf16", "bf16", False, None),
}
DEFAULT = ["fp32", "fp16_nomaster", "fp16_master", "fp16_master_dynamic", "bf16", "fp8", "nvfp4"]
STOCHASTIC = {"bf16_nomaster_sr"}
# step count and corpus slice with and without --quick (flags given explicitly win)
QUICK = {"steps": 20, "max_chars": 200_000, "preset": "tiny"}
FULL = {"steps": 120, "preset": "tiny"}


class CharMLP(nn.Module):
    """Fallback model: predict each next character from the previous `ctx` ones (an MLP LM)."""

    def __init__(self, vocab, ctx=8, emb=32, hidden=256, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.ctx = ctx
        self.wte = nn.Embedding(vocab, emb, rng=rng)
        self.fc1 = nn.Linear(ctx * emb, hidden, rng=rng)
        self.fc2 = nn.Linear(hidden, vocab, rng=rng)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        pad = np.concatenate([np.zeros((B, self.ctx - 1), idx.dtype), idx], axis=1)
        win = np.lib.stride_tricks.sliding_window_view(pad, self.ctx, axis=1)  # (B, T, ctx)
        e = F.embedding(np.ascontiguousarray(win), self.wte.weight)  # (B, T, ctx, emb)
        h = F.gelu(self.fc1(e.reshape(B, T, -1)))
        logits = self.fc2(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss


def build(args, vocab):
    if args.model == "gpt":
        cfg, bs = preset(args.preset, vocab_size=vocab)
        return (lambda: GPT(cfg, seed=args.seed)), cfg.block_size, bs, cfg
    return (lambda: CharMLP(vocab, seed=args.seed)), 64, 32, None


def gradient_histogram(model, batch):
    """fp32 gradients at initialisation: parameter grads and activation grads entering linears."""
    x, y = batch
    model.zero_grad()
    stats = amp.grad_stats()
    stats.reset()
    stats.recording = []
    with amp.autocast("fp32"):  # fp32 policy: nothing is rounded, but cast_grad records |g|
        _, loss = model(x, y)
    loss.backward()
    act = np.concatenate(stats.recording)
    stats.reset()
    par = np.concatenate([np.abs(p.grad).ravel() for _, p in model.named_parameters()
                          if p.grad is not None])
    return par, act


def train(recipe, make_model, data, args, batch_size, block):
    """One recipe through the Trainer: the same seed and batches for every recipe, AdamW with
    warmup + cosine; the underflow and stalled-update counters of every step via ``on_step``."""
    label, policy, pfmt, master, make_scaler = RECIPES[recipe]
    model = make_model()
    opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=args.lr,
                       weight_decay=0.0)
    mp = amp.MixedPrecisionOptimizer(opt, pfmt, master_weights=master,
                                     scaler=make_scaler() if make_scaler else None,
                                     rounding="stochastic" if recipe in STOCHASTIC else "nearest",
                                     rng=args.seed)
    stats = amp.grad_stats()
    act_under, param_under, stalled = [], [], []

    def on_step(trainer):
        act_under.append(stats.underflow_fraction)   # the activation gradients of this backward
        stats.reset()
        param_under.append(mp.last_underflow)
        if not mp.last_step_skipped:                  # a skipped step changed no weight
            stalled.append(mp.last_stalled)

    trainer = Trainer(model, lm_loss, mp, lambda rng: data.get_batch("train", batch_size, rng, block),
                      steps=args.steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": min(10, args.steps // 10),
                                       "min_ratio": args.min_lr_ratio},
                      autocast=policy, seed=args.seed + 1, on_step=on_step, progress=not args.no_progress)
    t0 = time.perf_counter()
    stats.reset()
    if trainer.fit().interrupted:
        raise cli.Interrupted(f"interrupted in recipe {recipe} at step {trainer.step} of {args.steps}; "
                              f"no table, JSON or figure written to {args.out}")
    val = evaluate(model, lm_loss, data.fixed_batches("val", 4, batch_size, seed=123, block_size=block),
                   autocast=policy)
    return dict(label=label, losses=np.array(trainer.history["train_loss"]), val=val,
                stalled=np.array(stalled) if pfmt != "fp32" else None,
                skipped=mp.skipped_steps, scale=mp.loss_scale, param_underflow=float(np.mean(param_under)),
                act_underflow=float(np.mean(act_under)), seconds=time.perf_counter() - t0)


def smooth(v, k=10):
    """Trailing mean over the last k values (fewer at the start)."""
    c = np.cumsum(np.insert(np.asarray(v, dtype=np.float64), 0, 0.0))
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(i - k, 0)
    return (c[i] - c[lo]) / (i - lo)


def legend_or_note(ax, note, **kw):
    """The legend of ``ax``'s labelled curves, or ``note`` in its middle when it has none
    (matplotlib warns about a legend of nothing, and an empty panel should say why)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)
    else:
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.4")


def plot(par, act, runs, args, title, path):
    plt = pyplot()

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    (ax0, ax1), (ax2, ax3) = axes
    bins = np.arange(-60, 4, 1.0)
    for arr, name, c in ((par, "parameter gradients", "tab:blue"),
                         (act, "activation gradients (into linears)", "tab:orange")):
        nz = arr[arr > 0]
        frac = np.mean(nz < 2.0 ** -24) if nz.size else 0.0
        ax0.hist(np.log2(nz), bins=bins, alpha=0.55, color=c, density=True,
                 label=f"{name}: {100 * frac:.2f}% < 2^-24")
    top = ax0.get_ylim()[1]
    for v, txt, ls in ((-24, "fp16 min subnormal 2^-24", "-"), (-14, "fp16 min normal 2^-14", "--"),
                       (-24 - 16, "2^-24 / S, S = 2^16", ":")):
        ax0.axvline(v, color="k", ls=ls, lw=1)
        ax0.text(v - 1.0, top * 0.6, txt, rotation=90, va="top", ha="right", fontsize=8)
    ax0.set_xlabel("log2 |g|")
    ax0.set_ylabel("density")
    ax0.set_title(f"(1) {title}: gradient magnitudes at init (fp32)")
    ax0.legend(fontsize=8, loc="upper left")

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    col = {k: colors[i % len(colors)] for i, k in enumerate(runs)}
    for key, r in runs.items():
        ax1.plot(smooth(r["losses"]), lw=1.3, color=col[key],
                 label=f"{r['label']}  (val {r['val']:.3f}, skipped {r['skipped']})")
    ax1.set_xlabel("step")
    ax1.set_ylabel("train loss (10-step mean)")
    ax1.set_title(f"(2) training: AdamW lr={args.lr:g}, cosine to {args.min_lr_ratio:g}x, same batches")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)

    base = runs.get("fp32")
    if base is not None:
        for key, r in runs.items():
            if key != "fp32":
                ax2.plot(smooth(r["losses"] - base["losses"], 20), lw=1.2, color=col[key], label=r["label"])
        ax2.axhline(0, color="k", lw=0.8)
        ax2.set_yscale("symlog", linthresh=1e-3)  # linear within ±1e-3, logarithmic beyond
        ax2.set_ylabel("loss - fp32 loss (same batch, 20-step mean; symlog)")
    ax2.set_xlabel("step")
    ax2.set_title("(3) gap to fp32")
    ax2.grid(alpha=0.3)
    legend_or_note(ax2, "nothing to compare: needs fp32 and another recipe", fontsize=7)

    for key, r in runs.items():
        if r["stalled"] is not None and len(r["stalled"]):
            ax3.plot(np.arange(len(r["stalled"])), 100 * np.asarray(r["stalled"]), lw=1.2,
                     color=col[key], label=r["label"])
    ax3.set_xlabel("step")
    ax3.set_ylabel("% of updated weights whose stored value did not change")
    ax3.set_title("(4) updates below half an ulp of the stored weight")
    ax3.grid(alpha=0.3)
    legend_or_note(ax3, "no low-precision weights updated\n(fp32 only, or every step skipped)", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=72)


def results_table(runs) -> str:
    """The runs as a markdown table, with a legend of its columns."""
    lines = ["| recipe | train | val | skipped | scale | p-underflow | a-underflow | stalled | sec |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs.values():
        st = f"{100 * np.mean(r['stalled']):.2f}%" if r["stalled"] is not None and len(r["stalled"]) else "-"
        lines.append(f"| {r['label']} | {r['losses'][-10:].mean():.4f} | {r['val']:.4f} | {r['skipped']} | "
                     f"{r['scale']:.0f} | {100 * r['param_underflow']:.3f}% | {100 * r['act_underflow']:.3f}% | "
                     f"{st} | {r['seconds']:.1f} |")
    return "\n".join(lines) + (
        "\n\ntrain = mean of the last 10 training losses; val = 4 fixed validation batches in the "
        "recipe's precision; p-/a-underflow = nonzero parameter / activation gradient values flushed "
        "to 0; stalled = updated weights whose stored value did not change (mean over steps)\n")


def build_parser():
    ap = cli.ArgumentParser(prog="mixed_precision.py", description=__doc__)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per recipe (default 120; --quick: 20)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine schedule floor (x lr)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--preset", default=None, choices=list(PRESETS), help="GPT size (default tiny)")
    ap.add_argument("--model", choices=["gpt", "mlp"], default="gpt")
    ap.add_argument("--recipes", default=",".join(DEFAULT),
                    help=f"comma-separated subset of {', '.join(RECIPES)} (default: the first 7)")
    ap.add_argument("--seed", type=cli.seed, default=0)
    cli.add_corpus_arguments(ap, max_chars_help="use only the first N characters (--quick: 200,000)")
    cli.add_output_arguments(ap, os.path.join("out", "mixed_precision"),
                             out_help="directory for mixed_precision.png, mixed_precision_results.md and .json",
                             quick_help="a smoke run: 20 steps on a slice of the corpus")
    return ap


def _validate(args):
    if args.model == "mlp":
        cli.refuse_unused(build_parser(), args, ("preset",), "--model mlp trains no GPT")
    cli.fill_defaults(args, QUICK, FULL)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad or not args.recipes:
        raise cli.UsageError(f"--recipes: {f'unknown recipe(s) {bad}' if bad else 'no recipe given'}; choose "
                             f"from {', '.join(RECIPES)}")
    for name in ("steps", "batch_size", "max_chars"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise cli.UsageError(f"--lr must be a positive number, got {args.lr}")
    if not 0.0 <= args.min_lr_ratio <= 1.0:
        raise cli.UsageError(f"--min-lr-ratio must be in [0, 1], got {args.min_lr_ratio}")


def run(args) -> dict:
    """The demo as the parsed arguments say; returns the runs by recipe."""
    _validate(args)
    text, desc = load_text(notice=False, max_chars=args.max_chars)
    data = TextData(text, block_size=64, cache_dir=args.cache_dir or None, description=desc,
                    write_cache=False)     # written below, once every input is good
    make_model, block, bs, config = build(args, data.vocab_size)
    batch_size = args.batch_size or bs
    if config is not None:                   # (the kernel killed a batch of 100,000 without a word)
        cli.check_gpt_step_fits(config, batch_size)   # (its batches are random windows: they may overlap)
    title = f"GPT '{args.preset}'" if args.model == "gpt" else "char-MLP"
    print(f"{title} on {desc}: {args.steps} steps x batch {batch_size} x T={block}")
    cli.check_out_dir(args.out)          # the inputs are good: from here on we may write
    data.save_cache()

    hist_batch = data.get_batch("train", batch_size, np.random.default_rng(args.seed + 1), block)
    par, act = gradient_histogram(make_model(), hist_batch)
    for name, arr in (("parameter", par), ("activation", act)):
        nz = arr[arr > 0]
        print(f"  {name:10s} grads: {nz.size:9,d} nonzero, median |g| = 2^{np.log2(np.median(nz)):.1f}, "
              f"{100 * np.mean(nz < 2.0 ** -24):.3f}% < 2^-24, {100 * np.mean(nz < 2.0 ** -14):.2f}% < 2^-14, "
              f"{100 * np.mean(P.quantize(nz, 'fp16') == 0):.3f}% round to 0 in fp16")

    runs = {}
    for i, key in enumerate(args.recipes):
        print(f"recipe {i + 1}/{len(args.recipes)}: {RECIPES[key][0]}")
        runs[key] = train(key, make_model, data, args, batch_size, block)
    table = results_table(runs)
    print("\n" + table)
    with open(os.path.join(args.out, "mixed_precision_results.md"), "w", encoding="utf-8") as f:
        f.write(f"{title} on {desc}: {args.steps} steps x batch {batch_size} x T={block}, "
                f"AdamW lr {args.lr:g}, seed {args.seed}\n\n{table}")
    with open(os.path.join(args.out, "mixed_precision_results.json"), "w", encoding="utf-8") as f:
        json.dump({key: {"label": r["label"], "losses": r["losses"].tolist(), "val": r["val"],
                         "skipped": r["skipped"]} for key, r in runs.items()}, f, indent=1)
    png = os.path.join(args.out, "mixed_precision.png")
    plot(par, act, runs, args, title, png)
    print(f"wrote {png} ({os.path.getsize(png) / 1024:.0f} KB), mixed_precision_results.md and .json in {args.out}/")
    return runs


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
