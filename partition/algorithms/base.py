"""What every partitioning algorithm returns, and orderings shared by the order-based ones.

An algorithm is a function `Problem -> AlgorithmResult`, found by name in
`partition.algorithms.ALGORITHMS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from partition.cost import GraphArrays
from partition.problem import Problem


@dataclass(frozen=True, eq=False)
class AlgorithmResult:
    """An assignment int32[n] (node -> device), whether it is proven optimal for the
    algorithm's objective, a lower bound on that objective when known, and free-form info."""

    assignment: np.ndarray
    optimal: bool | None = None
    bound: float | None = None
    info: dict = field(default_factory=dict)


Algorithm = Callable[[Problem], AlgorithmResult]


def apply_pins(problem: Problem, assignment: np.ndarray) -> np.ndarray:
    """`assignment` with every pinned node moved to its pinned device (int32 copy)."""
    out = np.array(assignment, dtype=np.int32)
    fixed = problem.pinned >= 0
    out[fixed] = problem.pinned[fixed]
    return out


def pipeline_order(arrays: GraphArrays) -> np.ndarray:
    """A topological order in which each source node (input, param, const) comes right before
    its first consumer, so cutting the order into blocks keeps weights next to their use."""
    n = arrays.n
    key = 2 * np.arange(n, dtype=np.int64) + 1
    has_consumer = np.diff(arrays.out_ptr) > 0
    sources = np.flatnonzero(arrays.is_source & has_consumer)
    key[sources] = 2 * arrays.out_idx[arrays.out_ptr[sources]].astype(np.int64)
    return np.argsort(key, kind="stable")


def split_by_weight(weights: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Cut a sequence of weights into len(shares) consecutive blocks holding about the given
    fractions of the total: item i goes to the block containing the midpoint of its weight."""
    total = float(weights.sum())
    if total <= 0:
        return np.zeros(len(weights), dtype=np.int32)
    ends = np.cumsum(weights, dtype=np.float64)
    midpoints = ends - weights / 2.0
    bounds = total * np.cumsum(shares)[:-1] / float(np.sum(shares))
    return np.searchsorted(bounds, midpoints, side="right").astype(np.int32)


def layer_units(arrays: GraphArrays, order: np.ndarray) -> np.ndarray | None:
    """Layer index of every node, layers numbered by first appearance in `order`; None when no
    computed node has a group. Ungrouped computed nodes join the group of the previous computed
    node (the first group for leading ones); sources join their first consumer's group."""
    computed = np.flatnonzero(~arrays.is_source)
    group = arrays.group[computed]
    grouped = np.flatnonzero(group >= 0)
    if len(grouped) == 0:
        return None
    last = np.maximum.accumulate(np.where(group >= 0, np.arange(len(group)), -1))
    filled = np.full(arrays.n, -1, dtype=np.int64)
    filled[computed] = np.where(last >= 0, group[np.maximum(last, 0)], group[grouped[0]])
    sources = np.flatnonzero(arrays.is_source)
    own = arrays.group[sources]
    has_consumer = np.diff(arrays.out_ptr)[sources] > 0
    first_consumer = arrays.out_idx[arrays.out_ptr[sources[has_consumer]]]
    inherited = np.full(len(sources), group[grouped[0]], dtype=np.int64)
    inherited[has_consumer] = filled[first_consumer]
    filled[sources] = np.where(own >= 0, own, inherited)
    first_seen = np.full(len(arrays.group_names), len(order), dtype=np.int64)
    np.minimum.at(first_seen, filled[order], np.arange(len(order)))
    return ranks(first_seen)[filled]


def ranks(key: np.ndarray) -> np.ndarray:
    """Position of every entry of `key` in its stable ascending order."""
    rank = np.empty(len(key), dtype=np.int64)
    rank[np.argsort(key, kind="stable")] = np.arange(len(key))
    return rank
