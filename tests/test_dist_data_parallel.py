"""Synchronous data parallelism on SimComm: one all-reduce per step, the same parameters on every
rank, and n workers with batch B equal one worker with batch n·B (float64, to rounding)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import optim
from models.data import TextData
from models.gpt import GPT, GPTConfig
from models.training import CheckpointError, Trainer, clip_grad_norm, lm_loss, load_checkpoint
from models.training.distributed import (data_parallel_trainer, rank_dir, restore_ranks,
                                         seed_model_generators, train_gpt_data_parallel)
from optim.dist.comm import CommError, DeadlockError, SimComm, WorkerError, ring_traffic
from optim.dist.data_parallel import allreduce_grads, broadcast_params, shard_batches

CFG = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)
IDS = np.cumsum(np.random.default_rng(0).choice([1, 1, 1, 2], size=3000)) % CFG["vocab_size"]


def global_batches(rows):
    def draw(rng, T=CFG["block_size"]):
        starts = rng.integers(0, len(IDS) - T - 1, size=rows)
        return (np.stack([IDS[s:s + T] for s in starts]), np.stack([IDS[s + 1:s + T + 1] for s in starts]))
    return draw


class CountingComm:
    """A communicator that counts its all-reduce calls (delegates everything)."""

    def __init__(self, comm):
        self.comm, self.allreduces = comm, 0

    def allreduce(self, x, op="sum"):
        self.allreduces += 1
        return self.comm.allreduce(x, op=op)

    def __getattr__(self, name):
        return getattr(self.comm, name)


def rank_grads(rank):
    r = np.random.default_rng(rank)
    return {"w": r.standard_normal((3, 5)), "b": r.standard_normal(7), "frozen": None,
            "h": r.standard_normal((2, 2, 2))}


# ------------------------------------------------------------------ the raw pieces
@pytest.mark.parametrize("n", [1, 3, 4])
def test_allreduce_grads_averages_every_gradient_in_one_allreduce(n):
    def worker(comm):
        grads = rank_grads(comm.rank)
        if comm.rank % 2:
            grads = dict(reversed(grads.items()))        # the dict's order must not matter
        counting = CountingComm(comm)
        hook = allreduce_grads(counting)
        hook(grads)
        return grads, counting.allreduces, hook.rounds, comm.bytes_sent

    out = SimComm(n).run(worker)
    every = [rank_grads(r) for r in range(n)]
    numel = 15 + 7 + 8
    for r, (grads, calls, rounds, sent) in enumerate(out):
        assert calls == 1 and rounds == 1
        assert sent == ring_traffic(numel, n, r)[0] * 8
        assert grads["frozen"] is None
        for name in ("w", "b", "h"):
            np.testing.assert_allclose(grads[name], np.mean([g[name] for g in every], axis=0), rtol=1e-14)
            np.testing.assert_array_equal(grads[name], out[0][0][name])     # bitwise the same on all


def test_allreduce_grads_takes_one_allreduce_per_dtype():
    def worker(comm):
        counting = CountingComm(comm)
        grads = {"a": np.full(4, comm.rank, np.float32), "b": np.full(3, comm.rank, np.float64),
                 "c": np.full(2, 2.0 * comm.rank, np.float32)}
        allreduce_grads(counting)(grads)
        return grads, counting.allreduces

    for grads, calls in SimComm(2).run(worker):
        assert calls == 2
        assert grads["a"].dtype == np.float32 and grads["b"].dtype == np.float64
        np.testing.assert_array_equal(grads["a"], 0.5)
        np.testing.assert_array_equal(grads["b"], 0.5)
        np.testing.assert_array_equal(grads["c"], 1.0)


def test_mismatched_gradients_across_ranks_are_named():
    def worker(comm):
        allreduce_grads(comm)({"w": np.zeros(3 + comm.rank)})

    with pytest.raises(WorkerError) as e:
        SimComm(2).run(worker)
    assert isinstance(e.value.error, CommError) and "(3,)" in str(e.value) and "(4,)" in str(e.value)


def _layer_wise_grads(rank):
    """Rank 0 has the gradient of layer 2, rank 1 of layer 3: the same length, different names."""
    grads = {"h.2.w": None, "h.3.w": None}
    grads[f"h.{2 + rank}.w"] = np.full(4, 2.0)
    return grads


@pytest.mark.parametrize("entry", ["allreduce_grads", "Reducer", "LocalSGD", "broadcast_params"])
def test_arrays_of_the_same_length_under_different_names_are_refused_on_every_rank(entry):
    """Packed into one buffer per dtype, they used to be averaged with each other silently."""
    from optim.dist.compress import Identity, Reducer
    from optim.dist.local_sgd import LocalSGD

    def worker(comm):
        grads = _layer_wise_grads(comm.rank)
        try:
            if entry == "allreduce_grads":
                allreduce_grads(comm)(grads)
            elif entry == "Reducer":
                Reducer(comm, Identity())(grads)
            elif entry == "LocalSGD":
                LocalSGD(optim.create("sgd", {"w": np.zeros(3)}), comm, local_steps=2,
                         switch_step=1).grad_hook(grads)
            else:
                broadcast_params(comm, {f"layer{comm.rank}": np.zeros((2, 3) if comm.rank else (3, 2))})
        except CommError as e:
            return str(e)

    for message in SimComm(2).run(worker):
        assert message is not None and "the ranks passed different arrays" in message
        if entry == "broadcast_params":
            assert "layer0: rank 0 (3, 2) float64, rank 1 absent" in message
        else:
            assert "h.2.w: rank 0 (4,) float64, rank 1 None" in message


def test_the_layout_is_checked_again_only_when_it_changes():
    def worker(comm):
        hook = allreduce_grads(comm)
        gathered = []
        real = comm.allgather
        comm.allgather = lambda x: gathered.append(x) or real(x)
        for grads in ({"a": np.ones(2), "b": None}, {"a": np.ones(2), "b": None}, {"a": None, "b": np.ones(2)}):
            hook(grads)
        return len(gathered), comm.bytes_sent

    for checks, sent in SimComm(2).run(worker):
        assert checks == 2                                  # the first call and the change
        assert sent == 3 * ring_traffic(2, 2, 0)[0] * 8     # the checksums are not counted


def test_broadcast_params_copies_rank_0_in_place():
    def worker(comm):
        params = {"w": np.full((2, 3), float(comm.rank)), "v": np.arange(4.0) * (comm.rank + 1)}
        before = dict(params)
        broadcast_params(comm, params)
        return all(params[k] is before[k] for k in params), params

    for same_arrays, params in SimComm(3).run(worker):
        assert same_arrays
        np.testing.assert_array_equal(params["w"], 0.0)
        np.testing.assert_array_equal(params["v"], np.arange(4.0))
    with pytest.raises(WorkerError, match="TypeError.*'w' is a list.*p.data"):
        SimComm(1).run(lambda comm: broadcast_params(comm, {"w": [1.0]}))


@given(size=st.integers(1, 5), rows=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_the_shards_of_all_ranks_are_the_global_batch_in_rank_order(size, rows, seed):
    draw = lambda rng: {"x": rng.standard_normal((size * rows, 3)), "y": (rng.integers(0, 9, size * rows),)}  # noqa: E731
    whole = draw(np.random.default_rng(seed))
    shards = [shard_batches(draw, r, size)(np.random.default_rng(seed)) for r in range(size)]
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in shards]), whole["x"])
    np.testing.assert_array_equal(np.concatenate([s["y"][0] for s in shards]), whole["y"][0])
    assert all(len(s["x"]) == rows for s in shards)


def test_shard_batches_refuses_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match=r"shape \(6, 2\).*4 equal shards"):
        shard_batches(lambda rng: np.zeros((6, 2)), 0, 4)(None)
    with pytest.raises(ValueError, match="rank=4, size=4"):
        shard_batches(lambda rng: np.zeros(8), 4, 4)


# ------------------------------------------------------------------ through the Trainer
def test_a_mixed_precision_optimizers_masters_start_from_rank_0s_weights_too():
    """data_parallel_trainer broadcasts rank 0's weights into the model; a MixedPrecisionOptimizer
    built before holds FP32 masters copied from each rank's own weights, and its first step wrote
    them back over the broadcast: every rank then stepped a different point."""
    from minigrad import amp

    def worker(comm):
        model = GPT(GPTConfig(**CFG), seed=comm.rank)
        opt = amp.MixedPrecisionOptimizer(optim.create("sgd", {n: p.data for n, p in model.named_parameters()},
                                                       lr=0.1), "bf16")
        data_parallel_trainer(comm, model, lm_loss, opt, global_batches(4), steps=3, seed=0,
                              progress=False).fit()
        return {n: p.data.copy() for n, p in model.named_parameters()}, dict(opt.masters)

    (model0, masters0), (model1, masters1) = SimComm(2).run(worker)
    for n in model0:
        np.testing.assert_array_equal(model0[n], model1[n], err_msg=n)
        np.testing.assert_array_equal(masters0[n], masters1[n], err_msg=n)


def _optimizer(kind, model):
    params = {n: p.data for n, p in model.named_parameters()}
    if kind == "adamw":
        return optim.create("adamw", optim.param_groups_no_decay(params, 0.1), lr=3e-3)
    return optim.create("sgd", params, lr=0.2, momentum=0.9)


def _snapshots(into):
    return lambda tr: into.append({n: p.data.copy() for n, p in tr.model.named_parameters()})


def _run_single(kind, rows, steps, clip):
    model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=0)
    seen = []
    tr = Trainer(model, lm_loss, _optimizer(kind, model), global_batches(rows), steps=steps, seed=5,
                 schedule="cosine", schedule_kwargs={"warmup_steps": 1}, progress=False, log_every=0,
                 grad_hooks=[clip_grad_norm(clip)], on_step=_snapshots(seen))
    tr.fit()
    return seen, tr.history["train_loss"]


def _run_parallel(kind, n, per_rank, steps, clip):
    def worker(comm):
        model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=comm.rank)   # rank 0's weights win
        seen = []
        tr = data_parallel_trainer(comm, model, lm_loss, _optimizer(kind, model), global_batches(n * per_rank),
                                   steps=steps, seed=5, schedule="cosine", schedule_kwargs={"warmup_steps": 1},
                                   progress=False, grad_hooks=[clip_grad_norm(clip)], on_step=_snapshots(seen))
        tr.fit()
        return seen, tr.history["train_loss"]
    return SimComm(n).run(worker)


def _zeroth_order(kind, model, seed):
    params = {n: p.data for n, p in model.named_parameters()}
    if kind == "mezo":
        return optim.create("mezo", params, lr=1e-2, eps=1e-3, weight_decay=0.1, seed=seed)
    return optim.create("lozo", params, lr=1e-2, eps=1e-3, rank=2, step_interval=2, momentum=0.9, seed=seed)


@pytest.mark.parametrize("kind", ["mezo", "lozo"])
def test_zeroth_order_data_parallel_takes_the_global_batchs_step_on_every_rank(kind):
    """Each rank evaluates the loss of its shard; the ranks average every loss (one all-reduce of
    one float64 per evaluation, two a step) and share rank 0's seed (they were given different
    ones), so every rank draws the same perturbation and takes the step of the global batch's
    loss: bit-identical on every rank, equal to one worker with the whole batch to rounding.
    Without the averaging each rank stepped on its own shard and the ranks drifted apart."""
    n, per_rank, steps = 2, 2, 5

    def worker(comm):
        model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=comm.rank)
        seen = []
        tr = data_parallel_trainer(comm, model, lm_loss, _zeroth_order(kind, model, seed=7 + comm.rank),
                                   global_batches(n * per_rank), steps=steps, seed=5, progress=False,
                                   on_step=_snapshots(seen))
        before = comm.bytes_sent
        tr.fit()
        return seen, tr.history["train_loss"], comm.bytes_sent - before

    ranks = SimComm(n).run(worker)
    model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=0)
    single = []
    tr = Trainer(model, lm_loss, _zeroth_order(kind, model, seed=7), global_batches(n * per_rank), steps=steps,
                 seed=5, progress=False, log_every=0, on_step=_snapshots(single))
    tr.fit()
    for step in range(steps):
        for name, p in ranks[0][0][step].items():
            np.testing.assert_array_equal(ranks[1][0][step][name], p)
            assert np.abs(p - single[step][name]).max() <= 1e-10 * np.abs(single[step][name]).max(), (step, name)
    assert not np.array_equal(ranks[0][0][-1]["wte.weight"], ranks[0][0][0]["wte.weight"])   # it trained
    np.testing.assert_allclose(ranks[0][1], tr.history["train_loss"], rtol=1e-12)
    # per step: two losses and one stop vote, each 8 bytes all-reduced (2(n-1)/n of it sent per rank)
    assert ranks[0][2] == steps * 3 * 8 + 8                          # (+ the vote after the last step)


def test_zeroth_order_data_parallel_refuses_gradient_hooks():
    def worker(comm):
        model = GPT(GPTConfig(**CFG), seed=0)
        with pytest.raises(ValueError, match="zeroth-order optimizer computes no gradients"):
            data_parallel_trainer(comm, model, lm_loss, _zeroth_order("mezo", model, 0), global_batches(4),
                                  steps=2, grad_hooks=[clip_grad_norm(1.0)])
        return True
    assert SimComm(2).run(worker) == [True, True]


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
@pytest.mark.parametrize("n", [2, 4])
def test_data_parallel_on_n_workers_equals_one_worker_with_n_times_the_batch(kind, n):
    steps, per_rank = 4, 2
    clip = 0.5                                    # small enough to clip: it must see the global gradient
    single, single_loss = _run_single(kind, n * per_rank, steps, clip)
    ranks = _run_parallel(kind, n, per_rank, steps, clip)
    for step in range(steps):
        for seen, _ in ranks:                      # identical on every rank, bit for bit
            for name, p in seen[step].items():
                np.testing.assert_array_equal(p, ranks[0][0][step][name])
        for name, p in ranks[0][0][step].items():
            scale = np.abs(single[step][name]).max() or 1.0
            assert np.abs(p - single[step][name]).max() <= 1e-12 * scale, (step, name)
    global_loss = np.mean([loss for _, loss in ranks], axis=0)      # the shards' mean loss
    np.testing.assert_allclose(global_loss, single_loss, rtol=1e-13)
    assert not np.allclose(ranks[0][1], ranks[1][1])                # the ranks saw different rows


def test_each_rank_draws_its_own_dropout_masks_and_the_gradient_averages_theirs():
    """Every rank built its GPT from the same seed and so drew the same dropout masks for its
    different rows (a review). Rank r's generators now have their own stream; the gradient is the
    mean of what two one-process GPTs draw with rank 0's and rank 1's streams on those rows."""
    cfg = GPTConfig(**CFG, dropout=0.5)
    row = IDS[:cfg.block_size + 1][None]

    def same_row_twice(rng):
        rows = np.repeat(row, 2, axis=0)
        return rows[:, :-1], rows[:, 1:]

    def worker(comm):
        model = GPT(cfg, dtype=np.float64, seed=0)
        seen = {}
        trainer = data_parallel_trainer(comm, model, lm_loss, optim.SGD(
            {n: p.data for n, p in model.named_parameters()}, lr=0.0), same_row_twice, steps=1, progress=False,
            grad_hooks=[lambda g: seen.update((n, a.copy()) for n, a in g.items())])
        trainer.fit()
        return trainer.history["train_loss"][0], seen
    (loss0, grads), (loss1, _) = SimComm(2).run(worker)
    assert loss0 != loss1                                # the same row, other masks
    want = []
    for rank, got in ((0, loss0), (1, loss1)):
        gpt = GPT(cfg, dtype=np.float64, seed=0)
        seed_model_generators(gpt, rank)
        gpt.train()
        loss, g = gpt.loss_and_grads(row[:, :-1], row[:, 1:])
        assert got == pytest.approx(loss, rel=1e-12)
        want.append(g)
    for name, g in grads.items():
        np.testing.assert_allclose(g, (want[0][name] + want[1][name]) / 2, rtol=1e-10, atol=1e-14, err_msg=name)


def test_only_rank_0_prints(capsys):
    def worker(comm):
        model = GPT(GPTConfig(**CFG), dtype=np.float64)
        tr = data_parallel_trainer(comm, model, lm_loss, _optimizer("sgd", model), global_batches(4),
                                   steps=3, progress=False, log_every=1,
                                   eval_batches=[global_batches(2)(np.random.default_rng(9))], eval_every=2)
        tr.fit()

    SimComm(2).run(worker)
    lines = capsys.readouterr().out.splitlines()
    # evaluations at 0, 2 and after the last step; a training-loss line after each step
    assert [ln.split(":")[0] for ln in lines] == ["step 0", "step 1", "step 2", "step 2", "step 3", "step 3"]
    assert sum("val loss" in ln for ln in lines) == 3
    # the training lines show rank 0's part of the batch, and say so (the final mean differed)
    assert sum(": shard loss " in ln for ln in lines) == 3


def _stop_on_one_rank(vote=True, at=2, steps=6, **options):
    """Two ranks; rank 1 alone asks to stop after step ``at``, as when a Ctrl-C reaches it just
    after the other rank has passed the check before the next step. Returns (step reached,
    interrupted, validation steps) per rank."""
    def worker(comm):
        model = GPT(GPTConfig(**CFG), dtype=np.float64)

        def signal_rank_1(tr):
            if comm.rank == 1 and tr.step == at:
                tr.interrupted = True             # a callback's stop; a signal's wish is agreed alike

        tr = data_parallel_trainer(comm, model, lm_loss, _optimizer("sgd", model), global_batches(4),
                                   steps=steps, progress=False, on_step=signal_rank_1, eval_every=2,
                                   eval_batches=[global_batches(2)(np.random.default_rng(9))],
                                   **({} if vote else {"reduce_stop": None}), **options)
        result = tr.fit()
        return result.step, result.interrupted, tr.history["val_step"]
    return SimComm(2).run(worker)


def test_a_stop_asked_on_one_rank_stops_every_rank_before_the_same_step():
    assert _stop_on_one_rank() == [(2, True, [0, 2])] * 2
    # without the vote, rank 1 leaves and rank 0 waits for it in step 3's all-reduce
    with pytest.raises(DeadlockError, match="no rank can go on.*rank 0 waits in allreduce"):
        _stop_on_one_rank(vote=False)


def test_a_stop_asked_in_the_last_step_is_agreed_before_the_final_evaluation():
    # without the vote after the loop, rank 0 would evaluate at step 6 and rank 1 would not
    assert _stop_on_one_rank(at=6) == [(6, True, [0, 2, 4])] * 2


def test_a_vote_every_h_steps_defers_the_stop_to_the_next_vote():
    from models.training.distributed import any_rank

    def every_3(comm):
        return any_rank(comm, every=3)
    # asked after step 1; the votes come before steps 0, 3, 6: both ranks stop at 3
    out = SimComm(2).run(lambda comm: _vote_every(comm, every_3(comm)))
    assert out == [(3, True)] * 2
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        any_rank(None, every=0)


def _vote_every(comm, reduce_stop):
    model = GPT(GPTConfig(**CFG), dtype=np.float64)
    tr = data_parallel_trainer(comm, model, lm_loss, _optimizer("sgd", model), global_batches(4), steps=6,
                               progress=False, reduce_stop=reduce_stop,
                               on_step=lambda t: setattr(t, "interrupted", t.interrupted or (comm.rank == 1 and t.step == 1)))
    result = tr.fit()
    return result.step, result.interrupted


def test_reduce_stop_must_be_callable():
    model = GPT(GPTConfig(**CFG))
    with pytest.raises(TypeError, match="reduce_stop must be a callable"):
        Trainer(model, lm_loss, _optimizer("sgd", model), global_batches(2), steps=1, reduce_stop=True)


def test_a_time_budget_is_refused():
    model = GPT(GPTConfig(**CFG))
    with pytest.raises(WorkerError, match="ValueError.*time_budget.*disagree"):
        SimComm(1).run(lambda comm: data_parallel_trainer(comm, model, lm_loss, _optimizer("sgd", model),
                                                         global_batches(2), steps=3, time_budget=60))


# ------------------------------------------------------------------ checkpoints per rank
class Cursor:
    """A stateful global batch source (torchdata's state_dict protocol): each batch depends on the
    Trainer's generator and on how many batches the source drew before."""

    def __init__(self):
        self.drawn = 0

    def __call__(self, rng):
        self.drawn += 1
        x, y = global_batches(4)(rng)
        return (x + self.drawn) % CFG["vocab_size"], (y + self.drawn) % CFG["vocab_size"]

    def state_dict(self):
        return {"drawn": self.drawn}

    def load_state_dict(self, state):
        self.drawn = int(state["drawn"])


def _dp_worker(comm, out, steps, resume_from=None, save_every=None, source=lambda: global_batches(4)):
    model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=comm.rank + 10 * (resume_from is not None))
    tr = data_parallel_trainer(comm, model, lm_loss, _optimizer("adamw", model), source(),
                               steps=steps, seed=2, schedule="cosine", progress=False,
                               save_dir=out, save_every=save_every)
    if resume_from is not None:
        assert restore_ranks(tr, comm, resume_from) == 3
    tr.fit()
    return tr.history["train_loss"], {n: p.data.copy() for n, p in model.named_parameters()}


