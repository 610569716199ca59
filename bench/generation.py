"""Generation benchmark: decode speed and KV memory against context length for each cache policy
and attention variant, perplexity at long context, and continuous batching against serving
requests one by one.

    python -m bench.generation [--out out/generation] [--quick] [--threads 2] [--clock wall|process]
                               [--ctx 256] [--train-steps 1500] [--speed-only] [--variants dense,PyTorch]
                               [--contexts 64,128,256,512,1024] [--decode 32] [--rounds 3]

Writes OUT/generation.md (the tables, also printed) and three plots, in three parts (the first
alone with ``--speed-only``, for the variants ``--variants`` names):

1. **Speed and memory** (random weights: the cost does not depend on them). The `small` shape
   (4 layers, 4 heads, C = 128) with block_size = the longest context. For each variant and
   each context length 128 ... 8192 a sequence is grown to that length (prompt chunks of 512);
   then ``--decode`` tokens are decoded one at a time in every sequence, the sequences taking
   turns of 8 tokens, and timed. Reported: the median milliseconds per token (median of
   ``--rounds`` rounds) and the KV bytes the cache holds at that length (``used_bytes``).
   Variants: dense (``DenseKVCache``), dense float16 (the same, keeping its keys and values in
   float16), dense with a copy of the filled part per token (the cache before it was an object),
   GQA (2 key/value heads for the 4 query heads), StreamingLLM (4 sinks + a window of 508),
   Quest (token budget 512, pages of 16, layers 0-1 dense as in the paper), paged (one sequence
   in blocks of 16), linear attention (its recurrent state) and, when installed, PyTorch's model
   of the same shape with its ``torch.cat`` cache.
2. **Perplexity at long context.** `small` models trained ``--train-steps`` AdamW steps of
   about 2k tokens each on the default corpus at block_size CTX (``--ctx``, 256; 128 with --quick):
   softmax (MHA), GQA and linear attention; the checkpoints stay in OUT and are reused.
   Validation windows of 2·CTX + 1 tokens are fed one token at a time, as the StreamingLLM
   reference's ``eval_long_ppl.py`` does, for the perplexity of the first CTX predictions
   (inside the trained positions) and of the next CTX (beyond them: a cache with no room left --
   dense, Quest, GQA, linear -- is reset and refilled from the last CTX/2 tokens, sliding-window
   recomputation as ``GPT.generate`` does; StreamingLLM keeps going). On the MHA model: dense,
   paged (inside only), StreamingLLM (4 sinks + a window, CTX/4 positions in all; positions
   within the cache as the paper, and each token's stream index, which refills at CTX like the
   dense cache), window-only (CTX/4 recent positions, no sinks) and Quest (token budget CTX/4).
3. **Serving.** 8 requests (64-token validation prompts, 128 new tokens each, temperature 0.8,
   each its own seed) through ``models.serving.Server`` with max_batch 8 (continuous batching)
   and max_batch 1 (one by one), and through ``model.generate`` one by one; then 8 prompts with a
   common 64-token prefix, with and without prefix sharing (peak blocks in use).

Run by hand, never in CI. Timings are wall clock (``--clock process``: the process's CPU time,
steadier when other jobs share the cores); the report states the machine, the clock and the load.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time

from bench import kernels as bench_kernels

#: the variants of the speed part ("PyTorch" is added when torch is installed)
SPEED_VARIANTS = ("dense", "dense float16", "dense, copying", "GQA", "StreamingLLM", "Quest", "paged", "linear")
CHUNK = 512
TURN = 8   # decoding steps a sequence takes in a row in the speed part (see `speed`)


def _cache(name, model, batch=1, ctx=None, budget=None):
    """A one-batch cache of policy ``name`` for ``model`` (ctx/budget size the sparse ones)."""
    import numpy as np

    from models.kv_cache import (DenseKVCache, LinearAttentionCache, PagedKVCache, QuestCache,
                                 StreamingLLMCache)

    if name in ("dense", "GQA"):
        return DenseKVCache.for_model(model, batch)
    if name == "dense float16":
        return DenseKVCache.for_model(model, batch, dtype=np.float16)
    if name == "linear":
        return LinearAttentionCache.for_model(model, batch)
    if name == "StreamingLLM":
        return StreamingLLMCache.for_model(model, batch, n_sink=4, window=ctx - 4)
    if name == "stream":
        return StreamingLLMCache.for_model(model, batch, n_sink=4, window=ctx - 4, positions="stream")
    if name == "window":
        return StreamingLLMCache.for_model(model, batch, n_sink=0, window=ctx)
    if name == "Quest":
        return QuestCache.for_model(model, batch, token_budget=budget, page_size=16)
    if name == "paged":
        return PagedRows(PagedKVCache.for_model(model, num_blocks=batch * -(-model.config.block_size // 16)),
                         batch, model.config.block_size)
    raise ValueError(name)


class PagedRows:
    """B sequences of a paged cache driven like one batch's cache (room, reset, used_bytes)."""

    def __init__(self, cache, batch, max_len):
        self.cache, self.max_len = cache, max_len
        self.seqs = [cache.add_sequence() for _ in range(batch)]

    def room(self):
        return self.max_len - self.cache.lengths[self.seqs[0]]

    def reset(self):
        for s in self.seqs:
            self.cache.free(s)
        self.seqs = [self.cache.add_sequence() for _ in self.seqs]

    @property
    def used_bytes(self):
        return self.cache.used_bytes

    def forward_cache(self):
        return self.cache.batch(self.seqs)


