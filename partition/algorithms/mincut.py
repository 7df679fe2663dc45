"""Recursive bisection by s-t minimum cuts on the tensor-bytes hypergraph.

Each bisection of a node set (topologically ordered) seeds the source with a prefix of the order
and the sink with a suffix, leaving a window of +-delta around the target share, so every cut is
balanced, then takes a minimum cut (flows.min_cut); the sweep widens delta and keeps the lightest
balanced cut. With acyclic=True each source side is closed under predecessors, so the devices in
left-to-right order form a pipeline. Graphs above `coarsen_above` nodes are coarsened first.
"""
from __future__ import annotations

import math

import numpy as np

from partition.algorithms.base import AlgorithmResult
from partition.algorithms.coarsen import hierarchy
from partition.algorithms.flows import IGNORED, REGION, SINK, SOURCE, min_cut
from partition.algorithms.hypergraph import Caps, Hypergraph, from_problem, objective, overload
from partition.algorithms.initial import late_sources_order, make_monotone
from partition.algorithms.refine import rebalance
from partition.problem import Problem


def _cut_weight(hg: Hypergraph, members: np.ndarray, left: np.ndarray) -> float:
    """Weight of nets with pins on both sides, counting only pins inside `members`."""
    pin_in = members[hg.net_pins]
    side = left[hg.net_pins]
    e = hg.pin_net[pin_in]
    has_l = np.bincount(e, weights=side[pin_in], minlength=hg.num_nets) > 0
    has_r = np.bincount(e, weights=~side[pin_in], minlength=hg.num_nets) > 0
    return float(hg.net_weight[has_l & has_r].sum())


def bisect(hg: Hypergraph, order: np.ndarray, members: np.ndarray, share: float, eps: float,
           side_of_pin: np.ndarray, *, acyclic: bool) -> np.ndarray:
    """Mask of the members that go left (target weight share `share`, slack eps on each side)."""
    nodes = order[members[order]]
    w = hg.node_weight[nodes]
    total = float(w.sum())
    before = np.cumsum(w) - w
    after = total - before - w
    lo_cap, hi_cap = share * total * (1 + eps), (1 - share) * total * (1 + eps)
    base = eps * min(share, 1 - share)
    best, best_cut = None, math.inf
    for delta in (8 * base, 4 * base, 2 * base, base, 0.0):
        label = np.full(hg.n, IGNORED, dtype=np.int8)
        label[nodes] = REGION
        label[nodes[before + w <= (share - delta) * total]] = SOURCE
        label[nodes[after + w <= (1 - share - delta) * total]] = SINK
        pinned = nodes[side_of_pin[nodes] >= 0]
        label[pinned] = np.where(side_of_pin[pinned] == 0, SOURCE, SINK)
        cut = min_cut(hg, label, acyclic=acyclic)
        sides = [label == SOURCE] if cut is None else [c | (label == SOURCE) for c in cut[:2]]
        for left in sides:
            left = left & members
            lw = float(hg.node_weight[left].sum())
            if lw > lo_cap + 1e-9 or total - lw > hi_cap + 1e-9:
                continue
            c = _cut_weight(hg, members, left)
            if c < best_cut:
                best, best_cut = left, c
        if best is not None and delta <= base:
            break
    if best is None:  # fall back to the plain split of the order at the target share
        best = np.zeros(hg.n, dtype=bool)
        best[nodes[before + w / 2 < share * total]] = True
    return best


def mincut_partition(hg: Hypergraph, caps: Caps, *, acyclic: bool) -> np.ndarray:
    """Recursive min-cut bisection into caps.k parts (left-to-right device order)."""
    k = caps.k
    order = late_sources_order(hg)
    total = float(hg.node_weight.sum())
    eps_total = max(float(caps.load.sum()) / max(total, 1e-300) - 1.0, 0.0)
    depth = max(math.ceil(math.log2(k)), 1)
    eps = (1 + eps_total) ** (1 / depth) - 1
    part = np.zeros(hg.n, dtype=np.int64)
    stack = [(np.ones(hg.n, dtype=bool), 0, k)]
    while stack:
        members, lo, hi = stack.pop()
        if hi - lo == 1:
            part[members] = lo
            continue
        mid = (lo + hi) // 2
        whole = float(caps.load[lo:hi].sum())
        share = float(caps.load[lo:mid].sum()) / whole if whole > 0 else (mid - lo) / (hi - lo)
        side_of_pin = np.where(hg.fixed < 0, -1, np.where(hg.fixed < mid, 0, 1))
        left = bisect(hg, order, members, share, eps, side_of_pin, acyclic=acyclic)
        stack.append((members & ~left, mid, hi))
        stack.append((left, lo, mid))
    return part


def mincut(problem: Problem, coarsen_above: int = 50_000) -> AlgorithmResult:
    """Registry entry: recursive s-t min-cut bisection, then a repair if a cap is exceeded."""
    hg, caps = from_problem(problem)
    acyclic = problem.acyclic
    levels, maps, _ = hierarchy(hg, caps.k, np.random.default_rng(problem.seed), acyclic=acyclic,
                                max_weight=float(hg.node_weight.sum()) / (40 * caps.k),
                                max_mem=np.inf, target=coarsen_above)
    part = mincut_partition(levels[-1], caps, acyclic=acyclic)
    for cid in reversed(maps):
        part = part[cid]
    if acyclic and (hg.fixed >= 0).any():
        part = make_monotone(hg, part)
    if overload(hg, part, caps) > 0:
        part = rebalance(hg, part, caps, acyclic=acyclic)
    return AlgorithmResult(part.astype(np.int32), info={
        "objective_value": objective(hg, part, caps.k), "levels": len(levels)})
