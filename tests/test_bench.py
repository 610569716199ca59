"""The benchmarks under bench/ compare like with like: PyTorch's GPT of bench.train is minigrad's GPT
(float64, same weights: logits, loss, gradients), the generation case runs as many forwards on
both sides, the minigrad-numpy column gets NumPy's BLAS at --threads, and the command lines refuse
counts that would measure something else. No timing is asserted; the benchmarks themselves are
not run (only their setup, with the timed parts replaced)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bench.distributed as bench_distributed
import bench.generation as bench_generation
import bench.kernels as bench_kernels
import bench.train as bench_train
from models.gpt import GPT, preset
from models.training import lm_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_REASON = "optional: pip install -e .[bench] (make test installs it)"

# the thread count of NumPy's bundled OpenBLAS, read without bench's helpers; "none" without it
READ_NUMPY_BLAS_THREADS = r"""
def numpy_blas_threads():
    from minigrad._blas import numpy_openblas
    lib = numpy_openblas()
    names = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads")
    get = None if lib is None else next((getattr(lib, n) for n in names if hasattr(lib, n)), None)
    return "none" if get is None else int(get())
"""


def run_python(code: str, *args: str) -> str:
    """stdout of `python -c code args` in a fresh process at the repository root, without the
    settings of minigrad's environment that would change what is tested."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MINIGRAD_BACKEND", "MINIGRAD_NUMPY_BLAS_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def need_two_cpus_and_openblas(result):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one logical CPU: OpenBLAS runs 1 thread whatever is asked")
    if result == "none":
        pytest.skip("NumPy is not on its bundled OpenBLAS: its thread count cannot be read")


# ----------------------------------------------------------------------------- NumPy's BLAS threads
WORKER = READ_NUMPY_BLAS_THREADS + r"""
import sys
from bench import kernels as bk
impl = sys.argv[1]
bk.setup_threads(2)
bk.configure_worker(impl, 2)
print(numpy_blas_threads())
"""


def test_numpy_worker_runs_numpy_blas_on_its_threads():
    """A minigrad-numpy worker (`configure_worker("numpy", n)`) leaves NumPy's BLAS at n threads:
    its GEMMs are NumPy's. The numba worker's is single-threaded, as configure_runtime intends
    there (the kernel pool runs its GEMMs)."""
    numpy_worker = run_python(WORKER, "numpy")
    need_two_cpus_and_openblas(numpy_worker)
    assert numpy_worker == "2"
    assert run_python(WORKER, "numba") == "1"


SAME_PROCESS = READ_NUMPY_BLAS_THREADS + r"""
import argparse, json
from bench import kernels as bk
bk.setup_threads(2)
import minigrad
seen = []
def median_time(fn, repeat, warmup=2):     # records instead of timing
    seen.append([minigrad.get_backend(), numpy_blas_threads()])
    return 1.0
bk.median_time = median_time
bk.same_process_rows(argparse.Namespace(threads=2, repeat=1, quick=True))
seen.append(["after", numpy_blas_threads()])
print(json.dumps(seen))
"""


def test_same_process_rows_time_the_numpy_backend_on_its_threads():
    """The minigrad-numpy column of bench.kernels' same-process rows runs NumPy's BLAS at
    --threads, as its worker would; the numba column (and the process afterwards) keeps
    configure_runtime's single thread."""
    seen = json.loads(run_python(SAME_PROCESS))
    need_two_cpus_and_openblas(seen[-1][1])
    numpy_calls = [threads for backend, threads in seen if backend == "numpy"]
    assert numpy_calls and set(numpy_calls) == {2}, seen
    assert {threads for backend, threads in seen if backend != "numpy"} == {1}, seen


# ----------------------------------------------------------------------------- bench.train's models
def copied_torch_gpt(model, cfg):
    """bench.train's PyTorch GPT in float64 with `model`'s weights; its parameter names mapped to
    minigrad's."""
    import torch

    names = {"c_attn": "attn.c_attn", "attn_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp_proj": "mlp.c_proj"}

    def ours(name):
        parts = name.split(".")
        return ".".join(names.get(p, p) if i == 2 else p for i, p in enumerate(parts))

    net = bench_train.torch_gpt(cfg).double()
    params = dict(model.named_parameters())
    mapping = {name: ours(name) for name, _ in net.named_parameters()}
    assert sorted(mapping.values()) == sorted(params)        # every weight once (the head is tied)
    with torch.no_grad():
        for name, p in net.named_parameters():
            src = params[mapping[name]].data
            assert tuple(p.shape) == src.shape, name
            p.copy_(torch.from_numpy(np.array(src)))
    return net, mapping


