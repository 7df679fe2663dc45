"""Reverse mode as a graph transformation: gradient nodes are appended to the trace.

Each gradient node is tagged with `grad_of` = the forward node whose rule emitted it, which
is where the executor places it. Fan-out contributions are summed by one `add_n` node tagged
with the producer; broadcasting is undone in one place (`sum_to_shape`), tagged with the
consumer so a gradient is reduced before it travels. `vjp` records the routing it creates
(`GradientRouting`) in `meta["grad_routing"]`, so the executor need not re-derive it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from autodiff import numpy as anp
from autodiff.ir import FLOAT_DTYPES, Graph, live_names
from autodiff.ops.registry import lookup
from autodiff.trace import Tensor, Tracer, TracingError


def sum_to_shape(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum `g` over the axes numpy broadcasting added or stretched, giving `shape`."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    if lead < 0:
        return anp.broadcast_to(g, shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape)
                                if d == 1 and g.shape[lead + i] != 1]
    out = anp.sum(g, axes, keepdims=True) if axes else g
    if lead:
        out = anp.reshape(out, list(out.shape[lead:]))
    if tuple(out.shape) != tuple(shape):   # a gradient smaller than its operand broadcasts up
        out = anp.broadcast_to(out, shape)
    return out


@dataclass
class GradientRouting:
    """Which gradient tensor flows along which forward edge, as reverse mode created it.

    `parts[x]`: the (consumer c, tensor u) contributions to forward node x, in the order
    reverse mode appended them (consumers in reverse topological order, input slots in
    order): c's backward rule sent u to x. `fan_in[x]`: the add_n summing x's parts (when
    there are two or more). `gradient[x]`: the tensor holding x's whole gradient. `seed`:
    the output gradient's node. A part u whose `grad_of` is not c is c's own gradient
    passed through untouched (identity rules such as `add`).
    """

    parts: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    fan_in: dict[str, str] = field(default_factory=dict)
    gradient: dict[str, str] = field(default_factory=dict)
    seed: str | None = None

    def restricted_to(self, names: set[str]) -> "GradientRouting":
        """The routing of the tensors in `names` (after unread gradient nodes are dropped)."""
        return GradientRouting(
            parts={x: ps for x, ps in self.parts.items() if all(u in names for _, u in ps)},
            fan_in={x: g for x, g in self.fan_in.items() if g in names},
            gradient={x: g for x, g in self.gradient.items() if g in names},
            seed=self.seed if self.seed in names else None)


def _on_path(nodes, wrt: set[str]) -> set[str]:
    """Forward sweep: the nodes that depend on some wrt tensor through differentiable float
    ops (only they need gradients)."""
    on_path = set(wrt)
    for node in nodes:
        if (node.dtype in FLOAT_DTYPES and any(i in on_path for i in node.inputs)
                and lookup(node.op, node.name).vjp is not None):
            on_path.add(node.name)
    return on_path


def backward(output: Tensor, wrt: Sequence[Tensor], seed: Tensor | None = None,
             routing: GradientRouting | None = None) -> list[Tensor | None]:
    """Gradients of `output` w.r.t. each of `wrt` (None where it does not reach the output),
    as new nodes of output's tracer. `seed` is the upstream gradient (default: ones); `routing`
    receives the gradient routing the new nodes implement."""
    tracer = output.tracer
    nodes = tracer.nodes
    position = {n.name: i for i, n in enumerate(nodes)}
    for t in wrt:
        if t.tracer is not tracer:
            raise TracingError(f"cannot differentiate with respect to {t.name!r}: "
                               "it belongs to another trace")
    end = position[output.name]
    start = min((position[t.name] for t in wrt), default=end)
    on_path = _on_path(nodes[start:end + 1], {t.name for t in wrt})
    if output.name not in on_path:
        return [None] * len(wrt)

    with tracer.scope(grad_of=output.name):
        if seed is None:
            seed = tracer.const(np.ones(output.shape, dtype=output.dtype), name="grad_seed")
    sweep = _Sweep(tracer, position, on_path,
                   GradientRouting() if routing is None else routing)
    sweep.routing.seed = seed.name
    sweep.contributions[output.name] = [seed]
    wanted = {t.name for t in wrt}
    result: dict[str, Tensor] = {}
    for node in reversed(nodes[start:end + 1]):
        g = sweep.gradient(node)
        if g is None:
            continue
        if node.name in wanted:
            result[node.name] = g
        if node.is_source or node.name not in on_path or not node.inputs:
            continue
        sweep.send_back(node, g)
    return [result.get(t.name) for t in wrt]


class _Sweep:
    """The reverse sweep's state: the gradient parts sent to each node not yet visited, the
    consumer behind each part, and the routing recorded so far."""

    def __init__(self, tracer: Tracer, position: dict[str, int], on_path: set[str],
                 routing: GradientRouting):
        self.tracer, self.position, self.on_path, self.routing = tracer, position, on_path, routing
        self.tensors: dict[str, Tensor] = {}
        self.contributions: dict[str, list[Tensor]] = {}
        self.senders: dict[str, list[str]] = {}           # the consumer behind each contribution

    def gradient(self, node) -> Tensor | None:
        """`node`'s whole gradient: its one part or the add_n of its parts (None when nothing
        was sent to it), recorded in the routing."""
        parts = self.contributions.pop(node.name, None)
        if not parts:
            return None
        with self.tracer.scope(grad_of=node.name):
            g = parts[0] if len(parts) == 1 else anp.add_n(*parts)
        routing = self.routing
        routing.gradient[node.name] = g.name
        if node.name in self.senders:
            routing.parts[node.name] = tuple(zip(self.senders.pop(node.name),
                                                 (p.name for p in parts)))
        if len(parts) > 1:
            routing.fan_in[node.name] = g.name
        return g

    def send_back(self, node, g: Tensor) -> None:
        """Apply `node`'s vjp rule to its gradient `g` and send each input on the path its
        part, reduced to the input's shape."""
        tracer, nodes = self.tracer, self.tracer.nodes
        op = lookup(node.op, node.name)
        ins = [self.tensors[i] if i in self.tensors else self.tensors.setdefault(
            i, Tensor(tracer, nodes[self.position[i]])) for i in node.inputs]
        out = Tensor(tracer, node)
        with tracer.scope(grad_of=node.name):
            grads = op.vjp(g, out, *ins, **node.attrs)
            if len(grads) != len(ins):
                raise TracingError(f"vjp of {node.op!r} returned {len(grads)} gradients for "
                                   f"{len(ins)} inputs")
            for x, gx in zip(ins, grads):
                if gx is None or x.name not in self.on_path:
                    continue
                self.contributions.setdefault(x.name, []).append(sum_to_shape(gx, x.shape))
                self.senders.setdefault(x.name, []).append(node.name)


