"""One device inside a Ray actor: a DeviceWorker plus packet routing and measurements.

The Ray executor (executor/ray_executor.py) creates one DeviceActor per device and drives it
by one of three paths: `run` as a plain actor call or a compiled-graph node, one call of the
routes each; or `serve`, one long call that runs every step's calls over named pipes
(executor/ray_pipes.py).
"""
from __future__ import annotations

import os
import resource
import time
from typing import Mapping

import numpy as np

from executor.errors import ExecutorError
from executor.optim import Optimizer
from executor.program import Program
from executor.ray_runtime import patient_channel_reads, skip_torch_in_channels
from executor.worker import DeviceWorker


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
    """One device inside a Ray actor: a DeviceWorker plus packet routing and measurements.

    `run(blocks, head, *packets)` runs these consecutive blocks of the program (one call of
    Routes), each with the tensors the packets hold for it; `head` is the step input for
    block 0 (step number, this device's feeds, whether to return gradients) and is otherwise
    ignored. It returns the call's packets, then after the device's last block its step
    report (losses, bytes sent per target, timings, memory, gradients if asked); a call with
    neither returns None (a token for the compiled graph)."""

    def __init__(self, program: Program, k: int, positions: Mapping[tuple, Mapping],
                 optimizer: Optimizer, seed: int, params: Mapping | None, compiled: bool,
                 defer_weight_grads: bool = False, pin: bool = False):
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
        self.positions = {blocks: dict(v) for blocks, v in positions.items()}
        self.last = len(program.blocks) - 1
        # On the compiled path tensors arrive in channel buffers that the next step reuses.
        self.copy_received = compiled
        if compiled:
            skip_torch_in_channels()
            patient_channel_reads()
        self._reset(False)

    def _reset(self, return_grads: bool) -> None:
        self.return_grads = return_grads
        self.sent = np.zeros(self.k, dtype=np.int64)
        self.busy = 0.0
        self.copy_seconds = 0.0
        self.first_start: float | None = None

    def check_alive(self) -> None:
        """Raise ActorRestartedError in an actor Ray restarted after a crash."""
        if self.restarted:
            raise ActorRestartedError(f"device {self.worker.device}: the actor was restarted "
                                      "after a crash and holds no valid state")

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> tuple[int, str | None]:
        """(process id, Ray node id): the driver kills a hung actor on its own node itself."""
        import ray
        try:
            node = ray.get_runtime_context().get_node_id()
        except Exception:                        # an older Ray without node ids
            node = None
        return os.getpid(), node

    def run(self, blocks: tuple[int, ...], head, *packets):
        out, report = self._call(blocks, head, packets)
        if report is not None:
            out.append(report)
        elif not out:
            return None                          # a token: this call sends nothing
        return tuple(out) if len(out) > 1 else out[0]

    def _call(self, blocks: tuple[int, ...], head, packets) -> tuple[list[dict], dict | None]:
        """Run one call: its packets by position, and the step report after the last block."""
        self.check_alive()
        start = time.perf_counter()
        worker = self.worker
        if blocks[0] == 0:
            step, feeds, return_grads = head
            self._reset(return_grads)
            self.first_start = start
            worker.begin_step(step, feeds)
        received: dict[int, dict[str, np.ndarray]] = {}     # receiving block -> tensors
        for packet in packets:
            for (j, name), value in packet.items():
                received.setdefault(j, {})[name] = (np.array(value, copy=True)
                                                    if self.copy_received else value)
        self.copy_seconds += time.perf_counter() - start
        positions = self.positions[blocks]
        out: list[dict[tuple[int, str], np.ndarray]] = [
            {} for _ in set(pos for pos, _ in positions.values())]
        for index in blocks:
            for name, target, value in worker.run_block(index, received.pop(index, {})):
                pos, j = positions[(index, name, target)]
                out[pos][(j, name)] = value
                self.sent[target] += value.nbytes
        end = time.perf_counter()
        self.busy += end - start
        return out, (self._report(end) if blocks[-1] == self.last else None)

    def serve(self, reads: Mapping, writes: Mapping, calls: list, spin: float = 0.0) -> None:
        """The pipes path (executor/ray_pipes.py): until the driver says stop, read a command
        from the driver: ("step", head): run this device's `calls` in order, each as (blocks,
        incoming (source device, tag) per packet, outgoing (target device, tag) per packet),
        and write the step report (or the error that ended the step) back; ("state", None):
        write back `state_dict()` (checkpoints cost a pipe hop, not a Ray call). `spin`:
        seconds a packet receive polls before blocking (Endpoint.receive)."""
        from executor.ray_pipes import Endpoint, PipeClosed
        pipes = Endpoint(reads, writes)
        try:
            while True:
                try:
                    kind, head = pipes.receive("driver", "command")
                except PipeClosed:
                    return
                if kind == "state":                  # a checkpoint, between steps
                    pipes.send("driver", "state", self.state_dict())
                    continue
                try:
                    for blocks, incoming, outgoing in calls:
                        packets = [pipes.receive(src, tag, spin=spin) for src, tag in incoming]
                        out, report = self._call(blocks, head, packets)
                        for (dst, tag), packet in zip(outgoing, out):
                            pipes.send(dst, tag, packet)
                    pipes.flush()
                    pipes.send("driver", "report", report)
                except Exception as e:
                    pipes.send("driver", "report", {"error": e})
                    pipes.flush()
                    raise
        finally:
            pipes.close()

    def sees(self, path: str) -> bool:
        """Whether this actor's machine has `path` (the driver's pipe directory)."""
        return os.path.isdir(path)

    def _report(self, end: float) -> dict:
        span = end - (self.first_start if self.first_start is not None else end)
        return {**self.worker.report(grads=self.return_grads), "sent": self.sent.copy(),
                "busy_seconds": self.busy, "copy_seconds": self.copy_seconds,
                "wait_seconds": max(span - self.busy, 0.0), "nonfinite": self._nonfinite(),
                "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

    def _nonfinite(self) -> list[str]:
        """The parameters whose gradient of this step holds a NaN or an infinity."""
        return [p for p, g in self.worker.grads.items()
                if g is not None and not np.isfinite(g).all()]

    def state_dict(self) -> dict:
        self.check_alive()
        return self.worker.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.check_alive()
        self.worker.load_state_dict(state)
