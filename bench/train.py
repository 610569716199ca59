"""GPT training and KV-cache generation benchmark: minigrad-numba, minigrad-numpy, PyTorch CPU.

    python -m bench.train [--presets tiny,small,medium] [--threads 2] [--steps N] [--no-startup]

For each preset (`models.gpt.preset`: model shape and batch size) every implementation trains
the same architecture (pre-LN GPT-2 block, GELU(tanh), tied head, causal attention) with AdamW
(lr 3e-4, betas (0.9, 0.95), weight decay 0.1) on random tokens, all in this one process with
the same number of threads. Reported: training tokens/s = B*T / median step time (after
warm-up steps), and the peak resident memory of that implementation's run (Linux: VmHWM,
reset between runs through /proc/self/clear_refs). Ratios are minigrad-numba / PyTorch
(higher is better). Then KV-cache generation tokens/s at `small` (batch 1, 16-token prompt,
100 new tokens, sampling at temperature 1), and start-up times measured in fresh subprocesses:
process start to the end of the first `tiny` training step with warm (cached) and cold
(empty cache directory) Numba kernels.

A minigrad step is `models.training.Trainer.train_step`, the step every minigrad training run
takes, with the optimizer a user builds: `optim.create("adamw", params)`, which runs the fused
kernel `minigrad.kernels.adam_step` per parameter on the numba backend and its NumPy update on
the numpy backend. PyTorch runs `torch.optim.AdamW` (its CPU default, the for-loop
implementation). Run by hand, never in CI.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import kernels as bench_kernels
from bench.kernels import median_time

PRESET_STEPS = {"tiny": 30, "small": 12, "medium": 5}
LR, BETAS, WD, EPS = 3e-4, (0.9, 0.95), 0.1, 1e-8


# ----------------------------------------------------------------------------- memory helpers
def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- minigrad
def minigrad_trainer(preset_name: str, backend: str):
    import minigrad as mg
    import optim
    from models.gpt import GPT, preset
    from models.training import Trainer, lm_loss

    cfg, batch = preset(preset_name)
    model = GPT(cfg, seed=0)
    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("adamw", params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)

    def random_tokens(rng):
        return (rng.integers(0, cfg.vocab_size, (batch, cfg.block_size)),
                rng.integers(0, cfg.vocab_size, (batch, cfg.block_size)))

    # a constant lr, so the schedule's length (steps) plays no part; train_step draws each batch
    # with random_tokens from the trainer's Generator (seeded with 0)
    trainer = Trainer(model, lm_loss, opt, random_tokens, steps=1, seed=0, progress=False)

    def step():
        with mg.use_backend(backend):
            return trainer.train_step()

    return step, batch * cfg.block_size


def minigrad_generate(backend: str, new_tokens: int):
    import numpy as np

    import minigrad as mg
    from models.gpt import GPT, preset

    cfg, _ = preset("small")
    model = GPT(cfg, seed=0)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 16))

    def run():
        with mg.use_backend(backend):
            model.generate(prompt, new_tokens, temperature=1.0, rng=np.random.default_rng(0))

    return run


# ----------------------------------------------------------------------------- PyTorch
def torch_gpt(cfg):
    import math

    import torch
    import torch.nn as nn
    import torch.nn.functional as tF

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg.n_embd
            self.ln_1 = nn.LayerNorm(C, bias=cfg.bias)
            self.c_attn = nn.Linear(C, 3 * C, bias=cfg.bias)
            self.attn_proj = nn.Linear(C, C, bias=cfg.bias)
            self.ln_2 = nn.LayerNorm(C, bias=cfg.bias)
            self.c_fc = nn.Linear(C, 4 * C, bias=cfg.bias)
            self.mlp_proj = nn.Linear(4 * C, C, bias=cfg.bias)

        def forward(self, x, cache=None):
            B, T, C = x.shape
            nh = cfg.n_head
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            if cache is not None:
                if "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
            y = tF.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(tF.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.h = nn.ModuleList([Block() for _ in range(cfg.n_layer)])
            self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            for n, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * cfg.n_layer) if n.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx, caches=None, pos0=0):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(pos0, pos0 + T))
            for i, blk in enumerate(self.h):
                x = blk(x, None if caches is None else caches[i])
            return self.ln_f(x) @ self.wte.weight.T  # tied head

    return GPT()


def torch_trainer(preset_name: str):
    import torch
    import torch.nn.functional as tF

    from models.gpt import preset

    cfg, batch = preset(preset_name)
    torch.manual_seed(0)
    model = torch_gpt(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)
        tgt = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)
        opt.zero_grad(set_to_none=True)
        logits = model(idx)
        loss = tF.cross_entropy(logits.view(-1, cfg.vocab_size), tgt.view(-1))
        loss.backward()
        opt.step()
        return float(loss.item())

    return step, batch * cfg.block_size


def torch_generate(new_tokens: int):
    import torch

    from models.gpt import preset

    cfg, _ = preset("small")
    torch.manual_seed(0)
    model = torch_gpt(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 16))

    @torch.no_grad()
    def run():
        caches = [{} for _ in range(cfg.n_layer)]
        logits = model(prompt, caches)
        out, n = prompt, prompt.shape[1]
        for _ in range(new_tokens):
            p = torch.softmax(logits[:, -1, :], dim=-1)
            nxt = torch.multinomial(p, 1)
            out = torch.cat([out, nxt], dim=1)
            logits = model(nxt, caches, pos0=n)
            n += 1
        return out

    return run


# ----------------------------------------------------------------------------- timing
STARTUP_CODE = r"""
import minigrad, minigrad.kernels
from bench.train import minigrad_trainer
step, _ = minigrad_trainer("tiny", "numba")
step()
"""


def startup_seconds(cache_dir: str | None) -> float:
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", STARTUP_CODE], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wall = time.perf_counter() - t0  # includes interpreter start
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small,medium")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per preset (default per preset)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=100)
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up subprocess timings")
    ap.add_argument("--only", default="numba,numpy,torch", help="implementations to run")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall: perf_counter (the default, what a user waits); process: CPU time of "
                         "the whole process, robust when other jobs share the cores (use with "
                         "--threads 1: with more threads it also counts spin-waiting)")
    args = ap.parse_args(argv)
    bench_kernels.set_clock(args.clock)
    bench_kernels.setup_threads(args.threads)

    load0 = bench_kernels.load_average()
    import minigrad
    import numba
    from bench.kernels import machine_line

    minigrad.configure_runtime()
    numba.set_num_threads(args.threads)
    impls = args.only.split(",")
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        impls = [i for i in impls if i != "torch"]

    results = {}  # (preset, impl) -> (tokens/s, peak MB)
    for name in args.presets.split(","):
        steps = args.steps or PRESET_STEPS.get(name, 5)
        for impl in impls:
            gc.collect()
            reset_peak_rss()
            if impl == "torch":
                step, tokens = torch_trainer(name)
            else:
                step, tokens = minigrad_trainer(name, impl)
            t = median_time(step, steps, args.warmup)
            results[(name, impl)] = (tokens / t, peak_rss_mb())
            print(f"  {name} {impl}: {tokens / t:,.0f} tokens/s", file=sys.stderr, flush=True)
            del step
            gc.collect()

    gen = {}
    for impl in impls:
        run = torch_generate(args.gen_tokens) if impl == "torch" else minigrad_generate(impl, args.gen_tokens)
        gen[impl] = args.gen_tokens / median_time(run, 3, 1)
        print(f"  generate {impl}: {gen[impl]:,.0f} tokens/s", file=sys.stderr, flush=True)

    startup = None
    if not args.no_startup:
        startup_seconds(None)  # make sure the normal cache is populated
        warm = statistics.median(startup_seconds(None) for _ in range(3))
        with tempfile.TemporaryDirectory() as d:
            cold = startup_seconds(d)
        startup = (warm, cold)

    def cell(v, fmt):
        return fmt.format(v) if v is not None else "n/a"

    print()
    print(f"Machine: {machine_line(args.threads)}")
    print(f"Clock: {args.clock}; load average before the run: {load0}")
    print(f"Training: median step time over timed steps after {args.warmup} warm-up steps; "
          "ratio = minigrad-numba / PyTorch (higher is better).")
    print()
    print("| case | minigrad-numba | minigrad-numpy | PyTorch CPU | numba / PyTorch |")
    print("|---|---:|---:|---:|---:|")
    for name in args.presets.split(","):
        get = lambda impl, i: results.get((name, impl), (None, None))[i]  # noqa: E731
        nb, npy, tt = get("numba", 0), get("numpy", 0), get("torch", 0)
        ratio = f"{nb / tt:.2f}x" if nb and tt else "n/a"
        print(f"| train `{name}` tokens/s | {cell(nb, '{:,.0f}')} | {cell(npy, '{:,.0f}')} | "
              f"{cell(tt, '{:,.0f}')} | {ratio} |")
        print(f"| train `{name}` peak RSS (MB) | {cell(get('numba', 1), '{:,.0f}')} | "
              f"{cell(get('numpy', 1), '{:,.0f}')} | {cell(get('torch', 1), '{:,.0f}')} | |")
    nb, npy, tt = gen.get("numba"), gen.get("numpy"), gen.get("torch")
    ratio = f"{nb / tt:.2f}x" if nb and tt else "n/a"
    print(f"| generate `small` with KV cache, tokens/s | {cell(nb, '{:,.0f}')} | {cell(npy, '{:,.0f}')} | "
          f"{cell(tt, '{:,.0f}')} | {ratio} |")
    if startup:
        print(f"| start to first `tiny` step, warm cache (s) | {startup[0]:.2f} | | | |")
        print(f"| start to first `tiny` step, cold compile (s) | {startup[1]:.2f} | | | |")
    print()
    print("Peak RSS is the process high-water mark during that implementation's run, which includes "
          "the interpreter and the libraries loaded so far (PyTorch is loaded throughout).")


if __name__ == "__main__":
    main()
