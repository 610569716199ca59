"""n-gram vs RNN vs LSTM vs GRU vs GPT on the same characters, at equal wall time (lecture 4).

    .venv/bin/python demos/rnn_lm.py                 # ~10 min: 2 minutes of training per network
    .venv/bin/python demos/rnn_lm.py --quick         # ~1.5 min: 15 s per network, small models
    .venv/bin/python demos/rnn_lm.py --models lstm --minutes 60   # one long LSTM run

Every model learns the training split of the corpus (the first 90 % of the characters, as in
demos/train_gpt.py) and is measured on the same stretch of the validation split
(``--val-chars`` characters from its start), in nats per character:

* the **n-gram** baseline: interpolated Kneser–Ney of every order 2..``--ngram-max-order``
  (models/ngram.py; seconds to fit), the best order on this validation text reported;
* **RNN, LSTM, GRU** (models/rnn_lm.py): one layer of ``--hidden-size`` units over ``--n-embd``
  embeddings, truncated BPTT over ``--window`` characters of ``--batch-size`` contiguous streams
  with the hidden state carried from window to window, AdamW (lr ``--rnn-lr``, no weight decay),
  warmup then cosine decay, gradient clipping at global norm ``--grad-clip``; measured by
  running the validation text through the carried state, as 16 streams of whole windows (the
  last partial window of each is left out: 19,456 of the 20,000 characters with --quick);
* the **GPT** (models/gpt.py, ``--gpt-preset``) with demos/train_gpt.py's recipe; measured with
  windows of its block size that overlap by half, each character scored once with at least half
  a block of context.

Each network trains for ``--minutes`` through ``models.training.Trainer``, whose time budget
fits the schedule's length to the measured speed, so every network gets the same wall time.

Writes to ``--out`` (default ``out/rnn_lm``): ``rnn_lm_results.md`` (the table and a sample of
each network), ``rnn_lm_curves.png`` (validation loss against wall-clock time, the n-gram as a
line) and each network's checkpoint in ``<name>/`` (``ckpt.npz`` + ``manifest.json``); it refuses
an ``--out`` that already holds the checkpoint of a network it would train unless ``--force`` is
given. The tokenized corpus is cached in ``--cache-dir``. Bad input prints one line and exits with
code 2 before anything is written. A run stopped by Ctrl-C or SIGTERM says where in one line and
exits with code 130: the checkpoints of the networks finished before it stay, the stopped
network's checkpoint, the table and the curves are not written.
"""
from __future__ import annotations

import math
import os
import sys
import time

if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # small GEMMs: one BLAS thread (see train_gpt.py)

import numpy as np  # noqa: E402

import minigrad  # noqa: E402
import optim  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.ngram import NGramLM  # noqa: E402
from models.rnn_lm import CELLS, BPTTStreams, RNNLM, RNNLMConfig, tbptt_loss  # noqa: E402
from models.training import Trainer, clip_grad_norm, evaluate, lm_loss, pyplot, save_figure  # noqa: E402
from models.training.optimizers import build_optimizer  # noqa: E402

MODELS = ("rnn", "lstm", "gru", "gpt")
LABELS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "gpt": "GPT"}
QUICK = {"minutes": 0.25, "hidden_size": 128, "gpt_preset": "tiny", "val_chars": 20_000, "ngram_max_order": 6,
         "max_chars": 1_000_000}
FULL = {"minutes": 2.0, "hidden_size": 256, "gpt_preset": "small", "val_chars": 100_000, "ngram_max_order": 8,
        "max_chars": None}
GPT_LR = {"tiny": 6e-3, "small": 6e-3, "medium": 1e-3}     # demos/train_gpt.py's PRESET_LR


