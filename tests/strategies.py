"""Hypothesis strategies for the autodiff core's tests, and helpers the test files share.

What the gradient tests need, and why:

- small shapes (finite differences cost two forwards per element), including 0-d and size-1 axes;
- mutually broadcastable shapes, so every binary op's backward must undo broadcasting;
- float64 values (finite differences in float32 are dominated by rounding);
- values kept off kinks and domain edges: relu/abs at 0, log/sqrt near 0, clip bounds, and
  max/min ties, where the derivative jumps and a central difference straddles two slopes;
- non-contiguous arrays (a drawn axis permutation, and optionally a step-2 slice), so that an op
  which silently assumes C order (e.g. `reshape(-1)` expected to be a view) is caught.

Element values come from hypothesis itself (`fill=st.nothing()`: every element drawn, so arrays
are not mostly one repeated value) and shrink to readable counterexamples.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import threading

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg

MAX_SIDE = 4


# ---------------------------------------------------------------- shapes
def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 1, max_side: int = MAX_SIDE):
    """Array shapes with `min_dims..max_dims` axes of `min_side..max_side` elements."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes: int = 2, min_dims: int = 0, max_dims: int = 3, max_side: int = 3):
    """`num_shapes` shapes that broadcast together (some axes 1 or missing): a tuple of shapes."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, max_side=max_side
    ).map(lambda bs: bs.input_shapes)


@st.composite
def shape_and_axis(draw, min_dims: int = 1, max_dims: int = 3, max_side: int = MAX_SIDE, multi: bool = True):
    """(shape, axis) where axis is None, one axis (maybe negative) or, if `multi`, a tuple of axes."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side))
    nd = len(shape)
    options = [st.none()] + ([st.integers(-nd, nd - 1)] if nd else [])
    if multi and nd >= 2:
        options.append(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple))
    return shape, draw(st.one_of(*options))


