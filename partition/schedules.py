"""Pipeline schedules as data: per stage an ordered list of actions such as `1F0` (stage 1,
forward, micro-batch 0) or `1B0`, validated and printable as a step x stage grid.

A schedule only orders computation (executor/plan.py adds the sends and receives). Stages
depend on each other through forward edges `(a, b)` (a tensor flows from stage a to stage b;
default: the chain s -> s+1): F(b, i) needs F(a, i), and B(a, i) needs B(b, i).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable, Sequence

from partition.errors import ScheduleError

_ACTION = re.compile(r"^(\d+)([FB])(\d+)$")


@dataclass(frozen=True, order=True)
class Action:
    """One unit of pipeline work: stage `stage` runs its forward ('F') or backward ('B') part
    for micro-batch `micro_batch`."""

    stage: int
    kind: str
    micro_batch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.micro_batch}"

    @classmethod
    def parse(cls, text: str) -> "Action":
        """`Action.parse("1F0") == Action(1, "F", 0)`."""
        match = _ACTION.match(text.strip())
        if not match:
            raise ScheduleError(f"action {text!r}: expected <stage><F|B><micro-batch>, e.g. 1F0")
        return cls(int(match[1]), match[2], int(match[3]))


@dataclass(frozen=True)
class Schedule:
    """Per stage, the order in which it runs its forward and backward micro-batch actions."""

    name: str
    num_stages: int
    micro_batches: int
    actions: tuple[tuple[Action, ...], ...]

    def __str__(self) -> str:
        return render(self)

    def to_dict(self) -> dict:
        return {"name": self.name, "num_stages": self.num_stages,
                "micro_batches": self.micro_batches,
                "actions": [[str(a) for a in stage] for stage in self.actions]}


def _check_sizes(num_stages: int, micro_batches: int) -> None:
    for field, value in (("num_stages", num_stages), ("micro_batches", micro_batches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScheduleError(f"schedule: {field} must be a positive integer, got {value!r}")


def gpipe(num_stages: int, micro_batches: int) -> Schedule:
    """GPipe: every stage runs all forwards, then all backwards (in micro-batch order)."""
    _check_sizes(num_stages, micro_batches)
    actions = tuple(tuple([Action(s, "F", i) for i in range(micro_batches)]
                          + [Action(s, "B", i) for i in range(micro_batches)])
                    for s in range(num_stages))
    return Schedule("gpipe", num_stages, micro_batches, actions)


def one_f_one_b(num_stages: int, micro_batches: int) -> Schedule:
    """1F1B (PipeDream-flush): stage s warms up with min(S-s-1, m) forwards, then alternates
    one forward and one backward, then drains; at most S-s micro-batches are in flight."""
    _check_sizes(num_stages, micro_batches)
    stages = []
    for s in range(num_stages):
        warm = min(num_stages - s - 1, micro_batches)
        acts = [Action(s, "F", i) for i in range(warm)]
        for f in range(warm, micro_batches):
            acts += [Action(s, "F", f), Action(s, "B", f - warm)]
        acts += [Action(s, "B", i) for i in range(micro_batches - warm, micro_batches)]
        stages.append(tuple(acts))
    return Schedule("1f1b", num_stages, micro_batches, tuple(stages))


def sequential(num_stages: int, micro_batches: int) -> Schedule:
    """No overlap between micro-batches: every stage runs F0 B0 F1 B1 ... (a reference)."""
    _check_sizes(num_stages, micro_batches)
    actions = tuple(tuple(a for i in range(micro_batches)
                          for a in (Action(s, "F", i), Action(s, "B", i)))
                    for s in range(num_stages))
    return Schedule("sequential", num_stages, micro_batches, actions)


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b, "sequential": sequential}


def make_schedule(name: str, num_stages: int, micro_batches: int) -> Schedule:
    """The schedule called `name` (gpipe, 1f1b, sequential) for S stages and m micro-batches."""
    try:
        builder = SCHEDULES[name]
    except KeyError:
        raise ScheduleError(f"schedule: unknown schedule {name!r} (expected one of "
                            f"{', '.join(SCHEDULES)})") from None
    return builder(num_stages, micro_batches)


def _dependencies(schedule: Schedule, edges: Iterable[tuple[int, int]] | None):
    """`needs(action)`: the actions it waits for (default edges: the chain s -> s+1)."""
    edges = [(s, s + 1) for s in range(schedule.num_stages - 1)] if edges is None else edges
    senders: dict[int, list[int]] = {s: [] for s in range(schedule.num_stages)}
    receivers: dict[int, list[int]] = {s: [] for s in range(schedule.num_stages)}
    for a, b in edges:
        if a == b:
            continue
        if not (0 <= a < schedule.num_stages and 0 <= b < schedule.num_stages):
            raise ScheduleError(f"schedule {schedule.name}: edge ({a}, {b}) names a stage outside "
                                f"0..{schedule.num_stages - 1}")
        senders[b].append(a)
        receivers[a].append(b)

    def needs(action: Action) -> list[Action]:
        s, i = action.stage, action.micro_batch
        if action.kind == "F":
            return [Action(a, "F", i) for a in senders[s]]
        return [Action(s, "F", i)] + [Action(b, "B", i) for b in receivers[s]]
    return needs


def timeline(schedule: Schedule, edges: Iterable[tuple[int, int]] | None = None
             ) -> list[tuple[Action | None, ...]]:
    """Run the schedule with one time unit per action: per time step, what each stage runs
    (None = idle). Raises ScheduleError if no stage can make progress (a deadlock)."""
    needs = _dependencies(schedule, edges)
    position = [0] * schedule.num_stages
    done: set[Action] = set()
    total = sum(len(stage) for stage in schedule.actions)
    rows: list[tuple[Action | None, ...]] = []
    while len(done) < total:
        heads = [stage[p] if p < len(stage) else None
                 for p, stage in zip(position, schedule.actions)]
        row = [a if a is not None and all(d in done for d in needs(a)) else None for a in heads]
        if all(a is None for a in row):
            blocked = [f"{a} waits for {', '.join(str(d) for d in needs(a) if d not in done)}"
                       for a in heads if a is not None]
            raise ScheduleError(f"schedule {schedule.name}: deadlock at step {len(rows)}: "
                                + "; ".join(blocked))
        for s, action in enumerate(row):
            if action is not None:
                done.add(action)
                position[s] += 1
        rows.append(tuple(row))
    return rows


def validate(schedule: Schedule, edges: Iterable[tuple[int, int]] | None = None) -> None:
    """Check that every stage runs each (micro-batch, F/B) exactly once, its own forward before
    its backward, that the dependencies can be met (no deadlock) and, for 1F1B, that stage s
    never holds more than S - s micro-batches in flight. Raises ScheduleError naming the action."""
    S, m = schedule.num_stages, schedule.micro_batches
    if len(schedule.actions) != S:
        raise ScheduleError(f"schedule {schedule.name}: {len(schedule.actions)} action lists for "
                            f"{S} stages")
    for s, stage in enumerate(schedule.actions):
        seen: set[tuple[str, int]] = set()
        for action in stage:
            where = f"schedule {schedule.name}: stage {s}: action {action}"
            if action.stage != s:
                raise ScheduleError(f"{where} belongs to stage {action.stage}")
            if action.kind not in ("F", "B") or not 0 <= action.micro_batch < m:
                raise ScheduleError(f"{where}: expected kind F or B and micro-batch in 0..{m - 1}")
            if (action.kind, action.micro_batch) in seen:
                raise ScheduleError(f"{where} appears twice")
            if action.kind == "B" and ("F", action.micro_batch) not in seen:
                raise ScheduleError(f"{where} runs before {s}F{action.micro_batch}")
            seen.add((action.kind, action.micro_batch))
        missing = [f"{s}{kind}{i}" for kind in "FB" for i in range(m) if (kind, i) not in seen]
        if missing:
            raise ScheduleError(f"schedule {schedule.name}: stage {s} never runs "
                                f"{', '.join(missing)}")
    if schedule.name == "1f1b":
        for s, stage in enumerate(schedule.actions):
            in_flight = 0
            for action in stage:
                in_flight += 1 if action.kind == "F" else -1
                if in_flight > S - s:
                    raise ScheduleError(f"schedule 1f1b: stage {s} holds {in_flight} micro-batches "
                                        f"in flight at {action}, more than S - s = {S - s}")
    timeline(schedule, edges)


def bubble_fraction(schedule: Schedule, edges: Iterable[tuple[int, int]] | None = None) -> float:
    """Idle share of the step x stage grid when every action takes one time unit."""
    rows = timeline(schedule, edges)
    idle = sum(a is None for row in rows for a in row)
    return idle / (len(rows) * schedule.num_stages) if rows else 0.0


def render(schedule: Schedule, edges: Iterable[tuple[int, int]] | None = None) -> str:
    """The schedule as a step x stage grid, e.g. for GPipe with 2 stages and 2 micro-batches:

    step  stage0  stage1
       0  0F0     .
       1  0F1     1F0
    ...
    """
    rows = timeline(schedule, edges)
    width = max([len(f"stage{schedule.num_stages - 1}")]
                + [len(str(a)) for row in rows for a in row if a is not None])
    header = "step  " + "  ".join(f"stage{s}".ljust(width) for s in range(schedule.num_stages))
    lines = [f"{schedule.name}: {schedule.num_stages} stages, {schedule.micro_batches} "
             f"micro-batches", header.rstrip()]
    for t, row in enumerate(rows):
        cells = "  ".join((str(a) if a is not None else ".").ljust(width) for a in row)
        lines.append(f"{t:>4}  {cells}".rstrip())
    return "\n".join(lines)


def parse_actions(stages: Sequence[Sequence[str]]) -> tuple[tuple[Action, ...], ...]:
    """Per-stage action strings (["0F0", "0B0"], ...) as Action tuples, for hand-written
    schedules."""
    return tuple(tuple(Action.parse(a) for a in stage) for stage in stages)


def peak_in_flight(spans: Iterable[tuple[float, float]]) -> int:
    """The most (start, end) spans of micro-batches open at one time; a span ending when
    another starts does not overlap it. Shared by both step simulators' reports."""
    events = sorted(event for start, end in spans for event in ((start, 1), (end, -1)))
    return max(accumulate((change for _, change in events), initial=0))
