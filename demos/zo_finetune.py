"""Fine-tune a pretrained GPT with backprop AdamW, MeZO and LoZO, and measure what each costs.

Lecture 9: when activations dominate memory, estimate the gradient from forward passes only.
MeZO (Malladi et al. 2023, arXiv 2305.17333) perturbs the weights in place by ±εz, with z
regenerated from a seed, so a training step needs the memory of inference; LoZO (Chen et al.
2025, arXiv 2410.07698) perturbs each matrix by a rank-r U·Vᵀ instead. This demo

1. loads a pretrained GPT (``--ckpt``: a checkpoint of demos/train_gpt.py; by default its
   ``out/ckpt.npz`` when that is the preset asked for and neither ``--pretrain-steps`` nor
   ``--pretrain-lr`` is given) or pretrains one itself on the training
   split for ``--pretrain-steps`` AdamW steps (warmup + cosine; cached as a checkpoint in
   ``--cache-dir``);
2. fine-tunes copies of it on *held-out* text -- the corpus's validation split, whose first 80%
   is the fine-tuning set and last 20% the evaluation set -- with AdamW (backprop), MeZO and
   LoZO, all through the same ``models.training.Trainer`` call;
3. plots the evaluation loss against forward passes and against wall time
   (``--out/zo_finetune_loss.png``);
4. measures the peak memory of one step of each method and of a forward pass alone
   (``models.training.profile``: tracemalloc, split into parameters / gradients / optimizer
   state / the rest, cross-checked by the growth of the peak RSS and by minigrad.memory's ledger
   of saved activations; ``--out/zo_finetune_memory.png``), and checks the lecture's two claims:
   MeZO step <= 1.15 × forward, and <= 0.5 × an AdamW step.

The numbers go to ``--out/results_<preset>.json``, the tables to ``--out/results_<preset>.md``.

    .venv/bin/python demos/zo_finetune.py                  # small preset, ~10 min on 2 cores
    .venv/bin/python demos/zo_finetune.py --quick          # tiny preset, a smoke run
    .venv/bin/python demos/zo_finetune.py --out docs       # redraw the figures of docs/

Counting: a MeZO/LoZO step is 2 forward passes; an AdamW step is 1 forward + 1 backward (the
backward costs about 2 forwards, which the wall-time panel shows). Bad input prints one line
and exits with code 2, writing nothing (not even the token cache); so does a flag the run would
ignore (the fine-tuning flags with --skip-train, the pretraining ones with --ckpt). Ctrl-C or
SIGTERM stops the demo after the current step with one line saying where (exit code 130): no
results are written and a part-trained pretraining is not cached.
"""
from __future__ import annotations

import gc
import json
import math
import os
import sys
import time

import numpy as np

import minigrad
import optim
from models import cli
from models.data import DataError, TextData, load_text, windows
from models.gpt import GPT, PRESETS, preset
from models.training import (CheckpointError, Trainer, lm_loss, load_checkpoint, load_matching_checkpoint,
                             pyplot, save_figure)
from models.training.profile import forward_memory, step_memory

METHODS = ("adamw", "mezo", "lozo")
PRETRAIN_LR = 3e-3
TRAIN_GPT_CKPT = os.path.join("out", "ckpt.npz")    # where demos/train_gpt.py saves by default
# step counts of a full run and of --quick (flags given explicitly win over both)
FULL = {"preset": "small", "pretrain_steps": 300, "adamw_steps": 100, "zo_steps": 500}
QUICK = {"preset": "tiny", "pretrain_steps": 60, "adamw_steps": 20, "zo_steps": 40}


# ----------------------------------------------------------------------------- data
class Windows:
    """Random (x, y) windows of length T from one token array."""

    def __init__(self, ids, T):
        self.ids, self.T = np.asarray(ids), T
        if len(self.ids) < T + 2:
            raise DataError(f"held-out text of {len(self.ids)} tokens is shorter than block_size+2 = {T + 2}; "
                            f"use a longer text (--max-chars)")

    def batch(self, B, rng):
        return windows(self.ids, rng.integers(0, len(self.ids) - self.T - 1, size=B), self.T)


