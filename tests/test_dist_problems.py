"""The heterogeneous least-squares problem the distributed algorithms are measured on: the same
on every rank from the seed, x* the global minimizer, each worker's gradient nonzero there."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from optim.dist.problems import HeterogeneousLeastSquares

shapes = st.one_of(st.integers(1, 6), st.tuples(st.integers(1, 6)),
                   st.tuples(st.integers(1, 6), st.integers(1, 3)))


@given(workers=st.integers(1, 5), shape=shapes, heterogeneity=st.floats(0.1, 3.0),
       seed=st.integers(0, 2**32 - 1))
def test_x_star_is_the_global_minimizer_and_not_the_workers_own(workers, shape, heterogeneity, seed):
    p = HeterogeneousLeastSquares(workers, shape, heterogeneity=heterogeneity, seed=seed)
    grads = [p.gradient(i, p.optimum) for i in range(workers)]
    np.testing.assert_allclose(np.mean(grads, axis=0), 0, atol=1e-12 * np.abs(p.moments).max())
    if workers > 1:
        assert max(np.linalg.norm(g) for g in grads) > 1e-6 * heterogeneity
    x = np.random.default_rng(seed).standard_normal(p.shape)
    assert p.loss_gap(x) == pytest.approx(p.loss(x) - p.loss(p.optimum), rel=1e-9, abs=1e-12)
    assert p.loss_gap(p.optimum) == 0
    assert p.lipschitz == pytest.approx(np.linalg.eigvalsh(p.hessian)[-1])


def test_heterogeneity_sets_how_far_x_star_is_from_each_workers_optimum():
    same = HeterogeneousLeastSquares(4, 6, heterogeneity=0.0, seed=3)
    apart = HeterogeneousLeastSquares(4, 6, heterogeneity=1.0, seed=3)
    for i in range(4):
        np.testing.assert_allclose(same.gradient(i, same.optimum), 0, atol=1e-12)
        a, b = same.data(i)
        np.testing.assert_allclose(a @ same.optimum, b, atol=1e-12)
        assert np.linalg.norm(apart.gradient(i, apart.optimum)) > 1.0


def test_the_same_problem_on_every_rank_and_worker_data_independent_of_the_count():
    a = HeterogeneousLeastSquares(3, (4, 2), rows=9, seed=5)
    b = HeterogeneousLeastSquares(3, (4, 2), rows=9, seed=5)
    c = HeterogeneousLeastSquares(5, (4, 2), rows=9, seed=5)
    for i in range(3):
        for x, y, z in zip(a.data(i), b.data(i), c.data(i)):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)
    np.testing.assert_array_equal(a.optimum, b.optimum)
    assert not np.array_equal(a.data(0)[0], HeterogeneousLeastSquares(3, (4, 2), rows=9, seed=6).data(0)[0])


def test_minibatch_gradients_average_to_the_full_gradient():
    p = HeterogeneousLeastSquares(2, (5, 2), rows=8, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 2))
    full = p.gradient(1, x)
    np.testing.assert_allclose(p.gradient(1, x, np.arange(8)), full, rtol=1e-12)
    np.testing.assert_allclose(np.mean([p.gradient(1, x, [r]) for r in range(8)], axis=0), full, rtol=1e-12)
    a, b = p.data(1)
    np.testing.assert_allclose(full, a.T @ (a @ x - b) / 8, rtol=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        HeterogeneousLeastSquares(0)
    with pytest.raises(ValueError, match=r"shape must be d, \(d,\) or \(d, c\).*got \(2, 3, 4\)"):
        HeterogeneousLeastSquares(2, (2, 3, 4))
    with pytest.raises(ValueError, match="rows must be an integer >= 1, got 0"):
        HeterogeneousLeastSquares(2, 3, rows=0)
    with pytest.raises(IndexError, match=r"worker must be in 0\.\.1, got 2"):
        HeterogeneousLeastSquares(2, 3).data(2)
