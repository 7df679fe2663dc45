"""The Ray executor: one Ray actor per device running the same Programs as the LocalExecutor.

Each actor wraps a `DeviceWorker` (executor/worker.py). A step is the plan's blocks run as
actor calls submitted in the plan's global topological order (`Plan.order`), so a
synchronous actor never waits on an argument that a call queued behind it would produce.
Consecutive blocks of a device form one call (`plan_routes`: runs with no transfer inside,
then merged where a cost model says fewer calls make a shorter step). What one call sends to
one receiving call travels as one packet (a dict (receiving block, name) -> array): a
return value of the sending call passed as an argument to the receiving call, actor to
actor; the driver never fetches a tensor. (On the plain path Ray keeps returns under 100 KiB
with their owner, the driver, and inlines them into the receiving call; larger ones go
through the shared-memory object store.)

Three paths run the same calls:

- pipes (fastest, one node): each actor runs one long `serve` call that takes a step's
  head from the driver and exchanges its packets with the other actors through named pipes
  (executor/ray_pipes.py): a hop costs ~30 us instead of Ray's ~0.3-1 ms; an actor polls
  its pipe for `spin` seconds (yielding its CPU) before it blocks, since waking a blocked
  process costs its writer ~0.1 ms on a virtual machine; the driver sends the step's
  commands first to the actors that will wait for packets; Ray still places, restarts and
  kills the actors, and a dead actor ends its serve call, which the driver sees while it
  waits;
- compiled: the step is one Ray Compiled Graph (`ray.dag`, `experimental_compile`)
  bound in the global order (which fixes each actor's order); a call that sends nothing
  returns a token read by the device's next call (a compiled graph has no leaf nodes), and
  each device's last call returns its step report; channel reads in the driver and the
  actors sleep while they wait instead of spinning (`ray_runtime.patient_channel_reads`);
- plain: one actor call per call of the routes, its returns as ObjectRefs.

`mode="auto"` takes the pipes when Ray has one live node, else compiles and falls back to
plain calls when compiling fails; "pipes", "compiled" and "plain" force a path. Arrays
arrive read-only on the Ray paths (and, compiled, in buffers that the next step overwrites),
so received tensors are copied there before they are kept; from a pipe they arrive fresh.

Faults: actors are created with `max_restarts` > 0, but Ray's transparent retries lose the
call order, so the executor does not rely on them. When a step fails with a dead actor
(RayActorError, a closed compiled-graph channel, a lost object, a serve call that ended),
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
"skip" drops the step's update and goes on (a later replay skips it too). Replayed losses are
compared bit for bit, NaN equal to NaN.
"""
from __future__ import annotations

import logging
import os
import time
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from autodiff.ir import Graph
from executor import checkpoint as checkpoints
from executor.errors import (ExecutorError, NonFiniteError, RecoveryError,
                             StepTimeoutError)
from executor.local import StepResult, split_feeds, summarize_step
from executor.optim import Optimizer, make_optimizer
from executor.plan import build_plan
from executor.program import Plan
from executor.ray_actor import ActorRestartedError, DeviceActor  # noqa: F401 (re-exported)
from executor.ray_routes import Call, Routes, plan_routes
from executor.ray_runtime import (patient_channel_reads, skip_torch_in_channels, start_ray,
                                  worker_env)

log = logging.getLogger(__name__)

MODES = ("auto", "pipes", "compiled", "plain")
ON_NAN = ("stop", "skip", None)
START_TIMEOUT = 120.0               # s: creating actors can take long on a busy machine
SKIPPED = "skipped"                 # a replay entry's losses when on_nan="skip" dropped the step
# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class RayStepResult(StepResult):
    """A StepResult measured on Ray actors, plus per device: seconds spent inside block calls
    (`busy_seconds`; of which `update_seconds` ran the optimizer and `copy_seconds` unpacked
    and copied received packets), idle between its first and last block (`wait_seconds`),
    peak bytes of the tensors it held (`peak_value_bytes`), peak RSS of its process; the
    driver's wall time for the step, the path that ran it and how many recoveries the step
    needed."""

    busy_seconds: np.ndarray
    update_seconds: np.ndarray
    copy_seconds: np.ndarray
    wait_seconds: np.ndarray
    peak_value_bytes: np.ndarray
    rss_bytes: np.ndarray
    step_seconds: float
    mode: str
    recoveries: int

    def to_dict(self) -> dict:
        return {**super().to_dict(), "busy_seconds": self.busy_seconds.tolist(),
                "update_seconds": self.update_seconds.tolist(),
                "copy_seconds": self.copy_seconds.tolist(),
                "wait_seconds": self.wait_seconds.tolist(),
                "peak_value_bytes": self.peak_value_bytes.tolist(),
                "rss_bytes": self.rss_bytes.tolist(), "step_seconds": self.step_seconds,
                "mode": self.mode, "recoveries": self.recoveries}


