"""SPEC section 5's stage time: hand-computed tiny cases and a per-node Python reference."""
import numpy as np
import pytest

from autodiff.ir import Graph, Node
from partition.cluster import Cluster, Device, uniform
from partition.cost import graph_arrays
from partition.errors import PlacementError
from partition.stage_time import in_flight, pipeline_memory, stage_times
from tests.partition.dags import seeded_dag


def _inference_fanout() -> Graph:
    """x (input, 400 B) read by a (device 1) and b (device 2); a, b read by c on device 0.
    No param: nothing requires a gradient, so this is the forward-only model."""
    return Graph([Node("x", "input", (), (100,), flops=0),
                  Node("a", "f", ("x",), (50,), flops=4 * 10**12),
                  Node("b", "f", ("x",), (25,), flops=2 * 10**12),
                  Node("c", "f", ("a", "b", "x"), (10,), flops=1 * 10**12)], ["c"])


def test_uniform_links_forward_only_by_hand():
    cluster = uniform(3, flops=1 * 10**12, bandwidth=100.0, latency=1.0)
    st = stage_times(_inference_fanout(), [0, 1, 2, 0], cluster)
    # x: 400 B from dev0 to dev1 and dev2: dev0 sends once (t = 1 + 4 = 5), each receives 5.
    # a: 200 B dev1 -> dev0 (t = 3); b: 100 B dev2 -> dev0 (t = 2). c reads x locally.
    np.testing.assert_allclose(st.compute, [1.0, 4.0, 2.0])
    np.testing.assert_allclose(st.send, [5.0, 3.0, 2.0])
    np.testing.assert_allclose(st.recv, [5.0, 5.0, 5.0])
    np.testing.assert_allclose(st.total, [11.0, 12.0, 9.0])
    assert st.bottleneck == 1 and st.time_per_micro_batch == pytest.approx(12.0)
    assert not st.acyclic          # dev0 -> dev1 -> dev0
    assert st.bubble is None and st.step_estimate is None


def test_heterogeneous_links_producer_pays_slowest():
    devices = [Device("a", 1e12, 2**30), Device("b", 2e12, 2**30), Device("c", 1e12, 2**30)]
    bandwidth = np.array([[1, 100.0, 400.0], [100.0, 1, 100.0], [400.0, 100.0, 1]])
    latency = np.array([[0, 1.0, 0.5], [1.0, 0, 2.0], [0.5, 2.0, 0]])
    cluster = Cluster(tuple(devices), bandwidth, latency)
    graph = _inference_fanout()
    st = stage_times(graph, [0, 1, 2, 2], cluster)
    # x from a: to b t = 1 + 400/100 = 5, to c t = 0.5 + 400/400 = 1.5; a pays max = 5.
    # a (200 B) b -> c: t = 2 + 2 = 4. c reads b locally and x (already on c for b).
    np.testing.assert_allclose(st.compute, [0.0, 2.0, 3.0])
    np.testing.assert_allclose(st.send, [5.0, 4.0, 0.0])
    np.testing.assert_allclose(st.recv, [0.0, 5.0, 1.5 + 4.0])
    assert st.acyclic and st.stage_order == (0, 1, 2)
    # totals: a 5, b 2 + 4 + 5 = 11, c 3 + 5.5 = 8.5
    assert st.bottleneck == 1 and st.time_per_micro_batch == pytest.approx(11.0)


def _training_pair() -> Graph:
    """x (input) and w (param, 400 B) both read by h on dev1 and by y on dev2 (y also reads h).
    h and y require grad; x does not."""
    return Graph([Node("x", "input", (), (100,), flops=0),
                  Node("w", "param", (), (100,), flops=0),
                  Node("h", "f", ("x", "w"), (50,), flops=1 * 10**12),
                  Node("y", "f", ("h", "w", "x"), (10,), flops=1 * 10**12)], ["y"])


def test_training_with_micro_batches_by_hand():
    cluster = uniform(3, flops=1 * 10**12, bandwidth=100.0, latency=1.0)
    m = 4
    st = stage_times(_training_pair(), [0, 0, 1, 2], cluster, micro_batches=m)
    # x: dev0 -> dev1, dev2 (t = 5 each, batch-dependent, no gradient): dev0 sends 5.
    # w: dev0 -> dev1, dev2 (t = 5, a parameter: 1/m), gradients back from both (t = 5 / m
    # each): dev0 sends 5/4, receives 2 * 5/4; dev1, dev2 each receive 5/4 and send 5/4.
    # h: dev1 -> dev2, 200 B, t = 3, requires grad: dev1 sends 3 and receives 3 back.
    np.testing.assert_allclose(st.compute, [0.0, 3.0, 3.0])    # train flops = 3 x forward
    np.testing.assert_allclose(st.send, [5 + 1.25, 1.25 + 3, 1.25 + 3])
    np.testing.assert_allclose(st.recv, [2.5, 5 + 1.25 + 3, 5 + 1.25 + 3])
    assert st.bottleneck == 1 and st.time_per_micro_batch == pytest.approx(3 + 4.25 + 9.25)
    assert st.acyclic and st.used == 3
    assert st.bubble == pytest.approx(2 / 6)
    assert st.step_estimate == pytest.approx(6 * st.time_per_micro_batch)
    one = stage_times(_training_pair(), [0, 0, 1, 2], cluster, micro_batches=1)
    assert one.send[0] == pytest.approx(5 + 5)


