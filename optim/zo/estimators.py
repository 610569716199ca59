"""Zeroth-order gradient estimators: estimate ∇f(x) from values of f alone.

Pure functions on one raw NumPy array ``x`` and a callable ``f(x) -> float``. ``f`` is
always called on a *temporary* point ``x + μ·u`` (``x`` itself is never modified). They
are the textbook versions, written for teaching and for the statistical tests; the
optimizers in :mod:`optim.zo` apply the same formulas to a dict of parameters *in place*
without storing the directions.

Notation: d = x.size, μ > 0 the smoothing radius, u a random direction, q the number of
independent queries averaged (each estimator below is the mean of q i.i.d. copies, so its
covariance is the single-query covariance divided by q).

What each estimator estimates
-----------------------------
========================  ==========================================  ===========  ====================
estimator                 single-query formula                        f-calls      expectation
========================  ==========================================  ===========  ====================
coordinate, central       ĝ_i = (f(x+μe_i) − f(x−μe_i)) / (2μ)        2d           ∇f + O(μ²) (exact
                                                                                    on quadratics)
coordinate, forward       ĝ_i = (f(x+μe_i) − f(x)) / μ                d + 1        ∇f + (μ/2)·diag(∇²f)
                                                                                    + O(μ²)
Gaussian, central         ĝ = (f(x+μu) − f(x−μu)) / (2μ) · u          2q           ∇f_μ
Gaussian, forward         ĝ = (f(x+μu) − f(x)) / μ · u                q + 1        ∇f_μ
Gaussian, one-point       ĝ = f(x+μu) / μ · u                         q            ∇f_μ
sphere, forward           ĝ = d · (f(x+μu) − f(x)) / μ · u            q + 1        ∇f̂_μ
sphere, central           ĝ = d · (f(x+μu) − f(x−μu)) / (2μ) · u      2q           ∇f̂_μ
========================  ==========================================  ===========  ====================

* Gaussian: u ~ N(0, I_d). f_μ(x) = E_u f(x + μu) is the Gaussian-smoothed function
  (Nesterov & Spokoiny, "Random gradient-free minimization of convex functions", FoCM 2017):
  E ĝ = ∇f_μ(x) for all three kinds (the f(x) term of the forward and one-point kinds has
  zero mean because E u = 0). No factor d is needed because E[u uᵀ] = I.
* Sphere: u uniform on the unit sphere S^{d−1}. f̂_μ(x) = E_{v ~ Unif(ball)} f(x + μv) is
  the ball-smoothed function (Flaxman, Kalai & McMahan, "Online convex optimization in the
  bandit setting", SODA 2005): E ĝ = ∇f̂_μ(x). **The factor d is needed** because
  E[u uᵀ] = I/d; without it the estimate is too small by exactly d.
* On a quadratic f(x) = ½xᵀAx + bᵀx every random estimator above is *unbiased for ∇f itself*
  (f_μ − f and f̂_μ − f are constants): the central difference equals the directional
  derivative exactly, and the curvature term (μ/2)·uᵀAu·u of the forward kinds is odd in u.
  In general ‖∇f_μ − ∇f‖ ≤ (μ/2)·L·(d+3)^{3/2} for L-smooth f (Nesterov & Spokoiny, Lemma 3).

Variances (single query, g = ∇f(x), on a quadratic; exact, see :func:`central_variance`)
---------------------------------------------------------------------------------------
* Gaussian central: ĝ = (gᵀu)·u, so Cov ĝ = ‖g‖²·I + g gᵀ, i.e. Var ĝ_i = ‖g‖² + g_i² and
  E‖ĝ‖² = (d+2)‖g‖². The total variance (d+1)‖g‖² is the source of ZO's √d (in rate:
  d) slowdown: the relative error of a mean of M estimates is ≈ √((d+1)/M).
* Sphere central: ĝ = d·(gᵀu)·u, E[u_i²u_j²] = 1/(d(d+2)) (i≠j), 3/(d(d+2)) (i=j), so
  Var ĝ_i = d/(d+2)·(‖g‖² + 2g_i²) − g_i² — about the same as the Gaussian one.
* Forward kinds add the curvature term: Var ĝ_i gains (μ²/4)·E[(uᵀAu)² u_i²] = O(μ² d²).
* One-point adds f(x)²/μ² · E u_i² = f(x)²/μ² per coordinate — huge for small μ; it is shown
  for completeness (it needs one evaluation per query) and is rarely usable.

All random estimators draw from the ``rng`` passed (``numpy.random.Generator``; an int
seeds a fresh one), so a call is reproducible from its seed.
"""
from __future__ import annotations

