"""models.costs.gpt_costs: exact parameter / activation / optimizer bytes of the GPT against
minigrad.memory's live ledger, the lecture's formulas beside them, and exact matmul FLOP counts."""
import numpy as np
import pytest

import minigrad
import optim
from minigrad import memory
from minigrad.backend import use_backend
from models.costs import gpt_costs, gpt_param_shapes
from models.gpt import GPT, GPTConfig

# micro configs: bias on/off, dropout on/off, heads != 1, vocab not a multiple of anything
CONFIGS = [
    dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11),
    dict(n_layer=1, n_head=4, n_embd=8, block_size=6, vocab_size=7, bias=False),
    dict(n_layer=3, n_head=1, n_embd=12, block_size=5, vocab_size=13, dropout=0.25),
]


def _batch(cfg, b, s, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (b, s)), rng.integers(0, cfg.vocab_size, (b, s))


def _step(model, x, y, opt=None):
    """One training step inside a ledger; returns the ledger."""
    with memory.track(model, opt) as m:
        _, loss = model(x, y)
        loss.backward()
        if opt is not None:
            opt.step({n: p.grad for n, p in model.named_parameters()})
    return m


@pytest.mark.parametrize("kw", CONFIGS)
def test_parameter_count_and_bytes_exact(kw):
    cfg = GPTConfig(**kw)
    model = GPT(cfg)
    costs = gpt_costs(cfg, batch_size=2)
    exact = sum(p.size for _, p in model.named_parameters())  # tied head counted once
    assert costs.params == exact
    assert sum(costs.params_terms.values()) == exact
    x, y = _batch(cfg, 2, cfg.block_size)
    led = _step(model, x, y)
    assert led.peak["params"] == costs.bytes["params"] == 4 * exact
    assert led.peak["grads"] == costs.bytes["grads"]
    # the lecture's 12·l·h² + v·h misses exactly biases, norms and the position table
    missed = costs.params - costs.lecture["params"]
    h, l = cfg.n_embd, cfg.n_layer
    assert missed == cfg.block_size * h + (13 * l * h + 2 * h if cfg.bias else 2 * l * h + h)


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("seq", [None, 3])
def test_activation_bytes_match_saved_array_count_exactly(kw, seq):
    cfg = GPTConfig(**kw)
    s = cfg.block_size if seq is None else seq
    b = 3
    x, y = _batch(cfg, b, s, seed=1)
    with use_backend("numpy"):
        led = _step(GPT(cfg), x, y)
    costs = gpt_costs(cfg, b, seq_len=s)
    assert led.peak["activations"] == costs.bytes["activations"]
    assert sum(costs.activation_terms.values()) == costs.bytes["activations"]
    assert led.current["activations"] == 0  # backward freed everything it saved


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("kw", [CONFIGS[0], CONFIGS[2]])
def test_checkpointed_peak_is_the_tail_when_the_logits_dominate(kw, backend):
    """With a vocabulary large enough, the logits and the other tail arrays alive at the end of
    the forward outweigh one recomputed block: the checkpointed peak is the block inputs plus the
    tail, not plus a block (the CONFIGS vocabularies of 7-13 never reach this case)."""
    kw = {**kw, "vocab_size": 500}
    b, s = 3, 5
    x, y = _batch(GPTConfig(**kw), b, s, seed=4)
    with use_backend(backend):
        plain = _step(GPT(GPTConfig(**kw)), x, y)
        ck = _step(GPT(GPTConfig(**kw, checkpoint=True)), x, y)
    costs = gpt_costs(GPTConfig(**kw), b, seq_len=s, backend=backend)
    assert b * s * kw["vocab_size"] * 4 > sum(costs.activation_layer_terms.values())  # logits > a block
    assert plain.peak["activations"] == costs.bytes["activations"]
    assert ck.peak["activations"] == costs.activations_checkpointed
    assert ck.current["activations"] == 0


