"""The graph IR: nodes in topological order, each producing one tensor (SPEC section 1).

A Graph is plain data: a list of Node records and the names of its outputs. Nodes refer to
their inputs by name; `Graph.index` maps names to positions so passes can work on integer ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from autodiff.errors import ModelcutError

ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1,
}
FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})
SOURCE_OPS = frozenset({"input", "param", "const"})


class GraphError(ModelcutError, ValueError):
    """A graph breaks a rule of SPEC section 1; the message names the file, node and rule."""


def live_names(nodes: Sequence[Node], roots: Iterable[str]) -> set[str]:
    """`roots` and the names of the nodes among `nodes` they depend on (a backward sweep)."""
    live = set(roots)
    for node in reversed(nodes):
        if node.name in live:
            live.update(node.inputs)
    return live


@dataclass(eq=False, slots=True)
class Node:
    """One operation producing one tensor. `flops` is the explicit forward FLOP count (from a
    file; None: the op registry estimates it). `grad_of`, on a training graph's gradient nodes,
    names the forward node whose backward rule emitted it (the executor places it there)."""

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    dtype: str = "float32"
    attrs: dict = field(default_factory=dict)
    group: str | None = None
    flops: int | None = None
    grad_of: str | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    @property
    def is_source(self) -> bool:
        return self.op in SOURCE_OPS

    def describe(self) -> str:
        """One readable line: `h: float32[32,256] = matmul(x, w1)  {attrs}  # group`."""
        shape = ",".join(str(d) for d in self.shape)
        args = ", ".join(self.inputs)
        attrs = {k: v for k, v in self.attrs.items() if k != "value"}
        text = f"{self.name}: {self.dtype}[{shape}] = {self.op}({args})"
        if attrs:
            text += "  " + " ".join(f"{k}={v!r}" for k, v in attrs.items())
        notes = [n for n in (self.group and f"group={self.group}",
                             self.grad_of and f"grad_of={self.grad_of}") if n]
        return text + ("  # " + " ".join(notes) if notes else "")


class Graph:
    """A validated, topologically ordered list of nodes with named outputs."""

    def __init__(self, nodes: Iterable[Node], outputs: Iterable[str], name: str = "graph",
                 *, validate: bool = True, source: str = "<graph>", meta: dict | None = None):
        self.nodes: list[Node] = list(nodes)
        self.outputs: list[str] = list(outputs)
        self.name = name
        # Extensions beyond SPEC section 1: "grads" (node -> its gradient node, in training
        # graphs) and "updates" (state node -> node with its new value, e.g. running averages).
        self.meta: dict = dict(meta or {})
        self.index: dict[str, int] = {}
        self._consumers: dict[str, list[str]] | None = None
        if validate:
            self.validate(source)
        else:
            self.index = {n.name: i for i, n in enumerate(self.nodes)}

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def __getitem__(self, name: str) -> Node:
        try:
            return self.nodes[self.index[name]]
        except KeyError:
            raise GraphError(f"{self.name}: no node named {name!r}") from None

    def consumers(self, name: str) -> list[str]:
        """Names of the nodes that read `name` (each once, in topological order)."""
        if self._consumers is None:
            cons: dict[str, list[str]] = {n.name: [] for n in self.nodes}
            for n in self.nodes:
                for i in dict.fromkeys(n.inputs):
                    cons[i].append(n.name)
            self._consumers = cons
        return self._consumers[name]

    def by_op(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    @property
    def params(self) -> list[Node]:
        return self.by_op("param")

    @property
    def inputs(self) -> list[Node]:
        return self.by_op("input")

    @property
    def forward_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.grad_of is None]

    @property
    def gradient_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.grad_of is not None]

    def node_flops(self, node: Node) -> int:
        """Forward FLOPs: the explicit annotation, else the registry's estimate, else 0."""
        if node.flops is not None:
            return node.flops
        from autodiff.ops.registry import estimate_flops
        return estimate_flops(self, node)

    def total_flops(self) -> int:
        return sum(self.node_flops(n) for n in self.nodes)

    def num_parameters(self) -> int:
        return sum(n.size for n in self.params)

    def validate(self, source: str = "<graph>") -> None:
        """Check SPEC section 1's rules; raise GraphError naming `source`, the node and the rule."""
        index: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            ok = (isinstance(n.name, str) and n.name and n.name not in index
                  and isinstance(n.op, str) and n.op and n.dtype in ITEMSIZE
                  and all(type(d) is int and d >= 0 for d in n.shape)
                  and not (n.inputs and n.op in SOURCE_OPS)
                  and all(x in index for x in n.inputs)
                  and (n.flops is None or (type(n.flops) is int and n.flops >= 0))
                  and (n.grad_of is None or n.grad_of in index or n.grad_of == n.name))
            if not ok:
                self._raise_for(i, n, index, source)
            index[n.name] = i
        for out in self.outputs:
            if out not in index:
                raise GraphError(f"{source}: output {out!r} names no node")
        self.index = index
        self._consumers = None

    def _raise_for(self, i: int, n: Node, index: dict[str, int], source: str) -> None:
        """Raise the GraphError naming the first rule node #i breaks (only on the error path)."""
        where = f"{source}: node {n.name!r}"
        if not isinstance(n.name, str) or not n.name:
            raise GraphError(f"{source}: node #{i}: name must be a non-empty string")
        if n.name in index:
            raise GraphError(f"{where}: duplicate name (first defined as node #{index[n.name]})")
        if not isinstance(n.op, str) or not n.op:
            raise GraphError(f"{where}: 'op' must be a non-empty string")
        if n.dtype not in ITEMSIZE:
            raise GraphError(f"{where}: unknown dtype {n.dtype!r} (expected one of "
                             f"{', '.join(ITEMSIZE)})")
        for d in n.shape:
            if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                raise GraphError(f"{where}: shape {list(n.shape)} has a dimension that is "
                                 "not a non-negative integer")
        if n.op in SOURCE_OPS and n.inputs:
            raise GraphError(f"{where}: source op {n.op!r} must have no inputs, "
                             f"got {list(n.inputs)}")
        for inp in n.inputs:
            if inp not in index:
                rule = ("refers to itself" if inp == n.name else
                        "is defined later (nodes must be in topological order)"
                        if any(m.name == inp for m in self.nodes[i + 1:]) else "does not exist")
                raise GraphError(f"{where}: input {inp!r} {rule}")
        if n.flops is not None:
            raise GraphError(f"{where}: flops must be a non-negative integer, got {n.flops!r}")
        raise GraphError(f"{where}: grad_of {n.grad_of!r} names no earlier node")

    def __str__(self) -> str:
        lines = [f"graph {self.name} ({len(self.nodes)} nodes) {{"]
        lines += ["  " + n.describe() for n in self.nodes]
        lines.append(f"  return {', '.join(self.outputs)}")
        lines.append("}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, outputs={self.outputs})"
