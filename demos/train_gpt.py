#!/usr/bin/env python
"""Train a character-level GPT on the CPU - the demo that ``make demo`` runs.

    python demos/train_gpt.py                       # small preset, Shakespeare, <= 10 minutes
    python demos/train_gpt.py --data my.txt --out out/mine --preset tiny --steps 500
    python demos/train_gpt.py --out out --resume    # continue the run saved in out/

Writes to ``--out``: ``ckpt.npz`` (parameters, optimizer state, config, step, RNG states,
tokenizer, loss history; loaded with ``allow_pickle=False``) with a readable ``manifest.json``,
``loss.png`` (train and validation loss vs step), ``samples.txt``; token ids are cached in
``--out/cache``. Ctrl-C saves a checkpoint and exits (code 130); ``--resume`` continues it, and
the losses then equal those of an uninterrupted run with the same seed.

The recipe is nanoGPT's (``train.py``): AdamW (weight decay only on 2-D parameters), linear
warmup then cosine decay to lr/10, gradient clipping at global norm 1, validation on a fixed set
of batches every ``--eval-every`` steps. ``--max-minutes`` bounds the whole run (start-up, eval
and the final sample included): from the measured speed (after 40 steps, then every 100) the
schedule's length is set to the number of steps that fit, at most ``--steps``, so that the
cosine still ends at its minimum; the horizon is saved in the checkpoint. ``--max-minutes 0``
makes the run deterministic (exactly ``--steps`` steps).

Bad input (missing/empty/non-UTF-8 ``--data``, corpus shorter than a block, unknown preset or
optimizer, a checkpoint of another configuration) prints one line and exits with code 2 before
anything in ``--out`` is written.
"""
from __future__ import annotations

import time

_T_START = time.perf_counter()   # --max-minutes counts from here (imports and Numba compiles included)

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
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
    # (Not measured on an idle machine, where two threads may be somewhat faster: --blas-threads 2.)
    _n = _blas_threads_from_argv(sys.argv[1:])
    if _n > 0:
        for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(_var, str(_n))
    # NumPy loads before minigrad here, so set what minigrad.backend would (OpenBLAS's workers
    # sleep ~1.5 ms after a GEMM instead of spinning ~0.1 s; matters with --blas-threads 2)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")

import numpy as np  # noqa: E402

# allow `python demos/train_gpt.py` from a source checkout without installing
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigrad  # noqa: E402
import optim  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.tokenizer import TokenizerError, tokenizer_from_dict  # noqa: E402
from optim.schedules import clip_grad_norm_, cosine  # noqa: E402
from optim.zo import ZerothOrderOptimizer  # noqa: E402

