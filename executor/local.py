"""The single-process reference executor: k simulated devices running the plan's programs,
with every transfer counted per link.

Micro-batches: `forward_graph` is the per-micro-batch graph (built by the caller at batch/m).
`step(feeds)` takes full-batch feeds: an input whose leading dimension is m times the graph's
is split along axis 0 into m equal consecutive parts (micro-batch i gets rows
[i*b, (i+1)*b)); an input fed with exactly the graph's shape is given to every micro-batch.
With `loss_reduction="mean"` (default) the step loss is the mean of the micro-batch losses
and gradients are those of that mean (the loss gradient seed is 1/m), so m micro-batches of
a mean loss reproduce one full batch; with "sum" (a loss summed over the batch) the step loss
and gradients are the sums over micro-batches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from autodiff.ir import Graph
from executor.errors import ExecutorError
from executor.optim import Optimizer, make_optimizer
from executor.plan import build_plan
from executor.program import Plan
from executor.transport import Mailbox
from executor.worker import DeviceWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """One training step: the loss, parameter gradients (when asked for), bytes sent per link
    (`link_bytes[a, b]` from a to b), their total, and each device's compute seconds."""

    step: int
    loss: float
    losses: tuple[float, ...]
    grads: dict[str, np.ndarray | None] | None
    link_bytes: np.ndarray
    total_bytes: int
    compute_seconds: np.ndarray

    def to_dict(self) -> dict:
        return {"step": self.step, "loss": self.loss, "losses": list(self.losses),
                "link_bytes": self.link_bytes.tolist(), "total_bytes": self.total_bytes,
                "compute_seconds": self.compute_seconds.tolist()}


def split_feeds(graph: Graph, feeds: Mapping[str, np.ndarray], micro_batches: int
                ) -> list[dict[str, np.ndarray]]:
    """Full-batch feeds -> one feed dict per micro-batch (module docstring)."""
    out: list[dict[str, np.ndarray]] = [{} for _ in range(micro_batches)]
    for node in graph.inputs:
        if node.name not in feeds:
            raise ExecutorError(f"feeds: no value for input {node.name!r}")
        value = np.asarray(feeds[node.name])
        if value.shape == node.shape:
            parts = [value] * micro_batches
        elif (node.shape and value.ndim == len(node.shape)
              and value.shape[0] == node.shape[0] * micro_batches
              and value.shape[1:] == node.shape[1:]):
            parts = np.split(value, micro_batches, axis=0)
        else:
            raise ExecutorError(f"feeds: input {node.name!r} has shape {list(value.shape)}; the "
                                f"graph expects {list(node.shape)} per micro-batch "
                                f"({micro_batches} micro-batches)")
        for i, part in enumerate(parts):
            out[i][node.name] = part
    return out


def summarize_step(step: int, reports: list[dict], link_bytes: np.ndarray, micro_batches: int,
                   graph: Graph | None = None, loss_reduction: str = "mean") -> StepResult:
    """A StepResult from the DeviceWorker reports of one step (shared with the Ray executor);
    with `graph`, gradients of all its parameters (None for those without one)."""
    owner = next(r for r in reports if r["losses"])
    losses = ([owner["losses"][None]] if None in owner["losses"]
              else [owner["losses"][i] for i in range(micro_batches)])
    grads = None
    if graph is not None:
        grads = {p.name: None for p in graph.params}
        for r in reports:
            grads.update(r["grads"] or {})
    loss = float(np.sum(losses) if loss_reduction == "sum" else np.mean(losses))
    return StepResult(step=step, loss=loss, losses=tuple(losses), grads=grads,
                      link_bytes=link_bytes, total_bytes=int(link_bytes.sum()),
                      compute_seconds=np.array([r["compute_seconds"] for r in reports]))