def _as_cache(cache):
    return cache.forward_cache() if isinstance(cache, PagedRows) else cache


# ----------------------------------------------------------------------------- 1. speed
def copying_dense_cache(model):
    """A dense cache that attends as the cache did before it became an object: the filled part
    goes to ``F.scaled_dot_product_attention``, whose flash kernel copies it into contiguous
    arrays at every call (O(n) per token and layer). For comparison only."""
    import minigrad.functional as F
    from models.kv_cache import DenseKVCache

    class CopyingDenseCache(DenseKVCache):
        def _dense(self, layer, q):
            k, v = self.k[layer, :, :, :self.n], self.v[layer, :, :, :self.n]
            return F.scaled_dot_product_attention(q, k, v, causal=True).data

    return CopyingDenseCache.for_model(model)


class TorchDecoder:
    """PyTorch's GPT of the same shape (``bench.train.torch_gpt``) with its usual KV cache: per layer
    a tensor grown by ``torch.cat`` every step (a copy of the filled part) and SDPA. Its prompt
    chunks after the first use SDPA's is_causal, aligned top-left: only their timing is used."""

    def __init__(self, cfg):
        import torch

        from bench.train import torch_gpt

        torch.manual_seed(0)
        self.torch, self.model = torch, torch_gpt(cfg).eval()
        self.caches = [{} for _ in range(cfg.n_layer)]
        self.n = 0

    def __call__(self, tokens):
        with self.torch.no_grad():
            self.model(self.torch.from_numpy(tokens), self.caches, pos0=self.n)
        self.n += tokens.shape[1]

    def room(self):
        return CHUNK

    @property
    def used_bytes(self):
        return sum(c["k"].nbytes + c["v"].nbytes for c in self.caches)


def _decoders(name, contexts, tokens):
    """{n: (feed(tokens), cache)} for one speed variant, a sequence per context length n: ``feed``
    runs tokens (1, T) through that sequence's cache. The variant's model is built once (random
    weights, block_size the longest context) and shared by its sequences."""
    from models.gpt import GPT, preset

    overrides = {"GQA": dict(n_kv_head=2), "linear": dict(attention="linear")}.get(name, {})
    cfg, _ = preset("small", block_size=max(contexts), **overrides)
    if name == "PyTorch":
        return {n: (d, d) for n, d in ((n, TorchDecoder(cfg)) for n in contexts)}
    model = GPT(cfg, seed=0)
    model.eval()
    warm = _cache(name, model) if name == "dense float16" else None
    model.generate(tokens[:, :8], 4, temperature=0, cache=warm)   # warm-up: its kernels compiled
    out = {}
    for n in contexts:
        cache = copying_dense_cache(model) if name == "dense, copying" else _cache(name, model, ctx=512, budget=512)
        out[n] = (lambda x, c=cache: model(x, cache=_as_cache(c))), cache
    return out


