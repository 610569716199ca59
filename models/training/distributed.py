"""Data-parallel training through the one Trainer: the same loop on every rank of a communicator.

:func:`data_parallel_trainer` wires a :class:`Trainer` for rank ``comm.rank``: rank 0's parameters
are broadcast to all ranks, the gradients are all-reduced by the first gradient hook (or
exchanged compressed by a ``reducer``, or, for a ``LocalSGD`` optimizer, averaged on its own
schedule; a zeroth-order optimizer averages its losses instead), each rank trains on its shard of
the global batch, checkpoints go to
``save_dir/rank{r}`` and only rank 0 reports progress::

    from optim.dist.launcher import launch

    def worker(comm, resume=False):
        model = GPT(cfg, seed=0)
        opt = build_optimizer("adamw", model, lr=6e-3, weight_decay=0.1)
        trainer = data_parallel_trainer(comm, model, lm_loss, opt,
                                        lambda rng: data.get_batch("train", 32, rng),   # n·B rows
                                        steps=200, save_dir="out", save_every=50)
        if resume:
            restore_ranks(trainer, comm, "out")
        trainer.fit()
        trainer.save(trainer.save_dir, trainer.save_meta)
        return trainer.history

    histories = launch(worker, workers=4)     # SimComm(4), or the MPI ranks under mpiexec

Every rank must be given the same ``seed`` and the same arguments: the ranks draw the same global
batch and keep their own rows of it (``optim.dist.data_parallel.shard_batches``). The model's own
generators (dropout) are reseeded per rank (:func:`seed_model_generators`): each rank draws its
own masks for its own rows, as one process draws independent masks for all of them. Each rank's
history holds the loss of its own shard; their mean is the global batch's loss.

A wall-clock ``time_budget`` is refused: each rank would fit the schedule to its own measured
speed and the ranks would disagree on the number of steps. For the same reason a Ctrl-C or
SIGTERM is agreed on: before every step the ranks all-reduce their wish to stop (:func:`any_rank`),
so that they all stop, and save, at the same step; a rank that stopped alone would leave the
others waiting in that step's all-reduce.
"""
from __future__ import annotations

import copy
import itertools
import os
import time

import numpy as np

from optim.dist.data_parallel import allreduce_grads, broadcast_params, shard_batches
from optim.dist.local_sgd import LocalSGD

from .checkpoint import CheckpointError, load_checkpoint
from .optimizers import build_optimizer
from .trainer import Trainer, clip_grad_norm, lm_loss, module_generators

__all__ = ["rank_dir", "any_rank", "mean_over_ranks", "seed_model_generators", "data_parallel_trainer",
           "restore_ranks",
           "train_gpt_data_parallel"]


def rank_dir(save_dir, rank: int) -> str:
    """The checkpoint directory of rank ``rank`` under ``save_dir``: ``save_dir/rank{rank}``."""
    return os.path.join(os.fspath(save_dir), f"rank{int(rank)}")


def any_rank(comm, every: int = 1):
    """The Trainer's ``reduce_stop`` for the ranks of ``comm``: stop when any rank asks to (a
    Ctrl-C or SIGTERM it received, or ``comm.stop_requested``: a signal to the process of
    simulated ranks, which listen through ``comm.listen_for_stop()``), all of them at the same
    step. It votes at every ``every``-th
    call (the Trainer calls it before each step) with one all-reduce of one int64, 2(n-1)/n · 8
    bytes sent per rank, and answers "not yet" in between, so a stop waits for the next vote.
    ``every`` = H for Local SGD keeps its T/H communication rounds in step (one vote per
    averaging round). After the last step and after the final evaluation, where no later vote
    comes, the Trainer calls its ``final``, which always votes."""
    if int(every) != every or every < 1:
        raise ValueError(f"any_rank: every must be an integer >= 1, got {every!r}")
    calls = itertools.count()
    listen = getattr(comm, "listen_for_stop", None)     # any object with allreduce will do
    if listen is not None:
        listen()

    def vote(flag: bool) -> bool:
        wish = flag or getattr(comm, "stop_requested", False)   # a signal to the process (simulated ranks)
        return bool(comm.allreduce(np.array([int(wish)], np.int64))[0] > 0)

    def reduce_stop(flag: bool) -> bool:
        return False if next(calls) % every else vote(flag)
    reduce_stop.final = vote
    return reduce_stop


