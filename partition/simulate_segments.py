"""The Ray executor's segments for the step simulator (partition/simulate.py): which of a
device's ops run as one call, whose inputs all arrive before it starts and whose outputs leave
when it ends (executor/plan.py cuts each phase's ops, in a topological order, into runs of one
device)."""
from __future__ import annotations

import heapq

import numpy as np

SHARED = -1          # micro-batch index of nodes that run once per step (as simulate.py)


def executor_segments(arrays, a: np.ndarray, stage_of: dict | None):
    """The executor's segments (executor/plan.py): per phase (static forward, forward,
    backward, static backward), its ops in a topological order cut into runs of one device; by
    stage (`stage_of`, acyclic placements: one run per device), else staying on a device while
    it has ready ops. Returns each node's forward and backward segment (-1: none), and per
    segment (device, is backward, is per micro-batch), in order."""
    n, place = arrays.n, a.tolist()
    batch, grad, source = (x.tolist() for x in (arrays.batch_dependent, arrays.requires_grad,
                                                arrays.is_source))
    in_ptr, in_idx = arrays.in_ptr.tolist(), arrays.in_idx.tolist()
    inputs = [in_idx[in_ptr[v]:in_ptr[v + 1]] for v in range(n)]
    seg = {False: [-1] * n, True: [-1] * n}
    info: list[tuple[int, bool, bool]] = []
    for backward in (False, True):
        for per_mb in (False, True):
            nodes = [v for v in range(n) if batch[v] == per_mb and
                     (grad[v] if backward else not source[v])]
            member = set(nodes)
            deps = {v: [] for v in nodes}            # v waits for these
            for v in nodes:
                for u in set(inputs[v]):
                    if u in member and (not backward or grad[v]):
                        deps[u if backward else v].append(v if backward else u)
            users: dict[int, list[int]] = {}
            for v, ds in deps.items():
                for u in ds:
                    users.setdefault(u, []).append(v)
            waiting = {v: len(ds) for v, ds in deps.items()}
            ready: dict[int, list] = {}

            def push(v):
                key = -v if backward else v
                first = (stage_of[place[v]] * (-1 if backward else 1),) if stage_of else ()
                heapq.heappush(ready.setdefault(place[v], []), (*first, key, v))
            for v in nodes:
                if not waiting[v]:
                    push(v)
            current, last = None, None
            while any(ready.values()):
                if stage_of is not None or not ready.get(current):
                    current = min((h[0], d) for d, h in ready.items() if h)[1]
                v = heapq.heappop(ready[current])[-1]
                if current != last:
                    info.append((current, backward, per_mb))
                    last = current
                seg[backward][v] = len(info) - 1
                for w in users.get(v, []):
                    waiting[w] -= 1
                    if not waiting[w]:
                        push(w)
    return seg[False], seg[True], info


def segment_edges(tasks, segments, copies, forward, backward, sends, returns, place,
                  grad, inputs) -> None:
    """Barriers around each segment instance (`executor_segments`): its ops start after its start
    barrier, which waits for the transfers into them and the device's previous segment of the
    phase; its end barrier waits for its ops, and the transfers out of them wait for it."""
    fseg, bseg, info = segments
    pairs: dict[tuple[int, int], tuple[int, int]] = {}

    def barriers(s: int, i: int) -> tuple[int, int]:
        if (s, i) not in pairs:
            _, back, per_mb = info[s]
            j = i if per_mb else SHARED
            pairs[s, i] = (tasks.add(-1, 0.0, (int(back), j, -1), j, back),
                           tasks.add(-1, 0.0, (int(back), j, -1), j, back))
        return pairs[s, i]

    def inside(s: int, i: int, t: int) -> None:
        begin, end = barriers(s, i)
        tasks.edge(begin, t)
        tasks.edge(t, end)
    for v, n in enumerate(copies):
        for i in range(n):
            if fseg[v] >= 0:
                inside(fseg[v], i, forward[v] + i)
            if bseg[v] >= 0:
                inside(bseg[v], i, backward[v] + i)
    for (u, _), t in sends.items():
        for i in range(copies[u] if fseg[u] >= 0 else 0):
            tasks.edge(barriers(fseg[u], i)[1], t + i)
    in_ptr, in_idx = inputs
    for c, n in enumerate(copies):
        for u in set(in_idx[in_ptr[c]:in_ptr[c + 1]]):
            if place[u] == place[c]:
                continue
            for i in range(n):
                i_u = i if copies[u] > 1 else 0
                if fseg[c] >= 0:
                    tasks.edge(sends[u, place[c]] + i_u, barriers(fseg[c], i)[0])
                if grad[u] and grad[c] and bseg[c] >= 0:
                    tasks.edge(barriers(bseg[c], i)[1], returns[u, place[c]] + i_u)
                    tasks.edge(returns[u, place[c]] + i_u, barriers(bseg[u], i_u)[0])
    last: dict[tuple, int] = {}
    for s, (device, back, per_mb) in enumerate(info):
        previous = last.get((device, back, per_mb))
        last[device, back, per_mb] = s
        if previous is not None:
            for i in range(max(copies) if per_mb else 1):
                tasks.edge(barriers(previous, i)[1], barriers(s, i)[0])
