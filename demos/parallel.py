"""Model parallelism, measured: the same GPT trained on one process, data parallel, tensor parallel,
pipeline parallel (GPipe and 1F1B) and data x tensor parallel -- equal losses, and the bytes each
worker sends per step beside the formulas (Lecture 10).

    .venv/bin/python demos/parallel.py                    # every mode on simulated workers (~3 CPU min)
    .venv/bin/python demos/parallel.py --quick            # a smoke run of every mode (~15 s)
    .venv/bin/python demos/parallel.py --mode tp --steps 20          # one mode, 2 simulated workers
    mpiexec -n 2 .venv/bin/python demos/parallel.py --mode tp --preset tiny --steps 20   # MPI ranks
    .venv/bin/python demos/parallel.py --mode single --preset tiny --steps 20            # the same final loss

Modes (``--workers N`` sets the number of simulated workers of one mode, ``all`` refuses it; under
``mpiexec -n k`` the k ranks are the workers, run through ``optim.dist.launcher.launch``):

    single  one process: ``models.gpt.GPT`` through ``models.training.Trainer``
    dp      data parallel (``models.training.distributed.data_parallel_trainer``): each worker
            runs the whole model on 1/n of the batch; the gradients are all-reduced
    tp      tensor parallel (``models.parallel.tensor``, Megatron-LM): each worker holds 1/t of
            every layer's matrices and runs the whole batch; 4 all-reduces of the activation per
            layer
    pp      pipeline parallel (``models.parallel.pipeline``): each worker holds consecutive layers;
            the batch goes through in ``--micro-batches`` micro-batches, scheduled by
            ``--schedule`` gpipe or 1f1b; activations and their gradients travel point to point
    dp-tp   data x tensor parallel on a grid: ``comm.split`` makes TP groups of ``--tp-degree``
            consecutive ranks and DP groups of the ranks with the same TP rank; each TP group runs
            a TP model on its shard of the batch, the DP groups all-reduce the gradients
    all     (the default; simulated workers only) single, dp, tp, pp with both schedules and
            dp-tp, then the comparison below

Every mode trains the same model from the same weights on the same batches with the same recipe:
AdamW (lr ``--lr``, betas (0.9, 0.99), weight decay 0.1 on matrices), warmup then cosine decay to
lr/10, the gradient clipped at global norm ``--clip`` (each mode computes the single-process norm:
after the all-reduce in dp; ``clip_grad_norm_tp`` in tp; ``clip_grad_norm_pp`` in pp), in
float64 by default so that the modes agree to ~1e-12 and their final losses print the same. Each
mode prints ``final loss <value>`` the same way, on simulated workers and on MPI ranks.

``all`` writes to ``--out``: parallel_loss.png (the modes' loss curves and their distance to the
single process), parallel_timeline_gpipe.png and parallel_timeline_1f1b.png (which stage runs
which micro-batch when, p = 2 and 4) and parallel_results.md (the tables printed: final losses,
bytes per step per worker measured by the communicators beside the formulas, the pipeline's
bubble and peak stored micro-batches). A single mode writes ``parallel_<mode>.json`` (its loss
history and bytes). Bad input prints one line and exits with code 2, writing nothing. A Ctrl-C
(or SIGTERM) stops every worker of the mode in progress at the same step and no later mode
starts: ``all`` writes its tables and figures for the modes that finished (nothing if none did), a
single mode its JSON with the steps done, and the demo prints one line saying so and exits with
code 130 (no "final loss" is printed for a stopped mode).

References: Shoeybi et al. (2019), Megatron-LM, arXiv 1909.08053; Huang et al. (2019), GPipe,
arXiv 1811.06965; Narayanan et al. (2021), PipeDream-Flush / 1F1B, arXiv 2104.04473.
"""
from __future__ import annotations

import json
import math
import os
import time

