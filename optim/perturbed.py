"""Perturbed gradient descent for escaping strict saddle points (Lecture 6).

Jin, Ge, Netrapalli, Kakade, Jordan, "How to Escape Saddle Points Efficiently", ICML 2017,
arXiv 1703.00887 (Algorithm 2, PGD): take gradient steps; when the gradient is small
(||g|| <= g_thres) and no perturbation happened in the last t_thres iterations, add noise xi
drawn uniformly from the ball of radius r (over ALL parameters jointly), then continue with
gradient steps. Near a strict saddle the noise has a component along the negative-curvature
direction, which GD amplifies.

Differences from the paper, on purpose:
* A perturbation uses one ``step`` call on its own (x <- x + xi, no gradient step), because the
  gradient passed in was computed at the unperturbed point; the next call's gradient is
  evaluated at the perturbed point.
* The paper's stopping rule (return x_tilde if f did not decrease by f_thres within t_thres
  steps after a perturbation) is not implemented: the optimizer only moves parameters.
* ``noise="always"`` gives the noisy (S)GD of Ge, Huang, Jin, Yuan (COLT 2015, arXiv
  1503.02101): x <- x - lr*(g + xi) with xi uniform on the sphere of radius r at every step.
With stochastic gradients either mode is a perturbed SGD. ``weight_decay`` adds wd*x to the
gradient (L2, coupled, as torch.optim.SGD) before the noise.

The noise generator's state is part of ``state_dict`` (resume is bit-identical).
"""
from __future__ import annotations

import json
import math

import numpy as np

from .base import Optimizer, register
from .schedules import global_grad_norm

__all__ = ["PerturbedGD", "jin_parameters"]


def jin_parameters(ell, rho, eps, delta_f, d, c=1.0, delta=0.1):
    """The constants of PGD (Jin et al. 2017, Alg. 2) for an ell-gradient-Lipschitz,
    rho-Hessian-Lipschitz f with f(x0) - f* <= delta_f in dimension d. [unverified: check against
    Jin et al. 2017 (arXiv 1703.00887), Algorithm 2, before relying on the exact constants]"""
    chi = 3.0 * max(math.log(d * ell * delta_f / (c * eps ** 2 * delta)), 4.0)
    return {"lr": c / ell,
            "radius": math.sqrt(c) * eps / (chi ** 2 * ell),
            "g_thres": math.sqrt(c) * eps / chi ** 2,
            "f_thres": (c / chi ** 3) * math.sqrt(eps ** 3 / rho),
            "t_thres": int(math.ceil((chi / c ** 2) * ell / math.sqrt(rho * eps)))}


@register("perturbed_gd", "pgd", "perturbed_sgd")
class PerturbedGD(Optimizer):
    """Perturbed GD/SGD. ``noise="threshold"`` (Jin et al. 2017): perturb with xi ~ U(ball(radius))
    when ||g|| <= g_thres and more than t_thres steps passed since the last perturbation;
    ``noise="always"`` (Ge et al. 2015): x <- x - lr*(g + xi), xi ~ U(sphere(radius)).
    ``opt.perturbations`` counts the perturbations. A call that perturbs does nothing else
    (``last_step_skipped`` is False: the parameters moved). The thresholds, radius, noise mode
    and seed are per optimizer (a param group cannot set them). Memory: 0 (plus the RNG state)."""

    _saved_options = ("g_thres", "radius", "t_thres", "noise")

    def __init__(self, params, lr=1e-2, g_thres=1e-3, radius=1e-2, t_thres=10, noise="threshold",
                 seed=0, weight_decay=0.0, *, nonfinite="raise"):
        if noise not in ("threshold", "always"):
            raise ValueError(f"noise must be 'threshold' or 'always', got {noise!r}")
        if radius < 0 or g_thres < 0 or t_thres < 0:
            raise ValueError("radius, g_thres and t_thres must be >= 0")
        super().__init__(params, lr=lr, weight_decay=weight_decay, nonfinite=nonfinite)
        self.g_thres, self.radius, self.t_thres, self.noise = g_thres, radius, int(t_thres), noise
        self._rng = np.random.default_rng(seed)
        self.global_state.update(t=0, t_noise=-(self.t_thres + 1), perturbations=0,
                                 rng=json.dumps(self._rng.bit_generator.state))
        self._xi = None

    @property
    def perturbations(self):
        return self.global_state["perturbations"]

    def _direction(self, names, ball):
        """A joint sample, as dict name -> array: uniform in the ball (or on the sphere)."""
        params = self.params
        z = {n: self._rng.standard_normal(params[n].shape) for n in names}
        norm = global_grad_norm(z)
        d = sum(v.size for v in z.values())
        scale = self.radius / max(norm, 1e-300)
        if ball:
            scale *= self._rng.random() ** (1.0 / d)
        self.global_state["rng"] = json.dumps(self._rng.bit_generator.state)
        return {n: (v * scale).astype(params[n].dtype) for n, v in z.items()}

    def _begin_step(self, grads):
        gs = self.global_state
        names = [n for n, g in grads.items() if g is not None]
        t = gs["t"]
        gs["t"] = t + 1
        if self.noise == "always":
            self._xi = self._direction(names, ball=False)
            return True
        self._xi = None
        gnorm = global_grad_norm(self._objective_grads(grads))
        if gnorm <= self.g_thres and t - gs["t_noise"] > self.t_thres:
            xi = self._direction(names, ball=True)
            params = self.params
            for n in names:
                params[n] += xi[n]
            gs["t_noise"] = t
            gs["perturbations"] += 1
            return False          # this call only perturbs
        return True

    def _objective_grads(self, grads):
        """g + wd*x: the gradient of f + wd/2 ||x||^2, whose norm the threshold test uses."""
        out = dict(grads)
        for group in self.param_groups:
            if group["weight_decay"]:
                for n, p in group["params"].items():
                    if grads[n] is not None:
                        out[n] = grads[n] + group["weight_decay"] * p
        return out

    def _update(self, name, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        if self._xi is not None:
            g = g + self._xi[name]
        p -= group["lr"] * g

    def _state_nbytes(self, p, group):
        return 0

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self._rng.bit_generator.state = json.loads(self.global_state["rng"])
