"""Greedy repair of a placement that breaks a device's load cap or memory capacity.

Shared by every algorithm through `partition.api`: while some device is over its cap, move
nodes off it, cheapest step-volume increase first, onto devices with room. Each round computes
the exact effect of every candidate move at once on numpy arrays (pin counts per net and
device), then pops moves from a heap; a move whose neighbourhood changed since it was computed
is re-evaluated first, so every applied move's effect is exact. With `acyclic`, a node only
moves to a stage between its inputs' and its consumers' stages in a fixed topological order of
the quotient, so it stays acyclic. It repairs; it does not cascade load through full stages.
"""
from __future__ import annotations

import heapq
import logging
import math
from typing import NamedTuple

import numpy as np

from partition.algorithms.packing import explain
from partition.cost import memory_per_device, multiplicity, persistent_memory
from partition.errors import PlacementError
from partition.metrics import quotient_adjacency, quotient_order
from partition.problem import Problem

log = logging.getLogger(__name__)

TOLERANCE = 1e-9


def rebalance(problem: Problem, assignment: np.ndarray, max_rounds: int = 1000
              ) -> tuple[np.ndarray, int]:
    """(fitted assignment, number of moves): every load <= cap and memory <= capacity.

    Pinned nodes never move. Raises PlacementError naming the device, its need and capacity
    (and the epsilon or device count that would fit) when no sequence of greedy moves fits.
    """
    a = np.array(assignment, dtype=np.int32)
    _check_total_memory(problem)
    loads, memory = _loads_and_memory(problem, a)
    if not _excess(problem, loads, memory).any():
        return a, 0
    rank = _stage_rank(problem, a, loads) if problem.acyclic else None
    incidence = _Incidence(problem)
    moves = 0
    for _ in range(max_rounds):
        moved = _Round(problem, incidence, a, loads, memory, rank).run()
        moves += moved
        loads, memory = _loads_and_memory(problem, a)
        if not _excess(problem, loads, memory).any():
            log.info("rebalance: %d moves", moves)
            return a, moves
        if moved == 0:
            break
    raise _infeasible(problem, loads, memory)


# ------------------------------------------------------------------ one round of moves
class _Incidence:
    """For every node, the nets it belongs to (its own net first, then its inputs' nets)."""

    def __init__(self, problem: Problem):
        arrays = problem.arrays
        n = arrays.n
        nodes = np.concatenate([np.arange(n, dtype=np.int64), arrays.in_dst])
        nets = np.concatenate([np.arange(n, dtype=np.int64), arrays.in_idx])
        order = np.argsort(nodes, kind="stable")
        self.node = nodes[order]
        self.net = nets[order]
        self.ptr = arrays.in_ptr + np.arange(n + 1)           # one own net per node
        self.volume = (arrays.bytes * (1 + arrays.requires_grad)
                       * multiplicity(arrays, problem.micro_batches))
        self.held = persistent_memory(arrays, problem.optimizer_slots).astype(np.float64)
        self.nbytes = arrays.bytes.astype(np.float64)
        self.out_ptr, self.out_idx = arrays.out_ptr, arrays.out_idx


class _Move(NamedTuple):
    """A heap entry: a candidate move of `node` to `target`, ordered by its fields in turn."""

    preference: int      # stage preference (acyclic), else 0
    volume: float        # step-volume change
    neg_load: float      # minus the node's load: heavier nodes first at equal cost
    node: int
    target: int
    stamp: int           # the node's stamp when computed; stale when its nets changed since
    to_target: float     # memory change on the target
    to_source: float     # memory change on the source