if __name__ == "__main__":
    # one BLAS thread per worker: the GEMMs are small and the MPI ranks share 2 cores
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import minigrad  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, TextData, load_text  # noqa: E402
from models.gpt import GPT, PRESETS, preset  # noqa: E402
from models.parallel.pipeline import (PipelineStage, clip_grad_norm_pp, expected_bubble,  # noqa: E402
                                      partition_layers, pipeline_bytes, pipeline_loss, plot_timeline,
                                      simulate)
from models.parallel.tensor import (TensorParallelGPT, check_tp_degree, clip_grad_norm_tp,  # noqa: E402
                                    tp_all_reduces_per_layer, tp_bytes_per_step)
from models.training import Trainer, clip_grad_norm, lm_loss, pyplot, save_figure  # noqa: E402
from models.training.distributed import any_rank, data_parallel_trainer  # noqa: E402
from models.training.optimizers import build_optimizer  # noqa: E402
from optim.dist.comm import ring_traffic  # noqa: E402
from optim.dist.launcher import launch, mpi_world_size  # noqa: E402

MODES = ("single", "dp", "tp", "pp", "dp-tp")
DEFAULT_WORKERS = {"single": 1, "dp": 2, "tp": 2, "pp": 2, "dp-tp": 4}
QUICK = {"steps": 10, "batch_size": 8, "max_chars": 200_000}
FULL = {"steps": 200, "batch_size": None, "max_chars": None}
STYLE = {"single": ("black", "-", 3.5), "dp": ("tab:blue", "--", 1.6), "tp": ("tab:red", ":", 1.8),
         "pp gpipe": ("tab:green", "-.", 1.4), "pp 1f1b": ("tab:olive", "--", 1.2),
         "dp-tp": ("tab:purple", ":", 1.2)}


# ============================================================================= one mode on one worker
class BytesMeter:
    """``on_step``: the bytes this worker sent during each step, summed over its communicators."""

    def __init__(self, comms):
        self.comms = comms
        self.last = self._sent()
        self.per_step = []

    def _sent(self):
        return sum(c.bytes_sent for c in self.comms)

    def __call__(self, trainer):
        now = self._sent()
        self.per_step.append(now - self.last)
        self.last = now


def _optimizer(model, a):
    return build_optimizer("adamw", model, a.lr, weight_decay=0.1, beta2=0.99, seed=a.seed)


