"""Layer-wise methods (optim/block.py) training a tiny GPT through models.training.Trainer: the
loop freezes what trainable_names() leaves out, inactive layers stay bit-identical, the optimizer
state is the active set's (LISA's peak at most half of AdamW's), every layer gets its turn, and a
checkpoint taken in the middle of a period resumes bit for bit."""
import numpy as np
import pytest

import optim
from models.gpt import GPT, GPTConfig
from models.training import Trainer, lm_loss
from optim_helpers import assert_resumes_mid_period

CFG = dict(n_layer=4, n_head=2, n_embd=16, block_size=8, vocab_size=11)
IDS = (np.cumsum(np.random.default_rng(0).choice([1, 1, 1, 2], size=4000)) % CFG["vocab_size"]).astype(np.int64)


def batches(rng, B=8, T=CFG["block_size"]):
    starts = rng.integers(0, len(IDS) - T - 1, size=B)
    return (np.stack([IDS[s:s + T] for s in starts]), np.stack([IDS[s + 1:s + T + 1] for s in starts]))


VAL = [batches(np.random.default_rng(100 + i)) for i in range(2)]


def _model(seed=0):
    return GPT(GPTConfig(**CFG, dropout=0.1), seed=seed)


def _arrays(model):
    return {n: p.data for n, p in model.named_parameters()}


