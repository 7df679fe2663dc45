"""Baseline placements to measure the real algorithms against: round_robin, random, contiguous
(equal-load blocks of a topological order, acyclic by construction apart from pins) and layers
(equal parameter counts per layer group, like DeepSpeed's default pipeline partition method
'parameters'). All of them honour pins; none looks at communication, so the rebalancer fixes
any overload.
"""
from __future__ import annotations

import numpy as np

from partition.algorithms.base import (AlgorithmResult, apply_pins, layer_units, pipeline_order,
                                       split_by_weight)
from partition.problem import Problem


def round_robin(problem: Problem) -> AlgorithmResult:
    """Node i on device i mod k."""
    return AlgorithmResult(apply_pins(problem, np.arange(problem.n) % problem.k))


def random_placement(problem: Problem) -> AlgorithmResult:
    """Every node on a uniformly random device drawn from `np.random.default_rng(seed)`."""
    rng = np.random.default_rng(problem.seed)
    return AlgorithmResult(apply_pins(problem, rng.integers(0, problem.k, size=problem.n)))


def contiguous(problem: Problem) -> AlgorithmResult:
    """Blocks of a topological order with loads proportional to device speed, device 0 first."""
    arrays = problem.arrays
    order = pipeline_order(arrays)
    weights = problem.weights
    if weights.sum() <= 0:          # nothing to balance: spread the computed nodes evenly
        weights = (~arrays.is_source).astype(np.float64)
    assignment = split_by_weight(weights[order], problem.cluster.speeds)[np.argsort(order)]
    _follow_first_consumer(arrays, assignment)
    return AlgorithmResult(apply_pins(problem, assignment), info={"order": "pipeline"})


def layers(problem: Problem) -> AlgorithmResult:
    """Consecutive layer groups with equal parameter counts per device (each node its own
    layer when the graph has no groups)."""
    arrays = problem.arrays
    order = pipeline_order(arrays)
    units = layer_units(arrays, order)
    if units is None:
        units = np.argsort(order)       # each node its own layer, in pipeline order
    parameters = np.bincount(units, weights=np.where(arrays.is_param, arrays.size, 0))
    unit_device = split_by_weight(parameters, np.ones(problem.k))
    assignment = unit_device[units]
    _follow_first_consumer(arrays, assignment)
    return AlgorithmResult(apply_pins(problem, assignment),
                           info={"layers": int(units.max()) + 1 if problem.n else 0})


def _follow_first_consumer(arrays, assignment: np.ndarray) -> None:
    """Put every source node with consumers on its first consumer's device (in place)."""
    has_consumer = np.diff(arrays.out_ptr) > 0
    sources = np.flatnonzero(arrays.is_source & has_consumer)
    assignment[sources] = assignment[arrays.out_idx[arrays.out_ptr[sources]]]