def _trainer_options(a, comm) -> dict:
    """The schedule, seed and reporting every mode shares; only the lead worker reports. With
    several workers, a Ctrl-C stops all of them before the same step (`any_rank` over the world);
    one simulated worker is a thread too, which hears a signal only through its vote."""
    lead = comm.rank == 0
    return {"steps": a.steps, "schedule": "cosine", "reduce_stop": any_rank(comm),
            "schedule_kwargs": {"warmup_steps": max(1, a.steps // 10), "min_ratio": 0.1}, "seed": a.seed,
            "progress": lead and not a.no_progress, "log_every": max(1, a.steps // 5) if lead else 0}


def train_mode(comm, mode, a, cfg, data, batch_size, schedule="1f1b") -> dict:
    """Train in ``mode`` as worker ``comm.rank`` of ``comm.size``; run on every worker. Returns the
    global batch's loss per step (the same on every worker), the bytes this worker sent in each
    step and the wall time; pp adds its stage's ops and peak stored micro-batches."""
    dtype = np.dtype(a.dtype)
    batches = lambda rng: data.get_batch("train", batch_size, rng)  # noqa: E731 -- the global batch
    clip = a.clip > 0
    lead = comm.rank == 0
    extra, comms = {}, [comm]
    if mode == "single":
        model = GPT(cfg, dtype=dtype, seed=a.seed)
        trainer = Trainer(model, lm_loss, _optimizer(model, a), batches,
                          grad_hooks=[clip_grad_norm(a.clip)] if clip else [], **_trainer_options(a, comm))
    elif mode == "dp":
        model = GPT(cfg, dtype=dtype, seed=a.seed)
        trainer = data_parallel_trainer(comm, model, lm_loss, _optimizer(model, a), batches,
                                        grad_hooks=[clip_grad_norm(a.clip)] if clip else [],
                                        **_trainer_options(a, comm))
    elif mode == "tp":
        model = TensorParallelGPT(cfg, comm, dtype=dtype, seed=a.seed)
        trainer = Trainer(model, lm_loss, _optimizer(model, a), batches,
                          grad_hooks=[clip_grad_norm_tp(model, a.clip)] if clip else [],
                          **_trainer_options(a, comm))
    elif mode == "dp-tp":
        t = a.tp_degree
        tp = comm.split(comm.rank // t)             # consecutive ranks: one TP group, one model
        dp = comm.split(comm.rank % t)              # the same TP rank of every group: one DP group
        comms = [tp, dp, comm]                     # the world carries the stop vote
        model = TensorParallelGPT(cfg, tp, dtype=dtype, seed=a.seed)
        trainer = data_parallel_trainer(dp, model, lm_loss, _optimizer(model, a), batches, world=comm,
                                        grad_hooks=[clip_grad_norm_tp(model, a.clip)] if clip else [],
                                        **_trainer_options(a, comm))
        extra["grid"] = {"tp_rank": tp.rank, "dp_rank": dp.rank}
    else:
        model = PipelineStage(comm, cfg, micro_batches=a.micro_batches, schedule=schedule, dtype=dtype,
                              seed=a.seed, track_memory=True)
        trainer = Trainer(model, pipeline_loss, _optimizer(model, a), batches,
                          grad_hooks=[clip_grad_norm_pp(model, a.clip)] if clip else [],
                          **_trainer_options(a, comm))
    meter = BytesMeter(comms)
    trainer.on_step = meter
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    loss = np.array(trainer.history["train_loss"])
    if mode in ("dp", "dp-tp"):                     # each DP rank saw its shard: average once
        loss = (comms[1] if mode == "dp-tp" else comm).allreduce(loss, op="mean")
    if mode == "dp-tp":
        for group in comms[:2]:                     # the two splits: released on every worker
            group.free()
    if mode == "pp":
        extra.update(stage=model.stage, layers=model.layers, ops=model.last_ops, peak_stored=model.peak_stored,
                     peak_activation_bytes=model.peak_activation_bytes)
    name = f"pp {schedule}" if mode == "pp" else mode
    if lead:
        steps = f"{trainer.step} of {a.steps} steps (stopped by a signal)" if trainer.interrupted else f"{a.steps} steps"
        print(f"[parallel] {name}: {comm.size} worker{'s' * (comm.size > 1)}, {steps}, {seconds:.1f} s", flush=True)
        if not trainer.interrupted:                 # a stopped run has no final loss to compare
            print(f"final loss {loss[-1]:.6f}", flush=True)
    return {"mode": mode, "name": name, "workers": comm.size, "rank": comm.rank, "loss": loss.tolist(),
            "steps_done": trainer.step, "interrupted": trainer.interrupted,
            "bytes_per_step": meter.per_step, "seconds": seconds, "n_local_params": model.num_parameters(),
            **extra}


# ============================================================================= the formulas
def formula_bytes(run, cfg, batch_size, a, n_params) -> tuple[float, str]:
    """(bytes a worker sends per step by the formula, the formula) for a run's rank."""
    b, T, s = batch_size, cfg.block_size, np.dtype(a.dtype).itemsize
    n = run["workers"]
    vote = ring_traffic(1, n, run["rank"])[0] * 8      # one 8-byte all-reduce: the stop vote (any_rank)
    norm = vote if a.clip > 0 else 0                    # ... and the clipping norm, of the same size
    k = tp_all_reduces_per_layer(cfg)                   # 4 (6 with activation checkpointing)
    if run["mode"] == "single":
        return 0.0, "0"
    if run["mode"] == "dp":
        return 2 * (n - 1) / n * n_params * s + vote, "2(n-1)/n · N · s + vote"
    if run["mode"] == "tp":
        return tp_bytes_per_step(cfg, b, T, n, s) + norm + vote, f"{k}L · 2(t-1)/t · B·T·C · s + vote"
    if run["mode"] == "pp":
        sent, _ = pipeline_bytes(cfg, b, T, a.micro_batches, n, run["stage"], s)
        return (sent + norm + vote,
                "B·T·C · s to each neighbour stage + V·C · s (tied wte, first and last) + vote")
    t = a.tp_degree
    d = n // t
    tp_part = tp_bytes_per_step(cfg, b // d, T, t, s) + (ring_traffic(1, t, run["grid"]["tp_rank"])[0] * 8
                                                        if a.clip > 0 else 0)
    return (tp_part + 2 * (d - 1) / d * run["n_local_params"] * s + vote,
            f"{k}L · 2(t-1)/t · (B/d)·T·C · s + 2(d-1)/d · N_w · s + vote")


def bytes_table(runs, cfg, batch_size, a, n_params) -> str:
    s = np.dtype(a.dtype).itemsize
    lines = [f"GPT `{a.preset}`: L = {cfg.n_layer} layers, C = {cfg.n_embd}, V = {cfg.vocab_size}, "
             f"N = {n_params:,} parameters; batch B = {batch_size} × T = {cfg.block_size} tokens; "
             f"{np.dtype(a.dtype).name} (s = {s} bytes); pipeline m = {a.micro_batches} micro-batches. "
             f"Bytes sent per step by each worker, measured by its communicators (the last step), "
             f"beside the formula (ring all-reduce: 2(n-1)/n of the array per worker).", "",
             "| mode | workers | worker | measured [bytes/step] | formula [bytes/step] | formula |",
             "|---|---:|---|---:|---:|---|"]
    for name, ranks in runs.items():
        for r in ranks:
            want, text = formula_bytes(r, cfg, batch_size, a, n_params)
            who = (f"stage {r['stage']} (blocks {r['layers'][0]}..{r['layers'][1] - 1})" if r["mode"] == "pp"
                   else f"rank {r['rank']}" + (f" (tp {r['grid']['tp_rank']}, dp {r['grid']['dp_rank']})"
                                               if r["mode"] == "dp-tp" else ""))
            lines.append(f"| {name} | {r['workers']} | {who} | {r['bytes_per_step'][-1]:,} | {want:,.0f} | {text} |")
    t = a.tp_degree
    held = runs["dp-tp"][0]["n_local_params"] if "dp-tp" in runs else None
    lines += ["", f"dp-tp: t = {t} ranks per TP group, d = workers / t DP groups; N_w = the parameters one "
                  f"worker holds (its TP shard and the replicated embeddings, norms and biases"
                  + (f": {held:,}" if held else "") + "). tp and dp-tp add the clipping norm's all-reduce "
                  "of one float64; pp the stages' norm all-reduce and the loss the last stage broadcasts. "
                  "vote: every mode with several workers all-reduces one int64 over all of them before "
                  "each step, so that a Ctrl-C stops them at the same step (ring: 2(n-1)/n · 8 bytes)."]
    return "\n".join(lines) + "\n"


# ============================================================================= comparison and figures
def loss_table(runs) -> str:
    base = np.array(runs["single"][0]["loss"])
    lines = ["| mode | workers | final loss | max over steps of abs(loss - single) | wall time [s] |",
             "|---|---:|---:|---:|---:|"]
    for name, ranks in runs.items():
        loss = np.array(ranks[0]["loss"])
        lines.append(f"| {name} | {ranks[0]['workers']} | {loss[-1]:.6f} | {np.max(np.abs(loss - base)):.1e} | "
                     f"{max(r['seconds'] for r in ranks):.1f} |")
    lines.append("\nWall time: the slowest worker's fit. The first mode run also compiles the kernels, and "
                 "simulated workers take turns on the cores: the times compare no speeds.")
    return "\n".join(lines) + "\n"


def pipeline_table(runs, a) -> str:
    lines = ["| schedule | stages | measured peak stored micro-batches per stage | bound | "
             "peak saved activations per stage (memory ledger) |", "|---|---:|---|---|---|"]
    for schedule in ("gpipe", "1f1b"):
        ranks = runs.get(f"pp {schedule}", [])
        if not ranks:
            continue
        p = len(ranks)
        bound = f"m = {a.micro_batches}" if schedule == "gpipe" else \
            "p - s = " + ", ".join(str(p - r["stage"]) for r in ranks)
        lines.append(f"| {schedule} | {p} | {', '.join(str(r['peak_stored']) for r in ranks)} | {bound} | "
                     + ", ".join(f"{r['peak_activation_bytes'] / 2**20:.2f} MiB" for r in ranks) + " |")
    lines += ["", "Simulated timelines (forward 1, backward 2 time units):", ""]
    for p in (2, 4):
        for schedule in ("gpipe", "1f1b"):
            tl = simulate(schedule, p, a.micro_batches)
            lines.append(f"- {schedule}, p = {p}, m = {a.micro_batches}: bubble {tl.bubble_fraction():.4f}, "
                         f"(p-1)/(m+p-1) = {expected_bubble(p, a.micro_batches):.4f}; peak stored "
                         f"micro-batches per stage {tl.peak_stored()}")
    lines += ["", "```", *(simulate(s, 4, a.micro_batches).text() + "\n" for s in ("gpipe", "1f1b")), "```"]
    return "\n".join(lines) + "\n"


def plot_losses(runs, title, path):
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.3))
    base = np.array(runs["single"][0]["loss"])
    steps = np.arange(1, len(base) + 1)
    for name, ranks in runs.items():
        color, ls, lw = STYLE[name]
        loss = np.array(ranks[0]["loss"])
        label = f"{name} ({ranks[0]['workers']} worker{'s' * (ranks[0]['workers'] > 1)})"
        ax[0].plot(steps, loss, color=color, ls=ls, lw=lw, label=label)
        if name != "single":
            gap = np.maximum.accumulate(np.abs(loss - base))
            ax[1].semilogy(steps, np.maximum(gap, 1e-17), color=color, ls=ls, lw=1.4, label=label)
    ax[0].set_ylabel("training loss of the global batch [nats/token]")
    ax[1].set_ylabel("largest abs(loss - single process) so far\n(1e-17: equal)")
    ax[1].set_ylim(1e-17, 1e-6)
    for x in ax:
        x.set_xlabel("step")
        x.grid(alpha=0.3)
        x.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def plot_timelines(schedule, m, path):
    plt = pyplot()
    fig, ax = plt.subplots(2, 1, figsize=(11, 4.6), gridspec_kw={"height_ratios": [2, 4]})
    for x, p in zip(ax, (2, 4)):
        plot_timeline(simulate(schedule, p, m), ax=x)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


# ============================================================================= CLI
def build_parser():
    p = cli.ArgumentParser(prog="parallel.py", description=__doc__)
    p.add_argument("--mode", default="all", choices=("all",) + MODES, help="what to train (default: all)")
    p.add_argument("--schedule", default="1f1b", choices=("gpipe", "1f1b"), help="pipeline schedule of --mode pp")
    p.add_argument("--workers", type=int, default=None,
                   help="simulated workers of one --mode (default: dp, tp, pp 2; dp-tp 4); under mpiexec the ranks")
    p.add_argument("--tp-degree", type=int, default=2, help="dp-tp: the ranks of one TP group")
    p.add_argument("--micro-batches", type=int, default=4, help="pp: micro-batches per batch")
    p.add_argument("--preset", default="tiny", choices=[k for k in PRESETS if k != "medium"], help="GPT size")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps (default {FULL['steps']}; --quick: {QUICK['steps']})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sequences per step, all workers together (default: the preset's; --quick: "
                        f"{QUICK['batch_size']})")
    p.add_argument("--lr", type=float, default=6e-3, help="peak learning rate of AdamW")
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clipping (0: off)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                   help="float64 (default) makes the modes agree to ~1e-12")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_corpus_arguments(p)
    cli.add_output_arguments(p, os.path.join("out", "parallel"),
                             out_help="directory for the figures, parallel_results.md and the runs' JSON",
                             quick_help="a smoke run: few steps, batch 8, a slice of the corpus (explicit flags win)")
    return p


def _validate(a, world: int):
    """Every check of the input, before anything is computed or written."""
    if a.mode not in ("all", "pp"):
        cli.refuse_unused(build_parser(), a, ("schedule", "micro_batches"), f"--mode {a.mode} runs no pipeline")
    if a.mode not in ("all", "dp-tp"):
        cli.refuse_unused(build_parser(), a, ("tp_degree",), f"--mode {a.mode} has no data x tensor grid")
    if a.mode == "all":             # its comparison fixes the workers of each mode (DEFAULT_WORKERS)
        cli.refuse_unused(build_parser(), a, ("workers",),
                          "--mode all runs every mode on its own number of workers (dp, tp, pp 2; dp-tp 4)")
    cli.fill_defaults(a, QUICK, FULL)
    for name in ("steps", "tp_degree", "micro_batches"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("batch_size", "max_chars"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        raise cli.UsageError(f"--lr must be a positive number, got {a.lr}")
    if not (a.clip >= 0 and math.isfinite(a.clip)):
        raise cli.UsageError(f"--clip must be a finite number >= 0 (0: off), got {a.clip}")
    if world > 1:
        if a.mode in ("all", "single"):
            raise cli.UsageError(f"--mode {a.mode} runs on simulated workers; under mpiexec give one of "
                                 f"--mode dp, tp, pp, dp-tp (or run without mpiexec)")
        if a.workers is not None and a.workers != world:
            raise cli.UsageError(f"--workers {a.workers} but mpiexec started {world} ranks; drop --workers "
                                 f"or give {world}")
        a.workers = world
    if a.workers is not None and a.workers < 1:
        raise cli.UsageError(f"--workers must be >= 1, got {a.workers}")
    if a.mode == "single" and a.workers not in (None, 1):
        raise cli.UsageError(f"--mode single runs on 1 worker, got --workers {a.workers}")


def _workers(a, mode):
    return DEFAULT_WORKERS[mode] if a.workers is None else a.workers


def _check_mode(a, mode, cfg, batch_size):
    """The mode's own constraints, named with the numbers."""
    n = _workers(a, mode)
    try:
        if mode == "dp" and batch_size % n:
            raise ValueError(f"the batch of {batch_size} sequences does not split over {n} data-parallel "
                             f"workers; give a --batch-size divisible by {n}")
        if mode == "tp":
            check_tp_degree(cfg, n)
        if mode == "pp":
            partition_layers(cfg.n_layer, n)
            if batch_size % a.micro_batches:
                raise ValueError(f"the batch of {batch_size} sequences does not split into "
                                 f"{a.micro_batches} micro-batches; choose --micro-batches dividing {batch_size}")
        if mode == "dp-tp":
            if n % a.tp_degree:
                raise ValueError(f"{n} workers do not form a grid of TP groups of --tp-degree "
                                 f"{a.tp_degree}; give --workers divisible by {a.tp_degree}")
            check_tp_degree(cfg, a.tp_degree)
            d = n // a.tp_degree
            if batch_size % d:
                raise ValueError(f"the batch of {batch_size} sequences does not split over {d} "
                                 f"data-parallel groups; give a --batch-size divisible by {d}")
    except ValueError as e:
        given = f" --workers {n}" if a.workers is not None else ""
        raise cli.UsageError(f"--mode {mode}{given}: {e}") from None


def _mpi_rank() -> int:
    """This process's rank under mpiexec (0 without it), from the launcher's environment."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _run(a, mode, cfg, data, batch_size, schedule="1f1b"):
    return launch(train_mode, mode, a, cfg, data, batch_size, schedule, workers=_workers(a, mode))


def run(a):
    world = mpi_world_size()
    _validate(a, world)
    text, desc = load_text(notice=world == 1, max_chars=a.max_chars)
    cfg, batch_size = preset(a.preset)
    batch_size = a.batch_size or batch_size
    data = TextData(text, block_size=cfg.block_size, cache_dir=a.cache_dir or None, description=desc)
    cfg.vocab_size = data.vocab_size
    modes = MODES if a.mode == "all" else (a.mode,)
    for mode in modes:
        _check_mode(a, mode, cfg, batch_size)
    cli.check_out_dir(a.out)                        # the inputs are good: from here on we may write
    minigrad.configure_runtime()
    if a.mode != "all":
        ranks = _run(a, a.mode, cfg, data, batch_size, a.schedule)
        name = ranks[0]["name"].replace(" ", "-")
        if _mpi_rank() == 0:                        # every MPI process gets every rank's result
            with open(os.path.join(a.out, f"parallel_{name}.json"), "w", encoding="utf-8") as f:
                json.dump({"mode": a.mode, "preset": a.preset, "steps": a.steps,
                           "steps_done": ranks[0]["steps_done"], "interrupted": ranks[0]["interrupted"],
                           "batch_size": batch_size,
                           "dtype": a.dtype, "workers": len(ranks), "backend": "mpi" if world > 1 else "simulated",
                           "loss": ranks[0]["loss"], "bytes_per_step": [r["bytes_per_step"] for r in ranks]},
                          f, indent=1)
        if ranks[0]["interrupted"]:                 # the same on every rank: they voted to stop together
            raise cli.Interrupted(f"{_stopped(ranks, a)}; parallel_{name}.json holds the "
                                  f"{ranks[0]['steps_done']} steps done")
        return {ranks[0]["name"]: ranks}

    n_params = GPT(cfg).num_parameters()
    title = (f"GPT '{a.preset}' ({n_params / 1e6:.2f} M parameters) on {desc}: {a.steps} steps × batch "
             f"{batch_size} × {cfg.block_size} tokens, {a.dtype}, seed {a.seed}")
    print(f"[parallel] {title}")
    runs, stopped = {}, None
    plan = [(mode, schedule) for mode in MODES for schedule in (("gpipe", "1f1b") if mode == "pp" else ("1f1b",))]
    for mode, schedule in plan:
        ranks = _run(a, mode, cfg, data, batch_size, schedule)
        if ranks[0]["interrupted"]:                 # a Ctrl-C: no later mode, compare what finished
            stopped = ranks
            break
        runs[ranks[0]["name"]] = ranks
    if runs:
        write_results(runs, title, cfg, batch_size, a, n_params)
    if stopped is not None:
        kept = (f"parallel_results.md and the figures hold the {len(runs)} finished mode(s) ({', '.join(runs)})"
                if runs else "no mode finished; no results written")
        raise cli.Interrupted(f"{_stopped(stopped, a)}; {kept}")
    return runs


def _stopped(ranks, a) -> str:
    """Where a signal stopped a mode, for the one line of ``cli.Interrupted``."""
    n = len(ranks)
    return (f"interrupted in {ranks[0]['name']} on {n} worker{'s' * (n > 1)} at step {ranks[0]['steps_done']} "
            f"of {a.steps}")


def write_results(runs, title, cfg, batch_size, a, n_params) -> None:
    """Print the tables of the finished ``runs`` and write them, the loss figure and the
    timelines into ``a.out``."""
    tables = ["## Final losses\n\n" + title + "\n\n" + loss_table(runs),
              "## Bytes sent per step per worker\n\n" + bytes_table(runs, cfg, batch_size, a, n_params),
              "## Pipeline: bubble and stored micro-batches\n\n" + pipeline_table(runs, a)]
    for t in tables:
        print("\n" + t)
    plot_losses(runs, title, os.path.join(a.out, "parallel_loss.png"))
    for schedule in ("gpipe", "1f1b"):
        plot_timelines(schedule, a.micro_batches, os.path.join(a.out, f"parallel_timeline_{schedule}.png"))
    path = os.path.join(a.out, "parallel_results.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tables))
    print(f"[parallel] figures and {os.path.basename(path)} in {a.out}/")


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    raise SystemExit(main())
