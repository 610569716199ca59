"""The training loop every model and optimizer in minigrad runs through.

One step, whatever the optimizer (the loop never asks for its class; the optimizer declares
what it needs, see ``optim.base``)::

    every step: freeze the parameters opt.trainable_names() leaves out (layer-wise methods)
    first-order (opt.uses_gradients):              zeroth-order (not opt.uses_gradients):
      model.zero_grad()                              model.eval()
      loss = loss_fn(model, batch)  [autocast]       opt.step(closure=lambda: reduce_loss(
      (loss * opt.loss_scale).backward()                      loss_fn(model, batch) under no_grad))
      grads = {name: p.grad}   (None: frozen)        model.train()
      opt.unscale_(grads)       (mixed precision: true gradients from here on)
      for hook in grad_hooks: hook(grads)            (clipping; later compression, all-reduce)
      opt.step(grads)
    first-order methods that need several gradients per step (opt.uses_closure: an inner solve,
    a line search) get the lines above from zero_grad to the hooks as a closure instead:
      opt.step(closure=lambda: (loss, grads))

After every step the optimizer's ``state_bytes()`` is recorded (``history["state_bytes"]``,
``peak_state_bytes``), so a run reports the optimizer memory it really held.

Around it, :meth:`Trainer.fit` adds what every run wants: the learning-rate schedule (a
multiplier from ``optim.schedules`` times each group's base lr), evaluation on fixed batches
every ``eval_every`` steps, a wall-clock budget that fits the schedule's length to the measured
speed, a tqdm bar (or log lines), the loss history, callbacks, and Ctrl-C / SIGTERM handling:
the current step finishes, :meth:`fit` returns with ``interrupted`` set, and the caller saves.

The state that makes a resumed run bit-identical to an uninterrupted one -- step, schedule
length, history, the batch generator, a stateful batch source's state (a stream's position),
every ``np.random.Generator`` held by the model (dropout), minigrad's global generator (dropout
without one of its own) and the optimizer's state -- is what
:meth:`Trainer.save` writes and :meth:`Trainer.restore` reads, through
``models.training.checkpoint``.
"""
from __future__ import annotations

import collections
import copy
import inspect
import json
import math
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

import minigrad
from minigrad import amp
import optim
from optim.sampling import stateful_source
from optim.schedules import LRScheduler, clip_grad_norm_

from .checkpoint import Checkpoint, CheckpointError, save_checkpoint

__all__ = ["Trainer", "FitResult", "Diverged", "lm_loss", "evaluate", "clip_grad_norm", "module_generators"]


def lm_loss(model, batch):
    """``loss_fn`` of a language model called as ``model(x, targets) -> (logits, loss)``."""
    x, y = batch
    return model(x, y)[1]


def evaluate(model, loss_fn, batches, autocast=None) -> float:
    """Mean loss over ``batches`` in eval mode, without a graph (the model's mode is restored)."""
    was = model.training
    model.eval()
    try:
        with minigrad.no_grad(), amp.autocast(autocast):
            losses = [float(loss_fn(model, b).item()) for b in batches]
    finally:
        model.train(was)
    return float(np.mean(losses))


def clip_grad_norm(max_norm: float, norm_type: float = 2.0):
    """A gradient hook: scale all gradients in place so their global norm is <= ``max_norm``
    (``optim.clip_grad_norm_``, torch semantics). The total norm before clipping is kept in
    ``hook.last_norm``."""
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"clip_grad_norm: max_norm must be a finite number > 0, got {max_norm!r}")

    def hook(grads):
        hook.last_norm = clip_grad_norm_(grads, max_norm, norm_type)
    hook.last_norm = None
    hook.__name__ = f"clip_grad_norm({max_norm:g})"
    return hook