CKPT = "ckpt.npz"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Peak learning rates. small: measured here (900 steps, val 1.765 at 6e-3, 1.794 at 1e-2, and a
# 3e-3 run on a 1200-step schedule was at 1.828 by step 900). tiny: not tuned (same as small).
# medium: nanoGPT's value for its 6-layer, 384-wide Shakespeare model (not tuned here).
PRESET_LR = {"tiny": 6e-3, "small": 6e-3, "medium": 1e-3}
_END_SECONDS = 25.0   # kept free at the end of --max-minutes: sample, plot, checkpoint (~13 s measured on a busy 2-core machine)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):           # one line instead of usage + message
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Train a character-level GPT on CPU with minigrad.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="small", help=f"model size: {', '.join(PRESETS)}")
    p.add_argument("--steps", type=int, default=3000,
                   help="optimizer steps (the schedule's length; fewer if --max-minutes says so)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step; None means the preset's")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; None means the preset's (" +
                        ", ".join(f"{k} {v:g}" for k, v in PRESET_LR.items()) + ")")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr = lr * this")
    p.add_argument("--warmup", type=int, default=60, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay (2-D params only)")
    p.add_argument("--beta2", type=float, default=0.99, help="Adam's beta2 (0.99 suits small models, as nanoGPT)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    p.add_argument("--optimizer", default="adamw", help="any name in optim.available()")
    p.add_argument("--data", default=None, help="a UTF-8 text file; None means Shakespeare's works")
    p.add_argument("--out", default="out", help="output directory")
    p.add_argument("--resume", action="store_true", help=f"continue from --out/{CKPT}")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eval-every", type=int, default=250, help="validate every N steps")
    p.add_argument("--eval-batches", type=int, default=20, help="fixed validation batches per evaluation")
    p.add_argument("--max-minutes", type=float, default=10.0,
                   help="wall-clock budget for the whole run; 0 = none (exactly --steps, deterministic)")
    p.add_argument("--sample-chars", type=int, default=300, help="length of the final sample")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines instead)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads when run as a script (0: the library's default; "
                        "an already set OPENBLAS_NUM_THREADS wins)")
    return p


# ---------------------------------------------------------------------------------------------
# learning-rate schedule

def lr_at(step: int, base_lr: float, warmup: int, horizon: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from base_lr to base_lr*min_ratio at ``horizon``."""
    return base_lr * cosine(horizon, warmup, min_ratio)(step)


# ---------------------------------------------------------------------------------------------
# checkpoints

def _json_array(obj) -> np.ndarray:
    return np.array(json.dumps(obj))          # a 0-d unicode array: fine with allow_pickle=False


def save_checkpoint(out_dir: str, model: GPT, opt, meta: dict, history: dict) -> str:
    """Write ckpt.npz and manifest.json atomically (temporary name, then rename)."""
    arrays = {f"param/{n}": p.data for n, p in model.named_parameters()}
    for k, v in optim.flatten_state_dict(opt.state_dict()).items():
        arrays[f"optim/{k}"] = v
    for k, v in history.items():
        arrays[f"history/{k}"] = np.asarray(v, dtype=np.float64)
    arrays["meta"] = _json_array(meta)
    path = os.path.join(out_dir, CKPT)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    manifest = {
        "format_version": FORMAT_VERSION, "checkpoint": CKPT, "step": meta["step"],
        "config": meta["config"], "preset": meta["args"]["preset"], "optimizer": meta["args"]["optimizer"],
        "num_params": model.num_parameters(),
        "last_val_loss": history["val_loss"][-1] if history["val_loss"] else None,
        "last_train_loss": history["train_loss"][-1] if history["train_loss"] else None,
        "data": meta["data"], "horizon": meta["horizon"], "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items() if k != "meta"},
    }
    mtmp = os.path.join(out_dir, MANIFEST + ".tmp")
    with open(mtmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(mtmp, os.path.join(out_dir, MANIFEST))
    return path


def load_checkpoint(path: str):
    """-> (meta, params {name: array}, optimizer state dict, history)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot read checkpoint {path}: {e}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    ostate = optim.unflatten_state_dict({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
    history = {k[len("history/"):]: v.tolist() for k, v in arrays.items() if k.startswith("history/")}
    return meta, params, ostate, history


# ---------------------------------------------------------------------------------------------
# evaluation, plots, samples

def evaluate(model: GPT, batches) -> float:
    was = model.training
    model.eval()
    with minigrad.no_grad():
        losses = [float(model(x, y)[1].item()) for x, y in batches]
    model.train(was)
    return float(np.mean(losses))


def plot_losses(out_dir: str, history: dict, title: str) -> str:
    """loss.png with matplotlib (Agg); loss.txt when matplotlib is missing. Returns the path."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = os.path.join(out_dir, "loss.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("step\tval_loss\n")
            for s, v in zip(history["val_step"], history["val_loss"]):
                f.write(f"{int(s)}\t{v:.4f}\n")
        return path
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ts, tl = np.asarray(history["train_step"]), np.asarray(history["train_loss"])
    if len(tl):
        ax.plot(ts, tl, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        k = max(1, min(50, len(tl) // 10))
        if len(tl) >= k:
            smooth = np.convolve(tl, np.ones(k) / k, mode="valid")
            ax.plot(ts[k - 1:], smooth, color="tab:blue", lw=1.5, label=f"train ({k}-step mean)")
    if history["val_loss"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", color="tab:orange", lw=1.5, ms=4, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    if history["val_loss"]:
        title += f" - val {history['val_loss'][-1]:.3f} at step {int(history['val_step'][-1])}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "loss.png")
    tmp = os.path.join(out_dir, "loss.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def sample_text(model: GPT, tok, n_chars: int, seed: int, prompt: str = "\n") -> str:
    try:
        ids = tok.encode(prompt)
    except TokenizerError:
        ids = [0]
    out = model.generate(np.array([ids or [0]]), max_new_tokens=n_chars, temperature=0.8, top_k=None,
                         rng=np.random.default_rng(seed))
    return tok.decode(out[0, len(ids or [0]):].tolist())


# ---------------------------------------------------------------------------------------------

def _make_optimizer(name, model, lr, weight_decay, beta2, seed):
    """``optim.create`` with weight decay on 2-D parameters only and betas=(0.9, beta2) where the
    optimizer takes them, and the run's seed for the zeroth-order ones (their noise); optimizers
    without those options get what they accept."""
    params = {n: p.data for n, p in model.named_parameters()}
    groups = optim.param_groups_no_decay(params, weight_decay)
    for p_arg, kw in ((groups, {"betas": (0.9, beta2)}), (groups, {"seed": seed}), (groups, {}), (params, {})):
        try:
            return optim.create(name, p_arg, lr=lr, **kw)
        except TypeError:
            continue
    return optim.create(name, params, lr=lr)     # let its own error speak


@minigrad.no_grad()
def _forward_loss(model: GPT, x, y) -> float:
    """The loss without a graph: what a zeroth-order optimizer's closure evaluates."""
    return float(model(x, y)[1].item())


def _rng_state(rng: np.random.Generator):
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state):
    rng.bit_generator.state = state


def run(args, on_step=None) -> int:
    """Train as ``args`` say; ``on_step(step)`` (tests) is called after every optimizer step."""
    t_start = _T_START if __name__ == "__main__" else time.perf_counter()
    # ---- validate everything before writing anything ----------------------------------------
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.optimizer.lower() not in optim.available():
        raise UsageError(f"unknown optimizer {args.optimizer!r}; available: {', '.join(optim.available())}")
    for name in ("steps", "eval_every", "eval_batches"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.lr is None:
        args.lr = PRESET_LR.get(args.preset, 1e-3)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.max_minutes < 0:
        raise UsageError(f"--max-minutes must be >= 0, got {args.max_minutes}")
    try:
        config, preset_batch = preset(args.preset, dropout=args.dropout)
    except ValueError as e:
        raise UsageError(str(e)) from None
    batch_size = args.batch_size or preset_batch

    ckpt_path = os.path.join(args.out, CKPT)
    resumed = None
    if args.resume:
        if not os.path.exists(ckpt_path):
            raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
        resumed = load_checkpoint(ckpt_path)

    text, data_desc = load_text(args.data)
    tok = None
    if resumed is not None:
        try:
            tok = tokenizer_from_dict(resumed[0]["tokenizer"])
        except (TokenizerError, KeyError) as e:
            raise UsageError(f"checkpoint {ckpt_path}: bad tokenizer ({e})") from None
    data = TextData(text, tokenizer=tok, block_size=config.block_size, description=data_desc,
                    cache_dir=os.path.join(args.out, "cache"), write_cache=False)  # written below
    config.vocab_size = data.vocab_size

    if resumed is not None:
        meta = resumed[0]
        want = config.to_dict()
        have = meta["config"]
        if have != want or meta.get("data_key") != data.key or meta["batch_size"] != batch_size:
            diff = [k for k in want if have.get(k) != want[k]]
            what = (f"config differs in {', '.join(diff)}" if diff else
                    "batch size differs" if meta["batch_size"] != batch_size else "data differ")
            raise UsageError(f"checkpoint {ckpt_path} is from another run ({what}); use the same "
                             f"--preset/--data/--batch-size, or a fresh --out")
        if meta["args"]["optimizer"].lower() != args.optimizer.lower():
            raise UsageError(f"checkpoint {ckpt_path} was trained with --optimizer {meta['args']['optimizer']}, "
                             f"not {args.optimizer}; pass the same optimizer, or a fresh --out")

    # ---- inputs are good: from here on we may write ---------------------------------------------
    os.makedirs(args.out, exist_ok=True)
    data.save_cache()
    model = GPT(config, seed=args.seed)
    opt = _make_optimizer(args.optimizer, model, args.lr, args.weight_decay, args.beta2, args.seed)
    rng = np.random.default_rng(args.seed)
    history = {"train_step": [], "train_loss": [], "val_step": [], "val_loss": []}
    step, horizon = 0, args.steps
    if resumed is not None:
        meta, params, ostate, history = resumed
        missing, unexpected = model.load_state_dict(params, strict=False)
        if missing or unexpected:
            raise UsageError(f"checkpoint {ckpt_path}: parameters missing {missing} / unexpected {unexpected}")
        try:
            opt.load_state_dict(ostate)
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"checkpoint {ckpt_path}: optimizer state does not fit --optimizer "
                             f"{args.optimizer} ({e})") from None
        _set_rng_state(rng, meta["rng"])
        _set_rng_state(model.dropout_rng, meta["dropout_rng"])
        step, horizon = meta["step"], meta["horizon"]
        args.seed = meta["args"]["seed"]          # the validation batches depend on it
        if args.steps != meta["args"]["steps"]:
            horizon = args.steps          # an explicit new --steps extends/shortens the run
    val_batches = data.fixed_batches("val", args.eval_batches, batch_size, seed=args.seed + 1)

    n_params = model.num_parameters()
    print(f"data: {data_desc}: {len(data.ids):,} tokens (vocab {data.vocab_size}), "
          f"train {len(data.train):,} / val {len(data.val):,}")
    print(f"model: {args.preset} {config.n_layer} layers, {config.n_head} heads, {config.n_embd} dims, "
          f"block {config.block_size}, {n_params:,} parameters; batch {batch_size}; optimizer {args.optimizer} "
          f"lr {args.lr:g}" + (f"; resuming at step {step}" if resumed else ""))

    def make_meta():
        return {"format_version": FORMAT_VERSION, "step": step, "horizon": horizon,
                "config": config.to_dict(), "batch_size": batch_size, "tokenizer": data.tokenizer.to_dict(),
                "data": data_desc, "data_key": data.key, "args": vars(args),
                "rng": _rng_state(rng), "dropout_rng": _rng_state(model.dropout_rng)}

    # Ctrl-C: finish the current step, save, exit. A second Ctrl-C aborts at once.
    interrupted = []

    def on_sigint(signum, frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    budget = args.max_minutes * 60.0
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=horizon, initial=step, unit="step", dynamic_ncols=True)
    tokens_per_step = batch_size * config.block_size
    val_loss = history["val_loss"][-1] if history["val_loss"] else float("nan")
    t_eval = 0.0                                   # measured cost of one evaluation
    recent = collections.deque(maxlen=200)         # durations of the latest steps
    cpu_secs, cpu_steps = 0.0, 0                   # CPU time of this process per step
    model.train()
    try:
        while step < horizon:
            if step % args.eval_every == 0 and (not history["val_step"] or history["val_step"][-1] != step):
                t0 = time.perf_counter()
                val_loss = evaluate(model, val_batches)
                t_eval = time.perf_counter() - t0
                history["val_step"].append(step)
                history["val_loss"].append(val_loss)
                if bar is None:
                    print(f"step {step}: val loss {val_loss:.4f}", flush=True)
            if interrupted:
                break
            t0, c0 = time.perf_counter(), time.process_time()
            lr = lr_at(step, args.lr, args.warmup, horizon, args.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = data.get_batch("train", batch_size, rng)
            if isinstance(opt, ZerothOrderOptimizer):
                # MeZO, LoZO, ZO-SGD: loss evaluations only, at inference memory; in eval mode,
                # so that both evaluations of a step see the same network (no dropout masks)
                model.eval()
                try:
                    loss = opt.step(closure=lambda: _forward_loss(model, x, y))
                finally:
                    model.train()
            else:
                loss, grads = model.loss_and_grads(x, y)
                if args.grad_clip > 0:
                    clip_grad_norm_(grads, args.grad_clip)
                opt.step(grads)
            step += 1
            dt = time.perf_counter() - t0
            if on_step is not None:
                on_step(step)
            history["train_step"].append(step)
            history["train_loss"].append(loss)
            if step > 3:                            # skip warm-up effects (JIT, caches)
                recent.append(dt)
                cpu_secs += time.process_time() - c0
                cpu_steps += 1
            # fit the schedule into the time budget: plan after 40 timed steps (the warmup does not
            # depend on the horizon), then re-plan every 100 steps
            if budget and len(recent) >= 40 and (len(recent) == 40 or step % 100 == 0):
                per_step = sum(recent) / len(recent)
                left = budget - (time.perf_counter() - t_start)
                evals_left = (horizon - step) // args.eval_every + 1        # the last one included
                reserve = evals_left * t_eval + _END_SECONDS + 0.05 * left  # + sample, plot, save, slack
                fit = min(args.steps, step + max(1, int((left - reserve) / per_step)))
                if abs(fit - horizon) > 0.01 * horizon:
                    verb = "shortened" if fit < horizon else "lengthened"
                    horizon = fit
                    msg = (f"time budget {args.max_minutes:g} min: at {per_step:.2f} s/step the schedule "
                           f"is {verb} to {horizon} steps")
                    if bar is not None:
                        bar.total = horizon
                        bar.write(msg)
                    else:
                        print(msg, flush=True)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.3f} val {val_loss:.3f} lr {lr:.2e} "
                                    f"{tokens_per_step / dt:,.0f} tok/s", refresh=False)
            elif step % 50 == 0:
                print(f"step {step}: loss {loss:.4f} lr {lr:.2e} {tokens_per_step / dt:,.0f} tok/s", flush=True)
            if budget and time.perf_counter() - t_start > budget - t_eval - _END_SECONDS:
                break                               # hard stop: keep the promise of --max-minutes
        if not interrupted and (not history["val_step"] or history["val_step"][-1] != step):
            val_loss = evaluate(model, val_batches)
            history["val_step"].append(step)
            history["val_loss"].append(val_loss)
    finally:
        if bar is not None:
            bar.close()
        signal.signal(signal.SIGINT, old_handler)
    path = save_checkpoint(args.out, model, opt, make_meta(), history)
    plot = plot_losses(args.out, history, f"GPT {args.preset} on {os.path.basename(str(args.data or 'Shakespeare'))}")
    if interrupted:
        print(f"interrupted at step {step}: checkpoint saved to {path}; continue with --resume --out {args.out}")
        return 130
    sample = sample_text(model, data.tokenizer, args.sample_chars, seed=args.seed)
    # a fresh run starts samples.txt anew; a resumed one appends to it
    with open(os.path.join(args.out, "samples.txt"), "a" if args.resume else "w", encoding="utf-8") as f:
        f.write(f"=== step {step}, val loss {val_loss:.4f} ===\n{sample}\n\n")
    minutes = (time.perf_counter() - t_start) / 60
    speed = (f", {sum(recent) / len(recent):.2f} s/step recently (CPU {cpu_secs / cpu_steps:.2f} s/step)"
             if recent else "")
    print(f"step {step}: val loss {val_loss:.4f} nats/token after {minutes:.1f} min{speed}; "
          f"wrote {path}, {plot}, {os.path.join(args.out, 'samples.txt')}")
    print("-" * 60)
    print(sample)
    print("-" * 60)
    return 0


def main(argv=None, on_step=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run(args, on_step=on_step)
    except (UsageError, DataError) as e:
        print(f"train_gpt.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
