"""Encoder–decoder with attention on reverse, sort and add, generated in code (lecture 4).

    .venv/bin/python demos/seq2seq.py            # ~8 min: 3 tasks x (Bahdanau, Luong)
    .venv/bin/python demos/seq2seq.py --quick    # ~1 min: reversal with Bahdanau attention
    .venv/bin/python demos/seq2seq.py --tasks add --attention luong --cell lstm --steps 3000

Each run trains ``models.seq2seq.Seq2Seq`` through ``models.training.Trainer`` on fresh batches
of its task (sources of 1..``--max-len`` digits; for ``add`` each number has 1..``--add-digits``
digits) with teacher forcing, AdamW, warmup then cosine decay and gradient clipping at 1, and
then measures exact-match accuracy (the whole output right) on ``--test`` new examples, greedy
and with beam search (``--beam``).

Writes to ``--out`` (default ``out/seq2seq``): ``seq2seq_results.md`` (the table and sample
outputs), ``seq2seq_attention.png`` (each run's attention weights on one example: a row per
output token, a column per source token; reversal draws the anti-diagonal), ``seq2seq_loss.png``
(validation loss of every run). Bad input prints one line and exits with code 2. A run stopped
by Ctrl-C or SIGTERM says where in one line and exits with code 130, writing nothing: the demo
keeps no checkpoints, and a table of the runs finished so far would pass for the whole run.
"""
from __future__ import annotations

import math
import os
import sys
import time

if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # small GEMMs: one BLAS thread (see train_gpt.py)

import numpy as np  # noqa: E402

import optim  # noqa: E402
from models import cli  # noqa: E402
from models.seq2seq import (ATTENTIONS, CELLS, TASKS, Seq2Seq, Seq2SeqConfig, Task, decode, exact_match,  # noqa: E402
                            make_batch, seq2seq_loss)
from models.training import Trainer, clip_grad_norm, pyplot, save_figure  # noqa: E402

QUICK = {"tasks": "reverse", "attention": "bahdanau", "steps": 600, "minutes": 1.0, "test": 1000}
FULL = {"tasks": ",".join(TASKS), "attention": ",".join(ATTENTIONS), "steps": 1200, "minutes": 1.5, "test": 2000}
EXAMPLE = {"reverse": "3141592653", "sort": "3141592653", "add": "957+68"}


def example(task) -> str:
    """The heat map's source, cut to what the task was trained on (a 10-digit example for a model
    trained on 3 digits was longer than anything it had seen)."""
    if task.name == "add":
        return "+".join(n[:task.max_len] for n in EXAMPLE["add"].split("+"))
    return EXAMPLE[task.name][:task.max_len]


def build_parser():
    p = cli.ArgumentParser(prog="seq2seq.py", description=__doc__)
    p.add_argument("--tasks", default=None, help=f"comma-separated, from {', '.join(TASKS)} (default: all)")
    p.add_argument("--attention", default=None,
                   help=f"comma-separated, from {', '.join(ATTENTIONS)} (default: both; --quick bahdanau)")
    p.add_argument("--cell", choices=list(CELLS), default="gru")
    p.add_argument("--max-len", type=int, default=10, help="longest source of reverse and sort")
    p.add_argument("--add-digits", type=int, default=3, help="digits of each number of add")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--n-embd", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help=f"steps per run (default {FULL['steps']}; --quick {QUICK['steps']})")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"time budget per run (default {FULL['minutes']:g}; --quick {QUICK['minutes']:g})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--teacher-forcing", type=float, default=1.0, help="P(the decoder reads the true previous token)")
    p.add_argument("--beam", type=int, default=4, help="beam width of the second accuracy column")
    p.add_argument("--test", type=int, default=None, help="test examples per run")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_output_arguments(p, os.path.join("out", "seq2seq"),
                             out_help="directory for seq2seq_results.md and the figures",
                             quick_help="reversal with Bahdanau attention only, 600 steps or 1 minute (explicit flags win)")
    return p


