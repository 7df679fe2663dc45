"""`partition.shard: auto`: split the nodes no placement can balance, then partition.

Nodes whose per-step training FLOPs exceed a device's share (`total * s_max / sum(s)`) get
shard specs; the graph rewritten by `autodiff.shard.shard_graph` is partitioned with the asked
algorithm and kept only when it beats the unsharded placement on the objective (ties keep the
unsharded graph, so the result is never worse than `shard: off`):

- throughput: SPEC section 5's time per micro-batch (an acyclic placement first);
- volume / time_volume: first whether every device's load fits the *unrelaxed* cap
  `(1 + eps) * mean load` (a dominating node forces a relaxed cap), then how far over it, then
  whether the problem still had to relax its cap, then the volume (bytes, or link seconds).

Counts tried per heavy node: the smallest that brings each shard under the share, k, and one
or two fewer (a pipeline may do better leaving devices to the rest of the graph), capped at k
and the split axis. Modes: matmul "out" when its output is at least as large as its input or
a cross-entropy reads it (that loss is then split by "vocab" alike, so the full logits never
exist), else "reduce"; take "rows"; conv2d "channels"; cross_entropy "vocab".
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from autodiff.ir import Graph
from autodiff.shard import MODES, ShardSpec, shard_graph, shard_record
from partition.cluster import Cluster
from partition.cost import graph_arrays, step_train_flops
from partition.errors import PartitionError

SHARD_CHOICES = ("off", "auto")


@dataclass(frozen=True)
class ShardedNode:
    """One sharded node: its op, mode, shard count and share of the graph's training FLOPs."""

    name: str
    op: str
    mode: str
    shards: int
    load_share: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShardingResult:
    """What `shard: auto` decided: the kept scheme (empty when the graph stayed whole), the
    objective before and after, and the step volume sharding adds (negative: saves) against
    the unsharded placement. `colocated` names sharded nodes with two shards on one device."""

    nodes: tuple[ShardedNode, ...]
    kept: bool
    reason: str
    objective: str
    unsharded: float | None
    sharded: float | None
    bytes_added: int
    candidates: int
    colocated: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"kept": self.kept, "reason": self.reason, "objective": self.objective,
                "unsharded": self.unsharded, "sharded": self.sharded,
                "bytes_added": self.bytes_added, "candidates": self.candidates,
                "colocated": list(self.colocated), "nodes": [n.to_dict() for n in self.nodes]}


def heavy_nodes(graph: Graph, cluster: Cluster, micro_batches: int = 1
                ) -> list[tuple[str, float, float]]:
    """(name, load, share) of the shardable nodes whose per-step training FLOPs exceed a
    device's share of the total, heaviest first."""
    arrays = graph_arrays(graph)
    weights = step_train_flops(arrays, micro_batches)
    speeds = np.asarray(cluster.speeds, dtype=float)
    share = float(weights.sum()) * float(speeds.max()) / float(speeds.sum())
    out = []
    for v in np.argsort(-weights, kind="stable").tolist():
        if weights[v] <= share or share <= 0:
            break
        if graph[arrays.names[v]].op in MODES:
            out.append((arrays.names[v], float(weights[v]), share))
    return out


def choose_specs(graph: Graph, cluster: Cluster, micro_batches: int = 1
                 ) -> list[dict[str, ShardSpec]]:
    """Candidate schemes (distinct, fewest shards first) for the heavy nodes; [] if none."""
    heavy = heavy_nodes(graph, cluster, micro_batches)
    k = cluster.k
    schemes = []
    for pick in (0, None, -1, -2):
        specs: dict[str, ShardSpec] = {}
        for name, load, share in heavy:
            count = k if pick is None else math.ceil(load / share) + pick
            _add_spec(graph, specs, name, min(count, k))
        if specs and specs not in schemes:
            schemes.append(specs)
    return schemes


def _add_spec(graph: Graph, specs: dict, name: str, count: int) -> None:
    """Spec for `name` (and the cross-entropy reading an "out" matmul) if count >= 2."""
    node = graph[name]
    mode = MODES[node.op][0]
    loss = None
    if node.op == "matmul":
        losses = [c for c in graph.consumers(name) if graph[c].op == "cross_entropy"
                  and graph[c].inputs[0] == name]
        mode = "out" if losses or node.size >= graph[node.inputs[0]].size else "reduce"
        loss = losses[0] if losses and mode == "out" else None
    count = min(count, _axis_size(graph, name, mode))
    if count < 2 or name in specs:
        return
    specs[name] = ShardSpec(count, mode, uneven=True)
    if loss is not None and loss not in specs:
        specs[loss] = ShardSpec(count, "vocab", uneven=True)


def _axis_size(graph: Graph, name: str, mode: str) -> int:
    node = graph[name]
    shapes = [graph[i].shape for i in node.inputs]
    if node.op == "matmul":
        if len(shapes[1]) != 2:
            return 1
        return shapes[1][1] if mode == "out" else shapes[1][0]
    if node.op == "take":
        return shapes[0][0] if shapes[0] and node.attrs.get("axis", 0) == 0 else 1
    if node.op == "conv2d":
        return shapes[1][0]
    return shapes[0][-1] if shapes[0] else 1


def score(placement, objective: str, epsilon: float, speeds) -> tuple:
    """Sort key of a placement under `objective` (smaller is better; module docstring)."""
    if objective == "throughput":
        pipe = placement.info["pipeline"]
        return (not pipe["acyclic"], float(pipe["time_per_micro_batch"]))
    m = placement.metrics
    loads = np.asarray(m.loads, dtype=float)
    speeds = np.asarray(speeds, dtype=float)
    caps = (1.0 + epsilon) * loads.sum() / len(loads) * speeds / speeds.mean()
    over = float(np.max(loads / np.maximum(caps, 1e-300)))
    volume = m.time_weighted_volume if objective == "time_volume" else m.step_volume
    return (over > 1 + 1e-9, over if over > 1 + 1e-9 else 0.0, placement.relaxed_by is not None,
            float(volume))


