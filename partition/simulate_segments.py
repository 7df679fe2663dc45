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
    it has ready ops. Returns each node's forward and backward segment (-1: none), per
    segment (device, is backward, is per micro-batch) in order, and the segment of each receive
    {(forward node u, reading device d, is backward): segment} (of u's value on d, or of u's
    gradient from d on u's device; cyclic placements, where a segment may hold only receives
    or sources: it is a block of its own in the executor, so it costs a barrier)."""
    if stage_of is not None:
        return (*_stage_segments(arrays, a, stage_of), {})
    return _sticky_segments(arrays, a)


def _stage_segments(arrays, a: np.ndarray, stage_of: dict):
    """Acyclic placements: each phase's computed nodes by (stage, position), one run per
    device."""
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
            sign = -1 if backward else 1
            deps: dict[int, list[int]] = {v: [] for v in nodes}
            member = set(nodes)
            for v in nodes:
                for u in set(inputs[v]):
                    if u in member and (not backward or grad[v]):
                        deps[u if backward else v].append(v if backward else u)
            order = _kahn(nodes, deps, lambda v: (sign * stage_of[place[v]], sign * v),
                          place, sticky=False)
            last = None
            for v in order:
                if place[v] != last:
                    info.append((place[v], backward, per_mb))
                    last = place[v]
                seg[backward][v] = len(info) - 1
    return seg[False], seg[True], info


PHASES = ((False, False), (False, True), (True, True), (True, False))   # SF F B SB


def _sticky_segments(arrays, a: np.ndarray):
    """Cyclic placements: the plan's operations per phase, at the granularity of forward nodes
    and keyed as executor/plan.py keys them (`_Builder`): forward computes (sources included)
    by position and receives just after their producer; a node's backward rule (one op) and
    gradient parts by the training graph's reverse order (later forward nodes first), partial
    sums on consumers' devices just before their node's rule, gradient receives just after
    their sender, static gradients accumulated over micro-batches (B) and sent on (SB)."""
    n, place = arrays.n, a.tolist()
    batch, grad = arrays.batch_dependent.tolist(), arrays.requires_grad.tolist()
    in_ptr, in_idx = arrays.in_ptr.tolist(), arrays.in_idx.tolist()
    out_ptr, out_idx = arrays.out_ptr.tolist(), arrays.out_idx.tolist()
    inputs = [in_idx[in_ptr[v]:in_ptr[v + 1]] for v in range(n)]
    ops: dict = {}                        # item -> [device, phase, key, deps]

    def op(item, device, phase, key, deps=()):
        if item not in ops:
            ops[item] = [device, phase, key, []]
        ops[item][3].extend(u for u in deps if ops[u][1] == phase)
        return item
    for v in range(n):
        phase = PHASES[1] if batch[v] else PHASES[0]
        deps = []
        for u in dict.fromkeys(inputs[v]):
            if place[u] != place[v]:
                u_phase = PHASES[1] if batch[u] else PHASES[0]
                deps.append(op(("r", u, place[v]), place[v], u_phase, u + 1e-3, [("c", u)]))
            else:
                deps.append(("c", u))
        op(("c", v), place[v], phase, float(v), deps)
    sinks = [v for v in range(n) if out_ptr[v] == out_ptr[v + 1]]
    loss = max((v for v in sinks if grad[v]), default=-1)
    live = [False] * n
    consumers: list[list[int]] = [[] for _ in range(n)]
    for v in range(loss, -1, -1):
        for c in out_idx[out_ptr[v]:out_ptr[v + 1]]:
            if live[c] and grad[v] and grad[c]:
                consumers[v].extend(c for slot in inputs[c] if slot == v)
        live[v] = v == loss or bool(consumers[v])

    def key(v: int) -> float:
        return float(2 * n - 1 - v)

    def part(c: int, x: int) -> float:
        return key(c) + 0.5 * (inputs[c].index(x) + 1) / (len(inputs[c]) + 1)
    for v, state in _states(arrays, sinks, loss).items():
        # persistent state's new value (summed over micro-batches) goes to the state's device
        value, k0 = ("c", v), float(v)
        if batch[v]:
            op(("A", v), place[v], PHASES[2], v + 2e-3)
            value, k0 = op(("R", v), place[v], PHASES[3], v + 2e-3), v + 2e-3
        if place[state] != place[v]:
            op(("s", v, place[state]), place[state], ops[value][1], k0 + 1e-3, [value])
    for x in range(loss, -1, -1):
        if not live[x]:
            continue
        dx, phase = place[x], PHASES[2] if batch[x] else PHASES[3]
        b = op(("b", x), dx, phase, key(x))
        groups: dict[int, list[int]] = {}
        for c in consumers[x]:
            groups.setdefault(place[c], []).append(c)
        fan = len(consumers[x]) >= 2
        for d, members in groups.items():
            values = []               # (item, key) of the part values on d
            if batch[x]:
                values = [(("b", c), part(c, x)) for c in members]
            else:
                per = [c for c in members if batch[c]]
                if per and fan:
                    if len(per) == 1:
                        base, k0 = ("b", per[0]), part(per[0], x)
                    else:
                        base, k0 = op(("m", x, d), d, PHASES[2], key(x) - 0.5,
                                      [("b", c) for c in per]), key(x) - 0.5
                    op(("A", base), d, PHASES[2], k0 + 2e-3, [base])
                    values.append((op(("R", base), d, PHASES[3], k0 + 2e-3), k0 + 2e-3))
                elif per:
                    c = per[0]
                    op(("A", c, x), d, PHASES[2], part(c, x) + 2e-3, [("b", c)])
                    values.append((op(("R", c, x), d, PHASES[3], part(c, x) + 2e-3),
                                   part(c, x) + 2e-3))
                values += [(("b", c), part(c, x)) for c in members if not batch[c]]
            if d == dx:
                op(b, dx, phase, 0.0, [item for item, _ in values])
                continue
            sent, k0 = values[0]
            if len(values) > 1:
                sent = op(("p", x, d), d, phase, key(x) - 0.25, [item for item, _ in values])
                k0 = key(x) - 0.25
            op(b, dx, phase, 0.0, [op(("g", x, d), dx, phase, k0 + 1e-3, [sent])])
    segment: dict = {}
    info: list[tuple[int, bool, bool]] = []
    for phase in PHASES:
        items = [item for item, o in ops.items() if o[1] == phase]
        order = _kahn(items, {item: ops[item][3] for item in items},
                      lambda item: (ops[item][2], ops[item][0]),
                      {item: ops[item][0] for item in items}, sticky=True)
        last = None
        for item in order:
            if ops[item][0] != last:
                last = ops[item][0]
                info.append((last, *phase))
            segment[item] = len(info) - 1
    fseg = [segment[("c", v)] for v in range(n)]
    bseg = [segment.get(("b", v), -1) for v in range(n)]
    receives = {(item[1], item[2], item[0] == "g"): s for item, s in segment.items()
                if item[0] in ("r", "g")}
    return fseg, bseg, info, receives


def _states(arrays, sinks: list[int], loss: int) -> dict[int, int]:
    """Persistent state updates (batch-norm running statistics, the graph's meta "updates"):
    each output other than the loss computes the new value of the one source of its size it
    reads that does not lead to the loss (not a graph edge, so read off the structure)."""
    out_ptr, out_idx = arrays.out_ptr.tolist(), arrays.out_idx.tolist()
    in_ptr, in_idx = arrays.in_ptr.tolist(), arrays.in_idx.tolist()
    reach = [False] * arrays.n               # leads to the loss
    if loss >= 0:
        reach[loss] = True
    for v in range(arrays.n - 1, -1, -1):
        reach[v] = reach[v] or any(reach[c] for c in out_idx[out_ptr[v]:out_ptr[v + 1]])
    out = {}
    for v in sinks:
        if v == loss:
            continue
        seen, stack, found = {v}, [v], []
        while stack:
            w = stack.pop()
            for u in in_idx[in_ptr[w]:in_ptr[w + 1]]:
                if u not in seen and not reach[u]:
                    seen.add(u)
                    stack.append(u)
                    if arrays.is_source[u] and arrays.size[u] == arrays.size[v]:
                        found.append(u)
        if len(found) == 1:
            out[v] = found[0]
    return out


def _kahn(items, deps: dict, priority, device, sticky: bool) -> list:
    """A topological order of `items` (deps: item -> items it waits for), smallest priority
    first; with `sticky`, staying on the current device while it has ready items (as
    executor/plan.py `_order`)."""
    users: dict = {}
    waiting = {}
    for x in items:
        waiting[x] = len(deps[x])
        for u in deps[x]:
            users.setdefault(u, []).append(x)
    rank = {x: i for i, x in enumerate(items)}
    ready: dict[int, list] = {}

    def push(x):
        heapq.heappush(ready.setdefault(device[x], []), (priority(x), rank[x], x))
    for x in items:
        if not waiting[x]:
            push(x)
    out: list = []
    current = None
    while any(ready.values()):
        if not sticky or not ready.get(current):
            current = min((h[0], d) for d, h in ready.items() if h)[1]
        x = heapq.heappop(ready[current])[2]
        out.append(x)
        for w in users.get(x, []):
            waiting[w] -= 1
            if not waiting[w]:
                push(w)
    return out


def segment_edges(tasks, segments, copies, forward, backward, sends, returns, place,
                  grad, inputs) -> None:
    """Barriers around each segment instance (`executor_segments`): its ops start after its start
    barrier, which waits for the transfers into them or received in it and the device's
    previous segment of the phase; its end barrier waits for its ops, and the transfers out of
    them wait for it."""
    fseg, bseg, info, receives = segments
    pairs: dict[tuple[int, int], tuple[int, int]] = {}

    def barriers(s: int, i: int) -> tuple[int, int]:
        if (s, i) not in pairs:
            _, back, per_mb = info[s]
            j = i if per_mb else SHARED
            pairs[s, i] = (tasks.add(-1, 0.0, (int(back), j, -1), j, back),
                           tasks.add(-1, 0.0, (int(back), j, -1), j, back))
            tasks.edge(*pairs[s, i])          # a segment of receives only waits for them
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
    for (u, d, back), s in receives.items():   # a receive holds up the segment it is in
        t = (returns if back else sends).get((u, d))
        for i in range(copies[u] if t is not None else 0):
            tasks.edge(t + i, barriers(s, i)[0])
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
