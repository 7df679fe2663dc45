"""Exact partitioning of small graphs (up to ~60 nodes) as a mixed-integer program solved by HiGHS.

Variables: x[v, d] binary (v on device d); y[e, d] in [0, 1] with y[e, d] >= x[p, d] for every pin
p of net e, so at the optimum V = sum_e w_e (sum_d y[e, d] - 1) is SPEC's step volume; for the
time objective t[e, a, d] >= x[src, a] + y[e, d] - 1 prices each transfer on its link. Load and
memory caps (with receive buffers), pins as bounds, and acyclicity (`_acyclic_rows`) are rows or
bounds. Symmetry breaking for interchangeable devices without acyclicity: the i-th node may
only use devices 0..i. A multilevel solution seeds the search.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import highspy
import numpy as np
import scipy.sparse as sp

from partition.algorithms.base import AlgorithmResult, ranks
from partition.algorithms.hypergraph import Caps, Hypergraph, from_problem, objective, pin_counts
from partition.algorithms.multilevel import multilevel_partition
from partition.errors import PlacementError
from partition.problem import Problem


def quiet_highs():
    """A `highspy.Highs()` with its output off. HiGHS 1.16 prints its banner to stdout in the
    constructor, before `output_flag` can be set, so stdout is pointed at /dev/null meanwhile."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    h.setOptionValue("output_flag", False)
    return h


class MipModel:
    """Columns and rows of a sparse MIP built incrementally."""

    def __init__(self):
        # per block of columns / rows added: their bounds, costs, integrality and entries
        self.lower, self.upper, self.cost, self.integer = [], [], [], []
        self.rows, self.cols, self.vals, self.row_lo, self.row_hi = [], [], [], [], []
        self.ncol = self.nrow = 0

    def columns(self, count: int, lo=0.0, hi=1.0, cost=0.0, integer=False) -> np.ndarray:
        self.lower.append(np.broadcast_to(np.asarray(lo, float), (count,)).copy())
        self.upper.append(np.broadcast_to(np.asarray(hi, float), (count,)).copy())
        self.cost.append(np.broadcast_to(np.asarray(cost, float), (count,)).copy())
        self.integer.append(np.full(count, int(integer)))
        ids = np.arange(self.ncol, self.ncol + count)
        self.ncol += count
        return ids

    def add_rows(self, row_of_entry: np.ndarray, cols: np.ndarray, vals, lo, hi,
                 count: int) -> None:
        """`count` rows; entry i is coefficient vals[i] at column cols[i] of row row_of_entry[i]."""
        self.rows.append(np.asarray(row_of_entry, np.int64) + self.nrow)
        self.cols.append(np.asarray(cols, np.int64))
        self.vals.append(np.broadcast_to(np.asarray(vals, float), (len(cols),)).copy())
        self.row_lo.append(np.broadcast_to(np.asarray(lo, float), (count,)).copy())
        self.row_hi.append(np.broadcast_to(np.asarray(hi, float), (count,)).copy())
        self.nrow += count

    def sum_rows(self, terms: list[tuple[float, np.ndarray]], lo, hi) -> None:
        """One row per position i: lo <= sum of coef * x[cols[i]] over `terms` [(coef, cols)]
        <= hi (all `cols` of one length)."""
        count = np.size(terms[0][1])
        self.add_rows(np.tile(np.arange(count), len(terms)),
                      np.concatenate([np.ravel(cols) for _, cols in terms]),
                      np.concatenate([np.full(count, coef) for coef, _ in terms]), lo, hi, count)

    def solve(self, time_limit: float | None, seed: int, start: np.ndarray | None):
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.ncol, self.nrow
        lp.col_cost_ = np.concatenate(self.cost)
        lp.col_lower_ = np.concatenate(self.lower)
        lp.col_upper_ = np.concatenate(self.upper)
        lp.row_lower_ = np.concatenate(self.row_lo)
        lp.row_upper_ = np.concatenate(self.row_hi)
        entries = (np.concatenate(self.rows), np.concatenate(self.cols))
        a = sp.csc_matrix((np.concatenate(self.vals), entries), shape=(self.nrow, self.ncol))
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = self.ncol, self.nrow
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in np.concatenate(self.integer)]
        h = quiet_highs()
        h.setOptionValue("random_seed", int(seed) % (2**31 - 1))
        h.setOptionValue("mip_rel_gap", 1e-9)
        h.setOptionValue("mip_abs_gap", 1e-9)
        h.setOptionValue("threads", 1)
        if time_limit is not None:
            h.setOptionValue("time_limit", float(time_limit))
        h.passModel(lp)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = list(start)
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        values = np.asarray(h.getSolution().col_value) if info.primal_solution_status else None
        if start is not None and values is not None and not np.isclose(
                lp.col_cost_ @ values, info.objective_function_value, rtol=1e-7, atol=1e-7):
            # HiGHS 1.16 can misprice a given start after presolve, then prune the true optimum
            # and report "optimal": its objective disagrees with its solution. Solve unseeded.
            return self.solve(time_limit, seed, None)
        return status, info, values


