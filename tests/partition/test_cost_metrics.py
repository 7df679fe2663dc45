"""SPEC section 2 metrics: hand-computed small graphs and a brute-force reference on random DAGs.

Ops are given names the op registry does not know ("f", "g", ...), so they are opaque: FLOPs
come from the explicit `flops=` and the backward pass is assumed to keep all their inputs.
"""
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from autodiff.ir import Graph, Node
from dags import random_dags
from partition.cluster import Cluster, Device, heterogeneous, uniform
from partition.cost import graph_arrays, memory_per_device
from partition.errors import PlacementError
from partition.metrics import compute_metrics, quotient_order


def fan_graph():
    """x, w -> h; h read by p and q; p, q -> out. Every tensor is 10 float32 = 40 bytes."""
    return Graph([
        Node("x", "input", (), (10,)),
        Node("w", "param", (), (10,)),
        Node("h", "f", ("x", "w"), (10,), flops=10),
        Node("p", "g", ("h",), (10,), flops=10),
        Node("q", "g", ("h",), (10,), flops=10),
        Node("out", "f", ("p", "q"), (10,), flops=10),
    ], ["out"], name="fan")


def place(graph, mapping):
    return np.array([mapping[n.name] for n in graph.nodes], dtype=np.int32)


def test_arrays_of_fan_graph():
    g = fan_graph()
    a = graph_arrays(g)
    assert graph_arrays(g) is a
    assert a.bytes.tolist() == [40] * 6
    assert a.requires_grad.tolist() == [False, True, True, True, True, True]
    assert a.batch_dependent.tolist() == [True, False, True, True, True, True]
    assert a.train_flops.tolist() == [0, 0, 30, 30, 30, 30]
    assert a.in_ptr.tolist() == [0, 0, 0, 2, 3, 4, 6]
    assert a.in_idx.tolist() == [0, 1, 2, 2, 3, 4]
    assert a.out_ptr.tolist() == [0, 1, 2, 4, 5, 6, 6]
    assert a.out_idx.tolist() == [2, 2, 3, 4, 5, 5]


def test_duplicate_inputs_are_one_edge_and_int_tensors_need_no_gradient():
    g = Graph([
        Node("x", "input", (), (3,)),
        Node("w", "param", (), (3,)),
        Node("h", "f", ("w", "x", "w"), (3,), flops=6),
        Node("i", "argmax", ("h",), (), dtype="int64", flops=3),
        Node("c", "const", (), (2,), dtype="float32"),
        Node("r", "noise", (), (2,), flops=2),
        Node("y", "f", ("h", "i", "c"), (), flops=1),
    ], ["y"])
    a = graph_arrays(g)
    assert a.in_idx[a.in_ptr[2]:a.in_ptr[3]].tolist() == [0, 1]
    assert a.requires_grad.tolist() == [False, True, True, False, False, False, True]
    # batch dependent: inputs, no-input computed ops (random draws) and what reads them
    assert a.batch_dependent.tolist() == [True, False, True, True, False, True, True]
    assert a.train_flops.tolist() == [0, 0, 18, 3, 0, 2, 3]
    # i (8 bytes, int) on device 1, the rest on 0: h (12 bytes) goes to 1, i comes back
    m = compute_metrics(g, place(g, {"x": 0, "w": 0, "h": 0, "i": 1, "c": 0, "r": 0, "y": 0}),
                        uniform(2))
    assert m.forward_volume == 12 + 8
    assert m.backward_volume == 12      # only h requires grad
    assert m.edge_cut == 12 + 8


def test_one_remote_device_counts_a_tensor_once():
    g = fan_graph()
    m = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=1, q=1, out=1)), uniform(2))
    assert m.forward_volume == 40          # h once, although p and q both read it
    assert m.backward_volume == 40
    assert m.step_volume == 80
    assert m.edge_cut == 80                # two cut edges h->p, h->q
    assert m.top_cut == (("h", 40, ("dev1",)),)