def build_parser():
    p = cli.ArgumentParser(prog="rnn_lm.py", description=__doc__)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"training time of each network (default {FULL['minutes']:g}; --quick {QUICK['minutes']:g})")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps of each network (default: as many as fit in --minutes, measured)")
    p.add_argument("--data", default=None, help="a UTF-8 text file; None means Shakespeare's works")
    p.add_argument("--val-chars", type=int, default=None,
                   help=f"validation characters every model is measured on (default {FULL['val_chars']:,}; "
                        f"--quick {QUICK['val_chars']:,})")
    p.add_argument("--ngram-max-order", type=int, default=None, help="Kneser-Ney orders 2..N (default 8)")
    p.add_argument("--hidden-size", type=int, default=None, help=f"RNN/LSTM/GRU units (default {FULL['hidden_size']})")
    p.add_argument("--n-embd", type=int, default=64, help="character embedding size of the recurrent networks")
    p.add_argument("--window", type=int, default=64, help="truncated BPTT window (characters)")
    p.add_argument("--batch-size", type=int, default=32, help="streams of the recurrent networks")
    p.add_argument("--rnn-lr", type=float, default=2e-3, help="peak lr of RNN, LSTM and GRU")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global gradient norm of the recurrent networks")
    p.add_argument("--gpt-preset", default=None, help=f"{', '.join(PRESETS)} (default small; --quick tiny)")
    p.add_argument("--sample-chars", type=int, default=200, help="characters each network samples (0: none)")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_corpus_arguments(p, max_chars_help=f"use only the first N characters (default: all; --quick "
                                               f"{QUICK['max_chars']:,})")
    cli.add_output_arguments(p, os.path.join("out", "rnn_lm"),
                             out_help="directory for the results, the curves and the checkpoints",
                             quick_help="15 s per network, small networks, the first 1 M characters "
                                        "(explicit flags win)")
    p.add_argument("--force", action="store_true", help="overwrite the checkpoints an earlier run left in --out")
    return p


def _validate(a):
    a.explicit_ngram_order = a.ngram_max_order is not None
    cli.fill_defaults(a, QUICK, FULL)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in a.models if m not in MODELS]
    if bad or not a.models:
        raise cli.UsageError(f"--models: unknown {bad or 'empty list'}; choose from {', '.join(MODELS)}")
    if a.gpt_preset not in PRESETS:
        raise cli.UsageError(f"--gpt-preset: unknown {a.gpt_preset!r}; choose from {', '.join(PRESETS)}")
    for name in ("val_chars", "hidden_size", "n_embd", "window", "batch_size"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.max_chars is not None and a.max_chars < 1:
        raise cli.UsageError(f"--max-chars must be >= 1, got {a.max_chars}")
    if a.sample_chars < 0:
        raise cli.UsageError(f"--sample-chars must be >= 0 (0: no sample), got {a.sample_chars}")
    if not 2 <= a.ngram_max_order <= 9:
        raise cli.UsageError(f"--ngram-max-order must be in [2, 9], got {a.ngram_max_order}")
    for name in ("rnn_lr", "grad_clip"):
        v = getattr(a, name)
        if not (v > 0 and math.isfinite(v)):
            raise cli.UsageError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")
    if not (a.minutes >= 0 and math.isfinite(a.minutes)):
        raise cli.UsageError(f"--minutes must be a finite number >= 0 (0: no time limit), got {a.minutes}")
    if a.steps is not None and a.steps < 1:
        raise cli.UsageError(f"--steps must be >= 1, got {a.steps}")
    if a.minutes == 0 and a.steps is None:
        raise cli.UsageError("--minutes 0 (no time limit) needs --steps")


def _budget(a) -> str:
    if a.steps is None:
        return f"{a.minutes:g} min"
    return f"{a.steps:,} steps" + (f" or {a.minutes:g} min, whichever came first" if a.minutes else "")


# ---------------------------------------------------------------------------- measuring
def gpt_nats(model, ids, block: int, batch: int = 16) -> float:
    """Mean nats/char of ``ids`` under the GPT: windows of ``block`` that overlap by half; each
    window scores the characters no window before it scored (the first all of its own), so
    every character is scored once, with at least block/2 characters of context after the first
    window; a last window ends at the last character."""
    ids = np.asarray(ids, dtype=np.int64)
    half = block // 2
    last = max(len(ids) - block - 1, 0)
    starts = list(range(0, last + 1, half))
    if starts[-1] != last:
        starts.append(last)
    total, count, scored_to = 0.0, 0, 0            # targets 1 .. scored_to are scored
    model.eval()
    with minigrad.no_grad():
        for i in range(0, len(starts), batch):
            group = starts[i:i + batch]
            x = np.stack([ids[s:s + block] for s in group])
            y = np.stack([ids[s + 1:s + block + 1] for s in group])
            z = model(x)[0].data.astype(np.float64)
            z -= z.max(-1, keepdims=True)
            nll = np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, y[..., None], -1)[..., 0]
            for row, s in zip(nll, group):
                scored = row[scored_to - s:]          # row[k] is target s + 1 + k
                total += scored.sum()
                count += len(scored)
                scored_to = s + len(row)
    return total / count