class _Round:
    """One round of greedy moves off over-full devices; updates a, loads and memory in place."""

    def __init__(self, problem: Problem, inc: _Incidence, a: np.ndarray, loads: np.ndarray,
                 memory: np.ndarray, rank: np.ndarray | None):
        self.problem, self.inc, self.a, self.rank = problem, inc, a, rank
        self.loads, self.memory = loads, memory
        n, k = problem.arrays.n, problem.k
        self.over = _excess(problem, loads, memory)
        self.counts = np.bincount(inc.net * k + a[inc.node], minlength=n * k).reshape(n, k)
        self.stamp = np.zeros(n, dtype=np.int64)           # bumped when a node's nets change
        self.fresh = np.zeros(n, dtype=np.int64)           # stamp of a node's newest entries

    def entries(self, nodes: np.ndarray) -> list[_Move]:
        """The moves of `nodes`. Acyclic moves go forward before backward, and as many stages as
        their window allows first, so a full stage's tail fills the last stage before the nearer
        ones (a nearer stage filled first would trap the nodes before it); otherwise the
        cheapest volume change goes first."""
        a, rank, w = self.a, self.rank, self.problem.weights
        volume, target_memory, source_memory, valid = _move_effects(self.inc, a, self.counts,
                                                                    nodes, rank)
        rows, cols = np.nonzero(valid)
        if rank is None:
            preference = np.zeros(len(rows), dtype=np.int64)
        else:
            step = rank[cols] - rank[a[nodes[rows]]]
            preference = np.where(step > 0, -step, self.problem.k - step)
        return list(map(_Move._make, zip(
            preference.tolist(), volume[rows, cols].tolist(), (-w[nodes[rows]]).tolist(),
            nodes[rows].tolist(), cols.tolist(), self.stamp[nodes[rows]].tolist(),
            target_memory[rows, cols].tolist(), source_memory[rows].tolist())))

    def run(self) -> int:
        """Apply moves of the unpinned nodes on over-full devices, cheapest volume increase first,
        until no device is over a cap or no move is left; return how many applied."""
        candidates = np.flatnonzero(self.over[self.a] & (self.problem.pinned < 0))
        if len(candidates) == 0:
            return 0
        heap = self.entries(candidates)
        heapq.heapify(heap)
        moved = 0
        while heap and self.over.any():
            move = heapq.heappop(heap)
            if not self.over[int(self.a[move.node])]:
                continue
            if move.stamp != self.stamp[move.node]:   # its nets changed: re-evaluate it once
                self._reevaluate(heap, move.node)
                continue
            if self._try(move):
                moved += 1
                if self.rank is not None:
                    self._push(heap, self._neighbours(move.node))
        return moved

    def _reevaluate(self, heap: list, v: int) -> None:
        """Push fresh entries for a node whose nets changed, once per change."""
        if self.fresh[v] != self.stamp[v]:
            self._push(heap, np.array([v]))

    def _push(self, heap: list, nodes: np.ndarray) -> None:
        """Push fresh entries for all of `nodes`."""
        self.fresh[nodes] = self.stamp[nodes]
        for entry in self.entries(nodes.astype(np.int64)):
            heapq.heappush(heap, entry)

    def _try(self, move: _Move) -> bool:
        """Apply `move` when the target stays within its caps and the source gets less over."""
        problem, v, b = self.problem, move.node, move.target
        s, w = int(self.a[v]), problem.weights
        new_target_load = self.loads[b] + w[v]
        new_target_memory = self.memory[b] + move.to_target
        if new_target_load > problem.load_caps[b] * (1 + TOLERANCE) + TOLERANCE \
                or new_target_memory > problem.memory_caps[b]:
            return False
        before = _device_excess(problem, s, self.loads[s], self.memory[s])
        after = _device_excess(problem, s, self.loads[s] - w[v], self.memory[s] + move.to_source)
        if after >= before - TOLERANCE:
            return False
        arrays, inc = problem.arrays, self.inc
        nets = inc.net[inc.ptr[v]:inc.ptr[v + 1]]
        self.counts[nets, s] -= 1
        self.counts[nets, b] += 1
        self.a[v] = b
        self.loads[s] -= w[v]
        self.loads[b] = new_target_load
        self.memory[s] += move.to_source
        self.memory[b] = new_target_memory
        self.stamp[nets] += 1
        self.stamp[arrays.out_idx[_segments(arrays.out_ptr, nets)[0]]] += 1
        self.over[s] = after > 0
        return True

    def _neighbours(self, v: int) -> np.ndarray:
        """Inputs and consumers of a moved v on over-full devices: they may now fit between their
        neighbours' stages elsewhere."""
        arrays, inc, problem = self.problem.arrays, self.inc, self.problem
        nets = inc.net[inc.ptr[v]:inc.ptr[v + 1]]
        neighbours = np.concatenate([nets[1:], arrays.out_idx[arrays.out_ptr[v]:
                                                              arrays.out_ptr[v + 1]]])
        return neighbours[self.over[self.a[neighbours]] & (problem.pinned[neighbours] < 0)]