# ---------------------------------------------------------------- values
def _floats(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


def _push_off(x: np.ndarray, kinks, margin: float) -> np.ndarray:
    """Move every element closer than `margin` to a kink onto the kink +/- margin (its own side)."""
    for c in kinks:
        near = np.abs(x - c) < margin
        x = np.where(near, np.where(x >= c, c + margin, c - margin), x)
    return x


@st.composite
def arrays(draw, shape, lo: float = -2.0, hi: float = 2.0, kinks=(), margin: float = 0.05,
           distinct: bool = False, noncontiguous=None):
    """A float64 array of `shape` with values in [lo, hi] (a shape strategy is drawn first).

    kinks:    points the values must stay `margin` away from (e.g. (0.0,) for relu/abs).
    distinct: all values at least ~0.4*(hi-lo)/size apart (no max/min ties, no sort ambiguity).
    noncontiguous: True -> always a strided view, None -> drawn, False -> C-contiguous.
    """
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    shape = tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    if distinct and n > 0:
        # A drawn order of n evenly spaced slots, each jittered by at most 30% of a slot.
        order = np.array(draw(st.permutations(range(n))), dtype=np.float64)
        jitter = np.array(draw(st.lists(_floats(-0.3, 0.3), min_size=n, max_size=n)))
        width = (hi - lo) / n
        x = (lo + (order + 0.5 + jitter) * width).reshape(shape)
    else:
        x = draw(hnp.arrays(np.float64, shape, elements=_floats(lo, hi), fill=st.nothing()))
    x = _push_off(np.asarray(x, dtype=np.float64), kinks, margin)
    if noncontiguous is None:
        noncontiguous = draw(st.booleans())
    if noncontiguous:
        x = draw(as_noncontiguous(x))
    return x


@st.composite
def as_noncontiguous(draw, x: np.ndarray):
    """A strided view equal to `x`: stored in a drawn axis order, optionally every 2nd element.

    The result has `x`'s shape and values but (for ndim >= 1) not its C-order layout, and it is
    writable (gradcheck perturbs it in place) with no two elements sharing memory.
    """
    x = np.asarray(x)
    if x.ndim == 0:
        return x.copy()
    perm = draw(st.permutations(range(x.ndim)))
    step_axis = draw(st.none() | st.integers(0, x.ndim - 1))
    stored_shape = [x.shape[p] for p in perm]
    if step_axis is not None:
        stored_shape[step_axis] *= 2
    base = np.full(stored_shape, np.nan)  # NaN padding: any read of a gap would show up
    sl = [slice(None)] * x.ndim
    if step_axis is not None:
        sl[step_axis] = slice(None, None, 2)
    view = base[tuple(sl)]
    view[...] = x.transpose(perm)
    out = view.transpose(np.argsort(perm))
    assert out.shape == x.shape and np.array_equal(out, x)
    return out


def positive_arrays(shape, lo: float = 0.2, hi: float = 3.0, **kw):
    """Values in [lo, hi] with lo > 0: for log, sqrt, division and pow bases (off the 0 edge)."""
    return arrays(shape, lo=lo, hi=hi, **kw)


def int_indices(size: int, shape, allow_repeats: bool = True):
    """An integer index array of `shape` into an axis of `size`; repeats allowed (and likely)."""
    return hnp.arrays(np.int64, shape, elements=st.integers(0, size - 1),
                      unique=not allow_repeats, fill=st.nothing())


def seeds():
    """A seed for np.random.default_rng: for bulk data (attention inputs, dropout masks)."""
    return st.integers(0, 2**32 - 1)


@st.composite
def matmul_shapes(draw):
    """Operand shapes for `@`: 1-D and n-D operands, batch dims that broadcast."""
    mode = draw(st.sampled_from(["1d@1d", "1d@nd", "nd@1d", "nd@nd"]))
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    ba, bb = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    sa = (k,) if mode.startswith("1d") else ba + (n, k)
    sb = (k,) if mode.endswith("1d") else bb + (k, m)
    return sa, sb


# ---------------------------------------------------------------- shared checks
BACKENDS = ["numpy"] + (["numba"] if mg.backend.numba_available() else [])
by_backend = pytest.mark.parametrize("bk", BACKENDS)


def gc(fn, *arrays_):
    """gradcheck `fn` on fresh float64 leaves; also every grad must have its input's shape."""
    xs = [mg.Tensor(a, requires_grad=True) for a in arrays_]
    assert mg.gradcheck(fn, xs)
    for x in xs:
        assert x.grad is not None and x.grad.shape == x.shape
    return xs


def close(t, expected, tol=1e-12):
    assert t.shape == np.shape(expected)
    np.testing.assert_allclose(t.data, expected, rtol=tol, atol=tol)


def torch_parity(mg_fn, torch_fn, *arrays_, grad=True, seed=0, rtol=1e-10, atol=1e-12):
    """Run minigrad's and torch's function on the same float64 inputs: equal outputs and, with
    ``grad``, equal VJPs of one random covector (an input torch or minigrad leaves without a
    gradient counts as zeros). Needs torch (the `bench` extra)."""
    import minigrad as mg
    import torch

    xs = [mg.Tensor(np.array(a), requires_grad=grad) for a in arrays_]
    ts = [torch.tensor(np.array(a), dtype=torch.float64, requires_grad=grad) for a in arrays_]
    out, tout = mg_fn(*xs), torch_fn(*ts)
    assert out.shape == tuple(tout.shape), (out.shape, tuple(tout.shape))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=rtol, atol=atol)
    if not grad:
        return
    v = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(v)
    tout.backward(torch.from_numpy(v))
    for i, (x, t) in enumerate(zip(xs, ts)):
        want = np.zeros(x.shape) if t.grad is None else t.grad.numpy()
        got = np.zeros(x.shape) if x.grad is None else x.grad
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")


