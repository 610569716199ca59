"""Fine-tune a pretrained GPT with backprop AdamW, MeZO and LoZO, and measure what each costs.

Lecture 9: when activations dominate memory, estimate the gradient from forward passes only.
MeZO (Malladi et al. 2023) perturbs the weights in place by ±εz, with z regenerated from a seed,
so a training step needs the memory of inference; LoZO (Chen et al. 2025) perturbs each matrix
by a rank-r U·Vᵀ instead. This demo

1. loads a pretrained GPT (``--ckpt``; the main job's checkpoint) or pretrains one itself on the
   training split for ``--pretrain-steps`` AdamW steps (cached in out/zo_finetune/);
2. fine-tunes copies of it on *held-out* text -- the corpus's validation split, whose first 80%
   is the fine-tuning set and last 20% the evaluation set -- with AdamW (backprop), MeZO and LoZO;
3. plots the evaluation loss against forward passes and against wall time (docs/zo_finetune_loss.png);
4. measures the peak memory of one step of each method and of a forward pass alone with
   tracemalloc, split into parameters / gradients / optimizer state / the rest (activations
   kept for backward and transient buffers), cross-checked by the growth of the peak RSS and by
   minigrad.memory's ledger of saved activations (docs/zo_finetune_memory.png), and checks the
   issue's two claims: MeZO step <= 1.15 × forward, and <= 0.5 × an AdamW step.

    .venv/bin/python demos/zo_finetune.py                  # small preset, ~10 min on 2 cores
    .venv/bin/python demos/zo_finetune.py --quick          # tiny preset, a smoke run

Counting: a MeZO/LoZO step is 2 forward passes; an AdamW step is 1 forward + 1 backward (the
backward costs about 2 forwards, which the wall-time panel shows).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigrad  # noqa: E402
import minigrad.memory  # noqa: E402,F401
import optim  # noqa: E402
from models.data import TextData, load_text, windows  # noqa: E402
from models.gpt import GPT, GPTConfig, preset  # noqa: E402
from models.tokenizer import tokenizer_from_dict  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_gpt  # noqa: E402  (its checkpoint reader)

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it, **kw):
        return it

OUT = os.path.join("out", "zo_finetune")


# ----------------------------------------------------------------------------- data
class Windows:
    """Random (x, y) windows of length T from one token array."""

    def __init__(self, ids, T):
        self.ids, self.T = np.asarray(ids), T
        if len(self.ids) < T + 2:
            raise ValueError(f"text of {len(self.ids)} tokens is shorter than block_size+2 = {T + 2}")

    def batch(self, B, rng):
        return windows(self.ids, rng.integers(0, len(self.ids) - self.T - 1, size=B), self.T)


def eval_loss(model, batches):
    with minigrad.no_grad():
        return float(np.mean([model(x, y)[1].item() for x, y in batches]))


# ----------------------------------------------------------------------------- the model
def load_checkpoint(path):
    """(GPT, tokenizer or None) from the training CLI's checkpoint (demos/train_gpt.py writes
    ``--out/ckpt.npz``: ``param/<name>`` arrays and a JSON ``meta`` with ``config`` and
    ``tokenizer``). ``path`` may be the file or its directory. None if nothing usable is there."""
    f = os.path.join(path, "ckpt.npz") if os.path.isdir(path) else path
    if not os.path.isfile(f):
        return None
    try:
        meta, params, _, _ = train_gpt.load_checkpoint(f)   # the CLI's reader (format check included)
        model = GPT(GPTConfig.from_dict(meta["config"]))
        model.load_state_dict(params)
        tok = tokenizer_from_dict(meta["tokenizer"]) if "tokenizer" in meta else None
    except (train_gpt.UsageError, ValueError, KeyError, TypeError) as e:
        print(f"[zo_finetune] cannot use checkpoint {f} ({e}); pretraining instead")
        return None
    print(f"[zo_finetune] pretrained GPT from {f} (step {meta.get('step')})")
    return model, tok


def pretrain(cfg, batch_size, data, steps, lr, seed):
    """Short AdamW pretraining on the training split, cached by its settings."""
    path = os.path.join(OUT, f"pretrained_{cfg.n_layer}x{cfg.n_embd}_v{cfg.vocab_size}_{steps}_{seed}.npz")
    model = GPT(cfg, seed=seed)
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            model.load_state_dict(dict(z))
        print(f"[zo_finetune] pretrained weights from {path}")
        return model
    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("adamw", optim.param_groups_no_decay(params, 0.1), lr=lr, betas=(0.9, 0.95))
    train = Windows(data.train.ids, cfg.block_size)
    rng = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc="pretrain (AdamW)")
    for i in bar:
        for g in opt.param_groups:   # linear warmup then cosine
            g["lr"] = lr * min(1.0, (i + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * i / steps)))
        loss, grads = model.loss_and_grads(*train.batch(batch_size, rng))
        opt.step(grads)
        if i % 20 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss:.3f}")
    os.makedirs(OUT, exist_ok=True)
    np.savez(path, **model.state_dict())
    return model


def clone(model):
    m = GPT(model.config)
    m.load_state_dict(model.state_dict())
    m.eval()   # ZO methods evaluate in eval mode (no dropout); AdamW here too, for parity
    return m


def make_optimizer(method, params, a):
    if method == "adamw":
        return optim.create("adamw", optim.param_groups_no_decay(params, 0.0), lr=a.adamw_lr)
    if method == "mezo":
        return optim.create("mezo", params, lr=a.mezo_lr, eps=a.eps, seed=a.seed)
    if method == "lozo":
        return optim.create("lozo", params, lr=a.lozo_lr, eps=a.eps, rank=a.rank,
                            step_interval=a.nu, momentum=a.lozo_momentum, seed=a.seed)
    raise ValueError(method)


def one_step(method, model, opt, x, y):
    if method == "adamw":
        loss, grads = model.loss_and_grads(x, y)
        opt.step(grads)
        return loss

    def closure():
        with minigrad.no_grad():
            return model(x, y)[1]
    return opt.step(closure=closure)


# ----------------------------------------------------------------------------- fine-tuning runs
def finetune(method, base, ft, eval_batches, a):
    model = clone(base)
    params = {n: p.data for n, p in model.named_parameters()}
    opt = make_optimizer(method, params, a)
    steps = a.adamw_steps if method == "adamw" else a.zo_steps
    every = max(1, steps // a.n_evals)
    fwd_per_step = 1 if method == "adamw" else 2
    rng = np.random.default_rng(a.seed + 1)
    hist = {"step": [0], "forward_passes": [0], "time": [0.0], "eval_loss": [eval_loss(model, eval_batches)]}
    wall = 0.0
    for i in tqdm(range(1, steps + 1), desc=f"fine-tune {method}"):
        x, y = ft.batch(a.batch_size, rng)
        t0 = time.perf_counter()
        one_step(method, model, opt, x, y)
        wall += time.perf_counter() - t0
        if i % every == 0 or i == steps:
            hist["step"].append(i)
            hist["forward_passes"].append(i * fwd_per_step)
            hist["time"].append(wall)
            hist["eval_loss"].append(eval_loss(model, eval_batches))
    hist["sec_per_step"] = wall / steps
    return hist


# ----------------------------------------------------------------------------- memory
def _proc_kb(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _fixed_mmap_threshold(nbytes=64 * 1024):
    """glibc raises its mmap threshold after large frees and then keeps freed buffers in the heap,
    so RSS would count memory that is no longer live (we saw MeZO's RSS peak exceed the forward's
    by about the size of the parameters). A fixed threshold (mallopt M_MMAP_THRESHOLD = -3) sends
    every buffer >= nbytes to mmap, returned on free. Same as MALLOC_MMAP_THRESHOLD_=65536."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes)))
    except (OSError, AttributeError):
        return False


