"""The backend switch: environment variable, set_backend, NUMBA_DISABLE_JIT, cache directory and
its invalidation, import without side effects, configure_runtime,
and that the numba backend's fused ops agree with the numpy backend's on the same inputs."""
import glob
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minigrad as mg
import minigrad.functional as F
import minigrad.kernels as K
from minigrad import _numba_cache


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k != "MINIGRAD_BACKEND"}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_defaults_and_environment_choices():
    """numba backend by default, the workqueue threading layer once configure_runtime() runs;
    the user's environment wins."""
    code = ("import minigrad; from numba.core import config; layer = config.THREADING_LAYER; "
            "print(minigrad.get_backend(), layer, minigrad.configure_runtime()['threading_layer'])")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "MINIGRAD_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "numba default workqueue", out.stderr
    assert _run(code, MINIGRAD_BACKEND="numpy", NUMBA_THREADING_LAYER="omp") == "numpy omp omp"


def test_bad_backend_names_are_refused():
    with pytest.raises(ValueError, match="one of"):
        mg.set_backend("cuda")
    out = subprocess.run([sys.executable, "-c", "import minigrad"], capture_output=True, text=True,
                         env={**os.environ, "MINIGRAD_BACKEND": "torch"}, timeout=300)
    assert out.returncode != 0 and "MINIGRAD_BACKEND" in out.stderr


def test_set_backend_returns_previous_and_use_backend_restores():
    start = mg.get_backend()
    prev = mg.set_backend("numpy")
    assert prev == start and mg.get_backend() == "numpy"
    with mg.use_backend("numba"):
        assert mg.get_backend() == "numba"
    assert mg.get_backend() == "numpy"
    mg.set_backend(start)


def test_kernels_run_with_numba_jit_disabled():
    code = (
        "import numpy as np, minigrad.kernels as K, minigrad.kernels.reference as R\n"
        "rng = np.random.default_rng(0)\n"
        "q, k, v, do = (rng.standard_normal((1, 2, 9, 4)).astype(np.float32) for _ in range(4))\n"
        "o, lse = K.attention_forward(q, k, v, causal=True)\n"
        "g = K.attention_backward(q, k, v, o, lse, do, causal=True)\n"
        "o2, lse2 = R.attention_forward(q, k, v, causal=True)\n"
        "g2 = R.attention_backward(q, k, v, o2, lse2, do, causal=True)\n"
        "x = rng.standard_normal((3, 7)).astype(np.float32)\n"
        "errs = [abs(o - o2).max()] + [abs(a - b).max() for a, b in zip(g, g2)]\n"
        "errs.append(abs(K.gelu_forward(x) - R.gelu_forward(x)).max())\n"
        "errs.append(abs(K.softmax_forward(x) - R.softmax_forward(x)).max())\n"
        "K._parallel = lambda work, below=None: True  # the head ranges in two threads, as plain Python\n"
        "K._num_threads = lambda: 2\n"
        "qkv = rng.standard_normal((2, 5, 12)).astype(np.float32)\n"
        "errs.append(abs(K.attention_qkv_forward(qkv, 2)[0] - R.attention_qkv_forward(qkv, 2)[0]).max())\n"
        "from optim.adaptive import adam_update\n"
        "p, gg = (rng.standard_normal(50).astype(np.float32) for _ in range(2))\n"
        "steps = []\n"
        "for update in (K.adam_step, adam_update):  # the fused update equals its twin bit for bit\n"
        "    q, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)\n"
        "    update(q, gg, m, v, m.copy(), step=2, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,\n"
        "           weight_decay=0.1, maximize=True)\n"
        "    steps.append(q)\n"
        "import numba; print(numba.config.DISABLE_JIT, max(errs) < 1e-5, np.array_equal(*steps))\n"
    )
    assert _run(code, NUMBA_DISABLE_JIT="1") == "1 True True"


