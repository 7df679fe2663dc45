"""Faults, NaN and checkpoints of the Ray executor: restore, replay and roll back.

Faults: actors are created with `max_restarts` > 0, but Ray's transparent retries lose the
call order, so the executor does not rely on them. When a step fails with a dead actor
(RayActorError, a lost object, a serve call that ended),
every actor is killed and recreated from the last checkpoint the driver holds (params,
optimizer and persistent state, taken every `checkpoint_every` steps; before the first one,
the initial parameters), the steps since that checkpoint are replayed from their recorded
feeds (random ops draw from (seed, step, micro-batch)), their losses are checked against the
ones already reported, and the step is run again. Nothing is silently lost: a replay that
differs raises ExecutorError. A failure while restoring (another actor dying while the new
ones load the checkpoint or replay) counts as one more recovery of the same step, up to
`max_recoveries`, after which RecoveryError names the last fault.

Hangs: with `step_timeout`, a step (or a restore, or a checkpoint) that takes longer raises
StepTimeoutError inside the executor, which is a fault like a dead actor: every actor on the
driver's node is killed with SIGKILL (a stopped process answers no Ray call) and the step is
recovered as above. The pipes path notices within a second past the timeout.

NaN: each device reports the parameters whose gradient is not finite; a step whose loss or
gradients hold a NaN or an infinity is rolled back (restore and replay, as for a fault) so the
actors hold the parameters from before it; then `on_nan="stop"` raises NonFiniteError (the
step counter stays at that step, so a checkpoint taken now is the last good state) and
"skip" drops the step's update and goes on (a later replay skips it too).
"""
from __future__ import annotations

import logging
import time
from contextlib import suppress
from typing import Mapping, NamedTuple

import numpy as np

from executor import checkpoint as checkpoints
from executor.errors import ExecutorError, NonFiniteError, RecoveryError
from executor.local import merged_state, split_feeds

log = logging.getLogger("executor.ray_executor")

SKIPPED = "skipped"                 # a replay entry's losses when on_nan="skip" dropped the step


class ReplayEntry(NamedTuple):
    """A step since the last checkpoint: its number, micro-batch feeds, and the losses it
    reported (None while it runs; SKIPPED when on_nan="skip" dropped it)."""

    step: int
    per_mb: list
    losses: tuple[float, ...] | str | None = None


