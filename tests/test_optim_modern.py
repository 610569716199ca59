"""Lion, Adafactor, Muon and Adam-mini (optim/modern.py): each against torch or a direct
transcription of its paper in float64, its state bytes, a checkpoint resumed mid-run, and bad
options refused naming them."""
import numpy as np
import pytest

import optim

SHAPES = {"vec": (7,), "wide": (3, 5), "tall": (6, 2), "cube": (2, 3, 4)}
STEPS = 25


def make_params(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s) for n, s in shapes.items()}


def grads_at(params, t, seed=1):
    """Gradients of a noisy quadratic at the current parameters (so the trajectory matters)."""
    rng = np.random.default_rng([seed, t])
    return {n: (p - 0.3 + 0.5 * rng.standard_normal(p.shape)).astype(p.dtype) for n, p in params.items()}


def run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        opt.step(grads_at(params, t))


def assert_resumes_bit_for_bit(name, shapes=SHAPES, **kw):
    """12 steps, a checkpoint through flatten/unflatten, a fresh optimizer, 13 more: the same
    parameters as 25 uninterrupted steps."""
    straight = make_params(shapes)
    run(optim.create(name, straight, **kw), straight, STEPS)
    resumed = make_params(shapes)
    first = optim.create(name, resumed, **kw)
    run(first, resumed, 12)
    sd = optim.unflatten_state_dict(optim.flatten_state_dict(first.state_dict()))
    saved = {n: p.copy() for n, p in resumed.items()}
    params = {n: p.copy() for n, p in saved.items()}
    second = optim.create(name, params, **kw)
    second.load_state_dict(sd)
    run(second, params, STEPS - 12, start=12)
    for n in straight:
        np.testing.assert_array_equal(params[n], straight[n], err_msg=n)


# ----------------------------------------------------------------------------- Lion
def lion_algorithm_2(params, grads_fn, steps, lr, b1, b2, wd):
    """Chen et al. (2023), Algorithm 2, line by line."""
    x = {n: p.copy() for n, p in params.items()}
    m = {n: np.zeros_like(p) for n, p in params.items()}
    for t in range(steps):
        g = grads_fn(x, t)
        for n in x:
            c = b1 * m[n] + (1 - b1) * g[n]
            x[n] = x[n] - lr * (np.sign(c) + wd * x[n])
            m[n] = b2 * m[n] + (1 - b2) * g[n]
    return x


@pytest.mark.parametrize("kw", [{}, {"lr": 3e-3, "betas": (0.8, 0.95), "weight_decay": 0.3}])
def test_lion_is_algorithm_2_of_the_paper(kw):
    params = make_params()
    expected = lion_algorithm_2(params, grads_at, STEPS, kw.get("lr", 1e-4),
                                *kw.get("betas", (0.9, 0.99)), kw.get("weight_decay", 0.0))
    run(optim.create("lion", params, **kw), params, STEPS)
    for n in params:
        np.testing.assert_allclose(params[n], expected[n], rtol=1e-10, atol=0, err_msg=n)


def test_lion_moves_every_coordinate_by_lr_on_the_first_step():
    params = make_params()
    before = {n: p.copy() for n, p in params.items()}
    optim.create("lion", params, lr=0.01).step(grads_at(params, 0))
    for n in params:
        np.testing.assert_allclose(np.abs(params[n] - before[n]), 0.01, rtol=1e-12)


def test_lion_state_bytes_and_resume():
    params = {n: p.astype(np.float32) for n, p in make_params().items()}
    opt = optim.create("lion", params)
    assert opt.expected_state_bytes() == sum(p.nbytes for p in params.values())
    assert_resumes_bit_for_bit("lion", lr=1e-3, weight_decay=0.1)


@pytest.mark.parametrize("kw,match", [({"betas": (1.0, 0.99)}, r"betas\[0\] must be in \[0, 1\)"),
                                      ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
                                      ({"weight_decay": -1.0}, "weight_decay"),
                                      ({"lr": -1.0}, "learning rate")])
