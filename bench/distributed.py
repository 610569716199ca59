"""Distributed benchmark: all-reduce throughput and data-parallel training speed on MPI ranks.

    python -m bench.distributed [--sizes-mb 1,4,16,64] [--ranks 2,4] [--dp-ranks 1,2,4]
                                [--dp-preset tiny] [--repeat 5] [--dp-steps 20]

Run by hand, never in CI; it needs the ``dist`` extra (``pip install -e '.[dist]'``) and starts
``mpiexec -n k`` itself (the mpiexec beside this interpreter, else the one on PATH), once per
measurement, with this module in a worker role (``--worker allreduce|dp``).

All-reduce. ``MPIComm.allreduce`` of a float32 array of each size, sum, on k ranks: the ring
(``algorithm="ring"``: Sendrecv in the fixed order that makes it equal SimComm bit for bit) and
MPI's own ``Allreduce`` (``algorithm="native"``). Throughput = array bytes / time (what NCCL's tests
call the algorithm bandwidth; a ring moves 2(k-1)/k of that per rank each way), with the time of a
call taken on its slowest rank, median over ``--repeat`` calls after one warm-up call. Beside it
the same bytes copied by ``np.copyto`` in one process: the ceiling a shared-memory transport
approaches, since every byte of an all-reduce is copied at least once.

Data parallel. GPT ``--dp-preset`` (float32, AdamW) trained by
``models.training.distributed.data_parallel_trainer`` on k ranks, each with the preset's batch
(the global batch grows with k), on random tokens: tokens/s = global tokens per step / median
step time after warm-up steps. Each configuration gets the whole machine: the threads per rank
(NumPy's BLAS, Numba) are the logical CPUs divided by k, at least 1 (``--threads`` fixes them), so
more ranks than CPUs share them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from bench.kernels import environment_line, positive_int, positive_ints

MB = 2**20


# ----------------------------------------------------------------------------- workers (under mpiexec)
def allreduce_seconds(comm, nbytes: int, algorithm: str, repeat: int) -> float:
    """Median over ``repeat`` calls of the slowest rank's time for one all-reduce of ``nbytes``."""
    x = np.random.default_rng(comm.rank).standard_normal(nbytes // 4, dtype=np.float32)
    comm.allreduce(x, algorithm=algorithm)                    # warm-up: first-touch pages
    times = []
    for _ in range(repeat):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce(x, algorithm=algorithm)
        times.append(time.perf_counter() - start)
    return float(statistics.median(comm.allgather(np.array(times)).max(axis=0)))


def allreduce_worker(sizes_mb: list[int], repeat: int) -> None:
    from optim.dist.mpi import MPIComm

    comm = MPIComm()
    rows = [{"mb": mb, "algorithm": algorithm, "seconds": allreduce_seconds(comm, mb * MB, algorithm, repeat)}
            for mb in sizes_mb for algorithm in ("ring", "native")]
    if comm.rank == 0:
        print(json.dumps(rows))


def timed_steps(stamps, warmup: int) -> np.ndarray:
    """The step times after ``warmup`` untimed steps, from ``stamps``: the clock at the end of
    each step (what ``on_step`` sees). The first step has no start stamp, so it is always a
    warm-up step: ``warmup`` must be at least 1, and of the steps 2, 3, ... the first
    ``warmup - 1`` are dropped too."""
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first step's start is not stamped), got {warmup}")
    return np.diff(stamps)[warmup - 1:]


def dp_tokens_per_second(comm, preset: str, steps: int, warmup: int) -> dict:
    """Data-parallel GPT training on this rank of ``comm``; the record is the same on every rank."""
    import minigrad
    from models.gpt import GPT, preset as gpt_preset
    from models.training import lm_loss
    from models.training.distributed import data_parallel_trainer
    from models.training.optimizers import build_optimizer

    minigrad.configure_runtime()
    cfg, batch = gpt_preset(preset, vocab_size=65)
    global_batch = batch * comm.size

    def batches(rng):
        rows = rng.integers(0, cfg.vocab_size, (global_batch, cfg.block_size + 1))
        return rows[:, :-1], rows[:, 1:]
    model = GPT(cfg, dtype=np.float32, seed=0)
    optimizer = build_optimizer("adamw", model, lr=3e-4, weight_decay=0.1)
    stamps = []
    trainer = data_parallel_trainer(comm, model, lm_loss, optimizer, batches, steps=warmup + steps,
                                    progress=False, on_step=lambda _: stamps.append(time.perf_counter()))
    trainer.fit()
    step = statistics.median(timed_steps(stamps, warmup))
    step = float(comm.allreduce(np.array(step), op="mean"))      # the ranks' medians, averaged
    return {"ranks": comm.size, "global_batch": global_batch, "block_size": cfg.block_size,
            "seconds_per_step": step, "tokens_per_second": global_batch * cfg.block_size / step}


def dp_worker(preset: str, steps: int, warmup: int) -> None:
    from optim.dist.mpi import MPIComm

    comm = MPIComm()                  # also with 1 rank, so every k runs the same code path
    record = dp_tokens_per_second(comm, preset, steps, warmup)
    if comm.rank == 0:
        print(json.dumps(record))


# ----------------------------------------------------------------------------- the driver
def find_mpiexec() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if found is None:
        sys.exit("bench.distributed: no mpiexec beside this Python or on PATH; pip install -e '.[dist]'")
    return found


def rank_threads(k: int) -> int:
    """The threads per rank of k ranks without --threads: the logical CPUs divided by k, at least 1."""
    return max(1, (os.cpu_count() or 1) // k)


def rank_environment(threads) -> dict:
    """The environment of every rank: this one's, with `threads` threads in every pool and
    OPENBLAS_THREAD_TIMEOUT (minigrad.backend) unless it is set."""
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
    return env


def run_ranks(k: int, worker_args: list[str], threads: int | None = None):
    """Start ``mpiexec -n k`` on this module in a worker role, each rank with ``threads`` threads
    (None: the logical CPUs divided by k, at least 1); its rank 0's JSON line, and the threads."""
    threads = str(threads or rank_threads(k))
    env = rank_environment(threads)
    cmd = [find_mpiexec(), "-n", str(k), sys.executable, "-m", "bench.distributed", *worker_args]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"bench.distributed: {' '.join(cmd[2:])} failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1]), int(threads)


def memcpy_seconds(nbytes: int, repeat: int) -> float:
    src = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)                                       # warm-up: first-touch pages
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(threads: str) -> str:
    """CPU, ``threads`` (the threads per rank, in words), MPI and library versions on one line."""
    from minigrad.backend import cpu_model

    cpu = cpu_model()
    import mpi4py
    mpi4py.rc.initialize = False      # the library's version is readable without starting MPI here
    from mpi4py import MPI
    library = MPI.Get_library_version().splitlines()[0].strip()
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {threads}; {library}; mpi4py {mpi4py.__version__}; "
            f"Python {sys.version.split()[0]}; NumPy {np.__version__}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=positive_ints, default="1,4,16,64",
                    help="all-reduce sizes in MiB (float32 arrays)")
    ap.add_argument("--ranks", type=positive_ints, default="2,4", help="numbers of ranks for the all-reduce")
    ap.add_argument("--repeat", type=positive_int, default=5, help="timed calls per all-reduce size")
    ap.add_argument("--dp-ranks", type=lambda t: positive_ints(t) if t else [], default="1,2,4",
                    help="numbers of ranks for data-parallel training ('' skips it)")
    ap.add_argument("--dp-preset", default="tiny")
    ap.add_argument("--dp-steps", type=positive_int, default=20, help="timed training steps")
    ap.add_argument("--dp-warmup", type=positive_int, default=3,
                    help="untimed first steps (Numba, first touch); at least 1, as a step is timed "
                         "from the end of the one before")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="threads per training rank (default: logical CPUs / ranks, at least 1; "
                         "1 is steadier when other jobs share the machine)")
    ap.add_argument("--worker", choices=("allreduce", "dp"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = args.sizes_mb
    if args.worker == "allreduce":
        return allreduce_worker(sizes, args.repeat)
    if args.worker == "dp":
        return dp_worker(args.dp_preset, args.dp_steps, args.dp_warmup)

    command = "python -m bench.distributed " + " ".join(argv if argv is not None else sys.argv[1:])
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    ranks = args.ranks
    allreduce = {}
    for k in ranks:
        print(f"  all-reduce on {k} ranks ...", file=sys.stderr, flush=True)
        rows, _ = run_ranks(k, ["--worker", "allreduce", "--sizes-mb", ",".join(map(str, sizes)),
                                "--repeat", str(args.repeat)])
        allreduce.update({(k, r["mb"], r["algorithm"]): r["seconds"] for r in rows})
    dp = []
    for k in args.dp_ranks:
        print(f"  data-parallel {args.dp_preset} on {k} ranks ...", file=sys.stderr, flush=True)
        record, threads = run_ranks(k, ["--worker", "dp", "--dp-preset", args.dp_preset,
                                        "--dp-steps", str(args.dp_steps), "--dp-warmup", str(args.dp_warmup)],
                                    args.threads)
        dp.append({**record, "threads": threads})

    print()
    threads = "threads per rank (all-reduce: " + ", ".join(f"{k} ranks {rank_threads(k)}" for k in ranks)
    if dp:
        threads += "; training: " + ", ".join(f"{r['ranks']} rank{'s' * (r['ranks'] > 1)} {r['threads']}" for r in dp)
        threads += " by --threads" if args.threads else ""
    print(f"Machine: {machine(threads + ')')}")
    print(environment_line(rank_environment(args.threads or rank_threads(1))))  # as the ranks had it
    print(f"Command: {command.strip()}; load average before the run: {load}")
    print()
    print("All-reduce (sum, float32) throughput in GB/s = array bytes / time of the slowest rank, median of "
          f"{args.repeat} calls; memcpy = np.copyto of the same bytes in one process.")
    print()
    header = "".join(f" {alg} {k} ranks |" for k in ranks for alg in ("ring", "native"))
    print(f"| size | memcpy |{header}")
    print("|---:|---:|" + "---:|" * (2 * len(ranks)))
    for mb in sizes:
        copy = mb * MB / memcpy_seconds(mb * MB, args.repeat) / 1e9
        cells = "".join(f" {mb * MB / allreduce[(k, mb, alg)] / 1e9:.2f} |" for k in ranks for alg in ("ring", "native"))
        print(f"| {mb} MiB | {copy:.2f} |{cells}")
    if dp:
        print()
        print(f"Data-parallel GPT `{args.dp_preset}` (float32, AdamW), each rank the preset's batch: "
              f"tokens/s = global tokens per step / median step time over {args.dp_steps} steps "
              f"after {args.dp_warmup}.")
        print()
        print("| ranks | threads per rank | global batch | s/step | tokens/s | speed-up |")
        print("|---:|---:|---:|---:|---:|---:|")
        base = dp[0]["tokens_per_second"]
        for r in dp:
            print(f"| {r['ranks']} | {r['threads']} | {r['global_batch']} | {r['seconds_per_step']:.4f} | "
                  f"{r['tokens_per_second']:,.0f} | {r['tokens_per_second'] / base:.2f}x |")
    cpus = os.cpu_count() or 1
    print()
    print(f"This machine has {cpus} logical CPUs: at most {cpus} ranks each get a core of their own, so no "
          f"speed-up is possible beyond {cpus} ranks; more ranks share the cores (and MPICH's waiting "
          f"ranks spin), so those rows measure the cost of sharing.")
    if os.getloadavg()[0] > cpus or float(load.split()[0]) > cpus:
        print(f"Other jobs were running (load average {load} before, "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} after): the kernel shares the CPUs "
              f"per process, so k ranks take a larger share from the other jobs than one process "
              f"does, and a speed-up above {cpus}x here is that share, not parallel work.")


if __name__ == "__main__":
    main()
