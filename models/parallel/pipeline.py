"""Pipeline parallelism: the GPT's layers cut into stages, the batch streamed through in micro-batches.

p workers (the ranks of a communicator) each hold one stage: consecutive transformer blocks, the
embeddings on the first stage, the final LayerNorm, the head and the loss on the last. The batch
is split into m micro-batches. A stage runs a micro-batch's forward when the previous stage has
sent it the activations, and its backward when the next stage has sent back their gradient; both
travel by point-to-point ``comm.send`` / ``comm.recv``. Each micro-batch's loss is scaled by 1/m
and the weight gradients accumulate over the m backwards, so the sum is the gradient of the
full batch's mean loss: one optimizer step per batch, the same as one process (synchronous).

Two schedules fix the order of the forwards (F) and backwards (B) on each stage:

* **GPipe** (Huang et al. 2019, arXiv 1811.06965): all m forwards, then all m backwards. A stage
  keeps the activations of all m micro-batches until their backward.
* **1F1B** (PipeDream-Flush; Narayanan et al. 2021, arXiv 2104.04473): stage s (0-based) runs
  p - s - 1 warm-up forwards, then alternates one forward and one backward, then drains the
  remaining backwards. The same bubble, but stage s holds at most p - s micro-batches.

With forward time t_f and backward time t_b equal on every stage, both take (m + p - 1)(t_f + t_b)
per batch while each stage is busy m(t_f + t_b), so the idle share -- the bubble -- is
(p - 1)/(m + p - 1). :func:`simulate` plays a schedule on unit times (forward 1, backward 2 by
default) and measures it; :meth:`Timeline.text` prints which stage does which micro-batch when,
:func:`plot_timeline` draws it.

Training goes through the one :class:`~models.training.Trainer` loop. Each rank's "model" is its
:class:`PipelineStage` (a Module holding only its stage's parameters, named as in the full GPT)
and the loss function is :func:`pipeline_loss`. When the Trainer asks for the loss, the stage
runs the whole schedule -- forwards, backwards, sends and receives -- and returns the batch loss
as one op of its parameters whose backward hands back the accumulated gradients times the
upstream gradient. So the Trainer's ``loss.backward()`` (with the optimizer's loss scale) puts
the gradients in ``p.grad`` as for any model; its hooks and ``opt.step`` follow. Under
``no_grad`` (evaluation, zeroth-order optimizers) the stage runs only the forwards.

Two details make every stage agree with one process:

* The head is tied to the token embedding. The first and the last stage each keep a copy of
  ``wte.weight``; after the backwards they swap their halves of its gradient (embedding and head)
  and both add them in the same order, so both copies get the same full gradient and stay equal
  (as Megatron-LM's embedding group does with an all-reduce).
* Every rank draws the same batch (the Trainer's generator has the same seed everywhere); the
  first stage reads the tokens, the last the targets. The last stage broadcasts the loss, so every
  rank's history holds it.

Gradient hooks see only their stage's gradients; :func:`clip_grad_norm_pp` clips by the whole
model's norm (one all-reduce of one number). The optimizer's loss scale multiplies the accumulated gradients, not each
micro-batch's backward. Dropout is refused: the stages would draw masks in another order than
one process.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np

import minigrad
import minigrad.functional as F
from minigrad import nn
from minigrad.memory import MemoryLedger
from minigrad.tensor import Function, Tensor, no_matmul_flops

from models.gpt import GPT, GPTConfig
from models.training.trainer import clip_grad_norm_over_ranks
from optim.dist.comm import ring_bounds

__all__ = ["SCHEDULES", "partition_layers", "stage_ops", "expected_bubble", "simulate", "Timeline",
           "TimedOp", "plot_timeline", "PipelineStage", "pipeline_loss", "clip_grad_norm_pp", "train_pipeline",
           "pipeline_bytes"]

SCHEDULES = ("gpipe", "1f1b")


# ============================================================================ partition and schedules
def partition_layers(n_layer: int, stages: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of the transformer blocks of each stage: contiguous, balanced (the first
    ``n_layer % stages`` stages hold one block more, as a ring cuts its chunks), every stage at
    least one block."""
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or stages < 1:
        raise ValueError(f"pipeline: the number of stages must be an integer >= 1, got {stages!r}")
    if stages > n_layer:
        raise ValueError(f"pipeline: {stages} stages for {n_layer} layers; every stage needs at least "
                         f"one transformer block, so use at most {n_layer} stages (or a deeper model)")
    return ring_bounds(n_layer, int(stages))