def test_lion_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.create("lion", make_params(), **kw)


# ----------------------------------------------------------------------------- torch parity
torch = pytest.importorskip("torch")


def torch_run(make_opt, params, steps):
    """torch's optimizer on float64 copies of ``params``, fed the same gradients as ours."""
    tp = {n: torch.tensor(p, dtype=torch.float64, requires_grad=True) for n, p in params.items()}
    opt = make_opt(list(tp.values()))
    for t in range(steps):
        g = grads_at({n: v.detach().numpy() for n, v in tp.items()}, t)
        for n, v in tp.items():
            v.grad = torch.tensor(g[n])
        opt.step()
    return {n: v.detach().numpy() for n, v in tp.items()}


# ----------------------------------------------------------------------------- Adafactor
@pytest.mark.parametrize("kw", [{}, {"lr": 0.3, "weight_decay": 0.1}, {"maximize": True},
                                {"beta2_decay": -0.5, "eps": (1e-30, 1e-2), "d": 1.5}])
def test_adafactor_equals_torch_on_1d_2d_and_3d_shapes(kw):
    params = make_params()
    expected = torch_run(lambda ps: torch.optim.Adafactor(ps, **kw), params, STEPS)
    run(optim.create("adafactor", params, **kw), params, STEPS)
    for n in params:
        np.testing.assert_allclose(params[n], expected[n], rtol=1e-10, atol=0, err_msg=n)


def test_adafactor_factored_second_moment_is_exact_for_a_rank_one_g_squared():
    """G^2 = a b^T with a, b > 0: at t = 1 (beta2_1 = 0) R C / mean(R) = G^2, so U = sign(G),
    RMS(U) = 1 (no clipping) and the step is alpha_1 * sign(G)."""
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 4)
    G = np.sqrt(np.outer(a, b)) * rng.choice([-1.0, 1.0], (5, 4))
    p = {"w": rng.standard_normal((5, 4))}
    w0 = p["w"].copy()
    optim.create("adafactor", p, lr=0.5).step({"w": G})
    alpha = max(1e-3, np.sqrt(np.mean(w0 ** 2))) * 0.5
    np.testing.assert_allclose(w0 - p["w"], alpha * np.sign(G), rtol=1e-12)


def test_adafactor_clips_the_update_rms_at_d():
    """Gradients growing 10-fold per step: the second moment lags behind them, RMS(U) > 1
    (about 1/sqrt(1 - beta2_t)) from step 2 on, so d = 1 clips the step to RMS alpha_t exactly;
    d = 2 lets it through, below 2 alpha_t."""
    rng = np.random.default_rng(4)
    for d in (1.0, 2.0):
        p = {"w": rng.standard_normal((6, 3)), "b": rng.standard_normal(4)}
        opt = optim.create("adafactor", p, d=d)
        for t in range(1, 6):
            before = {n: v.copy() for n, v in p.items()}
            alpha = {n: max(1e-3, np.sqrt(np.mean(v ** 2))) * min(1e-2, t ** -0.5) for n, v in p.items()}
            opt.step({n: 10.0 ** t * rng.standard_normal(v.shape) for n, v in p.items()})
            for n in p:
                step_rms = np.sqrt(np.mean((p[n] - before[n]) ** 2)) / alpha[n]
                assert step_rms <= d * (1 + 1e-12), (n, t, step_rms)
                if t > 1 and d == 1.0:
                    np.testing.assert_allclose(step_rms, d, rtol=1e-12)
                elif t > 1:
                    assert 1.0 < step_rms < d, (n, t, step_rms)


def test_adafactor_state_bytes_and_resume():
    params = {n: p.astype(np.float32) for n, p in make_params().items()}
    opt = optim.create("adafactor", params)
    # vec: 7; wide 3 x 5: 3 + 5; tall 6 x 2: 6 + 2; cube 2 x (3 x 4): 2 * (3 + 4)
    assert opt.expected_state_bytes() == 4 * (7 + 8 + 8 + 14)
    run(opt, params, 1)
    assert opt.state_bytes() == opt.expected_state_bytes()
    assert_resumes_bit_for_bit("adafactor", lr=0.1, weight_decay=0.1)


