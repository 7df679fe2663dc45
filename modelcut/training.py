"""Training orchestration: config -> per-micro-batch forward graph -> cluster -> placement ->
executor -> training loop, with checkpoints that a later run resumes exactly.

The data stream gives full-batch feeds for step s as a pure function of (seed, s), which the
executor splits into micro-batches. A checkpoint holds the executor's state, the losses so far,
the placement and a fingerprint of the setup, so a resumed run continues where it stopped.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from autodiff.errors import ModelcutError
from autodiff.ir import Graph
from modelcut.config import Config, ConfigError, GraphModel, TorchModel, load_config
from partition.cluster import Cluster

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
RECOVERY_EVERY = 10          # steps between the Ray executor's in-memory recovery points
# The default step timeout: this many predicted step times (a calibrated cluster predicts
# within ~20%; the built-in presets were measured 45-137x off), never under the floor.
STEP_TIMEOUT_FLOOR = 60.0
STEP_TIMEOUT_FACTOR = {True: 20.0, False: 1000.0}      # calibrated -> factor
CONNECT_TIMEOUT = 10.0       # s to reach a Ray head given by --address


class TrainingError(ModelcutError):
    """A training run cannot start or resume (a checkpoint that does not match the setup)."""


class NonFiniteStep(TrainingError):
    """A step's loss (or gradients) was NaN or infinite; `good_state`: whether the executor
    still holds the parameters from before that step (the Ray executor rolls it back)."""

    def __init__(self, message: str, step: int, good_state: bool):
        super().__init__(message)
        self.step, self.good_state = step, good_state


@dataclass(frozen=True)
class TrainingSetup:
    """Everything a run needs; `graph` is per micro-batch, `data(step)` gives full-batch feeds."""

    name: str
    source: str
    family: str
    graph: Graph
    batch: int
    cluster: Cluster
    micro_batches: int
    schedule: str
    optimizer: dict
    partition_options: dict
    steps: int
    seed: int
    checkpoint_every: int
    data: Callable[[int], dict] = field(repr=False)
    defer_weight_grads: bool = False
    params: Mapping | None = field(default=None, repr=False)   # imported models' weights
    step_timeout: float | None = None        # None: default_step_timeout of the prediction
    on_nan: str = "stop"
    max_recoveries: int = 3

    def fingerprint(self) -> dict:
        """What a checkpoint must agree with to be resumed by this setup."""
        return {"config": self.name, "graph": self.graph.name, "nodes": len(self.graph),
                "batch": self.batch, "micro_batches": self.micro_batches,
                "devices": list(self.cluster.device_names), "optimizer": dict(self.optimizer),
                "seed": self.seed}


# ------------------------------------------------------------------ setup
def load_training_setup(path: str | Path, *, devices: int | None = None,
                        algorithm: str | None = None, steps: int | None = None,
                        checkpoint_every: int | None = None,
                        objective: str | None = None, step_timeout: float | None = None,
                        on_nan: str | None = None, shard: str | None = None) -> TrainingSetup:
    """The setup a config describes, with the command line's overrides applied."""
    from autodiff.models import make_data

    config = load_config(path)
    t, p = config.training, config.partition
    if isinstance(config.model, TorchModel) or (isinstance(config.model, GraphModel)
                                                and config.model.graph.endswith(".onnx")):
        from modelcut.imported_model import imported_parts
        family, graph, batch, data, params = imported_parts(config, str(path))
    else:
        family, graph, full_graph = micro_batch_graphs(config, str(path))
        batch, data, params = config.model.batch, make_data(full_graph, family, t.seed or 0), None
    cluster = Cluster.from_spec(config.cluster_spec())
    if devices is not None and devices != cluster.k:
        cluster = cluster.resized(devices)
    pipelined = t.schedule in ("gpipe", "1f1b")
    options = {"algorithm": algorithm or p.algorithm, "epsilon": p.epsilon,
               "acyclic": p.acyclic or pipelined, "seed": p.seed or 0,
               "time_limit": p.time_limit, "objective": objective or p.objective,
               "pins": dict(p.pin) or None, "micro_batches": t.micro_batches,
               "optimizer": t.optimizer, "shard": shard or p.shard}
    if pipelined:
        options["schedule"] = t.schedule
    return TrainingSetup(
        name=config.name, source=str(path), family=family, graph=graph,
        batch=batch, cluster=cluster, micro_batches=t.micro_batches,
        schedule=t.schedule, optimizer=optimizer_spec(config), partition_options=options,
        steps=steps if steps is not None else t.steps, seed=t.seed or 0,
        checkpoint_every=t.checkpoint_every if checkpoint_every is None else checkpoint_every,
        data=data, defer_weight_grads=t.defer_weight_grads, params=params,
        step_timeout=step_timeout if step_timeout is not None else t.step_timeout,
        on_nan=on_nan or t.on_nan, max_recoveries=t.max_recoveries)


