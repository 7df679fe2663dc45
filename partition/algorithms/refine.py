"""Local search on the true objective: exact k-way gains, batched label propagation, rebalancing.

Gains are computed on the objective of `hypergraph.py` (volume V, or a LinkCost of link times) from
the per-net pin counts cnt[e, d]. Label propagation moves, per round, a set of positive-gain nodes
no two of which share a net, so the realised improvement equals the sum of the computed gains
exactly. With acyclic=True every edge must run from a lower to a higher-or-equal part (parts are
pipeline stages in order), so a node may only move within [max part of its producers, min part
of its consumers].
"""
from __future__ import annotations

import numpy as np

from partition.algorithms.hypergraph import Caps, Hypergraph, gather, loads, overload, pin_counts

LP_ROUNDS = 30     # label propagation rounds at most
SHED_ROUNDS = 200  # greedy rebalancing rounds at most
MAKE_ROOM = 8      # times rebalance clears room for, or swaps, a heavy node


def volume_gain_parts(hg: Hypergraph, part: np.ndarray, cnt: np.ndarray, nodes: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """Volume objective: benefit[i] (weight of nets nodes[i] alone holds on its part) and
    penalty[i, b] (weight of its nets absent from part b); a move's gain is their difference."""
    m = len(nodes)
    row, pos = gather(hg.node_ptr, nodes)
    e = hg.node_nets[pos]
    C = cnt[e]
    w = hg.net_weight[e]
    a = part[nodes][row]
    benefit = np.bincount(row, weights=w * (C[np.arange(len(e)), a] == 1), minlength=m)
    penalty = np.zeros((m, k))
    for b in range(k):
        penalty[:, b] = np.bincount(row, weights=w * (C[:, b] == 0), minlength=m)
    return benefit, penalty


def gain_matrix(hg: Hypergraph, part: np.ndarray, cnt: np.ndarray, nodes: np.ndarray,
                k: int) -> np.ndarray:
    """G[i, b]: decrease of the objective when nodes[i] alone moves to part b (0 on its own)."""
    m = len(nodes)
    if hg.cost is None:
        benefit, penalty = volume_gain_parts(hg, part, cnt, nodes, k)
        G = benefit[:, None] - penalty
    else:
        row, pos = gather(hg.node_ptr, nodes)
        e, is_src = hg.node_nets[pos], hg.node_is_src[pos]
        a = part[nodes][row]
        C = cnt[e]
        ar = np.arange(len(e))
        rows = hg.cost.rows(e, part[hg.net_src[e]])
        leave = (rows[ar, a] * (C[ar, a] == 1))[:, None]
        contrib = np.where(~is_src[:, None], leave - rows * (C == 0), 0.0)
        si = np.flatnonzero(is_src)
        present = C[si] > 0
        after = present.copy()
        after[np.arange(len(si)), a[si]] = C[si, a[si]] > 1
        coef = hg.cost.coef[e[si]]
        new = np.zeros((len(si), k))
        for j in range(coef.shape[1]):
            new += coef[:, j:j + 1] * (after.astype(np.float64) @ hg.cost.mats[j].T)
        contrib[si] = (rows[si] * present).sum(axis=1)[:, None] - new
        G = np.stack([np.bincount(row, weights=contrib[:, b], minlength=m) for b in range(k)],
                     axis=1)
    G[np.arange(m), part[nodes]] = 0.0
    return G


def windows(hg: Hypergraph, part: np.ndarray, cnt: np.ndarray, nodes: np.ndarray, k: int):
    """Allowed part range [lo, hi] of each node under the stage order (acyclic mode)."""
    m = len(nodes)
    row, pos = gather(hg.node_ptr, nodes)
    lo = np.zeros(m, dtype=np.int64)
    hi = np.full(m, k - 1, dtype=np.int64)
    e = hg.node_nets[pos]
    is_src = hg.node_is_src[pos]
    ns = np.flatnonzero(~is_src)
    np.maximum.at(lo, row[ns], part[hg.net_src[e[ns]]])
    si = np.flatnonzero(is_src)
    C = cnt[e[si]].copy()
    C[np.arange(len(si)), part[nodes][row[si]]] -= 1
    first = np.where((C > 0).any(axis=1), np.argmax(C > 0, axis=1), k - 1)
    np.minimum.at(hi, row[si], first)
    return lo, hi


def boundary(hg: Hypergraph, cnt: np.ndarray) -> np.ndarray:
    """Nodes on at least one net spanning two or more parts."""
    cut = (cnt > 0).sum(axis=1) > 1
    mask = np.zeros(hg.n, dtype=bool)
    mask[hg.net_pins[np.repeat(cut, hg.net_sizes())]] = True
    return mask


def _allowed(hg, part, cnt, nodes, k, caps, load, mem, acyclic):
    """Mask of admissible targets: another part, within the caps and the stage window."""
    w = hg.node_weight[nodes][:, None]
    mm = hg.node_mem[nodes][:, None]
    ok = (load[None, :] + w <= caps.load[None, :] * (1 + 1e-12) + 1e-9) | (w <= 0)
    ok &= (mem[None, :] + mm <= caps.memory[None, :]) | (mm <= 0)
    ok[np.arange(len(nodes)), part[nodes]] = False
    if acyclic:
        lo, hi = windows(hg, part, cnt, nodes, k)
        d = np.arange(k)[None, :]
        ok &= (d >= lo[:, None]) & (d <= hi[:, None])
    return ok


def label_propagation(hg: Hypergraph, part: np.ndarray, caps: Caps, *, acyclic: bool,
                      rng: np.random.Generator) -> np.ndarray:
    """Batched positive-gain moves of net-disjoint nodes until no node gains (or LP_ROUNDS)."""
    k = caps.k
    part = part.copy()
    cnt = pin_counts(hg, part, k)
    load, mem = loads(hg, part, k)
    free = hg.fixed < 0
    act = boundary(hg, cnt)
    scale = hg.tolerance()
    for _ in range(LP_ROUNDS):
        nodes = np.flatnonzero(act & free)
        if len(nodes) == 0:
            break
        ok = _allowed(hg, part, cnt, nodes, k, caps, load, mem, acyclic)
        target, gain = _best_targets(gain_matrix(hg, part, cnt, nodes, k), ok)
        sel = gain > scale
        movers, target, gain = nodes[sel], target[sel], gain[sel]
        if len(movers) == 0:
            break
        keep = _independent(hg, movers, gain, rng)
        keep &= _fits(hg, movers, target, gain, caps, load, mem)
        if not keep.any():
            break
        apply_moves(hg, part, cnt, load, mem, movers[keep], target[keep])
        act = _neighbours(hg, movers[keep])
        act[movers[~keep]] = True        # movers held back this round try again
    return part


def _best_targets(G: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best admissible target and its gain (-inf when none is admissible)."""
    G = np.where(ok, G, -np.inf)
    target = np.argmax(G, axis=1)
    return target, G[np.arange(len(G)), target]


def _independent(hg: Hypergraph, movers: np.ndarray, gain: np.ndarray, rng) -> np.ndarray:
    """Keep movers of highest priority on every net they touch (so no two share a net)."""
    order = np.lexsort((rng.random(len(movers)), gain))
    pri = np.full(hg.n, -1, dtype=np.int64)
    pri[movers[order]] = np.arange(len(movers))
    pin_pri = pri[hg.net_pins]
    best = np.maximum.reduceat(pin_pri, hg.net_ptr[:-1]) if hg.num_nets else np.zeros(0, np.int64)
    row, pos = gather(hg.node_ptr, movers)
    lost = best[hg.node_nets[pos]] != pri[movers][row]
    return np.bincount(row, weights=lost, minlength=len(movers)) == 0


def _fits(hg, movers, target, gain, caps, load, mem) -> np.ndarray:
    """Admit moves per target part in decreasing gain while the added load and memory fit."""
    order = np.lexsort((-gain, target))
    t = target[order]
    w = hg.node_weight[movers][order]
    mm = hg.node_mem[movers][order]
    starts = np.searchsorted(t, np.arange(caps.k))
    cw = np.cumsum(w)
    cm = np.cumsum(mm)
    base_w = np.r_[0.0, cw][starts][t]
    base_m = np.r_[0.0, cm][starts][t]
    ok = (load[t] + cw - base_w <= caps.load[t] * (1 + 1e-12) + 1e-9) | (w <= 0)
    ok &= (mem[t] + cm - base_m <= caps.memory[t]) | (mm <= 0)
    keep = np.empty(len(movers), dtype=bool)
    keep[order] = ok
    return keep


def apply_moves(hg, part, cnt, load, mem, movers, target):
    """Move `movers` (net-disjoint, or accumulated with np.add.at) and update counts and loads."""
    row, pos = gather(hg.node_ptr, movers)
    e = hg.node_nets[pos]
    np.add.at(cnt, (e, part[movers][row]), -1)
    np.add.at(cnt, (e, target[row]), 1)
    k = len(load)
    load -= np.bincount(part[movers], weights=hg.node_weight[movers], minlength=k)
    load += np.bincount(target, weights=hg.node_weight[movers], minlength=k)
    mem -= np.bincount(part[movers], weights=hg.node_mem[movers], minlength=k)
    mem += np.bincount(target, weights=hg.node_mem[movers], minlength=k)
    part[movers] = target


def _neighbours(hg: Hypergraph, nodes: np.ndarray) -> np.ndarray:
    """Mask of all pins of nets incident to `nodes`."""
    mask = np.zeros(hg.n, dtype=bool)
    _, pos = gather(hg.node_ptr, nodes)
    nets = np.unique(hg.node_nets[pos])
    _, ppos = gather(hg.net_ptr, nets)
    mask[hg.net_pins[ppos]] = True
    return mask


def rebalance(hg: Hypergraph, part: np.ndarray, caps: Caps, *, acyclic: bool) -> np.ndarray:
    """Move nodes out of over-full parts, cheapest objective increase per unit of weight first.

    When no single move fits, first clear room for a heavy node on another part, or swap it with
    a lighter node (up to MAKE_ROOM times). In acyclic mode the repair is retried after sliding
    weightless nodes (which may pin their neighbours' stage windows) to the earliest, or latest,
    stage they allow. Last resort: the nodes ordered by (part, id) cut into runs proportional to
    the caps (stage-monotone, and within the caps unless a node outweighs a part's slack).
    """
    starts = [part]
    if acyclic:
        starts += [_slide_weightless(hg, part, caps.k, earliest) for earliest in (True, False)]
    best, best_over = part, np.inf
    for start in starts + [None]:
        if start is None:  # last resort: re-cut the order (part, id) into balanced runs
            start = _rechunk(hg, part, caps)
        fixed = _repair(hg, start, caps, acyclic)
        over = overload(hg, fixed, caps)
        if over == 0:
            return fixed
        if over < best_over:
            best, best_over = fixed, over
    return best


def _rechunk(hg: Hypergraph, part: np.ndarray, caps: Caps) -> np.ndarray:
    """Runs of the order (part, id) with loads proportional to the caps; fixed nodes kept."""
    order = np.lexsort((np.arange(hg.n), part))
    w, total = hg.node_weight[order], float(hg.node_weight.sum())
    if total <= 0 or caps.load.sum() <= 0:
        return part.copy()
    bounds = np.cumsum(caps.load)[:-1] / caps.load.sum() * total
    out = np.searchsorted(bounds, np.cumsum(w) - w / 2, side="right")[np.argsort(order)]
    fixed = hg.fixed >= 0
    out[fixed] = hg.fixed[fixed]
    return out


def _repair(hg, part, caps, acyclic):
    part = _shed(hg, part, caps, acyclic)
    for _ in range(MAKE_ROOM):
        load, _ = loads(hg, part, caps.k)
        if not (load > caps.load * (1 + 1e-12) + 1e-9).any():
            break
        cleared = _clear_room(hg, part, caps, load, acyclic)
        if cleared is None:
            cleared = _swap(hg, part, caps, load, acyclic)
        if cleared is None:
            break
        part = _shed(hg, cleared, caps, acyclic)
    return part


def _forward_at(hg: Hypergraph, part: np.ndarray, nodes: np.ndarray) -> bool:
    """Do all edges at `nodes` run from a part to the same or a later one (stage order kept)?"""
    _, pos = gather(hg.node_ptr, np.asarray(nodes))
    nets = np.unique(hg.node_nets[pos])
    rows, ppos = gather(hg.net_ptr, nets)
    return bool((part[hg.net_pins[ppos]] >= part[hg.net_src[nets]][rows]).all())


def _slide_weightless(hg: Hypergraph, part: np.ndarray, k: int, earliest: bool) -> np.ndarray:
    """Move every free node without load to the earliest (latest) stage its producers (consumers)
    allow, in topological (reverse) order; stage-monotone partitions stay monotone."""
    s, t = hg.edges()
    order = np.argsort(t if earliest else s, kind="stable")
    ends, others = (t[order], s[order]) if earliest else (s[order], t[order])
    ptr = np.searchsorted(ends, np.arange(hg.n + 1))
    part = part.copy()
    movable = ((hg.fixed < 0) & (hg.node_weight <= 0)).tolist()
    p = part.tolist()
    ptr_l, others_l = ptr.tolist(), others.tolist()
    nodes = range(hg.n) if earliest else range(hg.n - 1, -1, -1)
    for v in nodes:
        if movable[v]:
            near = [p[u] for u in others_l[ptr_l[v]:ptr_l[v + 1]]]
            p[v] = (max(near) if near else 0) if earliest else (min(near) if near else k - 1)
    return np.array(p, dtype=part.dtype)


def _clear_room(hg: Hypergraph, part: np.ndarray, caps: Caps, load: np.ndarray,
                acyclic: bool) -> np.ndarray | None:
    """Move one node u out of the most over-full part p to a part t, after shedding load from t
    until u fits there; None when no part can be cleared."""
    p = int(np.argmax((load - caps.load) / np.maximum(caps.load, 1e-30)))
    excess = load[p] - caps.load[p]
    cand = np.flatnonzero((part == p) & (hg.fixed < 0) & (hg.node_weight > 0))
    if len(cand) == 0:
        return None
    w = hg.node_weight[cand]
    fixes = cand[w >= excess]
    u = int(fixes[np.argmin(hg.node_weight[fixes])]) if len(fixes) else int(cand[np.argmax(w)])
    wu = float(hg.node_weight[u])
    for t in np.argsort(load - caps.load):
        if t == p or wu > caps.load[t]:
            continue
        tight = Caps(caps.load.copy(), caps.memory)
        tight.load[t] = caps.load[t] - wu
        trial = _shed(hg, part, tight, acyclic)
        if loads(hg, trial, caps.k)[0][t] + wu <= caps.load[t] * (1 + 1e-12) + 1e-9:
            trial[u] = t
            if not acyclic or _forward_at(hg, trial, np.array([u])):
                return trial
    return None


def _swap(hg: Hypergraph, part: np.ndarray, caps: Caps, load: np.ndarray,
          acyclic: bool) -> np.ndarray | None:
    """Exchange a node u of the most over-full part p with a lighter node v of another part t so
    that both end within their load caps (and memory caps, and the stage order when acyclic);
    None when no such pair exists."""
    p = int(np.argmax((load - caps.load) / np.maximum(caps.load, 1e-30)))
    need = load[p] - caps.load[p] * (1 + 1e-12) - 1e-9
    free = hg.fixed < 0
    us = np.flatnonzero((part == p) & free & (hg.node_weight > 0))
    _, mem = loads(hg, part, caps.k)
    for t in np.argsort(load - caps.load):
        if t == p:
            continue
        room = caps.load[t] - load[t]
        vs = np.flatnonzero((part == t) & free)
        vs = vs[np.argsort(hg.node_weight[vs], kind="stable")]
        wv = hg.node_weight[vs]
        lo = np.searchsorted(wv, hg.node_weight[us] - room, side="left")
        hi = np.searchsorted(wv, hg.node_weight[us] - need, side="right")
        for i in np.flatnonzero(lo < hi):
            u, v = us[i], vs[lo[i]]
            dm = hg.node_mem[u] - hg.node_mem[v]
            if mem[t] + dm <= caps.memory[t] and mem[p] - dm <= caps.memory[p]:
                out = part.copy()
                out[u], out[v] = t, p
                if not acyclic or _forward_at(hg, out, np.array([u, v])):
                    return out
    return None


def _shed(hg: Hypergraph, part: np.ndarray, caps: Caps, acyclic: bool) -> np.ndarray:
    """Greedy rounds (up to SHED_ROUNDS) of moves from over-full parts to parts with room."""
    k = caps.k
    part = part.copy()
    free = hg.fixed < 0
    for _ in range(SHED_ROUNDS):
        load, mem = loads(hg, part, k)
        over_l = load > caps.load * (1 + 1e-12) + 1e-9
        over_m = mem > caps.memory
        over = over_l | over_m
        if not over.any():
            break
        nodes = np.flatnonzero(over[part] & free)
        nodes = nodes[(over_l[part[nodes]] & (hg.node_weight[nodes] > 0))
                      | (over_m[part[nodes]] & (hg.node_mem[nodes] > 0))]
        if len(nodes) == 0:
            break
        cnt = pin_counts(hg, part, k)
        ok = _allowed(hg, part, cnt, nodes, k, caps, load, mem, acyclic) & ~over[None, :]
        target, gain = _best_targets(gain_matrix(hg, part, cnt, nodes, k), ok)
        sel = np.isfinite(gain)
        if not sel.any():
            break
        nodes, target, gain = nodes[sel], target[sel], gain[sel]
        src = part[nodes]
        size = np.where(over_l[src], hg.node_weight[nodes] / max(caps.load.max(), 1e-30), 0.0) + \
            np.where(over_m[src], hg.node_mem[nodes] / max(caps.memory.max(), 1e-30), 0.0)
        order = np.lexsort((-(gain / np.maximum(size, 1e-30)), src))
        s = src[order]
        w, mm = hg.node_weight[nodes][order], hg.node_mem[nodes][order]
        cw, cm = np.cumsum(w), np.cumsum(mm)
        starts = np.searchsorted(s, np.arange(k))
        before_w = cw - w - np.r_[0.0, cw][starts][s]
        before_m = cm - mm - np.r_[0.0, cm][starts][s]
        take = ((before_w < np.maximum(load - caps.load, 0.0)[s]) & over_l[s]
                | (before_m < np.maximum(mem - caps.memory, 0.0)[s]) & over_m[s])
        nodes, target, gain = nodes[order[take]], target[order[take]], gain[order[take]]
        keep = _fits(hg, nodes, target, gain, caps, load, mem)
        if acyclic:  # stage windows are only valid for moves that share no net
            keep &= _independent(hg, nodes, gain, np.random.default_rng(0))
        if not keep.any():
            break
        apply_moves(hg, part, cnt, load, mem, nodes[keep], target[keep])
    return part
