"""How the Ray executor cuts a plan into actor calls and routes tensors between them.

Pure data, no Ray. A call is a run of consecutive blocks of one device; what one call sends to
one receiving call travels as one packet. Calls start as the runs with no transfer inside
(fusing those delays nothing). Then, since every call costs a hop (~0.1-0.3 ms on compiled
graphs here) that tiny blocks cannot hide, consecutive calls of a device are merged while a
simulated step gets shorter: a merged call receives all its inputs first and sends all its
outputs last, so merging trades pipelining for fewer calls, and only calls whose later part
does not wait (through other calls) for the earlier part's outputs can merge. Merging changes
neither the blocks a device runs nor their order, so results stay bit-identical.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from autodiff.ops.registry import registry
from executor.errors import ExecutorError
from executor.program import Compute, Plan

Call = tuple[int, tuple[int, ...]]            # (device, indices of the blocks it runs)
Transfer = tuple[int, str, int]               # (sending block, tensor name, receiving block)

# The cost model of `merge_calls` (seconds; measured here, shared/RAY.md and benchmarks):
HOP_SECONDS = 3e-4                 # a compiled-graph hop between actors, small payload
CALL_SECONDS = 2e-4                # an actor call's own cost (channel reads and writes)
BYTES_PER_SECOND = 1e9             # actor-to-actor bandwidth
FLOPS_PER_SECOND = 2e10            # one core, numpy
NODE_SECONDS = 4e-6                # numpy dispatch per node


@dataclass(frozen=True)
class Routes:
    """The actor calls of a step and where their sends go.

    `calls`: in a topological order, each a run of consecutive blocks of one device.
    `packets[call]`: what the call returns, in order, as (receiving call, transfers), a
    transfer being (sending block, tensor name it arrives as, receiving block);
    `incoming[call]`: the packets it takes, as (sending call, position among that call's
    packets)."""

    calls: tuple[Call, ...]
    packets: Mapping[Call, tuple[tuple[Call, tuple[Transfer, ...]], ...]]
    incoming: Mapping[Call, tuple[tuple[Call, int], ...]]

    def positions(self, device: int) -> dict[tuple[int, ...], dict[tuple[int, str, int],
                                                                    tuple[int, int]]]:
        """For each call of `device` (by its blocks): (sending block, tensor name it arrives
        as, target device) -> (position of its packet, receiving block)."""
        return {blocks: {(i, name, target[0]): (pos, j)
                         for pos, (target, transfers) in enumerate(self.packets[(d, blocks)])
                         for i, name, j in transfers}
                for d, blocks in self.calls if d == device}


MERGES = ("cost", "none", "all")


def plan_routes(plan: Plan, merge: str = "cost",
                seconds: Mapping[tuple[int, int], float] | None = None) -> Routes:
    """Match every Send of the plan with the block that receives it (the local executor's
    mailbox key: tensor, micro-batch, source, target), fuse blocks into calls, merge calls
    (`merge`: "cost" while the cost model says the step gets shorter, with `seconds` the
    compute time per (device, block), default `block_seconds`; "none"; "all": the fewest
    calls), and group the sends of each call by receiving call."""
    if merge not in MERGES:
        raise ExecutorError(f"merge: expected one of {', '.join(MERGES)}, got {merge!r}")
    sender: dict[tuple, tuple[int, int]] = {}
    for d, i in plan.order:
        p = plan.programs[d]
        b = p.blocks[i]
        for s in b.sends:
            sender[(s.arrives_as, p.key(s.tensor, b.micro_batch)[1], d, s.target)] = (d, i)
    edges: list[tuple[tuple[int, int], tuple[int, int], str]] = []   # (from, to, name)
    for t, j in plan.order:
        p = plan.programs[t]
        b = p.blocks[j]
        for r in b.receives:
            source = sender.get((r.tensor, p.key(r.tensor, b.micro_batch)[1], r.source, t))
            if source is None:
                raise ExecutorError(f"plan: device {t} block {b.label} receives {r.tensor!r} "
                                    f"from device {r.source}, which never sends it")
            edges.append((source, (t, j), r.tensor))
    receiving = {dst for _, dst, _ in edges}
    runs: dict[int, list[list[int]]] = {}     # per device, runs of blocks (in its order)
    for d, i in plan.order:
        mine = runs.setdefault(d, [])
        if mine and not plan.programs[d].blocks[mine[-1][-1]].sends and (d, i) not in receiving:
            mine[-1].append(i)
        else:
            mine.append([i])
    if merge == "cost":
        runs = merge_calls(plan, runs, edges, seconds)
    elif merge == "all":
        runs = _fewest(plan, runs, edges)
    return _routes(plan, runs, edges)


def _routes(plan: Plan, runs: dict[int, list[list[int]]], edges) -> Routes:
    """Routes of these runs: calls in a topological order (by their first block's place in
    the plan's order among the calls that are ready), packets and incoming."""
    block_call = {(d, i): (d, tuple(run)) for d, mine in runs.items() for run in mine
                  for i in run}
    grouped: dict[Call, dict[Call, list[Transfer]]] = {call: {} for call in block_call.values()}
    for (s, i), (t, j), name in edges:
        grouped[block_call[(s, i)]].setdefault(block_call[(t, j)], []).append((i, name, j))
    place = {block: n for n, block in enumerate(plan.order)}
    after: dict[Call, set[Call]] = {call: set() for call in grouped}
    for src, targets in grouped.items():
        after[src].update(dst for dst in targets if dst != src)
    for d, mine in runs.items():
        for a, b in zip(mine, mine[1:]):
            after[(d, tuple(a))].add((d, tuple(b)))
    waiting = {call: 0 for call in grouped}
    for src, dsts in after.items():
        for dst in dsts:
            waiting[dst] += 1
    ready = [(place[(c[0], c[1][0])], c) for c, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    ordered: list[Call] = []
    while ready:
        _, call = heapq.heappop(ready)
        ordered.append(call)
        for dst in after[call]:
            waiting[dst] -= 1
            if waiting[dst] == 0:
                heapq.heappush(ready, (place[(dst[0], dst[1][0])], dst))
    if len(ordered) != len(grouped):
        raise ExecutorError("plan: the actor calls wait for each other in a cycle")
    packets = {src: tuple((dst, tuple(ts)) for dst, ts in targets.items())
               for src, targets in grouped.items()}
    incoming: dict[Call, list[tuple[Call, int]]] = {call: [] for call in ordered}
    for src in ordered:
        for pos, (dst, _) in enumerate(packets[src]):
            incoming[dst].append((src, pos))
    return Routes(calls=tuple(ordered), packets=packets,
                  incoming={c: tuple(v) for c, v in incoming.items()})


def block_seconds(plan: Plan) -> dict[tuple[int, int], float]:
    """A rough compute time of every (device, block): FLOPs of its nodes at one core's rate
    plus numpy's dispatch cost per node (a received tensor's shape from the training graph;
    unknown shapes count 0 FLOPs)."""
    ops = registry()
    graph = {n.name: n for n in plan.training.nodes}
    out: dict[tuple[int, int], float] = {}
    for p in plan.programs:
        for i, b in enumerate(p.blocks):
            flops, nodes = 0, 0
            for s in b.steps:
                if not isinstance(s, Compute):
                    continue
                for name in s.nodes:
                    node = p.nodes[name]
                    nodes += 1
                    shapes = [getattr(p.nodes.get(x) or graph.get(x), "shape", None)
                              for x in node.inputs]
                    op = ops.get(node.op)
                    if op is None or node.is_source or any(sh is None for sh in shapes):
                        continue
                    try:
                        flops += int(op.flops(shapes, node.shape, **node.attrs))
                    except Exception:        # an op whose FLOPs rule cannot read these attrs
                        pass
            out[(p.device, i)] = flops / FLOPS_PER_SECOND + nodes * NODE_SECONDS
    return out


def simulate(plan: Plan, runs: dict[int, list[list[int]]], edges,
             seconds: Mapping[tuple[int, int], float]) -> float:
    """Step time of these calls under the cost model: a call starts when its device is free
    and its packets have arrived (a hop plus bytes over bandwidth after the sending call
    ends), and takes its own cost plus its blocks' compute."""
    routes = _routes(plan, runs, edges)
    cost = {call: CALL_SECONDS + sum(seconds[(call[0], i)] for i in call[1])
            for call in routes.calls}
    free = np.zeros(plan.k)
    end: dict[Call, float] = {}
    for call in routes.calls:
        start = free[call[0]]
        for src, pos in routes.incoming[call]:
            nbytes = sum(plan.nbytes[name] for _, name, _ in routes.packets[src][pos][1])
            start = max(start, end[src] + HOP_SECONDS + nbytes / BYTES_PER_SECOND)
        end[call] = free[call[0]] = start + cost[call]
    return float(free.max())


def merge_calls(plan: Plan, runs: dict[int, list[list[int]]], edges,
                seconds: Mapping[tuple[int, int], float] | None = None
                ) -> dict[int, list[list[int]]]:
    """The better (simulated) of two merges: greedy from the given calls, and greedy from
    the fewest calls (every merge that does not make calls wait in a cycle: for tiny
    blocks, where no single merge shortens the critical path but all of them do)."""
    seconds = block_seconds(plan) if seconds is None else seconds
    candidates = [_greedy(plan, runs, edges, seconds),
                  _greedy(plan, _fewest(plan, runs, edges), edges, seconds)]
    return min(candidates, key=lambda r: simulate(plan, r, edges, seconds))


def _merged(runs: dict[int, list[list[int]]], d: int, n: int) -> dict[int, list[list[int]]]:
    """`runs` with calls n and n + 1 of device d merged."""
    mine = runs[d]
    return {**runs, d: mine[:n] + [mine[n] + mine[n + 1]] + mine[n + 2:]}


def _fewest(plan: Plan, runs: dict[int, list[list[int]]], edges) -> dict[int, list[list[int]]]:
    """Merge consecutive calls of each device, first to last, wherever no cycle results."""
    for d in list(runs):
        n = 0
        while n < len(runs[d]) - 1:
            trial = _merged(runs, d, n)
            try:
                _routes(plan, trial, edges)
            except ExecutorError:
                n += 1
                continue
            runs = trial
    return runs


def _greedy(plan: Plan, runs: dict[int, list[list[int]]], edges, seconds
            ) -> dict[int, list[list[int]]]:
    """Apply the merge that shortens the simulated step most, until none does."""
    best = simulate(plan, runs, edges, seconds)
    while True:
        choice = None
        for d, mine in runs.items():
            for n in range(len(mine) - 1):
                trial = _merged(runs, d, n)
                try:
                    t = simulate(plan, trial, edges, seconds)
                except ExecutorError:        # the merged call would wait for itself
                    continue
                if t < best - 1e-9:
                    best, choice = t, trial
        if choice is None:
            return runs
        runs = choice
