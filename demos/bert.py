"""A BERT-style encoder: masked-LM pretraining on the corpus, then a classification head (lecture 4).

    .venv/bin/python demos/bert.py               # ~10 min: 6 min pretraining, 2 x 1.5 min fine-tuning
    .venv/bin/python demos/bert.py --quick       # ~1.5 min: a 2-layer encoder, short runs
    .venv/bin/python demos/bert.py --pretrained out/bert/pretrained   # fine-tune a saved encoder

1. **Pretraining** (``models.bert``): the masked language model on random windows of the
   training split (characters after a [CLS]; 15 % of them chosen, 80/10/10), through
   ``models.training.Trainer``; the checkpoint goes to ``--out/pretrained`` (an earlier run's is
   overwritten only with ``--force``). Reported: the validation MLM loss and the share of masked
   characters predicted right. ``--pretrained DIR`` skips this step and fine-tunes the encoder
   saved in DIR: its shape (layers, width, heads, positions) is the checkpoint's (the shape and
   pretraining flags are refused beside it), and ``--block-size`` is then the checkpoint's unless
   given smaller.
2. **Fine-tuning**: a classifier on [CLS] learns the task *real or shuffled?* -- a stretch of
   4..12 consecutive words of the text (fewer, down to 2, where they exceed the block), or the
   same words in another order
   (``models.bert.ShuffledWordsTask``; training examples from the training split, test examples
   from the validation split). The classes are balanced, so the majority-class baseline is 50 %.
3. **The same fine-tuning from scratch** (a randomly initialized encoder, the same steps): what
   pretraining bought.

Writes to ``--out`` (default ``out/bert``): ``bert_results.md`` (the table, masked-LM examples),
``bert_loss.png`` (the pretraining curve and both fine-tuning curves), ``pretrained/`` (the MLM
checkpoint, its tokenizer in the meta). Bad input prints one line and exits with code 2 -- an
encoder shorter than the task's examples, a ``--pretrained`` checkpoint whose vocabulary is not
this text's or with fewer positions than ``--block-size``, an empty text. A run stopped by Ctrl-C
or SIGTERM says where in one line and exits with code 130 without results or figure; the
pretrained encoder is kept (also one whose pretraining was stopped: its checkpoint records the
steps done), so that ``--pretrained OUT/pretrained`` can fine-tune it later.
"""
from __future__ import annotations

import math
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # small GEMMs: one BLAS thread (see train_gpt.py)

import numpy as np  # noqa: E402

import minigrad  # noqa: E402
import optim  # noqa: E402
from models import cli  # noqa: E402
from models.bert import (BERT, IGNORE, BERTConfig, BERTVocab, ShuffledWordsTask, accuracy,  # noqa: E402
                         check_vocabulary, classification_loss, mask_tokens, mlm_batch, mlm_loss)
from models.data import DataError, TextData, load_text  # noqa: E402
from models.tokenizer import TokenizerError  # noqa: E402
from models.training import (CKPT, CheckpointError, Trainer, clip_grad_norm, load_checkpoint, pyplot,  # noqa: E402
                             save_figure)

QUICK = {"n_layer": 2, "n_embd": 64, "pretrain_minutes": 0.5, "finetune_minutes": 0.25, "test": 500,
         "max_chars": 1_000_000}
FULL = {"n_layer": 4, "n_embd": 128, "pretrain_minutes": 6.0, "finetune_minutes": 1.5, "test": 2000,
        "max_chars": None}
BLOCK = 64                                # --block-size without --pretrained
EXAMPLES = ["To be, or not to be, that is the question.", "Now is the winter of our discontent"]


def build_parser():
    p = cli.ArgumentParser(prog="bert.py", description=__doc__)
    p.add_argument("--data", default=None, help="a UTF-8 text file; None means Shakespeare's works")
    p.add_argument("--n-layer", type=int, default=None, help=f"encoder blocks (default {FULL['n_layer']})")
    p.add_argument("--n-embd", type=int, default=None, help=f"width (default {FULL['n_embd']})")
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--block-size", type=int, default=None,
                   help=f"longest input, [CLS] included (default {BLOCK}; with --pretrained the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pretrain-minutes", type=float, default=None,
                   help=f"masked-LM pretraining time (default {FULL['pretrain_minutes']:g}; 0: no limit)")
    p.add_argument("--finetune-minutes", type=float, default=None,
                   help=f"time of each fine-tuning run (default {FULL['finetune_minutes']:g}; 0: no limit)")
    p.add_argument("--pretrain-steps", type=int, default=20_000,
                   help="pretraining schedule, fewer if the time says so (0: no pretraining)")
    p.add_argument("--finetune-steps", type=int, default=3000, help="fine-tuning schedule (fewer if the time says so)")
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--scratch-lr", type=float, default=1e-3, help="lr of the from-scratch run")
    p.add_argument("--pretrained", default=None, metavar="DIR",
                   help="fine-tune this saved encoder (a checkpoint of this demo's pretraining) instead of pretraining")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch fine-tuning")
    p.add_argument("--test", type=int, default=None, help="test examples (from the validation split)")
    p.add_argument("--max-chars", type=int, default=None, help="use only the first N characters")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_output_arguments(p, os.path.join("out", "bert"),
                             out_help="directory for the results, the curves and the pretrained checkpoint",
                             quick_help="a 2-layer encoder, 30 s pretraining, 15 s fine-tuning (explicit flags win)")
    p.add_argument("--force", action="store_true", help="overwrite the pretrained encoder an earlier run left in --out")
    return p


