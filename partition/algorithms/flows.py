"""Minimum s-t cuts of hypergraphs by max-flow (scipy's Dinic), for flow refinement and mincut.

Nets become Lawler gadgets (pins -> in -INF-> ... in -w-> out -> pins), nets with two endpoints
plain arcs both ways, so a minimum cut is a minimum weight of cut nets. Nodes are labelled: region
(free), source side, sink side (contracted into s or t), or ignored (pins dropped: for two blocks
of a k-way partition a net's km1 contribution changes exactly by its two-block cut). With
acyclic=True every DAG edge u -> v also gets an INF arc v -> u, so the source side of any finite
cut is closed under predecessors. Capacities are scaled to int32; with a link-time objective a
net's capacity is its mean cost on the a-b link (inexact for transfers to third parts), so
callers re-evaluate the true objective before keeping a cut.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from partition.algorithms.hypergraph import Caps, Hypergraph, gather, loads, pin_counts
from partition.algorithms.refine import apply_moves

REGION, SOURCE, SINK, IGNORED = 0, 1, 2, -1
MAX_REGION = 20_000  # nodes of a flow problem (both blocks together) in refine_pair
_INF = 2**30
_FINITE_TOTAL = 2**29


class _RegionNets(NamedTuple):
    """The nets touching a flow region, as (net row, flow-graph endpoint) pin pairs: endpoints
    are region nodes 0..r-1, the source r and the sink r + 1 (duplicates merged)."""

    region: np.ndarray        # global ids of the region's nodes
    nets: np.ndarray          # global ids of the nets touching it
    rows: np.ndarray          # per kept pin: its net's row in `nets`
    ends: np.ndarray          # per kept pin: its endpoint in the flow graph
    src_end: np.ndarray       # per net: the endpoint of its source pin, -1 when dropped

    @property
    def r(self) -> int:
        return len(self.region)


def min_cut(hg: Hypergraph, label: np.ndarray, *, acyclic: bool,
            net_weight: np.ndarray | None = None):
    """(min_side, max_side, flow_value_scaled): node masks of the smallest and largest source
    sides of a minimum cut (region nodes meaningful), or None when no net touches the region."""
    region = np.flatnonzero(label == REGION)
    if len(region) == 0:
        return None
    rn = _region_nets(hg, label, region)
    arcs = _arcs(rn, hg.net_weight if net_weight is None else net_weight, acyclic)
    if arcs is None:
        return None
    return _cut_sides(hg, label, rn, *arcs)


def _region_nets(hg: Hypergraph, label: np.ndarray, region: np.ndarray) -> _RegionNets:
    """The nets of `region`'s nodes with their pins mapped to flow-graph endpoints: source- and
    sink-side pins contracted into s and t, ignored pins dropped."""
    _, pos = gather(hg.node_ptr, region)
    nets = np.unique(hg.node_nets[pos])
    rows, ppos = gather(hg.net_ptr, nets)
    pins = hg.net_pins[ppos]
    lab = label[pins]
    r = len(region)
    local = np.full(hg.n, -1, dtype=np.int64)
    local[region] = np.arange(r)
    end = np.select([lab == REGION, lab == SOURCE, lab == SINK], [local[pins], r, r + 1], -1)
    keep = end >= 0
    is_src_pin = np.zeros(len(pins), dtype=bool)
    is_src_pin[np.searchsorted(rows, np.arange(len(nets)))] = True  # first pin of each net
    src_end = np.full(len(nets), -1, dtype=np.int64)
    src_end[rows[is_src_pin]] = np.where(keep[is_src_pin], end[is_src_pin], -1)
    key = np.unique(rows[keep] * (r + 2) + end[keep])
    return _RegionNets(region, nets, key // (r + 2), key % (r + 2), src_end)


def _arcs(rn: _RegionNets, w_all: np.ndarray, acyclic: bool):
    """(u, v, capacity, node count) of the flow graph's arcs, or None when it has none: plain
    arcs both ways for two-endpoint nets, Lawler gadgets for bigger ones, and with `acyclic`
    an INF arc back from every consumer to its producer."""
    r, rows_k, end_k, count = rn.r, rn.rows, rn.ends, len(rn.nets)
    # a net is useful when it has two endpoints and does not join s and t; capacities are
    # scaled so that their sum fits int32
    deg = np.bincount(rows_k, minlength=count)
    has_s = np.bincount(rows_k, weights=end_k == r, minlength=count) > 0
    has_t = np.bincount(rows_k, weights=end_k == r + 1, minlength=count) > 0
    useful = (deg >= 2) & ~(has_s & has_t)
    w = w_all[rn.nets]
    total = float(w[useful].sum())
    scale = _FINITE_TOTAL / total if total > 0 else 1.0
    cap = np.where(useful, np.maximum(np.round(w * scale), 1), 0).astype(np.int64)
    arcs_u, arcs_v, arcs_c = [], [], []
    sel = (useful & (deg == 2))[rows_k]
    pair = end_k[sel].reshape(-1, 2)
    c2 = cap[rows_k[sel][::2]]
    arcs_u += [pair[:, 0], pair[:, 1]]
    arcs_v += [pair[:, 1], pair[:, 0]]
    arcs_c += [c2, c2]
    gadget = useful & (deg > 2)
    big = np.flatnonzero(gadget)
    aux = np.full(len(rn.nets), -1, dtype=np.int64)
    aux[big] = r + 2 + 2 * np.arange(len(big))
    e_in, p = aux[rows_k[gadget[rows_k]]], end_k[gadget[rows_k]]
    arcs_u += [p, e_in + 1, aux[big]]
    arcs_v += [e_in, p, aux[big] + 1]
    arcs_c += [np.full(len(p), _INF), np.full(len(p), _INF), cap[big]]
    if acyclic:
        se = rn.src_end[rows_k]
        sel = (se >= 0) & (se != end_k)
        arcs_u.append(end_k[sel])
        arcs_v.append(se[sel])
        arcs_c.append(np.full(int(sel.sum()), _INF))
    u = np.concatenate(arcs_u)
    if len(u) == 0:
        return None
    return u, np.concatenate(arcs_v), np.concatenate(arcs_c).astype(np.int64), r + 2 + 2 * len(big)


def _cut_sides(hg: Hypergraph, label: np.ndarray, rn: _RegionNets, u: np.ndarray, v: np.ndarray,
               c: np.ndarray, n_net: int):
    """Max-flow from s to t; the region nodes reachable from s in the residual graph (the
    smallest source side) and those not reaching t (the largest), and the flow value."""
    r, region = rn.r, rn.region
    s_id, t_id = r, r + 1
    graph = sp.coo_array((np.r_[c, np.zeros(len(c), np.int64)], (np.r_[u, v], np.r_[v, u])),
                         shape=(n_net, n_net)).tocsr()
    graph.data = np.minimum(graph.data, _INF)
    graph = graph.astype(np.int32)
    res = maximum_flow(graph, s_id, t_id, method="dinic")
    residual = (graph - res.flow).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reach_s = breadth_first_order(residual, s_id, directed=True, return_predecessors=False)
    reach_t = breadth_first_order(residual.T.tocsr(), t_id, directed=True,
                                  return_predecessors=False)
    min_side = np.zeros(hg.n, dtype=bool)
    min_side[region[reach_s[reach_s < r]]] = True
    max_side = label == REGION
    max_side[region[reach_t[reach_t < r]]] = False
    return min_side, max_side, res.flow_value


def _grow(hg: Hypergraph, part: np.ndarray, block: int, seeds: np.ndarray, budget: float,
          max_nodes: int) -> np.ndarray:
    """Breadth-first region inside `block` from `seeds` (free nodes only), as far as its weight
    stays within `budget` and its size within `max_nodes`."""
    n, e = hg.n, hg.num_nets
    inside = (part == block) & (hg.fixed < 0)
    seeds = seeds[inside[seeds]]
    taken = np.zeros(n, dtype=bool)
    if len(seeds) == 0:
        return taken
    # bipartite graph nodes [0, n) + nets [n, n + e) + root, restricted to the block's free nodes
    pin_in = inside[hg.net_pins]
    net_deg = np.bincount(hg.pin_net[pin_in], minlength=e)
    inc_in = inside[np.repeat(np.arange(n), np.diff(hg.node_ptr))]
    node_deg = np.where(inside, np.diff(hg.node_ptr), 0)
    indptr = np.zeros(n + e + 2, dtype=np.int64)
    np.cumsum(np.r_[node_deg, net_deg, len(seeds)], out=indptr[1:])
    indices = np.r_[hg.node_nets[inc_in].astype(np.int64) + n, hg.net_pins[pin_in], seeds]
    graph = sp.csr_array((np.ones(len(indices), dtype=np.int8), indices, indptr),
                         shape=(n + e + 1, n + e + 1))
    order = breadth_first_order(graph, n + e, directed=True, return_predecessors=False)
    order = order[order < n]
    fits = np.cumsum(hg.node_weight[order]) <= budget
    stop = len(fits) if fits.all() else int(np.argmin(fits))
    taken[order[:min(stop, max_nodes)]] = True
    return taken


def _delta(hg: Hypergraph, part: np.ndarray, cnt: np.ndarray, moved: np.ndarray,
           target: np.ndarray) -> float:
    """The objective change if `moved` go to `target`."""
    row, pos = gather(hg.node_ptr, moved)
    touched, inv = np.unique(hg.node_nets[pos], return_inverse=True)
    new = cnt[touched].copy()
    np.add.at(new, (inv, part[moved][row]), -1)
    np.add.at(new, (inv, target[row]), 1)
    after = part.copy()
    after[moved] = target
    src = hg.net_src[touched]
    return _costs(hg, touched, new, after[src]) - _costs(hg, touched, cnt[touched], part[src])


def _costs(hg: Hypergraph, nets: np.ndarray, cnt: np.ndarray, src_part: np.ndarray) -> float:
    present = cnt > 0
    if hg.cost is None:
        return float((hg.net_weight[nets] * (present.sum(axis=1) - 1)).sum())
    return float((hg.cost.rows(nets, src_part) * present).sum())


def refine_pair(hg: Hypergraph, part: np.ndarray, cnt: np.ndarray, load: np.ndarray,
                mem: np.ndarray, caps: Caps, a: int, b: int, *, acyclic: bool):
    """Best min-cut re-split of blocks a and b around their boundary: (moved nodes, their new
    parts), or None when no feasible cut improves the objective."""
    both = (cnt[:, a] > 0) & (cnt[:, b] > 0)
    if not both.any():
        return None
    _, ppos = gather(hg.net_ptr, np.flatnonzero(both))
    seeds = np.unique(hg.net_pins[ppos])
    seeds = seeds[hg.fixed[seeds] < 0]
    reg_a = _grow(hg, part, a, seeds, max(caps.load[b] - load[b], 0.0), MAX_REGION // 2)
    reg_b = _grow(hg, part, b, seeds, max(caps.load[a] - load[a], 0.0), MAX_REGION // 2)
    if (mem[b] + hg.node_mem[reg_a].sum() > caps.memory[b]
            or mem[a] + hg.node_mem[reg_b].sum() > caps.memory[a]):
        return None  # some cut could break a memory cap
    label = np.full(hg.n, IGNORED, dtype=np.int8)
    label[part == a] = SOURCE
    label[part == b] = SINK
    region = reg_a | reg_b
    label[region] = REGION
    weight = None
    if hg.cost is not None:  # capacity of a net: its mean cost on the link between a and b
        weight = hg.cost.coef @ (hg.cost.mats[:, a, b] + hg.cost.mats[:, b, a]) / 2
    cut = min_cut(hg, label, acyclic=acyclic, net_weight=weight)
    if cut is None:
        return None
    best, best_delta = None, -hg.tolerance()
    nodes = np.flatnonzero(region)
    for side in cut[:2]:
        target = np.where(side[nodes], a, b)
        change = target != part[nodes]
        moved, target = nodes[change], target[change]
        if len(moved) == 0:
            continue
        w = hg.node_weight[moved]
        la = load[a] + w[target == a].sum() - w[target == b].sum()
        lb = load[b] + w[target == b].sum() - w[target == a].sum()
        if la > caps.load[a] * (1 + 1e-12) + 1e-9 or lb > caps.load[b] * (1 + 1e-12) + 1e-9:
            continue
        delta = _delta(hg, part, cnt, moved, target)
        if delta < best_delta:
            best, best_delta = (moved, target), delta
    return best


def flow_refine(hg: Hypergraph, part: np.ndarray, caps: Caps, *, acyclic: bool) -> np.ndarray:
    """Apply refine_pair to block pairs sharing cut nets (consecutive stages when acyclic), for
    up to two rounds."""
    k = caps.k
    part = part.copy()
    cnt = pin_counts(hg, part, k)
    load, mem = loads(hg, part, k)
    for _ in range(2):
        improved = False
        if acyclic:
            pairs = [(a, a + 1) for a in range(k - 1)]
        else:
            present = cnt > 0
            cut = present.sum(axis=1) > 1
            p = present[cut].astype(np.float64)
            weight = (p * hg.net_weight[cut][:, None]).T @ p
            pairs = [(a, b) for a in range(k) for b in range(a + 1, k) if weight[a, b] > 0]
            pairs.sort(key=lambda ab: -weight[ab])
        for a, b in pairs:
            res = refine_pair(hg, part, cnt, load, mem, caps, a, b, acyclic=acyclic)
            if res is not None:
                apply_moves(hg, part, cnt, load, mem, *res)
                improved = True
        if not improved:
            break
    return part