def speed(variants, contexts, decode, rounds, log):
    """Rows (variant, context, ms per token, bytes held): per cell the median over ``rounds``
    rounds (fresh caches) of the median step time. Within a round every (variant, context length)
    has its own sequence, grown to that length first; then the sequences take turns of ``TURN``
    decoding steps each, the order rotating every turn, so that the load of the moment falls on
    every variant and every context length alike. (Timing the lengths one after another, as a
    single growing sequence would, measured the machine's drift: the ratio of 1,024 to 64
    positions ranged from 0.90 to 1.76 over six runs of the same commit.) A turn of several
    tokens keeps most steps as they are when one sequence is decoded alone, following a step of
    the same sequence, whose keys, values and weights the CPU's caches may still hold. (With turns
    of one token, two runs gave 1.34x and 1.25x for 1,024 against 64 positions; with turns of 8,
    1.24x and 1.23x.)"""
    per_round = [_speed_round(variants, contexts, decode, log) for _ in range(rounds)]
    return [(name, n, statistics.median(r[i][2] for r in per_round), held)
            for i, (name, n, _, held) in enumerate(per_round[0])]


def _speed_round(variants, contexts, decode, log):
    import numpy as np

    import minigrad

    tokens = np.random.default_rng(0).integers(0, 65, (1, max(contexts)))
    cells = [(name, n) for name in variants for n in contexts]
    decoders = {}
    for name in variants:
        for n, decoder in _decoders(name, contexts, tokens).items():
            decoders[name, n] = decoder
    times = {cell: [] for cell in cells}
    with minigrad.no_grad():
        for (name, n), (feed, cache) in decoders.items():             # grow each sequence to n - decode
            at = 0
            while at < n - decode:
                T = min(CHUNK, n - decode - at, cache.room())
                feed(tokens[:, at:at + T])
                at += T
        for turn, first in enumerate(range(0, decode, TURN)):
            k = turn % len(cells)
            for name, n in cells[k:] + cells[:k]:                    # rotate the order
                feed, _ = decoders[name, n]
                for at in range(n - decode + first, n - decode + min(first + TURN, decode)):
                    t0 = bench_kernels.CLOCK()
                    feed(tokens[:, at:at + 1])
                    times[name, n].append(bench_kernels.CLOCK() - t0)
    held = {cell: decoders[cell][1].used_bytes for cell in cells}
    for name, n in cells:
        log(f"  {name:>14} n={n:>5}: {statistics.median(times[name, n]) * 1e3:6.2f} ms/token, "
            f"KV {held[name, n] / 2**20:7.2f} MiB")
    return [(name, n, statistics.median(times[name, n]) * 1e3, held[name, n]) for name, n in cells]