def micro_batch_graphs(config: Config, source: str) -> tuple[str, Graph, Graph]:
    """(builder name, forward graph of one micro-batch, forward graph of the full batch)."""
    from autodiff.models import BUILDERS

    if isinstance(config.model, GraphModel):
        raise ConfigError([f"{source}: model: training needs a model builder "
                           f"(mlp, gpt, lstm, resnet) or a `torch: module:factory` model to "
                           f"generate its data; {config.model.graph} is a graph file"])
    family, kwargs = config.model_kwargs()
    if config.training.dtype is not None:
        kwargs["dtype"] = config.training.dtype
    m = config.training.micro_batches
    if kwargs["batch"] % m:
        raise ConfigError([f"{source}: training.micro_batches: expected a divisor of "
                           f"model.batch ({kwargs['batch']}), got {m}"])
    full = BUILDERS[family](**kwargs)
    micro = full if m == 1 else BUILDERS[family](**{**kwargs, "batch": kwargs["batch"] // m})
    return family, micro, full


def optimizer_spec(config: Config) -> dict:
    """The training section's optimizer as `executor.optim.make_optimizer` takes it."""
    t = config.training
    spec = {"name": t.optimizer, "lr": t.lr, "weight_decay": t.weight_decay}
    if t.optimizer == "momentum":
        spec["momentum"] = t.momentum
    elif t.optimizer == "adam":
        spec["beta1"], spec["beta2"] = t.betas
    return spec


# ------------------------------------------------------------------ placement and prediction
def place(setup: TrainingSetup):
    """partition() of the per-micro-batch graph with the setup's options."""
    from partition.api import partition
    return partition(setup.graph, setup.cluster, **setup.partition_options)


def apply_sharding(setup: TrainingSetup, placement) -> TrainingSetup:
    """The setup training what `placement` places: with `shard: auto` and a kept scheme, the
    sharded graph, whose initial params are the unsharded model's split (autodiff.shard)."""
    from partition.sharding import sharded_graph
    graph = sharded_graph(setup.graph, placement)
    if graph is setup.graph:
        return setup
    from autodiff.models.init import init_params
    from autodiff.shard import split_params
    params = setup.params if setup.params is not None else init_params(setup.graph, setup.seed)
    return replace(setup, graph=graph, params=split_params(graph, params))


def placement_from_assignment(setup: TrainingSetup, assignment, origin: str):
    """A Placement (with its metrics) of a saved assignment (a checkpoint's)."""
    from partition.metrics import check_assignment, compute_metrics
    from partition.placement import Placement

    a = check_assignment(np.asarray(assignment, dtype=np.int64), len(setup.graph),
                         setup.cluster.k, who=origin)
    metrics = compute_metrics(setup.graph, a, setup.cluster, micro_batches=setup.micro_batches,
                              optimizer=setup.optimizer["name"])
    return Placement(assignment=a, node_names=tuple(n.name for n in setup.graph.nodes),
                     device_names=setup.cluster.device_names, algorithm=origin, seconds=0.0,
                     metrics=metrics)


def step_plan(setup: TrainingSetup, placement):
    """The executor's Plan of a training step (both executors run this very plan)."""
    from executor.plan import build_plan
    return build_plan(setup.graph, placement, setup.cluster.k,
                      micro_batches=setup.micro_batches, schedule=setup.schedule)


def simulate_step(setup: TrainingSetup, plan) -> dict:
    """The simulated step (executor.timing) of the executor's own `plan`, in the report's form."""
    from executor.timing import simulation_summary
    return simulation_summary(plan, setup.cluster, setup.optimizer["name"])


def predicted_summary(setup: TrainingSetup, placement, simulation: Mapping) -> dict:
    """What the partitioner and the step simulator (`simulate_step`) predict for one step."""
    metrics = placement.metrics
    return {"micro_batches": setup.micro_batches,
            "forward_volume": int(metrics.forward_volume),
            "backward_volume": int(metrics.backward_volume),
            "step_volume": int(metrics.step_volume),
            "link_bytes": np.asarray(metrics.link_traffic).astype(int).tolist(),
            "step_time": float(simulation["makespan"]),
            "schedule": simulation.get("schedule") or "list",
            "busy": dict(simulation.get("busy") or {}), "bubble": simulation.get("bubble")}


def is_calibrated(cluster: Cluster) -> bool:
    """Whether the cluster holds measured costs (`modelcut calibrate`); the presets' nominal
    FLOP/s predict a small model's step many times too fast."""
    return bool(cluster.step_overhead) or any(d.op_overhead or d.op_flops
                                              for d in cluster.devices)


def default_step_timeout(predicted_seconds: float, calibrated: bool) -> float:
    """Seconds a step may take before its actors count as hung: STEP_TIMEOUT_FACTOR times the
    predicted step time, at least STEP_TIMEOUT_FLOOR."""
    predicted = predicted_seconds if math.isfinite(predicted_seconds) else 0.0
    return max(STEP_TIMEOUT_FLOOR, STEP_TIMEOUT_FACTOR[bool(calibrated)] * max(predicted, 0.0))


def check_address(address: str | None) -> None:
    """Fail in one line, within CONNECT_TIMEOUT, on a Ray address that cannot work: `ray://`
    without the `client` extra, or a host:port nobody listens on (Ray retries it for minutes)."""
    if not address or address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (what `ray[client]` adds)
        except ImportError:
            raise TrainingError(f"--address {address}: Ray Client needs the `client` extra: "
                                "pip install 'modelcut[client]' (or 'ray[client]')") from None
    elif "://" in address:
        raise TrainingError(f"--address {address}: expected host:port, ray://host:port or auto")
    host, sep, port = address.removeprefix("ray://").rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise TrainingError(f"--address {address}: expected host:port with a port number")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                 timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise TrainingError(f"--address {address}: cannot reach a Ray head there "
                            f"({e.strerror or e})") from None


def strict_json(value):
    """`value` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        return strict_json(value.item())
    return value


def dumps_strict(value) -> str:
    """JSON text that strict parsers accept (no bare NaN or Infinity)."""
    return json.dumps(strict_json(value), indent=2, allow_nan=False)


# ------------------------------------------------------------------ executors
@contextmanager
def open_executor(kind: str, setup: TrainingSetup, placement, *, address: str | None = None,
                  step_timeout: float | None = None, plan=None, emulate: bool = False):
    """A LocalExecutor, or a RayExecutor with one actor per device (starting a local Ray unless
    `address` names a cluster); on exit the actors stop, and so does a Ray started here.
    `emulate`: the actors emulate the setup's cluster (executor/emulate.py)."""
    if kind not in ("ray", "local"):
        raise TrainingError(f"executor: expected ray or local, got {kind!r}")
    if emulate and kind != "ray":
        raise TrainingError("emulate: emulated devices run on the Ray executor")
    common = dict(optimizer=setup.optimizer, micro_batches=setup.micro_batches,
                  schedule=setup.schedule, seed=setup.seed,
                  defer_weight_grads=setup.defer_weight_grads, params=setup.params, plan=plan)
    if kind == "local":
        from executor.local import LocalExecutor
        yield LocalExecutor(setup.graph, placement, setup.cluster.k, **common)
        return
    from executor.ray_executor import RayExecutor
    from executor.ray_runtime import start_ray, stop_ray
    check_address(address)
    started = start_ray(address=address, include_dashboard=False)
    try:
        with RayExecutor(setup.graph, placement, setup.cluster.k,
                         checkpoint_every=setup.checkpoint_every or RECOVERY_EVERY,
                         step_timeout=step_timeout or setup.step_timeout,
                         on_nan=setup.on_nan, max_recoveries=setup.max_recoveries,
                         emulate=setup.cluster if emulate else None, **common) as executor:
            yield executor
    finally:
        if started:
            stop_ray()


# ------------------------------------------------------------------ the loop
@dataclass(frozen=True)
class StepRecord:
    """One measured step: loss, wall seconds, bytes per link (`link_bytes[a, b]` from a to b),
    and per device the seconds spent computing ops and waiting."""

    step: int
    loss: float
    seconds: float
    link_bytes: np.ndarray
    compute_seconds: np.ndarray
    wait_seconds: np.ndarray

    def to_dict(self) -> dict:
        return {"step": self.step, "loss": self.loss, "seconds": self.seconds,
                "link_bytes": self.link_bytes.tolist(),
                "compute_seconds": self.compute_seconds.tolist(),
                "wait_seconds": self.wait_seconds.tolist()}


def run_steps(executor, setup: TrainingSetup, stop: int, *, losses: list[float],
              checkpoint_dir: Path | None = None, assignment=None,
              on_step: Callable[[StepRecord], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> list[StepRecord]:
    """Train from the executor's step count up to step `stop`, extending `losses` in place and
    checkpointing every `setup.checkpoint_every` steps and at the end; returns early when
    `should_stop()` says so (Ctrl-C, SIGTERM); NonFiniteStep on a NaN or infinite loss."""
    from executor.errors import NonFiniteError

    records = []
    every = setup.checkpoint_every
    while executor.step_count < stop:
        if should_stop is not None and should_stop():
            break
        step = executor.step_count
        feeds = setup.data(step)
        start = time.perf_counter()
        try:
            result = executor.step(feeds)
        except NonFiniteError as e:               # the Ray executor rolled the step back
            raise NonFiniteStep(str(e), step, good_state=True) from None
        if not math.isfinite(result.loss) and getattr(executor, "on_nan", None) != "skip":
            raise NonFiniteStep(f"step {step}: the loss is {result.loss}; training stopped",
                                step, good_state=False)
        seconds = getattr(result, "emulated_seconds", None)   # in the emulated cluster's s
        if seconds is None:
            seconds = float(getattr(result, "step_seconds", time.perf_counter() - start))
        compute = np.asarray(result.compute_seconds, dtype=float)
        wait = getattr(result, "wait_seconds", None)
        wait = np.maximum(seconds - compute, 0.0) if wait is None else np.asarray(wait, float)
        record = StepRecord(step=step, loss=float(result.loss), seconds=seconds,
                            link_bytes=np.asarray(result.link_bytes, dtype=np.int64),
                            compute_seconds=compute, wait_seconds=wait)
        records.append(record)
        losses.append(record.loss)
        done = executor.step_count
        if checkpoint_dir is not None and every and (done % every == 0 or done == stop):
            save_checkpoint(checkpoint_dir, executor, setup, losses, assignment)
        if on_step is not None:
            on_step(record)
    return records


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(directory: Path, executor, setup: TrainingSetup, losses: list[float],
                    assignment) -> Path:
    """Write `directory/step-NNNNNN` (npz + json, executor/checkpoint.py) atomically: into a
    temporary folder first, renamed when complete."""
    from executor import checkpoint

    state = executor.state_dict()
    step = int(state["step"])
    target = Path(directory) / f"{CHECKPOINT_PREFIX}{step:06d}"
    partial = Path(directory) / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    metadata = {"fingerprint": setup.fingerprint(), "losses": [float(x) for x in losses],
                "assignment": np.asarray(assignment).astype(int).tolist()}
    checkpoint.save(partial, state, metadata)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    log.info("checkpoint of step %d written to %s", step, target)
    return target


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder `path` names: itself if it holds checkpoint.json, else the latest
    `checkpoints/step-*` of the run folder `path`."""
    path = Path(path)
    if (path / "checkpoint.json").is_file():
        return path
    found = sorted(p for p in (path / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")
                   if (p / "checkpoint.json").is_file())
    if not found:
        raise TrainingError(f"--resume {path}: no checkpoint found (expected a run folder with "
                            f"checkpoints/{CHECKPOINT_PREFIX}*/checkpoint.json, or a checkpoint "
                            "folder)")
    return found[-1]


def run_folder(checkpoint_folder: Path) -> Path:
    """The run folder a `checkpoints/step-*` folder belongs to."""
    return checkpoint_folder.parent.parent


def load_checkpoint(path: Path, setup: TrainingSetup) -> dict:
    """A checkpoint's state dict, checked against `setup.fingerprint()`; its metadata holds the
    losses so far and the assignment."""
    from executor import checkpoint

    state = checkpoint.load(path)
    meta = state.get("metadata") or {}
    saved = meta.get("fingerprint")
    if not isinstance(saved, dict) or "losses" not in meta or "assignment" not in meta:
        raise TrainingError(f"--resume {path}: not a `modelcut train` checkpoint (its "
                            "checkpoint.json metadata has no fingerprint, losses or assignment)")
    differ = [f"{key}: checkpoint {saved.get(key)!r}, this run {value!r}"
              for key, value in setup.fingerprint().items() if saved.get(key) != value]
    if differ:
        raise TrainingError(f"--resume {path}: the checkpoint was written by a different setup ("
                            + "; ".join(differ) + ")")
    if len(meta["losses"]) != int(state["step"]):
        raise TrainingError(f"--resume {path}: the checkpoint is at step {state['step']} but "
                            f"lists {len(meta['losses'])} losses")
    return state


# ------------------------------------------------------------------ measurements
def measured_summary(records: list[StepRecord], device_names,
                     dilation: float | None = None) -> dict:
    """Bytes per step, step time and per-device compute / wait / utilisation (the first step, a
    warm-up, not timed when there are more); with `dilation`, in the emulated cluster's s."""
    first = records[0].link_bytes
    timed = records[1:] if len(records) > 1 else records
    seconds = np.array([r.seconds for r in timed])
    scale = 1.0 if dilation is None else 1.0 / dilation     # real seconds -> emulated ones
    compute = scale * np.mean([r.compute_seconds for r in timed], axis=0)
    wait = scale * np.mean([r.wait_seconds for r in timed], axis=0)
    mean_step = float(seconds.mean())
    actors = [{"name": name, "compute_seconds": float(c), "wait_seconds": float(w),
               "utilisation": float(c / mean_step) if mean_step > 0 else 0.0}
              for name, c, w in zip(device_names, compute, wait)]
    return {"steps": len(records), "steps_timed": len(timed),
            "bytes_per_step": int(first.sum()), "link_bytes": first.astype(int).tolist(),
            "bytes_constant": all(np.array_equal(r.link_bytes, first) for r in records),
            "bytes_per_step_each": [int(r.link_bytes.sum()) for r in records],
            "step_time": float(np.median(seconds)), "step_time_mean": mean_step,
            "step_times": [float(r.seconds) for r in records], "actors": actors,
            **({} if dilation is None else {"dilation": float(dilation), "emulated": True})}


def byte_mismatches(measured: Mapping, predicted: Mapping, device_names) -> list[str]:
    """Where measured bytes differ from the predicted step volume V: the total, each link, and
    steps whose bytes differ from the first step's (empty when they agree exactly)."""
    problems = []
    if measured["bytes_per_step"] != predicted["step_volume"]:
        problems.append(f"measured {measured['bytes_per_step']:,} bytes per step, but the "
                        f"partitioner predicted V = {predicted['step_volume']:,}")
    got, want = np.asarray(measured["link_bytes"]), np.asarray(predicted["link_bytes"])
    for a, b in zip(*np.nonzero(got != want)):
        problems.append(f"link {device_names[a]} -> {device_names[b]}: measured "
                        f"{int(got[a, b]):,} bytes per step, predicted {int(want[a, b]):,}")
    if not measured["bytes_constant"]:
        problems.append("bytes per step changed between steps: "
                        f"{sorted(set(measured['bytes_per_step_each']))}")
    return problems
