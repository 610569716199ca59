"""One pool of threads for every parallel kernel and GEMM, whose workers spin briefly between jobs.

Why this exists (measured on a 2-core KVM guest, AMD EPYC): handing a range of work to a sleeping
thread cost ~0.14 ms, mostly waking the idle second CPU, so kernels below ~4M elements ran in one
thread. And when NumPy's OpenBLAS ran the GEMMs on its own threads, its worker kept spinning on the
second core for ~1.7 ms after each GEMM (OPENBLAS_THREAD_TIMEOUT), just when the next kernel's
second thread needed that core: causal attention backward at GPT `tiny` took 3.6-3.9 ms right
after a GEMM against 1.9-2.0 ms back to back, no faster than one thread. Two pools were taking
turns on two cores. Here there is one: the GEMMs of `Linear` are split into row (or column)
ranges like every other kernel (`minigrad.kernels.gemm`), each range a single-threaded BLAS call,
and a worker that finishes a job spins for `SPIN_SECONDS` on its job counter before it sleeps, so
the next job, usually a few microseconds of Python away, starts at once.

Protocol, per worker i (the caller is always one extra thread: it runs the last range itself):

    caller                                   worker i
    jobs[i] = (fn, args) and python_job[i]   spin until gen[i] changes (SPIN_SECONDS), else
      = its number, or desc[i] = a GEMM        sleep on the condition until it does
      range (`blas.py`)                      python_job[i] == gen[i]: run jobs[i] in Python,
    under the lock: gen[i] += 1,               keep its exception; else claim the GEMM range
      notify if worker i sleeps                and run it in the spin loop, no GIL
    run its own range                        done[i] = gen[i] (if it ran the job)
    a GEMM range not claimed yet: claim
      it, run it, done[i] = gen[i]
    spin until done[i] == gen[i]; re-raise

A Python job is known by its number, not by a kind written beside it: a worker that wakes late
for a GEMM range the caller has already run could otherwise read the kind of the next job
before its number is published, run that job early and then find it gone.

The counters are int64 NumPy arrays read with an atomic acquire load inside a nogil Numba loop
(`_serve`, `_spin_until_changed`), so spinning holds no GIL and the compiler cannot hoist the
read out of the loop; every 32nd poll yields the core to any other runnable thread. A GEMM range
never touches Python on the worker: a range that starts in Python waits for the GIL, which
cost 0.1-0.2 ms per GEMM on the VM (the caller holds it until it enters its own range). Only
one caller at a time uses the workers: a second thread that calls a kernel while they are busy
(the simulated ranks of `optim.dist.SimComm` run in threads) runs its whole range itself instead
of waiting. After a fork the pool is made again (threads do not survive one). Under
NUMBA_DISABLE_JIT=1 (or without `sched_yield`) nothing spins: the workers sleep on the condition
between jobs, and GEMM ranges run in Python.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
from numba.core import cgutils, config, types
from numba.extending import intrinsic

from .._numba_cache import njit
from .blas import SLOTS, run_gemm

SPIN_SECONDS = 2e-3   # about OpenBLAS's default spin (2^22 cycles): longer than the Python between ops


@intrinsic
def _load_acquire(typingctx, arr, i):
    """arr[i] of an int64 array as an atomic load with acquire order: read anew at every call."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, types.intp), codegen


@intrinsic
def _store_release(typingctx, arr, i, value):
    """arr[i] = value on an int64 array as an atomic store with release order: every write
    before it (a GEMM range's output) is visible to a thread that then reads arr[i] anew."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(arr, types.intp, types.int64), codegen


@intrinsic
def _compare_and_swap(typingctx, arr, i, expected, value):
    """arr[i] = value if arr[i] == expected, atomically (acquire-release order) on an int64 array;
    True if it was (this thread made the change)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        pair = builder.cmpxchg(ptr, args[2], args[3], "acq_rel", "acquire")
        return builder.extract_value(pair, 1)
    return types.boolean(arr, types.intp, types.int64, types.int64), codegen


@njit(nogil=True, cache=True)
def _claim(claimed, i, job):
    """Take GEMM job number `job` of worker i: True for exactly one of the threads that try
    (the worker, or the caller when the worker has not started it), which then runs it.
    claimed[i] only ever grows, so a swap from the value read fails when the other thread took
    this job first, and a worker that read job J, was held up, and tries again after the caller
    has taken jobs J and J + 1 finds claimed[i] past J and takes nothing (with `!=` it would
    have run whatever desc[i] held by then)."""
    old = _load_acquire(claimed, i)
    return old < job and _compare_and_swap(claimed, i, old, job)


