"""Per-ideal tables for `pipeline_dp`: the cost of running `J minus I` as one stage.

For a family of ideals this precomputes per ideal the compute, load, memory and pin sums, and
the boundary tensors each ideal leaves *open* (made inside, read outside). For one ideal I,
`terms(i)` gives for every ideal J at once, as weighted sums (count, bytes; count and bytes of
those requiring a gradient; raw bytes; V):
  fset: tensors made in J minus I and read after J (the stage's forward sends; with a
        gradient, its backward receives);
  rset: tensors made in I and read in J minus I (its forward receives and backward sends).
A stage's time on device d prices a transfer with d's cheapest link: SPEC section 5's `T_d` on
uniform links, except that a tensor read by several later stages has its gradient received
once per stage (the bound counts one).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

from partition.algorithms.hypergraph import gather
from partition.algorithms.ideals import Boundary, boundary_of
from partition.cost import persistent_memory
from partition.problem import Problem


@dataclass(frozen=True, eq=False)
class Model:
    members: np.ndarray        # bool[N, U]
    packed: np.ndarray         # uint8[N, ceil(U/8)]
    unit: np.ndarray           # int64[n] node -> unit
    compute: np.ndarray        # float[N] per-micro-batch FLOPs
    load: np.ndarray           # float[N] per-step FLOPs (load caps)
    fixed_memory: np.ndarray   # float[N] params, gradients, optimizer slots
    activations: np.ndarray    # float[N] kept activations of one micro-batch
    pinned: np.ndarray         # int[N, k + 1]: nodes pinned to device d; last: any device
    boundary: Boundary
    weights: np.ndarray        # float[B, 6]: count, bytes, count rg, bytes rg, raw bytes, V
    open_rows: csr_matrix      # N x B, open tensors of each ideal
    open_total: np.ndarray     # float[N, 6]

    @property
    def size(self) -> int:
        return len(self.members)

    @classmethod
    def build(cls, problem: Problem, unit: np.ndarray, members: np.ndarray) -> "Model":
        arrays, m, k = problem.arrays, problem.micro_batches, problem.k
        count = members.shape[1]
        share = np.where(arrays.batch_dependent, 1.0, 1.0 / m)
        per_unit = np.zeros((count, 4 + k + 1))
        per_unit[:, 0] = np.bincount(unit, weights=arrays.train_flops * share, minlength=count)
        per_unit[:, 1] = np.bincount(unit, weights=problem.weights, minlength=count)
        activations = np.where(arrays.kept & ~arrays.is_param, arrays.bytes, 0)
        per_unit[:, 2] = np.bincount(unit, weights=persistent_memory(
            arrays, problem.optimizer_slots) - activations, minlength=count)
        per_unit[:, 3] = np.bincount(unit, weights=activations, minlength=count)
        pinned = np.flatnonzero(problem.pinned >= 0)
        np.add.at(per_unit, (unit[pinned], 4 + problem.pinned[pinned]), 1.0)
        np.add.at(per_unit, (unit[pinned], 4 + k), 1.0)
        sums = members.astype(np.float64) @ per_unit
        boundary = boundary_of(arrays, unit)
        node = boundary.node
        f = share[node]
        grad = arrays.requires_grad[node].astype(np.float64)
        nbytes = arrays.bytes[node].astype(np.float64)
        weights = np.column_stack([f, f * nbytes, f * grad, f * nbytes * grad, nbytes,
                                   nbytes * np.where(arrays.batch_dependent[node], m, 1)
                                   * (1 + grad)])
        owner = np.repeat(np.arange(len(node)), np.diff(boundary.ptr))
        reads = csr_matrix((np.ones(len(owner)), (boundary.readers, owner)),
                           shape=(count, len(node)))
        outside = np.asarray(reads.T @ (~members).T.astype(np.float32)).T > 0
        # open: tensor b is in the ideal and some unit reading it is not
        open_rows = csr_matrix(members[:, boundary.unit] & outside, dtype=np.float64)
        return cls(members=members, packed=np.packbits(members, axis=1), unit=unit,
                   compute=sums[:, 0], load=sums[:, 1], fixed_memory=sums[:, 2],
                   activations=sums[:, 3], pinned=np.rint(sums[:, 4:]).astype(np.int64),
                   boundary=boundary, weights=weights, open_rows=open_rows,
                   open_total=np.asarray(open_rows @ weights))

    def terms(self, i: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(lo, supersets, fset, rset) for stages `J minus I_i` over the ideals J = lo.. (the
        larger ideals, lo = i + 1): bool[N - lo] and float[N - lo, 6] twice."""
        lo = i + 1
        b = self.boundary
        rows = self.open_rows
        start = rows.indptr[lo]
        later = csr_matrix((rows.data[start:], rows.indices[start:], rows.indptr[lo:] - start),
                           shape=(self.size - lo, rows.shape[1]))
        inside = self.members[i, b.unit]
        fset = self.open_total[lo:] - np.asarray(later @ (self.weights * inside[:, None]))
        supersets = ~(self.packed[i] & ~self.packed[lo:]).any(axis=1)
        tensors = rows.indices[rows.indptr[i]:rows.indptr[i + 1]]
        rset = np.zeros_like(fset)
        if len(tensors):
            owner, index = gather(b.ptr, tensors)
            readers = b.readers[index]
            outside = ~self.members[i, readers]
            owner, readers = owner[outside], readers[outside]
            first = np.flatnonzero(np.diff(owner, prepend=-1))
            reached = np.logical_or.reduceat(self.members[lo:, readers], first, axis=1)
            rset = reached.astype(np.float64) @ self.weights[tensors[owner[first]]]
        return lo, supersets, fset, rset