def mean_over_ranks(comm):
    """The Trainer's ``reduce_loss`` for data-parallel zeroth-order training: the mean over the
    ranks of each loss a step evaluates, one all-reduce of one float64 per evaluation (MeZO and
    LoZO evaluate two a step: 2 · 2(n-1)/n · 8 bytes sent per rank). With the same seed on every
    rank (``data_parallel_trainer`` broadcasts rank 0's), every rank then draws the same
    perturbation and takes the same step: the step of the global batch's loss."""
    def reduce_loss(loss: float) -> float:
        return float(comm.allreduce(np.array([loss], np.float64), op="mean")[0])
    return reduce_loss


def _share_seed(comm, optimizer) -> None:
    """Rank 0's seed in every rank's zeroth-order optimizer (as its parameters are): the ranks
    must draw the same perturbations, and ``seed=None`` draws a different one per process."""
    inner = getattr(optimizer, "optimizer", optimizer)          # the mixed-precision wrapper's
    state = getattr(inner, "global_state", {})
    if "seed" not in state:
        raise TypeError(f"data_parallel_trainer: the zeroth-order optimizer {type(inner).__name__} keeps "
                        f"no seed in global_state; the ranks could not draw the same perturbations")
    state["seed"] = int(comm.broadcast(np.array([state["seed"]], np.int64), root=0)[0])


def seed_model_generators(model, rank: int) -> None:
    """Give data-parallel rank ``rank`` its own stream in each of the model's generators (a GPT's
    ``dropout_rng``): rank 0 keeps the stream its seed gives, rank r > 0 is reseeded in place with
    ``SeedSequence([k, r])``, k drawn from a copy of the generator (so the seed still decides it
    and the generator's own state is not advanced).

    Every rank builds its model from the same seed, so without this every rank drew the same
    dropout masks for its different rows. One process with the global batch draws an independent
    mask for every row; with a stream per rank the ranks do too, so the averaged gradient has the
    distribution of one process's (not its bits: those masks come from one draw over all rows).
    The ranks of one tensor-parallel group share their data-parallel rank and so keep drawing the
    same masks, which tensor parallelism needs (the masks act on replicated activations)."""
    if rank == 0:
        return
    for g in module_generators(model).values():
        bits = g.bit_generator
        k = int(np.random.Generator(copy.deepcopy(bits)).integers(2 ** 63))
        bits.state = type(bits)(np.random.SeedSequence([k, int(rank)])).state