# ----------------------------------------------------------------------------- 2. perplexity
def train_or_load(tag, overrides, data, ctx, steps, out, log):
    import numpy as np

    from models.gpt import GPT, preset
    from models.training import CheckpointError, Trainer, clip_grad_norm, lm_loss, load_checkpoint
    from models.training.optimizers import build_optimizer

    path = os.path.join(out, f"model-{tag}")
    cfg, batch = preset("small", block_size=ctx, vocab_size=data.vocab_size, **overrides)
    try:
        ckpt = load_checkpoint(path)
        if ckpt.config == cfg.to_dict() and ckpt.step == steps:
            log(f"  {tag}: reusing {path} (step {ckpt.step})")
            return ckpt.build_model(), ckpt.meta["val_loss"]
    except CheckpointError:
        pass
    batch = max(1, batch * 128 // ctx)                            # about 2k tokens per step
    model = GPT(cfg, seed=0)
    opt = build_optimizer("adamw", model, 6e-3, weight_decay=0.1, beta2=0.99)
    val = data.fixed_batches("val", 4, batch)
    trainer = Trainer(model, lm_loss, opt, lambda rng: data.get_batch("train", batch, rng), steps=steps,
                      schedule="cosine", schedule_kwargs=dict(warmup_steps=min(100, steps // 4), min_ratio=0.1),
                      grad_hooks=[clip_grad_norm(1.0)], eval_batches=val, eval_every=steps,
                      progress=False, log_every=0)
    result = trainer.fit()
    log(f"  {tag}: {result.step} steps of {batch}x{ctx} in {result.seconds / 60:.1f} min, "
        f"val loss {result.val_loss:.3f}")
    trainer.save(path, meta={"tokenizer": data.tokenizer.to_dict(), "val_loss": float(result.val_loss)})
    model.eval()
    return model, float(np.asarray(result.val_loss))


def stream_nll(model, cache, windows, ctx):
    """Negative log-likelihoods (B, N-1) of windows (B, N), fed one token at a time through
    ``cache``; a cache with no room is reset and refilled from the last ctx/2 tokens."""
    import numpy as np

    import minigrad

    B, N = windows.shape
    nll = np.empty((B, N - 1))
    rows = np.arange(B)
    cache.reset()
    with minigrad.no_grad():
        for t in range(N - 1):
            if cache.room() == 0:                                 # refill, in pieces it can take
                cache.reset()
                for i in range(t - ctx // 2, t, cache.room()):
                    model(windows[:, i:min(t, i + cache.room())], cache=_as_cache(cache))
            logits = model(windows[:, t:t + 1], cache=_as_cache(cache))[0].data[:, -1].astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            nll[:, t] = -logp[rows, windows[:, t + 1]]
    return nll


def perplexity(data, ctx, steps, n_windows, out, log):
    import numpy as np

    models = {}
    for tag, overrides in (("MHA", {}), ("GQA", dict(n_kv_head=2)), ("linear", dict(attention="linear"))):
        models[tag] = train_or_load(tag, overrides, data, ctx, steps, out, log)
    val = data.split("val").ids
    starts = np.linspace(0, len(val) - 2 * ctx - 2, n_windows).astype(int)
    windows = np.stack([np.asarray(val[s:s + 2 * ctx + 1], np.int64) for s in starts])
    runs = [("dense", "MHA", "dense"), ("dense float16", "MHA", "dense float16"), ("paged", "MHA", "paged"),
            ("StreamingLLM", "MHA", "StreamingLLM"), ("StreamingLLM, stream positions", "MHA", "stream"),
            ("window only", "MHA", "window"), ("Quest", "MHA", "Quest"), ("GQA", "GQA", "GQA"), ("linear", "linear", "linear")]
    rows = []   # (policy, model, val loss of training, ppl inside, ppl beyond or None, KV bytes at ctx)
    for label, tag, policy in runs:
        model, val_loss = models[tag]
        cache = _cache(policy, model, len(windows), ctx=ctx // 4, budget=ctx // 4)
        w = windows[:, :ctx + 1] if policy == "paged" else windows
        nll = stream_nll(model, cache, w, ctx)
        inside = math.exp(nll[:, :ctx].mean())
        beyond = math.exp(nll[:, ctx:].mean()) if nll.shape[1] > ctx else None
        held = _held_bytes(policy, model, ctx)
        rows.append((label, tag, val_loss, inside, beyond, held))
        log(f"  {label:>12}: ppl {inside:.3f} inside, {beyond if beyond is None else round(beyond, 3)} beyond")
    return rows, models["MHA"][0]


def _held_bytes(policy, model, ctx):
    """KV bytes a cache of ``policy`` holds after one sequence of ctx tokens."""
    import numpy as np

    import minigrad

    cache = _cache(policy, model, 1, ctx=ctx // 4, budget=ctx // 4)
    fed = 0
    with minigrad.no_grad():
        while fed < ctx:
            n = min(CHUNK, ctx - fed, cache.room())
            model(np.zeros((1, n), np.int64), cache=_as_cache(cache))
            fed += n
    return cache.used_bytes


# ----------------------------------------------------------------------------- 3. serving
def serving(model, data, n_requests, prompt_len, new_tokens, log):
    import numpy as np

    from models.serving import Server

    val = data.split("val").ids
    starts = np.linspace(0, len(val) - prompt_len - 1, n_requests).astype(int)
    prompts = [np.asarray(val[s:s + prompt_len], np.int64) for s in starts]

    def serve(max_batch, prompts, share=True):
        blocks = sum(-(-(p.size + new_tokens - 1) // 16) for p in prompts)    # room for all at once
        server = Server(model, num_blocks=blocks, block_size=16, max_batch=max_batch, share_prefixes=share)
        for i, p in enumerate(prompts):
            server.submit(p, new_tokens, temperature=0.8, seed=i)
        peak = 0
        t0 = bench_kernels.CLOCK()
        while server.waiting or server.running:
            server.step()
            peak = max(peak, blocks - len(server.cache.free_blocks))
        seconds = bench_kernels.CLOCK() - t0
        out = {rid: np.array(r.tokens) for rid, r in server.done.items()}
        return seconds, out, peak, server.steps

    model.generate(prompts[0][None], 4)                            # warm-up
    rows = []
    t_batch, out_batch, peak_batch, steps_batch = serve(n_requests, prompts)
    t_one, out_one, peak_one, steps_one = serve(1, prompts)
    t0 = bench_kernels.CLOCK()
    alone = [model.generate(p[None], new_tokens, temperature=0.8, rng=np.random.default_rng(i))[0, prompt_len:]
             for i, p in enumerate(prompts)]
    t_gen = bench_kernels.CLOCK() - t0
    same = sum(np.array_equal(out_batch[i], alone[i]) for i in range(n_requests))
    total = n_requests * new_tokens
    rows.append((f"Server, max_batch={n_requests} (continuous batching)", t_batch, total / t_batch, peak_batch,
                 steps_batch))
    rows.append(("Server, max_batch=1 (one by one)", t_one, total / t_one, peak_one, steps_one))
    rows.append(("model.generate one by one (dense cache)", t_gen, total / t_gen, None, None))
    common = np.asarray(val[:prompt_len], np.int64)
    shared_prompts = [np.concatenate([common, p[:16]]) for p in prompts]
    for share in (True, False):
        t, _, peak, steps = serve(n_requests, shared_prompts, share)
        rows.append((f"common {prompt_len}-token prefix, prefix sharing {'on' if share else 'off'}", t,
                     total / t, peak, steps))
    for label, t, tps, peak, _ in rows:
        log(f"  {label}: {tps:,.0f} tokens/s" + (f", peak {peak} blocks" if peak else ""))
    return rows, same


# ----------------------------------------------------------------------------- report
def plots(out, speed_rows, ppl_rows):
    from models.training import pyplot, save_figure

    plt = pyplot()
    paths = []
    for key, ylabel, name, scale in ((2, "ms per decoded token", "decode_time.png", "linear"),
                                     (3, "KV cache held (MiB)", "kv_memory.png", "log")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for variant in dict.fromkeys(r[0] for r in speed_rows):
            pts = [(r[1], r[key] / (2**20 if key == 3 else 1)) for r in speed_rows if r[0] == variant]
            ax.plot(*zip(*pts), marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_yscale(scale)
        ax.set_xlabel("context length (cached positions)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, os.path.join(out, name)))
    if ppl_rows is None:   # --speed-only
        return paths
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = [r[0] for r in ppl_rows]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [r[3] for r in ppl_rows], 0.4, label="inside block_size")
    ax.bar([i + 0.2 for i in x], [r[4] or 0 for r in ppl_rows], 0.4, label="beyond block_size")
    ax.set_xticks(list(x), labels, rotation=20, fontsize=8)
    ax.set_ylabel("validation perplexity (chars)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(save_figure(fig, os.path.join(out, "perplexity.png")))
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("out", "generation"))
    ap.add_argument("--quick", action="store_true", help="short contexts, 128-token models, 20 training steps")
    positive_int = bench_kernels.positive_int
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--decode", type=positive_int, default=None,
                    help="decoded tokens timed per context length, at most the shortest context (default 32)")
    ap.add_argument("--rounds", type=positive_int, default=None, help="rounds of the speed part (medians; default 3)")
    ap.add_argument("--train-steps", type=positive_int, default=None, help="training steps per model (default 1500)")
    ap.add_argument("--ctx", type=positive_int, default=None, help="block_size of the trained models (default 256)")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="process: CPU time of the process (steadier on a shared machine; use with --threads 1)")
    ap.add_argument("--contexts", default=None, help="comma-separated context lengths")
    ap.add_argument("--speed-only", action="store_true", help="part 1 only (no training, no serving)")
    ap.add_argument("--variants", default=None,
                    help="comma-separated variants of part 1 (default all: " + ",".join(SPEED_VARIANTS) + ",PyTorch)")
    args = ap.parse_args(argv)
    chosen = None if args.variants is None else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in chosen or () if v not in SPEED_VARIANTS + ("PyTorch",)]
    if unknown or chosen == []:
        ap.error(f"--variants: unknown {unknown or 'empty list'}; choose from {', '.join(SPEED_VARIANTS)}, PyTorch")
    quick = args.quick
    try:
        contexts = [positive_int(c) for c in (args.contexts or ("128,256,512" if quick else
                                                                 "128,256,512,1024,2048,4096,8192")).split(",")]
    except argparse.ArgumentTypeError as exc:
        ap.error(f"--contexts: each length {exc}")
    decode = args.decode or (8 if quick else 32)
    if decode > min(contexts):   # each sequence is grown to n - decode tokens, then decodes the rest
        ap.error(f"--decode: at most the shortest context, {min(contexts)}, got {decode}")
    bench_kernels.setup_threads(args.threads)
    bench_kernels.set_clock(args.clock)
    load0 = bench_kernels.load_average()
    import numba

    import minigrad
    from models.data import TextData, load_text

    minigrad.configure_runtime()
    numba.set_num_threads(args.threads)
    steps = args.train_steps or (20 if quick else 1500)
    ctx = args.ctx or (128 if quick else 256)
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    log("1. decode speed and KV memory against context length")
    variants = tuple(chosen or SPEED_VARIANTS + ("PyTorch",))
    if "PyTorch" in variants:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            if chosen is not None:
                ap.error("--variants: PyTorch is not installed (pip install -e .[bench])")
            variants = SPEED_VARIANTS
    rounds = args.rounds or (1 if quick else 3)
    speed_rows = speed(list(variants), contexts, decode, rounds, log)
    ppl_rows = serve_rows = None
    if not args.speed_only:
        text, desc = load_text(max_chars=2_000_000 if quick else None)
        data = TextData(text, block_size=ctx, cache_dir=os.path.join(args.out, "cache"), description=desc)
        log(f"2. perplexity at long context ({desc}, block_size {ctx})")
        n_windows = 2 if quick else 4
        ppl_rows, mha = perplexity(data, ctx, steps, n_windows, args.out, log)
        log("3. serving")
        n_req, prompt_len, new_tokens = (8, 32, 32) if quick else (8, 64, 128)
        serve_rows, same = serving(mha, data, n_req, prompt_len, new_tokens, log)
    load1 = bench_kernels.load_average()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = "python -m bench.generation " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += [f"Machine: {bench_kernels.machine_line(args.threads)}", bench_kernels.environment_line(),
              f"Command: `{cmd.strip()}` at commit {commit or 'n/a'}; clock: {args.clock}; "
              f"load average before {load0}, after {load1} ({time.perf_counter() - t_start:.0f} s in all)", ""]
    lines += ["### Decode time per token and KV memory against context length",
              "", f"`small` shape (L4 H4 C128, float32, batch 1), random weights; milliseconds per token: the "
              f"median of {decode} decoded tokens at each context length, median of {rounds} rounds.", ""]
    variants = list(dict.fromkeys(r[0] for r in speed_rows))
    cell = {(r[0], r[1]): r for r in speed_rows}
    for title, key, fmt in (("ms per token", 2, "{:.2f}"), ("KV MiB held", 3, "{:.2f}")):
        lines.append(f"| context: {title} | " + " | ".join(variants) + " |")
        lines.append("|---:|" + "---:|" * len(variants))
        for n in contexts:
            lines.append(f"| {n} | " + " | ".join(
                fmt.format(cell[v, n][key] / (2**20 if key == 3 else 1)) for v in variants) + " |")
        lines.append("")
    for name in ("dense", "dense float16", "PyTorch"):
        rows = [r for r in speed_rows if r[0] == name]
        if rows:
            lines += [f"{name} tokens/s: " + ", ".join(f"{r[1]}: {1e3 / r[2]:,.0f}" for r in rows) + "; "
                      f"time per token at {rows[-1][1]} / at {rows[0][1]}: {rows[-1][2] / rows[0][2]:.2f}x.", ""]
    if ppl_rows is not None:
        lines += perplexity_and_serving_lines(steps, ctx, desc, n_windows, ppl_rows, n_req, prompt_len,
                                              new_tokens, same, serve_rows)
    paths = plots(args.out, speed_rows, ppl_rows)
    report = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "generation.md"), "w") as f:
        f.write(report)
    print(report)
    log("wrote " + ", ".join([os.path.join(args.out, "generation.md")] + paths))


def perplexity_and_serving_lines(steps, ctx, desc, n_windows, ppl_rows, n_req, prompt_len, new_tokens, same,
                                 serve_rows):
    """The report's tables of parts 2 and 3."""
    lines = ["### Perplexity at long context", "",
              f"`small` models trained {steps} steps each at block_size {ctx} on {desc}; {n_windows} "
              f"validation windows of {2 * ctx + 1} tokens fed one at a time. Sparse policies keep {ctx // 4} "
              "positions (StreamingLLM: 4 sinks + the rest as window; Quest: token budget, pages of 16, layers "
              f"0-1 dense). Inside = the first {ctx} predictions, beyond = the next {ctx}.", "",
              "| policy | model | training val loss | ppl inside | ppl beyond | KV held at ctx (KiB) |",
              "|---|---|---:|---:|---:|---:|"]
    for label, tag, val_loss, inside, beyond, held in ppl_rows:
        lines.append(f"| {label} | {tag} | {val_loss:.3f} | {inside:.3f} | "
                     f"{'n/a' if beyond is None else f'{beyond:.3f}'} | {held / 1024:,.0f} |")
    lines += ["", "### Serving", "",
              f"{n_req} requests, {prompt_len}-token prompts, {new_tokens} new tokens each, temperature 0.8; "
              f"the MHA model above; blocks of 16. Continuous batching gave the same tokens as "
              f"`model.generate` alone for {same} of {n_req} requests.", "",
              "| run | seconds | tokens/s | peak blocks | steps |", "|---|---:|---:|---:|---:|"]
    for label, t, tps, peak, n_steps in serve_rows:
        lines.append(f"| {label} | {t:.2f} | {tps:,.0f} | {peak if peak else ''} | {n_steps if n_steps else ''} |")
    lines += ["", f"Continuous batching / one by one: {serve_rows[0][2] / serve_rows[1][2]:.2f}x (Server), "
              f"{serve_rows[0][2] / serve_rows[2][2]:.2f}x (against model.generate)."]
    return lines


if __name__ == "__main__":
    main()
