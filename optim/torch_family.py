"""The rest of torch.optim: NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop and L-BFGS.

Each one follows ``torch.optim.X`` (its single-tensor, ``foreach=False`` code path) step for
step, with the same argument names and defaults (``maximize`` too; not torch's ``foreach``,
``capturable``, ``differentiable``, which choose how it runs, not what it computes); the tests
compare 25 float64 steps with torch's own to a relative 1e-10. Where torch has no
``weight_decay`` (Rprop, L-BFGS) it is added here, default 0 giving torch exactly: decoupled for
Rprop (``theta <- theta*(1 - lr*wd)``, since an L2 term in the gradient acts only when it flips a
sign), and L2 on the objective for L-BFGS.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Optimizer, check_betas, check_count, check_eps, register

__all__ = ["NAdam", "RAdam", "Adamax", "Adadelta", "ASGD", "Rprop", "LBFGS"]


def _l2(p, g, group):
    """``g + wd*theta`` (coupled weight decay), or ``g`` itself without decay."""
    return g + group["weight_decay"] * p if group["weight_decay"] else g


def _weight_decay(p, g, group):
    """Weight decay as the group says: decoupled (``theta <- theta*(1 - lr*wd)`` in place, the
    gradient returned as it is) or coupled (the gradient ``g + wd*theta`` returned)."""
    if group["weight_decay"] and group["decoupled_weight_decay"]:
        p *= 1.0 - group["lr"] * group["weight_decay"]
        return g
    return _l2(p, g, group)


@register("nadam")
class NAdam(Optimizer):
    """NAdam, Adam with Nesterov momentum (Dozat, ICLR 2016 workshop, "Incorporating Nesterov
    Momentum into Adam"), torch.optim.NAdam semantics, step t = 1, 2, ...:

        g <- g + wd*theta                  (or decoupled: theta <- theta*(1 - lr*wd))
        mu_t = b1 * (1 - 0.5 * 0.96^(t*momentum_decay))      (the momentum schedule)
        prod_t = mu_1 * ... * mu_t
        m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;  denom = sqrt(v/(1-b2^t)) + eps
        theta <- theta - lr*(1-mu_t)/(1-prod_t) * g/denom
                       - lr*mu_{t+1}/(1-prod_t*mu_{t+1}) * m/denom

    ``decoupled_weight_decay=True`` is NAdamW (the AdamW rule for the decay). The product of the
    mu's is kept per parameter (``mu_product``), as torch does. Memory: 2N."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False,
                 nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         momentum_decay=momentum_decay,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_betas(group["betas"], "NAdam")
        check_eps(group["eps"], "NAdam")
        if not group["momentum_decay"] >= 0:
            raise ValueError(f"momentum_decay must be >= 0, got {group['momentum_decay']!r}")

    def decays_decoupled(self, group) -> bool:
        return bool(group["decoupled_weight_decay"])

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        b1, b2 = group["betas"]
        lr = group["lr"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["mu_product"] = 1.0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        g = _weight_decay(p, g, group)
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * group["momentum_decay"]))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * group["momentum_decay"]))
        state["mu_product"] *= mu
        mu_product = state["mu_product"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - b1) * (g - m)        # torch's lerp
        v *= b2
        v += (1.0 - b2) * (g * g)
        denom = np.sqrt(v / (1.0 - b2 ** t)) + group["eps"]
        p -= (lr * (1.0 - mu) / (1.0 - mu_product)) * (g / denom)
        p -= (lr * mu_next / (1.0 - mu_product * mu_next)) * (m / denom)

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("radam")
class RAdam(Optimizer):
    """RAdam, rectified Adam (Liu et al., ICLR 2020, arXiv 1908.03265), torch.optim.RAdam
    semantics, step t = 1, 2, ...:

        g <- g + wd*theta                  (or decoupled: theta <- theta*(1 - lr*wd))
        m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;  m_hat = m/(1-b1^t)
        rho_inf = 2/(1-b2) - 1;  rho_t = rho_inf - 2 t b2^t/(1-b2^t)
        rho_t > 5:  r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
                    theta <- theta - lr * m_hat * r_t * sqrt(1-b2^t)/(sqrt(v) + eps)
        else:       theta <- theta - lr * m_hat            (SGD with momentum, while the
                                                            variance estimate is unreliable)

    With the default b2 = 0.999 the first 5 steps are the un-adapted momentum steps. Note eps sits
    on the uncorrected sqrt(v) here, unlike torch's Adam. Memory: 2N."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                         nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_betas(group["betas"], "RAdam")
        check_eps(group["eps"], "RAdam")

    def decays_decoupled(self, group) -> bool:
        return bool(group["decoupled_weight_decay"])

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        b1, b2 = group["betas"]
        lr = group["lr"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        g = _weight_decay(p, g, group)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - b1) * (g - m)
        v *= b2
        v += (1.0 - b2) * (g * g)
        m_hat = m / (1.0 - b1 ** t)
        bias_correction2 = 1.0 - b2 ** t
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2 ** t / bias_correction2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                             / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            adaptive = math.sqrt(bias_correction2) / (np.sqrt(v) + group["eps"])
            p -= m_hat * lr * adaptive * rect
        else:
            p -= m_hat * lr

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("adamax")
class Adamax(Optimizer):
    """Adamax, Adam in the infinity norm (Kingma & Ba, ICLR 2015, arXiv 1412.6980, section 7.1),
    torch.optim.Adamax semantics:

        g <- g + wd*theta
        m <- b1*m + (1-b1)*g;  u <- max(b2*u, |g| + eps)
        theta <- theta - (lr/(1-b1^t)) * m/u

    eps sits inside the max, so u > 0 from the first step. Memory: 2N."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_betas(group["betas"], "Adamax")
        check_eps(group["eps"], "Adamax")

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        b1, b2 = group["betas"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_inf"] = np.zeros_like(p)
        state["step"] += 1
        g = _l2(p, g, group)
        m, u = state["exp_avg"], state["exp_inf"]
        m += (1.0 - b1) * (g - m)
        u *= b2
        np.maximum(u, np.abs(g) + group["eps"], out=u)
        p -= (group["lr"] / (1.0 - b1 ** state["step"])) * (m / u)

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("adadelta")
class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012, arXiv 1212.5701), torch.optim.Adadelta semantics:

        g <- g + wd*theta
        v <- rho*v + (1-rho)*g^2
        delta = sqrt(u + eps)/sqrt(v + eps) * g        (u: the running average of delta^2)
        u <- rho*u + (1-rho)*delta^2
        theta <- theta - lr*delta

    The paper has no learning rate (lr = 1, torch's default); the first step moves each
    coordinate by about sqrt(eps/(1-rho)) = 3.2e-3 in the direction of -g (eps = 1e-6). Memory: 2N."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False,
                 nonfinite="raise"):
        super().__init__(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                         maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        if not 0.0 <= group["rho"] <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {group['rho']!r}")
        check_eps(group["eps"], "Adadelta")

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        rho, eps = group["rho"], group["eps"]
        if "square_avg" not in state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p)
            state["acc_delta"] = np.zeros_like(p)
        state["step"] += 1
        g = _l2(p, g, group)
        v, u = state["square_avg"], state["acc_delta"]
        v *= rho
        v += (1.0 - rho) * (g * g)
        delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u *= rho
        u += (1.0 - rho) * (delta * delta)
        p -= group["lr"] * delta

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


