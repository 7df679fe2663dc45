"""Emulated devices: the real executor with every step padded to its cluster-model time.

Each device keeps a virtual clock in real seconds, dilated by a factor D so the real compute
fits inside the model's (executor/timing.py's rules, enforced for real):

- the clock starts at a common t0 the driver puts in the step command;
- after each Compute, Accumulate, ApplyUpdate or SetState step it advances by the step's
  model seconds * D and the device sleeps until then if the real work finished earlier
  (absolute deadlines: lateness is caught up, never accumulated);
- a Send stamps its message with its virtual arrival, max(clock, link free) + transfer * D,
  the link's free time kept per target by the sender (each directed link has one sender);
- a Recv waits until max(physical arrival, stamp) and sets the clock to at least the stamp.

The step then lasts its simulated time * D, so (driver wall time from t0) / D is the step time
measured in the emulated cluster's seconds. `choose_dilation` picks D from warm local runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from executor.program import Plan, Recv, Send
from executor.timing import StepCosts, simulate_plan
from partition.cluster import Cluster

SAFETY = 3.0            # D = SAFETY * the largest real/model compute ratio of a device
MIN_STEP_SECONDS = 0.1  # D is at least large enough that an emulated step takes this long


@dataclass(frozen=True)
class Emulation:
    """What an emulated step needs: per device, block and step the model seconds times D (a
    Send's: its transfer; a Recv's: 0), the dilation D, and the cluster's step overhead."""

    seconds: tuple[tuple[tuple[float, ...], ...], ...]
    dilation: float
    step_overhead: float

    def to_dict(self) -> dict:
        return {"dilation": self.dilation, "step_overhead": self.step_overhead}


def step_seconds(plan: Plan, cluster: Cluster, optimizer: str | None = None
                 ) -> tuple[tuple[tuple[float, ...], ...], ...]:
    """Model seconds of every step of every device's blocks (StepCosts; Send: transfer)."""
    costs = StepCosts(plan, cluster, optimizer)
    return tuple(tuple(tuple(costs.transfer(p.device, s.target, s.arrives_as)
                             if isinstance(s, Send) else 0.0 if isinstance(s, Recv)
                             else costs.step(p.device, s) for s in block.steps)
                       for block in p.blocks) for p in plan.programs)


def choose_dilation(plan: Plan, seconds, real_block_seconds, predicted: float,
                    safety: float = SAFETY, min_step: float = MIN_STEP_SECONDS) -> float:
    """D = safety * the largest real / model compute ratio of a device (over its blocks
    with model compute time; per device, not per block, since a padded device catches up
    an overrun block's lateness in its later slack: absolute deadlines), and at least
    min_step / `predicted` (the simulated step), so an emulated step is long against the
    jitter of waking up and of the pipes. `seconds`: `step_seconds`;
    `real_block_seconds[d][i]`: real compute seconds of block i of device d."""
    ratio = 0.0
    for program, blocks in zip(plan.programs, seconds):
        model = real = 0.0
        for i, (block, steps) in enumerate(zip(program.blocks, blocks)):
            compute = sum(t for s, t in zip(block.steps, steps)
                          if not isinstance(s, (Send, Recv)))
            if compute > 0:
                model += compute
                real += real_block_seconds[program.device][i]
        if model > 0:
            ratio = max(ratio, real / model)
    floor = min_step / predicted if predicted > 0 else 1.0
    return float(max(safety * ratio, floor, 1.0))


class VirtualClock:
    """One emulated device's clock (module docstring); `seconds[i][j]` already dilated."""

    def __init__(self, seconds, k: int):
        self.seconds = seconds
        self.now = 0.0
        self.link_free = np.zeros(k)

    def start(self, t0: float) -> None:
        self.now = float(t0)
        self.link_free[:] = t0

    def advance(self, block: int, step: int) -> None:
        """After a compute-like step: the clock moves by its padded time; sleep till then."""
        self.now += self.seconds[block][step]
        _sleep_until(self.now)

    def stamp(self, block: int, step: int, target: int) -> float:
        """A Send's virtual arrival (the link to `target` is busy until then)."""
        arrival = max(self.now, self.link_free[target]) + self.seconds[block][step]
        self.link_free[target] = arrival
        return float(arrival)

    def arrived(self, stamp: float | None) -> None:
        """A Recv got its tensor: wait for its virtual arrival; the clock is at least there."""
        if stamp is not None:
            _sleep_until(stamp)
            self.now = max(self.now, stamp)


def _sleep_until(deadline: float) -> None:
    left = deadline - time.time()
    if left > 0:
        time.sleep(left)


def real_block_seconds(plan: Plan, optimizer, seed: int, per_mb: list[dict]
                       ) -> list[list[float]]:
    """Real compute seconds of every block of every device (the quickest of 3 local runs
    after a warm-up, in this process, parameters from `seed`): what D must cover."""
    from autodiff.models.init import init_param
    from executor.transport import Mailbox
    from executor.worker import DeviceWorker

    workers = [DeviceWorker(p, {name: init_param(p.nodes[name], seed) for name in p.params},
                            optimizer) for p in plan.programs]
    best = [[float("inf")] * len(p.blocks) for p in plan.programs]
    for run in range(4):                # run 0 warms up
        mailbox = Mailbox(plan.k)
        for w in workers:
            w.begin_step(0, {(x, i): feeds[x] for i, feeds in enumerate(per_mb)
                             for x in w.program.inputs})
        for d, i in plan.order:
            start = time.perf_counter()
            workers[d].run(i, mailbox)
            if run:
                best[d][i] = min(best[d][i], time.perf_counter() - start)
    return best


def make_emulation(plan: Plan, cluster: Cluster, optimizer, seed: int, per_mb: list[dict]
                   ) -> Emulation:
    """The Emulation of `plan` on `cluster`: model seconds per step and the dilation chosen
    from one local timing of the blocks on `per_mb` (one step's micro-batch feeds)."""
    name = getattr(optimizer, "name", optimizer)
    seconds = step_seconds(plan, cluster, name)
    real = real_block_seconds(plan, optimizer, seed, per_mb)
    predicted = simulate_plan(plan, cluster, name).step_time
    dilation = choose_dilation(plan, seconds, real, predicted)
    dilated = tuple(tuple(tuple(t * dilation for t in steps) for steps in blocks)
                    for blocks in seconds)
    return Emulation(dilated, dilation, cluster.step_overhead)
