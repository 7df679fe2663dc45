"""Event-driven simulation of one training step of a placed forward graph (SPEC section 4).

The backward pass is implied: every forward node that requires grad has a backward op costing
twice its forward FLOPs on the same device, run in reverse topological order. A tensor travels
once to each other device that reads it (V_f) and its gradient comes back once from each
(V_b); a transfer occupies its directed link for `latency + bytes / bandwidth`, transfers on
one link run one at a time in the order they become ready, and each device runs one op at a
time. With m micro-batches, batch-dependent nodes run m times; parameters (and what is computed
from them alone) are sent once per step and their gradients summed before going back.

An op of kind `op` costs `flops / device.rate(op)` (its backward twice that). On a measured
cluster (partition/cluster.py) each executed op also costs the device's `op_overhead`: a
forward op once, its backward once per gradient op the training graph (`autodiff.vjp`) holds
for it; and the step's makespan includes the cluster's `step_overhead`. A device with
`op_costs` charges each op of the training graph by its kind's entry instead (a forward op
its own, its backward the sum over its gradient ops; kinds without an entry as above), and
given the `optimizer`, a device with `update_costs` runs one update per parameter it owns
once the parameter's gradient is complete (after its other ops, as the executor's update).
With the cluster's `poll_delay`, a message that reaches an idle device which has waited `w`
seconds, longer than `poll_after`, is noticed `min((w - poll_after) / 2, poll_delay)` late
(the pauses between polls double up to a maximum), and so is the step's end by the driver.
With the cluster's `cores`, device d runs on processor d % cores (as the executor pins its
actors), and an op takes as many times longer as devices of its processor compute or spin
(for `poll_after` after their last op) at its start (ops are short). With `batch_transfers`
(the Ray executor's packets), ops run in the executor's segments (executor/plan.py: each
phase's ops in a topological order cut into runs of one device): a segment starts once all
it receives has arrived, and what it sends leaves when it ends.

Schedules: None = list scheduling (forwards before backwards, earlier micro-batches and nodes
first, among the ops that are ready); "gpipe" and "1f1b" fix each device's op sequence by
stage (stage = device, in a topological order of the acyclic quotient): GPipe runs all
forwards then all backwards; 1F1B runs (stages - stage - 1) warm-up forwards, then alternates
one forward and one backward, then drains the backwards.
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
from partition.problem import require_forward
from partition.simulate_segments import SHARED, executor_segments, segment_edges

SCHEDULES = (None, "gpipe", "1f1b")


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
             micro_batches: int = 1, optimizer: str | None = None) -> SimulationResult:
    """Simulate one training step of the forward `graph` placed by `assignment` on `cluster`
    (`optimizer`: the name whose `update_costs` the devices charge, None for none)."""
    if schedule not in SCHEDULES:
        raise PlacementError(f"schedule: expected one of None, 'gpipe', '1f1b', "
                             f"got {schedule!r}")
    if not isinstance(micro_batches, int) or isinstance(micro_batches, bool) \
            or micro_batches < 1:
        raise PlacementError(f"micro_batches: expected a positive integer, got {micro_batches!r}")
    require_forward(graph)
    arrays = graph_arrays(graph)
    k = cluster.k
    a = check_assignment(assignment, arrays.n, k)
    stages = order = None
    if schedule is not None or cluster.batch_transfers:
        order = quotient_order(quotient_adjacency(arrays, a, k))
    if schedule is not None:
        if order is None:
            raise PlacementError(f"schedule {schedule!r} needs an acyclic placement: tensors "
                                 "flow in a cycle between devices (partition with acyclic=True)")
        computing = np.bincount(a[~arrays.is_source], minlength=k) > 0
        stages = [d for d in order if computing[d]]
    # gradient ops per forward node, for a cluster that charges per op (one vjp)
    gradient_ops = (_gradient_ops(graph, arrays)
                    if any(d.op_overhead or d.op_costs for d in cluster.devices) else None)
    forward_time, backward_time = _op_times(graph, arrays, a, cluster, gradient_ops)
    update_time = _update_times(arrays, a, cluster, optimizer)
    segments = None
    if cluster.batch_transfers:
        segments = executor_segments(arrays, a, None if order is None else
                                     {d: s for s, d in enumerate(order)})
    tasks = _build(arrays, a, cluster, micro_batches, forward_time, backward_time, update_time,
                   segments)
    sequences = (None if stages is None
                 else _pipeline_sequences(tasks, stages, k, micro_batches, schedule))
    batch_latency = (np.concatenate([np.zeros(k), cluster.latency.ravel()]).tolist()
                     if cluster.batch_transfers else None)
    poll = (cluster.poll_after, cluster.poll_delay) if cluster.poll_delay else None
    sharing = (cluster.cores, cluster.poll_after) if cluster.cores else None
    start, finish = _run(tasks, k, sequences, schedule, batch_latency, poll, sharing)
    end = float(finish.max()) if len(finish) else 0.0
    late = _poll_late(end, poll) if poll else 0.0
    makespan = end + late + cluster.step_overhead
    resource = np.array(tasks.resource)
    compute = (resource >= 0) & (resource < k)
    device = resource[compute]
    busy_time = np.bincount(device, weights=(finish - start)[compute], minlength=k)
    busy = busy_time / makespan if makespan > 0 else np.zeros(k)
    bubble = None
    if stages:
        bubble = float(1.0 - busy_time[stages].sum() / (len(stages) * makespan)) \
            if makespan > 0 else 0.0
    multiplicity = np.where(arrays.batch_dependent, micro_batches, 1)
    fastest = np.zeros(arrays.n, dtype=np.int64) + int(np.argmax(cluster.speeds))
    one_device = np.add(*_op_times(graph, arrays, fastest, cluster, gradient_ops))
    single = float((one_device * multiplicity).sum() + cluster.step_overhead
                   + _update_times(arrays, fastest, cluster, optimizer).sum())
    return SimulationResult(
        makespan=makespan, busy=tuple(float(b) for b in busy), bubble=bubble,
        single_device_time=single, speedup=single / makespan if makespan > 0 else 1.0,
        peak_in_flight=_peak_in_flight(tasks, start, finish, k),
        schedule=schedule, micro_batches=micro_batches, devices=cluster.device_names,
        timeline=_timeline(tasks, start, finish, k, cluster.device_names))


# ------------------------------------------------------------------ the task graph
class _Tasks:
    """Ops and transfers as parallel lists. `resource` is a device (< k), a directed link
    (k + a * k + b) or -1 for zero-time bookkeeping (sources, parameter gradients)."""

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


def _op_times(graph: Graph, arrays, a: np.ndarray, cluster: Cluster,
              gradient_ops: list | None) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of each node's forward op and of its backward op on its device (0 for sources,
    and for the backward of nodes that do not require grad); `gradient_ops` (per node, from
    `_gradient_ops`) is needed when a device charges `op_overhead` or has `op_costs`."""
    devices = cluster.devices
    place = a.tolist()
    if any(d.op_flops for d in devices):
        rate = np.array([devices[d].rate(node.op) for d, node in zip(place, graph.nodes)])
    else:
        rate = cluster.speeds[a]
    forward = np.where(arrays.is_source, 0.0, arrays.flops / rate)
    backward = np.where(arrays.is_source | ~arrays.requires_grad, 0.0, 2.0 * forward)
    overhead = np.array([d.op_overhead for d in devices])[a]
    if overhead.any():
        forward = forward + np.where(arrays.is_source, 0.0, overhead)
        counts = np.array([len(ops) for ops in gradient_ops], dtype=float)
        backward = backward + np.where(arrays.requires_grad, counts * overhead, 0.0)
    if any(d.op_costs for d in devices):
        touched = touched_bytes(arrays)
        source, grad, flops = arrays.is_source, arrays.requires_grad, arrays.flops
        for v, node in enumerate(graph.nodes):
            device = devices[place[v]]
            if not device.op_costs:
                continue
            if not source[v]:
                cost = device.op_cost(node.op, flops[v], touched[v])
                if cost is not None:
                    forward[v] = cost
            if grad[v] and gradient_ops[v] and all(op for op, _, _ in gradient_ops[v]):
                backward[v] = sum(_cost(device, *op) for op in gradient_ops[v])
    return forward, backward


