"""The Ray executor: one Ray actor per device running the same Programs as the LocalExecutor.

Each actor wraps a `DeviceWorker` (executor/worker.py), which calls a transport
(executor/transport.py) at each Send and Recv step. Two paths move the tensors:

- pipes (one node, the default there): each actor runs one long `serve` call that takes a
  step's command from the driver and runs its own blocks in program order over named pipes
  (executor/ray_pipes.py; a hop costs ~30 us instead of Ray's ~0.3-1 ms); Ray still places,
  restarts and kills the actors, and a dead actor ends its serve call, which the driver
  sees while it waits;
- plain (across nodes): one actor call per run of consecutive blocks of a device
  (executor/ray_calls.py), submitted in a topological order (so a synchronous actor never
  waits on an argument that a call queued behind it would produce); each call returns one
  packet per target device and takes the packets of the calls that send to it as
  ObjectRefs, actor to actor (returns over 100 KiB go through the object store, arriving
  read-only).

`mode="auto"` takes the pipes when Ray has one live node whose actors see the driver's pipe
directory, else plain calls; "pipes" and "plain" force a path. Faults, NaN and checkpoints:
executor/ray_recovery.py.
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
from executor.errors import ExecutorError, StepTimeoutError
from executor.local import StepResult, summarize_step
from executor.optim import Optimizer, make_optimizer
from executor.plan import build_plan
from executor.program import Plan
from executor.ray_actor import (ActorRestartedError, DeviceActor,  # noqa: F401 (re-exported)
                                StepCommand)
from executor.ray_calls import block_calls, plan_calls
from executor.ray_recovery import Recovery
from executor.ray_runtime import start_ray, worker_env

log = logging.getLogger(__name__)

MODES = ("auto", "pipes", "plain")
ON_NAN = ("stop", "skip", None)
EMULATION_MARGIN = 0.02            # s: an emulated step's t0 after the driver's now
START_TIMEOUT = 120.0               # s: creating actors can take long on a busy machine
# per-device measurements of a step report that become RayStepResult arrays
REPORT_COLUMNS = ("busy_seconds", "update_seconds", "copy_seconds", "wait_seconds",
                  "peak_value_bytes", "rss_bytes")


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
    emulated_seconds: float | None = None
    dilation: float | None = None

    def to_dict(self) -> dict:
        extra = {f.name: getattr(self, f.name) for f in fields(self)[len(fields(StepResult)):]}
        return {**super().to_dict(), **{name: v.tolist() if isinstance(v, np.ndarray) else v
                                        for name, v in extra.items()}}


class RayExecutor(Recovery):
    """Trains `forward_graph` placed on k devices, one Ray actor per device.

    Arguments as LocalExecutor (placement, k, optimizer, micro_batches, schedule, seed,
    params, plan, loss_reduction), plus: `mode` auto | pipes | plain (module docstring);
    per-actor `num_cpus` and `num_gpus` (default 0 CPUs, so k actors fit on a small
    machine); `blas_threads` BLAS threads per actor (None: Ray's default);
    `checkpoint_every` steps between the driver's checkpoints (None: no checkpoints and no
    recovery; faults raise); `checkpoint_dir` also writes them to disk; `max_restarts` given
    to the actors; `max_recoveries` per step; `defer_weight_grads` as LocalExecutor;
    `pin_cpus`: keep each actor on one CPU of its machine (executor/ray_actor.pin_to_cpu;
    None: on the pipes path, where all actors share the driver's machine); `spin`: seconds a
    pipes actor polls for a tensor before blocking (None: `ray_pipes.default_spin`; 0: block
    at once); `step_timeout`: seconds a step, restore or checkpoint may take before the
    actors count as hung and are replaced (None: wait forever); `on_nan`: "stop" | "skip" |
    None (train on) when a loss or gradient is not finite (executor/ray_recovery.py);
    `emulate`: a Cluster whose devices the actors emulate, every step padded to its model
    time times a dilation chosen at the first step (executor/emulate.py; each result's
    `emulated_seconds` is the step in the cluster's seconds). Starts a local Ray if none is
    running (executor.ray_runtime.start_ray)."""

    def __init__(self, forward_graph: Graph, placement, k: int, optimizer="sgd",
                 micro_batches: int = 1, schedule: str = "gpipe", seed: int = 0,
                 params: Mapping[str, np.ndarray] | None = None, plan: Plan | None = None,
                 mode: str = "auto", num_cpus: float = 0, num_gpus: float = 0,
                 blas_threads: int | None = 1, checkpoint_every: int | None = 10,
                 checkpoint_dir: str | Path | None = None, max_restarts: int = 1,
                 max_recoveries: int = 3, loss_reduction: str = "mean",
                 defer_weight_grads: bool = False, pin_cpus: bool | None = None,
                 spin: float | None = None, step_timeout: float | None = None,
                 on_nan: str | None = "stop", emulate=None):
        check_arguments(mode=mode, checkpoint_every=checkpoint_every,
                        loss_reduction=loss_reduction, max_restarts=max_restarts,
                        max_recoveries=max_recoveries, step_timeout=step_timeout,
                        on_nan=on_nan, spin=spin)
        import ray
        from ray import exceptions as rx

        start_ray()
        self._ray = ray
        self._faults = (rx.RayActorError, rx.ObjectLostError, ActorRestartedError,
                        StepTimeoutError)
        self._timeouts = (rx.GetTimeoutError,)
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
        self.requested_mode = mode               # self.mode: the path _start took
        self.checkpoint_every = checkpoint_every
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.max_recoveries = max_recoveries
        self.defer_weight_grads = bool(defer_weight_grads)
        self.pin_cpus = pin_cpus
        self.spin = spin
        if emulate is not None and emulate.k != self.k:
            raise ExecutorError(f"emulate: the cluster has {emulate.k} devices, the plan {self.k}")
        self.emulate = emulate
        self.emulation = None                     # executor.emulate.Emulation, at step 0
        self._emulated_seconds: float | None = None
        self._active = [d for d in range(self.k) if self.plan.programs[d].blocks]
        # the plain path's calls; one per block when emulating, so no tensor leaves late
        self._calls = block_calls(self.plan) if self.emulate is not None else plan_calls(
            self.plan)
        self._actor_options = dict(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                                   max_task_retries=0,
                                   runtime_env={"env_vars": worker_env(blas_threads)})
        self._initial = self._initial_params(forward_graph, params)
        self._init_runtime()
        self._start()

    def _init_runtime(self) -> None:
        """No actors, pipes, checkpoint or steps yet."""
        self._checkpoint: dict | None = None      # None: the initial state at step 0
        self._replay: list = []                   # ray_recovery.ReplayEntry per step
        self._needs_replay = self._needs_restore = False
        self._where: list = []                    # (pid, node id) of each actor
        self._failed: list = []
        self.recoveries = self.step_count = 0
        self.actors: list = []
        self._pipes = None                        # the driver's Endpoint on the pipes path
        self._remove_pipes = None                 # removes their directory (once)
        self._serving: list = []                  # the actors' serve calls (pipes path)

    def _initial_params(self, forward_graph: Graph, params) -> list | None:
        """Each device's initial parameters in the object store (None: materialized on the
        actors from the seed)."""
        if params is None:
            return None
        missing = [p.name for p in forward_graph.params if p.name not in params]
        if missing:
            raise ExecutorError(f"params: no initial value for parameter {missing[0]!r}")
        return [self._ray.put({p: np.asarray(params[p]) for p in prog.params if p in params})
                for prog in self.plan.programs]

    # ------------------------------------------------------------ actors and transports
    def _start(self, pipes_allowed: bool = True) -> None:
        """Create one actor per device (from the checkpoint when there is one) and start the
        step path: pipes when asked, or with "auto" when Ray runs on one node whose actors see
        the driver's pipes; otherwise plain calls (module docstring)."""
        one_node = sum(1 for n in self._ray.nodes() if n.get("Alive")) == 1
        pipes = self.requested_mode == "pipes" or (self.requested_mode == "auto"
                                                   and pipes_allowed and one_node)
        self._spawn(pipes)
        if self._checkpoint is not None:
            state = self._ray.put(self._checkpoint)
            self._get([a.load_state_dict.remote(state) for a in self.actors],
                      "loading the checkpoint", start=True)
        self.mode = "plain"
        if pipes:
            try:
                self._open_pipes()
            except ExecutorError as e:
                if self.requested_mode == "pipes":
                    raise
                log.warning("ray executor: %s; using plain actor calls", e)
                self.shutdown()
                return self._start(pipes_allowed=False)
            self.mode = "pipes"

    def _spawn(self, pipes: bool) -> None:
        """Create one actor per device (initial parameters) and note where each runs."""
        options = dict(self._actor_options, max_concurrency=2) if pipes else self._actor_options
        remote = self._ray.remote(DeviceActor).options(**options)
        initial = self._initial or [None] * self.k
        self.actors = [remote.remote(prog, self.k, self.optimizer, self.seed,
                                     initial[prog.device], self.defer_weight_grads,
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
        one per directed link that carries tensors; every actor starts serving."""
        from executor.ray_pipes import Endpoint, default_spin, make_pipe_dir, remove_pipe_dir
        links = sorted({(d, s.target) for d in self._active
                        for b in self.plan.programs[d].blocks for s in b.sends})
        names = ([f"to{d}" for d in self._active] + [f"from{d}" for d in self._active]
                 + [f"{a}to{b}" for a, b in links])
        root = make_pipe_dir(names)
        # also run when the executor is dropped without shutdown
        self._remove_pipes = weakref.finalize(self, remove_pipe_dir, root)
        if not all(self._get([self.actors[d].sees.remote(str(root)) for d in self._active],
                             "opening the pipes", start=True)):
            self._remove_pipes()
            raise ExecutorError("pipes: some actors run on another machine than the driver")
        self._pipes = Endpoint({d: root / f"from{d}" for d in self._active},
                               {d: root / f"to{d}" for d in self._active})
        # Commands go first to actors whose first block waits for a tensor: waking an actor
        # that computes at once on the driver's CPU would hold up the other commands.
        self._command_order = sorted(
            self._active, key=lambda d: not self.plan.programs[d].blocks[0].receives)
        spin = default_spin(len(self._active)) if self.spin is None else self.spin
        self._serving = []
        for d in self._active:
            reads = {"driver": str(root / f"to{d}"),
                     **{a: str(root / f"{a}to{b}") for a, b in links if b == d}}
            writes = {"driver": str(root / f"from{d}"),
                      **{b: str(root / f"{a}to{b}") for a, b in links if a == d}}
            self._serving.append(self.actors[d].serve.remote(reads, writes, spin))

    def _check_serving(self) -> None:
        """Raise the error of an actor whose serve call ended (it died, or its step failed)."""
        ready, _ = self._ray.wait(self._serving, timeout=0)
        if ready:
            self._ray.get(ready[0])
            raise ExecutorError("ray executor: a device actor stopped serving its pipes")

    def shutdown(self) -> None:
        """Stop the pipes and kill every actor, with no restart (Ray itself keeps running)."""
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
        for actor in self.actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception as e:
                log.debug("ray executor: kill: %s", e)
        self.actors = []

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def actor_pids(self) -> list[int]:
        """The process id of each device's actor."""
        return [pid for pid, _ in self._ray.get([a.where.remote() for a in self.actors])]

    # ------------------------------------------------------------ a step
    def _execute(self, step: int, per_mb: list[dict], return_grads: bool) -> list[dict]:
        """Run one step on the actors; the reports of the devices that have blocks."""
        m = self.micro_batches
        t0 = self._emulation_start(per_mb)
        commands = {d: StepCommand(step, {(x, i): per_mb[i][x]
                                          for x in self.plan.programs[d].inputs
                                          for i in range(m)}, return_grads,
                                   None if t0 is None else self.emulation.seconds[d], t0)
                    for d in self._active}
        if self._pipes is None:
            reports = self._execute_plain(step, commands)
        else:
            for d in self._command_order:
                # a plain tuple: it pickles faster than the NamedTuple
                self._pipes.send(d, "command", ("step", tuple(commands[d])))
            alive = self._watch(f"step {step}")
            reports = [self._pipes.receive(d, "report", alive) for d in self._active]
            for r in reports:
                if "error" in r:
                    raise r["error"]
        if t0 is not None:
            self._emulated_seconds = ((time.time() - t0) / self.emulation.dilation
                                      + self.emulation.step_overhead)
        return reports

    def _emulation_start(self, per_mb: list[dict]) -> float | None:
        """The common t0 of an emulated step (None when not emulating): a margin after now
        for the commands to reach the actors; the first call chooses the dilation."""
        if self.emulate is None:
            return None
        if self.emulation is None:
            from executor.emulate import make_emulation
            self.emulation = make_emulation(self.plan, self.emulate, self.optimizer,
                                            self.seed, per_mb)
            log.info("ray executor: emulating the cluster with dilation %.4g",
                     self.emulation.dilation)
        calls = 0 if self._pipes is not None else len(self._calls)
        return time.time() + EMULATION_MARGIN + calls * 5e-4

    def _execute_plain(self, step: int, commands: dict) -> list[dict]:
        """The plain path: the step's calls in submission order, each taking the packets of
        the earlier calls that send to it (module docstring)."""
        returns: list[list] = []                 # per call: its return refs
        reports, tokens = {}, []
        for call in self._calls:
            last = call.blocks[-1] == len(self.plan.programs[call.device].blocks) - 1
            n = len(call.targets) + last
            args = [returns[c][position] for c, position in call.sources]
            command = commands[call.device] if call.blocks[0] == 0 else None
            out = self.actors[call.device].run.options(num_returns=max(n, 1)).remote(
                call.blocks, command, *args)
            returns.append(list(out) if n > 1 else [out])
            if last:
                reports[call.device] = returns[-1][-1]
            elif n == 0:
                tokens.append(out)               # nothing waits for it: its errors count too
        try:
            got = self._get([reports[d] for d in self._active] + tokens, f"step {step}")
        except Exception:
            self._failed = [ref for refs in returns for ref in refs]
            raise
        return [_owned(r) for r in got[:len(self._active)]]

    def _result(self, step, reports, seconds, return_grads, recoveries) -> RayStepResult:
        by_device = {r["device"]: r for r in reports}
        idle = {"losses": {}, "compute_seconds": 0.0, "grads": {}, "sent": np.zeros(self.k),
                **dict.fromkeys(REPORT_COLUMNS, 0.0)}
        reports = [by_device.get(d, dict(idle, device=d)) for d in range(self.k)]
        link = np.array([r["sent"] for r in reports], dtype=np.int64)
        base = summarize_step(step, reports, link, self.micro_batches,
                              self.graph if return_grads else None, self.loss_reduction)
        columns = {name: np.array([r[name] for r in reports],
                                  dtype=np.int64 if name.endswith("_bytes") else float)
                   for name in REPORT_COLUMNS}
        return RayStepResult(**{f.name: getattr(base, f.name) for f in fields(StepResult)},
                             **columns, step_seconds=seconds, mode=self.mode,
                             recoveries=recoveries,
                             emulated_seconds=self._emulated_seconds,
                             dilation=None if self.emulation is None
                             else self.emulation.dilation)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Current parameter values (copies), gathered from their owners."""
        return {p: np.array(v, copy=True) for p, v in self.state_dict()["params"].items()}


def check_arguments(*, mode, checkpoint_every, loss_reduction, max_restarts, max_recoveries,
                    step_timeout, on_nan, spin) -> None:
    """ExecutorError naming the first RayExecutor argument out of its range."""
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
    if spin is not None and not (isinstance(spin, (int, float)) and 0 <= spin < 1):
        raise ExecutorError(f"spin: expected seconds in [0, 1), got {spin!r}")


def _owned(report: dict) -> dict:
    """Writable copies of a report's arrays (a plain call's result is a read-only view of
    the object store)."""
    grads = report.get("grads")
    if grads is not None:
        report = dict(report, grads={p: None if g is None else np.array(g, copy=True)
                                     for p, g in grads.items()})
    return dict(report, sent=np.array(report["sent"], copy=True))
