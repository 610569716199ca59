"""Tensor parallelism (models.parallel.tensor): the f and g operators against their definitions,
shards that gather back to the whole model, TP on 2 and 4 simulated workers equal to one process
(loss, gradients and parameters over several clipped AdamW steps, float64), the bytes a step
sends against the formula, SimComm equal to `mpiexec -n 2` bit for bit, and the refusals."""

import numpy as np
import pytest

import minigrad as mg
import optim
from models.gpt import GPT, GPTConfig
from models.parallel.tensor import (TensorParallelGPT, check_tp_degree, clip_grad_norm_tp,
                                    copy_to_tensor_parallel, gather_state_dict, reduce_from_tensor_parallel,
                                    shard_state_dict, sharding, tp_bytes_per_step)
from models.training import CheckpointError, Trainer, clip_grad_norm, lm_loss, load_checkpoint
from models.training.distributed import (any_rank, data_parallel_trainer, rank_dir, restore_ranks,
                                         seed_model_generators)
from models.training.optimizers import build_optimizer
from optim.dist.comm import SimComm, WorkerError, ring_traffic
from strategies import assert_mpiexec_matches_simcomm

CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=11)
BATCH = 4


def _batches(seed=0, vocab=CONFIG.vocab_size, T=CONFIG.block_size):
    tokens = np.random.default_rng(seed).integers(0, vocab, (64, T + 1))

    def batches(rng):
        rows = tokens[rng.integers(0, len(tokens), BATCH)]
        return rows[:, :-1], rows[:, 1:]
    return batches


def _assert_close(got, want, what, tol=1e-10):
    """Relative to the tensor's largest entry: 1e-10 in float64 is summation order, not a bug."""
    scale = max(float(np.max(np.abs(want))), 1e-300)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:g}"


# ---------------------------------------------------------------- f and g
def test_f_is_identity_forward_and_sums_the_gradient_over_ranks_backward():
    n = 3
    x0 = np.arange(6.0).reshape(2, 3)
    coef = [np.random.default_rng(r).standard_normal((2, 3)) for r in range(n)]

    def worker(comm):
        x = mg.tensor(x0, requires_grad=True)
        y = copy_to_tensor_parallel(x, comm)
        (y * mg.tensor(coef[comm.rank])).sum().backward()     # rank r's loss: <c_r, y>
        return y.data, x.grad, comm.bytes_sent
    for y, grad, sent in SimComm(n).run(worker):
        np.testing.assert_array_equal(y, x0)                 # forward: no communication
        np.testing.assert_allclose(grad, sum(coef), rtol=1e-14)
        assert sent == ring_traffic(x0.size, n, 0)[0] * 8    # one all-reduce, in backward


def test_g_sums_over_ranks_forward_and_passes_the_gradient_through_backward():
    n = 3
    xs = [np.random.default_rng(10 + r).standard_normal((2, 3)) for r in range(n)]
    coef = np.random.default_rng(7).standard_normal((2, 3))

    def worker(comm):
        x = mg.tensor(xs[comm.rank], requires_grad=True)
        y = reduce_from_tensor_parallel(x, comm)
        sent_forward = comm.bytes_sent
        (y * mg.tensor(coef)).sum().backward()
        return y.data, x.grad, sent_forward, comm.bytes_sent
    out = SimComm(n).run(worker)
    for y, grad, sent_forward, sent in out:
        np.testing.assert_array_equal(y, out[0][0])          # the same bits on every rank
        np.testing.assert_allclose(y, sum(xs), rtol=1e-14)
        np.testing.assert_array_equal(grad, coef)
        assert sent_forward > 0 and sent == sent_forward     # backward sends nothing


