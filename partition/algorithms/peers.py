"""Peer partitioners for comparison: METIS (pymetis, edge-cut objective) and Mt-KaHyPar (km1).

Both get our balance caps (as per-block weights / imbalance) and integer weights scaled from FLOPs
and bytes; the caller evaluates them with our metrics. METIS partitions the undirected graph with
edge weight = the producer's tensor weight; it has no fixed vertices, so parts are relabelled to
agree with the pins and pinned nodes are then moved. Mt-KaHyPar partitions the hypergraph (one
net per tensor) with pins as fixed vertices. Missing packages raise PlacementError naming the
extra: `pip install modelcut[peers]`.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from partition.algorithms.base import AlgorithmResult
from partition.algorithms.hypergraph import Caps, Hypergraph, from_problem, objective, overload
from partition.algorithms.refine import rebalance
from partition.errors import PlacementError
from partition.problem import Problem

_NET_TOTAL = 2**28
_CAPS_TOTAL = 2**30  # the scaled block caps must sum below 2**31
_mtkahypar = None


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise PlacementError(f"the {module!r} package is needed for this algorithm; install the "
                             f"peers extra: pip install modelcut[peers]") from None


def _int_weights(w: np.ndarray, minimum: int, target: int) -> np.ndarray:
    """Non-negative weights scaled to integers summing to about `target` (each >= `minimum`)."""
    total = float(w.sum())
    scaled = np.zeros(len(w)) if total <= 0 else np.round(w * (target / total))
    return np.maximum(scaled, minimum).astype(np.int64)


def _node_weights(hg: Hypergraph, caps: Caps, minimum: int) -> np.ndarray:
    """Integer node weights, as fine as int32 block caps allow (the minimum stays negligible)."""
    total = float(hg.node_weight.sum())
    room = _CAPS_TOTAL * total / float(caps.load.sum()) if total > 0 else _CAPS_TOTAL
    return _int_weights(hg.node_weight, minimum, int(min(max(2**24, 256 * hg.n), room)))


def _scaled_caps(hg: Hypergraph, caps: Caps, node_w: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-block integer caps in the scaled node weights, and the matching imbalance epsilon."""
    total = float(hg.node_weight.sum())
    if total <= 0:  # nothing to balance: any placement is within the caps
        return np.full(caps.k, int(node_w.sum()), dtype=np.int64), 1.0
    block = np.floor(caps.load * (float(node_w.sum()) / total)).astype(np.int64)
    short = int(node_w.sum()) - int(block.sum())  # rounding; the true caps are checked after
    if short > 0:
        block += -(-short // caps.k)
    eps = max(float(caps.load.sum()) / total - 1.0, 0.001)
    return block, eps


def _degenerate(hg: Hypergraph, caps: Caps) -> np.ndarray | None:
    """For inputs the peers reject (one part, no more nodes than parts, no tensor shared between
    nodes) a trivially optimal answer: every balanced placement then costs 0 (or k == 1)."""
    if caps.k > 1 and hg.n > caps.k and hg.num_nets > 0:
        return None
    part = np.where(hg.fixed >= 0, hg.fixed, 0).astype(np.int64)
    return rebalance(hg, part, caps, acyclic=False)


def metis_partition(hg: Hypergraph, caps: Caps, seed: int = 0) -> np.ndarray:
    """METIS k-way partition of the undirected producer-consumer graph (edge-cut objective)."""
    pymetis = _require("pymetis")
    k, n = caps.k, hg.n
    trivial = _degenerate(hg, caps)
    if trivial is not None:
        return trivial
    s, t = hg.edges()
    key = np.unique(s.astype(np.int64) * n + t)
    s, t = key // n, key % n
    net_of = np.zeros(n, dtype=np.int64)
    net_of[hg.net_src] = np.arange(hg.num_nets)
    w = net_weights(hg)[net_of[s]]
    a, b = np.r_[s, t], np.r_[t, s]
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    ew = _int_weights(np.r_[w, w][order], 1, _NET_TOTAL)
    xadj = np.concatenate([[0], np.cumsum(np.bincount(a, minlength=n))])
    vw = _node_weights(hg, caps, 0)
    _, eps = _scaled_caps(hg, caps, vw)
    options = pymetis.Options(ufactor=max(1, int(eps * 1000)), seed=int(seed))
    tp = (caps.load / caps.load.sum() if caps.load.sum() > 0 else np.full(k, 1.0 / k)).tolist()
    _, parts = pymetis.part_graph(k, xadj=xadj.tolist(), adjncy=b.tolist(), vweights=vw.tolist(),
                                  eweights=ew.tolist(), tpwgts=tp, options=options)
    part = np.asarray(parts, dtype=np.int64)
    fixed = hg.fixed >= 0
    if fixed.any():  # relabel parts to agree with the pins, then honour them
        agree = np.zeros((k, k))
        np.add.at(agree, (part[fixed], hg.fixed[fixed]), 1)
        rows, cols = linear_sum_assignment(-agree)
        relabel = np.empty(k, dtype=np.int64)
        relabel[rows] = cols
        part = relabel[part]
        part[fixed] = hg.fixed[fixed]
    return part


def mtkahypar_partition(hg: Hypergraph, caps: Caps, seed: int = 0, threads: int = 1) -> np.ndarray:
    """Mt-KaHyPar k-way partition on the connectivity (km1) objective, pins as fixed vertices."""
    global _mtkahypar
    mt = _require("mtkahypar")
    if _mtkahypar is None:
        _mtkahypar = mt.initialize(threads, False)
    k = caps.k
    trivial = _degenerate(hg, caps)
    if trivial is not None:
        return trivial
    context = _mtkahypar.context_from_preset(mt.PresetType.DEFAULT)
    fixed = hg.fixed >= 0
    # Mt-KaHyPar misplaces fixed vertices of weight 0
    vw = _node_weights(hg, caps, 1 if fixed.any() else 0)
    block, eps = _scaled_caps(hg, caps, vw)
    context.set_partitioning_parameters(k, eps, mt.Objective.KM1)
    context.set_individual_target_block_weights(block.tolist())
    context.logging = False
    mt.set_seed(int(seed))
    w = net_weights(hg)
    nets = np.split(hg.net_pins, hg.net_ptr[1:-1])
    graph = _mtkahypar.create_hypergraph(context, hg.n, hg.num_nets, [x.tolist() for x in nets],
                                         vw.tolist(), _int_weights(w, 1, _NET_TOTAL).tolist())
    if fixed.any():
        graph.add_fixed_vertices(hg.fixed.tolist(), k)
    part = np.asarray(graph.partition(context).get_partition(), dtype=np.int64)
    part[fixed] = hg.fixed[fixed]
    return part


def net_weights(hg: Hypergraph) -> np.ndarray:
    """Scalar weight per net: its volume weight, or its mean cost over the links for a LinkCost."""
    if hg.cost is None:
        return hg.net_weight
    k = hg.cost.mats.shape[1]
    mean = hg.cost.mats.sum(axis=(1, 2)) / max(k * (k - 1), 1)
    return hg.cost.coef @ mean


def peer_partition(hg: Hypergraph, caps: Caps, fn, seed: int) -> np.ndarray:
    """`fn(hg, caps, seed)` (metis_partition or mtkahypar_partition), repaired if over a cap."""
    part = fn(hg, caps, seed)
    if overload(hg, part, caps) > 0:
        part = rebalance(hg, part, caps, acyclic=False)
    return part


def _run(problem: Problem, name: str, fn) -> AlgorithmResult:
    if problem.acyclic:
        raise PlacementError(f"algorithm {name!r} cannot guarantee an acyclic placement "
                             "(acyclic=True); use multilevel, mincut, ilp, contiguous or "
                             "pipeline_dp")
    hg, caps = from_problem(problem)
    part = peer_partition(hg, caps, fn, problem.seed)
    return AlgorithmResult(part.astype(np.int32),
                           info={"objective_value": objective(hg, part, caps.k), "peer": name})


def metis(problem: Problem) -> AlgorithmResult:
    """Registry entry: METIS (edge-cut objective) on the same caps; needs the peers extra."""
    return _run(problem, "metis", metis_partition)


def mtkahypar(problem: Problem) -> AlgorithmResult:
    """Registry entry: Mt-KaHyPar (km1 objective) on the same caps; needs the peers extra."""
    return _run(problem, "mtkahypar", mtkahypar_partition)