def ilp_partition(hg: Hypergraph, caps: Caps, *, acyclic: bool, interchangeable: bool,
                  net_bytes: np.ndarray | None = None, time_limit: float | None = None,
                  seed: int = 0, start: np.ndarray | None = None):
    """Solve the MIP; returns (assignment or None, optimal, lower bound, objective)."""
    n, k = hg.n, caps.k
    scale = hg.tolerance() * 1e9  # the costliest net's cost: objective coefficients near 1
    volume = hg.cost is None
    m = MipModel()
    x = _node_columns(m, hg, k, symmetric=interchangeable and not acyclic)
    w = np.repeat(hg.net_weight / scale, k) if volume else 0.0
    y = m.columns(hg.num_nets * k, cost=w).reshape(hg.num_nets, k)
    _placement_rows(m, hg, k, x, y)
    _cap_rows(m, hg, caps, x, y, net_bytes)
    if not volume:
        _link_time_rows(m, hg, k, x, y, scale)
    if acyclic:
        _acyclic_rows(m, hg, k, x, interchangeable)
    warm = None if start is None else _start_vector(hg, caps, m.ncol, x, y, start, acyclic,
                                                    interchangeable, volume)
    status, info, values = m.solve(time_limit, seed, warm)
    offset = float(hg.net_weight.sum()) if volume else 0.0
    if values is None:
        return None, False, None, None
    part = np.argmax(values[x.ravel()].reshape(n, k), axis=1)
    optimal = status == highspy.HighsModelStatus.kOptimal
    bound = float(info.mip_dual_bound) * scale - offset
    value = objective(hg, part, k)
    if optimal:
        bound = min(bound, value)
    return part, bool(optimal), max(bound, 0.0), value


def _node_columns(m: MipModel, hg: Hypergraph, k: int, symmetric: bool) -> np.ndarray:
    """The binaries x[v, d] (n x k column ids), pins as bounds; with `symmetric` (interchangeable
    devices, no acyclicity, no pins) the i-th node may only use devices 0..i."""
    n = hg.n
    x = m.columns(n * k, integer=True).reshape(n, k)
    fixed = hg.fixed >= 0
    xl = np.zeros((n, k))
    xl[np.flatnonzero(fixed), hg.fixed[fixed]] = 1.0
    xu = np.where(fixed[:, None], xl, 1.0)
    if symmetric and not fixed.any():
        xu[np.arange(k)[None, :] > np.arange(n)[:, None]] = 0.0
    m.lower[-1], m.upper[-1] = xl.ravel(), xu.ravel()
    return x


def _placement_rows(m: MipModel, hg: Hypergraph, k: int, x: np.ndarray, y: np.ndarray) -> None:
    """One device per node, and y[e, d] >= x[p, d] for every pin p of net e."""
    m.add_rows(np.repeat(np.arange(hg.n), k), x.ravel(), 1.0, 1.0, 1.0, hg.n)
    pe, pp = np.repeat(hg.pin_net, k), np.repeat(hg.net_pins, k)
    pd = np.tile(np.arange(k), len(hg.net_pins))
    m.sum_rows([(1.0, y[pe, pd]), (-1.0, x[pp, pd])], 0.0, np.inf)


def _cap_rows(m: MipModel, hg: Hypergraph, caps: Caps, x: np.ndarray, y: np.ndarray,
              net_bytes: np.ndarray | None) -> None:
    """Load caps, and memory caps when finite: persistent bytes plus, with `net_bytes`, one
    receive buffer per tensor arriving (bytes_e * (y[e, d] - x[src, d]))."""
    k, n, e = caps.k, hg.n, hg.num_nets
    dev = np.tile(np.arange(k), n)
    m.add_rows(dev, x.ravel(), np.repeat(hg.node_weight, k), -np.inf, caps.load, k)
    if not np.isfinite(caps.memory).any():
        return
    rows, cols, vals = [dev], [x.ravel()], [np.repeat(hg.node_mem, k)]
    if net_bytes is not None:
        ed = np.tile(np.arange(k), e)
        cols += [y.ravel(), x[np.repeat(hg.net_src, k), ed]]
        vals += [np.repeat(net_bytes, k), -np.repeat(net_bytes, k)]
        rows += [ed, ed]
    m.add_rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), -np.inf,
               np.where(np.isfinite(caps.memory), caps.memory, 1e300), k)