def test_per_rank_checkpoints_resume_to_the_uninterrupted_run(tmp_path):
    whole = SimComm(2).run(_dp_worker, None, 6)
    SimComm(2).run(_dp_worker, tmp_path, 6, save_every=3)        # the checkpoint of step 3 is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
    assert [load_checkpoint(rank_dir(tmp_path, r)).meta["world_size"] for r in (0, 1)] == [2, 2]
    resumed = SimComm(2).run(_dp_worker, None, 6, resume_from=tmp_path)
    for (loss, params), (loss_w, params_w) in zip(resumed, whole):
        assert loss == loss_w                                      # bit for bit, history included
        for name in params:
            np.testing.assert_array_equal(params[name], params_w[name])


def test_a_stateful_batch_source_keeps_its_state_through_the_shards_and_resumes(tmp_path):
    """Each rank's checkpoint holds its source's state, so a resumed run draws the batches of the
    uninterrupted one; a shard that hid the state restarted the source from its first batch."""
    whole = SimComm(2).run(_dp_worker, None, 6, source=Cursor)
    SimComm(2).run(_dp_worker, tmp_path, 6, save_every=3, source=Cursor)    # the checkpoint of step 3
    assert [int(load_checkpoint(rank_dir(tmp_path, r)).states["batches"]["drawn"]) for r in (0, 1)] == [3, 3]
    resumed = SimComm(2).run(_dp_worker, None, 6, resume_from=tmp_path, source=Cursor)
    for (loss, params), (loss_w, params_w) in zip(resumed, whole):
        assert loss == loss_w                                      # bit for bit, history included
        for name in params:
            np.testing.assert_array_equal(params[name], params_w[name])