def _check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline: unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def _check_micro_batches(micro_batches) -> None:
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, (int, np.integer)) or micro_batches < 1:
        raise ValueError(f"pipeline: micro_batches must be an integer >= 1, got {micro_batches!r}")


def stage_ops(schedule: str, stages: int, micro_batches: int, stage: int) -> list[tuple[str, int]]:
    """The order in which ``stage`` runs its work: ``("F", i)`` is micro-batch i's forward,
    ``("B", i)`` its backward. GPipe: F0..F(m-1), B0..B(m-1). 1F1B: w = min(p - s - 1, m)
    warm-up forwards, then F(w+k), B(k) for k = 0..m-w-1, then the last w backwards."""
    _check_schedule(schedule)
    _check_micro_batches(micro_batches)
    if not 0 <= stage < stages:
        raise ValueError(f"pipeline: stage {stage} is not one of the {stages} stages 0..{stages - 1}")
    m = int(micro_batches)
    if schedule == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    warmup = min(stages - stage - 1, m)
    ops = [("F", i) for i in range(warmup)]
    for k in range(m - warmup):
        ops += [("F", warmup + k), ("B", k)]
    return ops + [("B", i) for i in range(m - warmup, m)]


def expected_bubble(stages: int, micro_batches: int) -> float:
    """(p - 1)/(m + p - 1): the idle share of a pipeline whose stages all take equal times."""
    return (stages - 1) / (micro_batches + stages - 1)


@dataclass(frozen=True)
class TimedOp:
    """One op of a timeline: ``kind`` "F" or "B" of micro-batch ``micro`` on ``stage``, in [start, end)."""

    stage: int
    kind: str
    micro: int
    start: int
    end: int


@dataclass
class Timeline:
    """A schedule played out in time (see :func:`simulate`)."""

    schedule: str
    stages: int
    micro_batches: int
    forward_time: int
    backward_time: int
    ops: list[TimedOp]

    @property
    def makespan(self) -> int:
        return max(op.end for op in self.ops)

    def bubble_fraction(self) -> float:
        """The measured idle share: idle stage-time / (stages x makespan)."""
        busy = sum(op.end - op.start for op in self.ops)
        total = self.stages * self.makespan
        return (total - busy) / total

    def peak_stored(self) -> list[int]:
        """Per stage, the most micro-batches whose forward has started and whose backward has
        not finished at one time: the activations it must hold."""
        peaks = []
        for s in range(self.stages):
            held, peak = 0, 0
            for op in sorted((op for op in self.ops if op.stage == s), key=lambda op: op.start):
                if op.kind == "F":
                    held += 1
                    peak = max(peak, held)
                else:
                    held -= 1
            peaks.append(peak)
        return peaks

    def text(self) -> str:
        """The timeline as text: a row per stage, a column per time unit, "F3"/"B3" where the
        stage works on micro-batch 3 (a backward fills ``backward_time`` columns), "." idle."""
        width = max(2, len(str(self.micro_batches - 1)) + 1)
        rows = [[" " * (width - 1) + "."] * self.makespan for _ in range(self.stages)]
        for op in self.ops:
            for t in range(op.start, op.end):
                rows[op.stage][t] = f"{op.kind}{op.micro}".rjust(width)
        head = (f"{self.schedule}: {self.stages} stages, {self.micro_batches} micro-batches, forward "
                f"{self.forward_time} and backward {self.backward_time} time units; bubble "
                f"{self.bubble_fraction():.4f} (formula (p-1)/(m+p-1) = "
                f"{expected_bubble(self.stages, self.micro_batches):.4f}); peak stored micro-batches "
                f"per stage {self.peak_stored()}")
        label = len(f"stage {self.stages - 1}")
        return "\n".join([head] + [f"{f'stage {s}':<{label}} | " + " ".join(r) for s, r in enumerate(rows)])


