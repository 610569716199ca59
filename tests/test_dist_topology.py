"""Mixing matrices of the communication graphs, their spectral gaps, and gossip over SimComm."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from optim.dist.comm import SimComm
from optim.dist.topology import (TOPOLOGIES, Topology, check_mixing_matrix, complete, exponential,
                                 gossip, metropolis_hastings, mixing_matrix, one_peer_exponential,
                                 ring, spectral_gap, star, torus, torus_shape)

SIZES = {"ring": [1, 2, 3, 4, 5, 8, 13], "torus": [4, 6, 8, 9, 12, 15, 16, 36],
         "exponential": [1, 2, 3, 4, 5, 7, 8, 12, 16], "one-peer-exponential": [1, 2, 3, 4, 6, 8, 16],
         "complete": [1, 2, 3, 7], "star": [1, 2, 3, 6]}
CASES = [(name, n) for name in TOPOLOGIES for n in SIZES[name]]


def _matrices(name, n):
    topo = Topology(name, n)
    return [topo.matrix(k) for k in range(topo.period)]


@pytest.mark.parametrize("name,n", CASES)
def test_every_matrix_is_doubly_stochastic(name, n):
    for w in _matrices(name, n):
        assert w.shape == (n, n)
        assert (w >= 0).all()
        np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-15)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-15)
        check_mixing_matrix(w)


@pytest.mark.parametrize("name,n", [c for c in CASES if c[0] in ("ring", "torus", "complete", "star")])
def test_undirected_graphs_are_symmetric(name, n):
    (w,) = _matrices(name, n)
    assert (w == w.T).all()


@pytest.mark.parametrize("n", [4, 5, 8, 16])
def test_exponential_graphs_are_directed(n):
    assert not (exponential(n) == exponential(n).T).all()
    assert not (one_peer_exponential(n, 0) == one_peer_exponential(n, 0).T).all()
    if n in (4, 8, 16):     # 0 averages with 1, but 1 not with 0 = 1 + (n - 1): n - 1 is no power of 2
        assert exponential(n)[0, 1] > 0 and exponential(n)[1, 0] == 0


def test_weights_of_each_graph():
    assert (ring(6)[0] == [1 / 3, 1 / 3, 0, 0, 0, 1 / 3]).all()
    assert (ring(2) == 0.5).all() and (ring(1) == 1).all()
    assert set(np.unique(torus(9))) == {0, 0.2}           # 3 x 3: 4 neighbours, weight 1/5
    assert set(np.unique(torus(8))) == {0, 0.25}          # 2 x 4: the side of 2 gives 3 neighbours
    assert set(np.unique(torus(4))) == {0, 1 / 3}         # 2 x 2: two sides of 2 give 2 neighbours
    assert (exponential(8)[0] == [0.25, 0.25, 0.25, 0, 0.25, 0, 0, 0]).all()   # 0 <- 0, 1, 2, 4
    assert (exponential(6)[0] == [0.25, 0.25, 0.25, 0, 0.25, 0]).all()         # tau = ceil(log2 6) = 3
    assert (one_peer_exponential(8, 2)[3] == [0, 0, 0, 0.5, 0, 0, 0, 0.5]).all()  # 3 <- 3, 3 + 4
    assert (one_peer_exponential(8, 3) == one_peer_exponential(8, 0)).all()     # period log2 8 = 3
    assert (star(4)[0] == 0.25).all() and star(4)[1, 1] == 0.75 and star(4)[1, 2] == 0
    assert (star(4, center=2)[2] == 0.25).all()
    assert (complete(4) == 0.25).all()


@pytest.mark.parametrize("n", range(3, 41))
def test_ring_gap(n):
    assert spectral_gap(ring(n)) == pytest.approx((2 / 3) * (1 - math.cos(2 * math.pi / n)), abs=1e-13)


@pytest.mark.parametrize("n,gap", [(8, 0.5), (16, 0.4), (32, 1 / 3), (64, 2 / 7)])
def test_static_exponential_gap(n, gap):
    assert spectral_gap(exponential(n)) == pytest.approx(2 / (1 + math.log2(n)), abs=1e-13)
    assert spectral_gap(exponential(n)) == pytest.approx(gap, abs=1e-13)


@pytest.mark.parametrize("rows,cols", [(3, 3), (3, 4), (4, 4), (4, 6), (5, 5), (3, 7)])
def test_torus_gap(rows, cols):
    """W = (I + ring adjacency (x) I + I (x) ring adjacency)/5: eigenvalues
    (1 + 2 cos(2 pi a/rows) + 2 cos(2 pi b/cols))/5."""
    lam = [(1 + 2 * math.cos(2 * math.pi * a / rows) + 2 * math.cos(2 * math.pi * b / cols)) / 5
           for a in range(rows) for b in range(cols) if (a, b) != (0, 0)]
    rho = max(map(abs, lam))
    assert spectral_gap(torus(rows * cols, rows=rows)) == pytest.approx(1 - rho, abs=1e-13)


@pytest.mark.parametrize("n", [3, 4, 9, 20])
def test_star_and_complete_gaps(n):
    assert spectral_gap(star(n)) == pytest.approx(1 / n, abs=1e-13)
    assert spectral_gap(complete(n)) == pytest.approx(1.0, abs=1e-13)


def test_gap_shrinks_ring_torus_exponential():
    n = 64
    assert spectral_gap(ring(n)) < spectral_gap(torus(n)) < spectral_gap(exponential(n))


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("start", [0, 1, 5])
def test_one_peer_exponential_averages_exactly_after_log2_n_rounds(n, start):
    tau = int(math.log2(n))
    product = np.eye(n)
    for k in range(start, start + tau):
        product = one_peer_exponential(n, k) @ product
    assert np.max(np.abs(product - 1.0 / n)) == 0.0
    assert Topology("one-peer-exponential", n).rate() == 0.0


def test_one_peer_exponential_is_not_exact_when_n_is_not_a_power_of_two():
    n = 6
    product = np.eye(n)
    for k in range(3):
        product = one_peer_exponential(n, k) @ product
    assert np.max(np.abs(product - 1.0 / n)) > 0.01
    assert 0 < Topology("one-peer-exponential", n).rate() < 1


def test_torus_shape_and_errors():
    assert torus_shape(12) == (3, 4) and torus_shape(16) == (4, 4) and torus_shape(8) == (2, 4)
    assert torus_shape(12, rows=2) == (2, 6)
    with pytest.raises(ValueError, match=r"n=7 is prime.*rows\*cols with rows, cols >= 2.*"
                                         r"ring\(7\).*6 or 8"):
        torus(7)
    with pytest.raises(ValueError, match="rows=5 must be an integer >= 2 dividing n=12"):
        torus(12, rows=5)
    with pytest.raises(ValueError, match="rows=12 .* cols = n/rows >= 2"):
        torus(12, rows=12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="ring: the number of workers n must be an integer >= 1, got 0"):
        ring(0)
    with pytest.raises(ValueError, match="unknown topology 'hypercube'; choose one of ring, torus"):
        Topology("hypercube", 4)
    with pytest.raises(TypeError, match="topology 'ring' takes no option.*rows"):
        mixing_matrix("ring", 4, rows=2)
    with pytest.raises(ValueError, match="iteration k must be an integer >= 0, got -1"):
        one_peer_exponential(4, -1)
    with pytest.raises(ValueError, match="star: center must be a rank in 0..3, got 4"):
        star(4, center=4)
    with pytest.raises(ValueError, match="column 0 sums to"):
        check_mixing_matrix([[0.5, 0.5], [0.6, 0.4]])
    with pytest.raises(ValueError, match="changes every iteration.*use rate"):
        Topology("one-peer-exponential", 8).spectral_gap()


@st.composite
def _undirected_graphs(draw):
    n = draw(st.integers(1, 9))
    bits = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
    a = np.array(bits, dtype=bool).reshape(n, n)
    return a | a.T


@given(_undirected_graphs())
def test_metropolis_hastings_is_a_symmetric_mixing_matrix(adjacency):
    w = metropolis_hastings(adjacency)
    check_mixing_matrix(w, atol=1e-14)
    assert (w == w.T).all()
    off = ~np.eye(len(w), dtype=bool)
    assert ((w[off] > 0) == adjacency[off]).all()     # weights exactly on the edges


@pytest.mark.parametrize("name,n", CASES)
def test_neighbors_read_off_the_matrix(name, n):
    topo = Topology(name, n)
    for k in range(topo.period):
        w = topo.matrix(k)
        for i in range(n):
            nb = topo.neighbors(i, k)
            assert list(nb.sources) == sorted(nb.sources) and i not in nb.sources
            assert nb.self_weight == w[i, i] and nb.weights == tuple(w[i, j] for j in nb.sources)
            assert sum(nb.weights) + nb.self_weight == pytest.approx(1.0, abs=1e-15)
            for j in nb.dests:                  # j in dests(i) <=> i in sources(j)
                assert i in topo.neighbors(j, k).sources
            assert sorted(j for j in range(n) if i in topo.neighbors(j, k).sources) == list(nb.dests)


def _gossip_rows(comm, xs, topo, k):
    return gossip(comm, xs[comm.rank], topo, k)


@pytest.mark.parametrize("name,n", [(name, n) for name in TOPOLOGIES
                                    for n in ({"torus": [8, 9]}.get(name, [1, 5, 8]))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gossip_through_simcomm_is_w_times_x(name, n, dtype):
    """Each worker's gossip is its row of W X, summed in the documented order (self, then sources
    ascending), bit for bit."""
    topo = Topology(name, n)
    xs = np.random.default_rng(n).standard_normal((n, 3, 4)).astype(dtype)
    for k in range(topo.period + 1):
        out = np.stack(SimComm(n).run(_gossip_rows, xs, topo, k))
        assert out.dtype == dtype
        w = topo.matrix(k)
        np.testing.assert_allclose(out.reshape(n, -1), w @ xs.reshape(n, -1).astype(np.float64),
                                   rtol=0, atol=1e-13 if dtype == np.float64 else 1e-5)
        for i in range(n):
            ref = float(w[i, i]) * xs[i]
            for j in range(n):
                if j != i and w[i, j] != 0:
                    ref += float(w[i, j]) * xs[j]   # in x's dtype, as gossip computes
            assert (out[i] == ref).all()


def _gossip_bytes(comm, topo):
    comm.reset_counters()
    gossip(comm, np.ones(100), topo, 0)
    return comm.bytes_sent, comm.bytes_received


@pytest.mark.parametrize("name,degree", [("ring", 2), ("exponential", 3), ("one-peer-exponential", 1),
                                         ("torus", 3), ("complete", 7)])
def test_gossip_sends_one_copy_per_neighbour(name, degree):
    for sent, received in SimComm(8).run(_gossip_bytes, Topology(name, 8)):
        assert sent == received == degree * 800


def test_gossip_refuses_a_topology_of_another_size():
    with pytest.raises(Exception, match=r"is for 4 workers, the communicator has 2"):
        SimComm(2).run(_gossip_rows, np.zeros((2, 3)), Topology("ring", 4), 0)


def _repeated_gossip(comm, xs, topo, rounds):
    x = xs[comm.rank]
    for k in range(rounds):
        x = gossip(comm, x, topo, k)
    return x


@pytest.mark.parametrize("name,n", [("ring", 8), ("ring", 12), ("torus", 9), ("exponential", 8),
                                    ("exponential", 6), ("star", 6)])
def test_consensus_error_decays_at_rate_rho(name, n):
    """||X_k - 1 xbar||_F <= rho^k ||X_0 - 1 xbar||_F, and a random start decays at that rate
    (W is normal, so ||(W - J)^k|| = rho^k)."""
    topo = Topology(name, n)
    rho = topo.rate()
    xs = np.random.default_rng(0).standard_normal((n, 20))
    mean = xs.mean(axis=0)
    initial = np.linalg.norm(xs - mean)
    rounds = 25
    for k in (1, 5, rounds):
        x = np.stack(SimComm(n).run(_repeated_gossip, xs, topo, k))
        np.testing.assert_allclose(x.mean(axis=0), mean, atol=1e-14)   # the average is kept
        err = np.linalg.norm(x - mean)
        assert err <= rho ** k * initial * (1 + 1e-9)
    assert (err / initial) ** (1 / rounds) > 0.9 * rho