def test_a_shard_has_a_state_only_when_its_source_has_one():
    """The Trainer saves a batch source's state when it has one: the shard of a plain function
    has none, the shard of a stateful source's bound method has its object's."""
    assert not hasattr(shard_batches(global_batches(4), 0, 2), "state_dict")
    cursor = Cursor()
    shard = shard_batches(cursor.__call__, 1, 2)
    shard(np.random.default_rng(0))
    assert shard.state_dict() == {"drawn": 1}
    shard.load_state_dict({"drawn": 5})
    assert cursor.drawn == 5


def _grid_worker(world, out, steps, resume=False):
    """Two data-parallel groups of two ranks (as tensor x data parallel makes them), one save_dir."""
    dp = world.split(world.rank % 2)
    model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=world.rank % 2 + 10 * resume)
    tr = data_parallel_trainer(dp, model, lm_loss, _optimizer("adamw", model), global_batches(4), world=world,
                               steps=steps, seed=2, progress=False, save_dir=out, save_every=3)
    if resume:
        assert restore_ranks(tr, world, out) == 3
    tr.fit()
    return tr.history["train_loss"], {n: p.data.copy() for n, p in model.named_parameters()}


def test_groups_of_a_larger_run_save_by_their_world_rank_and_resume(tmp_path):
    """The ranks of two data-parallel groups share their group rank: both groups' rank 0 wrote
    save_dir/rank0, the last writer won. With world= each rank writes save_dir/rank{world rank}."""
    whole = SimComm(4).run(_grid_worker, str(tmp_path / "whole"), 6)
    SimComm(4).run(_grid_worker, str(tmp_path), 6)                 # the checkpoint of step 3 is kept
    metas = [load_checkpoint(rank_dir(tmp_path, r)).meta for r in range(4)]
    assert [(m["rank"], m["world_size"]) for m in metas] == [(r, 4) for r in range(4)]
    resumed = SimComm(4).run(_grid_worker, str(tmp_path), 6, resume=True)
    for (loss, params), (loss_w, params_w) in zip(resumed, whole):
        assert loss == loss_w
        for name in params:
            np.testing.assert_array_equal(params[name], params_w[name])


