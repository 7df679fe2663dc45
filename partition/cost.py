"""Per-node costs of a forward graph as numpy arrays (SPEC section 2), built once per Graph.

`graph_arrays(graph)` reads the Node list in one pass and derives everything else with numpy:
tensor bytes, forward and training FLOPs, requires_grad, batch dependence, the CSR of distinct
inputs and consumers, layer groups and which values the backward pass keeps. Every metric,
algorithm and the simulator work on these arrays with integer node ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

from autodiff.ir import FLOAT_DTYPES, ITEMSIZE, SOURCE_OPS, Graph
from autodiff.ops.registry import kept_for_backward
from partition.errors import PlacementError


OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}


@dataclass(frozen=True, eq=False)
class GraphArrays:
    """Node costs and adjacency of one graph, indexed by node position (topological order).

    `in_ptr/in_idx` list each node's distinct inputs, `out_ptr/out_idx` its distinct consumers
    (both sorted by position). `kept`: the values some gradient rule reads (the op registry's).
    """

    n: int
    names: tuple[str, ...]
    bytes: np.ndarray            # int64[n]
    size: np.ndarray             # int64[n], elements
    flops: np.ndarray            # float64[n], forward
    train_flops: np.ndarray      # float64[n], x3 when requires_grad
    requires_grad: np.ndarray    # bool[n]
    is_param: np.ndarray         # bool[n]
    is_source: np.ndarray        # bool[n]: input, param or const
    batch_dependent: np.ndarray  # bool[n]
    in_ptr: np.ndarray           # int64[n+1]
    in_idx: np.ndarray           # int32[E]
    out_ptr: np.ndarray          # int64[n+1]
    out_idx: np.ndarray          # int32[E]
    group: np.ndarray            # int32[n], -1 = no group
    group_names: tuple[str, ...]
    kept: np.ndarray             # bool[n]

    @cached_property
    def in_dst(self) -> np.ndarray:
        """Consumer of each entry of `in_idx`: the distinct edges are (in_idx[e], in_dst[e])."""
        return np.repeat(np.arange(self.n, dtype=np.int32), np.diff(self.in_ptr))

    @property
    def num_edges(self) -> int:
        return len(self.in_idx)


def graph_arrays(graph: Graph) -> GraphArrays:
    """The GraphArrays of `graph`, built on first use and cached as `graph._arrays`."""
    cached = getattr(graph, "_arrays", None)
    if cached is not None and cached.n == len(graph.nodes):
        return cached
    graph._arrays = _build(graph)
    return graph._arrays


def _build(graph: Graph) -> GraphArrays:
    nodes = graph.nodes
    n = len(nodes)
    index = graph.index
    # The one pass over the Node list; everything after it is numpy.
    ops: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    groups: dict[str, int] = {}
    names = tuple(nd.name for nd in nodes)
    op_code = np.fromiter((ops.setdefault(nd.op, len(ops)) for nd in nodes), np.int32, n)
    dtype_code = np.fromiter((dtypes.setdefault(nd.dtype, len(dtypes)) for nd in nodes),
                             np.int32, n)
    nbytes = np.fromiter((nd.nbytes for nd in nodes), np.int64, n)
    flops = np.fromiter((nd.flops if nd.flops is not None else graph.node_flops(nd)
                         for nd in nodes), np.float64, n)
    group = np.fromiter((-1 if nd.group is None else groups.setdefault(nd.group, len(groups))
                         for nd in nodes), np.int32, n)
    degree = np.fromiter((len(nd.inputs) for nd in nodes), np.int64, n)
    src = np.fromiter((index[i] for nd in nodes for i in nd.inputs), np.int64, int(degree.sum()))

    def op_mask(names_: frozenset[str] | set[str]) -> np.ndarray:
        codes = [c for name, c in ops.items() if name in names_]
        return np.isin(op_code, codes)

    is_param = op_mask({"param"})
    is_source = op_mask(SOURCE_OPS)
    is_float = np.isin(dtype_code, [c for name, c in dtypes.items() if name in FLOAT_DTYPES])
    itemsize = np.array([ITEMSIZE[name] for name in dtypes], dtype=np.int64)[dtype_code]

    # Distinct edges sorted by (consumer, input) form the in-CSR; a stable sort by input
    # gives the out-CSR.
    dst = np.repeat(np.arange(n, dtype=np.int64), degree)
    key = sorted_unique(dst * max(n, 1) + src)
    in_idx = (key % max(n, 1)).astype(np.int32)
    in_dst = (key // max(n, 1)).astype(np.int32)
    in_ptr = _ptr(in_dst, n)
    order = np.argsort(in_idx, kind="stable")
    out_idx = in_dst[order]
    out_ptr = _ptr(in_idx, n)

    float_edge = is_float[in_idx] & is_float[in_dst]
    requires_grad = _reachable(n, in_idx[float_edge], in_dst[float_edge], is_param & is_float)
    batch_seed = op_mask({"input"}) | (~is_source & (degree == 0))
    batch_dependent = _reachable(n, in_idx, in_dst, batch_seed)
    return GraphArrays(
        n=n, names=names, bytes=nbytes, size=nbytes // itemsize, flops=flops,
        train_flops=flops * np.where(requires_grad, 3.0, 1.0), requires_grad=requires_grad,
        is_param=is_param, is_source=is_source, batch_dependent=batch_dependent,
        in_ptr=in_ptr, in_idx=in_idx, out_ptr=out_ptr, out_idx=out_idx, group=group,
        group_names=tuple(groups), kept=np.asarray(kept_for_backward(graph), dtype=bool))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values in increasing order (a sort, faster than np.unique's hashing)."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def kahn_order(n: int, src, dst, priority=None, break_cycles: bool = False) -> np.ndarray:
    """Kahn's topological order of nodes 0..n-1 under the edges src -> dst: among ready nodes
    the smallest (priority, id) first (priority defaults to the id). On a cycle, with
    `break_cycles` the smallest unfinished id is released; without, the order stops short."""
    import heapq
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    ptr = _ptr(src, n).tolist()
    successors = dst[np.argsort(src, kind="stable")].tolist()
    degree = np.bincount(dst, minlength=n).tolist()
    key = list(range(n)) if priority is None else np.asarray(priority).tolist()
    heap = [(key[v], v) for v in range(n) if degree[v] == 0]
    heapq.heapify(heap)
    done = [False] * n
    order: list[int] = []
    unfinished = 0
    while len(order) < n:
        if not heap:
            if not break_cycles:
                break
            while done[unfinished]:
                unfinished += 1
            heap.append((key[unfinished], unfinished))
            degree[unfinished] = 0
        _, v = heapq.heappop(heap)
        if done[v]:
            continue
        done[v] = True
        order.append(v)
        for w in successors[ptr[v]:ptr[v + 1]]:
            degree[w] -= 1
            if degree[w] == 0 and not done[w]:
                heapq.heappush(heap, (key[w], w))
    return np.array(order, dtype=np.int64)


def _ptr(owner: np.ndarray, n: int) -> np.ndarray:
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=ptr[1:])
    return ptr


def _reachable(n: int, src: np.ndarray, dst: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Nodes reachable from a seed along edges src -> dst (seeds included), by a BFS in scipy."""
    seed_ids = np.flatnonzero(seeds)
    rows = np.concatenate([src, np.full(len(seed_ids), n, dtype=np.int64)])
    cols = np.concatenate([dst, seed_ids])
    adjacency = csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n + 1, n + 1))
    found = breadth_first_order(adjacency, n, directed=True, return_predecessors=False)
    mask = np.zeros(n + 1, dtype=bool)
    mask[found] = True
    return mask[:n]