def test_multi_reader_tensor_received_once_per_device():
    graph = Graph([Node("x", "input", (), (100,), flops=0),
                   Node("a", "f", ("x",), (10,), flops=0),
                   Node("b", "f", ("x",), (10,), flops=0),
                   Node("c", "f", ("a", "b"), (10,), flops=0)], ["c"])
    cluster = uniform(2, bandwidth=100.0, latency=1.0)
    st = stage_times(graph, [0, 1, 1, 1], cluster)
    np.testing.assert_allclose(st.send, [5.0, 0.0])
    np.testing.assert_allclose(st.recv, [0.0, 5.0])


def _reference(graph: Graph, a, cluster: Cluster, m: int):
    """Straightforward per-node loops over SPEC section 5's definition."""
    arrays = graph_arrays(graph)
    k = cluster.k
    compute, send, recv = np.zeros(k), np.zeros(k), np.zeros(k)
    for v in range(arrays.n):
        share = 1.0 if arrays.batch_dependent[v] else 1.0 / m
        compute[a[v]] += arrays.train_flops[v] * share / cluster.speeds[a[v]]
        readers = {int(a[graph.index[c]]) for c in graph.consumers(arrays.names[v])}
        readers.discard(int(a[v]))
        t = {e: share * cluster.transfer_time(int(a[v]), e, float(arrays.bytes[v]))
             for e in readers}
        if readers:
            send[a[v]] += max(t.values())
        for e in readers:
            recv[e] += t[e]
            if arrays.requires_grad[v]:
                back = share * cluster.transfer_time(e, int(a[v]), float(arrays.bytes[v]))
                send[e] += back
                recv[a[v]] += back
    return compute, send, recv


@pytest.mark.parametrize("seed", range(12))
def test_matches_per_node_reference(seed):
    rng = np.random.default_rng(seed)
    graph = seeded_dag(seed)
    k = int(rng.integers(2, 5))
    devices = tuple(Device(f"d{i}", float(rng.uniform(1e5, 1e6)), 2**30) for i in range(k))
    bandwidth = rng.uniform(1e3, 1e5, size=(k, k))
    latency = rng.uniform(0, 1e-3, size=(k, k))
    cluster = Cluster(devices, bandwidth, latency)
    a = rng.integers(0, k, size=len(graph))
    m = int(rng.integers(1, 5))
    st = stage_times(graph, a, cluster, micro_batches=m)
    compute, send, recv = _reference(graph, a, cluster, m)
    np.testing.assert_allclose(st.compute, compute, rtol=1e-12)
    np.testing.assert_allclose(st.send, send, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(st.recv, recv, rtol=1e-12, atol=1e-300)
    assert st.time_per_micro_batch == pytest.approx((compute + send + recv).max(), rel=1e-12)
    assert st.to_dict()["bottleneck"] == cluster.device_names[int(np.argmax(compute + send
                                                                            + recv))]


def test_pipeline_memory_in_flight_rule():
    assert in_flight(3, 4, "1f1b").tolist() == [3, 2, 1]
    assert in_flight(3, 2, "1f1b").tolist() == [2, 2, 1]
    assert in_flight(3, 4, "gpipe").tolist() == [4, 4, 4]
    graph = _training_pair()
    arrays = graph_arrays(graph)
    kept = {name: bool(arrays.kept[i]) for i, name in enumerate(arrays.names)}
    a = [0, 0, 0, 1]
    m = 4
    memory = pipeline_memory(arrays, a, 2, micro_batches=m, schedule="1f1b")
    act = lambda name: 400 * kept[name]  # noqa: E731  (x, h are 400/200 B; only if kept)
    h_bytes = 200 * kept["h"]
    x_bytes = 400 * kept["x"]
    # dev0 (position 0 of 2): w x (2 + 0 slots), activations x min(4, 2) = 2 micro-batches.
    assert memory[0] == 400 * 2 + 2 * (x_bytes + h_bytes)
    # dev1 (position 1): y's activation x 1, receive buffers for h, w, x.
    assert memory[1] == 1 * (40 * kept["y"]) + 200 + 400 + 400
    gpipe = pipeline_memory(arrays, a, 2, micro_batches=m, schedule="gpipe")
    assert gpipe[0] == 400 * 2 + 4 * (x_bytes + h_bytes)
    assert act("x") == x_bytes


def test_bad_arguments():
    cluster = uniform(2)
    with pytest.raises(PlacementError, match="micro_batches"):
        stage_times(_training_pair(), [0, 0, 1, 1], cluster, micro_batches=0)
    with pytest.raises(PlacementError, match="schedule"):
        stage_times(_training_pair(), [0, 0, 1, 1], cluster, schedule="zigzag")
    with pytest.raises(PlacementError, match="not a pipeline"):
        pipeline_memory(graph_arrays(_inference_fanout()), [0, 1, 1, 0], 2)
