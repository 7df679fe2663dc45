"""`pipeline_dp`: the best acyclic pipeline under SPEC section 5, by a DP over ideals.

A placement into at most k ordered stages is a chain of ideals (ideals.py), stage p on the
p-th device of a device order (empty stages leave devices unused). Following Tarnawski et al.
(NeurIPS 2020), the program runs over the ideals in order of size and, for every pair
`I <= J`, prices stage `J minus I` (pipeline_model.py) and keeps for every (position, J) the
smallest bottleneck `max_p T_p`, ties broken by the smaller step volume V (a sum over stages
of what each receives, so exact in the DP). Up to `REFINE_LIMIT` ideals a second pass finds
the smallest V among chains whose stages all fit the optimal bottleneck.

Exactness. The stage prices are lower bounds (pipeline_model.py); the DP's chain is evaluated
exactly (partition/stage_time.py) and is optimal when that equals the bound, else
pipeline_search.py closes the gap within `SEARCH_EVALUATIONS` evaluations (and its SECONDS).
The contractions of ideals.py keep the optimum.

Coarsening. When the contracted graph has more than `ideal_budget` ideals, the program runs
on a family that is not every ideal: the ideals of the layer groups (strongly connected
groups merged) and the prefixes of the pipeline order (every one up to `PREFIX_LIMIT` atoms,
else `PREFIX_LIMIT` equal-load ones), so it is never worse than the best split of that order
at layer boundaries; beyond `ATOM_LIMIT` atoms, the prefixes of `COARSE_UNITS` equal-load
chunks of that order. The result then says `optimal: false` and how many units it used.

Heterogeneous devices and links: the DP prices a stage's transfers with its device's cheapest
link (a lower bound; the search and the exact evaluation use the true links). Orders tried:
all of them for k <= 3, else the given order, devices by decreasing speed, and a greedy path
from the fastest device along the widest links; the best exact result wins. An answer not
proven optimal is compared with contiguous's split, so it is never worse than that baseline.

Memory caps are hard: stage p's memory is its parameters, gradients and optimizer slots,
its kept activations times the micro-batches in flight at its position (SPEC section 5, for
the problem's schedule and m) and its receive buffers. Load caps apply except under the
throughput objective; pins are honoured where some split can, else moved afterwards.
"""
from __future__ import annotations

import itertools

import numpy as np

from partition.algorithms.base import AlgorithmResult, apply_pins
from partition.algorithms import ideals as ideals_
from partition.algorithms.pipeline_model import Model
from partition.errors import PlacementError
from partition.metrics import quotient_adjacency, quotient_order
from partition.problem import Problem
from partition.stage_time import in_flight, pipeline_memory, stage_time_arrays

IDEAL_BUDGET = 3000
ATOM_LIMIT = 6000
COARSE_UNITS = 256
PREFIX_LIMIT = 1024
REFINE_LIMIT = 800
SEARCH_EVALUATIONS = 20000
TOLERANCE = 1e-9


def pipeline_dp(problem: Problem, ideal_budget: int = IDEAL_BUDGET,
                search_evaluations: int = SEARCH_EVALUATIONS) -> AlgorithmResult:
    """The chain of ideals with the smallest pipeline time per micro-batch (module docstring)."""
    unit, members, complete, units_note = _family(problem, ideal_budget)
    model = Model.build(problem, unit, members)
    orders, all_orders = device_orders(problem.cluster)
    throughput = problem.objective == "throughput"
    best = None
    attempts = dict.fromkeys(((not throughput, True), (False, True), (False, False)))
    for caps_on, pins_on in attempts:
        for order in orders:
            found = _solve_order(problem, model, order, caps_on, pins_on,
                                 search_evaluations if complete and all_orders else 0,
                                 every_plan=complete)
            if found is not None and (best is None or found[:2] < best[:2]):
                best = found
        if best is not None:
            break
    if best is None:
        raise _memory_error(problem, model, orders[0])
    if not (best[4] and complete and all_orders):
        best = _or_contiguous(problem, best)
    time, volume, assignment, bound, proven, order, caps_on, pins_on = best
    optimal = bool(proven and complete and all_orders and pins_on and (caps_on or throughput))
    info = {"time_per_micro_batch": time, "step_volume": volume, "units": units_note,
            "ideals": model.size, "optimal": optimal, "coarsened": not complete,
            "device_order": [problem.cluster.device_names[d] for d in order],
            "within_caps": caps_on, "pins_in_split": pins_on}
    return AlgorithmResult(apply_pins(problem, assignment), optimal=optimal,
                           bound=float(bound), info=info)


