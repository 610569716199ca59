"""The training layer: one loop for every optimizer, resumable bit for bit, and checkpoints that
refuse to be half-read."""
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

import optim
from minigrad import amp
from models.gpt import GPT, GPTConfig
from models.training import (CheckpointError, Diverged, Trainer, clip_grad_norm, evaluate, lm_loss,
                             load_checkpoint, load_matching_checkpoint, save_checkpoint)

CFG = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)


def _tokens(n=4000, seed=0):
    # a learnable sequence: mostly "next = current + 1 (mod V)", with some noise
    rng = np.random.default_rng(seed)
    ids = np.cumsum(rng.choice([1, 1, 1, 2], size=n)) % CFG["vocab_size"]
    return ids.astype(np.int64)


IDS = _tokens()


def batches(rng, B=8, T=CFG["block_size"]):
    starts = rng.integers(0, len(IDS) - T - 1, size=B)
    x = np.stack([IDS[s:s + T] for s in starts])
    y = np.stack([IDS[s + 1:s + T + 1] for s in starts])
    return x, y


VAL = [batches(np.random.default_rng(100 + i)) for i in range(2)]


def _model(seed=0, **kw):
    return GPT(GPTConfig(**{**CFG, **kw}), seed=seed)


def _adamw(model, lr=3e-3, wd=0.1):
    params = {n: p.data for n, p in model.named_parameters()}
    return optim.create("adamw", optim.param_groups_no_decay(params, wd), lr=lr)


def _trainer(model, opt, steps=12, **kw):
    kw = {"schedule": "cosine", "schedule_kwargs": {"warmup_steps": 2, "min_ratio": 0.1},
          "eval_batches": VAL, "eval_every": 4, "progress": False, "seed": 3, **kw}
    return Trainer(model, lm_loss, opt, batches, steps=steps, **kw)


