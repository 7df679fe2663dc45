"""Graph passes: constant folding, common-subexpression elimination, dead-code elimination.

Each returns a new Graph whose outputs are bit-identical to the input graph's: folding runs the
interpreter's numpy forward, CSE merges only the same op with the same attributes and inputs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np

from autodiff.ir import Graph, Node, live_names
from autodiff.interpreter import const_value
from autodiff.ops.registry import get_op


def _rename_meta(meta: dict, rename: dict[str, str]) -> dict:
    out = dict(meta)
    for key in ("grads", "updates"):
        if key in meta:
            out[key] = {rename.get(k, k): rename.get(v, v) for k, v in meta[key].items()}
    if "loss" in meta:
        out["loss"] = rename.get(meta["loss"], meta["loss"])
    return out


def _roots(graph: Graph) -> set[str]:
    """Nodes a pass must keep: outputs and the new values of state updates."""
    updates = graph.meta.get("updates", {})
    return {*graph.outputs, *updates.values(), *updates}


def dead_code_elimination(graph: Graph, keep_sources: bool = True) -> Graph:
    """Drop nodes that no output depends on (params and inputs stay unless keep_sources=False)."""
    live = live_names(graph.nodes, _roots(graph))
    nodes = [n for n in graph.nodes if n.name in live or
             (keep_sources and n.op in ("param", "input"))]
    return Graph(nodes, graph.outputs, graph.name, validate=False, meta=graph.meta)


def _attr_key(attrs: dict) -> str:
    def default(o):
        if isinstance(o, np.ndarray):
            return {"__array__": hashlib.sha1(np.ascontiguousarray(o).tobytes()).hexdigest(),
                    "dtype": str(o.dtype), "shape": list(o.shape)}
        if isinstance(o, np.generic):
            return o.item()
        return repr(o)
    return json.dumps(attrs, sort_keys=True, default=default)


def common_subexpression_elimination(graph: Graph) -> Graph:
    """Merge nodes computing the same op, attributes and inputs (random ops and params never)."""
    rename: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        inputs = tuple(rename.get(i, i) for i in node.inputs)
        if inputs != node.inputs:
            node = replace(node, inputs=inputs)
        op = get_op(node.op)
        mergeable = node.op == "const" or (not node.is_source and op is not None and not op.random)
        if mergeable:
            key = (node.op, inputs, node.shape, node.dtype, _attr_key(node.attrs))
            if key in seen:
                rename[node.name] = seen[key]
                continue
            seen[key] = node.name
        nodes.append(node)
    outputs = [rename.get(o, o) for o in graph.outputs]
    return Graph(nodes, outputs, graph.name, validate=False, meta=_rename_meta(graph.meta, rename))


def constant_folding(graph: Graph, max_elements: int = 1 << 20) -> Graph:
    """Evaluate nodes whose inputs are all constants into `const` nodes (results larger than
    `max_elements` stay computed: folding them would bloat the graph)."""
    values: dict[str, np.ndarray] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op == "const":
            values[node.name] = const_value(node)
            nodes.append(node)
            continue
        op = get_op(node.op)
        if (node.is_source or op is None or op.random or not node.inputs
                or not all(i in values for i in node.inputs) or node.size > max_elements):
            nodes.append(node)
            continue
        value = np.asarray(op.forward(*[values[i] for i in node.inputs], **node.attrs),
                           dtype=node.dtype)
        values[node.name] = value
        nodes.append(Node(node.name, "const", (), node.shape, node.dtype, {"value": value},
                          node.group, None, node.grad_of))
    folded = Graph(nodes, graph.outputs, graph.name, validate=False, meta=graph.meta)
    return dead_code_elimination(folded)


def optimize(graph: Graph) -> Graph:
    """Constant folding, then CSE, then dead-code elimination."""
    return dead_code_elimination(common_subexpression_elimination(constant_folding(graph)))