# ------------------------------------------------------------------ the family of ideals
def _family(problem: Problem, budget: int) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """(node -> unit, ideals as a bool matrix over units, whether it is every ideal of the
    contracted graph, the number of units)."""
    arrays = problem.arrays
    unit = ideals_.atoms_of(arrays, problem.pinned)
    if int(unit.max()) + 1 > ATOM_LIMIT:          # too many atoms: chunks of the order
        unit = ideals_.coarse_units(arrays, problem.weights, COARSE_UNITS, layers=False)
        count = int(unit.max()) + 1
        return unit, ideals_.prefix_ideals(count), False, count
    count = int(unit.max()) + 1
    every = ideals_.enumerate_ideals(count, *ideals_.unit_edges(arrays, unit), budget)
    if every is not None:
        return unit, every, True, count
    families = []
    if count <= PREFIX_LIMIT:
        families.append(ideals_.prefix_ideals(count))
    else:
        load = np.bincount(unit, weights=problem.weights, minlength=count) + 1e-300
        chunk = ideals_.split_by_weight(load, np.ones(PREFIX_LIMIT))
        families.append(ideals_.prefix_ideals(count, np.flatnonzero(np.diff(chunk)) + 1))
    coarse = ideals_.coarse_units(arrays, problem.weights, COARSE_UNITS)
    layer_of_unit = np.zeros(count, dtype=np.int64)
    layer_of_unit[unit] = coarse                    # a unit joins one of its nodes' layers
    coarse = ideals_.acyclic_units(arrays, layer_of_unit[unit])
    layer_of_unit[unit] = coarse
    layered = ideals_.enumerate_ideals(int(coarse.max()) + 1,
                                       *ideals_.unit_edges(arrays, coarse), budget)
    if layered is not None:
        families.append(layered[:, layer_of_unit])
    return unit, ideals_.merge_families(*families), False, count


def device_orders(cluster) -> tuple[list[tuple[int, ...]], bool]:
    """(device orders to try, whether they cover every distinct order)."""
    k = cluster.k
    speeds, memory = cluster.speeds, cluster.memory
    if (speeds == speeds[0]).all() and (memory == memory[0]).all() and cluster.uniform_links:
        return [tuple(range(k))], True
    if k <= 3:
        return list(itertools.permutations(range(k))), True
    by_speed = tuple(int(d) for d in np.argsort(-speeds, kind="stable"))
    path = [by_speed[0]]
    while len(path) < k:
        rest = [d for d in by_speed if d not in path]
        path.append(max(rest, key=lambda d: (cluster.bandwidth[path[-1], d], speeds[d])))
    orders = [tuple(range(k)), by_speed, tuple(path)]
    return list(dict.fromkeys(orders)), False


# ------------------------------------------------------------------ one device order
def _solve_order(problem: Problem, model: Model, order, caps_on: bool, pins_on: bool,
                 search_evaluations: int, every_plan: bool = True):
    """(time, V, assignment, bound, proven, order, caps_on, pins_on) or None if nothing fits.
    When memory can bind, the chain found without memory caps is kept if it fits (then optimal
    with them too), else the best of one run per in-flight plan; without `every_plan` only the
    plan using every device (conservative: fewer devices get at least as many micro-batches)."""
    plans = _flight_plans(problem, model, len(order))
    if not every_plan:
        plans = plans[-1:]
    results = []
    if plans[0] is not None:
        free = _solve_plan(problem, model, order, None, caps_on, pins_on, search_evaluations)
        if free is not None and _fits(problem, free[0][2]):
            results, plans = [free], []
    for flight in plans:
        found = _solve_plan(problem, model, order, flight, caps_on, pins_on,
                            search_evaluations)
        if found is not None:
            results.append(found)
    if not results:
        return None
    found = min((r[0] for r in results), key=lambda f: f[:2])
    bound = min(r[1] for r in results)
    proven = all(r[2] for r in results)
    return (*found, bound, proven, order, caps_on, pins_on)


