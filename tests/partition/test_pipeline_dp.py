"""pipeline_dp equals a brute force over every contiguous split (stage cost written out again)."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from autodiff.ir import Graph, Node
from dags import chain, random_dags
from partition.algorithms import ALGORITHMS
from partition.algorithms.base import pipeline_order
from partition.algorithms.pipeline_dp import pipeline_dp
from partition.cluster import Cluster, Device, uniform
from partition.metrics import compute_metrics
from partition.problem import Problem


def stage_cost(graph, order_names, i, j, d, cluster, m):
    """Cost of the stage holding order positions [i, j) on device d, by plain loops."""
    if i == j:
        return 0.0
    position = {name: p for p, name in enumerate(order_names)}
    grad, batch = {}, {}
    for n in graph.nodes:
        grad[n.name] = n.dtype.startswith("float") and (
            n.op == "param" or any(grad[x] for x in n.inputs))
        batch[n.name] = n.op == "input" or (n.op not in ("param", "const") and (
            not n.inputs or any(batch[x] for x in n.inputs)))
    consumers = {n.name: [] for n in graph.nodes}
    for n in graph.nodes:
        for x in set(n.inputs):
            consumers[x].append(n.name)
    load = forward = backward = 0.0
    for n in graph.nodes:
        times = m if batch[n.name] else 1
        p = position[n.name]
        used_at = [position[c] for c in consumers[n.name]]
        if i <= p < j:
            load += n.flops * (3 if grad[n.name] else 1) * times
            if any(u >= j for u in used_at):
                forward += n.nbytes * times
        if p < i and grad[n.name] and any(i <= u < j for u in used_at):
            backward += n.nbytes * times
    k = cluster.k
    after, before = min(d + 1, k - 1), max(d - 1, 0)
    cost = load / cluster.speeds[d]
    if forward:
        cost += cluster.latency[d, after] + forward / cluster.bandwidth[d, after]
    if backward:
        cost += cluster.latency[d, before] + backward / cluster.bandwidth[d, before]
    return cost


def brute_force(graph, order_names, cluster, m):
    """Smallest bottleneck over all ways to cut the order into k (possibly empty) stages."""
    n, k = len(order_names), cluster.k
    best = np.inf
    for cuts in itertools.combinations_with_replacement(range(n + 1), k - 1):
        bounds = (0,) + cuts + (n,)
        best = min(best, max(stage_cost(graph, order_names, bounds[d], bounds[d + 1], d,
                                        cluster, m) for d in range(k)))
    return best


def bottleneck_of(graph, order_names, assignment, cluster, m):
    """Bottleneck of a returned assignment, which must be monotone along the order."""
    stage = [int(assignment[graph.index[name]]) for name in order_names]
    assert stage == sorted(stage), "stages are not contiguous along the order"
    bounds = [stage.count(d) for d in range(cluster.k)]
    ends = np.concatenate([[0], np.cumsum(bounds)])
    return max(stage_cost(graph, order_names, ends[d], ends[d + 1], d, cluster, m)
               for d in range(cluster.k))


def order_names(graph):
    problem = Problem.build(graph, uniform(1))
    return [problem.arrays.names[v] for v in pipeline_order(problem.arrays)]


def odd_cluster(speeds, bandwidth, latency):
    k = len(speeds)
    devices = tuple(Device(f"d{i}", float(s), 2**40) for i, s in enumerate(speeds))
    return Cluster(devices, np.array(bandwidth, dtype=float).reshape(k, k),
                   np.array(latency, dtype=float).reshape(k, k))


def test_registered():
    assert ALGORITHMS["pipeline_dp"] is pipeline_dp


@pytest.mark.parametrize("k", [2, 3, 4])
def test_chain_matches_brute_force_on_uniform_devices(k):
    g = chain([30, 10, 50, 20, 20, 40], nbytes=[400, 800, 40, 400, 4000, 400])
    cluster = uniform(k, flops=100.0, bandwidth=1000.0, latency=0.05)
    result = pipeline_dp(Problem.build(g, cluster, epsilon=100.0))
    names = order_names(g)
    expected = brute_force(g, names, cluster, 1)
    assert result.info["bottleneck_seconds"] == pytest.approx(expected)
    assert bottleneck_of(g, names, result.assignment, cluster, 1) == pytest.approx(expected)


def fan_out_graph():
    """v0 (big tensor) is read by v1, v2, v3; v4 reads them all: cut tensors fan out."""
    nodes = [Node("x", "input", (), (100,), flops=0), Node("w", "param", (), (100,), flops=0),
             Node("v0", "f", ("x", "w"), (1000,), flops=20)]
    nodes += [Node(f"v{i}", "f", ("v0",), (10,), flops=20) for i in (1, 2, 3)]
    nodes.append(Node("v4", "f", ("v1", "v2", "v3", "v0"), (10,), flops=20))
    return Graph(nodes, ["v4"])


@pytest.mark.parametrize("k", [2, 3])
def test_fan_out_matches_brute_force(k):
    g = fan_out_graph()
    cluster = uniform(k, flops=60.0, bandwidth=4000.0, latency=0.01)
    result = pipeline_dp(Problem.build(g, cluster, epsilon=100.0))
    names = order_names(g)
    expected = brute_force(g, names, cluster, 1)
    assert result.info["bottleneck_seconds"] == pytest.approx(expected)
    assert bottleneck_of(g, names, result.assignment, cluster, 1) == pytest.approx(expected)


def test_chain_by_hand():
    # v0..v3 forward 10 FLOPs each (x3 for training = 30), speed 30 FLOP/s: 1 s per op.
    # Every tensor is 400 bytes at 400 B/s: 1 s per transfer each way.
    # Two stages {v0, v1} | {v2, v3}: 2 s compute + 1 s forward send (stage 0), or
    # 2 s + 1 s gradient back (stage 1) -> bottleneck 3 s. Alone: 4 s. 1|3 split: 3 + 1 = 4 s.
    g = chain([10] * 4)
    cluster = uniform(2, flops=30.0, bandwidth=400.0, latency=0.0)
    result = pipeline_dp(Problem.build(g, cluster, epsilon=100.0))
    assert result.info["bottleneck_seconds"] == pytest.approx(3.0)
    placed = {n.name: int(d) for n, d in zip(g.nodes, result.assignment)}
    assert [placed[f"v{i}"] for i in range(4)] == [0, 0, 1, 1]


@settings(max_examples=30, deadline=None)
@given(random_dags(max_sources=3, max_ops=5),
       st.lists(st.sampled_from([1.0, 2.0, 5.0]), min_size=2, max_size=3),
       st.data(), st.integers(1, 2))
def test_random_dags_heterogeneous_match_brute_force(graph, speeds, data, m):
    k = len(speeds)
    bandwidth = data.draw(st.lists(st.sampled_from([10.0, 100.0]), min_size=k * k,
                                   max_size=k * k))
    latency = data.draw(st.lists(st.sampled_from([0.0, 0.1]), min_size=k * k, max_size=k * k))
    cluster = odd_cluster(speeds, bandwidth, latency)
    result = pipeline_dp(Problem.build(graph, cluster, epsilon=1e6, micro_batches=m))
    names = order_names(graph)
    expected = brute_force(graph, names, cluster, m)
    assert result.info["bottleneck_seconds"] == pytest.approx(expected)
    assert bottleneck_of(graph, names, result.assignment, cluster, m) == pytest.approx(expected)
    assert compute_metrics(graph, result.assignment, cluster).acyclic


def test_caps_are_respected_when_possible():
    # a very slow link makes one device best (bottleneck 4 s), but caps of 1.1 * 60 allow
    # at most two of the four 30-FLOP ops per device
    g = chain([10] * 4)
    cluster = uniform(2, flops=30.0, bandwidth=1.0, latency=0.0)
    unconstrained = pipeline_dp(Problem.build(g, cluster, epsilon=100.0))
    assert len(set(unconstrained.assignment.tolist())) == 1
    problem = Problem.build(g, cluster, epsilon=0.1)
    result = pipeline_dp(problem)
    assert result.info["within_caps"]
    loads = np.bincount(result.assignment, weights=problem.weights, minlength=2)
    assert loads.tolist() == [60.0, 60.0]


def test_pins_are_honoured_in_the_split():
    g = chain([10] * 6)
    problem = Problem.build(g, uniform(3, flops=30.0, bandwidth=400.0, latency=0.0),
                            epsilon=100.0, pins={"v1": 2})
    result = pipeline_dp(problem)
    placed = {n.name: int(d) for n, d in zip(g.nodes, result.assignment)}
    assert placed["v1"] == 2 and result.info["pins_in_split"]
    # contiguous: everything after v1 is on the last device too
    assert all(placed[f"v{i}"] == 2 for i in range(1, 6))


def test_layer_groups_are_units_on_big_graphs():
    # four layers of three nodes; with max_units=4 each layer moves as a whole
    nodes = [Node("x", "input", (), (100,), flops=0)]
    previous = "x"
    flops = [10, 40, 10, 20]
    for layer, f in enumerate(flops):
        nodes.append(Node(f"w{layer}", "param", (), (100,), flops=0))
        for part in range(3):
            name = f"l{layer}_{part}"
            inputs = (previous, f"w{layer}") if part == 0 else (previous,)
            nodes.append(Node(name, "f", inputs, (100,), flops=f, group=f"layer{layer}"))
            previous = name
    g = Graph(nodes, [previous])
    cluster = uniform(2, flops=30.0, bandwidth=400.0, latency=0.0)
    result = pipeline_dp(Problem.build(g, cluster, epsilon=100.0), max_units=4)
    assert result.info["units"] == 4
    placed = {n.name: int(d) for n, d in zip(g.nodes, result.assignment)}
    per_layer = [{placed[f"l{layer}_{p}"] for p in range(3)} | {placed[f"w{layer}"]}
                 for layer in range(4)]
    assert all(len(devices) == 1 for devices in per_layer)
    # layer loads 3 * (30, 120, 30, 60) FLOP = 3, 12, 3, 6 s at 30 FLOP/s; one 400-byte
    # tensor crosses a cut (1 s each way). Best: layers {0, 1} | {2, 3}: max(15 + 1, 9 + 1) = 16
    assert [devices.pop() for devices in per_layer] == [0, 0, 1, 1]
    assert result.info["bottleneck_seconds"] == pytest.approx(16.0)
