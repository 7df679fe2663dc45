"""Array core shared by the partitioners: a source-rooted hypergraph, its objective, contraction.

Each net is one tensor: its first pin is the producer (the *source*), the other pins are its
distinct consumers. With weight bytes * (1 + requires_grad) (x micro-batches when batch-dependent)
the connectivity-minus-one of a placement is SPEC's step volume V. A `LinkCost` prices link times
instead: sending net e from part a to part d costs sum_j coef[e, j] * mats[j, a, d].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from partition.problem import Problem


@dataclass(frozen=True)
class Caps:
    """Per-part capacity for load (train FLOPs) and for memory bytes."""

    load: np.ndarray
    memory: np.ndarray

    @property
    def k(self) -> int:
        return len(self.load)


@dataclass(frozen=True)
class LinkCost:
    """Per-net link cost: cost_e(a -> d) = sum_j coef[e, j] * mats[j, a, d] (zero for a == d)."""

    mats: np.ndarray  # float64[J, k, k]
    coef: np.ndarray  # float64[E, J]

    def rows(self, nets: np.ndarray, src_parts: np.ndarray) -> np.ndarray:
        """cost_e(s_e -> d) for every d: float64[len(nets), k]."""
        return np.einsum("ij,jik->ik", self.coef[nets], self.mats[:, src_parts, :])


def time_cost(net_bytes: np.ndarray, net_backward: np.ndarray, net_times: np.ndarray,
              bandwidth: np.ndarray, latency: np.ndarray) -> LinkCost:
    """Link cost of SPEC's time-weighted volume: each transfer costs latency + bytes / bandwidth.
    `net_bytes`: the tensor's bytes times its repetitions (micro-batches), `net_times`: the
    repetitions, `net_backward`: 1 when a gradient travels back d -> a (requires_grad), else 0."""
    k = bandwidth.shape[0]
    off = 1.0 - np.eye(k)
    inv_bw = np.divide(1.0, bandwidth, out=np.zeros((k, k)), where=bandwidth > 0) * off
    lat = latency * off
    mats = np.stack([inv_bw, inv_bw.T, lat, lat.T])
    times = net_times.astype(np.float64)
    coef = np.stack([net_bytes, net_bytes * net_backward, times, times * net_backward], axis=1)
    return LinkCost(mats, coef.astype(np.float64))


@dataclass(frozen=True, eq=False)
class Hypergraph:
    """Nets in CSR (first pin of each net = its source), node loads and memory, fixed parts; node
    ids in a topological order of the DAG of edges source -> other pins. The incidence arrays
    (node -> nets) are derived on construction."""

    n: int
    net_ptr: np.ndarray      # int64[E + 1]
    net_pins: np.ndarray     # int32[P]
    net_weight: np.ndarray   # float64[E]
    node_weight: np.ndarray  # float64[n] (train FLOPs)
    node_mem: np.ndarray     # float64[n] (bytes that stay on the node's device)
    fixed: np.ndarray        # int32[n], -1 = free
    cost: LinkCost | None = None
    node_ptr: np.ndarray = field(init=False, repr=False)
    node_nets: np.ndarray = field(init=False, repr=False)
    node_is_src: np.ndarray = field(init=False, repr=False)
    pin_net: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        pin_net = np.repeat(np.arange(self.num_nets, dtype=np.int32), self.net_sizes())
        is_src = self._is_src_pin()
        order = np.argsort(self.net_pins, kind="stable")
        object.__setattr__(self, "pin_net", pin_net)
        object.__setattr__(self, "node_ptr", np.concatenate(
            [[0], np.cumsum(np.bincount(self.net_pins, minlength=self.n))]))
        object.__setattr__(self, "node_nets", pin_net[order])
        object.__setattr__(self, "node_is_src", is_src[order])

    @property
    def num_nets(self) -> int:
        return len(self.net_ptr) - 1

    @property
    def net_src(self) -> np.ndarray:
        return self.net_pins[self.net_ptr[:-1]]

    def tolerance(self) -> float:
        """Gains below this are noise: 1e-9 of the costliest net's cost (bytes or seconds)."""
        if self.cost is None:
            top = float(self.net_weight.max(initial=0.0))
        else:
            worst_link = self.cost.mats.reshape(len(self.cost.mats), -1).max(axis=1)
            top = float((self.cost.coef @ worst_link).max(initial=0.0))
        return 1e-9 * max(top, 1e-300)

    def net_sizes(self) -> np.ndarray:
        return np.diff(self.net_ptr)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """DAG edges source -> consumer (one per non-source pin)."""
        mask = ~self._is_src_pin()
        return self.net_src[self.pin_net[mask]], self.net_pins[mask]

    def _is_src_pin(self) -> np.ndarray:
        mask = np.zeros(len(self.net_pins), dtype=bool)
        mask[self.net_ptr[:-1][self.net_sizes() > 0]] = True
        return mask


