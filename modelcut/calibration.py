"""Measure this machine as a cluster for the step simulator (executor/timing.py).

Per Ray actor (one per device, BLAS on one thread as the executor runs them), one at a time:
matmul, conv2d and memory-bound FLOP/s and the seconds per executed op. Links: `latency +
bytes / bandwidth` fitted to a hop's median seconds per payload size through the executor's
transport (named pipes on one node, else plain actor calls). `step_overhead`: a tiny model's
step through the Ray executor on one device less what `simulate_plan` predicts for it. Then
the simulator is checked, not fitted: probe models (no bundled config) on two devices.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from autodiff.errors import ModelcutError

DEFAULT_MATMUL_SIZES = (128, 256, 512)
DEFAULT_PAYLOADS = (1024, 64 * 1024, 1024**2, 8 * 1024**2)
DEFAULT_REPEATS = 7
DEFAULT_STEPS = 10       # measured steps of each Ray executor run (after WARMUP_STEPS)
WARMUP_STEPS = 3
HOP_REPEATS = 3          # hops take this many times `repeats` (they are quick)
TIMEOUT = 300.0          # s: any one Ray call of the calibration
# conv2d probes: (batch, channels, image side), 3x3 kernels, same padding
CONV_SHAPES = ((8, 8, 16), (8, 16, 8), (8, 32, 8))
ELEMENTWISE_OPS = ("add", "multiply", "exp", "tanh", "sigmoid", "gelu", "softmax", "layer_norm",
                   "mean")
ELEMENTWISE_SHAPE = (64, 512)
# tiny models whose training steps measure the per-op overhead (their FLOPs are negligible)
TINY_MODELS = (("mlp", dict(layers=2, width=4, in_features=4, classes=2, batch=2)),
               ("gpt", dict(layers=1, d_model=4, heads=1, seq=2, vocab=4, batch=1)),
               ("lstm", dict(layers=1, hidden=4, vocab=4, seq=4, batch=1)),
               ("resnet", dict(channels=(2,), blocks=1, image=4, in_channels=1, classes=2,
                               batch=1)))


class Probe(NamedTuple):
    """A model trained through the Ray executor (`sizes`: of the full batch)."""

    name: str
    family: str
    sizes: dict
    micro_batches: int = 1
    schedule: str = "gpipe"
    optimizer: str = "sgd"


STEP_PROBE = Probe("mlp-tiny", "mlp", dict(layers=2, width=8, in_features=8, classes=2, batch=4))
CHECK_PROBES = (
    Probe("mlp-probe", "mlp", dict(layers=4, width=96, in_features=48, classes=6, batch=32),
          2, "1f1b", "adam"),
    Probe("gpt-probe", "gpt", dict(layers=2, d_model=32, heads=2, seq=16, vocab=64, batch=8),
          2, "1f1b", "adam"))


class CalibrationError(ModelcutError):
    """A calibration setting is invalid or a measurement cannot be fitted."""


@dataclass(frozen=True)
class DeviceFit:
    """A measured device: matmul FLOP/s (median, and per size), FLOP/s per op kind, seconds
    per executed op, its share of its machine's memory (bytes)."""

    name: str
    flops: float
    flops_by_size: dict
    op_flops: dict
    op_overhead: float
    memory: int

    def spec(self) -> dict:
        return {"name": self.name, "flops": self.flops, "memory": self.memory,
                "op_flops": dict(self.op_flops), "op_overhead": self.op_overhead}


@dataclass(frozen=True)
class LinkFit:
    """The fitted link from actor `a` to actor `b`: median seconds of a hop per payload size,
    and the least-squares `latency` (s) and `bandwidth` (bytes/s) of `latency + bytes / bw`."""

    a: str
    b: str
    payloads: tuple[int, ...]
    seconds: tuple[float, ...]
    latency: float
    bandwidth: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Check:
    """A probe's step through the Ray executor on k devices: measured (median) and predicted
    (simulate_plan) seconds; `error` is (predicted - measured) / measured."""

    probe: str
    k: int
    measured: float
    predicted: float

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "error": self.error}


