"""Load packing: the least max load ratio equals brute force; auto finds a packing the greedy
repairs miss; impossible caps are reported with the smallest epsilon and device counts."""
import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from dags import chain, random_dags
from partition.algorithms import packing
from partition.algorithms.hypergraph import Caps, from_problem, loads as hg_loads
from partition.algorithms.peers import mtkahypar_partition
from partition.api import partition
from partition.cluster import uniform
from partition.errors import PlacementError
from partition.problem import Problem
from peers_installed import needs
from reference_volume import acyclic, load_caps, loads


def brute_ratio(graph, k, is_acyclic) -> float:
    """min over all k**n placements of max_d load_d / base, base = max(mean, largest)."""
    base = load_caps(graph, k, 0.0)
    best = np.inf
    for a in itertools.product(range(k), repeat=len(graph.nodes)):
        if is_acyclic and not acyclic(graph, a, k):
            continue
        best = min(best, float((loads(graph, a, k) / base).max()))
    return best


@settings(max_examples=25, deadline=None)
@given(random_dags(max_sources=3, max_ops=5), st.integers(2, 3), st.booleans())
def test_least_ratio_equals_brute_force(graph, k, is_acyclic):
    assume(loads(graph, range(len(graph.nodes)), len(graph.nodes)).sum() > 0)
    problem = Problem.build(graph, uniform(k), epsilon=0.1, acyclic=is_acyclic)
    found = packing.least_ratio(problem)
    expected = brute_ratio(graph, k, is_acyclic)
    assert found.exact
    assert found.upper == pytest.approx(expected, rel=1e-9)
    base = load_caps(graph, k, 0.0)
    assert (loads(graph, found.assignment, k) / base).max() == pytest.approx(expected, rel=1e-9)
    if is_acyclic:
        assert acyclic(graph, found.assignment, k)


def test_four_equal_layers_on_three_devices_name_the_smallest_epsilon_and_device_counts():
    # every op requires grad: 30 training FLOPs each, 120 in all. On 3 devices the mean is 40
    # and the cap 44, so two layers (60) never share a device: the best is 60 / 40 = 1.5.
    # On 2 devices (cap 66) and 4 devices (cap 33) one fits.
    g = chain([10, 10, 10, 10])
    with pytest.raises(PlacementError) as err:
        partition(g, uniform(3), epsilon=0.1)
    message = str(err.value)
    assert "no placement of these loads on 3 devices fits epsilon=0.1" in message
    assert "smallest epsilon that admits one is 0.5," in message
    assert "2 or 4 devices at epsilon=0.1" in message
    placed = partition(g, uniform(3), epsilon=0.5)
    assert placed.metrics.imbalance == pytest.approx(1.5)


def test_acyclic_needs_more_epsilon_than_any_placement():
    # a(30) -> b(60) -> c(30) on 2 devices (mean 60): {a, c} | {b} is exact but cyclic; the
    # acyclic splits {a} | {b, c} and {a, b} | {c} put 90 on a device: ratio 1.5
    g = chain([10, 20, 10])
    assert partition(g, uniform(2), epsilon=0.0).metrics.imbalance == pytest.approx(1.0)
    with pytest.raises(PlacementError) as err:
        partition(g, uniform(2), epsilon=0.1, acyclic=True)
    assert "no acyclic placement of these loads on 2 devices" in str(err.value)
    assert "smallest epsilon that admits one is 0.5" in str(err.value)


def test_closest_fit_keeps_the_most_nodes_in_place():
    # loads 15, 15, 12, 9, 9 (x3 of 5, 5, 4, 3, 3) on 2 devices at epsilon 0: only
    # {15, 15} | {12, 9, 9}. From [0, 0, 0, 1, 1] the packing that keeps 4 nodes in place
    # moves the 12 (the other labelling keeps 1).
    g = chain([5, 5, 4, 3, 3])
    problem = Problem.build(g, uniform(2), epsilon=0.0)
    start = np.array([0, 0, 0, 0, 0, 1, 1])           # x, w, then v0..v4
    fit = packing.closest_fit(problem, start)
    assert fit[2:].tolist() == [0, 0, 1, 1, 1]
    assert loads(g, fit, 2).tolist() == [30.0, 30.0]


def test_auto_finds_a_tight_packing_beyond_the_ilp():
    # 3 x 9, 6 x 7, 6 x 6 (x 1000 FLOPs) on 3 devices at epsilon 0: each device must hold
    # exactly 9 + 7 + 7 + 6 + 6 = 35; 47 weightless ops keep the ILP out (n > 60)
    flops = [f * 1000 for f in [9] * 3 + [7] * 6 + [6] * 6] + [0] * 47
    g = chain(flops)
    assert len(g.nodes) > 60
    placed = partition(g, uniform(3), epsilon=0.0)
    assert loads(g, placed.assignment, 3).tolist() == [105000.0] * 3


@needs("mtkahypar")
def test_mtkahypar_block_caps_hold_the_rounded_total_at_epsilon_zero():
    # integer scaling rounds node weights and caps separately; at epsilon 0 the block caps
    # must still hold the scaled total (Mt-KaHyPar rejects the input otherwise)
    rng = np.random.default_rng(3)
    g = chain(rng.choice([30, 50, 70], size=64).tolist())
    hg, caps = from_problem(Problem.build(g, uniform(3), epsilon=0.0))
    part = mtkahypar_partition(hg, caps, 0)
    assert part.min() >= 0 and part.max() < 3
    scaled = Problem.build(g, uniform(8), epsilon=0.1)
    hg8, caps8 = from_problem(scaled)
    hg8 = type(hg8)(n=hg8.n, net_ptr=hg8.net_ptr, net_pins=hg8.net_pins,
                    net_weight=hg8.net_weight * 1e12, node_weight=hg8.node_weight * 1e9,
                    node_mem=hg8.node_mem, fixed=hg8.fixed)
    caps8 = Caps(caps8.load * 1e9, caps8.memory)
    part = mtkahypar_partition(hg8, caps8, 0)
    assert (hg_loads(hg8, part, 8)[0] <= caps8.load * 1.02).all()     # FLOPs beyond int32