def test_two_remote_devices_count_a_tensor_twice():
    g = fan_graph()
    m = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=1, q=2, out=1)), uniform(3))
    # h -> {1, 2}: 80; q -> 1: 40
    assert m.forward_volume == 120
    assert m.backward_volume == 120
    assert m.edge_cut == 120
    assert m.top_cut[0] == ("h", 40, ("dev1", "dev2"))
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 1] = expected[0, 2] = expected[2, 1] = 40      # forward
    expected[1, 0] = expected[2, 0] = expected[1, 2] = 40      # gradients back
    assert (m.link_traffic == expected).all()
    assert m.link_traffic.sum() == m.step_volume


def test_backward_volume_only_for_requires_grad():
    g = fan_graph()
    m = compute_metrics(g, place(g, dict(x=1, w=0, h=0, p=0, q=0, out=0)), uniform(2))
    assert (m.forward_volume, m.backward_volume) == (40, 0)
    m = compute_metrics(g, place(g, dict(x=0, w=1, h=0, p=0, q=0, out=0)), uniform(2))
    assert (m.forward_volume, m.backward_volume) == (40, 40)


def test_micro_batches_multiply_batch_dependent_tensors_only():
    g = fan_graph()
    m = compute_metrics(g, place(g, dict(x=0, w=1, h=0, p=1, q=1, out=1)), uniform(2),
                        micro_batches=3)
    # w (parameter) travels once and its gradient once; h travels 3 times each way
    assert m.forward_volume == 40 + 3 * 40
    assert m.backward_volume == 40 + 3 * 40
    assert m.loads.tolist() == [90.0, 270.0]


def test_imbalance_with_heterogeneous_speeds():
    g = fan_graph()
    devices = [Device("slow", 1.0, 10**6), Device("fast", 2.0, 10**6)]
    c = heterogeneous(devices)
    m = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=1, q=1, out=1)), c)
    assert m.loads.tolist() == [30.0, 90.0]
    # max(30/1, 90/2) / (120 / 3) = 45 / 40
    assert m.imbalance == pytest.approx(1.125)
    m = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=0, q=1, out=1)), c)
    assert m.imbalance == pytest.approx(1.5)  # max(60/1, 60/2) / 40
    m = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=0, q=0, out=0)), uniform(4))
    assert m.imbalance == pytest.approx(4.0)


def test_acyclic_quotient():
    g = fan_graph()
    chain = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=1, q=1, out=2)), uniform(3))
    assert chain.acyclic
    back_and_forth = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=1, q=1, out=0)),
                                     uniform(2))
    assert not back_and_forth.acyclic
    assert quotient_order(np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=bool)) == [1, 0, 2]
    assert quotient_order(np.array([[0, 1], [1, 0]], dtype=bool)) is None


def test_time_weighted_volume_uses_each_link():
    g = fan_graph()
    bandwidth = np.array([[1, 10, 20], [10, 1, 40], [20, 40, 1]], dtype=float)
    latency = np.array([[0, 1, 0.5], [1, 0, 0], [0.5, 0, 0]])
    c = Cluster(tuple(Device(f"d{i}", 1.0, 10**6) for i in range(3)), bandwidth, latency)
    m = compute_metrics(g, place(g, dict(x=0, w=0, h=0, p=1, q=2, out=1)), c)
    # forward h 0->1: 1 + 40/10 = 5; h 0->2: 0.5 + 40/20 = 2.5; q 2->1: 40/40 = 1; same back
    assert m.time_weighted_volume == pytest.approx(2 * (5 + 2.5 + 1))