def _link_time_rows(m: MipModel, hg: Hypergraph, k: int, x: np.ndarray, y: np.ndarray,
                    scale: float) -> None:
    """t[e, a, d] >= x[src, a] + y[e, d] - 1, priced by the link a -> d (the time objective)."""
    e = hg.num_nets
    pa, pd = np.nonzero(~np.eye(k, dtype=bool))       # the links a -> d, a != d
    c = np.einsum("ej,jp->ep", hg.cost.coef, hg.cost.mats[:, pa, pd]) / scale
    t = m.columns(e * len(pa), lo=0.0, hi=1.0, cost=c.ravel())
    ee, aa, dd = np.repeat(np.arange(e), len(pa)), np.tile(pa, e), np.tile(pd, e)
    m.sum_rows([(1.0, t), (-1.0, x[hg.net_src[ee], aa]), (-1.0, y[ee, dd])], -1.0, np.inf)


def _acyclic_rows(m: MipModel, hg: Hypergraph, k: int, x: np.ndarray,
                  interchangeable: bool) -> None:
    """An acyclic quotient graph: with interchangeable devices, stage index non-decreasing along
    every edge; otherwise stage positions pi[d] and quotient arcs z[a, b] with
    pi[b] >= pi[a] + 1 - k (1 - z[a, b])."""
    n = hg.n
    us, vs = hg.edges()
    key = np.unique(us.astype(np.int64) * n + vs)
    us, vs = key // n, key % n
    if interchangeable:
        r = np.repeat(np.arange(len(us)), k)
        d = np.tile(np.arange(k), len(us))
        m.add_rows(np.r_[r, r], np.r_[x[vs[r], d], x[us[r], d]], np.r_[d, -d], 0.0, np.inf,
                   len(us))
        return
    pi = m.columns(k, lo=0.0, hi=k - 1)
    z = m.columns(k * k, integer=True).reshape(k, k)
    for a, b in zip(*np.nonzero(~np.eye(k, dtype=bool))):
        m.sum_rows([(1.0, np.full(len(us), z[a, b])), (-1.0, x[us, a]), (-1.0, x[vs, b])],
                   -1.0, np.inf)
        m.add_rows(np.zeros(3, np.int64), np.array([pi[b], pi[a], z[a, b]]),
                   np.array([1.0, -1.0, -float(k)]), 1.0 - k, np.inf, 1)


def _start_vector(hg, caps, ncol, x, y, part, acyclic, interchangeable, volume):
    """Full column vector of a feasible start: x, y from `part`, t and stage variables derived."""
    if not volume or (acyclic and not interchangeable):
        return None  # HiGHS accepts only complete starts; the derived columns are not worth it here
    k = caps.k
    if interchangeable and not acyclic and not (hg.fixed >= 0).any():
        # the symmetry breaking bounds (node i on 0..i): devices renumbered by first appearance,
        # the same placement on interchangeable devices
        first = np.full(k, len(part), dtype=np.int64)
        np.minimum.at(first, part, np.arange(len(part)))
        part = ranks(first)[part]
    vec = np.zeros(ncol)
    vec[x[np.arange(hg.n), part]] = 1.0
    vec[y.ravel()] = (pin_counts(hg, part, k) > 0).ravel().astype(float)
    return vec


# A size guard and a default time limit, so that `--algorithm ilp` on a big graph fails at once
# instead of building a MIP with millions of binaries and solving it for ever: at most
# MAX_BINARIES node-device variables, and DEFAULT_TIME_LIMIT seconds when none is given.
MAX_BINARIES = 200_000
DEFAULT_TIME_LIMIT = 300.0


def ilp(problem: Problem) -> AlgorithmResult:
    """Registry entry: exact MIP (optimal flag and lower bound reported), seeded by multilevel."""
    if problem.n * problem.k > MAX_BINARIES:
        raise PlacementError(
            f"algorithm 'ilp': {problem.n:,} nodes x {problem.k} devices is more than the "
            f"{MAX_BINARIES:,} binary variables it accepts (the exact MIP is practical up to "
            "~60 nodes); use --algorithm auto or multilevel")
    if problem.time_limit is None:
        problem = dataclasses.replace(problem, time_limit=DEFAULT_TIME_LIMIT)
    hg, caps = from_problem(problem)
    interchangeable = bool(np.all(caps.load == caps.load[0])
                           and np.all(caps.memory == caps.memory[0])
                           and (hg.cost is None or problem.cluster.uniform_links))
    start = multilevel_partition(hg, caps, acyclic=problem.acyclic, seed=problem.seed)
    part, optimal, bound, value = ilp_partition(
        hg, caps, acyclic=problem.acyclic, interchangeable=interchangeable,
        net_bytes=problem.arrays.bytes[hg.net_src].astype(np.float64),
        time_limit=problem.time_limit, seed=problem.seed, start=start)
    start_value = objective(hg, start, caps.k)
    if part is None or (not optimal and value > start_value):
        part, value = start, start_value
    return AlgorithmResult(part.astype(np.int32), optimal=optimal, bound=bound,
                           info={"objective_value": value, "nodes": hg.n})
