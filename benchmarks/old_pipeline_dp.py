"""The previous pipeline_dp (best contiguous split of one topological order), kept verbatim
for benchmarks/pipeline_throughput.py to measure the ideal DP against. Not registered.

Original docstring:
PipeDream-style dynamic program: the best contiguous split of a topological order into stages.

The order is `pipeline_order` (sources next to their first consumer) cut into units: single
nodes when the graph is small, else layer groups (or equal-load chunks when there are none),
at most `max_units` of them. Stage d runs on device d (devices in their fixed order) and may be
empty. A stage holding units [i, j) on device d costs

    load(i, j) / speed_d
    + send(d -> d+1, F(i, j))     F: bytes of tensors made in [i, j) and read at or after j
    + send(d -> d-1, B(i, j))     B: gradient bytes of requires-grad tensors made before i
                                     and read in [i, j) (sent back once per stage)

where send(a -> b, x) = latency + x / bandwidth when x > 0, else 0, loads are per-step training
FLOPs and bytes count m times for batch-dependent tensors. The program minimises the largest
stage cost (the pipeline's bottleneck) in O(k U^2) with U x U tables built from prefix sums,
respecting load caps and pins where some split can; the shared rebalancer fixes the rest.
"""
from __future__ import annotations

import numpy as np

from partition.algorithms.base import (AlgorithmResult, apply_pins, layer_units, pipeline_order,
                                       split_by_weight)
from partition.cost import sorted_unique
from partition.problem import Problem

MAX_UNITS = 1024


def old_pipeline_dp(problem: Problem, max_units: int = MAX_UNITS) -> AlgorithmResult:
    """Optimal contiguous stages (bottleneck of compute plus outgoing transfers), device d
    running stage d."""
    arrays = problem.arrays
    order = pipeline_order(arrays)
    units = _units(problem, order, max_units)
    count = int(units.max()) + 1
    unit_load = np.bincount(units, weights=problem.weights, minlength=count)
    forward, backward = cut_tables(problem, units, count)
    unit_pin = _unit_pins(problem, units, count)
    # (caps, pins) relaxed in turn. Without caps the split minimises the worst load / cap
    # ratio instead of time, so the shared rebalancer only has a small overshoot to repair.
    attempts = ((True, True), (False, True), (False, False))
    for use_caps, use_pins in attempts:
        bottleneck, stage_of_unit = _solve(problem, unit_load, forward, backward,
                                           unit_pin if use_pins else None, use_caps)
        if np.isfinite(bottleneck):
            break
    return AlgorithmResult(apply_pins(problem, stage_of_unit[units]),
                           info={"bottleneck_seconds" if use_caps else "worst_load_over_cap":
                                 float(bottleneck), "units": count,
                                 "within_caps": use_caps, "pins_in_split": use_pins})


