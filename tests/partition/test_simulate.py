"""Step simulator: hand-computed timelines, pipeline bubbles, in-flight micro-batches, errors."""
import numpy as np
import pytest

from autodiff.ir import Graph, Node
from dags import chain
from partition.cluster import uniform
from partition.errors import PlacementError
from partition.simulate import simulate


def two_device_graph(w2_first=False):
    """x, w1 -> h (100 FLOPs); h, w2 -> y (200 FLOPs); every tensor 100 float32 = 400 bytes."""
    w2 = [Node("w2", "param", (), (100,), flops=0)]
    nodes = [Node("x", "input", (), (100,), flops=0), Node("w1", "param", (), (100,), flops=0)]
    nodes += w2 if w2_first else []
    nodes.append(Node("h", "f", ("x", "w1"), (100,), flops=100))
    nodes += [] if w2_first else w2
    nodes.append(Node("y", "g", ("h", "w2"), (100,), flops=200))
    return Graph(nodes, ["y"])


def placed(graph, mapping):
    return np.array([mapping[n.name] for n in graph.nodes], dtype=np.int32)


# 100 FLOP/s per device; a 400-byte tensor takes 0.5 s latency + 400 / 400 s = 1.5 s
CLUSTER = uniform(2, flops=100.0, bandwidth=400.0, latency=0.5)


def test_two_devices_by_hand():
    g = two_device_graph()
    r = simulate(g, placed(g, dict(x=0, w1=0, h=0, w2=1, y=1)), CLUSTER)
    # F(h) dev0 0-1 | send h 0->1 1-2.5 | F(y) dev1 2.5-4.5 | B(y) = 2 * 200 / 100 = 4 s:
    # 4.5-8.5 | gradient of h 1->0 8.5-10 | B(h) = 2 s: 10-12
    assert r.makespan == pytest.approx(12.0)
    assert r.busy == pytest.approx((3 / 12, 6 / 12))      # dev0 1 + 2 s, dev1 2 + 4 s
    assert r.single_device_time == pytest.approx(9.0)      # 3 * 300 FLOPs / 100 FLOP/s
    assert r.speedup == pytest.approx(0.75)
    assert r.bubble is None
    assert r.to_dict()["busy"] == {"dev0": 0.25, "dev1": 0.5}


def test_transfers_on_one_link_are_serialised():
    g = two_device_graph()
    r = simulate(g, placed(g, dict(x=0, w1=0, h=0, w2=0, y=1)), CLUSTER)
    # w2 0->1 at 0-1.5; h ready at 1 waits for the link: 1.5-3 | F(y) 3-5 | B(y) 5-9 |
    # both gradients leave dev1 at 9 on link 1->0: h first (the batch's gradient before the
    # once-per-step parameter's) 9-10.5, w2 10.5-12 | B(h) 10.5-12.5
    assert r.makespan == pytest.approx(12.5)
    assert r.busy == pytest.approx((3 / 12.5, 6 / 12.5))


def test_parameters_travel_once_per_step_with_micro_batches():
    g = Graph([Node("x", "input", (), (100,), flops=0), Node("w", "param", (), (100,), flops=0),
               Node("h", "f", ("x", "w"), (100,), flops=100)], ["h"])
    r = simulate(g, placed(g, dict(x=0, w=1, h=0)), CLUSTER, micro_batches=2)
    # w 1->0 once 0-1.5 | F(h,0) 1.5-2.5, F(h,1) 2.5-3.5 (forwards first) | B(h,0) 3.5-5.5,
    # B(h,1) 5.5-7.5 | the summed gradient of w 0->1 once: 7.5-9
    assert r.makespan == pytest.approx(9.0)
    assert r.busy == pytest.approx((6 / 9, 0.0))
    assert r.single_device_time == pytest.approx(6.0)


def test_independent_branches_run_in_parallel():
    nodes = [Node("x", "input", (), (1,), flops=0)]
    nodes += [Node(f"b{i}", "f", ("x",), (1,), flops=100) for i in range(2)]
    g = Graph(nodes, ["b0", "b1"])
    one = simulate(g, placed(g, dict(x=0, b0=0, b1=0)), CLUSTER)
    two = simulate(g, placed(g, dict(x=0, b0=0, b1=1)), CLUSTER)
    # no parameters: no backward ops. x (4 bytes) to dev1: 0.5 + 4 / 400 = 0.51 s
    assert one.makespan == pytest.approx(2.0)
    assert two.makespan == pytest.approx(1.51)


def pipeline(k):
    """k stages, one op of 1 FLOP each (3 s of training at 1 FLOP/s), no communication cost."""
    g = chain([1] * k, nbytes=[4] * k)
    names = {n.name: i for i, n in enumerate(g.nodes)}
    a = np.zeros(len(g.nodes), dtype=np.int32)
    for s in range(k):
        a[names[f"v{s}"]] = s
    return g, a, uniform(k, flops=1.0, bandwidth=np.inf, latency=0.0)


