"""Closing `pipeline_dp`'s gap: a depth-first search over chains of ideals with exact times.

Used only when the DP's chain, evaluated exactly, is slower than the DP's lower bound. Stages
are added in order; after each, SPEC section 5's `T_d` of the devices placed so far is computed
exactly with the nodes of later stages on one virtual device joined by the cheapest remaining
link. Those partial times only grow, so a branch is cut once its partial bottleneck, or its
lower bound (the DP's stage price; the remaining compute over the remaining devices' total
speed), reaches the best chain found.
"""
from __future__ import annotations

import time

import numpy as np

from partition.stage_time import stage_time_arrays

RELATIVE = 1e-12
SECONDS = 3.0


class _Budget(Exception):
    pass


def search(problem, model, order, flight, caps_on, pins_on, found, bound, evaluations):
    """((time, V, assignment), proven): the best chain for this device order, proven optimal
    unless the budget of exact partial evaluations, or SECONDS, ran out first."""
    deadline = time.perf_counter() + SECONDS
    from partition.algorithms.pipeline_dp import _volume, allowed, stage_costs
    cluster, arrays = problem.cluster, problem.arrays
    k = len(order) if flight is None else len(flight)
    order = tuple(order)[:k]
    big = cluster.k
    speeds = np.append(cluster.speeds, np.inf)
    links = [_virtual_links(cluster, order[p + 1:]) for p in range(k)]
    by_unit = np.argsort(model.unit, kind="stable")
    unit_ptr = np.searchsorted(model.unit[by_unit], np.arange(model.members.shape[1] + 1))
    last = model.size - 1
    state = {"best": found, "left": evaluations}
    assign = np.full(arrays.n, big, dtype=np.int32)

    def visit(p: int, i: int, prefix: float) -> None:
        terms = model.terms(i)
        lo = terms[0]
        cost = stage_costs(problem, model, order, i, terms)[p]
        ok = allowed(problem, model, order, i, terms, flight, caps_on, pins_on)[p]
        rest = float(speeds[list(order[p + 1:])].sum())
        remaining = model.compute[-1] - model.compute[lo:]
        suffix = remaining / rest if rest > 0 else np.where(remaining > 0, np.inf, 0.0)
        bound_j = np.maximum(np.maximum(cost, suffix), prefix)
        limit = state["best"][0] * (1 - RELATIVE)
        candidates = np.flatnonzero(ok & (bound_j < limit))
        if p == k - 1:
            candidates = candidates[candidates == last - lo]
        for j in lo + candidates[np.argsort(bound_j[candidates], kind="stable")]:
            if state["left"] <= 0 or time.perf_counter() > deadline:
                raise _Budget
            state["left"] -= 1
            units = np.flatnonzero(model.members[j] & ~model.members[i])
            nodes = np.concatenate([by_unit[unit_ptr[u]:unit_ptr[u + 1]] for u in units])
            assign[nodes] = order[p]
            c, s, r = stage_time_arrays(arrays, assign, speeds, *links[p],
                                        problem.micro_batches)
            slowest = float((c + s + r)[:big].max())
            if slowest < state["best"][0] * (1 - RELATIVE):
                if j == last:
                    exact = assign.copy()
                    state["best"] = (slowest, _volume(problem, exact), exact)
                else:
                    visit(p + 1, int(j), slowest)
            assign[nodes] = big

    try:
        visit(0, 0, 0.0)
    except _Budget:
        return state["best"], False
    return state["best"], True


def _virtual_links(cluster, later) -> tuple[np.ndarray, np.ndarray]:
    """(latency, bandwidth) over the k devices and one virtual device standing for `later`,
    linked to each device by the cheapest link to any of them."""
    k = cluster.k
    latency = np.pad(cluster.latency, (0, 1))
    bandwidth = np.pad(cluster.bandwidth, (0, 1), constant_values=np.inf)
    later = list(later)
    if later:
        latency[:k, k] = cluster.latency[:, later].min(axis=1)
        latency[k, :k] = cluster.latency[later, :].min(axis=0)
        bandwidth[:k, k] = cluster.bandwidth[:, later].max(axis=1)
        bandwidth[k, :k] = cluster.bandwidth[later, :].max(axis=0)
    return latency, bandwidth