import numpy as np

from ..base import check_count

__all__ = [
    "coordinate_estimate", "gaussian_estimate", "sphere_estimate", "lowrank_estimate",
    "gaussian_direction", "sphere_direction", "central_variance",
]

_GAUSSIAN_KINDS = ("central", "forward", "one-point")
_SPHERE_KINDS = ("central", "forward")


# ----------------------------------------------------------------------------- helpers
def _check(x, mu, q=1, where="estimator"):
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{where}: x must be a floating-point numpy array, got "
                        f"{type(x).__name__}{'' if not isinstance(x, np.ndarray) else ' of ' + str(x.dtype)}")
    if not (np.isfinite(mu) and mu > 0):
        raise ValueError(f"{where}: the smoothing radius mu must be a finite number > 0, got {mu!r}")
    check_count(q, f"{where}: the number of queries q")


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _f(f, x):
    v = f(x)
    v = v.item() if hasattr(v, "item") else v
    return float(v)


def gaussian_direction(shape, rng=None, dtype=np.float64):
    """u ~ N(0, I), E[u uᵀ] = I."""
    return _rng(rng).standard_normal(shape).astype(dtype, copy=False)


def sphere_direction(shape, rng=None, dtype=np.float64):
    """u uniform on the unit sphere of R^d (d = prod(shape)): a normalised Gaussian.
    E[u uᵀ] = I/d."""
    u = _rng(rng).standard_normal(shape)
    u /= np.linalg.norm(u)
    return u.astype(dtype, copy=False)


# ----------------------------------------------------------------------------- estimators
def coordinate_estimate(f, x, mu=1e-5, kind="central"):
    """Coordinate-wise finite differences (deterministic).

    ``kind="central"``: ĝ_i = (f(x+μe_i) − f(x−μe_i))/(2μ), 2d calls, bias O(μ²·|∂³f|)
    (zero on quadratics). ``kind="forward"``: ĝ_i = (f(x+μe_i) − f(x))/μ, d+1 calls, bias
    (μ/2)·∂²f/∂x_i² + O(μ²). Use float64: in float32 rounding of f dominates for small μ.
    """
    _check(x, mu, where="coordinate_estimate")
    if kind not in ("central", "forward"):
        raise ValueError(f"coordinate_estimate: kind must be 'central' or 'forward', got {kind!r}")
    xp = x.astype(np.float64, copy=True).reshape(-1)
    g = np.empty(xp.size, dtype=np.float64)
    f0 = _f(f, x) if kind == "forward" else None
    for i in range(xp.size):
        xi = xp[i]
        xp[i] = xi + mu
        fp = _f(f, xp.reshape(x.shape).astype(x.dtype, copy=False))
        if kind == "central":
            xp[i] = xi - mu
            fm = _f(f, xp.reshape(x.shape).astype(x.dtype, copy=False))
            g[i] = (fp - fm) / (2 * mu)
        else:
            g[i] = (fp - f0) / mu
        xp[i] = xi
    return g.reshape(x.shape).astype(x.dtype, copy=False)


def gaussian_estimate(f, x, mu=1e-3, q=1, kind="central", rng=None):
    """Random (Gaussian-direction) gradient estimate, averaged over ``q`` queries.

    u ~ N(0, I). ``kind``: "central" (f(x+μu) − f(x−μu))/(2μ)·u, 2q calls; "forward"
    (f(x+μu) − f(x))/μ·u, q+1 calls (f(x) shared); "one-point" f(x+μu)/μ·u, q calls.
    All have E ĝ = ∇f_μ(x) (the gradient of the Gaussian smoothing; = ∇f on quadratics)
    with no factor d, because E[u uᵀ] = I. Variance: see the module docstring.
    """
    _check(x, mu, q, where="gaussian_estimate")
    if kind not in _GAUSSIAN_KINDS:
        raise ValueError(f"gaussian_estimate: kind must be one of {_GAUSSIAN_KINDS}, got {kind!r}")
    rng = _rng(rng)
    f0 = _f(f, x) if kind == "forward" else None
    g = np.zeros(x.shape, dtype=np.float64)
    for _ in range(int(q)):
        u = rng.standard_normal(x.shape)
        fp = _f(f, (x + mu * u).astype(x.dtype, copy=False))
        if kind == "central":
            c = (fp - _f(f, (x - mu * u).astype(x.dtype, copy=False))) / (2 * mu)
        elif kind == "forward":
            c = (fp - f0) / mu
        else:
            c = fp / mu
        g += c * u
    return (g / q).astype(x.dtype, copy=False)