def _solve_plan(problem: Problem, model: Model, order, flight, caps_on: bool, pins_on: bool,
                search_evaluations: int):
    """((time, V, assignment), bound, proven) for one in-flight plan, or None."""
    bound, choice = _dp(problem, model, order, flight, caps_on, pins_on)
    if not np.isfinite(bound):
        return None
    found = _chain(problem, model, order, choice)
    if model.size <= REFINE_LIMIT:          # the smallest V among the fastest chains
        refined = _dp(problem, model, order, flight, caps_on, pins_on,
                      limit=bound * (1 + TOLERANCE))[1]
        other = _chain(problem, model, order, refined)
        if other[0] <= found[0] * (1 + TOLERANCE) and other[1] < found[1]:
            found = other
    proven = found[0] <= bound * (1 + TOLERANCE)
    if not proven and search_evaluations:
        from partition.algorithms.pipeline_search import search
        found, proven = search(problem, model, order, flight, caps_on, pins_on, found,
                               bound, search_evaluations)
    return found, bound, proven


def _or_contiguous(problem: Problem, best: tuple) -> tuple:
    """`best`, or contiguous's split when that is an acyclic pipeline that fits memory (and
    the load caps the DP kept) with a smaller (time, V): an unproven DP answer (coarsened
    family, link prices that are estimates) is never worse than the plain pipeline split."""
    from partition.algorithms.baselines import contiguous
    split = apply_pins(problem, contiguous(problem).assignment)
    if best[6] and (np.bincount(split, weights=problem.weights, minlength=problem.k)
                    > problem.load_caps * (1 + TOLERANCE) + 1e-9).any():
        return best
    found = _exact(problem, split)
    if found[:2] >= best[:2] or not _fits(problem, split) or quotient_order(
            quotient_adjacency(problem.arrays, split, problem.k)) is None:
        return best
    return (*found, best[3], best[4], tuple(range(problem.k)), *best[6:])


def _fits(problem: Problem, assignment: np.ndarray) -> bool:
    """Whether `assignment` fits every device's memory under the problem's schedule."""
    memory = pipeline_memory(problem.arrays, assignment, problem.k,
                             micro_batches=problem.micro_batches, schedule=problem.schedule,
                             optimizer_slots=problem.optimizer_slots)
    return bool((memory <= problem.memory_caps).all())


def _flight_plans(problem: Problem, model: Model, k: int) -> list[np.ndarray | None]:
    """Micro-batches in flight per position, one plan per pipeline length when memory can
    bind (1F1B depends on it); [None] when no split can exceed any device's memory."""
    m = problem.micro_batches
    worst = (model.fixed_memory[-1] + model.activations[-1] * m
             + float(model.weights[:, 4].sum()))
    if worst <= float(problem.memory_caps.min()):
        return [None]
    if problem.schedule == "gpipe":
        return [np.full(k, m, dtype=np.int64)]
    return [in_flight(used, m, "1f1b") for used in range(1, k + 1)]


def stage_costs(problem: Problem, model: Model, order, i: int, terms) -> np.ndarray:
    """float[K, N - lo]: lower-bound seconds per micro-batch of stage `J minus I_i` at each
    position p, for the ideals J = lo.. of `terms`."""
    lo, _, fset, rset = terms
    devices = np.asarray(order)
    compute = (model.compute[lo:] - model.compute[i])[None, :] / problem.cluster.speeds[
        devices, None]
    send_next, recv_prev, send_prev, recv_next = link_prices(problem.cluster, tuple(order))
    transfers = (fset[:, 0:2] @ send_next + rset[:, 0:2] @ recv_prev
                 + rset[:, 2:4] @ send_prev + fset[:, 2:4] @ recv_next)
    return compute + transfers.T


