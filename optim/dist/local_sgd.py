"""Local SGD and post-local SGD: H local steps per worker, then one parameter average.

Local SGD (Stich, 2019, arXiv 1805.09767): every worker runs H steps of its optimizer on its own
data, then all workers replace their parameters by the average over the workers:

    x_i <- x_i - lr * g_i(x_i)          H times, on each worker i, no communication
    x_i <- mean_j x_j                   one all-reduce

so T steps cost T/H communication rounds instead of T. With H = 1 and plain SGD this is
synchronous data-parallel SGD: mean_j (x - lr*g_j) = x - lr*mean_j g_j (equal up to rounding).

Post-local SGD (Lin, Stich, Patel, Jaggi, 2020, arXiv 1808.07217): synchronous data parallelism
(gradients all-reduced every step) for the first ``switch_step`` steps, then local SGD with H.

:class:`LocalSGD` wraps any registered optimizer and follows the step protocol of ``optim.base``,
so the one training loop (``models.training.Trainer``) runs it like any optimizer and its step
counter travels in the optimizer's checkpoint state. The wrapped optimizer's state (momentum,
Adam's moments) stays local to each worker and is never averaged -- as in Lin et al. and
``torch.distributed.optim.PostLocalSGDOptimizer`` -- so with a stateful optimizer the workers'
states drift apart between averages; only the parameters are synchronised.

    opt = LocalSGD(optim.create("adamw", params, lr=1e-3), comm, local_steps=8, switch_step=100)
    Trainer(..., optimizer=opt, grad_hooks=[opt.grad_hook, clip_grad_norm(1.0)])

:func:`compare_local_steps` measures loss against communication rounds for several H on a
heterogeneous least-squares problem (plain arrays for a plot).
"""
from __future__ import annotations

import numpy as np

import optim

from .comm import LayoutCheck
from .data_parallel import allreduce_mean_
from .problems import HeterogeneousLeastSquares

__all__ = ["LocalSGD", "compare_local_steps"]


class LocalSGD:
    """Local SGD (``switch_step=0``) or post-local SGD around ``optimizer`` on communicator ``comm``.

    optimizer     any registered optimizer (or a wrapper with the same step protocol), built on
                  this worker's parameter arrays; its state stays local (never communicated)
    local_steps   H: the parameters are averaged after every H-th step of the local phase
    switch_step   steps 1 .. switch_step are synchronous data parallel: :attr:`grad_hook` must be
                  among the loop's gradient hooks (first), and it all-reduces the gradients in that
                  phase (a no-op afterwards); needs a first-order optimizer

    Counters (saved in ``state_dict``): ``steps`` taken, ``averaging_rounds`` (parameter
    all-reduces), ``gradient_rounds`` (gradient all-reduces of the synchronous phase), and
    ``comm_rounds``, their sum. After T local steps ``averaging_rounds`` is T // H; when T is not
    a multiple of H the workers end apart: call :meth:`average_parameters` once more.
    """

    def __init__(self, optimizer, comm, local_steps: int, switch_step: int = 0):
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "step"):
            raise TypeError(f"LocalSGD wraps an optimizer with param_groups and step(), got "
                            f"{type(optimizer).__name__}")
        if int(local_steps) != local_steps or local_steps < 1:
            raise ValueError(f"LocalSGD: local_steps (H) must be an integer >= 1, got {local_steps!r}")
        if int(switch_step) != switch_step or switch_step < 0:
            raise ValueError(f"LocalSGD: switch_step must be an integer >= 0, got {switch_step!r}")
        if switch_step and not optimizer.uses_gradients:
            raise ValueError(f"LocalSGD: switch_step={switch_step} asks for gradient all-reduces, but "
                             f"{type(optimizer).__name__} takes no gradients (zeroth order); use "
                             f"switch_step=0")
        self.optimizer, self.comm = optimizer, comm
        self.local_steps, self.switch_step = int(local_steps), int(switch_step)
        self.steps = 0
        self.averaging_rounds = 0
        self.gradient_rounds = 0
        self._grads_reduced = False     # the hook averaged this step's gradients
        self._check_grads = LayoutCheck(comm, "LocalSGD.grad_hook")
        self._check_params = LayoutCheck(comm, "LocalSGD.average_parameters")

    # -- the schedule of communication ------------------------------------------------------
    @property
    def synchronous(self) -> bool:
        """True while the coming step belongs to the data-parallel phase (before ``switch_step``)."""
        return self.steps < self.switch_step

    @property
    def comm_rounds(self) -> int:
        """All-reduces so far: gradient rounds plus parameter-averaging rounds."""
        return self.averaging_rounds + self.gradient_rounds

    def grad_hook(self, grads) -> None:
        """Gradient hook: averages the gradients across workers in the synchronous phase (in
        place), does nothing in the local phase."""
        if self.synchronous:
            self._check_grads(grads)
            allreduce_mean_(self.comm, grads)
            self.gradient_rounds += 1
            self._grads_reduced = True

    def average_parameters(self) -> None:
        """Replace every worker's parameters by their mean over the workers (one all-reduce). A
        wrapped optimizer that keeps the model's arrays apart from the ones it moves (the FP32
        masters of ``amp.MixedPrecisionOptimizer``) rewrites the model from the average."""
        params = self.params
        self._check_params(params)
        allreduce_mean_(self.comm, params)
        sync_model = getattr(self.optimizer, "sync_model_", None)
        if sync_model is not None:
            sync_model()
        self.averaging_rounds += 1

    @property
    def params(self) -> dict:
        """The wrapped optimizer's live parameter arrays, by name."""
        return {n: p for g in self.optimizer.param_groups for n, p in g["params"].items()}

    def _check_reduced(self):
        if not self._grads_reduced:
            raise RuntimeError(f"LocalSGD: step {self.steps + 1} is in the synchronous phase (steps "
                               f"1..{self.switch_step}) but its gradients were not all-reduced; put "
                               f"the wrapper's grad_hook first in the training loop's grad_hooks")

    # -- the step protocol (optim.base) -----------------------------------------------------
    def step(self, grads=None, closure=None):
        """One step of the wrapped optimizer, then a parameter average after every H-th local step."""
        synchronous = self.synchronous
        if synchronous and grads is not None:
            self._check_reduced()                  # before any parameter moves
        loss = self.optimizer.step(grads, closure=closure)
        if synchronous:
            self._check_reduced()                  # a closure ran the hook inside the step
            self._grads_reduced = False
        self.steps += 1
        local = self.steps - self.switch_step
        if local > 0 and local % self.local_steps == 0:
            self.average_parameters()
        return loss

    @property
    def uses_gradients(self) -> bool:
        return self.optimizer.uses_gradients

    @property
    def uses_closure(self) -> bool:
        return self.optimizer.uses_closure

    @property
    def param_groups(self) -> list:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict:
        return self.optimizer.state

    @property
    def loss_scale(self) -> float:
        return self.optimizer.loss_scale

    def unscale_(self, grads) -> None:
        self.optimizer.unscale_(grads)

    def trainable_names(self):
        return self.optimizer.trainable_names()

    @property
    def last_step_skipped(self) -> bool:
        return self.optimizer.last_step_skipped

    def state_bytes(self) -> int:
        """The wrapped optimizer's state: Local SGD itself keeps no arrays."""
        return self.optimizer.state_bytes()

    def expected_state_bytes(self) -> int:
        return self.optimizer.expected_state_bytes()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "local_sgd": {"steps": self.steps, "averaging_rounds": self.averaging_rounds,
                              "gradient_rounds": self.gradient_rounds}}

    def load_state_dict(self, sd) -> None:
        counters = sd["local_sgd"]
        self.optimizer.load_state_dict(sd["optimizer"])
        self.steps = int(counters["steps"])
        self.averaging_rounds = int(counters["averaging_rounds"])
        self.gradient_rounds = int(counters["gradient_rounds"])
        self._grads_reduced = False

    def __repr__(self):
        return (f"LocalSGD({type(self.optimizer).__name__}, local_steps={self.local_steps}, "
                f"switch_step={self.switch_step}, size={self.comm.size}, steps={self.steps})")


