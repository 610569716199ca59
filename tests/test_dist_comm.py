"""SimComm: each collective against its NumPy definition, the ring order and byte model, splits,
point to point, determinism, and the faults (a raising rank, a deadlock, mismatched arrays)."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minigrad as mg
from optim.dist.comm import (CommError, DeadlockError, SimComm, WorkerError, ring_bounds, ring_sum,
                             ring_traffic)
from optim.dist.launcher import launch


def _inputs(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(n)]


def _ring_reference(xs):
    """The documented order, written out independently: chunk c adds ranks c, c+1, ... mod n."""
    n = len(xs)
    flat = [x.reshape(-1) for x in xs]
    parts = np.array_split(np.arange(flat[0].size), n)
    out = np.empty_like(flat[0])
    for c, idx in enumerate(parts):
        acc = flat[c][idx]
        for j in range(1, n):
            acc = acc + flat[(c + j) % n][idx]
        out[idx] = acc
    return out.reshape(xs[0].shape)


@given(n=st.integers(1, 5), numel=st.integers(0, 23))
def test_ring_bounds_match_array_split(n, numel):
    expected = [(int(p[0]), int(p[-1]) + 1) if p.size else None for p in np.array_split(np.arange(numel), n)]
    got = ring_bounds(numel, n)
    assert [b if b[1] > b[0] else None for b in got] == expected
    assert got[-1][1] == numel


@given(n=st.integers(1, 5), shape=st.sampled_from([(), (1,), (7,), (3, 4), (2, 3, 5)]))
def test_allreduce_sum_and_mean_follow_the_ring_order_on_every_rank(n, shape):
    xs = _inputs(n, shape, seed=n)
    out = SimComm(n).run(lambda c: (c.allreduce(xs[c.rank]), c.allreduce(xs[c.rank], op="mean")))
    expected = _ring_reference(xs)
    for total, mean in out:
        assert total.shape == np.shape(xs[0])
        np.testing.assert_array_equal(total, expected)       # bit for bit, not approximately
        np.testing.assert_array_equal(mean, expected / n)
    np.testing.assert_allclose(out[0][0], np.sum(xs, axis=0), rtol=1e-12, atol=1e-12)


def test_ring_order_is_observable_and_not_a_left_to_right_sum():
    """Float addition is not associative, so the order is part of the contract. Chunk 1 starts
    at rank 1: (x1 + x2) + x0 = (-1e16 + 1) + 1e16 = 0, where a left-to-right sum gives 1."""
    xs = [np.array([0.0, 1e16]), np.array([0.0, -1e16]), np.array([0.0, 1.0])]
    assert (xs[0][1] + xs[1][1]) + xs[2][1] == 1.0
    got = SimComm(3).run(lambda c: c.allreduce(xs[c.rank]))
    assert all(g[1] == 0.0 for g in got)
    assert ring_sum([x.copy() for x in xs])[1] == 0.0


@given(n=st.integers(1, 6), numel=st.integers(0, 40))
def test_ring_traffic_is_two_n_minus_one_over_n(n, numel):
    per_rank = [ring_traffic(numel, n, r) for r in range(n)]
    assert sum(s for s, _ in per_rank) == sum(r for _, r in per_rank)   # every send is received
    for sent, received in per_rank:
        assert sent <= 2 * (n - 1) * -(-numel // n)
    if numel % n == 0:
        assert all(s == r == 2 * (n - 1) * numel // n for s, r in per_rank)


def test_byte_counters_follow_the_wire_model():
    n, x = 4, np.zeros(8)                      # 64 bytes, 4 | 8

    def worker(c):
        counts = []
        for call in (lambda: c.allreduce(x), lambda: c.broadcast(x, root=2), lambda: c.allgather(x),
                     lambda: c.neighbor_exchange(x, [(c.rank - 1) % n], [(c.rank + 1) % n]),
                     lambda: c.barrier()):
            c.reset_counters()
            call()
            counts.append((c.bytes_sent, c.bytes_received))
        return counts

    for rank, counts in enumerate(SimComm(n).run(worker)):
        assert counts[0] == (2 * 3 * 64 // 4, 2 * 3 * 64 // 4)
        assert counts[1] == ((3 * 64, 0) if rank == 2 else (0, 64))
        assert counts[2] == (3 * 64, 3 * 64)
        assert counts[3] == (64, 64)
        assert counts[4] == (0, 0)


def test_broadcast_allgather_and_results_are_private_copies():
    xs = _inputs(3, (2, 2))

    def worker(c):
        b = c.broadcast(xs[c.rank], root=1)
        g = c.allgather(xs[c.rank])
        b += 1.0                                # a rank writing its result must not touch others'
        return b, g

    out = SimComm(3).run(worker)
    for b, g in out:
        np.testing.assert_array_equal(b, xs[1] + 1.0)
        np.testing.assert_array_equal(g, np.stack(xs))
    np.testing.assert_array_equal(xs[1], _inputs(3, (2, 2))[1])


def test_neighbor_exchange_on_a_directed_graph_and_an_inconsistent_one():
    n = 4
    dests = {r: [(r + 1) % n, (r + 2) % n] for r in range(n)}
    sources = {r: [q for q in range(n) if r in dests[q]] for r in range(n)}
    got = SimComm(n).run(lambda c: c.neighbor_exchange(np.full(3, float(c.rank)), sources[c.rank], dests[c.rank]))
    for r in range(n):
        assert [float(a[0]) for a in got[r]] == [float(s) for s in sources[r]]

    def broken(c):    # rank 0 sends to 1, but rank 1 expects nobody
        return c.neighbor_exchange(np.ones(2), [], [1] if c.rank == 0 else [])

    with pytest.raises(WorkerError, match="rank 0 sends to rank 1, but rank 1 does not list 0"):
        SimComm(2).run(broken)


def test_split_makes_independent_groups_ordered_by_parent_rank():
    def worker(c):
        row = c.split(c.rank // 2)             # {0,1} and {2,3}
        col = c.split(c.rank % 2)              # {0,2} and {1,3}
        return (row.rank, row.size, float(row.allreduce(np.array([c.rank]))[0]),
                col.rank, float(col.allreduce(np.array([10.0 * c.rank]))[0]))

    out = SimComm(4).run(worker)
    assert out == [(0, 2, 1.0, 0, 20.0), (1, 2, 1.0, 0, 40.0), (0, 2, 5.0, 1, 20.0), (1, 2, 5.0, 1, 40.0)]


def test_a_split_is_freed_by_free_or_a_with_block_and_then_refuses_calls():
    from optim.dist.comm import CommError

    def worker(c):
        with c.split(c.rank % 2) as group:
            total = float(group.allreduce(np.array([c.rank]))[0])
        refused = []
        for call in (lambda: group.allreduce(np.zeros(1)), lambda: group.send(np.zeros(1), 0),
                     lambda: group.recv(0), group.free, c.free):
            try:
                call()
            except CommError as error:
                refused.append(str(error).split(":")[0])
        return total, refused

    assert SimComm(4).run(worker) == [(2.0, ["allreduce(sum)", "send", "recv", "free", "free"]),
                                      (4.0, ["allreduce(sum)", "send", "recv", "free", "free"])] * 2


def test_send_is_buffered_and_messages_arrive_in_order_per_tag():
    def worker(c):
        if c.rank == 0:
            x = np.arange(3.0)
            c.send(x, 1)
            x[:] = -1                          # buffered: the message keeps the value at send time
            c.send(np.array([7.0]), 1, tag=5)
            c.send(np.array([8.0]), 1)
            return None
        tagged = c.recv(0, tag=5)
        first, second = c.recv(0), c.recv(0)
        return first.tolist(), second.tolist(), tagged.tolist(), c.bytes_received

    assert SimComm(2).run(worker)[1] == ([0.0, 1.0, 2.0], [8.0], [7.0], 24 + 8 + 8)


def test_runs_are_deterministic_even_with_a_shared_generator():
    shared = np.random.default_rng(0)

    def worker(c):
        draws = []
        for _ in range(3):
            draws.append(shared.standard_normal())     # shared state, consumed in a fixed order
            c.barrier()
        return draws

    first = SimComm(3).run(worker)
    shared = np.random.default_rng(0)
    assert SimComm(3).run(worker) == first


def test_grad_mode_is_per_rank():
    def worker(c):
        if c.rank == 0:
            with mg.no_grad():
                c.barrier()                    # rank 1 runs while rank 0 is inside no_grad
                return mg.is_grad_enabled()
        c.barrier()
        return mg.is_grad_enabled()

    assert SimComm(2).run(worker) == [False, True]


def test_a_raising_rank_stops_the_others_and_names_itself():
    reached = []

    def worker(c):
        if c.rank == 2:
            raise ValueError("bad shard")
        c.barrier()
        reached.append(c.rank)                 # never: rank 2 never joins the barrier

    with pytest.raises(WorkerError, match="rank 2 raised ValueError: bad shard") as info:
        SimComm(3).run(worker)
    assert isinstance(info.value.__cause__, ValueError) and info.value.rank == 2
    assert reached == []
    assert threading.active_count() < 10      # the worker threads ended


def test_deadlock_is_detected_and_described():
    def worker(c):
        if c.rank == 1:
            return c.recv(0)                   # rank 0 never sends
        c.barrier()

    with pytest.raises(DeadlockError, match=r"rank 0 waits in barrier.*rank 1 waits in recv\(source=0"):
        SimComm(2).run(worker)


def test_mismatched_arrays_and_calls_are_named():
    with pytest.raises(WorkerError, match=r"allreduce: the ranks passed different arrays \(rank 0 \(2,\) float64, rank 1 \(2,\) float32\)"):
        SimComm(2).run(lambda c: c.allreduce(np.ones(2, dtype=np.float64 if c.rank == 0 else np.float32)))
    with pytest.raises(WorkerError, match="rank 0 barrier, rank 1 allgather"):
        SimComm(2).run(lambda c: c.barrier() if c.rank == 0 else c.allgather(np.ones(1)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="integer >= 1"):
        SimComm(0)
    with pytest.raises(WorkerError, match="op must be 'sum' or 'mean'"):
        SimComm(2).run(lambda c: c.allreduce(np.ones(1), op="max"))
    with pytest.raises(WorkerError, match="root 5 is not a rank"):
        SimComm(2).run(lambda c: c.broadcast(np.ones(1), root=5))
    with pytest.raises(WorkerError, match="cannot exchange with rank 0"):
        SimComm(2).run(lambda c: c.send(np.ones(1), 0) if c.rank == 0 else None)


def test_launch_without_mpiexec_simulates(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert launch(lambda c, k: (c.rank, c.size, k), 3, workers=2) == [(0, 2, 3), (1, 2, 3)]
    assert launch(lambda c: c.size) == [1]


def _wait_for(condition, seconds=10.0):
    """Spin until ``condition()`` (a signal's Python handler runs in the main thread, a moment
    after the signal)."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "the main thread never ran the signal handler"
        time.sleep(0.001)