@pytest.mark.parametrize("kw", CONFIGS)
def test_fused_attention_bytes_match_and_the_ledger_shows_the_saving(kw):
    cfg = GPTConfig(**kw)
    x, y = _batch(cfg, 2, cfg.block_size, seed=2)
    with use_backend("numba"):
        fused = _step(GPT(cfg), x, y).peak["activations"]
    assert fused == gpt_costs(cfg, 2, backend="numba").bytes["activations"]
    # the s×s probabilities versus the one log-sum-exp per query row kept instead
    long = GPTConfig(**{**kw, "block_size": 24})
    x, y = _batch(long, 2, 24, seed=3)
    led = {}
    for be in ("numpy", "numba"):
        with use_backend(be):
            led[be] = _step(GPT(long), x, y)
    assert led["numba"].peak["activations"] < led["numpy"].peak["activations"]
    a, s, b, l = long.n_head, 24, 2, long.n_layer
    saved = (a * s * s - a * s) * 4 * b * l  # p  vs  one log-sum-exp per query row
    assert led["numpy"].peak["activations"] - led["numba"].peak["activations"] == saved


def test_eval_mode_keeps_no_dropout_masks_and_no_grad_keeps_nothing():
    cfg = GPTConfig(**CONFIGS[2])
    model = GPT(cfg).eval()
    x, y = _batch(cfg, 2, cfg.block_size)
    with use_backend("numpy"):
        led = _step(model, x, y)
        assert led.peak["activations"] == gpt_costs(cfg, 2, training=False).bytes["activations"]
        with memory.track(model) as m, minigrad.no_grad():
            model(x, y)
    assert m.peak["activations"] == 0


def test_report_sets_lecture_terms_beside_the_measurement():
    cfg = GPTConfig(**CONFIGS[0])
    b, s = 2, cfg.block_size
    h, a = cfg.n_embd, cfg.n_head
    x, y = _batch(cfg, b, s)
    with use_backend("numpy"):
        led = _step(GPT(cfg), x, y)
    costs = gpt_costs(cfg, b)
    text = led.report(costs)
    assert "2·s²·a + 14·s·h" in text
    for term in ("layer-norm inputs", "layer-norm mean and 1/std", "2nd s² tensor", "outside the layers"):
        assert term in text
    rows = costs.layer_comparison()
    lecture, mine, _ = rows["total"]
    assert lecture == 14 * s * h + 2 * a * s * s == costs.lecture["activations_per_layer_per_sample_values"]
    assert mine == 16 * s * h + a * s * s + 4 * s  # + 2sh of norm inputs + 4s stats - a·s² of a 2nd s² tensor
    # the per-layer rows (in values × 4 bytes × b × l) plus what lies outside the layers = measured
    layer_bytes = sum(costs.activation_layer_terms.values())
    assert layer_bytes == b * 4 * mine
    assert f"{lecture:,}" in text and f"{mine:,}" in text
    assert memory.fmt_bytes(led.peak["activations"]) in text
    assert "Linear" in text and "Attention" in text  # by-op breakdown at the peak


@pytest.mark.parametrize("kw", CONFIGS[:2] + [
    {**CONFIGS[0], "n_kv_head": 1}, {**CONFIGS[1], "n_kv_head": 2},     # (was (3h, h) whatever n_kv_head)
    {**CONFIGS[0], "attention": "linear"}])
def test_param_shapes_are_the_models(kw):
    cfg = GPTConfig(**kw)
    assert list(gpt_param_shapes(cfg).items()) == [(n, p.shape) for n, p in GPT(cfg).named_parameters()]


def test_param_shapes_refuse_nsa_whose_own_parameters_they_do_not_list():
    with pytest.raises(ValueError, match="gpt_param_shapes: NSA adds compression and gate parameters"):
        gpt_param_shapes(GPTConfig(**{**CONFIGS[0], "attention": "nsa"}))