@register("asgd")
class ASGD(Optimizer):
    """Averaged SGD (Polyak & Juditsky, SIAM J. Control Optim. 1992; the step-size schedule of
    Bottou, "Stochastic Gradient Descent Tricks", 2012), torch.optim.ASGD semantics, step t = 1, 2, ...
    with eta_1 = lr, mu_1 = 1:

        g <- g + wd*theta
        theta <- theta*(1 - lambd*eta_t) - eta_t*g
        ax <- ax + mu_t*(theta - ax)                   (ax <- theta while mu_t = 1)
        eta_{t+1} = lr / (1 + lambd*lr*t)^alpha;  mu_{t+1} = 1/max(1, t - t0)

    The parameters follow the SGD iterates; the average ``ax`` (``state[name]["ax"]``) is the
    estimate to evaluate: it starts averaging after t0 steps (default 1e6, i.e. a plain copy
    of theta in short runs). eta is computed from the group's lr at the previous step, as in
    torch. Memory: N."""

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, *,
                 maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                         weight_decay=weight_decay, maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        for key in ("lambd", "alpha", "t0"):
            if not group[key] >= 0:
                raise ValueError(f"{key} must be >= 0, got {group[key]!r}")

    def reads_parameters(self, group) -> bool:
        return True                                    # theta*(1 - lambd*eta) and the average ax

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        lr, lambd = group["lr"], group["lambd"]
        if "ax" not in state:
            state["step"] = 0
            state["eta"] = float(lr)
            state["mu"] = 1.0
            state["ax"] = np.zeros_like(p)
        state["step"] += 1
        t, eta, mu = state["step"], state["eta"], state["mu"]
        g = _l2(p, g, group)
        p *= 1.0 - lambd * eta
        p -= eta * g
        ax = state["ax"]
        if mu != 1:
            ax += (p - ax) * mu
        else:
            ax[...] = p
        state["eta"] = lr / (1.0 + lambd * lr * t) ** group["alpha"]
        state["mu"] = 1.0 / max(1.0, t - group["t0"])

    def _state_nbytes(self, p, group):
        return p.nbytes