def data_parallel_trainer(comm, model, loss_fn, optimizer, global_batches, *, reducer=None,
                          grad_hooks=(), save_dir=None, save_meta=None, world=None,
                          progress: bool = True, log_every: int = 50, **trainer_kwargs) -> Trainer:
    """A :class:`Trainer` for this rank of a data-parallel run (see the module docstring).

    global_batches  ``batches(rng)`` drawing the GLOBAL batch (n·B rows); rank r trains on rows
                    r·B .. (r+1)·B - 1
    optimizer       any optimizer built on ``model``'s arrays: synchronous data parallel (gradients
                    all-reduced every step, before ``grad_hooks``), or a ``LocalSGD`` wrapper,
                    whose own ``grad_hook`` goes first instead, or a zeroth-order one (MeZO,
                    LoZO, ZO-SGD): rank 0's seed is broadcast and each loss it evaluates is
                    averaged over the ranks (:func:`mean_over_ranks`), so all take one step
    reducer         the gradient exchange in place of the plain all-reduce, built on ``comm``:
                    ``optim.dist.compress.Reducer(comm, compressor)`` or error feedback around it
                    (``EF14``, ``EF21``); its state (generators, PowerSGD's warm start, error
                    buffers) goes into each rank's checkpoint. Not with ``LocalSGD``
    save_dir        checkpoints in ``save_dir/rank{r}``, r = this process's rank in the world
                    (``world.rank``, else ``comm.rank``), with the world size in their meta;
                    :func:`restore_ranks` on the same world resumes them
    world           the communicator of the whole run when ``comm`` is one group of it (tensor x
                    data parallel: ``comm`` is this rank's data-parallel group). It names the
                    checkpoint directories (the ranks of different groups share their ``comm.rank``
                    and would overwrite each other) and takes the stop vote. None: ``comm``
    progress        rank 0's tqdm bar (or its log lines every ``log_every`` steps); the other
                    ranks print nothing
    trainer_kwargs  the rest of :class:`Trainer`'s arguments (steps, schedule, seed, ...);
                    ``reduce_stop`` defaults to ``any_rank(world)`` (``any_rank(world, every=H)``
                    with ``LocalSGD``): a Ctrl-C stops every rank before the same step; None opts
                    out (each rank then stops on its own signal)
    """
    if trainer_kwargs.get("time_budget"):
        raise ValueError("data_parallel_trainer: a time_budget would let each rank fit the schedule to "
                         "its own speed and the ranks would disagree on the steps; give steps instead")
    if reducer is not None and not callable(reducer):
        raise TypeError(f"data_parallel_trainer: reducer must be a gradient hook such as "
                        f"Reducer(comm, TopK(ratio=0.01)), got {type(reducer).__name__}")
    if reducer is not None and isinstance(optimizer, LocalSGD):
        raise ValueError("data_parallel_trainer: LocalSGD averages the parameters on its own schedule; "
                         "a gradient reducer applies to synchronous data parallel only (drop reducer=)")
    zeroth_order = not optimizer.uses_gradients
    if zeroth_order and (reducer is not None or grad_hooks):
        raise ValueError("data_parallel_trainer: a zeroth-order optimizer computes no gradients; the ranks "
                         "agree through their losses (drop reducer= and grad_hooks=)")
    # the model's arrays and those the optimizer moves, when apart (a mixed-precision wrapper's
    # FP32 masters, copied from each rank's own initial weights): both start from rank 0's
    arrays = {n: p.data for n, p in model.named_parameters()}
    seen = {id(a) for a in arrays.values()}
    arrays.update((f"optimizer's {n}", a) for g in optimizer.param_groups for n, a in g["params"].items()
                  if id(a) not in seen)
    broadcast_params(comm, arrays)
    seed_model_generators(model, comm.rank)     # each rank its own dropout masks for its own rows
    if zeroth_order:
        _share_seed(comm, optimizer)
        sync, vote_every = None, 1
        trainer_kwargs.setdefault("reduce_loss", mean_over_ranks(comm))
    elif isinstance(optimizer, LocalSGD):    # one stop vote per averaging round
        sync, vote_every = optimizer.grad_hook, optimizer.local_steps
    else:
        sync, vote_every = (allreduce_grads(comm) if reducer is None else reducer), 1
    if not zeroth_order and comm.size > 1:   # its lines show rank 0's part, not the global batch's
        trainer_kwargs.setdefault("loss_label", "shard loss")
    world = comm if world is None else world
    lead = world.rank == 0
    trainer_kwargs.setdefault("reduce_stop", any_rank(world, vote_every))
    return Trainer(model, loss_fn, optimizer, shard_batches(global_batches, comm.rank, comm.size),
                   grad_hooks=[h for h in (sync, *grad_hooks) if h is not None],
                   save_dir=None if save_dir is None else rank_dir(save_dir, world.rank),
                   save_meta={**(save_meta or {}), "world_size": world.size, "rank": world.rank},
                   progress=progress and lead, log_every=log_every if lead else 0, **trainer_kwargs)


