"""The step simulator on Plans: hand-built programs timed by hand, and real plans against
sums of their own costs."""
import numpy as np
import pytest

from autodiff.ir import Graph, Node
from executor.plan import build_plan
from executor.program import Block, Compute, Plan, Program, Recv, Send
from executor.timing import UPDATE_FLOPS, StepCosts, simulate_plan, simulation_summary
from executor_cases import contiguous, hand_graph
from partition.cluster import Device, heterogeneous, uniform


def _node(name, flops, inputs=(), op="tanh", shape=(4,)):
    return Node(name, op, tuple(inputs), shape, "float32", flops=flops)


def _plan(blocks0, blocks1, nodes0, nodes1, nbytes, order):
    graph_nodes = [Node("x", "input", (), (4,), "float32"), *nodes0.values(), *nodes1.values()]
    training = Graph(graph_nodes, [graph_nodes[-1].name], validate=False)

    def program(d, blocks, nodes):
        return Program(device=d, blocks=tuple(blocks), nodes=nodes, per_step=frozenset(),
                       params=(), inputs=(), loss=None, grads={}, states={})
    return Plan(programs=(program(0, blocks0, nodes0), program(1, blocks1, nodes1)),
                order=tuple(order), micro_batches=2, schedule="gpipe", stages=(0, 1), loss="b",
                loss_scale=1.0, nbytes=nbytes, training=training)


def _hand_pipeline():
    """Device 0 computes a0, a1 (one per micro-batch) and sends each; device 1 receives and
    computes b. Rate 1e9 FLOP/s, overhead 1 ms, link 1e6 B/s with 2 ms latency."""
    a, b = _node("a", 4e6, ["x"]), _node("b", 1e6, ["a"])
    blocks0 = [Block("F", i, (Compute(("a",)), Send("a", 1, "activation"))) for i in range(2)]
    blocks1 = [Block("F", i, (Recv("a", 0, "activation"), Compute(("b",)))) for i in range(2)]
    plan = _plan(blocks0, blocks1, {"a": a}, {"b": b}, {"a": 10_000, "b": 16},
                 [(0, 0), (0, 1), (1, 0), (1, 1)])
    devices = [Device(f"d{i}", 1e9, 2**30, op_overhead=1e-3) for i in range(2)]
    return plan, heterogeneous(devices, default_bandwidth=1e6, default_latency=2e-3)


def test_hand_built_pipeline_is_timed_by_hand():
    plan, cluster = _hand_pipeline()
    t = simulate_plan(plan, cluster)
    # a0 ends at 5 ms; its transfer takes 2 + 10 = 12 ms -> arrives 17 ms; a1 ends at 10 ms
    # but the link is busy until 17 ms -> arrives 29 ms. b0 runs 17-19 ms, b1 29-31 ms.
    assert t.step_time == pytest.approx(31e-3)
    assert t.compute == pytest.approx((10e-3, 4e-3))
    assert [(blk.device, blk.label) for blk in t.blocks] == [(0, "F0"), (0, "F1"), (1, "F0"),
                                                              (1, "F1")]
    assert [v for blk in t.blocks for v in (blk.start, blk.end)] == pytest.approx(
        [0, 5e-3, 5e-3, 10e-3, 0, 19e-3, 19e-3, 31e-3])
    assert t.bubble == pytest.approx(1 - 14e-3 / (2 * 31e-3))
    # the transfers: a0 on the link 5-17 ms, a1 17-29 ms
    assert [(x.source, x.target, x.micro_batch) for x in t.transfers] == [(0, 1, 0), (0, 1, 1)]
    assert [v for x in t.transfers for v in (x.start, x.end)] == pytest.approx(
        [5e-3, 17e-3, 17e-3, 29e-3])


def test_the_report_form_of_the_hand_built_pipeline():
    """simulation_summary on the hand plan above: the single-device time is every op on one
    device (a0, a1, b0, b1: 5 + 5 + 2 + 2 ms), the Gantt segments are the blocks and the
    transfers, and no micro-batch has a backward, so both stay in flight to the end."""
    summary = simulation_summary(*_hand_pipeline())
    assert summary["makespan"] == pytest.approx(31e-3)
    assert summary["single_device_time"] == pytest.approx(14e-3)
    assert summary["speedup"] == pytest.approx(14 / 31)
    assert summary["busy"] == pytest.approx({"d0": 10 / 31, "d1": 4 / 31})
    assert summary["peak_in_flight"] == {"d0": 2, "d1": 2}
    segments = [(x["device"], x["kind"], x["micro_batch"], x.get("link"))
                for x in summary["timeline"]]
    assert segments == [("d0", "forward", 0, None), ("d0", "forward", 1, None),
                        ("d1", "forward", 0, None), ("d1", "forward", 1, None),
                        ("d1", "transfer", 0, "d0->d1"), ("d1", "transfer", 1, "d0->d1")]
    # compute only, without d1's waits: a0 0-5, a1 5-10, b0 17-19, b1 29-31; the transfers
    assert [v for x in summary["timeline"] for v in (x["start"], x["end"])] == pytest.approx(
        [0, 5e-3, 5e-3, 10e-3, 17e-3, 19e-3, 29e-3, 31e-3, 5e-3, 17e-3, 17e-3, 29e-3])
    assert (summary["schedule"], summary["micro_batches"]) == ("gpipe", 2)


def test_single_device_step_is_the_sum_of_its_costs():
    g = hand_graph(batch=4)
    plan = build_plan(g, np.zeros(len(g.nodes), dtype=np.int32), 1, micro_batches=2)
    cluster = uniform(1, flops=1e9)
    t = simulate_plan(plan, cluster, optimizer="adam")
    costs = StepCosts(plan, cluster, "adam")
    expected = sum(costs.step(0, s) for blk in plan.programs[0].blocks for s in blk.steps)
    assert expected > 0 and t.step_time == pytest.approx(expected)
    # the update is 12 FLOPs per parameter element at 1e9 FLOP/s
    params = sum(n.size for n in g.params if n.name in plan.training.meta["grads"])
    update = sum(costs.step(0, s) for blk in plan.programs[0].blocks if blk.phase == "U"
                 for s in blk.steps)
    assert update == pytest.approx(UPDATE_FLOPS["adam"] * params / 1e9)


def test_slower_links_never_make_a_step_faster():
    g = hand_graph(batch=4)
    plan = build_plan(g, contiguous(g, 2), 2, micro_batches=4, schedule="1f1b")
    times = [simulate_plan(plan, uniform(2, flops=1e9, bandwidth=bw)).step_time
             for bw in (1e12, 1e8, 1e6, 1e4)]
    assert times == sorted(times) and times[-1] > times[0]
    # with free communication the step is at least the busiest device's compute
    fast = simulate_plan(plan, uniform(2, flops=1e9, bandwidth=1e15, latency=0.0))
    assert fast.step_time >= max(fast.compute) - 1e-15


@pytest.mark.parametrize("schedule,peaks", [("1f1b", [2, 1]), ("gpipe", [4, 4])])
def test_peak_in_flight_follows_the_schedule(schedule, peaks):
    """4 micro-batches on 2 stages: 1F1B holds (stages - stage) in flight, GPipe all 4."""
    g = hand_graph(batch=4)
    plan = build_plan(g, contiguous(g, 2), 2, micro_batches=4, schedule=schedule)
    summary = simulation_summary(plan, uniform(2, flops=1e9, bandwidth=1e9))
    assert list(summary["peak_in_flight"].values()) == peaks
