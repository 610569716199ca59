"""Synchronous data parallelism: n workers, one shard of the batch each, one all-reduce per step.

Every rank starts from rank 0's parameters, computes the gradient of its shard of the global
batch, the gradients are averaged across ranks, and every rank takes the same optimizer step
from the same average. That is minibatch training with batch n·B on one worker, up to the order
in which the floating-point sums are taken; the parameters stay identical on every rank, so the
optimizer state does too, whatever the optimizer.

    broadcast_params(comm, params)                     # before the first step
    hook = allreduce_grads(comm)                       # the FIRST of the Trainer's grad_hooks,
                                                       # so clipping sees the averaged gradient
    batches = shard_batches(global_batches, comm.rank, comm.size)

``global_batches(rng)`` draws the global batch of n·B rows. Every rank seeds its generator the
same way, so all ranks draw the same global batch and rank r keeps rows r·B .. (r+1)·B - 1: the n
ranks together see exactly the examples one worker with batch n·B sees.

All ranks must call these functions with the same parameter names, shapes and dtypes (a layer-wise
optimizer must also leave out the same gradients, as ``None``, on every rank: seed it the same);
``allreduce_grads`` and ``broadcast_params`` raise ``CommError`` on every rank when they differ
(``comm.agree_on_layout``: one allgather of a checksum whenever a rank's names, shapes or None
entries change; ``allreduce_mean_`` alone checks only each buffer's length). Arrays are packed in
sorted name order into one flat buffer per dtype, so one step is one all-reduce (not one per
tensor) and the reduction order does not depend on dict order. A NaN or inf on one rank reaches
every rank through the average, so an optimizer with ``nonfinite="skip"`` skips the step on all of
them alike.

Plain NumPy on any ``optim.dist`` communicator (``SimComm`` or ``MPIComm``).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..sampling import stateful_source
from .comm import LayoutCheck, agree_on_layout, per_dtype

__all__ = ["allreduce_grads", "broadcast_params", "shard_batches", "allreduce_mean_"]


def _per_dtype_(arrays: Mapping, collective) -> int:
    """Replace the non-None arrays (in name order, so every rank packs the same buffers) by
    ``collective``'s result, in place, one call per dtype; returns the number of calls."""
    names = [n for n in sorted(arrays) if arrays[n] is not None]
    for name, result in zip(names, per_dtype([arrays[n] for n in names], collective)):
        arrays[name][...] = result
    return len({arrays[n].dtype.str for n in names})


def allreduce_mean_(comm, arrays: Mapping) -> int:
    """Replace every array of ``arrays`` (a dict name -> ndarray or None) by its mean over the
    ranks, in place: one all-reduce per dtype. Returns the number of all-reduces (0 when every
    entry is None)."""
    return _per_dtype_(arrays, lambda flat: comm.allreduce(flat, op="mean"))


def allreduce_grads(comm):
    """A gradient hook ``hook(grads)`` that averages the gradients across the ranks in place.

    Put it first in the Trainer's ``grad_hooks`` (clipping after it clips the global gradient,
    the same on every rank). ``hook.rounds`` counts the steps it communicated."""
    def hook(grads):
        if not isinstance(grads, Mapping):
            raise TypeError(f"allreduce_grads: expected a dict name -> gradient, got {type(grads).__name__}")
        check_layout(grads)
        if allreduce_mean_(comm, grads):
            hook.rounds += 1
    check_layout = LayoutCheck(comm, "allreduce_grads")
    hook.rounds = 0
    hook.__name__ = f"allreduce_grads(size={comm.size})"
    return hook


def broadcast_params(comm, params: Mapping, root: int = 0) -> Mapping:
    """Overwrite every rank's parameters (dict name -> ndarray) with rank ``root``'s, in place,
    one broadcast per dtype; returns ``params``. Call it once before training, so that all ranks
    start from the same point whatever seed built their models."""
    if not isinstance(params, Mapping):
        raise TypeError(f"broadcast_params: expected a dict name -> ndarray, got {type(params).__name__}")
    for name, a in params.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"broadcast_params: parameter {name!r} is a {type(a).__name__}, not an "
                            f"ndarray (pass p.data)")
    agree_on_layout(comm, params, "broadcast_params")
    _per_dtype_(params, lambda flat: comm.broadcast(flat, root=root))
    return params


def _shard(part, rank: int, size: int):
    if isinstance(part, np.ndarray):
        rows = part.shape[0] if part.ndim else 0
        if rows == 0 or rows % size:
            raise ValueError(f"shard_batches: a global batch array of shape {part.shape} does not split "
                             f"into {size} equal shards along its first axis; draw n·B = {size}·B rows")
        b = rows // size
        return part[rank * b:(rank + 1) * b]
    if isinstance(part, tuple):
        return tuple(_shard(p, rank, size) for p in part)
    if isinstance(part, list):
        return [_shard(p, rank, size) for p in part]
    if isinstance(part, Mapping):
        return {k: _shard(p, rank, size) for k, p in part.items()}
    raise TypeError(f"shard_batches: cannot shard a batch part of type {type(part).__name__}; a batch "
                    f"is an ndarray or a tuple/list/dict of them")


class _Shard:
    """``batches(rng)`` for rank ``rank`` of ``size``: rank ``rank``'s rows of the global batch
    that ``global_batches(rng)`` draws (see :func:`shard_batches`)."""

    def __init__(self, global_batches, rank: int, size: int):
        self.global_batches, self.rank, self.size = global_batches, int(rank), int(size)

    def __call__(self, rng):
        return _shard(self.global_batches(rng), self.rank, self.size)


class _StatefulShard(_Shard):
    """:class:`_Shard` of a stateful source: ``state_dict()`` / ``load_state_dict()``
    are its own, so the Trainer saves and restores the source's state through the shard."""

    def __init__(self, global_batches, rank: int, size: int, source):
        super().__init__(global_batches, rank, size)
        self.source = source

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state) -> None:
        self.source.load_state_dict(state)


def shard_batches(global_batches, rank: int, size: int):
    """``batches(rng)`` for rank ``rank`` of ``size``: draws the global batch with
    ``global_batches(rng)`` and keeps rows ``rank·B .. (rank+1)·B - 1`` of every array in it (a
    batch is an ndarray or a tuple/list/dict of them, all with n·B rows).

    The ranks' generators must be seeded alike (the Trainer's ``seed``) so that they draw the same
    global batch; then n ranks with batch B see exactly what one worker with batch n·B sees.

    A stateful source (``state_dict``/``load_state_dict`` on ``global_batches`` or on the object
    it is a bound method of: torchdata's protocol, which the Trainer saves and restores) stays
    one: the shard delegates both to it, so each rank's checkpoint holds its source's state and
    a resumed data-parallel run reads the batches of an uninterrupted one. Each rank needs a
    source object of its own (as each MPI process has): simulated ranks sharing one would advance
    it once per rank and draw different global batches."""
    if not callable(global_batches):
        raise TypeError(f"shard_batches: global_batches must be a callable batches(rng), got "
                        f"{type(global_batches).__name__}")
    if int(size) != size or size < 1 or int(rank) != rank or not 0 <= rank < size:
        raise ValueError(f"shard_batches: need 0 <= rank < size, got rank={rank!r}, size={size!r}")
    source = stateful_source(global_batches)
    if source is None:           # no state_dict on the shard: the Trainer then saves none for it
        return _Shard(global_batches, rank, size)
    return _StatefulShard(global_batches, rank, size, source)