def test_the_numpy_backend_does_not_import_numba():
    """MINIGRAD_BACKEND=numpy: importing minigrad and optim, a forward and backward through the
    fused ops, an AdamW step and quantize never import Numba (it takes longer to import than
    minigrad); choosing the numba backend imports it then."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import minigrad as mg, optim\n"
        "import minigrad.functional as F\n"
        "from minigrad import precision\n"
        "x = mg.Tensor(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), requires_grad=True)\n"
        "loss = F.cross_entropy(F.gelu(F.layer_norm(x)), np.arange(4))\n"
        "loss.backward()\n"
        "optim.AdamW([x], lr=1e-2).step()\n"
        "precision.quantize(x.data, 'fp8_e4m3')\n"
        "print(mg.get_backend(), 'numba' in sys.modules)\n"
        "mg.set_backend('numba')\n"
        "print(mg.get_backend(), 'numba' in sys.modules)\n"
    )
    assert _run(code, MINIGRAD_BACKEND="numpy").split("\n") == ["numpy False", "numba True"]


def test_configure_runtime_makes_numpy_blas_single_threaded_unless_told_otherwise():
    """On the numba backend the kernel pool runs the GEMMs; NumPy's own OpenBLAS threads would
    fight its spinning workers, so configure_runtime() leaves NumPy one BLAS thread
    (MINIGRAD_NUMPY_BLAS_THREADS=n keeps n). Importing minigrad alone changes nothing."""
    code = (
        "import ctypes, glob, os, numpy as np\n"
        "lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(np.__file__) + '.libs', "
        "'libscipy_openblas*.so*'))[0])\n"
        "threads = lambda: lib.scipy_openblas_get_num_threads64_()\n"
        "before = threads()\n"
        "import minigrad, minigrad.kernels\n"
        "assert threads() == before\n"
        "print(minigrad.configure_runtime()['numpy_blas'], threads())\n"
    )
    if not glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas*.so*")):
        pytest.skip("NumPy is not linked to its bundled scipy-openblas here")
    assert _run(code, OPENBLAS_NUM_THREADS="2") == "True 1"
    assert _run(code, OPENBLAS_NUM_THREADS="2", MINIGRAD_NUMPY_BLAS_THREADS="2") == "True 2"
    # the numpy backend has no pool: its GEMMs keep BLAS's threads
    assert _run(code, OPENBLAS_NUM_THREADS="2", MINIGRAD_BACKEND="numpy") == "False 2"


def test_import_changes_no_process_wide_state():
    """No environment variable is written and glibc's mallopt is not called by importing
    minigrad (or its kernels); configure_runtime() is where mallopt runs."""
    code = (
        "import ctypes, os, sys\n"
        "calls = []\n"
        "class Spy(ctypes.CDLL):  # records every lookup of mallopt in a loaded library\n"
        "    def __getattr__(self, name):\n"
        "        if name == 'mallopt':\n"
        "            calls.append(name)\n"
        "        return super().__getattr__(name)\n"
        "ctypes.CDLL = Spy\n"
        "env = dict(os.environ)\n"
        "import minigrad, minigrad.kernels\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
        "assert calls == [], calls\n"
        "print(minigrad.configure_runtime()['malloc'], len(calls) > 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "MINIGRAD_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert out.stdout.strip() == "True True"


def test_cache_dir_falls_back_to_user_cache(monkeypatch, tmp_path):
    real = _numba_cache._writable_dir
    kernels_dir = os.path.dirname(K.__file__)
    assert _numba_cache._choose_cache_dir(kernels_dir) == ""  # Numba's default: __pycache__ beside
    pycache = os.path.join(kernels_dir, "__pycache__")
    monkeypatch.setattr(_numba_cache, "_writable_dir", lambda p: p != pycache and real(p))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _numba_cache._choose_cache_dir(kernels_dir) == os.path.join(str(tmp_path), "minigrad", "numba")
    # nothing writable at all: no cache dir, and no exception
    monkeypatch.setattr(_numba_cache, "_writable_dir", lambda p: False)
    assert _numba_cache._choose_cache_dir(kernels_dir) is None


def test_cache_dir_in_the_shared_temp_dir_is_private_or_not_used(monkeypatch, tmp_path):
    # the last fallback has a predictable name in the shared temp dir; Numba unpickles its cache
    # index, so a directory someone else could write must not be used
    real = _numba_cache._writable_dir
    kernels_dir = os.path.dirname(K.__file__)
    user_cache = os.path.join(str(tmp_path / "home"), "minigrad", "numba")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(_numba_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(_numba_cache, "_writable_dir",
                        lambda p: not p.endswith("__pycache__") and p != user_cache and real(p))
    shared = os.path.join(str(tmp_path), f"minigrad-numba-{os.getuid()}")
    assert _numba_cache._choose_cache_dir(kernels_dir) == shared  # made here, private
    assert os.stat(shared).st_mode & 0o777 == 0o700
    os.chmod(shared, 0o777)  # open to all: anyone could have planted a cache index
    assert _numba_cache._choose_cache_dir(kernels_dir) is None
    os.chmod(shared, 0o775)  # group-writable, as the code before made it under umask 002: closed
    assert _numba_cache._choose_cache_dir(kernels_dir) == shared
    assert os.stat(shared).st_mode & 0o777 == 0o700
    if os.getuid() == 0:  # root can hand the directory to another owner
        os.chown(shared, 65534, 65534)
        assert _numba_cache._choose_cache_dir(kernels_dir) is None


def test_kernels_cache_in_the_fallback_dir_and_load_from_it(tmp_path):
    """With the kernels' __pycache__ read-only (simulated), the first process compiles into
    $XDG_CACHE_HOME/minigrad/numba and a second process loads from there (a warm start); Numba's
    own setting is left as it was."""
    code = (
        "import os\n"
        "import minigrad._numba_cache as c\n"
        "real = c._writable_dir\n"
        "c._writable_dir = lambda p: not p.endswith(os.path.join('kernels', '__pycache__')) and real(p)\n"
        "import numpy as np, minigrad.kernels as K\n"
        "from numba.core import config\n"
        "K.gelu_forward(np.ones(5, np.float32))\n"
        "stats = K._gelu.gelu_fwd.stats\n"
        "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()), repr(config.CACHE_DIR))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.split())
    assert runs[0] == ["0", "1", "''"]   # compiled, and written to the fallback directory
    assert runs[1] == ["1", "0", "''"]   # loaded from it
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path / "minigrad" / "numba") for f in files)


def test_an_edited_helper_in_another_file_reaches_the_cached_kernel_that_calls_it(tmp_path):
    """Numba's cache alone keys a kernel on its own file: after an edit of a helper in another
    file, the cached caller kept the helper's old code (this printed 10 twice). minigrad's njit
    stamps a kernel with every source file beside it and in minigrad/kernels, so the second
    process compiles the caller again, and a third loads that from the cache."""
    (tmp_path / "helper.py").write_text(
        "from minigrad._numba_cache import njit\n\n@njit(cache=True)\ndef g():\n    return 1\n")
    (tmp_path / "caller.py").write_text(
        "from minigrad._numba_cache import njit\nfrom helper import g\n\n"
        "@njit(cache=True)\ndef f():\n    return 10 * g()\n\n"
        "print(f(), sum(f.stats.cache_hits.values()))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}

    def run():
        out = subprocess.run([sys.executable, "caller.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert run() == ["10", "0"]       # compiled and cached
    assert run() == ["10", "1"]       # loaded from the cache
    (tmp_path / "helper.py").write_text((tmp_path / "helper.py").read_text().replace("return 1", "return 2"))
    assert run() == ["20", "0"]       # the helper changed: compiled again
    assert run() == ["20", "1"]


def test_a_kernel_compiled_after_its_sources_changed_on_disk_is_not_cached_for_later_processes(tmp_path):
    """A kernel is compiled from the code its process imported. When a source file beside it
    changes while the process runs (here: after the import, before the kernel's first call and
    decoration, as `models/paged_attention.py` decorates at the first decoding step), what it
    compiles must not be stored under the new sources' stamp: the next process printed 10."""
    (tmp_path / "helper.py").write_text(
        "from minigrad._numba_cache import njit\n\n@njit(cache=True)\ndef g():\n    return 1\n")
    (tmp_path / "caller.py").write_text(
        "from minigrad._numba_cache import njit\nimport helper\n\n\ndef build():\n"
        "    @njit(cache=True)\n    def f():\n        return 10 * helper.g()\n    return f\n")
    edit_then_run = ("import pathlib, caller\n"
                     "p = pathlib.Path('helper.py')\n"
                     "p.write_text(p.read_text().replace('return 1', 'return 2'))\n"
                     "print(caller.build()())\n")
    run = "import caller\nf = caller.build()\nprint(f(), sum(f.stats.cache_hits.values()))\n"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}

    def python(code):
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert python(edit_then_run) == ["10"]      # the code this process imported
    assert python(run) == ["20", "0"]           # the new sources, compiled anew
    assert python(run) == ["20", "1"]           # and cached


