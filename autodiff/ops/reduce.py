"""Reductions over axes (sum, mean, max) and the stable log-sum-exp family.

FLOPs: one per input element for sum, mean and max; four per input element for logsumexp,
softmax and log_softmax (max, subtract, exp, sum). The log-sum-exp family subtracts the max
before exponentiating, so inputs of magnitude 1e4 give finite, exact results.
"""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import (OpDef, ShapeError, float_array, float_dtype, input_flops,
                                   normalize_axes, symmetric_op)


def reduce_shape(shapes, dtypes, axis=None, keepdims=False, **attrs):
    shape = shapes[0]
    axes = normalize_axes(axis, len(shape))
    if keepdims:
        out = tuple(1 if i in axes else d for i, d in enumerate(shape))
    else:
        out = tuple(d for i, d in enumerate(shape) if i not in axes)
    return out, dtypes[0]


def _sum_shape(shapes, dtypes, axis=None, keepdims=False):
    out, dtype = reduce_shape(shapes, dtypes, axis, keepdims)
    return out, "int64" if dtype == "bool" else dtype   # counting a mask gives integers


def _float_reduce_shape(shapes, dtypes, axis=None, keepdims=False):
    out, dtype = reduce_shape(shapes, dtypes, axis, keepdims)
    return out, float_dtype(dtype)


def _max_shape(shapes, dtypes, axis=None, keepdims=False):
    axes = normalize_axes(axis, len(shapes[0]))
    if any(shapes[0][a] == 0 for a in axes):
        raise ShapeError(f"max over an empty axis of shape {list(shapes[0])}")
    return reduce_shape(shapes, dtypes, axis, keepdims)


def _softmax_shape(shapes, dtypes, axis=-1):
    normalize_axes(axis, len(shapes[0]))
    return tuple(shapes[0]), float_dtype(dtypes[0])


def expand_reduced(g, in_shape, axis, keepdims):
    """Reshape a reduction's gradient so it broadcasts against the input: the reduced axes kept
    as size 1."""
    if keepdims:
        return g
    axes = normalize_axes(axis, len(in_shape))
    return anp.reshape(g, [1 if i in axes else d for i, d in enumerate(in_shape)])


def _np_axis(axis):
    return None if axis is None else tuple(np.atleast_1d(axis).tolist())


def logsumexp_numpy(x, axis=-1, keepdims=False):
    """log(sum(exp(x))) over `axis`, computed as m + log(sum(exp(x - m))) with m the max."""
    x = float_array(x)
    ax = _np_axis(axis)
    m = np.max(x, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
    return out if keepdims else out.reshape(reduce_shape([x.shape], [""], axis)[0])


def sum_last(x, y=None):
    """Sum over the last axis (of x * y when y is given), kept as size 1. einsum needs no
    temporary for the product and is several times faster than np.sum on short rows."""
    total = np.einsum("...i->...", x) if y is None else np.einsum("...i,...i->...", x, y)
    return total[..., None]


def _softmax_numpy(x, axis=-1):
    """exp(x - max) / sum, in place on one fresh array."""
    x = float_array(x)
    e = np.subtract(x, np.max(x, axis=axis, keepdims=True))
    np.exp(e, out=e)
    last = x.ndim and axis % x.ndim == x.ndim - 1
    e /= sum_last(e) if last else np.sum(e, axis=axis, keepdims=True)
    return e


# -------------------------------------------------------------- sum, mean
def _sum_vjp(g, out, x, axis=None, keepdims=False):
    return (anp.broadcast_to(expand_reduced(g, x.shape, axis, keepdims), x.shape),)


def _count(shape, axis) -> int:
    return math.prod(shape[a] for a in normalize_axes(axis, len(shape)))


def _mean_vjp(g, out, x, axis=None, keepdims=False):
    g = expand_reduced(g, x.shape, axis, keepdims) * (1.0 / _count(x.shape, axis))
    return (anp.broadcast_to(g, x.shape),)


# --------------------------------------------------------------------- max
def _max_share(x, out, axis, keepdims):
    """Where x attains the max, 1 / (number of maxima in its slice); elsewhere 0."""
    hit = anp.astype(anp.equal(x, expand_reduced(out, x.shape, axis, keepdims)), out.dtype)
    return hit / anp.sum(hit, axis, keepdims=True)


def _max_vjp(g, out, x, axis=None, keepdims=False):
    return (expand_reduced(g, x.shape, axis, keepdims) * _max_share(x, out, axis, keepdims),)


def _max_jvp(t, out, x, axis=None, keepdims=False):
    return anp.sum(t[0] * _max_share(x, out, axis, keepdims), axis, keepdims)


# ------------------------------------------------------ log-sum-exp family
def _logsumexp_vjp(g, out, x, axis=-1, keepdims=False):
    p = anp.exp(x - expand_reduced(out, x.shape, axis, keepdims))
    return (expand_reduced(g, x.shape, axis, keepdims) * p,)


def _logsumexp_jvp(t, out, x, axis=-1, keepdims=False):
    p = anp.exp(x - expand_reduced(out, x.shape, axis, keepdims))
    return anp.sum(t[0] * p, axis, keepdims)


def _softmax_jacobian(v, out, x, axis=-1):
    return out * (v - anp.sum(v * out, axis, keepdims=True))


def _log_softmax_vjp(g, out, x, axis=-1):
    return (g - anp.exp(out) * anp.sum(g, axis, keepdims=True),)


def _log_softmax_jvp(t, out, x, axis=-1):
    return t[0] - anp.sum(anp.exp(out) * t[0], axis, keepdims=True)


OPS = [
    OpDef("sum", _sum_shape, lambda x, axis=None, keepdims=False:
          np.sum(x, axis=_np_axis(axis), keepdims=keepdims),
          input_flops(1), vjp=_sum_vjp,
          jvp=lambda t, out, x, axis=None, keepdims=False: anp.sum(t[0], axis, keepdims),
          arity=1),
    OpDef("mean", _float_reduce_shape, lambda x, axis=None, keepdims=False:
          np.mean(x, axis=_np_axis(axis), keepdims=keepdims),
          input_flops(1), vjp=_mean_vjp,
          jvp=lambda t, out, x, axis=None, keepdims=False: anp.mean(t[0], axis, keepdims),
          arity=1),
    OpDef("max", _max_shape, lambda x, axis=None, keepdims=False:
          np.max(x, axis=_np_axis(axis), keepdims=keepdims),
          input_flops(1), vjp=_max_vjp, jvp=_max_jvp, saves=(0, "out"), arity=1,
          doc="max reduction; ties split the gradient evenly among the maxima of a slice"),
    OpDef("logsumexp", _float_reduce_shape, logsumexp_numpy, input_flops(4),
          vjp=_logsumexp_vjp, jvp=_logsumexp_jvp, saves=(0, "out"), arity=1,
          doc="log(sum(exp(x))) over axis, stable (max subtracted first)"),
    symmetric_op("softmax", _softmax_shape, _softmax_numpy, input_flops(4), _softmax_jacobian,
                 saves=("out",), arity=1,
                 doc="exp(x) / sum(exp(x)) over one axis, stable (max subtracted first)"),
    OpDef("log_softmax", _softmax_shape,
          lambda x, axis=-1: np.asarray(x) - logsumexp_numpy(x, axis, keepdims=True),
          input_flops(4), vjp=_log_softmax_vjp, jvp=_log_softmax_jvp, saves=("out",),
          arity=1, doc="x - logsumexp(x) over one axis, stable"),
]