def merged_state(parts: list[dict], step: int, optimizer: Optimizer) -> dict:
    """One executor state_dict from its devices' (DeviceWorker.state_dict), plus the step
    counter and the optimizer's config (shared with the Ray executor)."""
    merged = {key: {name: value for part in parts for name, value in part[key].items()}
              for key in ("params", "optimizer", "states")}
    return dict(merged, step=step, optimizer_config=optimizer.to_dict())


class LocalExecutor:
    """Trains `forward_graph` placed on k simulated devices in one process.

    `placement`: int array aligned with forward_graph.nodes or a partition Placement.
    `optimizer`: an optimizer, a name or a dict (executor.optim.make_optimizer).
    `params`: initial parameter values; default `autodiff.models.init_params(graph, seed)`.
    `loss_reduction`: "mean" or "sum" over micro-batches (module docstring).
    `plan`: a prebuilt plan (then placement, k, micro_batches and schedule are not used).
    `defer_weight_grads`: sum each weight gradient over micro-batches by stacked gemms once a
    device has sent its last packet, instead of one gemm per micro-batch
    (executor/accumulate.py: faster, more memory).
    """

    def __init__(self, forward_graph: Graph, placement, k: int, optimizer="sgd",
                 micro_batches: int = 1, schedule: str = "gpipe", seed: int = 0,
                 params: Mapping[str, np.ndarray] | None = None, plan: Plan | None = None,
                 loss_reduction: str = "mean", defer_weight_grads: bool = False):
        if loss_reduction not in ("mean", "sum"):
            raise ExecutorError(f"loss_reduction: expected 'mean' or 'sum', got {loss_reduction!r}")
        self.graph = forward_graph
        self.loss_reduction = loss_reduction
        self.optimizer: Optimizer = make_optimizer(optimizer)
        self.plan = plan if plan is not None else build_plan(
            forward_graph, placement, k, micro_batches=micro_batches, schedule=schedule,
            loss_scale=1.0 if loss_reduction == "sum" else None)
        self.k = self.plan.k
        self.micro_batches = self.plan.micro_batches
        if params is None:
            from autodiff.models.init import init_params
            params = init_params(forward_graph, seed)
        self.workers = [DeviceWorker(p, params, self.optimizer, defer_weight_grads)
                        for p in self.plan.programs]
        self.step_count = 0

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Current parameter values (copies), gathered from their owners."""
        return {p: v.copy() for w in self.workers for p, v in w.params.items()}

    def step(self, feeds: Mapping[str, np.ndarray], return_grads: bool = False) -> StepResult:
        """One training step on full-batch `feeds` (module docstring for micro-batches)."""
        per_mb = split_feeds(self.graph, feeds, self.micro_batches)
        for w in self.workers:
            w.begin_step(self.step_count, {(x, i): per_mb[i][x] for x in w.program.inputs
                                           for i in range(self.micro_batches)})
        mailbox = Mailbox(self.k)
        for d, b in self.plan.order:
            self.workers[d].run(b, mailbox)
        if mailbox.box:
            raise ExecutorError(f"step {self.step_count}: tensors sent but never received: "
                                f"{sorted(key.tensor for key in mailbox.box)[:5]}")
        reports = [w.report(grads=return_grads) for w in self.workers]
        result = summarize_step(self.step_count, reports, mailbox.link_bytes, self.micro_batches,
                                self.graph if return_grads else None, self.loss_reduction)
        self.step_count += 1
        return result

    def state_dict(self) -> dict:
        """Parameters, optimizer state, persistent state and the step counter (numpy arrays)."""
        return merged_state([w.state_dict() for w in self.workers], self.step_count,
                            self.optimizer)

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a `state_dict()` (e.g. from executor.checkpoint.load)."""
        config = state.get("optimizer_config")
        if config is not None and config.get("name") != self.optimizer.name:
            raise ExecutorError(f"checkpoint: optimizer {config.get('name')!r} does not match this "
                                f"executor's {self.optimizer.name!r}")
        for w in self.workers:
            w.load_state_dict(state)
        self.step_count = int(state.get("step", 0))
