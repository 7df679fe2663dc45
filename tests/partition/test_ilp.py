"""The exact MIP against brute force over all k**n placements of graphs with at most 10 nodes."""
import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from autodiff.ir import Graph, Node
from dags import chain, random_dags, seeded_dag
from partition.algorithms.ilp import ilp
from partition.api import partition
from partition.cluster import Device, Link, heterogeneous, uniform
from partition.cost import graph_arrays, memory_per_device
from partition.problem import Problem
from peers_installed import algorithm
from reference_volume import brute_force, load_caps, loads, step_volume, time_weighted_volume


def fits_caps(graph, a, caps):
    return (loads(graph, a, len(caps)) <= caps + 1e-9).all()


@settings(max_examples=20, deadline=None)
@given(random_dags(max_sources=3, max_ops=7), st.sampled_from([2, 3]), st.booleans())
def test_ilp_equals_brute_force(graph, k, acyclic):
    if k == 3 and len(graph.nodes) > 7:
        k = 2
    caps = load_caps(graph, k, 0.1)
    best = brute_force(graph, k, caps, is_acyclic=acyclic)
    result = ilp(Problem.build(graph, uniform(k), epsilon=0.1, acyclic=acyclic))
    if best is None:  # no balanced placement exists; the MIP finds none either
        assert not result.optimal
        return
    assert result.optimal
    assert step_volume(graph, result.assignment) == best
    assert result.bound <= best + 1e-6
    assert fits_caps(graph, result.assignment, caps)


def diamond_graph():
    """x -> a -> {b, c} -> d -> e, with a param on a: small enough to enumerate with k = 3."""
    nodes = [Node("x", "input", (), (64,), flops=0), Node("w", "param", (), (512,), flops=0),
             Node("a", "f", ("x", "w"), (128,), flops=10), Node("b", "f", ("a",), (32,), flops=10),
             Node("c", "f", ("a",), (256,), flops=10), Node("d", "f", ("b", "c"), (16,), flops=10),
             Node("e", "f", ("d", "a"), (8,), flops=10)]
    return Graph(nodes, ["e"], name="diamond")


def test_ilp_acyclic_on_heterogeneous_devices_uses_stage_positions():
    g = diamond_graph()
    cluster = heterogeneous([Device("a", 1e12, 2**30), Device("b", 2e12, 2**30),
                             Device("c", 1e12, 2**30)])
    p = Problem.build(g, cluster, epsilon=0.5, acyclic=True, objective="volume")
    result = ilp(p)
    best = brute_force(g, 3, p.load_caps, is_acyclic=True)
    assert result.optimal and step_volume(g, result.assignment) == best


def test_ilp_time_objective_equals_brute_force():
    g = diamond_graph()
    devices = [Device(f"d{i}", 1e12, 2**30) for i in range(3)]
    cluster = heterogeneous(devices, {("d0", "d1"): Link(1e11, 1e-6), ("d1", "d2"): Link(1e9, 1e-5),
                                      ("d0", "d2"): Link(5e9, 2e-5)})
    p = Problem.build(g, cluster, epsilon=0.5, objective="time")

    def cost(graph, a):
        return time_weighted_volume(graph, a, cluster.bandwidth, cluster.latency)

    best = brute_force(g, 3, p.load_caps, cost=cost)
    result = ilp(p)
    assert result.optimal
    assert cost(g, result.assignment) == pytest.approx(best, rel=1e-9)


def test_ilp_memory_caps_count_parameters_and_receive_buffers():
    # 4 params of 4 KiB (x2 with their gradients under SGD) on 2 devices of 20 KiB: at most
    # two params per device, whatever the volume would prefer
    nodes = [Node("x", "input", (), (16,), flops=0)]
    prev = "x"
    for i in range(4):
        nodes += [Node(f"w{i}", "param", (), (1024,), flops=0),
                  Node(f"h{i}", "f", (prev, f"w{i}"), (16,), flops=1)]
        prev = f"h{i}"
    g = Graph(nodes, [prev])
    cluster = uniform(2, memory=20 * 1024)
    p = Problem.build(g, cluster, epsilon=1.0)
    arrays = graph_arrays(g)

    def memory_ok(a):
        memory = memory_per_device(arrays, np.array(a, dtype=np.int32), 2, 0)
        return (memory <= cluster.memory).all()

    best = brute_force(g, 2, p.load_caps, feasible=memory_ok)
    result = ilp(p)
    assert result.optimal and memory_ok(result.assignment)
    assert step_volume(g, result.assignment) == best
    placed = partition(g, cluster, algorithm="ilp", epsilon=1.0)
    assert placed.metrics.step_volume == best


def test_ilp_honours_pins():
    g = chain([5] * 6)
    pins = {"v0": 1, "v5": 0}
    p = Problem.build(g, uniform(2), epsilon=0.5, pins=pins)
    result = ilp(p)
    best = brute_force(g, 2, p.load_caps, pins=pins)
    assert result.optimal and step_volume(g, result.assignment) == best
    names = [n.name for n in g.nodes]
    assert result.assignment[names.index("v0")] == 1 and result.assignment[names.index("v5")] == 0


@functools.cache
def ilp_on_seeded_dag():
    """The ILP's placement of seeded_dag(10) on 2 devices (shared by the parametrized test)."""
    g = seeded_dag(10)
    return g, partition(g, uniform(2), algorithm="ilp", time_limit=30)


@pytest.mark.parametrize("name", ["multilevel", algorithm("mtkahypar"), algorithm("metis"),
                                  "mincut"])
def test_ilp_optimum_is_no_worse_than_any_other_placement(name):
    # with the multilevel start HiGHS once misreported its objective and stopped "optimal" at
    # V = 7240 on this graph, while auto (Mt-KaHyPar) found 6936 within the same caps
    g, exact = ilp_on_seeded_dag()
    assert exact.optimal and exact.bound == exact.metrics.step_volume
    other = partition(g, uniform(2), algorithm=name)
    assert exact.metrics.step_volume <= other.metrics.step_volume, name
