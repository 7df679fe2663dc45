"""Which gradient tensor flows along which forward edge, read from a training graph.

`autodiff.vjp` records the routing it creates in `meta["grad_routing"]` (a
`GradientRouting`: each forward node's gradient parts, fan-in sum and gradient tensor).
Beside it the executor needs each training node's *home*, the forward node whose device
runs it, which follows the `grad_of` tags. A part u with home(u) != c is c's own gradient
passed through (identity rules): it reaches x via c's device, which is how SPEC section 2
counts it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodiff.ir import Graph
from executor.errors import PlanError


@dataclass(frozen=True)
class GradientFlow:
    """Gradient routing of a training graph.

    `home[i]`: forward position of training node i (itself for forward nodes).
    `parts[x]`: the (consumer, tensor) contributions to forward node x, in reverse-mode order.
    `fan_in[x]`: the add_n node summing x's parts (only when there are two or more).
    `gradient[x]`: the tensor holding x's gradient. `seed`: the loss gradient's const node.
    """

    home: np.ndarray
    parts: dict[str, tuple[tuple[str, str], ...]]
    fan_in: dict[str, str]
    gradient: dict[str, str]
    seed: str | None


def _homes(training: Graph, num_forward: int) -> np.ndarray:
    nodes, index = training.nodes, training.index
    home = np.arange(len(nodes), dtype=np.int64)
    for i in range(num_forward, len(nodes)):
        tag = nodes[i].grad_of
        if tag is None:
            raise PlanError(f"{training.name}: gradient node {nodes[i].name!r} has no grad_of tag")
        j = index.get(tag, len(nodes))
        if j >= i:
            raise PlanError(f"{training.name}: node {nodes[i].name!r}: grad_of {tag!r} is not an "
                            "earlier node")
        home[i] = home[j]
    return home


def gradient_flow(forward: Graph, training: Graph) -> GradientFlow:
    """The gradient routing of `training = autodiff.vjp(forward)`, with each node's home."""
    n = len(forward.nodes)
    tnodes = training.nodes
    if len(tnodes) < n or any(tnodes[i].name != forward.nodes[i].name for i in range(n)):
        raise PlanError(f"{training.name}: the training graph does not start with the forward "
                        "graph's nodes (expected autodiff.vjp(forward))")
    home = _homes(training, n)
    if n == len(tnodes):
        return GradientFlow(home, {}, {}, {}, None)
    routing = training.meta.get("grad_routing")
    if routing is None:
        raise PlanError(f"{training.name}: the training graph carries no gradient routing "
                        "(meta['grad_routing']); build it with autodiff.vjp(forward)")
    return GradientFlow(home, dict(routing.parts), dict(routing.fan_in),
                        dict(routing.gradient), routing.seed)