def sphere_estimate(f, x, mu=1e-3, q=1, kind="forward", rng=None, scale=None):
    """Random (sphere-direction) gradient estimate, averaged over ``q`` queries.

    u ~ Unif(S^{d−1}). ``kind="forward"`` (Flaxman et al. 2005, two-point form):
    d·(f(x+μu) − f(x))/μ·u; ``kind="central"``: d·(f(x+μu) − f(x−μu))/(2μ)·u.
    E ĝ = ∇f̂_μ (the ball-smoothed gradient; = ∇f on quadratics). ``scale`` defaults to
    d = x.size and is exposed only to show what happens without it: E[u uᵀ] = I/d, so
    ``scale=1`` gives an estimate too small by exactly d.
    """
    _check(x, mu, q, where="sphere_estimate")
    if kind not in _SPHERE_KINDS:
        raise ValueError(f"sphere_estimate: kind must be one of {_SPHERE_KINDS}, got {kind!r}")
    rng = _rng(rng)
    d = x.size
    scale = d if scale is None else scale
    f0 = _f(f, x) if kind == "forward" else None
    g = np.zeros(x.shape, dtype=np.float64)
    for _ in range(int(q)):
        u = rng.standard_normal(x.shape)
        u /= np.linalg.norm(u)
        fp = _f(f, (x + mu * u).astype(x.dtype, copy=False))
        if kind == "central":
            c = (fp - _f(f, (x - mu * u).astype(x.dtype, copy=False))) / (2 * mu)
        else:
            c = (fp - f0) / mu
        g += c * u
    return (scale * g / q).astype(x.dtype, copy=False)


def lowrank_estimate(f, W, mu=1e-3, rank=1, q=1, V=None, rng=None, normalize=True):
    """LoZO's low-rank estimate for a matrix W (m×n) (Chen et al., ICLR 2025, arXiv 2410.07698).

    U ∈ R^{m×r}, V ∈ R^{n×r} with i.i.d. N(0, 1) entries (V fixed if given: LoZO keeps V for
    ν steps), c = (f(W + μUVᵀ) − f(W − μUVᵀ))/(2μ), raw estimate c·UVᵀ.

    Expectation (exact on quadratics, G = ∇f(W)):
      * over U and V: E[c·UVᵀ] = r·G, since E[⟨G, UVᵀ⟩·U_ab·V_cb] = G_ac for each of the r
        columns b. ``normalize=True`` (default here) divides by r so that **E ĝ = G**;
      * over U with V fixed: E_U[c·UVᵀ] = G·V·Vᵀ (a projection-like map onto span V, and
        E_V[V Vᵀ] = r·I), so the 1/r-normalised estimate is unbiased only on average over V.
    The LoZO optimizer follows the reference code and does *not* divide by r (the learning
    rate absorbs it) unless ``normalize=True`` is passed to it.
    """
    _check(W, mu, q, where="lowrank_estimate")
    if W.ndim != 2:
        raise ValueError(f"lowrank_estimate: W must be a matrix, got shape {W.shape}")
    m, n = W.shape
    if V is not None and V.shape != (n, rank):
        raise ValueError(f"lowrank_estimate: V has shape {V.shape}, expected (n, rank) = {(n, rank)}")
    rng = _rng(rng)
    g = np.zeros(W.shape, dtype=np.float64)
    for _ in range(int(q)):
        Vk = rng.standard_normal((n, rank)) if V is None else V
        U = rng.standard_normal((m, rank))
        P = U @ Vk.T
        c = (_f(f, (W + mu * P).astype(W.dtype, copy=False))
             - _f(f, (W - mu * P).astype(W.dtype, copy=False))) / (2 * mu)
        g += c * P
    g /= q
    if normalize:
        g /= rank
    return g.astype(W.dtype, copy=False)


def central_variance(grad, direction="gaussian"):
    """Exact per-coordinate variance of ONE central-difference query on a quadratic with
    gradient ``grad`` at x (there ĝ = (gᵀu)·u·scale exactly, independent of μ).

    gaussian: ‖g‖² + g_i².  sphere (with factor d): d/(d+2)·(‖g‖² + 2g_i²) − g_i².
    Divide by q·M for the variance of a mean of M estimates that each average q queries.
    """
    g = np.asarray(grad, dtype=np.float64)
    s = float(np.sum(g * g))
    if direction == "gaussian":
        return s + g * g
    if direction == "sphere":
        d = g.size
        return d / (d + 2) * (s + 2 * g * g) - g * g
    raise ValueError(f"central_variance: direction must be 'gaussian' or 'sphere', got {direction!r}")
