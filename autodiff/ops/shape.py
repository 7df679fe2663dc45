"""Shape ops: reshape, transpose, broadcast_to, concatenate, stack, indexing and take.

They move data, so they cost no FLOPs, except the scatter-adds (getitem_grad, take_grad),
which count one addition per element they scatter.
"""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import OpDef, ShapeError, input_flops, promote
from autodiff.trace import Tensor


def _reshape_shape(shapes, dtypes, shape):
    if math.prod(shape) != math.prod(shapes[0]) or any(d < 0 for d in shape):
        raise ShapeError(f"cannot reshape {list(shapes[0])} into {list(shape)}")
    return tuple(shape), dtypes[0]


def _transpose_axes(ndim, axes):
    return tuple(range(ndim))[::-1] if axes is None else tuple(a % ndim for a in axes)


def _transpose_shape(shapes, dtypes, axes=None):
    shape = shapes[0]
    perm = _transpose_axes(len(shape), axes)
    if sorted(perm) != list(range(len(shape))):
        raise ShapeError(f"axes {axes} are not a permutation of {len(shape)} axes")
    return tuple(shape[a] for a in perm), dtypes[0]


def _broadcast_shape(shapes, dtypes, shape):
    try:
        np.broadcast_shapes(tuple(shapes[0]), tuple(shape))
    except ValueError:
        raise ShapeError(f"cannot broadcast {list(shapes[0])} to {list(shape)}") from None
    if tuple(np.broadcast_shapes(tuple(shapes[0]), tuple(shape))) != tuple(shape):
        raise ShapeError(f"cannot broadcast {list(shapes[0])} to {list(shape)}")
    return tuple(shape), dtypes[0]


def _transpose_vjp(g, out, x, axes=None):
    perm = _transpose_axes(len(x.shape), axes)
    return (anp.transpose(g, list(np.argsort(perm))),)


def _zeros_if_none(tangents, inputs):
    return [anp.zeros_like(x) if t is None else t for t, x in zip(tangents, inputs)]


# ------------------------------------------------------- concatenate, stack
def _axis_in(axis, ndim, op):
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op}: axis {axis} is out of range for rank {ndim}")
    return axis % ndim


def _concatenate_shape(shapes, dtypes, axis=0):
    if not shapes:
        raise ShapeError("concatenate needs at least one tensor")
    first = tuple(shapes[0])
    ax = _axis_in(axis, len(first), "concatenate")
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != ax):
            raise ShapeError(f"concatenate along axis {axis}: shapes "
                             f"{' and '.join(str(list(s)) for s in shapes)} differ off that axis")
    return first[:ax] + (sum(s[ax] for s in shapes),) + first[ax + 1:], promote(*dtypes)


def _concatenate_vjp(g, out, *xs, axis=0):
    ax = axis % out.ndim
    grads, start = [], 0
    for x in xs:
        grads.append(g[(slice(None),) * ax + (slice(start, start + x.shape[ax]),)])
        start += x.shape[ax]
    return tuple(grads)


def _stack_shape(shapes, dtypes, axis=0):
    if not shapes:
        raise ShapeError("stack needs at least one tensor")
    first = tuple(shapes[0])
    if any(tuple(s) != first for s in shapes):
        raise ShapeError(f"stack: shapes {' and '.join(str(list(s)) for s in shapes)} differ")
    ax = _axis_in(axis, len(first) + 1, "stack")
    return first[:ax] + (len(shapes),) + first[ax:], promote(*dtypes)


def _stack_vjp(g, out, *xs, axis=0):
    ax = axis % out.ndim
    return tuple(g[(slice(None),) * ax + (i,)] for i in range(len(xs)))


# ---------------------------------------------------------------- indexing
def encode_index(index, shape) -> list:
    """A JSON-able encoding of a numpy index on a tensor of `shape`.

    Entries: ["int", i], ["slice", start, stop, step] (None kept), ["newaxis"], ["array", list]
    (at most one integer array); Ellipsis is expanded. Raises ShapeError on what numpy rejects.
    """
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(1 for it in items if it is Ellipsis) > 1:
        raise ShapeError("an index can only have a single Ellipsis")
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    if consumed > len(shape):
        raise ShapeError(f"too many indices ({consumed}) for a tensor of rank {len(shape)}")
    encoded: list = []
    for it in items:
        if it is Ellipsis:
            encoded += [["slice", None, None, None]] * (len(shape) - consumed)
        elif it is None:
            encoded.append(["newaxis"])
        elif isinstance(it, slice):
            encoded.append(["slice", *(None if v is None else _as_int(v)
                                       for v in (it.start, it.stop, it.step))])
        elif isinstance(it, (int, np.integer)) and not isinstance(it, (bool, np.bool_)):
            encoded.append(["int", int(it)])
        elif isinstance(it, Tensor):
            raise ShapeError(f"traced tensor {it.name!r} inside an index: index with a traced "
                             "integer tensor alone (x[idx]) or use take(x, idx, axis)")
        else:
            arr = np.asarray(it)
            if arr.dtype.kind not in "iu":
                raise ShapeError(f"unsupported index {it!r}: only ints, slices, None, Ellipsis "
                                 "and integer arrays (use take or where for the rest)")
            encoded.append(["array", arr.tolist()])
    if sum(1 for e in encoded if e[0] == "array") > 1:
        raise ShapeError("only one integer-array index is supported")
    _index_shape(encoded, tuple(shape))  # validates bounds
    return encoded


