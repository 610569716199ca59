#!/usr/bin/env python
"""Train a character-level GPT on the CPU - the demo that ``make demo`` runs.

    python demos/train_gpt.py                       # small preset, Shakespeare, <= 10 minutes
    python demos/train_gpt.py --quick               # a smoke run: tiny preset, 60 steps, into out/quick
    python demos/train_gpt.py --data my.txt --out out/mine --preset tiny --steps 500
    python demos/train_gpt.py --out out --resume    # continue the run saved in out/ (its settings)
    python demos/train_gpt.py --init-from out --data other.txt --out out/ft   # fine-tune its weights
    python demos/sample.py --out out --prompt "ROMEO:"   # text from the saved model

A thin command line over the training layer (``models.training``): it validates the flags,
builds the data, the GPT and the optimizer, and hands them to ``Trainer``. Writes to ``--out``:
``ckpt.npz`` + ``manifest.json`` (``models.training.checkpoint``), ``loss.png``, ``samples.txt``;
token ids are cached in ``--out/cache``. A checkpoint is written every ``--save-every`` steps
(default: at every evaluation); Ctrl-C or SIGTERM finishes the step, saves the checkpoint and
``loss.png`` (no sample) and exits with code 130 after one line on stderr saying where it
stopped. ``--resume --out DIR`` alone continues a run with the settings saved in it (a flag that
contradicts them is refused; ``--steps N`` extends the run to N steps), and the losses then equal
those of an uninterrupted run bit for bit. A run given no ``--steps`` takes its length from its
time budget, so ``--resume --max-minutes 0`` of it is refused unless ``--steps N`` says how far
to go (``--max-minutes M`` gives it M more minutes). A fresh run refuses an ``--out`` that
already holds a checkpoint unless ``--force`` is given. ``--quick`` is a smoke run of about a
minute (``QUICK``: the tiny preset, 60 steps, no time budget) into ``out/quick``, which every
``--quick`` run replaces (with ``--out`` given, ``--force`` as for any run).

The recipe is nanoGPT's (``train.py``) with Muon in place of AdamW: Muon (Jordan et al. 2024)
on the hidden matrices and AdamW on the embeddings, head, norms and biases (weight decay only on
2-D parameters; ``--optimizer adamw`` for nanoGPT's own), linear warmup then cosine decay to lr/10, gradient clipping at global norm 1, validation on a fixed set
of batches every ``--eval-every`` steps. ``--max-minutes`` bounds the whole run (start-up,
evaluation and the final sample included): the trainer fits the schedule's length to the
measured speed, and without ``--steps`` the budget alone sets it, so a faster machine trains
longer. ``--max-minutes 0`` makes the run deterministic (exactly ``--steps`` steps, default 3000).

Bad input (any flag out of its range, missing/empty/non-UTF-8 ``--data``, a corpus shorter than a
block, an unknown preset or optimizer, a damaged checkpoint or one of another run, an ``--out``
that cannot be written, a batch that does not fit in memory) prints one line and exits with code
2 before anything in ``--out`` is written. docs/training.md lists every case.
"""
from __future__ import annotations

import time

_T_START = time.perf_counter()   # --max-minutes counts from here (imports and Numba compiles included)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def _blas_threads_from_argv(argv) -> int:
    """--blas-threads must act before NumPy loads OpenBLAS, so it is read ahead of argparse."""
    for i, a in enumerate(argv):
        v = a.split("=", 1)[1] if a.startswith("--blas-threads=") else (
            argv[i + 1] if a == "--blas-threads" and i + 1 < len(argv) else None)
        if v is not None:
            try:
                return int(v)
            except ValueError:
                return 1   # argparse reports the bad value later
    return 1


if __name__ == "__main__":
    # The GEMMs of these models are small ((B*T, C) x (C, 3C) with C = 128). On a busy 2-core
    # machine a second OpenBLAS thread made a (128, 2048) x (2048, 128) GEMM 50x slower (3 ms ->
    # 150 ms: its threads spin while they wait for a core); one thread is the robust default.
    _n = _blas_threads_from_argv(sys.argv[1:])
    if _n > 0:
        for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(_var, str(_n))
    # OpenBLAS reads this when NumPy loads it: its workers sleep ~1.5 ms after a GEMM instead of
    # spinning ~0.1 s (see minigrad.backend.configure_runtime; matters with --blas-threads 2)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")


