"""One device's runtime: its parameters, optimizer state and tensors, running its Program.

Per step: `begin_step(step, feeds)`, then `run(i, transport)` for each block, in the plan's
global order (the local executor) or in program order with each Recv waiting for its tensor
(a Ray actor; `transport`: executor/transport.py); `report()` gives the step's losses,
compute time and gradients.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from autodiff.interpreter import NodeKernel, const_value, retain_freed_memory
from executor.accumulate import add_matmul, fused_products, stacked_product
from executor.errors import ExecutorError
from executor.optim import Optimizer
from executor.program import (Accumulate, ApplyUpdate, Compute, Program, Recv, Send, SetState,
                              transfer_key)
from executor.transport import Transport


class DeviceWorker:
    """Holds one device's parameters, optimizer state, persistent state and step tensors."""

    def __init__(self, program: Program, params: Mapping[str, np.ndarray], optimizer: Optimizer,
                 defer_weight_grads: bool = False):
        retain_freed_memory()    # steps reuse the same buffer sizes: no page faults per step
        self.program = program
        self.device = program.device
        self.optimizer = optimizer
        missing = [p for p in program.params if p not in params]
        if missing:
            raise ExecutorError(f"device {self.device}: no initial value for parameter "
                                f"{missing[0]!r}")
        self.params = {p: np.array(params[p], copy=True) for p in program.params}
        for p, value in self.params.items():
            if value.shape != program.nodes[p].shape:
                raise ExecutorError(f"device {self.device}: parameter {p!r} has shape "
                                    f"{list(value.shape)}, the graph says "
                                    f"{list(program.nodes[p].shape)}")
        self.opt_state = {p: optimizer.init_state(self.params[p]) for p in program.params}
        self.states = {s: np.array(const_value(program.nodes[s]), copy=True)
                       for s in program.states}
        self.consts = {name: const_value(node) for name, node in program.nodes.items()
                       if node.op == "const" and name not in self.states}
        self.kernels = {name: None if node.is_source else NodeKernel.of(node)
                        for name, node in program.nodes.items()}
        # Products summed over micro-batches go straight into their sum (executor/accumulate.py).
        self.fused = fused_products(program)
        # Deferred: their operands are kept and summed by one stacked gemm when first needed.
        self.defer = bool(defer_weight_grads)
        last = {b.micro_batch: i for i, b in enumerate(program.blocks) if b.micro_batch is not None}
        self.release_after = {i: mb for mb, i in last.items()}
        # Deferred sums are started in the block after the last one that sends anything (a
        # first stage: its first backward after its last forward): from there on no other
        # device waits on this one, and the block's call runs after the last packet is out.
        sending = [i for i, b in enumerate(program.blocks)
                   if b.micro_batch is not None and any(isinstance(s, Send) for s in b.steps)]
        self.start_deferred_in = sending[-1] + 1 if (self.defer and sending) else None
        self.clock = None        # an emulated device's VirtualClock (executor/emulate.py)
        self.begin_step(0, {})

    def begin_step(self, step: int, feeds: Mapping[tuple[str, int], np.ndarray]) -> None:
        """Forget the previous step's tensors; `feeds[(input name, micro-batch)]` for own inputs."""
        self.step = int(step)
        self.values: dict[tuple[str, int | None], np.ndarray] = {}
        self.pending: dict[str, tuple[np.dtype, list[tuple[np.ndarray, np.ndarray]]]] = {}
        self.feeds: dict[tuple[str, int], np.ndarray] = dict(feeds)
        self.losses: dict[int | None, float] = {}
        self.grads: dict[str, np.ndarray | None] = {}
        self.compute_seconds = self.update_seconds = 0.0
        self.peak_value_bytes = 0

    def run(self, index: int, transport: Transport) -> None:
        """Run block `index` of the program, sending and receiving through `transport`."""
        program = self.program
        block = program.blocks[index]
        mb = block.micro_batch
        values = self.values
        fused = self.fused.get(index, {})
        if self.pending and (mb is None or index == self.start_deferred_in):
            self._finish_deferred()            # the sums are read only in per-step blocks
        clock = self.clock
        for j, s in enumerate(block.steps):
            if isinstance(s, Compute):
                start = time.perf_counter()
                for name in s.nodes:
                    if name in fused:
                        self._accumulate_product(name, mb, fused[name])
                    else:
                        values[program.key(name, mb)] = self._run_node(name, mb)
                self.compute_seconds += time.perf_counter() - start
            elif isinstance(s, Recv):
                values[program.key(s.tensor, mb)], arrival = transport.receive(
                    transfer_key(program, block, s))
                if clock is not None:
                    clock.arrived(arrival)
                continue
            elif isinstance(s, Send):
                transport.send(transfer_key(program, block, s), values[program.key(s.tensor, mb)],
                               None if clock is None else clock.stamp(index, j, s.target))
                continue
            elif isinstance(s, Accumulate) and s.tensor not in fused:
                value = values[program.key(s.tensor, mb)]
                total = values.get((s.into, None))
                if total is None:
                    values[(s.into, None)] = np.array(value, copy=True)   # owned from here on
                elif np.shape(value) == total.shape and total.dtype == np.result_type(
                        total, value):
                    np.add(total, value, out=total)
                else:
                    values[(s.into, None)] = total + value
            elif isinstance(s, ApplyUpdate):
                start = time.perf_counter()
                self._apply_update(s)
                self.update_seconds += time.perf_counter() - start
            elif isinstance(s, SetState):
                value = values[program.key(s.tensor, mb)]
                self.states[s.state] = np.asarray(value * s.scale if s.scale != 1.0 else value,
                                                  dtype=program.nodes[s.state].dtype)
            if clock is not None:
                clock.advance(index, j)            # a compute-like step: pad to its model time
        self.peak_value_bytes = max(self.peak_value_bytes, self._held_bytes())
        if index in self.release_after:
            done = self.release_after[index]
            for key in [(tensor, mb) for tensor, mb in values if mb == done]:
                del values[key]

    def _held_bytes(self) -> int:
        """Bytes of the step's tensors held now: the values, plus deferred operands that are
        no longer among them (each array once)."""
        held = {id(v): getattr(v, "nbytes", 0) for v in self.values.values()}
        for x in (x for _, pairs in self.pending.values() for pair in pairs for x in pair):
            held.setdefault(id(x), x.nbytes)
        return sum(held.values())

    def _run_node(self, name: str, mb: int | None) -> np.ndarray:
        program = self.program
        node = program.nodes[name]
        if node.op == "param":
            return self.params[name]
        if node.op == "const":
            return self.states[name] if name in self.states else self.consts[name]
        if node.op == "input":
            try:
                return self.feeds[(name, mb)]
            except KeyError:
                raise ExecutorError(f"device {self.device}: no feed for input {name!r} "
                                    f"(micro-batch {mb})") from None
        kernel = self.kernels[name]
        args = [] if kernel.random else [self.values[program.key(x, mb)] for x in node.inputs]
        try:
            result = kernel(args, self.step, 0 if mb is None else mb)
        except Exception as e:
            raise ExecutorError(kernel.failure(e, args, f"device {self.device}: ")) from e
        if name == program.loss:
            self.losses[mb] = float(result)
        return result

    def _accumulate_product(self, name: str, mb: int | None, into: str) -> None:
        """Add matmul node `name` of micro-batch `mb` into the sum `into` (its only use):
        the first product becomes the sum, later ones are added in place by one gemm; when
        deferring, keep the operands for `_finish_deferred` instead."""
        node = self.program.nodes[name]
        a, b = (self.values[self.program.key(x, mb)] for x in node.inputs)
        if self.defer and a.ndim == 2 and b.ndim == 2:
            self.pending.setdefault(into, (np.dtype(node.dtype), []))[1].append((a, b))
            return
        total = self.values.get((into, None))
        if total is None:
            self.values[(into, None)] = self._run_node(name, mb)     # a fresh array
            return
        add_matmul(total, a, b)

    def _finish_deferred(self) -> None:
        """Add every deferred product to its sum (executor/accumulate.py: one stacked gemm
        per sum over the operands held now)."""
        start = time.perf_counter()
        for into, (dtype, pairs) in self.pending.items():
            part = stacked_product(pairs, dtype)
            total = self.values.get((into, None))
            if total is None:
                self.values[(into, None)] = part
            else:
                np.add(total, part, out=total)
        self.pending = {}
        self.compute_seconds += time.perf_counter() - start

    def _apply_update(self, step: ApplyUpdate) -> None:
        for p, g in zip(step.params, step.grads):
            grad = None if g is None else self.values[(g, None)]
            self.grads[p] = grad
            self.params[p], self.opt_state[p] = self.optimizer.update(
                self.params[p], grad, self.opt_state[p])

    def report(self, grads: bool = False) -> dict:
        """What this step produced here: the loss per micro-batch (key None when the loss does
        not depend on the batch), seconds computing nodes and running the optimizer, the peak
        bytes of the tensors held during the step (measured at the end of each block, before a
        finished micro-batch is released) and, if asked, the owned parameters' gradients."""
        return {"device": self.device, "losses": dict(self.losses),
                "compute_seconds": self.compute_seconds, "update_seconds": self.update_seconds,
                "peak_value_bytes": self.peak_value_bytes,
                "grads": dict(self.grads) if grads else None}

    def state_dict(self) -> dict:
        """Copies of this device's parameters, optimizer state and persistent state."""
        return {"params": {p: v.copy() for p, v in self.params.items()},
                "optimizer": {p: {k: np.array(v, copy=True) for k, v in st.items()}
                              for p, st in self.opt_state.items()},
                "states": {s: v.copy() for s, v in self.states.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what `state_dict` returned (entries for other devices are ignored)."""
        for p in self.program.params:
            if p not in state["params"]:
                raise ExecutorError(f"device {self.device}: checkpoint has no parameter {p!r}")
            value = np.array(state["params"][p], copy=True)
            if value.shape != self.params[p].shape:
                raise ExecutorError(f"device {self.device}: checkpoint parameter {p!r} has shape "
                                    f"{list(value.shape)}, expected {list(self.params[p].shape)}")
            self.params[p] = value
            saved = state.get("optimizer", {}).get(p)
            fresh = self.optimizer.init_state(value)
            if saved is not None and set(saved) != set(fresh):
                raise ExecutorError(f"device {self.device}: checkpoint optimizer state of {p!r} "
                                    f"has slots {sorted(saved)}, the optimizer uses "
                                    f"{sorted(fresh)}")
            self.opt_state[p] = ({k: np.array(v, copy=True) for k, v in saved.items()}
                                 if saved is not None else fresh)
        for s in self.states:
            if s in state.get("states", {}):
                self.states[s] = np.array(state["states"][s], copy=True)
