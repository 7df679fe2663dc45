"""Atoms, ideals and the boundary tensors `pipeline_dp` works on.

An *atom* is a set of nodes that always share a device; an *ideal* is a down-closed set of
atoms (every producer of a member is a member), held as one row of a bool matrix. The acyclic
placements into ordered stages are exactly the chains of ideals `{} = I_0 <= ... <= I_k = all`
(stage p = I_p minus I_{p-1}).

Contractions (`atoms_of`) move a zero-cost node next to its only neighbour: a source (input,
param, const) with one consumer joins it, a node with no consumer and one input joins that
input. Both add no compute and only remove transfers and quotient edges, so they keep the
optimum of SPEC section 5's `max_d T_d` and of V (under binding memory caps they restrict the
search: a parameter lives where it is used). Nodes pinned to different devices are never joined.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from partition.algorithms.base import layer_units, pipeline_order, ranks, split_by_weight
from partition.cost import GraphArrays, kahn_order, sorted_unique


def atoms_of(arrays: GraphArrays, pinned: np.ndarray) -> np.ndarray:
    """Atom id of every node (ids numbered along a topological order of the atoms)."""
    n = arrays.n
    zero = arrays.train_flops == 0
    indegree, outdegree = np.diff(arrays.in_ptr), np.diff(arrays.out_ptr)
    sources = np.flatnonzero(arrays.is_source & zero & (outdegree == 1))
    sinks = np.flatnonzero(zero & (outdegree == 0) & (indegree == 1))
    a = np.concatenate([sources, sinks])
    b = np.concatenate([arrays.out_idx[arrays.out_ptr[sources]],
                        arrays.in_idx[arrays.in_ptr[sinks]]]).astype(np.int64)
    same_pin = pinned[a] == pinned[b]
    a, b = a[same_pin], b[same_pin]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # Every edge between atoms starts and ends at an atom's one unjoined node (its core), so
    # numbering atoms by their core's position in a topological order is topological.
    position = np.argsort(pipeline_order(arrays))
    key = position.copy()
    key[a] = -1
    core = np.full(int(label.max()) + 1, -1, dtype=np.int64)
    np.maximum.at(core, label, key)
    np.maximum.at(core, label, np.where(core[label] < 0, position, -1))
    return ranks(core)[label]


def unit_edges(arrays: GraphArrays, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (producer unit, consumer unit) pairs between different units."""
    src, dst = unit[arrays.in_idx], unit[arrays.in_dst]
    keep = src != dst
    count = int(unit.max()) + 1 if len(unit) else 1
    key = sorted_unique(src[keep].astype(np.int64) * count + dst[keep])
    return key // count, key % count


def acyclic_units(arrays: GraphArrays, unit: np.ndarray) -> np.ndarray:
    """`unit` with every strongly connected set of units of its quotient merged, renumbered
    along a topological order (smallest merged id first among ready units)."""
    count = int(unit.max()) + 1
    src, dst = unit_edges(arrays, unit)
    graph = csr_matrix((np.ones(len(src)), (src, dst)), shape=(count, count))
    _, scc = connected_components(graph, directed=True, connection="strong")
    merged = scc[unit]
    order = kahn_order(int(merged.max()) + 1, *unit_edges(arrays, merged), break_cycles=True)
    return np.argsort(order)[merged]


def coarse_units(arrays: GraphArrays, weights: np.ndarray, limit: int,
                 layers: bool = True) -> np.ndarray:
    """Node -> unit with at most about `limit` units and an acyclic quotient: layer groups
    (strongly connected ones merged) when the graph has them and they are few enough, else
    equal-load chunks of the pipeline order."""
    order = pipeline_order(arrays)
    groups = layer_units(arrays, order) if layers else None
    if groups is not None:
        units = acyclic_units(arrays, groups)
        if int(units.max()) + 1 <= limit:
            return units
    load = np.where(weights > 0, weights, 0.0) + 1e-9 * max(float(weights.sum()), 1.0) / len(order)
    chunks = split_by_weight(load[order], np.ones(min(limit, arrays.n)))[np.argsort(order)]
    return np.unique(chunks, return_inverse=True)[1].astype(np.int64)


def enumerate_ideals(count: int, src: np.ndarray, dst: np.ndarray, budget: int
                     ) -> np.ndarray | None:
    """Bool matrix (ideals x units) of every ideal of the unit DAG (edges src -> dst, units
    numbered topologically), ordered by size; None when there are more than `budget`."""
    preds = [0] * count
    succs: list[list[int]] = [[] for _ in range(count)]
    for s, d in zip(src.tolist(), dst.tolist()):
        preds[d] |= 1 << s
        succs[s].append(d)
    level = {0: tuple(v for v in range(count) if preds[v] == 0)}
    ideals = [0]
    while level:
        following: dict[int, tuple] = {}
        for ideal, ready in level.items():
            for v in ready:
                grown = ideal | (1 << v)
                if grown in following:
                    continue
                more = tuple(w for w in succs[v] if preds[w] & ~grown == 0)
                following[grown] = tuple(u for u in ready if u != v) + more
        ideals.extend(following)
        if len(ideals) > budget:
            return None
        level = following
    return bits_to_matrix(ideals, count)


def bits_to_matrix(ideals: list[int], count: int) -> np.ndarray:
    """Rows of bools from Python-int bitsets (bit i = unit i)."""
    width = (count + 7) // 8
    raw = np.frombuffer(b"".join(x.to_bytes(width, "little") for x in ideals), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(ideals), width), axis=1,
                         bitorder="little")[:, :count].astype(bool)


def prefix_ideals(count: int, cuts: np.ndarray | None = None) -> np.ndarray:
    """The prefixes of the unit order (units numbered topologically) as rows, all of them or
    those ending at `cuts`."""
    ends = np.arange(count + 1) if cuts is None else np.union1d([0, count], cuts)
    return np.arange(count)[None, :] < ends[:, None]


def merge_families(*families: np.ndarray) -> np.ndarray:
    """The distinct rows of the given ideal matrices, smallest first (ties by content)."""
    rows = np.vstack(families)
    packed = np.packbits(rows, axis=1)
    _, first = np.unique(packed, axis=0, return_index=True)
    rows = rows[np.sort(first)]
    return rows[np.argsort(rows.sum(axis=1), kind="stable")]


@dataclass(frozen=True, eq=False)
class Boundary:
    """Tensors read outside their own unit: `node[b]`, `unit[b]` and the distinct other units
    reading it (CSR `ptr`, `readers`)."""

    node: np.ndarray
    unit: np.ndarray
    ptr: np.ndarray
    readers: np.ndarray


def boundary_of(arrays: GraphArrays, unit: np.ndarray) -> Boundary:
    src = arrays.in_idx.astype(np.int64)
    reader = unit[arrays.in_dst]
    keep = unit[src] != reader
    count = int(unit.max()) + 1
    key = sorted_unique(src[keep] * count + reader[keep])
    node, readers = key // count, key % count
    first = np.flatnonzero(np.diff(node, prepend=-1))
    ptr = np.append(first, len(node)).astype(np.int64)
    tensors = node[first]
    return Boundary(node=tensors, unit=unit[tensors], ptr=ptr, readers=readers)
