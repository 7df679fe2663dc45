"""Training graph + placement -> one Program per device, sends and receives as data.

Placement of the training graph (EXECUTOR_CONTRACT.md): a forward node runs on its device, a
gradient node on the device of its home forward node; parameter gradients end on the owner.
Two rewrites make the bytes that cross equal the partitioner's step volume V:

- fan-out sums are split per device: each device adds the gradient parts its consumers
  produced into one partial sum, and only partial sums travel to the producer's device;
- gradients of static nodes (parameters and what is computed from them alone) are summed
  over micro-batches on the device that computed them, before they travel, and the static
  node's own backward rule runs once per step on the sum.

A gradient passed through untouched by an identity rule (`add`) is relayed through the
device of the node it passed through, as SPEC counts it (executor/gradflow.py); gradients
travel under the name of their role, `grad(x)@d<sender>`, so one tensor that is the gradient
of two forward nodes is sent once for each, again as SPEC counts it.

Bytes vs V, the documented differences (tests/executor/executor_cases.py computes both):
- SPEC's requires_grad follows every float edge from a parameter; a remote reader that
  passes no gradient back (stop_gradient, a reader that does not lead to the loss) sends
  nothing, so such (tensor, device) pairs are measured 0 where V counts bytes(v) (x m);
- persistent state (batch-norm running averages; meta["updates"]) is not a graph edge: its
  new value (averaged over micro-batches) travels once per step to the state's device when
  the two differ, and V does not count it.

Execution order: each phase (SF, F, B, SB, U; executor/program.py) is ordered topologically
across devices and cut into per-device segments. With an acyclic quotient graph, devices are
pipeline stages, each with one forward and one backward segment per micro-batch ordered by
the schedule (partition/schedules.py); with a cyclic quotient a device may run several
segments per micro-batch, in one global order (`_emit_global`; 1F1B needs stages).
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field, replace
from itertools import groupby

import numpy as np

from autodiff.ir import Graph, Node
from autodiff.reverse import vjp
from executor.errors import PlanError
from executor.gradflow import gradient_flow
from executor.program import (PHASES, Accumulate, ApplyUpdate, Block, Compute, Plan, Program,
                              Recv, Send, SetState, transfer_key, validate_plan)
from partition.cost import graph_arrays
from partition.errors import PlacementError
from partition.metrics import check_assignment, quotient_adjacency, quotient_order
from partition.schedules import make_schedule, validate as validate_schedule

log = logging.getLogger(__name__)

FORWARD_PHASES = ("SF", "F")


@dataclass(eq=False)
class _Op:
    """One operation of the step on one device, before it is cut into blocks."""

    kind: str                      # compute | recv | accumulate | ready | update | state
    device: int
    phase: str                     # SF F B SB U
    name: str                      # tensor produced (or summed into)
    key: float                     # position in the training graph's topological order
    reads: tuple[str, ...] = ()    # local tensors read
    node: Node | None = None       # compute: the definition
    source: int = -1               # recv: sending device
    transfer: str = ""             # recv: activation | param | gradient | state
    remote: str = ""               # recv: the tensor's name on the sending device
    deps: list["_Op"] = field(default_factory=list)


def as_assignment(placement, forward: Graph, k: int) -> np.ndarray:
    """An int32 device per forward node from an array or a partition Placement (by node name)."""
    if hasattr(placement, "assignment") and hasattr(placement, "node_names"):
        names = tuple(placement.node_names)
        own = tuple(n.name for n in forward.nodes)
        if names != own:
            position = {name: i for i, name in enumerate(names)}
            missing = [n for n in own if n not in position]
            if missing:
                raise PlanError(f"placement: no device for node {missing[0]!r} of graph "
                                f"{forward.name!r}")
            placement = np.asarray(placement.assignment)[[position[n] for n in own]]
        else:
            placement = placement.assignment
    try:
        return check_assignment(placement, len(forward.nodes), k)
    except PlacementError as e:
        raise PlanError(str(e)) from None


class _Builder:
    """Creates the operations of one training step (see module docstring)."""

    def __init__(self, forward: Graph, training: Graph, a: np.ndarray, loss_scale: float):
        self.forward, self.training, self.a = forward, training, a
        self.flow = gradient_flow(forward, training)
        self.n = len(forward.nodes)
        self.batch = graph_arrays(forward).batch_dependent
        self.loss = training.meta.get("loss", forward.outputs[0])
        self.loss_scale = loss_scale
        self.ops: list[_Op] = []
        self.producers: dict[tuple[int, str], _Op] = {}
        self.phase_of: dict[str, str] = {}
        self.nbytes: dict[str, int] = {}
        self.present_memo: dict[str, str] = {}
        self.acc_memo: dict[tuple[str, int], str] = {}
        self.owned: dict[int, list[str]] = {}         # device -> its parameters
        for p in forward.params:
            self.owned.setdefault(int(a[forward.index[p.name]]), []).append(p.name)

    def home(self, name: str) -> int:
        return int(self.flow.home[self.training.index[name]])

    def is_batch(self, forward_name: str) -> bool:
        return bool(self.batch[self.forward.index[forward_name]])

    def add(self, op: _Op) -> _Op:
        where = (op.device, op.name)
        if op.kind in ("compute", "recv", "ready") and where in self.producers:
            raise PlanError(f"plan: tensor {op.name!r} is produced twice on device {op.device}")
        self.ops.append(op)
        if op.kind in ("compute", "recv", "ready"):
            self.producers[where] = op
        return op

    def compute(self, node: Node, device: int, phase: str, key: float) -> str:
        self.phase_of[node.name] = phase
        self.nbytes[node.name] = node.nbytes
        self.add(_Op("compute", device, phase, node.name, key, tuple(dict.fromkeys(node.inputs)),
                     node=node))
        return node.name

    def need(self, name: str, dst: int, src: int, kind: str, key: float,
             alias: str | None = None) -> str:
        """Tensor `name`, held by device src, is read on device dst: receive it there once
        (under `alias` when given). Returns its name on dst."""
        if src == dst:
            return name
        local = name if alias is None else alias
        existing = self.producers.get((dst, local))
        if existing is not None:
            if existing.kind != "recv" or existing.source != src or existing.remote != name:
                raise PlanError(f"plan: device {dst} would get {local!r} both from d{src} and "
                                f"from {existing.kind} on d{existing.source}")
            return local
        self.phase_of[local] = self.phase_of[name]
        self.nbytes[local] = self.nbytes[name]
        self.add(_Op("recv", dst, self.phase_of[name], local, key + 1e-3, source=src,
                     transfer=kind, remote=name))
        return local

    def key_of(self, device: int, name: str) -> float:
        op = self.producers.get((device, name))
        return op.key if op is not None else float(self.training.index.get(name, 0))

    # ------------------------------------------------------------ forward
    def build_forward(self) -> None:
        for i, node in enumerate(self.forward.nodes):
            d = int(self.a[i])
            phase = "F" if self.batch[i] else "SF"
            for x in dict.fromkeys(node.inputs):
                j = self.forward.index[x]
                kind = "param" if self.forward.nodes[j].op == "param" else "activation"
                self.need(x, d, int(self.a[j]), kind, float(j))
            self.compute(node, d, phase, float(i))

    # ------------------------------------------------------------ gradients
    def accumulate(self, base: str, device: int) -> str:
        """The per-step sum over micro-batches of per-micro-batch tensor `base` on `device`."""
        memo = (base, device)
        if memo not in self.acc_memo:
            into = f"{base}:sum@d{device}"
            key = self.key_of(device, base) + 2e-3
            self.add(_Op("accumulate", device, "B", into, key, (base,)))
            self.add(_Op("ready", device, "SB", into, key))
            self.phase_of[into] = "SB"
            self.nbytes[into] = self.nbytes[base]
            self.acc_memo[memo] = into
        return self.acc_memo[memo]

    def part_value(self, consumer: str, part: str, static_reader: bool) -> tuple[str, int]:
        """The tensor on the consumer's device holding its gradient part (summed over
        micro-batches when a static node reads it)."""
        device = int(self.a[self.forward.index[consumer]])
        base = part if self.forward.nodes[self.home(part)].name == consumer else self.present(
            consumer)
        if static_reader and self.is_batch(consumer):
            return self.accumulate(base, device), device
        return base, device

    def present(self, x: str) -> str:
        """The tensor holding forward node x's whole gradient on x's device."""
        if x in self.present_memo:
            return self.present_memo[x]
        flow = self.flow
        if x in flow.fan_in:
            name = flow.fan_in[x]
        elif x == self.loss:
            name = flow.seed
        else:
            parts = flow.parts.get(x) or ()
            consumer, part = parts[0] if len(parts) == 1 else (None, None)
            if part is None:
                raise PlanError(f"plan: the gradient of {x!r} is read but cannot be located in "
                                "the training graph")
            name, device = self.part_value(consumer, part, not self.is_batch(x))
            name = self.need(name, int(self.a[self.forward.index[x]]), device, "gradient",
                             self.key_of(device, name), alias=f"grad({x})@d{device}")
        self.present_memo[x] = name
        return name

    def build_fan_in(self, t: Node, x: str, key: float) -> None:
        """x's fan-out sum split per device: local parts plus one partial sum per remote device."""
        dx = int(self.a[self.forward.index[x]])
        phase = "B" if self.is_batch(x) else "SB"
        groups: dict[int, list[tuple[str, str]]] = {}
        for consumer, part in self.flow.parts[x]:
            device = int(self.a[self.forward.index[consumer]])
            groups.setdefault(device, []).append((consumer, part))
        inputs: list[str] = []
        for d, members in groups.items():
            if self.is_batch(x):
                values = [self.part_value(c, u, False)[0] for c, u in members]
            else:
                per_mb = [self.part_value(c, u, False)[0] for c, u in members if self.is_batch(c)]
                values = [self.part_value(c, u, False)[0] for c, u in members
                          if not self.is_batch(c)]
                if per_mb:
                    summed = per_mb[0] if len(per_mb) == 1 else self.compute(
                        Node(f"{t.name}:mb@d{d}", "add_n", tuple(per_mb), t.shape, t.dtype,
                             grad_of=x), d, "B", key - 0.5)
                    values.insert(0, self.accumulate(summed, d))
            if d == dx:
                inputs += values
                continue
            partial = values[0] if len(values) == 1 else self.compute(
                Node(f"{t.name}:part@d{d}", "add_n", tuple(values), t.shape, t.dtype, grad_of=x),
                d, phase, key - 0.25)
            inputs.append(self.need(partial, dx, d, "gradient", self.key_of(d, partial),
                                    alias=f"grad({x})@d{d}"))
        self.compute(replace(t, inputs=tuple(inputs)), dx, phase, key)

    def build_backward(self) -> None:
        flow, tnodes, n = self.flow, self.training.nodes, self.n
        fan_in_nodes = {node: x for x, node in flow.fan_in.items()}
        for ti in range(n, len(tnodes)):
            t = tnodes[ti]
            h = int(flow.home[ti])
            x = self.forward.nodes[h].name
            d = int(self.a[h])
            phase = "B" if self.batch[h] else "SB"
            if t.name in fan_in_nodes:
                self.build_fan_in(t, x, float(ti))
                continue
            if t.name == flow.seed and self.loss_scale != 1.0:
                value = np.full(t.shape, self.loss_scale, dtype=t.dtype)
                t = replace(t, attrs={"value": value})
            inputs = []
            for inp in t.inputs:
                j = self.training.index[inp]
                if j < n:           # a forward value: local (read by the forward node too)
                    kind = "param" if tnodes[j].op == "param" else "activation"
                    self.need(inp, d, int(self.a[j]), kind, float(j))
                    inputs.append(inp)
                elif int(flow.home[j]) == h:
                    inputs.append(inp)
                else:               # the upstream gradient the rule of x reads
                    g = self.present(x)
                    if flow.gradient.get(x) != inp:
                        raise PlanError(f"plan: rule node {t.name!r} of {x!r} reads {inp!r}, "
                                        f"but the gradient of {x!r} is {flow.gradient.get(x)!r}")
                    inputs.append(g)
            self.compute(replace(t, inputs=tuple(inputs)), d, phase, float(ti))

    def build_updates(self) -> dict[str, str]:
        grads = {p.name: self.present(p.name) for p in self.forward.params
                 if p.name in self.training.meta.get("grads", {})}
        for d, params in self.owned.items():
            self.add(_Op("update", d, "U", f"update@d{d}", float(len(self.training.nodes)),
                         tuple(grads[p] for p in params if p in grads)))
        return grads

    def build_states(self, micro_batches: int) -> tuple[dict[str, str], dict[str, float]]:
        """Persistent state (batch-norm running averages): its new value, averaged over
        micro-batches, goes to the state's device and replaces it after the step."""
        states: dict[str, str] = {}
        scale: dict[str, float] = {}
        for state, node in self.training.meta.get("updates", {}).items():
            h = self.home(node)
            scale[state] = 1.0 / micro_batches if self.batch[h] else 1.0
            value = self.accumulate(node, int(self.a[h])) if self.batch[h] else node
            ds = int(self.a[self.forward.index[state]])
            value = self.need(value, ds, int(self.a[h]), "state",
                              self.key_of(int(self.a[h]), value), alias=f"new({state})")
            self.add(_Op("state", ds, "U", state, float(len(self.training.nodes)), (value,)))
            states[state] = value
        return states, scale

    def link(self) -> None:
        """Each operation's dependencies within its phase: the producers of what it reads
        (earlier phases run before, so they need no edge)."""
        for op in self.ops:
            wanted = ([(op.source, op.remote)] if op.kind == "recv"
                      else [(op.device, r) for r in op.reads])
            for device, tensor in wanted:
                producer = self.producers.get((device, tensor))
                if producer is None:
                    raise PlanError(f"plan: device {device} holds no {tensor!r}, which "
                                    f"{op.kind} {op.name!r} on device {op.device} needs")
                if producer.phase == op.phase:
                    op.deps.append(producer)