@dataclass(frozen=True)
class Calibration:
    """What was measured: the devices, one link per pair (through `transport`: pipes or
    plain), the step overhead, and the simulator's checks on probe models (not fitted)."""

    host: str
    devices: tuple[DeviceFit, ...]
    links: tuple[LinkFit, ...]
    transport: str
    step_overhead: float = 0.0
    checks: tuple[Check, ...] = ()

    def cluster_spec(self, k: int | None = None) -> dict:
        """The `cluster:` section (FLOP/s, bytes, bytes/s, s) of the first k devices and links."""
        devices = self.devices[:k]
        names = {d.name for d in devices}
        spec = {"name": f"calibrated-{self.host}", "devices": [d.spec() for d in devices],
                "step_overhead": float(self.step_overhead)}
        links = [{"a": f.a, "b": f.b, "latency": f.latency, "bandwidth": f.bandwidth}
                 for f in self.links if f.a in names and f.b in names]
        if links:
            spec["links"] = links
        return spec

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "checks": [c.to_dict() for c in self.checks]}


def fit_latency_bandwidth(payloads: Sequence[int], seconds: Sequence[float]
                          ) -> tuple[float, float]:
    """Least-squares (latency, bandwidth) of `seconds = latency + payload / bandwidth`, each
    residual relative to its time (noise grows with the time); a negative latency becomes 0."""
    x, y = np.asarray(payloads, dtype=float), np.asarray(seconds, dtype=float)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise CalibrationError("link fit: need at least two different payload sizes, got "
                               f"{list(map(int, x))}")
    if (y <= 0).any():
        raise CalibrationError(f"link fit: times must be positive, got {y.tolist()}")
    w = 1.0 / y
    (latency, per_byte), *_ = np.linalg.lstsq(np.column_stack([w, x * w]), np.ones_like(y),
                                              rcond=None)
    if latency < 0:
        xw = x * w
        latency, per_byte = 0.0, float(xw.sum() / (xw @ xw))
    if per_byte <= 0:
        raise CalibrationError(f"link fit: transfer times {[f'{s:.3g}' for s in y]} s do not "
                               f"grow with the payload sizes {list(map(int, x))}; use larger "
                               "payloads")
    return float(latency), float(1.0 / per_byte)


def fit_link(a: str, b: str, sizes: Sequence[int], seconds: Sequence[float],
             round_trip: float = 0.0) -> LinkFit:
    """The link a -> b from a hop's median seconds per payload size, less `round_trip` (at
    least 0.1 us left)."""
    hops = [max(float(t) - round_trip, 1e-7) for t in seconds]
    sizes = tuple(int(n) for n in sizes)
    return LinkFit(a, b, sizes, tuple(hops), *fit_latency_bandwidth(sizes, hops))


def step_overhead(measured: float, predicted: float) -> float:
    """Seconds per step beyond ops and transfers: a measured step less the simulated one
    (which had no step overhead), at least 0."""
    return max(float(measured) - float(predicted), 0.0)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `run` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_rates(sizes: Sequence[int], repeats: int) -> dict[int, float]:
    """FLOP/s of an n x n matmul per size n."""
    rng = np.random.default_rng(0)
    rates = {}
    for n in sizes:
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        rates[int(n)] = 2.0 * n**3 / max(median_seconds(lambda: a @ b, repeats), 1e-12)
    return rates


def conv_rate(repeats: int) -> float:
    """FLOP/s of conv2d and its input and weight gradients (the simulator charges a conv's
    backward at its forward's rate): the median over CONV_SHAPES."""
    from autodiff.ops.registry import lookup

    forward, input_grad, weight_grad = (lookup(op, op) for op in
                                        ("conv2d", "conv2d_input_grad", "conv2d_weight_grad"))
    rng = np.random.default_rng(0)
    rates = []
    for batch, channels, side in CONV_SHAPES:
        x = rng.standard_normal((batch, channels, side, side)).astype(np.float32)
        w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32)
        g = forward.forward(x, w, padding=1)

        def step():
            forward.forward(x, w, padding=1)
            input_grad.forward(g, w, shape=list(x.shape), padding=1)
            weight_grad.forward(x, g, shape=list(w.shape), padding=1)
        rates.append(3 * 2 * g.size * channels * 9 / max(median_seconds(step, repeats), 1e-12))
    return float(np.median(rates))