def _params(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


def test_adamw_trains_and_records_history():
    model = _model()
    tr = _trainer(model, _adamw(model), steps=40)
    res = tr.fit()
    assert res.step == 40 and not res.interrupted and not res.out_of_time
    h = tr.history
    assert h["train_step"] == list(range(1, 41)) and len(h["train_loss"]) == 40
    assert h["val_step"] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert h["val_loss"][-1] < h["val_loss"][0] - 0.3          # it learned the +1 pattern
    assert res.val_loss == h["val_loss"][-1] == evaluate(model, lm_loss, VAL)


def test_the_log_prints_every_evaluation_the_final_one_included(capsys):
    model = _model()
    tr = _trainer(model, _adamw(model), steps=6, log_every=3)
    tr.fit()
    said = [line for line in capsys.readouterr().out.splitlines() if "val loss" in line]
    assert [int(line.split(":")[0].split()[1]) for line in said] == tr.history["val_step"] == [0, 4, 6]
    assert said[-1].endswith(f"val loss {tr.history['val_loss'][-1]:.4f}")


def test_the_schedule_sets_every_groups_lr_from_its_base_lr():
    model = _model()
    params = {n: p.data for n, p in model.named_parameters()}
    groups = optim.param_groups_no_decay(params, 0.1)
    groups[1]["lr"] = 1e-2                                      # a group with its own base lr
    opt = optim.create("adamw", groups, lr=2e-3)
    seen = []
    tr = _trainer(model, opt, steps=10, eval_batches=None,
                  on_step=lambda t: seen.append([g["lr"] for g in opt.param_groups]))
    tr.fit()
    mult = optim.schedules.cosine(10, 2, 0.1)
    assert seen == [[2e-3 * mult(s), 1e-2 * mult(s)] for s in range(10)]


def test_grad_hooks_run_in_order_on_the_gradients_the_optimizer_then_uses():
    model = _model()
    calls = []

    def first(grads):
        calls.append(("first", optim.schedules.global_grad_norm(grads)))

    clip = clip_grad_norm(1e-3)

    def last(grads):
        calls.append(("last", optim.schedules.global_grad_norm(grads)))

    tr = _trainer(model, _adamw(model), steps=2, eval_batches=None, grad_hooks=[first, clip, last])
    tr.fit()
    assert [c[0] for c in calls] == ["first", "last"] * 2
    assert calls[2][1] == pytest.approx(clip.last_norm, rel=1e-12)    # the clip saw what 'first' saw
    assert calls[1][1] == pytest.approx(1e-3, rel=1e-4) and calls[3][1] == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("name,extra,want", [
    ("adamw", None, (0.9, 0.95)),
    ("galore", None, (0.9, 0.95)),                           # its default inner AdamW
    ("rso", {"inner_kwargs": {"eps": 1e-6}}, (0.9, 0.95)),   # other inner options kept beside
    ("golore", {"inner_kwargs": {"betas": (0.8, 0.9)}}, (0.8, 0.9)),   # the user's own win
    ("galore", {"inner": "sgd"}, None),                     # an inner optimizer without betas
])
def test_build_optimizer_gives_beta2_to_the_optimizer_or_to_its_inner_one(name, extra, want):
    from models.training.optimizers import build_optimizer
    opt = build_optimizer(name, _model(), 1e-3, 0.1, beta2=0.95, extra=extra)
    groups = (opt.inner if hasattr(opt, "inner") else opt).param_groups
    assert all(g.get("betas") == want for g in groups), [g.get("betas") for g in groups]
    if extra and "eps" in extra.get("inner_kwargs", {}):
        assert all(g["eps"] == 1e-6 for g in groups)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
@pytest.mark.parametrize("placement", ["split", "replicated"])
def test_the_clip_over_ranks_keeps_a_nan_in_any_gradient(norm_type, placement):
    """The inf-norm took Python's max, which drops a NaN unless it comes first: a NaN in a second
    gradient gave a finite norm and the gradients were scaled as if nothing were wrong."""
    from models.training.trainer import clip_grad_norm_over_ranks
    from optim.dist.comm import SimComm

    def worker(comm):
        hook = clip_grad_norm_over_ranks(comm, lambda n: placement, max_norm=1.0, norm_type=norm_type)
        grads = {"a": np.array([4.0, -3.0]), "b": np.array([np.nan, 0.25])}
        hook(grads)
        return hook.last_norm, grads["a"].copy()

    for norm, a in SimComm(2).run(worker):
        assert np.isnan(norm)
        np.testing.assert_array_equal(a, [4.0, -3.0])          # left alone, as clip_grad_norm_


def test_a_zeroth_order_step_skipped_for_a_nonfinite_loss_is_recorded_as_one():
    """MeZO with nonfinite="skip" returned None for a skipped step and the Trainer's float(loss)
    raised TypeError; a first-order skip records nan and goes on."""
    model = _model()
    params = {n: p.data for n, p in model.named_parameters()}
    opt = optim.create("mezo", params, lr=1e-3, eps=1e-3, seed=0, nonfinite="skip")
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = lm_loss(model, batch)
        return loss * float("inf") if calls["n"] <= 2 else loss      # the first step's two losses

    tr = Trainer(model, loss_fn, opt, batches, steps=3, progress=False, seed=3)
    tr.fit()
    assert opt.skipped_steps == 1 and np.isinf(tr.history["train_loss"][0])
    assert np.all(np.isfinite(tr.history["train_loss"][1:]))


@pytest.mark.parametrize("kind", ["adamw", "mezo", "amp-adamw", "sgd"])
def test_every_kind_of_optimizer_runs_through_the_same_call(kind):
    """First-order, zeroth-order and the mixed-precision wrapper: the same Trainer(...).fit()."""
    model = _model()
    params = {n: p.data for n, p in model.named_parameters()}
    if kind == "mezo":
        opt = optim.create("mezo", params, lr=1e-3, eps=1e-3, seed=0)
    elif kind == "sgd":
        opt = optim.create("sgd", params, lr=0.1, momentum=0.9)
    elif kind == "amp-adamw":
        opt = amp.MixedPrecisionOptimizer(optim.create("adamw", params, lr=3e-3), "bf16",
                                          scaler=amp.DynamicLossScaler(init_scale=2.0 ** 10))
    else:
        opt = _adamw(model)
    before = _params(model)
    tr = _trainer(model, opt, steps=6, autocast="bf16" if kind == "amp-adamw" else None)
    res = tr.fit()
    assert res.step == 6 and len(tr.history["train_loss"]) == 6
    assert all(np.isfinite(tr.history["train_loss"]))
    moved = [n for n, p in _params(model).items() if not np.array_equal(p, before[n])]
    assert moved, f"{kind}: no parameter moved"
    assert not opt.last_step_skipped


def test_mixed_precision_clipping_sees_the_true_gradients():
    """Loss scale 2^16: the clip hook must act on unscaled gradients (norm ~ the fp32 run's)."""
    norms = {}
    for scale in (1.0, 2.0 ** 16):
        model = _model()
        params = {n: p.data for n, p in model.named_parameters()}
        opt = amp.MixedPrecisionOptimizer(optim.create("sgd", params, lr=0.1), "fp32",
                                          scaler=amp.LossScaler(scale))
        clip = clip_grad_norm(1e6)
        _trainer(model, opt, steps=1, eval_batches=None, grad_hooks=[clip]).fit()
        norms[scale] = clip.last_norm
    assert norms[2.0 ** 16] == pytest.approx(norms[1.0], rel=1e-5)


def test_frozen_parameters_stay_bit_identical_through_the_loop():
    model = _model()
    model.h[0].attn.requires_grad_(False)
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen
    opt = _adamw(model, wd=0.5)
    _trainer(model, opt, steps=5, eval_batches=None).fit()
    for n, p in model.named_parameters():
        if n in frozen:
            assert np.array_equal(p.data, frozen[n]), n
            assert n not in opt.state
    assert opt.state                                            # the others did train


def test_interrupt_save_restore_equals_the_uninterrupted_run(tmp_path):
    full_model = _model(dropout=0.1)                            # dropout: the model's RNG must resume too
    full = _trainer(full_model, _adamw(full_model), steps=10)
    full.fit()

    model = _model(dropout=0.1)
    part = _trainer(model, _adamw(model), steps=10,
                    on_step=lambda t: setattr(t, "interrupted", t.step == 4 or t.interrupted))
    res = part.fit()
    assert res.interrupted and res.step == 4
    part.save(tmp_path, meta={"note": "half"})

    model2 = _model(dropout=0.1)
    again = _trainer(model2, _adamw(model2), steps=10, seed=99)  # the seed is restored from the checkpoint
    again.restore(load_checkpoint(tmp_path))
    assert again.step == 4
    again.fit()
    assert again.history["train_loss"] == full.history["train_loss"]
    assert again.history["val_loss"] == full.history["val_loss"]
    for n, p in full_model.named_parameters():
        assert np.array_equal(p.data, dict(model2.named_parameters())[n].data), n


def test_restore_with_a_new_target_extends_the_run(tmp_path):
    model = _model()
    tr = _trainer(model, _adamw(model), steps=4, eval_batches=None)
    tr.fit()
    tr.save(tmp_path)
    model2 = _model()
    tr2 = _trainer(model2, _adamw(model2), steps=4, eval_batches=None)
    tr2.restore(load_checkpoint(tmp_path), target=9)
    assert tr2.fit().step == 9


def test_on_save_follows_every_checkpoint_once_it_is_on_disk(tmp_path):
    """train_gpt removes an earlier run's files there: only a checkpoint written may replace them."""
    seen = []

    def on_save(tr, path):
        seen.append((tr.step, load_checkpoint(tmp_path).step, path))

    model = _model()
    tr = _trainer(model, _adamw(model), steps=9, eval_batches=None, save_every=4, save_dir=tmp_path,
                  on_save=on_save)
    tr.fit()
    path = tr.save(tmp_path)
    assert seen == [(4, 4, path), (8, 8, path), (9, 9, path)]


@pytest.mark.parametrize("resume_steps, saved_horizon", [(20, 10), (6, 10), (10, 7)])
def test_a_resume_without_a_target_finishes_the_saved_schedule_whatever_steps_it_was_built_with(
        tmp_path, resume_steps, saved_horizon):
    """restore() without target= takes the saved target and horizon, not the resuming trainer's
    ``steps`` (more or fewer), and keeps a horizon a time budget shortened (7 of 10): the resumed
    run ends where the saved schedule ends, with the lrs and losses of the uninterrupted run."""
    def recorder(lrs, stop_at=None):
        def on_step(t):
            lrs.append([g["lr"] for g in t.optimizer.param_groups])
            if t.step == 4:
                t.horizon = saved_horizon                       # as a time budget shortens it
            if t.step == stop_at:
                t.interrupted = True
        return on_step

    full_lrs, part_lrs, again_lrs = [], [], []
    full_model = _model()
    full = _trainer(full_model, _adamw(full_model), steps=10, on_step=recorder(full_lrs))
    assert full.fit().step == saved_horizon

    model = _model()
    part = _trainer(model, _adamw(model), steps=10, on_step=recorder(part_lrs, stop_at=4))
    assert part.fit().interrupted
    part.save(tmp_path)

    model2 = _model()
    again = _trainer(model2, _adamw(model2), steps=resume_steps, on_step=recorder(again_lrs))
    again.restore(load_checkpoint(tmp_path))
    assert (again.step, again.target, again.horizon) == (4, 10, saved_horizon)
    res = again.fit()
    assert res.step == saved_horizon and not res.interrupted
    assert part_lrs + again_lrs == full_lrs and len(full_lrs) == saved_horizon
    assert again.history["train_loss"] == full.history["train_loss"]
    assert again.history["val_loss"] == full.history["val_loss"]
    for n, p in full_model.named_parameters():
        assert np.array_equal(p.data, dict(model2.named_parameters())[n].data), n


def test_a_resume_takes_the_saved_hyperparameters_of_every_group(tmp_path):
    """An optimizer built with other per-group hyperparameters (another weight decay and betas in
    one group, another base lr in the other) gets the saved ones back from load_state_dict, and
    the resumed run is the uninterrupted one."""
    full_model = _model()
    full = _trainer(full_model, _adamw(full_model), steps=8)
    full.fit()

    model = _model()
    opt = _adamw(model)
    part = _trainer(model, opt, steps=8, on_step=lambda t: setattr(t, "interrupted", t.step == 3 or t.interrupted))
    assert part.fit().interrupted
    part.save(tmp_path)
    saved = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]

    model2 = _model()
    groups = optim.param_groups_no_decay({n: p.data for n, p in model2.named_parameters()}, 0.5)
    groups[0]["betas"] = (0.8, 0.99)
    groups[1]["lr"] = 1e-2
    opt2 = optim.create("adamw", groups, lr=1e-3)
    again = _trainer(model2, opt2, steps=8)
    mine = [{k: v for k, v in g.items() if k != "params"} for g in opt2.param_groups]
    assert [(g["initial_lr"], g["weight_decay"], g["betas"]) for g in mine] == \
        [(1e-3, 0.5, (0.8, 0.99)), (1e-2, 0.0, (0.9, 0.999))]      # they did differ
    again.restore(load_checkpoint(tmp_path))
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt2.param_groups] == saved
    again.fit()
    assert again.history["train_loss"] == full.history["train_loss"]
    assert again.history["val_loss"] == full.history["val_loss"]
    for n, p in full_model.named_parameters():
        assert np.array_equal(p.data, dict(model2.named_parameters())[n].data), n


