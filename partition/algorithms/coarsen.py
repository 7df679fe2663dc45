"""Coarsening by heavy-edge matching on producer -> consumer pairs, weighted by tensor bytes.

A pair (u, v) is rated sum over shared nets of w_e / (|e| - 1) (the bytes saved if the net's pins
end up together), over a mild penalty on heavy nodes so that clusters stay even. Pairs never join
nodes fixed to different parts, nor exceed the weight caps. Acyclic mode keeps every coarse graph
a DAG, provably: each cluster gets a representative position (its producer's or its consumer's
topological index), and pairs whose contraction would give a coarse edge running backwards in
that order are unmatched again until none does; that order is then topological for the coarse
graph (and the coarse node ids follow it).
"""
from __future__ import annotations

import numpy as np

from partition.algorithms.hypergraph import Hypergraph, contract


def _pairs(hg: Hypergraph, max_weight: float, max_mem: float, part: np.ndarray | None):
    """Candidate pairs (u < v as producer, consumer) with aggregated ratings."""
    s, t = (x.astype(np.int64) for x in hg.edges())
    sizes = hg.net_sizes()
    weight = hg.net_weight
    if hg.cost is not None:  # rate by the most expensive link the tensor could take
        weight = hg.cost.coef @ hg.cost.mats.reshape(len(hg.cost.mats), -1).max(axis=1)
    rate = (weight / np.maximum(sizes - 1, 1))[np.repeat(np.arange(hg.num_nets), sizes - 1)]
    pair_weight = hg.node_weight[s] + hg.node_weight[t]
    ok = (pair_weight <= max_weight) | (pair_weight <= 0)
    ok &= hg.node_mem[s] + hg.node_mem[t] <= max_mem
    fs, ft = hg.fixed[s], hg.fixed[t]
    ok &= (fs < 0) | (ft < 0) | (fs == ft)
    if part is not None:
        ok &= part[s] == part[t]
    s, t, rate = s[ok], t[ok], rate[ok]
    lo, hi = np.minimum(s, t), np.maximum(s, t)
    key = lo * hg.n + hi
    uniq, inv = np.unique(key, return_inverse=True)
    rate = np.bincount(inv, weights=rate)
    u, v = uniq // hg.n, uniq % hg.n
    avg = max(float(hg.node_weight.sum()) / max(hg.n, 1), 1e-30)
    penalty = (1.0 + hg.node_weight[u] / avg) * (1.0 + hg.node_weight[v] / avg)
    return u, v, rate / np.sqrt(penalty)


def _both_ways(u: np.ndarray, v: np.ndarray, rate: np.ndarray, rng: np.random.Generator):
    """(a, b, rating) of every pair in both directions, ratings perturbed by 1e-9 random noise
    (the same noise both ways) to break ties."""
    noise = rng.random(len(rate))
    return np.r_[u, v], np.r_[v, u], np.r_[rate, rate] * (1.0 + 1e-9 * np.r_[noise, noise[::-1]])


def _proposals(n: int, a: np.ndarray, b: np.ndarray, r: np.ndarray):
    """(best[x]: the b of x's best-rated pair or -1, top[x]: that rating)."""
    top = np.full(n, -np.inf)
    np.maximum.at(top, a, r)
    win = r == top[a]
    best = np.full(n, -1, dtype=np.int64)
    best[a[win]] = b[win]
    return best, top


def handshake_matching(n: int, u: np.ndarray, v: np.ndarray, rate: np.ndarray,
                       rng: np.random.Generator, rounds: int = 4) -> np.ndarray:
    """mate[x] = matched partner or -1; mutual best-rated proposals are matched, `rounds` times."""
    mate = np.full(n, -1, dtype=np.int64)
    a, b, r = _both_ways(u, v, rate, rng)
    for _ in range(rounds):
        live = (mate[a] < 0) & (mate[b] < 0)
        if not live.any():
            break
        a, b, r = a[live], b[live], r[live]
        best, _ = _proposals(n, a, b, r)
        cand = np.flatnonzero(best >= 0)
        mutual = cand[best[best[cand]] == cand]
        mate[mutual] = best[mutual]
    return mate


