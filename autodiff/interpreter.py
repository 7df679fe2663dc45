"""Runs a Graph on numpy arrays, freeing each value after its last use.

The graph is compiled once into a flat program (integer slots, per-step free lists), so the
per-node overhead is a few microseconds. In a training graph the forward values alive when
the backward starts are exactly those the gradient rules read (`RunResult.saved`).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np

from autodiff.ir import Graph, GraphError, Node
from autodiff.ops.registry import lookup
from autodiff.ops.sources import draw_random


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_heap_tuned = False


def retain_freed_memory(trim_bytes: int = 1 << 30, mmap_bytes: int = 32 << 20) -> bool:
    """Make glibc keep freed heap memory (up to `trim_bytes`) for the next allocation.

    glibc hands large freed blocks back to the OS, so every training step (the same sizes each
    time) faulted its activations in again; keeping up to 1 GiB, as frameworks' caching
    allocators keep their peak, makes elementwise ops several times faster (past 256 MiB a heap
    was trimmed on some steps, 0.1-0.2 s each). Process-wide, once; False without mallopt.
    """
    global _heap_tuned
    if _heap_tuned:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt   # the C library the process already uses
    except (OSError, AttributeError):
        return False
    _heap_tuned = bool(mallopt(_M_TRIM_THRESHOLD, trim_bytes)
                       and mallopt(_M_MMAP_THRESHOLD, mmap_bytes))
    return _heap_tuned


class ExecutionError(GraphError):
    """An op failed while running; the message names the node."""


@dataclass(frozen=True)
class RunResult:
    """Requested output values, the peak bytes held, and the forward values kept for backward."""

    outputs: dict[str, np.ndarray]
    peak_bytes: int
    saved: frozenset[str] = field(default_factory=frozenset)

    def to_dict(self) -> dict:
        return {"outputs": sorted(self.outputs), "peak_bytes": self.peak_bytes,
                "saved": sorted(self.saved)}


def const_value(node: Node) -> np.ndarray:
    """The value of a `const` node: attrs['value'] or a fill rule (zeros, ones, full, tril, eye,
    arange)."""
    attrs = node.attrs
    if "value" in attrs:
        value = np.asarray(attrs["value"], dtype=node.dtype)
        if value.shape != node.shape:
            value = np.broadcast_to(value, node.shape)
        return value
    fill = attrs.get("fill", "zeros")
    if fill == "zeros":
        return np.zeros(node.shape, node.dtype)
    if fill == "ones":
        return np.ones(node.shape, node.dtype)
    if fill == "full":
        return np.full(node.shape, attrs["fill_value"], node.dtype)
    if fill == "tril":
        return np.tril(np.ones(node.shape, node.dtype))
    if fill == "eye":
        return np.eye(*node.shape[-2:], dtype=node.dtype) * np.ones(node.shape, node.dtype)
    if fill == "arange":
        return np.arange(int(np.prod(node.shape)), dtype=node.dtype).reshape(node.shape)
    raise ExecutionError(f"const node {node.name!r}: unknown fill {fill!r}")


@dataclass(frozen=True)
class NodeKernel:
    """How one node is computed, shared by the Interpreter and the executor's DeviceWorker:
    its op's numpy forward (or its seeded random draw), attributes and result dtype."""

    node: Node
    forward: Callable
    random: bool
    dtype: np.dtype | None          # None: keep what the forward returns (bfloat16)

    @classmethod
    def of(cls, node: Node) -> "NodeKernel":
        op = lookup(node.op, node.name)
        return cls(node, op.forward, bool(op.random),
                   None if node.dtype == "bfloat16" else np.dtype(node.dtype))

    def __call__(self, args, step: int, micro_batch: int) -> np.ndarray:
        node = self.node
        r = (draw_random(node, step, micro_batch) if self.random
             else self.forward(*args, **node.attrs))
        if self.dtype is not None and getattr(r, "dtype", None) != self.dtype:
            r = np.asarray(r, dtype=self.dtype)
        return r

    def failure(self, exc: Exception, args, where: str) -> str:
        """The message for `exc` raised by this node on `args`, prefixed by `where`."""
        node = self.node
        shapes = ", ".join(f"{x}: {list(np.shape(v))}" for x, v in zip(node.inputs, args))
        return f"{where}node {node.name!r} ({node.op}({shapes})) failed: {type(exc).__name__}: {exc}"


