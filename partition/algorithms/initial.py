"""Initial partitions of the coarsest hypergraph: balanced chunks of topological orders (stage-
monotone, so the starts in acyclic mode) and, for diversity otherwise, graph growing.
"""
from __future__ import annotations

import heapq

import numpy as np

from partition.algorithms.hypergraph import Hypergraph
from partition.cost import kahn_order


def topological_order(hg: Hypergraph, priority: np.ndarray) -> np.ndarray:
    """Kahn's order, smallest priority first among ready nodes (cycles broken by smallest id)."""
    return kahn_order(hg.n, *hg.edges(), priority=priority, break_cycles=True)


def late_sources_order(hg: Hypergraph) -> np.ndarray:
    """The node order with every input-less node moved right before its first consumer
    (parameters next to their use); a topological order when the node order is one."""
    s, t = hg.edges()
    n = hg.n
    indeg = np.bincount(t, minlength=n)
    first = np.full(n, n, dtype=np.int64)
    np.minimum.at(first, s, t)
    key = 2 * np.arange(n, dtype=np.int64) + 1
    moved = (indeg == 0) & (first < n)
    key[moved] = 2 * first[moved]
    return np.argsort(key, kind="stable")


def chunks(order: np.ndarray, weight: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Split `order` into len(share) consecutive runs with weights proportional to `share`."""
    k = len(share)
    w = weight[order]
    total = w.sum()
    part = np.zeros(len(order), dtype=np.int64)
    if total <= 0:
        part[order] = np.minimum(np.arange(len(order)) * k // max(len(order), 1), k - 1)
        return part
    bounds = np.cumsum(share)[:-1] / share.sum() * total
    mid = np.cumsum(w) - w / 2
    part[order] = np.searchsorted(bounds, mid, side="right")
    return part


def greedy_growing(hg: Hypergraph, share: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grow parts 0..k-2 in turn from a random seed, adding the free node most tied to the part."""
    k = len(share)
    n = hg.n
    part = np.full(n, k - 1, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    total = hg.node_weight.sum()
    src, dst = hg.edges()
    sizes = hg.net_sizes()
    rate = (hg.net_weight / np.maximum(sizes - 1, 1))[np.repeat(np.arange(hg.num_nets), sizes - 1)]
    adj: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for a, b, r in zip(src.tolist(), dst.tolist(), rate.tolist()):
        adj[a].append((b, r))
        adj[b].append((a, r))
    weight = hg.node_weight.tolist()
    for d in range(k - 1):
        goal = total * (share[d] / share.sum() if share.sum() > 0 else 1.0 / k)
        candidates = np.flatnonzero(free)
        if len(candidates) == 0:
            break
        seed = int(rng.choice(candidates))
        conn: dict[int, float] = {seed: 0.0}
        heap = [(0.0, 0, seed)]
        got, count = 0.0, 1
        while heap and got < goal:
            negc, _, v = heapq.heappop(heap)
            if not free[v] or -negc < conn.get(v, 0.0) - 1e-300:
                continue
            if got + weight[v] > goal * 1.02 and got > 0:
                continue
            free[v] = False
            part[v] = d
            got += weight[v]
            for u, r in adj[v]:
                if free[u]:
                    conn[u] = conn.get(u, 0.0) + r
                    count += 1
                    heapq.heappush(heap, (-conn[u], count, u))
            if not heap and got < goal:
                rest = np.flatnonzero(free)
                if len(rest):
                    u = int(rng.choice(rest))
                    heap.append((0.0, count + 1, u))
    part[hg.fixed >= 0] = hg.fixed[hg.fixed >= 0]
    return part


def make_monotone(hg: Hypergraph, part: np.ndarray) -> np.ndarray:
    """Stage-monotone version of `part` (every edge to the same or a later part), fixed nodes kept:
    a reverse pass lowers each free node to its consumers' minimum, a forward pass raises it to its
    producers' maximum (monotone unless a fixed node has a fixed ancestor on a later part)."""
    s, t = hg.edges()
    n = hg.n
    key = np.unique(s.astype(np.int64) * n + t)
    t = (key % n).tolist()
    out_ptr = np.searchsorted(key // n, np.arange(n + 1)).tolist()
    by_dst = np.argsort(key % n, kind="stable")
    in_src = (key // n)[by_dst].tolist()
    in_ptr = np.searchsorted((key % n)[by_dst], np.arange(n + 1)).tolist()
    p = [int(x) for x in part]
    free = (hg.fixed < 0).tolist()
    for v in range(n - 1, -1, -1):
        if free[v] and out_ptr[v] < out_ptr[v + 1]:
            p[v] = min(p[v], min(p[t[i]] for i in range(out_ptr[v], out_ptr[v + 1])))
    for v in range(n):
        if free[v] and in_ptr[v] < in_ptr[v + 1]:
            p[v] = max(p[v], max(p[in_src[i]] for i in range(in_ptr[v], in_ptr[v + 1])))
    return np.array(p, dtype=np.int64)