def simulate(schedule: str, stages: int, micro_batches: int, forward_time: int = 1,
             backward_time: int = 2) -> Timeline:
    """Play ``schedule`` on ``stages`` stages with every forward taking ``forward_time`` and every
    backward ``backward_time`` (whole time units; sends take no time). Each stage runs its ops
    (:func:`stage_ops`) in order, each as soon as the stage is free and its input is there: a
    forward needs the previous stage's forward of that micro-batch, a backward the next stage's
    backward of it."""
    for name, v in (("forward_time", forward_time), ("backward_time", backward_time)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"simulate: {name} must be a whole number of time units >= 1, got {v!r}")
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or stages < 1:
        raise ValueError(f"simulate: stages must be an integer >= 1, got {stages!r}")
    queues = [stage_ops(schedule, stages, micro_batches, s) for s in range(stages)]
    nxt = [0] * stages
    free = [0] * stages
    finished: dict[tuple[int, str, int], int] = {}     # (stage, kind, micro) -> end time
    ops = []
    while any(nxt[s] < len(queues[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            if nxt[s] == len(queues[s]):
                continue
            kind, i = queues[s][nxt[s]]
            dep = (s - 1, "F", i) if kind == "F" else (s + 1, "B", i)
            if 0 <= dep[0] < stages and dep not in finished:
                continue
            start = max(free[s], finished.get(dep, 0))
            end = start + (forward_time if kind == "F" else backward_time)
            ops.append(TimedOp(s, kind, i, start, end))
            finished[(s, kind, i)] = free[s] = end
            nxt[s] += 1
            progressed = True
        if not progressed:  # a schedule that waits on itself; the two above never do
            raise RuntimeError(f"simulate: {schedule} deadlocks at ops {[q[n] for q, n in zip(queues, nxt)]}")
    return Timeline(schedule, int(stages), int(micro_batches), int(forward_time), int(backward_time), ops)


def plot_timeline(timeline: Timeline, path: str | None = None, ax=None):
    """Draw ``timeline``: a row per stage (stage 0 on top), forwards blue and backwards orange,
    each box labelled with its micro-batch. Saved to ``path`` (returned) when given; otherwise
    drawn on ``ax`` or a new figure, which is returned."""
    from models.training.plots import pyplot, save_figure
    plt = pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * timeline.makespan + 2), 0.5 * timeline.stages + 1.4))
    colors = {"F": "tab:blue", "B": "tab:orange"}
    for op in timeline.ops:
        ax.broken_barh([(op.start, op.end - op.start)], (op.stage - 0.4, 0.8),
                       facecolors=colors[op.kind], edgecolors="white")
        ax.text((op.start + op.end) / 2, op.stage, str(op.micro), ha="center", va="center",
                fontsize=7, color="white")
    ax.set_ylim(timeline.stages - 0.5, -0.5)
    ax.set_yticks(range(timeline.stages), [f"stage {s}" for s in range(timeline.stages)])
    ax.set_xlim(0, timeline.makespan)
    ax.set_xlabel(f"time (forward {timeline.forward_time}, backward {timeline.backward_time} units)")
    ax.set_title(f"{timeline.schedule}: p={timeline.stages}, m={timeline.micro_batches}, bubble "
                 f"{timeline.bubble_fraction():.3f} = (p-1)/(m+p-1) = "
                 f"{expected_bubble(timeline.stages, timeline.micro_batches):.3f}", fontsize=9)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()],
              labels=["forward", "backward"], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    if fig is None:
        return ax.figure if path is None else save_figure(ax.figure, path)
    fig.tight_layout()
    return fig if path is None else save_figure(fig, path)


# ============================================================================ one stage on one rank
class _StageGradients(Function):
    """The batch loss as an op of the stage's parameters. The schedule has already run every
    backward; this op's backward returns the gradients it accumulated times the upstream gradient
    (1, or the optimizer's loss scale), so the Trainer's ``loss.backward()`` delivers them."""

    flops = staticmethod(no_matmul_flops)   # the schedule's own ops were counted as they ran

    @staticmethod
    def forward(ctx, *params, loss, grads):
        ctx.grads = grads
        return np.asarray(loss, dtype=params[0].dtype)

    @staticmethod
    def backward(ctx, g):
        return tuple(None if gr is None else gr * g for gr in ctx.grads)


