"""Communicators: the collective and point-to-point calls distributed training is built from.

Every distributed algorithm in ``optim.dist`` is written once, for one worker, against the
``Communicator`` interface below, and runs on either backend with the same results, bit for bit:

    SimComm(n)   n workers as threads of this process, deterministic; for tests and teaching.
    MPIComm()    one worker per MPI process (``optim/dist/mpi.py``), started with
                 ``mpiexec -n 4 python demos/distributed.py ...``.

    def worker(comm):                       # comm.rank in 0..comm.size-1
        g = local_gradient(comm.rank)
        return comm.allreduce(g, op="mean") # the same array on every rank

    results = launch(worker, workers=4)     # SimComm(4), or MPIComm under mpiexec (optim.dist.launcher)

The calls (every rank of the communicator makes each collective call, in the same order):

    allreduce(x, op)    sum or mean over ranks, as a ring all-reduce: reduce-scatter, all-gather
    broadcast(x, root)  the root's array on every rank
    allgather(x)        every rank's array, stacked: shape (size, *x.shape)
    neighbor_exchange(x, sources, dests)   send x to each of dests, receive one array per source
    barrier()           wait for all
    split(color)        a communicator of the ranks that passed the same color
    send(x, dest) / recv(source)           point to point (send is buffered: it returns at once)

Determinism. A sum of floats depends on its order, so the order is part of the contract: the
flattened array is cut into ``size`` chunks with ``np.array_split`` and chunk c is summed as
``((x_c + x_{c+1}) + x_{c+2}) + ...`` (ranks taken mod size, starting at rank c) -- the order a
ring all-reduce adds in. Both backends use it, so a SimComm run reproduces an ``mpiexec`` run.

Bytes. Each rank counts the bytes it sends and receives (``bytes_sent``, ``bytes_received``)
under one wire model, the same in both backends:

    allreduce   ring: 2(n-1) chunk messages each way per rank, 2(n-1)/n * nbytes when n | N
    broadcast   the root sends nbytes to each other rank; each other rank receives nbytes
    allgather   each rank sends its nbytes to each other rank and receives theirs
    neighbor_exchange   nbytes to each dest; what arrives from each source
    send, recv  the array's nbytes;  barrier, split: 0

(``agree_on_layout``'s checksums are not counted: they check the caller and are no part of the
algorithm whose traffic the counters measure.)

Faults. Every rank must give a collective the same shape and dtype (``neighbor_exchange`` and
point-to-point excepted); otherwise each rank raises ``CommError`` naming every rank's shape and
dtype. In SimComm a rank that raises makes the others raise ``CommAborted`` at their next call and
``run`` raises ``WorkerError("rank 2 raised ValueError: ...")``; ranks that all wait with none able
to go on raise ``DeadlockError`` naming what each waits for. Under MPI a raising rank aborts the
job with its rank and error printed.

How SimComm runs n workers in one process: each rank is a thread, but only one thread runs at a
time. A rank runs until it must wait (a collective not everyone has joined, a ``recv`` with no
message), then hands the turn to the next rank in rank order that can go on. The run is therefore
deterministic, no two ranks ever execute NumPy or Numba code at once, and shared state such as a
global random generator is consumed in a fixed order. (minigrad's grad mode is thread-local, as
PyTorch's, so ``no_grad`` on one simulated rank leaves the others recording.)

Stopping. A signal reaches a process's main thread only, so a simulated rank never sees one.
A rank that can stop when asked says so with ``comm.listen_for_stop()`` (the Trainer's stop vote,
``models.training.distributed.any_rank``, does). While ``SimComm.run`` waits for ranks that
listen, a Ctrl-C or SIGTERM sets ``stop_requested`` on every rank's communicator (nested runs'
too), the vote counts it as a wish to stop, and the ranks finish their step and stop together, as
``mpiexec`` ranks do on a signal. A second signal, or one while no rank listens, does what it
would do without SimComm: Ctrl-C raises ``KeyboardInterrupt``, SIGTERM ends the process.
"""
from __future__ import annotations

import ast
import signal
import threading
import zlib
from collections import deque
from contextlib import contextmanager
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["Communicator", "SimComm", "CommError", "CommAborted", "DeadlockError",
           "WorkerError", "ring_bounds", "ring_sum", "ring_traffic", "per_dtype", "check_same_arrays",
           "check_same_calls", "check_graph", "agree_on_layout", "LayoutCheck"]


class CommError(RuntimeError):
    """A collective was called inconsistently across ranks (shapes, dtypes, graph, order)."""


