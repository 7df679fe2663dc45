"""METIS and Mt-KaHyPar wrappers: same caps, pins, our metrics, clear errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dags import random_dags
from partition.algorithms.hypergraph import Caps, from_dag, loads, objective
from partition.algorithms.peers import (_require, metis, metis_partition, mtkahypar,
                                        mtkahypar_partition)
from partition.api import partition
from partition.cluster import Device, heterogeneous, uniform
from partition.errors import PlacementError
from partition.problem import Problem
from peers_installed import algorithm, needs
from reference_volume import granular, granular_dags, load_caps, loads as reference_loads
from reference_volume import step_volume
from test_multilevel import layered_graph, planted


@pytest.mark.parametrize("fn", [algorithm("metis", metis_partition),
                                algorithm("mtkahypar", mtkahypar_partition)])
def test_peers_find_the_planted_partition_within_caps(fn):
    hg, truth = planted(seed=1)
    caps = Caps(np.full(4, hg.n / 4 * 1.1), np.full(4, np.inf))
    part = fn(hg, caps, 0)
    assert (loads(hg, part, 4)[0] <= caps.load).all()
    assert objective(hg, part, 4) == objective(hg, truth, 4)


@needs("metis", "mtkahypar")
@settings(max_examples=20, deadline=None)
@given(st.one_of(random_dags(max_ops=14), granular_dags()), st.integers(2, 4),
       st.sampled_from(["metis", "mtkahypar"]))
def test_peers_valid_and_balanced_on_random_dags(graph, k, name):
    p = Problem.build(graph, uniform(k), epsilon=0.1)
    a = {"metis": metis, "mtkahypar": mtkahypar}[name](p).assignment
    assert a.shape == (len(graph.nodes),) and a.min() >= 0 and a.max() < k
    caps = load_caps(graph, k, 0.1)
    if granular(graph, k, 0.1):
        assert (reference_loads(graph, a, k) <= caps * (1 + 1e-9)).all()
        placed = partition(graph, uniform(k), algorithm=name, epsilon=0.1)
        assert placed.metrics.step_volume == step_volume(graph, placed.assignment)


@pytest.mark.parametrize("name", [algorithm("metis"), algorithm("mtkahypar")])
def test_peers_honour_pins_and_heterogeneous_caps(name):
    g = layered_graph()
    cluster = heterogeneous([Device("slow", 1e12, 2**30), Device("fast", 3e12, 2**30)])
    pins = {"w0": "fast", "w3": "slow"}
    placed = partition(g, cluster, algorithm=name, epsilon=0.1, pins=pins)
    names = list(placed.node_names)
    assert placed.assignment[names.index("w0")] == 1 and placed.assignment[names.index("w3")] == 0
    assert placed.metrics.imbalance <= 1.1 + 1e-9


def test_peers_refuse_acyclic_and_name_the_missing_extra():
    p = Problem.build(layered_graph(), uniform(2), acyclic=True)
    with pytest.raises(PlacementError, match="acyclic"):
        mtkahypar(p)
    with pytest.raises(PlacementError, match=r"pip install modelcut\[peers\]"):
        _require("a_package_that_is_not_installed")


@pytest.mark.parametrize("fn", [algorithm("metis", metis_partition),
                                algorithm("mtkahypar", mtkahypar_partition)])
def test_peers_split_a_chain_into_three_runs(fn):
    n = 12
    hg = from_dag(n, np.arange(n - 1), np.arange(1, n), np.full(n, 8.0), np.ones(n))
    caps = Caps(np.full(3, n / 3 * 1.1), np.full(3, np.inf))
    part = fn(hg, caps, 0)
    assert objective(hg, part, 3) == 16.0  # two chain links cut
