"""Event-driven simulation of one training step of a placed forward graph (SPEC section 4).

Every forward node that requires grad has a backward op costing twice its forward FLOPs on
its device. A tensor travels once to each other device that reads it (V_f) and its gradient
comes back once from each (V_b); transfers on one directed link run in the order they become
ready. With m micro-batches, batch-dependent nodes run m times; parameters (and what is
computed from them alone) are sent once per step and their gradients summed before going back.

Measured clusters (partition/cluster.py): an op of kind `op` costs `flops / device.rate(op)`
plus the device's `op_overhead` (once per forward node and once for its whole backward), and
the makespan includes the cluster's `step_overhead`. (executor/timing.py times the executor's
own plan.)

Schedules: None = list scheduling (forwards before backwards, earlier micro-batches and nodes
first, among the ops that are ready); "gpipe" and "1f1b" fix each device's op sequence by the
action lists of partition/schedules.py (stage = device, in a topological order of the acyclic
quotient). Ops that run once per step (parameters' consumers) come first, their backwards last.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from autodiff.ir import Graph
from partition.cluster import Cluster
from partition.cost import graph_arrays, remote_pairs
from partition.errors import PlacementError
from partition.metrics import check_assignment, quotient_adjacency, quotient_order
from partition.problem import check_micro_batches, require_forward
from partition.schedules import make_schedule, peak_in_flight

SCHEDULES = (None, "gpipe", "1f1b")
SHARED = -1          # micro-batch index of the tasks that run once per step


@dataclass(frozen=True)
class SimulationResult:
    """Simulated step: makespan (s), each device's busy fraction, the bubble fraction of a
    pipeline schedule (1 - busy time of the stages / (stages * makespan)), the step time on the
    fastest single device without communication, the speedup over it, and each device's peak
    number of micro-batches in flight (forward started, backward not finished)."""

    makespan: float
    busy: tuple[float, ...]
    bubble: float | None
    single_device_time: float
    speedup: float
    peak_in_flight: tuple[int, ...]
    schedule: str | None
    micro_batches: int
    devices: tuple[str, ...]
    timeline: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        return {"makespan": self.makespan, "busy": dict(zip(self.devices, self.busy)),
                "bubble": self.bubble, "single_device_time": self.single_device_time,
                "speedup": self.speedup,
                "peak_in_flight": dict(zip(self.devices, self.peak_in_flight)),
                "schedule": self.schedule, "micro_batches": self.micro_batches,
                "timeline": list(self.timeline)}


def simulate(graph: Graph, assignment, cluster: Cluster, schedule: str | None = None,
             micro_batches: int = 1) -> SimulationResult:
    """Simulate one training step of the forward `graph` placed by `assignment` on `cluster`."""
    if schedule not in SCHEDULES:
        raise PlacementError(f"schedule: expected one of None, 'gpipe', '1f1b', "
                             f"got {schedule!r}")
    check_micro_batches(micro_batches)
    require_forward(graph)
    arrays = graph_arrays(graph)
    k = cluster.k
    a = check_assignment(assignment, arrays.n, k)
    stages = _stages(arrays, a, k, schedule)
    tasks = _build(arrays, a, cluster, micro_batches, *_op_times(graph, arrays, a, cluster))
    sequences = (None if stages is None
                 else _pipeline_sequences(tasks, stages, k, micro_batches, schedule))
    start, finish = _EventLoop(tasks, k, sequences).run(schedule)
    makespan = (float(finish.max()) if len(finish) else 0.0) + cluster.step_overhead
    resource = np.array(tasks.resource)
    compute = (resource >= 0) & (resource < k)
    busy_time = np.bincount(resource[compute], weights=(finish - start)[compute], minlength=k)
    busy = busy_time / makespan if makespan > 0 else np.zeros(k)
    bubble = None
    if stages:
        bubble = float(1.0 - busy_time[stages].sum() / (len(stages) * makespan)) \
            if makespan > 0 else 0.0
    single = _single_device_time(graph, arrays, cluster, micro_batches)
    return SimulationResult(
        makespan=makespan, busy=tuple(float(b) for b in busy), bubble=bubble,
        single_device_time=single, speedup=single / makespan if makespan > 0 else 1.0,
        peak_in_flight=_peak_in_flight(tasks, start, finish, k),
        schedule=schedule, micro_batches=micro_batches, devices=cluster.device_names,
        timeline=_timeline(tasks, start, finish, k, cluster.device_names))


def _stages(arrays, a: np.ndarray, k: int, schedule: str | None) -> list[int] | None:
    """The computing devices in a topological order of the quotient (a pipeline schedule's
    stages), None under list scheduling."""
    if schedule is None:
        return None
    order = quotient_order(quotient_adjacency(arrays, a, k))
    if order is None:
        raise PlacementError(f"schedule {schedule!r} needs an acyclic placement: tensors "
                             "flow in a cycle between devices (partition with acyclic=True)")
    computing = np.bincount(a[~arrays.is_source], minlength=k) > 0
    return [d for d in order if computing[d]]


def _single_device_time(graph: Graph, arrays, cluster: Cluster, m: int) -> float:
    """The step on the fastest device alone, without communication."""
    multiplicity = np.where(arrays.batch_dependent, m, 1)
    fastest = np.zeros(arrays.n, dtype=np.int64) + int(np.argmax(cluster.speeds))
    one_device = np.add(*_op_times(graph, arrays, fastest, cluster))
    return float((one_device * multiplicity).sum() + cluster.step_overhead)


def _op_times(graph: Graph, arrays, a: np.ndarray, cluster: Cluster
              ) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of each node's forward op and of its backward op on its device (0 for sources,
    and for the backward of nodes that do not require grad)."""
    devices = cluster.devices
    if any(d.op_flops for d in devices):
        rate = np.array([devices[d].rate(node.op) for d, node in zip(a.tolist(), graph.nodes)])
    else:
        rate = cluster.speeds[a]
    seconds = arrays.flops / rate
    overhead = np.array([d.op_overhead for d in devices])[a]
    forward = np.where(arrays.is_source, 0.0, seconds + overhead)
    backward = np.where(arrays.is_source | ~arrays.requires_grad, 0.0,
                        2.0 * seconds + overhead)
    return forward, backward


