"""Measure this machine as a cluster: what each op, transfer and step costs on the Ray executor.

One Ray actor per device (BLAS limited to one thread, as the Ray executor runs them), measured
one actor at a time so they do not share cores:
- FLOP/s: the median, over a few matrix sizes, of each size's median rate (2 n^3 FLOPs per
  n x n matmul); `op_flops.conv2d`, the rate of conv2d with its two gradient ops (their
  FLOPs over their time) on a few small image batches; and `op_flops["*"]`, the rate of the
  other ops (elementwise, reductions, normalizations: memory-bound in numpy, FLOPs as the op
  registry counts them).
- `op_overhead`: the seconds per executed op of the executor's own worker (executor.worker)
  training tiny models of each bundled family, where FLOPs do not count: numpy dispatch and
  the interpreter, which dominate small models.
Links: for each pair of actors and a few payload sizes, the median time for actor A's return
value to reach actor B, through the transport the executor uses: a Ray Compiled Graph channel
(`transport="compiled"`, the executor's default path; the time of a one-actor graph is
subtracted) or a plain call taking an ObjectRef (`"plain"`); `latency + bytes / bandwidth` is
fitted by least squares (to the median over pairs when all actors share one machine: their
differences are noise).
From the executor's own runs (modelcut/calibration_costs.py: probe models, none a bundled
config, trained through the Ray executor on 1, 2 and 4 actors): each device's
`op_costs` (per op kind of the training graph) and `update_costs` (per optimizer), scaled by
`compute_scale` (the executor's seconds in ops and updates over what the simulator predicts
for them) plus `call_overhead` seconds per op (the rest of the calls' own work); the
cluster's `step_overhead` and the links' latency (a hop between actors as the executor pays
it), at which the simulator best predicts the probes' steps; the poll delay of the
executor's channel reads (timed on a busy one-actor graph, on several machines) and the
machine's `cores` when the actors share one (pinned to them round robin; `poll_after` is
then how long a device keeps loading its processor after its ops, fitted with the rest).
Without those runs (`steps=0`) the step overhead is the one-actor
round trip (driver -> actor -> driver) and the latency the probes' fit. The result is written
as a `cluster:` section with explicit devices and links, which a config reads with
`cluster: {file: ...}`.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from autodiff.errors import ModelcutError

log = logging.getLogger(__name__)

DEFAULT_MATMUL_SIZES = (128, 256, 512)
DEFAULT_PAYLOADS = (1024, 64 * 1024, 1024**2, 8 * 1024**2)
LINK_ATTEMPTS = 3   # link measurements retried (twice the repeats each time) when noise spoils them
DEFAULT_REPEATS = 7
DEFAULT_STEPS = 40   # training steps of each probe through the Ray executor (calibration_costs)
DEFAULT_ROUNDS = 2   # ... in rounds over the probes, the quickest counting (the machine drifts)
POLL_WAIT = 4e-3     # seconds the driver waits for a busy actor when the poll delay is timed
POLL_REPEATS = 10    # ... that many times `repeats` (it varies with the load: ~0.3 s in all)
TRANSPORTS = ("compiled", "plain")
HOP_REPEATS = 3      # link and round-trip timings take this many times `repeats` (they are quick)
# conv2d probes: (batch, channels, image side), 3x3 kernels, same padding
CONV_SHAPES = ((8, 8, 16), (8, 16, 8), (8, 32, 8))
# memory-bound ops whose summed FLOPs over summed time is the rate of ops other than matmul/conv
ELEMENTWISE_OPS = ("add", "multiply", "exp", "tanh", "sigmoid", "gelu", "softmax", "layer_norm",
                   "mean")
ELEMENTWISE_SHAPE = (64, 512)
# tiny models whose training steps measure the per-op overhead (their FLOPs are negligible)
TINY_MODELS = (("mlp", dict(layers=2, width=4, in_features=4, classes=2, batch=2)),
               ("gpt", dict(layers=1, d_model=4, heads=1, seq=2, vocab=4, batch=1)),
               ("lstm", dict(layers=1, hidden=4, vocab=4, seq=4, batch=1)),
               ("resnet", dict(channels=(2,), blocks=1, image=4, in_channels=1, classes=2,
                               batch=1)))


class CalibrationError(ModelcutError):
    """A calibration setting is invalid or a measurement cannot be fitted."""


@dataclass(frozen=True)
class LinkFit:
    """The fitted link from actor `a` to actor `b`: median seconds per payload size, and the
    least-squares `latency` (s) and `bandwidth` (bytes/s) of `seconds = latency + bytes / bw`."""

    a: str
    b: str
    payloads: tuple[int, ...]
    seconds: tuple[float, ...]
    latency: float
    bandwidth: float

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "payloads": list(self.payloads),
                "seconds": list(self.seconds), "latency": self.latency,
                "bandwidth": self.bandwidth}


@dataclass(frozen=True)
class Calibration:
    """What was measured: per device its matmul FLOP/s (and the rate per matmul size), the
    FLOP/s of other op kinds (`conv2d`; `*`: every kind not listed but matmul), seconds per
    executed op and memory share; one fitted link per pair of devices,
    the transport they were measured through, and the driver -> actor -> driver round trip."""

    host: str
    devices: tuple[str, ...]
    flops: tuple[float, ...]
    flops_by_size: tuple[dict, ...]
    op_flops: tuple[dict, ...]
    op_overhead: tuple[float, ...]
    memory: tuple[int, ...]
    links: tuple[LinkFit, ...]
    transport: str
    step_overhead: float
    op_costs: tuple[dict, ...] = ()
    update_costs: tuple[dict, ...] = ()
    round_trip: float = 0.0
    hop_latency: float | None = None
    compute_scale: float = 1.0
    poll_after: float = 0.0
    poll_delay: float = 0.0
    cores: int = 0
    call_overhead: float = 0.0
    probes: tuple[dict, ...] = ()

    @property
    def bandwidth(self) -> float:
        """Median fitted bandwidth over the links (bytes/s)."""
        return float(np.median([link.bandwidth for link in self.links]))

    @property
    def latency(self) -> float:
        """Median fitted latency over the links (s)."""
        return float(np.median([link.latency for link in self.links]))

    def cluster_spec(self, extended: bool = True) -> dict:
        """The explicit-devices cluster section (plain numbers: FLOP/s, bytes, bytes/s, s);
        `extended`: with each device's `op_costs` and `update_costs` and the cluster's poll
        delay (else the driver's poll delay is counted in the step overhead). Links take the
        latency of a hop measured inside the executor when there is one."""
        devices = []
        for i, (n, f, m, o, r) in enumerate(zip(self.devices, self.flops, self.memory,
                                                self.op_overhead, self.op_flops)):
            device = {"name": n, "flops": float(f), "memory": int(m), "op_overhead": float(o),
                      "op_flops": {"matmul": float(f), **{k: float(v) for k, v in r.items()}}}
            if extended and i < len(self.op_costs):
                device["op_costs"] = {op: [float(c) for c in cost]
                                      for op, cost in sorted(self.op_costs[i].items())}
                device["update_costs"] = {name: [float(c) for c in cost]
                                          for name, cost in self.update_costs[i].items()}
            devices.append(device)
        spec = {"name": f"calibrated-{self.host}", "devices": devices,
                "step_overhead": float(self.step_overhead
                                       + (0.0 if extended else self.poll_delay)),
                # the executor sends what one call produces for another call as one packet
                "batch_transfers": True}
        if extended and self.poll_delay:
            spec["poll_after"], spec["poll_delay"] = self.poll_after, self.poll_delay
        elif extended and self.cores and self.poll_after:   # the devices' spin on shared cores
            spec["poll_after"] = self.poll_after
        if extended and self.cores:
            spec["cores"] = int(self.cores)
        if self.links:
            hop = self.hop_latency
            spec["links"] = [{"a": link.a, "b": link.b, "bandwidth": float(link.bandwidth),
                              "latency": float(link.latency if hop is None else hop)}
                             for link in self.links]
            spec["default_bandwidth"] = self.bandwidth
            spec["default_latency"] = self.latency if hop is None else float(hop)
        return spec

    def to_dict(self) -> dict:
        return {"host": self.host, "devices": list(self.devices), "flops": list(self.flops),
                "flops_by_size": [dict(d) for d in self.flops_by_size],
                "op_flops": [dict(r) for r in self.op_flops], "op_overhead": list(self.op_overhead),
                "memory": list(self.memory), "links": [link.to_dict() for link in self.links],
                "transport": self.transport, "step_overhead": self.step_overhead,
                "op_costs": [dict(c) for c in self.op_costs],
                "update_costs": [dict(c) for c in self.update_costs],
                "round_trip": self.round_trip, "hop_latency": self.hop_latency,
                "compute_scale": self.compute_scale, "poll_after": self.poll_after,
                "poll_delay": self.poll_delay, "cores": self.cores,
                "call_overhead": self.call_overhead, "probes": list(self.probes)}


def fit_latency_bandwidth(payloads: Sequence[int], seconds: Sequence[float]
                          ) -> tuple[float, float]:
    """Least-squares (latency, bandwidth) of `seconds = latency + payload / bandwidth`, in
    relative terms (each residual divided by its measured time).

    A negative fitted latency is clamped to 0 (and the slope refitted through the origin);
    a non-positive slope (times that do not grow with size) raises CalibrationError."""
    x, y = np.asarray(payloads, dtype=float), np.asarray(seconds, dtype=float)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise CalibrationError("link fit: need at least two different payload sizes, got "
                               f"{list(map(int, x))}")
    if (y <= 0).any():
        raise CalibrationError(f"link fit: times must be positive, got {y.tolist()}")
    # Relative residuals (rows scaled by 1/y): timing noise grows with the time, and an
    # unweighted fit would let the largest payload decide the latency.
    w = 1.0 / y
    design = np.column_stack([w, x * w])
    (latency, per_byte), *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
    if latency < 0:
        xw = x * w
        latency, per_byte = 0.0, float(xw.sum() / (xw @ xw))
    if per_byte <= 0:
        raise CalibrationError(f"link fit: transfer times {[f'{s:.3g}' for s in y]} s do not "
                               f"grow with the payload sizes {list(map(int, x))}; use larger "
                               "payloads")
    return float(latency), float(1.0 / per_byte)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `run` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_rates(sizes: Sequence[int], repeats: int, dtype: str = "float32") -> dict[int, float]:
    """FLOP/s of an n x n matmul per size n (median of `repeats` timed runs after one warm-up)."""
    rng = np.random.default_rng(0)
    rates = {}
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        rates[int(n)] = 2.0 * n**3 / max(median_seconds(lambda: a @ b, repeats), 1e-12)
    return rates


def conv_rate(repeats: int, shapes: Sequence[tuple[int, int, int]] = CONV_SHAPES,
              dtype: str = "float32") -> float:
    """FLOP/s of conv2d and its input and weight gradients (their FLOPs over their seconds,
    as the simulator charges a conv's backward at its forward's rate): the median over
    `shapes` (batch, channels, image side; 3x3 kernels, same padding)."""
    from autodiff.ops.registry import lookup

    forward, input_grad, weight_grad = (lookup(op, op) for op in
                                        ("conv2d", "conv2d_input_grad", "conv2d_weight_grad"))
    rng = np.random.default_rng(0)
    rates = []
    for batch, channels, side in shapes:
        x = rng.standard_normal((batch, channels, side, side)).astype(dtype)
        w = rng.standard_normal((channels, channels, 3, 3)).astype(dtype)
        g = forward.forward(x, w, padding=1)

        def step():
            forward.forward(x, w, padding=1)
            input_grad.forward(g, w, shape=list(x.shape), padding=1)
            weight_grad.forward(x, g, shape=list(w.shape), padding=1)
        flops = 3 * 2 * g.size * channels * 9
        rates.append(flops / max(median_seconds(step, repeats), 1e-12))
    return float(np.median(rates))


def elementwise_rate(repeats: int, shape: tuple[int, int] = ELEMENTWISE_SHAPE,
                     dtype: str = "float32") -> float:
    """FLOP/s (as the op registry counts FLOPs) of numpy's memory-bound ops: the ELEMENTWISE_OPS
    on `shape` arrays, their summed FLOPs over their summed median seconds."""
    from autodiff.ops.registry import lookup

    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    row = rng.standard_normal(shape[-1]).astype(dtype)
    args = {"add": (x, y), "multiply": (x, y), "layer_norm": (x, row, row)}
    attrs = {"softmax": {"axis": -1}, "mean": {"axis": -1}}
    flops = seconds = 0.0
    for name in ELEMENTWISE_OPS:
        op, inputs, kw = lookup(name, name), args.get(name, (x,)), attrs.get(name, {})
        out = op.forward(*inputs, **kw)
        flops += op.flops([a.shape for a in inputs], np.shape(out), **kw)
        seconds += median_seconds(lambda: op.forward(*inputs, **kw), repeats)
    return flops / max(seconds, 1e-12)


def op_overhead(repeats: int) -> float:
    """Seconds per executed op of the executor's worker training the TINY_MODELS on one
    device: the compute seconds the worker reports over the ops it ran (median of steps)."""
    from autodiff.models import BUILDERS, make_data
    from executor.local import LocalExecutor

    seconds, ops = 0.0, 0
    for family, sizes in TINY_MODELS:
        graph = BUILDERS[family](**sizes)
        executor = LocalExecutor(graph, np.zeros(len(graph.nodes), dtype=np.int64), 1, "sgd")
        data = make_data(graph, family, 0)
        executor.step(data(0))
        seconds += float(np.median([executor.step(data(s)).compute_seconds.sum()
                                    for s in range(1, repeats + 1)]))
        ops += sum(not node.is_source for node in executor.plan.training.nodes)
    return seconds / ops


class ProbeActor:
    """A device for calibration: times ops, holds payloads to send, receives them."""

    def __init__(self, payloads: Sequence[int]):
        from executor.ray_runtime import patient_channel_reads, skip_torch_in_channels

        skip_torch_in_channels()
        patient_channel_reads()                  # channel reads as the executor's actors do
        self.payloads = {int(n): np.ones(int(n), dtype=np.uint8) for n in payloads}

    def node(self) -> dict:
        import ray
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "cores": os.cpu_count() or 0,
                "memory": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}

    def compute(self, sizes: Sequence[int], repeats: int) -> tuple[dict, dict, float, dict,
                                                                   dict, float]:
        """(matmul FLOP/s per size, FLOP/s of other op kinds, seconds per executed op, cost
        per op kind, cost per optimizer update, seconds of the timed ops in all)."""
        from modelcut.calibration_costs import (fit_op_costs, fit_update_costs, op_samples,
                                                update_samples)

        rates = {"conv2d": conv_rate(repeats), "*": elementwise_rate(repeats)}
        samples = op_samples(HOP_REPEATS * repeats)
        seconds = float(sum(row[2] for rows in samples.values() for row in rows))
        return (matmul_rates(sizes, repeats), rates, op_overhead(repeats),
                fit_op_costs(samples), fit_update_costs(update_samples(repeats)), seconds)

    def echo(self, value):
        return value

    def wait(self, seconds: float) -> float:
        """Keep busy for `seconds` (the driver meanwhile waits, as for a step)."""
        end = time.perf_counter() + float(seconds)
        while time.perf_counter() < end:
            pass
        return seconds

    def send(self, nbytes: int) -> np.ndarray:
        return self.payloads[int(nbytes)]

    def receive(self, payload: np.ndarray) -> int:
        return int(payload.nbytes)


def actor_options() -> dict:
    """Actor options: no CPU held (k actors fit on a small machine), BLAS limited to one
    thread, and this checkout importable in the worker processes."""
    from executor.ray_runtime import worker_env
    env = worker_env(blas_threads=1)
    return {"num_cpus": 0, "runtime_env": {"env_vars": env}, "scheduling_strategy": "SPREAD"}


def calibrate(devices: int, *, matmul_sizes: Sequence[int] = DEFAULT_MATMUL_SIZES,
              payloads: Sequence[int] = DEFAULT_PAYLOADS, repeats: int = DEFAULT_REPEATS,
              transport: str = "compiled", address: str | None = None,
              steps: int = DEFAULT_STEPS, rounds: int = DEFAULT_ROUNDS) -> Calibration:
    """Measure `devices` Ray actors (starting a local Ray unless `address` names a cluster),
    then train probe models `steps` steps through the Ray executor on up to four of them,
    in `rounds` rounds over the probes (what steps, hops and ops cost inside the executor;
    none when steps is 0)."""
    from executor.ray_runtime import start_ray, stop_ray
    from executor.ray_runtime import SPIN_SECONDS
    from modelcut.calibration_costs import executor_costs, scaled_costs

    if (devices < 1 or repeats < 1 or steps < 0 or rounds < 1 or not matmul_sizes
            or min(matmul_sizes) < 1):
        raise CalibrationError(f"calibrate: need devices >= 1, repeats >= 1, steps >= 0, "
                               f"rounds >= 1 and positive matmul sizes, got devices={devices}, "
                               f"repeats={repeats}, steps={steps}, rounds={rounds}, "
                               f"matmul sizes={list(matmul_sizes)}")
    if devices > 1 and (len(set(payloads)) < 2 or min(payloads) < 1):
        raise CalibrationError(f"calibrate: need at least two different positive payload sizes, "
                               f"got {list(payloads)}")
    if transport not in TRANSPORTS:
        raise CalibrationError(f"calibrate: transport must be one of {', '.join(TRANSPORTS)}, "
                               f"got {transport!r}")
    started = start_ray(address=address, include_dashboard=False)
    import ray
    actors = []
    try:
        remote = ray.remote(ProbeActor).options(**actor_options())

        def make_actor():
            """A new probe actor, once it has started (so it loads no other measurement)."""
            actor = remote.remote(payloads)
            ray.get(actor.node.remote())
            return actor
        actors = [remote.remote(payloads) for _ in range(devices)]
        nodes = ray.get([a.node.remote() for a in actors])
        per_node = {n["node"]: sum(m["node"] == n["node"] for m in nodes) for n in nodes}
        memory = tuple(int(n["memory"] // per_node[n["node"]]) for n in nodes)
        names = tuple(f"cpu{i}" for i in range(devices))
        measured = [ray.get(a.compute.remote(list(matmul_sizes), repeats))
                    for a in actors]                           # one actor at a time
        probe = (_CompiledProbe if transport == "compiled" else _PlainProbe)(ray, actors,
                                                                             make_actor)
        sizes = tuple(sorted(set(int(p) for p in payloads)))
        pairs = [(a, b) for a in range(devices) for b in range(a + 1, devices)]
        one_machine = len({n["node"] for n in nodes}) == 1
        if one_machine:          # one kind of processor: the actors' tables differ by load
            measured = [r[:3] + quickest_tables(measured) for r in measured]
        for attempt in range(1, LINK_ATTEMPTS + 1):
            try:
                base, links = _measure_links(probe, names, pairs, sizes,  # more each time
                                             HOP_REPEATS * repeats * 2 ** (attempt - 1),
                                             one_machine)
                break
            except CalibrationError as error:     # a burst of load hid the payload's cost
                if attempt == LINK_ATTEMPTS:
                    raise
                log.warning("%s; measuring the links again", error)
        # on one machine the executor's pipes wake a waiting actor at once: no poll delay
        poll_after, poll_delay = ((0.0, 0.0) if one_machine else
                                  (SPIN_SECONDS, probe.poll_delay(POLL_REPEATS * repeats)))
        cores = int(nodes[0]["cores"]) if one_machine else 0   # the actors share them
        for actor in actors:
            ray.kill(actor)
        actors = []
        per_step, hop, scale, extra, probes = base, None, 1.0, 0.0, []
        if steps > 0:                    # what a step and a hop cost inside the executor
            bandwidth = float(np.median([link.bandwidth for link in links])) if links else 1e9
            fit, probes = executor_costs(devices, steps, measured[0][3], measured[0][4],
                                         bandwidth, poll_after, poll_delay, cores,
                                         rounds)
            per_step, hop, poll_after = fit["step_overhead"], fit["latency"], fit["spin"]
            scale, extra = fit["compute_scale"], fit["call_overhead"]
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            stop_ray()
    return Calibration(host=platform.node() or "localhost", devices=names,
                       flops=tuple(float(np.median(list(r[0].values()))) for r in measured),
                       flops_by_size=tuple(r[0] for r in measured),
                       op_flops=tuple(r[1] for r in measured),
                       op_overhead=tuple(r[2] for r in measured), memory=memory,
                       links=links, transport=transport, step_overhead=per_step,
                       op_costs=tuple(scaled_costs(r[3], r[4], scale, extra)[0]
                                      for r in measured),
                       update_costs=tuple(scaled_costs(r[3], r[4], scale, extra)[1]
                                          for r in measured),
                       compute_scale=scale, call_overhead=extra,
                       probes=tuple(probes),
                       round_trip=base, cores=cores,
                       poll_after=poll_after, poll_delay=poll_delay,
                       hop_latency=hop)


def quickest_tables(measured: Sequence[tuple]) -> tuple[dict, dict]:
    """The op and update cost tables, of `ProbeActor.compute` results on one kind of
    processor, of the actor whose timed ops took least in all: each actor is timed at another
    moment, and the quickest timing counts (modelcut/calibration_costs.py)."""
    quickest = min(measured, key=lambda r: r[5])
    return quickest[3], quickest[4]


class _PlainProbe:
    """Times plain actor calls: a round trip, and actor b taking actor a's return value."""

    def __init__(self, ray, actors, make_actor):
        self.ray, self.actors = ray, actors

    def round_trip(self, repeats: int) -> float:
        return median_seconds(lambda: self.ray.get(self.actors[0].echo.remote(0)), repeats)

    def poll_delay(self, repeats: int) -> float:
        return 0.0                               # ray.get of an ObjectRef does not poll

    def hops(self, a: int, b: int, sizes: Sequence[int], repeats: int) -> list[float]:
        """Per payload size, seconds of the driver -> a -> b -> driver chain (a round trip
        plus one hop)."""
        sender, receiver = self.actors[a], self.actors[b]
        return [median_seconds(lambda: self.ray.get(receiver.receive.remote(
            sender.send.remote(n))), repeats) for n in sizes]


class _CompiledProbe:
    """Times Ray Compiled Graphs as the executor builds them: a one-actor graph (the round
    trip) and, per pair, a two-actor chain whose edge carries the payload (its size is the
    graph's input; channel buffers grow on first use, hence the warm-up). Tearing a graph
    down can hang unless its actors are killed (shared/RAY.md), so each graph's actors are
    killed with it and replaced by new ones."""

    WARMUP = 5

    def __init__(self, ray, actors, make_actor):
        from executor.ray_runtime import patient_channel_reads

        patient_channel_reads()                  # the driver waits as the executor's does
        self.ray, self.actors, self.make_actor = ray, actors, make_actor

    def _time(self, build, used: Sequence[int], arguments: Sequence, repeats: int
              ) -> list[float]:
        from ray.dag import InputNode

        with InputNode() as start:
            dag = build(start).experimental_compile(_max_inflight_executions=2)
        try:
            times = []
            for argument in arguments:
                for _ in range(self.WARMUP):
                    self.ray.get(dag.execute(argument))
                times.append(median_seconds(lambda: self.ray.get(dag.execute(argument)),
                                            repeats))
            return times
        finally:
            dag.teardown(kill_actors=True)
            for i in used:
                self.actors[i] = self.make_actor()

    def round_trip(self, repeats: int) -> float:
        return self._time(lambda start: self.actors[0].echo.bind(start), [0], [0], repeats)[0]

    def poll_delay(self, repeats: int) -> float:
        """How late the driver notices a result it waited POLL_WAIT seconds for: a one-actor
        graph busy that long, less the wait and the round trip of one not busy at all."""
        short, long = self._time(lambda start: self.actors[0].wait.bind(start), [0],
                                 [0.0, POLL_WAIT], repeats)
        return max(long - POLL_WAIT - short, 0.0)

    def hops(self, a: int, b: int, sizes: Sequence[int], repeats: int) -> list[float]:
        sender, receiver = self.actors[a], self.actors[b]
        return self._time(lambda start: receiver.receive.bind(sender.send.bind(start)), [a, b],
                          sizes, repeats)


def fit_link(a: str, b: str, sizes: Sequence[int], chain_seconds: Sequence[float],
             round_trip: float) -> LinkFit:
    """The link a -> b from the median seconds of driver -> a -> b -> driver chains per payload
    size: the round trip (driver -> actor -> driver) subtracted leaves the hop a -> b (at
    least 0.1 us), to which `latency + bytes / bandwidth` is fitted."""
    seconds = [max(float(t) - round_trip, 1e-7) for t in chain_seconds]
    sizes = tuple(int(n) for n in sizes)
    latency, bandwidth = fit_latency_bandwidth(sizes, seconds)
    log.info("link %s -> %s: latency %.3g s, bandwidth %.3g B/s", a, b, latency, bandwidth)
    return LinkFit(a=a, b=b, payloads=sizes, seconds=tuple(seconds), latency=latency,
                   bandwidth=bandwidth)


def _measure_links(probe, names, pairs, sizes, repeats: int, one_machine: bool):
    """The round trip and one fitted link per pair. On one machine every pair uses the same
    shared-memory transport, so the pairs' differences are noise: each pair is fitted to the
    median over pairs."""
    base = probe.round_trip(repeats)
    chains = {(a, b): probe.hops(a, b, sizes, repeats) for a, b in pairs}
    if one_machine and pairs:
        pooled = np.median([chains[p] for p in pairs], axis=0).tolist()
        chains = {p: pooled for p in pairs}
    return base, tuple(fit_link(names[a], names[b], sizes, chains[a, b], base)
                       for a, b in pairs)


def cluster_yaml(calibration: Calibration, extended: bool = True) -> str:
    """The cluster file text: a comment saying what was measured, then the `cluster:` section
    (`extended`: with the op, update and poll costs, see `Calibration.cluster_spec`)."""
    import yaml

    header = (f"# Written by `modelcut calibrate` on {calibration.host}: matmul FLOP/s and conv2d "
              "FLOP/s per actor (one BLAS thread), seconds per executed op, actor-to-actor "
              f"links through {calibration.transport} Ray calls fitted as latency + bytes / "
              "bandwidth (the latency: a hop as the Ray executor pays it), the seconds per "
              "step outside the devices' ops (Ray executor), and costs per op kind and per "
              "optimizer update.\n"
              "# Units: flops in FLOP/s, memory in bytes, bandwidth in bytes/s, latency and "
              "overheads in s.\n"
              "# Use it from a config with `cluster: {file: <this file>}`.\n")
    return header + yaml.safe_dump({"cluster": calibration.cluster_spec(extended)},
                                   sort_keys=False)
