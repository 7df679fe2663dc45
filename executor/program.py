"""Per-device programs as data: blocks of Recv / Compute / Accumulate / Send / ApplyUpdate steps.

A device's Program is an ordered list of Blocks. A block belongs to one phase of the step:

- `SF` static forward: parameters, constants and what is computed from them alone (once per step);
- `F<i>` / `B<i>` forward / backward of micro-batch i (batch-dependent nodes and their gradients);
- `SB` static backward: gradients of static nodes, from gradients summed over micro-batches;
- `U` the optimizer update of the parameters the device owns.

A tensor is *per-step* (one value per step: static values, accumulated sums) or *per
micro-batch* (one value per micro-batch; its key carries the block's micro-batch). A Plan is
the k programs plus one global order of (device, block) in which they can run: every block's
receives are sent by blocks earlier in that order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, NamedTuple, Union

import numpy as np

from autodiff.ir import Graph, Node
from executor.errors import PlanError


@dataclass(frozen=True)
class Recv:
    """Take `tensor` sent by device `source` (kind: activation, param or gradient)."""

    tensor: str
    source: int
    kind: str

    def __str__(self) -> str:
        return f"recv {self.tensor} <- d{self.source} ({self.kind})"


@dataclass(frozen=True)
class Send:
    """Send `tensor` (already computed or received here) to device `target`, where it
    arrives under the name `arrives_as` (gradients travel under the name of their role,
    e.g. `grad(x)@d1`, because one tensor may be the gradient of several forward nodes)."""

    tensor: str
    target: int
    kind: str
    rename: str | None = None

    @property
    def arrives_as(self) -> str:
        return self.tensor if self.rename is None else self.rename

    def __str__(self) -> str:
        alias = "" if self.rename is None else f" as {self.rename}"
        return f"send {self.tensor} -> d{self.target}{alias} ({self.kind})"


@dataclass(frozen=True)
class Compute:
    """Run these nodes in order (a fused segment); their definitions are in Program.nodes."""

    nodes: tuple[str, ...]

    def __str__(self) -> str:
        return "compute " + " ".join(self.nodes)


@dataclass(frozen=True)
class Accumulate:
    """Add this micro-batch's `tensor` into the per-step sum `into` (the first one copies)."""

    tensor: str
    into: str

    def __str__(self) -> str:
        return f"accumulate {self.tensor} into {self.into}"


@dataclass(frozen=True)
class ApplyUpdate:
    """Run the optimizer on these owned parameters with their step gradients (None: skipped)."""

    params: tuple[str, ...]
    grads: tuple[str | None, ...]

    def __str__(self) -> str:
        pairs = ", ".join(f"{p} (grad {g})" for p, g in zip(self.params, self.grads))
        return f"apply_update {pairs}"


@dataclass(frozen=True)
class SetState:
    """Replace persistent state `state` (a batch-norm running average) by `scale * tensor`."""

    state: str
    tensor: str
    scale: float

    def __str__(self) -> str:
        scale = "" if self.scale == 1.0 else f" * {self.scale:g}"
        return f"set_state {self.state} = {self.tensor}{scale}"


Step = Union[Recv, Send, Compute, Accumulate, ApplyUpdate, SetState]
PHASES = ("SF", "F", "B", "SB", "U")


@dataclass(frozen=True)
class Block:
    """The steps a device runs for one phase (and micro-batch) without waiting in between."""

    phase: str
    micro_batch: int | None
    steps: tuple[Step, ...]

    @property
    def label(self) -> str:
        return self.phase if self.micro_batch is None else f"{self.phase}{self.micro_batch}"

    @cached_property
    def receives(self) -> tuple[Recv, ...]:
        return tuple(s for s in self.steps if isinstance(s, Recv))

    @cached_property
    def sends(self) -> tuple[Send, ...]:
        return tuple(s for s in self.steps if isinstance(s, Send))


