"""Run the applicable algorithms within a time budget and keep the best feasible placement.

Candidates: ilp (n <= 60), multilevel, Mt-KaHyPar and METIS when installed (not with acyclic=True)
each also improved by one multilevel V-cycle, mincut, and contiguous and pipeline_dp when
acyclic; when none fits the load caps, the load packing closest to the best (packing.py) improved
by a V-cycle. Feasible: within the load and memory caps (with receive buffers, SPEC section 2),
honouring pins, acyclic when asked; among those the lowest V (or time-weighted volume) wins.
Under the throughput objective pipeline_dp and contiguous always run, load caps do not count as
violations, and the winner is the acyclic placement with the smallest pipeline time per
micro-batch (SPEC section 5), then the smallest V.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from partition.algorithms.base import AlgorithmResult
from partition.algorithms.baselines import contiguous
from partition.algorithms.hypergraph import Caps, Hypergraph, from_problem, objective, overload
from partition.algorithms.ilp import ilp
from partition.algorithms import packing
from partition.algorithms.mincut import mincut
from partition.algorithms.multilevel import multilevel, vcycle
from partition.algorithms.peers import metis_partition, mtkahypar_partition, peer_partition
from partition.algorithms.pipeline_dp import pipeline_dp
from partition.cost import memory_per_device
from partition.errors import PlacementError
from partition.metrics import quotient_adjacency, quotient_order
from partition.problem import Problem
from partition.stage_time import stage_times

log = logging.getLogger(__name__)

ILP_MAX_NODES = 60
ILP_DEFAULT_SECONDS = 30.0


def _violation(problem: Problem, hg: Hypergraph, caps: Caps, part: np.ndarray) -> float:
    """0 for an acceptable placement, else a positive measure of how far it is from one."""
    bad = 0.0 if problem.objective == "throughput" else overload(hg, part, caps)
    memory = memory_per_device(problem.arrays, part.astype(np.int32), caps.k,
                               problem.optimizer_slots)
    bad += float(np.maximum(memory - caps.memory, 0).sum() / max(float(caps.memory.max()), 1.0))
    fixed = hg.fixed >= 0
    bad += float((part[fixed] != hg.fixed[fixed]).sum())
    if problem.acyclic and quotient_order(quotient_adjacency(problem.arrays, part, caps.k)) is None:
        bad += 1.0
    return bad


def auto(problem: Problem) -> AlgorithmResult:
    """Registry entry: best feasible placement among the applicable algorithms."""
    start = time.perf_counter()
    deadline = None if problem.time_limit is None else start + problem.time_limit
    hg, caps = from_problem(problem)
    tried: dict[str, dict] = {}
    best = _best_of(problem, hg, caps, _candidates(problem, hg, caps, deadline), deadline, tried)
    if best is None:
        raise PlacementError("auto: no algorithm produced a placement")
    if best[0][0] and packing.applicable(problem):
        # over a cap: balance may be a packing problem greedy repair cannot solve
        best = _try_packing(problem, hg, caps, best, tried)
    _, name, result = best
    info = dict(result.info, chosen=name, candidates=tried)
    return AlgorithmResult(np.asarray(result.assignment, dtype=np.int32), optimal=result.optimal,
                           bound=result.bound, info=info)


def _candidates(problem: Problem, hg: Hypergraph, caps: Caps, deadline: float | None) -> list:
    """(name, run) of the applicable algorithms, in the order they are tried; each run gets
    what is left of the time budget."""
    def remaining() -> float | None:
        return None if deadline is None else max(deadline - time.perf_counter(), 0.05)

    def sub(time_limit: float | None) -> Problem:
        return Problem(**{**problem.__dict__, "time_limit": time_limit})

    methods = []
    if hg.n <= ILP_MAX_NODES:
        methods.append(("ilp", lambda: ilp(sub(min(remaining() or ILP_DEFAULT_SECONDS,
                                                   ILP_DEFAULT_SECONDS)))))
    methods.append(("multilevel", lambda: multilevel(sub(remaining()))))
    if not problem.acyclic:
        for name, peer in (("mtkahypar", mtkahypar_partition), ("metis", metis_partition)):
            methods += _peer_methods(name, hg, caps, peer, problem.seed)
    methods.append(("mincut", lambda: mincut(sub(remaining()))))
    # pipeline_dp and contiguous: first under throughput, last with acyclic, else absent
    pipelines = [("pipeline_dp", lambda: pipeline_dp(problem)),
                 ("contiguous", lambda: contiguous(problem))]
    if problem.objective == "throughput":
        return pipelines + methods
    return methods + pipelines[::-1] if problem.acyclic else methods


def _best_of(problem: Problem, hg: Hypergraph, caps: Caps, methods: list,
             deadline: float | None, tried: dict):
    """Run `methods` until the deadline (at least one that succeeds); the best as
    ((over a cap, violation, objective), name, result), or None when none produced one.
    Records each one's objective, violation and seconds in `tried`."""
    best = None
    for name, run in methods:
        if deadline is not None and time.perf_counter() > deadline and best is not None:
            break
        t0 = time.perf_counter()
        try:
            result = run()
        except (PlacementError, ImportError) as err:  # a missing peer package, an unsupported case
            log.info("auto: %s skipped: %s", name, err)
            continue
        part = np.asarray(result.assignment, dtype=np.int64)
        value, bad = _value(problem, hg, caps, part), _violation(problem, hg, caps, part)
        tried[name] = {"objective_value": value, "violation": bad,
                       "seconds": round(time.perf_counter() - t0, 3)}
        key = (bad > 0, bad, value)
        if best is None or key < best[0]:
            best = (key, name, result)
    return best


def _try_packing(problem: Problem, hg: Hypergraph, caps: Caps, best: tuple, tried: dict):
    """`best`, or the load packing closest to it improved by a V-cycle when that is better."""
    t0 = time.perf_counter()
    fit = packing.closest_fit(problem, np.asarray(best[2].assignment, dtype=np.int64))
    if fit is None:
        return best
    part = vcycle(hg, caps, fit, acyclic=problem.acyclic, seed=problem.seed)
    value, bad = _value(problem, hg, caps, part), _violation(problem, hg, caps, part)
    tried["packing"] = {"objective_value": value, "violation": bad,
                        "seconds": round(time.perf_counter() - t0, 3)}
    key = (bad > 0, bad, value)
    return (key, "packing", AlgorithmResult(part)) if key < best[0] else best


def _value(problem: Problem, hg: Hypergraph, caps: Caps, part: np.ndarray):
    """The objective of `part`: V or the time-weighted volume; under throughput the pipeline
    time per micro-batch (infinite when the placement is not a pipeline), then V."""
    volume = objective(hg, part, caps.k)
    if problem.objective != "throughput":
        return volume
    times = stage_times(problem.arrays, part.astype(np.int32), problem.cluster,
                        micro_batches=problem.micro_batches, schedule=problem.schedule)
    return (times.time_per_micro_batch if times.acyclic else float("inf"), volume)


def _peer_methods(name: str, hg, caps, fn, seed) -> list:
    """(name, run) of a peer, and of its placement improved by one multilevel V-cycle."""
    found: dict[str, np.ndarray] = {}

    def peer():
        found["part"] = peer_partition(hg, caps, fn, seed)
        return AlgorithmResult(found["part"].astype(np.int32))

    def refined():
        if "part" not in found:
            raise PlacementError("peer did not run")
        return AlgorithmResult(vcycle(hg, caps, found["part"], seed=seed).astype(np.int32))

    return [(name, peer), (name + "+vcycle", refined)]