@pytest.mark.parametrize("kw,match", [({"beta2_decay": 0.1}, "beta2_decay must be <= 0"),
                                      ({"eps": (-1.0, 1e-3)}, r"eps\[0\] must be a number >= 0"),
                                      ({"eps": (None, -1e-3)}, r"eps\[1\] must be a number >= 0"),
                                      ({"eps": (1e-3,)}, "eps must be a pair"),
                                      ({"d": 0.5}, "clipping threshold d must be >= 1")])
def test_adafactor_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.create("adafactor", make_params(), **kw)


# ----------------------------------------------------------------------------- Muon
def _newton_schulz_without_bfloat16(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz with its ``grad.bfloat16()`` removed."""
    a, b, c = ns_coefficients
    ortho_grad = grad.clone()
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


MATRICES = {"wide": (3, 5), "tall": (6, 2), "square": (4, 4)}


@pytest.mark.parametrize("kw", [{}, {"lr": 0.02, "weight_decay": 0.0, "nesterov": False},
                                {"adjust_lr_fn": "match_rms_adamw", "momentum": 0.9, "ns_steps": 3},
                                {"adjust_lr_fn": "original", "weight_decay": 0.5}])
def test_muon_equals_torch_muon_in_float64(monkeypatch, kw):
    from torch.optim import _muon
    monkeypatch.setattr(_muon, "_zeropower_via_newtonschulz", _newton_schulz_without_bfloat16)
    params = make_params(MATRICES)
    expected = torch_run(lambda ps: torch.optim.Muon(ps, **kw), params, STEPS)
    run(optim.create("muon", params, **kw), params, STEPS)
    for n in params:
        np.testing.assert_allclose(params[n], expected[n], rtol=1e-10, atol=0, err_msg=n)


def test_newton_schulz_maps_singular_values_into_0_68_to_1_21():
    rng = np.random.default_rng(5)
    # phi applied 5 times to every Frobenius-normalised singular value in [1.5e-3, 1]
    # (the low end, 1.5e-3 itself, lands at 0.6798)
    s = np.linspace(1.5e-3, 1, 100001)
    for _ in range(5):
        s = 3.4445 * s - 4.7750 * s ** 3 + 2.0315 * s ** 5
    assert 0.679 <= s.min() and s.max() <= 1.21
    # matrices: Gaussian, and singular values spread over 2.5 decades
    U, _ = np.linalg.qr(rng.standard_normal((60, 40)))
    V, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    spread = (U * np.logspace(0, -2.5, 40)) @ V.T
    for G in (rng.standard_normal((256, 128)), spread, spread.T):
        sv = np.linalg.svd(optim.modern.newton_schulz(G), compute_uv=False)
        assert 0.68 <= sv.min() and sv.max() <= 1.21, (G.shape, sv.min(), sv.max())


def test_newton_schulz_is_close_to_the_polar_factor_and_transposes():
    rng = np.random.default_rng(6)
    U, _ = np.linalg.qr(rng.standard_normal((12, 8)))
    V, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    G = (U * rng.uniform(0.5, 1.0, 8)) @ V.T          # well conditioned
    O, polar = optim.modern.newton_schulz(G), U @ V.T
    assert np.sum(O * polar) / (np.linalg.norm(O) * np.linalg.norm(polar)) > 0.99
    np.testing.assert_array_equal(optim.modern.newton_schulz(G.T), O.T)
    # invariant to rescaling its input: the momentum's scale does not matter
    np.testing.assert_allclose(optim.modern.newton_schulz(1e3 * G), O, rtol=1e-10, atol=1e-13)


def gpt_like(C=4, V=7, seed=0):
    """A one-layer GPT's parameters, roles and splits (fused q/k/v rows)."""
    rng = np.random.default_rng(seed)
    shapes = {"wte": (V, C), "ln.weight": (C,), "c_attn.weight": (3 * C, C), "c_attn.bias": (3 * C,),
              "c_proj.weight": (C, C), "c_fc.weight": (4 * C, C), "mlp_proj.weight": (C, 4 * C)}
    roles = {"wte": "embedding", "ln.weight": "norm", "c_attn.weight": "attn_qkv",
             "c_attn.bias": "bias", "c_proj.weight": "attn_out", "c_fc.weight": "mlp_in",
             "mlp_proj.weight": "mlp_out"}
    splits = {"c_attn.weight": (("q", "attn_q", (0, C)), ("k", "attn_k", (C, 2 * C)),
                                ("v", "attn_v", (2 * C, 3 * C)))}
    return {n: rng.standard_normal(s) for n, s in shapes.items()}, roles, splits


def test_muon_orthogonalizes_hidden_matrices_part_by_part_and_adamw_does_the_rest():
    params, roles, splits = gpt_like()
    kw = dict(lr=0.02, weight_decay=0.1)
    ours = {n: p.copy() for n, p in params.items()}
    opt = optim.create("muon", ours, roles=roles, splits=splits, **kw)
    assert [n for n in ours if opt.is_muon(n)] == ["c_attn.weight", "c_proj.weight", "c_fc.weight",
                                                   "mlp_proj.weight"]
    # the same run as Muon on q, k, v as three matrices and AdamW on the rest
    parts = optim.split_matrices({n: p.copy() for n, p in params.items()}, splits)
    hidden = {n: p for n, p in parts.items() if n.startswith(("c_attn.weight:", "c_proj", "c_fc", "mlp_proj"))}
    other = {n: p for n, p in parts.items() if n not in hidden}
    muon = optim.create("muon", hidden, **kw)
    adamw = optim.AdamW(other, betas=(0.9, 0.95), eps=1e-10, **kw)
    for t in range(5):
        g = grads_at(ours, t)
        opt.step(g)
        g_parts = optim.split_matrices(g, splits)
        muon.step({n: g_parts[n] for n in hidden})
        adamw.step({n: g_parts[n] for n in other})
    fused = np.concatenate([hidden[f"c_attn.weight:{k}"] for k in "qkv"])
    np.testing.assert_array_equal(ours["c_attn.weight"], fused)
    for n in params:
        if n != "c_attn.weight":
            np.testing.assert_array_equal(ours[n], parts[n], err_msg=n)
    # the fused matrix orthogonalized whole is a different update
    whole = {n: p.copy() for n, p in params.items()}
    optim.create("muon", whole, roles=roles, **kw).step(grads_at(whole, 0))
    once = {n: p.copy() for n, p in params.items()}
    optim.create("muon", once, roles=roles, splits=splits, **kw).step(grads_at(once, 0))
    assert not np.allclose(whole["c_attn.weight"], once["c_attn.weight"])


def test_muon_without_roles_takes_every_2d_parameter_and_adamw_kwargs_apply():
    params = make_params()
    opt = optim.create("muon", params, adamw_kwargs={"lr": 3e-4, "weight_decay": 0.0})
    assert {n: opt.is_muon(n) for n in params} == {"vec": False, "wide": True, "tall": True, "cube": False}
    expected = {n: params[n].copy() for n in ("vec", "cube")}
    adamw = optim.AdamW(expected, lr=3e-4, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)
    sched = optim.LRScheduler(opt, lambda t: 0.5 ** t)   # scales the AdamW lr too
    for t in range(4):
        g = grads_at(params, t)
        opt.step(g)
        adamw.param_groups[0]["lr"] = 3e-4 * 0.5 ** t
        adamw.step({n: g[n] for n in expected})
        sched.step()
    for n in expected:
        np.testing.assert_array_equal(params[n], expected[n], err_msg=n)


def test_muon_state_bytes_and_resume():
    params, roles, splits = gpt_like()
    params = {n: p.astype(np.float32) for n, p in params.items()}
    opt = optim.create("muon", params, roles=roles, splits=splits)
    hidden = ("c_attn.weight", "c_proj.weight", "c_fc.weight", "mlp_proj.weight")
    assert opt.expected_state_bytes() == sum((1 if n in hidden else 2) * p.nbytes for n, p in params.items())
    run(opt, params, 1)
    assert opt.state_bytes() == opt.expected_state_bytes()
    assert_resumes_bit_for_bit("muon", lr=0.02, adamw_kwargs={"lr": 1e-3})


@pytest.mark.parametrize("kw,match", [
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"), ({"ns_steps": 0}, "ns_steps must be an integer >= 1"),
    ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients must be three numbers"),
    ({"eps": -1.0}, "eps must be a number >= 0"), ({"adjust_lr_fn": "rms"}, "adjust_lr_fn must be None"),
    ({"adamw_kwargs": {"momentum": 0.9}}, r"adamw_kwargs takes .* unknown \['momentum'\]"),
    ({"adamw_kwargs": {"betas": (0.9, 1.5)}}, r"betas\[1\] must be in \[0, 1\)"),
    ({"adamw_kwargs": {"lr": -1.0}}, "adamw_kwargs lr must be a finite number >= 0"),
    ({"roles": {"wide": "mlp_in"}}, "no role for parameter 'vec'"),
    ({"splits": {"nope": (("a", "attn_q", (0, 1)),)}}, r"splits name unknown parameter\(s\) \['nope'\]"),
])
def test_muon_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.create("muon", make_params(), **kw)


# ----------------------------------------------------------------------------- Adam-mini
def test_adam_mini_with_one_block_per_element_is_adamw_exactly():
    shapes = {"b1": (5,), "b2": (3,), "col": (6, 1)}
    roles = {"b1": "bias", "b2": "bias", "col": "mlp_in"}     # a (6, 1) matrix: a row per element
    kw = dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    ours, ref = make_params(shapes), make_params(shapes)
    opt = optim.create("adam-mini", ours, roles=roles, **kw)
    assert [opt.blocks(n) for n in shapes] == [5, 3, 6]
    adamw = optim.AdamW(ref, **kw)
    for t in range(STEPS):
        opt.step(grads_at(ours, t))
        adamw.step(grads_at(ref, t))
    for n in shapes:
        np.testing.assert_array_equal(ours[n], ref[n], err_msg=n)


def adam_mini_reference(W, grads, lr, b1, b2, eps, blocks):
    """Adam-mini on one matrix written out: ``blocks`` rows of W.reshape(blocks, -1) share v."""
    W, m, v = W.copy(), np.zeros_like(W), np.zeros(blocks)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * np.mean(g.reshape(blocks, -1) ** 2, axis=1)
        v_hat = np.sqrt(v / (1 - b2 ** t))[:, None]
        W = W - lr * ((m / (1 - b1 ** t)).reshape(blocks, -1) / (v_hat + eps)).reshape(W.shape)
    return W


def test_adam_mini_blocks_of_a_gpt_layer_follow_the_partition():
    params, roles, splits = gpt_like(C=4)
    opt = optim.create("adam-mini", params, n_head=2, roles=roles, splits=splits)
    counts = {n: opt.blocks(n) for n in params}
    # c_attn: 2 heads for q, 2 for k, 4 rows of v; per row: wte (tokens), c_proj, c_fc, mlp_proj
    assert counts == {"wte": 7, "ln.weight": 1, "c_attn.weight": 2 + 2 + 4, "c_attn.bias": 12,
                      "c_proj.weight": 4, "c_fc.weight": 16, "mlp_proj.weight": 4}
    n = sum(p.size for p in params.values())
    assert opt.expected_state_bytes() == 8 * (n + sum(counts.values()))
    run(opt, params, 1)
    assert opt.state_bytes() == opt.expected_state_bytes()
    # the fused matrix without splits is cut the same way
    fused = optim.create("adam-mini", gpt_like(C=4)[0], n_head=2, roles=roles)
    assert fused.blocks("c_attn.weight") == 8


def test_adam_mini_on_grouped_query_attention_cuts_k_by_its_own_heads():
    """A GQA GPT (8 query heads, 2 key/value heads): q gets 8 blocks, k 2 (one per kv head),
    v one per row -- through build_optimizer, as the train CLI builds it."""
    from models.gpt import GPT, GPTConfig
    from models.training.optimizers import build_optimizer

    cfg = GPTConfig(n_layer=1, n_head=8, n_kv_head=2, n_embd=32, block_size=8, vocab_size=11)
    opt = build_optimizer("adam-mini", GPT(cfg, seed=0), lr=1e-3)
    kv = 2 * 32 // 8                                        # k and v rows: 2 heads of 4
    assert opt.blocks("h.0.attn.c_attn.weight") == 8 + 2 + kv
    with pytest.raises(ValueError, match="grouped-query attention needs splits="):
        optim.create("adam-mini", {"w": np.zeros((32 + 2 * kv, 32))}, n_head=8, n_kv_head=2,
                     roles={"w": "attn_qkv"}).blocks("w")


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_adam_mini_per_head_and_per_row_updates_are_the_formula(order):
    """Also with the fused q/k/v rows' splits listed out of row order (v first): each block's
    second moment must stay on its own rows."""
    params, roles, splits = gpt_like(C=4)
    splits = {n: tuple(parts[i] for i in order) for n, parts in splits.items()}
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    start = {n: p.copy() for n, p in params.items()}
    opt = optim.create("adam-mini", params, n_head=2, roles=roles, splits=splits, **kw)
    seen = []
    for t in range(STEPS):
        g = grads_at(params, t)
        seen.append(g)
        opt.step(g)
    args = (kw["lr"], *kw["betas"], kw["eps"])
    q = adam_mini_reference(start["c_attn.weight"][:4], [g["c_attn.weight"][:4] for g in seen], *args, blocks=2)
    k = adam_mini_reference(start["c_attn.weight"][4:8], [g["c_attn.weight"][4:8] for g in seen], *args, blocks=2)
    v = adam_mini_reference(start["c_attn.weight"][8:], [g["c_attn.weight"][8:] for g in seen], *args, blocks=4)
    fc = adam_mini_reference(start["c_fc.weight"], [g["c_fc.weight"] for g in seen], *args, blocks=16)
    ln = adam_mini_reference(start["ln.weight"], [g["ln.weight"] for g in seen], *args, blocks=1)
    np.testing.assert_allclose(params["c_attn.weight"][:4], q, rtol=1e-10)
    np.testing.assert_allclose(params["c_attn.weight"][4:8], k, rtol=1e-10)
    np.testing.assert_allclose(params["c_attn.weight"][8:], v, rtol=1e-10)
    np.testing.assert_allclose(params["c_fc.weight"], fc, rtol=1e-10)
    np.testing.assert_allclose(params["ln.weight"], ln, rtol=1e-10)


def test_adam_mini_resumes_bit_for_bit():
    assert_resumes_bit_for_bit("adam-mini", lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize("kw,match", [
    ({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\)"), ({"eps": -1e-8}, "eps must be a number >= 0"),
    ({"n_head": 0}, "n_head must be an integer >= 1"),
    ({"roles": {"vec": "bias", "wide": "attn_q", "tall": "mlp_in", "cube": "other"}}, "pass n_head="),
    ({"roles": {"vec": "bias", "wide": "attn_q", "tall": "mlp_in", "cube": "other"}, "n_head": 2},
     "3 rows, not divisible by n_head=2"),
])
def test_adam_mini_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.create("adam-mini", make_params(), **kw)
