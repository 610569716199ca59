"""Shared test setup: hypothesis profiles and the process-wide runtime settings.

`ci` (the default) is deterministic and quick; `thorough` draws many more examples.
Choose with HYPOTHESIS_PROFILE=ci|thorough.

`minigrad.configure_runtime()` runs once here, before any test. The demos call it and several
tests run a demo in-process, so without this the settings (among them the thread count of the
BLAS inside the Numba kernels) would change partway through the suite, and a result could depend
on which tests ran before it (a BLAS may round a product differently with one thread than with
two). The bit-for-bit MPI checks (`strategies.assert_mpiexec_matches_simcomm`) do not rely on
this: both of their sides run in fresh processes that apply the same settings themselves.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

import minigrad

minigrad.configure_runtime()


@pytest.fixture(autouse=True)
def _backend_restored():
    """Fail a test that leaves another backend active than it found: every later test would
    then run, unnoticed, on the wrong one (the numpy reference instead of the Numba kernels)."""
    before = minigrad.get_backend()
    yield
    after = minigrad.set_backend(before)
    assert after == before, f"the test left the {after!r} backend active (it found {before!r})"

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