def elementwise_rate(repeats: int) -> float:
    """FLOP/s (as the op registry counts them) of ELEMENTWISE_OPS on ELEMENTWISE_SHAPE arrays:
    their summed FLOPs over their summed median seconds."""
    from autodiff.ops.registry import lookup

    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal(ELEMENTWISE_SHAPE).astype(np.float32) for _ in range(2))
    row = rng.standard_normal(ELEMENTWISE_SHAPE[-1]).astype(np.float32)
    args = {"add": (x, y), "multiply": (x, y), "layer_norm": (x, row, row)}
    attrs = {"softmax": {"axis": -1}, "mean": {"axis": -1}}
    flops = seconds = 0.0
    for name in ELEMENTWISE_OPS:
        op, inputs, kw = lookup(name, name), args.get(name, (x,)), attrs.get(name, {})
        flops += op.flops([a.shape for a in inputs], np.shape(op.forward(*inputs, **kw)), **kw)
        seconds += median_seconds(lambda: op.forward(*inputs, **kw), repeats)
    return flops / max(seconds, 1e-12)


def op_overhead(repeats: int) -> float:
    """Seconds per executed op of the executor's worker training the TINY_MODELS on one
    device: the compute seconds the worker reports (median of steps) over the ops it ran."""
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
    """A device for calibration: times its compute; sends payloads to another actor over
    named pipes (as the executor's actors do on one node) or as plain call returns."""

    def __init__(self, payloads: Sequence[int]):
        self.payloads = {int(n): np.ones(int(n), dtype=np.uint8) for n in payloads}

    def node(self) -> tuple[str, int]:
        """This actor's Ray node and its machine's memory (bytes)."""
        import ray
        return (ray.get_runtime_context().get_node_id(),
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))

    def rates(self, name: str, sizes: Sequence[int], repeats: int, memory: int) -> DeviceFit:
        by_size = matmul_rates(sizes, repeats)
        flops = float(np.median(list(by_size.values())))
        return DeviceFit(name, flops, by_size, {"matmul": flops, "conv2d": conv_rate(repeats),
                                                "*": elementwise_rate(repeats)},
                         op_overhead(repeats), memory)

    def echo(self, reads: dict, writes: dict, spin: float) -> None:
        """Send every payload the peer pipes here back to it, until it says stop."""
        from executor.ray_pipes import Endpoint, PipeClosed
        pipes = Endpoint(reads, writes)
        try:
            while True:
                pipes.send("peer", "pong", pipes.receive("peer", "ping", spin=spin))
        except PipeClosed:
            return
        finally:
            pipes.close()

    def ping(self, reads: dict, writes: dict, spin: float, sizes: Sequence[int],
             repeats: int) -> list[float]:
        """Per payload size, half the median round trip of a payload to an echoing peer."""
        from executor.ray_pipes import Endpoint
        pipes = Endpoint(reads, writes)

        def round_trip(payload):
            pipes.send("peer", "ping", payload)
            pipes.receive("peer", "pong", spin=spin)
        try:
            hops = [median_seconds(lambda: round_trip(self.payloads[n]), repeats) / 2
                    for n in sizes]
            pipes.send("peer", "stop", None)
            pipes.flush()
            return hops
        finally:
            pipes.close()

    def send(self, nbytes: int) -> np.ndarray:
        return self.payloads[int(nbytes)]

    def receive(self, payload: np.ndarray) -> int:
        return int(payload.nbytes)


