"""Shape ops: reshape, transpose, broadcast_to (more to come); they move data, no FLOPs."""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import OpDef, ShapeError


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


def encode_index(index, shape) -> list:
    """A JSON-able encoding of a numpy basic index (ints, slices, None, Ellipsis)."""
    raise NotImplementedError  # written with the getitem op


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
]
