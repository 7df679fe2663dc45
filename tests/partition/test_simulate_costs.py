"""Step simulator on a measured cluster with per-op-kind costs and optimizer updates
(partition/cluster.py `op_costs`, `update_costs`): a hand-computed timeline."""
import numpy as np
import pytest

from autodiff.ir import Graph, Node
from partition.cluster import Cluster, Device
from partition.errors import ClusterError
from partition.simulate import simulate


def graph():
    """h = x @ w (64 FLOPs), r = relu(h), loss = sum(r); float32, h and r are 32 bytes. Its
    training graph (autodiff.vjp): loss <- reshape, broadcast_to; r <- greater, astype,
    multiply; h <- transpose (of x), matmul (64 FLOPs, the gradient of w)."""
    return Graph([Node("x", "input", (), (2, 4)), Node("w", "param", (), (4, 4)),
                  Node("h", "matmul", ("x", "w"), (2, 4)), Node("r", "relu", ("h",), (2, 4)),
                  Node("loss", "sum", ("r",), ())], ["loss"])


COSTS = {"matmul": [1.0, 1 / 64, 0.0],         # seconds, per FLOP, per byte
         "relu": [0.5, 0.0, 0.0], "sum": [0.0, 0.0, 1 / 36],      # sum reads 32 + writes 4
         "reshape": [0.25, 0.0, 0.0], "broadcast_to": [0.25, 0.0, 0.0],
         "greater": [0.5, 0.0, 0.0], "astype": [0.5, 0.0, 0.0],
         "multiply": [0.0, 0.0, 1 / 96]}       # multiply reads 2 x 32 and writes 32 bytes


def cluster(step_overhead=0.4):
    # transpose has no entry: op_overhead + 0 FLOPs / rate = 0.1 s; a 32-byte tensor takes
    # 0.5 s latency + 32 B / 32 B/s = 1.5 s
    devices = tuple(Device(f"dev{i}", 100.0, 2**30, op_overhead=0.1, op_costs=COSTS,
                           update_costs={"adam": [0.5, 1 / 64]}) for i in range(2))
    return Cluster(devices, np.full((2, 2), 32.0), np.full((2, 2), 0.5),
                   step_overhead=step_overhead)


def test_op_costs_and_updates_by_hand():
    a = np.array([0, 0, 0, 1, 1])                  # x, w, h on dev0; r, loss on dev1
    r = simulate(graph(), a, cluster(), optimizer="adam")
    # F(h) 1 + 64/64: 0-2 | h 0->1 2-3.5 | F(r) 0.5: 3.5-4 | F(loss) 36/36: 4-5 | B(loss)
    # 0.25 + 0.25: 5-5.5 | B(r) 0.5 + 0.5 + 96/96: 5.5-7.5 | gradient of h 1->0 7.5-9 | B(h)
    # 0.1 + 2: 9-11.1 | update of w (64 bytes) 0.5 + 64/64: 11.1-12.6 | + 0.4 step overhead
    assert r.makespan == pytest.approx(13.0)
    assert r.busy == pytest.approx((5.6 / 13.0, 4.0 / 13.0))
    # on one device: 3.5 forward + 4.6 backward + 1.5 update + 0.4
    assert r.single_device_time == pytest.approx(10.0)
    # no optimizer named (or one without costs): no update
    assert simulate(graph(), a, cluster()).makespan == pytest.approx(11.5)
    assert simulate(graph(), a, cluster(), optimizer="sgd").makespan == pytest.approx(11.5)


def test_updates_wait_for_the_devices_other_backward_ops():
    # everything on dev0: w's gradient is ready after B(h), the update still runs last
    r = simulate(graph(), np.zeros(5, dtype=np.int64), cluster(0.0), optimizer="adam")
    assert r.makespan == pytest.approx(3.5 + 4.6 + 1.5)
    last = max((s for s in r.timeline if s["device"] == "dev0"), key=lambda s: s["end"])
    assert last["start"] == pytest.approx(8.1) and last["kind"] == "backward"


def test_cost_tables_read_from_a_spec_and_written_back():
    spec = {"devices": [{"name": "cpu0", "flops": 1e9, "memory": 2**30,
                         "op_costs": {"matmul": [1e-5, 1e-11, 0]},
                         "update_costs": {"adam": [2e-6, 4e-10]}}]}
    device = Cluster.from_spec(spec).devices[0]
    assert device.op_cost("matmul", 1e6, 123) == pytest.approx(1e-5 + 1e-5)
    assert device.op_cost("relu", 1e6, 123) is None
    assert device.update_cost("adam", 1000) == pytest.approx(2e-6 + 4e-7)
    assert device.update_cost("sgd", 1000) == device.update_cost(None, 1000) == 0.0
    assert Cluster.from_spec({"devices": [device.to_dict()]}).devices[0] == device
    assert device.to_dict()["op_costs"] == {"matmul": [1e-5, 1e-11, 0.0]}


