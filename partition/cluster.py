"""Devices, links and clusters (SPEC section 3): who computes how fast and what a transfer costs.

A Cluster holds k devices and two k x k matrices (bandwidth in bytes/s, latency in s); sending
n bytes from a to b costs `latency[a, b] + n / bandwidth[a, b]`, and nothing when a == b.

Extension for measured clusters (`modelcut calibrate`), all optional with defaults that change
no SPEC figure: a device's `op_overhead` (seconds every executed op costs besides its FLOPs:
numpy dispatch and the interpreter) and `op_flops` (FLOP/s per op kind where it differs from
`flops`; the key `*` stands for every kind not listed), and the cluster's `step_overhead`
(seconds per step to start it on the devices and collect the results).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Mapping, Sequence

import numpy as np

from partition.errors import ClusterError

DEFAULT_BANDWIDTH = 25e9   # bytes/s, a 200 Gbit/s network link
DEFAULT_LATENCY = 1e-5     # seconds


@dataclass(frozen=True)
class Device:
    """One accelerator: a name, its speed in FLOP/s and its memory in bytes; optionally the
    measured op_overhead and op_flops (module docstring)."""

    name: str
    flops: float
    memory: int
    op_overhead: float = 0.0
    op_flops: Mapping[str, float] = field(default_factory=dict, hash=False)

    def rate(self, op: str) -> float:
        """FLOP/s of an op of kind `op` on this device: its `op_flops` entry, else the `*`
        entry, else `flops`."""
        rates = self.op_flops
        return rates[op] if op in rates else rates.get("*", self.flops)

    def to_dict(self) -> dict:
        out = {"name": self.name, "flops": self.flops, "memory": self.memory}
        if self.op_overhead:
            out["op_overhead"] = self.op_overhead
        if self.op_flops:
            out["op_flops"] = dict(self.op_flops)
        return out


@dataclass(frozen=True)
class Link:
    """A connection between two devices: bandwidth (bytes/s) and latency (s)."""

    bandwidth: float
    latency: float


@dataclass(frozen=True, eq=False)
class Cluster:
    """k devices and the k x k bandwidth and latency matrices between them.

    `preset` records how a uniform or hierarchical cluster was built, so `resized` can
    rebuild it with another number of devices. `step_overhead` (s) is added once per step.
    """

    devices: tuple[Device, ...]
    bandwidth: np.ndarray
    latency: np.ndarray
    name: str = "cluster"
    preset: dict | None = field(default=None, repr=False)
    step_overhead: float = 0.0

    def __post_init__(self) -> None:
        devices, who = tuple(self.devices), f"cluster {self.name!r}"
        k = len(devices)
        if k == 0:
            raise ClusterError(f"{who}: 'devices' is empty; need at least one device")
        seen: set[str] = set()
        for i, d in enumerate(devices):
            _check_device(d, f"{who}: devices[{i}]", seen)
        bandwidth = np.array(self.bandwidth, dtype=np.float64)
        latency = np.array(self.latency, dtype=np.float64)
        for label, matrix in (("bandwidth", bandwidth), ("latency", latency)):
            if matrix.shape != (k, k):
                raise ClusterError(f"{who}: {label} must be a {k}x{k} matrix, "
                                   f"got shape {matrix.shape}")
        for label, matrix, bad, rule in (
                ("bandwidth", bandwidth, ~(bandwidth > 0) & ~np.eye(k, dtype=bool), "be positive"),
                ("latency", latency, ~(np.isfinite(latency) & (latency >= 0)),
                 "be a finite non-negative number")):
            if bad.any():
                a, b = np.argwhere(bad)[0]
                raise ClusterError(f"{who}: {label} between {devices[a].name!r} and "
                                   f"{devices[b].name!r} must {rule}, got {matrix[a, b]}")
        _check_number(self.step_overhead, f"{who}: step_overhead", positive=False)
        np.fill_diagonal(bandwidth, np.inf)
        np.fill_diagonal(latency, 0.0)
        for key, matrix in (("bandwidth", bandwidth), ("latency", latency)):
            matrix.setflags(write=False)
            object.__setattr__(self, key, matrix)
        object.__setattr__(self, "devices", devices)

    # ----------------------------------------------------------------- access
    @property
    def k(self) -> int:
        return len(self.devices)

    @property
    def speeds(self) -> np.ndarray:
        """Device speeds in FLOP/s, float64[k]."""
        return np.array([d.flops for d in self.devices], dtype=np.float64)

    @property
    def memory(self) -> np.ndarray:
        """Device memories in bytes, int64[k]."""
        return np.array([d.memory for d in self.devices], dtype=np.int64)

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def device_index(self, name: str) -> int:
        """Position of the device called `name`; ClusterError when there is none."""
        if name in self.device_names:
            return self.device_names.index(name)
        raise ClusterError(f"cluster {self.name!r} has no device named {name!r} "
                           f"(devices: {', '.join(self.device_names)})")

    def link(self, a: int, b: int) -> Link:
        return Link(float(self.bandwidth[a, b]), float(self.latency[a, b]))

    def transfer_time(self, a: int, b: int, nbytes: float) -> float:
        """Seconds to send `nbytes` from device a to device b (0 when a == b)."""
        if a == b:
            return 0.0
        return float(self.latency[a, b] + nbytes / self.bandwidth[a, b])

    @property
    def uniform_links(self) -> bool:
        """True when every link between distinct devices has the same bandwidth and latency."""
        if self.k < 2:
            return True
        off = ~np.eye(self.k, dtype=bool)
        bw, lat = self.bandwidth[off], self.latency[off]
        return bool((bw == bw[0]).all() and (lat == lat[0]).all())

    def resized(self, k: int) -> "Cluster":
        """The same preset with k devices (for `--devices K`); only uniform/hierarchical presets."""
        if not isinstance(k, int) or k < 1:
            raise ClusterError(f"cluster {self.name!r}: devices must be a positive integer, "
                               f"got {k!r}")
        args = dict(self.preset or {})
        kind = args.pop("kind", None)
        if kind == "uniform":
            return uniform(k, **args)
        if kind == "hierarchical":
            per_node = args.pop("devices_per_node")
            nodes = math.ceil(k / per_node)
            full = hierarchical(nodes, per_node, **args)
            if nodes * per_node == k:
                return full
            return Cluster(full.devices[:k], full.bandwidth[:k, :k], full.latency[:k, :k],
                           name=f"{full.name}[:{k}]")
        raise ClusterError(f"cluster {self.name!r} is not a uniform or hierarchical preset; "
                           "its number of devices cannot be changed (edit its 'devices' list)")

    def to_dict(self) -> dict:
        """JSON-ready description; bandwidth to self is written as null (unlimited)."""
        bandwidth = [[None if a == b else float(self.bandwidth[a, b]) for b in range(self.k)]
                     for a in range(self.k)]
        out = {"name": self.name, "devices": [d.to_dict() for d in self.devices],
               "bandwidth": bandwidth, "latency": self.latency.tolist()}
        if self.step_overhead:
            out["step_overhead"] = self.step_overhead
        return out

    @classmethod
    def from_spec(cls, spec: Mapping) -> "Cluster":
        """The cluster a cluster section describes, checked by partition/cluster_spec.py (the
        one validator of cluster sections; units such as 16GB accepted): ClusterError if not."""
        from partition.cluster_spec import build, normalize
        return build(normalize(spec))


# ------------------------------------------------------------------ presets
def uniform(k: int, flops: float = 1e12, memory: int = 16 * 2**30,
            bandwidth: float = DEFAULT_BANDWIDTH, latency: float = DEFAULT_LATENCY) -> Cluster:
    """k identical devices, every pair joined by the same link."""
    k = _count(k, "uniform: devices")
    devices = tuple(Device(f"dev{i}", float(flops), int(memory)) for i in range(k))
    preset = {"kind": "uniform", "flops": flops, "memory": memory, "bandwidth": bandwidth,
              "latency": latency}
    return Cluster(devices, np.full((k, k), float(bandwidth)), np.full((k, k), float(latency)),
                   name=f"uniform-{k}", preset=preset)


def hierarchical(nodes: int, devices_per_node: int, flops: float = 1e12,
                 memory: int = 16 * 2**30, intra_bandwidth: float = 3e11,
                 inter_bandwidth: float = 25e9, intra_latency: float = 1e-6,
                 inter_latency: float = 1e-5) -> Cluster:
    """`nodes` machines of `devices_per_node` identical devices; fast links inside a machine."""
    nodes = _count(nodes, "hierarchical: nodes")
    per_node = _count(devices_per_node, "hierarchical: devices_per_node")
    k = nodes * per_node
    devices = tuple(Device(f"n{i // per_node}d{i % per_node}", float(flops), int(memory))
                    for i in range(k))
    machine = np.arange(k) // per_node
    same = machine[:, None] == machine[None, :]
    bandwidth = np.where(same, float(intra_bandwidth), float(inter_bandwidth))
    latency = np.where(same, float(intra_latency), float(inter_latency))
    preset = {"kind": "hierarchical", "devices_per_node": per_node, "flops": flops,
              "memory": memory, "intra_bandwidth": intra_bandwidth,
              "inter_bandwidth": inter_bandwidth, "intra_latency": intra_latency,
              "inter_latency": inter_latency}
    return Cluster(devices, bandwidth, latency, name=f"hierarchical-{nodes}x{per_node}",
                   preset=preset)


def heterogeneous(devices: Sequence[Device],
                  links: Mapping[tuple[str, str], Link] | None = None,
                  default_bandwidth: float = DEFAULT_BANDWIDTH,
                  default_latency: float = DEFAULT_LATENCY,
                  name: str = "heterogeneous", step_overhead: float = 0.0) -> Cluster:
    """Listed devices; `links` maps a (name, name) pair to its Link (both directions)."""
    devices = tuple(devices)
    k = len(devices)
    bandwidth = np.full((k, k), float(default_bandwidth))
    latency = np.full((k, k), float(default_latency))
    position = {d.name: i for i, d in enumerate(devices)}
    for (a, b), link in (links or {}).items():
        for end in (a, b):
            if end not in position:
                raise ClusterError(f"cluster {name!r}: link ({a!r}, {b!r}) names no device {end!r}")
        i, j = position[a], position[b]
        bandwidth[i, j] = bandwidth[j, i] = link.bandwidth
        latency[i, j] = latency[j, i] = link.latency
    return Cluster(devices, bandwidth, latency, name=name, step_overhead=step_overhead)


# ------------------------------------------------------------------ checks
def _check_device(d: Device, where: str, seen: set[str]) -> None:
    """A device of a cluster built in Python (files are checked by cluster_spec.normalize)."""
    if not isinstance(d.name, str) or not d.name:
        raise ClusterError(f"{where}.name must be a non-empty string")
    if d.name in seen:
        raise ClusterError(f"{where}.name {d.name!r} is used by two devices")
    seen.add(d.name)
    for key, positive in (("flops", True), ("memory", True), ("op_overhead", False)):
        _check_number(getattr(d, key), f"{where}.{key} ({d.name})", positive)
    if not isinstance(d.op_flops, Mapping):
        raise ClusterError(f"{where}.op_flops ({d.name}): expected a mapping of op name to "
                           f"FLOP/s, got {d.op_flops!r}")
    for op, rate in d.op_flops.items():
        if not isinstance(op, str) or not op:
            raise ClusterError(f"{where}.op_flops ({d.name}): op names must be non-empty "
                               f"strings, got {op!r}")
        _check_number(rate, f"{where}.op_flops.{op} ({d.name})", positive=True)


def _check_number(value, where: str, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (Real, np.number)) or math.isnan(value):
        raise ClusterError(f"{where}: expected a number, got {value!r}")
    if math.isinf(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ClusterError(f"{where}: must be a finite {kind} number, got {value!r}")


def _count(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (Real, np.number)) \
            or value != int(value) or value < 1:
        raise ClusterError(f"{where}: expected a positive integer, got {value!r}")
    return int(value)
