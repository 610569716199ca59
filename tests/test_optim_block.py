"""Block coordinate descent and layer-wise methods (optim/block.py) on small arrays: reduction to
the inner optimizer, inactive blocks left alone, state of the active set only, switching keyed
by (seed, period) and resumable mid-period, the selection rules, the convex rates of randomized
BCD, and MISA's module sampling."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optim
from optim_helpers import copy_params, grads_at, same_params

BLOCKS = {"emb": ["emb"], "l0": ["l0.w", "l0.b"], "l1": ["l1.w", "l1.b"], "l2": ["l2.w", "l2.b"],
          "head": ["head"]}
LAYERS = ["l0", "l1", "l2"]


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"emb": (5, 3), "l0.w": (6, 3), "l0.b": (6,), "l1.w": (3, 6), "l1.b": (3,),
              "l2.w": (4, 3), "l2.b": (4,), "head": (3,)}
    return {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}


# method name -> keyword arguments giving several blocks and switches within a short run
SEVERAL = {
    "bcd-cyclic": ("bcd", dict(selection="cyclic", switch_every=2, inner="adam", lr=1e-2)),
    "bcd-reshuffle": ("bcd", dict(selection="reshuffle", switch_every=3, inner="adamw", lr=1e-2)),
    "bcd-uniform": ("bcd", dict(selection="uniform", inner="momentum", lr=1e-2)),
    "bcd-importance": ("bcd", dict(selection="importance", weights=[1, 2, 3, 4, 5], switch_every=2,
                                   inner="adam", lr=1e-2)),
    "bcd-gs": ("bcd", dict(selection="gauss-southwell", switch_every=3, inner="adam", lr=1e-2)),
    "lisa": ("lisa", dict(layers=2, switch_every=3, lr=1e-2)),
    "badam": ("badam", dict(switch_every=3, order="random", lr=1e-2)),
    "misa": ("misa", dict(delta=0.4, switch_every=3, eta=5.0, lr=1e-2)),
}


def build(key, params, **extra):
    name, kw = SEVERAL[key]
    return optim.create(name, params, blocks=BLOCKS, **{**kw, **extra})


# ----------------------------------------------------------------------------- one block
def run_steps(opt, params, steps):
    for t in range(steps):
        opt.step(grads_at(params, t))


def two_groups(params, **opts):
    first = {n: params[n] for n in ("emb", "l0.w", "l1.w", "l2.w")}
    rest = {n: p for n, p in params.items() if n not in first}
    return [{"params": first, "lr": 2e-2, **opts}, {"params": rest, "weight_decay": 0.0}]


ADAM = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1)


@pytest.mark.parametrize("case", [
    ("bcd", dict(inner="gd"), "gd", dict()),
    ("bcd", dict(inner="adamw", inner_kwargs=dict(betas=(0.8, 0.95), eps=1e-7)), "adamw",
     dict(betas=(0.8, 0.95), eps=1e-7)),
    ("bcd", dict(inner="prox", prox=optim.prox.L1(0.05)), "ista", dict(prox=optim.prox.L1(0.05))),
    ("lisa", dict(betas=(0.8, 0.95), eps=1e-7, layers=1, switch_every=3), "adamw",
     dict(betas=(0.8, 0.95), eps=1e-7)),
    ("badam", dict(betas=(0.8, 0.95), eps=1e-7, switch_every=20), "adamw", dict(betas=(0.8, 0.95), eps=1e-7)),
    ("misa", dict(betas=(0.8, 0.95), eps=1e-7, switch_every=3), "adamw", dict(betas=(0.8, 0.95), eps=1e-7)),
], ids=["bcd-gd", "bcd-adamw", "bcd-prox", "lisa", "badam", "misa"])
def test_one_block_holding_every_parameter_is_the_inner_optimizer(case):
    """20 steps, two param groups with their own lr / weight decay: bit-identical parameters."""
    name, kw, inner, inner_kw = case
    a, b = make_params(), make_params()
    run_steps(optim.create(name, two_groups(a), blocks={"all": list(a)}, lr=1e-2, weight_decay=0.1,
                           **kw), a, 20)
    run_steps(optim.create(inner, two_groups(b), lr=1e-2, weight_decay=0.1, **inner_kw), b, 20)
    assert same_params(a, b)


def test_lisa_with_every_layer_active_and_bcd_with_blocks_none_are_adamw_and_gd():
    a, b, c, d = (make_params() for _ in range(4))
    layers = {"x": ["emb", "l0.w", "l0.b"], "y": ["l1.w", "l1.b", "l2.w"], "z": ["l2.b", "head"]}
    run_steps(optim.create("lisa", a, blocks=layers, always=[], layers=3, switch_every=2, **ADAM), a, 20)
    run_steps(optim.AdamW(b, **ADAM), b, 20)
    assert same_params(a, b)
    run_steps(optim.create("bcd", c, lr=0.05), c, 20)          # blocks=None: one block
    run_steps(optim.GD(d, lr=0.05), d, 20)
    assert same_params(c, d)


def test_badam_resets_adam_at_every_switch_also_to_the_same_block():
    a = make_params()
    opt = optim.create("badam", a, blocks={"all": list(a)}, switch_every=5, lr=1e-2)
    for t in range(12):
        opt.step(grads_at(a, t))
        assert opt.state["emb"]["step"] == t % 5 + 1            # Adam's step count restarts


# ----------------------------------------------------------------------------- the active set
@pytest.mark.parametrize("key", list(SEVERAL))
def test_inactive_blocks_stay_bit_identical_and_the_state_is_the_active_sets(key):
    """Full gradients for every parameter are given; only the active set moves and holds state,
    and state_bytes() after each step is what expected_state_bytes() said before it."""
    params = make_params(np.float32)
    opt = build(key, params)
    seen = set()
    for t in range(24):
        names = opt.trainable_names()
        expected = opt.expected_state_bytes()
        before = copy_params(params)
        opt.step(grads_at(params, t))
        if names is None:       # Gauss-Southwell chose now; expected was the largest block's
            names = opt.trainable_names()
            assert opt.state_bytes() <= expected
        else:
            assert opt.state_bytes() == expected, (key, t)
        moved = {n for n in params if not np.array_equal(params[n], before[n])}
        assert moved == names, (key, t)
        seen |= names
        held = {u.split(":")[0] for u in opt.state}
        assert held <= names, (key, t)
        if key != "bcd-uniform":                                # momentum SGD: one buffer
            per = 2 * 4 * sum(params[n].size for n in names)    # Adam: m and v, float32
            assert opt.state_bytes() == per, (key, t)
    if key not in ("badam", "bcd-gs"):   # BAdam never trains emb and head; GS goes where g is large
        assert seen == set(params), key


def test_lisa_trains_the_always_blocks_and_gamma_layers_and_frees_the_rest():
    params = make_params()
    opt = optim.create("lisa", params, blocks=BLOCKS, layers=2, switch_every=3)
    always = {"emb", "head"}
    for t in range(30):
        active = opt.active_blocks()
        assert len(active) == 2 and set(active) <= set(LAYERS)
        names = opt.trainable_names()
        assert names == always | {n for b in active for n in BLOCKS[b]}
        opt.step(grads_at(params, t))
        assert set(opt.state) == names


def test_lisa_keep_state_keeps_what_inactive_layers_held():
    params = make_params()
    opt = optim.create("lisa", params, blocks=BLOCKS, layers=1, switch_every=2, keep_state=True)
    trained = set()
    for t in range(20):
        trained |= opt.trainable_names()
        expected = opt.expected_state_bytes()
        opt.step(grads_at(params, t))
        assert set(opt.state) == trained
        assert opt.state_bytes() == expected == 2 * sum(params[n].nbytes for n in trained)


def test_gauss_southwell_needs_every_gradient_at_the_start_of_a_period_only():
    params = make_params()
    opt = optim.create("bcd", params, blocks=BLOCKS, selection="gauss-southwell", switch_every=3)
    for t in range(9):
        names = opt.trainable_names()
        assert (names is None) == (t % 3 == 0)
        g = grads_at(params, t)
        if t % 3 == 0:
            sq = {b: sum(float(np.sum(g[n] ** 2)) for n in ns) for b, ns in BLOCKS.items()}
            opt.step(g)
            assert opt.active_blocks() == [max(sq, key=sq.get)]
        else:
            opt.step(g)


# ----------------------------------------------------------------------------- reproducibility
def active_sequence(opt, params, steps, t0=0):
    seq = []
    for t in range(t0, t0 + steps):
        opt.step(grads_at(params, t))
        seq.append(tuple(opt.global_state["active"]))        # the set the step just used
    return seq


@pytest.mark.parametrize("key", ["bcd-reshuffle", "bcd-uniform", "bcd-importance", "lisa", "badam"])
def test_switching_depends_on_the_seed_and_the_period_only(key):
    """Same seed: the same blocks, whatever the parameters and gradients; another seed: others."""
    a, b, c = make_params(seed=0), make_params(seed=1), make_params(seed=2)
    first = active_sequence(build(key, a, seed=7), a, 60)
    assert active_sequence(build(key, b, seed=7), b, 60, t0=500) == first
    assert active_sequence(build(key, c, seed=8), c, 60) != first


@pytest.mark.parametrize("key", list(SEVERAL))
def test_resume_in_the_middle_of_a_period_is_bit_identical(key, tmp_path):
    """Run 23 steps; vs run 10 (period 3 of 3-step periods is half done), save to an .npz with
    allow_pickle=False, load into a fresh optimizer, run 13 more."""
    pa = make_params()
    full = active_sequence(build(key, pa), pa, 23)

    pb = make_params()
    opt = build(key, pb)
    part = active_sequence(opt, pb, 10)
    np.savez(tmp_path / "ck.npz", **{f"p.{n}": v for n, v in pb.items()},
             **optim.flatten_state_dict(opt.state_dict(), prefix="opt."))
    with np.load(tmp_path / "ck.npz", allow_pickle=False) as f:
        ck = dict(f)
    pc = {n: ck[f"p.{n}"] for n in pb}
    again = build(key, pc, seed=99)                             # the seed comes from the state
    again.load_state_dict(optim.unflatten_state_dict(ck, prefix="opt."))
    rest = active_sequence(again, pc, 13, t0=10)
    assert part + rest == full
    assert same_params(pa, pc)


def test_a_skipped_step_does_not_advance_the_period():
    params = make_params()
    opt = optim.create("bcd", params, blocks=BLOCKS, selection="cyclic", switch_every=2, nonfinite="skip")
    opt.step(grads_at(params, 0))
    g = grads_at(params, 1)
    g["l2.w"][0, 0] = np.nan
    opt.step(g)
    assert opt.last_step_skipped and opt.global_state["step"] == 1
    assert opt.active_blocks() == ["emb"]
    opt.step(grads_at(params, 2))
    assert opt.active_blocks() == ["l0"]


def test_load_state_dict_refuses_another_method_or_period_length():
    params = make_params()
    lisa = optim.create("lisa", params, blocks=BLOCKS, switch_every=3)
    lisa.step(grads_at(params, 0))
    sd = lisa.state_dict()
    with pytest.raises(ValueError, match="not a 'badam' state"):
        optim.create("badam", params, blocks=BLOCKS, switch_every=3).load_state_dict(sd)
    with pytest.raises(ValueError, match="switch_every=3, this optimizer has switch_every=4"):
        optim.create("lisa", params, blocks=BLOCKS, switch_every=4).load_state_dict(sd)
    with pytest.raises(ValueError, match="not a 'lisa' state"):
        optim.create("lisa", params, blocks=BLOCKS).load_state_dict(optim.AdamW(params).state_dict())


# ----------------------------------------------------------------------------- selection rules
def periods(opt, params, n):
    """The active blocks of the first n periods (each period's first step is taken)."""
    out = []
    for t in range(n * opt.switch_every):
        if t % opt.switch_every == 0:
            out.append(opt.active_blocks())
        opt.step(grads_at(params, t))
    return out


def test_cyclic_and_the_badam_orders():
    p = make_params()
    names = list(BLOCKS)
    assert periods(optim.create("bcd", p, blocks=BLOCKS, switch_every=2), p, 7) == \
        [[names[k % 5]] for k in range(7)]
    layers = [[b] for b in LAYERS]
    assert periods(optim.create("badam", p, blocks=BLOCKS, order="ascending", switch_every=2), p, 4) == \
        layers + layers[:1]
    assert periods(optim.create("badam", p, blocks=BLOCKS, switch_every=2), p, 4) == \
        layers[::-1] + [["l2"]]
    assert periods(optim.create("badam", p, blocks=BLOCKS, order="fixed", block_order=["l1", "emb"],
                                include=["emb"], switch_every=1), p, 4) == [["l1"], ["emb"]] * 2
    assert periods(optim.create("badam", p, blocks=BLOCKS, include=["emb", "head"], order="ascending",
                                switch_every=1), p, 5) == [[b] for b in BLOCKS]


@pytest.mark.parametrize("name,kw,n", [("bcd", dict(selection="reshuffle"), 5),
                                       ("badam", dict(order="random"), 3)])
def test_random_reshuffling_visits_every_block_once_per_epoch(name, kw, n):
    p = make_params()
    seq = [b[0] for b in periods(optim.create(name, p, blocks=BLOCKS, switch_every=1, **kw), p, 8 * n)]
    epochs = [seq[i:i + n] for i in range(0, len(seq), n)]
    assert all(len(set(e)) == n for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1                  # a new order per epoch


@given(seed=st.integers(0, 2**31), gamma=st.integers(1, 3), k=st.integers(1, 4))
def test_lisa_draws_gamma_distinct_layers_per_period_from_its_seed(seed, gamma, k):
    p = make_params()
    opt = optim.create("lisa", p, blocks=BLOCKS, layers=gamma, switch_every=k, seed=seed)
    for period in range(4):
        active = opt.active_blocks()
        expect = sorted(np.random.default_rng([seed, period, 1]).choice(3, gamma, replace=False))
        assert active == [LAYERS[i] for i in expect]
        for t in range(k):
            opt.step(grads_at(p, t))
            assert opt.global_state["active"] == active         # constant within the period


def test_uniform_and_importance_frequencies():
    n_periods = 3000
    names = list(BLOCKS)
    weights = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    for kw, p_expect in ((dict(selection="uniform"), np.full(5, 0.2)),
                         (dict(selection="importance", weights=dict(zip(names, weights))),
                          weights / weights.sum())):
        opt = optim.create("bcd", make_params(), blocks=BLOCKS, **kw)
        counts = np.zeros(5)
        for k in range(n_periods):
            opt.global_state["step"] = k                         # the choice is a function of k
            counts[names.index(opt.active_blocks()[0])] += 1
        freq = counts / n_periods
        # 4.5 standard deviations of a binomial proportion
        assert np.all(np.abs(freq - p_expect) <= 4.5 * np.sqrt(p_expect * (1 - p_expect) / n_periods))


# ----------------------------------------------------------------------------- convex rates
def separable_quadratic(L, mu, d=3):
    """f(x) = sum_i 1/2 x_i^T diag(L_i, mu, ..., mu) x_i: block i has Lipschitz constant L_i,
    f is mu-strongly convex. x_0 has only the mu-directions set."""
    n = len(L)
    hess = {f"x{i}": np.array([L[i]] + [mu] * (d - 1)) for i in range(n)}
    x = {f"x{i}": np.r_[0.0, np.ones(d - 1)] for i in range(n)}
    blocks = {f"b{i}": [f"x{i}"] for i in range(n)}
    return x, hess, blocks


def mean_log_decrease(selection, lr, L, mu, steps, seeds, lipschitz=None):
    logs = []
    for seed in seeds:
        x, hess, blocks = separable_quadratic(L, mu)
        opt = optim.create("bcd", x, blocks=blocks, selection=selection, lr=lr, seed=seed,
                           lipschitz=lipschitz)
        f = lambda: sum(0.5 * float(np.sum(hess[n] * x[n] ** 2)) for n in x)  # noqa: E731
        f0 = f()
        for _ in range(steps):
            opt.step({n: hess[n] * x[n] for n in x})
        logs.append(math.log(f() / f0))
    return float(np.mean(logs)), float(np.mean([math.exp(v) for v in logs]))


def test_importance_sampling_beats_uniform_by_n_lmax_over_sum_l():
    """Nesterov (2012): p_i = L_i/S with steps 1/L_i converges as (1 - mu/S)^k, uniform sampling
    with the common step 1/L_max as (1 - mu/(n L_max))^k; their ratio of rates is n L_max/S.

    On the separable quadratic the mu-direction of block i shrinks by exactly (1 - mu/L_i) per
    visit, so E log f falls by 2 p_i log(1 - mu/L_i) per step for its slowest block: importance
    2 (L_max/S) log(1 - mu/L_max), uniform (2/n) log(1 - mu/L_max), a ratio of exactly n L_max/S
    (up to O(mu/L_min) from the other blocks)."""
    L, mu = np.array([1.0, 2.0, 4.0, 32.0]), 0.05
    n, S = len(L), L.sum()
    seeds = range(8)
    imp_log, imp_mean = mean_log_decrease("importance", 1.0, L, mu, 500, seeds, lipschitz=L)
    uni_log, uni_mean = mean_log_decrease("uniform", 1.0 / L.max(), L, mu, 1500, seeds)
    ratio = (imp_log / 500) / (uni_log / 1500)
    assert n * L.max() / S == pytest.approx(3.28, abs=0.01)
    assert ratio == pytest.approx(n * L.max() / S, rel=0.1)
    # and both stay within their bounds (in expectation; these are means over the seeds)
    assert imp_mean <= (1 - mu / S) ** 500
    assert uni_mean <= (1 - mu / (n * L.max())) ** 1500


def coupled_quadratic(seed=0, n=4, d=3):
    """f(x) = 1/2 x^T A x - b^T x with a dense SPD A and stiff blocks; blocks of d coordinates."""
    rng = np.random.default_rng(seed)
    m = n * d
    q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    A = q @ np.diag(np.linspace(0.2, 1.0, m)) @ q.T
    scale = np.repeat([1.0, 3.0, 1.0, 10.0][:n], d) ** 0.5
    A = A * np.outer(scale, scale)
    b = rng.standard_normal(m)
    return A, b, np.linalg.solve(A, b)


def bcd_on_quadratic(A, b, steps, d=3, **kw):
    n = len(b) // d
    x = {f"x{i}": np.zeros(d) for i in range(n)}
    blocks = {f"b{i}": [f"x{i}"] for i in range(n)}
    L = [np.linalg.eigvalsh(A[i * d:(i + 1) * d, i * d:(i + 1) * d]).max() for i in range(n)]
    opt = optim.create("bcd", x, blocks=blocks, lr=1.0, lipschitz=L, **kw)
    flat = lambda: np.concatenate([x[f"x{i}"] for i in range(n)])  # noqa: E731
    f = lambda v: 0.5 * v @ A @ v - b @ v                           # noqa: E731
    values = [f(flat())]
    for _ in range(steps):
        g = A @ flat() - b
        opt.step({f"x{i}": g[i * d:(i + 1) * d].copy() for i in range(n)})
        values.append(f(flat()))
    return np.array(values), L


@pytest.mark.parametrize("selection", ["cyclic", "gauss-southwell", "reshuffle"])
def test_cyclic_gauss_southwell_and_reshuffling_converge_on_a_coupled_quadratic(selection):
    A, b, x_star = coupled_quadratic()
    f_star = -0.5 * b @ x_star
    values, L = bcd_on_quadratic(A, b, 400, selection=selection)
    gap = values - f_star
    assert np.all(np.diff(values) <= 1e-12)                    # steps 1/L_i never increase f
    assert gap[-1] <= 1e-8 * gap[0]
    if selection == "gauss-southwell":
        # every step makes the uniform rule's expected progress: gap_{k+1} <= (1 - mu/(n L_max)) gap_k
        mu, n = np.linalg.eigvalsh(A).min(), len(L)
        assert np.all(gap[1:] <= (1 - mu / (n * max(L))) * gap[:-1] + 1e-14)


def test_block_proximal_steps_reach_the_lasso_solution():
    """min 1/2 ||Mx - y||^2 + lam ||x||_1 by block prox-linear steps: the same minimizer as full
    ISTA (checked through the optimality condition of the lasso)."""
    rng = np.random.default_rng(0)
    M, y, lam = rng.standard_normal((20, 6)), rng.standard_normal(20), 2.0
    x = {"a": np.zeros(3), "b": np.zeros(3)}
    L_blocks = [np.linalg.eigvalsh(M[:, :3].T @ M[:, :3]).max(), np.linalg.eigvalsh(M[:, 3:].T @ M[:, 3:]).max()]
    opt = optim.create("bcd", x, blocks={"A": ["a"], "B": ["b"]}, inner="prox", prox=optim.prox.L1(lam),
                       lr=1.0, lipschitz=L_blocks)
    for _ in range(600):
        g = M.T @ (M @ np.r_[x["a"], x["b"]] - y)
        opt.step({"a": g[:3].copy(), "b": g[3:].copy()})
    v = np.r_[x["a"], x["b"]]
    g = M.T @ (M @ v - y)
    on = v != 0
    assert on.any() and not on.all()                              # a sparse solution
    np.testing.assert_allclose(g[on], -lam * np.sign(v[on]), atol=1e-8)
    assert np.all(np.abs(g[~on]) <= lam + 1e-8)


# ----------------------------------------------------------------------------- MISA
QKV = {"att.w": (("q", "attn_q", (0, 2)), ("k", "attn_k", (2, 4)), ("v", "attn_v", (4, 6)))}


def misa_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"emb": rng.standard_normal((4, 2)), "att.w": rng.standard_normal((6, 2)),
            "att.b": rng.standard_normal(6), "mlp.w": rng.standard_normal((4, 2)),
            "mlp.w2": rng.standard_normal((2, 4)), "head": rng.standard_normal(2)}


MISA_BLOCKS = {"emb": ["emb"], "layer": ["att.w", "att.b", "mlp.w", "mlp.w2"], "head": ["head"]}


def test_misa_modules_are_the_matrices_and_the_parts_of_a_fused_one():
    p = misa_params()
    opt = optim.create("misa", p, blocks=MISA_BLOCKS, splits=QKV, delta=0.25, switch_every=2)
    assert list(opt.module_probabilities()) == ["att.w:q", "att.w:k", "att.w:v", "mlp.w", "mlp.w2"]
    total = sum(v.size for v in p.values())
    assert opt.budget == pytest.approx(0.25 * total)
    for t in range(20):
        active = opt.active_blocks()
        assert sum({"mlp.w": 8, "mlp.w2": 8}.get(m, 4) for m in active) <= 0.25 * total
        assert ("att.w" in opt.trainable_names()) == any(m.startswith("att.w:") for m in active)
        before = copy_params(p)
        opt.step(grads_at(p, t))
        rows = {"q": slice(0, 2), "k": slice(2, 4), "v": slice(4, 6)}
        for part, r in rows.items():           # the fused matrix moves only in its active rows
            moved = not np.array_equal(p["att.w"][r], before["att.w"][r])
            assert moved == (f"att.w:{part}" in active), (t, part)
        # state: the active modules' elements plus the always-trained emb, head and vector att.b
        units = set(active) | {"emb", "head", "att.b"}
        assert set(opt.state) == units
        elements = sum({"emb": 8, "head": 2, "att.b": 6, "mlp.w": 8, "mlp.w2": 8}.get(u, 4) for u in units)
        assert opt.state_bytes() == 2 * 8 * elements


def test_misa_trains_every_module_once_before_sampling_by_score():
    """44 parameters, delta 0.25: 11 per period, e.g. two 4-row parts, or a part and a matrix."""
    p = misa_params()
    opt = optim.create("misa", p, blocks=MISA_BLOCKS, splits=QKV, delta=0.25, switch_every=2, revisit=0)
    assert opt.active_blocks() == ["att.w:q", "att.w:k"]        # never trained, in order, if they fit
    trained = set()
    for t in range(8):
        trained |= set(opt.active_blocks())
        opt.step(grads_at(p, t))
    assert trained == set(opt.module_probabilities())            # all five within four periods
    with pytest.raises(ValueError, match=r"delta=0.05 allows 2 of the 44 parameters.*at least 0.091$"):
        optim.create("misa", p, blocks=MISA_BLOCKS, splits=QKV, delta=0.05)


@pytest.mark.parametrize("other", [81047, 40, 5000, 12345, 21822])   # 49/21,875 = 0.00224 exactly,
#                                                                        but 0.00224 * 21,875 < 49 in floats
def test_misa_accepts_the_delta_its_error_advises(other):
    """The advised delta is the smallest module's share rounded up to three digits (rounded to
    nearest, 49 of 81,100 gave 0.000604, which allowed 48.98 parameters: the same error again)."""
    p = {"emb": np.zeros(3), "a": np.zeros((7, 7)), "b": np.zeros(other), "head": np.zeros(1)}
    blocks = {"e": ["emb"], "A": ["a"], "B": ["b"], "h": ["head"]}
    with pytest.raises(ValueError, match="raise delta to at least") as e:
        optim.create("misa", p, blocks=blocks, delta=1e-6)
    advised = float(str(e.value).rsplit(" ", 1)[1])
    optim.create("misa", p, blocks=blocks, delta=advised)


def misa_run(eta, periods, scale, delta=0.25, switch_every=2, seed=0, revisit=0, granularity="module",
             blocks=MISA_BLOCKS):
    """MISA on fixed gradients whose norm is ``scale[module]`` times larger for some modules."""
    p = misa_params()
    opt = optim.create("misa", p, blocks=blocks, splits=QKV, delta=delta, switch_every=switch_every,
                       eta=eta, revisit=revisit, seed=seed, granularity=granularity, lr=1e-3)
    counts = dict.fromkeys(opt.module_probabilities(), 0)
    for t in range(periods * switch_every):
        if t % switch_every == 0:
            for m in opt.active_blocks():
                counts[m] += 1
        g = {n: np.ones_like(v) for n, v in p.items()}
        g["att.w"][0:2] *= scale.get("att.w:q", 1.0)
        g["mlp.w"] *= scale.get("mlp.w", 1.0)
        opt.step(g)
    return opt, counts


def test_misa_probabilities_follow_the_scores_as_the_paper_and_code_say():
    """p_b = exp(min(c, eta Ghat_b^2)) / sum_j exp(min(c, eta Ghat_j^2)), Ghat the bias-corrected
    average of the module's mean gradient norm."""
    opt, _ = misa_run(eta=0.5, periods=12, scale={"att.w:q": 3.0})
    gs = opt.global_state
    beta = opt.score_decay
    ghat = np.array([g / (1 - beta ** t) if t else 0.0 for g, t in zip(gs["score"], gs["score_periods"])])
    logits = np.minimum(opt.score_clip, 0.5 * ghat ** 2)
    np.testing.assert_allclose(list(opt.module_probabilities().values()),
                               np.exp(logits) / np.exp(logits).sum(), rtol=1e-12)
    # the mean gradient norm of a module with all-ones gradients is sqrt(size); q is 3x that
    np.testing.assert_allclose(ghat[0], 3 * math.sqrt(4), rtol=1e-12)
    np.testing.assert_allclose(ghat[1], math.sqrt(4), rtol=1e-12)


def test_misa_sampling_concentrates_on_modules_with_larger_gradients():
    _, flat = misa_run(eta=0.3, periods=300, scale={})
    _, skew = misa_run(eta=0.3, periods=300, scale={"att.w:q": 2.0, "mlp.w": 0.25})
    assert skew["att.w:q"] > 1.5 * flat["att.w:q"]
    assert skew["mlp.w"] < flat["mlp.w"]
    opt, _ = misa_run(eta=0.0, periods=5, scale={"att.w:q": 5.0})
    assert set(opt.module_probabilities().values()) == {0.2}    # eta = 0: uniform


def test_misa_with_layers_as_modules_and_uniform_scores_is_lisa_like():
    """granularity='layer', eta=0 and a budget of exactly gamma = 2 of 4 equal layers: every
    period trains the always blocks and 2 whole layers, each layer in half the periods, with
    LISA's state."""
    rng = np.random.default_rng(0)
    p = {"emb": rng.standard_normal(4), **{f"l{i}.w": rng.standard_normal((2, 2)) for i in range(4)},
         "head": rng.standard_normal(4)}
    blocks = {"emb": ["emb"], **{f"l{i}": [f"l{i}.w"] for i in range(4)}, "head": ["head"]}
    opt = optim.create("misa", p, blocks=blocks, delta=8 / 24, granularity="layer", eta=0.0, revisit=0,
                       switch_every=1)
    counts = dict.fromkeys([f"l{i}" for i in range(4)], 0)
    for t in range(800):
        active = opt.active_blocks()
        assert len(active) == 2                                  # gamma = 2 layers of 4 elements
        names = opt.trainable_names()
        assert names == {"emb", "head"} | {f"{b}.w" for b in active}
        for b in active:
            counts[b] += 1
        opt.step({n: np.ones_like(v) for n, v in p.items()})
        assert opt.state_bytes() == 2 * sum(p[n].nbytes for n in names)
    # each layer in half the periods: within 4.5 standard deviations
    assert all(abs(c / 800 - 0.5) <= 4.5 * math.sqrt(0.25 / 800) for c in counts.values())


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name,kw,pattern", [
    ("lisa", dict(layers=4), r"layers=4 must be an integer from 1 to the number of layers, 3"),
    ("lisa", dict(layers=0), r"layers=0"),
    ("lisa", dict(switch_every=0), r"LISA: switch_every must be an integer >= 1, got 0"),
    ("badam", dict(switch_every=-2), r"BAdam: switch_every must be an integer >= 1, got -2"),
    ("bcd", dict(switch_every=1.5), r"switch_every must be an integer >= 1, got 1.5"),
    ("misa", dict(switch_every=0), r"MISA: switch_every"),
    ("misa", dict(delta=0.0), r"delta .* must be in \(0, 1\], got 0.0"),
    ("misa", dict(delta=1.5), r"delta .* must be in \(0, 1\], got 1.5"),
    ("misa", dict(delta=-0.1), r"got -0.1"),
    ("lisa", dict(always=["emb", "nope"]), r"always=\['emb', 'nope'\] names unknown block\(s\) \['nope'\]"),
    ("badam", dict(include=["x"]), r"include=\['x'\] names unknown block"),
    ("badam", dict(order="fixed", block_order=["l9"]), r"block_order=\['l9'\] names unknown block"),
    ("badam", dict(order="fixed", block_order=["emb"]), r"excluded: \['emb'\] \(add them to include\)"),
    ("badam", dict(order="fixed"), r"order='fixed' needs block_order"),
    ("badam", dict(order="sideways"), r"order must be one of"),
    ("bcd", dict(lipschitz={"l0": 1.0}), r"lipschitz gives no value for block\(s\) \['emb'"),
    ("bcd", dict(lipschitz={"zz": 1.0}), r"lipschitz=\['zz'\] names unknown block"),
    ("bcd", dict(lipschitz=[1, 2, 3, 4, 0]), r"lipschitz must be finite numbers > 0"),
    ("bcd", dict(selection="importance"), r"selection='importance' needs weights"),
    ("bcd", dict(selection="best"), r"selection must be one of"),
    ("bcd", dict(inner="mezo"), r"inner optimizer 'mezo' is zeroth-order"),
    ("bcd", dict(inner="lisa"), r"inner optimizer 'lisa' is itself a block method"),
    ("bcd", dict(inner="prox"), r"inner='prox' needs prox="),
    ("bcd", dict(inner_kwargs={"lr": 0.1}), r"inner_kwargs must not set \['lr'\]"),
    ("bcd", dict(seed=-1), r"seed must be an int >= 0"),
    ("misa", dict(granularity="row"), r"granularity must be one of"),
    ("misa", dict(splits={"nope": ()}), r"splits name unknown parameter"),
])
def test_bad_options_are_value_errors_naming_option_and_value(name, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.create(name, make_params(), blocks=BLOCKS, **kw)


@pytest.mark.parametrize("name", ["bcd", "lisa", "badam", "misa"])
def test_blocks_must_partition_the_parameters(name):
    p = make_params()
    two = {**BLOCKS, "l2": ["l2.w", "l2.b", "l1.b"]}
    with pytest.raises(ValueError, match=r"parameter 'l1.b' is in two blocks, 'l1' and 'l2'"):
        optim.create(name, p, blocks=two)
    none = {b: ns for b, ns in BLOCKS.items() if b != "head"}
    with pytest.raises(ValueError, match=r"parameter\(s\) \['head'\] are in no block"):
        optim.create(name, p, blocks=none)
    with pytest.raises(ValueError, match=r"block 'l0' names unknown parameter\(s\) \['l0.x'\]"):
        optim.create(name, p, blocks={**BLOCKS, "l0": ["l0.w", "l0.b", "l0.x"]})
    with pytest.raises(ValueError, match=r"'l0.w' is listed twice in block 'l0'"):
        optim.create(name, p, blocks={**BLOCKS, "l0": ["l0.w", "l0.b", "l0.w"]})
    with pytest.raises(ValueError, match=r"block 'l0' is empty"):
        optim.create(name, p, blocks={**BLOCKS, "l0": []})


def test_block_params_reads_objects_with_name_and_params():
    class Block:
        def __init__(self, name, params):
            self.name, self.params = name, params
    assert optim.block_params([Block("a", ("x", "y")), Block("b", ["z"])]) == {"a": ["x", "y"], "b": ["z"]}
    with pytest.raises(ValueError, match="two blocks are named 'a'"):
        optim.block_params([Block("a", ["x"]), Block("a", ["y"])])
    with pytest.raises(TypeError, match=r"\.name and a list of parameter names \.params"):
        optim.block_params([("a", ["x"])])
