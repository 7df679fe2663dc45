"""The op registry: each op declared once with its shape rule, numpy forward, FLOPs, VJP and JVP.

Rule signatures (attrs are passed as keyword arguments; they are JSON-able values, so a
tuple attr may come back from a file as a list):

- ``shape(shapes, dtypes, **attrs) -> (shape tuple, dtype str)``; raise ShapeError on bad input.
- ``forward(*arrays, **attrs) -> np.ndarray``.
- ``flops(shapes, out_shape, **attrs) -> int`` forward FLOPs.
- ``vjp(g, out, *inputs, **attrs) -> tuple`` one entry per input: a Tensor (any shape that
  broadcasts to the input's; reverse mode sums it back) or None (no gradient). Written with
  ``autodiff.numpy`` functions on Tensors, so gradients are graph nodes and can be
  differentiated again.
- ``jvp(tangents, out, *inputs, **attrs) -> Tensor | None``: ``tangents`` has one entry per
  input, None meaning zero; the result may broadcast to the output's shape.
- ``saves``: what ``vjp`` reads of the forward pass: input positions and/or ``"out"``. The
  interpreter and the memory model use it to decide which activations the backward keeps.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from autodiff.ir import FLOAT_DTYPES, Graph, GraphError, Node


class ShapeError(GraphError):
    """Operand shapes or dtypes an op cannot accept."""


def _no_flops(shapes, out_shape, **attrs) -> int:
    return 0


@dataclass(frozen=True)
class OpDef:
    """One op: everything modelcut knows about it, side by side."""

    name: str
    shape: Callable
    forward: Callable
    flops: Callable = _no_flops
    vjp: Callable | None = None
    jvp: Callable | None = None
    saves: tuple = ()
    arity: int | None = None          # None: variadic
    random: bool = False              # draws fresh values each run (never constant-folded)
    doc: str = ""


def symmetric_op(name: str, shape: Callable, forward: Callable, flops: Callable,
                 jacobian: Callable, **fields) -> OpDef:
    """An op with a symmetric Jacobian (elementwise ops, softmax, normalize): one rule
    `jacobian(v, out, *inputs, **attrs)`, the Jacobian applied to v, is its VJP and its JVP."""
    return OpDef(name, shape, forward, flops,
                 vjp=lambda g, out, *xs, **attrs: (jacobian(g, out, *xs, **attrs),),
                 jvp=lambda t, out, *xs, **attrs: jacobian(t[0], out, *xs, **attrs), **fields)


@functools.cache
def registry() -> dict[str, OpDef]:
    """All known ops by name, built once from an explicit list of op modules (no registration
    by import side effect)."""
    from autodiff.ops import conv, elementwise, nn, norm, reduce, shape, shard_ops, sources
    from autodiff.ops import activations, grouped_conv
    ops: dict[str, OpDef] = {}
    for module in (elementwise, reduce, shape, nn, norm, conv, sources, activations,
                   grouped_conv, shard_ops):
        for op in module.OPS:
            if op.name in ops:
                raise RuntimeError(f"op {op.name!r} declared twice")
            ops[op.name] = op
    return ops


def get_op(name: str) -> OpDef | None:
    return registry().get(name)


def lookup(name: str, node: str | None = None) -> OpDef:
    op = registry().get(name)
    if op is None:
        where = f"node {node!r}: " if node else ""
        raise GraphError(f"{where}op {name!r} is opaque (not in the op registry), so it cannot be "
                         "executed or differentiated")
    return op


def estimate_flops(graph: Graph, node: Node) -> int:
    """Forward FLOPs from the registry's rule and the input shapes; 0 for opaque ops."""
    return rule_flops(node, [graph[i].shape for i in node.inputs])


def rule_flops(node: Node, input_shapes) -> int:
    """The registry's FLOPs estimate of `node` given its inputs' shapes; 0 for opaque ops."""
    op = registry().get(node.op)
    if op is None:
        return 0
    try:
        return int(op.flops(input_shapes, node.shape, **node.attrs))
    except Exception:  # an op read from a file with attrs our rule does not understand
        return 0


def node_flops(node: Node, input_shapes) -> int:
    """Forward FLOPs of `node`: its explicit annotation, else the registry's estimate."""
    return node.flops if node.flops is not None else rule_flops(node, input_shapes)


def kept_for_backward(graph: Graph) -> np.ndarray:
    """Bool mask over graph.nodes: True where some consumer's gradient rule reads the value.

    Only consumers that need a gradient run a backward rule; opaque ops are assumed to keep
    all their inputs (the conservative choice). One pass over the nodes with per-op facts
    looked up once, since this runs on million-node graphs.
    """
    n = len(graph.nodes)
    kept = np.zeros(n, dtype=bool)
    needs = [False] * n
    index = graph.index
    reg = registry()
    facts: dict[tuple[str, str], tuple[bool, tuple | None]] = {}
    for i, node in enumerate(graph.nodes):
        key = (node.op, node.dtype)
        fact = facts.get(key)
        if fact is None:
            op = reg.get(node.op)
            differentiable = node.dtype in FLOAT_DTYPES and (
                node.op in ("param", "input", "const") or op is None or op.vjp is not None)
            fact = facts[key] = (differentiable, None if op is None else op.saves)
        if not fact[0]:
            continue
        if node.op == "param":
            needs[i] = True
            continue
        ins = [index[x] for x in node.inputs]
        if not any(needs[j] for j in ins):
            continue
        needs[i] = True
        saves = fact[1]
        if saves is None:
            kept[ins] = True
            continue
        for s in saves:
            if s == "out":
                kept[i] = True
            elif s < len(ins):
                kept[ins[s]] = True
    return kept


# ---------------------------------------------------------------- rule helpers
def elementwise_flops(per_element: int = 1) -> Callable:
    """FLOPs rule: `per_element` FLOPs per output element."""
    def rule(shapes, out_shape, **attrs) -> int:
        return per_element * math.prod(out_shape)
    return rule


def input_flops(per_element: int = 1) -> Callable:
    """FLOPs rule: `per_element` FLOPs per element of the first input."""
    def rule(shapes, out_shape, **attrs) -> int:
        return per_element * math.prod(shapes[0])
    return rule


def broadcast_shapes(*shapes) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ShapeError(f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast") \
            from None


def promote(*dtypes: str) -> str:
    """numpy's type promotion on dtype names (bfloat16 treated as its own float)."""
    if "bfloat16" in dtypes:
        return "bfloat16" if all(d in ("bfloat16", "bool") or d.startswith(("int", "uint"))
                                 for d in dtypes) else str(np.result_type(
                                     *[d for d in dtypes if d != "bfloat16"]))
    return str(np.result_type(*dtypes))


def float_array(x) -> np.ndarray:
    """x as a numpy array of a float dtype: its own, or float64 for ints and bools."""
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def float_dtype(dtype: str) -> str:
    """The dtype a float-valued op returns for an input of `dtype` (ints become float64)."""
    return dtype if dtype in FLOAT_DTYPES else "float64"


def normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    """Axis attr (None, int or list) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for a tensor of rank {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {list(axes)}")
    return tuple(sorted(out))