@pytest.mark.parametrize("kind", ["adamw", "mezo"])
def test_a_diverging_run_names_its_step(kind):
    """Non-finite gradients (or a zeroth-order method's non-finite loss) at a huge lr: fit raises
    Diverged, a FloatingPointError naming the step, with nothing of that step in the history."""
    model = _model()
    opt = optim.create(kind, {n: p.data for n, p in model.named_parameters()}, lr=1e12)
    tr = _trainer(model, opt, steps=50, eval_batches=None)
    with pytest.raises(Diverged, match=r"^training diverged in step (\d+) of 50: ") as e:
        tr.fit()
    step = int(e.value.args[0].split()[4])
    assert isinstance(e.value, FloatingPointError) and tr.step == step - 1 == len(tr.history["train_loss"])


@pytest.mark.parametrize("evaluated", [False, True])
def test_a_last_step_that_breaks_the_model_is_divergence_too(evaluated):
    """A step's gradients are checked by the next step, so the last step's update went unchecked:
    fit returned, the caller saved NaN weights (or a NaN validation loss) and sampled from them."""
    model = _model()
    opt = optim.create("sgd", {n: p.data for n, p in model.named_parameters()}, lr=0.1)
    tr = _trainer(model, opt, steps=3, eval_batches=VAL if evaluated else None, eval_every=100)
    real = opt.step

    def step(grads=None, closure=None):
        out = real(grads, closure=closure)
        if tr.step == 2:                                # the last step (counted from 0)
            if evaluated:                               # finite weights, activations overflow
                for a in opt.params.values():
                    a[...] = 1e30
            else:
                next(iter(opt.params.values()))[...] = np.nan
        return out

    opt.step = step
    pattern = (r"training diverged by step 3: the validation loss is nan" if evaluated else
               r"training diverged in step 3: its update left non-finite weights in ")
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(Diverged, match=pattern):
        tr.fit()


