"""Gradient sums over micro-batches without temporaries: `acc += a @ b` as one BLAS gemm.

A weight gradient summed over m micro-batches is m products of K = batch/m rows, each added
into the step's sum. Written as product-then-add, every micro-batch allocates, writes and
re-reads a full weight-sized temporary (4 of 5 memory passes of a 2048 x 2048 layer at
K = 64); a gemm with beta = 1 adds the product straight into the sum.
`fused_products` finds, in a device program, the matmul nodes whose only use is such a sum.

Deferred (`stacked_product`): keep each micro-batch's operands and compute the sum as one gemm
over the operands stacked along the summed axis, sum_i a_i @ b_i = [a_1 .. a_m] @ [b_1; ..;
b_m]: K = many micro-batches again (a gemm with 64 rows runs ~20% slower than one with 512
here). The worker sums them once the device has sent its last packet (executor/worker.py),
so in a pipeline the weight gradients leave the backward critical path, as zero-bubble
schedules split B and W; the price is memory: the operands stay alive until summed.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import blas

from executor.program import Accumulate, ApplyUpdate, Compute, Program, Send, SetState

GEMM = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}


def _fortran_operand(m: np.ndarray) -> tuple[np.ndarray, int]:
    """`m` as a Fortran-ordered array plus the gemm transpose flag giving back `m`."""
    if m.flags.f_contiguous:
        return m, 0
    if m.flags.c_contiguous:
        return m.T, 1
    return np.asfortranarray(m), 0


def add_matmul(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """acc += a @ b in place (acc C-ordered and writable); one gemm, computed as
    acc.T += b.T @ a.T, which BLAS sees column-major, when a and b are 2-D of acc's dtype
    (float32 or float64), else the product cast to acc's dtype, then added."""
    gemm = GEMM.get(acc.dtype)
    if (gemm is None or a.dtype != acc.dtype or b.dtype != acc.dtype or a.ndim != 2
            or b.ndim != 2 or not acc.flags.c_contiguous or not acc.flags.writeable):
        np.add(acc, np.asarray(np.matmul(a, b), dtype=acc.dtype), out=acc)
        return
    x, trans_x = _fortran_operand(b.T)
    y, trans_y = _fortran_operand(a.T)
    out = gemm(1.0, x, y, beta=1.0, c=acc.T, trans_a=trans_x, trans_b=trans_y,
               overwrite_c=1)
    if not np.shares_memory(out, acc):           # f2py copied c: write the result back
        acc[...] = out.T


def stacked_product(pairs: list[tuple[np.ndarray, np.ndarray]], dtype: np.dtype
                    ) -> np.ndarray:
    """sum_i a_i @ b_i for 2-D a_i (n x K_i) and b_i (K_i x p), as one product of the operands
    stacked along K (a fresh C-ordered array of `dtype`)."""
    if len(pairs) == 1:
        a, b = pairs[0]
    else:
        # a_i is usually a transposed activation: stacking the transposes' rows is a memcpy
        a = np.concatenate([x.T for x, _ in pairs], axis=0).T
        b = np.concatenate([y for _, y in pairs], axis=0)
    out = np.matmul(a, b)
    return out if out.dtype == dtype else out.astype(dtype)


def fused_products(program: Program) -> dict[int, dict[str, str]]:
    """Per block index: matmul node -> the sum it is accumulated into, for 2-D float products
    whose only use in the whole program is one Accumulate later in the same block."""
    other_reads = {x for node in program.nodes.values() for x in node.inputs}
    for block in program.blocks:
        for s in block.steps:
            if isinstance(s, (Send, SetState)):
                other_reads.add(s.tensor)
            elif isinstance(s, ApplyUpdate):
                other_reads.update(g for g in s.grads if g is not None)
    out: dict[int, dict[str, str]] = {}
    for index, block in enumerate(program.blocks):
        summed = [s.tensor for s in block.steps if isinstance(s, Accumulate)]
        computed: set[str] = set()
        for s in block.steps:
            if isinstance(s, Compute):
                computed.update(s.nodes)
            elif (isinstance(s, Accumulate) and s.tensor in computed
                  and s.tensor not in other_reads and summed.count(s.tensor) == 1
                  and _is_2d_float_matmul(program, s.tensor)):
                out.setdefault(index, {})[s.tensor] = s.into
    return out


def _is_2d_float_matmul(program: Program, name: str) -> bool:
    node = program.nodes[name]
    return (node.op == "matmul" and len(node.shape) == 2 and name not in program.per_step
            and name != program.loss and node.dtype in ("float32", "float64"))
