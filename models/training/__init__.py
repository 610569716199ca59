"""The training layer: one loop, one checkpoint format, for every model and optimizer.

It sits above ``minigrad`` (the autodiff core) and ``optim`` (optimizers on raw arrays); neither
imports it. The CLIs in ``demos/`` are thin wrappers around it.

* :class:`Trainer` -- the loop (``trainer.py``): ``loss_fn(model, batch) -> Tensor``, batches
  drawn by ``batches(rng)``, any registered optimizer through one step protocol, a schedule from
  ``optim.schedules``, gradient hooks, evaluation, time budget, progress, Ctrl-C/SIGTERM.
* :func:`save_checkpoint` / :func:`load_checkpoint` -- the checkpoint format (``checkpoint.py``).
* :func:`plot_history` -- the loss curves of a run; :func:`pyplot` / :func:`save_figure` -- the
  Agg backend and the save-and-close every demo figure goes through (``plots.py``).
* :func:`step_memory` / :func:`forward_memory` -- the measured peak memory of one training step
  or forward pass, split into parameters, gradients, optimizer state and the rest (``profile.py``).

    from models.training import Trainer, lm_loss, clip_grad_norm
    trainer = Trainer(model, lm_loss, opt, lambda rng: data.get_batch("train", 16, rng),
                      steps=1000, schedule="cosine", schedule_kwargs=dict(warmup_steps=60, min_ratio=0.1),
                      grad_hooks=[clip_grad_norm(1.0)], eval_batches=val, eval_every=250)
    result = trainer.fit()
    trainer.save("out", meta={"tokenizer": data.tokenizer.to_dict()})
"""
from .checkpoint import (CKPT, FORMAT_VERSION, MANIFEST, Checkpoint, CheckpointError, checkpoint_path,
                         load_checkpoint, load_matching_checkpoint, save_checkpoint)
from .plots import plot_history, pyplot, save_figure
from .profile import StepMemory, forward_memory, step_memory
from .trainer import Diverged, FitResult, Trainer, clip_grad_norm, evaluate, lm_loss, module_generators

__all__ = ["Trainer", "FitResult", "Diverged", "lm_loss", "evaluate", "clip_grad_norm", "module_generators",
           "save_checkpoint", "load_checkpoint", "load_matching_checkpoint", "Checkpoint", "CheckpointError", "checkpoint_path",
           "FORMAT_VERSION", "CKPT", "MANIFEST", "plot_history", "pyplot", "save_figure", "step_memory", "forward_memory",
           "StepMemory"]