def restore_ranks(trainer: Trainer, comm, save_dir, *, target: int | None = None) -> int:
    """Every rank resumes from its own checkpoint in ``save_dir/rank{r}`` (:meth:`Trainer.restore`);
    returns the step reached. ``comm`` is the run's world (the ``world`` given to
    :func:`data_parallel_trainer`, or its ``comm``; a pipeline's stages), called on all its ranks.

    Raises :class:`CheckpointError` on every rank alike when any rank's checkpoint is missing or
    unusable, was written by a run with another number of ranks, or the ranks' checkpoints are at
    different steps (a save that was cut short on some ranks)."""
    path = rank_dir(save_dir, comm.rank)
    ckpt, problem = None, ""
    try:
        ckpt = load_checkpoint(path)
        if ckpt.meta.get("world_size") != comm.size:
            problem = f"written by a run on {ckpt.meta.get('world_size')} ranks, this one has {comm.size}"
    except CheckpointError as e:
        problem = str(e)
    failed = comm.allgather(np.array([int(bool(problem))]))[:, 0]
    if failed.any():
        raise CheckpointError(f"cannot resume from {os.fspath(save_dir)}: "
                              + ("; ".join(f"rank {r} failed" for r in np.flatnonzero(failed))
                                 if not problem else f"rank {comm.rank}: {problem}"))
    steps = comm.allgather(np.array([ckpt.step]))[:, 0]
    if (steps != steps[0]).any():
        raise CheckpointError(f"the checkpoints in {os.fspath(save_dir)} are at different steps ("
                              + ", ".join(f"rank {r}: {s}" for r, s in enumerate(steps))
                              + "): a save was cut short on some ranks; restore an older complete set")
    trainer.restore(ckpt, target=target)
    return trainer.step


def train_gpt_data_parallel(comm, data, *, preset: str = "tiny", steps: int = 50, batch_size=None,
                            lr: float = 6e-3, optimizer: str = "adamw", weight_decay: float = 0.1,
                            beta2: float = 0.99, warmup: int = 10, grad_clip: float = 1.0,
                            eval_every: int = 25, eval_batches: int = 4, seed: int = 1337,
                            dtype=np.float32, progress: bool = False) -> dict:
    """Train a GPT data-parallel on ``comm`` (call it on every rank) with the recipe of
    ``demos/train_gpt.py``: AdamW (weight decay on 2-D parameters), linear warmup then cosine
    decay to lr/10, gradient clipping at norm ``grad_clip`` after the all-reduce.

    data        a ``models.data.TextData`` (the same on every rank)
    batch_size  the GLOBAL batch (None: the preset's); a multiple of the number of ranks

    Returns the run's record, the same on every rank: ``train_loss`` (the global batch's loss per
    step: the ranks' shard losses averaged once at the end), ``val_step`` / ``val_loss``,
    ``bytes_sent`` (this rank's cumulative bytes after each step), ``seconds`` (the fit on this
    rank), ``tokens_per_second`` (global tokens of the steps done / seconds), ``interrupted``
    (a Ctrl-C or SIGTERM stopped it, on every rank at the same step) and ``workers``.
    """
    from models.gpt import GPT, preset as gpt_preset

    cfg, preset_batch = gpt_preset(preset, vocab_size=data.vocab_size)
    batch = preset_batch if batch_size is None else int(batch_size)
    if batch < comm.size or batch % comm.size:
        raise ValueError(f"train_gpt_data_parallel: the global batch {batch} does not split into "
                         f"{comm.size} equal shards; give a multiple of {comm.size}")
    model = GPT(cfg, dtype=dtype, seed=seed)
    opt = build_optimizer(optimizer, model, lr, weight_decay=weight_decay, beta2=beta2, seed=seed)
    sent = []
    trainer = data_parallel_trainer(
        comm, model, lm_loss, opt, lambda rng: data.get_batch("train", batch, rng),
        grad_hooks=[clip_grad_norm(grad_clip)] if grad_clip else [], steps=steps, schedule="cosine",
        schedule_kwargs={"warmup_steps": warmup, "min_ratio": 0.1}, seed=seed,
        eval_batches=data.fixed_batches("val", eval_batches, batch, seed=seed + 1),
        eval_every=eval_every, progress=progress, on_step=lambda tr: sent.append(comm.bytes_sent))
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    h = trainer.history
    return {"workers": comm.size, "train_step": list(h["train_step"]),
            "train_loss": comm.allreduce(np.array(h["train_loss"]), op="mean").tolist(),
            "val_step": list(h["val_step"]), "val_loss": list(h["val_loss"]),
            "bytes_sent": sent, "seconds": seconds,
            "tokens_per_second": trainer.step * batch * cfg.block_size / seconds,   # steps done
            "interrupted": trainer.interrupted}
