"""Zeroth-order optimization (lecture 9): gradient estimators from function values, and the
optimizers ZO-SGD (``"zo-sgd"``), MeZO (``"mezo"``) and LoZO/LoZO-M (``"lozo"``), which train
from forward passes only, via ``opt.step(closure=loss_fn)``.

    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("mezo", params, lr=1e-5, eps=1e-3, seed=0)
    def loss_fn():                      # the same minibatch on every call of one step
        with minigrad.no_grad():
            return model(x, y)          # a scalar loss (float or 0-d Tensor)
    for _ in range(steps):
        x, y = next(batches)
        opt.step(closure=loss_fn)

See estimators.py (what each estimator estimates, and its variance), base.py (seeds, restore
error bound), mezo.py, lozo.py, zo_sgd.py.
"""
from .base import ZerothOrderOptimizer
from .estimators import (central_variance, coordinate_estimate, gaussian_direction,
                         gaussian_estimate, lowrank_estimate, sphere_direction, sphere_estimate)
from .lozo import LoZO
from .mezo import MeZO
from .zo_sgd import ZOSGD

__all__ = ["ZerothOrderOptimizer", "ZOSGD", "MeZO", "LoZO", "coordinate_estimate",
           "gaussian_estimate", "sphere_estimate", "lowrank_estimate", "gaussian_direction",
           "sphere_direction", "central_variance"]
