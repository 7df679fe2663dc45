"""Min-cut machinery (flows.min_cut) against brute force, and the recursive min-cut bisection."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dags import random_dags
from partition.algorithms.flows import IGNORED, REGION, SINK, SOURCE, flow_refine, min_cut
from partition.algorithms.hypergraph import Caps, from_dag, loads, objective
from partition.algorithms.mincut import mincut, mincut_partition
from partition.api import partition
from partition.cluster import uniform
from partition.problem import Problem
from reference_volume import acyclic as is_acyclic
from reference_volume import granular, granular_dags, load_caps, loads as reference_loads
from reference_volume import step_volume


def small_dag(rng, n):
    src, dst = [], []
    for v in range(1, n):
        for u in rng.choice(v, size=min(v, int(rng.integers(1, 3))), replace=False):
            src.append(u)
            dst.append(v)
    weight = rng.integers(1, 50, n).astype(float)
    return from_dag(n, np.array(src), np.array(dst), weight, np.ones(n))


def two_way_cut(hg, label, source_side):
    """Weight of nets with a pin on each side, pins of IGNORED nodes dropped."""
    total = 0.0
    for e in range(hg.num_nets):
        pins = [p for p in hg.net_pins[hg.net_ptr[e]:hg.net_ptr[e + 1]] if label[p] != IGNORED]
        sides = {bool(source_side[p]) for p in pins}
        if len(sides) == 2:
            total += hg.net_weight[e]
    return total



@pytest.mark.parametrize("acyclic", [False, True])
def test_min_cut_equals_brute_force(acyclic):
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(5, 11))
        hg = small_dag(rng, n)
        label = np.full(n, REGION, dtype=np.int8)
        label[0] = SOURCE
        label[n - 1] = SINK
        if n > 6:
            label[int(rng.integers(1, n - 1))] = IGNORED
        region = np.flatnonzero(label == REGION)
        best = np.inf
        for bits in itertools.product([False, True], repeat=len(region)):
            side = label == SOURCE
            side[region] = bits
            if acyclic and not closed_under_predecessors_among(hg, side, label):
                continue
            best = min(best, two_way_cut(hg, label, side))
        lo, hi, _ = min_cut(hg, label, acyclic=acyclic)
        for found in (lo, hi):
            side = found | (label == SOURCE)
            assert two_way_cut(hg, label, side) == best
            if acyclic:
                assert closed_under_predecessors_among(hg, side, label)
        assert (lo <= hi).all()  # the smallest source side lies inside the largest


def closed_under_predecessors_among(hg, side, label):
    """No edge from the sink side into the source side, among non-ignored nodes."""
    s, t = hg.edges()
    live = (label[s] != IGNORED) & (label[t] != IGNORED)
    return not (side[t] & ~side[s] & live).any()


def test_flow_refinement_moves_a_boundary_to_the_lightest_cut():
    # a chain with one light link inside the balance window; a split two nodes off it gets fixed
    n = 40
    weight = np.full(n, 100.0)
    weight[21] = 1.0
    hg = from_dag(n, np.arange(n - 1), np.arange(1, n), weight, np.ones(n))
    part = (np.arange(n) >= 20).astype(np.int64)
    caps = Caps(np.full(2, 22.0), np.full(2, np.inf))
    refined = flow_refine(hg, part, caps, acyclic=True)
    assert objective(hg, refined, 2) == 1.0
    assert (refined == (np.arange(n) >= 22)).all()


def test_mincut_partition_finds_planted_cuts_and_keeps_stage_order():
    n, k = 64, 4
    weight = np.full(n, 100.0)
    light = [15, 31, 47]
    weight[light] = 1.0
    hg = from_dag(n, np.arange(n - 1), np.arange(1, n), weight, np.ones(n))
    caps = Caps(np.full(k, n / k * 1.1), np.full(k, np.inf))
    for acyclic in (False, True):
        part = mincut_partition(hg, caps, acyclic=acyclic)
        assert objective(hg, part, k) == 3.0
        assert (np.diff(part) >= 0).all()


@settings(max_examples=25, deadline=None)
@given(st.one_of(random_dags(max_ops=14), granular_dags()), st.integers(2, 4), st.booleans())
def test_mincut_valid_balanced_and_acyclic_on_random_dags(graph, k, acyclic):
    p = Problem.build(graph, uniform(k), epsilon=0.1, acyclic=acyclic)
    a = mincut(p).assignment
    assert a.shape == (len(graph.nodes),) and a.min() >= 0 and a.max() < k
    caps = load_caps(graph, k, 0.1)
    if acyclic:
        assert is_acyclic(graph, a, k)
    if granular(graph, k, 0.1):  # then a balanced placement exists in any topological order
        assert (reference_loads(graph, a, k) <= caps * (1 + 1e-9)).all()
        placed = partition(graph, uniform(k), algorithm="mincut", epsilon=0.1, acyclic=acyclic)
        assert placed.metrics.step_volume == step_volume(graph, placed.assignment)
        assert (placed.metrics.memory <= uniform(k).memory).all()


def test_mincut_respects_pins():
    n, k = 30, 2
    hg = from_dag(n, np.arange(n - 1), np.arange(1, n), np.full(n, 5.0), np.ones(n),
                  fixed=np.where(np.arange(n) == 3, 1, -1))
    caps = Caps(np.full(k, n / k * 1.2), np.full(k, np.inf))
    part = mincut_partition(hg, caps, acyclic=False)
    assert part[3] == 1
    assert (loads(hg, part, k)[0] <= caps.load).all()