def test_a_stop_on_one_rank_of_the_world_stops_every_group_and_only_world_rank_0_reports(capsys):
    """With world=, the stop vote and the progress lines are the world's: a Ctrl-C seen by world
    rank 0 alone stops both data-parallel groups at the same step (with tensor parallel across
    the groups, a group that ran on would wait forever); each group's rank 0 printed before."""
    def worker(world):
        dp = world.split(world.rank % 2)
        model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=0)
        stop = lambda t: setattr(t, "interrupted", t.interrupted or (world.rank == 0 and t.step == 1))  # noqa: E731
        tr = data_parallel_trainer(dp, model, lm_loss, _optimizer("adamw", model), global_batches(4), world=world,
                                   steps=4, seed=2, progress=False, log_every=1, on_step=stop)
        tr.fit()
        return tr.step, tr.interrupted
    assert SimComm(4).run(worker) == [(1, True)] * 4
    assert capsys.readouterr().out.count("step 1: shard loss") == 1


def test_resume_refuses_ranks_at_different_steps_or_another_world_size(tmp_path):
    SimComm(2).run(_dp_worker, tmp_path, 6, save_every=3)
    SimComm(2).run(_dp_worker, tmp_path / "later", 6, save_every=4)
    (tmp_path / "rank1").rename(tmp_path / "rank1.old")
    (tmp_path / "later" / "rank1").rename(tmp_path / "rank1")        # rank 1 at step 4, rank 0 at 3
    with pytest.raises(WorkerError, match=r"different steps \(rank 0: 3, rank 1: 4\)"):
        SimComm(2).run(_dp_worker, None, 6, resume_from=tmp_path)
    with pytest.raises(WorkerError, match="run on 2 ranks, this one has 1"):
        SimComm(1).run(_dp_worker, None, 6, resume_from=tmp_path)
    with pytest.raises(WorkerError, match="this one has 3") as e:
        SimComm(3).run(_dp_worker, None, 6, resume_from=tmp_path)    # and rank2/ does not exist
    assert isinstance(e.value.error, CheckpointError)