def link_prices(cluster, order: tuple) -> tuple[np.ndarray, ...]:
    """(latency, 1/bandwidth) rows (2 x K each) pricing, at each position, forward sends,
    forward receives, gradient sends and gradient receives. Each device's cheapest link (a
    lower bound, which the search needs) on uniform links or when every order is tried;
    else the links to the neighbouring positions, where most transfers of a pipeline go."""
    low_out, inv_out, low_in, inv_in = link_bounds(cluster)[:, list(order)]
    out, into = np.vstack([low_out, inv_out]), np.vstack([low_in, inv_in])
    if cluster.uniform_links or device_orders(cluster)[1]:
        return out, into, out, into
    d = np.asarray(order)
    nxt, prv = np.append(d[1:], d[-1]), np.insert(d[:-1], 0, d[0])
    def pair(a, b, fallback):
        price = np.vstack([cluster.latency[a, b], 1.0 / cluster.bandwidth[a, b]])
        return np.where(a == b, fallback, price)
    return pair(d, nxt, out), pair(prv, d, into), pair(d, prv, out), pair(nxt, d, into)


def allowed(problem: Problem, model: Model, order, i: int, terms, flight, caps_on: bool,
            pins_on: bool) -> np.ndarray:
    """bool[K, N - lo]: stage `J minus I_i` may run at position p (caps, pins, memory)."""
    lo, supersets, fset, rset = terms
    devices = np.asarray(order)
    ok = np.repeat(supersets[None, :], len(devices), axis=0)
    if pins_on and model.pinned[-1, -1]:
        pins = model.pinned[lo:] - model.pinned[i]
        ok &= (pins[:, -1][None, :] - pins[:, devices].T) == 0
    if caps_on:
        load = model.load[lo:] - model.load[i]
        ok &= load[None, :] <= problem.load_caps[devices, None] * (1 + TOLERANCE) + 1e-9
    if flight is not None:
        memory = stage_memory(model, i, terms, flight)
        ok[:len(flight)] &= memory <= problem.memory_caps[devices[:len(flight)], None]
        ok[len(flight):] = False
    return ok


def stage_memory(model: Model, i: int, terms, flight: np.ndarray) -> np.ndarray:
    """float[len(flight), N - lo]: bytes of stage `J minus I_i` at each position."""
    lo, rset = terms[0], terms[3]
    fixed = model.fixed_memory[lo:] - model.fixed_memory[i] + rset[:, 4]
    activations = model.activations[lo:] - model.activations[i]
    return fixed[None, :] + activations[None, :] * flight[:, None]


_BOUNDS: list = [None, None]      # the last cluster and its link bounds


def link_bounds(cluster) -> np.ndarray:
    """float[4, k]: each device's smallest out-latency, 1/largest out-bandwidth, and the same
    for incoming links (zeros on one device); cached for the last cluster."""
    if _BOUNDS[0] is cluster:
        return _BOUNDS[1]
    k = cluster.k
    if k == 1:
        bounds = np.zeros((4, 1))
    else:
        off = ~np.eye(k, dtype=bool)
        lat = np.where(off, cluster.latency, np.inf)
        bw = np.where(off, cluster.bandwidth, 0.0)
        bounds = np.vstack([lat.min(axis=1), 1.0 / bw.max(axis=1), lat.min(axis=0),
                            1.0 / bw.max(axis=0)])
    _BOUNDS[:] = [cluster, bounds]
    return bounds