@pytest.mark.parametrize("name,kw,mult", [
    ("adamw", dict(lr=1e-3), 2), ("adam", dict(lr=1e-3), 2), ("adam", dict(amsgrad=True), 3),
    ("sgd", dict(lr=1e-2, momentum=0.9), 1), ("momentum", {}, 1), ("sgd", dict(lr=1e-2), 0),
])
def test_optimizer_state_bytes(name, kw, mult):
    """The prediction asks the optimizer (its expected_state_bytes), by name or built: equal to
    the bytes the live ledger sees after a real step."""
    cfg = GPTConfig(**CONFIGS[0])
    model = GPT(cfg)
    opt = optim.create(name, {n: p.data for n, p in model.named_parameters()}, **kw)
    x, y = _batch(cfg, 2, cfg.block_size)
    led = _step(model, x, y, opt)
    assert led.peak["optimizer"] == mult * led.peak["params"]
    assert gpt_costs(cfg, 2, optimizer=name, optimizer_kwargs=kw).bytes["optimizer"] == led.peak["optimizer"]
    assert gpt_costs(cfg, 2, optimizer=opt).bytes["optimizer"] == led.peak["optimizer"]


def test_gpt_step_flops_equal_the_analytic_count_and_mfu():
    cfg = GPTConfig(**CONFIGS[0])
    b, s = 2, 6
    x, y = _batch(cfg, b, s)
    model = GPT(cfg)
    with memory.count_flops(peak_flops=1e9) as fc:
        _, loss = model(x, y)
        loss.backward()
    costs = gpt_costs(cfg, b, seq_len=s)
    assert fc.forward == costs.flops_per_token["forward"] * b * s
    assert fc.backward == costs.flops_per_token["backward"] * b * s
    assert fc.total == costs.flops_per_step
    assert fc.mfu == pytest.approx(fc.total / fc.elapsed / 1e9)
    h, l = cfg.n_embd, cfg.n_layer
    assert costs.flops_per_token["estimate_6N"] - costs.flops_per_token["total"] == \
        6 * (costs.params - 12 * l * h * h - cfg.vocab_size * h)
    assert "MFU" in fc.report()
    with pytest.raises(ValueError, match="peak_flops"):
        memory.count_flops(peak_flops=0)


def test_bad_arguments_are_named():
    cfg = GPTConfig(**CONFIGS[0])
    with pytest.raises(ValueError, match="unknown optimizer"):
        gpt_costs(cfg, 1, optimizer="lion9")
    with pytest.raises(TypeError):  # a misspelt option is refused by the optimizer itself
        gpt_costs(cfg, 1, optimizer="sgd", optimizer_kwargs={"momentun": 0.9})
    other = optim.create("adamw", {"w": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="holds 9 parameter values"):
        gpt_costs(cfg, 1, optimizer=other)
    with pytest.raises(TypeError, match="optimizer_kwargs"):
        gpt_costs(cfg, 1, optimizer=other, optimizer_kwargs={"lr": 1.0})
    with pytest.raises(ValueError, match="block_size"):
        gpt_costs(cfg, 1, seq_len=cfg.block_size + 1)
    for variant in ({"n_kv_head": 1}, {"attention": "linear"}):      # not the lecture's formulas
        with pytest.raises(ValueError, match="formulas are those of multi-head attention"):
            gpt_costs(GPTConfig(**{**CONFIGS[0], **variant}), 1)
    with pytest.raises(TypeError, match="state_bytes"):
        memory.track(optimizer=object())


@pytest.mark.parametrize("dtype_bytes", [4, 8])
def test_the_lecture_total_is_labelled_as_what_it_is(dtype_bytes):
    """Its label said x4 whatever the float size, and its total left out the v·h its rows hold."""
    costs = gpt_costs(GPTConfig(**CONFIGS[0]), 2, dtype_bytes=dtype_bytes)
    lec = costs.lecture
    assert sum(lec["bytes"].values()) - lec["total_bytes"] == 4 * CONFIGS[0]["vocab_size"] * 16 * dtype_bytes
    assert f"×{dtype_bytes}, without the v·h of the rows above" in costs.report()