def _acyclic_fix(hg: Hypergraph, mate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unmatch pairs until every coarse edge runs forward in representative order."""
    n = hg.n
    s, t = (x.astype(np.int64) for x in hg.edges())
    indeg = np.bincount(t, minlength=n)
    outdeg = np.bincount(s, minlength=n)
    lo = np.minimum(np.arange(n), np.where(mate >= 0, mate, np.arange(n)))
    hi = np.maximum(np.arange(n), np.where(mate >= 0, mate, np.arange(n)))
    # producer lo -> consumer hi: keep the producer's position when the consumer has one input,
    # the consumer's when the producer has one consumer, else try the producer's first
    use_hi = (indeg[hi] != 1) & (outdeg[lo] == 1)
    tried_hi = use_hi.copy()
    while True:
        rep = np.where(mate >= 0, np.where(use_hi, hi, lo), np.arange(n))
        bad = rep[s] > rep[t]
        if not bad.any():
            return mate, rep
        culprits = np.unique(np.concatenate([s[bad], t[bad]]))
        culprits = culprits[mate[culprits] >= 0]
        flip = culprits[~tried_hi[culprits]]
        drop = culprits[tried_hi[culprits]]
        pairs = np.r_[flip, mate[flip]]  # second chance with the other representative
        use_hi[pairs] = tried_hi[pairs] = True
        mate[mate[drop]] = -1
        mate[drop] = -1


class _Clusters:
    """Clusters being joined: each node's leader, and each leader's summed weight, memory and pin
    (-1 when unpinned), within the weight and memory limits."""

    def __init__(self, hg: Hypergraph, max_weight: float, max_mem: float):
        self.n, self.max_weight, self.max_mem = hg.n, max_weight, max_mem
        self.weight, self.mem, self.fixed = hg.node_weight, hg.node_mem, hg.fixed.astype(np.int64)
        self.leader = np.arange(hg.n)
        self.cw, self.cm = self.weight.astype(np.float64), self.mem.astype(np.float64)
        self.cf = self.fixed.copy()
        self.grown = np.zeros(hg.n, dtype=bool)

    def fits(self, a: np.ndarray, lead: np.ndarray) -> np.ndarray:
        """Whether node a may join cluster lead (weight, memory, pins)."""
        total = self.cw[lead] + self.weight[a]
        return (((total <= self.max_weight) | (total <= 0))
                & (self.cm[lead] + self.mem[a] <= self.max_mem)
                & self._pins_agree(a, lead))

    def _pins_agree(self, a: np.ndarray, lead: np.ndarray) -> np.ndarray:
        cf, fixed = self.cf[lead], self.fixed[a]
        return (cf < 0) | (fixed < 0) | (cf == fixed)

    def join(self, nodes: np.ndarray, lead: np.ndarray) -> None:
        self.leader[nodes] = lead
        np.add.at(self.cw, lead, self.weight[nodes])
        np.add.at(self.cm, lead, self.mem[nodes])
        np.maximum.at(self.cf, lead, self.fixed[nodes])
        self.grown[lead] = True

    def ratings(self, a0: np.ndarray, b0: np.ndarray, r0: np.ndarray):
        """(node, cluster, summed rating) for every node still alone and every neighbouring
        cluster it fits in."""
        n = self.n
        alone = (self.leader == np.arange(n)) & ~self.grown
        sel = alone[a0]
        a, lead, r = a0[sel], self.leader[b0[sel]], r0[sel]
        sel = lead != a
        key, inv = np.unique(a[sel] * n + lead[sel], return_inverse=True)
        r = np.bincount(inv, weights=r[sel])
        a, lead = key // n, key % n
        ok = self.fits(a, lead)
        return a[ok], lead[ok], r[ok]

    def join_with_room(self, rest: np.ndarray, target: np.ndarray, top: np.ndarray) -> None:
        """Nodes `rest` join the clusters of their targets, best-rated (`top`) first within each
        cluster, while the cluster has room."""
        lead = self.leader[target[rest]]
        ok = self.fits(rest, lead)
        rest, lead = rest[ok], lead[ok]
        order = np.lexsort((-top[rest], lead))
        rest, lead = rest[order], lead[order]
        starts = np.searchsorted(lead, lead)  # first index of each leader's run
        cum_w = np.cumsum(self.weight[rest])
        cum_m = np.cumsum(self.mem[rest])
        added_w = cum_w - np.r_[0.0, cum_w][starts]
        added_m = cum_m - np.r_[0.0, cum_m][starts]
        room = (((self.cw[lead] + added_w <= self.max_weight) | (self.weight[rest] <= 0))
                & (self.cm[lead] + added_m <= self.max_mem)
                & self._pins_agree(rest, lead))
        self.join(rest[room], lead[room])


def cluster_joining(hg: Hypergraph, u: np.ndarray, v: np.ndarray, rate: np.ndarray,
                    max_weight: float, max_mem: float, rng: np.random.Generator,
                    rounds: int = 3) -> np.ndarray:
    """leader[x]: the node whose cluster x joined (itself if none).

    Each round, every node still alone proposes to the best-rated neighbouring cluster within
    the weight, memory and pin limits; mutual proposals merge (the larger id joins the smaller),
    then unproposed-to nodes join their target, best-rated first, while it has room. A cluster
    can absorb many nodes per round (all consumers of a shared weight), unlike pairwise matching.
    """
    n = hg.n
    clusters = _Clusters(hg, max_weight, max_mem)
    a0, b0, r0 = _both_ways(u, v, rate, rng)
    for _ in range(rounds):
        a, lead, r = clusters.ratings(a0, b0, r0)
        if len(a) == 0:
            break
        target, top = _proposals(n, a, lead, r)
        prop = np.flatnonzero(target >= 0)
        t = target[prop]
        mutual = (target[t] == prop) & (prop > t)
        clusters.join(prop[mutual], t[mutual])
        targeted = np.zeros(n, dtype=bool)
        targeted[t] = True
        rest = prop[~mutual & ~targeted[prop] & ~clusters.grown[prop]]
        clusters.join_with_room(rest, target, top)
    return clusters.leader


def coarsen_once(hg: Hypergraph, rng: np.random.Generator, *, max_weight: float, max_mem: float,
                 acyclic: bool, part: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """One level: cluster id per node (ordered by representative position) and the cluster count;
    pairwise matching with the representative check when acyclic, else cluster_joining with
    clusters numbered by their smallest member."""
    u, v, rate = _pairs(hg, max_weight, max_mem, part)
    if acyclic:
        mate = handshake_matching(hg.n, u, v, rate, rng)
        mate, rep = _acyclic_fix(hg, mate)
    else:
        leader = cluster_joining(hg, u, v, rate, max_weight, max_mem, rng)
        rep = np.full(hg.n, hg.n, dtype=np.int64)
        np.minimum.at(rep, leader, np.arange(hg.n))
        rep = rep[leader]
    uniq, cid = np.unique(rep, return_inverse=True)
    return cid.astype(np.int64), len(uniq)


def hierarchy(hg: Hypergraph, k: int, rng: np.random.Generator, *, acyclic: bool,
              max_weight: float, max_mem: float, target: int, part: np.ndarray | None = None):
    """Levels [fine, ..., coarsest] and the cluster maps between consecutive levels."""
    levels, maps, parts = [hg], [], [part]
    while levels[-1].n > target:
        cur = levels[-1]
        cid, nc = coarsen_once(cur, rng, max_weight=max_weight, max_mem=max_mem, acyclic=acyclic,
                               part=parts[-1])
        if nc > 0.97 * cur.n:
            break
        levels.append(contract(cur, cid, nc))
        maps.append(cid)
        coarse = None
        if parts[-1] is not None:
            coarse = np.zeros(nc, dtype=np.int64)
            coarse[cid] = parts[-1]
        parts.append(coarse)
    return levels, maps, parts