# ------------------------------------------------------------------ the demo's function
def test_train_gpt_data_parallel_sends_one_parameter_allreduce_and_one_stop_vote_per_step():
    text = "".join(chr(97 + (i * 7) % 13) for i in range(6000))
    data = TextData(text, block_size=64)
    out = SimComm(2).run(train_gpt_data_parallel, data, steps=3, batch_size=4, eval_every=2,
                         eval_batches=1, warmup=1)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=data.vocab_size))
    numel = sum(p.data.size for p in model.parameters())
    for r, rec in enumerate(out):
        assert rec["workers"] == 2 and len(rec["train_loss"]) == 3 and rec["val_step"] == [0, 2, 3]
        assert rec["train_loss"] == out[0]["train_loss"] and rec["val_loss"] == out[0]["val_loss"]
        per_step = ring_traffic(numel, 2, r)[0] * 4 + ring_traffic(1, 2, r)[0] * 8   # float32 gradients, int64 vote
        start = numel * 4 if r == 0 else 0                           # rank 0 broadcast its weights
        assert np.diff([start, *rec["bytes_sent"]]).tolist() == [per_step] * 3
    with pytest.raises(WorkerError, match="global batch 6 does not split into 4"):
        SimComm(4).run(train_gpt_data_parallel, data, steps=1, batch_size=6)