@dataclass(frozen=True)
class Program:
    """Everything one device runs in a training step.

    `nodes`: definition of every tensor it computes (forward and gradient nodes of the
    training graph, with inputs renamed to local tensors, and the plan's partial sums).
    `per_step`: the tensors with one value per step. `params`: the parameters it owns.
    `inputs`: the graph inputs it is fed. `loss`: the loss node when it computes it.
    `grads`: owned parameter -> tensor holding its gradient for the step.
    `states`: owned persistent state -> tensor holding its new value.
    """

    device: int
    blocks: tuple[Block, ...]
    nodes: Mapping[str, Node]
    per_step: frozenset[str]
    params: tuple[str, ...]
    inputs: tuple[str, ...]
    loss: str | None
    grads: Mapping[str, str]
    states: Mapping[str, str]

    def key(self, tensor: str, micro_batch: int | None) -> tuple[str, int | None]:
        """The storage key of `tensor` read in a block of `micro_batch`."""
        return (tensor, None if tensor in self.per_step else micro_batch)

    def __str__(self) -> str:
        runs = sum(len(s.nodes) for b in self.blocks for s in b.steps if isinstance(s, Compute))
        lines = [f"device {self.device}: {len(self.params)} params, {runs} node runs per step"]
        for b in self.blocks:
            lines.append(f"  [{b.label}]")
            lines += [f"    {s}" for s in b.steps]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"device": self.device, "params": list(self.params), "inputs": list(self.inputs),
                "loss": self.loss, "grads": dict(self.grads), "states": dict(self.states),
                "blocks": [{"label": b.label, "steps": [str(s) for s in b.steps]}
                           for b in self.blocks]}


@dataclass(frozen=True)
class Plan:
    """The k device programs of one training step and a global order they can run in.

    `stages`: devices in pipeline-stage order when the quotient graph is acyclic, else None
    (segments in one global topological order). `loss_scale`: factor on the loss gradient
    seed (1/m for a mean over m micro-batches). `nbytes`: bytes of every tensor by name.
    """

    programs: tuple[Program, ...]
    order: tuple[tuple[int, int], ...]
    micro_batches: int
    schedule: str
    stages: tuple[int, ...] | None
    loss: str
    loss_scale: float
    nbytes: Mapping[str, int] = field(repr=False)
    training: Graph = field(repr=False, compare=False)

    @property
    def k(self) -> int:
        return len(self.programs)

    def link_bytes(self, kinds: tuple[str, ...] | None = None) -> np.ndarray:
        """k x k bytes sent per step as the programs say ([a, b]: from a to b), optionally only
        transfers of the given kinds (activation, param, gradient, state)."""
        out = np.zeros((self.k, self.k), dtype=np.int64)
        for p in self.programs:
            for b in p.blocks:
                for s in b.sends:
                    if kinds is None or s.kind in kinds:
                        out[p.device, s.target] += self.nbytes[s.arrives_as]
        return out

    def __str__(self) -> str:
        kind = (f"pipeline stages {list(self.stages)}" if self.stages is not None
                else "cyclic quotient: segments in one global order")
        head = (f"plan: {self.k} devices, {self.micro_batches} micro-batches, schedule "
                f"{self.schedule}, {kind}")
        order = " ".join(f"d{d}:{self.programs[d].blocks[b].label}" for d, b in self.order)
        return "\n".join([head, *map(str, self.programs), f"order: {order}"])

    def to_dict(self) -> dict:
        return {"k": self.k, "micro_batches": self.micro_batches, "schedule": self.schedule,
                "stages": None if self.stages is None else list(self.stages),
                "loss": self.loss, "loss_scale": self.loss_scale,
                "link_bytes": self.link_bytes().tolist(),
                "order": [[d, self.programs[d].blocks[b].label] for d, b in self.order],
                "programs": [p.to_dict() for p in self.programs]}


class TransferKey(NamedTuple):
    """One tensor crossing one link for one micro-batch: what a Send and its Recv share."""

    tensor: str                  # the name it arrives under
    micro_batch: int | None      # None for per-step tensors
    source: int
    target: int