def _cost(device, op: str, flops: float, nbytes: float) -> float:
    """Seconds of one op on `device`: its `op_costs` entry, else overhead plus FLOPs / rate."""
    cost = device.op_cost(op, flops, nbytes)
    return device.op_overhead + flops / device.rate(op) if cost is None else cost


def touched_bytes(arrays) -> np.ndarray:
    """Per node, the bytes of its distinct inputs plus its output (what an op reads and
    writes)."""
    inputs = np.bincount(arrays.in_dst, weights=arrays.bytes[arrays.in_idx].astype(float),
                         minlength=arrays.n)
    return inputs + arrays.bytes


def _update_times(arrays, a: np.ndarray, cluster: Cluster, optimizer: str | None
                  ) -> np.ndarray:
    """Per node, seconds of its optimizer update on its device (parameters that require grad,
    when the device has `update_costs` for `optimizer`; else 0)."""
    out = np.zeros(arrays.n)
    if optimizer is None or not any(d.update_costs for d in cluster.devices):
        return out
    devices, nbytes = cluster.devices, arrays.bytes
    for v in np.flatnonzero(arrays.is_param & arrays.requires_grad).tolist():
        out[v] = devices[a[v]].update_cost(optimizer, float(nbytes[v]))
    return out


def _gradient_ops(graph: Graph, arrays) -> list[list[tuple]]:
    """Per forward node, its computed (non-source) gradient ops in the training graph (tagged
    `grad_of`), each as (op kind, FLOPs, bytes read and written); for a graph with ops that
    cannot be differentiated here (opaque ops from a file), one op of unknown kind (None) per
    input that requires grad."""
    from autodiff.ir import GraphError
    from autodiff.reverse import vjp
    from partition.cost import graph_arrays

    index = {node.name: i for i, node in enumerate(graph.nodes)}
    ops: list[list[tuple]] = [[] for _ in graph.nodes]
    try:
        training = vjp(graph)
    except GraphError:
        grad = arrays.requires_grad
        for i, node in enumerate(graph.nodes):
            ops[i] = [(None, 0.0, 0.0)] * sum(bool(grad[index[u]]) for u in set(node.inputs))
        return ops
    train = graph_arrays(training)
    touched = touched_bytes(train)
    for t, node in enumerate(training.nodes):
        if node.grad_of is not None and not node.is_source and node.grad_of in index:
            ops[index[node.grad_of]].append((node.op, float(train.flops[t]), float(touched[t])))
    return ops


