"""The simulator's re-derivation of the executor's segments (partition/simulate_segments.py
`executor_segments`) against the real cut (executor/plan.py `build_plan`): per device and
phase, the same segments in the same order, holding the same forward nodes' ops.

What both express: a forward node's forward op is the plan's compute of that node. A forward
node's backward op is the plan's gradient nodes homed at it (`grad_of`, on its device) that
wait for its incoming gradient; a node with none (a relay of a pass-through gradient, a
parameter whose summed gradient comes from other devices) is the receive of its gradient
on its device. Left out, as the simulator has no such ops: sources' forward ops, receives of
activations, accumulations over micro-batches, the plan's partial sums on consumers' devices
(`:mb@`, `:part@`), gradient rule nodes computed from forward values alone (masks,
transposes: the plan may run them in an earlier segment), and the backward of nodes SPEC's
requires_grad marks but that receive no gradient in the training graph (batch-norm running
statistics, a pass-through `add` whose gradient stays on its device); plan blocks left
empty by this are dropped (a split they cause still shows in the segments around them).
"""
import re

import numpy as np
import pytest

from autodiff.models import BUILDERS
from executor.plan import build_plan
from executor.program import Compute, Recv
from partition.api import partition
from partition.cluster import uniform
from partition.cost import graph_arrays
from partition.metrics import quotient_adjacency, quotient_order
from partition.simulate_segments import executor_segments

TINY = {"mlp": dict(layers=2, width=8, in_features=6, classes=3),
        "gpt": dict(layers=1, d_model=8, heads=2, seq=4, vocab=11),
        "lstm": dict(layers=1, hidden=6, vocab=7, seq=3),
        "resnet": dict(channels=(4,), blocks=1, image=6, in_channels=2, classes=3)}
# (backward, per micro-batch) of the simulator's segments -> the plan's phase
PHASE = {(False, False): "SF", (False, True): "F", (True, True): "B", (True, False): "SB"}
GRAD_ALIAS = re.compile(r"grad\((.+)\)@d\d+")


def model(family):
    return BUILDERS[family](batch=4, dtype="float32", **TINY[family])


def placement(graph, k, kind):
    if kind == "contiguous":
        return np.asarray(partition(graph, uniform(k), algorithm="contiguous",
                                    epsilon=1.0).assignment, dtype=np.int32)
    seed = int(kind.removeprefix("random"))
    return np.random.default_rng(seed).integers(0, k, len(graph.nodes)).astype(np.int32)


def stages(graph, a, k):
    """Devices in a topological order of the acyclic quotient graph, else None."""
    return quotient_order(quotient_adjacency(graph_arrays(graph), a, k))


def simulator_segments(graph, a, k):
    """{(device, phase): [frozenset of forward node names per segment, in order]}, as
    partition/simulate.py calls executor_segments; and the devices of each phase's segments
    in the simulator's global order."""
    arrays = graph_arrays(graph)
    order = stages(graph, a, k)
    stage_of = None if order is None else {d: s for s, d in enumerate(order)}
    fseg, bseg, info = executor_segments(arrays, a, stage_of)
    members = [set() for _ in info]
    for v, node in enumerate(graph.nodes):
        for s in (fseg[v], bseg[v]):
            if s >= 0:
                members[s].add(node.name)
    out, devices = {}, {}
    for (device, backward, per_mb), names in zip(info, members):
        out.setdefault((device, PHASE[backward, per_mb]), []).append(frozenset(names))
        devices.setdefault(PHASE[backward, per_mb], []).append(device)
    return out, devices


def gradient_homes(training, n):
    """Per gradient node of the training graph: its home forward node (following `grad_of`),
    and whether it waits for the gradient flowing into its home (it reads a gradient homed
    elsewhere, or one that does; the loss's nodes all count), as opposed to rule nodes that
    read forward values only (masks, transposes), which the plan may run earlier."""
    nodes, index = training.nodes, training.index
    home, waits = {}, {}
    loss = training.meta.get("loss")
    for t in nodes[n:]:
        h = t.grad_of
        while index[h] >= n:
            h = nodes[index[h]].grad_of
        home[t.name] = h
        waits[t.name] = h == loss or any(
            index[u] >= n and (home[u] != h or waits[u]) for u in t.inputs)
    return home, waits


def plan_segments(graph, a, k, micro_batches=2):
    """The same read off build_plan's programs: each device's blocks (of micro-batch 0 and once
    per step), each as the forward nodes computed in it and those whose backward runs in it."""
    plan = build_plan(graph, a, k, micro_batches=micro_batches, schedule="gpipe")
    assert (plan.stages is None) == (stages(graph, a, k) is None)
    forward = {node.name for node in graph.nodes if not node.is_source}
    device_of = {node.name: int(d) for node, d in zip(graph.nodes, a)}
    home, waits = gradient_homes(plan.training, len(graph.nodes))
    blocks = []
    for program in plan.programs:
        for block in program.blocks:
            if block.micro_batch not in (None, 0) or block.phase == "U":
                continue
            names, received = set(), set()
            for step in block.steps:
                if isinstance(step, Compute):
                    names.update(t for t in step.nodes if t in forward)
                    names.update(home[t] for t in step.nodes if waits.get(t))
                elif isinstance(step, Recv) and step.kind == "gradient":
                    x = GRAD_ALIAS.fullmatch(step.tensor).group(1)
                    if device_of[x] == program.device:
                        received.add(x)
            blocks.append(((program.device, block.phase), names, received))
    backward = set().union(*(names for (_, ph), names, _ in blocks if ph in ("B", "SB")))
    out = {}
    for key, names, received in blocks:
        out.setdefault(key, []).append(frozenset(names | (received - backward)))
    return out