class CommAborted(CommError):
    """Another rank failed; this rank stops at its next communication call."""


class DeadlockError(CommError):
    """Every rank that has not finished waits for something no rank can provide."""


class WorkerError(RuntimeError):
    """A worker of ``SimComm.run`` raised; the message names its rank, ``__cause__`` is the error."""

    def __init__(self, rank: int, error: BaseException):
        super().__init__(f"rank {rank} raised {type(error).__name__}: {error}")
        self.rank = rank
        self.error = error


# ------------------------------------------------------------------ the ring, shared by backends
def ring_bounds(numel: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) of each of the ``size`` chunks of a flat array, as ``np.array_split`` cuts it
    (the first ``numel % size`` chunks are one element longer)."""
    base, extra = divmod(numel, size)
    bounds, start = [], 0
    for c in range(size):
        stop = start + base + (c < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def ring_sum(flats: Sequence[np.ndarray]) -> np.ndarray:
    """The sum of equal-length flat arrays (one per rank) in ring order: chunk c is
    ``((x_c + x_{c+1}) + x_{c+2}) + ...``, ranks mod n. This is what rank c-1 holds after the
    reduce-scatter half of a ring all-reduce, where each rank adds its own chunk to the partial
    sum it receives from its left neighbour."""
    n = len(flats)
    out = np.empty_like(flats[0])
    for c, (lo, hi) in enumerate(ring_bounds(flats[0].size, n)):
        acc = flats[c][lo:hi].copy()
        for j in range(1, n):
            acc += flats[(c + j) % n][lo:hi]
        out[lo:hi] = acc
    return out


def ring_traffic(numel: int, size: int, rank: int) -> tuple[int, int]:
    """(elements sent, elements received) by ``rank`` in a ring all-reduce of ``numel`` elements.

    Reduce-scatter step s (0..n-2): rank r sends chunk (r - s) mod n to r + 1 and receives chunk
    (r - s - 1) mod n from r - 1. All-gather step s: rank r sends chunk (r + 1 - s) mod n, the one
    it completed or just received, and receives chunk (r - s) mod n."""
    if size == 1:
        return 0, 0
    chunk = [hi - lo for lo, hi in ring_bounds(numel, size)]
    sent = sum(chunk[(rank - s) % size] + chunk[(rank + 1 - s) % size] for s in range(size - 1))
    received = sum(chunk[(rank - s - 1) % size] + chunk[(rank - s) % size] for s in range(size - 1))
    return sent, received


def per_dtype(arrays: Sequence[np.ndarray], collective) -> list:
    """``collective(flat)`` once per dtype instead of once per array: the arrays of a dtype
    flattened and concatenated in their order, the result cut back into their shapes. The dtypes
    go in a fixed order (by ``dtype.str``), so every rank makes the same calls when every rank
    passes the same shapes and dtypes in the same order."""
    groups: dict = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.dtype.str, []).append(i)
    out = [None] * len(arrays)
    for key in sorted(groups):
        which = groups[key]
        flat = collective(np.concatenate([arrays[i].reshape(-1) for i in which]))
        start = 0
        for i in which:
            out[i] = flat[start:start + arrays[i].size].reshape(arrays[i].shape)
            start += arrays[i].size
    return out


def check_same_arrays(op: str, descriptions: Sequence[tuple[tuple, str]]) -> None:
    """Raise ``CommError`` naming every rank's (shape, dtype) unless all ranks agree."""
    if any(d != descriptions[0] for d in descriptions):
        each = ", ".join(f"rank {r} {shape} {dtype}" for r, (shape, dtype) in enumerate(descriptions))
        raise CommError(f"{op}: the ranks passed different arrays ({each}); every rank must pass "
                        f"the same shape and dtype")


class LayoutCheck:
    """``agree_on_layout`` for one collective that runs again and again (a gradient hook): called
    with each step's arrays, it checks only when this rank's layout changed since its last call."""

    def __init__(self, comm, op: str):
        self.comm, self.op, self.last = comm, op, None

    def __call__(self, arrays: Mapping) -> None:
        self.last = agree_on_layout(self.comm, arrays, self.op, self.last)