def transfer_key(program: Program, block: Block, step: Recv | Send) -> TransferKey:
    """The key of a Recv or Send step of `program`'s `block` (equal for matching pairs)."""
    if isinstance(step, Recv):
        return TransferKey(step.tensor, program.key(step.tensor, block.micro_batch)[1],
                           step.source, program.device)
    return TransferKey(step.arrives_as, program.key(step.tensor, block.micro_batch)[1],
                       program.device, step.target)


def validate_plan(plan: Plan) -> None:
    """Check the plan's invariants, raising PlanError naming device, block and tensor:
    every Recv is matched by exactly one Send of the same tensor and micro-batch from its
    source (and vice versa), no device reads a tensor it neither computes nor receives,
    accumulated sums see every micro-batch before they are read, and `order` runs every
    block once with each block's receives sent earlier."""
    m = plan.micro_batches
    sent: dict[tuple, int] = {}
    received: dict[tuple, int] = {}
    for p in plan.programs:
        have: set[tuple] = set()
        counts: dict[str, int] = {}
        for b in p.blocks:
            where = f"plan: device {p.device} block {b.label}"

            def read(tensor: str, what: str) -> None:
                key = p.key(tensor, b.micro_batch)
                if key not in have:
                    raise PlanError(f"{where}: {what} reads {tensor!r} (micro-batch {key[1]}), "
                                    "which the device neither computes nor receives before")
                if tensor in counts and counts[tensor] != m:
                    raise PlanError(f"{where}: {what} reads the sum {tensor!r} after "
                                    f"{counts[tensor]} of {m} micro-batches")
            for s in b.steps:
                if isinstance(s, Recv):
                    key = transfer_key(p, b, s)
                    received[key] = received.get(key, 0) + 1
                    have.add(p.key(s.tensor, b.micro_batch))
                elif isinstance(s, Send):
                    read(s.tensor, f"send to d{s.target}")
                    key = transfer_key(p, b, s)
                    sent[key] = sent.get(key, 0) + 1
                elif isinstance(s, Compute):
                    for name in s.nodes:
                        node = p.nodes.get(name)
                        if node is None:
                            raise PlanError(f"{where}: computes {name!r} with no definition")
                        for x in node.inputs:
                            read(x, f"node {name!r}")
                        have.add(p.key(name, b.micro_batch))
                elif isinstance(s, Accumulate):
                    read(s.tensor, "accumulate")
                    counts[s.into] = counts.get(s.into, 0) + 1
                    have.add((s.into, None))
                elif isinstance(s, ApplyUpdate):
                    for g in s.grads:
                        if g is not None:
                            read(g, "apply_update")
                elif isinstance(s, SetState):
                    read(s.tensor, "set_state")
    for key, count in sent.items():
        if count != 1 or received.get(key) != 1:
            raise PlanError(f"plan: tensor {key[0]!r} (micro-batch {key[1]}) from d{key[2]} to "
                            f"d{key[3]} is sent {count} and received {received.get(key, 0)} times")
    for key, count in received.items():
        if key not in sent:
            raise PlanError(f"plan: device {key[3]} receives {key[0]!r} (micro-batch {key[1]}) "
                            f"from d{key[2]}, which never sends it")
    if sorted(plan.order) != sorted((p.device, i) for p in plan.programs
                                    for i in range(len(p.blocks))):
        raise PlanError("plan: the global order does not run every block exactly once")
    delivered: set[tuple] = set()
    position = [0] * plan.k
    for d, i in plan.order:
        p = plan.programs[d]
        if i != position[d]:
            raise PlanError(f"plan: the global order runs block {i} of device {d} out of turn")
        position[d] += 1
        b = p.blocks[i]
        for r in b.receives:
            if transfer_key(p, b, r) not in delivered:
                raise PlanError(f"plan: device {d} block {b.label} receives {r.tensor!r} before "
                                f"device {r.source} sends it in the global order")
        for s in b.sends:
            delivered.add(transfer_key(p, b, s))