class Instruction(NamedTuple):
    """One step of the Interpreter's program: run `kernel` on the values in slots `ins`,
    store the result in slot `out`, then free the slots `frees` (their last use)."""

    kernel: NodeKernel
    ins: tuple[int, ...]
    out: int
    frees: tuple[int, ...]


class Interpreter:
    """A graph compiled for repeated runs (see module docstring)."""

    def __init__(self, graph: Graph, outputs: Iterable[str] | None = None):
        retain_freed_memory()
        self.graph = graph
        self.output_names = list(graph.outputs if outputs is None else outputs)
        nodes = graph.nodes
        index = {n.name: i for i, n in enumerate(nodes)}
        for o in self.output_names:
            if o not in index:
                raise GraphError(f"{graph.name}: requested output {o!r} names no node")
        n = len(nodes)
        last_use = np.arange(n)
        for i, node in enumerate(nodes):
            for x in node.inputs:
                last_use[index[x]] = i
        for o in self.output_names:
            last_use[index[o]] = n
        frees: list[list[int]] = [[] for _ in range(n)]
        for i in range(n):
            if last_use[i] < n:
                frees[last_use[i]].append(i)
        self.boundary = next((i for i, nd in enumerate(nodes) if nd.grad_of is not None
                              and not nd.is_source), n)
        self.sources: list[tuple[int, Node]] = []
        self.program: list[Instruction] = []
        self.consts: dict[int, np.ndarray] = {}
        for i, node in enumerate(nodes):
            if node.op == "const":
                self.consts[i] = const_value(node)
            if node.is_source:
                self.sources.append((i, node))
                continue
            self.program.append(Instruction(NodeKernel.of(node),
                                            tuple(index[x] for x in node.inputs), i,
                                            tuple(frees[i])))
        self.index = index
        # Forward values read by some gradient node: what the backward keeps.
        self.saved_slots = sorted({index[x] for nd in nodes[self.boundary:] for x in nd.inputs
                                   if index[x] < self.boundary and nodes[index[x]].op != "const"})

    def run(self, feeds: Mapping[str, np.ndarray] | None = None,
            params: Mapping[str, np.ndarray] | None = None, outputs: Iterable[str] | None = None,
            step: int = 0, micro_batch: int = 0) -> RunResult:
        """Evaluate the graph; `feeds` gives `input` nodes, `params` the `param` nodes."""
        feeds = feeds or {}
        params = params or {}
        nodes = self.graph.nodes
        vals: list = [None] * len(nodes)
        held = 0
        for i, node in self.sources:
            if node.op == "const":
                v = self.consts[i]
            else:
                table = feeds if node.op == "input" else params
                if node.name not in table:
                    what = "feeds" if node.op == "input" else "params"
                    raise ExecutionError(f"{self.graph.name}: {node.op} node {node.name!r} has no "
                                         f"value in {what}")
                v = np.asarray(table[node.name])
                if v.shape != node.shape:
                    raise ExecutionError(f"{self.graph.name}: {node.op} node {node.name!r} expects "
                                         f"shape {list(node.shape)}, got {list(v.shape)}")
            vals[i] = v
            held += v.nbytes
        peak = held
        saved: frozenset[str] = frozenset()
        boundary = self.boundary
        k = -1
        try:
            for k, (kernel, ins, out, frees) in enumerate(self.program):
                if out == boundary:
                    saved = frozenset(nodes[s].name for s in self.saved_slots
                                      if vals[s] is not None)
                r = kernel([vals[j] for j in ins], step, micro_batch)
                vals[out] = r
                held += r.nbytes
                if held > peak:
                    peak = held
                for f in frees:
                    held -= vals[f].nbytes
                    vals[f] = None
        except ExecutionError:
            raise
        except Exception as e:
            kernel, ins = self.program[k].kernel, self.program[k].ins
            raise ExecutionError(kernel.failure(e, [vals[j] for j in ins],
                                                f"{self.graph.name}: ")) from e
        names = self.output_names if outputs is None else list(outputs)
        result = {}
        for name in names:
            v = vals[self.index[name]]
            if v is None:
                raise ExecutionError(f"{self.graph.name}: {name!r} was freed; pass it as an "
                                     "output when compiling the Interpreter")
            result[name] = v
        return RunResult(result, int(peak), saved)


def evaluate(graph: Graph, feeds=None, params=None, outputs=None, step: int = 0) -> dict:
    """One-shot convenience: compile `graph` and run it once."""
    return Interpreter(graph, outputs).run(feeds, params, step=step).outputs