def _validate(a):
    if a.pretrained:
        cli.refuse_unused(build_parser(), a, ("n_layer", "n_embd", "n_head", "pretrain_minutes", "pretrain_steps",
                                              "pretrain_lr"),
                          "--pretrained fine-tunes a saved encoder of its own shape and pretrains nothing")
    cli.fill_defaults(a, QUICK, FULL)
    for name in ("n_layer", "n_embd", "n_head", "batch_size", "finetune_steps", "test"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.pretrain_steps < 0:
        raise cli.UsageError(f"--pretrain-steps must be >= 0 (0: no pretraining), got {a.pretrain_steps}")
    if a.max_chars is not None and a.max_chars < 1:
        raise cli.UsageError(f"--max-chars must be >= 1, got {a.max_chars}")
    if a.n_embd % a.n_head:
        raise cli.UsageError(f"--n-embd {a.n_embd} must be divisible by --n-head {a.n_head}")
    if a.block_size is not None and a.block_size < 24:
        raise cli.UsageError(f"--block-size {a.block_size} is too short for the task's examples "
                             f"(2 to 12 words, [CLS] included): give >= 24")
    for name in ("pretrain_minutes", "finetune_minutes"):
        v = getattr(a, name)
        if not (v >= 0 and math.isfinite(v)):
            raise cli.UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0 (0: no limit), got {v}")
    for name in ("pretrain_lr", "finetune_lr", "scratch_lr"):
        v = getattr(a, name)
        if not (v > 0 and math.isfinite(v)):
            raise cli.UsageError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")


def _budget(steps, minutes) -> str:
    return f"{steps:,} steps" + (f" or {minutes:g} min, whichever comes first" if minutes else "")


def fit(model, loss_fn, batches, steps, minutes, lr, eval_batches, a):
    """AdamW with warmup and cosine decay for ``steps`` or ``minutes`` (0: no limit); returns the
    Trainer (``interrupted`` set when Ctrl-C or SIGTERM stopped it)."""
    opt = optim.create("adamw", optim.param_groups_no_decay({n: p.data for n, p in model.named_parameters()}, 0.01),
                       lr=lr)
    trainer = Trainer(model, loss_fn, opt, batches, steps=steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": min(100, steps // 10), "min_ratio": 0.1},
                      grad_hooks=[clip_grad_norm(1.0)], eval_batches=eval_batches,
                      eval_every=max(1, steps // 10), time_budget=minutes * 60 or None, reserve_seconds=2.0,
                      seed=a.seed, progress=not a.no_progress, log_every=100)
    trainer.fit()
    return trainer


def masked_accuracy(model, batches) -> float:
    """The share of chosen positions whose original character is the model's first guess."""
    right = total = 0
    model.eval()
    with minigrad.no_grad():
        for inputs, labels in batches:
            guess = model.mlm_logits(model(inputs)).data.argmax(-1)
            chosen = labels != IGNORE
            right += int((guess[chosen] == labels[chosen]).sum())
            total += int(chosen.sum())
    model.train()
    return right / max(total, 1)


def fill_in(model, vocab, text, rng):
    """``text`` with 15 % of its characters masked, and the model's guesses for them."""
    ids = np.concatenate([[vocab.cls], vocab.encode(text)])[None]
    inputs, labels = mask_tokens(ids, vocab, rng)
    model.eval()
    with minigrad.no_grad():
        guess = model.mlm_logits(model(inputs)).data.argmax(-1)
    model.train()
    chosen = labels[0] != IGNORE
    shown = "".join("_" if c else vocab.decode([t]) for c, t in zip(chosen[1:], ids[0, 1:]))
    filled = "".join(vocab.decode([g]) if c else vocab.decode([t]) for c, g, t in zip(chosen[1:], guess[0, 1:], ids[0, 1:]))
    return shown, filled


def plot(curves, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for label, h in curves.items():
        ax = axes[0] if label == "pretraining (masked LM)" else axes[1]
        ax.plot(h["val_step"], h["val_loss"], "o-", ms=3, label=label)
    axes[0].set_title("masked-LM validation loss (nats/masked char)", fontsize=10)
    axes[1].axhline(math.log(2), color="k", ls="--", lw=1, label="chance (log 2)")
    axes[1].set_title("fine-tuning: real or shuffled? (test loss)", fontsize=10)
    if "pretraining (masked LM)" not in curves:
        axes[0].text(0.5, 0.5, "no pretraining in this run", ha="center", va="center", transform=axes[0].transAxes)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def run(a) -> dict:
    """The demo as the parsed arguments ``a`` say; returns what it measured."""
    _validate(a)
    text, desc = load_text(a.data, notice=True, max_chars=a.max_chars)
    pretrained = None
    if a.pretrained:                          # its shape, block size included, is the encoder's
        inner = os.path.join(a.pretrained, "pretrained")
        if not os.path.exists(os.path.join(a.pretrained, CKPT)) and os.path.exists(os.path.join(inner, CKPT)):
            raise cli.UsageError(f"no checkpoint at {a.pretrained}; the encoder a run with --out {a.pretrained} "
                                 f"pretrained is in {inner}: give --pretrained {inner}")
        pretrained = load_checkpoint(a.pretrained)
        try:
            cfg = BERTConfig.from_dict(pretrained.config)
        except (ValueError, TypeError) as e:
            raise CheckpointError(str(e)) from None
        if a.block_size is None:
            a.block_size = cfg.block_size
        elif a.block_size > cfg.block_size:
            raise cli.UsageError(f"--block-size {a.block_size} is longer than the {cfg.block_size} positions the "
                                 f"encoder in --pretrained {a.pretrained} has; give --block-size {cfg.block_size} "
                                 f"or less, or leave it out")
    elif a.block_size is None:
        a.block_size = BLOCK
    data = TextData(text, block_size=a.block_size, cache_dir=None, description=desc)
    vocab = BERTVocab(data.tokenizer)
    if pretrained is None:
        cfg = BERTConfig(vocab_size=vocab.size, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                         block_size=a.block_size)
    split = len(data.train)
    tasks = []
    for part, piece in (("training part", text[:split]), ("validation part (the last 10%)", text[split:])):
        try:
            tasks.append(ShuffledWordsTask(piece, vocab, a.block_size))
        except ValueError as e:
            raise DataError(f"the {part}: " + str(e).replace("ShuffledWordsTask: ", "").replace(
                "this text", "it").replace("a larger block_size", "a larger --block-size")) from None
    train_task, test_task = tasks
    if pretrained is not None:
        try:
            check_vocabulary(cfg, vocab, f"--pretrained {a.pretrained}")
            if pretrained.tokenizer().to_dict() != data.tokenizer.to_dict():
                raise ValueError(f"--pretrained {a.pretrained} was trained with other characters than this text's "
                                 f"(the same count, {vocab.n_tokens}); give the text it was pretrained on")
        except (ValueError, TypeError, TokenizerError) as e:
            raise CheckpointError(str(e)) from None
    saved = os.path.join(a.out, "pretrained")   # where this run's pretraining goes
    pretrains = pretrained is None and a.pretrain_steps > 0
    if pretrains:
        cli.refuse_overwrite([saved], a.force, instead=f"fine-tune it with --pretrained {saved}")
    cli.check_out_dir(a.out)                    # the inputs are good: from here on we may write
    minigrad.configure_runtime()
    train_ids, val_ids = np.asarray(data.train.ids), np.asarray(data.val.ids)
    mlm_val = [mlm_batch(val_ids, vocab, a.batch_size, a.block_size, np.random.default_rng(a.seed + 10 + i))
               for i in range(8)]
    sizes = [100] * (a.test // 100) + [a.test % 100] * bool(a.test % 100)       # --test examples exactly
    test = [test_task.batch(np.random.default_rng(a.seed + 100 + i), n) for i, n in enumerate(sizes)]
    val_cls = test[:2]
    curves, result = {}, {}
    model = BERT(cfg, seed=a.seed)
    print(f"[bert] {desc}: {len(data.ids):,} characters, vocabulary {vocab.n_tokens} + 4 specials; encoder "
          f"{cfg.n_layer} layers x {cfg.n_embd}, {model.num_parameters():,} parameters", flush=True)
    if pretrained is not None:
        model.load_state_dict(pretrained.params, strict=True)
        result["pretrain_steps"] = pretrained.step
        if pretrained.history.get("val_loss"):   # the loaded encoder's pretraining curve, from its checkpoint
            curves["pretraining (masked LM)"] = pretrained.history
    elif pretrains:
        print(f"[bert] pretraining (masked LM) for {_budget(a.pretrain_steps, a.pretrain_minutes)}", flush=True)
        tr = fit(model, mlm_loss, lambda rng: mlm_batch(train_ids, vocab, a.batch_size, a.block_size, rng),
                 a.pretrain_steps, a.pretrain_minutes, a.pretrain_lr, mlm_val, a)
        # saved also when stopped: its steps are in the checkpoint, and a later run can fine-tune it
        tr.save(saved, meta={"tokenizer": data.tokenizer.to_dict(), "args": vars(a)})
        if tr.interrupted:
            raise cli.Interrupted(f"interrupted in pretraining at step {tr.step} of {tr.target}; the encoder so far "
                                  f"is in {saved} (fine-tune it with --pretrained {saved}); no results written")
        curves["pretraining (masked LM)"] = tr.history
        result["pretrain_steps"] = tr.step
    else:
        result["pretrain_steps"] = 0
    if result["pretrain_steps"]:
        result["mlm_val_loss"] = float(np.mean([float(mlm_loss(model, b).item()) for b in mlm_val]))
        result["mlm_accuracy"] = masked_accuracy(model, mlm_val)
        rng = np.random.default_rng(a.seed)
        result["fill_in"] = [fill_in(model, vocab, t, rng) for t in EXAMPLES if set(t) <= set(data.tokenizer.chars)]
    runs = [("pretrained", model, a.finetune_lr)] if result["pretrain_steps"] else []
    if not a.no_scratch or not runs:
        runs.append(("from scratch", BERT(cfg, seed=a.seed + 1), a.scratch_lr))
    labels = np.concatenate([y for _, y in test])
    result["majority"] = max(labels.mean(), 1 - labels.mean())
    result["fine_tuned"] = {}
    for name, m, lr in runs:
        print(f"[bert] fine-tuning the {name} encoder for {_budget(a.finetune_steps, a.finetune_minutes)}", flush=True)
        tr = fit(m, classification_loss, lambda rng: train_task.batch(rng, a.batch_size), a.finetune_steps,
                 a.finetune_minutes, lr, val_cls, a)
        if tr.interrupted:
            kept = f"; fine-tune the pretrained encoder again with --pretrained {saved}" if pretrains else ""
            raise cli.Interrupted(f"interrupted while fine-tuning the {name} encoder at step {tr.step} of "
                                  f"{tr.target}; no results written{kept}")
        curves[f"fine-tuning, {name}"] = tr.history
        acc = accuracy(m, test)
        result["fine_tuned"][name] = {"steps": tr.step, "accuracy": acc}
        print(f"[bert] {name}: {tr.step} steps, test accuracy {acc:.1%} (majority class {result['majority']:.1%})",
              flush=True)
    lines = [f"# BERT-style encoder on {desc}\n",
             f"Encoder: {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, inputs of up to "
             f"{a.block_size} characters, {model.num_parameters():,} parameters."]
    if result["pretrain_steps"]:
        lines.append(f"Masked-LM pretraining: {result['pretrain_steps']:,} steps of {a.batch_size} windows; "
                     f"validation loss {result['mlm_val_loss']:.3f} nats per masked character, "
                     f"{result['mlm_accuracy']:.1%} of the masked characters guessed right.")
    lines += ["", f"Task: real or shuffled words? {len(labels):,} test examples from the validation split; "
                  f"the majority class is {result['majority']:.1%}.", "",
              "| encoder | fine-tuning steps | test accuracy | over the majority class |", "|---|---:|---:|---:|"]
    for name, r in result["fine_tuned"].items():
        lines.append(f"| {name} | {r['steps']:,} | {r['accuracy']:.1%} | "
                     f"{100 * (r['accuracy'] - result['majority']):+.1f} points |")
    if result.get("fill_in"):
        lines += ["", "Masked characters (_) and the pretrained model's guesses:", ""]
        for shown, filled in result["fill_in"]:
            lines += [f"    {shown}", f"    {filled}", ""]
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "bert_results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    plot(curves, os.path.join(a.out, "bert_loss.png"))
    print("\n" + markdown)
    print(f"[bert] wrote bert_results.md and bert_loss.png to {a.out}/")
    return result


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
