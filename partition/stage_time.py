"""SPEC section 5's pipeline stage time `T_d = C_d + Send_d + Recv_d` of any placement, per
micro-batch (what is computed from parameters alone counts `1/m`: it runs once per step).

Vectorised over the distinct (tensor, reading device) pairs of `partition.cost.remote_pairs`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodiff.ir import Graph
from partition.cluster import Cluster
from partition.cost import GraphArrays, graph_arrays, persistent_memory, remote_pairs, slots_of
from partition.errors import PlacementError
from partition.metrics import check_assignment, quotient_adjacency, quotient_order
from partition.problem import check_micro_batches

PIPELINE_SCHEDULES = ("gpipe", "1f1b")


@dataclass(frozen=True, eq=False)
class StageTimes:
    """Per-device seconds per micro-batch (compute, send, receive, total = T_d), the slowest
    device, the pipeline's time per micro-batch `max_d T_d`, whether the quotient is acyclic
    (only then is this a pipeline) and the devices it uses in pipeline order; the bubble and
    step estimate hold for GPipe and 1F1B alike."""

    compute: np.ndarray
    send: np.ndarray
    recv: np.ndarray
    total: np.ndarray
    bottleneck: int
    time_per_micro_batch: float
    acyclic: bool
    stage_order: tuple[int, ...]
    micro_batches: int
    schedule: str
    devices: tuple[str, ...]

    @property
    def used(self) -> int:
        """Number of devices that hold at least one node (k')."""
        return len(self.stage_order)

    @property
    def bubble(self) -> float | None:
        """Idle fraction of a pipelined step; None when the placement is not a pipeline."""
        if not self.acyclic:
            return None
        return (self.used - 1) / (self.micro_batches + self.used - 1)

    @property
    def step_estimate(self) -> float | None:
        """`(m + k' - 1) * max_d T_d` seconds per step; None when not a pipeline."""
        if not self.acyclic:
            return None
        return (self.micro_batches + self.used - 1) * self.time_per_micro_batch

    def to_dict(self) -> dict:
        names = self.devices
        return {"time_per_micro_batch": self.time_per_micro_batch,
                "bottleneck": names[self.bottleneck], "acyclic": self.acyclic,
                "pipeline": self.acyclic, "bubble": self.bubble,
                "step_estimate": self.step_estimate, "micro_batches": self.micro_batches,
                "schedule": self.schedule,
                "stage_order": [names[d] for d in self.stage_order],
                **{key: dict(zip(names, getattr(self, key).tolist()))
                   for key in ("compute", "send", "recv", "total")}}


def stage_times(graph: Graph | GraphArrays, assignment, cluster: Cluster,
                micro_batches: int = 1, schedule: str = "1f1b") -> StageTimes:
    """SPEC section 5's `T_d` of every device of `cluster` for `assignment` (node -> device)."""
    arrays = graph if isinstance(graph, GraphArrays) else graph_arrays(graph)
    k = cluster.k
    a = check_assignment(assignment, arrays.n, k)
    check_micro_batches(micro_batches, (int, np.integer))
    if schedule not in PIPELINE_SCHEDULES:
        raise PlacementError(f"schedule: expected one of {', '.join(PIPELINE_SCHEDULES)}, "
                             f"got {schedule!r}")
    compute, send, recv = stage_time_arrays(arrays, a, cluster.speeds, cluster.latency,
                                            cluster.bandwidth, micro_batches)
    total = compute + send + recv
    stages = _stage_order(arrays, a, k)
    bottleneck = int(np.argmax(total))
    return StageTimes(compute=compute, send=send, recv=recv, total=total,
                      bottleneck=bottleneck, time_per_micro_batch=float(total[bottleneck]),
                      acyclic=stages is not None, stage_order=stages or (),
                      micro_batches=micro_batches, schedule=schedule,
                      devices=cluster.device_names)


def stage_time_arrays(arrays: GraphArrays, a: np.ndarray, speeds: np.ndarray,
                      latency: np.ndarray, bandwidth: np.ndarray, micro_batches: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, Send, Recv), float64[k] each, for an int assignment `a` with values in 0..k-1 on
    devices of the given speeds and k x k link matrices (diagonal ignored)."""
    k = len(speeds)
    share = np.where(arrays.batch_dependent, 1.0, 1.0 / micro_batches)
    compute = np.bincount(a, weights=arrays.train_flops * share, minlength=k) / speeds
    send, recv = np.zeros(k), np.zeros(k)
    nodes, readers = remote_pairs(arrays, a, k)
    if len(nodes) == 0:
        return compute, send, recv
    producers = a[nodes]
    nbytes = arrays.bytes[nodes].astype(np.float64)
    f = share[nodes]
    forward = f * (latency[producers, readers] + nbytes / bandwidth[producers, readers])
    first = np.flatnonzero(np.diff(nodes, prepend=-1))      # pairs are sorted by tensor
    send += np.bincount(producers[first], weights=np.maximum.reduceat(forward, first),
                        minlength=k)
    recv += np.bincount(readers, weights=forward, minlength=k)
    grad = arrays.requires_grad[nodes]
    back = (f * (latency[readers, producers] + nbytes / bandwidth[readers, producers]))[grad]
    send += np.bincount(readers[grad], weights=back, minlength=k)
    recv += np.bincount(producers[grad], weights=back, minlength=k)
    return compute, send, recv


def in_flight(positions: int, micro_batches: int, schedule: str) -> np.ndarray:
    """Micro-batches whose activations the stage at each position 0..k'-1 keeps (SPEC 5)."""
    if schedule == "gpipe":
        return np.full(positions, micro_batches, dtype=np.int64)
    return np.minimum(micro_batches, positions - np.arange(positions)).astype(np.int64)


def pipeline_memory(arrays: GraphArrays, assignment, k: int, optimizer: str = "sgd",
                    micro_batches: int = 1, schedule: str = "1f1b",
                    stage_order: tuple[int, ...] | None = None,
                    optimizer_slots: int | None = None) -> np.ndarray:
    """Bytes per device under a pipeline schedule: SPEC section 2's parameters, gradients,
    optimizer slots and receive buffers, plus kept activations times the micro-batches in
    flight at the device's position in `stage_order` (the used devices in pipeline order)."""
    a = check_assignment(assignment, arrays.n, k)
    check_micro_batches(micro_batches, (int, np.integer))
    if stage_order is None:
        stage_order = _stage_order(arrays, a, k)
        if stage_order is None:
            raise PlacementError("pipeline memory: the placement's devices form a cycle, so "
                                 "it is not a pipeline")
    flight = np.ones(k, dtype=np.int64)
    flight[list(stage_order)] = in_flight(len(stage_order), micro_batches, schedule)
    activations = np.where(arrays.kept & ~arrays.is_param, arrays.bytes, 0)
    slots = slots_of(optimizer) if optimizer_slots is None else optimizer_slots
    fixed = persistent_memory(arrays, slots) - activations
    memory = np.bincount(a, weights=fixed, minlength=k)
    memory += np.bincount(a, weights=activations, minlength=k) * flight
    nodes, devices = remote_pairs(arrays, a, k)
    memory += np.bincount(devices, weights=arrays.bytes[nodes], minlength=k)
    return np.rint(memory).astype(np.int64)


def _stage_order(arrays: GraphArrays, a: np.ndarray, k: int) -> tuple[int, ...] | None:
    """The devices holding nodes in a topological order of the quotient; None if cyclic."""
    order = quotient_order(quotient_adjacency(arrays, a, k))
    if order is None:
        return None
    used = np.bincount(a, minlength=k) > 0
    return tuple(d for d in order if used[d])