def _order(ops: list[_Op], priority, sticky: bool) -> list[_Op]:
    """THE topological order of one phase's operations (Kahn's algorithm over `deps`): the
    ready operation with the smallest `priority(op)` goes next, ties by position in `ops`.
    With `sticky`, the device that ran the last operation keeps going while it has ready
    work, which gives fewer, longer segments. PlanError when the phase has a cycle."""
    users: dict[int, list[_Op]] = {}
    waiting = {}
    for op in ops:
        waiting[id(op)] = len(op.deps)
        for dep in op.deps:
            users.setdefault(id(dep), []).append(op)
    rank = {id(op): i for i, op in enumerate(ops)}
    ready: dict[int, list[tuple]] = {}                   # device -> heap of its ready ops

    def push(op: _Op) -> None:
        # (priority, position in `ops`, op): the position is unique, so ops are never compared
        heapq.heappush(ready.setdefault(op.device, []), (priority(op), rank[id(op)], op))

    for op in ops:
        if not op.deps:
            push(op)
    out: list[_Op] = []
    while any(ready.values()):
        current = out[-1].device if sticky and out else None
        if current is None or not ready.get(current):
            current = min((d for d, heap in ready.items() if heap), key=lambda d: ready[d][0])
        op = heapq.heappop(ready[current])[2]
        out.append(op)
        for user in users.get(id(op), []):
            waiting[id(user)] -= 1
            if waiting[id(user)] == 0:
                push(user)
    if len(out) != len(ops):
        raise PlanError("plan: the operations of a phase form a cycle")
    return out