def _snapshot(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


METHODS = {
    "lisa": lambda m, **kw: optim.create("lisa", _arrays(m), blocks=optim.block_params(m.param_blocks()),
                                         layers=1, switch_every=3, lr=3e-3, **kw),
    "badam": lambda m, **kw: optim.create("badam", _arrays(m), blocks=optim.block_params(m.param_blocks()),
                                          switch_every=3, order="random", lr=3e-3, **kw),
    "misa": lambda m, **kw: optim.create("misa", _arrays(m), blocks=optim.block_params(m.param_blocks()),
                                         splits=m.param_splits(), delta=0.1, switch_every=3, eta=20.0,
                                         lr=3e-3, **kw),
    "bcd": lambda m, **kw: optim.create("bcd", _arrays(m), blocks=optim.block_params(m.param_blocks()),
                                        selection="reshuffle", switch_every=3, inner="adamw", lr=3e-3, **kw),
    "bcd-gs": lambda m, **kw: optim.create("bcd", _arrays(m), blocks=optim.block_params(m.param_blocks()),
                                           selection="gauss-southwell", switch_every=3, inner="adam",
                                           lr=3e-3, **kw),
}


def _trainer(model, opt, steps, **kw):
    kw = {"schedule": "cosine", "schedule_kwargs": {"warmup_steps": 2, "min_ratio": 0.1},
          "eval_batches": VAL, "eval_every": 5, "progress": False, "seed": 3, **kw}
    return Trainer(model, lm_loss, opt, batches, steps=steps, **kw)


def _layer_elements(model, names):
    sizes = {n: p.size for n, p in model.named_parameters()}
    return sum(sizes[n] for n in names)


# ----------------------------------------------------------------------------- memory
def test_lisa_with_one_layer_holds_at_most_half_of_adamws_state():
    model = _model()
    adamw = _trainer(model, optim.create("adamw", _arrays(model), lr=3e-3), 6, eval_batches=None)
    adamw.fit()
    model = _model()
    opt = METHODS["lisa"](model)
    lisa = _trainer(model, opt, 6, eval_batches=None)
    lisa.fit()
    blocks = optim.block_params(model.param_blocks())
    always = _layer_elements(model, blocks["embeddings"] + blocks["head"])
    layer = _layer_elements(model, blocks["h.0"])             # every layer has this size
    assert lisa.history["state_bytes"] == [2 * 4 * (always + layer)] * 6       # Adam's m, v in float32
    assert adamw.peak_state_bytes == 2 * 4 * sum(p.size for p in model.parameters())
    assert lisa.peak_state_bytes <= 0.5 * adamw.peak_state_bytes


# ----------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("method", list(METHODS))
def test_the_loop_freezes_the_inactive_blocks_and_only_the_active_set_moves(method):
    model = _model()
    opt = METHODS[method](model)
    told, moved = [], []
    ask = opt.trainable_names

    def trainable_names():
        told.append(ask())
        return told[-1]
    opt.trainable_names = trainable_names                     # record what the loop is told
    before = [_snapshot(model)]

    def on_step(trainer):
        now = _snapshot(model)
        moved.append({n for n in now if not np.array_equal(now[n], before[-1][n])})
        before.append(now)
        if told[-1] is None:                                  # Gauss-Southwell chose this step
            blocks = optim.block_params(model.param_blocks())
            told[-1] = {n for b in opt.global_state["active"] for n in blocks[b]}
    model.wpe.weight.requires_grad_(False)                    # frozen by the user: stays so
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    tr = _trainer(model, opt, 12, on_step=on_step)
    tr.fit()
    assert moved == [t - {"wpe.weight"} for t in told]
    assert tr.history["val_loss"][-1] < tr.history["val_loss"][0]
    # fit() hands the model back as it got it: the blocks it froze for the last step are
    # trainable again, so a later Trainer on it sees only the user's own freeze
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_every_lisa_layer_is_sampled_and_trains():
    """The inner optimizer owns every parameter from the start: a layer frozen at step 0 trains
    when it is drawn later (the LMFlow #726 pitfall cannot happen)."""
    model = _model()
    start = _snapshot(model)
    opt = METHODS["lisa"](model, seed=1)
    drawn = set()
    tr = _trainer(model, opt, 36, eval_batches=None,
                  on_step=lambda t: drawn.update(opt.global_state["active"]))
    tr.fit()
    assert drawn == {"h.0", "h.1", "h.2", "h.3"}
    assert all(not np.array_equal(p.data, start[n]) for n, p in model.named_parameters())


def test_badam_trains_the_layers_in_turn_and_never_the_excluded_blocks():
    model = _model()
    start = _snapshot(model)
    opt = optim.create("badam", _arrays(model), blocks=optim.block_params(model.param_blocks()),
                       switch_every=2, order="ascending", lr=3e-3)
    order = []
    _trainer(model, opt, 8, eval_batches=None,
             on_step=lambda t: order.append(opt.global_state["active"][0])).fit()
    assert order == ["h.0", "h.0", "h.1", "h.1", "h.2", "h.2", "h.3", "h.3"]
    for n, p in model.named_parameters():
        assert np.array_equal(p.data, start[n]) == (n.startswith(("wte.", "wpe.", "ln_f."))), n


def test_misa_updates_only_the_active_rows_of_the_fused_qkv_weight():
    model = _model()
    opt = METHODS["misa"](model)
    C = CFG["n_embd"]
    rows = {"q": slice(0, C), "k": slice(C, 2 * C), "v": slice(2 * C, 3 * C)}
    blocks = optim.block_params(model.param_blocks())
    vectors = [n for b in blocks if b.startswith("h.") for n in blocks[b]
               if dict(model.named_parameters())[n].ndim < 2]
    always = _layer_elements(model, blocks["embeddings"] + blocks["head"] + vectors)
    checked = []
    before = [_snapshot(model)]

    def on_step(trainer):
        now = _snapshot(model)
        active = set(opt.global_state["active"])
        for layer in range(CFG["n_layer"]):
            name = f"h.{layer}.attn.c_attn.weight"
            for part, r in rows.items():
                moved = not np.array_equal(now[name][r], before[-1][name][r])
                assert moved == (f"{name}:{part}" in active), (trainer.step, name, part)
                checked.append(moved)
        elements = sum(C * C if ":" in m else now[m].size for m in active)
        assert elements <= opt.budget
        assert opt.state_bytes() == 2 * 4 * (always + elements)
        before.append(now)
    _trainer(model, opt, 15, eval_batches=None, on_step=on_step).fit()
    assert any(checked) and not all(checked)


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("method", list(METHODS))
def test_checkpoint_in_the_middle_of_a_period_resumes_bit_identically(method, tmp_path):
    assert_resumes_mid_period(_model, METHODS[method], _trainer, tmp_path, other_seeds={"seed": 99})


def test_under_the_mixed_precision_wrapper_the_inner_optimizer_steps_the_masters():
    """minigrad.amp swaps the optimizer's arrays for FP32 masters; the block method's inner
    optimizer follows, so the active layer's masters move and the inactive ones do not."""
    from minigrad import amp
    model = _model()
    opt = METHODS["lisa"](model)
    mp = amp.MixedPrecisionOptimizer(opt, "bf16", scaler=amp.DynamicLossScaler(init_scale=2.0 ** 10))
    masters = {n: m.copy() for n, m in mp.masters.items()}
    tr = _trainer(model, mp, 3, eval_batches=None, autocast="bf16")
    tr.fit()
    blocks = optim.block_params(model.param_blocks())
    active = set(blocks["embeddings"] + blocks["head"] + blocks[opt.global_state["active"][0]])
    for n, m in mp.masters.items():
        assert np.array_equal(m, masters[n]) == (n not in active), n
    assert tr.history["state_bytes"] == [2 * 4 * _layer_elements(model, active)] * 3
