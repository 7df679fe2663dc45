"""Step simulator on a cluster of the Ray executor (`batch_transfers`: ops run in the
executor's segments) and on devices pinned to shared processors (`cores`): hand-computed."""
import numpy as np
import pytest

from autodiff.ir import Graph, Node
from partition.cluster import Cluster, uniform
from partition.simulate import simulate

# 100 FLOP/s per device; a 400-byte tensor takes 0.5 s latency + 400 / 400 s = 1.5 s
BASE = uniform(4, flops=100.0, bandwidth=400.0, latency=0.5)


def cluster(k=2, **fields):
    return Cluster(BASE.devices[:k], BASE.bandwidth[:k, :k], BASE.latency[:k, :k], **fields)


def node(name, inputs=(), flops=100):
    """A 100-float32 (400-byte) tensor; no parameters, so no backward pass."""
    if not inputs:
        return Node(name, "input", (), (100,), flops=0)
    return Node(name, "f", tuple(inputs), (100,), flops=flops)


def placed(graph, mapping):
    return np.array([mapping[n.name] for n in graph.nodes], dtype=np.int32)


def test_a_segment_sends_when_it_ends():
    g = Graph([node("x"), node("a", ["x"]), node("b", ["a"]), node("c", ["a"], 200)],
              ["b", "c"])
    a = placed(g, dict(x=0, a=0, b=0, c=1))
    # ops: a 0-1 | a 0->1 1-2.5 | c 2.5-4.5 (b 1-2 meanwhile)
    assert simulate(g, a, cluster()).makespan == pytest.approx(4.5)
    # segments: dev0 runs a, b as one, whose output leaves at 2: a 2-3.5 | c 3.5-5.5
    assert simulate(g, a, cluster(batch_transfers=True)).makespan == pytest.approx(5.5)


def test_segments_of_a_cyclic_placement_stay_on_a_device_while_it_can():
    # x, a, e on dev0, b on dev1, c (reads a and b) on dev0: tensors flow 0 -> 1 -> 0
    g = Graph([node("x"), node("a", ["x"]), node("b", ["a"]), node("c", ["a", "b"]),
               node("e", ["a"])], ["c", "e"])
    a = placed(g, dict(x=0, a=0, b=1, c=0, e=0))
    # ops: a 0-1 | a 0->1 1-2.5 | b 2.5-3.5 | b 1->0 3.5-5 | c 5-6
    assert simulate(g, a, cluster()).makespan == pytest.approx(6.0)
    # segments (a topological order that stays on dev0 while it has ready ops): [a, e] on
    # dev0 0-2 | a 2-3.5 | [b] 3.5-4.5 | b 4.5-6 | [c] 6-7
    assert simulate(g, a, cluster(batch_transfers=True)).makespan == pytest.approx(7.0)


def test_devices_pinned_round_robin_share_a_processor():
    g = Graph([node("x0"), node("x2"), node("a", ["x0"]), node("b", ["x2"])], ["a", "b"])
    # devices 0 and 2 run on processor 0 of 2: both ops at once take twice as long
    same = placed(g, dict(x0=0, a=0, x2=2, b=2))
    assert simulate(g, same, cluster(4, cores=2)).makespan == pytest.approx(2.0)
    # devices 0 and 1 have a processor each
    apart = placed(g, dict(x0=0, a=0, x2=1, b=1))
    assert simulate(g, apart, cluster(4, cores=2)).makespan == pytest.approx(1.0)


def test_a_device_keeps_its_processor_for_its_spin():
    g = Graph([node("x"), node("a", ["x"]), node("b", ["a"])], ["b"])
    a = placed(g, dict(x=0, a=0, b=2))
    # a 0-1 | a 0->2 1-2.5 | b at 2.5 while dev0 spins (until 3): twice as long, 2.5-4.5
    assert simulate(g, a, cluster(4, cores=2, poll_after=2.0)).makespan == pytest.approx(4.5)
    # a spin until 2: b 2.5-3.5
    assert simulate(g, a, cluster(4, cores=2, poll_after=1.0)).makespan == pytest.approx(3.5)