# ------------------------------------------------------------------ the measured experiment
def compare_local_steps(comm, local_steps=(1, 4, 16), steps: int = 480, lr: float = 0.05,
                        batch_size: int = 4, optimizer: str = "sgd", heterogeneity: float = 0.5,
                        seed: int = 0, **optimizer_kw) -> dict:
    """Local SGD on ``HeterogeneousLeastSquares(comm.size, 20, rows=200,
    heterogeneity=heterogeneity, seed=seed)``, run on ``comm`` (call it on every rank) for each H
    in ``local_steps``, ``steps`` local steps each, from x = 0, with ``optimizer`` (any
    registered name; ``optimizer_kw`` are its options) on each worker.

    Each local step takes the gradient of ``batch_size`` rows of the worker's own data, drawn with
    replacement (None: all its rows, a deterministic gradient). With deterministic gradients H = 1
    is gradient descent on the global objective and reaches f*, while H > 1 stops at a floor that
    grows with H: between averages each worker drifts towards its own optimum (client drift).

    Returns ``{H: {"rounds": r, "loss": f(x_r) - f*, "bytes_sent": b}}``, arrays over the
    averaging rounds r = 0 .. steps // H (round 0: the start), ``bytes_sent`` this rank's bytes
    after each round. The same for every rank (the parameters are equal after an average)."""
    problem = HeterogeneousLeastSquares(comm.size, 20, rows=200, heterogeneity=heterogeneity,
                                        seed=seed)
    out = {}
    for H in local_steps:
        x = np.zeros(problem.shape)
        opt = LocalSGD(optim.create(optimizer, {"x": x}, lr=lr, **optimizer_kw), comm, local_steps=H)
        rng = np.random.default_rng([seed, comm.rank, 1])
        start = comm.bytes_sent
        loss, sent = [problem.loss_gap(x)], [0]
        for _ in range(steps):
            rows = None if batch_size is None else rng.integers(0, problem.rows, size=batch_size)
            opt.step({"x": problem.gradient(comm.rank, x, rows)})
            if opt.steps % H == 0:
                loss.append(problem.loss_gap(x))
                sent.append(comm.bytes_sent - start)
        out[H] = {"rounds": np.arange(len(loss)), "loss": np.array(loss), "bytes_sent": np.array(sent)}
    return out