def build_plan(forward: Graph, placement, k: int, micro_batches: int = 1,
               schedule: str = "gpipe", training: Graph | None = None,
               loss_scale: float | None = None) -> Plan:
    """Per-device programs for one training step of `forward` placed by `placement`.

    `placement`: int array aligned with forward.nodes or a partition Placement. `forward` is
    the per-micro-batch graph; `training` defaults to `autodiff.vjp(forward)`. `loss_scale`
    multiplies the loss gradient seed (default 1/m: the step loss is the mean of the
    micro-batch losses, so gradients match one full batch of a mean loss).
    """
    if not isinstance(micro_batches, int) or isinstance(micro_batches, bool) or micro_batches < 1:
        raise PlanError(f"micro_batches: expected a positive integer, got {micro_batches!r}")
    make_schedule(schedule, 1, micro_batches)           # an unknown name fails early
    a = as_assignment(placement, forward, k)
    training = vjp(forward) if training is None else training
    loss = training.meta.get("loss", forward.outputs[0])
    arrays = graph_arrays(forward)
    if loss_scale is None:
        loss_scale = 1.0 / micro_batches if arrays.batch_dependent[forward.index[loss]] else 1.0
    b = _Builder(forward, training, a, loss_scale)
    b.build_forward()
    b.build_backward()
    grads = b.build_updates()
    states, state_scale = b.build_states(micro_batches)
    b.link()

    adjacency = quotient_adjacency(arrays, a, k)
    stages, runs = _stages_and_runs(b.ops, quotient_order(adjacency))
    if stages is None and schedule == "1f1b":
        raise PlanError("schedule 1f1b needs pipeline stages, but the placement's quotient graph "
                        "has a cycle; use gpipe or sequential")
    writer = _BlockWriter(b, k, grads, state_scale)
    for run in runs["SF"]:
        writer.emit(run, "SF", None)
    if stages is not None:
        _emit_pipeline(writer, runs, stages, adjacency, make_schedule(schedule, k, micro_batches))
    else:
        _emit_global(writer, runs, schedule, micro_batches)
    for run in runs["SB"] + runs["U"]:
        writer.emit(run, run[0].phase, None)
    programs = _programs(b, writer, loss, grads, states)
    plan = Plan(programs=programs, order=_global_order(programs),
                micro_batches=micro_batches, schedule=schedule,
                stages=None if stages is None else tuple(stages), loss=loss,
                loss_scale=loss_scale, nbytes=dict(b.nbytes), training=training)
    validate_plan(plan)
    return plan