class _StageLedger(MemoryLedger):
    """``minigrad.memory``'s ledger for one stage. Under SimComm every stage is a thread of one
    process and the core's listeners are process-wide, so it records only its own thread's saves."""

    def __init__(self, model):
        super().__init__(model=model)
        self._thread = threading.get_ident()

    def _listener(self, event, ctx, objs):
        if threading.get_ident() == self._thread:
            super()._listener(event, ctx, objs)


def _tag(kind: str, micro: int) -> int:
    """Message tag: activations of micro-batch i go forward as 2i, their gradients back as 2i + 1."""
    return 2 * micro + (kind == "B")


class PipelineStage(nn.Module):
    """Stage ``comm.rank`` of a ``comm.size``-stage pipeline of ``GPT(config, dtype, seed)``.

    It builds the full GPT (so every stage starts from the weights one process would) and keeps
    its part: blocks ``layers = (start, stop)`` (:func:`partition_layers`), ``wte`` and ``wpe`` on
    the first stage, ``ln_f`` and the head's copy of ``wte`` on the last; parameters keep the
    GPT's names ("h.2.attn.c_attn.weight"), so any optimizer and checkpoint see a GPT's subset.

    Train it with ``Trainer(stage, pipeline_loss, optimizer, batches, ...)`` on every rank (see the
    module docstring). After each training batch: ``last_ops`` (the ops run, in order),
    ``last_peak_stored`` (most micro-batches held at once), ``last_bytes`` ((sent, received) by
    this stage) and, with ``track_memory``, ``last_activation_bytes`` (the ledger's peak of saved
    activations); ``peak_stored`` and ``peak_activation_bytes`` are the maxima over the run.
    """

    def __init__(self, comm, config: GPTConfig, *, micro_batches: int, schedule: str = "1f1b",
                 dtype=np.float32, seed: int = 0, track_memory: bool = False):
        super().__init__()
        _check_schedule(schedule)
        _check_micro_batches(micro_batches)
        if config.dropout:
            raise ValueError(f"pipeline: dropout={config.dropout} is not supported (each stage would "
                             "draw its masks in another order than one process); set dropout=0")
        self.comm = comm
        self.config = config
        self.dtype = np.dtype(dtype)
        self.stage, self.stages = comm.rank, comm.size
        self.micro_batches = int(micro_batches)
        self.schedule = schedule
        self.layers = partition_layers(config.n_layer, self.stages)[self.stage]
        self.is_first, self.is_last = self.stage == 0, self.stage == self.stages - 1
        self.ops = stage_ops(schedule, self.stages, self.micro_batches, self.stage)
        self.track_memory = track_memory

        gpt = GPT(config, dtype=dtype, seed=seed)
        if self.is_first or self.is_last:
            self.wte = gpt.wte                      # the embedding, and the tied head's weight
        if self.is_first:
            self.wpe = gpt.wpe
        self.h = nn.ModuleList()
        for i in range(*self.layers):
            setattr(self.h, str(i), gpt.h[i])       # named h.i as in the GPT
        if self.is_last:
            self.ln_f = gpt.ln_f
        names = {n for n, _ in self.named_parameters()}
        self._param_blocks = [
            nn.ParamBlock(b.name, [n for n in b.params if n in names],
                          {n: r for n, r in b.roles.items() if n in names},
                          {n: s for n, s in b.splits.items() if n in names})
            for b in gpt.param_blocks() if any(n in names for n in b.params)]

        self.last_ops: list[tuple[str, int]] = []
        self.last_peak_stored = self.peak_stored = 0
        self.last_bytes = (0, 0)
        self.last_activation_bytes = self.peak_activation_bytes = None

    def param_blocks(self) -> list[nn.ParamBlock]:
        """The GPT's blocks (embeddings, h.i, head) restricted to this stage's parameters."""
        return self._param_blocks

    def extra_repr(self) -> str:
        return (f"stage {self.stage} of {self.stages}, blocks [{self.layers[0]}, {self.layers[1]}), "
                f"{self.schedule}, {self.micro_batches} micro-batches")

    # ------------------------------------------------------------------ the batch
    def _check_batch(self, idx, targets):
        idx, targets = np.asarray(idx), np.asarray(targets)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"pipeline: idx must be an integer array (B, T), got {idx.dtype} {idx.shape}")
        if targets.shape != idx.shape:
            raise ValueError(f"pipeline: targets shape {targets.shape} != idx shape {idx.shape}")
        B, T = idx.shape
        if B % self.micro_batches:
            raise ValueError(f"pipeline: a batch of {B} sequences does not split into {self.micro_batches} "
                             f"micro-batches ({B} % {self.micro_batches} = {B % self.micro_batches}); "
                             f"choose micro_batches dividing {B}")
        if T > self.config.block_size:
            raise ValueError(f"pipeline: sequences of {T} tokens exceed block_size={self.config.block_size}")
        V = self.config.vocab_size
        for name, a in (("token ids", idx), ("targets", targets)):
            if a.size and (a.min() < 0 or a.max() >= V):
                raise ValueError(f"pipeline: {name} must be in [0, {V}), got [{a.min()}, {a.max()}]")
        return idx, targets

    def run(self, idx, targets) -> Tensor:
        """The schedule on one batch: the mean loss over it (the same on every stage), as a Tensor.

        With grad enabled, every forward and backward runs and the returned loss's backward adds
        the batch gradients to ``p.grad`` (onto what is there, as a GPT's backward does: two calls
        without ``zero_grad`` accumulate both batches); under ``no_grad``, only the forwards
        (evaluation)."""
        idx, targets = self._check_batch(idx, targets)
        m, b = self.micro_batches, len(idx) // self.micro_batches
        micro = [(idx[i * b:(i + 1) * b], targets[i * b:(i + 1) * b]) for i in range(m)]
        training = minigrad.is_grad_enabled()
        ops = self.ops if training else [("F", i) for i in range(m)]
        params = [p for p in self.parameters() if p.requires_grad]
        # The micro-batch backwards accumulate into p.grad, and the tied wte's gradient is then
        # swapped with the peer stage: start them from None so that only this batch's gradients
        # are summed and exchanged (a gradient left from an earlier call, not zeroed, would be sent
        # to the peer and counted twice). The earlier gradients go back before returning, and the
        # loss's backward adds this batch's onto them, as a GPT's second backward does.
        earlier = [p.grad for p in params] if training else []
        for p in params if training else ():
            p.grad = None
        sent, received = self.comm.bytes_sent, self.comm.bytes_received
        ledger = _StageLedger(self) if training and self.track_memory else contextlib.nullcontext()
        with ledger:
            losses = self._execute(ops, micro, training)
        if training and self.track_memory:
            self.last_activation_bytes = ledger.peak["activations"]
            self.peak_activation_bytes = max(self.peak_activation_bytes or 0, self.last_activation_bytes)
        # every stage reports the batch loss: the mean of the micro-batch means, from the last stage
        mine = np.array([sum(losses) / m if self.is_last else 0.0])
        loss = float(self.comm.broadcast(mine, root=self.stages - 1)[0])
        if not training:
            return Tensor(np.asarray(loss, dtype=self.dtype))
        self._sum_tied_gradient(m)
        self.last_bytes = (self.comm.bytes_sent - sent, self.comm.bytes_received - received)
        if not params:      # a stage the optimizer froze this step: nothing to hand back
            return Tensor(np.asarray(loss, dtype=self.dtype), requires_grad=True)
        grads = [p.grad for p in params]        # this batch's alone: handed back by the loss's backward
        for p, g in zip(params, earlier):
            p.grad = g
        return _StageGradients.apply(*params, loss=loss, grads=grads)

    def _execute(self, ops, micro, training) -> list[float]:
        """Run ``ops`` in order; returns the last stage's micro-batch losses (empty elsewhere)."""
        stored = {}         # micro-batch -> (input, output): what its backward needs
        losses = []
        held = 0
        for kind, i in ops:
            if kind == "F":
                inp, out = self._forward(i, *micro[i], training)
                if self.is_last:
                    losses.append(float(out.item()))
                if training:
                    stored[i] = (inp, out)
                    held = max(held, len(stored))
            else:
                self._backward(i, *stored.pop(i))
        if training:
            self.last_ops = list(ops)
            self.last_peak_stored = held
            self.peak_stored = max(self.peak_stored, held)
        return losses

    def _forward(self, i, idx, targets, training):
        """Micro-batch i through this stage: (the input tensor or None, the output or the loss)."""
        if self.is_first:
            inp = None
            x = F.embedding(idx, self.wte.weight) + F.embedding(np.arange(idx.shape[1]), self.wpe.weight)
        else:
            inp = x = Tensor(self.comm.recv(self.stage - 1, tag=_tag("F", i)), requires_grad=training)
        for block in self.h:
            if self.config.checkpoint and training:
                x = minigrad.checkpoint(block, x)       # recompute in backward, as GPT does
            else:
                x = block(x)
        if not self.is_last:
            self.comm.send(x.data, self.stage + 1, tag=_tag("F", i))
            return inp, x
        logits = F.linear(self.ln_f(x), self.wte.weight)                  # (b, T, V), tied head
        B, T, V = logits.shape
        return inp, F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))

    def _backward(self, i, inp, out):
        """Micro-batch i's backward: from the loss scaled by 1/m on the last stage, else from the
        gradient the next stage sends; the input's gradient goes to the previous stage."""
        if self.is_last:
            out.backward(np.asarray(1.0 / self.micro_batches, dtype=out.dtype))
        else:
            out.backward(self.comm.recv(self.stage + 1, tag=_tag("B", i)))
        if not self.is_first:
            self.comm.send(inp.grad, self.stage - 1, tag=_tag("B", i))

    def _sum_tied_gradient(self, m):
        """First and last stage swap their parts of wte's gradient from this batch (``run`` starts
        it from None) and both add embedding + head."""
        if self.stages == 1 or not (self.is_first or self.is_last) or not self.wte.weight.requires_grad:
            return
        peer = self.stages - 1 if self.is_first else 0
        mine = self.wte.weight.grad
        self.comm.send(mine, peer, tag=2 * m)       # after the micro-batches' tags 0..2m-1
        theirs = self.comm.recv(peer, tag=2 * m)
        self.wte.weight.grad = mine + theirs if self.is_first else theirs + mine


