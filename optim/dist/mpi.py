"""MPIComm: the ``Communicator`` of ``optim.dist.comm`` on MPI processes, through mpi4py.

Start one process per worker with ``mpiexec -n 4 python script.py``; in the script
``MPIComm()`` is this process's rank of ``MPI.COMM_WORLD`` (``launch`` in ``optim.dist.launcher``
builds it for you). Arrays travel only through mpi4py's buffer calls (``Sendrecv``, ``Bcast``,
``Allgather``, ``Isend``/``Irecv``), never its pickle-based lowercase ones.

Bit-identical to SimComm. ``allreduce`` is a ring all-reduce written out with ``Sendrecv``: the
flat array is cut by ``ring_bounds`` (as ``np.array_split``), each rank adds its own chunk to the
partial sum coming from its left neighbour (reduce-scatter), then the finished chunks travel once
more around the ring (all-gather). Chunk c is therefore ``((x_c + x_{c+1}) + x_{c+2}) + ...``,
the order ``ring_sum`` computes in SimComm. ``allreduce(x, algorithm="native")`` calls MPI's own
``Allreduce`` instead: usually faster, but MPI does not promise a summation order.

Agreement. Every collective starts with a small header ``Allgather`` (the call, shape, dtype and,
for ``neighbor_exchange`` and ``split``, the graph or the color), so a rank that calls a different
collective or passes another shape or dtype makes every rank raise the same ``CommError`` SimComm
raises, instead of hanging or reading garbage. The header is not counted in the byte counters,
which follow the wire model of ``optim.dist.comm``.

Faults. Once a world of more than one process is in use, an exception that escapes on any rank
(through ``MPIComm.run`` / ``launch``, or uncaught in the script) prints its traceback and
``rank r: Type: message`` on stderr and calls ``MPI_Abort``: the whole job stops with a non-zero
exit code instead of the other ranks waiting forever.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Callable, Sequence

import numpy as np

from .comm import (CommError, Communicator, _check_op, check_graph, check_same_arrays, check_same_calls,
                   ring_bounds)

__all__ = ["MPIComm", "abort"]

_HEADER_BYTES = 256          # one header slot per rank; a longer header takes a second round
_RING_TAG = 0                # the all-reduce's Sendrecv messages
_NEIGHBOR_TAG = 1            # neighbor_exchange's messages
_USER_TAG = 2                # send/recv tag t travels as 2 + 2t (header) and 3 + 2t (data)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("MPIComm needs mpi4py and an MPI library: pip install -e '.[dist]'") from error
    return MPI


ABORT_GRACE_SECONDS = 0.3  # for the launcher to forward a failing rank's last words (abort)


def _raw(a: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array, as a 1-D uint8 view MPI can send or fill (any dtype)."""
    return a.reshape(-1).view(np.uint8)


def abort(error: BaseException) -> None:
    """Print ``error`` with its traceback and ``rank r: Type: message`` (r the rank in
    ``MPI.COMM_WORLD``) on stderr, then stop every process of the job with ``MPI_Abort``."""
    MPI = _mpi()
    # one write, the rank's line first, then a pause before the abort: MPICH's launcher kills
    # the job's processes, its own forwarders of their output included, as soon as Abort is
    # called, and a message still in the pipe was lost (1 run in 6 arrived cut or empty)
    rank_line = f"rank {MPI.COMM_WORLD.Get_rank()}: {type(error).__name__}: {error}\n"
    sys.stderr.write(rank_line + "".join(traceback.format_exception(error)) + rank_line)
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_SECONDS)
    MPI.COMM_WORLD.Abort(1)
    os._exit(1)     # MPICH's Abort may return once the launcher is told; never run on after it


def _abort_on_uncaught_exceptions() -> None:
    """An exception nobody catches would end this process and leave the others blocked in their
    next call, so the job would hang; abort the whole job instead."""
    if getattr(sys.excepthook, "aborts_mpi_job", False):
        return

    def hook(kind, error, tb):
        abort(error.with_traceback(tb))

    hook.aborts_mpi_job = True
    sys.excepthook = hook