def vjp(graph: Graph, wrt: Sequence[str] | None = None, output: str | None = None) -> Graph:
    """The training graph: `graph`'s nodes, then the gradient nodes of its loss w.r.t. `wrt`
    (default: every param). Outputs are the loss and the gradients of the `wrt` nodes reaching
    it (`meta["grads"]`: node -> gradient; `meta["grad_routing"]`: their GradientRouting)."""
    output = output or graph.outputs[0]
    loss = graph[output]
    if loss.shape != ():
        raise TracingError(f"vjp needs a scalar output; {output!r} has shape {list(loss.shape)}")
    wrt = [p.name for p in graph.params] if wrt is None else list(wrt)
    tracer = Tracer(graph.name, eager=False)
    tracer.nodes, tracer.values = list(graph.nodes), dict.fromkeys(graph.index)
    tracer._names = set(graph.index)
    tracer.updates = dict(graph.meta.get("updates", {}))
    routing = GradientRouting()
    grads = backward(Tensor(tracer, loss), [Tensor(tracer, graph[w]) for w in wrt],
                     routing=routing)
    mapping = {w: g.name for w, g in zip(wrt, grads) if g is not None}
    outputs, start = [output, *mapping.values()], len(graph.nodes)
    # gradient nodes no output reads (e.g. for an input not differentiated) are dropped
    live = live_names(tracer.nodes[start:], outputs)
    tracer.nodes[start:] = [n for n in tracer.nodes[start:] if n.name in live]
    out = tracer.graph(outputs, name=graph.name)
    out.meta.update(graph.meta)
    out.meta["grads"] = mapping
    out.meta["loss"] = output
    out.meta["grad_routing"] = routing.restricted_to({n.name for n in out.nodes})
    return out