def clip_grad_norm_over_ranks(comm, placement, max_norm: float, norm_type: float = 2.0, eps: float = 1e-6, *,
                              name: str = "clip_grad_norm_over_ranks"):
    """A gradient hook: :func:`clip_grad_norm` for one model whose gradients are spread over the
    ranks of ``comm`` (tensor- or pipeline-parallel), by the one-process model's norm.

    ``placement(param_name)`` says how this rank's gradient enters that norm: ``"split"`` (a part
    no other rank holds: its sum of |g|^p is all-reduced, max for the inf-norm), ``"replicated"``
    (the same on every rank: counted once, locally) or ``"elsewhere"`` (counted on another rank,
    such as a tied weight's second copy: left out). One collective of one number per step; every
    rank scales all its gradients by the same min(1, max_norm / (norm + eps)), as torch.
    ``hook.last_norm`` keeps the norm before clipping; ``name`` names the hook in errors."""
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"{name}: max_norm must be a finite number > 0, got {max_norm!r}")
    if not norm_type >= 1:
        raise ValueError(f"{name}: norm_type must be >= 1 (or inf), got {norm_type!r}")

    def hook(grads):
        named = [(n, g) for n, g in grads.items() if g is not None]
        split = [g for n, g in named if placement(n) == "split"]
        replicated = [g for n, g in named if placement(n) == "replicated"]
        if norm_type == math.inf:
            # np.max keeps a NaN, where Python's max drops one that does not come first
            local = np.max([np.max(np.abs(g)) for g in split if g.size], initial=0.0)
            rest = np.max([np.max(np.abs(g)) for g in replicated if g.size], initial=0.0)
            total = float(np.max([comm.allgather(np.array([local])).max(), rest]))
        else:
            total = (float(comm.allreduce(np.array([_power_sum(split, norm_type)]))[0])
                     + _power_sum(replicated, norm_type)) ** (1.0 / norm_type)
        hook.last_norm = total
        coef = max_norm / (total + eps)
        if math.isfinite(total) and coef < 1.0:
            for _, g in named:
                g *= g.dtype.type(coef)

    hook.last_norm = None
    hook.__name__ = f"{name}({max_norm:g})"
    return hook


def _power_sum(grads, p: float) -> float:
    """sum of |g|^p over the arrays, in float64 (as optim.clip_grad_norm_ sums them)."""
    return sum(float(np.sum(np.abs(g.astype(np.float64)) ** p)) for g in grads)


def module_generators(model) -> dict:
    """Every ``np.random.Generator`` attribute of the model's modules, by dotted name
    (a GPT's ``dropout_rng``): their states go into a checkpoint."""
    found = {}
    for mname, mod in model.named_modules():
        for attr, v in vars(mod).items():
            if isinstance(v, np.random.Generator):
                found[f"{mname}.{attr}" if mname else attr] = v
    return found