class MPIComm(Communicator):
    """This process's rank of an MPI communicator (default ``MPI.COMM_WORLD``), with the calls
    and semantics of ``Communicator`` (see ``optim.dist.comm``).

    >>> comm = MPIComm()                      # under mpiexec -n 4: comm.size == 4
    >>> total = comm.allreduce(np.ones(3))    # [4., 4., 4.] on every rank
    """

    def __init__(self, comm=None):
        MPI = _mpi()
        self._mpi = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self._comm.Get_rank(), self._comm.Get_size())
        self._calls = 0               # collective calls so far, named in mismatch errors
        self._pending: list = []      # sends not yet completed, with the buffers they read
        self._max_user_tag = (self._comm.Get_attr(MPI.TAG_UB) - _USER_TAG - 1) // 2
        if MPI.COMM_WORLD.Get_size() > 1:
            _abort_on_uncaught_exceptions()

    def run(self, fn: Callable, *args, **kwargs) -> list:
        """``fn(self, *args, **kwargs)`` on this rank; returns every rank's result in rank order
        (gathered with mpi4py's pickle-based ``allgather``: results are any Python objects). A
        rank whose ``fn`` raises aborts the job (see ``abort``); a lone process just raises."""
        try:
            result = fn(self, *args, **kwargs)
        except BaseException as error:      # noqa: BLE001 -- the whole job must stop, not hang
            if self._mpi.COMM_WORLD.Get_size() == 1:
                raise
            abort(error)
        return self._comm.allgather(result)

    # ------------------------------------------------------------------ agreement
    def _agree(self, label: str, x: np.ndarray | None = None, extra=None) -> list[list]:
        """Every rank's header ``[label, shape, dtype, extra]`` in rank order, after checking that
        all ranks made the same call. It is an Allgather, so it also synchronizes the ranks."""
        self._check_open(label)
        call, self._calls = self._calls, self._calls + 1
        shape, dtype = (list(x.shape), str(x.dtype)) if x is not None else (None, None)
        text = np.frombuffer(json.dumps([label, shape, dtype, extra]).encode(), np.uint8)
        slot = np.zeros(_HEADER_BYTES, np.uint8)
        slot[:8].view(np.int64)[0] = text.size
        inline = min(text.size, _HEADER_BYTES - 8)
        slot[8:8 + inline] = text[:inline]
        slots = np.empty((self.size, _HEADER_BYTES), np.uint8)
        self._comm.Allgather(slot, slots)
        lengths = slots[:, :8].copy().view(np.int64)[:, 0]
        if lengths.max() <= _HEADER_BYTES - 8:
            texts = [slots[r, 8:8 + lengths[r]] for r in range(self.size)]
        else:                          # a long graph or shape: every rank sees it and goes again
            padded = np.zeros(int(lengths.max()), np.uint8)
            padded[:text.size] = text
            texts = np.empty((self.size, padded.size), np.uint8)
            self._comm.Allgather(padded, texts)
            texts = [texts[r, :lengths[r]] for r in range(self.size)]
        headers = [json.loads(t.tobytes()) for t in texts]
        check_same_calls(call, [h[0] for h in headers])
        return headers

    def _agree_on_array(self, op: str, label: str, x: np.ndarray) -> None:
        headers = self._agree(label, x)
        check_same_arrays(op, [(tuple(h[1]), h[2]) for h in headers])

    # ------------------------------------------------------------------ collectives
    def allreduce(self, x, op: str = "sum", algorithm: str = "ring") -> np.ndarray:
        """Sum (or mean) over ranks. ``algorithm="ring"`` adds in the documented ring order, bit
        for bit as SimComm; ``"native"`` is MPI's ``Allreduce`` (order up to the MPI library).
        Bytes are counted with the ring's wire model either way."""
        _check_op(op)
        if algorithm not in ("ring", "native"):
            raise ValueError(f"allreduce: algorithm must be 'ring' or 'native', got {algorithm!r}")
        x = np.asarray(x)
        label = f"allreduce({op})" if algorithm == "ring" else f"allreduce({op}, native)"
        self._agree_on_array("allreduce", label, x)
        flat = np.array(x, order="C").reshape(-1)        # a copy, summed into in place
        if algorithm == "native":
            self._comm.Allreduce(self._mpi.IN_PLACE, flat, op=self._mpi.SUM)
        elif self.size > 1:
            self._ring_allreduce(flat)
        self._count_allreduce(x)
        return (flat / self.size if op == "mean" else flat).reshape(x.shape)

    def _ring_allreduce(self, flat: np.ndarray) -> None:
        n, r = self.size, self.rank
        bounds = ring_bounds(flat.size, n)
        right, left = (r + 1) % n, (r - 1) % n
        incoming = np.empty(bounds[0][1] - bounds[0][0], flat.dtype)     # chunk 0 is the longest
        # Reduce-scatter: at step s send chunk r - s, add the arriving chunk r - s - 1 to ours.
        for s in range(n - 1):
            lo, hi = bounds[(r - s) % n]
            in_lo, in_hi = bounds[(r - s - 1) % n]
            arrived = incoming[:in_hi - in_lo]
            self._comm.Sendrecv(_raw(flat[lo:hi]), dest=right, sendtag=_RING_TAG,
                                recvbuf=_raw(arrived), source=left, recvtag=_RING_TAG)
            flat[in_lo:in_hi] += arrived
        # All-gather: rank r finished chunk r + 1; pass finished chunks on around the ring.
        for s in range(n - 1):
            lo, hi = bounds[(r + 1 - s) % n]
            in_lo, in_hi = bounds[(r - s) % n]
            self._comm.Sendrecv(_raw(flat[lo:hi]), dest=right, sendtag=_RING_TAG,
                                recvbuf=_raw(flat[in_lo:in_hi]), source=left, recvtag=_RING_TAG)

    def broadcast(self, x, root: int = 0) -> np.ndarray:
        self._check_root(root)
        x = np.asarray(x)
        self._agree_on_array("broadcast", f"broadcast(root={root})", x)
        out = np.array(x, order="C") if self.rank == root else np.empty(x.shape, x.dtype)
        self._comm.Bcast(_raw(out), root=root)
        self._count_broadcast(x, root)
        return out

    def allgather(self, x) -> np.ndarray:
        x = np.asarray(x)
        self._agree_on_array("allgather", "allgather", x)
        out = np.empty((self.size, *x.shape), x.dtype)
        self._comm.Allgather(_raw(np.ascontiguousarray(x)), _raw(out))
        self._count_allgather(x)
        return out

    def neighbor_exchange(self, x, sources: Sequence[int], dests: Sequence[int]) -> list[np.ndarray]:
        x = np.asarray(x)
        sources, dests = [int(s) for s in sources], [int(d) for d in dests]
        for peer in sources + dests:
            self._check_peer("neighbor_exchange", peer)
        headers = self._agree("neighbor_exchange", x, [sources, dests])
        check_graph([h[3][0] for h in headers], [h[3][1] for h in headers])
        # One message per distinct peer: a peer listed twice is received (or sent to) once, so
        # the lists only have to agree as sets, as in SimComm.
        data = np.ascontiguousarray(x)
        arrived = {s: np.empty(headers[s][1], headers[s][2]) for s in dict.fromkeys(sources)}
        requests = [self._comm.Irecv(_raw(buf), source=s, tag=_NEIGHBOR_TAG) for s, buf in arrived.items()]
        requests += [self._comm.Isend(_raw(data), dest=d, tag=_NEIGHBOR_TAG) for d in dict.fromkeys(dests)]
        self._mpi.Request.Waitall(requests)
        received = [arrived[s] if i == sources.index(s) else arrived[s].copy() for i, s in enumerate(sources)]
        self._count(len(dests) * x.nbytes, sum(a.nbytes for a in received))
        return received

    def barrier(self) -> None:
        self._agree("barrier")      # an Allgather returns only once every rank has joined it

    def free(self) -> None:
        """``MPI_Comm_free`` of a communicator that ``split`` returned, after its pending sends
        have completed (see ``Communicator.free``)."""
        if self._comm == self._mpi.COMM_WORLD:
            raise CommError("free: the world communicator is not ours to free; free what split returned")
        self._check_open("free")
        self._mpi.Request.Waitall([request for requests, *_ in self._pending for request in requests])
        self._pending = []
        self._comm.Free()
        self._freed = True

    def split(self, color: int) -> "MPIComm":
        color = int(color)
        colors = sorted({h[3] for h in self._agree("split", extra=color)})
        # MPI wants colors >= 0; the position among the colors in use groups the same ranks.
        return MPIComm(self._comm.Split(colors.index(color), key=self.rank))

    # ------------------------------------------------------------------ point to point
    def _user_tag(self, op: str, tag: int) -> int:
        if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)) or not 0 <= tag <= self._max_user_tag:
            raise ValueError(f"{op}: tag must be an integer in 0..{self._max_user_tag} under MPI, got {tag!r}")
        return _USER_TAG + 2 * int(tag)

    def send(self, x, dest: int, tag: int = 0) -> None:
        """Buffered: returns at once; the array is copied and kept until MPI has sent it."""
        self._check_open("send")
        self._check_peer("send", dest)
        wire_tag = self._user_tag("send", tag)
        data = np.array(x, order="C")
        header = np.frombuffer(json.dumps([list(data.shape), str(data.dtype)]).encode(), np.uint8)
        requests = [self._comm.Isend(header, dest=dest, tag=wire_tag),
                    self._comm.Isend(_raw(data), dest=dest, tag=wire_tag + 1)]
        self._pending = [p for p in self._pending if not self._mpi.Request.Testall(p[0])]
        self._pending.append((requests, header, data))
        self._count(data.nbytes, 0)

    def recv(self, source: int, tag: int = 0) -> np.ndarray:
        """Blocks until the matching ``send``; the shape and dtype come with the message."""
        self._check_open("recv")
        self._check_peer("recv", source)
        wire_tag = self._user_tag("recv", tag)
        status = self._mpi.Status()
        self._comm.Probe(source=source, tag=wire_tag, status=status)
        header = np.empty(status.Get_count(self._mpi.BYTE), np.uint8)
        self._comm.Recv(header, source=source, tag=wire_tag)
        shape, dtype = json.loads(header.tobytes())
        out = np.empty(shape, dtype)
        self._comm.Recv(_raw(out), source=source, tag=wire_tag + 1)
        self._count(0, out.nbytes)
        return out