def _build(arrays, a: np.ndarray, cluster: Cluster, m: int, forward_time: np.ndarray,
           backward_time: np.ndarray, update_time: np.ndarray, segments=None) -> _Tasks:
    """Forward ops, backward ops, optimizer updates and transfers of one step, with their
    dependencies; with `segments` (`executor_segments`), as the executor runs them: a
    segment starts once all it receives has arrived, and what it sends leaves when it ends."""
    k, n = cluster.k, arrays.n
    place = a.tolist()
    batch = arrays.batch_dependent.tolist()
    grad = arrays.requires_grad.tolist()
    source = arrays.is_source.tolist()
    forward_seconds, backward_seconds = forward_time.tolist(), backward_time.tolist()
    copies = [m if b else 1 for b in batch]

    def micro(v: int, i: int) -> int:
        return i if batch[v] else SHARED

    tasks = _Tasks()
    forward = [0] * n                 # task id of instance 0; instance i is forward[v] + i
    backward = [-1] * n
    for v in range(n):
        device = -1 if source[v] else place[v]
        duration = forward_seconds[v]
        forward[v] = len(tasks.resource)
        for i in range(copies[v]):
            tasks.add(device, duration, (0, micro(v, i), v), micro(v, i), False)
    for v in range(n - 1, -1, -1):
        if grad[v]:
            duration = backward_seconds[v]
            # a source's backward (summing a parameter's gradients) is bookkeeping unless
            # the cluster charges per op
            device = -1 if source[v] and duration == 0 else place[v]
            backward[v] = len(tasks.resource)
            for i in range(copies[v]):
                j = micro(v, i)
                tasks.add(device, duration, (1, m if j == SHARED else j, -v), j, True)
                tasks.edge(forward[v] + i, backward[v] + i)
    # updates run once the device's backward ops are done (the executor's last block)
    barrier: dict[int, int] = {}
    for v in np.flatnonzero(update_time).tolist():
        d = place[v]
        if d not in barrier:
            barrier[d] = tasks.add(-1, 0.0, (2, 0, -1), SHARED, True)
            for t in range(len(tasks.resource) - 1):
                if tasks.resource[t] == d and tasks.backward[t]:
                    tasks.edge(t, barrier[d])
        update = tasks.add(d, float(update_time[v]), (2, 0, v), SHARED, True)
        tasks.edge(backward[v], update)
        tasks.edge(barrier[d], update)
    sends: dict[tuple[int, int], int] = {}
    returns: dict[tuple[int, int], int] = {}
    nbytes = arrays.bytes
    for u, d in zip(*(x.tolist() for x in remote_pairs(arrays, a, k))):
        s = place[u]
        sends[u, d] = len(tasks.resource)
        for i in range(copies[u]):
            tasks.add(k + s * k + d, cluster.transfer_time(s, d, nbytes[u]),
                      (0, micro(u, i), u), micro(u, i), False)
            tasks.edge(forward[u] + i, sends[u, d] + i)
        if grad[u]:
            returns[u, d] = len(tasks.resource)
            for i in range(copies[u]):
                tasks.add(k + d * k + s, cluster.transfer_time(d, s, nbytes[u]),
                          (1, m if micro(u, i) == SHARED else i, -u), micro(u, i), True)
                tasks.edge(sends[u, d] + i, returns[u, d] + i)
                tasks.edge(returns[u, d] + i, backward[u] + i)
    in_ptr, in_idx = arrays.in_ptr.tolist(), arrays.in_idx.tolist()
    for c in range(n):
        for u in in_idx[in_ptr[c]:in_ptr[c + 1]]:
            local = place[u] == place[c]
            gradient = grad[u] and grad[c]
            for i in range(copies[c]):
                i_u = i if batch[u] else 0
                tasks.edge(forward[u] + i_u if local else sends[u, place[c]] + i_u,
                           forward[c] + i)
                if gradient:
                    tasks.edge(backward[c] + i,
                               backward[u] + i_u if local else returns[u, place[c]] + i_u)
    if segments is not None:
        segment_edges(tasks, segments, copies, forward, backward, sends, returns, place,
                      grad, (in_ptr, in_idx))
    return tasks