# ---------------------------------------------------------------- shards
@pytest.mark.parametrize("size", [1, 2, 4])
def test_shards_gather_back_to_the_whole_state_dict_and_hold_the_right_heads(size):
    full = GPT(CONFIG, dtype=np.float64, seed=1).state_dict()
    shards = [shard_state_dict(full, CONFIG, r, size) for r in range(size)]
    gathered = SimComm(size).run(lambda comm: gather_state_dict(shards[comm.rank], comm))
    for g in gathered:
        assert list(g) == list(full)
        for name in full:
            np.testing.assert_array_equal(g[name], full[name])
    C, c = CONFIG.n_embd, CONFIG.n_embd // size
    for r, shard in enumerate(shards):
        qkv = shard["h.1.attn.c_attn.weight"]                # (3C/t, C): q, k, v rows of rank r's heads
        assert qkv.shape == (3 * c, C)
        for part in range(3):
            np.testing.assert_array_equal(qkv[part * c:(part + 1) * c],
                                          full["h.1.attn.c_attn.weight"][part * C + r * c: part * C + (r + 1) * c])
        np.testing.assert_array_equal(shard["h.1.attn.c_proj.weight"],
                                      full["h.1.attn.c_proj.weight"][:, r * c:(r + 1) * c])
        np.testing.assert_array_equal(shard["h.0.mlp.c_fc.weight"],
                                      full["h.0.mlp.c_fc.weight"][4 * r * c:4 * (r + 1) * c])
        np.testing.assert_array_equal(shard["h.0.mlp.c_proj.bias"], full["h.0.mlp.c_proj.bias"])
    replicated = [n for n in full if sharding(n) is None]
    assert "wte.weight" in replicated and "h.0.ln_1.weight" in replicated and "h.0.attn.c_proj.bias" in replicated
    assert sum(sharding(n) is not None for n in full) == 6 * CONFIG.n_layer


def test_the_tp_model_starts_from_the_single_process_weights_and_splits_q_k_v_per_shard():
    def worker(comm):
        model = TensorParallelGPT(CONFIG, comm, dtype=np.float64, seed=5)
        return gather_state_dict(model.state_dict(), comm), model.param_splits()
    full = GPT(CONFIG, dtype=np.float64, seed=5).state_dict()
    for state, splits in SimComm(2).run(worker):
        assert all(np.array_equal(state[n], full[n]) for n in full)
        c = CONFIG.n_embd // 2
        assert splits["h.0.attn.c_attn.weight"] == (("q", "attn_q", (0, c)), ("k", "attn_k", (c, 2 * c)),
                                                    ("v", "attn_v", (2 * c, 3 * c)))


# ---------------------------------------------------------------- equal to one process
def _train(model, steps, hooks_after=()):
    """AdamW with weight decay and clipping at a norm the gradients exceed, dropout on: the loss,
    the gradients after clipping and the last clipping norm of every step."""
    opt = build_optimizer("adamw", model, lr=3e-3, weight_decay=0.1)
    clip = clip_grad_norm_tp(model, 0.5) if isinstance(model, TensorParallelGPT) else clip_grad_norm(0.5)
    seen = {"grads": [], "norms": []}

    def record(grads):
        seen["grads"].append({n: g.copy() for n, g in grads.items()})
        seen["norms"].append(clip.last_norm)
    trainer = Trainer(model, lm_loss, opt, _batches(), steps=steps, grad_hooks=[clip, record, *hooks_after],
                      progress=False, seed=3)
    trainer.fit()
    return trainer.history["train_loss"], seen


@pytest.mark.parametrize("size", [2, 4])
def test_tp_training_equals_one_process_in_loss_gradients_and_parameters(size):
    config = GPTConfig(**{**CONFIG.to_dict(), "dropout": 0.1})
    steps = 4
    single = GPT(config, dtype=np.float64, seed=2)
    losses, seen = _train(single, steps)

    def worker(comm):
        model = TensorParallelGPT(config, comm, dtype=np.float64, seed=2)
        tp_losses, tp_seen = _train(model, steps)
        grads = [gather_state_dict(g, comm) for g in tp_seen["grads"]]
        local = tp_seen["grads"][-1]
        return tp_losses, grads, tp_seen["norms"], gather_state_dict(model.state_dict(), comm), local
    out = SimComm(size).run(worker)
    assert min(seen["norms"]) > 0.5                          # clipping acted at every step
    for rank, (tp_losses, grads, norms, params, local) in enumerate(out):
        np.testing.assert_allclose(tp_losses, losses, rtol=1e-10)
        np.testing.assert_allclose(norms, seen["norms"], rtol=1e-10)
        for step in range(steps):
            for name, g in seen["grads"][step].items():
                _assert_close(grads[step][name], g, f"rank {rank} step {step} grad {name}")
        for name, p in single.state_dict().items():
            _assert_close(params[name], p, f"rank {rank} parameter {name}")
        for name, g in local.items():                        # replicated: the same bits everywhere
            if sharding(name) is None:
                np.testing.assert_array_equal(g, out[0][4][name], err_msg=name)