def _stages_and_runs(ops: list[_Op], stages):
    """(stages or None, per-phase runs): each phase's operations ordered and cut into
    per-device segments, by pipeline stage when the quotient is acyclic. Falls back to one
    global order when the stage order would give a device several segments of one phase."""
    by_phase = {ph: [op for op in ops if op.phase == ph] for ph in PHASES}
    runs = _phase_runs(by_phase, stages)
    if stages is not None and any(len({r[0].device for r in rs}) != len(rs)
                                  for ph, rs in runs.items()):
        log.warning("plan: stage order gave several segments per device; running the acyclic "
                    "quotient as one global order")
        stages = None
        runs = _phase_runs(by_phase, None)
    return stages, runs


def _emit_pipeline(writer: "_BlockWriter", runs: dict[str, list[list[_Op]]], stages,
                   adjacency: np.ndarray, sched) -> None:
    """Each device's forward and backward segment once per micro-batch, in the order of its
    stage's schedule actions (the schedule checked against the quotient's arcs first)."""
    stage_of = {d: s for s, d in enumerate(stages)}
    validate_schedule(sched, [(stage_of[int(u)], stage_of[int(v)])
                              for u, v in zip(*np.nonzero(adjacency))])
    segment = {(ph, run[0].device): run for ph in ("F", "B") for run in runs[ph]}
    for d in range(len(writer.blocks)):
        for action in sched.actions[stage_of[d]]:
            run = segment.get((action.kind, d))
            if run is not None:
                writer.emit(run, action.kind, action.micro_batch)