# ----------------------------------------------------------------------------- the model
def from_checkpoint(path, cfg, preset_name, text, desc, cache_dir):
    """(GPT, TextData under its tokenizer, description) from a demos/train_gpt.py checkpoint.
    Raises CheckpointError or DataError (one line) when it is unusable for ``cfg``."""
    ckpt = load_checkpoint(path)
    diff = [k for k in ("n_layer", "n_head", "n_embd", "block_size") if ckpt.config.get(k) != getattr(cfg, k)]
    if diff:
        raise CheckpointError(f"checkpoint {ckpt.path} is not the '{preset_name}' preset ({', '.join(diff)} "
                              f"differ); pass the --preset it was trained with")
    try:
        data = TextData(text, tokenizer=ckpt.tokenizer(), block_size=cfg.block_size, cache_dir=cache_dir,
                        description=desc, write_cache=False)     # run() saves it once all inputs are good
    except DataError as e:
        raise DataError(f"checkpoint {ckpt.path}: its tokenizer does not fit this corpus ({e})") from None
    return ckpt.build_model(), data, f"the checkpoint {ckpt.path} (step {ckpt.step})"


def pretrain(cfg, batch_size, data, a):
    """AdamW on the training split with the trainer's warmup + cosine schedule, cached as a
    checkpoint in ``--cache-dir`` keyed by the model, the data and the pretraining settings.
    Raises cli.Interrupted when Ctrl-C / SIGTERM stopped it."""
    settings = {"steps": a.pretrain_steps, "lr": a.pretrain_lr, "batch_size": batch_size, "seed": a.seed}
    cache = None
    if a.cache_dir:
        cache = os.path.join(a.cache_dir, f"zo_finetune_pretrained_{cfg.n_layer}x{cfg.n_embd}_"
                                          f"v{cfg.vocab_size}_{a.pretrain_steps}_{a.seed}")
        ckpt = load_matching_checkpoint(cache, cfg.to_dict(), data_key=data.key, pretrain=settings)
        if ckpt is not None:
            print(f"[zo_finetune] pretrained GPT from {ckpt.path}")
            return ckpt.build_model()
    model = GPT(cfg, seed=a.seed)
    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("adamw", optim.param_groups_no_decay(params, 0.1), lr=a.pretrain_lr, betas=(0.9, 0.95))
    trainer = Trainer(model, lm_loss, opt, lambda rng: data.get_batch("train", batch_size, rng),
                      steps=a.pretrain_steps, schedule="cosine",
                      schedule_kwargs={"warmup_steps": min(50, a.pretrain_steps // 5), "min_ratio": 0.1},
                      seed=a.seed, progress=not a.no_progress)
    print(f"[zo_finetune] pretraining: {a.pretrain_steps} AdamW steps on the training split")
    if trainer.fit().interrupted:     # not cached: a later run would take it for the finished model
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


def make_optimizer(method, model, a):
    params = {n: p.data for n, p in model.named_parameters()}
    if method == "adamw":
        return optim.create("adamw", optim.param_groups_no_decay(params, 0.0), lr=a.adamw_lr)
    if method == "mezo":
        return optim.create("mezo", params, lr=a.mezo_lr, eps=a.eps, seed=a.seed)
    return optim.create("lozo", params, lr=a.lozo_lr, eps=a.eps, rank=a.rank,
                        step_interval=a.nu, momentum=a.lozo_momentum, seed=a.seed)


# ----------------------------------------------------------------------------- fine-tuning runs
class EvalLog:
    """``on_step`` / ``on_eval`` callbacks of a fine-tuning run: at every evaluation, the step,
    the forward passes so far and the wall time spent training (evaluations excluded)."""

    def __init__(self):
        self.hist = {"step": [], "forward_passes": [], "time": [], "eval_loss": []}
        self.train_seconds = 0.0
        self._mark = time.perf_counter()

    def on_step(self, trainer):
        now = time.perf_counter()
        self.train_seconds += now - self._mark
        self._mark = now

    def on_eval(self, trainer, loss):
        opt = trainer.optimizer
        # a backprop step is one forward pass; a zeroth-order optimizer counts its own
        passes = trainer.step if opt.uses_gradients else opt.global_state["forward_passes"]
        for key, v in (("step", trainer.step), ("forward_passes", passes), ("time", self.train_seconds),
                       ("eval_loss", loss)):
            self.hist[key].append(v)
        self._mark = time.perf_counter()


def finetune(method, base, ft, eval_batches, batch_size, a):
    model = clone(base)
    steps = a.adamw_steps if method == "adamw" else a.zo_steps
    log = EvalLog()
    trainer = Trainer(model, lm_loss, make_optimizer(method, model, a), lambda rng: ft.batch(batch_size, rng),
                      steps=steps, eval_batches=eval_batches, eval_every=max(1, steps // a.n_evals),
                      seed=a.seed + 1, on_step=log.on_step, on_eval=log.on_eval,
                      progress=not a.no_progress)
    print(f"[zo_finetune] fine-tuning with {LABELS[method]}: {steps} steps")
    if trainer.fit().interrupted:
        raise cli.Interrupted(f"{LABELS[method]} interrupted at step {trainer.step} of {steps}; no figures "
                              f"and no results_{a.preset}.json or .md written to {a.out}")
    log.hist["sec_per_step"] = log.train_seconds / steps
    return log.hist


# ----------------------------------------------------------------------------- memory
def measure_memory(base, batch, a):
    """Peak memory of a forward pass and of one step of each method (``models.training.profile``),
    each on a fresh copy of ``base``."""
    out = {"forward": forward_memory(clone(base), lm_loss, batch).as_dict()}
    for method in ("mezo", "lozo", "adamw"):
        gc.collect()
        model = clone(base)
        trainer = Trainer(model, lm_loss, make_optimizer(method, model, a), batches=None, steps=3,
                          progress=False)
        out[method] = step_memory(trainer, batch).as_dict()
        del trainer, model
    return out


# ----------------------------------------------------------------------------- plots
COLORS = {"adamw": "tab:blue", "mezo": "tab:orange", "lozo": "tab:green", "forward": "tab:gray"}
LABELS = {"adamw": "AdamW (backprop)", "mezo": "MeZO", "lozo": "LoZO", "forward": "forward only"}


def plot_loss(hists, path, title):
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, h in hists.items():
        ax[0].plot(h["forward_passes"], h["eval_loss"], "-o", ms=3, color=COLORS[m], label=LABELS[m])
        ax[1].plot(h["time"], h["eval_loss"], "-o", ms=3, color=COLORS[m], label=LABELS[m])
    ax[0].set_xlabel("forward passes (AdamW: + one backward each)")
    ax[1].set_xlabel("wall time of the steps [s]")
    for a_ in ax:
        a_.set_ylabel("held-out eval loss")
        a_.grid(alpha=0.3)
    ax[0].set_xscale("symlog", linthresh=10)
    ax[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def plot_memory(mem, path, title):
    plt = pyplot()
    order = ["forward", "mezo", "lozo", "adamw"]
    parts = [("params", "parameters", "#4c72b0"), ("grads", "gradients", "#dd8452"),
             ("optimizer_state", "optimizer state", "#55a868"),
             ("other", "activations + temporaries", "#c44e52")]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bottom = np.zeros(len(order))
    for key, lab, col in parts:
        v = np.array([mem[m][key] for m in order]) / 2**20
        ax.bar([LABELS[m] for m in order], v, bottom=bottom, color=col, label=lab)
        bottom += v
    for i, m in enumerate(order):
        ax.text(i, bottom[i], f"{mem[m]['peak'] / 2**20:.1f} MiB", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("peak traced memory of one step [MiB]")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, bottom.max() * 1.15)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def memory_table(mem, ratios) -> str:
    """Markdown: the peak memory of one step per method, and the two claims checked."""
    mib = 2.0 ** 20
    rows = [f"peak memory of one step ({minigrad.get_backend()} backend; tracemalloc, and RSS growth):", "",
            "| method | peak MiB | params | grads | opt. state | activations+temps | ledger act. peak |"
            " RSS-based peak |", "|---|---|---|---|---|---|---|---|"]
    for k in ("forward", "mezo", "lozo", "adamw"):
        m = mem[k]
        rss = f"{m['rss_peak'] / mib:.2f}" if m["rss_peak"] is not None else "n/a"
        rows.append(f"| {LABELS[k]} | {m['peak'] / mib:.2f} | {m['params'] / mib:.2f} | {m['grads'] / mib:.2f} | "
                    f"{m['optimizer_state'] / mib:.2f} | {m['other'] / mib:.2f} | "
                    f"{m['ledger_activations_peak'] / mib:.2f} | {rss} |")
    mf, ma = ratios["mezo/forward"], ratios["mezo/adamw"]
    rows += ["", f"MeZO / forward = {mf:.3f} (claim <= 1.15: {'OK' if mf <= 1.15 else 'FAILS'}); "
                 f"MeZO / AdamW = {ma:.3f} (claim <= 0.5: {'OK' if ma <= 0.5 else 'FAILS'})"]
    return "\n".join(rows)


def runs_table(hists) -> str:
    """Markdown: each method's evaluation loss before and after, steps, forward passes, s/step."""
    rows = ["| method | eval loss before | after | steps | forward passes | s/step |", "|---|---|---|---|---|---|"]
    for method, h in hists.items():
        rows.append(f"| {LABELS[method]} | {h['eval_loss'][0]:.4f} | {h['eval_loss'][-1]:.4f} | {h['step'][-1]} | "
                    f"{h['forward_passes'][-1]} | {h['sec_per_step']:.3f} |")
    return "\n".join(rows)


def print_memory(mem, ratios):
    print("\n" + memory_table(mem, ratios))
    print("ratios:", {k: round(v, 3) for k, v in ratios.items()})


# ----------------------------------------------------------------------------- main
def build_parser():
    p = cli.ArgumentParser(prog="zo_finetune.py", description=__doc__)
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help=f"model size (default {FULL['preset']}; --quick: {QUICK['preset']})")
    p.add_argument("--ckpt", default=None,
                   help=f"pretrained GPT from demos/train_gpt.py (its {os.path.basename(TRAIN_GPT_CKPT)} or "
                        f"--out directory); default: {TRAIN_GPT_CKPT} if it is usable (not with --quick, "
                        f"--pretrain-steps or --pretrain-lr), else pretrain one here")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--pretrain-lr", type=float, default=None, help=f"default {PRETRAIN_LR:g}")
    p.add_argument("--adamw-steps", type=int, default=None)
    p.add_argument("--zo-steps", type=int, default=None)
    p.add_argument("--adamw-lr", type=float, default=1e-3)
    p.add_argument("--mezo-lr", type=float, default=1e-3)
    p.add_argument("--lozo-lr", type=float, default=5e-4)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--nu", type=int, default=50, help="LoZO: resample V every nu steps")
    p.add_argument("--lozo-momentum", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step; default: the preset's")
    p.add_argument("--n-evals", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=3)
    p.add_argument("--seed", type=cli.seed, default=0)
    p.add_argument("--skip-train", action="store_true", help="memory measurement only")
    cli.add_corpus_arguments(p, cache_dir_help="token ids and the pretrained GPT are cached here ('' disables)")
    cli.add_output_arguments(p, os.path.join("out", "zo_finetune"),
                             out_help="directory for the figures and the results JSON",
                             quick_help=f"smoke run: the {QUICK['preset']} preset and few steps "
                                        "(explicit flags still win)")
    return p


def _validate(a):
    if a.skip_train:
        # (rank and lozo_momentum size LoZO's state, which the memory part measures)
        cli.refuse_unused(build_parser(), a, ("adamw_steps", "zo_steps", "n_evals", "eval_batches", "adamw_lr",
                                              "mezo_lr", "lozo_lr", "eps", "nu"),
                          "--skip-train runs no fine-tuning")
    if a.ckpt is not None:
        cli.refuse_unused(build_parser(), a, ("pretrain_steps", "pretrain_lr"), "--ckpt gives the pretrained model")
    # given at all (their defaults are None), they ask for a pretraining here
    a.pretrain_asked = a.pretrain_steps is not None or a.pretrain_lr is not None
    cli.fill_defaults(a, QUICK, FULL)
    if a.pretrain_lr is None:
        a.pretrain_lr = PRETRAIN_LR
    for name in ("pretrain_steps", "adamw_steps", "zo_steps", "rank", "nu", "n_evals", "eval_batches"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("batch_size", "max_chars"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("pretrain_lr", "adamw_lr", "mezo_lr", "lozo_lr", "eps"):
        v = getattr(a, name)
        if not (v > 0 and math.isfinite(v)):
            raise cli.UsageError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if not 0.0 <= a.lozo_momentum < 1.0:
        raise cli.UsageError(f"--lozo-momentum must be in [0, 1), got {a.lozo_momentum}")


def run(a) -> dict:
    """The demo as the parsed arguments ``a`` say; returns the results (also written as JSON).
    Ctrl-C / SIGTERM raises cli.Interrupted: no results written, no part-trained model cached."""
    _validate(a)
    text, desc = load_text(notice=True, max_chars=a.max_chars)
    cfg, batch_size = preset(a.preset)
    batch_size = a.batch_size or batch_size
    cache_dir = a.cache_dir or None
    loaded = None
    if a.ckpt is not None:               # asked for: it must be usable
        loaded = from_checkpoint(a.ckpt, cfg, a.preset, text, desc, cache_dir)
    elif a.pretrain_asked and os.path.exists(TRAIN_GPT_CKPT):
        print(f"[zo_finetune] --pretrain-steps/--pretrain-lr given: pretraining here, not taking {TRAIN_GPT_CKPT}")
    elif not a.quick and os.path.exists(TRAIN_GPT_CKPT):
        try:
            loaded = from_checkpoint(TRAIN_GPT_CKPT, cfg, a.preset, text, desc, cache_dir)
        except (CheckpointError, DataError) as e:
            print(f"[zo_finetune] not using {TRAIN_GPT_CKPT}: {e}; pretraining instead")
    if loaded is not None:
        base, data, source = loaded
    else:
        base, data = None, TextData(text, block_size=cfg.block_size, cache_dir=cache_dir, description=desc,
                                    write_cache=False)           # saved below, once all inputs are good
        cfg.vocab_size = data.vocab_size
    val = np.asarray(data.val.ids)
    cut = int(0.8 * len(val))
    ft, ev = Windows(val[:cut], cfg.block_size), Windows(val[cut:], cfg.block_size)
    cli.check_out_dir(a.out)             # the inputs are good: from here on we may write
    data.save_cache()
    if base is None:
        base = pretrain(cfg, batch_size, data, a)
        source = f"{a.pretrain_steps} AdamW steps on the training split"
    n_params = base.num_parameters()
    eval_batches = [ev.batch(batch_size, np.random.default_rng(1000 + i)) for i in range(a.eval_batches)]
    print(f"[zo_finetune] preset {a.preset}: {n_params:,} parameters, pretrained by {source}; "
          f"fine-tune on {cut:,} held-out tokens, evaluate on {len(val) - cut:,}")
    results = {"preset": a.preset, "n_params": n_params, "source": source, "args": vars(a)}

    # memory first (it is quick, and independent of the training runs)
    mem = measure_memory(base, ft.batch(batch_size, np.random.default_rng(7)), a)
    results["memory"] = mem
    f, mz, lz, aw = (mem[k]["peak"] for k in ("forward", "mezo", "lozo", "adamw"))
    ratios = {"mezo/forward": mz / f, "mezo/adamw": mz / aw, "lozo/forward": lz / f, "lozo/adamw": lz / aw}
    if all(m["rss_peak"] is not None for m in mem.values()):
        ratios.update({"rss mezo/forward": mem["mezo"]["rss_peak"] / mem["forward"]["rss_peak"],
                       "rss mezo/adamw": mem["mezo"]["rss_peak"] / mem["adamw"]["rss_peak"]})
    results["ratios"] = ratios
    print_memory(mem, ratios)

    if not a.skip_train:
        hists = {}
        for method in METHODS:
            hists[method] = h = finetune(method, base, ft, eval_batches, batch_size, a)
            print(f"{LABELS[method]}: eval loss {h['eval_loss'][0]:.4f} -> {h['eval_loss'][-1]:.4f} in "
                  f"{h['step'][-1]} steps, {h['forward_passes'][-1]} forward passes, "
                  f"{h['sec_per_step']:.3f} s/step")
        results["runs"] = hists
        plot_loss(hists, os.path.join(a.out, "zo_finetune_loss.png"),
                  f"Fine-tuning a pretrained '{a.preset}' GPT on held-out text "
                  f"(MeZO lr {a.mezo_lr:g}, LoZO lr {a.lozo_lr:g} r={a.rank} ν={a.nu}, ε={a.eps:g})")
    # drawn after the runs: a run stopped by Ctrl-C leaves no new figure beside an older run's results
    plot_memory(mem, os.path.join(a.out, "zo_finetune_memory.png"),
                f"GPT '{a.preset}' ({n_params / 1e6:.2f}M params), batch {batch_size}×{cfg.block_size}")
    path = os.path.join(a.out, f"results_{a.preset}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
    tables = [memory_table(mem, ratios)] + ([runs_table(results["runs"])] if "runs" in results else [])
    with open(os.path.join(a.out, f"results_{a.preset}.md"), "w", encoding="utf-8") as fh:
        fh.write(f"# Zeroth-order fine-tuning of GPT '{a.preset}' ({source})\n\n" + "\n\n".join(tables) + "\n")
    print(f"[zo_finetune] figures, {os.path.basename(path)} and results_{a.preset}.md in {a.out}/")
    return results


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