@register("rprop")
class Rprop(Optimizer):
    """Rprop, resilient backpropagation (Riedmiller & Braun, ICNN 1993), torch.optim.Rprop
    semantics (the variant without weight backtracking), per coordinate:

        theta <- theta*(1 - lr*wd)          (decoupled decay; not in torch, default wd 0)
        s = sign(g * g_prev)
        step <- clip(step * (etaplus if s > 0, etaminus if s < 0, 1 if s = 0),
                     step_size_min, step_size_max)
        g <- 0 where s < 0                  (a sign change: no move, and no sign test next time)
        theta <- theta - sign(g)*step;  g_prev <- g

    Each step size starts at lr; the update ignores the gradient's magnitude, so Rprop suits
    full-batch problems only. Memory: 2N."""

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0),
                 weight_decay=0.0, *, maximize=False, nonfinite="raise"):
        super().__init__(params, lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes),
                         weight_decay=weight_decay, maximize=maximize, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        etaminus, etaplus = group["etas"]
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"etas must be (etaminus, etaplus) with 0 < etaminus < 1 < etaplus, "
                             f"got {group['etas']!r}")
        low, high = group["step_sizes"]
        if not 0.0 <= low <= high:
            raise ValueError(f"step_sizes must be (min, max) with 0 <= min <= max, "
                             f"got {group['step_sizes']!r}")

    def decays_decoupled(self, group) -> bool:
        return True

    def _update(self, name, p, g, state, group):
        g = -g if group["maximize"] else g          # ascend (torch's maximize)
        etaminus, etaplus = group["etas"]
        low, high = group["step_sizes"]
        if "prev" not in state:
            state["step"] = 0
            state["prev"] = np.zeros_like(p)
            state["step_size"] = np.full_like(p, group["lr"])
        state["step"] += 1
        if group["weight_decay"]:
            p *= 1.0 - group["lr"] * group["weight_decay"]
        s = np.sign(g * state["prev"])
        factor = np.where(s > 0, etaplus, np.where(s < 0, etaminus, 1.0)).astype(p.dtype)
        step_size = state["step_size"]
        step_size *= factor
        np.clip(step_size, low, high, out=step_size)
        g = np.where(s < 0, 0, g).astype(p.dtype, copy=False)
        p -= np.sign(g) * step_size
        state["prev"][...] = g

    def _state_nbytes(self, p, group):
        return 2 * p.nbytes


# ----------------------------------------------------------------------------- L-BFGS
class _Skipped(Exception):
    """A closure evaluation gave non-finite gradients under ``nonfinite="skip"``."""