def _emit_global(writer: "_BlockWriter", runs: dict[str, list[list[_Op]]], schedule: str,
                 micro_batches: int) -> None:
    """Without stages: the F and B segments in one global order per micro-batch, all forwards
    first with "gpipe", micro-batch after micro-batch otherwise."""
    order = ([("F", i) for i in range(micro_batches)] + [("B", i) for i in range(micro_batches)]
             if schedule == "gpipe" else
             [(ph, i) for i in range(micro_batches) for ph in ("F", "B")])
    for ph, i in order:
        for run in runs[ph]:
            writer.emit(run, ph, i)


def _programs(b: _Builder, writer: "_BlockWriter", loss: str, grads: dict[str, str],
              states: dict[str, str]) -> tuple[Program, ...]:
    """One Program per device: its blocks, the nodes it computes, and what it owns."""
    forward = b.forward
    per_step = frozenset(name for name, ph in b.phase_of.items() if ph in ("SF", "SB"))
    device_of = {n.name: int(b.a[i]) for i, n in enumerate(forward.nodes)}
    programs = []
    for d in range(len(writer.blocks)):
        own_params = tuple(b.owned.get(d, ()))
        programs.append(Program(
            device=d, blocks=tuple(writer.blocks[d]),
            nodes={op.name: op.node for op in b.ops if op.kind == "compute" and op.device == d},
            per_step=per_step, params=own_params,
            inputs=tuple(x.name for x in forward.inputs if device_of[x.name] == d),
            loss=loss if device_of[loss] == d else None,
            grads={p: grads[p] for p in own_params if p in grads},
            states={s: v for s, v in states.items() if device_of[s] == d}))
    return tuple(programs)