def pipeline_loss(stage: PipelineStage, batch) -> Tensor:
    """The Trainer's ``loss_fn`` for a :class:`PipelineStage`: ``batch = (idx, targets)``, the whole
    batch, which the stage splits into its micro-batches and runs through the schedule."""
    idx, targets = batch
    return stage.run(idx, targets)


def clip_grad_norm_pp(stage: PipelineStage, max_norm: float, norm_type: float = 2.0, eps: float = 1e-6):
    """A Trainer gradient hook: ``models.training.clip_grad_norm`` for a pipeline stage.

    The norm is the one-process model's: every stage's sum of |g|^p, all-reduced (max for the
    inf-norm), with the tied ``wte.weight`` counted once (on the first stage; the last holds the
    same gradient). Every stage scales by the same min(1, max_norm / (norm + eps)), as torch.
    ``hook.last_norm`` keeps the norm before clipping."""
    tied_copy = stage.is_last and not stage.is_first
    return clip_grad_norm_over_ranks(
        stage.comm, lambda n: "elsewhere" if tied_copy and n == "wte.weight" else "split",
        max_norm, norm_type, eps, name="clip_grad_norm_pp")


def pipeline_bytes(config: GPTConfig, batch_size: int, seq_len: int, micro_batches: int, stages: int,
                   stage: int, itemsize: int) -> tuple[int, int]:
    """(sent, received) bytes of ``stage`` in one training batch: m activations (b, T, C) to the
    next stage and m gradients of them to the previous, wte's gradient (V, C) swapped between
    the first and the last stage, and the loss (8 bytes) broadcast from the last stage."""
    p, m = stages, micro_batches
    act = batch_size // m * seq_len * config.n_embd * itemsize
    tied = config.vocab_size * config.n_embd * itemsize if p > 1 and stage in (0, p - 1) else 0
    sent = m * act * ((stage < p - 1) + (stage > 0)) + tied + (8 * (p - 1) if stage == p - 1 else 0)
    received = m * act * ((stage > 0) + (stage < p - 1)) + tied + (8 if stage != p - 1 else 0)
    return sent, received