# ------------------------------------------------------------------ per-step quantities
def multiplicity(arrays: GraphArrays, micro_batches: int) -> np.ndarray:
    """How often each node runs (and its tensor travels) per step: m if batch-dependent, else 1."""
    return np.where(arrays.batch_dependent, float(micro_batches), 1.0)


def step_train_flops(arrays: GraphArrays, micro_batches: int = 1) -> np.ndarray:
    """Training FLOPs of each node per step with m micro-batches (the load weight)."""
    return arrays.train_flops * multiplicity(arrays, micro_batches)


def slots_of(optimizer: str) -> int:
    """Per-parameter optimizer state tensors: sgd 0, momentum 1, adam 2."""
    try:
        return OPTIMIZER_SLOTS[optimizer]
    except KeyError:
        raise PlacementError(f"optimizer: unknown optimizer {optimizer!r} (expected one of "
                             f"{', '.join(OPTIMIZER_SLOTS)})") from None


def remote_pairs(arrays: GraphArrays, assignment: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (node, device) pairs, sorted by node, where `device` holds a consumer of
    `node` but not `node`: one transfer each of its tensor (SPEC section 2, `remote(v)`)."""
    src = arrays.in_idx
    device = assignment[arrays.in_dst]
    cut = assignment[src] != device
    key = sorted_unique(src[cut].astype(np.int64) * k + device[cut])
    return key // k, key % k


def persistent_memory(arrays: GraphArrays, optimizer_slots: int) -> np.ndarray:
    """Bytes each node holds on its own device: parameters x (2 + slots), kept activations x 1."""
    params = np.where(arrays.is_param, arrays.bytes * (2 + optimizer_slots), 0)
    return params + np.where(arrays.kept & ~arrays.is_param, arrays.bytes, 0)


def memory_per_device(arrays: GraphArrays, assignment: np.ndarray, k: int,
                      optimizer_slots: int) -> np.ndarray:
    """Bytes per device (SPEC section 2): parameters with gradient and optimizer slots, kept
    activations of one micro-batch, and one receive buffer per tensor arriving from elsewhere."""
    memory = np.bincount(assignment, weights=persistent_memory(arrays, optimizer_slots),
                         minlength=k)
    nodes, devices = remote_pairs(arrays, assignment, k)
    memory += np.bincount(devices, weights=arrays.bytes[nodes], minlength=k)
    return np.rint(memory).astype(np.int64)
