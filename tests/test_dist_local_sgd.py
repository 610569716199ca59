"""Local SGD and post-local SGD on SimComm: H = 1 is data-parallel SGD, T steps cost T/H rounds,
the optimizer state stays local, the run resumes per rank, and the heterogeneity floor grows with H."""
import numpy as np
import pytest

import optim
from models.gpt import GPT, GPTConfig
from models.training import lm_loss
from models.training.distributed import data_parallel_trainer, restore_ranks
from optim.dist.comm import SimComm, WorkerError, ring_traffic
from optim.dist.local_sgd import LocalSGD, compare_local_steps

CFG = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11)
IDS = np.cumsum(np.random.default_rng(0).choice([1, 1, 1, 2], size=3000)) % CFG["vocab_size"]


def global_batches(rng, rows=8, T=CFG["block_size"]):
    starts = rng.integers(0, len(IDS) - T - 1, size=rows)
    return np.stack([IDS[s:s + T] for s in starts]), np.stack([IDS[s + 1:s + T + 1] for s in starts])


def _params(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


def gpt_worker(comm, steps, *, local_steps=None, switch_step=0, kind="sgd", save_dir=None, save_every=None,
               resume_from=None, final_average=False):
    """Train the small GPT in float64 on this rank; returns the parameters after every step, the
    losses and the wrapper (None for plain data parallel)."""
    model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=comm.rank)
    params = {n: p.data for n, p in model.named_parameters()}
    opt = (optim.create("sgd", params, lr=0.3) if kind == "sgd"
           else optim.create("adamw", params, lr=3e-3, weight_decay=0.1))
    if local_steps is not None:
        opt = LocalSGD(opt, comm, local_steps, switch_step)
    seen = []
    tr = data_parallel_trainer(comm, model, lm_loss, opt, global_batches, steps=steps, seed=4,
                               schedule="cosine", progress=False, save_dir=save_dir, save_every=save_every,
                               on_step=lambda t: seen.append(_params(t.model)))
    if resume_from is not None:
        restore_ranks(tr, comm, resume_from)
    tr.fit()
    if final_average:
        opt.average_parameters()
    return seen, tr.history["train_loss"], opt if local_steps is not None else None


def _assert_equal_on_all_ranks(ranks, step):
    for seen, _, _ in ranks[1:]:
        for name, p in seen[step].items():
            np.testing.assert_array_equal(p, ranks[0][0][step][name])


@pytest.mark.parametrize("n", [2, 4])
def test_local_sgd_with_h_1_is_data_parallel_sgd(n):
    steps = 5
    local = SimComm(n).run(gpt_worker, steps, local_steps=1)
    dp = SimComm(n).run(gpt_worker, steps)
    for step in range(steps):
        _assert_equal_on_all_ranks(local, step)
        for name, p in local[0][0][step].items():
            want = dp[0][0][step][name]
            # mean_j (x - lr g_j) against x - lr mean_j g_j: the same up to rounding
            assert np.abs(p - want).max() <= 1e-13 * (np.abs(want).max() or 1.0), (step, name)
    assert [wrapper.averaging_rounds for _, _, wrapper in local] == [steps] * n


@pytest.mark.parametrize("H", [1, 3, 4, 7])
def test_t_steps_cost_t_over_h_rounds_and_the_ranks_agree_right_after_each(H):
    steps = 12

    def worker(comm):
        x = np.zeros(6)
        opt = LocalSGD(optim.create("sgd", {"x": x}, lr=0.1, momentum=0.5), comm, local_steps=H)
        rng = np.random.default_rng(comm.rank)
        apart = []
        for _ in range(steps):
            opt.step({"x": x - rng.standard_normal(6)})
            apart.append(np.ptp(comm.allgather(x), axis=0).max() > 0)   # (a check, not a round)
        return opt, apart, comm.bytes_sent - steps * (comm.size - 1) * x.nbytes   # less the allgathers

    for r, (opt, apart, sent) in enumerate(SimComm(3).run(worker)):
        assert opt.averaging_rounds == opt.comm_rounds == steps // H and opt.gradient_rounds == 0
        assert sent == steps // H * ring_traffic(6, 3, r)[0] * 8
        assert apart == [(t + 1) % H != 0 for t in range(steps)]        # equal exactly after an average


