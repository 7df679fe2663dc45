"""pipeline_dp: hand cases, heterogeneous devices against a brute force over every chain and
device order, fan-out, caps, pins, memory, coarsening. Exactness on random DAGs is in
test_pipeline_dp_exact.py."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from autodiff.ir import Graph, Node
from dags import chain, random_dags
from partition.algorithms import ALGORITHMS
from partition.algorithms.pipeline_dp import device_orders, pipeline_dp
from partition.cluster import Cluster, Device, uniform
from partition.errors import PlacementError
from partition.problem import Problem
from partition.stage_time import pipeline_memory, stage_times
from test_pipeline_dp_exact import chain_assignments


def odd_cluster(speeds, bandwidth, latency):
    k = len(speeds)
    devices = tuple(Device(f"d{i}", s, 2**30) for i, s in enumerate(speeds))
    return Cluster(devices, np.reshape(bandwidth, (k, k)), np.reshape(latency, (k, k)))


def brute_force(graph, cluster, m):
    """Smallest max_d T_d over every chain of ideals on every order of the devices."""
    chains = chain_assignments(graph, cluster.k)
    best = np.inf
    for perm in itertools.permutations(range(cluster.k)):
        for row in np.asarray(perm)[chains]:
            best = min(best, stage_times(graph, row, cluster, micro_batches=m)
                       .time_per_micro_batch)
    return best


def test_registered():
    assert ALGORITHMS["pipeline_dp"] is pipeline_dp


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
    result = pipeline_dp(Problem.build(g, cluster, objective="throughput"))
    expected = brute_force(g, cluster, 1)
    assert result.info["time_per_micro_batch"] == pytest.approx(expected)
    assert stage_times(g, result.assignment, cluster).time_per_micro_batch == \
        pytest.approx(expected)
    assert result.optimal


def test_chain_by_hand():
    # v0..v3 forward 10 FLOPs each (x3 for training = 30), speed 30 FLOP/s: 1 s per op.
    # Every tensor is 400 bytes at 800 B/s: 0.5 s per transfer each way. {v0, v1} | {v2, v3}:
    # stage 0 computes 2 s, sends v1 (0.5 s), receives its gradient (0.5 s): 3 s, stage 1 the
    # same. One device: 4 s; a 1 | 3 split: 3 + 0.5 + 0.5 = 4 s.
    g = chain([10] * 4)
    cluster = uniform(2, flops=30.0, bandwidth=800.0, latency=0.0)
    result = pipeline_dp(Problem.build(g, cluster, objective="throughput"))
    assert result.info["time_per_micro_batch"] == pytest.approx(3.0)
    placed = {n.name: int(d) for n, d in zip(g.nodes, result.assignment)}
    assert [placed[f"v{i}"] for i in range(4)] == [0, 0, 1, 1]
    assert placed["x"] == placed["w"] == 0 and result.optimal


def test_ties_go_to_the_smaller_volume():
    # At 400 B/s a split costs 2 + 1 + 1 = 4 s, as much as one device: V decides (0 bytes).
    g = chain([10] * 4)
    cluster = uniform(2, flops=30.0, bandwidth=400.0, latency=0.0)
    result = pipeline_dp(Problem.build(g, cluster, objective="throughput"))
    assert result.info["time_per_micro_batch"] == pytest.approx(4.0)
    assert len(set(result.assignment.tolist())) == 1 and result.info["step_volume"] == 0


@settings(max_examples=25, deadline=None)
@given(random_dags(max_sources=3, max_ops=5),
       st.lists(st.sampled_from([1.0, 2.0, 5.0]), min_size=2, max_size=3),
       st.data(), st.integers(1, 2))
def test_random_dags_heterogeneous_match_brute_force(graph, speeds, data, m):
    k = len(speeds)
    bandwidth = data.draw(st.lists(st.sampled_from([10.0, 100.0]), min_size=k * k,
                                   max_size=k * k))
    latency = data.draw(st.lists(st.sampled_from([0.0, 0.1]), min_size=k * k, max_size=k * k))
    cluster = odd_cluster(speeds, bandwidth, latency)
    result = pipeline_dp(Problem.build(graph, cluster, objective="throughput",
                                       micro_batches=m))
    got = stage_times(graph, result.assignment, cluster, micro_batches=m)
    assert got.acyclic
    assert got.time_per_micro_batch == pytest.approx(brute_force(graph, cluster, m), rel=1e-9)


def test_device_order_heuristic_puts_fast_devices_on_wide_links():
    # devices 0 and 3 are fast and joined by a wide link; the given order separates them
    devices = tuple(Device(f"d{i}", s, 2**30) for i, s in enumerate([4.0, 1.0, 1.0, 4.0, 1.0]))
    bandwidth = np.full((5, 5), 10.0)
    bandwidth[0, 3] = bandwidth[3, 0] = 1000.0
    cluster = Cluster(devices, bandwidth, np.zeros((5, 5)))
    orders, complete = device_orders(cluster)
    assert not complete and (0, 3, 1, 2, 4) in orders
    # 8 ops of 120 training FLOPs: 30 s each on a fast device; 400-byte tensors: 0.4 s on
    # the wide link, 40 s elsewhere. Best: 4 ops on each fast device, 120 + 0.4 + 0.4 s.
    g = chain([40] * 8, nbytes=[400] * 8)
    result = pipeline_dp(Problem.build(g, cluster, objective="throughput"))
    assert result.info["time_per_micro_batch"] == pytest.approx(120.8)
    assert {cluster.device_names[d] for d in result.assignment} == {"d0", "d3"}


def test_memory_caps_with_in_flight_rule():
    # 8 ops, each keeps a 4000-byte activation; 1F1B with m = 4 keeps min(4, k' - i) copies
    g = chain([10] * 8, nbytes=[4000] * 8)
    cluster = uniform(4, flops=30.0, bandwidth=1e9, latency=0.0, memory=30_000)
    problem = Problem.build(g, cluster, objective="throughput", micro_batches=4)
    result = pipeline_dp(problem)
    memory = pipeline_memory(problem.arrays, result.assignment, 4, micro_batches=4)
    assert (memory <= 30_000).all()
    tight = uniform(2, flops=30.0, bandwidth=1e9, latency=0.0, memory=20_000)
    with pytest.raises(PlacementError, match="bytes on one device"):
        pipeline_dp(Problem.build(g, tight, objective="throughput", micro_batches=4))


def test_coarsened_past_the_ideal_budget():
    nodes = [Node("x", "input", (), (100,), flops=0)]
    previous = "x"
    for layer, f in enumerate([10, 40, 10, 20]):
        nodes.append(Node(f"w{layer}", "param", (), (100,), flops=0))
        for part in range(3):
            name = f"l{layer}_{part}"
            inputs = (previous, f"w{layer}") if part == 0 else (previous,)
            nodes.append(Node(name, "f", inputs, (100,), flops=f, group=f"layer{layer}"))
            previous = name
    g = Graph(nodes, [previous])
    cluster = uniform(2, flops=30.0, bandwidth=400.0, latency=0.0)
    exact = pipeline_dp(Problem.build(g, cluster, objective="throughput"))
    coarse = pipeline_dp(Problem.build(g, cluster, objective="throughput"), ideal_budget=5)
    assert exact.optimal and not exact.info["coarsened"]
    assert coarse.optimal is False and coarse.info["coarsened"] and coarse.info["units"] == 12
    # a chain: every prefix is in the coarse family, so nothing is lost here
    assert coarse.info["time_per_micro_batch"] == pytest.approx(
        exact.info["time_per_micro_batch"])
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




def test_auto_under_throughput_keeps_the_fastest_pipeline():
    from dags import seeded_dag
    from partition.algorithms.auto import auto
    from partition.algorithms.baselines import contiguous
    g = seeded_dag(7)
    cluster = uniform(4, flops=1e6, bandwidth=1e5, latency=1e-4)
    problem = Problem.build(g, cluster, objective="throughput", micro_batches=2, time_limit=3.0)
    chosen = auto(problem)
    t = stage_times(g, chosen.assignment, cluster, micro_batches=2)
    assert t.acyclic
    for other in (pipeline_dp(problem), contiguous(problem)):
        assert t.time_per_micro_batch <= stage_times(
            g, other.assignment, cluster, micro_batches=2).time_per_micro_batch * (1 + 1e-12)
    assert chosen.info["chosen"] in chosen.info["candidates"]


def test_throughput_is_not_rebalanced_and_ignores_epsilon():
    from dags import seeded_dag
    from partition.algorithms.baselines import contiguous
    from partition.api import partition
    g = seeded_dag(5)
    cluster = uniform(3, flops=1e6, bandwidth=1e5)
    raw = contiguous(Problem.build(g, cluster, epsilon=0.0)).assignment
    placed = partition(g, cluster, algorithm="contiguous", epsilon=0.0, objective="throughput")
    assert placed.info["rebalance_moves"] == 0
    assert placed.assignment.tolist() == raw.tolist()
    assert placed.info["pipeline"]["time_per_micro_batch"] == pytest.approx(
        stage_times(g, raw, cluster).time_per_micro_batch)
