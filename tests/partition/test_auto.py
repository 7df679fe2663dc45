"""auto: the best feasible placement among the applicable algorithms."""
import functools

import pytest
from hypothesis import given, settings, strategies as st

from dags import random_dags
from partition.algorithms import ALGORITHMS
from partition.algorithms.auto import auto
from partition.api import partition
from partition.cluster import hierarchical, uniform
from partition.problem import Problem
from peers_installed import algorithm
from reference_volume import acyclic as is_acyclic
from reference_volume import brute_force, granular, granular_dags, load_caps, loads, step_volume
from reference_volume import time_weighted_volume
from test_multilevel import layered_graph


def test_registry_has_the_p2_algorithms():
    assert {"multilevel", "mincut", "ilp", "metis", "mtkahypar", "auto"} <= set(ALGORITHMS)


@functools.cache
def auto_on_layers(k: int):
    """auto's placement of a 100-node layered graph on k devices (shared by the tests)."""
    g = layered_graph(clusters=5, width=5, depth=4)
    return g, partition(g, uniform(k), algorithm="auto")


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("name", ["multilevel", "mincut", algorithm("mtkahypar"),
                                  algorithm("metis")])
def test_auto_is_no_worse_than_each_candidate(name, k):
    g, chosen = auto_on_layers(k)
    other = partition(g, uniform(k), algorithm=name)
    assert chosen.metrics.step_volume <= other.metrics.step_volume, name
    assert chosen.metrics.imbalance <= 1.1 + 1e-9
    assert chosen.info["chosen"] in chosen.info["candidates"]


def test_auto_acyclic_is_acyclic_and_no_worse_than_contiguous_and_pipeline_dp():
    g = layered_graph(clusters=4, width=4, depth=4)
    chosen = partition(g, uniform(4), algorithm="auto", acyclic=True)
    assert is_acyclic(g, chosen.assignment, 4)
    for name in ("contiguous", "pipeline_dp"):
        assert chosen.metrics.step_volume <= partition(g, uniform(4), algorithm=name,
                                                       acyclic=True).metrics.step_volume
    assert "mtkahypar" not in chosen.info["candidates"]


@settings(max_examples=12, deadline=None)
@given(random_dags(max_sources=3, max_ops=6), st.booleans())
def test_auto_is_optimal_on_tiny_graphs(graph, acyclic):
    k = 2
    caps = load_caps(graph, k, 0.1)
    result = auto(Problem.build(graph, uniform(k), epsilon=0.1, acyclic=acyclic))
    best = brute_force(graph, k, caps, is_acyclic=acyclic)
    if best is not None:
        assert step_volume(graph, result.assignment) == best
        assert (loads(graph, result.assignment, k) <= caps * (1 + 1e-9)).all()
    if acyclic:
        assert is_acyclic(graph, result.assignment, k)


@settings(max_examples=10, deadline=None)
@given(st.one_of(random_dags(max_ops=14), granular_dags()), st.integers(2, 4), st.booleans())
def test_auto_valid_and_balanced_on_random_dags(graph, k, acyclic):
    p = Problem.build(graph, uniform(k), epsilon=0.1, acyclic=acyclic, time_limit=5)
    a = auto(p).assignment
    assert a.shape == (len(graph.nodes),) and a.min() >= 0 and a.max() < k
    caps = load_caps(graph, k, 0.1)
    if acyclic:
        assert is_acyclic(graph, a, k)
    if granular(graph, k, 0.1):
        assert (loads(graph, a, k) <= caps * (1 + 1e-9)).all()


def test_auto_uses_the_time_objective_on_a_hierarchical_cluster():
    g = layered_graph(clusters=4, width=5, depth=3)  # 65 nodes: above the ilp's limit
    cluster = hierarchical(2, 2, intra_bandwidth=300e9, inter_bandwidth=10e9)
    chosen = partition(g, cluster, algorithm="auto")
    assert chosen.info["objective"] == "time_volume"
    seconds = time_weighted_volume(g, chosen.assignment, cluster.bandwidth, cluster.latency)
    assert chosen.metrics.time_weighted_volume == pytest.approx(seconds, rel=1e-9)
    for name in ("multilevel", "mincut"):
        other = partition(g, cluster, algorithm=name)
        assert seconds <= other.metrics.time_weighted_volume * (1 + 1e-9)