@njit(nogil=True, cache=True)
def _publish(gen, i):
    """gen[i] += 1 as a release store: every write of the job before it (desc, python_job,
    jobs) is visible to the worker that reads the new number (x86 keeps stores in
    order anyway; ARM does not)."""
    _store_release(gen, i, gen[i] + 1)


_sched_yield = types.ExternalFunction("sched_yield", types.int32())   # libc, already loaded


@njit(nogil=True, cache=True)
def _spin_until_changed(counters, i, old, max_iter):
    """True as soon as counters[i] != old, False after max_iter polls. GIL released. Every
    32nd poll yields the core (`sched_yield`): with more runnable threads than cores (4 MPI
    ranks on 2 cores) a spin that never yielded took the cores the other ranks needed (50
    data-parallel steps: 6-10 s -> 17 s; 6.5-7 s with this), while yielding at every poll cost a
    single process ~10% at GPT `tiny` (34.3 against 31.3 ms per step, 7 alternated rounds)."""
    for k in range(max_iter):
        if _load_acquire(counters, i) != old:
            return True
        if k % 32 == 31:
            _sched_yield()
    return _load_acquire(counters, i) != old


@njit(nogil=True, cache=True)
def _serve(gen, done, claimed, python_job, desc, i, seen, max_iter):
    """Worker i's spin loop. As soon as gen[i] moves past `seen`: a Python job (python_job[i]
    holds its number) returns its number, for the worker's Python loop to run; a GEMM range
    (desc[i]) runs here, without the GIL, unless the caller has claimed it first. Returns `seen`
    after max_iter polls with nothing to do. Yields the core every 32nd poll, as
    `_spin_until_changed`."""
    polls = 0
    while polls < max_iter:
        job = _load_acquire(gen, i)
        if job != seen:
            if python_job[i] == job:
                return job
            if _claim(claimed, i, job):
                run_gemm(desc, i)
                _store_release(done, i, job)
            seen, polls = job, 0
            continue
        if polls % 32 == 31:
            _sched_yield()
        polls += 1
    return seen


def _single_thread_blas():
    """The setter of NumPy's OpenBLAS thread count for the calling thread only (OpenBLAS >=
    0.3.27), or None (another BLAS, which then runs as it is). A worker sets 1 once, at its
    start: a range of a GEMM must not start BLAS threads of its own."""
    import ctypes

    from .._blas import numpy_openblas

    fn = getattr(numpy_openblas(), "openblas_set_num_threads_local", None)
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