def train_pipeline(comm, config: GPTConfig, batches, *, steps: int, micro_batches: int,
                   schedule: str = "1f1b", optimizer: str = "adamw", lr: float = 1e-3,
                   weight_decay: float = 0.0, opt_kwargs=None, dtype=np.float32, seed: int = 0,
                   max_grad_norm: float | None = None, track_memory: bool = False,
                   keep_params: bool = False, resume: bool = False, **trainer_kwargs) -> dict:
    """Train ``GPT(config, dtype, seed)`` as a ``comm.size``-stage pipeline; run on every rank, e.g.
    ``launch(train_pipeline, config, batches, steps=20, micro_batches=4, workers=2)``.

    ``batches(rng) -> (idx, targets)`` draws the whole batch; ``seed`` seeds the weights, the
    optimizer and the Trainer's batch generator, so a one-process ``Trainer`` of
    ``GPT(config, dtype, seed)`` with ``build_optimizer(optimizer, model, lr, weight_decay,
    seed=seed)`` and ``Trainer(..., seed=seed)`` follows the same run. ``trainer_kwargs`` go to
    the :class:`~models.training.Trainer` (schedule, eval_batches, eval_every, ...; progress is off
    by default: SimComm ranks are threads; ``reduce_stop`` is ``any_rank(comm)``, so a Ctrl-C
    stops every stage before the same step). ``max_grad_norm`` clips by the whole model's norm
    (:func:`clip_grad_norm_pp`) before any ``grad_hooks`` given. With ``save_dir`` each stage
    saves its own layers in ``save_dir/rank{r}`` (:func:`models.training.distributed.rank_dir`),
    the world size in the meta, every ``save_every`` steps and when the run ends or is stopped;
    ``resume=True`` first restores every stage from there
    (:func:`~models.training.distributed.restore_ranks`), so a stopped run goes on to ``steps``
    as if it had not stopped. Layer-wise optimizers (a ``trainable_names()`` that is not None)
    are refused: each stage would pick its blocks alone, and the two copies of the tied
    embedding on the first and last stages would disagree on whether they train (a deadlock in
    the exchange of its gradient).

    Returns this rank's ``{"stage", "layers", "step", "interrupted", "history", "ops",
    "peak_stored", "peak_activation_bytes", "bytes_per_step"}`` (and ``"params"``, the stage's
    final arrays, with ``keep_params``); ``bytes_per_step`` is (sent, received) in the last
    training batch."""
    from models.training import Trainer
    from models.training.distributed import any_rank, rank_dir, restore_ranks
    from models.training.optimizers import build_optimizer
    stage = PipelineStage(comm, config, micro_batches=micro_batches, schedule=schedule, dtype=dtype,
                          seed=seed, track_memory=track_memory)
    opt = build_optimizer(optimizer, stage, lr, weight_decay, seed=seed, extra=opt_kwargs)
    if opt.trainable_names() is not None:
        raise ValueError(f"train_pipeline: {optimizer!r} trains a chosen set of blocks per step; each stage "
                         f"would choose alone (see the docstring). Use an optimizer that updates every "
                         f"parameter, or train in one process")
    save_dir = trainer_kwargs.get("save_dir")
    if resume and save_dir is None:
        raise ValueError("train_pipeline: resume=True restores each stage from save_dir/rank{r}; give save_dir")
    if save_dir is not None:                           # the stages hold different layers
        trainer_kwargs["save_meta"] = {**(trainer_kwargs.get("save_meta") or {}), "world_size": comm.size,
                                       "rank": comm.rank}
        trainer_kwargs["save_dir"] = rank_dir(save_dir, comm.rank)
    hooks = list(trainer_kwargs.pop("grad_hooks", ()))
    if max_grad_norm is not None:
        hooks.insert(0, clip_grad_norm_pp(stage, max_grad_norm))
    trainer = Trainer(stage, pipeline_loss, opt, batches, steps=steps, seed=seed, grad_hooks=hooks,
                      **{"progress": False, "reduce_stop": any_rank(comm), **trainer_kwargs})
    if resume:
        restore_ranks(trainer, comm, save_dir, target=steps)
    trainer.fit()
    if save_dir is not None:                           # also when stopped: the point to resume from
        trainer.save(trainer.save_dir, trainer.save_meta)
    out = {"stage": stage.stage, "layers": stage.layers, "step": trainer.step,
           "interrupted": trainer.interrupted, "history": trainer.history,
           "ops": stage.last_ops, "peak_stored": stage.peak_stored,
           "peak_activation_bytes": stage.peak_activation_bytes, "bytes_per_step": stage.last_bytes}
    if keep_params:
        out["params"] = stage.state_dict()
    return out
