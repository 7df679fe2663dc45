"""One device inside a Ray actor: a DeviceWorker plus its transport and measurements, driven
by the Ray executor over named pipes (`serve`) or by plain actor calls (`run`)."""
from __future__ import annotations

import os
import resource
import time
from typing import Mapping, NamedTuple

import numpy as np

from executor.errors import ExecutorError
from executor.optim import Optimizer
from executor.program import Program
from executor.ray_calls import call_targets
from executor.transport import CallTransport
from executor.worker import DeviceWorker


class StepCommand(NamedTuple):
    """What a device needs to start a step: the step number, its feeds ((input, micro-batch)
    -> array), whether to report gradients, and on an emulated step (executor/emulate.py)
    its padded step seconds and the common start time t0 (else None)."""

    step: int
    feeds: Mapping
    return_grads: bool
    emulated_seconds: tuple | None = None
    t0: float | None = None


class ActorRestartedError(ExecutorError):
    """A call reached an actor that Ray restarted after a crash: its state is gone, so it
    refuses to run (the driver restores every device from its checkpoint instead)."""


def pin_to_cpu(device: int) -> int | None:
    """Keep this process on one of the CPUs it may use (device d on the d-th, round robin):
    the kernel then wakes an actor blocked on a pipe on its own CPU, not on the writer's
    (measured here: ~10% off the small mlp's step). None where affinity is not supported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[device % len(cpus)]
    os.sched_setaffinity(0, {cpu})
    return cpu


class DeviceActor:
    """One device inside a Ray actor: a DeviceWorker, its transport and measurements.

    `run(blocks, command, *packets)` runs these consecutive blocks as one plain call:
    `command` is the StepCommand when the call starts the step (block 0) and is otherwise
    ignored; `packets` are the returns of the calls whose blocks send to these (dicts
    TransferKey -> array, or -> (array, arrival) when emulated). It returns one such packet
    per device its sends go to (`call_targets` order), and after the device's last block
    also the step report (losses, bytes sent per target, timings, memory, gradients if
    asked); a call with neither returns None.
    """

    def __init__(self, program: Program, k: int, optimizer: Optimizer, seed: int,
                 params: Mapping | None, defer_weight_grads: bool = False, pin: bool = False):
        import ray

        # A restarted actor has lost its state: calls still queued for the dead one must fail.
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        if params is None:
            from autodiff.models.init import init_param
            params = {p: init_param(program.nodes[p], seed) for p in program.params}
        self.worker = DeviceWorker(program, params, optimizer, defer_weight_grads)
        if pin:
            pin_to_cpu(program.device)
        self.k = k
        self.last = len(program.blocks) - 1
        self._begin(StepCommand(0, {}, False))

    def _begin(self, command: StepCommand) -> None:
        """Start a step: the worker's, the clock when emulated, the measurements."""
        self.worker.begin_step(command.step, command.feeds)
        self.worker.clock = None
        if command.emulated_seconds is not None:
            from executor.emulate import VirtualClock
            self.worker.clock = VirtualClock(command.emulated_seconds, self.k)
            self.worker.clock.start(command.t0)
        self.return_grads = command.return_grads
        self.sent = np.zeros(self.k, dtype=np.int64)
        self.busy = 0.0
        self.first_start = time.perf_counter()

    def check_alive(self) -> None:
        """Raise ActorRestartedError in an actor Ray restarted after a crash."""
        if self.restarted:
            raise ActorRestartedError(f"device {self.worker.device}: the actor was restarted "
                                      "after a crash and holds no valid state")

    def where(self) -> tuple[int, str | None]:
        """(process id, Ray node id): the driver kills a hung actor on its own node itself."""
        import ray
        try:
            node = ray.get_runtime_context().get_node_id()
        except Exception:                        # an older Ray without node ids
            node = None
        return os.getpid(), node

    def run(self, blocks: tuple[int, ...], command: StepCommand | None, *packets):
        """The plain path: these blocks as one call (class docstring)."""
        self.check_alive()
        if blocks[0] == 0:
            self._begin(command)
        start = time.perf_counter()
        received = {key: value for packet in packets for key, value in packet.items()}
        transport = CallTransport(received, self.k)
        for index in blocks:
            self.worker.run(index, transport)
        self.sent += transport.sent_bytes
        end = time.perf_counter()
        self.busy += end - start
        out = [transport.packet(t) for t in call_targets(self.worker.program, blocks)]
        if blocks[-1] == self.last:
            out.append(self._report(end))
        return None if not out else out[0] if len(out) == 1 else tuple(out)

    def serve(self, reads: Mapping, writes: Mapping, spin: float = 0.0) -> None:
        """The pipes path (executor/ray_pipes.py): until the driver says stop, read a command
        from the driver: ("step", a StepCommand as a plain tuple): run this device's blocks in
        program order over a PipeTransport and write the step report (or the error that ended
        the step) back; ("state", None): write back `state_dict()` (a checkpoint costs a pipe
        hop, not a Ray call). `spin`: seconds a receive polls before blocking."""
        from executor.ray_pipes import Endpoint, PipeClosed
        pipes = Endpoint(reads, writes)
        try:
            while True:
                try:
                    kind, command = pipes.receive("driver", "command")
                except PipeClosed:
                    return
                if kind == "state":                  # a checkpoint, between steps
                    pipes.send("driver", "state", self.state_dict())
                    continue
                try:
                    report = self._serve_step(pipes, StepCommand(*command), spin)
                    pipes.send("driver", "report", report)
                except Exception as e:
                    pipes.send("driver", "report", {"error": e})
                    pipes.flush()
                    raise
        finally:
            pipes.close()

    def _serve_step(self, pipes, command: StepCommand, spin: float) -> dict:
        """One step on the pipes: every block in program order; the report."""
        from executor.ray_pipes import PipeTransport
        self.check_alive()
        self._begin(command)
        transport = PipeTransport(pipes, self.worker.program, self.k, spin)
        for index in range(self.last + 1):
            self.worker.run(index, transport)
        pipes.flush()
        end = time.perf_counter()
        self.sent = transport.sent_bytes
        self.busy = end - self.first_start - transport.wait_seconds
        return self._report(end)

    def sees(self, path: str) -> bool:
        """Whether this actor's machine has `path` (the driver's pipe directory)."""
        return os.path.isdir(path)

    def _report(self, end: float) -> dict:
        span = end - self.first_start
        worker = self.worker.report(grads=self.return_grads)
        busy = self.busy if self.busy < span else span
        return {**worker, "sent": self.sent.copy(), "busy_seconds": busy,
                "copy_seconds": 0.0, "wait_seconds": max(span - busy, 0.0),
                # the parameters whose gradient of this step holds a NaN or an infinity
                "nonfinite": [p for p, g in self.worker.grads.items()
                              if g is not None and not np.isfinite(g).all()],
                "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

    def state_dict(self) -> dict:
        self.check_alive()
        return self.worker.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.check_alive()
        self.worker.load_state_dict(state)
