"""`partition()`: the one entry point that places a forward graph on a cluster: a Problem, the
registry's algorithm, a check of its pins (and acyclicity), the shared greedy rebalancer."""
from __future__ import annotations

import logging
import time
from typing import Mapping

import numpy as np

from autodiff.ir import Graph
from partition.algorithms import ALGORITHMS
from partition.balance import rebalance
from partition.cluster import Cluster
from partition.errors import PlacementError
from partition.metrics import check_assignment, compute_metrics, quotient_adjacency, quotient_order
from partition.placement import Placement
from partition.problem import Problem
from partition.stage_time import stage_times

log = logging.getLogger(__name__)


def partition(graph: Graph, cluster: Cluster, algorithm: str = "auto", epsilon: float = 0.10,
              acyclic: bool = False, seed: int = 0, time_limit: float | None = None,
              pins: Mapping[str, int | str] | None = None, objective: str | None = None,
              micro_batches: int = 1, optimizer: str = "sgd",
              schedule: str | None = None, shard: str = "off") -> Placement:
    """Place every node of the forward `graph` on a device of `cluster`.

    algorithm: a name in `partition.algorithms.ALGORITHMS`.
    epsilon: allowed load imbalance (SPEC section 2), relaxed when one node alone outweighs a
        device's share.
    acyclic: require an acyclic quotient graph (needed by pipeline schedules).
    pins: fnmatch-style node name pattern -> device index or name.
    objective: "volume" (bytes), "time_volume" (seconds on each link; "time" is accepted) or
        "throughput" (SPEC section 5's time per micro-batch; no epsilon, no rebalancing);
        default "volume" on clusters with uniform links, else "time_volume".
    schedule: "1f1b" (default) or "gpipe", whose in-flight micro-batches count against
        memory under the throughput objective.
    shard: "off" (default) or "auto": shard nodes heavier than a device's share when that
        improves the objective (partition/sharding.py); the placement then names the sharded
        graph's nodes and info["sharding"] says what was done.

    Raises PlacementError naming the argument, node or device when no acceptable placement is
    found (a device over its memory or load cap, a violated pin, a cyclic quotient).
    """
    if shard != "off":      # the sharding search around the plain partition()
        from partition.sharding import SHARD_CHOICES, partition_auto
        if shard not in SHARD_CHOICES:
            raise PlacementError(f"shard: expected one of {', '.join(SHARD_CHOICES)}, "
                                 f"got {shard!r}")
        return partition_auto(graph, cluster, partition, dict(
            algorithm=algorithm, epsilon=epsilon, acyclic=acyclic, seed=seed,
            time_limit=time_limit, pins=pins, objective=objective,
            micro_batches=micro_batches, optimizer=optimizer, schedule=schedule))
    try:
        run = ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        raise PlacementError(f"algorithm: unknown algorithm {algorithm!r} (known: "
                             f"{', '.join(sorted(ALGORITHMS))})") from None
    problem = Problem.build(graph, cluster, epsilon=epsilon, acyclic=acyclic, seed=seed,
                            time_limit=time_limit, pins=pins, objective=objective,
                            micro_batches=micro_batches, optimizer=optimizer,
                            schedule=schedule)
    start = time.perf_counter()
    result = run(problem)
    assignment = _checked(problem, result.assignment, algorithm)
    if problem.objective == "throughput":       # the objective is the balance
        moves = 0
    else:
        assignment, moves = rebalance(problem, assignment)
    seconds = time.perf_counter() - start
    return _placement(problem, algorithm, optimizer, result, assignment, moves, seconds)


def _checked(problem: Problem, assignment, algorithm: str) -> np.ndarray:
    """The algorithm's assignment, checked: one valid device per node, pins honoured, and an
    acyclic quotient when acyclic=True was asked."""
    assignment = check_assignment(assignment, problem.n, problem.k,
                                  who=f"algorithm {algorithm!r}")
    wrong = np.flatnonzero((problem.pinned >= 0) & (assignment != problem.pinned))
    if len(wrong):
        v, names = int(wrong[0]), problem.cluster.device_names
        raise PlacementError(f"algorithm {algorithm!r} placed node {problem.arrays.names[v]!r} "
                             f"on {names[assignment[v]]!r} but it is pinned to "
                             f"{names[problem.pinned[v]]!r}")
    if problem.acyclic and quotient_order(quotient_adjacency(problem.arrays, assignment,
                                                             problem.k)) is None:
        raise PlacementError(f"algorithm {algorithm!r} returned a placement whose devices form "
                             "a cycle, but acyclic=True was asked for")
    return assignment


def _placement(problem: Problem, algorithm: str, optimizer: str, result,
               assignment: np.ndarray, moves: int, seconds: float) -> Placement:
    """The Placement of the final assignment with its metrics and pipeline stage times."""
    cluster, micro_batches = problem.cluster, problem.micro_batches
    metrics = compute_metrics(problem.arrays, assignment, cluster, micro_batches=micro_batches,
                              optimizer=optimizer)
    log.info("partition %s with %s on %d devices: V=%d bytes, imbalance %.3f, %.2fs",
             problem.graph.name, algorithm, problem.k, metrics.step_volume, metrics.imbalance,
             seconds)
    pipeline = stage_times(problem.arrays, assignment, cluster, micro_batches=micro_batches,
                           schedule=problem.schedule)
    info = dict(result.info, objective=problem.objective, rebalance_moves=moves,
                pipeline=pipeline.to_dict())
    return Placement(assignment=assignment, node_names=problem.arrays.names,
                     device_names=cluster.device_names, algorithm=algorithm, seconds=seconds,
                     metrics=metrics, optimal=result.optimal if moves == 0 else None,
                     bound=result.bound, relaxed_by=problem.relaxed_by, info=info)
