"""The partitioning problem every algorithm receives: graph costs, cluster, caps and pins.
`Problem.build` validates the user's arguments once, so algorithms can trust them."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from numbers import Real
from typing import Mapping

import numpy as np

from autodiff.ir import Graph
from partition.cluster import Cluster
from partition.cost import GraphArrays, graph_arrays, multiplicity, slots_of, step_train_flops
from partition.errors import ClusterError, PlacementError

OBJECTIVES = ("volume", "time_volume", "throughput")
OBJECTIVE_ALIASES = {"time": "time_volume"}     # the first name, read as if it were step time
SCHEDULES = ("1f1b", "gpipe")


@dataclass(frozen=True, eq=False)
class Problem:
    """One partitioning task. `weights` are per-step training FLOPs per node (the load weights);
    `load_caps` bound each device's load; `pinned[v]` is v's fixed device or -1."""

    graph: Graph
    arrays: GraphArrays
    cluster: Cluster
    epsilon: float
    acyclic: bool
    seed: int
    time_limit: float | None
    objective: str
    weights: np.ndarray
    load_caps: np.ndarray
    relaxed_by: str | None
    memory_caps: np.ndarray
    pinned: np.ndarray
    optimizer_slots: int
    micro_batches: int
    schedule: str = "1f1b"

    @property
    def n(self) -> int:
        return self.arrays.n

    @property
    def k(self) -> int:
        return self.cluster.k

    @classmethod
    def build(cls, graph: Graph, cluster: Cluster, epsilon: float = 0.10, acyclic: bool = False,
              seed: int = 0, time_limit: float | None = None,
              pins: Mapping[str, int | str] | None = None, objective: str | None = None,
              micro_batches: int = 1, optimizer: str = "sgd",
              schedule: str | None = None) -> "Problem":
        """Validate the arguments and derive caps and pins; PlacementError names a bad one."""
        if not isinstance(epsilon, Real) or isinstance(epsilon, bool) or not epsilon >= 0:
            raise PlacementError(f"epsilon: expected a non-negative number, got {epsilon!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise PlacementError(f"seed: expected an integer, got {seed!r}")
        if time_limit is not None and (not isinstance(time_limit, Real) or not time_limit > 0):
            raise PlacementError(f"time_limit: expected a positive number of seconds, "
                                 f"got {time_limit!r}")
        check_micro_batches(micro_batches)
        if objective is None:
            objective = "volume" if cluster.uniform_links else "time_volume"
        objective = OBJECTIVE_ALIASES.get(objective, objective)
        if objective not in OBJECTIVES:
            raise PlacementError(f"objective: expected one of {', '.join(OBJECTIVES)}, "
                                 f"got {objective!r}")
        schedule = "1f1b" if schedule is None else schedule
        if schedule not in SCHEDULES:
            raise PlacementError(f"schedule: expected one of {', '.join(SCHEDULES)}, "
                                 f"got {schedule!r}")
        require_forward(graph)
        arrays = graph_arrays(graph)
        weights = step_train_flops(arrays, micro_batches)
        load_caps, relaxed_by = load_caps_of(arrays.names, weights, cluster.speeds, epsilon)
        return cls(graph=graph, arrays=arrays, cluster=cluster, epsilon=float(epsilon),
                   acyclic=bool(acyclic), seed=int(seed), time_limit=time_limit,
                   objective=objective, weights=weights, load_caps=load_caps,
                   relaxed_by=relaxed_by, memory_caps=cluster.memory,
                   pinned=resolve_pins(arrays.names, graph.index, pins, cluster),
                   optimizer_slots=slots_of(optimizer), micro_batches=micro_batches,
                   schedule=schedule)


def check_micro_batches(micro_batches, types: type | tuple = int) -> None:
    """PlacementError unless `micro_batches` is a positive integer of `types` (not a bool)."""
    if not isinstance(micro_batches, types) or isinstance(micro_batches, bool) \
            or micro_batches < 1:
        raise PlacementError(f"micro_batches: expected a positive integer, got {micro_batches!r}")


def require_forward(graph: Graph) -> None:
    """PlacementError unless `graph` is a non-empty forward graph (no gradient nodes)."""
    if len(graph) == 0:
        raise PlacementError(f"graph {graph.name!r} has no nodes to place")
    gradient = next((nd for nd in graph.nodes if nd.grad_of is not None), None)
    if gradient is not None:
        raise PlacementError(f"graph {graph.name!r}: node {gradient.name!r} is a gradient "
                             "node; give the forward graph (the backward pass is implied by "
                             "its forward nodes)")


def load_caps_of(names, weights: np.ndarray, speeds: np.ndarray, epsilon: float
                 ) -> tuple[np.ndarray, str | None]:
    """Per-device load caps `(1 + eps) * max(mean load, largest node) * s_d / mean(s)` and the
    name of the node that forced the relaxation (None when the mean load decides)."""
    k = len(speeds)
    mean = float(weights.sum()) / k
    heaviest = int(np.argmax(weights)) if len(weights) else -1
    largest = float(weights[heaviest]) if len(weights) else 0.0
    relaxed_by = names[heaviest] if largest > mean else None
    caps = (1.0 + epsilon) * max(mean, largest) * speeds / speeds.mean()
    return caps, relaxed_by


def resolve_pins(names: tuple[str, ...], index: Mapping[str, int],
                 pins: Mapping[str, int | str] | None, cluster: Cluster) -> np.ndarray:
    """int32[n]: the device each node is pinned to by an fnmatch-style name pattern, or -1."""
    pinned = np.full(len(names), -1, dtype=np.int32)
    if not pins:
        return pinned
    if not isinstance(pins, Mapping):
        raise PlacementError(f"pins: expected a mapping of name pattern -> device, "
                             f"got {type(pins).__name__}")
    source = {}
    for pattern, device in pins.items():
        if isinstance(device, str):
            try:
                d = cluster.device_index(device)
            except ClusterError as err:
                raise PlacementError(f"pins[{pattern!r}]: {err}") from None
        elif isinstance(device, (int, np.integer)) and not isinstance(device, bool) \
                and 0 <= device < cluster.k:
            d = int(device)
        else:
            raise PlacementError(f"pins[{pattern!r}]: expected a device name or an index in "
                                 f"0..{cluster.k - 1}, got {device!r}")
        matched = [pattern] if pattern in index else fnmatch.filter(names, pattern)
        if not matched:
            raise PlacementError(f"pins[{pattern!r}]: the pattern matches no node")
        for name in matched:
            v = index[name]
            if pinned[v] >= 0 and pinned[v] != d:
                raise PlacementError(
                    f"pins: node {name!r} is pinned to {cluster.devices[pinned[v]].name!r} by "
                    f"{source[v]!r} and to {cluster.devices[d].name!r} by {pattern!r}")
            pinned[v] = d
            source[v] = pattern
    return pinned


def hypergraph(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(net_ptr, net_pins, net_weight, node_weight): one net per node with consumers, pins =
    the node then its distinct consumers, weight = bytes * (1 + requires_grad) * (m if
    batch-dependent), so that the weighted connectivity-minus-one of a placement is its step
    volume V exactly. `node_weight` is the per-step training FLOPs."""
    arrays = problem.arrays
    degree = np.diff(arrays.out_ptr)
    nets = np.flatnonzero(degree > 0)
    net_ptr = np.zeros(len(nets) + 1, dtype=np.int64)
    np.cumsum(degree[nets] + 1, out=net_ptr[1:])
    net_pins = np.insert(arrays.out_idx.astype(np.int64), arrays.out_ptr[nets], nets)
    weight = (arrays.bytes * (1 + arrays.requires_grad)
              * multiplicity(arrays, problem.micro_batches).astype(np.int64))
    return net_ptr, net_pins, weight[nets], problem.weights