@register("lbfgs")
class LBFGS(Optimizer):
    """L-BFGS (Liu & Nocedal, Math. Programming 1989; Nocedal & Wright, "Numerical Optimization",
    2006, algorithms 7.4 and 7.5), torch.optim.LBFGS semantics on the flattened parameters x of a
    group, iteration k with gradient g_k:

        first iteration:  d = -g;  H0 = 1;  step t = min(1, 1/||g||_1) * lr
        later:            y = g_k - g_{k-1};  s = t*d_{k-1}
                          if y.s > 1e-10: keep (s, y) (the last history_size pairs), H0 = y.s/y.y
                          d = -H g  by the two-loop recursion (H: the L-BFGS inverse Hessian
                          from the pairs, starting from H0*I);  t = lr
        stop if g.d > -tolerance_change (not a descent direction); else
        line_search_fn=None:           x <- x + t*d
        line_search_fn="strong_wolfe": t from the strong Wolfe conditions (c1 = 1e-4, c2 = 0.9;
                                       torch's bracketing and cubic-interpolation zoom)
        then stop after max_iter iterations or max_eval evaluations (default max_iter*5/4), when
        max|g| <= tolerance_grad, max|t*d| <= tolerance_change or |f_k - f_{k-1}| < tolerance_change.

    Driving it (``uses_closure``):

    * ``step(closure=fn)``, ``fn() -> (loss, grads)`` at the current parameters: up to
      ``max_iter`` iterations, calling ``fn`` as often as they need (torch's ``step(closure)``);
      returns the loss at the starting point.
    * ``step(grads)``: one iteration at these gradients, as torch's step with ``max_iter=1``
      and no line search (which needs the closure: ``"strong_wolfe"`` refuses it). For a training
      loop's minibatches; the curvature pairs then mix minibatches.

    Beyond torch: ``weight_decay`` minimises f + wd/2 * ||x||^2 (g <- g + wd*x and the loss gets
    the term, so the line search sees one objective); parameter groups are allowed, each its own
    L-BFGS problem with its own history (``step(closure)`` runs them one after the other, so a
    group's first evaluation sees the earlier groups moved). The parameters with a gradient (not
    None) make up a group's x; when that set changes the group starts afresh (history dropped),
    and a parameter without a gradient keeps its state untouched.

    State per parameter: the last direction d, the last gradient, and history_size rows of s and
    y (allocated in full at the first step). Memory: (2*history_size + 2) N, plus transient flat
    copies of x, g and the history during a step."""

    uses_closure = True
    LINE_SEARCHES = (None, "strong_wolfe")

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None, weight_decay=0.0, *,
                 nonfinite="raise"):
        super().__init__(params, lr=lr, max_iter=max_iter, max_eval=max_eval,
                         tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                         history_size=history_size, line_search_fn=line_search_fn,
                         weight_decay=weight_decay, nonfinite=nonfinite)

    def _check_group(self, group):
        super()._check_group(group)
        check_count(group["max_iter"], "max_iter")
        check_count(group["history_size"], "history_size")
        if group["max_eval"] is not None:
            check_count(group["max_eval"], "max_eval")
        for key in ("tolerance_grad", "tolerance_change"):
            if not group[key] >= 0:
                raise ValueError(f"{key} must be >= 0, got {group[key]!r}")
        if group["line_search_fn"] not in self.LINE_SEARCHES:
            raise ValueError(f"line_search_fn must be one of {self.LINE_SEARCHES}, "
                             f"got {group['line_search_fn']!r}")

    def _state_nbytes(self, p, group):
        return (2 * group["history_size"] + 2) * p.nbytes

    # -- stepping -------------------------------------------------------------
    def step(self, grads=None, closure=None):
        if grads is None and closure is None:
            grads = self._parameter_grads()
        if grads is not None:
            for group in self.param_groups:
                if group["line_search_fn"] is not None:
                    raise ValueError(f"LBFGS: line_search_fn={group['line_search_fn']!r} evaluates "
                                     f"the loss: call step(closure=fn) with fn() -> (loss, grads), "
                                     f"not step(grads)")
            finite = self._check_grads(grads)
            self.last_step_skipped = not finite
            if finite:
                for i, group in enumerate(self.param_groups):
                    self._minimize(i, group, None, None, grads)
            return None

        def evaluate():
            out = closure()
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"LBFGS.step(closure=fn): fn() must return (loss, grads), got "
                                f"{type(out).__name__}")
            loss, g = out
            if not self._check_grads(g):
                raise _Skipped
            return float(loss), g

        first = None
        self.last_step_skipped = False
        for i, group in enumerate(self.param_groups):
            try:
                loss, g = evaluate()
            except _Skipped:
                self.last_step_skipped = True
                return first
            first = loss if first is None else first
            if self._minimize(i, group, evaluate, loss, g) is False:
                self.last_step_skipped = True
                return first
        return first

    def _minimize(self, index, group, evaluate, loss, grads):
        """torch's LBFGS.step on one group from the evaluation ``(loss, grads)`` at its current
        point; ``evaluate`` None: one iteration only. Returns False when a later evaluation was
        non-finite under nonfinite="skip" (the group's parameters and state are then as before)."""
        params = group["params"]
        names = [n for n in params if grads[n] is not None]
        if not names:
            return True
        sizes = np.cumsum([0] + [params[n].size for n in names])
        spans = {n: slice(sizes[i], sizes[i + 1]) for i, n in enumerate(names)}
        wd = group["weight_decay"]

        def flat(arrays):
            return np.concatenate([arrays[n].ravel() for n in names])

        def objective(loss, g):
            """The loss and flat gradient of f + wd/2 ||x||^2."""
            missing = [n for n in names if g[n] is None]
            if missing:
                raise ValueError(f"LBFGS: the closure gave no gradient for {missing}, which had one "
                                 f"at the start of the step")
            g = flat(g)
            if wd:
                x = flat(params)
                g = g + wd * x
                loss = None if loss is None else loss + 0.5 * wd * float(x @ x)
            return loss, g

        def set_x(x):
            for n in names:
                params[n][...] = x[spans[n]].reshape(params[n].shape)

        def add(t, d):
            for n in names:
                params[n] += t * d[spans[n]].reshape(params[n].shape)

        lr, max_iter = group["lr"], group["max_iter"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]
        max_eval = group["max_eval"] if group["max_eval"] is not None else max_iter * 5 // 4
        if evaluate is None:
            max_iter = 1

        groups = self.global_state.setdefault("groups", [])
        while len(groups) <= index:
            groups.append({"n_iter": 0, "func_evals": 0, "t": None, "H_diag": None,
                           "prev_loss": None, "history": 0})
        gs = groups[index]
        x_start = flat(params)
        loss, flat_grad = objective(loss, grads)
        func_evals, current_evals = gs["func_evals"] + 1, 1
        if np.abs(flat_grad).max() <= tol_grad:
            gs["func_evals"] = func_evals
            return True

        before = [n for n in params if n in self.state and self.state[n]["n_iter"] == gs["n_iter"]]
        fresh = gs["n_iter"] == 0 or before != names
        if fresh:
            d = prev_flat_grad = t = None
            old_dirs, old_stps, ro, H_diag = [], [], [], 1.0
        else:
            d = flat({n: self.state[n]["d"] for n in names})
            prev_flat_grad = flat({n: self.state[n]["prev_grad"] for n in names})
            k = gs["history"]
            old_dirs = list(np.concatenate([self.state[n]["old_dirs"][:k].reshape(k, params[n].size)
                                            for n in names], axis=1))
            old_stps = list(np.concatenate([self.state[n]["old_stps"][:k].reshape(k, params[n].size)
                                            for n in names], axis=1))
            ro = [1.0 / (y @ s) for y, s in zip(old_dirs, old_stps)]
            t, H_diag, prev_loss = gs["t"], gs["H_diag"], gs["prev_loss"]
        n_iter_total = gs["n_iter"]

        try:
            n_iter = 0
            while n_iter < max_iter:
                n_iter += 1
                n_iter_total += 1
                if fresh:
                    d = -flat_grad
                else:
                    y = flat_grad - prev_flat_grad
                    s = d * t
                    ys = y @ s
                    if ys > 1e-10:
                        if len(old_dirs) == history_size:
                            old_dirs.pop(0)
                            old_stps.pop(0)
                            ro.pop(0)
                        old_dirs.append(y)
                        old_stps.append(s)
                        ro.append(1.0 / ys)
                        H_diag = ys / (y @ y)
                    # the two-loop recursion: d = -H g
                    q = -flat_grad
                    al = [0.0] * len(old_dirs)
                    for i in range(len(old_dirs) - 1, -1, -1):
                        al[i] = (old_stps[i] @ q) * ro[i]
                        q -= al[i] * old_dirs[i]
                    d = q * H_diag
                    for i in range(len(old_dirs)):
                        be_i = (old_dirs[i] @ d) * ro[i]
                        d += (al[i] - be_i) * old_stps[i]
                prev_flat_grad = flat_grad.copy()
                prev_loss = loss
                t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr if fresh else lr
                fresh = False
                gtd = flat_grad @ d
                if gtd > -tol_change:
                    break

                ls_evals = 0
                if group["line_search_fn"] == "strong_wolfe":
                    x_init = flat(params)

                    def obj_func(x, step, direction):
                        add(step, direction)
                        out = objective(*evaluate())
                        set_x(x)
                        return out

                    loss, flat_grad, t, ls_evals = _strong_wolfe(
                        obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
                    add(t, d)
                    opt_cond = np.abs(flat_grad).max() <= tol_grad
                else:
                    add(t, d)
                    if n_iter != max_iter:
                        loss, flat_grad = objective(*evaluate())
                        opt_cond = np.abs(flat_grad).max() <= tol_grad
                        ls_evals = 1
                current_evals += ls_evals
                func_evals += ls_evals

                if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                    break
                if np.abs(d * t).max() <= tol_change or abs(loss - prev_loss) < tol_change:
                    break
        except _Skipped:
            set_x(x_start)
            return False
        except BaseException:
            set_x(x_start)
            raise

        gs.update(n_iter=n_iter_total, func_evals=func_evals, t=float(t), H_diag=float(H_diag),
                  prev_loss=prev_loss, history=len(old_dirs))
        Y = np.stack(old_dirs) if old_dirs else None
        S = np.stack(old_stps) if old_stps else None
        k = len(old_dirs)
        for n in names:
            p, span = params[n], spans[n]
            st = self.state.setdefault(n, {})
            if "old_dirs" not in st:
                st["old_dirs"] = np.zeros((history_size,) + p.shape, p.dtype)
                st["old_stps"] = np.zeros((history_size,) + p.shape, p.dtype)
            st["n_iter"] = n_iter_total
            st["d"] = d[span].reshape(p.shape).astype(p.dtype)
            st["prev_grad"] = prev_flat_grad[span].reshape(p.shape).astype(p.dtype)
            if k:
                st["old_dirs"][:k] = Y[:, span].reshape((k,) + p.shape)
                st["old_stps"][:k] = S[:, span].reshape((k,) + p.shape)
        return True


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clipped to ``bounds``
    (default the interval between the points); the midpoint when the cubic has none."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's strong-Wolfe line search (from torch/optim lswolfe.lua): bracket a step that
    satisfies f(x + t d) <= f + c1 t g.d and |g(x + t d).d| <= -c2 g.d, then zoom in by cubic
    interpolation. ``obj_func(x, t, d) -> (f, flat g)`` at x + t d. Returns (f, g, t, evals)."""
    d_norm = np.abs(d).max()
    g = g.copy()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new @ d
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.copy(), gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new @ d
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket until a point satisfies the conditions
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                               bracket[1], bracket_f[1], bracket_gtd[1])
        # a trial point close to the bracket's ends makes little progress: move it 0.1 of the
        # bracket's length inside when that happens twice in a row or it is at an end
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) \
                    else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new @ d
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new.copy(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new.copy(), gtd_new
    t = bracket[low_pos]
    return bracket_f[low_pos], bracket_g[low_pos], t, ls_func_evals
