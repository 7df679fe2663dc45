"""A pipeline-friendly combine for vocab-parallel cross-entropy (a workaround, see below).

`autodiff.shard`'s vocab-parallel loss shifts every shard's logits by the *global* row max
before exponentiating, so each shard's exp/sum reads a value combined from all shards: placed
on the shards' devices that is a cycle (shard -> combine -> shard), so an acyclic (pipeline)
placement must ship the whole logits shards to one device. Any per-row shift gives the same
log-sum-exp, so here each shard shifts by its own row max and computes its own
`lse_i = m_i + log sum exp(l - m_i)` locally; the combine reads n scalars per row:
`lse = M + log sum_i exp(lse_i - M)` with `M = max_i lse_i` (both maxes under stop_gradient,
as in the original). Same loss, same gradients; only per-row scalars cross devices.
"""
from __future__ import annotations

from autodiff.ir import Graph, Node
from autodiff.ops.registry import lookup
from autodiff.shard import shard_record


def local_lse_loss(graph: Graph) -> Graph:
    """`graph` (sharded) with each vocab-parallel loss recombined from per-shard log-sum-exps;
    the graph itself when it has none."""
    record = shard_record(graph).get("nodes", {})
    losses = {ce: e for ce, e in record.items() if e["mode"] == "vocab"}
    if not losses:
        return graph
    keep_per_loss = {ce: {p for parts in e["parts"] for p in (parts[0], parts[4])}
                     for ce, e in losses.items()}
    nodes: list[Node] = []
    types = {}
    meta = dict(graph.meta)
    meta["shards"] = {**meta["shards"], "nodes": dict(record)}

    def emit(name, op, inputs, attrs, like):
        shape, dtype = lookup(op).shape([types[i][0] for i in inputs],
                                        [types[i][1] for i in inputs], **attrs)
        node = Node(name, op, tuple(inputs), tuple(shape), dtype, dict(attrs), like.group)
        nodes.append(node)
        types[name] = (node.shape, node.dtype)
        return name

    for node in graph.nodes:
        owner = next((ce for ce in losses if node.name.startswith(ce + ".")), None)
        if owner is not None and node.name not in keep_per_loss[owner]:
            continue                                  # replaced below
        if node.name in losses:
            parts = _recombine(graph, node, losses[node.name]["parts"], emit)
            meta["shards"]["nodes"][node.name] = {**losses[node.name], "parts": parts}
            node = Node(node.name, "mean", (f"{node.name}.nll",), node.shape, node.dtype,
                        {"axis": None, "keepdims": False}, node.group)
        nodes.append(node)
        types[node.name] = (node.shape, node.dtype)
    return Graph(nodes, graph.outputs, graph.name, meta=meta, source=f"{graph.name} (sharded)")


def _recombine(graph: Graph, ce: Node, parts: list[list[str]], emit) -> list[list[str]]:
    """Per shard its local lse, then the combine; returns the shards' new member lists."""
    name, lses, targets, members = ce.name, [], [], []
    for members_i in parts:
        row_max, target = members_i[0], members_i[4]
        piece = row_max.rsplit(".", 1)[0]
        logits = graph[row_max].inputs[0]
        nograd = emit(f"{piece}.max.nograd", "stop_gradient", [row_max], {}, ce)
        kept = emit(f"{piece}.max.kept", "reshape", [nograd], {"shape": [*graph[row_max].shape, 1]}, ce)
        shifted = emit(f"{piece}.shifted", "subtract", [logits, kept], {}, ce)
        exp = emit(f"{piece}.exp", "exp", [shifted], {}, ce)
        total = emit(f"{piece}.sumexp", "sum", [exp], {"axis": -1, "keepdims": False}, ce)
        log = emit(f"{piece}.log", "log", [total], {}, ce)
        lses.append(emit(f"{piece}.lse", "add", [log, nograd], {}, ce))
        targets.append(target)
        members.append([row_max, nograd, kept, shifted, exp, total, log, lses[-1], target])
    stacked = emit(f"{name}.lses", "stack", lses, {"axis": 0}, ce)
    top = emit(f"{name}.max", "max", [stacked], {"axis": 0, "keepdims": False}, ce)
    top = emit(f"{name}.max.nograd", "stop_gradient", [top], {}, ce)
    shifted = emit(f"{name}.lses.shifted", "subtract", [stacked, top], {}, ce)
    total = emit(f"{name}.sumexp", "sum", [emit(f"{name}.lses.exp", "exp", [shifted], {}, ce)],
                 {"axis": 0, "keepdims": False}, ce)
    lse = emit(f"{name}.logsumexp", "add",
               [emit(f"{name}.logsumexp.shifted", "log", [total], {}, ce), top], {}, ce)
    emit(f"{name}.nll", "subtract", [lse, emit(f"{name}.target", "add_n", targets, {}, ce)],
         {}, ce)
    return members