import minigrad  # noqa: E402
import optim  # noqa: E402
from minigrad.memory import fmt_bytes  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, GPTConfig, preset  # noqa: E402
from models.textgen import sample_text  # noqa: E402
from models.tokenizer import BPETokenizer, TokenizerError  # noqa: E402
from models.training import (CKPT, CheckpointError, Trainer, clip_grad_norm, lm_loss,  # noqa: E402
                             load_checkpoint, plot_history)
from models.training.optimizers import UnknownOptionError, build_optimizer  # noqa: E402

# Peak learning rates. small: measured here (900 steps, val 1.765 at 6e-3, 1.794 at 1e-2, and a
# 3e-3 run on a 1200-step schedule was at 1.828 by step 900). tiny: not tuned (same as small).
# medium: nanoGPT's value for its 6-layer, 384-wide Shakespeare model (not tuned here).
PRESET_LR = {"tiny": 6e-3, "small": 6e-3, "medium": 1e-3}
# Muon (the default optimizer): the peak lr of its orthogonalised update on the hidden matrices;
# its AdamW part (embeddings, head, norms, biases) runs at PRESET_LR with betas (0.9, --beta2).
# Measured here at `small` (--max-minutes 0 --steps 2400): validation 1.491 with Muon at 0.02, against
# 1.611 for AdamW at 6e-3 after 2,555 steps of a 10-minute run.
MUON_LR = 0.02
DEFAULT_OPTIMIZER = "muon"
_END_SECONDS = 25.0   # kept free at the end of --max-minutes: sample, plot, checkpoint (~13 s measured on a busy 2-core machine)
# --steps when not given. Under a time budget the budget alone sets the schedule's length (the
# trainer fits it to the measured speed, so a faster machine trains longer): BUDGET_STEPS is a
# bound no 10-minute run comes near, only there to keep the schedule finite. Without a budget
# (--max-minutes 0) a run of FIXED_STEPS.
BUDGET_STEPS = 1_000_000
FIXED_STEPS = 3000
# --quick: a smoke run of about a minute (the flags given explicitly win); its own --out, so that
# it neither meets a real run's checkpoint in out/ nor leaves one there for the other demos
QUICK = {"preset": "tiny", "steps": 60, "max_minutes": 0.0, "warmup": 10, "eval_every": 20,
         "eval_batches": 4, "sample_chars": 100, "out": os.path.join("out", "quick")}


def default_lr(optimizer: str, preset: str) -> float:
    """The peak lr of a run given no --lr."""
    return MUON_LR if optimizer.lower() == "muon" else PRESET_LR.get(preset, 1e-3)


def optimizer_options(args) -> dict:
    """--opt-arg parsed, with Muon's AdamW part at the preset's AdamW lr unless given."""
    extra = parse_opt_args(args.opt_arg)
    if args.optimizer.lower() == "muon":
        extra.setdefault("adamw_kwargs", {"lr": PRESET_LR.get(args.preset, 1e-3), "betas": (0.9, args.beta2)})
    return extra


def default_steps(max_minutes: float) -> int:
    """The step target of a fresh run given no --steps (see BUDGET_STEPS)."""
    return BUDGET_STEPS if max_minutes > 0 else FIXED_STEPS


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="train_gpt.py", description="Train a character-level GPT on CPU with minigrad.",
                           formatter_class=cli.DefaultsHelpFormatter)
    p.add_argument("--preset", default="small", choices=list(PRESETS), help="model size")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (the schedule's length; fewer if --max-minutes says so); default: "
                        f"as many as --max-minutes fits, or {FIXED_STEPS} with --max-minutes 0")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step; default: the preset's")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate; default: {MUON_LR:g} for muon, else the preset's (" +
                        ", ".join(f"{k} {v:g}" for k, v in PRESET_LR.items()) + ")")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr = lr * this")
    p.add_argument("--warmup", type=int, default=60, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay (2-D params only)")
    p.add_argument("--beta2", type=float, default=0.99, help="Adam's beta2 (0.99 suits small models, as nanoGPT)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    p.add_argument("--optimizer", default=DEFAULT_OPTIMIZER,
                   help="any name in optim.available(); muon trains the embeddings, head, norms and "
                        "biases with AdamW")
    p.add_argument("--opt-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="an option of the optimizer, e.g. --opt-arg momentum=0.9 (repeatable; "
                        "values are read as JSON where they parse, else as strings)")
    p.add_argument("--data", default=None, help="a UTF-8 text file; default: Shakespeare's works")
    p.add_argument("--out", default="out", help="output directory")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run in --out/{CKPT} with its saved settings")
    p.add_argument("--force", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start a new run (new data, new optimizer) from this checkpoint's weights, "
                        "config and tokenizer (a directory or its ckpt.npz)")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                   help="char: one token per character; bpe: byte-level BPE trained on the text")
    p.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (--tokenizer bpe)")
    p.add_argument("--save-every", type=int, default=None,
                   help="write a checkpoint every N steps; default: at every evaluation")
    p.add_argument("--seed", type=cli.seed, default=1337)
    p.add_argument("--eval-every", type=int, default=250, help="validate every N steps")
    p.add_argument("--eval-batches", type=int, default=20, help="fixed validation batches per evaluation")
    p.add_argument("--max-minutes", type=float, default=10.0,
                   help="wall-clock budget for the whole run; 0 = none (exactly --steps, deterministic)")
    p.add_argument("--sample-chars", type=int, default=300, help="length of the final sample")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines instead)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                        + " (flags given explicitly win)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads when run as a script (0: the library's default; "
                        "an already set OPENBLAS_NUM_THREADS wins)")
    return p