def agree_on_layout(comm, arrays: Mapping, op: str, last=None):
    """Raise ``CommError`` on every rank, naming what differs, unless all ranks pass the same names,
    shapes and dtypes in ``arrays`` (dict name -> ndarray or None) and leave out (None) the same
    names. Returns the layout; given back as ``last`` (``LayoutCheck`` keeps it), it costs nothing
    while the layout stays (an allgather of one checksum when it changes). When only some ranks'
    layouts change, those ranks gather while the others go on to the collective itself: the
    communicator's check of the calls raises CommError on every rank then, without the names.
    Not counted in the bytes (``Communicator.uncounted``).

    Collectives over per-dtype buffers (``per_dtype``) check only each buffer's length: without
    this, rank 0's gradient of layer 2 would be averaged with rank 1's of layer 3 whenever a
    layer-wise optimizer, seeded differently, picked layers of the same size."""
    layout = tuple((n, None if a is None else (tuple(np.shape(a)), np.asarray(a).dtype.str))
                   for n, a in sorted(arrays.items()))
    if layout == last:
        return layout
    mine = repr(layout).encode()
    with comm.uncounted():
        checksums = comm.allgather(np.array([zlib.crc32(mine)], np.int64))[:, 0]
        if np.all(checksums == checksums[0]):
            return layout
        # every rank saw the mismatch: all take part in gathering the layouts to name it
        longest = int(comm.allgather(np.array([len(mine)], np.int64)).max())
        padded = np.zeros(longest, np.uint8)
        padded[:len(mine)] = np.frombuffer(mine, np.uint8)
        every = [dict(ast.literal_eval(bytes(row).rstrip(b"\0").decode()))
                 for row in comm.allgather(padded)]
    names = sorted(set().union(*every))
    differ = [n for n in names if len({repr(lay.get(n, "absent")) for lay in every}) > 1]

    def entry(lay, n):
        d = lay.get(n, "absent")
        return d if d in ("absent", None) else f"{d[0]} {np.dtype(d[1]).name}"
    shown = "; ".join(f"{n}: " + ", ".join(f"rank {r} {entry(lay, n)}" for r, lay in enumerate(every))
                      for n in differ[:4])
    raise CommError(f"{op}: the ranks passed different arrays ({shown}{'; ...' if len(differ) > 4 else ''}); "
                    f"every rank must pass the same names, shapes and dtypes and leave out (None) "
                    f"the same ones (seed a layer-wise optimizer the same on every rank)")


def check_same_calls(call: int, labels: Sequence[str]) -> None:
    """Raise ``CommError`` unless every rank made the same collective call (labels in rank order)."""
    if any(label != labels[0] for label in labels):
        each = ", ".join(f"rank {r} {label}" for r, label in enumerate(labels))
        raise CommError(f"collective call {call} differs across ranks: {each}; "
                        f"every rank must make the same calls in the same order")


def check_graph(sources: Sequence[Sequence[int]], dests: Sequence[Sequence[int]]) -> None:
    """Raise ``CommError`` unless j is in rank i's dests exactly when i is in rank j's sources
    (``sources[r]`` and ``dests[r]`` are rank r's lists)."""
    for i, out_i in enumerate(dests):
        for j in out_i:
            if i not in sources[j]:
                raise CommError(f"neighbor_exchange: rank {i} sends to rank {j}, but rank {j} "
                                f"does not list {i} among its sources {sources[j]}")
    for j, in_j in enumerate(sources):
        for i in in_j:
            if j not in dests[i]:
                raise CommError(f"neighbor_exchange: rank {j} expects rank {i}, but rank {i} "
                                f"does not list {j} among its dests {dests[i]}")


def _describe(x: np.ndarray) -> tuple[tuple, str]:
    return tuple(x.shape), str(x.dtype)


def _check_op(op: str) -> None:
    if op not in ("sum", "mean"):
        raise ValueError(f"allreduce: op must be 'sum' or 'mean', got {op!r}")