def test_config_is_restored_when_threads_decorate_kernels_at_once(tmp_path):
    """`njit` sets Numba's cache settings while it decorates a kernel and puts them back; two
    threads doing so in turn left minigrad's locators set for every later kernel of any library
    (3 runs of 3 without the lock). A dangling link beside the kernels is skipped by the stamp."""
    (tmp_path / "gone.py").symlink_to(tmp_path / "missing.py")
    code = ("import sys, threading\n"
            "from numba.core import config\n"
            "from minigrad._numba_cache import njit\n"
            "sys.setswitchinterval(1e-5)\n"
            "before = config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES\n"
            "def make():\n"
            "    for _ in range(300):\n"
            "        njit(cache=True)(lambda: 1)\n"
            "threads = [threading.Thread(target=make) for _ in range(2)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n"
            "print((config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES) == before)\n")
    (tmp_path / "decorate.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "decorate.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]


def test_a_kernel_imported_from_a_zip_still_caches(tmp_path):
    """A kernel with no source file on disk takes Numba's own locator (here its zip locator):
    the stamped locators alone found none, and decorating it raised."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "kernels.zip", "w") as z:
        z.writestr("zipped.py", "from minigrad._numba_cache import njit\n\n@njit(cache=True)\ndef f():\n    return 7\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "kernels.zip"), env.get("PYTHONPATH", "")])
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")      # where Numba's zip locator writes
    out = subprocess.run([sys.executable, "-c", "import zipped; print(zipped.f())"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["7"]


def test_configure_runtime_malloc_respects_the_users_choice():
    code = "from minigrad import backend; print(backend.tune_malloc())"
    assert _run(code, MINIGRAD_MALLOC="default") == "False"
    assert _run(code, MALLOC_MMAP_THRESHOLD_="131072") == "False"  # glibc's own variable wins
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert _run(code) == "True"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_attention_thread_pool_works_in_a_forked_child(monkeypatch):
    """The head ranges run in a thread pool; a fork copies the pool object but not its threads,
    so the child must make its own (a stale pool would hang the child forever)."""
    import multiprocessing

    import minigrad.kernels as K

    from minigrad.kernels import pool

    monkeypatch.setattr(K, "_parallel", lambda work, below=None: True)
    monkeypatch.setattr(K, "_num_threads", lambda: 2)     # also on a 1-CPU machine
    qkv = np.random.default_rng(0).standard_normal((2, 9, 12)).astype(np.float32)
    want, _ = K.attention_qkv_forward(qkv, 2)
    assert pool._pool["pool"] is not None and pool._pool["pid"] == os.getpid()  # the parent's pool
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_attention_in_child, args=(qkv, want))
    child.start()
    child.join(120)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0


def _attention_in_child(qkv, want):
    import minigrad.kernels as K
    from minigrad.kernels import pool

    K._parallel = lambda work, below=None: True
    K._num_threads = lambda: 2
    got, _ = K.attention_qkv_forward(qkv, 2)
    assert pool._pool["pid"] == os.getpid()   # a pool of the child's own
    os._exit(0 if np.array_equal(got, want) else 1)


# ----------------------------------------------------------------------------- dispatch
def _both(fn, *arrays):
    outs = {}
    for name in ("numpy", "numba"):
        with mg.use_backend(name):
            xs = [mg.Tensor(a, requires_grad=True) for a in arrays]
            y = fn(*xs)
            g = np.random.default_rng(7).standard_normal(y.shape).astype(y.dtype)
            y.backward(g)
            outs[name] = [y.data] + [x.grad for x in xs]
    return outs["numpy"], outs["numba"]


@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(1, 70), st.integers(1, 20))
def test_numba_and_numpy_backends_agree_float32(seed, b, t, c):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, c)).astype(np.float32)
    w = rng.standard_normal(c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    for fn, args in [
        (lambda x: F.gelu(x), (x,)),
        (lambda x: F.softmax(x), (x,)),
        (lambda x: F.log_softmax(x), (x,)),
        (lambda x, w, b: F.layer_norm(x, w, b), (x, w, bias)),
        (lambda x: F.scaled_dot_product_attention(x, x * 0.5, x, causal=True), (x[:, None],)),
        (lambda x: x @ x.transpose(1, 2), (x,)),  # equal batch dims: bmm
        (lambda x, w: x @ (w[:, None] * w), (x, w)),  # (B, T, C) @ (C, C): one 2-D GEMM
        (lambda x: F.embedding(np.array([[0, t - 1, 0]]), x[0]), (x,)),  # scatter-add backward
    ]:
        ref, got = _both(fn, *args)
        for r, gt in zip(ref, got):
            assert gt.dtype == np.float32
            np.testing.assert_allclose(gt, r, rtol=1e-4, atol=1e-4)


def test_cross_entropy_backends_agree_with_ignore_index():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((37, 11)).astype(np.float32) * 3
    t = rng.integers(0, 11, 37)
    t[::5] = -100
    for reduction in ("mean", "sum", "none"):
        res = {}
        for name in ("numpy", "numba"):
            with mg.use_backend(name):
                x = mg.Tensor(logits, requires_grad=True)
                y = F.cross_entropy(x, t, reduction=reduction)
                y.backward(np.ones(y.shape, np.float32))
                res[name] = (y.data, x.grad)
        np.testing.assert_allclose(res["numba"][0], res["numpy"][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res["numba"][1], res["numpy"][1], rtol=1e-5, atol=1e-6)


def test_attention_with_kv_cache_offsets_uses_bottom_right_mask():
    # the core's causal mask is bottom-right aligned: Tq new queries after Tk - Tq cached keys
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 3, 8))
    k, v = rng.standard_normal((1, 2, 10, 8)), rng.standard_normal((1, 2, 10, 8))
    ref, got = _both(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True), q, k, v)
    for r, gt in zip(ref, got):
        np.testing.assert_allclose(gt, r, rtol=1e-10, atol=1e-12)


def test_backend_is_fixed_per_op_between_forward_and_backward(monkeypatch):
    # an op recorded on the numba backend runs its numba backward (it consumes what the numba
    # forward saved), whatever backend is active when backward runs
    rng = np.random.default_rng(0)
    data, dy = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    calls = []
    real = K.layer_norm_backward
    monkeypatch.setattr(K, "layer_norm_backward", lambda *args: calls.append(1) or real(*args))
    x = mg.Tensor(data, requires_grad=True)
    with mg.use_backend("numba"):
        y = F.layer_norm(x)
    with mg.use_backend("numpy"):
        y.backward(dy)
    assert calls == [1]
    ref = mg.Tensor(data, requires_grad=True)
    with mg.use_backend("numpy"):
        F.layer_norm(ref).backward(dy)
    np.testing.assert_allclose(x.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_cpu_model_names_family_model_and_avx512(tmp_path, monkeypatch):
    """A VM's bare "AMD EPYC" is both Zen 3 and Zen 4: the speed tables' CPU line carries the
    family and model numbers and AVX-512, read from the first processor's block only."""
    from minigrad.backend import cpu_model

    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                   "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\n"
                   "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: other\n")
    assert cpu_model(str(amd)) == "AMD EPYC (family 25, model 17, AVX-512)"
    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 158\n"
                     "model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz\nflags\t\t: fma avx2\n")
    assert cpu_model(str(intel)) == "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz (family 6, model 158)"
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert cpu_model(str(tmp_path / "absent")) == "riscv64"
