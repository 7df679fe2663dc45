"""The one validator of a cluster section (a config's `cluster:` or a cluster file).

`normalize(spec)` checks every key and value of the three shapes (a `uniform` preset, a
`nodes` x `devices_per_node` preset, listed `devices` and `links`) and returns the spec with
quantities as plain numbers (`16GB` -> bytes, `25GB/s` -> bytes/s, `19.5 TFLOPS` -> FLOP/s,
`10us` -> seconds); `build(spec)` makes the Cluster (partition/cluster.py) of a normalized spec.
A problem is one ClusterError line `cluster.key.path: expected ..., got ...`; the config
(modelcut/config.py) puts its file's name in front.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping

import numpy as np

from autodiff.errors import did_you_mean, show_value
from partition.cluster import (DEFAULT_LATENCY, Cluster, Device, Link, heterogeneous,
                               hierarchical, uniform)
from partition.errors import ClusterError
from partition.units import UnitError, parse_bandwidth, parse_flops, parse_size, parse_time

# The most devices a cluster may hold (and `--devices` ask for): the reports' per-device plots
# and link tables grow as devices^2, so 128 is the most `partition` handles today.
MAX_DEVICES = 128

SHAPES_HELP = ("expected a mapping with `uniform: {devices: N, ...}`, `nodes: N` and "
               "`devices_per_node: M`, or a `devices:` list")


def _problem(where: str, text: str, value: Any = None, shown: bool = True) -> ClusterError:
    return ClusterError(f"{where}: {text}" + (f", got {show_value(value)}" if shown else ""))


def _quantity(phrase: str, parse: Callable, positive: bool = True) -> Callable:
    """A rule for a unit-bearing quantity: its value in plain units, or `expected <phrase>`."""
    def check(value, where: str):
        if isinstance(value, np.generic) and not isinstance(value, np.bool_):
            value = value.item()
        try:
            number = parse(value)
        except UnitError as exc:
            detail = str(exc).split(": ", 1)[-1].split(" (expected")[0]
            detail = "" if detail.startswith("expected") else f" ({detail})"
            raise _problem(where, f"expected {phrase}{detail}", value) from None
        if positive and number <= 0:
            raise _problem(where, f"expected {phrase}", value)
        return number
    return check


def _count(value, where: str) -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _problem(where, "expected a positive integer", value)
    if value > MAX_DEVICES:
        raise _problem(where, f"expected a positive integer at most {MAX_DEVICES:,}", value)
    return value


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _problem(where, "expected a non-empty string", value)
    return value


FLOPS = _quantity("a positive FLOP rate such as 19.5 TFLOPS or 1e12", parse_flops)
SIZE = _quantity("a positive size such as 16GB, 512MiB or 1.5e9", parse_size)
BANDWIDTH = _quantity("a positive bandwidth such as 25GB/s or 10Gb/s", parse_bandwidth)
TIME = _quantity("a time such as 10us or 1ms", parse_time, positive=False)


def _rates(value, where: str) -> dict[str, float]:
    """A device's `op_flops`: op kind -> FLOP/s."""
    if not isinstance(value, Mapping):
        raise _problem(where, "expected a mapping of op kind to FLOP/s", value)
    return {_text(op, f"{where} (op kind)"): FLOPS(rate, f"{where}.{_key(op)}")
            for op, rate in value.items()}


def _section(value, rules: dict, required: tuple[str, ...], where: str) -> dict:
    """`value` checked against `rules`: a mapping without unknown or missing keys whose values
    pass their rules; the values converted."""
    if not isinstance(value, Mapping):
        raise _problem(where, "expected a mapping", value)
    for key in value:
        if key not in rules:
            hint = (did_you_mean(key, rules) or f" (expected one of {', '.join(rules)})")
            raise _problem(f"{where}.{_key(key)}", f"unknown key{hint}", shown=False)
    out = {}
    for key, rule in rules.items():
        if key in value:
            out[key] = rule(value[key], f"{where}.{key}")
        elif key in required:
            raise _problem(f"{where}.{key}", "missing required key", shown=False)
    return out