def _reset_rss_peak():
    """Linux: return freed heap pages to the OS (glibc malloc_trim), then reset VmHWM (the peak
    RSS) to the current RSS by writing 5 to /proc/self/clear_refs. Returns False elsewhere."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_kb("VmRSS") is not None
    except (OSError, AttributeError):
        return False


def measure_memory(base, x, y, a, rss=True):
    """Peak memory of a forward pass (no_grad) and of one step of each method.

    Primary, ``peak``: tracemalloc (NumPy reports its allocations to it; the Numba kernels'
    outputs are NumPy arrays too -- the RSS cross-check agrees). A warm-up step first creates the
    optimizer state (AdamW's m, v; LoZO's V) and compiles/loads the kernels; gradients are then
    dropped (set_to_none) so the ones the measured step makes are counted. The peak of a step is
    the bytes held before it -- parameters and optimizer state, counted exactly by nbytes (not
    the traced baseline, which also holds one-off caches of the warm-up) -- plus the traced
    growth over the step: gradients, activations kept for backward, transient buffers.

    Cross-check, ``rss_peak``: the same step again without tracemalloc: growth of the peak RSS
    over the step (after malloc_trim and a VmHWM reset, with glibc's mmap threshold fixed so that
    freed buffers leave the RSS) plus the same held bytes.
    """
    out = {}
    if rss:
        _fixed_mmap_threshold()
    for method in ("forward", "mezo", "lozo", "adamw"):
        gc.collect()
        model = clone(base)
        params = {n: p.data for n, p in model.named_parameters()}
        p_bytes = sum(p.nbytes for p in params.values())
        opt = None if method == "forward" else make_optimizer(method, params, a)
        run_once(method, model, opt, x, y)   # warm-up: optimizer state, JIT compilation
        model.zero_grad()
        s_bytes = opt.state_bytes() if opt is not None else 0
        gc.collect()
        tracemalloc.start()
        ledger = minigrad.memory.track(model, opt)
        with ledger:
            run_once(method, model, opt, x, y)
        grow = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        g_bytes = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        out[method] = {
            "peak": int(p_bytes + s_bytes + grow), "params": int(p_bytes), "optimizer_state": int(s_bytes),
            "grads": int(g_bytes), "other": int(grow - g_bytes),
            "ledger_activations_peak": int(ledger.peak.get("activations", 0)),
        }
        del ledger
        model.zero_grad()
        gc.collect()
        if rss and _reset_rss_peak():
            r0 = _proc_kb("VmRSS")
            run_once(method, model, opt, x, y)
            out[method]["rss_peak"] = int(p_bytes + s_bytes + (_proc_kb("VmHWM") - r0) * 1024)
        del model, opt, params
    return out


def run_once(method, model, opt, x, y):
    if method == "forward":
        with minigrad.no_grad():
            model(x, y)
    else:
        one_step(method, model, opt, x, y)


# ----------------------------------------------------------------------------- plots
COLORS = {"adamw": "tab:blue", "mezo": "tab:orange", "lozo": "tab:green", "forward": "tab:gray"}
LABELS = {"adamw": "AdamW (backprop)", "mezo": "MeZO", "lozo": "LoZO", "forward": "forward only"}


def plot_loss(hists, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_memory(mem, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--ckpt", default=os.path.join("out", "ckpt.npz"),
                   help="pretrained GPT from demos/train_gpt.py (its ckpt.npz or --out directory); "
                        "if absent, pretrain one here")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--adamw-steps", type=int, default=100)
    p.add_argument("--zo-steps", type=int, default=500)
    p.add_argument("--adamw-lr", type=float, default=1e-3)
    p.add_argument("--mezo-lr", type=float, default=1e-3)
    p.add_argument("--lozo-lr", type=float, default=5e-4)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--nu", type=int, default=50, help="LoZO: resample V every nu steps")
    p.add_argument("--lozo-momentum", type=float, default=0.0)
    p.add_argument("--n-evals", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", default="docs")
    p.add_argument("--skip-train", action="store_true", help="memory measurement only")
    p.add_argument("--quick", action="store_true", help="tiny preset, few steps (smoke run)")
    a = p.parse_args(argv)
    if a.quick:
        a.preset, a.pretrain_steps, a.adamw_steps, a.zo_steps = "tiny", 60, 20, 40
        a.docs = os.path.join(OUT, "quick")

    text, desc = load_text(notice=True)
    cfg, a.batch_size = preset(a.preset)
    loaded = None if a.quick else load_checkpoint(a.ckpt)
    if loaded is not None and any(getattr(loaded[0].config, k) != getattr(cfg, k)
                                  for k in ("n_layer", "n_head", "n_embd", "block_size")):
        print(f"[zo_finetune] {a.ckpt} is not the '{a.preset}' preset; pretraining instead")
        loaded = None
    data = TextData(text, tokenizer=None if loaded is None else loaded[1], block_size=cfg.block_size,
                    cache_dir=os.path.join("out", "cache"), description=desc)
    cfg.vocab_size = data.vocab_size
    if loaded is not None and loaded[0].config.vocab_size == data.vocab_size:
        base, source = loaded[0], f"the checkpoint {a.ckpt}"
    else:
        base = pretrain(cfg, a.batch_size, data, a.pretrain_steps, a.pretrain_lr, a.seed)
        source = f"{a.pretrain_steps} AdamW steps on the training split"
    base.eval()
    n_params = base.num_parameters()
    val = np.asarray(data.val.ids)
    cut = int(0.8 * len(val))
    ft, ev = Windows(val[:cut], cfg.block_size), Windows(val[cut:], cfg.block_size)
    eval_batches = [ev.batch(a.batch_size, np.random.default_rng(1000 + i)) for i in range(a.eval_batches)]
    print(f"[zo_finetune] preset {a.preset}: {n_params:,} parameters, pretrained by {source}; "
          f"fine-tune on {cut:,} held-out tokens, evaluate on {len(val) - cut:,}")
    os.makedirs(a.docs, exist_ok=True)
    os.makedirs(OUT, exist_ok=True)
    results = {"preset": a.preset, "n_params": n_params, "source": source, "args": vars(a)}

    # memory first (it is quick, and independent of the training runs)
    x, y = ft.batch(a.batch_size, np.random.default_rng(7))
    mem = measure_memory(base, x, y, a)
    results["memory"] = mem
    f, mz, lz, aw = (mem[k]["peak"] for k in ("forward", "mezo", "lozo", "adamw"))
    results["ratios"] = {"mezo/forward": mz / f, "mezo/adamw": mz / aw, "lozo/forward": lz / f,
                         "lozo/adamw": lz / aw}
    if all("rss_peak" in mem[k] for k in mem):
        results["ratios"].update({"rss mezo/forward": mem["mezo"]["rss_peak"] / mem["forward"]["rss_peak"],
                                  "rss mezo/adamw": mem["mezo"]["rss_peak"] / mem["adamw"]["rss_peak"]})
    print(f"\npeak memory of one step ({minigrad.get_backend()} backend; tracemalloc, and RSS growth):")
    print("| method | peak MiB | params | grads | opt. state | activations+temps | ledger act. peak |"
          " RSS-based peak |")
    print("|---|---|---|---|---|---|---|---|")
    for k in ("forward", "mezo", "lozo", "adamw"):
        m = mem[k]
        print(f"| {LABELS[k]} | {m['peak'] / 2**20:.2f} | {m['params'] / 2**20:.2f} | {m['grads'] / 2**20:.2f} | "
              f"{m['optimizer_state'] / 2**20:.2f} | {m['other'] / 2**20:.2f} | "
              f"{m['ledger_activations_peak'] / 2**20:.2f} | "
              f"{m['rss_peak'] / 2**20 if 'rss_peak' in m else float('nan'):.2f} |")
    print(f"MeZO / forward = {mz / f:.3f} (claim <= 1.15: {'OK' if mz / f <= 1.15 else 'FAILS'}); "
          f"MeZO / AdamW = {mz / aw:.3f} (claim <= 0.5: {'OK' if mz / aw <= 0.5 else 'FAILS'})")
    print("ratios:", {k: round(v, 3) for k, v in results["ratios"].items()})
    plot_memory(mem, os.path.join(a.docs, "zo_finetune_memory.png"),
                f"GPT '{a.preset}' ({n_params / 1e6:.2f}M params), batch {a.batch_size}×{cfg.block_size}")

    if not a.skip_train:
        hists = {}
        for method in ("adamw", "mezo", "lozo"):
            hists[method] = finetune(method, base, ft, eval_batches, a)
            h = hists[method]
            print(f"{LABELS[method]}: eval loss {h['eval_loss'][0]:.4f} -> {h['eval_loss'][-1]:.4f} in "
                  f"{h['step'][-1]} steps, {h['forward_passes'][-1]} forward passes, "
                  f"{h['sec_per_step']:.3f} s/step")
        results["runs"] = hists
        plot_loss(hists, os.path.join(a.docs, "zo_finetune_loss.png"),
                  f"Fine-tuning a pretrained '{a.preset}' GPT on held-out text "
                  f"(MeZO lr {a.mezo_lr:g}, LoZO lr {a.lozo_lr:g} r={a.rank} ν={a.nu}, ε={a.eps:g})")
    os.makedirs(OUT, exist_ok=True)   # (again: a long run may outlive a cleanup of out/)
    with open(os.path.join(OUT, f"results_{a.preset}.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"[zo_finetune] figures in {a.docs}/, numbers in {OUT}/results_{a.preset}.json")
    return results


if __name__ == "__main__":
    main()