# ------------------------------------------------------------------ the task graph
class _Tasks:
    """Ops and transfers as parallel lists; `resource` is a device (< k), a directed link
    (k + a * k + b) or -1 (zero-time bookkeeping: sources, parameter gradients)."""

    def __init__(self) -> None:
        self.resource: list[int] = []
        self.duration: list[float] = []
        self.priority: list[tuple] = []
        self.successors: list[list[int]] = []
        self.pending: list[int] = []
        self.micro_batch: list[int] = []
        self.backward: list[bool] = []

    def add(self, resource: int, duration: float, priority: tuple, micro_batch: int,
            backward: bool) -> int:
        self.resource.append(resource)
        self.duration.append(duration)
        self.priority.append(priority)
        self.successors.append([])
        self.pending.append(0)
        self.micro_batch.append(micro_batch)
        self.backward.append(backward)
        return len(self.resource) - 1

    def edge(self, before: int, after: int) -> None:
        self.successors[before].append(after)
        self.pending[after] += 1


@dataclass(frozen=True)
class _Layout:
    """Per node: its device, whether it runs per micro-batch, requires grad, is a source."""

    place: list[int]
    batch: list[bool]
    grad: list[bool]
    source: list[bool]
    m: int

    def instances(self, v: int) -> range | list[int]:
        """The micro-batch of each of v's instances in a step (SHARED: it runs once)."""
        return range(self.m) if self.batch[v] else [SHARED]


def _build(arrays, a: np.ndarray, cluster: Cluster, m: int, forward_time: np.ndarray,
           backward_time: np.ndarray) -> _Tasks:
    """Forward ops, backward ops and transfers of one step, with their dependencies."""
    layout = _Layout(a.tolist(), arrays.batch_dependent.tolist(),
                     arrays.requires_grad.tolist(), arrays.is_source.tolist(), m)
    tasks = _Tasks()
    forward, backward = _add_ops(tasks, layout, m, forward_time.tolist(),
                                 backward_time.tolist())
    sends, returns = _add_transfers(tasks, layout, arrays, a, cluster, m, forward, backward)
    _add_dependencies(tasks, layout, arrays, forward, backward, sends, returns)
    return tasks


def _add_ops(tasks: _Tasks, layout: _Layout, m: int, forward_seconds: list[float],
             backward_seconds: list[float]) -> tuple[list[int], list[int]]:
    """Every node's forward instances, then (in reverse order) the backward instances of
    those that require grad; task ids of instance 0 (instance i is id + i)."""
    n = len(layout.place)
    forward, backward = [0] * n, [-1] * n
    for v in range(n):
        device = -1 if layout.source[v] else layout.place[v]
        forward[v] = len(tasks.resource)
        for j in layout.instances(v):
            tasks.add(device, forward_seconds[v], (0, j, v), j, False)
    for v in range(n - 1, -1, -1):
        if layout.grad[v]:
            # a source's backward (summing a parameter's gradients) is bookkeeping
            device = -1 if layout.source[v] else layout.place[v]
            backward[v] = len(tasks.resource)
            for i, j in enumerate(layout.instances(v)):
                tasks.add(device, backward_seconds[v], (1, m if j == SHARED else j, -v), j, True)
                tasks.edge(forward[v] + i, backward[v] + i)
    return forward, backward