EVAL_STREAMS = 16                       # the streams rnn_nats reads the validation text with


def rnn_nats(model, ids, batch: int = EVAL_STREAMS, window: int = 64) -> float:
    """Mean nats/char of ``ids`` under a recurrent LM, read by ``batch`` streams with the state
    carried across windows from zeros at the start."""
    streams = BPTTStreams(ids, batch_size=batch, window=window)
    return evaluate(model, tbptt_loss, streams.windows())


def ngram_baseline(train, val, vocab_size, max_order):
    """{order: nats/char} of Kneser–Ney on ``val`` and the fitting seconds."""
    t0 = time.perf_counter()
    results = {n: NGramLM(n, vocab_size, "kneser_ney").fit(train).nats_per_token(val) for n in range(2, max_order + 1)}
    return results, time.perf_counter() - t0


def _probe_seconds(model, loss_fn, batch) -> float:
    """Seconds of one forward + backward (the second of two), to size the schedule."""
    for _ in range(2):
        t0 = time.perf_counter()
        model.zero_grad()
        loss_fn(model, batch).backward()
    model.zero_grad()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- training
def train_network(name, data, a, curves):
    """Train one network for ``a.minutes`` (and/or ``a.steps``); returns its results (the model included)."""
    V = data.vocab_size
    budget = a.minutes * 60.0
    if name == "gpt":
        cfg, batch_size = preset(a.gpt_preset)
        cfg.vocab_size = V
        model = GPT(cfg, seed=a.seed)
        opt = build_optimizer("adamw", model, GPT_LR[a.gpt_preset], weight_decay=0.1, beta2=0.99, seed=a.seed)
        loss_fn, hooks = lm_loss, [clip_grad_norm(1.0)]
        batches = lambda rng: data.get_batch("train", batch_size, rng)           # noqa: E731
        eval_batches = data.fixed_batches("val", 4, batch_size, seed=a.seed + 1)
        probe = data.get_batch("train", batch_size, np.random.default_rng(0))
        chars_per_step = batch_size * cfg.block_size
        warmup = 60
    else:
        model = RNNLM(RNNLMConfig(cell=name, vocab_size=V, n_embd=a.n_embd, hidden_size=a.hidden_size), seed=a.seed)
        opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=a.rnn_lr,
                           weight_decay=0.0)
        streams = BPTTStreams(data.train.ids, a.batch_size, a.window)
        val_streams = BPTTStreams(data.val.ids, a.batch_size, a.window)
        loss_fn, hooks = tbptt_loss, [clip_grad_norm(a.grad_clip)]
        batches = streams.next_window
        eval_batches = val_streams.windows(8)
        probe = BPTTStreams(data.train.ids, a.batch_size, a.window).next_window()
        chars_per_step = a.batch_size * a.window
        warmup = 30
    steps = a.steps or max(10, int(budget / _probe_seconds(model, loss_fn, probe)))
    points = curves[name] = []

    def on_eval(trainer, val):
        points.append((time.perf_counter() - t_start, val))

    t_start = time.perf_counter()
    trainer = Trainer(model, loss_fn, opt, batches, steps=steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": min(warmup, steps // 10), "min_ratio": 0.1},
                      grad_hooks=hooks, eval_batches=eval_batches, eval_every=max(1, steps // 8),
                      time_budget=budget or None, start_time=t_start, reserve_seconds=1.0, seed=a.seed,
                      progress=not a.no_progress, log_every=max(1, steps // 10), on_eval=on_eval)
    result = trainer.fit()
    if not result.interrupted:     # a stopped network's checkpoint would pass for a finished one; none resumes it
        trainer.save(os.path.join(a.out, name), meta={"tokenizer": data.tokenizer.to_dict(), "args": vars(a)})
    return {"model": model, "steps": trainer.step, "target": trainer.target, "interrupted": result.interrupted,
            "seconds": time.perf_counter() - t_start, "chars": trainer.step * chars_per_step,
            "params": model.num_parameters()}


def plot_curves(curves, ngram_best, path, title):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for name, points in curves.items():
        if points:
            t, v = zip(*points)
            ax.plot(np.array(t) / 60, v, "o-", ms=3, label=LABELS[name])
    order, nats = ngram_best
    ax.axhline(nats, color="k", ls="--", lw=1, label=f"Kneser–Ney {order}-gram")
    ax.set_xlabel("wall-clock training time (minutes)")
    ax.set_ylabel("validation cross-entropy (nats/char)")
    finite = [v for pts in curves.values() for _, v in pts]
    if finite:
        ax.set_ylim(min(min(finite), nats) - 0.1, min(max(finite), 4.0) + 0.05)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def run(a) -> dict:
    """The demo as the parsed arguments ``a`` say; returns what it measured."""
    _validate(a)
    text, desc = load_text(a.data, notice=True, max_chars=a.max_chars)
    block = preset(a.gpt_preset)[0].block_size
    data = TextData(text, block_size=block, cache_dir=a.cache_dir or None, description=desc,
                    write_cache=False)         # written below, once every input is good
    val = np.asarray(data.val.ids[:a.val_chars], dtype=np.int64)
    # validation is read by EVAL_STREAMS streams whatever --batch-size: a smaller batch passed this
    # check and the evaluation failed after training, its checkpoint written
    streams = max(a.batch_size, EVAL_STREAMS) if set(a.models) - {"gpt"} else a.batch_size
    if (len(val) < max(streams * (a.window + 1), 2 * block) + 1
            or len(data.train) < a.batch_size * (a.window + 1)):
        also = f" and {EVAL_STREAMS} validation" if streams > a.batch_size else ""
        raise DataError(f"the validation text has {len(val):,} characters and the training text {len(data.train):,}: "
                        f"too short for {a.batch_size} training{also} streams of windows of {a.window} (and a GPT "
                        f"block of {block}); use a longer text or --val-chars, or a smaller --batch-size / --window")
    a.ngram_max_order = cli.ngram_orders_that_fit(a.ngram_max_order, data.vocab_size, "--ngram-max-order",
                                                  a.explicit_ngram_order, tag="[rnn_lm] ")
    cli.refuse_overwrite([os.path.join(a.out, m) for m in a.models], a.force)
    cli.check_out_dir(a.out)                    # the inputs are good: from here on we may write
    data.save_cache()
    minigrad.configure_runtime()
    train = np.asarray(data.train.ids, dtype=np.int64)
    print(f"[rnn_lm] {desc}: {len(data.ids):,} characters (vocab {data.vocab_size}), train {len(train):,}; "
          f"every model is measured on the first {len(val):,} validation characters (the recurrent "
          f"ones on the whole windows of {EVAL_STREAMS} streams in them)")
    ngram, ngram_seconds = ngram_baseline(train, val, data.vocab_size, a.ngram_max_order)
    best_order = min(ngram, key=ngram.get)
    print("[rnn_lm] Kneser-Ney: " + ", ".join(f"{n}-gram {v:.4f}" for n, v in ngram.items())
          + f" nats/char ({ngram_seconds:.1f} s for all)", flush=True)
    curves, runs = {}, {}
    for name in a.models:
        print(f"[rnn_lm] training {LABELS[name]} for {_budget(a)}", flush=True)
        r = runs[name] = train_network(name, data, a, curves)
        if r["interrupted"]:
            kept = [os.path.join(a.out, m) for m in runs if m != name]
            raise cli.Interrupted(f"interrupted while training {LABELS[name]} at step {r['steps']} of {r['target']}; "
                                  f"no results, curves or {LABELS[name]} checkpoint written"
                                  + (f" (the finished networks' checkpoints are in {', '.join(kept)})" if kept else ""))
        model = r["model"]
        t0 = time.perf_counter()
        r["val"] = gpt_nats(model, val, block) if name == "gpt" else rnn_nats(model, val, window=a.window)
        r["eval_seconds"] = time.perf_counter() - t0
        prompt = data.tokenizer.encode("\n") if "\n" in data.tokenizer.chars else [0]
        out = model.generate(np.array([prompt]), a.sample_chars, temperature=0.8, rng=np.random.default_rng(a.seed))
        r["sample"] = data.tokenizer.decode(out[0, len(prompt):].tolist())
        print(f"[rnn_lm] {LABELS[name]}: {r['steps']} steps, {r['chars']:,} characters in {r['seconds']:.0f} s; "
              f"validation {r['val']:.4f} nats/char", flush=True)
    best = (best_order, ngram[best_order])
    lines = [f"# Character language models on {desc}, at equal wall time\n",
             f"Each network trained for {_budget(a)} (wall clock, evaluation included); all measured on the "
             f"first {len(val):,} characters of the validation split. RNN/LSTM/GRU: {a.hidden_size} units, "
             f"embeddings {a.n_embd}, {a.batch_size} streams x windows of {a.window}; GPT: preset "
             f"'{a.gpt_preset}'.\n",
             "| model | parameters | steps | characters seen | time | validation nats/char |",
             "|---|---:|---:|---:|---:|---:|",
             f"| Kneser–Ney {best_order}-gram (best of orders 2..{a.ngram_max_order}) | "
             f"{NGramLM(best_order, data.vocab_size).fit(train).num_ngrams()[-1]:,} {best_order}-grams | – | "
             f"{len(train):,} | {ngram_seconds:.0f} s (all orders) | {ngram[best_order]:.4f} |"]
    for name, r in runs.items():
        lines.append(f"| {LABELS[name]} | {r['params']:,} | {r['steps']:,} | {r['chars']:,} | {r['seconds']:.0f} s | "
                     f"{r['val']:.4f} |")
    lines += ["", "Kneser–Ney by order: " + ", ".join(f"{n}: {v:.4f}" for n, v in ngram.items()) + "\n",
              "Samples (temperature 0.8):\n"]
    for name, r in runs.items():
        lines += [f"**{LABELS[name]}**", "", "```", r["sample"], "```", ""]
    markdown = "\n".join(lines)
    with open(os.path.join(a.out, "rnn_lm_results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    plot_curves(curves, best, os.path.join(a.out, "rnn_lm_curves.png"),
                f"{', '.join(LABELS[m] for m in a.models)}: {_budget(a)} each")
    print("\n" + markdown)
    print(f"[rnn_lm] wrote rnn_lm_results.md, rnn_lm_curves.png and the checkpoints to {a.out}/")
    return {"ngram": ngram, "best_ngram": best,
            "runs": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in runs.items()}}


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