class Recovery:
    """The RayExecutor's steps with recovery, and its checkpoints (a mixin: the executor
    provides `_execute`, `_start`, `shutdown`, `_get`, `_watch`, `_kill_local_actors` and
    `_result`)."""

    def step(self, feeds: Mapping[str, np.ndarray], return_grads: bool = False) -> RayStepResult:
        """One training step on full-batch `feeds` (as LocalExecutor.step), recovering from a
        dead or hung actor by restoring the last checkpoint and replaying, and rolling back a
        step whose loss or gradients are not finite (module docstring)."""
        per_mb = split_feeds(self.graph, feeds, self.micro_batches)
        step = self.step_count
        if self.checkpoint_every is not None:
            self._replay.append(ReplayEntry(step, per_mb))
        try:
            return self._step(step, per_mb, return_grads)
        except NonFiniteError:                       # rolled back: the actors are consistent
            raise
        except BaseException:
            # the step did not happen: forget it, and (the actors may be mid-step) have the
            # next call restore them from the checkpoint first
            if self.checkpoint_every is not None:
                last = self._replay[-1] if self._replay else None
                if last is not None and last.step == step and last.losses is None:
                    self._replay.pop()
                self._needs_restore = True
            raise

    def _step(self, step: int, per_mb: list, return_grads: bool) -> RayStepResult:
        recoveries = 0
        due = self.checkpoint_every is not None and (step + 1) % self.checkpoint_every == 0
        while True:
            try:
                self._settle()
                start = time.perf_counter()
                reports = self._execute(step, per_mb, return_grads)
                seconds = time.perf_counter() - start
                bad = self._nonfinite(reports)
                if bad and self.on_nan is not None:
                    self._roll_back(step)
                state = self._gather_state(step + 1) if due and not (
                    bad and self.on_nan == "stop") else None
                break
            except Exception as e:
                if self.checkpoint_every is None or not self._is_fault(e):
                    raise
                recoveries += 1
                self._fault(e, recoveries, step)
        result = self._result(step, reports, seconds, return_grads, recoveries)
        if bad and self.on_nan == "stop":
            if self.checkpoint_every is not None:
                self._replay.pop()
            raise NonFiniteError(f"step {step}: {bad}; training stopped"
                                 + ("" if self.checkpoint_every is None else
                                    f", the parameters are those from before step {step}"))
        self.step_count = step + 1
        if state is not None:                    # the new checkpoint: nothing to replay
            self._checkpoint, self._replay = state, []
            if self.checkpoint_dir is not None:
                checkpoints.save(self.checkpoint_dir, state)
        elif self.checkpoint_every is not None:
            skipped = bad and self.on_nan == "skip"
            self._replay[-1] = ReplayEntry(step, per_mb, SKIPPED if skipped else result.losses)
        return result

    # ------------------------------------------------------------ faults
    def _is_fault(self, error: BaseException) -> bool:
        """Whether a failed step lost an actor: the error says so, or (a surviving actor can
        fail first, on a block whose earlier blocks were cancelled) some actor is dead or
        was restarted."""
        faults = self._faults
        if isinstance(error, faults) or isinstance(getattr(error, "cause", None), faults):
            return True
        if not self.actors:
            return False
        try:
            self._ray.get([a.check_alive.remote() for a in self.actors],
                          timeout=self.step_timeout or 60)
        except Exception as probe:
            return isinstance(probe, faults + self._timeouts) or isinstance(
                getattr(probe, "cause", None), faults)
        return False

    def _fault(self, error: BaseException, attempt: int, step: int) -> None:
        """Count a recovery of `step` (RecoveryError past max_recoveries) and have the next
        attempt restore every device from the last checkpoint (module docstring)."""
        if attempt > self.max_recoveries:        # step() has the next call restore first
            raise RecoveryError(f"step {step}: gave up after {self.max_recoveries} "
                                f"recoveries (max_recoveries); the last fault: "
                                f"{_one_line(error)}") from error
        self.recoveries += 1
        log.warning("ray executor: step %d failed (%s); restoring every device from the "
                    "checkpoint before step %d and replaying %d step(s) (recovery %d of at "
                    "most %d)", step, _one_line(error), self._replay[0].step,
                    len(self._replay) - 1, attempt, self.max_recoveries)
        self._needs_restore = True

    def _settle(self) -> None:
        """Restore the actors and replay the lost steps if a fault left that to do."""
        if self._needs_restore:
            self._restore_actors()
        if self._needs_replay:
            self._replay_lost_steps()

    def _restore_actors(self) -> None:
        """Kill every actor (SIGKILL on this node first, for a hung one) and recreate them from
        the last checkpoint; the steps since then are replayed next."""
        self._kill_local_actors()
        self.shutdown()
        self._discard_failed()
        self._needs_replay = True
        self._start()
        self._needs_restore = False

    def _roll_back(self, step: int) -> None:
        """Bring the actors back to the state before `step` (whose update holds a NaN or an
        infinity): restore the checkpoint and replay the steps before it."""
        if self.checkpoint_every is None:
            return
        log.warning("ray executor: step %d is not finite; rolling every device back to the "
                    "state before it", step)
        self.shutdown()
        self._needs_replay = True
        self._start()
        self._replay_lost_steps()

    def _nonfinite(self, reports: list[dict]) -> str | None:
        """What in a step's reports is NaN or infinite (None when everything is finite)."""
        losses = [v for r in reports for v in r["losses"].values()]
        grads = sorted(p for r in reports for p in r.get("nonfinite", ()))
        parts = []
        if not np.isfinite(np.asarray(losses, dtype=float)).all():
            parts.append(f"the loss is {next(float(v) for v in losses if not np.isfinite(v))}")
        if grads:
            parts.append(f"the gradient of {grads[0]!r}"
                         + (f" (and {len(grads) - 1} more)" if len(grads) > 1 else "")
                         + " is not finite")
        return " and ".join(parts) or None

    def _discard_failed(self) -> None:
        """Collect the outcomes of the failed step's calls (their actors are dead now), so Ray
        does not report them as unhandled errors when they are dropped."""
        failed, self._failed = self._failed, []
        if not failed:
            return
        ready, _ = self._ray.wait(failed, num_returns=len(failed), timeout=10)
        for ref in ready:
            with suppress(Exception):
                self._ray.get(ref)

    def _replay_lost_steps(self) -> None:
        """Re-run the steps between the checkpoint and the current one (skipping those that
        on_nan="skip" dropped); their losses must be bit for bit the ones already reported."""
        for entry in self._replay[:-1]:
            if entry.losses == SKIPPED:
                continue
            reports = self._execute(entry.step, entry.per_mb, False)
            again = self._result(entry.step, reports, 0.0, False, 0).losses
            if not _same_losses(again, entry.losses):
                raise ExecutorError(f"replay of step {entry.step} after a fault gave losses "
                                    f"{again}, but the step had reported {entry.losses}")
        self._needs_replay = False

    # ------------------------------------------------------------ checkpoints
    def _gather_state(self, step: int) -> dict:
        if self._pipes is not None:              # actors with blocks answer on their pipes
            for d in self._active:
                self._pipes.send(d, "command", ("state", None))
            rest = self._get([a.state_dict.remote() for d, a in enumerate(self.actors)
                              if d not in self._active], "a checkpoint")
            alive = self._watch("a checkpoint")
            parts = [self._pipes.receive(d, "state", alive) for d in self._active] + rest
        else:
            parts = self._get([a.state_dict.remote() for a in self.actors], "a checkpoint")
        return merged_state(parts, step, self.optimizer)

    def state_dict(self) -> dict:
        """Parameters, optimizer state, persistent state and the step counter (numpy arrays);
        after a failed or interrupted step, the actors are restored first."""
        if self.checkpoint_every is not None:
            self._settle()
        return self._gather_state(self.step_count)

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a `state_dict()` (e.g. from executor.checkpoint.load); it becomes the
        checkpoint a fault restores."""
        config = state.get("optimizer_config")
        if config is not None and config.get("name") != self.optimizer.name:
            raise ExecutorError(f"checkpoint: optimizer {config.get('name')!r} does not match "
                                f"this executor's {self.optimizer.name!r}")
        shared = self._ray.put(dict(state))
        self._ray.get([a.load_state_dict.remote(shared) for a in self.actors])
        self.step_count = int(state.get("step", 0))
        self._checkpoint = {"params": dict(state["params"]),
                            "optimizer": dict(state.get("optimizer", {})),
                            "states": dict(state.get("states", {})), "step": self.step_count}
        self._replay = []


def _same_losses(a, b) -> bool:
    """Bit-for-bit equal losses, a NaN equal to a NaN (NaN != NaN in Python)."""
    return b is not None and np.array_equal(np.asarray(a, dtype=float),
                                            np.asarray(b, dtype=float), equal_nan=True)


def _one_line(error: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


