"""Reference implementations of SPEC section 2 for the algorithm tests, written from the SPEC
with plain Python loops over the Node list (independent of partition.cost / partition.metrics),
brute-force optima over all k**n placements of tiny graphs, and a strategy of granular DAGs."""
import itertools

import numpy as np
from hypothesis import strategies as st

from autodiff.ir import FLOAT_DTYPES, Graph, Node


def requires_grad(graph) -> dict:
    """SPEC: a param, or some input requires grad; and a floating dtype."""
    rg = {}
    for nd in graph.nodes:
        rg[nd.name] = nd.dtype in FLOAT_DTYPES and (
            nd.op == "param" or any(rg[i] for i in nd.inputs))
    return rg


def remote(graph, place: dict) -> dict:
    """remote(v) = {P(c) : c consumes v} - {P(v)}."""
    out = {nd.name: set() for nd in graph.nodes}
    for nd in graph.nodes:
        for i in set(nd.inputs):
            out[i].add(place[nd.name])
    return {v: devs - {place[v]} for v, devs in out.items()}


def step_volume(graph, assignment) -> int:
    """V = sum_v bytes(v) * |remote(v)| * (1 + requires_grad(v)) for one micro-batch."""
    place = {nd.name: int(d) for nd, d in zip(graph.nodes, assignment)}
    rg = requires_grad(graph)
    rem = remote(graph, place)
    return sum(nd.nbytes * len(rem[nd.name]) * (2 if rg[nd.name] else 1) for nd in graph.nodes)


def time_weighted_volume(graph, assignment, bandwidth, latency) -> float:
    """Transfers a -> d cost latency[a, d] + bytes / bandwidth[a, d]; gradients go back d -> a."""
    place = {nd.name: int(d) for nd, d in zip(graph.nodes, assignment)}
    rg = requires_grad(graph)
    total = 0.0
    for nd in graph.nodes:
        a = place[nd.name]
        for d in remote(graph, place)[nd.name]:
            total += latency[a, d] + nd.nbytes / bandwidth[a, d]
            if rg[nd.name]:
                total += latency[d, a] + nd.nbytes / bandwidth[d, a]
    return total


def loads(graph, assignment, k) -> np.ndarray:
    """Training FLOPs per device: flops x 3 when the node requires grad."""
    rg = requires_grad(graph)
    out = np.zeros(k)
    for nd, d in zip(graph.nodes, assignment):
        out[int(d)] += nd.flops * (3 if rg[nd.name] else 1)
    return out


def load_caps(graph, k, epsilon) -> np.ndarray:
    """(1 + eps) * max(mean load, largest node load) on identical devices."""
    per_node = loads(graph, range(len(graph.nodes)), len(graph.nodes))
    return np.full(k, (1 + epsilon) * max(per_node.sum() / k, per_node.max(initial=0.0)))


def acyclic(graph, assignment, k) -> bool:
    """The quotient graph (a -> b when a tensor flows from a to b) has no directed cycle."""
    place = {nd.name: int(d) for nd, d in zip(graph.nodes, assignment)}
    edges = {(place[i], place[nd.name]) for nd in graph.nodes for i in nd.inputs
             if place[i] != place[nd.name]}
    alive = set(range(k))
    while alive:
        ready = [a for a in alive if not any((b, a) in edges for b in alive)]
        if not ready:
            return False
        alive -= set(ready)
    return True


def brute_force(graph, k, caps, *, is_acyclic=False, pins=None, cost=step_volume, feasible=None):
    """Minimum of `cost` over all k**n placements within the load caps (and the extra checks)."""
    best = None
    pins = pins or {}
    index = {nd.name: i for i, nd in enumerate(graph.nodes)}
    for a in itertools.product(range(k), repeat=len(graph.nodes)):
        if any(a[index[name]] != d for name, d in pins.items()):
            continue
        if (loads(graph, a, k) > caps + 1e-9).any():
            continue
        if is_acyclic and not acyclic(graph, a, k):
            continue
        if feasible is not None and not feasible(a):
            continue
        value = cost(graph, a)
        if best is None or value < best:
            best = value
    return best


def granular(graph, k, epsilon) -> bool:
    """No node's load exceeds epsilon x the mean device load: then an epsilon-balanced placement
    exists in every topological order cut into runs, and the algorithms must find one (for
    coarser graphs, balance is a bin-packing problem that a heuristic may miss)."""
    node_loads = loads(graph, range(len(graph.nodes)), len(graph.nodes))
    return node_loads.max(initial=0.0) <= epsilon * node_loads.sum() / k


@st.composite
def granular_dags(draw, min_ops=15, max_ops=40):
    """Random DAGs of many light ops (1..3 FLOPs) reading 1..3 earlier nodes, with params."""
    nodes = [Node("x", "input", (), (draw(st.integers(1, 8)),), flops=0)]
    nodes += [Node(f"w{i}", "param", (), (draw(st.integers(1, 64)),), flops=0)
              for i in range(draw(st.integers(1, 4)))]
    for j in range(draw(st.integers(min_ops, max_ops))):
        earlier = [nd.name for nd in nodes]
        inputs = tuple(draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3)))
        nodes.append(Node(f"v{j}", "f", inputs, (draw(st.integers(1, 32)),),
                          flops=draw(st.integers(1, 3))))
    return Graph(nodes, [nodes[-1].name])
