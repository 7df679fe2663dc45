"""Metrics of a placement exactly as SPEC section 2 defines them, computed on numpy arrays.

A placement is an int array `assignment[node] = device`. With m micro-batches the graph is the
per-micro-batch graph: batch-dependent tensors travel (and their nodes run) m times per step,
everything else (parameters and what is computed from them alone) once.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from autodiff.ir import Graph
from partition.cluster import Cluster
from partition.cost import (GraphArrays, graph_arrays, kahn_order, memory_per_device,
                            remote_pairs, slots_of, step_train_flops)
from partition.errors import PlacementError


@dataclass(frozen=True, eq=False)
class PlacementMetrics:
    """Communication, balance and memory of one placement for one training step.

    Volumes are bytes; `loads` are training FLOPs per device; `link_traffic[a, b]` is the bytes
    device a sends to b (forward tensors and backward gradients), summing to `step_volume`;
    `top_cut` lists the heaviest cut tensors as (name, bytes, receiving device names).
    """

    forward_volume: int
    backward_volume: int
    step_volume: int
    edge_cut: int
    loads: np.ndarray
    imbalance: float
    memory: np.ndarray
    acyclic: bool
    time_weighted_volume: float
    link_traffic: np.ndarray
    top_cut: tuple[tuple[str, int, tuple[str, ...]], ...]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("loads", "memory", "link_traffic"):
            out[key] = out[key].tolist()
        out["top_cut"] = [{"name": name, "bytes": nbytes, "to": list(devices)}
                          for name, nbytes, devices in self.top_cut]
        return out


def check_assignment(assignment, n: int, k: int, who: str = "assignment") -> np.ndarray:
    """`assignment` as int32[n] with values in 0..k-1; PlacementError naming the fault otherwise."""
    a = np.asarray(assignment)
    if a.shape != (n,):
        raise PlacementError(f"{who}: expected {n} device ids (one per node), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise PlacementError(f"{who}: expected integer device ids, got dtype {a.dtype}")
    if n and (a.min() < 0 or a.max() >= k):
        bad = int(np.flatnonzero((a < 0) | (a >= k))[0])
        raise PlacementError(f"{who}: node #{bad} is placed on device {int(a[bad])}, "
                             f"outside 0..{k - 1}")
    return a.astype(np.int32, copy=False)


def compute_metrics(graph: Graph | GraphArrays, assignment, cluster: Cluster,
                    micro_batches: int = 1, optimizer: str = "sgd",
                    top: int = 10) -> PlacementMetrics:
    """All SPEC section 2 metrics of `assignment` on `cluster` for one step of m micro-batches."""
    arrays = graph if isinstance(graph, GraphArrays) else graph_arrays(graph)
    k = cluster.k
    a = check_assignment(assignment, arrays.n, k)
    if not isinstance(micro_batches, int) or micro_batches < 1:
        raise PlacementError(f"micro_batches: expected a positive integer, got {micro_batches!r}")
    count = np.where(arrays.batch_dependent, micro_batches, 1).astype(np.int64)
    sent = arrays.bytes * count                           # bytes per step of one transfer of v
    nodes, receivers = remote_pairs(arrays, a, k)
    senders = a[nodes]
    grad = arrays.requires_grad[nodes]
    forward_volume = int(sent[nodes].sum())
    backward_volume = int(sent[nodes][grad].sum())

    cut = a[arrays.in_idx] != a[arrays.in_dst]
    edge_cut = int(sent[arrays.in_idx[cut]].sum())

    loads = np.bincount(a, weights=step_train_flops(arrays, micro_batches), minlength=k)
    speeds = cluster.speeds
    total = loads.sum()
    imbalance = float((loads / speeds).max() / (total / speeds.sum())) if total > 0 else 1.0

    link_traffic = np.zeros(k * k, dtype=np.int64)
    np.add.at(link_traffic, senders * k + receivers, sent[nodes])
    np.add.at(link_traffic, receivers[grad] * k + senders[grad], sent[nodes][grad])
    link_traffic = link_traffic.reshape(k, k)

    latency, bandwidth = cluster.latency, cluster.bandwidth
    times = count[nodes] * latency[senders, receivers] + sent[nodes] / bandwidth[senders, receivers]
    back = (count[nodes] * latency[receivers, senders]
            + sent[nodes] / bandwidth[receivers, senders])[grad]
    time_weighted_volume = float(times.sum() + back.sum())

    quotient = np.zeros((k, k), dtype=bool)
    quotient[senders, receivers] = True
    return PlacementMetrics(
        forward_volume=forward_volume, backward_volume=backward_volume,
        step_volume=forward_volume + backward_volume, edge_cut=edge_cut, loads=loads,
        imbalance=imbalance, memory=memory_per_device(arrays, a, k, slots_of(optimizer)),
        acyclic=quotient_order(quotient) is not None,
        time_weighted_volume=time_weighted_volume, link_traffic=link_traffic,
        top_cut=_top_cut(arrays, nodes, receivers, sent, cluster, top))


def quotient_adjacency(arrays: GraphArrays, assignment: np.ndarray, k: int) -> np.ndarray:
    """k x k bool matrix: [a, b] when some tensor flows from device a to device b."""
    nodes, receivers = remote_pairs(arrays, assignment, k)
    quotient = np.zeros((k, k), dtype=bool)
    quotient[assignment[nodes], receivers] = True
    return quotient


def quotient_order(quotient: np.ndarray) -> list[int] | None:
    """A topological order of the devices of a quotient graph (smallest index first among
    ready devices), or None when the quotient has a directed cycle."""
    k = len(quotient)
    src, dst = np.nonzero(quotient & ~np.eye(k, dtype=bool))
    order = kahn_order(k, src, dst)
    return order.tolist() if len(order) == k else None


def _top_cut(arrays: GraphArrays, nodes: np.ndarray, receivers: np.ndarray, sent: np.ndarray,
             cluster: Cluster, top: int) -> tuple:
    """The `top` tensors with the largest step volume, each with the devices receiving it."""
    if len(nodes) == 0:
        return ()
    first = np.flatnonzero(np.diff(nodes, prepend=-1))        # `nodes` is sorted
    unique = nodes[first]
    copies = np.diff(first, append=len(nodes))
    volume = sent[unique] * copies * (1 + arrays.requires_grad[unique])
    best = np.argsort(-volume, kind="stable")[:top]
    names = cluster.device_names
    return tuple((arrays.names[unique[i]], int(arrays.bytes[unique[i]]),
                  tuple(names[d] for d in receivers[first[i]:first[i] + copies[i]]))
                 for i in best)
