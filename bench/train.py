"""GPT training and KV-cache generation benchmark: minigrad-numba, minigrad-numpy, PyTorch CPU.

    python -m bench.train [--presets tiny,small,medium] [--rounds 3] [--threads 2] [--steps N]
                          [--only numba,numpy,torch] [--clock wall|process] [--no-startup]

What is measured. For each preset (`models.gpt.preset`: model shape and batch size) every
implementation trains the same architecture (pre-LN GPT-2 block, GELU(tanh), tied head, causal
attention) with AdamW (lr 3e-4, betas (0.9, 0.95), weight decay 0.1) on random tokens: training
tokens/s = B*T / the median step time over the timed steps after the warm-up steps (and, in a
second row, B*T / the mean step time, which counts a step held up by a stalled thread in full),
and the peak resident memory of the process (Linux: VmHWM). Then KV-cache generation at `small`
(batch 1, 16-token prompt, 100 new tokens, sampling at temperature 1): new tokens/s, median (and
mean) of 3 runs after one warm-up. A minigrad step is `models.training.Trainer.train_step`, the
step every minigrad training run takes, with the optimizer a user builds: `optim.create("adamw", params)` (the fused
kernel `minigrad.kernels.adam_step` per parameter on the numba backend, its NumPy update on the
numpy backend). PyTorch runs `torch.optim.AdamW` (its CPU default, the for-loop implementation).

How. Every (case, implementation) runs in its own fresh process (`--worker IMPL CASE`), which
sets the thread count of every pool before NumPy or torch loads and imports only what that
implementation needs: run in one process, PyTorch's OpenMP threads and minigrad's OpenBLAS and
Numba threads disturb each other (PyTorch `tiny` was measured at 78k tokens/s alone and 65k
beside minigrad), and the peak memory would count the other library. The cases run in `--rounds`
rounds (default 3), the implementations' order alternating between rounds (numba, numpy, torch;
then reversed), so slow drift of a shared machine does not always fall on the same one. The table
gives the median over the rounds of each implementation, the ratio minigrad-numba / PyTorch of
those medians (higher is better) and, in brackets, the ratio within each round.

Start-up, in fresh processes, medians over the rounds: the time of the statement `import
minigrad` with MINIGRAD_BACKEND=numpy (and of that whole process), and process start to the end
of the first `tiny` training step (numba) with warm (cached) and cold (empty NUMBA_CACHE_DIR)
Numba kernels.

The output starts with the machine facts: CPU, threads, library versions and builds, the
OpenBLAS settings in the environment, the load average before and after, the clock, the command.
Run by hand, never in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import kernels as bench_kernels
from bench.kernels import run_times

PRESET_STEPS = {"tiny": 30, "small": 12, "medium": 5}
PROMPT_TOKENS = 16  # of the generation case
LR, BETAS, WD, EPS = 3e-4, (0.9, 0.95), 0.1, 1e-8


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB) so far."""
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
    """(step, tokens per step, trainer): `step()` runs one `Trainer.train_step` on `backend`; the
    `Trainer` is returned too, so that bench.profile can time its optimizer apart."""
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

    return step, batch * cfg.block_size, trainer


def minigrad_generate(backend: str, new_tokens: int):
    import numpy as np

    import minigrad as mg
    from models.gpt import GPT, preset

    cfg, _ = preset("small")
    model = GPT(cfg, seed=0)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, PROMPT_TOKENS))

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
    prompt = torch.randint(0, cfg.vocab_size, (1, PROMPT_TOKENS))

    @torch.no_grad()
    def run():
        # the loop of minigrad's GPT.generate: a forward of the pending tokens (the prompt, then
        # the last token) before each sample, new_tokens forwards in all, no logits left unused
        caches = [{} for _ in range(cfg.n_layer)]
        out, pending, n = prompt, prompt, 0
        for _ in range(new_tokens):
            logits = model(pending, caches, pos0=n)
            n += pending.shape[1]
            p = torch.softmax(logits[:, -1, :], dim=-1)
            pending = torch.multinomial(p, 1)
            out = torch.cat([out, pending], dim=1)
        return out

    return run


