"""The step simulator: times the executor's own Plan on a cluster model.

A Plan (executor/plan.py) is the one description of a training step; this module dry-runs
it as torch pipelining's simulator dry-runs the action lists its runtime executes, so the
prediction has the executor's structure (blocks, schedule, partial sums, relays) by
construction. The rules, which emulated devices (executor/emulate.py) enforce for real:

- a device runs its blocks in program order, one step at a time;
- `Compute`: each node costs `op_overhead + flops / rate(op)` on its device; `Accumulate`
  one add over the tensor's elements; `ApplyUpdate` `UPDATE_FLOPS[optimizer]` per parameter
  element (kind "update"), plus one `op_overhead` per parameter; `SetState` one scale;
- `Send` costs its device nothing: the transfer starts when the link is free and occupies
  the directed link for `latency + bytes / bandwidth`; transfers on one link keep their
  order; `Recv` waits until the tensor has arrived;
- the step ends when the last device finishes, plus the cluster's `step_overhead`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodiff.ir import Node
from autodiff.ops.registry import node_flops
from executor.program import (Accumulate, ApplyUpdate, Compute, Plan, Recv, Send, SetState,
                              transfer_key)
from partition.cluster import Cluster
from partition.schedules import peak_in_flight

# FLOPs per parameter element of one optimizer update (the arithmetic of executor/optim.py).
UPDATE_FLOPS = {"sgd": 2, "momentum": 4, "adam": 12}


@dataclass(frozen=True)
class BlockTime:
    """When one block (its phase and micro-batch) of one device ran, or one stretch of its
    compute (seconds from the step's start)."""

    device: int
    phase: str
    micro_batch: int | None
    start: float
    end: float

    @property
    def label(self) -> str:
        return self.phase if self.micro_batch is None else f"{self.phase}{self.micro_batch}"


@dataclass(frozen=True)
class TransferTime:
    """When one transfer occupied its directed link (seconds from the step's start)."""

    source: int
    target: int
    tensor: str
    micro_batch: int | None
    start: float
    end: float


@dataclass(frozen=True)
class PlanTiming:
    """A simulated step of a Plan: its time, each device's compute seconds and busy
    fraction, the pipeline bubble (1 - busy time / (stages * step time); None without
    stages), every block's interval (from its start, waits included), every stretch of
    compute (`spans`, one per run of compute steps without a wait) and every transfer's."""

    step_time: float
    compute: tuple[float, ...]
    busy: tuple[float, ...]
    bubble: float | None
    blocks: tuple[BlockTime, ...]
    transfers: tuple[TransferTime, ...] = ()
    spans: tuple[BlockTime, ...] = ()

    def to_dict(self) -> dict:
        return {"step_time": self.step_time, "compute": list(self.compute),
                "busy": list(self.busy), "bubble": self.bubble,
                "blocks": [[b.device, b.label, b.start, b.end] for b in self.blocks],
                "transfers": [[t.source, t.target, t.tensor, t.micro_batch, t.start, t.end]
                              for t in self.transfers]}


class StepCosts:
    """Seconds of each step kind of a Plan on a cluster (the model emulation pads to)."""

    def __init__(self, plan: Plan, cluster: Cluster, optimizer: str | None = None):
        if cluster.k != plan.k:
            raise ValueError(f"the plan has {plan.k} devices, the cluster {cluster.k}")
        self.plan, self.cluster = plan, cluster
        self.update_flops = UPDATE_FLOPS.get(optimizer or "sgd", UPDATE_FLOPS["sgd"])
        self.shapes = {n.name: n.shape for n in plan.training.nodes}
        for p in plan.programs:
            self.shapes.update((name, node.shape) for name, node in p.nodes.items())
        self._node_seconds: dict[tuple[int, str], float] = {}

    def node(self, device: int, node: Node) -> float:
        """One node's compute seconds on `device`."""
        key = (device, node.name)
        if key not in self._node_seconds:
            dev = self.cluster.devices[device]
            flops = node_flops(node, [self.shapes.get(i, ()) for i in node.inputs])
            self._node_seconds[key] = 0.0 if node.is_source else (
                dev.op_overhead + flops / dev.rate(node.op))
        return self._node_seconds[key]

    def elementwise(self, device: int, tensor: str, op: str, per_element: float = 1) -> float:
        dev = self.cluster.devices[device]
        elements = int(np.prod(self.shapes.get(tensor, ()), dtype=np.int64))
        return dev.op_overhead + per_element * elements / dev.rate(op)

    def transfer(self, source: int, target: int, tensor: str) -> float:
        return self.cluster.transfer_time(source, target, self.plan.nbytes[tensor])

    def step(self, device: int, step, on: int | None = None) -> float:
        """Compute seconds of one step of device's program (0 for Send and Recv), priced
        at the rates of device `on` (default: `device` itself)."""
        on = device if on is None else on
        if isinstance(step, Compute):
            nodes = self.plan.programs[device].nodes
            return sum(self.node(on, nodes[name]) for name in step.nodes)
        if isinstance(step, Accumulate):
            return self.elementwise(on, step.tensor, "add")
        if isinstance(step, ApplyUpdate):
            return sum(self.elementwise(on, p, "update", self.update_flops)
                       for p, g in zip(step.params, step.grads) if g is not None)
        if isinstance(step, SetState):
            return self.elementwise(on, step.tensor, "multiply")
        return 0.0


def simulate_plan(plan: Plan, cluster: Cluster, optimizer: str | None = None) -> PlanTiming:
    """Time one step of `plan` on `cluster` by the rules of the module docstring."""
    return _simulate(StepCosts(plan, cluster, optimizer))


def _simulate(costs: StepCosts) -> PlanTiming:
    plan, cluster = costs.plan, costs.cluster
    k = plan.k
    clock, compute = np.zeros(k), np.zeros(k)       # per device: now, and compute seconds
    link_free = np.zeros((k, k))
    arrival: dict[tuple, float] = {}
    blocks, transfers, spans = [], [], []
    # plan.order runs every block after the blocks that send to it, and each directed link
    # is fed by one device in its program order: one pass in that order is the event order.
    for d, i in plan.order:
        program = plan.programs[d]
        block = program.blocks[i]
        start = clock[d]
        for step in block.steps:
            if isinstance(step, Recv):
                clock[d] = max(clock[d], arrival[transfer_key(program, block, step)])
            elif isinstance(step, Send):
                begin = max(clock[d], link_free[d, step.target])
                end = begin + costs.transfer(d, step.target, step.arrives_as)
                link_free[d, step.target] = arrival[transfer_key(program, block, step)] = end
                transfers.append(TransferTime(d, step.target, step.arrives_as,
                                              block.micro_batch, float(begin), float(end)))
            else:
                seconds = costs.step(d, step)
                if seconds > 0:
                    _extend(spans, BlockTime(d, block.phase, block.micro_batch,
                                             float(clock[d]), float(clock[d] + seconds)))
                clock[d] += seconds
                compute[d] += seconds
        blocks.append(BlockTime(d, block.phase, block.micro_batch, float(start),
                                float(clock[d])))
    step_time = float(clock.max(initial=0.0)) + cluster.step_overhead
    busy = compute / step_time if step_time > 0 else np.zeros(k)
    bubble = None
    if plan.stages is not None and step_time > 0:
        stages = list(plan.stages)
        bubble = float(1.0 - compute[stages].sum() / (len(stages) * step_time))
    return PlanTiming(step_time, tuple(map(float, compute)), tuple(map(float, busy)), bubble,
                      tuple(blocks), tuple(transfers), tuple(spans))


def _extend(spans: list[BlockTime], span: BlockTime) -> None:
    """Append `span`, or lengthen the last span when `span` continues it (same device and
    block, no wait in between)."""
    last = spans[-1] if spans else None
    if last is not None and (last.device, last.phase, last.micro_batch, last.end) == (
            span.device, span.phase, span.micro_batch, span.start):
        spans[-1] = BlockTime(last.device, last.phase, last.micro_batch, last.start, span.end)
    else:
        spans.append(span)


# ------------------------------------------------------------ the report's form
PHASE_KINDS = {"SF": "forward", "F": "forward", "B": "backward", "SB": "backward",
               "U": "update"}


def simulation_summary(plan: Plan, cluster: Cluster, optimizer: str | None = None) -> dict:
    """The simulated step of `plan` in the form reports and plots read (the keys of
    partition.simulate.SimulationResult.to_dict), the speedup over the same plan's work on
    the fastest device alone (`single_device_time`)."""
    costs = StepCosts(plan, cluster, optimizer)
    timing = _simulate(costs)
    names = cluster.device_names
    single = single_device_time(costs)
    return {"makespan": timing.step_time, "busy": dict(zip(names, timing.busy)),
            "bubble": timing.bubble, "single_device_time": single,
            "speedup": single / timing.step_time if timing.step_time > 0 else 1.0,
            "peak_in_flight": dict(zip(names, _peak_in_flight(timing, plan.k))),
            "schedule": plan.schedule, "micro_batches": plan.micro_batches,
            "timeline": _timeline(timing, names)}


def single_device_time(costs: StepCosts) -> float:
    """Seconds of every compute step of the plan run on the cluster's fastest device, plus
    the step overhead (the baseline a model-parallel speedup is measured against)."""
    fastest = int(np.argmax(costs.cluster.speeds))
    return float(costs.cluster.step_overhead + sum(
        costs.step(p.device, step, on=fastest)
        for p in costs.plan.programs for block in p.blocks for step in block.steps))


def _peak_in_flight(timing: PlanTiming, k: int) -> list[int]:
    """Per device, the most micro-batches whose forward block started and whose backward
    block had not finished at one time."""
    spans: list[dict[int, list[float]]] = [{} for _ in range(k)]
    for b in timing.blocks:
        if b.phase in ("F", "B"):
            span = spans[b.device].setdefault(b.micro_batch, [b.start, timing.step_time])
            if b.phase == "B":
                span[1] = b.end
    return [peak_in_flight(device.values()) for device in spans]


def _timeline(timing: PlanTiming, names: tuple[str, ...]) -> list[dict]:
    """Compute spans (kind forward, backward or update) and transfers (kind transfer, under
    the receiving device with "link": "a->b") as Gantt segments."""
    spans = [{"device": names[b.device], "start": b.start, "end": b.end,
              "kind": PHASE_KINDS.get(b.phase, "forward"),
              "micro_batch": -1 if b.micro_batch is None else b.micro_batch}
             for b in timing.spans]
    return spans + [{"device": names[t.target], "start": t.start, "end": t.end,
                     "kind": "transfer", "micro_batch": -1 if t.micro_batch is None
                     else t.micro_batch, "link": f"{names[t.source]}->{names[t.target]}"}
                    for t in timing.transfers]