def _add_transfers(tasks: _Tasks, layout: _Layout, arrays, a: np.ndarray, cluster: Cluster,
                   m: int, forward: list[int], backward: list[int]) -> tuple[dict, dict]:
    """Each remote (tensor, device) pair's sends and, for tensors that require grad, the
    gradient's return; keyed by (node, receiving device), ids of instance 0."""
    k, place, nbytes = cluster.k, layout.place, arrays.bytes
    sends: dict[tuple[int, int], int] = {}
    returns: dict[tuple[int, int], int] = {}
    for u, d in zip(*(x.tolist() for x in remote_pairs(arrays, a, k))):
        s = place[u]
        sends[u, d] = len(tasks.resource)
        for i, j in enumerate(layout.instances(u)):
            tasks.add(k + s * k + d, cluster.transfer_time(s, d, nbytes[u]), (0, j, u), j, False)
            tasks.edge(forward[u] + i, sends[u, d] + i)
        if layout.grad[u]:
            returns[u, d] = len(tasks.resource)
            for i, j in enumerate(layout.instances(u)):
                tasks.add(k + d * k + s, cluster.transfer_time(d, s, nbytes[u]),
                          (1, m if j == SHARED else i, -u), j, True)
                tasks.edge(sends[u, d] + i, returns[u, d] + i)
                tasks.edge(returns[u, d] + i, backward[u] + i)
    return sends, returns


def _add_dependencies(tasks: _Tasks, layout: _Layout, arrays, forward: list[int],
                      backward: list[int], sends: dict, returns: dict) -> None:
    """A consumer's forward waits for its inputs (local op or arrived send); an input's
    backward waits for the consumer's backward (local) or the gradient's return."""
    place, batch, grad = layout.place, layout.batch, layout.grad
    in_ptr, in_idx = arrays.in_ptr.tolist(), arrays.in_idx.tolist()
    for c in range(len(place)):
        for u in in_idx[in_ptr[c]:in_ptr[c + 1]]:
            local = place[u] == place[c]
            gradient = grad[u] and grad[c]
            for i in range(len(layout.instances(c))):
                i_u = i if batch[u] else 0
                tasks.edge(forward[u] + i_u if local else sends[u, place[c]] + i_u,
                           forward[c] + i)
                if gradient:
                    tasks.edge(backward[c] + i,
                               backward[u] + i_u if local else returns[u, place[c]] + i_u)


def _pipeline_sequences(tasks: _Tasks, stages: list[int], k: int, m: int,
                        schedule: str) -> list[list[int]]:
    """Each device's fixed op order: shared forwards, the schedule's actions (stage s on
    device stages[s]), shared backwards."""
    blocks: dict[tuple[int, int, bool], list[int]] = {}
    for t, device in enumerate(tasks.resource):
        if 0 <= device < k:
            blocks.setdefault((device, tasks.micro_batch[t], tasks.backward[t]), []).append(t)
    sequences: list[list[int]] = [[] for _ in range(k)]
    plan = make_schedule(schedule, len(stages), m)
    for device, actions in zip(stages, plan.actions):
        order = ([(SHARED, False)] + [(a.micro_batch, a.kind == "B") for a in actions]
                 + [(SHARED, True)])
        for j, is_backward in order:
            sequences[device] += blocks.get((device, j, is_backward), [])
    return sequences