def pipe_hops(ray, sender, receiver, sizes: Sequence[int], repeats: int, spin: float
              ) -> list[float]:
    """Seconds of a hop sender -> receiver per payload size over the executor's named pipes
    (executor/ray_pipes.py Endpoint, one pipe each way, as the executor opens them)."""
    from executor.ray_pipes import make_pipe_dir, remove_pipe_dir
    root = make_pipe_dir(["ab", "ba"])
    try:
        echo = receiver.echo.remote({"peer": str(root / "ab")}, {"peer": str(root / "ba")}, spin)
        hops = sender.ping.remote({"peer": str(root / "ba")}, {"peer": str(root / "ab")}, spin,
                                  list(sizes), repeats)
        return ray.get([hops, echo], timeout=TIMEOUT)[0]
    finally:
        remove_pipe_dir(root)


def plain_hops(ray, sender, receiver, sizes: Sequence[int], repeats: int) -> list[float]:
    """Seconds of a hop sender -> receiver per payload size through plain actor calls (the
    receiver's call takes the sender's ObjectRef), less the driver's round trip."""
    trip = median_seconds(lambda: ray.get(receiver.receive.remote(np.zeros(1, np.uint8))),
                          repeats)
    return [median_seconds(lambda: ray.get(receiver.receive.remote(sender.send.remote(n))),
                           repeats) - trip for n in sizes]


def measure_links(ray, actors, names, sizes, repeats: int, transport: str
                  ) -> tuple[LinkFit, ...]:
    """One fitted link per pair of actors. Through the pipes (one machine) the pairs differ
    only by noise, so each is fitted to the median over the pairs."""
    from executor.ray_pipes import default_spin
    pairs = [(a, b) for a in range(len(actors)) for b in range(a + 1, len(actors))]
    spin = default_spin(len(actors))
    hops = {(a, b): (pipe_hops(ray, actors[a], actors[b], sizes, repeats, spin)
                     if transport == "pipes" else
                     plain_hops(ray, actors[a], actors[b], sizes, repeats)) for a, b in pairs}
    if transport == "pipes" and pairs:
        hops = dict.fromkeys(pairs, np.median(list(hops.values()), axis=0).tolist())
    return tuple(fit_link(names[a], names[b], sizes, hops[a, b]) for a, b in pairs)


def measure_devices(devices: int, sizes, payloads, repeats: int) -> Calibration:
    """Start `devices` probe actors (no CPU held, BLAS on one thread, spread over the nodes),
    measure each one's rates in turn, then the links between them."""
    import ray
    from executor.ray_runtime import worker_env

    options = {"num_cpus": 0, "runtime_env": {"env_vars": worker_env(blas_threads=1)},
               "scheduling_strategy": "SPREAD"}
    actors = [ray.remote(ProbeActor).options(**options).remote(payloads)
              for _ in range(devices)]
    try:
        nodes = ray.get([a.node.remote() for a in actors], timeout=TIMEOUT)
        here = ray.get_runtime_context().get_node_id()
        transport = "pipes" if all(node == here for node, _ in nodes) else "plain"
        names = tuple(f"cpu{i}" for i in range(devices))
        fits = tuple(ray.get(actor.rates.remote(name, list(sizes), repeats, memory // sum(
            n == node for n, _ in nodes)), timeout=TIMEOUT)                 # one at a time
                     for name, actor, (node, memory) in zip(names, actors, nodes))
        sizes = tuple(sorted(set(int(p) for p in payloads)))
        links = measure_links(ray, actors, names, sizes, HOP_REPEATS * repeats, transport)
    except ray.exceptions.GetTimeoutError:
        raise CalibrationError(f"calibrate: an actor's measurement took over {TIMEOUT:g} s "
                               "(is the machine overloaded?)") from None
    finally:
        for actor in actors:
            ray.kill(actor)
    return Calibration(platform.node() or "localhost", fits, links, transport)