@pytest.mark.parametrize("entry, message", [
    ({"op_costs": {"matmul": [1e-5, 1e-11]}}, r"op_costs\.matmul: expected a list of 3"),
    ({"op_costs": {"matmul": [1e-5, -1, 0]}}, r"op_costs\.matmul\[1\]: must be a finite"),
    ({"op_costs": [1, 2, 3]}, r"op_costs: expected a mapping"),
    ({"update_costs": {"adam": "fast"}}, r"update_costs\.adam: expected a list of 2"),
])
def test_bad_cost_tables_name_the_field(entry, message):
    spec = {"devices": [{"name": "cpu0", "flops": 1e9, "memory": 2**30, **entry}]}
    with pytest.raises(ClusterError, match=message):
        Cluster.from_spec(spec)


def test_poll_delays_after_long_waits_by_hand():
    a = np.array([0, 0, 0, 1, 1])
    base = cluster()

    def polled(after):
        return Cluster(base.devices, base.bandwidth, base.latency, step_overhead=0.4,
                       poll_after=after, poll_delay=0.3)
    # as test_op_costs_and_updates_by_hand, but h reaches dev1 (idle since 0) at 3.5 and is
    # noticed at 3.8: F(r) 3.8-4.3 | F(loss) 4.3-5.3 | B(loss) 5.3-5.8 | B(r) 5.8-7.8 | the
    # gradient of h reaches dev0 (idle since 2) at 9.3, noticed at 9.6 | B(h) 9.6-11.7 |
    # update 11.7-13.2 | the driver notices the end 0.3 late, + 0.4 step overhead
    assert simulate(graph(), a, polled(1.0), optimizer="adam").makespan == pytest.approx(13.9)
    # waits of 3.5 and 7.3 s are within 8 s of polling: only the driver's (12.6 s) is late
    assert simulate(graph(), a, polled(8.0), optimizer="adam").makespan == pytest.approx(13.3)
    # polls after 3 s: h waited 0.5 s more, noticed 0.25 s late (half of it, under 0.3):
    # F(r) 3.75-4.25 | ... | B(r) 5.75-7.75 | gradient of h 7.75-9.25, dev0 idle since 2
    # notices it 0.3 late | B(h) 9.55-11.65 | update -13.15 | + 0.3 + 0.4
    assert simulate(graph(), a, polled(3.0), optimizer="adam").makespan == pytest.approx(13.85)
    spec = polled(1.0).to_dict()
    assert (spec["poll_after"], spec["poll_delay"]) == (1.0, 0.3)
    read = Cluster.from_spec({"devices": [base.devices[0].to_dict()], "poll_after": 1e-3,
                              "poll_delay": 3e-4})
    assert (read.poll_after, read.poll_delay) == (1e-3, 3e-4)
    with pytest.raises(ClusterError, match="poll_delay"):
        Cluster(base.devices, base.bandwidth, base.latency, poll_delay=-1.0)


def test_devices_sharing_cores_by_hand():
    a = np.array([0, 0, 0, 1, 1])
    base = cluster()

    def shared(cores, spin):
        return Cluster(base.devices, base.bandwidth, base.latency, step_overhead=0.4,
                       poll_after=spin, cores=cores)
    # one core: both devices on it; dev0 spins until 3 after F(h) (0-2), dev1 until 8.5
    # after B(r) (5.5-7.5): no op starts during the other's spin, as
    # test_op_costs_and_updates_by_hand without the update
    assert simulate(graph(), a, shared(1, 1.0)).makespan == pytest.approx(11.5)
    # spins of 3 s: F(h) 0-2 (dev0 spins until 5) | h 2-3.5 | F(r) 2 x 0.5: 3.5-4.5 and
    # F(loss) 2 x 1: 4.5-6.5 while dev0 spins | B(loss) 6.5-7 | B(r) 7-9 (dev1 spins until
    # 12) | gradient of h 9-10.5 | B(h) 2 x 2.1: 10.5-14.7 | + 0.4
    assert simulate(graph(), a, shared(1, 3.0)).makespan == pytest.approx(15.1)
    # two cores: dev0 and dev1 each on its own
    assert simulate(graph(), a, shared(2, 3.0)).makespan == pytest.approx(11.5)
    with pytest.raises(ClusterError, match="cores"):
        Cluster(base.devices, base.bandwidth, base.latency, cores=-1)
    read = Cluster.from_spec({"devices": [base.devices[0].to_dict()], "cores": 2})
    assert read.cores == 2 and read.to_dict()["cores"] == 2
