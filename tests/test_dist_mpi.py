"""MPIComm under real `mpiexec` processes against SimComm: every call bit for bit with the same
inputs (results, byte counters, error messages), MPI's native all-reduce to rounding, and a raising
rank stopping the whole job with its rank on stderr. Each test launches small programs from
tests/mpi_programs/ with the mpiexec beside the interpreter (the `dist` extra installs both)."""
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from optim.dist.comm import SimComm
from strategies import mpiexec

PROGRAMS = os.path.join(os.path.dirname(__file__), "mpi_programs")


def _program(name: str):
    spec = importlib.util.spec_from_file_location(f"mpi_programs_{name}", os.path.join(PROGRAMS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(n: int, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, os.path.join(PROGRAMS, f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", params=[2, 4], ids=["mpiexec -n 2", "mpiexec -n 4"])
def collectives(request, tmp_path_factory):
    """(n, the program, each rank's arrays from mpiexec, each rank's arrays from SimComm(n))."""
    n = request.param
    program = _program("collectives")
    out = str(tmp_path_factory.mktemp(f"mpi{n}") / "collectives.npz")
    run = _run(n, "collectives", out)
    assert run.returncode == 0, run.stderr
    mpi = [dict(np.load(program.rank_path(out, r))) for r in range(n)]
    return n, program, mpi, SimComm(n).run(program.exercise)


def test_every_call_matches_simcomm_bit_for_bit(collectives):
    n, _, mpi, sim = collectives
    for rank in range(n):
        got = {k: v for k, v in mpi[rank].items() if not k.startswith("mpi:")}
        assert sorted(got) == sorted(sim[rank])
        for key, want in sim[rank].items():
            assert got[key].dtype == want.dtype, f"rank {rank} {key}"
            np.testing.assert_array_equal(got[key], want, err_msg=f"rank {rank} {key}")


def test_the_order_is_what_makes_the_sums_equal(collectives):
    """From 3 ranks on, summing the same inputs rank 0 first gives other bits, so the equality
    above is not luck; with 2 ranks every order is x0 + x1 and rounds the same."""
    n, program, mpi, _ = collectives
    differ = 0
    for dtype in ("float64", "float32"):
        for shape in program.SHAPES:
            xs = [program.inputs(r, shape, dtype) for r in range(n)]
            in_rank_order = xs[0].copy()
            for x in xs[1:]:
                in_rank_order += x
            differ += not np.array_equal(mpi[0][f"allreduce sum {dtype}{list(shape)}"], in_rank_order)
    assert differ > 0 if n > 2 else differ == 0


def test_errors_name_the_op_and_every_rank(collectives):
    n, _, mpi, _ = collectives
    messages = {k[len("error "):]: str(v) for k, v in mpi[n - 1].items() if k.startswith("error ") and
                not k.endswith(":bytes")}
    shapes = ", ".join(f"rank {r} ({r + 1},) float64" for r in range(n))
    assert messages["shape"].startswith(f"allreduce: the ranks passed different arrays ({shapes})")
    assert messages["dtype"].startswith("allgather: the ranks passed different arrays (rank 0 (2,) float32, "
                                        "rank 1 (2,) float64")
    assert "differs across ranks: rank 0 barrier, rank 1 broadcast(root=0)" in messages["call"]
    assert messages["graph"] == ("neighbor_exchange: rank 1 expects rank 0, but rank 0 does not list 1 "
                                 "among its dests []")


def test_native_allreduce_agrees_to_rounding_and_counts_the_ring_bytes(collectives):
    n, _, mpi, _ = collectives
    for rank in range(n):
        for key in [k for k in mpi[rank] if k.startswith("mpi:native ") and not k.endswith(":bytes")]:
            ring_key = "allreduce sum " + key[len("mpi:native "):]
            native, ring = mpi[rank][key], mpi[rank][ring_key]
            assert native.dtype == ring.dtype and native.shape == ring.shape
            if native.dtype.kind == "i":
                np.testing.assert_array_equal(native, ring)
            else:
                scale = sum(np.abs(mpi[rank][f"allgather {ring_key[len('allreduce sum '):]}"]))
                np.testing.assert_array_less(np.abs(native - ring), 4 * n * np.finfo(native.dtype).eps * scale + 1e-300)
            np.testing.assert_array_equal(mpi[rank][key + ":bytes"], mpi[rank][ring_key + ":bytes"])


def test_split_groups_ranks_by_color_in_parent_order(collectives):
    n, _, mpi, _ = collectives
    for rank in range(n):
        assert list(mpi[rank]["split rank, size"]) == [rank // 2, (n - rank % 2 + 1) // 2]
        group = [r for r in range(n) if (r < 2) == (rank < 2)]
        assert list(mpi[rank]["split negative color"]) == [group.index(rank), len(group), sum(group)]


def test_a_freed_split_refuses_calls_and_the_world_is_not_freed(collectives):
    n, _, mpi, _ = collectives
    for rank in range(n):                      # the same messages under SimComm (the test above)
        assert str(mpi[rank]["error freed"]) == ("allreduce(sum): this communicator was freed; split the "
                                                 "parent again for a new one")
        assert str(mpi[rank]["error freed twice"]).startswith("free: this communicator was freed")
        assert str(mpi[rank]["error free the world"]).startswith("free: the world communicator is not ours")
        assert int(mpi[rank]["split in a with block"]) == sum(r for r in range(n) if r % 2 == rank % 2)


def test_a_tag_mpi_cannot_carry_is_refused_with_the_bound(collectives):
    _, _, mpi, _ = collectives
    assert str(mpi[0]["mpi:bad tag"]).startswith("send: tag must be an integer in 0..")


@pytest.mark.parametrize("how", ["launch", "uncaught"])
def test_a_raising_rank_aborts_the_job_at_once_naming_its_rank(how):
    start = time.monotonic()
    run = _run(4, "fault", how, timeout=60)
    assert run.returncode != 0
    assert "rank 1: ValueError: rank one fails on purpose" in run.stderr
    assert time.monotonic() - start < 30        # the other ranks did not wait for rank 1


def test_without_mpi4py_the_error_says_how_to_install_it(monkeypatch):
    from optim.dist.mpi import MPIComm
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[dist\]'"):
        MPIComm()