class Diverged(FloatingPointError):
    """Raised by :meth:`Trainer.fit` when a step met non-finite numbers it was told not to skip
    (an optimizer's ``nonfinite="raise"``, a zeroth-order method's non-finite loss): the message
    names the step and what was found. A ``FloatingPointError``, so code catching that still does."""


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` reports: the step reached, whether a signal stopped it early,
    whether the time budget ended it before the target (the schedule was shortened to fit, or the
    hard stop hit), the last validation loss and the wall time of the call."""

    step: int
    interrupted: bool
    out_of_time: bool
    val_loss: float
    seconds: float


class Trainer:
    """Train ``model`` with ``optimizer`` on batches drawn by ``batches(rng)``.

    model        an ``nn.Module`` (its parameters' ``.grad`` are read after backward)
    loss_fn      ``loss_fn(model, batch) -> Tensor`` (a scalar loss), e.g. :func:`lm_loss`
    optimizer    any registered optimizer built on the model's arrays (``optim.create``), or the
                 mixed-precision wrapper ``minigrad.amp.MixedPrecisionOptimizer``
    batches      ``batches(rng) -> batch``; ``rng`` is the trainer's own Generator (seeded by
                 ``seed``, saved in checkpoints), so the batch sequence is reproducible. A
                 source with a state of its own (a stream's position, as ``BPTTStreams``) has
                 ``state_dict()`` / ``load_state_dict()``, on ``batches`` or on the object it is
                 a method of (torchdata's StatefulDataLoader protocol): it is saved in
                 checkpoints and restored with them
    steps        the schedule's length (the step target)
    schedule     a name from ``optim.schedules`` ("cosine", "linear", "wsd", "step", "constant")
                 and ``schedule_kwargs`` (e.g. warmup_steps, min_ratio) without total_steps,
                 which is the current horizon (``steps``, or fewer under a time budget). Each
                 group's lr is its base lr (its lr at construction, or the saved one after
                 :meth:`restore`) times the multiplier.
    grad_hooks   callables ``hook(grads)`` run in order between backward and the step; they
                 change the dict of gradient arrays in place (see :func:`clip_grad_norm`). A hook
                 with ``state_dict()`` / ``load_state_dict()`` (error feedback's buffers) is
                 saved in checkpoints and restored with the optimizer
    eval_batches a list of batches for validation (the same every evaluation); None: no eval
    eval_every   validate before steps 0, k, 2k, ... and after the last step
    time_budget  seconds for the whole run counted from ``start_time`` (default: now); the
                 schedule is shortened to the steps that fit (measured after 40 steps, then
                 every 100), keeping ``reserve_seconds`` free for saving and sampling
    autocast     a ``minigrad.amp`` policy (or preset name) for the forward passes
    save_every   with ``save_dir``: a checkpoint (:meth:`save`, with ``save_meta``) every k steps, so
                 a crash loses at most k steps
    on_step      ``on_step(trainer)`` after every optimizer step; ``on_eval(trainer, val_loss)``
                 after every evaluation; ``on_save(trainer, path)`` after every checkpoint
                 :meth:`save` writes (files of an earlier run that go with the checkpoint it
                 replaced can go then, not before)
    reduce_stop  in a run over several processes, ``reduce_stop(flag) -> bool`` turns this
                 process's wish to stop (a Ctrl-C or SIGTERM it received, or ``interrupted`` set
                 by a callback) into the decision of all of them, as Lightning's
                 ``reduce_boolean_decision``. It is called on every rank before every step, once
                 after the last and once after the final evaluation: a signal reaches the ranks
                 at slightly different moments, and a rank that stopped one step before the
                 others would leave them waiting in that step's all-reduce. A wish it answers with
                 False ("not yet") stands until it is granted; after the last step, where no later
                 call comes, ``reduce_stop.final(flag)`` is called instead when it has one (a
                 vote that is always taken).
                 :func:`models.training.distributed.any_rank` (stop when any rank asks) is what
                 ``data_parallel_trainer`` passes; None: this process decides alone
    reduce_loss  zeroth-order optimizers only: ``reduce_loss(loss) -> loss`` applied to every
                 loss the step's closure evaluates. Data parallel passes the mean over the ranks
                 (:func:`models.training.distributed.mean_over_ranks`): each rank evaluates its
                 shard, and all take the step of the global batch's loss, as the gradient
                 all-reduce does for first-order methods
    progress     a tqdm bar; False prints a line every ``log_every`` steps (0: no lines at all,
                 e.g. on every rank but 0 of a distributed run)
    loss_label   what the bar and the lines call the step's loss ("loss"; data parallel: "shard
                 loss", the rank's part of the global batch, which ``history`` keeps as well)
    """

    def __init__(self, model, loss_fn, optimizer, batches, *, steps: int, schedule: str = "constant",
                 schedule_kwargs=None, grad_hooks=(), eval_batches=None, eval_every: int = 250,
                 time_budget: float | None = None, start_time: float | None = None,
                 reserve_seconds: float = 25.0, autocast=None, seed: int = 0, save_every=None,
                 save_dir=None, save_meta=None, on_step=None, on_eval=None, on_save=None,
                 reduce_stop=None, reduce_loss=None, progress: bool = True, log_every: int = 50, tokens_per_step=None,
                 loss_label: str = "loss"):
        if int(steps) != steps or steps < 1:
            raise ValueError(f"Trainer: steps must be an integer >= 1, got {steps!r}")
        if int(eval_every) != eval_every or eval_every < 1:
            raise ValueError(f"Trainer: eval_every must be an integer >= 1, got {eval_every!r}")
        if save_every is not None and (int(save_every) != save_every or save_every < 1 or save_dir is None):
            raise ValueError(f"Trainer: save_every must be an integer >= 1 and needs save_dir, got "
                             f"{save_every!r} and {save_dir!r}")
        if time_budget is not None and not time_budget >= 0:
            raise ValueError(f"Trainer: time_budget must be >= 0 seconds, got {time_budget!r}")
        for h in grad_hooks:
            if not callable(h):
                raise TypeError(f"Trainer: grad_hooks must be callables hook(grads), got {type(h).__name__}")
        self.model, self.loss_fn, self.optimizer, self.batches = model, loss_fn, optimizer, batches
        self.grad_hooks = list(grad_hooks)
        self.eval_batches = eval_batches
        self.eval_every = int(eval_every)
        self.time_budget = time_budget or None
        self.start_time = time.perf_counter() if start_time is None else start_time
        self.reserve_seconds = reserve_seconds
        self.autocast = autocast
        self.on_step, self.on_eval, self.on_save = on_step, on_eval, on_save
        if reduce_stop is not None and not callable(reduce_stop):
            raise TypeError(f"Trainer: reduce_stop must be a callable flag -> bool such as "
                            f"any_rank(comm), got {type(reduce_stop).__name__}")
        self.reduce_stop = reduce_stop
        if reduce_loss is not None and (not callable(reduce_loss) or optimizer.uses_gradients):
            raise TypeError(f"Trainer: reduce_loss must be a callable loss -> loss and is for zeroth-order "
                            f"optimizers only (first-order steps exchange gradients through grad_hooks); "
                            f"got {type(reduce_loss).__name__} with {type(optimizer).__name__}")
        self.reduce_loss = reduce_loss
        self.save_every, self.save_dir, self.save_meta = save_every, save_dir, save_meta
        self.progress, self.log_every, self.loss_label = progress, log_every, loss_label
        self.tokens_per_step = tokens_per_step
        self.target = int(steps)          # the step count asked for
        self.horizon = int(steps)         # the schedule's current length (<= target under a budget)
        self.step = 0
        self.rng = np.random.default_rng(seed)
        self.history = {"train_step": [], "train_loss": [], "val_step": [], "val_loss": [],
                        "state_bytes": []}
        self.schedule_name = schedule
        self.schedule_kwargs = dict(schedule_kwargs or {})
        factory = optim.schedules.get(schedule)
        self._takes_horizon = "total_steps" in inspect.signature(factory).parameters
        self._factory = factory
        self._curve = (None, None)          # (horizon, multiplier) built for that horizon
        self._multiplier(0)                 # bad schedule options fail here, not mid-run
        self.scheduler = LRScheduler(optimizer, self._multiplier)
        self._said_horizon = None
        self.interrupted = False
        self._stop_requested = False
        self.last_loss = float("nan")
        # what the user froze stays frozen; the optimizer's trainable set narrows the rest
        self._user_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        self.peak_state_bytes = 0

    # ------------------------------------------------------------------ schedule
    def _schedule_args(self):
        return {**self.schedule_kwargs, **({"total_steps": self.horizon} if self._takes_horizon else {})}

    def _multiplier(self, step):
        """The schedule's multiplier at ``step``, for the current horizon (rebuilt when it changes)."""
        if self._curve[0] != self.horizon:
            self._curve = (self.horizon, self._factory(**self._schedule_args()))
        return self._curve[1](step)

    @property
    def lr(self) -> float:
        """The first group's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------ one step
    def train_step(self, batch=None) -> float:
        """One optimizer step on ``batch`` (drawn from ``batches`` when None); returns the loss.

        The learning rate of step ``self.step`` is set first, from the current horizon."""
        opt, model = self.optimizer, self.model
        self.scheduler.set_step(self.step)
        if batch is None:
            batch = self.batches(self.rng)
        self._apply_trainable(opt.trainable_names())
        if opt.uses_gradients and opt.uses_closure:
            # methods that take several gradients per step (an inner solve, a line search)
            loss = opt.step(closure=lambda: self._loss_and_grads(batch))
        elif opt.uses_gradients:
            loss, grads = self._loss_and_grads(batch)
            opt.step(grads)
        else:
            # loss evaluations only; in eval mode, so that every evaluation of one step sees the
            # same network (no dropout masks), and without a graph (inference memory)
            was = model.training
            model.eval()
            reduce = self.reduce_loss or (lambda loss: loss)
            try:
                loss = opt.step(closure=lambda: reduce(self._forward_loss(batch)))
            finally:
                model.train(was)
        self.step += 1
        self.last_loss = float(loss)
        self.last_state_bytes = opt.state_bytes()
        self.peak_state_bytes = max(self.peak_state_bytes, self.last_state_bytes)
        return self.last_loss

    def _apply_trainable(self, names):
        """Freeze the parameters the optimizer will not update this step (None: none of them)."""
        for n, p in self.model.named_parameters():
            want = n not in self._user_frozen and (names is None or n in names)
            if p.requires_grad != want:
                p.requires_grad_(want)

    def _loss_and_grads(self, batch):
        """Forward, backward (of the loss times the optimizer's loss scale), the true gradients
        and the gradient hooks: ``(loss, {name: grad or None})`` at the current parameters."""
        opt, model = self.optimizer, self.model
        model.zero_grad()
        with amp.autocast(self.autocast):
            loss_t = self.loss_fn(model, batch)
        scale = opt.loss_scale
        if scale == 1.0:
            loss_t.backward()
        else:
            loss_t.backward(np.full(loss_t.shape, scale, dtype=loss_t.dtype))
        grads = {n: p.grad for n, p in model.named_parameters()}
        opt.unscale_(grads)
        for hook in self.grad_hooks:
            hook(grads)
        return float(loss_t.item()), grads

    def _forward_loss(self, batch) -> float:
        with minigrad.no_grad(), amp.autocast(self.autocast):
            return float(self.loss_fn(self.model, batch).item())

    def evaluate(self) -> float:
        """Validation loss on ``eval_batches``, recorded in the history at the current step."""
        v = evaluate(self.model, self.loss_fn, self.eval_batches, self.autocast)
        self.history["val_step"].append(self.step)
        self.history["val_loss"].append(v)
        if self.on_eval is not None:
            self.on_eval(self, v)
        return v

    def _evaluated_now(self) -> bool:
        return bool(self.history["val_step"]) and self.history["val_step"][-1] == self.step

    # ------------------------------------------------------------------ the loop
    def fit(self) -> FitResult:
        """Train until ``horizon`` steps are done, the time budget is spent or a signal arrives."""
        t_fit = time.perf_counter()
        first_step = self.step
        self.interrupted = False
        self._stop_requested = False                   # set by a signal; `interrupted` is the decision
        self._said_horizon = None                      # the last plan the budget's message gave
        self.schedule_fitted = False                   # whether the time budget planned the horizon
        budget = self.time_budget
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=self.horizon, initial=self.step, unit="step", dynamic_ncols=True)

        def say(msg):
            (bar.write if bar is not None else print)(msg)

        def evaluate_and_log():
            val = self.evaluate()
            if bar is None and self.log_every:
                print(f"step {self.step}: val loss {val:.4f}", flush=True)
            return val

        has_eval = self.eval_batches is not None
        val_loss = self.history["val_loss"][-1] if self.history["val_loss"] else float("nan")
        t_eval = 0.0                                   # measured cost of one evaluation
        recent = collections.deque(maxlen=200)         # durations of the latest steps
        restore = self._catch_signals()
        self.model.train()
        decided = False                                # whether the ranks have agreed to stop
        try:
            while self.step < self.horizon:
                if has_eval and self.step % self.eval_every == 0 and not self._evaluated_now():
                    t0 = time.perf_counter()
                    val_loss = evaluate_and_log()
                    t_eval = time.perf_counter() - t0
                if self._decide_stop():
                    decided = True
                    break
                t0 = time.perf_counter()
                try:
                    loss = self.train_step()
                except FloatingPointError as e:        # the step the history and the bar lack
                    of = "" if budget else f" of {self.horizon}"   # under a budget the length is a plan
                    raise Diverged(f"training diverged in step {self.step + 1}{of}: {e}") from e
                dt = time.perf_counter() - t0
                self.history["train_step"].append(self.step)
                self.history["train_loss"].append(loss)
                self.history["state_bytes"].append(self.last_state_bytes)
                if self.on_step is not None:
                    self.on_step(self)
                if self.save_every and self.step % self.save_every == 0 and self.step < self.horizon:
                    self.save(self.save_dir, self.save_meta)
                if self.step > 3:                      # skip warm-up effects (JIT, caches)
                    recent.append(dt)
                # fit the schedule into the time budget: plan after 40 timed steps (the warmup
                # does not depend on the horizon), then re-plan every 100 steps
                if budget and len(recent) >= 40 and (len(recent) == 40 or self.step % 100 == 0):
                    self._fit_horizon(sum(recent) / len(recent), t_eval, say, bar)
                speed = f" {self.tokens_per_step / dt:,.0f} tok/s" if self.tokens_per_step else ""
                if bar is not None:
                    bar.update(1)
                    val = f" val {val_loss:.3f}" if math.isfinite(val_loss) else ""   # none yet
                    bar.set_postfix_str(f"{self.loss_label} {loss:.3f}{val} lr {self.lr:.2e}{speed}", refresh=False)
                elif self.log_every and self.step % self.log_every == 0:
                    print(f"step {self.step}: {self.loss_label} {loss:.4f} lr {self.lr:.2e}{speed}", flush=True)
                if budget and time.perf_counter() - self.start_time > budget - t_eval - self.reserve_seconds:
                    break                               # hard stop: keep the budget's promise
            if not decided:                            # a signal in the last step: agreed here too
                self._decide_stop(final=True)
            # a step's gradients are checked by the next one; the last one's update is checked here
            # (on what the steps train: a frozen parameter may hold -inf on purpose, a mask)
            bad = []
            if self.step > first_step:
                bad = [n for n, p in self.model.named_parameters()
                       if n not in self._user_frozen and not np.isfinite(p.data).all()]
            if bad:
                raise Diverged(f"training diverged in step {self.step}: its update left non-finite "
                               f"weights in {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}")
            if has_eval and not self.interrupted and not self._evaluated_now():
                val_loss = evaluate_and_log()
                # a signal during it was only noted: the run is complete, but the caller (a demo
                # that trains several models) must hear it
                self._decide_stop(final=True)
            if self.step > first_step and self._evaluated_now() and not math.isfinite(val_loss):
                raise Diverged(f"training diverged by step {self.step}: the validation loss is {val_loss} "
                               f"(the weights are finite, the activations overflow)")
        finally:
            if bar is not None:
                bar.close()
            restore()
            # a block method's last step left its inactive blocks frozen: the model leaves fit()
            # as it came (a second Trainer would otherwise take them for frozen by the user)
            self._apply_trainable(None)
        self._recent = recent
        out_of_time = bool(budget) and not self.interrupted and self.step < self.target
        return FitResult(step=self.step, interrupted=self.interrupted, out_of_time=out_of_time,
                         val_loss=val_loss, seconds=time.perf_counter() - t_fit)

    def seconds_per_step(self) -> float | None:
        """Mean duration of the latest steps of the last :meth:`fit` (None before any)."""
        recent = getattr(self, "_recent", None)
        return sum(recent) / len(recent) if recent else None

    def _fit_horizon(self, per_step, t_eval, say, bar):
        self.schedule_fitted = True
        left = self.time_budget - (time.perf_counter() - self.start_time)
        # Each step costs per_step plus its share of the evaluation every eval_every steps, and
        # the evaluation after the last step comes on top: counted over the steps that fit, not
        # over the current horizon (which may be a bound no run reaches).
        evals = self.eval_batches is not None
        per_step_all = per_step + (t_eval / self.eval_every if evals else 0.0)
        room = left - (t_eval if evals else 0.0) - self.reserve_seconds - 0.05 * left   # save, sample, slack
        fit = min(self.target, self.step + max(1, int(room / per_step_all)))
        if abs(fit - self.horizon) > 0.01 * self.horizon:
            verb = "shortened" if fit < self.horizon else "lengthened"
            self.horizon = fit
            if bar is not None:
                bar.total = fit
            # said once, then only when the plan moves by 10% since it was last said: on a noisy
            # machine the re-plans every 100 steps go back and forth by a few percent
            said = self._said_horizon
            if said is None or abs(fit - said) > 0.1 * said:
                self._said_horizon = fit
                say(f"time budget {self.time_budget / 60:g} min: at {per_step:.3g} s/step the schedule "
                    f"is {verb} to {fit} steps")

    def _decide_stop(self, final: bool = False) -> bool:
        """Whether to stop now: this process's wish (a signal, or ``interrupted`` set by a
        callback), agreed among the ranks by ``reduce_stop`` when there is one (every rank calls
        it at the same points, as it is a collective). ``final``: after the last step, where no
        later vote comes, so a ``reduce_stop`` that votes only now and then (``any_rank(every=H)``)
        votes through its ``final``. Sets and returns ``interrupted``."""
        wish = self._stop_requested or self.interrupted
        self._stop_requested = wish
        reduce = self.reduce_stop
        if reduce is not None and final:
            reduce = getattr(reduce, "final", reduce)
        self.interrupted = bool(reduce(wish)) if reduce is not None else wish
        return self.interrupted

    def _catch_signals(self):
        """Ctrl-C and SIGTERM finish the current step and stop the loop; a second Ctrl-C aborts
        at once. Returns the function that puts the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None                       # signals reach only the main thread

        def on_signal(signum, frame):
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_requested = True

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore():
            for s, h in old.items():
                signal.signal(s, h)
        return restore

    # ------------------------------------------------------------------ checkpoints
    def state_meta(self) -> dict:
        """The loop's own resumable state, as JSON: step, target, horizon, schedule, RNG states."""
        return {"step": self.step, "target": self.target, "horizon": self.horizon,
                "schedule": {"name": self.schedule_name, "kwargs": self.schedule_kwargs},
                "rng": {k: g.bit_generator.state for k, g in self._generators().items()}}

    def _generators(self) -> dict:
        """Every generator a step draws from, by its checkpoint name: the batches', the model's
        own (``model.<name>``) and minigrad's global one (``default``: what dropout without an
        rng draws, as nn.LSTM's between its layers), whose state torch's trainers save too."""
        return {"batches": self.rng, "default": minigrad.default_generator,
                **{f"model.{k}": g for k, g in module_generators(self.model).items()}}

    def _stateful(self) -> dict:
        """What keeps state between steps besides the model and the optimizer, by checkpoint
        name: the gradient hooks with ``state_dict()`` (``grad_hook{i}``) and a batch source with
        ``state_dict``/``load_state_dict`` on ``batches`` or the object it is a method of
        (``batches``)."""
        parts = {f"grad_hook{i}": h for i, h in enumerate(self.grad_hooks) if hasattr(h, "state_dict")}
        source = stateful_source(self.batches)
        if source is not None:
            parts["batches"] = source
        return parts

    def save(self, out_dir, meta=None) -> str:
        """``save_checkpoint`` of the model, the optimizer, the stateful gradient hooks and batch
        source, the history and the loop's state (plus ``meta``, e.g. the tokenizer and the CLI's
        arguments)."""
        states = {k: part.state_dict() for k, part in self._stateful().items()}
        path = save_checkpoint(out_dir, self.model, self.optimizer, history=self.history,
                               meta={**(meta or {}), "trainer": self.state_meta(), "step": self.step},
                               states=states)
        if self.on_save is not None:
            self.on_save(self, path)
        return path

    def restore(self, ckpt: Checkpoint, *, target: int | None = None) -> None:
        """Continue from ``ckpt``: weights, optimizer state, history, step, target, horizon, RNGs
        and the batch source's state (a checkpoint saved without one leaves it as it is).

        ``target`` (a new step count, >= the saved step) replaces the saved one and the schedule
        spans it again (also a run a time budget cut short); without it the run finishes where
        the saved schedule ends. Raises CheckpointError when the checkpoint does not fit this
        run: another model config or parameter dtype, another rank's shard of a split model
        (``shard_meta()``), another schedule, other names or shapes,
        another optimizer class or one built with other options than its groups hold (MeZO's eps,
        LoZO's rank, a mixed-precision format or scaler), other gradient hooks, a batch source's
        state this one cannot take (the saved groups' hyperparameters, lr and betas, are taken). A
        refused checkpoint leaves the trainer, the model, the optimizer and the batch source as
        they were."""
        self._check_same_run(ckpt)
        weights = {n: p.data.copy() for n, p in self.model.named_parameters()}
        opt_state = copy.deepcopy(self.optimizer.state_dict())
        parts = self._stateful()
        part_states = {k: copy.deepcopy(part.state_dict()) for k, part in parts.items()}
        generators = self._generators()
        rng_states = {k: copy.deepcopy(g.bit_generator.state) for k, g in generators.items()}
        fields = (self.step, self.target, self.horizon, copy.deepcopy(self.history), self.peak_state_bytes)
        try:
            self._restore(ckpt, target)
        except CheckpointError:
            for n, p in self.model.named_parameters():
                p.data[...] = weights[n]
            self.optimizer.load_state_dict(opt_state)
            for k, part in parts.items():
                part.load_state_dict(part_states[k])
            for k, g in generators.items():
                g.bit_generator.state = rng_states[k]
            self.step, self.target, self.horizon, self.history, self.peak_state_bytes = fields
            raise

    def _check_same_run(self, ckpt: Checkpoint) -> None:
        """The checks that need no change: the model's config, the part of a split model it is
        (``shard_meta()``), its parameters' dtypes and the schedule are the saved ones (names and
        shapes are load_state_dict's)."""
        saved = (ckpt.meta.get("model") or {}).get("config")
        config = getattr(self.model, "config", None)
        mine = config.to_dict() if hasattr(config, "to_dict") else None
        if saved is not None and mine is not None and saved != mine:
            diff = ", ".join(f"{k}: saved {saved.get(k)!r}, this model {mine.get(k)!r}"
                             for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k))
            raise CheckpointError(f"checkpoint {ckpt.path} is of another model ({diff}); resume into the "
                                  f"model it was saved from (Checkpoint.build_model() rebuilds it)")
        # A tensor-parallel shard has the same names and shapes on every rank: only the recorded
        # part tells rank 1's checkpoint from rank 0's (all ranks saving into one directory
        # left the last writer's shard, which a restore then put on every rank).
        saved = (ckpt.meta.get("model") or {}).get("shard")
        mine = self.model.shard_meta() if hasattr(self.model, "shard_meta") else None
        if saved is None and mine is not None:
            saved = self._shard_of_an_older_checkpoint(ckpt, mine)
        if saved != mine:
            def part(shard):
                return "the whole model" if shard is None else ", ".join(f"{k}={v}" for k, v in shard.items())
            raise CheckpointError(f"checkpoint {ckpt.path} holds {part(saved)}, this model is {part(mine)}; "
                                  f"each rank resumes from its own checkpoint (save into "
                                  f"models.training.distributed.rank_dir(save_dir, rank) and resume with "
                                  f"restore_ranks)")
        for n, p in self.model.named_parameters():
            if n in ckpt.params and ckpt.params[n].dtype != p.data.dtype:
                raise CheckpointError(f"checkpoint {ckpt.path}: {n} was saved as {ckpt.params[n].dtype}, this "
                                      f"model holds {p.data.dtype}; build the model with the saved dtype")
        schedule = (ckpt.meta.get("trainer") or {}).get("schedule")
        mine = {"name": self.schedule_name, "kwargs": json.loads(json.dumps(self.schedule_kwargs))}
        if schedule is not None and schedule != mine:
            raise CheckpointError(f"checkpoint {ckpt.path} was trained with schedule {schedule}, this "
                                  f"trainer has {mine}; resume with the same schedule")

    def _shard_of_an_older_checkpoint(self, ckpt: Checkpoint, mine: dict) -> dict:
        """The shard of a checkpoint of this model's class saved before shards were recorded: its
        save_meta's rank and world_size say which, when they are this model's tensor-parallel ones
        (the documented per-rank save); else a CheckpointError saying it cannot be told."""
        model = ckpt.meta.get("model") or {}
        rank, size = ckpt.meta.get("rank"), ckpt.meta.get("world_size")
        if model.get("class") == type(self.model).__name__ and list(mine.values()) == [rank, size]:
            return mine
        raise CheckpointError(f"checkpoint {ckpt.path} of a {model.get('class', 'model')} was saved before "
                              f"shards were recorded and does not say which shard it holds (its save_meta: "
                              f"rank={rank}, world_size={size}); this model is "
                              + ", ".join(f"{k}={v}" for k, v in mine.items())
                              + "; resume each rank from the checkpoint it saved itself")

    def _restore(self, ckpt: Checkpoint, target) -> None:
        try:
            self.model.load_state_dict(ckpt.params, strict=True)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: {e}") from None
        if ckpt.optimizer_state is None:
            raise CheckpointError(f"checkpoint {ckpt.path} holds no optimizer state to resume from")
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: its optimizer state does not fit "
                                  f"{type(self.optimizer).__name__} ({e})") from None
        parts = self._stateful()
        hooks = {k: h for k, h in parts.items() if k.startswith("grad_hook")}
        saved = {k for k in ckpt.states if k.startswith("grad_hook")}
        if saved != set(hooks):
            have = ", ".join(f"{k} = {h!r}" for k, h in hooks.items()) or "none"
            raise CheckpointError(f"checkpoint {ckpt.path} was saved with stateful gradient hooks "
                                  f"{', '.join(sorted(saved)) or 'none'}, this trainer has {have}; "
                                  f"resume with the same gradient hooks")
        if "batches" in ckpt.states and "batches" not in parts:
            raise CheckpointError(f"checkpoint {ckpt.path} holds the state of a batch source, this "
                                  f"trainer's batches keep none; resume with the same batches")
        for key, part in parts.items():
            if key not in ckpt.states:     # a batch source saved before sources were: it stays as it is
                continue
            try:
                part.load_state_dict(ckpt.states[key])
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"checkpoint {ckpt.path}: the saved state of {key} does not fit "
                                      f"this {type(part).__name__} ({e})") from None
        tm = ckpt.meta.get("trainer") or {}
        rng = tm.get("rng") or {}
        try:
            self.step, self.target, self.horizon = int(tm["step"]), int(tm["target"]), int(tm["horizon"])
            for k, g in self._generators().items():
                if k != "default" or k in rng:         # checkpoints before 2026-12-07 lack it
                    g.bit_generator.state = rng[k]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: incomplete trainer state ({e})") from None
        if target is not None:                         # a new target: the schedule spans it again
            if target < self.step:
                raise CheckpointError(f"checkpoint {ckpt.path} reached step {self.step}; a target of "
                                      f"{target} steps is behind it")
            self.target = self.horizon = int(target)
        self.history = {k: list(v) for k, v in ckpt.history.items()}
        for k in ("train_step", "train_loss", "val_step", "val_loss", "state_bytes"):
            self.history.setdefault(k, [])
        self.peak_state_bytes = int(max(self.history["state_bytes"], default=0))