def _move_effects(inc: _Incidence, a: np.ndarray, counts: np.ndarray, candidates: np.ndarray,
                  rank: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact effects of moving each candidate to each device, given pin counts per net:
    (volume change [c, k], target memory change [c, k], source memory change [c], valid [c, k])."""
    k = counts.shape[1]
    pins, starts = _segments(inc.ptr, candidates)
    net, node = inc.net[pins], inc.node[pins]
    source = a[node]
    on = counts[net]                                          # pins of each net per device
    on_source = on[np.arange(len(net)), source]
    is_input = net != node
    # connectivity minus one of each net the node belongs to
    volume = np.add.reduceat(inc.volume[net][:, None] * ((on == 0).astype(np.float64)
                                                          - (on_source == 1)[:, None]),
                             starts, axis=0)
    # target: the node, receive buffers for inputs new there, minus the buffer for its own tensor
    nbytes = inc.nbytes
    target_memory = (np.add.reduceat(np.where(is_input, nbytes[net], 0.0)[:, None] * (on == 0),
                                     starts, axis=0)
                     + inc.held[candidates][:, None]
                     - nbytes[candidates][:, None] * (counts[candidates] > 0))
    # source: the node leaves, its tensor may now be received there, inputs it alone read
    # there are no longer received
    freed = np.where(is_input & (a[net] != source) & (on_source == 1), nbytes[net], 0.0)
    src = a[candidates]
    source_memory = (-inc.held[candidates] + nbytes[candidates] * (counts[candidates, src] > 1)
                     - np.add.reduceat(freed, starts))
    valid = np.ones((len(candidates), k), dtype=bool)
    valid[np.arange(len(candidates)), src] = False
    if rank is not None:
        valid &= _stage_window(inc, a, candidates, rank, net, is_input, starts)
    return volume, target_memory, source_memory, valid


def _stage_window(inc: _Incidence, a: np.ndarray, candidates: np.ndarray, rank: np.ndarray,
                  net: np.ndarray, is_input: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """valid[c, b]: stage rank of b lies between the candidate's inputs' and consumers' ranks."""
    lowest = np.maximum.reduceat(np.where(is_input, rank[a[net]], -1), starts)
    highest = np.full(len(candidates), len(rank), dtype=np.int64)
    consumers, _ = _segments(inc.out_ptr, candidates)
    owner = np.repeat(np.arange(len(candidates)),
                      inc.out_ptr[candidates + 1] - inc.out_ptr[candidates])
    np.minimum.at(highest, owner, rank[a[inc.out_idx[consumers]]])
    return (lowest[:, None] <= rank[None, :]) & (rank[None, :] <= highest[:, None])


def _segments(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the CSR segments of `rows`, and where each row's segment starts."""
    lengths = ptr[rows + 1] - ptr[rows]
    starts = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    flat = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(ptr[rows] - starts, lengths)
    return flat, starts


def _stage_rank(problem: Problem, a: np.ndarray, loads: np.ndarray) -> np.ndarray:
    """Rank of each device in a topological order of the quotient. Devices holding nothing
    can go anywhere: they follow the over-full stages, in proportion to the overload, so the
    tails of those stages can move onto them."""
    order = quotient_order(quotient_adjacency(problem.arrays, a, problem.k))
    if order is None:
        raise PlacementError("acyclic: the placement to rebalance already has a cycle between "
                             "devices; an acyclic repair needs an acyclic start")
    held = np.bincount(a, minlength=problem.k) > 0
    used = [d for d in order if held[d]]
    empty = [d for d in order if not held[d]]
    overload = np.array([max(0.0, loads[d] / max(problem.load_caps[d], 1e-300) - 1.0)
                         for d in used])
    share = np.zeros(len(used), dtype=np.int64)
    if len(empty) and overload.sum() > 0:
        exact = len(empty) * overload / overload.sum()
        share = np.floor(exact).astype(np.int64)
        share[np.argsort(share - exact, kind="stable")[:len(empty) - share.sum()]] += 1
    ranked: list[int] = []
    for d, extra in zip(used, share.tolist()):
        ranked += [d] + empty[:extra]
        empty = empty[extra:]
    rank = np.empty(problem.k, dtype=np.int64)
    rank[ranked + empty] = np.arange(problem.k)
    return rank


# ------------------------------------------------------------------ fitting and diagnosis
def _loads_and_memory(problem: Problem, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loads = np.bincount(a, weights=problem.weights, minlength=problem.k)
    memory = memory_per_device(problem.arrays, a, problem.k, problem.optimizer_slots)
    return loads, memory.astype(np.float64)


def _device_excess(problem: Problem, d: int, load: float, memory: float) -> float:
    """How far device d is over its caps, as fractions of the caps (0 when it fits)."""
    cap = problem.load_caps[d]
    over_load = max(0.0, load - cap * (1 + TOLERANCE) - TOLERANCE) / max(cap, 1.0)
    over_memory = max(0.0, memory - problem.memory_caps[d]) / problem.memory_caps[d]
    return over_load + over_memory


def _excess(problem: Problem, loads: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """bool[k]: which devices are over a cap."""
    return ((loads > problem.load_caps * (1 + TOLERANCE) + TOLERANCE)
            | (memory > problem.memory_caps))


def _check_total_memory(problem: Problem) -> None:
    """Fail fast when parameters and kept activations alone exceed the cluster's memory."""
    need = float(persistent_memory(problem.arrays, problem.optimizer_slots).sum())
    have = float(problem.memory_caps.sum())
    if need > have:
        largest = float(problem.memory_caps.max())
        raise PlacementError(
            f"memory: parameters (with gradients and {problem.optimizer_slots} optimizer slots) "
            f"and kept activations need {need:.4g} bytes but the {problem.k} devices of cluster "
            f"{problem.cluster.name!r} hold {have:.4g}; at least "
            f"{math.ceil(need / largest)} devices of {largest:.4g} bytes are needed")


def _infeasible(problem: Problem, loads: np.ndarray, memory: np.ndarray) -> PlacementError:
    """The error for the device furthest over a cap, with what would make it fit."""
    names = problem.cluster.device_names
    memory_over = (memory - problem.memory_caps) / problem.memory_caps
    load_over = (loads - problem.load_caps) / np.maximum(problem.load_caps, 1.0)
    if memory_over.max() > 0 and memory_over.max() >= load_over.max():
        d = int(np.argmax(memory_over))
        return PlacementError(f"memory: device {names[d]!r} needs {memory[d]:.4g} bytes but has "
                              f"{problem.memory_caps[d]:.4g} (no greedy move off it fits "
                              "elsewhere; pins and acyclicity restrict moves)")
    d = int(np.argmax(load_over))
    base = problem.load_caps / (1.0 + problem.epsilon)
    needed = math.ceil(float((loads / np.maximum(base, 1.0)).max() - 1.0) * 1000) / 1000
    return PlacementError(f"balance: device {names[d]!r} needs {loads[d]:.4g} training FLOPs "
                          f"per step but its cap is {problem.load_caps[d]:.4g} "
                          f"(epsilon={problem.epsilon}); epsilon >= {needed:g} would accept "
                          f"the best placement found{explain(problem)}")