def test_a_frozen_parameter_may_hold_inf_without_the_last_step_check_calling_it_divergence():
    """The check of the last step's update looks at what the steps train: a frozen parameter the
    user keeps at -inf (an additive mask) is no divergence."""
    from minigrad import nn
    model = _model()
    mask = np.zeros(11, np.float32)
    mask[3] = -np.inf
    model.vocab_mask = nn.Parameter(mask)
    model.vocab_mask.requires_grad_(False)
    opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=1e-3)   # frozen: grad None
    res = _trainer(model, opt, steps=3, eval_batches=None).fit()
    assert res.step == 3 and np.isneginf(model.vocab_mask.data[3])


def test_a_signal_during_the_final_evaluation_is_reported_not_lost():
    """The stop was decided before the final evaluation and a SIGTERM during it was only noted:
    fit returned interrupted=False and a demo training several models went on to the next."""
    import signal
    model = _model()
    tr = None

    def loss_fn(m, batch):
        if not m.training and tr.step == 3:            # the final evaluation
            signal.raise_signal(signal.SIGTERM)
        return lm_loss(m, batch)

    tr = Trainer(model, loss_fn, _adamw(model), batches, steps=3, eval_batches=VAL, eval_every=100,
                 progress=False, seed=3)
    res = tr.fit()
    assert res.step == 3 and res.interrupted and math.isfinite(res.val_loss)


def test_time_budget_stops_early_and_says_so():
    model = _model()
    tr = _trainer(model, _adamw(model), steps=10_000, eval_batches=None, time_budget=0.5,
                  reserve_seconds=0.0)
    res = tr.fit()
    assert res.out_of_time and 0 < res.step < 10_000


def test_the_time_budget_fits_the_steps_that_fit_whatever_the_target():
    """The schedule's length under a time budget counts the evaluations of the steps that fit,
    not of the target: a run given a bound no run reaches (1,000,000 steps, as the train CLI
    without --steps) fits as many steps as one given a target just above what fits."""
    fitted = {}
    for target in (3000, 1_000_000):
        model = _model()
        tr = _trainer(model, _adamw(model), steps=target, eval_every=250, time_budget=600.0,
                      reserve_seconds=25.0)
        tr.start_time = time.perf_counter()            # as if the run had just begun
        tr._fit_horizon(0.25, 2.0, lambda msg: None, None)
        fitted[target] = tr.horizon
    room = 600.0 - 2.0 - 25.0 - 0.05 * 600.0           # the last evaluation, reserve, slack
    expected = room / (0.25 + 2.0 / 250)
    assert fitted[3000] == fitted[1_000_000]
    assert abs(fitted[1_000_000] - expected) <= 0.01 * expected


def test_the_budget_replans_quietly_unless_the_plan_moves_by_a_tenth():
    """Re-planned every 100 steps on a noisy machine, the length went back and forth by a few
    percent and each move printed a line (5-8 a run). The horizon follows every re-plan; the
    message comes once, then only when the plan moved by 10% since it was last said."""
    model = _model()
    tr = _trainer(model, _adamw(model), steps=1_000_000, eval_batches=None, time_budget=600.0, reserve_seconds=0.0)
    said, horizons = [], []
    for per_step in (0.100, 0.103, 0.098, 0.104, 0.080, 0.082):
        tr.start_time = time.perf_counter()
        tr._fit_horizon(per_step, 0.0, said.append, None)
        horizons.append(tr.horizon)
    assert len(set(horizons)) == 6                      # every re-plan moved the schedule
    assert [m.split(" s/step")[0].split("at ")[1] for m in said] == ["0.1", "0.08"]
    tr.step = tr.horizon                                # a later fit says its first plan again
    tr.fit()
    assert tr._said_horizon is None


def test_bad_trainer_arguments_name_the_problem():
    model = _model()
    with pytest.raises(ValueError, match="steps"):
        _trainer(model, _adamw(model), steps=0)
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        _trainer(model, _adamw(model), schedule="cosin")
    with pytest.raises(TypeError, match="grad_hooks"):
        _trainer(model, _adamw(model), grad_hooks=[1.0])


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture()
def saved(tmp_path):
    model = _model()
    tr = _trainer(model, _adamw(model), steps=3, eval_batches=None)
    tr.fit()
    tr.save(tmp_path, meta={"tokenizer": {"type": "char", "chars": "abcdefghijk"}})
    return tmp_path, model