def compared(graph, a, k, phases=("SF", "F", "B", "SB")):
    """Both sides on what both express (module docstring), for `phases`."""
    simulated, _ = simulator_segments(graph, a, k)
    planned = plan_segments(graph, a, k)
    expressed = set().union(*(s for (_, ph), segs in planned.items() if ph in ("B", "SB")
                              for s in segs))
    assert expressed, "the plan shows no backward op"

    def keep(segments, backward_only_expressed):
        out = {}
        for (device, ph), segs in segments.items():
            if ph not in phases:
                continue
            if backward_only_expressed and ph in ("B", "SB"):
                segs = [s & expressed for s in segs]
            segs = [s for s in segs if s]
            if segs:
                out[device, ph] = segs
        return out
    return keep(simulated, True), keep(planned, False)


def show(segments):
    return "\n".join(f"d{d} {ph}: " + " | ".join(" ".join(sorted(s)) for s in segs)
                     for (d, ph), segs in sorted(segments.items()))


def assert_same_cut(graph, a, k, phases=("SF", "F", "B", "SB")):
    simulated, planned = compared(graph, a, k, phases)
    forward = {n.name for n in graph.nodes if not n.is_source}
    covered = set().union(*(s for (_, ph), segs in simulated.items() if ph in ("SF", "F")
                            for s in segs))
    if {"SF", "F"} <= set(phases):
        assert covered == forward
    assert simulated == planned, f"simulator:\n{show(simulated)}\nplan:\n{show(planned)}"


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("family", sorted(TINY))
def test_acyclic_placements_cut_alike(family, k):
    """Stage order (one segment per device and phase): same members, devices by stage."""
    graph = model(family)
    a = placement(graph, k, "contiguous")
    order = stages(graph, a, k)
    assert order is not None
    assert_same_cut(graph, a, k)
    _, devices = simulator_segments(graph, a, k)
    for ph, seq in devices.items():
        expected = [d for d in (order if ph in ("SF", "F") else order[::-1]) if d in seq]
        assert seq == expected, ph
        assert len(seq) == len(set(seq)), ph
    plan = build_plan(graph, a, k, micro_batches=2, schedule="gpipe")
    assert list(plan.stages) == list(order)


# Cyclic placements (no stages: one global order that stays on a device while it has ready
# ops) agree only where the plan's extra ops do not move the cut. Of the seeded random
# placements tried (4 families, k = 2, 3, seeds 0-3: 32), 18 disagree somewhere: in the
# forward phases through sources and receives (modelling both, keyed as the plan keys them,
# reproduced the plan's forward cut in all 32, checked outside this file), in the backward
# ones through receives and the static gradients' transfers (the xfail cases below). These
# agree and run several segments per device and phase through the sticky order:
CYCLIC = [("mlp", 2, 2), ("mlp", 3, 2), ("lstm", 2, 1), ("lstm", 2, 2), ("gpt", 2, 1),
          ("gpt", 2, 3), ("resnet", 2, 2)]


@pytest.mark.parametrize("family,k,seed", CYCLIC)
def test_cyclic_placements_cut_alike(family, k, seed):
    graph = model(family)
    a = placement(graph, k, f"random{seed}")
    assert stages(graph, a, k) is None
    simulated, _ = simulator_segments(graph, a, k)
    assert max(len(segs) for segs in simulated.values()) >= 3
    assert_same_cut(graph, a, k)


STICKY = ("cyclic placements, sticky order: when a device runs out of ready ops, the plan "
          "picks the next device by the smallest key among all its ops of the phase, ")


@pytest.mark.xfail(strict=True, reason=STICKY + (
    "which include sources (the input `targets` on d1 comes before every computed node) and "
    "receives keyed by their producer's position; executor_segments orders computed nodes "
    "only, so it starts on d0 (`take`) and runs `reshape_5` in d1's next segment, where the "
    "plan runs it in a segment of its own first"))
def test_cyclic_forward_with_sources_and_receives():
    graph = model("gpt")
    a = placement(graph, 2, "random0")
    assert_same_cut(graph, a, 2, phases=("SF", "F"))


@pytest.mark.xfail(strict=True, reason=STICKY + (
    "which include receives keyed by the sender's gradient op: d2's receive of "
    "grad(sigmoid_3) (key of d0's multiply_26) comes before d1's of grad(tanh_3) (multiply_27), "
    "so the plan runs sigmoid_3's backward on d2 in a segment of its own, while "
    "executor_segments (key -v: tanh_3 comes later in the forward) goes to d1 first and "
    "d2 then runs the backward of getitem_8, getitem_9, multiply_3, sigmoid_2 and sigmoid_3 "
    "as one segment"))
def test_cyclic_backward_with_receives():
    graph = model("lstm")
    a = placement(graph, 3, "random0")
    assert_same_cut(graph, a, 3, phases=("B",))


@pytest.mark.xfail(strict=True, reason=(
    "static backward: the plan sends parameter gradients summed over micro-batches in the SB "
    "phase, so d1 receives head.bias's from d2 and layer0's from d0 in two SB blocks; in "
    "executor_segments the parameters' SB ops have no dependencies among them (their "
    "gradients return from the B phase) and each device's form one segment"))
def test_cyclic_static_backward_transfers():
    graph = model("mlp")
    a = placement(graph, 3, "random0")
    assert_same_cut(graph, a, 3, phases=("SB",))