# ----------------------------------------------------------------------------- one worker
def worker(impl: str, case: str, args) -> None:
    """Time `case` ("train:<preset>" or "generate") with `impl` in this fresh process; print one
    JSON line: tokens/s and the process's peak RSS."""
    bench_kernels.configure_worker(impl, args.threads)
    if case == "generate":
        run = torch_generate(args.gen_tokens) if impl == "torch" else minigrad_generate(impl, args.gen_tokens)
        tokens, times = args.gen_tokens, run_times(run, 3, 1)
    elif case.startswith("train:"):
        name = case.removeprefix("train:")
        if impl == "torch":
            step, tokens = torch_trainer(name)
        else:
            step, tokens, _ = minigrad_trainer(name, impl)
        times = run_times(step, args.steps or PRESET_STEPS.get(name, 5), args.warmup)
    else:
        raise ValueError(f"bench.train --worker: case must be 'train:<preset>' or 'generate', got {case!r}")
    print(json.dumps({"tokens_per_s": tokens / statistics.median(times),
                      "tokens_per_s_mean": tokens * len(times) / sum(times), "peak_rss_mb": peak_rss_mb()}))


# ----------------------------------------------------------------------------- start-up
IMPORT_CODE = r"""
import time
t0 = time.perf_counter()
import minigrad
print(time.perf_counter() - t0)
"""

STARTUP_CODE = r"""
import minigrad, minigrad.kernels
from bench.train import minigrad_trainer
step, _, _ = minigrad_trainer("tiny", "numba")
step()
"""


