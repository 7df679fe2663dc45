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

from collections import Counter
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
    arrives under the name `arrives_as` (a gradient under its role's, e.g. `grad(x)@d1`)."""

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

    def link_bytes(self) -> np.ndarray:
        """k x k bytes sent per step as the programs say ([a, b]: from a to b)."""
        out = np.zeros((self.k, self.k), dtype=np.int64)
        for p in self.programs:
            for b in p.blocks:
                for s in b.sends:
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
    _, micro_batch = program.key(step.tensor, block.micro_batch)
    if isinstance(step, Recv):
        return TransferKey(step.tensor, micro_batch, step.source, program.device)
    return TransferKey(step.arrives_as, micro_batch, program.device, step.target)


def validate_plan(plan: Plan) -> None:
    """Check the plan's invariants, raising PlanError naming device, block and tensor:
    every Recv is matched by exactly one Send of the same tensor and micro-batch from its
    source (and vice versa), no device reads a tensor it neither computes nor receives,
    accumulated sums see every micro-batch before they are read, and `order` runs every
    block once with each block's receives sent earlier."""
    sent: Counter[TransferKey] = Counter()
    received: Counter[TransferKey] = Counter()
    for p in plan.programs:
        reads = _ReadCheck(p, plan.micro_batches)
        for b in p.blocks:
            for s in b.steps:
                if isinstance(s, (Recv, Send)):
                    (received if isinstance(s, Recv) else sent)[transfer_key(p, b, s)] += 1
                reads.step(b, s)
    _check_pairs(sent, received)
    _check_order(plan)


class _ReadCheck:
    """What one device holds as its blocks run in order: a PlanError for a step that reads a
    tensor the device neither computes nor received before, or a sum not yet complete."""

    def __init__(self, program: Program, micro_batches: int):
        self.program, self.m = program, micro_batches
        self.have: set[tuple[str, int | None]] = set()
        self.counts: dict[str, int] = {}        # accumulated sum -> micro-batches added so far

    def step(self, b: Block, s: Step) -> None:
        """Check what step `s` of block `b` reads, then record what it makes available."""
        p = self.program
        if isinstance(s, Recv):
            self.have.add(p.key(s.tensor, b.micro_batch))
        elif isinstance(s, Send):
            self.read(b, s.tensor, f"send to d{s.target}")
        elif isinstance(s, Compute):
            for name in s.nodes:
                node = p.nodes.get(name)
                if node is None:
                    raise PlanError(f"{self.where(b)}: computes {name!r} with no definition")
                for x in node.inputs:
                    self.read(b, x, f"node {name!r}")
                self.have.add(p.key(name, b.micro_batch))
        elif isinstance(s, Accumulate):
            self.read(b, s.tensor, "accumulate")
            self.counts[s.into] = self.counts.get(s.into, 0) + 1
            self.have.add((s.into, None))
        elif isinstance(s, ApplyUpdate):
            for g in s.grads:
                if g is not None:
                    self.read(b, g, "apply_update")
        elif isinstance(s, SetState):
            self.read(b, s.tensor, "set_state")

    def where(self, b: Block) -> str:
        return f"plan: device {self.program.device} block {b.label}"

    def read(self, b: Block, tensor: str, what: str) -> None:
        tensor_key, micro_batch = self.program.key(tensor, b.micro_batch)
        if (tensor_key, micro_batch) not in self.have:
            raise PlanError(f"{self.where(b)}: {what} reads {tensor!r} (micro-batch "
                            f"{micro_batch}), which the device neither computes nor receives "
                            "before")
        if tensor in self.counts and self.counts[tensor] != self.m:
            raise PlanError(f"{self.where(b)}: {what} reads the sum {tensor!r} after "
                            f"{self.counts[tensor]} of {self.m} micro-batches")


def _check_pairs(sent: Counter[TransferKey], received: Counter[TransferKey]) -> None:
    """Every transfer sent exactly once and received exactly once."""
    for key, count in sent.items():
        if count != 1 or received.get(key) != 1:
            raise PlanError(f"plan: tensor {key.tensor!r} (micro-batch {key.micro_batch}) from "
                            f"d{key.source} to d{key.target} is sent {count} and received "
                            f"{received.get(key, 0)} times")
    for key in received:
        if key not in sent:
            raise PlanError(f"plan: device {key.target} receives {key.tensor!r} (micro-batch "
                            f"{key.micro_batch}) from d{key.source}, which never sends it")


def _check_order(plan: Plan) -> None:
    """`plan.order` runs every block once, each device's in turn, and each block's receives
    after their sends."""
    if sorted(plan.order) != sorted((p.device, i) for p in plan.programs
                                    for i in range(len(p.blocks))):
        raise PlanError("plan: the global order does not run every block exactly once")
    delivered: set[TransferKey] = set()
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
