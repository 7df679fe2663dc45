"""Forward mode as a graph transformation: tangent nodes recorded after their primals."""
from __future__ import annotations

from typing import Sequence

from autodiff.ir import FLOAT_DTYPES
from autodiff.ops.registry import lookup
from autodiff.trace import Tensor
from autodiff import numpy as anp


def push_forward(inputs: Sequence[Tensor], tangents: Sequence[Tensor], outputs: Sequence[Tensor]
                 ) -> list[Tensor | None]:
    """Tangents of `outputs` given tangents of `inputs` (all of one tracer); None means zero."""
    if not inputs:
        return [None] * len(outputs)
    tracer = inputs[0].tracer
    nodes = tracer.nodes
    position = {n.name: i for i, n in enumerate(nodes)}
    tan: dict[str, Tensor] = {x.name: t for x, t in zip(inputs, tangents)}
    end = max(position[o.name] for o in outputs)
    start = min(position[x.name] for x in inputs)
    for node in nodes[start:end + 1]:   # a copy: tangent nodes appended are not revisited
        if node.name in tan or node.is_source or node.dtype not in FLOAT_DTYPES:
            continue
        ts = [tan.get(i) for i in node.inputs]
        if all(t is None for t in ts):
            continue
        op = lookup(node.op, node.name)
        if op.jvp is None:
            continue
        ins = [Tensor(tracer, nodes[position[i]]) for i in node.inputs]
        with tracer.scope(grad_of=node.name):
            t = op.jvp(ts, Tensor(tracer, node), *ins, **node.attrs)
            if t is not None and tuple(t.shape) != tuple(node.shape):
                t = anp.broadcast_to(t, node.shape)
        if t is not None:
            tan[node.name] = t
    return [tan.get(o.name) for o in outputs]

