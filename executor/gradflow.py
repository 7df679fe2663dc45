"""Which gradient tensor flows along which forward edge, recovered from a training graph.

`autodiff.vjp` appends gradient nodes tagged with `grad_of`, but records only the parameter
gradients. To split fan-out sums per device and to route each gradient over the same links
as the partitioner counts them, the executor needs, for every forward node x that receives a
gradient: its *parts* (consumer c, tensor u) = "c's backward rule sent u to x", and the
tensor holding x's whole gradient. They are recovered by replaying reverse mode's
bookkeeping (autodiff/reverse.py `backward`) over the finished graph:

- nodes emitted for x (`grad_of == x`) are one contiguous block; when x has two or more parts
  the block starts with the fan-out `add_n` whose inputs are the parts, in the order reverse
  mode appended them: consumers in reverse topological order, input slots in order;
- otherwise the single part is the one gradient tensor from outside the block that x's rule
  nodes read (rules see only the upstream gradient and forward values), or, when the rule
  passes it through untouched (`add`), the part later found among x's inputs' parts.

A part u with home(u) != c is c's own gradient passed through (identity rules): it reaches x
via c's device, which is how SPEC section 2 counts it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodiff.ir import FLOAT_DTYPES, Graph
from autodiff.ops.registry import get_op
from executor.errors import PlanError


@dataclass(frozen=True)
class GradientFlow:
    """Gradient routing of a training graph.

    `home[i]`: forward position of training node i (itself for forward nodes).
    `parts[x]`: the (consumer, tensor) contributions to forward node x, in reverse-mode order.
    `fan_in[x]`: the add_n node summing x's parts (only when there are two or more).
    `gradient[x]`: the tensor holding x's gradient, where known (unknown only for a
    pass-through gradient nobody reads). `seed`: the loss gradient's const node.
    """

    num_forward: int
    home: np.ndarray
    parts: dict[str, tuple[tuple[str, str | None], ...]]
    fan_in: dict[str, str]
    gradient: dict[str, str]
    seed: str | None

    def home_name(self, training: Graph, name: str) -> str:
        return training.nodes[int(self.home[training.index[name]])].name


def _homes(training: Graph, num_forward: int) -> np.ndarray:
    nodes, index = training.nodes, training.index
    home = np.arange(len(nodes), dtype=np.int64)
    for i in range(num_forward, len(nodes)):
        tag = nodes[i].grad_of
        if tag is None:
            raise PlanError(f"{training.name}: gradient node {nodes[i].name!r} has no grad_of tag")
        j = index[tag]
        if j >= i:
            raise PlanError(f"{training.name}: node {nodes[i].name!r}: grad_of {tag!r} is not an "
                            "earlier node")
        home[i] = home[j]
    return home


def _on_path(forward: Graph, wrt: set[str], end: int) -> np.ndarray:
    """reverse.backward's forward sweep: nodes that depend on a wrt tensor through float ops
    that have a gradient rule (only they can receive gradients)."""
    on = np.zeros(len(forward.nodes), dtype=bool)
    index = forward.index
    for name in wrt:
        on[index[name]] = True
    for i, node in enumerate(forward.nodes[:end + 1]):
        if node.is_source or node.dtype not in FLOAT_DTYPES:
            continue
        op = get_op(node.op)
        if op is not None and op.vjp is not None and any(on[index[x]] for x in node.inputs):
            on[i] = True
    return on


def gradient_flow(forward: Graph, training: Graph, wrt: list[str] | None = None) -> GradientFlow:
    """Recover the gradient routing of `training = autodiff.vjp(forward, wrt)` (module doc)."""
    n = len(forward.nodes)
    tnodes, tindex = training.nodes, training.index
    if len(tnodes) < n or any(tnodes[i].name != forward.nodes[i].name for i in range(n)):
        raise PlanError(f"{training.name}: the training graph does not start with the forward "
                        "graph's nodes (expected autodiff.vjp(forward))")
    home = _homes(training, n)
    loss = training.meta.get("loss", forward.outputs[0])
    end = forward.index[loss]
    param_grads: dict[str, str] = dict(training.meta.get("grads", {}))
    wrt_set = set(wrt if wrt is not None else (p.name for p in forward.params))
    blocks: dict[int, list[int]] = {}
    for i in range(n, len(tnodes)):
        if tnodes[i].grad_of is not None and tindex[tnodes[i].grad_of] < n:
            blocks.setdefault(tindex[tnodes[i].grad_of], []).append(i)
    if n == len(tnodes):
        return GradientFlow(n, home, {}, {}, {}, None)

    seed = tnodes[n]
    if seed.op != "const" or seed.grad_of != loss:
        raise PlanError(f"{training.name}: expected the loss gradient seed (a const tagged "
                        f"grad_of={loss!r}) first among the gradient nodes, got {seed.name!r}")
    on = _on_path(forward, wrt_set, end)
    has_grad = np.zeros(n, dtype=bool)
    has_grad[end] = True
    gradient: dict[str, str] = {loss: seed.name}
    parts: dict[str, tuple[tuple[str, str | None], ...]] = {}
    fan_in: dict[str, str] = {}

    def is_gradient(name: str) -> bool:
        return tindex[name] >= n

    def compatible(c: str, u: str) -> bool:
        if forward.nodes[home[tindex[u]]].name == c:
            return True
        return gradient.get(c) in (None, u)

    def learn(c: str, u: str) -> None:
        """u passed through c untouched, so u is c's gradient."""
        if forward.nodes[home[tindex[u]]].name == c:
            return
        known = gradient.setdefault(c, u)
        if known != u:
            raise PlanError(f"{training.name}: node {c!r} passes gradient {u!r} to an input but "
                            f"its own gradient is {known!r}")

    for xi in range(end - 1, -1, -1):
        if not on[xi]:
            continue
        x = forward.nodes[xi]
        candidates = [(c, j) for c in reversed(forward.consumers(x.name))
                      if forward.index[c] <= end and has_grad[forward.index[c]]
                      and on[forward.index[c]]
                      for j, inp in enumerate(forward[c].inputs) if inp == x.name]
        if not candidates:
            continue
        has_grad[xi] = True
        block = blocks.get(xi, [])
        first = tnodes[block[0]] if block else None
        in_block = {tnodes[i].name for i in block}
        if (first is not None and first.op == "add_n" and len(candidates) >= 2
                and len(first.inputs) >= 2
                and all(is_gradient(u) and u not in in_block for u in first.inputs)):
            found = _match(training.name, x.name, list(first.inputs), candidates, compatible)
            fan_in[x.name] = first.name
            gradient[x.name] = first.name
        else:
            external = list(dict.fromkeys(u for i in block for u in tnodes[i].inputs
                                          if is_gradient(u) and u not in in_block))
            if len(external) > 1:
                raise PlanError(f"{training.name}: the backward rule of {x.name!r} reads several "
                                f"upstream gradients {external}; expected one")
            u = param_grads.get(x.name) if x.op == "param" else (external[0] if external else
                                                                  gradient.get(x.name))
            usable = [cj for cj in candidates if u is None or compatible(cj[0], u)]
            if not usable:
                raise PlanError(f"{training.name}: gradient {u!r} of {x.name!r} comes from none of "
                                f"its consumers {[c for c, _ in candidates]}")
            found = [(usable[0][0], u)]
            if u is not None:
                gradient[x.name] = u
        parts[x.name] = tuple(found)
        for c, u in found:
            if u is not None:
                learn(c, u)

    # Pass-through gradients learned from the inputs' side complete single parts (consumers
    # come later in topological order, so one ascending sweep reaches the end of each chain).
    for x in forward.nodes:
        found = parts.get(x.name)
        if found and len(found) == 1 and found[0][1] is None and x.name in gradient:
            c, u = found[0][0], gradient[x.name]
            parts[x.name] = ((c, u),)
            learn(c, u)
    return GradientFlow(n, home, parts, fan_in, gradient, seed.name)


def _match(graph: str, x: str, inputs: list[str], candidates: list[tuple[str, int]],
           compatible) -> list[tuple[str, str]]:
    """Pair the fan-out sum's inputs with the (consumer, slot) pairs that produced them."""
    if len(inputs) == len(candidates):
        return [(c, u) for (c, _), u in zip(candidates, inputs)]
    # Some rule returned no gradient for its slot: match greedily in order.
    out, i = [], 0
    for u in inputs:
        while i < len(candidates) and not compatible(candidates[i][0], u):
            i += 1
        if i == len(candidates):
            raise PlanError(f"{graph}: cannot tell which consumer of {x!r} produced gradient "
                            f"part {u!r}")
        out.append((candidates[i][0], u))
        i += 1
    return out