class Pool:
    """`workers` threads that run ranges of a kernel beside the calling thread (module docstring)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.gen = np.zeros(workers, np.int64)    # jobs handed to worker i so far
        self.done = np.zeros(workers, np.int64)   # jobs worker i has finished
        self.claimed = np.zeros(workers, np.int64)  # the last GEMM job of worker i taken (`_claim`)
        self.python_job = np.full(workers, -1, np.int64)  # the number of worker i's last Python job
        self.jobs = [None] * workers
        self.desc = np.zeros((workers, SLOTS), np.int64)  # worker i's GEMM range (`blas.py`)
        self.errors = [None] * workers
        self.sleeping = [False] * workers
        self.cond = threading.Condition()
        self.busy = threading.Lock()              # one caller at a time (see run)
        self.spin_iters = _calibrate_spin() if not config.DISABLE_JIT else 0
        # Everything a worker calls at its start is looked up or compiled here, before it starts:
        # a fork while a worker held the import lock or Numba's compiler lock left the child with
        # that lock taken for good, and the child's first kernel waited on it.
        set_blas = _single_thread_blas()
        if self.spin_iters:
            _serve(self.gen, self.done, self.claimed, self.python_job, self.desc, 0, 0, 0)
        for i in range(workers):
            threading.Thread(target=self._loop, args=(i, set_blas), daemon=True,
                             name=f"minigrad-kernel-{i}").start()

    def _loop(self, i, set_blas):
        if set_blas is not None:
            set_blas(1)
        seen = 0
        while True:
            job = seen
            if self.spin_iters:  # runs GEMM ranges until a Python job comes or the spin ends
                job = int(_serve(self.gen, self.done, self.claimed, self.python_job, self.desc, i, seen,
                                 self.spin_iters))
                if self.python_job[i] != job:   # the spin ended: `job` is the last GEMM range seen
                    seen = job
            if job == seen:
                with self.cond:
                    while self.gen[i] == seen:
                        self.sleeping[i] = True
                        self.cond.wait()
                    self.sleeping[i] = False
                job = int(self.gen[i])
            if self.python_job[i] != job:
                continue  # woken for a GEMM range: `_serve` runs it
            fn, args = self.jobs[i]
            self.jobs[i] = None
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller, which re-raises it
                self.errors[i] = exc
            seen = job
            self.done[i] = job

    def run(self, kernel, args, bounds) -> None:
        """`kernel(*args, bounds[k], bounds[k + 1])` for every k, the last range in the calling
        thread, the others on the workers; returns when all have finished (also when one raised,
        then re-raising the first error). With the workers busy (another thread's call), the
        caller runs every range itself."""
        n = len(bounds) - 1
        if n - 1 > self.workers or not self.busy.acquire(blocking=False):
            kernel(*args, bounds[0], bounds[-1])
            return
        try:
            for i in range(n - 1):
                self.jobs[i] = (kernel, args + (bounds[i], bounds[i + 1]))
                self.python_job[i] = self.gen[i] + 1
                self._hand_over(i)
            try:
                kernel(*args, bounds[-2], bounds[-1])
            finally:
                for i in range(n - 1):
                    self._wait(i)
                errors = [e for e in self.errors[:n - 1] if e is not None]
                self.errors[:n - 1] = [None] * (n - 1)
            if errors:  # (an error of the caller's own range is already on its way up)
                raise errors[0]
        finally:
            self.busy.release()

    @property
    def compiled(self) -> bool:
        """Whether the workers serve compiled jobs (`run_gemms`) without the GIL: they spin in
        Numba, so not under NUMBA_DISABLE_JIT or without `sched_yield`."""
        return self.spin_iters > 0

    def run_gemms(self, desc) -> None:
        """The GEMM ranges desc[k] (`blas.run_gemm`), the last in the calling thread and the
        others on the workers, which run them in their spin loop without the GIL; returns when
        all have finished. Needs `compiled`. With the workers busy, the caller runs them all.

        A range its worker has not started when the caller's own is done, the caller takes
        (`_claim`) and runs itself: a worker asleep (woken in ~0.14 ms on the VM) or not
        scheduled would otherwise hold up the step. (The waits of ~20 ms first measured here were
        mostly the race in `_wait`, which the claim made rarer and which is fixed.)"""
        n = len(desc)
        if n - 1 > self.workers or not self.busy.acquire(blocking=False):
            for k in range(n):
                run_gemm(desc, k)
            return
        try:
            self.desc[:n - 1] = desc[:n - 1]
            for i in range(n - 1):
                self._hand_over(i)
            run_gemm(desc, n - 1)
            for i in range(n - 1):
                job = self.gen[i]
                if _claim(self.claimed, i, job):   # not started: run it here
                    run_gemm(desc, i)
                    self.done[i] = job
                else:
                    self._wait(i)
        finally:
            self.busy.release()

    def _hand_over(self, i):
        """Publish worker i's job (jobs[i] and desc[i] are written): bump gen[i], waking it if asleep."""
        with self.cond:
            if config.DISABLE_JIT:   # (no intrinsics; the workers read gen[i] under this lock)
                self.gen[i] += 1
            else:
                _publish(self.gen, i)
            if self.sleeping[i]:
                self.cond.notify_all()

    def _wait(self, i):
        """Until worker i has finished its current job. The spin waits for done[i] to move from
        the value just compared with the target: reading done[i] a second time for it, as this
        did until 2026-12-07, could read the worker's final store, and the spin then waited for
        a change that never came until its 2^20 polls ran out, ~20 ms on the 2-core VM (8% of
        GPT `tiny` steps, which took 40-75 ms instead of ~25)."""
        target = self.gen[i]
        if not self.spin_iters:
            while self.done[i] != target:
                time.sleep(0)
            return
        while (seen := self.done[i]) != target:
            _spin_until_changed(self.done, i, seen, 1 << 20)


def _calibrate_spin() -> int:
    """Polls of `_spin_until_changed` that take about SPIN_SECONDS here; 0 (no spinning: the
    workers sleep between jobs) where it cannot be built (no `sched_yield` in the C library)."""
    probe = np.zeros(1, np.int64)
    try:
        _spin_until_changed(probe, 0, 0, 16)   # compile or load it first
    except Exception:
        return 0
    n = 20_000
    t0 = time.perf_counter()
    _spin_until_changed(probe, 0, 0, n)
    per_poll = max((time.perf_counter() - t0) / n, 1e-9)
    return max(1, int(SPIN_SECONDS / per_poll))


_pool = {"pid": None, "pool": None}


def get_pool(workers: int) -> Pool:
    """The process's pool with at least `workers` workers (made again after a fork)."""
    pool = _pool["pool"]
    if _pool["pid"] != os.getpid() or pool is None or pool.workers < workers:
        pool = Pool(workers)
        _pool.update(pid=os.getpid(), pool=pool)
    return pool