def _key(key: Any) -> str:
    """A key as written in a message; quoted when empty or not printable."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() else repr(key)


def _entries(rules: dict, required: tuple[str, ...], most: int) -> Callable:
    """A rule for a list of at most `most` mappings checked against `rules`."""
    def check(value, where: str) -> list:
        if not isinstance(value, (list, tuple)):
            raise _problem(where, "expected a list", value)
        if len(value) > most:
            raise _problem(where, f"expected at most {most:,} items", len(value))
        return [_section(entry, rules, required, f"{where}[{i}]")
                for i, entry in enumerate(value)]
    return check


# key -> rule, in the order problems are looked for; required keys listed apart
UNIFORM_BODY = {"devices": _count, "flops": FLOPS, "memory": SIZE, "bandwidth": BANDWIDTH,
                "latency": TIME}
HIERARCHICAL = {"nodes": _count, "devices_per_node": _count, "flops": FLOPS, "memory": SIZE,
                "intra": BANDWIDTH, "inter": BANDWIDTH, "intra_latency": TIME,
                "inter_latency": TIME, "name": _text}
DEVICE = {"name": _text, "flops": FLOPS, "memory": SIZE, "op_overhead": TIME,
          "op_flops": _rates}
LINK = {"a": _text, "b": _text, "bandwidth": BANDWIDTH, "latency": TIME}
LISTED = {"devices": _entries(DEVICE, ("name", "flops", "memory"), MAX_DEVICES),
          "links": _entries(LINK, ("a", "b", "bandwidth"), MAX_DEVICES**2),
          "default_bandwidth": BANDWIDTH, "default_latency": TIME, "step_overhead": TIME,
          "name": _text}
UNIFORM = {"uniform": lambda value, where: _section(value, UNIFORM_BODY, ("devices",), where),
           "name": _text}


def normalize(spec) -> dict:
    """The cluster section `spec` checked and with quantities as plain numbers (module
    docstring); ClusterError naming the first field at fault."""
    if not (isinstance(spec, Mapping)
            and any(key in spec for key in ("uniform", "nodes", "devices_per_node", "devices"))):
        raise _problem("cluster", SHAPES_HELP, spec)
    if "uniform" in spec:
        return _section(spec, UNIFORM, ("uniform",), "cluster")
    if "nodes" in spec or "devices_per_node" in spec:
        out = _section(spec, HIERARCHICAL, ("nodes", "devices_per_node"), "cluster")
        if out["nodes"] * out["devices_per_node"] > MAX_DEVICES:
            raise _problem("cluster.devices_per_node", f"expected nodes x devices_per_node "
                           f"at most {MAX_DEVICES:,} devices", out["devices_per_node"])
        return out
    return _listed(spec)


def _listed(spec: Mapping) -> dict:
    """Listed devices and links: device names used once, links between two listed devices,
    each pair linked once."""
    out = _section(spec, LISTED, ("devices",), "cluster")
    names = [d["name"] for d in out["devices"]]
    if not names:
        raise _problem("cluster.devices", "expected at least 1 item(s), got none", shown=False)
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _problem(f"cluster.devices[{i}]", "expected a device name used once", name)
    seen: set[frozenset] = set()
    for i, link in enumerate(out.get("links", ())):
        where = f"cluster.links[{i}]"
        for end in ("a", "b"):
            if link[end] not in names:
                raise _problem(where, f"expected {end} to name a listed device"
                               f"{did_you_mean(link[end], names)}", link[end])
        pair = frozenset((link["a"], link["b"]))
        if len(pair) == 1:
            raise _problem(where, "expected two different devices", [link["a"], link["b"]])
        if pair in seen:
            raise _problem(where, "expected each pair of devices linked once",
                           [link["a"], link["b"]])
        seen.add(pair)
    return out


def build(spec: Mapping) -> Cluster:
    """The Cluster of a normalized cluster section."""
    if "uniform" in spec:
        args = dict(spec["uniform"])
        cluster = uniform(args.pop("devices"), **args)
    elif "nodes" in spec:
        renamed = {"intra": "intra_bandwidth", "inter": "inter_bandwidth"}
        args = {renamed.get(key, key): v for key, v in spec.items() if key != "name"}
        cluster = hierarchical(args.pop("nodes"), args.pop("devices_per_node"), **args)
    else:
        devices = [Device(d["name"], float(d["flops"]), int(d["memory"]),
                          op_overhead=float(d.get("op_overhead", 0.0)),
                          op_flops=dict(d.get("op_flops", {}))) for d in spec["devices"]]
        latency = spec.get("default_latency", DEFAULT_LATENCY)
        links = {(e["a"], e["b"]): Link(float(e["bandwidth"]), float(e.get("latency", latency)))
                 for e in spec.get("links", ())}
        defaults = {key: spec[key] for key in ("default_bandwidth", "default_latency",
                                               "step_overhead") if key in spec}
        cluster = heterogeneous(devices, links, name=spec.get("name", "heterogeneous"),
                                **defaults)
    return replace(cluster, name=spec["name"]) if "name" in spec else cluster