def test_memory_parameters_kept_values_and_receive_buffers():
    g = fan_graph()
    a = graph_arrays(g)
    assignment = place(g, dict(x=0, w=0, h=0, p=1, q=1, out=1))
    # opaque ops keep all their inputs: x, w (by h), h (by p, q), p, q (by out)
    dev0 = 40 * (2 + 2) + 40 + 40          # w with grad and 2 Adam slots, x, h
    dev1 = 40 + 40 + 40                    # p, q kept, receive buffer for h
    assert memory_per_device(a, assignment, 2, 2).tolist() == [dev0, dev1]
    m = compute_metrics(g, assignment, uniform(2), optimizer="adam")
    assert m.memory.tolist() == [dev0, dev1]


def test_bad_assignment_and_optimizer_are_named():
    g = fan_graph()
    with pytest.raises(PlacementError, match="node #2"):
        compute_metrics(g, np.array([0, 0, 5, 0, 0, 0]), uniform(2))
    with pytest.raises(PlacementError, match="6 device ids"):
        compute_metrics(g, np.zeros(3, dtype=int), uniform(2))
    with pytest.raises(PlacementError, match="optimizer"):
        compute_metrics(g, np.zeros(6, dtype=int), uniform(2), optimizer="lion")


# ------------------------------------------------------------- brute-force reference
def reference_metrics(graph, assignment, speeds, bandwidth, latency, m, slots):
    """SPEC section 2 written as plain loops over Node objects."""
    nodes = graph.nodes
    place_of = {n.name: int(assignment[i]) for i, n in enumerate(nodes)}
    grad, batch = {}, {}
    for n in nodes:
        grad[n.name] = n.dtype in ("float32", "float64") and (
            n.op == "param" or any(grad[i] for i in n.inputs))
        batch[n.name] = n.op == "input" or (n.op not in ("param", "const") and (
            not n.inputs or any(batch[i] for i in n.inputs)))
    consumers = {n.name: [] for n in nodes}
    for n in nodes:
        for i in set(n.inputs):
            consumers[i].append(n.name)
    k = len(speeds)
    fwd = bwd = cut = 0
    twv = 0.0
    traffic = np.zeros((k, k))
    quotient = nx.DiGraph()
    quotient.add_nodes_from(range(k))
    memory = [0] * k
    remote_of = {}
    received = set()
    kept = set()
    for n in nodes:
        if grad[n.name] and n.op not in ("input", "param", "const"):
            kept.update(n.inputs)
    for n in nodes:
        d = place_of[n.name]
        times = m if batch[n.name] else 1
        remote = {place_of[c] for c in consumers[n.name]} - {d}
        if remote:
            remote_of[n.name] = remote
        for r in remote:
            fwd += n.nbytes * times
            traffic[d, r] += n.nbytes * times
            twv += times * latency[d, r] + n.nbytes * times / bandwidth[d, r]
            quotient.add_edge(d, r)
            received.add((n.name, r))
            if grad[n.name]:
                bwd += n.nbytes * times
                traffic[r, d] += n.nbytes * times
                twv += times * latency[r, d] + n.nbytes * times / bandwidth[r, d]
        for c in consumers[n.name]:
            if place_of[c] != d:
                cut += n.nbytes * times
        if n.op == "param":
            memory[d] += n.nbytes * (2 + slots)
        elif n.name in kept:
            memory[d] += n.nbytes
    for name, r in received:
        memory[r] += graph[name].nbytes
    loads = [0.0] * k
    for n in nodes:
        loads[place_of[n.name]] += n.flops * (3 if grad[n.name] else 1) * (
            m if batch[n.name] else 1)
    total = sum(loads)
    imbalance = (max(loads[d] / speeds[d] for d in range(k)) / (total / sum(speeds))
                 if total else 1.0)
    return dict(forward=fwd, backward=bwd, cut=cut, loads=loads, imbalance=imbalance,
                traffic=traffic, twv=twv, acyclic=nx.is_directed_acyclic_graph(quotient),
                memory=memory, remote_of=remote_of)