@pytest.mark.parametrize("k, m", [(2, 1), (2, 4), (3, 5), (4, 8), (4, 2)])
def test_gpipe_bubble_on_equal_stages(k, m):
    g, a, cluster = pipeline(k)
    r = simulate(g, a, cluster, schedule="gpipe", micro_batches=m)
    assert r.bubble == pytest.approx((k - 1) / (m + k - 1), abs=1e-12)
    # forwards fill and drain in (m + k - 1) * 1 s, backwards in (m + k - 1) * 2 s
    assert r.makespan == pytest.approx(3 * (m + k - 1))
    assert r.peak_in_flight == (m,) * k


@pytest.mark.parametrize("k, m", [(2, 4), (3, 5), (4, 8)])
def test_1f1b_same_bubble_fewer_micro_batches_in_flight(k, m):
    g, a, cluster = pipeline(k)
    gpipe = simulate(g, a, cluster, schedule="gpipe", micro_batches=m)
    one_f_one_b = simulate(g, a, cluster, schedule="1f1b", micro_batches=m)
    assert one_f_one_b.bubble == pytest.approx(gpipe.bubble, abs=1e-12)
    # stage s holds at most (k - s) micro-batches
    assert one_f_one_b.peak_in_flight == tuple(min(k - s, m) for s in range(k))
    assert max(one_f_one_b.peak_in_flight) < max(gpipe.peak_in_flight)


def test_pipeline_schedules_need_an_acyclic_placement():
    g, _, cluster = pipeline(3)
    cyclic = np.array([0, 0, 0, 1, 0], dtype=np.int32)     # v0 on 0, v1 on 1, v2 back on 0
    with pytest.raises(PlacementError, match="acyclic"):
        simulate(g, cyclic, uniform(2), schedule="1f1b", micro_batches=2)
    assert simulate(g, cyclic, uniform(2), micro_batches=2).makespan > 0


def test_bad_arguments():
    g, a, cluster = pipeline(2)
    with pytest.raises(PlacementError, match="schedule"):
        simulate(g, a, cluster, schedule="interleaved")
    with pytest.raises(PlacementError, match="micro_batches"):
        simulate(g, a, cluster, micro_batches=0)
    training = Graph(list(g.nodes) + [Node("g", "f", ("v1",), (1,), grad_of="v1")], ["v1"])
    with pytest.raises(PlacementError, match="gradient node"):
        simulate(training, np.zeros(len(training.nodes), dtype=np.int32), cluster)


def test_timeline_segments_cover_exactly_the_busy_time():
    # Independent check: per device, the merged segments' lengths add up to busy * makespan,
    # and segments on one device never overlap.
    from partition.cluster import uniform as _uniform
    from partition.simulate import simulate as _simulate
    from autodiff.ir import Graph as _Graph, Node as _Node
    nodes = [_Node("x", "input", (), (4,), "float32"), _Node("w", "param", (), (4,), "float32")]
    prev = "x"
    for i in range(6):
        nodes.append(_Node(f"n{i}", "op", (prev, "w"), (4,), "float32", flops=10 ** 9))
        prev = f"n{i}"
    graph = _Graph(nodes, [prev])
    result = _simulate(graph, [0, 0, 0, 0, 0, 1, 1, 1], _uniform(2, flops=1e9), "gpipe", 2)
    for d, name in enumerate(result.devices):
        segs = sorted((s for s in result.timeline if s["device"] == name
                       and s["kind"] != "transfer"), key=lambda s: s["start"])
        assert all(a["end"] <= b["start"] + 1e-12 for a, b in zip(segs, segs[1:]))
        total = sum(s["end"] - s["start"] for s in segs)
        assert abs(total - result.busy[d] * result.makespan) < 1e-9
    kinds = {s["kind"] for s in result.timeline}
    assert kinds == {"forward", "backward", "transfer"}
    assert {s["micro_batch"] for s in result.timeline if s["kind"] != "transfer"} >= {0, 1}


def measured_cluster(**extra):
    """CLUSTER's devices and links plus the calibrated-cluster fields (partition/cluster.py)."""
    from partition.cluster import Cluster, Device
    devices = (Device("dev0", 100.0, 2**30, op_overhead=0.25),
               Device("dev1", 100.0, 2**30, op_overhead=0.25, op_flops={"g": 50.0}))
    return Cluster(devices, CLUSTER.bandwidth, CLUSTER.latency, **extra)


def test_op_overheads_op_rates_and_step_overhead_by_hand():
    g = two_device_graph()
    r = simulate(g, placed(g, dict(x=0, w1=0, h=0, w2=1, y=1)),
                 measured_cluster(step_overhead=1.0))
    # one op overhead per forward op and per backward op.
    # F(h) 0.25 + 100/100: 0-1.25 | h 0->1 1.25-2.75 | F(y) 0.25 + 200/50 (op g at 50): 2.75-7
    # | B(y) 0.25 + 2 * 4: 7-15.25 | gradient of h 1->0 15.25-16.75 | B(h) 0.25 + 2: 16.75-19
    # | + 1 s step overhead
    assert r.makespan == pytest.approx(20.0)
    assert r.busy == pytest.approx((3.5 / 20.0, 12.5 / 20.0))
    # all on dev0 (the first fastest; g at 100 there): 1.25 + 2.25 + 2.25 + 4.25, + 1
    assert r.single_device_time == pytest.approx(11.0)