def _fault_types() -> tuple[type, ...]:
    from ray import exceptions as rx
    return (rx.RayActorError, rx.RayChannelError, rx.ObjectLostError, ActorRestartedError,
            StepTimeoutError)


def _timeout_types() -> tuple[type, ...]:
    from ray import exceptions as rx
    return tuple(t for t in (getattr(rx, "GetTimeoutError", None),
                             getattr(rx, "RayChannelTimeoutError", None)) if t is not None)


# ---------------------------------------------------------------- the executor
class RayExecutor:
    """Trains `forward_graph` placed on k devices, one Ray actor per device.

    Arguments as LocalExecutor (placement, k, optimizer, micro_batches, schedule, seed,
    params, plan, loss_reduction), plus: `mode` auto | pipes | compiled | plain; per-actor
    `num_cpus` and `num_gpus` (default 0 CPUs, so k actors fit on a small machine);
    `blas_threads` BLAS threads per actor (None: Ray's default); `checkpoint_every` steps
    between the driver's checkpoints (None: no checkpoints and no recovery; faults raise);
    `checkpoint_dir` also writes them to disk; `max_restarts` given to the actors;
    `max_recoveries` per step; `max_inflight_executions` of the compiled graph; `routes`:
    prebuilt actor calls of the plan (default `plan_routes(plan)`); `defer_weight_grads` as
    LocalExecutor; `pin_cpus`: keep each actor on one CPU of its machine
    (executor/ray_actor.pin_to_cpu; None: on the pipes path, where all actors share the
    driver's machine); `spin`: seconds a pipes actor polls for a packet before blocking,
    yielding its CPU to any process that wants it (None: `ray_pipes.default_spin`; 0: block
    at once); `step_timeout`: seconds a step, restore or checkpoint may take before the actors
    count as hung and are replaced (None: wait forever); `on_nan`: "stop" | "skip" | None
    (train on) when a loss or gradient is not finite (module docstring).
    Starts a local Ray if none is running (executor.ray_runtime.start_ray)."""

    def __init__(self, forward_graph: Graph, placement, k: int, optimizer="sgd",
                 micro_batches: int = 1, schedule: str = "gpipe", seed: int = 0,
                 params: Mapping[str, np.ndarray] | None = None, plan: Plan | None = None,
                 mode: str = "auto", num_cpus: float = 0, num_gpus: float = 0,
                 blas_threads: int | None = 1, checkpoint_every: int | None = 10,
                 checkpoint_dir: str | Path | None = None, max_restarts: int = 1,
                 max_recoveries: int = 3, max_inflight_executions: int = 2,
                 loss_reduction: str = "mean", routes: Routes | None = None,
                 defer_weight_grads: bool = False, pin_cpus: bool | None = None,
                 spin: float | None = None, step_timeout: float | None = None,
                 on_nan: str | None = "stop"):
        if mode not in MODES:
            raise ExecutorError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                             or checkpoint_every < 1):
            raise ExecutorError(f"checkpoint_every: expected a positive integer or None, got "
                                f"{checkpoint_every!r}")
        if loss_reduction not in ("mean", "sum"):
            raise ExecutorError(f"loss_reduction: expected 'mean' or 'sum', got "
                                f"{loss_reduction!r}")
        if max_restarts < 1:
            raise ExecutorError(f"max_restarts: expected >= 1, got {max_restarts!r}")
        if not isinstance(max_recoveries, int) or max_recoveries < 0:
            raise ExecutorError(f"max_recoveries: expected a non-negative integer, got "
                                f"{max_recoveries!r}")
        if step_timeout is not None and not (isinstance(step_timeout, (int, float))
                                             and 0 < step_timeout < float("inf")):
            raise ExecutorError(f"step_timeout: expected positive seconds or None, got "
                                f"{step_timeout!r}")
        if on_nan not in ON_NAN:
            raise ExecutorError(f"on_nan: expected 'stop', 'skip' or None, got {on_nan!r}")
        import ray

        start_ray()
        self._ray = ray
        self._faults = _fault_types()
        self._timeouts = _timeout_types()
        self.step_timeout = None if step_timeout is None else float(step_timeout)
        self.on_nan = on_nan
        self.graph = forward_graph
        self.seed = seed
        self.loss_reduction = loss_reduction
        self.optimizer: Optimizer = make_optimizer(optimizer)
        self.plan = plan if plan is not None else build_plan(
            forward_graph, placement, k, micro_batches=micro_batches, schedule=schedule,
            loss_scale=1.0 if loss_reduction == "sum" else None)
        self.k = self.plan.k
        self.micro_batches = self.plan.micro_batches
        self.routes = routes if routes is not None else plan_routes(self.plan)
        self.requested_mode = mode
        self.mode = mode
        self.checkpoint_every = checkpoint_every
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.max_recoveries = max_recoveries
        self.max_inflight_executions = max_inflight_executions
        self.defer_weight_grads = bool(defer_weight_grads)
        self.pin_cpus = pin_cpus
        if spin is not None and not (isinstance(spin, (int, float)) and 0 <= spin < 1):
            raise ExecutorError(f"spin: expected seconds in [0, 1), got {spin!r}")
        self.spin = spin
        self._active = [d for d in range(self.k) if self.plan.programs[d].blocks]
        self._actor_options = self._options(num_cpus, num_gpus, blas_threads, max_restarts)
        # The initial parameters each device starts from (None: materialized on the actor).
        missing = [p.name for p in forward_graph.params if params is not None
                   and p.name not in params]
        if missing:
            raise ExecutorError(f"params: no initial value for parameter {missing[0]!r}")
        self._initial = None if params is None else [ray.put(
            {p: np.asarray(params[p]) for p in prog.params if p in params})
            for prog in self.plan.programs]
        self._checkpoint: dict | None = None      # None: the initial state at step 0
        self._replay: list[tuple[int, list, tuple[float, ...] | None]] = []
        self._needs_replay = False
        self._needs_restore = False
        self._where: list = []                    # (pid, node id) of each actor
        self._failed: list = []
        self.recoveries = 0
        self.step_count = 0
        self.actors: list = []
        self._compiled = None
        self._pipes = None                        # the driver's Endpoint on the pipes path
        self._remove_pipes = None                 # removes their directory (once)
        self._serving: list = []                  # the actors' serve calls (pipes path)
        self._start()

    # ------------------------------------------------------------ actors and the graph
    def _options(self, num_cpus, num_gpus, blas_threads, max_restarts) -> dict:
        env = worker_env(blas_threads)
        return dict(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                    max_task_retries=0, runtime_env={"env_vars": env})

    def _start(self, pipes_allowed: bool = True) -> None:
        """Create one actor per device (from the checkpoint when there is one) and start the
        step path: pipes when asked, or with "auto" when Ray runs on one node whose actors see
        the driver's pipes; otherwise the compiled graph, falling back to plain calls (module
        docstring)."""
        ray = self._ray
        pipes = self.requested_mode == "pipes" or (self.requested_mode == "auto"
                                                   and pipes_allowed and _one_node(ray))
        compiled = self.requested_mode in ("auto", "compiled") and not pipes
        self._spawn(pipes, compiled)
        if self._checkpoint is not None:
            state = ray.put(self._checkpoint)
            self._get([a.load_state_dict.remote(state) for a in self.actors],
                      "loading the checkpoint", start=True)
        if pipes:
            try:
                self._open_pipes()
            except ExecutorError as e:
                if self.requested_mode == "pipes":
                    raise
                log.warning("ray executor: %s; using compiled graphs", e)
                self._stop()
                return self._start(pipes_allowed=False)
            self.mode = "pipes"
            return
        self.mode = self.requested_mode
        if self.mode != "plain":
            try:
                self._compiled = self._compile()
                self.mode = "compiled"
            except Exception as e:                   # Compiled Graphs are beta: fall back
                if self.requested_mode == "compiled":
                    raise
                log.warning("ray executor: compiling the step graph failed (%s: %s); using "
                            "plain actor calls", type(e).__name__, e)
                self.mode = "plain"

    def _spawn(self, pipes: bool, compiled: bool) -> None:
        """Create one actor per device (initial parameters) and note where each runs."""
        options = dict(self._actor_options, max_concurrency=2) if pipes else self._actor_options
        remote = self._ray.remote(DeviceActor).options(**options)
        initial = self._initial or [None] * self.k
        self.actors = [remote.remote(prog, self.k, self.routes.positions(prog.device),
                                     self.optimizer, self.seed, initial[prog.device], compiled,
                                     self.defer_weight_grads,
                                     pipes if self.pin_cpus is None else self.pin_cpus)
                       for prog in self.plan.programs]
        # constructed without error; the pids let the driver kill a hung actor itself
        self._where = self._get([a.where.remote() for a in self.actors], "starting the actors",
                                start=True)

    def _get(self, refs, doing: str, start: bool = False):
        """ray.get within the step timeout, or with `start` (creating actors, loading a
        checkpoint into them) within at least START_TIMEOUT; StepTimeoutError, a fault, when
        it passes."""
        timeout = self.step_timeout
        if start and timeout is not None:
            timeout = max(timeout, START_TIMEOUT)
        try:
            return self._ray.get(refs, timeout=timeout)
        except self._timeouts as e:
            raise StepTimeoutError(f"{doing} took longer than {timeout:g} s (step timeout "
                                   f"{self.step_timeout:g} s)") from e

    def _watch(self, doing: str) -> Callable[[], None]:
        """The `alive` callback of a pipe receive: a dead actor or a passed deadline raises."""
        deadline = None if self.step_timeout is None else time.monotonic() + self.step_timeout

        def alive() -> None:
            self._check_serving()
            if deadline is not None and time.monotonic() > deadline:
                raise StepTimeoutError(f"{doing} took longer than the step timeout "
                                       f"({self.step_timeout:g} s)")
        return alive

    def _kill_local_actors(self) -> None:
        """SIGKILL every actor process on the driver's node: a stopped (hung) process answers
        no Ray call, so ray.kill alone may not end it."""
        import signal
        try:
            here = self._ray.get_runtime_context().get_node_id()
        except Exception:
            return
        for pid, node in self._where:
            if node is not None and node == here:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError as e:
                    log.debug("ray executor: kill %d: %s", pid, e)

    def _open_pipes(self) -> None:
        """The pipes path: one pipe each way between the driver and every active actor and
        one per (sender, receiver) pair of devices with packets; every actor starts serving."""
        from executor.ray_pipes import Endpoint, default_spin, make_pipe_dir, remove_pipe_dir
        routes = self.routes
        pairs = sorted({(src[0], dst[0]) for src in routes.calls
                        for dst, _ in routes.packets[src]})
        names = ([f"to{d}" for d in self._active] + [f"from{d}" for d in self._active]
                 + [f"{a}to{b}" for a, b in pairs])
        root = make_pipe_dir(names)
        # also run when the executor is dropped without shutdown
        self._remove_pipes = weakref.finalize(self, remove_pipe_dir, root)
        if not all(self._get([self.actors[d].sees.remote(str(root)) for d in self._active],
                             "opening the pipes", start=True)):
            self._remove_pipes()
            raise ExecutorError("pipes: some actors run on another machine than the driver")
        self._pipes = Endpoint({d: root / f"from{d}" for d in self._active},
                               {d: root / f"to{d}" for d in self._active})
        # Commands go first to actors whose first call waits for packets: waking an actor
        # that computes at once on the driver's CPU would hold up the other commands.
        first = {}
        for call in routes.calls:
            first.setdefault(call[0], call)
        self._command_order = sorted(self._active, key=lambda d: not routes.incoming[first[d]])
        self._serving = []
        for d in self._active:
            calls = []
            for call in routes.calls:
                if call[0] != d:
                    continue
                incoming = [(src[0], (src[0], src[1][0], pos))
                            for src, pos in routes.incoming[call]]
                outgoing = [(dst[0], (d, call[1][0], pos))
                            for pos, (dst, _) in enumerate(routes.packets[call])]
                calls.append((call[1], incoming, outgoing))
            reads = {"driver": str(root / f"to{d}"),
                     **{a: str(root / f"{a}to{b}") for a, b in pairs if b == d}}
            writes = {"driver": str(root / f"from{d}"),
                      **{b: str(root / f"{a}to{b}") for a, b in pairs if a == d}}
            spin = default_spin(len(self._active)) if self.spin is None else self.spin
            self._serving.append(self.actors[d].serve.remote(reads, writes, calls, spin))

    def _check_serving(self) -> None:
        """Raise the error of an actor whose serve call ended (it died, or its step failed)."""
        ready, _ = self._ray.wait(self._serving, timeout=0)
        if ready:
            self._ray.get(ready[0])
            raise ExecutorError("ray executor: a device actor stopped serving its pipes")

    def _compile(self):
        from ray.dag import InputNode, MultiOutputNode

        skip_torch_in_channels()
        patient_channel_reads()
        packets, incoming = self.routes.packets, self.routes.incoming
        outputs: dict[Call, list] = {}
        token: dict[int, object] = {}            # a device's unread token
        with InputNode() as step_input:
            for call in self.routes.calls:
                d, blocks = call
                args = [outputs[src][pos] for src, pos in incoming[call]]
                if blocks[0] == 0 or (d not in token and not args):   # needs an upstream node
                    head = step_input[self._active.index(d)]
                else:
                    head = token.pop(d, None)
                n = self._returns(call)
                method = self.actors[d].run
                node = (method.options(num_returns=n) if n > 1 else method).bind(blocks, head,
                                                                                   *args)
                outputs[call] = list(node) if n > 1 else [node]
                if len(outputs[call]) > len(packets[call]):
                    token[d] = outputs[call][-1]
            dag = MultiOutputNode([token[d] for d in self._active])
        return dag.experimental_compile(_max_inflight_executions=self.max_inflight_executions)

    def _returns(self, call: Call) -> int:
        """How many values a call returns: its packets, plus a token when it has no packet
        (so the compiled graph has no leaf) or ends the device's step (the report)."""
        d, blocks = call
        packets = len(self.routes.packets[call])
        last = blocks[-1] == len(self.plan.programs[d].blocks) - 1
        return packets + (packets == 0 or last)

    def _stop(self) -> None:
        """Stop the pipes or tear down the compiled graph, and kill every actor (no
        restart)."""
        ray = self._ray
        if self._pipes is not None:
            for d in self._active:
                try:
                    self._pipes.send(d, "stop", None)
                except OSError as e:
                    log.debug("ray executor: stop: %s", e)
            self._pipes.close()
            self._pipes, self._serving = None, []
        if self._remove_pipes is not None:
            self._remove_pipes()
        if self._compiled is not None:
            try:
                self._compiled.teardown(kill_actors=True)
            except Exception as e:                   # a dead actor can make teardown fail
                log.warning("ray executor: compiled graph teardown: %s: %s", type(e).__name__, e)
            self._compiled = None
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:
                log.debug("ray executor: kill: %s", e)
        self.actors = []

    def shutdown(self) -> None:
        """Stop the actors (Ray itself keeps running)."""
        self._stop()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def actor_pids(self) -> list[int]:
        """The process id of each device's actor."""
        return self._ray.get([a.pid.remote() for a in self.actors])

    # ------------------------------------------------------------ a step
    def _execute(self, step: int, per_mb: list[dict], return_grads: bool) -> list[dict]:
        """Run one step on the actors; the reports of the devices that have blocks."""
        ray = self._ray
        m = self.micro_batches
        inputs = {d: (step, {(x, i): per_mb[i][x] for x in self.plan.programs[d].inputs
                             for i in range(m)}, return_grads) for d in self._active}
        if self._pipes is not None:
            for d in self._command_order:
                self._pipes.send(d, "command", ("step", inputs[d]))
            alive = self._watch(f"step {step}")
            reports = [self._pipes.receive(d, "report", alive) for d in self._active]
            for r in reports:
                if "error" in r:
                    raise r["error"]
            return reports
        if self._compiled is not None:
            refs = self._compiled.execute(*[inputs[d] for d in self._active])
            try:
                reports = ray.get(refs, timeout=-1 if self.step_timeout is None
                                  else self.step_timeout)
            except self._timeouts as e:
                raise StepTimeoutError(f"step {step} took longer than the step timeout "
                                       f"({self.step_timeout:g} s)") from e
            return [_owned(r) for r in reports]
        incoming = self.routes.incoming
        refs: dict[Call, list] = {}
        last: dict[int, object] = {}
        for call in self.routes.calls:
            d, blocks = call
            args = [refs[src][pos] for src, pos in incoming[call]]
            n = self._returns(call)
            result = self.actors[d].run.options(num_returns=n).remote(
                blocks, inputs[d] if blocks[0] == 0 else None, *args)
            refs[call] = list(result) if n > 1 else [result]
            last[d] = refs[call][-1]
        try:
            return [_owned(r) for r in self._get([last[d] for d in self._active],
                                                 f"step {step}")]
        except Exception:
            self._failed = [ref for out in refs.values() for ref in out]
            raise

    def step(self, feeds: Mapping[str, np.ndarray], return_grads: bool = False) -> RayStepResult:
        """One training step on full-batch `feeds` (as LocalExecutor.step), recovering from a
        dead or hung actor by restoring the last checkpoint and replaying, and rolling back a
        step whose loss or gradients are not finite (module docstring)."""
        per_mb = split_feeds(self.graph, feeds, self.micro_batches)
        step = self.step_count
        if self.checkpoint_every is not None:
            self._replay.append((step, per_mb, None))
        try:
            return self._step(step, per_mb, return_grads)
        except NonFiniteError:                       # rolled back: the actors are consistent
            raise
        except BaseException:
            # the step did not happen: forget it, and (the actors may be mid-step) have the
            # next call restore them from the checkpoint first
            if self.checkpoint_every is not None:
                if self._replay and self._replay[-1][0] == step and self._replay[-1][2] is None:
                    self._replay.pop()
                self._needs_restore = True
            raise

    def _step(self, step: int, per_mb: list, return_grads: bool) -> RayStepResult:
        recoveries = 0
        due = (self.checkpoint_every is not None
               and (step + 1) % self.checkpoint_every == 0)
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
        if state is not None:
            self._keep_checkpoint(state)
        elif self.checkpoint_every is not None:
            self._replay[-1] = (step, per_mb, SKIPPED if bad and self.on_nan == "skip"
                                else result.losses)
        return result

    def train(self, data: Callable[[int], Mapping[str, np.ndarray]], steps: int
              ) -> list[RayStepResult]:
        """`steps` steps on the feeds `data(step)` (a pure function of the step number)."""
        return [self.step(data(self.step_count)) for _ in range(steps)]

    def _result(self, step, reports, seconds, return_grads, recoveries) -> RayStepResult:
        k = self.k
        by_device = {r["device"]: r for r in reports}
        idle = {"losses": {}, "compute_seconds": 0.0, "grads": {}, "sent": np.zeros(k),
                "busy_seconds": 0.0, "update_seconds": 0.0, "copy_seconds": 0.0,
                "wait_seconds": 0.0, "peak_value_bytes": 0, "rss_bytes": 0}
        reports = [by_device.get(d, dict(idle, device=d)) for d in range(k)]
        link = np.array([r["sent"] for r in reports], dtype=np.int64)
        base = summarize_step(step, reports, link, self.micro_batches,
                              self.graph if return_grads else None, self.loss_reduction)

        def column(name, dtype=float):
            return np.array([r[name] for r in reports], dtype=dtype)
        return RayStepResult(**{f.name: getattr(base, f.name) for f in fields(StepResult)},
                             busy_seconds=column("busy_seconds"),
                             update_seconds=column("update_seconds"),
                             copy_seconds=column("copy_seconds"),
                             wait_seconds=column("wait_seconds"),
                             peak_value_bytes=column("peak_value_bytes", np.int64),
                             rss_bytes=column("rss_bytes", np.int64), step_seconds=seconds,
                             mode=self.mode, recoveries=recoveries)

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
        if attempt > self.max_recoveries:
            self._needs_restore = True           # the next call starts from the checkpoint
            raise RecoveryError(f"step {step}: gave up after {self.max_recoveries} "
                                f"recoveries (max_recoveries); the last fault: "
                                f"{_one_line(error)}") from error
        self.recoveries += 1
        log.warning("ray executor: step %d failed (%s); restoring every device from the "
                    "checkpoint before step %d and replaying %d step(s) (recovery %d of at "
                    "most %d)", step, _one_line(error), self._replay[0][0],
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
        self._stop()
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
        self._stop()
        self._needs_replay = True
        self._start()
        self._replay_lost_steps()

    def _nonfinite(self, reports: list[dict]) -> str | None:
        """What in a step's reports is NaN or infinite (None when everything is finite)."""
        losses = [v for r in reports for v in r["losses"].values()]
        grads = sorted(p for r in reports for p in r.get("nonfinite", ()))
        parts = []
        if not np.isfinite(np.asarray(losses, dtype=float)).all():
            parts.append(f"the loss is {_first_nonfinite(losses)}")
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
            try:
                self._ray.get(ref)
            except Exception:
                pass

    def _replay_lost_steps(self) -> None:
        """Re-run the steps between the checkpoint and the current one (skipping those that
        on_nan="skip" dropped); their losses must be bit for bit the ones already reported."""
        for step, per_mb, losses in self._replay[:-1]:
            if losses == SKIPPED:
                continue
            reports = self._execute(step, per_mb, False)
            again = self._result(step, reports, 0.0, False, 0).losses
            if not _same_losses(again, losses):
                raise ExecutorError(f"replay of step {step} after a fault gave losses {again}, "
                                    f"but the step had reported {losses}")
        self._needs_replay = False

    # ------------------------------------------------------------ checkpoints
    def _gather_state(self, step: int) -> dict:
        merged: dict = {"params": {}, "optimizer": {}, "states": {}}
        if self._pipes is not None:              # actors with blocks answer on their pipes
            for d in self._active:
                self._pipes.send(d, "command", ("state", None))
            rest = self._get([a.state_dict.remote() for d, a in enumerate(self.actors)
                              if d not in self._active], "a checkpoint")
            alive = self._watch("a checkpoint")
            parts = [self._pipes.receive(d, "state", alive) for d in self._active] + rest
        else:
            parts = self._get([a.state_dict.remote() for a in self.actors], "a checkpoint")
        for part in parts:
            for key in merged:
                merged[key].update(part[key])
        merged["step"] = step
        merged["optimizer_config"] = self.optimizer.to_dict()
        return merged

    def _keep_checkpoint(self, state: dict) -> None:
        self._checkpoint = state
        self._replay = []
        if self.checkpoint_dir is not None:
            checkpoints.save(self.checkpoint_dir, state)

    def state_dict(self) -> dict:
        """Parameters, optimizer state, persistent state and the step counter (numpy arrays);
        after a failed or interrupted step, the actors are restored first."""
        if self.checkpoint_every is not None:
            self._settle()
        return self._gather_state(self.step_count)

    def save_checkpoint(self) -> dict:
        """Take a checkpoint now: the driver keeps it (and writes it to checkpoint_dir)."""
        state = self.state_dict()
        self._keep_checkpoint(state)
        return state

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

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Current parameter values (copies), gathered from their owners."""
        return {p: np.array(v, copy=True) for p, v in self.state_dict()["params"].items()}

    @property
    def training_graph(self) -> Graph:
        return self.plan.training


def _one_node(ray) -> bool:
    """Whether the Ray cluster has one live node (so every actor shares the driver's)."""
    return sum(1 for n in ray.nodes() if n.get("Alive")) == 1


def _same_losses(a, b) -> bool:
    """Bit-for-bit equal losses, a NaN equal to a NaN (NaN != NaN in Python)."""
    return b is not None and np.array_equal(np.asarray(a, dtype=float),
                                            np.asarray(b, dtype=float), equal_nan=True)


def _first_nonfinite(values) -> str:
    bad = next(float(v) for v in values if not np.isfinite(v))
    return str(bad)


def _one_line(error: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _owned(report: dict) -> dict:
    """Writable copies of a report's arrays (a compiled-graph result lives in a buffer that
    the next step reuses; a plain one is a read-only view of the object store)."""
    grads = report.get("grads")
    if grads is not None:
        report = dict(report, grads={p: None if g is None else np.array(g, copy=True)
                                     for p, g in grads.items()})
    return dict(report, sent=np.array(report["sent"], copy=True))
