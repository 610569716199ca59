"""Where the bytes of a training step go: exact prediction, live measurement, lecture formula.

For each GPT preset (tiny, small, medium at its own batch size) this runs real AdamW training
steps under `minigrad.memory.track` and prints, per category (parameters, gradients, optimizer
state, activations), the measured peak, the exact prediction of `models.costs.gpt_costs` and
the lecture's simplified formula. It then sweeps sequence length and batch size, measures the
matmul FLOPs and MFU of each preset's step, and writes into ``--out`` (default out/memory_costs):

    memory_costs_bars.png        stacked bytes per category: measured vs lecture, per preset
    memory_activations_seq.png   activation bytes vs sequence length: plain, checkpointed,
                                 fused (flash) attention, and the lecture's formula
    memory_costs_results.md      the tables it prints

Run:  python demos/memory_costs.py               (about a minute on 2 cores)
      python demos/memory_costs.py --quick       (tiny and small only, short sweeps: a smoke run)
      python demos/memory_costs.py --out docs    (redraw the figures of docs/memory.md)

Bad input prints one line and exits with code 2, writing nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

import numpy as np
from tqdm import tqdm

import optim
from minigrad import memory
from minigrad.backend import numba_available, use_backend
from models import cli
from models.costs import gpt_costs
from models.gpt import GPT, GPTConfig, preset
from models.training import Trainer, lm_loss, pyplot, save_figure

CATS = memory.CATEGORIES  # params, grads, optimizer, activations
MiB = 2 ** 20


def measure(cfg: GPTConfig, b: int, s: int, backend: str = "numpy", optimizer: bool = True,
            flops: bool = False):
    """One training step on random tokens under the ledger (and the FLOP counter when `flops`).

    With `optimizer`, the step is the one every training run takes (`Trainer.train_step`), and
    AdamW's state is allocated before it (one step on zero gradients), so the ledger sees the
    steady state of training; otherwise only forward + backward run."""
    model = GPT(cfg)
    opt = None
    rng = np.random.default_rng(0)
    batch = rng.integers(0, cfg.vocab_size, (b, s)), rng.integers(0, cfg.vocab_size, (b, s))
    if optimizer:
        params = {n: p.data for n, p in model.named_parameters()}
        opt = optim.create("adamw", params, lr=1e-4)
        opt.step({n: np.zeros_like(p) for n, p in params.items()})
        step = Trainer(model, lm_loss, opt, batches=None, steps=1, progress=False).train_step
    else:
        def step(batch):
            model.loss_and_grads(*batch)
    fc = memory.FlopCounter()
    with use_backend(backend), memory.track(model, opt) as led:
        with fc if flops else contextlib.nullcontext():
            step(batch)
    return (led, fc) if flops else led


def mib(n):
    return f"{n / MiB:.2f}"


def preset_table(names, peak_flops, progress=True):
    rows, results = [], {}
    head = ("| preset | params exact / lecture | category | measured MiB | exact MiB | lecture MiB | "
            "checkpointed MiB |\n|---|---|---|---:|---:|---:|---:|")
    for name in tqdm(names, desc="presets", leave=False, disable=not progress):
        cfg, b = preset(name)
        s = cfg.block_size
        costs = gpt_costs(cfg, b)
        led, fc = measure(cfg, b, s, flops=True)
        fc.peak_flops = peak_flops
        ck = measure(GPTConfig(**{**cfg.to_dict(), "checkpoint": True}), b, s)
        assert ck.peak["activations"] == costs.activations_checkpointed, name
        results[name] = (cfg, b, costs, led, fc, ck)
        for i, c in enumerate(CATS):
            label = (f"{name} (l={cfg.n_layer} h={cfg.n_embd} a={cfg.n_head} s={s} b={b})"
                     if i == 0 else "")
            pc = f"{costs.params:,} / {costs.lecture['params']:,}" if i == 0 else ""
            rows.append(f"| {label} | {pc} | {c} | {mib(led.peak[c])} | {mib(costs.bytes[c])} | "
                        f"{mib(costs.lecture['bytes'][c])} | {mib(ck.peak[c])} |")
        rows.append(f"| | | **peak of the sum** (measured) / sum (exact) / the lecture's formula, without v·h | "
                    f"{mib(led.peak['total'])} | {mib(costs.total_bytes)} | {mib(costs.lecture['total_bytes'])} | "
                    f"{mib(ck.peak['total'])} |")
    return head + "\n" + "\n".join(rows), results


def flops_table(results):
    lines = ["| preset | matmul FLOPs / step measured | exact | 6N + 12·l·s·h | time / step s | GFLOP/s | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (cfg, b, costs, led, fc, _) in results.items():
        tokens = b * cfg.block_size
        lines.append(f"| {name} | {fc.total:,} | {costs.flops_per_step:,} | "
                     f"{costs.flops_per_token['estimate_6N'] * tokens:,} | {fc.elapsed:.3f} | "
                     f"{fc.flops_per_second / 1e9:.1f} | {100 * fc.mfu:.0f}% |")
    return "\n".join(lines)


def sweep_table(name, seqs, batches, progress=True):
    cfg, _ = preset(name)
    lines = [f"Sweep on `{name}` (activations; measured = exact on the numpy backend):", "",
             "| s | b | measured MiB | exact MiB | lecture MiB | lecture / exact |",
             "|---:|---:|---:|---:|---:|---:|"]
    for s in tqdm(seqs, desc=f"sweep {name}", leave=False, disable=not progress):
        for b in batches:
            costs = gpt_costs(cfg, b, seq_len=s)
            led = measure(cfg, b, s, optimizer=False)
            assert led.peak["activations"] == costs.bytes["activations"], (s, b)
            lec = costs.lecture["bytes"]["activations"]
            lines.append(f"| {s} | {b} | {mib(led.peak['activations'])} | "
                         f"{mib(costs.bytes['activations'])} | {mib(lec)} | "
                         f"{lec / costs.bytes['activations']:.2f} |")
    return "\n".join(lines)


def bars_png(results, path):
    plt = pyplot()

    colors = {"params": "#4c72b0", "grads": "#55a868", "optimizer": "#c44e52", "activations": "#8172b2"}
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.6))
    for ax, (name, (cfg, b, costs, led, fc, ck)) in zip(np.atleast_1d(axes), results.items()):
        bars = (("measured", led.peak), ("lecture", costs.lecture["bytes"]), ("checkpointed", ck.peak))
        for j, (label, vals) in enumerate(bars):
            bottom = 0.0
            for c in CATS:
                v = vals[c] / MiB
                ax.bar(j, v, bottom=bottom, color=colors[c], hatch="//" if j == 1 else None,
                       edgecolor="white", label=c if j == 0 else None)
                bottom += v
        ax.set_xticks([0, 1, 2], ["measured\n(= exact)", "lecture\nformula", "measured,\ncheckpointed"],
                      fontsize=8)
        ax.set_title(f"{name}: l={cfg.n_layer} h={cfg.n_embd}\ns={cfg.block_size} b={b}", fontsize=9)
        ax.set_ylabel("MiB")
    fig.legend(*np.atleast_1d(axes)[0].get_legend_handles_labels(), fontsize=8, ncol=4,
               loc="lower center")
    fig.suptitle("Training memory by category (AdamW, float32)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path, dpi=90)


def activations_vs_seq(name, seqs, b, path, progress=True):
    """Measured activation peaks vs s: plain, checkpointed, fused attention; lines: exact + lecture."""
    plt = pyplot()

    base, _ = preset(name)
    cfg = GPTConfig(**{**base.to_dict(), "block_size": max(seqs)})
    ck_cfg = GPTConfig(**{**cfg.to_dict(), "checkpoint": True})
    fused = numba_available()
    meas = {"plain": [], "checkpointed": [], "fused attention (numba)": []}
    for s in tqdm(seqs, desc="activations vs s", leave=False, disable=not progress):
        meas["plain"].append(measure(cfg, b, s, optimizer=False).peak["activations"])
        meas["checkpointed"].append(measure(ck_cfg, b, s, optimizer=False).peak["activations"])
        if fused:
            meas["fused attention (numba)"].append(
                measure(cfg, b, s, backend="numba", optimizer=False).peak["activations"])
    exact = [gpt_costs(cfg, b, seq_len=s) for s in seqs]
    flash = [gpt_costs(cfg, b, seq_len=s, backend="numba") for s in seqs]
    for i, s in enumerate(seqs):  # the ledger equals the exact count, or the figures below are wrong
        assert meas["plain"][i] == exact[i].bytes["activations"], s
        assert meas["checkpointed"][i] == exact[i].activations_checkpointed, s
        if fused:
            assert meas["fused attention (numba)"][i] == flash[i].bytes["activations"], s
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    ax.plot(seqs, [c.bytes["activations"] / MiB for c in exact], "-", color="#8172b2", label="exact (numpy)")
    ax.plot(seqs, [v / MiB for v in meas["plain"]], "o", color="#8172b2", label="measured, plain")
    ax.plot(seqs, [c.activations_checkpointed / MiB for c in exact], "-", color="#55a868",
            label="exact, checkpointed")
    ax.plot(seqs, [v / MiB for v in meas["checkpointed"]], "s", color="#55a868", label="measured, checkpointed")
    ax.plot(seqs, [c.bytes["activations"] / MiB for c in flash], "--", color="#dd8452",
            label="predicted, fused attention")
    if meas["fused attention (numba)"]:
        ax.plot(seqs, [v / MiB for v in meas["fused attention (numba)"]], "^", color="#dd8452",
                label="measured, numba backend")
    ax.plot(seqs, [c.lecture["bytes"]["activations"] / MiB for c in exact], ":", color="k",
            label="lecture b·l·(2s²a + 14sh)·4")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    from matplotlib.ticker import FixedLocator, FuncFormatter

    ax.xaxis.set_major_locator(FixedLocator(seqs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("sequence length s")
    ax.set_ylabel("activation MiB (peak over a step)")
    ax.set_title(f"{name} (l={cfg.n_layer} h={cfg.n_embd} a={cfg.n_head}), b={b}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    lines = ["| s | plain MiB | checkpointed MiB | numba backend MiB | fused predicted MiB | lecture MiB |",
             "|---:|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(seqs):
        nb = mib(meas["fused attention (numba)"][i]) if fused else "n/a"
        lines.append(f"| {s} | {mib(meas['plain'][i])} | {mib(meas['checkpointed'][i])} | {nb} | "
                     f"{mib(flash[i].bytes['activations'])} | {mib(exact[i].lecture['bytes']['activations'])} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="memory_costs.py", description=__doc__)
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="peak GFLOP/s for MFU, > 0 (default: the best 1024³ float32 matmul measured here)")
    cli.add_output_arguments(ap, os.path.join("out", "memory_costs"),
                             out_help="directory for the two PNGs and memory_costs_results.md",
                             quick_help="tiny and small presets only, short sweeps (a smoke run)")
    return ap


def run(args) -> str:
    """The demo as the parsed arguments say; prints the tables and returns them as markdown."""
    if args.peak_gflops is not None and not (args.peak_gflops > 0 and math.isfinite(args.peak_gflops)):
        raise cli.UsageError(f"--peak-gflops must be a positive number, got {args.peak_gflops}")
    cli.check_out_dir(args.out)
    t0 = time.time()
    progress = not args.no_progress
    sections = []

    def emit(text):
        print(text, flush=True)
        sections.append(text)

    if args.peak_gflops:
        peak = args.peak_gflops * 1e9
        peak_says = f"peak = {args.peak_gflops:g} GFLOP/s, as given by --peak-gflops"
    else:
        print("measuring the peak: the best of five 1024³ float32 matmuls ...", flush=True)
        peak = memory.measure_peak_flops()
        peak_says = f"peak = {peak / 1e9:.1f} GFLOP/s, the best 1024³ float32 matmul here"
    names = ["tiny", "small"] if args.quick else ["tiny", "small", "medium"]

    emit("## Bytes per category, one AdamW step on the numpy backend\n")
    table, results = preset_table(names, peak, progress)
    emit(table)
    emit(f"\n## Matmul FLOPs and MFU (numpy backend; {peak_says})\n")
    emit(flops_table(results) + "\n")
    seqs = [16, 32] if args.quick else [32, 64, 128]
    batches = [2, 4] if args.quick else [4, 8, 16]
    emit(sweep_table("small", seqs, batches, progress) + "\n")
    emit(f"## What the lecture's formula leaves out ({names[-1]})\n")
    emit("```\n" + results[names[-1]][2].report() + "\n```\n")
    bars = os.path.join(args.out, "memory_costs_bars.png")
    bars_png(results, bars)
    seq_png = os.path.join(args.out, "memory_activations_seq.png")
    sweep = [32, 64, 128] if args.quick else [32, 64, 128, 256, 512]
    emit("## Activation bytes vs sequence length (small, b=4)\n")
    emit(activations_vs_seq("small", sweep, 4, seq_png, progress))
    markdown = "\n".join(sections) + "\n"
    with open(os.path.join(args.out, "memory_costs_results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    print(f"\nwrote memory_costs_bars.png, memory_activations_seq.png and memory_costs_results.md "
          f"in {args.out}/ ({time.time() - t0:.0f} s)")
    return markdown


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