@st.composite
def random_case(draw):
    graph = draw(random_dags())
    nodes = graph.nodes
    k = draw(st.integers(1, 4))
    assignment = np.array(draw(st.lists(st.integers(0, k - 1), min_size=len(nodes),
                                        max_size=len(nodes))), dtype=np.int32)
    speeds = draw(st.lists(st.sampled_from([1.0, 2.0, 5.0]), min_size=k, max_size=k))
    bandwidth = np.array(draw(st.lists(st.sampled_from([1.0, 4.0, 10.0]), min_size=k * k,
                                       max_size=k * k))).reshape(k, k)
    bandwidth = np.minimum(bandwidth, bandwidth.T)
    latency = np.array(draw(st.lists(st.sampled_from([0.0, 0.5]), min_size=k * k,
                                     max_size=k * k))).reshape(k, k)
    latency = np.maximum(latency, latency.T)
    np.fill_diagonal(latency, 0.0)
    m = draw(st.integers(1, 3))
    slots = draw(st.sampled_from([0, 1, 2]))
    return graph, assignment, speeds, bandwidth, latency, m, slots


@settings(max_examples=50, deadline=None)
@given(random_case())
def test_compute_metrics_matches_reference(case):
    graph, assignment, speeds, bandwidth, latency, m, slots = case
    k = len(speeds)
    cluster = Cluster(tuple(Device(f"d{i}", s, 10**9) for i, s in enumerate(speeds)),
                      bandwidth, latency)
    optimizer = {0: "sgd", 1: "momentum", 2: "adam"}[slots]
    got = compute_metrics(graph, assignment, cluster, micro_batches=m, optimizer=optimizer)
    ref = reference_metrics(graph, assignment, speeds, cluster.bandwidth, cluster.latency, m,
                            slots)
    assert got.forward_volume == ref["forward"]
    assert got.backward_volume == ref["backward"]
    assert got.step_volume == ref["forward"] + ref["backward"]
    assert got.edge_cut == ref["cut"]
    assert got.loads.tolist() == pytest.approx(ref["loads"])
    assert got.imbalance == pytest.approx(ref["imbalance"])
    assert (got.link_traffic == ref["traffic"]).all()
    assert got.link_traffic.sum() == got.step_volume
    assert got.time_weighted_volume == pytest.approx(ref["twv"])
    assert got.acyclic == ref["acyclic"]
    assert got.memory.tolist() == ref["memory"]
    assert len(got.top_cut) == min(10, len(ref["remote_of"]))
    for name, nbytes, receivers in got.top_cut:
        assert nbytes == graph[name].nbytes
        assert {cluster.device_index(r) for r in receivers} == ref["remote_of"][name]


def _ready_first_order(n, edges, key, break_cycles):
    """Brute force: repeatedly take the smallest (key, id) among unfinished nodes whose
    predecessors are all finished; on a cycle release the smallest unfinished id or stop."""
    done, order, released = set(), [], set()
    while len(order) < n:
        ready = [v for v in range(n) if v not in done
                 and (v in released or all(s in done for s, d in edges if d == v))]
        if not ready:
            if not break_cycles:
                break
            released.add(min(v for v in range(n) if v not in done))
            continue
        v = min(ready, key=lambda u: (key[u], u))
        done.add(v)
        order.append(v)
    return order


@pytest.mark.parametrize("seed", range(40))
def test_kahn_order_matches_the_ready_first_rule(seed):
    from partition.cost import kahn_order
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    edges = [(int(a), int(b)) for a in range(n) for b in range(n)
             if a != b and rng.random() < 0.25 and (seed % 2 or a < b)]   # odd seeds: cycles
    src, dst = (np.array(x, dtype=np.int64) for x in zip(*edges)) if edges else ([], [])
    key = rng.random(n)
    for cut in (False, True):
        expected = _ready_first_order(n, edges, key, cut)
        assert kahn_order(n, src, dst, key, break_cycles=cut).tolist() == expected
    assert kahn_order(n, src, dst, break_cycles=True).tolist() == \
        _ready_first_order(n, edges, list(range(n)), True)
