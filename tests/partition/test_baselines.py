"""Baseline algorithms: round_robin, random, contiguous, layers (hand-checked on tiny graphs)."""
from hypothesis import given, settings, strategies as st

from autodiff.ir import Graph, Node
from dags import chain, random_dags
from partition.algorithms import ALGORITHMS
from partition.algorithms.baselines import contiguous, layers, random_placement, round_robin
from partition.cluster import Device, heterogeneous, uniform
from partition.metrics import compute_metrics
from partition.problem import Problem


def devices_of(graph, assignment):
    return {n.name: int(d) for n, d in zip(graph.nodes, assignment)}


def test_registry_names_the_baselines():
    assert {"round_robin", "random", "contiguous", "layers"} <= set(ALGORITHMS)


def test_round_robin_and_pins():
    g = chain([1] * 6)
    p = Problem.build(g, uniform(3), pins={"v4": 0, "x": "dev2"})
    # nodes: x w v0..v5 at positions 0..7 -> position mod 3, then the pins
    expected = [0, 1, 2, 0, 1, 2, 0, 1]
    expected[0], expected[6] = 2, 0
    assert round_robin(p).assignment.tolist() == expected


def test_random_is_seeded():
    g = chain([1] * 50)
    a = random_placement(Problem.build(g, uniform(4), seed=3)).assignment
    b = random_placement(Problem.build(g, uniform(4), seed=3)).assignment
    c = random_placement(Problem.build(g, uniform(4), seed=4)).assignment
    assert (a == b).all() and (a != c).any()
    assert set(a.tolist()) == {0, 1, 2, 3}


def test_contiguous_equal_blocks_and_sources_with_first_consumer():
    g = chain([10] * 8)
    a = devices_of(g, contiguous(Problem.build(g, uniform(4))).assignment)
    assert [a[f"v{i}"] for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert a["x"] == a["w"] == 0


def test_contiguous_shares_follow_device_speed():
    g = chain([10] * 8)
    c = heterogeneous([Device("slow", 1.0, 2**30), Device("fast", 3.0, 2**30)])
    a = devices_of(g, contiguous(Problem.build(g, c)).assignment)
    # a quarter of the load (2 of 8 equal ops) on the slow device
    assert [a[f"v{i}"] for i in range(8)] == [0, 0, 1, 1, 1, 1, 1, 1]


def test_contiguous_puts_late_parameters_next_to_their_use():
    nodes = [Node("x", "input", (), (4,), flops=0)]
    nodes += [Node(f"w{i}", "param", (), (4,), flops=0) for i in range(4)]
    previous = "x"
    for i in range(4):
        nodes.append(Node(f"h{i}", "f", (previous, f"w{i}"), (4,), flops=5))
        previous = f"h{i}"
    g = Graph(nodes, [previous])
    a = devices_of(g, contiguous(Problem.build(g, uniform(2))).assignment)
    assert [a[f"w{i}"] for i in range(4)] == [a[f"h{i}"] for i in range(4)] == [0, 0, 1, 1]


@settings(max_examples=40, deadline=None)
@given(random_dags(max_ops=14), st.integers(1, 5))
def test_contiguous_quotient_is_acyclic(graph, k):
    a = contiguous(Problem.build(graph, uniform(k))).assignment
    assert compute_metrics(graph, a, uniform(k)).acyclic


def layered_graph(params_per_group, group_sources=True):
    """One group per entry: a param of that many elements and one op reading it."""
    nodes = [Node("x", "input", (), (4,), flops=0)]
    previous = "x"
    for i, size in enumerate(params_per_group):
        nodes.append(Node(f"w{i}", "param", (), (size,), flops=0,
                          group=f"layer{i}" if group_sources else None))
        nodes.append(Node(f"h{i}", "f", (previous, f"w{i}"), (4,), flops=1,
                          group=f"layer{i}"))
        nodes.append(Node(f"a{i}", "g", (f"h{i}",), (4,), flops=1))   # ungrouped: joins h_i
        previous = f"a{i}"
    return Graph(nodes, [previous])


def test_layers_equal_parameter_counts():
    g = layered_graph([6, 2, 2, 2, 4, 8])
    a = devices_of(g, layers(Problem.build(g, uniform(2))).assignment)
    # 24 parameters: layers 0-3 (6+2+2+2=12) on device 0, layers 4-5 (4+8=12) on device 1
    assert [a[f"h{i}"] for i in range(6)] == [0, 0, 0, 0, 1, 1]
    assert [a[f"a{i}"] for i in range(6)] == [0, 0, 0, 0, 1, 1]
    assert [a[f"w{i}"] for i in range(6)] == [0, 0, 0, 0, 1, 1]


def test_layers_ungrouped_sources_join_their_consumer_layer():
    g = layered_graph([2, 2, 2, 2], group_sources=False)
    a = devices_of(g, layers(Problem.build(g, uniform(2))).assignment)
    assert [a[f"w{i}"] for i in range(4)] == [0, 0, 1, 1]
    assert [a[f"h{i}"] for i in range(4)] == [0, 0, 1, 1]


def test_layers_without_groups_splits_parameters_over_the_order():
    g = chain([1] * 4, param=False)
    nodes = list(g.nodes) + [Node("w", "param", (), (8,), flops=0),
                             Node("u", "f", ("v3", "w"), (4,), flops=1)]
    g = Graph(nodes, ["u"])
    a = devices_of(g, layers(Problem.build(g, uniform(2))).assignment)
    # the only parameter is read last: everything before its midpoint is on device 0
    assert a["w"] == a["u"]
    assert {a[f"v{i}"] for i in range(4)} == {0}