def _pipeline_sequences(tasks: _Tasks, stages: list[int], k: int, m: int,
                        schedule: str) -> list[list[int]]:
    """Each device's fixed op order: shared forwards, the schedule's per-micro-batch forward
    and backward blocks, shared backwards."""
    blocks: dict[tuple[int, int, bool], list[int]] = {}
    for t, device in enumerate(tasks.resource):
        if device < 0 or device >= k:
            continue
        blocks.setdefault((device, tasks.micro_batch[t], tasks.backward[t]), []).append(t)
    sequences: list[list[int]] = [[] for _ in range(k)]
    for s, device in enumerate(stages):
        actions: list[tuple[int, bool]] = []
        if schedule == "gpipe":
            actions = [(j, False) for j in range(m)] + [(j, True) for j in range(m)]
        else:
            warmup = min(len(stages) - s - 1, m)
            actions = [(j, False) for j in range(warmup)]
            for j in range(m - warmup):
                actions += [(warmup + j, False), (j, True)]
            actions += [(j, True) for j in range(m - warmup, m)]
        actions = [(SHARED, False)] + actions + [(SHARED, True)]
        for j, is_backward in actions:
            sequences[device] += blocks.get((device, j, is_backward), [])
    return sequences


# ------------------------------------------------------------------ the event loop
def _run(tasks: _Tasks, k: int, sequences: list[list[int]] | None, schedule: str | None,
         batch_latency: list[float] | None = None, poll: tuple[float, float] | None = None,
         sharing: tuple[int, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start and finish time of every task. With `batch_latency` (per resource, the latency
    of a link), a link that frees sends every transfer queued on it as one message: the
    latency once plus their bytes / bandwidth. With `poll` (after, delay), a transfer that
    reaches a device idle for longer than `after` makes its op ready later (`_poll_late`).
    With `sharing` (cores, spin), a device op takes as many times its duration as devices of
    its processor (d % cores) compute or have been idle for less than `spin`."""
    count = len(tasks.resource)
    resource, duration, priority = tasks.resource, tasks.duration, tasks.priority
    pending = list(tasks.pending)
    start = [0.0] * count
    finish = [np.nan] * count
    busy = [0] * (k + k * k)                             # tasks running on a resource
    queues: list[list] = [[] for _ in range(k + k * k)]   # ready tasks per device and link
    ready = [False] * count
    position = [0] * k                                   # next op of a fixed sequence
    events: list[tuple[float, int]] = []
    deferred: set[int] = set()                           # batched links to start at `now`
    idle_since = [0.0] * k                               # when each device last finished
    spinning_until = [-np.inf] * k                       # devices spin after going idle

    def slowdown(r: int, now: float) -> float:
        """How many times longer an op starting on device r at `now` takes (`sharing`)."""
        cores = sharing[0]                     # device d runs on processor d % cores
        return float(sum(1 for d in range(r % cores, k, cores)
                         if d == r or busy[d] or now < spinning_until[d]))

    def begin(r: int, now: float) -> None:
        if busy[r]:
            return
        if r < k and sequences is not None:
            sequence = sequences[r]
            if position[r] == len(sequence) or not ready[sequence[position[r]]]:
                return
            t = sequence[position[r]]
            position[r] += 1
        elif queues[r] and batch_latency is not None and r >= k:
            batch = [heapq.heappop(queues[r])[-1] for _ in range(len(queues[r]))]
            latency = batch_latency[r]
            end = now + latency + sum(duration[t] - latency for t in batch)
            busy[r] = len(batch)
            for t in batch:
                start[t] = now
                heapq.heappush(events, (end, t))
            return
        elif queues[r]:
            t = heapq.heappop(queues[r])[-1]
        else:
            return
        busy[r] = 1
        start[t] = now
        seconds = duration[t]
        if sharing is not None and r < k and seconds > 0:
            seconds *= slowdown(r, now)
        heapq.heappush(events, (now + seconds, t))

    def make_ready(t: int, now: float) -> None:
        r = resource[t]
        if r < 0:
            start[t] = now
            heapq.heappush(events, (now, t))
            return
        ready[t] = True
        if r >= k:                                       # links: first come, first served
            heapq.heappush(queues[r], (now, priority[t], t))
            if batch_latency is not None:                # start once all of `now` is known
                deferred.add(r)
                return
        elif sequences is None:
            heapq.heappush(queues[r], (priority[t], t))
        begin(r, now)

    def flush(now: float) -> None:
        """Start the batched links whose transfers became ready at `now`, once no other
        event at `now` can add to them."""
        if deferred and (not events or events[0][0] > now):
            for r in sorted(deferred):
                begin(r, now)
            deferred.clear()

    for t in range(count):
        if pending[t] == 0:
            make_ready(t, 0.0)
    flush(0.0)
    done = 0
    while events:
        now, t = heapq.heappop(events)
        if t < 0:                                        # noticed after polling
            make_ready(-t - 1, now)
            flush(now)
            continue
        finish[t] = now
        done += 1
        r = resource[t]
        if r >= 0:
            busy[r] -= 1
        if 0 <= r < k:
            idle_since[r] = now
            if sharing is not None:
                spinning_until[r] = now + sharing[1]
        for s in tasks.successors[t]:
            pending[s] -= 1
            if pending[s] == 0:
                d = resource[s]
                if (poll is not None and r >= k and 0 <= d < k and not busy[d]
                        and now - idle_since[d] > poll[0]):
                    heapq.heappush(events, (now + _poll_late(now - idle_since[d], poll),
                                            -s - 1))
                    continue
                make_ready(s, now)
        if r >= 0:
            begin(r, now)
        flush(now)
    if done < count:
        stuck = [d for d in range(k) if sequences and position[d] < len(sequences[d])]
        raise PlacementError(f"schedule {schedule!r} deadlocks on this placement: devices "
                             f"{stuck} wait for ops that can never become ready")
    return np.array(start), np.array(finish)


def _poll_late(wait: float, poll: tuple[float, float]) -> float:
    """How late a message is noticed after waiting `wait` seconds, with poll = (after,
    delay): polls start after `after` with pauses that double, so the next poll comes about
    half the time waited since then later, at most `delay`."""
    after, delay = poll
    return min((wait - after) / 2, delay) if wait > after else 0.0


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
        # an interval ending when another starts does not overlap it: ends sort first
        times = np.concatenate([last[used], first[used]])
        steps = np.concatenate([-np.ones(used.sum()), np.ones(used.sum())])
        order = np.lexsort((steps, times))
        peaks.append(int(np.cumsum(steps[order]).max()))
    return tuple(peaks)