def test_a_signal_during_a_simcomm_run_asks_every_rank_to_stop_and_the_stop_vote_hears_it():
    """Simulated ranks are threads, which no signal reaches: SimComm.run's handler in the main
    thread sets stop_requested on every rank's communicator (split ones too), any_rank counts it
    as a wish to stop, and the handlers are put back when the run ends."""
    from models.training.distributed import any_rank

    before = signal.getsignal(signal.SIGINT)

    def worker(comm):
        vote = any_rank(comm)
        first = vote(False)
        if comm.rank == 1:
            signal.raise_signal(signal.SIGINT)                   # what Ctrl-C does
            _wait_for(lambda: comm.stop_requested)
        return first, vote(False), comm.split(0).stop_requested

    assert SimComm(2).run(worker) == [(False, True, True)] * 2
    assert signal.getsignal(signal.SIGINT) is before
    assert SimComm(2).run(lambda comm: comm.stop_requested) == [False, False]      # a new run starts afresh


def test_a_second_ctrl_c_aborts_a_simcomm_run():
    """The first press asks the listening ranks to stop (the test above: run() returns); the
    second raises KeyboardInterrupt, as a Trainer's second Ctrl-C does."""
    def worker(comm):
        comm.listen_for_stop()
        if comm.rank == 0:
            signal.raise_signal(signal.SIGINT)
            _wait_for(lambda: comm.stop_requested)
            signal.raise_signal(signal.SIGINT)                   # the impatient second press
        time.sleep(0.5)                                          # the main thread aborts meanwhile

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        SimComm(2).run(worker)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_that_no_rank_listens_for_interrupts_at_once():
    """Ranks that never vote (a plain loop) cannot stop when asked: the signal does what it does
    without SimComm, so Ctrl-C is not swallowed."""
    def worker(comm):
        if comm.rank == 1:
            signal.raise_signal(signal.SIGINT)
        time.sleep(0.5)
        return comm.stop_requested

    with pytest.raises(KeyboardInterrupt):
        SimComm(2).run(worker)