def fresh_process(code: str, **env) -> tuple[float, str]:
    """Wall seconds of `python -c code` (interpreter start included) and its output; the process
    inherits this one's environment (thread settings included) updated with `env`."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, cwd=bench_kernels.ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return wall, out.stdout


def startup_rows(rounds: int) -> list:
    """(label, seconds per round, target) of the start-up measurements."""
    statement, process, warm, cold = [], [], [], []
    fresh_process(STARTUP_CODE)  # make sure the normal Numba cache is populated
    for r in range(rounds):
        wall, out = fresh_process(IMPORT_CODE, MINIGRAD_BACKEND="numpy")
        statement.append(float(out.split()[-1]))
        process.append(wall)
        warm.append(fresh_process(STARTUP_CODE)[0])
        with tempfile.TemporaryDirectory() as cache:
            cold.append(fresh_process(STARTUP_CODE, NUMBA_CACHE_DIR=cache)[0])
        print(f"  round {r + 1}/{rounds} start-up: import {statement[-1]:.2f} s (process {wall:.2f} s), "
              f"first tiny step warm {warm[-1]:.2f} s, cold {cold[-1]:.2f} s", file=sys.stderr, flush=True)
    return [("`import minigrad` with MINIGRAD_BACKEND=numpy: the statement", statement, "≤ 0.3"),
            ("`import minigrad` with MINIGRAD_BACKEND=numpy: the whole process", process, ""),
            ("process start to the end of the first `tiny` step (numba), warm Numba cache", warm, "≤ 2"),
            ("the same, cold compile (empty NUMBA_CACHE_DIR)", cold, "")]


# ----------------------------------------------------------------------------- the parent
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_kernels.add_protocol_args(ap, warmup=3, steps_help="timed steps per preset (default per preset)")
    ap.add_argument("--gen-tokens", type=bench_kernels.positive_int, default=100)
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up subprocess timings")
    ap.add_argument("--only", default="numba,numpy,torch", help="implementations to run")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall: perf_counter (the default, what a user waits); process: CPU time of "
                         "the worker process, robust when other jobs share the cores (use with "
                         "--threads 1: with more threads it also counts spin-waiting)")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CASE"),
                    help="internal: run CASE (train:<preset> or generate) with IMPL (numba, numpy or "
                         "torch) in this process and print one JSON line")
    args = ap.parse_args(argv)
    bench_kernels.set_clock(args.clock)
    bench_kernels.setup_threads(args.threads)  # before NumPy loads; inherited by every subprocess
    if args.worker:
        if args.worker[0] not in bench_kernels.IMPLS:
            ap.error(f"--worker: IMPL must be one of {bench_kernels.IMPLS}, got {args.worker[0]!r}")
        worker(*args.worker, args)
        return

    load0 = bench_kernels.load_average()
    impls = args.only.split(",")
    unknown = set(impls) - set(bench_kernels.IMPLS)
    if unknown:
        ap.error(f"--only: unknown implementations {sorted(unknown)}; choose from numba, numpy, torch")
    if "torch" in impls and not bench_kernels.torch_available():
        print("  PyTorch is not installed: its column is skipped (pip install -e .[bench])", file=sys.stderr)
        impls.remove("torch")
    presets = args.presets.split(",")
    bench_kernels.check_presets(ap, presets)
    from models.gpt import preset

    room = preset("small")[0].block_size - PROMPT_TOKENS  # PyTorch's positional table ends there
    if args.gen_tokens > room:
        ap.error(f"--gen-tokens: at most {room} (the `small` context minus the {PROMPT_TOKENS}-token prompt), "
                 f"got {args.gen_tokens}")
    cases = [f"train:{name}" for name in presets] + ["generate"]
    flags = ["--threads", str(args.threads), "--warmup", str(args.warmup), "--gen-tokens", str(args.gen_tokens),
             "--clock", args.clock] + (["--steps", str(args.steps)] if args.steps else [])

    runs = {}  # (case, impl) -> the worker results, one per round
    for r in range(args.rounds):
        for case in cases:
            for impl in bench_kernels.round_order(impls, r):
                res = bench_kernels.run_worker("bench.train", [impl, case, *flags])
                runs.setdefault((case, impl), []).append(res)
                what = "generate small" if case == "generate" else case.replace(":", " ")
                print(f"  round {r + 1}/{args.rounds} {what} {impl}: {res['tokens_per_s']:,.0f} tokens/s, "
                      f"peak RSS {res['peak_rss_mb']:,.0f} MB", file=sys.stderr, flush=True)
    startup = None if args.no_startup else startup_rows(args.rounds)

    def values(case, impl, key):
        return [res[key] for res in runs.get((case, impl), [])]

    def cells(case, key):
        return " | ".join(f"{statistics.median(v):,.0f}" if (v := values(case, impl, key)) else "n/a"
                          for impl in ("numba", "numpy", "torch"))

    steps = (f"{args.steps}" if args.steps else
             ", ".join(f"{name} {PRESET_STEPS.get(name, 5)}" for name in presets))
    print()
    print(bench_kernels.header("bench.train", argv, args.threads, args.clock, load0))
    print(f"Each implementation in its own fresh process per case and round, the order alternating "
          f"between rounds; medians over {args.rounds} rounds. Training: tokens/s = B*T / median step "
          f"time over the timed steps ({steps}) after the warm-up steps ({args.warmup}); the row under "
          "it divides by the mean step instead, so a step held up by a stalled thread or the "
          f"machine counts in full. Generation: {args.gen_tokens} new tokens, median (then mean) of 3 "
          "runs after 1 warm-up. numba / PyTorch: the "
          "ratio of the medians (higher is better), in brackets the ratio in each round. Peak RSS: "
          "the whole worker process (interpreter, the libraries that implementation loads, model, "
          "optimizer state, activations).")
    print()
    print("| case | minigrad-numba | minigrad-numpy | PyTorch CPU | numba / PyTorch |")
    print("|---|---:|---:|---:|---:|")
    for case in cases:
        preset_name = case.removeprefix("train:")
        name = "generate `small` with KV cache" if case == "generate" else f"train `{preset_name}`"
        ratio = bench_kernels.ratio_cell(values(case, "numba", "tokens_per_s"), values(case, "torch", "tokens_per_s"))
        print(f"| {name}, tokens/s | {cells(case, 'tokens_per_s')} | {ratio} |")
        ratio = bench_kernels.ratio_cell(values(case, "numba", "tokens_per_s_mean"),
                                         values(case, "torch", "tokens_per_s_mean"))
        mean = "run" if case == "generate" else "step"
        print(f"| {name}, tokens/s from the mean {mean} (stalls count) | {cells(case, 'tokens_per_s_mean')} "
              f"| {ratio} |")
        print(f"| {name}, peak RSS (MB) | {cells(case, 'peak_rss_mb')} | |")
    if startup:
        print()
        print("| start-up, fresh processes | seconds: median (each round) | target (s) |")
        print("|---|---:|---:|")
        for label, seconds, target in startup:
            each = ", ".join(f"{t:.2f}" for t in seconds)
            print(f"| {label} | {statistics.median(seconds):.2f} ({each}) | {target} |")


if __name__ == "__main__":
    main()
