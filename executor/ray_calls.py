"""How the Ray executor's plain path cuts a step into actor calls (pure data, no Ray).

An actor call costs ~1 ms here, more than a small model's block, so the plain path runs a run
of consecutive blocks of one device as one call. The calls are found in rounds, as a
bulk-synchronous machine would run the plan: in each round every device runs, in program
order, the blocks whose receives were all sent in earlier rounds; those blocks are its call
of the round. A call ends early after a block that sends what a waiting device (one that
can run nothing this round) needs, so the pipeline keeps its overlap: in 1F1B the last
stage's backward block hands its gradient over before the next forward block runs.
The rule uses only the plan's structure, no timings. Merging changes neither the blocks a
device runs nor their order, so results stay bit-identical, and every call's inputs come
from calls of earlier rounds, so submitting the calls in round order is a topological order.
"""
from __future__ import annotations

from typing import NamedTuple

from executor.errors import ExecutorError
from executor.program import Plan, Program, TransferKey, transfer_key


class Call(NamedTuple):
    """One actor call: consecutive `blocks` of `device`; `targets`: the devices its sends go
    to (its returns, one packet each, in this order); `sources`: per packet it takes, (index
    of an earlier call, position of the packet among that call's returns)."""

    device: int
    blocks: tuple[int, ...]
    targets: tuple[int, ...]
    sources: tuple[tuple[int, int], ...]


def call_targets(program: Program, blocks: tuple[int, ...]) -> tuple[int, ...]:
    """The devices that the sends of these blocks go to, sorted: a call's returns."""
    return tuple(sorted({s.target for i in blocks for s in program.blocks[i].sends}))


def block_calls(plan: Plan) -> tuple[Call, ...]:
    """One call per block, in the plan's global order (no merging)."""
    return _with_sources(plan, [(d, (i,)) for d, i in plan.order])


def plan_calls(plan: Plan) -> tuple[Call, ...]:
    """The calls of a step in rounds (module docstring), in submission order."""
    programs = plan.programs
    position = [0] * plan.k
    sent: set[TransferKey] = set()
    runs: list[tuple[int, tuple[int, ...]]] = []
    while any(position[p.device] < len(p.blocks) for p in programs):
        ready = [_ready_run(p, position[p.device], sent) for p in programs]
        if not any(ready):
            stuck = [f"d{p.device}:{p.blocks[position[p.device]].label}" for p in programs
                     if position[p.device] < len(p.blocks)]
            raise ExecutorError(f"plan: the device programs deadlock; blocked: "
                                f"{', '.join(stuck)}")
        waiting = [(p, position[p.device]) for p in programs if not ready[p.device]]
        for p in programs:
            run = []
            for i in ready[p.device]:
                run.append(i)
                block = p.blocks[i]
                keys = {transfer_key(p, block, s) for s in block.sends}
                sent |= keys        # seen by the next round only: this one's runs are fixed
                if any(_awaits(q, j, keys) for q, j in waiting):
                    break
            if run:
                runs.append((p.device, tuple(run)))
                position[p.device] = run[-1] + 1
    return _with_sources(plan, runs)


def _ready_run(program: Program, start: int, sent: set[TransferKey]) -> list[int]:
    """The blocks from `start` on whose receives have all been sent, up to the first that
    waits."""
    run = []
    for i in range(start, len(program.blocks)):
        block = program.blocks[i]
        if not all(transfer_key(program, block, r) in sent for r in block.receives):
            break
        run.append(i)
    return run


def _awaits(program: Program, index: int, keys: set[TransferKey]) -> bool:
    """Whether block `index` of `program` receives one of `keys`."""
    blocks = program.blocks
    return index < len(blocks) and any(transfer_key(program, blocks[index], r) in keys
                                       for r in blocks[index].receives)


def _with_sources(plan: Plan, runs: list[tuple[int, tuple[int, ...]]]) -> tuple[Call, ...]:
    """Calls of these runs (in submission order) with their targets and source packets."""
    sender: dict[TransferKey, tuple[int, int]] = {}     # key -> (call, packet position)
    calls = []
    for n, (d, blocks) in enumerate(runs):
        program = plan.programs[d]
        targets = call_targets(program, blocks)
        sources = set()
        for i in blocks:
            block = program.blocks[i]
            for r in block.receives:
                key = transfer_key(program, block, r)
                if key not in sender:
                    raise ExecutorError(f"plan: device {d} block {block.label} receives "
                                        f"{key.tensor!r} before device {key.source} sends it")
                sources.add(sender[key])
        for i in blocks:
            block = program.blocks[i]
            for s in block.sends:
                sender[transfer_key(program, block, s)] = (n, targets.index(s.target))
        calls.append(Call(d, blocks, targets, tuple(sorted(sources))))
    return tuple(calls)