def test_torch_gpt_is_minigrads_gpt():
    """Same weights, float64: the logits, the loss and every gradient agree to rounding, so the
    training rows time the same computation on both sides; and the PyTorch model's KV-cache path
    (the generation case) gives its full forward's logits."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    import minigrad

    cfg, _ = preset("tiny")
    model = GPT(cfg, seed=0, dtype=np.float64)
    net, mapping = copied_torch_gpt(model, cfg)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, cfg.vocab_size, (2, cfg.block_size)) for _ in range(2))

    with minigrad.use_backend("numpy"):
        logits, _ = model(x)
        loss = lm_loss(model, (x, y))
        loss.backward()
    t_logits = net(torch.from_numpy(x))
    t_loss = torch.nn.functional.cross_entropy(t_logits.view(-1, cfg.vocab_size), torch.from_numpy(y).view(-1))
    t_loss.backward()
    np.testing.assert_allclose(logits.data, t_logits.detach().numpy(), rtol=0, atol=1e-12)
    assert abs(float(loss.data) - t_loss.item()) < 1e-12
    params = dict(model.named_parameters())
    for name, p in net.named_parameters():
        np.testing.assert_allclose(params[mapping[name]].grad, p.grad.numpy(), rtol=0, atol=1e-12, err_msg=name)

    with torch.no_grad():          # the cache path: 5 positions, then 3 more one at a time
        caches = [{} for _ in range(cfg.n_layer)]
        steps = [net(torch.from_numpy(x[:1, :5]), caches)[:, -1]]
        steps += [net(torch.from_numpy(x[:1, t:t + 1]), caches, pos0=t)[:, -1] for t in range(5, 8)]
        full = net(torch.from_numpy(x[:1, :8]))
    np.testing.assert_allclose(torch.stack(steps, 1).numpy(), full[:, 4:8].numpy(), rtol=0, atol=1e-12)


def test_generation_case_runs_as_many_forwards_on_both_sides(monkeypatch):
    """For N new tokens both sides run the prompt, then N - 1 single tokens: N forwards each, of
    the same shapes (PyTorch used to run one more, whose logits went unused)."""
    pytest.importorskip("torch", reason=TORCH_REASON)
    calls = {"torch": [], "minigrad": []}
    make = bench_train.torch_gpt

    def counting_torch_gpt(cfg):
        net = make(cfg)
        forward = net.forward

        def counted(idx, caches=None, pos0=0):
            calls["torch"].append(tuple(idx.shape))
            return forward(idx, caches, pos0)
        net.forward = counted
        return net

    forward = GPT.forward

    def counted(self, idx, *args, **kwargs):
        calls["minigrad"].append(tuple(np.shape(idx)))
        return forward(self, idx, *args, **kwargs)

    monkeypatch.setattr(bench_train, "torch_gpt", counting_torch_gpt)
    monkeypatch.setattr(GPT, "forward", counted)
    out = bench_train.torch_generate(5)()
    bench_train.minigrad_generate("numpy", 5)()
    prompt = (1, bench_train.PROMPT_TOKENS)
    assert calls["torch"] == calls["minigrad"] == [prompt] + [(1, 1)] * 4
    assert tuple(out.shape) == (1, bench_train.PROMPT_TOKENS + 5)


# ----------------------------------------------------------------------------- command lines
class Started(Exception):
    """Raised where a benchmark would start measuring: the arguments were accepted."""


def _started(*args, **kwargs):
    raise Started


@pytest.mark.parametrize("argv, message", [
    (["--decode", "0"], "--decode: must be an integer >= 1"),
    (["--rounds", "0"], "--rounds: must be an integer >= 1"),
    (["--threads", "0"], "--threads: must be an integer >= 1"),
    (["--contexts", "64,128", "--decode", "65"], "--decode: at most the shortest context, 64, got 65"),
    (["--contexts", "64,x"], "--contexts: each length must be an integer >= 1, got 'x'"),
])
def test_generation_refuses_counts_that_would_mislead_or_crash(monkeypatch, capsys, argv, message):
    """bench.generation stops with a one-line usage error (exit 2) before any work: a zero count
    used to fall back to the default silently, a --decode above the shortest context crashed in
    the middle of the run."""
    monkeypatch.setattr(bench_kernels, "setup_threads", _started)
    with pytest.raises(SystemExit) as stop:
        bench_generation.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_generation_accepts_decode_up_to_the_shortest_context(monkeypatch):
    monkeypatch.setattr(bench_kernels, "setup_threads", _started)
    with pytest.raises(Started):
        bench_generation.main(["--contexts", "64,128", "--decode", "64"])


def test_generation_report_states_the_openblas_environment(monkeypatch, tmp_path, capsys):
    """The report starts as the other benchmarks' tables do: machine (with the threads), then the
    OpenBLAS settings line of bench.kernels.header."""
    import numba

    import minigrad

    monkeypatch.setattr(bench_kernels, "setup_threads", lambda n: None)   # the test process keeps its own
    monkeypatch.setattr(minigrad, "configure_runtime", lambda: {})
    monkeypatch.setattr(numba, "set_num_threads", lambda n: None)
    monkeypatch.setattr(bench_generation, "speed", lambda variants, contexts, decode, rounds, log:
                        [("dense", n, 1.0, 1024) for n in contexts])
    monkeypatch.setattr(bench_generation, "plots", lambda *args: [])
    bench_generation.main(["--speed-only", "--variants", "dense", "--contexts", "16,32", "--decode", "4",
                           "--threads", "1", "--out", str(tmp_path)])
    lines = (tmp_path / "generation.md").read_text().splitlines()
    assert lines[0].startswith("Machine: ") and "1 threads per process" in lines[0]
    assert lines[1].startswith("Environment: OPENBLAS_THREAD_TIMEOUT")
    assert lines[1] == bench_kernels.environment_line()
    capsys.readouterr()


def test_dp_step_times_drop_exactly_the_warmup_steps():
    """Stamps at the end of each of warmup + steps steps: `steps` step times remain, and the first
    step (no start stamp) can only be a warm-up step."""
    stamps = [1.0, 2.0, 4.0, 7.0, 11.0, 16.0]          # 6 steps; the last five took 1, 2, 3, 4, 5
    assert list(bench_distributed.timed_steps(stamps, 1)) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert list(bench_distributed.timed_steps(stamps, 3)) == [3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        bench_distributed.timed_steps(stamps, 0)


@pytest.mark.parametrize("flag", ["--dp-warmup", "--dp-steps", "--repeat", "--threads"])
def test_distributed_refuses_counts_below_one(monkeypatch, capsys, flag):
    """--dp-warmup 0 used to give the median of one step; the other counts meant nothing at 0."""
    monkeypatch.setattr(bench_distributed, "run_ranks", _started)
    with pytest.raises(SystemExit) as stop:
        bench_distributed.main([flag, "0"])
    assert stop.value.code == 2
    assert f"{flag}: must be an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--ranks", "2,0"), ("--sizes-mb", "x"), ("--dp-ranks", "1,-2")])
def test_distributed_refuses_lists_of_counts_below_one(monkeypatch, capsys, flag, value):
    # bare int() on each part: a traceback for "x", a run of 0 ranks for "0"
    monkeypatch.setattr(bench_distributed, "run_ranks", _started)
    with pytest.raises(SystemExit) as stop:
        bench_distributed.main([flag, value])
    assert stop.value.code == 2
    assert f"{flag}: must be integers >= 1 separated by commas, got '{value}'" in capsys.readouterr().err


def test_warmup_may_be_zero_but_not_negative(capsys):
    ap = argparse.ArgumentParser(prog="bench.train")
    bench_kernels.add_protocol_args(ap, warmup=2, steps_help="")
    assert ap.parse_args(["--warmup", "0"]).warmup == 0
    with pytest.raises(SystemExit):
        ap.parse_args(["--warmup", "-1"])
    assert "--warmup: must be an integer >= 0, got '-1'" in capsys.readouterr().err


def test_distributed_report_states_threads_and_openblas_environment(monkeypatch, capsys):
    pytest.importorskip("mpi4py", reason="optional: pip install -e '.[dist]'")

    def ranks(k, worker_args, threads=None):
        if worker_args[1] == "allreduce":
            return [{"mb": 1, "algorithm": a, "seconds": 1e-3} for a in ("ring", "native")], 1
        return {"ranks": k, "global_batch": 32 * k, "block_size": 64, "seconds_per_step": 0.1,
                "tokens_per_second": 2048.0 * k}, threads or 1

    monkeypatch.setattr(bench_distributed, "run_ranks", ranks)
    monkeypatch.setattr(bench_distributed, "memcpy_seconds", lambda nbytes, repeat: 1e-4)
    bench_distributed.main(["--sizes-mb", "1", "--ranks", "2", "--dp-ranks", "1,2", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    machine = next(line for line in lines if line.startswith("Machine: "))
    assert "threads per rank (all-reduce: 2 ranks " in machine and "training: 1 rank 1, 2 ranks 1" in machine
    assert lines[lines.index(machine) + 1].startswith("Environment: OPENBLAS_THREAD_TIMEOUT")