def test_post_local_sgd_is_data_parallel_until_the_switch_then_local():
    steps, switch, H = 9, 4, 2
    post = SimComm(2).run(gpt_worker, steps, local_steps=H, switch_step=switch, kind="adamw")
    dp = SimComm(2).run(gpt_worker, steps, kind="adamw")
    for step in range(switch):                   # the same arithmetic as data parallel: bit for bit
        for r in range(2):
            for name, p in post[r][0][step].items():
                np.testing.assert_array_equal(p, dp[r][0][step][name])
    name = "h.0.mlp.c_fc.weight"
    same = [np.array_equal(post[0][0][s][name], post[1][0][s][name]) for s in range(steps)]
    assert same == [True] * switch + [False, True, False, True, False]  # averaged after every 2nd step
    wrapper = post[0][2]
    assert (wrapper.gradient_rounds, wrapper.averaging_rounds, wrapper.comm_rounds) == (4, 2, 6)


@pytest.mark.parametrize("master_weights", [True, False])
def test_the_average_reaches_the_model_through_a_mixed_precision_optimizer(master_weights):
    """LocalSGD around amp.MixedPrecisionOptimizer averages the arrays the optimizer moves (its FP32
    masters); the model's low-precision arrays must hold the rounded average right after, on every
    rank, not each rank's own weights (with masters) or the unrounded average (without)."""
    from minigrad import amp
    from minigrad import precision

    def worker(comm):
        x = np.zeros(4, np.float32)
        mp = amp.MixedPrecisionOptimizer(optim.create("sgd", {"x": x}, lr=0.1), "fp16",
                                         master_weights=master_weights)
        opt = LocalSGD(mp, comm, local_steps=1)
        opt.step({"x": np.full(4, 1.0 + comm.rank, np.float32)})
        return x.copy()

    models = SimComm(2).run(worker)
    steps = [np.full(4, -0.1 * (1 + r), np.float32) for r in range(2)]   # x - lr * g on each rank
    if not master_weights:                   # the optimizer moved the rounded model arrays
        steps = [precision.quantize(s, "fp16") for s in steps]
    rounded = precision.quantize((steps[0] + steps[1]) / 2, "fp16")
    for x in models:
        np.testing.assert_array_equal(x, rounded)


@pytest.mark.parametrize("H", [1, 2, 4])
def test_a_stop_asked_during_the_final_evaluation_reaches_every_rank_whatever_h(H):
    """any_rank(every=H) votes every H-th call; after the final evaluation no later vote comes, so
    the Trainer votes through its `final` (the stop was lost for H > 1)."""
    def worker(comm):
        model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=0)
        opt = LocalSGD(optim.create("sgd", {n: p.data for n, p in model.named_parameters()}, lr=0.1),
                       comm, local_steps=H)
        box = {}

        def loss_fn(m, batch):
            if not m.training and box["tr"].step == 4 and comm.rank == 1:    # the final evaluation
                box["tr"]._stop_requested = True         # what a SIGTERM's handler sets
            return lm_loss(m, batch)

        box["tr"] = data_parallel_trainer(comm, model, loss_fn, opt, global_batches, steps=4,
                                          eval_batches=[global_batches(np.random.default_rng(9))],
                                          eval_every=100, seed=0, progress=False)
        return box["tr"].fit().interrupted

    assert SimComm(2).run(worker) == [True, True]


def test_the_optimizer_state_stays_local():
    out = SimComm(2).run(gpt_worker, 4, local_steps=2, kind="adamw")
    (seen0, _, w0), (seen1, _, w1) = out
    name = "h.0.mlp.c_fc.weight"
    np.testing.assert_array_equal(seen0[-1][name], seen1[-1][name])     # parameters averaged
    assert not np.allclose(w0.state[name]["exp_avg"], w1.state[name]["exp_avg"])   # moments not
    assert w0.state_bytes() == w0.optimizer.state_bytes() == w0.expected_state_bytes()