def _names(text, allowed, flag):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise cli.UsageError(f"{flag}: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
    return names


def _validate(a):
    cli.fill_defaults(a, QUICK, FULL)
    a.tasks = _names(a.tasks, TASKS, "--tasks")
    a.attention = _names(a.attention, ATTENTIONS, "--attention")
    for name in ("max_len", "add_digits", "hidden_size", "n_embd", "steps", "batch_size", "beam", "test"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.max_len > 30 or a.add_digits > 15:
        raise cli.UsageError(f"--max-len must be <= 30 and --add-digits <= 15 (the decoder loops per token), "
                             f"got {a.max_len} and {a.add_digits}")
    for name, ok, want in (("lr", a.lr > 0, "a number > 0"), ("minutes", a.minutes > 0, "a number > 0"),
                           ("teacher_forcing", 0 <= a.teacher_forcing <= 1, "in [0, 1]")):
        v = getattr(a, name)
        if not (ok and math.isfinite(v)):
            raise cli.UsageError(f"--{name.replace('_', '-')} must be {want}, got {v}")


def train_one(task, attention, a):
    cfg = Seq2SeqConfig(cell=a.cell, attention=attention, n_embd=a.n_embd, hidden_size=a.hidden_size,
                        teacher_forcing=a.teacher_forcing)
    model = Seq2Seq(cfg, seed=a.seed)
    opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=a.lr, weight_decay=0.0)
    val = [task.batch(np.random.default_rng(a.seed + 1000 + i), 200) for i in range(2)]
    trainer = Trainer(model, seq2seq_loss, opt, lambda rng: task.batch(rng, a.batch_size), steps=a.steps,
                      schedule="cosine", schedule_kwargs={"warmup_steps": min(50, a.steps // 10), "min_ratio": 0.1},
                      grad_hooks=[clip_grad_norm(1.0)], eval_batches=val, eval_every=max(1, a.steps // 8),
                      time_budget=a.minutes * 60, reserve_seconds=3.0, seed=a.seed,
                      progress=not a.no_progress, log_every=200)
    result = trainer.fit()
    if result.interrupted:                    # before the test: a stopped run measures nothing
        raise cli.Interrupted(f"interrupted while training {task.name} with {attention} attention at step "
                              f"{trainer.step} of {trainer.target}; no results or figures written")
    t0 = time.perf_counter()
    greedy = exact_match(model, task, a.test, seed=a.seed + 7)
    beam = exact_match(model, task, min(a.test, 500), seed=a.seed + 7, beam=a.beam)
    return {"model": model, "history": trainer.history, "steps": trainer.step, "seconds": result.seconds,
            "val_loss": result.val_loss, "greedy": greedy, "beam": beam, "test_seconds": time.perf_counter() - t0}


def heat_maps(runs, path):
    plt = pyplot()
    n = len(runs)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), dpi=100, squeeze=False)
    for ax, ((task, attention), r) in zip(axes.flat, runs.items()):
        src_text = example(task)
        src, _, _ = make_batch([(src_text, "0")])
        r["model"].eval()
        out, attn = r["model"].greedy(src, task.max_target_len + 1)
        answer = decode(out[0])
        shown = attn[0, :len(answer) + 1]                     # the answer's tokens and EOS
        ax.imshow(shown, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(src_text)), list(src_text))
        ax.set_yticks(range(len(answer) + 1), list(answer) + ["<eos>"])
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        ax.set_title(f"{task.name}, {attention}: {src_text} -> {answer}", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def loss_plot(runs, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for (task, attention), r in runs.items():
        ax.plot(r["history"]["val_step"], r["history"]["val_loss"], "o-", ms=3, label=f"{task.name}, {attention}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("validation cross-entropy (nats/token)")
    ax.set_title("seq2seq with attention: validation loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def run(a) -> dict:
    """The demo as the parsed arguments ``a`` say; returns {(task, attention): results}."""
    _validate(a)
    cli.check_out_dir(a.out)                    # the inputs are good: from here on we may write
    tasks = [Task(name, 1, a.add_digits if name == "add" else a.max_len) for name in a.tasks]
    runs = {}
    for task in tasks:
        for attention in a.attention:
            print(f"[seq2seq] {task.name} with {attention} attention ({a.cell.upper()}, hidden {a.hidden_size})",
                  flush=True)
            r = runs[(task, attention)] = train_one(task, attention, a)
            print(f"[seq2seq] {task.name}, {attention}: {r['steps']} steps in {r['seconds']:.0f} s, val loss "
                  f"{r['val_loss']:.4f}, exact match {r['greedy']:.1%} greedy, {r['beam']:.1%} beam {a.beam}",
                  flush=True)
    lines = [f"# seq2seq with attention ({a.cell.upper()}, hidden {a.hidden_size}, embeddings {a.n_embd})\n",
             "Sources: " + "; ".join(
                 {"reverse": f"reverse 1..{a.max_len} digits", "sort": f"sort 1..{a.max_len} digits",
                  "add": f"add two numbers of 1..{a.add_digits} digits"}[t.name]
                 for t in dict.fromkeys(t for t, _ in runs)) + ". "
             f"Exact match on {a.test} new examples (greedy) and {min(a.test, 500)} (beam {a.beam}).\n",
             f"| task | attention | steps | train time | val loss | exact match, greedy | exact match, beam {a.beam} |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (task, attention), r in runs.items():
        lines.append(f"| {task.name} | {attention} | {r['steps']} | {r['seconds']:.0f} s | {r['val_loss']:.4f} | "
                     f"{r['greedy']:.1%} | {r['beam']:.1%} |")
    lines += ["", "Sample outputs (greedy):", ""]
    rng = np.random.default_rng(a.seed + 99)
    for (task, attention), r in runs.items():
        pairs = [task.sample(rng) for _ in range(3)]
        out, _ = r["model"].greedy(make_batch(pairs)[0], task.max_target_len + 1)
        shown = ", ".join(f"{s} -> {decode(o)}" + ("" if decode(o) == t else f" (want {t})")
                          for o, (s, t) in zip(out, pairs))
        lines.append(f"- {task.name}, {attention}: {shown}")
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "seq2seq_results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    heat_maps(runs, os.path.join(a.out, "seq2seq_attention.png"))
    loss_plot(runs, os.path.join(a.out, "seq2seq_loss.png"))
    print("\n" + markdown)
    print(f"[seq2seq] wrote seq2seq_results.md, seq2seq_attention.png and seq2seq_loss.png to {a.out}/")
    return {(task.name, attention): {k: v for k, v in r.items() if k != "model"} for (task, attention), r in runs.items()}


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