@pytest.mark.parametrize("listen", [False, True])
def test_sigterm_to_a_simcomm_run_ends_the_process_unless_its_ranks_stop_when_asked(listen):
    """In a process of its own: SIGTERM that no rank listens for ends the process as it would
    without SimComm (exit by the signal); with listening ranks the first one stops them."""
    code = ("import signal, time\n"
            "from optim.dist.comm import SimComm\n"
            "def worker(comm):\n"
            f"    if {listen}: comm.listen_for_stop()\n"
            "    if comm.rank == 0: signal.raise_signal(signal.SIGTERM)\n"
            "    end = time.monotonic() + 5\n"
            "    while not comm.stop_requested and time.monotonic() < end: time.sleep(0.01)\n"
            "    return comm.stop_requested\n"
            "print(SimComm(2).run(worker))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    if listen:
        assert (out.returncode, out.stdout) == (0, "[True, True]\n"), out.stderr
    else:
        assert out.returncode == -signal.SIGTERM and out.stdout == "", (out.returncode, out.stdout, out.stderr)


def test_a_nested_simcomm_run_hears_the_stop_of_the_run_that_started_it():
    """A run started by a rank (no handlers of its own: off the main thread) sees the outer
    run's stop, and its listening ranks make the outer run pass the signal on."""
    from models.training.distributed import any_rank

    def inner(comm):
        vote = any_rank(comm)
        if comm.rank == 0:
            signal.raise_signal(signal.SIGINT)
            _wait_for(lambda: comm.stop_requested)
        return vote(False)

    assert SimComm(1).run(lambda comm: SimComm(2).run(inner)) == [[True, True]]


def test_simcomm_puts_the_signal_handlers_back_when_a_rank_cannot_start(monkeypatch):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    started = []
    real_start = threading.Thread.start

    def start(self):
        if started:
            raise RuntimeError("can't start new thread")
        started.append(self)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        SimComm(2).run(lambda comm: None)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_any_rank_takes_a_communicator_without_the_stop_attributes():
    """Any object with allreduce votes (the stop signal is SimComm's extra)."""
    from models.training.distributed import any_rank

    class OneRank:
        rank, size = 0, 1

        def allreduce(self, x, op="sum"):
            return x

    assert any_rank(OneRank())(True) and not any_rank(OneRank())(False)