class _BlockWriter:
    """Turns runs of operations into Blocks of steps: receives where they happen, computes
    fused into one step, and each produced tensor's sends right after it."""

    def __init__(self, builder: _Builder, k: int, grads: dict[str, str],
                 state_scale: dict[str, float]):
        self.outgoing: dict[tuple[int, str], list[tuple[int, str, str]]] = {}
        for op in builder.ops:
            if op.kind == "recv":
                self.outgoing.setdefault((op.source, op.remote), []).append(
                    (op.device, op.transfer, op.name))
        self.owned = builder.owned
        self.grads, self.state_scale = grads, state_scale
        self.blocks: list[list[Block]] = [[] for _ in range(k)]

    def emit(self, run: list[_Op], phase: str, mb: int | None) -> None:
        steps: list = []
        fused: list[str] = []

        def flush() -> None:
            if fused:
                steps.append(Compute(tuple(fused)))
                fused.clear()
        for op in run:
            if op.kind == "compute":
                fused.append(op.name)
            else:
                flush()
                if op.kind == "recv":
                    steps.append(Recv(op.name, op.source, op.transfer))
                elif op.kind == "accumulate":
                    steps.append(Accumulate(op.reads[0], op.name))
                elif op.kind == "update":
                    own = self.owned.get(op.device, [])
                    steps.append(ApplyUpdate(tuple(own), tuple(self.grads.get(p) for p in own)))
                elif op.kind == "state":
                    steps.append(SetState(op.name, op.reads[0], self.state_scale[op.name]))
            if op.kind in ("compute", "recv", "ready"):
                for dst, kind, arrives in sorted(self.outgoing.get((op.device, op.name), [])):
                    flush()
                    steps.append(Send(op.name, dst, kind, None if arrives == op.name else arrives))
        flush()
        self.blocks[run[0].device].append(Block(phase, mb, tuple(steps)))


def _phase_runs(by_phase: dict[str, list[_Op]], stages) -> dict[str, list[list[_Op]]]:
    """Each phase ordered across devices and cut into per-device segments (module docstring)."""
    stage_of = {d: s for s, d in enumerate(stages or ())}
    runs = {}
    for ph, ops in by_phase.items():
        if stages is not None:
            sign = 1 if ph in FORWARD_PHASES else -1
            ordered = _order(ops, lambda op: (sign * stage_of[op.device], op.key), sticky=False)
        else:
            ordered = _order(ops, lambda op: (op.key, op.device), sticky=True)
        runs[ph] = [list(run) for _, run in groupby(ordered, key=lambda op: op.device)]
    return runs


def _global_order(programs: list[Program]) -> tuple[tuple[int, int], ...]:
    """Round-robin over devices, running each device's next block once everything it receives
    has been sent; PlanError if no device can proceed (the programs would deadlock)."""
    position = [0] * len(programs)
    delivered: set[tuple] = set()
    order: list[tuple[int, int]] = []
    total = sum(len(p.blocks) for p in programs)
    while len(order) < total:
        progressed = False
        for p in programs:
            while position[p.device] < len(p.blocks):
                blk = p.blocks[position[p.device]]
                if any(transfer_key(p, blk, r) not in delivered for r in blk.receives):
                    break
                for s in blk.sends:
                    delivered.add(transfer_key(p, blk, s))
                order.append((p.device, position[p.device]))
                position[p.device] += 1
                progressed = True
        if not progressed:
            stuck = [f"d{p.device}:{p.blocks[position[p.device]].label}" for p in programs
                     if position[p.device] < len(p.blocks)]
            raise PlanError(f"plan: the device programs deadlock; blocked: {', '.join(stuck)}")
    return tuple(order)