def _as_int(v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ShapeError(f"slice bounds must be integers, got {v!r}")
    return int(v)


# kind of an encode_index entry -> the numpy index it stands for
_DECODE = {"int": lambda e: int(e[1]), "slice": lambda e: slice(e[1], e[2], e[3]),
           "newaxis": lambda e: None, "array": lambda e: np.asarray(e[1], dtype=np.int64)}


def decode_index(encoded) -> tuple:
    """The numpy index an `encode_index` list stands for."""
    for e in encoded:
        if e[0] not in _DECODE:
            raise ShapeError(f"unknown index entry {e!r}")
    return tuple(_DECODE[e[0]](e) for e in encoded)


def _index_shape(encoded, shape: tuple) -> tuple[int, ...]:
    """Result shape of indexing `shape` with `encoded`, following numpy's rules."""
    entries = list(encoded) + [["slice", None, None, None]] * (
        len(shape) - sum(1 for e in encoded if e[0] != "newaxis"))
    dims: list = []
    advanced: list[int] = []       # entry positions of advanced indices (ints and the array)
    array_shape: tuple | None = None
    axis = 0
    for pos, e in enumerate(entries):
        if e[0] == "newaxis":
            dims.append(1)
            continue
        if axis >= len(shape):
            raise ShapeError(f"too many indices for a tensor of shape {list(shape)}")
        d = shape[axis]
        if e[0] == "int":
            if not -d <= e[1] < d:
                raise ShapeError(f"index {e[1]} is out of bounds for axis {axis} with size {d}")
            advanced.append(pos)
        elif e[0] == "slice":
            if e[3] == 0:
                raise ShapeError("slice step cannot be zero")
            dims.append(len(range(*slice(e[1], e[2], e[3]).indices(d))))
        elif e[0] == "array":
            arr = np.asarray(e[1], dtype=np.int64)
            if arr.size and (arr.min() < -d or arr.max() >= d):
                raise ShapeError(f"an index in the integer array is out of bounds for axis "
                                 f"{axis} with size {d}")
            advanced.append(pos)
            array_shape = arr.shape
            dims.append("array")
        else:
            raise ShapeError(f"unknown index entry {e!r}")
        axis += 1
    if array_shape is None:
        return tuple(dims)
    # numpy: the advanced dims replace the array's place when all advanced indices are
    # adjacent, and go first when a slice or newaxis separates them.
    basic = [d for d in dims if d != "array"]
    if advanced == list(range(advanced[0], advanced[-1] + 1)):
        where = dims.index("array")
        return tuple(basic[:where]) + tuple(array_shape) + tuple(basic[where:])
    return tuple(array_shape) + tuple(basic)


def _getitem_shape(shapes, dtypes, index):
    return _index_shape(index, tuple(shapes[0])), dtypes[0]


def _getitem_grad_shape(shapes, dtypes, index, shape):
    expected = _index_shape(index, tuple(shape))
    if tuple(shapes[0]) != expected:
        raise ShapeError(f"gradient of shape {list(shapes[0])} does not match index result "
                         f"{list(expected)}")
    return tuple(shape), dtypes[0]


def _getitem_grad_forward(g, index, shape):
    out = np.zeros(shape, dtype=np.result_type(g))
    idx = decode_index(index)
    if any(e[0] == "array" for e in index):
        np.add.at(out, idx, g)      # repeated indices accumulate
    else:
        out[idx] = g                # basic indexing selects each element at most once
    return out


# -------------------------------------------------------------------- take
def _take_shape(shapes, dtypes, axis=0):
    table, idx = tuple(shapes[0]), tuple(shapes[1])
    if not dtypes[1].startswith(("int", "uint")):
        raise ShapeError(f"take: indices must be integers, got {dtypes[1]}")
    ax = _axis_in(axis, len(table), "take")
    return table[:ax] + idx + table[ax + 1:], dtypes[0]


def _take_grad_shape(shapes, dtypes, shape, axis=0):
    expected, _ = _take_shape([shape, shapes[1]], [dtypes[0], dtypes[1]], axis)
    if tuple(shapes[0]) != expected:
        raise ShapeError(f"take_grad: gradient of shape {list(shapes[0])} does not match "
                         f"{list(expected)}")
    return tuple(shape), dtypes[0]


def _take_grad_forward(g, indices, shape, axis=0):
    out = np.zeros(shape, dtype=np.result_type(g))
    ax = axis % len(shape)
    indices = np.asarray(indices)
    if ax == 0 and indices.size:
        _scatter_rows(out, indices.reshape(-1), np.reshape(g, (indices.size,) + out.shape[1:]))
    else:
        np.add.at(out, (slice(None),) * ax + (indices,), g)
    return out


def _scatter_rows(out, rows, values):
    """out[rows[i]] += values[i] for every i (rows may repeat): a stable sort groups equal rows
    and add.reduceat sums each group in order, many times faster than np.add.at."""
    rows = np.where(rows < 0, rows + out.shape[0], rows)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    out[rows[starts]] = np.add.reduceat(values[order], starts, axis=0)


OPS = [
    OpDef("reshape", _reshape_shape, lambda x, shape: np.reshape(x, shape),
          vjp=lambda g, out, x, shape: (anp.reshape(g, list(x.shape)),),
          jvp=lambda t, out, x, shape: anp.reshape(t[0], list(shape)), arity=1),
    OpDef("transpose", _transpose_shape,
          lambda x, axes=None: np.transpose(x, None if axes is None else tuple(axes)),
          vjp=_transpose_vjp, jvp=lambda t, out, x, axes=None: anp.transpose(t[0], axes), arity=1),
    OpDef("broadcast_to", _broadcast_shape, lambda x, shape: np.broadcast_to(x, tuple(shape)),
          vjp=lambda g, out, x, shape: (g,),   # reverse mode sums g back to x's shape
          jvp=lambda t, out, x, shape: anp.broadcast_to(t[0], shape), arity=1),
    OpDef("concatenate", _concatenate_shape, lambda *xs, axis=0: np.concatenate(xs, axis=axis),
          vjp=_concatenate_vjp,
          jvp=lambda t, out, *xs, axis=0: anp.concatenate(_zeros_if_none(t, xs), axis),
          doc="join along an existing axis; gradient: a slice per operand"),
    OpDef("stack", _stack_shape, lambda *xs, axis=0: np.stack(xs, axis=axis),
          vjp=_stack_vjp,
          jvp=lambda t, out, *xs, axis=0: anp.stack(_zeros_if_none(t, xs), axis),
          doc="join along a new axis; gradient: one index per operand"),
    OpDef("getitem", _getitem_shape, lambda x, index: np.asarray(x)[decode_index(index)],
          vjp=lambda g, out, x, index: (anp.apply("getitem_grad", g, index=index,
                                                  shape=list(x.shape)),),
          jvp=lambda t, out, x, index: anp.apply("getitem", t[0], index=index), arity=1,
          doc="numpy indexing (attr index from encode_index); gradient: getitem_grad"),
    OpDef("getitem_grad", _getitem_grad_shape, _getitem_grad_forward, input_flops(1),
          vjp=lambda g, out, x, index, shape: (anp.apply("getitem", g, index=index),),
          jvp=lambda t, out, x, index, shape: anp.apply("getitem_grad", t[0], index=index,
                                                        shape=shape), arity=1,
          doc="scatter-add of x into zeros of `shape` at `index` (the adjoint of getitem)"),
    OpDef("take", _take_shape, lambda table, indices, axis=0: np.take(table, indices, axis=axis),
          vjp=lambda g, out, table, indices, axis=0: (
              anp.apply("take_grad", g, indices, shape=list(table.shape), axis=axis), None),
          jvp=lambda t, out, table, indices, axis=0: None if t[0] is None else
          anp.take(t[0], indices, axis), saves=(1,), arity=2,
          doc="gather rows of `table` at integer `indices` (embedding lookup); indices get no "
              "gradient"),
    OpDef("take_grad", _take_grad_shape, _take_grad_forward, input_flops(1),
          vjp=lambda g, out, x, indices, shape, axis=0: (anp.take(g, indices, axis), None),
          jvp=lambda t, out, x, indices, shape, axis=0: None if t[0] is None else
          anp.apply("take_grad", t[0], indices, shape=shape, axis=axis), saves=(1,), arity=2,
          doc="scatter-add of x into zeros of `shape` at `indices` along axis (adjoint of take)"),
]
