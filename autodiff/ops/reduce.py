"""Reductions over axes (sum, mean, max) and the stable log-sum-exp family."""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import OpDef, normalize_axes


def reduce_shape(shapes, dtypes, axis=None, keepdims=False, **attrs):
    shape = shapes[0]
    axes = normalize_axes(axis, len(shape))
    if keepdims:
        out = tuple(1 if i in axes else d for i, d in enumerate(shape))
    else:
        out = tuple(d for i, d in enumerate(shape) if i not in axes)
    return out, dtypes[0]


def keepdims_shape(in_shape, axis) -> list[int]:
    """Shape of a reduction's result with the reduced axes kept as size 1."""
    axes = normalize_axes(axis, len(in_shape))
    return [1 if i in axes else d for i, d in enumerate(in_shape)]


def expand_reduced(g, in_shape, axis, keepdims):
    """Reshape a reduction's gradient so it broadcasts against the input."""
    if keepdims:
        return g
    return anp.reshape(g, keepdims_shape(in_shape, axis))


def _reduce_flops(shapes, out_shape, **attrs):
    return math.prod(shapes[0])


def _sum_vjp(g, out, x, axis=None, keepdims=False):
    return (anp.broadcast_to(expand_reduced(g, x.shape, axis, keepdims), x.shape),)


def _sum_jvp(t, out, x, axis=None, keepdims=False):
    return anp.sum(t[0], axis, keepdims)


OPS = [
    OpDef("sum", reduce_shape, lambda x, axis=None, keepdims=False:
          np.sum(x, axis=None if axis is None else tuple(np.atleast_1d(axis)), keepdims=keepdims),
          _reduce_flops, vjp=_sum_vjp, jvp=_sum_jvp, arity=1),
]