def load_demo(filename: str):
    """Import demos/<filename> as a module (the demos are scripts, not a package)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos", filename)
    spec = importlib.util.spec_from_file_location(os.path.splitext(filename)[0] + "_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def files_below(root) -> list:
    """Sorted '/'-separated paths, relative to `root`, of every file below it: what a run wrote."""
    return sorted(os.path.relpath(os.path.join(d, name), root).replace(os.sep, "/")
                  for d, _, names in os.walk(root) for name in names)


def snapshot(root) -> dict:
    """Every directory (None) and file ((mtime_ns, bytes)) below `root`, keyed by path: two equal
    snapshots mean nothing was created, removed, written or rewritten there in between."""
    snap = {}
    for d, _, names in os.walk(root):
        snap[d] = None
        for name in names:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                snap[path] = (os.stat(path).st_mtime_ns, f.read())
    return snap


def ctrl_c(demo, monkeypatch, run: int, step: int = 2) -> list:
    """Make the ``run``-th ``demo.Trainer.fit`` (1-based) receive Ctrl-C during its step ``step``
    (a real SIGINT: the step finishes and fit() returns with ``interrupted`` set); returns the list
    of the trainers the demo fits. Trainers used without fit (a memory probe's) do not count.

    ``demo`` is any module whose ``Trainer`` builds the trainers (``models.training.distributed``
    for data-parallel runs). Each simulated rank's fit counts: a ``SimComm(n)`` run is n fits, in
    the order the ranks start them. A rank is a thread: it is stopped as a signal to that rank's
    process stops it under mpiexec, by its wish to stop (``interrupted``), so that the chosen
    rank and step decide it; the ranks' stop vote stops all of them at the same step. (A real
    signal reaches simulated ranks through ``SimComm``'s ``stop_requested``: tests/test_dist_comm.py.)"""
    fits, first = [], {}

    class CtrlC(demo.Trainer):
        def fit(self):
            fits.append(self)
            first[len(fits)] = self.step                 # steps count from this fit's start
            return super().fit()

        def train_step(self, batch=None):
            loss = super().train_step(batch)
            if len(fits) >= run and self is fits[run - 1] and self.step - first[run] == step:
                if threading.current_thread() is threading.main_thread():
                    signal.raise_signal(signal.SIGINT)   # what Ctrl-C does
                else:
                    self.interrupted = True
            return loss

    monkeypatch.setattr(demo, "Trainer", CtrlC)
    return fits


def assert_stopped(demo, argv, says: str, capsys) -> None:
    """``demo.main(argv)`` ends as a stopped run: exit 130 and one line ``<demo>.py: ...`` holding ``says``."""
    code = demo.main(argv)
    err = capsys.readouterr().err
    assert code == 130, err
    assert err.count("\n") == 1 and err.startswith(f"{os.path.basename(demo.__file__)}: interrupted"), err
    assert says in err, err


def assert_refused(demo, argv, says: str, capsys, watch) -> str:
    """`demo.main(argv)` refuses bad input: exit code 2, one line `<demo>.py: error: ...` holding
    `says` on stderr, and nothing below the directory `watch` created or changed. Returns the line."""
    before = snapshot(watch)
    code = demo.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{os.path.basename(demo.__file__)}: error: "), err
    assert says in err, err
    assert snapshot(watch) == before, "a refused run wrote files"
    return err.rstrip("\n")



def mpiexec() -> str:
    """The mpiexec of the MPI library mpi4py uses -- the one beside the interpreter, which the
    `dist` extra installs, else PATH's -- or a one-line skip saying what is missing."""
    import shutil
    import sys

    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install -e '.[dist]'); MPI test skipped")
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec beside the Python interpreter or on PATH; MPI test skipped")
    return found


def assert_mpiexec_matches_simcomm(program: str, n: int, tmp_path, timeout: float = 300) -> None:
    """Run ``exercise(comm)`` of tests/mpi_programs/<program>.py on ``mpiexec -n n`` ranks and on
    ``SimComm(n)`` (both through tests/mpi_programs/exercise.py, which saves each rank's arrays) and
    assert that they agree rank by rank, bit for bit, dtypes included.

    The SimComm side runs in a fresh process too, not in this one: what earlier tests left behind
    in the test process (a thread count of the BLAS inside the Numba kernels, say) must not be what
    the comparison measures. Both use this process's backend (``MINIGRAD_BACKEND``): the NumPy
    reference and the Numba kernels agree to rounding, not bit for bit. Both run NumPy's BLAS on
    one thread: mpiexec may pin each rank to one core, and a BLAS may split (and so round) a
    product by its thread count, which is not what is compared here."""
    import subprocess
    import sys

    import minigrad

    programs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_programs")
    command = [sys.executable, os.path.join(programs, "exercise.py"), os.path.join(programs, f"{program}.py")]
    out = {side: os.path.join(os.fspath(tmp_path), f"{program}-{side}-rank{{rank}}.npz") for side in ("mpi", "sim")}
    env = dict(os.environ, MINIGRAD_BACKEND=minigrad.get_backend(), OPENBLAS_NUM_THREADS="1")
    for side, run in (("mpi", [mpiexec(), "-n", str(n), *command, out["mpi"]]), ("sim", [*command, out["sim"], str(n)])):
        done = subprocess.run(run, capture_output=True, text=True, timeout=timeout, env=env)
        assert done.returncode == 0, f"{side}: {done.stderr}"
    for rank in range(n):
        with np.load(out["mpi"].format(rank=rank)) as got, np.load(out["sim"].format(rank=rank)) as want:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                assert (got[key].dtype, got[key].shape) == (want[key].dtype, want[key].shape), f"rank {rank} {key}"
            differ = [f"{key} ({np.count_nonzero(got[key] != want[key])}/{got[key].size} elements, "
                      f"max |diff| {np.max(np.abs(got[key] - want[key])):.2g})"
                      for key in want.files if not np.array_equal(got[key], want[key])]
            assert not differ, f"rank {rank}: MPI and SimComm differ in " + "; ".join(differ)