def from_dag(n: int, src: np.ndarray, dst: np.ndarray, tensor_weight: np.ndarray,
             node_weight: np.ndarray, node_mem: np.ndarray | None = None,
             fixed: np.ndarray | None = None) -> Hypergraph:
    """Hypergraph of a DAG given by edges src -> dst (ids topologically ordered, src < dst): one
    net per node with consumers (the node, then its distinct consumers), weight tensor_weight."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    key = np.unique(src * n + dst)
    src, dst = key // n, key % n
    deg = np.bincount(src, minlength=n)
    producers = np.flatnonzero(deg)
    net_ptr = np.concatenate([[0], np.cumsum(deg[producers] + 1)])
    pins = np.empty(net_ptr[-1], dtype=np.int32)
    pins[net_ptr[:-1]] = producers
    mask = np.ones(net_ptr[-1], dtype=bool)
    mask[net_ptr[:-1]] = False
    pins[mask] = dst  # key order groups consumers by producer, ascending
    return Hypergraph(
        n=n, net_ptr=net_ptr, net_pins=pins,
        net_weight=np.asarray(tensor_weight, dtype=np.float64)[producers],
        node_weight=np.asarray(node_weight, dtype=np.float64),
        node_mem=np.zeros(n) if node_mem is None else np.asarray(node_mem, dtype=np.float64),
        fixed=np.full(n, -1, np.int32) if fixed is None else np.asarray(fixed, dtype=np.int32))


def from_problem(problem: "Problem") -> tuple[Hypergraph, Caps]:
    """The hypergraph and caps of a Problem (net weights per partition.problem.hypergraph; a
    LinkCost of SPEC's time-weighted volume when problem.objective == "time_volume"). Node memory
    is what stays on its device (parameters with gradient and optimizer slots, kept activations);
    receive buffers depend on the placement and are checked by the caller."""
    from partition.cost import multiplicity, persistent_memory
    from partition.problem import hypergraph

    arrays = problem.arrays
    net_ptr, net_pins, net_weight, node_weight = hypergraph(problem)
    cost = None
    if problem.objective == "time_volume":
        src = net_pins[net_ptr[:-1]]
        times = multiplicity(arrays, problem.micro_batches)[src]
        cost = time_cost(arrays.bytes[src] * times, arrays.requires_grad[src].astype(np.float64),
                         times, problem.cluster.bandwidth, problem.cluster.latency)
    caps = Caps(np.asarray(problem.load_caps, dtype=np.float64),
                np.asarray(problem.memory_caps, dtype=np.float64))
    return Hypergraph(
        n=problem.n, net_ptr=np.asarray(net_ptr, dtype=np.int64),
        net_pins=np.asarray(net_pins, dtype=np.int32),
        net_weight=np.asarray(net_weight, dtype=np.float64),
        node_weight=np.asarray(node_weight, dtype=np.float64),
        node_mem=persistent_memory(arrays, problem.optimizer_slots).astype(np.float64),
        fixed=np.asarray(problem.pinned, dtype=np.int32), cost=cost), caps


def gather(ptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and flat positions of the CSR segments ptr[v]:ptr[v+1] of `nodes`, concatenated."""
    starts = ptr[nodes]
    lens = ptr[nodes + 1] - starts
    row = np.repeat(np.arange(len(nodes)), lens)
    pos = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
    return row, pos


def pin_counts(hg: Hypergraph, part: np.ndarray, k: int) -> np.ndarray:
    """cnt[e, d] = number of pins of net e on part d: int32[E, k]."""
    flat = hg.pin_net.astype(np.int64) * k + part[hg.net_pins]
    return np.bincount(flat, minlength=hg.num_nets * k).astype(np.int32).reshape(hg.num_nets, k)


def objective(hg: Hypergraph, part: np.ndarray, k: int) -> float:
    """Total objective of `part`: the sum over nets of weight * (connectivity - 1), SPEC's V for
    the volume weights, or of their link costs (seconds) for a LinkCost."""
    present = pin_counts(hg, part, k) > 0
    if hg.cost is None:
        return float((hg.net_weight * (present.sum(axis=1) - 1)).sum())
    rows = hg.cost.rows(np.arange(hg.num_nets), part[hg.net_src])
    return float((rows * present).sum(axis=1).sum())


def loads(hg: Hypergraph, part: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-part load and memory."""
    return (np.bincount(part, weights=hg.node_weight, minlength=k),
            np.bincount(part, weights=hg.node_mem, minlength=k))


def overload(hg: Hypergraph, part: np.ndarray, caps: Caps) -> float:
    """Sum of relative excess over the load and memory caps (0 when feasible)."""
    load, mem = loads(hg, part, caps.k)
    over = np.maximum(load - caps.load * (1 + 1e-12) - 1e-9, 0) / np.maximum(caps.load, 1e-30)
    mover = np.maximum(mem - caps.memory, 0) / np.maximum(caps.memory, 1e-30)
    return float(over.sum() + mover.sum())


def contract(hg: Hypergraph, cid: np.ndarray, nc: int) -> Hypergraph:
    """Coarse hypergraph after merging each node u into cluster cid[u] (ids topologically ordered
    where possible): pins mapped and de-duplicated (the source's cluster first), nets left with
    one pin dropped, parallel nets (same pins and source) merged with their weights added."""
    cid = np.asarray(cid, dtype=np.int64)
    cp = cid[hg.net_pins]
    is_src = hg._is_src_pin()
    net = hg.pin_net.astype(np.int64)
    src_c = cid[hg.net_src]
    order = np.lexsort((cp, ~is_src, net))
    cp_o, net_o, src_o = cp[order], net[order], is_src[order]
    keep = src_o | (cp_o != src_c[net_o])
    cp_o, net_o, src_o = cp_o[keep], net_o[keep], src_o[keep]
    dup = np.zeros(len(cp_o), dtype=bool)
    dup[1:] = (~src_o[1:]) & (net_o[1:] == net_o[:-1]) & (cp_o[1:] == cp_o[:-1])
    cp_o, net_o = cp_o[~dup], net_o[~dup]
    sizes = np.bincount(net_o, minlength=hg.num_nets)
    live = sizes >= 2
    cp_o = cp_o[live[net_o]]
    ptr = np.concatenate([[0], np.cumsum(sizes[live])])
    weight = hg.net_weight[live]
    coef = None if hg.cost is None else hg.cost.coef[live]
    ptr, cp_o, weight, coef = _merge_parallel(ptr, cp_o, weight, coef, nc)
    fixed = np.full(nc, -1, dtype=np.int32)
    np.maximum.at(fixed, cid, hg.fixed)
    return Hypergraph(nc, ptr, cp_o.astype(np.int32), weight,
                      np.bincount(cid, weights=hg.node_weight, minlength=nc),
                      np.bincount(cid, weights=hg.node_mem, minlength=nc), fixed,
                      None if coef is None else LinkCost(hg.cost.mats, coef))


def _merge_parallel(ptr, pins, weight, coef, nc):
    """Merge nets with identical pin sets and source; weights and link coefficients add."""
    e = len(ptr) - 1
    if e == 0:
        return ptr, pins, weight, coef
    sizes = np.diff(ptr)
    rng = np.random.default_rng(12345)
    h1, h2 = rng.integers(1, 2**62, size=(2, nc), dtype=np.int64)
    with np.errstate(over="ignore"):
        key = np.add.reduceat(h1[pins], ptr[:-1]) + h2[pins[ptr[:-1]]] * sizes
    order = np.argsort(key, kind="stable")
    ks = key[order]
    starts = np.r_[True, ks[1:] != ks[:-1]]
    if starts.all():
        return ptr, pins, weight, coef
    rep = np.empty(e, dtype=np.int64)
    rep[order] = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    cand = np.flatnonzero(rep != np.arange(e))
    cand = cand[(sizes[cand] == sizes[rep[cand]]) & (pins[ptr[cand]] == pins[ptr[rep[cand]]])]
    # confirm candidates pin by pin so that a hash collision never merges different nets
    seg, pos = gather(ptr, cand)
    mine = _sorted_segments(pins[pos], seg)
    theirs = _sorted_segments(pins[gather(ptr, rep[cand])[1]], seg)
    bad = np.bincount(seg, weights=(mine != theirs).astype(np.float64), minlength=len(cand)) > 0
    target = np.arange(e)
    target[cand[~bad]] = rep[cand[~bad]]
    keep = target == np.arange(e)
    new_id = (np.cumsum(keep) - 1)[target]
    m = int(keep.sum())
    weight = np.bincount(new_id, weights=weight, minlength=m)
    if coef is not None:
        coef = np.stack([np.bincount(new_id, weights=coef[:, j], minlength=m)
                         for j in range(coef.shape[1])], axis=1)
    kept = np.flatnonzero(keep)
    new_ptr = np.concatenate([[0], np.cumsum(sizes[kept])])
    return new_ptr, pins[gather(ptr, kept)[1]], weight, coef


def _sorted_segments(values: np.ndarray, seg: np.ndarray) -> np.ndarray:
    return values[np.lexsort((values, seg))]