def partition_auto(graph: Graph, cluster: Cluster, run: Callable, options: dict):
    """The best placement by the objective of `run(graph, cluster, **options)` on the graph and
    on each candidate scheme, with info["sharding"]; its `seconds` count every run."""
    start = time.perf_counter()
    base = run(graph, cluster, **options)
    objective = base.info["objective"]
    epsilon = options.get("epsilon", 0.10)
    schemes = choose_specs(graph, cluster, options.get("micro_batches", 1))
    base_key = score(base, objective, epsilon, cluster.speeds)
    best, best_key, best_specs = base, base_key, {}
    for specs in schemes:
        try:
            sharded = shard_graph(graph, specs)
            placement = run(sharded, cluster, **options)
        except PartitionError:      # e.g. a pin naming a node the rewrite split: skip it
            continue
        placement = pull_loss_shards(sharded, placement, cluster, options)
        key = score(placement, objective, epsilon, cluster.speeds)
        if key < best_key:
            best, best_key, best_specs = placement, key, specs
    nodes = _sharded_nodes(graph, best_specs, options.get("micro_batches", 1))
    reason = ("no node exceeds a device's share of the load" if not schemes
              else "sharding improves the objective" if best_specs
              else "sharding does not improve the objective; the graph is kept whole")
    result = ShardingResult(
        nodes=nodes, kept=bool(best_specs), reason=reason, objective=objective,
        unsharded=float(base_key[-1]), sharded=float(best_key[-1]) if best_specs else None,
        bytes_added=int(best.metrics.step_volume - base.metrics.step_volume),
        candidates=len(schemes), colocated=_colocated(best, best_specs))
    return replace(best, seconds=time.perf_counter() - start,
                   info=dict(best.info, sharding=result.to_dict()))


def pull_loss_shards(sharded: Graph, placement, cluster: Cluster, options: dict):
    """Move each vocab-parallel loss shard's pieces onto the device of its logits shard when
    that improves the objective (an algorithm working on coarse units may leave them apart,
    and then whole logits shards cross the links); unpinned nodes only, acyclic if asked."""
    from partition.metrics import compute_metrics
    from partition.stage_time import stage_times
    if options.get("pins"):
        return placement
    where = {name: i for i, name in enumerate(placement.node_names)}
    a = placement.assignment.copy()
    first = placement.device_names.index(placement.info["pipeline"]["stage_order"][0]) \
        if placement.info["pipeline"].get("stage_order") else 0
    for entry in shard_record(sharded).get("nodes", {}).values():
        if entry["mode"] != "vocab":
            continue
        for members in entry["parts"]:
            d = a[where[sharded[members[0]].inputs[0]]]
            for name in members:
                a[where[name]] = d
            for name in _ancestors(sharded, sharded[members[-1]].inputs[1]):
                a[where[name]] = first         # the labels: from the first stage
    if np.array_equal(a, placement.assignment):
        return placement
    m, opt = options.get("micro_batches", 1), options.get("optimizer", "sgd")
    metrics = compute_metrics(sharded, a, cluster, micro_batches=m, optimizer=opt)
    if options.get("acyclic") and not metrics.acyclic:
        return placement
    pipe = stage_times(graph_arrays(sharded), a, cluster, micro_batches=m,
                       schedule=options.get("schedule") or "1f1b")
    moved = replace(placement, assignment=a, metrics=metrics, optimal=None,
                    info=dict(placement.info, pipeline=pipe.to_dict(), loss_shards_pulled=True))
    objective, eps = placement.info["objective"], options.get("epsilon", 0.10)
    return min(placement, moved, key=lambda p: score(p, objective, eps, cluster.speeds))


def _ancestors(graph: Graph, name: str) -> list[str]:
    """`name` and everything it is computed from (for the labels: an input and a reshape)."""
    seen, todo = {name}, [name]
    while todo:
        for i in graph[todo.pop()].inputs:
            if i not in seen:
                seen.add(i)
                todo.append(i)
    return sorted(seen)


def _sharded_nodes(graph: Graph, specs: dict, micro_batches: int) -> tuple[ShardedNode, ...]:
    arrays = graph_arrays(graph)
    weights = step_train_flops(arrays, micro_batches)
    total = float(weights.sum()) or 1.0
    return tuple(ShardedNode(name, graph[name].op, s.mode, s.shards,
                             float(weights[graph.index[name]]) / total)
                 for name, s in specs.items())


def _colocated(placement, specs: dict) -> tuple[str, ...]:
    """Sharded nodes two of whose shards share a device (allowed, but wasteful)."""
    where = dict(zip(placement.node_names, placement.assignment.tolist()))
    out = []
    for name, spec in specs.items():
        shards = (f"{name}.shard{i}of{spec.shards}" for i in range(spec.shards))
        devices = [where[shard] for shard in shards if shard in where]
        if len(set(devices)) < len(devices):
            out.append(name)
    return tuple(out)


def sharded_graph(graph: Graph, placement) -> Graph:
    """The graph `placement` places: `graph` rewritten by its kept sharding scheme (if any)."""
    info = placement.info.get("sharding") if placement.info else None
    if not info or not info.get("kept"):
        return graph
    specs = {n["name"]: ShardSpec(n["shards"], n["mode"], uneven=True) for n in info["nodes"]}
    return shard_graph(graph, specs)