def test_checkpoint_round_trip_rebuilds_the_model(saved):
    path, model = saved
    ck = load_checkpoint(path)
    assert ck.step == 3 and ck.meta["model"]["class"] == "GPT" and ck.config["n_embd"] == 16
    rebuilt = ck.build_model()
    for n, p in model.named_parameters():
        assert np.array_equal(dict(rebuilt.named_parameters())[n].data, p.data)
    assert ck.tokenizer().vocab_size == 11
    man = json.loads(Path(os.path.join(path, "manifest.json")).read_text())
    assert man["format_version"] == 2 and len(man["sha256"]) == 64 and man["step"] == 3
    assert not [f for f in os.listdir(path) if ".tmp" in f]


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "bit flip", "foreign", "no manifest",
                                    "edited manifest", "other version"])
def test_a_damaged_checkpoint_is_one_clear_error(saved, damage):
    path, _ = saved
    npz, man = os.path.join(path, "ckpt.npz"), os.path.join(path, "manifest.json")
    data = Path(npz).read_bytes()
    if damage == "truncated":
        Path(npz).write_bytes(data[: len(data) // 2])
    elif damage == "zero bytes":
        Path(npz).write_bytes(b"")
    elif damage == "bit flip":
        b = bytearray(data)
        b[len(b) // 3] ^= 0x10
        Path(npz).write_bytes(bytes(b))
    elif damage == "foreign":
        np.savez(npz, x=np.zeros(3))
    elif damage == "no manifest":
        os.remove(man)
    elif damage == "edited manifest":
        m = json.loads(Path(man).read_text())
        m["sha256"] = "0" * 64
        Path(man).write_text(json.dumps(m))
    elif damage == "other version":
        m = json.loads(Path(man).read_text())
        m["format_version"] = 1
        Path(man).write_text(json.dumps(m))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and "ckpt.npz" in msg
    if damage == "other version":
        assert "1" in msg and "2" in msg


def test_missing_checkpoint_and_restore_into_the_wrong_optimizer(saved, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    path, _ = saved
    model = _model()
    params = {n: p.data for n, p in model.named_parameters()}
    tr = _trainer(model, optim.create("sgd", params, lr=0.1), steps=3)
    with pytest.raises(CheckpointError, match="optimizer state does not fit SGD"):
        tr.restore(load_checkpoint(path))


def _sgd_like(kind, params):
    return {"adamw": lambda: optim.create("adamw", params, lr=1e-3),
            "adam": lambda: optim.create("adam", params, lr=1e-3),
            "mezo": lambda: optim.create("mezo", params, lr=1e-3, eps=1e-3, seed=0),
            "mezo eps 0.1": lambda: optim.create("mezo", params, lr=1e-3, eps=0.1, seed=0),
            "lozo rank 1": lambda: optim.create("lozo", params, lr=1e-3, rank=1, seed=0),
            "lozo rank 2": lambda: optim.create("lozo", params, lr=1e-3, rank=2, seed=0),
            "muon": lambda: optim.create("muon", params, lr=1e-3),
            "muon adamw lr": lambda: optim.create("muon", params, lr=1e-3, adamw_kwargs={"lr": 0.01}),
            "fp16": lambda: amp.MixedPrecisionOptimizer(optim.create("sgd", params, lr=0.1), "fp16"),
            "bf16": lambda: amp.MixedPrecisionOptimizer(optim.create("sgd", params, lr=0.1), "bf16"),
            "dynamic": lambda: amp.MixedPrecisionOptimizer(optim.create("sgd", params, lr=0.1), "fp16",
                                                           scaler=amp.DynamicLossScaler()),
            }[kind]()


@pytest.mark.parametrize("saved_with,resumed_with,pattern", [
    ("adamw", "adam", "the state_dict was saved by AdamW, not Adam"),   # decoupled decay became L2
    ("mezo eps 0.1", "mezo", "saved with eps=0.1, this optimizer has eps=0.001"),
    ("lozo rank 1", "lozo rank 2", "saved with rank=1, this optimizer has rank=2"),   # a matmul error later
    ("muon adamw lr", "muon", "saved with adamw_kwargs="),
    ("bf16", "fp16", "saved with param_format='bf16', this wrapper has param_format='fp16'"),
    ("dynamic", "fp16", "saved with scaler='DynamicLossScaler', this wrapper has scaler='LossScaler'"),
])
def test_restore_refuses_another_optimizer_or_one_built_with_other_options(saved_with, resumed_with, pattern,
                                                                           tmp_path):
    """Only the group count and names were compared: another optimizer's state loaded (and copied
    its group options over), and options kept outside the groups silently took the new values."""
    model = _model()
    params = {n: p.data for n, p in model.named_parameters()}
    first = _trainer(model, _sgd_like(saved_with, params), steps=2, eval_batches=None)
    first.fit()
    first.save(tmp_path)
    model2 = _model(seed=1)
    params2 = {n: p.data for n, p in model2.named_parameters()}
    tr = _trainer(model2, _sgd_like(resumed_with, params2), steps=4, eval_batches=None)
    before = {n: p.data.copy() for n, p in model2.named_parameters()}
    with pytest.raises(CheckpointError, match=f"does not fit .*{pattern}"):
        tr.restore(load_checkpoint(tmp_path))
    assert tr.step == 0 and all(np.array_equal(p.data, before[n]) for n, p in model2.named_parameters())


def test_a_matching_checkpoint_is_one_of_this_config_and_these_meta_entries(saved, tmp_path):
    path, model = saved
    config = model.config.to_dict()
    tokenizer = {"type": "char", "chars": "abcdefghijk"}
    assert load_matching_checkpoint(path, config, tokenizer=tokenizer).step == 3
    assert load_matching_checkpoint(path, config).step == 3
    assert load_matching_checkpoint(path, {**config, "n_embd": 32}) is None
    assert load_matching_checkpoint(path, config, tokenizer={"type": "char", "chars": "abc"}) is None
    assert load_matching_checkpoint(path, config, data_key="absent") is None
    assert load_matching_checkpoint(tmp_path / "nothing", config) is None
    Path(path, "ckpt.npz").write_bytes(b"")              # damaged: trained again, not an error
    assert load_matching_checkpoint(path, config) is None


def test_save_checkpoint_refuses_meta_keys_it_owns(tmp_path):
    with pytest.raises(ValueError, match="format_version"):
        save_checkpoint(tmp_path, _model(), meta={"format_version": 7})


def test_save_checkpoint_keeps_named_states_and_refuses_a_name_with_a_slash(tmp_path):
    states = {"grad_hook0": {"error": {"h.0.w": np.arange(3.0)}, "step": 4}}
    save_checkpoint(tmp_path, _model(), states=states)
    ck = load_checkpoint(tmp_path)
    assert list(ck.states) == ["grad_hook0"] and ck.states["grad_hook0"]["step"] == 4
    np.testing.assert_array_equal(ck.states["grad_hook0"]["error"]["h.0.w"], np.arange(3.0))
    with pytest.raises(ValueError, match="states name must be a non-empty str without '/', got 'a/b'"):
        save_checkpoint(tmp_path, _model(), states={"a/b": {}})


def test_the_loop_freezes_what_the_optimizer_leaves_out_and_logs_its_state_bytes():
    """trainable_names() narrows the trainable set each step; a user's own freeze is kept."""
    model = _model()
    model.wpe.requires_grad_(False)                             # frozen by the user
    names = [n for n, _ in model.named_parameters()]
    layer = {n for n in names if n.startswith("h.0.")}

    class OneLayerAdamW(optim.AdamW):
        def trainable_names(self):
            return layer | {"wpe.weight"} if self.step_count % 2 == 0 else None

        def step(self, grads=None, closure=None):
            seen.append({n for n, g in grads.items() if g is not None})
            super().step(grads)
            self.step_count += 1

    seen = []
    params = {n: p.data for n, p in model.named_parameters()}
    opt = OneLayerAdamW(params, lr=1e-3)
    opt.step_count = 0
    tr = _trainer(model, opt, steps=3, eval_batches=None)
    tr.fit()
    everyone = set(names) - {"wpe.weight"}
    assert seen == [layer, everyone, layer]
    assert not dict(model.named_parameters())["wpe.weight"].requires_grad
    per_param = {n: 2 * p.nbytes for n, p in params.items()}   # Adam: m and v
    # the state of a parameter that trained once stays (this optimizer frees nothing)
    assert tr.history["state_bytes"] == [sum(per_param[n] for n in layer)] + \
        [sum(per_param[n] for n in everyone)] * 2
    assert tr.peak_state_bytes == opt.state_bytes() == sum(per_param[n] for n in everyone)


def test_an_optimizer_that_needs_several_gradients_per_step_gets_a_closure():
    """uses_closure: the loop hands step() a closure -> (loss, grads) at the current parameters."""
    calls = []

    class TwoLookSGD(optim.SGD):
        uses_closure = True

        def step(self, grads=None, closure=None):
            assert grads is None and closure is not None
            first, g = closure()
            super().step(g)                                   # a half step ...
            second, g = closure()                             # ... and a look from there
            super().step(g)
            calls.append((first, second))
            return second

    model = _model()
    params = {n: p.data for n, p in model.named_parameters()}
    clip = clip_grad_norm(1e6)
    tr = _trainer(model, TwoLookSGD(params, lr=0.05), steps=3, eval_batches=None, grad_hooks=[clip])
    tr.fit()
    assert len(calls) == 3 and tr.history["train_loss"] == [c[1] for c in calls]
    assert all(second < first for first, second in calls)    # each look is from a better point
    assert clip.last_norm is not None                         # the hooks ran inside the closure


def _save_with_a_power_cut_before_the_manifest(trainer, out, monkeypatch):
    """trainer.save(out), stopped just before manifest.json is renamed into place; returns the
    destinations renamed before the cut."""
    import models.training.checkpoint as ck
    real, renamed = os.replace, []

    def power_cut(src, dst):
        if dst.endswith("manifest.json"):
            raise KeyboardInterrupt("power cut")
        renamed.append(dst)
        real(src, dst)

    monkeypatch.setattr(ck.os, "replace", power_cut)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(out)
    monkeypatch.setattr(ck.os, "replace", real)
    return renamed


def _save_with_a_power_cut_before_the_arrays(trainer, out, monkeypatch):
    """trainer.save(out), stopped just before ckpt.npz is renamed into place (its pending
    manifest is written, the arrays are not in)."""
    import models.training.checkpoint as ck
    real = os.replace

    def power_cut(src, dst):
        if dst.endswith("ckpt.npz"):
            raise KeyboardInterrupt("power cut")
        real(src, dst)

    monkeypatch.setattr(ck.os, "replace", power_cut)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(out)
    monkeypatch.setattr(ck.os, "replace", real)


def test_a_save_stopped_between_its_two_renames_still_loads(tmp_path, monkeypatch):
    """The arrays file is swapped in, then the power goes: the pending manifest vouches for it."""
    model = _model()
    tr = _trainer(model, _adamw(model), steps=2, eval_batches=None)
    tr.fit()
    tr.save(tmp_path)
    tr.step = 5                                                 # a later state to save
    renamed = _save_with_a_power_cut_before_the_manifest(tr, tmp_path, monkeypatch)
    assert [os.path.basename(d) for d in renamed] == ["ckpt.npz"]   # the arrays were swapped in
    assert load_checkpoint(tmp_path).step == 5                  # ... and they load


def _weights(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("other, match", [
    (dict(model_kw={"n_head": 4}), r"another model \(n_head: saved 2, this model 4\)"),
    (dict(dtype=np.float64), "saved as float32, this model holds float64"),
    (dict(trainer_kw={"schedule_kwargs": {"warmup_steps": 1, "min_ratio": 0.1}}),
     "schedule .*warmup_steps.: 2.* this trainer has .*warmup_steps.: 1"),
    (dict(optimizer="sgd"), "optimizer state does not fit SGD"),
])
def test_restore_refuses_another_run_and_leaves_everything_as_it_was(tmp_path, other, match):
    """A checkpoint of another config (same shapes), dtype, schedule or optimizer is refused,
    and the refusal changes nothing: the weights, the optimizer state and the step stay. It
    restored another config and schedule silently, and wrote the weights before finding the
    optimizer state wrong (a review session)."""
    model = _model()
    tr = _trainer(model, _adamw(model), steps=3, eval_batches=None)
    tr.fit()
    tr.save(tmp_path)
    dtype = other.get("dtype", np.float32)
    fresh = GPT(GPTConfig(**{**CFG, **other.get("model_kw", {})}), dtype=dtype, seed=9)
    params = {n: p.data for n, p in fresh.named_parameters()}
    opt = optim.create("sgd", params, lr=0.1, momentum=0.9) if other.get("optimizer") else _adamw(fresh)
    again = _trainer(fresh, opt, steps=3, eval_batches=None, **other.get("trainer_kw", {}))
    again.fit()                                         # some optimizer state to keep
    before, state = _weights(fresh), optim.flatten_state_dict(opt.state_dict())
    rng_state = again.rng.bit_generator.state
    with pytest.raises(CheckpointError, match=match):
        again.restore(load_checkpoint(tmp_path))
    assert again.step == 3 and again.rng.bit_generator.state == rng_state
    for n, w in _weights(fresh).items():
        np.testing.assert_array_equal(w, before[n])
    for k, v in optim.flatten_state_dict(opt.state_dict()).items():
        np.testing.assert_array_equal(v, state[k])


def test_a_target_behind_the_saved_step_is_refused_and_changes_nothing(tmp_path):
    """The target is checked after the step is read: the refusal puts back the step, target,
    horizon, history and RNG states too (they stayed the checkpoint's: a review session)."""
    model = _model()
    tr = _trainer(model, _adamw(model), steps=6, eval_batches=None)
    tr.fit()
    tr.save(tmp_path)
    fresh = _model(seed=5)
    again = _trainer(fresh, _adamw(fresh), steps=6, eval_batches=None)
    before = (again.step, again.target, again.horizon, again.rng.bit_generator.state, dict(again.history))
    weights = _weights(fresh)
    with pytest.raises(CheckpointError, match="a target of 3 steps is behind it"):
        again.restore(load_checkpoint(tmp_path), target=3)
    assert (again.step, again.target, again.horizon, again.rng.bit_generator.state, again.history) == before
    for n, w in _weights(fresh).items():
        np.testing.assert_array_equal(w, weights[n])


def test_build_model_keeps_the_saved_dtype(tmp_path):
    """A float64 model comes back float64 (it was rebuilt float32, the weights cast silently)."""
    model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=0)
    tr = _trainer(model, _adamw(model), steps=1, eval_batches=None)
    tr.fit()
    tr.save(tmp_path)
    again = load_checkpoint(tmp_path).build_model()
    assert all(p.data.dtype == np.float64 for p in again.parameters())
    for n, w in _weights(again).items():
        np.testing.assert_array_equal(w, _weights(model)[n])


def test_two_stopped_saves_in_a_row_leave_a_checkpoint_that_loads(tmp_path, monkeypatch):
    """Save 2 stops between its renames (its pending manifest vouches for ckpt.npz); save 3 stops
    before its first rename. Save 3 used to write its own manifest.json.tmp over save 2's, and no
    manifest matched ckpt.npz any more (a review session); now it first finishes save 2's."""
    model = _model()
    tr = _trainer(model, _adamw(model), steps=2, eval_batches=None)
    tr.fit()
    tr.save(tmp_path)
    tr.step = 5
    _save_with_a_power_cut_before_the_manifest(tr, tmp_path, monkeypatch)
    tr.step = 7
    _save_with_a_power_cut_before_the_arrays(tr, tmp_path, monkeypatch)
    assert load_checkpoint(tmp_path).step == 5                  # the last save that got its arrays in


def test_a_pending_manifest_of_another_save_does_not_vouch_for_the_arrays(tmp_path):
    """With no manifest.json, manifest.json.tmp stands in for it only when it holds ckpt.npz's
    SHA-256: another save's is refused (as a missing manifest), its own is accepted."""
    model = _model()
    tr = _trainer(model, _adamw(model), steps=2, eval_batches=None)
    tr.fit()
    a, b = tmp_path / "a", tmp_path / "b"
    tr.save(a)
    tr.step = 5
    tr.save(b)                                                  # other arrays, another digest
    os.replace(b / "manifest.json", a / "manifest.json.tmp")
    os.replace(a / "manifest.json", tmp_path / "a_manifest.json")
    with pytest.raises(CheckpointError, match="has no manifest.json beside it"):
        load_checkpoint(a)
    os.replace(tmp_path / "a_manifest.json", a / "manifest.json.tmp")
    assert load_checkpoint(a).step == 2                         # its own pending manifest vouches


def test_a_stale_pending_manifest_is_not_promoted_by_the_next_save(tmp_path, monkeypatch):
    """Saves 2 and 3 both stop before their arrays are renamed in. Save 3 finishes a pending
    manifest only when it vouches for ckpt.npz: save 2's (for arrays that never arrived) must
    not replace save 1's manifest.json, which still vouches for ckpt.npz."""
    model = _model()
    tr = _trainer(model, _adamw(model), steps=2, eval_batches=None)
    tr.fit()
    tr.save(tmp_path)
    for step in (5, 7):
        tr.step = step
        _save_with_a_power_cut_before_the_arrays(tr, tmp_path, monkeypatch)
    assert json.loads(Path(tmp_path / "manifest.json").read_text())["step"] == 2
    assert load_checkpoint(tmp_path).step == 2                  # the last save that got its arrays in


def test_a_first_save_stopped_before_its_manifest_still_loads_and_fit_starts_uninterrupted(tmp_path, monkeypatch):
    model = _model()
    tr = _trainer(model, _adamw(model), steps=3, eval_batches=None,
                  on_step=lambda t: setattr(t, "interrupted", t.step == 1 or t.interrupted))
    assert tr.fit().interrupted and tr.step == 1
    assert not tr.fit().interrupted and tr.step == 3              # a second fit() starts afresh
    _save_with_a_power_cut_before_the_manifest(tr, tmp_path, monkeypatch)
    assert not os.path.exists(tmp_path / "manifest.json")
    assert load_checkpoint(tmp_path).step == 3


def test_a_rank_told_to_stop_by_the_vote_takes_its_own_late_ctrl_c_as_the_first():
    """reduce_stop says "stop" although this process had no signal (another rank had one); this
    process's own Ctrl-C, arriving just after, is its first, not a second one that aborts."""
    import signal

    model = _model()
    tr = _trainer(model, _adamw(model), steps=3, eval_batches=None, reduce_stop=lambda flag: True)
    tr._stop_requested = tr.interrupted = False
    restore = tr._catch_signals()
    try:
        on_signal = signal.getsignal(signal.SIGINT)
        assert tr._decide_stop()                   # the other ranks' decision
        on_signal(signal.SIGINT, None)             # with the old handler: KeyboardInterrupt
        assert tr._stop_requested
        with pytest.raises(KeyboardInterrupt):     # a second Ctrl-C of its own still aborts
            on_signal(signal.SIGINT, None)
    finally:
        restore()


def test_a_stop_the_vote_defers_stands_until_it_is_granted():
    votes = []

    def grant_from_the_third_vote(flag):
        votes.append(flag)
        return flag and len(votes) >= 3

    model = _model()
    tr = _trainer(model, _adamw(model), steps=6, eval_batches=None, reduce_stop=grant_from_the_third_vote,
                  on_step=lambda t: setattr(t, "interrupted", t.interrupted or t.step == 1))
    res = tr.fit()
    assert res.interrupted and res.step == 2 and votes == [False, True, True]


def test_a_batch_source_with_its_own_state_resumes_where_it_was(tmp_path):
    """``batches`` itself with state_dict / load_state_dict (torchdata's StatefulDataLoader
    protocol): the Trainer saves its state and restores it, so a resumed run reads the same
    batches as an uninterrupted one; the source restarted from its first batch before."""
    class Cursor:
        def __init__(self):
            self.pos = 0

        def __call__(self, rng):
            self.pos += 1
            return batches(np.random.default_rng(self.pos))       # the batch depends on the position

        def state_dict(self):
            return {"pos": self.pos}

        def load_state_dict(self, sd):
            self.pos = int(sd["pos"])

    def run(stop_at=None):
        model = _model()
        stop = (lambda t: setattr(t, "interrupted", t.step == stop_at)) if stop_at else None
        return Trainer(model, lm_loss, _adamw(model), Cursor(), steps=6, eval_batches=None, on_step=stop,
                       progress=False, log_every=0)

    full = run()
    full.fit()
    part = run(stop_at=3)
    part.fit()
    part.save(tmp_path)
    again = run()
    again.restore(load_checkpoint(tmp_path))
    assert again.batches.pos == 3
    again.fit()
    assert again.history["train_loss"] == full.history["train_loss"]