@pytest.mark.parametrize("norm_type", [1.0, np.inf])
def test_clip_grad_norm_tp_is_the_single_process_norm_for_other_norms(norm_type):
    batch = _batches()(np.random.default_rng(0))
    single = GPT(CONFIG, dtype=np.float64, seed=4)
    _, grads = single.loss_and_grads(*batch)
    want = optim.clip_grad_norm_(grads, 1e-3, norm_type)

    def worker(comm):
        model = TensorParallelGPT(CONFIG, comm, dtype=np.float64, seed=4)
        _, g = model.loss_and_grads(*batch)
        hook = clip_grad_norm_tp(model, 1e-3, norm_type)
        hook(g)
        return hook.last_norm, gather_state_dict(g, comm)
    for norm, clipped in SimComm(2).run(worker):
        assert norm == pytest.approx(want, rel=1e-10)
        for name in grads:
            _assert_close(clipped[name], grads[name], name)


@pytest.mark.parametrize("checkpoint, per_layer", [(False, 4), (True, 6)])
def test_a_step_sends_four_all_reduces_of_the_activation_per_layer_and_the_norm(checkpoint, per_layer):
    """With activation checkpointing the recomputed forward repeats the two g's: 6 all-reduces per
    layer, where the formula said 4 (measured 24576 bytes against 16384; a review)."""
    config = GPTConfig(**{**CONFIG.to_dict(), "checkpoint": checkpoint})
    batch = _batches()(np.random.default_rng(0))
    B, T = batch[0].shape

    def worker(comm):
        model = TensorParallelGPT(config, comm, dtype=np.float64)
        comm.reset_counters()
        _, grads = model.loss_and_grads(*batch)
        clip_grad_norm_tp(model, 1.0)(grads)
        return comm.bytes_sent
    for size in (2, 4):
        formula = tp_bytes_per_step(config, B, T, size, 8)
        assert formula == per_layer * config.n_layer * 2 * (size - 1) / size * B * T * config.n_embd * 8
        for rank, sent in enumerate(SimComm(size).run(worker)):
            assert sent == formula + ring_traffic(1, size, rank)[0] * 8


def test_activation_checkpointing_recomputes_through_the_all_reduces():
    config = GPTConfig(**{**CONFIG.to_dict(), "checkpoint": True})
    batch = _batches()(np.random.default_rng(1))
    loss, grads = GPT(config, dtype=np.float64, seed=6).loss_and_grads(*batch)

    def worker(comm):
        model = TensorParallelGPT(config, comm, dtype=np.float64, seed=6)
        tp_loss, g = model.loss_and_grads(*batch)
        return tp_loss, gather_state_dict(g, comm)
    for tp_loss, tp_grads in SimComm(2).run(worker):
        assert tp_loss == pytest.approx(loss, rel=1e-10)
        for name in grads:
            _assert_close(tp_grads[name], grads[name], name)


ROW_PARALLEL = ("attn.c_proj.weight", "mlp.c_proj.weight")


@pytest.mark.parametrize("size", [2, 4])
def test_adam_mini_cuts_a_shards_q_and_k_into_its_own_heads(size):
    """build_optimizer gave Adam-mini the config's n_head, but a shard holds n_head / t heads, so
    its per-head blocks were fractions of heads (a review). With the shard's heads, one step
    equals one process's on every parameter but the row-parallel weights, whose per-row blocks
    span the input columns the ranks split (docs/parallel.md: not equal there)."""
    batch = _batches()(np.random.default_rng(2))
    single = GPT(CONFIG, dtype=np.float64, seed=7)
    opt = build_optimizer("adam-mini", single, 1e-2)
    opt.step(single.loss_and_grads(*batch)[1])

    def worker(comm):
        model = TensorParallelGPT(CONFIG, comm, dtype=np.float64, seed=7)
        tp_opt = build_optimizer("adam-mini", model, 1e-2)
        tp_opt.step(model.loss_and_grads(*batch)[1])
        return gather_state_dict(model.state_dict(), comm), tp_opt.blocks("h.0.attn.c_attn.weight")
    for params, blocks in SimComm(size).run(worker):
        assert blocks == opt.blocks("h.0.attn.c_attn.weight") // size     # q, k: nh/t heads; v: rows
        for name, want in single.state_dict().items():
            if name.endswith(ROW_PARALLEL):
                assert not np.allclose(params[name], want, rtol=1e-10, atol=0), name
            else:
                _assert_close(params[name], want, name)