# ------------------------------------------------------------------ the interface
class Communicator:
    """One rank's view of a group of workers. Subclasses implement the calls; the byte counters,
    argument checks and the reduction order are shared."""

    rank: int
    size: int
    _freed = False                         # set by free(); every call then raises CommError
    #: a stop asked of every rank of this process at once (SimComm: a signal to the process,
    #: which its ranks, threads, do not receive); MPI ranks receive their own signals
    stop_requested = False

    def listen_for_stop(self) -> None:
        """Say that this rank stops when ``stop_requested`` is set (see Stopping in the module
        docstring); nothing to do where each rank receives its own signals."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size
        self.bytes_sent = 0
        self.bytes_received = 0

    @contextmanager
    def uncounted(self):
        """Collectives inside leave ``bytes_sent``/``bytes_received`` as they were: traffic that
        checks the caller (``agree_on_layout``), not the algorithm's, which the counters measure."""
        counted = self.bytes_sent, self.bytes_received
        try:
            yield
        finally:
            self.bytes_sent, self.bytes_received = counted

    def reset_counters(self) -> None:
        self.bytes_sent = self.bytes_received = 0

    def _count(self, sent: int, received: int) -> None:
        self.bytes_sent += int(sent)
        self.bytes_received += int(received)

    def _count_allreduce(self, x: np.ndarray) -> None:
        sent, received = ring_traffic(x.size, self.size, self.rank)
        self._count(sent * x.itemsize, received * x.itemsize)

    def _count_broadcast(self, x: np.ndarray, root: int) -> None:
        if self.rank == root:
            self._count((self.size - 1) * x.nbytes, 0)
        else:
            self._count(0, x.nbytes)

    def _count_allgather(self, x: np.ndarray) -> None:
        self._count((self.size - 1) * x.nbytes, (self.size - 1) * x.nbytes)

    def _check_root(self, root: int) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast: root {root} is not a rank of this communicator (size {self.size})")

    def _check_peer(self, op: str, peer: int) -> None:
        if not 0 <= peer < self.size or peer == self.rank:
            raise ValueError(f"{op}: rank {self.rank} cannot exchange with rank {peer} "
                             f"(ranks are 0..{self.size - 1}, not itself)")

    def allreduce(self, x, op: str = "sum") -> np.ndarray:
        raise NotImplementedError

    def broadcast(self, x, root: int = 0) -> np.ndarray:
        raise NotImplementedError

    def allgather(self, x) -> np.ndarray:
        raise NotImplementedError

    def neighbor_exchange(self, x, sources: Sequence[int], dests: Sequence[int]) -> list[np.ndarray]:
        raise NotImplementedError

    def send(self, x, dest: int, tag: int = 0) -> None:
        raise NotImplementedError

    def recv(self, source: int, tag: int = 0) -> np.ndarray:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def split(self, color: int) -> "Communicator":
        raise NotImplementedError

    def free(self) -> None:
        """Release a communicator that ``split`` returned, called by every one of its ranks (as
        MPI's ``Comm_free``); a later call on it raises ``CommError``. The world's is not ours to
        free. ``with comm.split(color) as group:`` frees the group at the end of the block."""
        raise NotImplementedError

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def _check_open(self, op: str) -> None:
        if self._freed:
            raise CommError(f"{op}: this communicator was freed; split the parent again for a new one")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


# ------------------------------------------------------------------ simulated workers
class _World:
    """The threads of one ``SimComm.run`` and the turn they pass: one runs, the rest wait."""

    def __init__(self, n: int, parent: _World | None = None):
        self.n = n
        self.parent = parent           # the run whose rank started this one, if nested
        self.cv = threading.Condition()
        self.turn = 0
        self.ready: list[Callable[[], bool] | None] = [None] * n   # None: can run
        self.waits_for = [""] * n
        self.done = [False] * n
        self.failure: tuple[int, BaseException] | None = None
        self.slots: dict = {}          # (communicator key, call number) -> one collective
        self.mail: dict = {}           # (communicator key, source, dest, tag) -> deque of arrays
        self.stop_asked = False        # a Ctrl-C or SIGTERM while run() waited (see Stopping)
        self.listening = False         # a rank said it stops when asked

    @property
    def stop_requested(self) -> bool:
        return self.stop_asked or (self.parent is not None and self.parent.stop_requested)

    def listen(self) -> None:
        world = self
        while world is not None:       # the outermost run is the one that holds the handlers
            world.listening = True
            world = world.parent

    def _runnable(self, r: int) -> bool:
        return not self.done[r] and (self.ready[r] is None or self.ready[r]())

    def _pass_turn(self, r: int) -> None:
        """Give the turn to the next rank after r (r itself last) that can go on."""
        for step in range(1, self.n + 1):
            q = (r + step) % self.n
            if self._runnable(q):
                self.turn = q
                self.cv.notify_all()
                return
        if all(self.done):
            return
        waiting = "; ".join(f"rank {q} waits in {self.waits_for[q]}" for q in range(self.n)
                            if not self.done[q])
        finished = [q for q in range(self.n) if self.done[q]]
        extra = f" (ranks {finished} have finished)" if finished else ""
        self.failure = (r, DeadlockError(f"no rank can go on: {waiting}{extra}"))
        self.cv.notify_all()

    def _raise_if_failed(self, r: int) -> None:
        if self.failure is not None:
            rank, error = self.failure
            if isinstance(error, DeadlockError):
                raise error
            raise CommAborted(f"rank {r} stopped: rank {rank} raised {type(error).__name__}")

    def wait_turn(self, r: int) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.turn == r or self.failure is not None)
            self._raise_if_failed(r)

    def block(self, r: int, ready: Callable[[], bool], what: str) -> None:
        """Rank r (holding the turn) goes on once ``ready()``; meanwhile the others run."""
        with self.cv:
            self._raise_if_failed(r)
            if ready():
                return
            self.ready[r], self.waits_for[r] = ready, what
            self._pass_turn(r)
            self.cv.wait_for(lambda: (self.turn == r and ready()) or self.failure is not None)
            self.ready[r], self.waits_for[r] = None, ""
            self._raise_if_failed(r)

    def finish(self, r: int, error: BaseException | None) -> None:
        with self.cv:
            self.done[r] = True
            if error is not None and self.failure is None:
                self.failure = (r, error)
                self.cv.notify_all()
            elif self.failure is None and self.turn == r:
                self._pass_turn(r)