def parse_opt_args(pairs) -> dict:
    """["momentum=0.9", "nesterov=true", "order=random"] -> {"momentum": 0.9, ...}."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise cli.UsageError(f"--opt-arg {pair!r}: expected name=value (e.g. momentum=0.9), the name an "
                                 f"option of the optimizer")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


# Flags that define a run: on --resume they come from the checkpoint, and an explicit one that
# differs is refused (--steps may change: it sets a new target; --data is checked by content).
RUN_FLAGS = ("preset", "batch_size", "lr", "min_lr_ratio", "warmup", "weight_decay", "beta2",
             "grad_clip", "optimizer", "opt_arg", "seed", "eval_every", "eval_batches", "dropout", "tokenizer",
             "vocab_size", "init_from")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def explicit_flags(argv) -> set:
    """The destinations of the flags written on the command line (not left at their default)."""
    shadow = build_parser()
    for action in shadow._actions:
        action.default = argparse.SUPPRESS
    return set(vars(shadow.parse_args(argv)))


def _gpt_checkpoint(path, flag):
    """load_checkpoint(path), refused in one line unless it holds a GPT (another demo's model
    ended in a traceback on its config)."""
    ckpt = load_checkpoint(path)
    kind = (ckpt.meta.get("model") or {}).get("class")
    if kind != "GPT":
        raise cli.UsageError(f"{flag} {path} holds a {kind or 'model of unknown class'}, not a GPT")
    return ckpt


def _validate(args):
    """Every flag in its range, before anything is read or written."""
    if args.preset not in PRESETS:
        raise cli.UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.optimizer.lower() not in optim.available():
        raise cli.UsageError(f"unknown optimizer {args.optimizer!r}; available: {', '.join(optim.available())}")
    for dest in ("eval_every", "eval_batches"):
        if getattr(args, dest) < 1:
            raise cli.UsageError(f"{_flag(dest)} must be >= 1, got {getattr(args, dest)}")
    for dest in ("warmup", "sample_chars", "blas_threads"):
        if getattr(args, dest) < 0:
            raise cli.UsageError(f"{_flag(dest)} must be >= 0, got {getattr(args, dest)}")
    for dest in ("steps", "batch_size", "save_every"):
        if getattr(args, dest) is not None and getattr(args, dest) < 1:
            raise cli.UsageError(f"{_flag(dest)} must be >= 1, got {getattr(args, dest)}")
    if args.lr is None:
        args.lr = default_lr(args.optimizer, args.preset)
    checks = {"lr": (args.lr > 0, "a finite number > 0"),
              "weight_decay": (args.weight_decay >= 0, "a finite number >= 0"),
              "grad_clip": (args.grad_clip >= 0, "a finite number >= 0 (0: no clipping)"),
              "beta2": (0 <= args.beta2 < 1, "in [0, 1)"),
              "min_lr_ratio": (0 <= args.min_lr_ratio <= 1, "in [0, 1]"),
              "dropout": (0 <= args.dropout < 1, "in [0, 1)"),
              "max_minutes": (args.max_minutes >= 0, "a finite number >= 0 (0: no budget)")}
    for dest, (ok, what) in checks.items():
        value = getattr(args, dest)
        if not (ok and math.isfinite(value)):
            raise cli.UsageError(f"{_flag(dest)} must be {what}, got {value}")
    if args.tokenizer == "bpe" and not 256 < args.vocab_size <= 65536:
        raise cli.UsageError(f"--vocab-size must be in (256, 65536] for a byte-level BPE, got {args.vocab_size}")
    if args.resume and args.init_from:
        raise cli.UsageError("--resume continues the run in --out; --init-from starts a new one: give one")
    if args.resume and args.force:
        raise cli.UsageError("--force starts afresh and --resume continues: give one")
    if args.resume and args.quick:
        raise cli.UsageError("--quick starts a smoke run and --resume continues the run in --out: give one")


def _adopt_saved_flags(args, explicit, ckpt):
    """--resume: the run's settings come from the checkpoint; an explicit flag must agree.

    Values are compared as the run used them (the batch size after the preset's default, the
    optimizer options parsed). The time budget is taken too, but may be changed."""
    saved = ckpt.meta.get("args") or {}
    resolved = {"batch_size": (args.batch_size, ckpt.meta.get("batch_size")),
                "opt_arg": (parse_opt_args(args.opt_arg), parse_opt_args(saved.get("opt_arg", []))),
                # the run accepted its name in any case (optim.available() is lower case)
                "optimizer": (args.optimizer.lower(), str(saved.get("optimizer")).lower())}
    for dest in RUN_FLAGS:
        if dest not in saved:
            continue
        given, had = resolved.get(dest, (getattr(args, dest), saved[dest]))
        if dest in explicit and given != had:
            raise cli.UsageError(f"{_flag(dest)} {getattr(args, dest)} contradicts the checkpoint in {args.out}, "
                                 f"trained with {_flag(dest)} {had}; drop the flag to continue that "
                                 f"run, or start a new one in a fresh --out")
        setattr(args, dest, saved[dest])
    for dest in ("data", "max_minutes"):
        if dest not in explicit and dest in saved:
            setattr(args, dest, saved[dest])


def _check_same_run(ckpt, config, data, batch_size):
    """The checkpoint's model and data must be this run's (the data file may have changed)."""
    meta, path = ckpt.meta, ckpt.path
    want, have = config.to_dict(), ckpt.config
    if have != want or meta.get("data_key") != data.key or meta.get("batch_size") != batch_size:
        diff = [k for k in want if have.get(k) != want[k]]
        what = (f"config differs in {', '.join(diff)}" if diff else
                "batch size differs" if meta.get("batch_size") != batch_size else
                "the data differ: the text file changed since")
        raise cli.UsageError(f"checkpoint {path} is from another run ({what}); use a fresh --out")




def _tokenizer_for(args, text, ckpt):
    if ckpt is not None:
        return ckpt.tokenizer()
    if args.tokenizer == "bpe":
        print(f"training a byte-level BPE tokenizer ({args.vocab_size} tokens) on the text ...", flush=True)
        return BPETokenizer.train(text, args.vocab_size)
    return None                                        # TextData trains a CharTokenizer


def run(args, on_step=None, explicit=frozenset()) -> int:
    """Train as ``args`` say; ``explicit`` names the flags given on the command line;
    ``on_step(step)`` (tests) is called after every optimizer step."""
    t_start = _T_START if __name__ == "__main__" else time.perf_counter()
    # ---- validate everything before writing anything ----------------------------------------
    if args.quick:                                     # (_validate refuses it with --resume)
        for dest, value in QUICK.items():
            if dest not in explicit:
                setattr(args, dest, value)
        if "out" not in explicit:                      # out/quick is the smoke run's own: replaced
            args.force = True
    _validate(args)
    given = sorted(f for f in ("tokenizer", "vocab_size") if f in explicit)
    if args.init_from and given:      # the weights come with their tokenizer
        raise cli.UsageError(f"--init-from trains on with the checkpoint's tokenizer; drop "
                             f"{', '.join(_flag(f) for f in given)}")
    ckpt = init = None
    if args.resume:
        ckpt = _gpt_checkpoint(args.out, "--resume --out")
        _adopt_saved_flags(args, explicit, ckpt)
    else:                                              # --quick cannot resume
        cli.refuse_overwrite([args.out], args.force, instead="" if args.quick else "continue it with --resume")
    if args.init_from and ckpt is None:                 # a resumed fine-tune has its weights already
        init = _gpt_checkpoint(args.init_from, "--init-from")
        if "preset" not in explicit and init.meta.get("preset") in PRESETS:
            args.preset = init.meta["preset"]          # its batch size and lr, unless given
            if "lr" not in explicit:
                args.lr = default_lr(args.optimizer, args.preset)
    if "vocab_size" in explicit and args.tokenizer != "bpe":
        raise cli.UsageError(f"--vocab-size is the size of a BPE vocabulary; the {args.tokenizer} tokenizer "
                             f"has one entry per character of the text: add --tokenizer bpe or drop it")
    try:
        config, preset_batch = preset(args.preset, dropout=args.dropout)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    if init is not None:
        shape = {k: init.config[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
        if "preset" in explicit and shape != {k: getattr(config, k) for k in shape}:
            raise cli.UsageError(f"--preset {args.preset} is not the shape of --init-from {init.path} ({shape})")
    source = init or ckpt
    if source is not None:                             # the model's shape is the checkpoint's
        config = GPTConfig.from_dict({**source.config, "dropout": args.dropout})
    batch_size = args.batch_size or preset_batch
    text, data_desc = load_text(args.data)
    data = TextData(text, tokenizer=_tokenizer_for(args, text, ckpt or init), block_size=config.block_size,
                    description=data_desc, cache_dir=os.path.join(args.out, "cache"),
                    write_cache=False)                 # written below, once all inputs are good
    config.vocab_size = data.vocab_size
    if ckpt is not None:
        _check_same_run(ckpt, config, data, batch_size)
    cli.check_gpt_step_fits(config, batch_size, data, args.optimizer)
    target = None                                      # a resumed run keeps its saved target ...
    if ckpt is not None:
        saved = ckpt.meta["trainer"]
        if "steps" in explicit:                        # ... unless --steps sets a new one
            target = args.steps
        elif args.max_minutes == 0 and saved["target"] == BUDGET_STEPS:
            # its budget set its length: without one, BUDGET_STEPS would be a 1,000,000-step run
            fitted = (f"; its budget fitted the schedule to {saved['horizon']} steps, --steps "
                      f"{saved['horizon']} finishes that schedule" if saved["horizon"] < BUDGET_STEPS else "")
            raise cli.UsageError(f"--max-minutes 0: the run in {args.out} had no --steps, its time budget set "
                                 f"its length; give --steps N (N > {ckpt.step}) to train on without a "
                                 f"budget{fitted}")
        elif "max_minutes" in explicit and saved["horizon"] < saved["target"]:
            target = saved["target"]                   # a run the old budget cut short goes on
        if target is not None and target < ckpt.step:
            raise cli.UsageError(f"--steps {target} is below the step the checkpoint reached "
                                 f"({ckpt.step}); give more steps to continue, or a fresh --out")
        args.steps = target or saved["target"]
    elif args.steps is None:
        args.steps = default_steps(args.max_minutes)

    minigrad.configure_runtime()
    model = GPT(config, seed=args.seed)
    if init is not None:
        model.load_state_dict(init.params)
    try:
        opt = build_optimizer(args.optimizer, model, args.lr, args.weight_decay, args.beta2, args.seed,
                              optimizer_options(args))
    except UnknownOptionError as e:
        raise cli.UsageError(f"--opt-arg {e}") from None
    except TypeError as e:
        if not args.opt_arg:
            raise cli.UsageError(f"--optimizer {args.optimizer}: {e}") from None
        # a value of the wrong type (momentum=abc is the string 'abc'): the optimizer's message
        # ('<=' not supported between 'float' and 'str') names neither the flag nor the item
        raise cli.UsageError(f"--opt-arg {', '.join(args.opt_arg)}: {args.optimizer} refused a value of the "
                             f"wrong type ({e}); give name=value with the value as JSON (0.9, true, [1, 2]), "
                             f"else it is read as a string") from None
    except ValueError as e:
        raise cli.UsageError(f"--optimizer {args.optimizer}: {e}") from None

    # ---- inputs are good: from here on we may write ---------------------------------------------
    cli.check_out_dir(args.out)
    data.save_cache()
    if args.warmup >= args.steps:                      # after the checks: a refused run says one line
        print(f"warning: --warmup {args.warmup} >= --steps {args.steps}: the learning rate never "
              f"reaches its peak, and the cosine decay never starts", file=sys.stderr)
    meta = {"optimizer": args.optimizer, "preset": args.preset, "batch_size": batch_size,
            "tokenizer": data.tokenizer.to_dict(), "data": data_desc, "data_key": data.key,
            "args": vars(args)}
    samples = os.path.join(args.out, "samples.txt")

    def drop_stale_outputs(trainer, path):
        # an earlier run's samples and loss plot go with its checkpoint, which this save has just
        # replaced: removed sooner, a run that diverges or is killed first would leave that run
        # without them; kept, they would describe another run than the checkpoint beside them
        for name in (samples, os.path.join(args.out, "loss.png")):
            if os.path.exists(name):
                os.remove(name)

    trainer = Trainer(
        model, lm_loss, opt, lambda rng: data.get_batch("train", batch_size, rng),
        steps=args.steps, schedule="cosine",
        schedule_kwargs={"warmup_steps": args.warmup, "min_ratio": args.min_lr_ratio},
        grad_hooks=[clip_grad_norm(args.grad_clip)] if args.grad_clip > 0 else [],
        eval_batches=data.fixed_batches("val", args.eval_batches, batch_size, seed=args.seed + 1),
        eval_every=args.eval_every, time_budget=args.max_minutes * 60.0, start_time=t_start,
        reserve_seconds=_END_SECONDS, seed=args.seed, progress=not args.no_progress,
        save_every=args.save_every or args.eval_every, save_dir=args.out, save_meta=meta,
        on_step=None if on_step is None else (lambda tr: on_step(tr.step)),
        on_save=None if args.resume else drop_stale_outputs,      # a resumed run appends to its own
        tokens_per_step=batch_size * config.block_size)
    if ckpt is not None:
        trainer.restore(ckpt, target=target)

    print(f"data: {data_desc}: {len(data.ids):,} tokens (vocab {data.vocab_size}), "
          f"train {len(data.train):,} / val {len(data.val):,}")
    print(f"model: {args.preset} {config.n_layer} layers, {config.n_head} heads, {config.n_embd} dims, "
          f"block {config.block_size}, {model.num_parameters():,} parameters; batch {batch_size}; "
          f"optimizer {args.optimizer} lr {args.lr:g}"
          + (f"; resuming at step {trainer.step} of {trainer.target}" if ckpt else "")
          + (f"; weights from {init.path} (step {init.step})" if init else ""))
    result = trainer.fit()
    path = trainer.save(args.out, meta=meta)
    plot = plot_history(trainer.history, args.out,
                        f"GPT {args.preset} on {os.path.basename(str(args.data or 'Shakespeare'))}")
    if result.interrupted:                             # kept: the checkpoint and loss.png; no sample
        of = f" of {trainer.horizon}" if trainer.horizon < BUDGET_STEPS else ""   # not an unfitted bound
        raise cli.Interrupted(f"interrupted at step {trainer.step}{of}: checkpoint saved to {path}, no "
                              f"sample written; continue with --resume --out {args.out}")
    try:
        sample = sample_text(model, data.tokenizer, args.sample_chars, seed=args.seed)
    except TokenizerError:                             # a corpus without newlines: start from token 0
        sample = sample_text(model, data.tokenizer, args.sample_chars, prompt="", seed=args.seed)
    # a fresh run starts samples.txt anew; a resumed one appends to it
    with open(samples, "a" if args.resume else "w", encoding="utf-8") as f:
        f.write(f"=== step {trainer.step}, val loss {result.val_loss:.4f} ===\n{sample}\n\n")
    minutes = (time.perf_counter() - t_start) / 60
    # the schedule is fitted to the time after 40 timed steps; a budget spent before that cut it
    how = ("the schedule was fitted to the time" if trainer.schedule_fitted else
           "spent before the schedule could be fitted to it, which takes 40 timed steps")
    if result.out_of_time and trainer.target == BUDGET_STEPS:    # no --steps: the budget set the length
        print(f"--max-minutes {args.max_minutes:g} ended the run at step {trainer.step} ({how}); train on "
              f"with --resume --out {args.out} and --max-minutes M or --steps N")
    elif result.out_of_time:
        print(f"--max-minutes {args.max_minutes:g} ended the run at step {trainer.step} of {trainer.target} "
              f"({how}); continue it with --resume --out {args.out} --max-minutes M (0: no limit)")
    per_step = trainer.seconds_per_step()
    speed = f", {per_step:.2f} s/step recently" if per_step else ""
    print(f"done: {trainer.step} steps, val loss {result.val_loss:.4f} nats/token after {minutes:.1f} min{speed}; "
          f"optimizer state {fmt_bytes(trainer.peak_state_bytes)} at its peak ({args.optimizer}); "
          f"wrote {path}, {plot}, {os.path.join(args.out, 'samples.txt')}")
    print("-" * 60)
    print(sample)
    print("-" * 60)
    return 0


def main(argv=None, on_step=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.main(build_parser(), lambda args: run(args, on_step=on_step, explicit=explicit_flags(argv)),
                    argv, errors=(DataError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