# ---------------------------------------------------------------- data x tensor parallel
def test_the_data_parallel_groups_of_a_grid_draw_their_own_dropout_masks():
    """Every rank seeded dropout_rng with seed + 1, so both data-parallel groups of a 2 x 2 grid
    drew the same masks for their different rows (a review). Each DP rank now has its own stream
    (seed_model_generators), the same on the two ranks of a TP group, as TP needs: each group's
    shard loss is a one-process GPT's with that stream."""
    config = GPTConfig(**{**CONFIG.to_dict(), "dropout": 0.5})
    row = np.random.default_rng(0).integers(0, config.vocab_size, (1, config.block_size + 1))

    def same_row_twice(rng):                           # the global batch: one row per DP group
        rows = np.repeat(row, 2, axis=0)
        return rows[:, :-1], rows[:, 1:]

    def worker(comm):
        tp, dp = comm.split(comm.rank // 2), comm.split(comm.rank % 2)
        model = TensorParallelGPT(config, tp, dtype=np.float64, seed=4)
        trainer = data_parallel_trainer(dp, model, lm_loss, build_optimizer("sgd", model, 0.0), same_row_twice,
                                        world=comm, steps=1, progress=False)
        trainer.fit()
        return trainer.history["train_loss"][0]
    losses = SimComm(4).run(worker)                    # world ranks 0, 1: DP group 0; 2, 3: DP group 1
    assert losses[0] == losses[1] and losses[2] == losses[3]            # a TP group: the same masks
    assert losses[0] != losses[2]
    for dp_rank, got in ((0, losses[0]), (1, losses[2])):
        gpt = GPT(config, dtype=np.float64, seed=4)
        seed_model_generators(gpt, dp_rank)
        gpt.train()
        want = float(gpt(row[:, :-1], row[:, 1:])[1].item())
        assert got == pytest.approx(want, rel=1e-12), dp_rank


# ---------------------------------------------------------------- checkpoints
DROPOUT = GPTConfig(**{**CONFIG.to_dict(), "dropout": 0.1})     # its generator is saved and restored too


def _tp_trainer(comm, save_dir=None, **kw):
    """The docs' way: every rank its own directory, rank_dir(save_dir, rank), with the world size."""
    model = TensorParallelGPT(DROPOUT, comm, dtype=np.float64, seed=2)
    return model, Trainer(model, lm_loss, build_optimizer("adamw", model, lr=3e-3, weight_decay=0.1), _batches(),
                          steps=3, grad_hooks=[clip_grad_norm_tp(model, 0.5)], progress=False, seed=3,
                          reduce_stop=any_rank(comm),
                          save_dir=None if save_dir is None else rank_dir(save_dir, comm.rank),
                          save_meta={"world_size": comm.size, "rank": comm.rank}, **kw)


def _tp_run(comm, save_dir=None, resume=False, **kw):
    model, trainer = _tp_trainer(comm, save_dir, **kw)
    if resume:
        restore_ranks(trainer, comm, save_dir)
    trainer.fit()
    if save_dir is not None:
        trainer.save(trainer.save_dir, trainer.save_meta)
    return trainer.step, trainer.interrupted, trainer.history, model.state_dict()


def test_each_rank_resumes_its_own_shard_to_the_uninterrupted_run(tmp_path):
    whole = SimComm(2).run(_tp_run)
    stop_after_1 = lambda tr: setattr(tr, "interrupted", tr.step == 1)   # noqa: E731 -- a Ctrl-C
    stopped = SimComm(2).run(_tp_run, str(tmp_path), on_step=stop_after_1)
    assert [(step, stop) for step, stop, _, _ in stopped] == [(1, True), (1, True)]
    for r, (_, _, _, params) in enumerate(stopped):
        ckpt = load_checkpoint(tmp_path / f"rank{r}")
        assert ckpt.meta["model"]["shard"] == {"tp_rank": r, "tp_size": 2}
        for name, a in params.items():
            np.testing.assert_array_equal(ckpt.params[name], a)           # this rank's shard, not the other's
    resumed = SimComm(2).run(_tp_run, str(tmp_path), resume=True)
    for (step, stop, history, params), (_, _, want_history, want) in zip(resumed, whole):
        assert step == 3 and not stop and history == want_history
        for name, a in want.items():
            np.testing.assert_array_equal(params[name], a)


def test_a_restore_into_another_ranks_shard_is_refused_naming_both(tmp_path):
    """All ranks saved into one directory and the last writer won; a restore then put that shard
    on every rank without a word (a review). The checkpoint now says which shard it holds."""
    def shared(comm):                                  # one save_dir for both ranks: the mistake
        model, trainer = _tp_trainer(comm)
        trainer.fit()
        if comm.rank == 1:                             # the last writer: its shard is what is left
            trainer.save(tmp_path / "one")
        comm.barrier()
        _, fresh = _tp_trainer(comm)
        try:
            fresh.restore(load_checkpoint(tmp_path / "one"))
        except CheckpointError as e:
            return str(e)
        return None
    refused, accepted = SimComm(2).run(shared)
    assert accepted is None
    assert "holds tp_rank=1, tp_size=2, this model is tp_rank=0, tp_size=2" in refused, refused
    assert "rank_dir" in refused and "restore_ranks" in refused

    single = GPT(DROPOUT, dtype=np.float64)            # a whole model is no shard either
    trainer = Trainer(single, lm_loss, build_optimizer("adamw", single, lr=1e-3), _batches(), steps=1,
                      progress=False)
    with pytest.raises(CheckpointError, match="holds tp_rank=1, tp_size=2, this model is the whole model"):
        trainer.restore(load_checkpoint(tmp_path / "one"))


def test_a_checkpoint_saved_before_shards_were_recorded_resumes_by_its_rank_or_is_refused(tmp_path):
    """Older TP checkpoints hold no shard record: one saved the docs' way (a directory per rank,
    save_meta with rank and world_size) resumes on its rank, another rank's is refused (a review:
    every older checkpoint was refused as 'the whole model')."""
    with pytest.MonkeyPatch.context() as mp:               # save as the code before the record did
        mp.delattr(TensorParallelGPT, "shard_meta")
        SimComm(2).run(_tp_run, str(tmp_path))
    assert "shard" not in load_checkpoint(tmp_path / "rank1").meta["model"]

    def resume(comm, swap=False):
        _, trainer = _tp_trainer(comm)
        try:
            trainer.restore(load_checkpoint(tmp_path / f"rank{1 - comm.rank if swap else comm.rank}"))
        except CheckpointError as e:
            return str(e)
        return trainer.step
    assert SimComm(2).run(resume) == [3, 3]
    refused = SimComm(2).run(resume, True)
    assert all("saved before shards were recorded" in e for e in refused), refused
    assert "rank=1, world_size=2); this model is tp_rank=0, tp_size=2" in refused[0]


# ---------------------------------------------------------------- SimComm == mpiexec
def test_simcomm_and_mpiexec_agree_bit_for_bit(tmp_path):
    assert_mpiexec_matches_simcomm("tp_train", 2, tmp_path)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("size", [3, 8])
def test_a_degree_that_does_not_divide_the_heads_is_one_error_naming_the_numbers(size):
    msg = rf"n_head=4 heads \(n_embd=32, MLP hidden size 4\*n_embd=128\) do not split evenly over {size} ranks"
    with pytest.raises(ValueError, match=msg):
        check_tp_degree(CONFIG, size)
    with pytest.raises(ValueError, match=msg):
        shard_state_dict(GPT(CONFIG).state_dict(), CONFIG, 0, size)
    with pytest.raises(WorkerError, match=msg):
        SimComm(size).run(lambda comm: TensorParallelGPT(CONFIG, comm))


def test_other_refusals_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"rank 2 is not in 0\.\.1"):
        shard_state_dict(GPT(CONFIG).state_dict(), CONFIG, 2, 2)
    with pytest.raises(ValueError, match="must be an integer >= 1, got 0"):
        check_tp_degree(CONFIG, 0)
    for variant, says in (({"n_kv_head": 2}, "attention='mha', n_kv_head=2, n_head=4"),
                          ({"attention": "linear"}, "attention='linear', n_kv_head=None, n_head=4")):
        with pytest.raises(ValueError, match=f"splits softmax attention with n_kv_head = n_head .*{says}"):
            check_tp_degree(GPTConfig(**{**CONFIG.to_dict(), **variant}), 2)

    def worker(comm):
        model = TensorParallelGPT(CONFIG, comm)
        with pytest.raises(ValueError, match="max_norm must be a finite number > 0, got 0"):
            clip_grad_norm_tp(model, 0)
        with pytest.raises(NotImplementedError, match="gather_state_dict"):
            model.generate(np.zeros((1, 2), dtype=np.int64), 1)
    SimComm(2).run(worker)
