"""How the Ray executor cuts a plan into actor calls and routes tensors between them.

Pure data, no Ray: a call is a run of consecutive blocks of one device with no transfer
inside it; what one call sends to one receiving call travels as one packet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from executor.errors import ExecutorError
from executor.program import Plan

Call = tuple[int, tuple[int, ...]]            # (device, indices of the blocks it runs)


@dataclass(frozen=True)
class Routes:
    """The actor calls of a step and where their sends go.

    `calls`: in a topological order, each a run of consecutive blocks of one device with no
    transfer inside the run (only its first block receives, only its last block sends), so
    fusing them into one call delays nothing and saves a hop. `packets[call]`: what the call
    returns, in order, as (receiving call, tensor names); `incoming[call]`: the packets it
    takes, as (sending call, position among that call's packets)."""

    calls: tuple[Call, ...]
    packets: Mapping[Call, tuple[tuple[Call, tuple[str, ...]], ...]]
    incoming: Mapping[Call, tuple[tuple[Call, int], ...]]

    def positions(self, device: int) -> dict[tuple[int, ...], dict[tuple[str, int], int]]:
        """For each call of `device` (by its blocks): (tensor name it arrives as, target
        device) -> position of its packet."""
        return {blocks: {(name, target[0]): pos
                         for pos, (target, names) in enumerate(self.packets[(d, blocks)])
                         for name in names}
                for d, blocks in self.calls if d == device}


def plan_routes(plan: Plan) -> Routes:
    """Match every Send of the plan with the block that receives it (the local executor's
    mailbox key: tensor, micro-batch, source, target), fuse blocks into calls and group the
    sends of each call by receiving call."""
    sender: dict[tuple, tuple[int, int]] = {}
    for d, i in plan.order:
        p = plan.programs[d]
        b = p.blocks[i]
        for s in b.sends:
            sender[(s.arrives_as, p.key(s.tensor, b.micro_batch)[1], d, s.target)] = (d, i)
    receives: dict[tuple[int, int], list[tuple[tuple[int, int], str]]] = {}
    for t, j in plan.order:
        p = plan.programs[t]
        b = p.blocks[j]
        for r in b.receives:
            source = sender.get((r.tensor, p.key(r.tensor, b.micro_batch)[1], r.source, t))
            if source is None:
                raise ExecutorError(f"plan: device {t} block {b.label} receives {r.tensor!r} "
                                    f"from device {r.source}, which never sends it")
            receives.setdefault((t, j), []).append((source, r.tensor))
    fused: dict[int, list[list[int]]] = {}     # per device, runs of blocks (in its order)
    for d, i in plan.order:
        runs = fused.setdefault(d, [])
        if runs and not plan.programs[d].blocks[runs[-1][-1]].sends and (d, i) not in receives:
            runs[-1].append(i)
        else:
            runs.append([i])
    first = {(d, run[0]): (d, tuple(run)) for d, runs in fused.items() for run in runs}
    ordered = [first[block] for block in plan.order if block in first]
    block_call = {(call[0], i): call for call in ordered for i in call[1]}
    grouped: dict[Call, dict[Call, list[str]]] = {call: {} for call in ordered}
    for (t, j), sources in receives.items():
        for source, name in sources:
            grouped[block_call[source]].setdefault(block_call[(t, j)], []).append(name)
    packets = {src: tuple((dst, tuple(names)) for dst, names in targets.items())
               for src, targets in grouped.items()}
    incoming: dict[Call, list[tuple[Call, int]]] = {call: [] for call in ordered}
    for src, targets in packets.items():
        for pos, (dst, _) in enumerate(targets):
            incoming[dst].append((src, pos))
    return Routes(calls=tuple(ordered), packets=packets,
                  incoming={c: tuple(v) for c, v in incoming.items()})