class _Collective:
    """One collective call: what each rank brought, and the outcome computed once for all."""

    def __init__(self):
        self.entries: dict[int, tuple] = {}
        self.outcome = None
        self.taken = 0


class SimComm:
    """``n`` simulated workers in this process: ``SimComm(4).run(fn, *args)`` calls
    ``fn(comm, *args)`` once per rank, each with its own ``Communicator``, and returns the list of
    results in rank order. Deterministic: see the module docstring for how the ranks take turns."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"SimComm: the number of workers must be an integer >= 1, got {n!r}")
        self.n = int(n)

    def run(self, fn: Callable, *args, **kwargs) -> list:
        world = _World(self.n, getattr(_running, "world", None))
        members = tuple(range(self.n))
        results: list = [None] * self.n

        def body(r: int) -> None:
            error = None
            try:
                _running.world = world
                world.wait_turn(r)
                results[r] = fn(SimRank(world, ("world",), members, r), *args, **kwargs)
            except BaseException as e:      # noqa: BLE001 -- reported by run() with its rank
                error = e
            world.finish(r, error)

        threads = [threading.Thread(target=body, args=(r,), name=f"SimComm rank {r}", daemon=True)
                   for r in range(self.n)]
        restore = _no_handlers
        try:
            restore = _catch_signals(world)
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():     # in short waits: a signal delivered to a rank's thread
                    t.join(0.05)        # runs its Python handler only when this thread wakes
        except KeyboardInterrupt:
            with world.cv:
                if world.failure is None:
                    world.failure = (-1, KeyboardInterrupt())
                world.cv.notify_all()
            raise
        finally:
            restore()
        if world.failure is not None:
            rank, error = world.failure
            if isinstance(error, DeadlockError):
                raise error
            raise WorkerError(rank, error) from error
        return results

    def __repr__(self) -> str:
        return f"SimComm({self.n})"


_running = threading.local()           # .world: the run a rank thread belongs to (for nesting)


def _no_handlers() -> None:
    pass


def _catch_signals(world: _World):
    """While the ranks run: the first Ctrl-C or SIGTERM asks every rank to stop if one listens;
    a second, or one nobody listens for, goes to the handler SimComm replaced. Returns the
    function that puts the previous handlers back (nothing to do off the main thread, where
    Python cannot install handlers: a nested run leaves them to the run that started it)."""
    if threading.current_thread() is not threading.main_thread():
        return _no_handlers
    old = {}

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    def on_signal(signum, frame):
        if world.listening and not world.stop_asked:
            world.stop_asked = True
            return
        restore()                          # from here on, as if SimComm had not been there
        handler = old[signum]
        if callable(handler):
            handler(signum, frame)         # Python's SIGINT handler: KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)    # SIGTERM's default: the process ends

    old.update({s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)})
    return restore


class SimRank(Communicator):
    """One simulated rank of a ``SimComm`` run (or of a communicator split from it)."""

    @property
    def stop_requested(self) -> bool:
        return self._world.stop_requested

    def listen_for_stop(self) -> None:
        self._world.listen()

    def __init__(self, world: _World, key: tuple, members: tuple[int, ...], rank: int):
        super().__init__(rank, len(members))
        self._world, self._key, self._members = world, key, members
        self._me = members[rank]          # this rank's thread in the world
        self._calls = 0

    # -- the collective machinery: every rank deposits, the first to go on computes for all
    def _collective(self, op: str, payload, compute: Callable[[dict], object]):
        self._check_open(op)
        world, n = self._world, self.size
        key = (self._key, self._calls)
        self._calls += 1
        with world.cv:
            slot = world.slots.setdefault(key, _Collective())
            slot.entries[self.rank] = (op, payload)
        world.block(self._me, lambda: len(slot.entries) == n, f"{op} (call {key[1]} on {self._label()})")
        with world.cv:
            if slot.outcome is None:
                try:
                    check_same_calls(key[1], [slot.entries[r][0] for r in range(n)])
                    slot.outcome = ("ok", compute({r: e[1] for r, e in slot.entries.items()}))
                except CommError as e:
                    slot.outcome = e
            slot.taken += 1
            if slot.taken == n:
                del world.slots[key]
            outcome = slot.outcome
        if isinstance(outcome, CommError):
            raise CommError(str(outcome))
        return outcome[1]

    def _label(self) -> str:
        return "the world" if self._key == ("world",) else f"split {self._key[1:]}"

    def _same_arrays(self, op: str, arrays: dict) -> list[np.ndarray]:
        ordered = [arrays[r] for r in range(self.size)]
        check_same_arrays(op, [_describe(a) for a in ordered])
        return ordered

    # -- collectives
    def allreduce(self, x, op: str = "sum") -> np.ndarray:
        _check_op(op)
        x = np.asarray(x)

        def compute(arrays):
            ordered = self._same_arrays("allreduce", arrays)
            total = ring_sum([np.ascontiguousarray(a).reshape(-1) for a in ordered])
            return (total / self.size if op == "mean" else total).reshape(x.shape)

        out = self._collective(f"allreduce({op})", x, compute)
        self._count_allreduce(x)
        return out.copy()

    def broadcast(self, x, root: int = 0) -> np.ndarray:
        self._check_root(root)
        x = np.asarray(x)

        def compute(arrays):
            return self._same_arrays("broadcast", arrays)[root].copy()

        out = self._collective(f"broadcast(root={root})", x, compute)
        self._count_broadcast(x, root)
        return out.copy()

    def allgather(self, x) -> np.ndarray:
        x = np.asarray(x)
        out = self._collective("allgather", x, lambda arrays: np.stack(self._same_arrays("allgather", arrays)))
        self._count_allgather(x)
        return out.copy()

    def neighbor_exchange(self, x, sources: Sequence[int], dests: Sequence[int]) -> list[np.ndarray]:
        x = np.asarray(x)
        sources, dests = [int(s) for s in sources], [int(d) for d in dests]
        for peer in sources + dests:
            self._check_peer("neighbor_exchange", peer)

        def compute(entries):
            check_graph([entries[r][1] for r in range(self.size)], [entries[r][2] for r in range(self.size)])
            return {r: e[0] for r, e in entries.items()}

        sent = self._collective("neighbor_exchange", (x, sources, dests), compute)
        received = [sent[s].copy() for s in sources]
        self._count(len(dests) * x.nbytes, sum(a.nbytes for a in received))
        return received

    def barrier(self) -> None:
        self._collective("barrier", None, lambda _: None)

    def free(self) -> None:
        if self._key == ("world",):
            raise CommError("free: the world communicator is not ours to free; free what split returned")
        self._check_open("free")
        self._freed = True

    def split(self, color: int) -> "SimRank":
        call = self._calls
        colors = self._collective("split", int(color), lambda entries: dict(entries))
        group = tuple(r for r in range(self.size) if colors[r] == int(color))
        members = tuple(self._members[r] for r in group)
        return SimRank(self._world, self._key + (call, int(color)), members, group.index(self.rank))

    # -- point to point
    def send(self, x, dest: int, tag: int = 0) -> None:
        self._check_open("send")
        self._check_peer("send", dest)
        x = np.array(x, copy=True)          # buffered: the caller may reuse x at once
        world = self._world
        with world.cv:
            world.mail.setdefault((self._key, self.rank, dest, tag), deque()).append(x)
        self._count(x.nbytes, 0)

    def recv(self, source: int, tag: int = 0) -> np.ndarray:
        self._check_open("recv")
        self._check_peer("recv", source)
        world = self._world
        box = (self._key, source, self.rank, tag)
        world.block(self._me, lambda: bool(world.mail.get(box)), f"recv(source={source}, tag={tag})")
        with world.cv:
            x = world.mail[box].popleft()
        self._count(0, x.nbytes)
        return x