def cut_tables(problem: Problem, units: np.ndarray, count: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(F, B), both (U+1) x (U+1): F[i, j] forward bytes leaving units [i, j), B[i, j] gradient
    bytes leaving them backward (see the module docstring); only i <= j is meaningful."""
    arrays = problem.arrays
    sent = arrays.bytes * np.where(arrays.batch_dependent, problem.micro_batches, 1)
    producer = arrays.in_idx.astype(np.int64)
    pairs = sorted_unique(producer * count + units[arrays.in_dst])   # (tensor, consumer unit)
    tensor, consumer = pairs // count, pairs % count
    later = consumer > units[tensor]
    tensor, consumer = tensor[later], consumer[later]
    # forward: a tensor leaves [i, j) when made there and its last consumer unit is >= j
    last = np.ones(len(tensor), dtype=bool)
    last[:-1] = tensor[1:] != tensor[:-1]
    made_last = np.zeros((count, count + 1))
    np.add.at(made_last, (units[tensor[last]], consumer[last]), sent[tensor[last]])
    beyond = np.cumsum(made_last[:, ::-1], axis=1)[:, ::-1]            # [a, j]: last >= j
    prefix = np.vstack([np.zeros(count + 1), np.cumsum(beyond, axis=0)])
    forward = np.diag(prefix)[None, :] - prefix
    # backward: count each tensor once per stage, at its first consumer unit in [i, j): the
    # pair (previous consumer unit or producer unit, consumer unit) with previous < i <= unit
    first = np.ones(len(tensor), dtype=bool)
    first[1:] = tensor[1:] != tensor[:-1]
    previous = np.where(first, units[tensor], np.concatenate([[0], consumer[:-1]]))
    grad = arrays.requires_grad[tensor]
    pair_weight = np.zeros((count, count))
    np.add.at(pair_weight, (previous[grad], consumer[grad]), sent[tensor[grad]])
    before = np.vstack([np.zeros(count), np.cumsum(pair_weight, axis=0)])   # [i, c]: prev < i
    within = np.hstack([np.zeros((count + 1, 1)), np.cumsum(before, axis=1)])
    backward = within - np.diag(within)[:, None]
    return forward, backward


def _units(problem: Problem, order: np.ndarray, max_units: int) -> np.ndarray:
    """Unit index of every node, units numbered along the order, at most max_units of them."""
    n = problem.n
    units = np.empty(n, dtype=np.int64)
    if n <= max_units:
        units[order] = np.arange(n)
        return units
    layers = layer_units(problem.arrays, order)
    if layers is None:
        units[order] = split_by_weight(problem.weights[order], np.ones(max_units))
    elif layers.max() + 1 > max_units:
        layer_load = np.bincount(layers, weights=problem.weights)
        units = split_by_weight(layer_load, np.ones(max_units))[layers]
    else:
        units = layers
    return np.unique(units, return_inverse=True)[1].astype(np.int64)


def _unit_pins(problem: Problem, units: np.ndarray, count: int) -> np.ndarray:
    """Device each unit is pinned to, -1 when free; units whose nodes are pinned to different
    devices are left free (their pinned nodes are moved afterwards)."""
    pinned = np.flatnonzero(problem.pinned >= 0)
    low = np.full(count, problem.k, dtype=np.int64)
    high = np.full(count, -1, dtype=np.int64)
    np.minimum.at(low, units[pinned], problem.pinned[pinned])
    np.maximum.at(high, units[pinned], problem.pinned[pinned])
    return np.where(low == high, low, -1)


def _solve(problem: Problem, unit_load: np.ndarray, forward: np.ndarray, backward: np.ndarray,
           unit_pin: np.ndarray | None, use_caps: bool) -> tuple[float, np.ndarray]:
    """(best bottleneck, stage of each unit); the bottleneck is inf when no split is allowed.

    With caps, the bottleneck is the slowest stage's seconds; without, the largest load / cap.
    """
    k, count = problem.k, len(unit_load)
    speeds = problem.cluster.speeds
    bandwidth, latency = problem.cluster.bandwidth, problem.cluster.latency
    load = np.concatenate([[0.0], np.cumsum(unit_load)])
    segment_load = load[None, :] - load[:, None]                        # [i, j]
    upper = np.triu(np.ones((count + 1, count + 1), dtype=bool))
    empty = np.eye(count + 1, dtype=bool)
    best = np.full(count + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((k, count + 1), dtype=np.int64)
    for d in range(k):
        after, before = min(d + 1, k - 1), max(d - 1, 0)
        if use_caps:
            cost = (segment_load / speeds[d]
                    + np.where(forward > 0, latency[d, after] + forward / bandwidth[d, after], 0.0)
                    + np.where(backward > 0, latency[d, before] + backward / bandwidth[d, before],
                               0.0))
        else:
            cost = segment_load / max(float(problem.load_caps[d]), 1e-300)
        cost[empty] = 0.0
        allowed = upper.copy()
        if use_caps:
            allowed &= segment_load <= problem.load_caps[d] * (1 + 1e-9) + 1e-9
        if unit_pin is not None:
            elsewhere = np.concatenate([[0], np.cumsum((unit_pin >= 0) & (unit_pin != d))])
            allowed &= (elsewhere[None, :] - elsewhere[:, None]) == 0
        allowed |= empty
        candidates = np.where(allowed, np.maximum(best[:, None], cost), np.inf)
        choice[d] = np.argmin(candidates, axis=0)
        best = candidates[choice[d], np.arange(count + 1)]
    stage = np.zeros(count, dtype=np.int32)
    j = count
    for d in range(k - 1, -1, -1):
        i = int(choice[d, j])
        stage[i:j] = d
        j = i
    return float(best[count]), stage
