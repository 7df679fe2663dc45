"""Boundary k-way Fiduccia-Mattheyses refinement with rollback to the best prefix.

Moves one node at a time (each once per pass), the best admissible move from a lazy max-gain
heap even when it loses, then keeps the prefix of moves with the best total gain. Volume gains
are cached (benefit[v], penalty[v][b]) and updated by deltas when a net's pin count on a part
crosses 0/1/2, as in KaHyPar; link-time gains of the pins of the moved node's nets are
recomputed in one vectorised call (pins of nets above 64 pins are dropped from the cache). A
pass costs O(moves x local degree), not O(n).
"""
from __future__ import annotations

import heapq

import numpy as np

from partition.algorithms.hypergraph import Caps, Hypergraph, loads, pin_counts
from partition.algorithms.refine import boundary, gain_matrix, volume_gain_parts

PASSES = 3      # FM passes at most
PATIENCE = 100  # a pass stops after this many moves without a new best

class _FM:
    """State of one FM run: parts, pin counts (rows materialised lazily), loads and gain cache."""

    def __init__(self, hg: Hypergraph, part: np.ndarray, caps: Caps, acyclic: bool,
                 rng: np.random.Generator):
        self.hg, self.caps, self.acyclic, self.k, self.rng = hg, caps, acyclic, caps.k, rng
        self.part = part.copy()
        self.load, self.mem = loads(hg, self.part, self.k)
        self.cap_load = (caps.load * (1 + 1e-12) + 1e-9).tolist()
        self.cap_mem = caps.memory.tolist()
        self.reset()

    def reset(self) -> None:
        self.cnt = pin_counts(self.hg, self.part, self.k)
        self.rows: dict[int, list[int]] = {}
        self.nets: dict[int, list[tuple[int, bool]]] = {}
        self.pins: dict[int, list[int]] = {}
        self.benefit: dict[int, float] = {}
        self.penalty: dict[int, list[float]] = {}

    # ---------------------------------------------------------------- lazy views
    def row(self, e: int) -> list[int]:
        r = self.rows.get(e)
        if r is None:
            r = self.rows[e] = self.cnt[e].tolist()
        return r

    def node_nets(self, v: int) -> list[tuple[int, bool]]:
        r = self.nets.get(v)
        if r is None:
            s, t = self.hg.node_ptr[v], self.hg.node_ptr[v + 1]
            r = self.nets[v] = list(zip(self.hg.node_nets[s:t].tolist(),
                                        self.hg.node_is_src[s:t].tolist()))
        return r

    def net_pins(self, e: int) -> list[int]:
        r = self.pins.get(e)
        if r is None:
            r = self.pins[e] = self.hg.net_pins[self.hg.net_ptr[e]:self.hg.net_ptr[e + 1]].tolist()
        return r

    # --------------------------------------------------------------------- gains
    def cache(self, nodes: list[int], refresh: bool = False) -> None:
        """Fill the gain cache for `nodes` in one vectorised call (`refresh`: also cached ones)."""
        if refresh:
            todo = list(dict.fromkeys(nodes))
        else:
            todo = [v for v in nodes if v not in self.benefit]
        if not todo:
            return
        arr = np.array(todo, dtype=np.int64)
        if self.hg.cost is None:
            benefit, penalty = volume_gain_parts(self.hg, self.part, self.cnt, arr, self.k)
            self.benefit.update(zip(todo, benefit.tolist()))
            self.penalty.update(zip(todo, penalty.tolist()))
        else:  # link costs: the gains themselves (benefit unused, penalty = -gain)
            gains = gain_matrix(self.hg, self.part, self.cnt, arr, self.k)
            self.benefit.update(zip(todo, [0.0] * len(todo)))
            self.penalty.update(zip(todo, (-gains).tolist()))

    def gains(self, v: int) -> list[float]:
        if v not in self.benefit:
            self.cache([v])
        b = self.benefit[v]
        return [b - p for p in self.penalty[v]]

    def window(self, v: int) -> tuple[int, int]:
        """Stage window [max producer part, min consumer part] of v."""
        lo, hi = 0, self.k - 1
        a = int(self.part[v])
        for e, src in self.node_nets(v):
            if src:
                c = self.row(e)
                for d in range(self.k):
                    if c[d] - (d == a) > 0:
                        hi = min(hi, d)
                        break
            else:
                lo = max(lo, int(self.part[self.net_pins(e)[0]]))
        return lo, hi

    def best_move(self, v: int) -> tuple[float, int]:
        g = self.gains(v)
        a = int(self.part[v])
        lo, hi = self.window(v) if self.acyclic else (0, self.k - 1)
        w, mm = float(self.hg.node_weight[v]), float(self.hg.node_mem[v])
        best, tb = -np.inf, -1
        for b in range(lo, hi + 1):
            if b == a or g[b] <= best:
                continue
            if w > 0 and self.load[b] + w > self.cap_load[b]:
                continue
            if mm > 0 and self.mem[b] + mm > self.cap_mem[b]:
                continue
            best, tb = g[b], b
        return best, tb

    # --------------------------------------------------------------------- moves
    def move(self, u: int, b: int) -> list[int]:
        """Move u to b, update counts, loads and cached gains; return nodes whose gains changed."""
        a = int(self.part[u])
        self.part[u] = b
        changed: list[int] = []
        volume = self.hg.cost is None
        ben_u = 0.0
        for e, _ in self.node_nets(u):
            c = self.row(e)
            c[a] -= 1
            c[b] += 1
            self.cnt[e, a] -= 1
            self.cnt[e, b] += 1
            if not volume:  # any pin's gain may change (costs depend on the source's part)
                self._touch_pins(e, changed)
                continue
            w = float(self.hg.net_weight[e])
            self._update_net_gains(e, c, u, a, b, w, changed)
            if c[b] == 1:
                ben_u += w
        if volume and u in self.benefit:
            self.benefit[u] = ben_u
        if not volume:
            changed.append(u)
            self.cache([v for v in changed if v in self.benefit], refresh=True)
        w, mm = self.hg.node_weight[u], self.hg.node_mem[u]
        self.load[a] -= w
        self.load[b] += w
        self.mem[a] -= mm
        self.mem[b] += mm
        return changed

    def _touch_pins(self, e: int, changed: list[int]) -> None:
        """Link-time objective: every pin of net e may change gain; a small net's pins are
        re-cached, a big net's are dropped from the cache."""
        pins = self.net_pins(e)
        if len(pins) <= 64:
            changed.extend(pins)
        else:
            for v in pins:
                self.benefit.pop(v, None)

    def _update_net_gains(self, e: int, c, u: int, a: int, b: int, w: float,
                          changed: list[int]) -> None:
        """Volume objective: net e (weight w, pin counts c after the move) lost u from a and
        gained it on b. Update the penalties (net newly absent from a / present on b) and the
        benefit of the last pin left on a or the one pin that was alone on b."""
        pins = self.net_pins(e)
        if c[a] == 0:
            self._add_penalty(pins, a, w, changed)
        elif c[a] == 1:
            self._add_benefit(pins, u, a, w, changed)
        if c[b] == 1:
            self._add_penalty(pins, b, -w, changed)
        elif c[b] == 2:
            self._add_benefit(pins, u, b, -w, changed)

    def _add_penalty(self, pins, d: int, w: float, changed: list[int]) -> None:
        """Add w to the cost of moving each cached pin to d."""
        for v in pins:
            p = self.penalty.get(v)
            if p is not None:
                p[d] += w
                changed.append(v)

    def _add_benefit(self, pins, u: int, d: int, w: float, changed: list[int]) -> None:
        """Add w to the benefit of moving off d of the one pin other than u on d."""
        for v in pins:
            if v != u and self.part[v] == d:
                if v in self.benefit:
                    self.benefit[v] += w
                    changed.append(v)
                break

    def run(self, seeds: list[int], max_moves: int) -> float:
        """One pass from `seeds`; the improvement kept (moves past the best prefix are undone)."""
        fixed = self.hg.fixed
        tie = self.rng.random(self.hg.n)
        self.cache(seeds)
        heap: list[tuple[float, float, int]] = []

        def push(nodes) -> None:
            for u in nodes:
                g, b = self.best_move(u)
                if b >= 0:
                    heapq.heappush(heap, (-g, tie[u], u))

        push(seeds)
        locked: set[int] = set()
        moves: list[tuple[int, int]] = []
        cur = best = 0.0
        best_len = since = 0
        eps = self.hg.tolerance()
        while heap and len(moves) < max_moves and since < PATIENCE:
            negg, _, v = heapq.heappop(heap)
            if v in locked:
                continue
            g, b = self.best_move(v)
            if b < 0:
                continue
            if g < -negg - eps:  # stale entry: its gain dropped since it was pushed
                heapq.heappush(heap, (-g, tie[v], v))
                continue
            moves.append((v, int(self.part[v])))
            changed = self.move(v, b)
            locked.add(v)
            cur += g
            if cur > best + eps:
                best, best_len, since = cur, len(moves), 0
            else:
                since += 1
            fresh = [u for u in dict.fromkeys(changed) if u not in locked and fixed[u] < 0]
            near = [u for e, _ in self.node_nets(v) if len(self.net_pins(e)) <= 64
                    for u in self.net_pins(e) if u not in self.benefit and fixed[u] < 0]
            self.cache(near)  # nodes next to v enter the boundary with a fresh gain
            push(u for u in dict.fromkeys(fresh + near) if u not in locked)
        for v, a in reversed(moves[best_len:]):
            self.move(v, a)
        return best


def fm_refine(hg: Hypergraph, part: np.ndarray, caps: Caps, *, acyclic: bool,
              rng: np.random.Generator) -> np.ndarray:
    """Up to PASSES FM passes from the current boundary; each keeps only an improving prefix."""
    fm = _FM(hg, part, caps, acyclic, rng)
    for _ in range(PASSES):
        seeds = np.flatnonzero(boundary(hg, fm.cnt) & (hg.fixed < 0)).tolist()
        gained = fm.run(seeds, max(100, len(seeds)))
        fm.reset()
        if gained <= 0:
            break
    return fm.part
