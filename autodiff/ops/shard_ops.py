"""Shard-local gathers for the sharding rewrite (autodiff/shard.py): an embedding lookup and a
class-logit pick restricted to one shard's row or class range [offset, offset + rows).

Out-of-range indices give zeros, so summing the shards' results gives the unsharded gather
(Megatron's vocab-parallel embedding and loss). Each gather has a scatter-add adjoint op.

FLOPs: the gathers copy (0); a scatter-add counts one addition per element it is expected to
scatter, its operand's size times rows / total (the shard's share of the full axis), so the
shards of one gradient add up to the unsharded take_grad's count.
"""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import OpDef, ShapeError


def _check_range(op: str, rows: int, offset: int, total: int) -> None:
    if not (0 <= offset and rows >= 1 and offset + rows <= total):
        raise ShapeError(f"{op}: rows [{offset}, {offset + rows}) do not lie in [0, {total})")


def _check_indices(op: str, dtype: str) -> None:
    if not dtype.startswith(("int", "uint")):
        raise ShapeError(f"{op}: indices must be integers, got {dtype}")


def _local(indices, offset: int, rows: int):
    """(local index clamped into range, in-range mask) for global `indices`."""
    local = np.asarray(indices, dtype=np.int64) - offset
    inside = (local >= 0) & (local < rows)
    return np.where(inside, local, 0), inside


# -------------------------------------------------------------- shard_take
def _shard_take_shape(shapes, dtypes, offset, total):
    table, idx = tuple(shapes[0]), tuple(shapes[1])
    _check_indices("shard_take", dtypes[1])
    if not table:
        raise ShapeError("shard_take: the table must have at least one axis")
    _check_range("shard_take", table[0], offset, total)
    return idx + table[1:], dtypes[0]


def _shard_take_forward(table, indices, offset, total):
    local, inside = _local(indices, offset, table.shape[0])
    out = np.take(table, local, axis=0)
    out[~inside] = 0
    return out


def _shard_take_grad_forward(g, indices, shape, offset, total):
    out = np.zeros(shape, dtype=np.result_type(g))
    local, inside = _local(indices, offset, shape[0])
    np.add.at(out, local[inside], np.asarray(g)[inside])
    return out


# -------------------------------------------------------------- shard_pick
def _shard_pick_shape(shapes, dtypes, offset, total):
    x, labels = tuple(shapes[0]), tuple(shapes[1])
    _check_indices("shard_pick", dtypes[1])
    if not x or x[:-1] != labels:
        raise ShapeError(f"shard_pick: labels of shape {list(labels)} must be the shape "
                         f"{list(x)} without its last (class) axis")
    _check_range("shard_pick", x[-1], offset, total)
    return labels, dtypes[0]


def _shard_pick_forward(x, labels, offset, total):
    local, inside = _local(labels, offset, x.shape[-1])
    picked = np.take_along_axis(x, local[..., None], -1)[..., 0]
    return np.where(inside, picked, np.zeros((), picked.dtype))


def _shard_pick_grad_forward(g, labels, shape, offset, total):
    out = np.zeros(shape, dtype=np.result_type(g))
    local, inside = _local(labels, offset, shape[-1])
    g = np.where(inside, g, np.zeros((), out.dtype))
    np.put_along_axis(out, local[..., None], g[..., None], -1)
    return out


def _shard_ops(name: str, axis: int, gather: tuple, scatter, docs: tuple) -> list[OpDef]:
    """OpDefs of shard gather `name` along `axis` (shape rule and forward in `gather`) and of
    its scatter-add adjoint `name`_grad; indices (input 1) get no gradient."""
    grad = f"{name}_grad"

    def grad_shape(shapes, dtypes, shape, offset, total):
        expected, _ = gather[0]([shape, shapes[1]], [dtypes[0], dtypes[1]], offset, total)
        if tuple(shapes[0]) != expected:
            raise ShapeError(f"{grad}: gradient of shape {list(shapes[0])} does not match "
                             f"{list(expected)}")
        return tuple(shape), dtypes[0]

    def grad_flops(shapes, out_shape, shape, offset, total):
        return math.prod(shapes[0]) * shape[axis] // max(total, 1)

    return [
        OpDef(name, *gather,
              vjp=lambda g, out, x, idx, offset, total: (
                  anp.apply(grad, g, idx, shape=list(x.shape), offset=offset, total=total), None),
              jvp=lambda t, out, x, idx, offset, total: None if t[0] is None else
              anp.apply(name, t[0], idx, offset=offset, total=total),
              saves=(1,), arity=2, doc=docs[0]),
        OpDef(grad, grad_shape, scatter, grad_flops,
              vjp=lambda gg, out, g, idx, shape, offset, total: (
                  anp.apply(name, gg, idx, offset=offset, total=total), None),
              jvp=lambda t, out, g, idx, shape, offset, total: None if t[0] is None else
              anp.apply(grad, t[0], idx, shape=shape, offset=offset, total=total),
              saves=(1,), arity=2, doc=docs[1]),
    ]


OPS = [
    *_shard_ops("shard_take", 0, (_shard_take_shape, _shard_take_forward),
                _shard_take_grad_forward,
                ("rows idx - offset of a table shard holding rows [offset, offset + len) of a "
                 "`total`-row table; zeros for indices outside; indices get no gradient",
                 "scatter-add of the in-range rows of g into zeros of `shape` (adjoint of "
                 "shard_take)")),
    *_shard_ops("shard_pick", -1, (_shard_pick_shape, _shard_pick_forward),
                _shard_pick_grad_forward,
                ("x[..., label - offset] for a class shard holding classes [offset, offset + C) "
                 "of `total`; 0 where the label lies outside; labels get no gradient",
                 "zeros of `shape` with g at each in-range label's class (adjoint of "
                 "shard_pick)")),
]