def run_probe(probe: Probe, cluster, steps: int) -> Check:
    """Train `probe` through the Ray executor on the cluster's k devices (contiguous
    placement): its median step over `steps` after WARMUP_STEPS, and simulate_plan's."""
    from autodiff.models import BUILDERS, make_data
    from executor.ray_executor import RayExecutor
    from executor.timing import simulate_plan
    from partition.api import partition
    from partition.cluster import uniform

    m, k = probe.micro_batches, cluster.k
    micro = BUILDERS[probe.family](**{**probe.sizes, "batch": probe.sizes["batch"] // m})
    placement = (np.zeros(len(micro.nodes), dtype=np.int64) if k == 1 else
                 partition(micro, uniform(k), algorithm="contiguous", epsilon=1.0))
    data = make_data(BUILDERS[probe.family](**probe.sizes), probe.family, 0)
    with RayExecutor(micro, placement, k, probe.optimizer, micro_batches=m,
                     schedule=probe.schedule, checkpoint_every=None) as executor:
        times = [executor.step(data(s)).step_seconds for s in range(WARMUP_STEPS + steps)]
        plan = executor.plan
    predicted = simulate_plan(plan, cluster, probe.optimizer).step_time
    return Check(probe.name, k, float(np.median(times[WARMUP_STEPS:])), predicted)


def calibrate(devices: int, *, matmul_sizes: Sequence[int] = DEFAULT_MATMUL_SIZES,
              payloads: Sequence[int] = DEFAULT_PAYLOADS, repeats: int = DEFAULT_REPEATS,
              steps: int = DEFAULT_STEPS, address: str | None = None,
              probes: Sequence[Probe] = CHECK_PROBES) -> Calibration:
    """Measure `devices` Ray actors (on a local Ray unless `address` names a cluster) and the
    executor's step overhead, then check the simulator on `probes` on (at most) two devices."""
    from executor.ray_runtime import start_ray, stop_ray
    from partition.cluster import Cluster

    if devices < 1 or repeats < 1 or steps < 1 or not matmul_sizes or min(matmul_sizes) < 1:
        raise CalibrationError(f"calibrate: need devices, repeats, steps and matmul sizes >= 1, "
                               f"got devices={devices}, repeats={repeats}, steps={steps}, "
                               f"matmul sizes={list(matmul_sizes)}")
    if devices > 1 and (len(set(payloads)) < 2 or min(payloads) < 1):
        raise CalibrationError(f"calibrate: need at least two different positive payload sizes, "
                               f"got {list(payloads)}")
    started = start_ray(address=address, include_dashboard=False)
    try:
        result = measure_devices(devices, matmul_sizes, payloads, repeats)
        base = run_probe(STEP_PROBE, Cluster.from_spec(result.cluster_spec(1)), steps)
        result = dataclasses.replace(result, step_overhead=step_overhead(base.measured,
                                                                         base.predicted))
        cluster = Cluster.from_spec(result.cluster_spec(min(devices, 2)))
        checks = tuple(run_probe(probe, cluster, steps) for probe in probes)
    finally:
        if started:
            stop_ray()
    return dataclasses.replace(result, checks=checks)


def cluster_yaml(calibration: Calibration) -> str:
    """The cluster file: comments saying what was measured and the simulator's checks, then
    the `cluster:` section."""
    import yaml

    checks = "".join(f"#   {c.probe} on {c.k} device(s): measured {c.measured * 1e3:.3f} ms, "
                     f"predicted {c.predicted * 1e3:.3f} ms, error {c.error:+.1%}\n"
                     for c in calibration.checks)
    header = (f"# Written by `modelcut calibrate` on {calibration.host}: per Ray actor (one "
              "BLAS thread) matmul, conv2d and memory-bound FLOP/s and seconds per executed "
              f"op; links through the executor's {calibration.transport} transport fitted as "
              "latency + bytes / bandwidth; the Ray executor's seconds per step beyond ops "
              "and transfers.\n# Units: FLOP/s, bytes, bytes/s, seconds. Use it from a config "
              "with `cluster: {file: <this file>}`.\n"
              "# check: the simulator's error on probe models through the Ray executor "
              "(reported, not fitted):\n" + checks)
    return header + yaml.safe_dump({"cluster": calibration.cluster_spec()}, sort_keys=False)
