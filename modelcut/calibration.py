"""Measure this machine as a cluster: each actor's matmul FLOP/s and the actor-to-actor links.

One Ray actor per device (BLAS limited to one thread, as the Ray executor runs them). FLOP/s:
the median, over a few matrix sizes, of each size's median rate (2 n^3 FLOPs per n x n
matmul), measured one actor at a time so they do not share cores. Links: for each pair of
actors and a few payload sizes, the median time of actor A returning a payload that actor B
takes as an argument (the way the executor moves tensors); `latency + bytes / bandwidth` is
fitted to those times by least squares. The result is written as a `cluster:` section with
explicit devices and links, which a config reads with `cluster: {file: ...}`.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MATMUL_SIZES = (128, 256, 512)
DEFAULT_PAYLOADS = (1024, 64 * 1024, 1024**2, 8 * 1024**2, 32 * 1024**2)
DEFAULT_REPEATS = 7


class CalibrationError(Exception):
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
    """What was measured: per device its FLOP/s (and the rate per matmul size) and memory
    share, and one fitted link per pair of devices."""

    host: str
    devices: tuple[str, ...]
    flops: tuple[float, ...]
    flops_by_size: tuple[dict, ...]
    memory: tuple[int, ...]
    links: tuple[LinkFit, ...]

    @property
    def bandwidth(self) -> float:
        """Median fitted bandwidth over the links (bytes/s)."""
        return float(np.median([link.bandwidth for link in self.links]))

    @property
    def latency(self) -> float:
        """Median fitted latency over the links (s)."""
        return float(np.median([link.latency for link in self.links]))

    def cluster_spec(self) -> dict:
        """The explicit-devices cluster section (plain numbers: FLOP/s, bytes, bytes/s, s)."""
        spec = {"name": f"calibrated-{self.host}",
                "devices": [{"name": n, "flops": float(f), "memory": int(m)}
                            for n, f, m in zip(self.devices, self.flops, self.memory)]}
        if self.links:
            spec["links"] = [{"a": link.a, "b": link.b, "bandwidth": float(link.bandwidth),
                              "latency": float(link.latency)} for link in self.links]
            spec["default_bandwidth"] = self.bandwidth
            spec["default_latency"] = self.latency
        return spec

    def to_dict(self) -> dict:
        return {"host": self.host, "devices": list(self.devices), "flops": list(self.flops),
                "flops_by_size": [dict(d) for d in self.flops_by_size],
                "memory": list(self.memory), "links": [link.to_dict() for link in self.links]}


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


def matmul_rates(sizes: Sequence[int], repeats: int, dtype: str = "float32") -> dict[int, float]:
    """FLOP/s of an n x n matmul per size n (median of `repeats` timed runs after one warm-up)."""
    rng = np.random.default_rng(0)
    rates = {}
    for n in sizes:
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        rates[int(n)] = 2.0 * n**3 / max(float(np.median(times)), 1e-12)
    return rates


class ProbeActor:
    """A device for calibration: times matmuls, holds payloads to send, receives them."""

    def __init__(self, payloads: Sequence[int]):
        self.payloads = {int(n): np.ones(int(n), dtype=np.uint8) for n in payloads}

    def node(self) -> dict:
        import ray
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "memory": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}

    def matmul_rates(self, sizes: Sequence[int], repeats: int) -> dict[int, float]:
        return matmul_rates(sizes, repeats)

    def send(self, nbytes: int) -> np.ndarray:
        return self.payloads[int(nbytes)]

    def receive(self, payload: np.ndarray) -> int:
        return int(payload.nbytes)


def actor_options() -> dict:
    """Actor options: no CPU held (k actors fit on a small machine), BLAS limited to one
    thread, and this checkout importable in the worker processes."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                     if p and p != root])
    env = {"PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    return {"num_cpus": 0, "runtime_env": {"env_vars": env}, "scheduling_strategy": "SPREAD"}


def calibrate(devices: int, *, matmul_sizes: Sequence[int] = DEFAULT_MATMUL_SIZES,
              payloads: Sequence[int] = DEFAULT_PAYLOADS, repeats: int = DEFAULT_REPEATS,
              address: str | None = None) -> Calibration:
    """Measure `devices` Ray actors (starting a local Ray unless `address` names a cluster)."""
    from executor.ray_runtime import start_ray, stop_ray

    if devices < 1 or repeats < 1 or not matmul_sizes or min(matmul_sizes) < 1:
        raise CalibrationError(f"calibrate: need devices >= 1, repeats >= 1 and positive matmul "
                               f"sizes, got devices={devices}, repeats={repeats}, "
                               f"matmul sizes={list(matmul_sizes)}")
    if devices > 1 and (len(set(payloads)) < 2 or min(payloads) < 1):
        raise CalibrationError(f"calibrate: need at least two different positive payload sizes, "
                               f"got {list(payloads)}")
    started = start_ray(address=address, include_dashboard=False)
    import ray
    actors = []
    try:
        remote = ray.remote(ProbeActor).options(**actor_options())
        actors = [remote.remote(payloads) for _ in range(devices)]
        nodes = ray.get([a.node.remote() for a in actors])
        per_node = {n["node"]: sum(m["node"] == n["node"] for m in nodes) for n in nodes}
        memory = tuple(int(n["memory"] // per_node[n["node"]]) for n in nodes)
        names = tuple(f"cpu{i}" for i in range(devices))
        by_size = tuple(ray.get(a.matmul_rates.remote(list(matmul_sizes), repeats))
                        for a in actors)                       # one actor at a time
        flops = tuple(float(np.median(list(rates.values()))) for rates in by_size)
        links = tuple(_measure_link(ray, actors, a, b, names, payloads, repeats)
                      for a in range(devices) for b in range(a + 1, devices))
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            stop_ray()
    return Calibration(host=platform.node() or "localhost", devices=names, flops=flops,
                       flops_by_size=by_size, memory=memory, links=links)


def _measure_link(ray, actors, a: int, b: int, names, payloads, repeats: int) -> LinkFit:
    """Median seconds for actor b to receive each payload from actor a, and the fit."""
    sender, receiver = actors[a], actors[b]
    medians = []
    for n in sorted(set(int(p) for p in payloads)):
        ray.get(receiver.receive.remote(sender.send.remote(n)))      # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ray.get(receiver.receive.remote(sender.send.remote(n)))
            times.append(time.perf_counter() - start)
        medians.append(float(np.median(times)))
    sizes = tuple(sorted(set(int(p) for p in payloads)))
    latency, bandwidth = fit_latency_bandwidth(sizes, medians)
    log.info("link %s -> %s: latency %.3g s, bandwidth %.3g B/s", names[a], names[b], latency,
             bandwidth)
    return LinkFit(a=names[a], b=names[b], payloads=sizes, seconds=tuple(medians),
                   latency=latency, bandwidth=bandwidth)


def cluster_yaml(calibration: Calibration) -> str:
    """The cluster file text: a comment saying what was measured, then the `cluster:` section."""
    import yaml

    header = (f"# Written by `modelcut calibrate` on {calibration.host}: matmul FLOP/s per actor "
              f"(one BLAS thread), actor-to-actor links fitted as latency + bytes / bandwidth.\n"
              "# Units: flops in FLOP/s, memory in bytes, bandwidth in bytes/s, latency in s.\n"
              "# Use it from a config with `cluster: {file: <this file>}`.\n")
    return header + yaml.safe_dump({"cluster": calibration.cluster_spec()}, sort_keys=False)