def _dp(problem: Problem, model: Model, order, flight, caps_on: bool, pins_on: bool,
        limit: float | None = None) -> tuple[float, np.ndarray]:
    """(bottleneck lower bound, choice[K + 1, N]). Without `limit`: smallest bottleneck, then
    smallest V; with it: smallest V among chains whose stages all cost at most `limit`."""
    n_ideals, k = model.size, len(order)
    best = np.full((k + 1, n_ideals), np.inf)
    volume = np.full((k + 1, n_ideals), np.inf)
    best[0, 0] = volume[0, 0] = 0.0
    choice = np.full((k + 1, n_ideals), -1, dtype=np.int64)
    for i in range(n_ideals):
        for p in range(1, k + 1):                           # stage p - 1 left empty
            if _better(best[p - 1, i], volume[p - 1, i], best[p, i], volume[p, i], limit):
                best[p, i], volume[p, i], choice[p, i] = best[p - 1, i], volume[p - 1, i], i
        live = np.isfinite(best[:k, i])
        if not live.any() or i == n_ideals - 1:
            continue
        terms = model.terms(i)
        lo = terms[0]
        cost = stage_costs(problem, model, order, i, terms)
        ok = allowed(problem, model, order, i, terms, flight, caps_on, pins_on) & live[:, None]
        if limit is not None:
            ok &= cost <= limit
        new_best = np.maximum(best[:k, i, None], cost)
        new_volume = volume[:k, i, None] + terms[3][None, :, 5]
        old_best, old_volume = best[1:, lo:], volume[1:, lo:]
        if limit is None:
            scale = np.where(np.isfinite(old_best), np.abs(old_best) * 1e-12, 0.0)
            better = ok & ((new_best < old_best - scale)
                           | ((new_best <= old_best + scale) & (new_volume < old_volume)))
        else:
            better = ok & (new_volume < old_volume)
        best[1:, lo:] = np.where(better, new_best, old_best)
        volume[1:, lo:] = np.where(better, new_volume, old_volume)
        choice[1:, lo:] = np.where(better, i, choice[1:, lo:])
    return float(best[k, -1]), choice


def _better(t_new, v_new, t_old, v_old, limit) -> bool:
    if not np.isfinite(t_new):
        return False
    if limit is not None:
        return v_new < v_old
    scale = max(abs(t_old), 1e-300) * 1e-12 if np.isfinite(t_old) else 0.0
    return t_new < t_old - scale or (t_new <= t_old + scale and v_new < v_old)


def _chain(problem: Problem, model: Model, order, choice: np.ndarray):
    """(exact time per micro-batch, V, node assignment) of the chain the DP chose."""
    stage = np.zeros(model.members.shape[1], dtype=np.int64)
    j, p = model.size - 1, choice.shape[0] - 1
    while p > 0:
        i = int(choice[p, j])
        if i != j:
            stage[model.members[j] & ~model.members[i]] = p - 1
        j, p = i, p - 1
    return _exact(problem, np.asarray(order, dtype=np.int32)[stage[model.unit]])


def _exact(problem: Problem, assignment: np.ndarray):
    """(exact time per micro-batch, V, assignment)."""
    cluster = problem.cluster
    compute, send, recv = stage_time_arrays(problem.arrays, assignment, cluster.speeds,
                                            cluster.latency, cluster.bandwidth,
                                            problem.micro_batches)
    return float((compute + send + recv).max()), _volume(problem, assignment), assignment


def _volume(problem: Problem, assignment: np.ndarray) -> float:
    from partition.cost import remote_pairs
    arrays = problem.arrays
    nodes, _ = remote_pairs(arrays, assignment, problem.k)
    weight = (arrays.bytes * np.where(arrays.batch_dependent, problem.micro_batches, 1)
              * (1 + arrays.requires_grad))
    return float(weight[nodes].sum())


def _memory_error(problem: Problem, model: Model, order) -> PlacementError:
    """The PlacementError when no chain fits memory: the smallest per-device memory that would."""
    flight = in_flight(len(order), problem.micro_batches, problem.schedule)
    need_k = np.full((len(order) + 1, model.size), np.inf)
    need_k[0, 0] = 0.0
    for i in range(model.size - 1):
        need_k[1:, i] = np.minimum(need_k[1:, i], need_k[:-1, i])
        terms = model.terms(i)
        lo = terms[0]
        memory = stage_memory(model, i, terms, flight)
        cand = np.where(terms[1][None, :], np.maximum(need_k[:-1, i, None], memory), np.inf)
        need_k[1:, lo:] = np.minimum(need_k[1:, lo:], cand)
    need = float(np.min(need_k[:, -1]))
    largest = int(problem.memory_caps.max())
    return PlacementError(
        f"pipeline_dp: no acyclic split into at most {problem.k} stages fits the devices' "
        f"memory ({problem.schedule}, {problem.micro_batches} micro-batches): the best split "
        f"needs {need:.0f} bytes on one device, the largest has {largest}; give every device "
        f"at least {need:.0f} bytes, use more devices, or fewer micro-batches in flight")