# ------------------------------------------------------------------ the event loop
class _EventLoop:
    """Runs the tasks, one at a time per device and per directed link: a link takes its ready
    transfers first come, first served, a device its ready ops by priority (or `sequences`)."""

    def __init__(self, tasks: _Tasks, k: int, sequences: list[list[int]] | None) -> None:
        count = len(tasks.resource)
        self.tasks, self.k, self.sequences = tasks, k, sequences
        self.pending = list(tasks.pending)
        self.start = [0.0] * count
        self.finish = [np.nan] * count
        self.busy = [False] * (k + k * k)
        self.queues: list[list] = [[] for _ in range(k + k * k)]   # ready tasks per resource
        self.ready = [False] * count
        self.position = [0] * k                                    # next op of a sequence
        self.events: list[tuple[float, int]] = []

    def run(self, schedule: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Start and finish time of every task; PlacementError when a schedule deadlocks."""
        tasks, count = self.tasks, len(self.tasks.resource)
        for t in range(count):
            if self.pending[t] == 0:
                self._make_ready(t, 0.0)
        done = 0
        while self.events:
            now, t = heapq.heappop(self.events)
            self.finish[t] = now
            done += 1
            r = tasks.resource[t]
            if r >= 0:
                self.busy[r] = False
            for s in tasks.successors[t]:
                self.pending[s] -= 1
                if self.pending[s] == 0:
                    self._make_ready(s, now)
            if r >= 0:
                self._begin(r, now)
        if done < count:
            stuck = [d for d in range(self.k)
                     if self.sequences and self.position[d] < len(self.sequences[d])]
            raise PlacementError(f"schedule {schedule!r} deadlocks on this placement: devices "
                                 f"{stuck} wait for ops that can never become ready")
        return np.array(self.start), np.array(self.finish)

    def _next(self, r: int) -> int | None:
        """The task resource r runs next, if one is ready."""
        if r < self.k and self.sequences is not None:
            sequence, p = self.sequences[r], self.position[r]
            if p == len(sequence) or not self.ready[sequence[p]]:
                return None
            self.position[r] += 1
            return sequence[p]
        return heapq.heappop(self.queues[r])[-1] if self.queues[r] else None

    def _begin(self, r: int, now: float) -> None:
        if self.busy[r]:
            return
        t = self._next(r)
        if t is None:
            return
        self.busy[r] = True
        self.start[t] = now
        heapq.heappush(self.events, (now + self.tasks.duration[t], t))

    def _make_ready(self, t: int, now: float) -> None:
        r = self.tasks.resource[t]
        if r < 0:
            self.start[t] = now
            heapq.heappush(self.events, (now, t))
            return
        self.ready[t] = True
        if r >= self.k:                                  # links: first come, first served
            heapq.heappush(self.queues[r], (now, self.tasks.priority[t], t))
        elif self.sequences is None:
            heapq.heappush(self.queues[r], (self.tasks.priority[t], t))
        self._begin(r, now)


# ------------------------------------------------------------------ reports
def _timeline(tasks: _Tasks, start: np.ndarray, finish: np.ndarray, k: int,
              names: tuple[str, ...]) -> tuple[dict, ...]:
    """Busy intervals of each device (kind forward/backward) and of each directed link (kind
    transfer, listed under the receiving device with "link": "a->b"); back-to-back tasks of one
    kind and micro-batch are merged into one segment (for Gantt charts)."""
    resource = np.array(tasks.resource, dtype=np.int64)
    timed = np.flatnonzero((resource >= 0) & (finish > start))
    timed = timed[np.lexsort((start[timed], resource[timed]))]
    segments: list[dict] = []
    last_key = None
    for t in timed.tolist():
        r = int(resource[t])
        link = None
        if r < k:
            where, kind = names[r], ("backward" if tasks.backward[t] else "forward")
        else:
            a, b = divmod(r - k, k)
            where, kind, link = names[b], "transfer", f"{names[a]}->{names[b]}"
        mb = int(tasks.micro_batch[t])
        key = (where, kind, mb, link)
        if key == last_key and start[t] <= segments[-1]["end"] * (1 + 1e-12) + 1e-15:
            segments[-1]["end"] = float(finish[t])
            continue
        segments.append({"device": where, "start": float(start[t]), "end": float(finish[t]),
                         "kind": kind, "micro_batch": mb})
        if link:
            segments[-1]["link"] = link
        last_key = key
    return tuple(segments)


def _peak_in_flight(tasks: _Tasks, start: np.ndarray, finish: np.ndarray, k: int
                    ) -> tuple[int, ...]:
    """Per device, the most micro-batches between the start of their first forward op and the
    end of their last op there at the same time."""
    resource = np.array(tasks.resource)
    micro_batch = np.array(tasks.micro_batch)
    peaks = []
    for d in range(k):
        mine = (resource == d) & (micro_batch >= 0)
        if not mine.any():
            peaks.append(0)
            continue
        batches = micro_batch[mine]
        first = np.full(batches.max() + 1, np.inf)
        last = np.full(batches.max() + 1, -np.inf)
        np.minimum.at(first, batches, start[mine])
        np.maximum.at(last, batches, finish[mine])
        used = np.isfinite(first)
        peaks.append(peak_in_flight(zip(first[used].tolist(), last[used].tolist())))
    return tuple(peaks)
