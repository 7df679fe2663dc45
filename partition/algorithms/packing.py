"""Load packing: do the nodes' training loads fit the devices' load caps at all, traffic aside?

Under tight caps balance is a bin-packing problem (four equal layers on three devices admit no
placement within epsilon 0.10) that greedy repair may not solve. Small HiGHS MIPs settle it:
without acyclicity over classes of equally heavy nodes, with it per node with stages in device
index order (interchangeable devices). They give the least max load/base ratio (base = cap /
(1 + epsilon), SPEC section 2), hence the smallest epsilon that admits a placement, the device
counts that fit, and a placement within the caps close to a given one.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import highspy
import numpy as np

from partition.algorithms.ilp import MipModel
from partition.problem import Problem, load_caps_of

SECONDS = 5.0              # time limit of one packing MIP
STAGE_MAX_NODES = 2_000    # acyclic packing (per node) only on graphs up to this size
TOLERANCE = 1e-6           # relative: a ratio this close to the cap counts as within it


@dataclass(frozen=True)
class Packing:
    """Least max load/base ratio: `lower` is proven, `upper` is achieved by `assignment`
    (None when no packing was found in time). `exact` when both agree."""

    lower: float
    upper: float | None
    assignment: np.ndarray | None

    @property
    def exact(self) -> bool:
        return self.upper is not None and self.upper <= self.lower * (1 + TOLERANCE)


def applicable(problem: Problem) -> bool:
    """Cheap enough and well defined: any size without acyclicity; with it, graphs up to
    STAGE_MAX_NODES nodes on interchangeable devices without pins."""
    if not problem.acyclic:
        return True
    caps = problem.load_caps
    return (problem.n <= STAGE_MAX_NODES and bool(np.all(caps == caps[0]))
            and not (problem.pinned >= 0).any())


def least_ratio(problem: Problem, start: np.ndarray | None = None) -> Packing:
    """The least achievable max_d load_d / base_d over placements (acyclic ones when asked;
    `start`, if stage-monotone, seeds that search)."""
    base = problem.load_caps / (1.0 + problem.epsilon)
    if problem.acyclic:
        arrays = problem.arrays
        if start is not None and (start[arrays.in_idx] > start[arrays.in_dst]).any():
            start = None
        return _stage_packing(problem, base, start)
    return _class_packing(problem.weights, problem.pinned, base, None, SECONDS)


def closest_fit(problem: Problem, part: np.ndarray) -> np.ndarray | None:
    """A placement within the load caps that keeps as many nodes of `part` where they are as
    possible (acyclic: the least-ratio stage packing), or None when none was found."""
    if problem.acyclic:
        found = least_ratio(problem, np.asarray(part))
        fits = found.upper is not None and found.upper <= 1 + problem.epsilon + TOLERANCE
        return found.assignment if fits else None
    base = problem.load_caps / (1.0 + problem.epsilon)
    found = _class_packing(problem.weights, problem.pinned, base, np.asarray(part), SECONDS,
                           ratio=1.0 + problem.epsilon)
    return found.assignment


def fitting_device_counts(problem: Problem) -> tuple[int | None, int | None]:
    """(largest k' < k, smallest k' in k+1..2k) whose uniform cluster fits the loads at the
    problem's epsilon (None when none does, or when SECONDS in all ran out); only
    for identical devices without pins."""
    speeds = problem.cluster.speeds
    if problem.acyclic or not np.all(speeds == speeds[0]) or (problem.pinned >= 0).any():
        return None, None
    k, ratio = problem.k, 1.0 + problem.epsilon
    deadline = time.perf_counter() + SECONDS

    def fits(count: int) -> bool:
        left = deadline - time.perf_counter()
        if left <= 0:
            return False
        caps, _ = load_caps_of(problem.arrays.names, problem.weights, np.ones(count),
                               problem.epsilon)
        found = _class_packing(problem.weights, np.full(problem.n, -1), caps / ratio, None,
                               left, ratio=ratio)
        return found.assignment is not None

    below = next((c for c in range(k - 1, 1, -1) if fits(c)), None)
    above = next((c for c in range(k + 1, 2 * k + 1) if fits(c)), None)
    return below, above


def smallest_epsilon(found: Packing) -> tuple[float, float | None]:
    """(epsilon below which no placement exists, an epsilon that admits one or None), rounded
    outwards to 3 decimals."""
    lower = max(math.floor((found.lower - 1.0) * 1000) / 1000, 0.0)
    upper = None if found.upper is None else \
        max(math.ceil((found.upper - 1.0) * 1000 * (1 - 1e-9)) / 1000, 0.0)
    return lower, upper


# ------------------------------------------------------------------ the two MIPs
def _class_packing(weights: np.ndarray, pinned: np.ndarray, base: np.ndarray,
                   part: np.ndarray | None, time_limit: float,
                   ratio: float | None = None) -> Packing:
    """Counts c[j, d] of each class j of equally heavy free nodes on each device d: with `ratio`
    None, minimise T subject to load_d <= T * base_d; with a `ratio`, loads within ratio * base_d,
    keeping the most nodes of `part` on their device (any packing without it)."""
    k = len(base)
    scale = float(base.max()) if base.max() > 0 else 1.0
    free = (pinned < 0) & (weights > 0)
    fixed_load = np.bincount(pinned[pinned >= 0], weights=weights[pinned >= 0], minlength=k)
    values, cls = np.unique(weights[free], return_inverse=True)
    counts = np.bincount(cls, minlength=len(values))
    m = MipModel()
    c = m.columns(len(values) * k, hi=np.repeat(counts, k), integer=True).reshape(-1, k)
    m.add_rows(np.repeat(np.arange(len(values)), k), c.ravel(), 1.0, counts, counts, len(values))
    rows = [np.tile(np.arange(k), len(values))]
    cols = [c.ravel()]
    vals = [np.repeat(values / scale, k)]
    if ratio is None:
        t = m.columns(1, hi=np.inf, cost=1.0)
        rows, cols, vals = rows + [np.arange(k)], cols + [np.repeat(t, k)], vals + [-base / scale]
        hi = -fixed_load / scale
    else:
        hi = (ratio * base * (1 + TOLERANCE / 10) - fixed_load) / scale
    m.add_rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), -np.inf, hi, k)
    if part is not None:
        current = np.zeros((len(values), k))
        np.add.at(current, (cls, part[free]), 1)
        keep = m.columns(len(values) * k, hi=current.ravel(), cost=-1.0)
        m.sum_rows([(1.0, keep), (-1.0, c)], -np.inf, 0.0)
    status, info, x = m.solve(time_limit, 0, None)
    if x is None:
        lower = np.inf if status == highspy.HighsModelStatus.kInfeasible else _trivial(
            weights, base)
        return Packing(lower if ratio is None else max(lower, ratio), None, None)
    count = np.rint(x[c.ravel()]).astype(np.int64).reshape(-1, k)
    assignment = _assign(weights, pinned, free, cls, count, part)
    achieved = _ratio(weights, assignment, base)
    optimal = status == highspy.HighsModelStatus.kOptimal
    if ratio is None:
        lower = achieved if optimal else max(float(info.mip_dual_bound), _trivial(weights, base))
    else:
        lower = _trivial(weights, base)
    return Packing(min(lower, achieved), achieved, assignment)


def _stage_packing(problem: Problem, base: np.ndarray, start: np.ndarray | None) -> Packing:
    """Minimise T over stage-monotone placements (`start`, one to begin from), with z[v, d] =
    [stage(v) >= d], z[v, d] >= z[v, d + 1], z[u, d] <= z[v, d] along every edge u -> v (a tight
    LP for precedence) and load_d = sum_v w_v (z[v, d] - z[v, d + 1]) <= T base_d."""
    arrays, k, w = problem.arrays, problem.k, problem.weights
    n = arrays.n
    bound = _class_packing(w, problem.pinned, base, None, SECONDS).lower
    if k == 1:
        return Packing(bound, bound, np.zeros(n, dtype=np.int64))
    scale = float(base.max()) if base.max() > 0 else 1.0
    m = MipModel()
    z = m.columns(n * (k - 1), integer=True).reshape(n, k - 1)
    t = m.columns(1, hi=np.inf, cost=1.0)
    if k > 2:                                          # z[v, d] - z[v, d + 1] >= 0
        m.sum_rows([(1.0, z[:, :-1]), (-1.0, z[:, 1:])], 0.0, np.inf)
    key = np.unique(arrays.in_idx.astype(np.int64) * n + arrays.in_dst)
    m.sum_rows([(1.0, z[key % n]), (-1.0, z[key // n])], 0.0, np.inf)
    # load_d - T base_d <= 0, load_d = sum_v w_v (z[v, d] - z[v, d + 1]) (z[v, 0] = 1, z[v, k] = 0)
    ws = w / scale
    rows, cols, vals = [np.arange(k)], [np.repeat(t, k)], [-base / scale]
    rows += [np.repeat(np.arange(1, k), n), np.repeat(np.arange(0, k - 1), n)]
    cols += [z.T.ravel(), z.T.ravel()]
    vals += [np.tile(ws, k - 1), -np.tile(ws, k - 1)]
    hi = np.zeros(k)
    hi[0] = -float(ws.sum())
    m.add_rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), -np.inf, hi, k)
    warm = None
    if start is not None:
        warm = np.zeros(m.ncol)
        warm[z.ravel()] = (np.asarray(start)[:, None] >= np.arange(1, k)[None, :]).ravel()
        warm[t] = _ratio(w, np.asarray(start), base)
    status, info, values = m.solve(SECONDS, problem.seed, warm)
    if values is None:
        lower = np.inf if status == highspy.HighsModelStatus.kInfeasible else bound
        return Packing(lower, None, None)
    assignment = np.rint(values[z.ravel()].reshape(n, k - 1)).sum(axis=1).astype(np.int64)
    achieved = _ratio(w, assignment, base)
    optimal = status == highspy.HighsModelStatus.kOptimal
    lower = achieved if optimal else max(float(info.mip_dual_bound), bound)
    return Packing(min(lower, achieved), achieved, assignment)


def _assign(weights, pinned, free, cls, count, part) -> np.ndarray:
    """Node assignment with count[j, d] free nodes of class j on device d, keeping nodes of
    `part` on their device where the counts allow (the rest fill the remaining slots)."""
    out = np.where(pinned >= 0, pinned, -1).astype(np.int64)
    nodes = np.flatnonzero(free)
    left = count.copy()
    if part is not None:
        for v, j in zip(nodes.tolist(), cls.tolist()):
            d = int(part[v])
            if left[j, d] > 0:
                out[v] = d
                left[j, d] -= 1
    for v, j in zip(nodes.tolist(), cls.tolist()):
        if out[v] < 0:
            d = int(np.flatnonzero(left[j])[0])
            out[v] = d
            left[j, d] -= 1
    rest = out < 0            # weightless free nodes: where `part` put them, else device 0
    out[rest] = 0 if part is None else np.asarray(part)[rest]
    return out


def _ratio(weights: np.ndarray, assignment: np.ndarray, base: np.ndarray) -> float:
    load = np.bincount(assignment, weights=weights, minlength=len(base))
    return float(np.max(load / np.maximum(base, 1e-300)))


def _trivial(weights: np.ndarray, base: np.ndarray) -> float:
    """A lower bound on any placement's ratio: total load over total base, and the heaviest
    node on the largest base."""
    return max(float(weights.sum() / base.sum()), float(weights.max(initial=0.0) / base.max()))


def explain(problem: Problem) -> str:
    """Why no placement within the load caps was found, for an error message: proven impossible
    (with the smallest epsilon and nearby device counts that fit) or possible after all.
    Remembered for the last few problems (`modelcut compare` asks once per failing algorithm)."""
    if not applicable(problem):
        return ""
    arrays = problem.arrays
    key = hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in (
        problem.weights, problem.load_caps, problem.pinned, arrays.in_idx, arrays.in_dst,
        np.array([problem.acyclic, problem.epsilon, problem.cluster.speeds.std()])))).digest()
    if key not in _EXPLAINED:
        if len(_EXPLAINED) >= 16:
            _EXPLAINED.pop(next(iter(_EXPLAINED)))
        _EXPLAINED[key] = _explain(problem)
    return _EXPLAINED[key]


_EXPLAINED: dict[bytes, str] = {}


def _explain(problem: Problem) -> str:
    found = least_ratio(problem)
    lower, upper = smallest_epsilon(found)
    kind = "acyclic placement" if problem.acyclic else "placement"
    if found.upper is not None and found.upper <= 1 + problem.epsilon + TOLERANCE:
        return (f"; a {kind} within the load caps exists (imbalance {found.upper:.4g} is "
                "possible; algorithm 'auto' searches for it)")
    if found.lower <= 1 + problem.epsilon + TOLERANCE:
        return ""               # not settled within the time limit
    text = (f"; no {kind} of these loads on {problem.k} devices fits epsilon={problem.epsilon:g}"
            f" (the loads cannot be packed under the caps)")
    if upper is not None and found.exact:
        text += f"; the smallest epsilon that admits one is {upper:g}"
    elif upper is not None:
        text += f"; the smallest epsilon that admits one lies in [{lower:g}, {upper:g}]"
    else:
        text += f"; it takes epsilon >= {lower:g}"
    below, above = fitting_device_counts(problem)
    counts = [str(c) for c in (below, above) if c is not None]
    if counts:
        text += f", or {' or '.join(counts)} devices at epsilon={problem.epsilon:g}"
    return text