def test_a_synchronous_step_without_the_gradient_hook_is_refused_before_any_change():
    def worker(comm):
        x = np.ones(3)
        opt = LocalSGD(optim.create("sgd", {"x": x}, lr=0.1), comm, local_steps=2, switch_step=1)
        try:
            opt.step({"x": np.ones(3)})
        finally:
            np.testing.assert_array_equal(x, 1.0)

    with pytest.raises(WorkerError, match="step 1 is in the synchronous phase.*grad_hook first"):
        SimComm(2).run(worker)


def test_bad_settings_are_refused():
    params = {"x": np.zeros(2)}
    with pytest.raises(ValueError, match="local_steps"):
        LocalSGD(optim.create("sgd", params, lr=0.1), None, local_steps=0)
    with pytest.raises(ValueError, match="switch_step"):
        LocalSGD(optim.create("sgd", params, lr=0.1), None, local_steps=2, switch_step=-1)
    with pytest.raises(ValueError, match="zeroth order"):
        LocalSGD(optim.create("mezo", params, lr=0.1, seed=0), None, local_steps=2, switch_step=3)


def test_a_zeroth_order_optimizer_runs_local_steps_too():
    def worker(comm):
        x = np.full(4, 2.0)
        target = np.arange(4.0) + comm.rank
        opt = LocalSGD(optim.create("zo-sgd", {"x": x}, lr=0.05, eps=1e-3, seed=comm.rank), comm, local_steps=3)
        for _ in range(30):
            opt.step(closure=lambda: float(np.sum((x - target) ** 2)))
        return x

    x0, x1 = SimComm(2).run(worker)
    np.testing.assert_array_equal(x0, x1)
    assert np.abs(x0 - (np.arange(4.0) + 0.5)).max() < np.abs(2.0 - (np.arange(4.0) + 0.5)).max()


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_per_rank_checkpoints_resume_local_sgd_mid_period(tmp_path, kind):
    """The ranks' parameters and states differ between averages: each rank resumes its own."""
    whole = SimComm(2).run(gpt_worker, 8, local_steps=3, kind=kind, final_average=True)
    SimComm(2).run(gpt_worker, 8, local_steps=3, kind=kind, save_dir=tmp_path, save_every=4)
    resumed = SimComm(2).run(gpt_worker, 8, local_steps=3, kind=kind, resume_from=tmp_path,
                             final_average=True)
    for (seen, loss, wrapper), (seen_w, loss_w, wrapper_w) in zip(resumed, whole):
        assert loss == loss_w                                            # step 4 is mid-period
        assert (wrapper.steps, wrapper.averaging_rounds) == (wrapper_w.steps, wrapper_w.averaging_rounds) == (8, 3)
        for name, p in seen[-1].items():
            np.testing.assert_array_equal(p, seen_w[-1][name])
        for name, p in wrapper.params.items():                         # after the final average
            np.testing.assert_array_equal(p, wrapper_w.params[name])


def test_loss_against_rounds_on_heterogeneous_least_squares():
    steps = 480
    full = SimComm(4).run(compare_local_steps, steps=steps, batch_size=None, lr=0.05)
    for r in range(1, 4):                                             # the same record on every rank
        for H in (1, 4, 16):
            np.testing.assert_array_equal(full[r][H]["loss"], full[0][H]["loss"])
    res = full[0]
    for H in (1, 4, 16):
        assert len(res[H]["rounds"]) == len(res[H]["loss"]) == steps // H + 1
        assert res[H]["bytes_sent"][-1] == steps // H * ring_traffic(20, 4, 0)[0] * 8
    floor = {H: res[H]["loss"][-1] for H in (1, 4, 16)}
    assert floor[1] < 1e-10 < floor[4] < floor[16] / 4                 # client drift grows with H
    stochastic = SimComm(4).run(compare_local_steps, steps=steps)[0]
    at = {H: stochastic[H]["loss"][6] for H in (1, 4, 16)}             # after 6 rounds each
    assert at[16] < at[4] < at[1]
