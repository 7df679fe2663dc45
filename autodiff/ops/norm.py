"""Normalisation ops: layer_norm, batch_norm (train and eval forms) and their fused parts.

`normalize(x)` = (x - mean) / sqrt(var + eps) over `axis` (biased variance) and
`normalize_grad(g, x)` = its Jacobian (symmetric) applied to g are fused numpy kernels, so a
layer norm's backward is a few passes over memory instead of a dozen graph ops. Both recompute
the statistics from the saved input rather than keeping them: the backward keeps x and gamma.
Their own derivatives are written with graph ops, so gradients can be differentiated again.
FLOPs per element: normalize 5, normalize_grad 12, layer_norm and batch_norm 8 (mean,
variance, scale, shift), batch_norm_eval 4.
"""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.elementwise import tangent_sum
from autodiff.ops.registry import (OpDef, ShapeError, elementwise_flops, float_array,
                                   float_dtype, normalize_axes, promote, symmetric_op)
from autodiff.ops.reduce import _count, sum_last


# ------------------------------------------------------------ numpy kernels
def _as_rows(x, axes: tuple):
    """x as a 2-D (rows, n) view when `axes` are its trailing axes, else None."""
    k = len(axes)
    if k and axes == tuple(range(x.ndim - k, x.ndim)) and x.flags.c_contiguous:
        return x.reshape(-1, math.prod(x.shape[x.ndim - k:]))
    return None


def _centred_and_rstd(x, axes: tuple, eps: float):
    """x - mean (a new float array) and 1 / sqrt(var + eps) over `axes`, as broadcastable
    arrays. Trailing axes (layer norm) reduce as rows with einsum: no squared temporary."""
    x = float_array(x)
    rows = _as_rows(x, axes)
    if rows is not None:
        n = rows.shape[1]
        xc = np.subtract(rows, sum_last(rows) * (1.0 / n))
        var = sum_last(xc, xc)
        var *= 1.0 / n
        shape = x.shape[:x.ndim - len(axes)] + (1,) * len(axes)
        xc = xc.reshape(x.shape)
    else:
        xc = np.subtract(x, np.mean(x, axis=axes, keepdims=True))
        var = np.mean(np.square(xc), axis=axes, keepdims=True)
        shape = var.shape
    var += eps
    return xc, np.divide(1.0, np.sqrt(var, out=var), out=var).reshape(shape)


def _mean_over(x, axes: tuple, y=None):
    """mean of x (or of x * y) over `axes`, kept dims."""
    rows = _as_rows(x, axes)
    if rows is not None and (y is None or y.flags.c_contiguous):
        total = sum_last(rows, None if y is None else y.reshape(rows.shape))
        total *= 1.0 / rows.shape[1]
        return total.reshape(x.shape[:x.ndim - len(axes)] + (1,) * len(axes))
    return np.mean(x if y is None else x * y, axis=axes, keepdims=True)


def normalize_numpy(x, axis=-1, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over `axis`, one fresh array."""
    axes = normalize_axes(axis, np.ndim(x))
    xc, rstd = _centred_and_rstd(x, axes, eps)
    xc *= rstd
    return xc


def normalize_grad_numpy(g, x, axis=-1, eps=1e-5):
    """rstd * (g - mean(g) - xhat * mean(g * xhat)): normalize's VJP (and JVP) at x."""
    axes = normalize_axes(axis, np.ndim(x))
    xhat, rstd = _centred_and_rstd(x, axes, eps)
    xhat *= rstd
    g = np.asarray(g)
    dtype = np.result_type(g, xhat)
    if xhat.dtype != dtype:
        xhat = xhat.astype(dtype)
    a = _mean_over(xhat, axes, g)
    mean_g = _mean_over(g, axes)
    xhat *= a
    np.subtract(g, xhat, out=xhat)
    xhat -= mean_g
    xhat *= rstd
    return xhat


def _scale_shift(y, scale, shift):
    """y * scale + shift, in place on the fresh array y when the dtypes allow."""
    if np.result_type(y, scale, shift) != y.dtype:
        return y * scale + shift
    y *= scale
    y += shift
    return y


# ---------------------------------------------------- normalize (fused parts)
def _rstd(x, axis, eps):
    """1 / sqrt(var + eps) over `axis` (kept dims), from graph ops."""
    xc = x - anp.mean(x, axis, keepdims=True)
    return 1.0 / anp.sqrt(anp.mean(xc * xc, axis, keepdims=True) + eps)


def _normalize(x, axis, eps):
    return anp.apply("normalize", x, axis=axis, eps=eps)


def _normalize_grad(g, x, axis, eps):
    return anp.apply("normalize_grad", g, x, axis=axis, eps=eps)


def _normalize_shape(shapes, dtypes, axis=-1, eps=1e-5):
    normalize_axes(axis, len(shapes[0]))
    return tuple(shapes[0]), float_dtype(dtypes[0])


def _normalize_grad_shape(shapes, dtypes, axis=-1, eps=1e-5):
    if tuple(shapes[0]) != tuple(shapes[1]):
        raise ShapeError(f"normalize_grad: gradient {list(shapes[0])} and x {list(shapes[1])} "
                         "must have the same shape")
    normalize_axes(axis, len(shapes[1]))
    return tuple(shapes[1]), float_dtype(promote(*dtypes))


def _normalize_grad_vjp(gg, out, g, x, axis=-1, eps=1e-5):
    """With y = J g, s = rstd, a = mean(g xhat), b = sum(gg xhat), c = sum(gg (g - mean g)):
    d<gg, y>/dg = J gg (J is symmetric) and
    d<gg, y>/dx = -(c - a b) s^2 xhat / n - (s b / n) y - s a J gg."""
    n = _count(x.shape, axis)
    s, xhat = _rstd(x, axis, eps), _normalize(x, axis, eps)
    j_gg = _normalize_grad(gg, x, axis, eps)
    a = anp.mean(g * xhat, axis, keepdims=True)
    b = anp.sum(gg * xhat, axis, keepdims=True)
    c = anp.sum(gg * (g - anp.mean(g, axis, keepdims=True)), axis, keepdims=True)
    gx = (-(c - a * b) * (s * s) * (1.0 / n)) * xhat - (s * b * (1.0 / n)) * out - (s * a) * j_gg
    return j_gg, gx


def _normalize_grad_jvp(t, out, g, x, axis=-1, eps=1e-5):
    """J tg + dJ[tx] g, where dJ[tx] g = -s mean(xhat tx) y - s a J tx - s xhat mean(g J tx)."""
    dx = None
    if t[1] is not None:
        s, xhat = _rstd(x, axis, eps), _normalize(x, axis, eps)
        j_tx = _normalize_grad(t[1], x, axis, eps)
        a = anp.mean(g * xhat, axis, keepdims=True)
        dx = (-(s * anp.mean(xhat * t[1], axis, keepdims=True)) * out
              - (s * a) * j_tx - s * xhat * anp.mean(g * j_tx, axis, keepdims=True))
    return tangent_sum(None if t[0] is None else _normalize_grad(t[0], x, axis, eps), dx)


# --------------------------------------------------------------- layer_norm
def _layer_norm_shape(shapes, dtypes, eps=1e-5):
    x = tuple(shapes[0])
    if not x or tuple(shapes[1]) != x[-1:] or tuple(shapes[2]) != x[-1:]:
        raise ShapeError(f"layer_norm: gamma {list(shapes[1])} and beta {list(shapes[2])} must "
                         f"have shape [{x[-1] if x else '?'}] (x's last axis)")
    return x, float_dtype(promote(*dtypes))


def _layer_norm_vjp(g, out, x, gamma, beta, eps=1e-5):
    return (_normalize_grad(g * gamma, x, -1, eps), g * _normalize(x, -1, eps), g)


def _add_terms(*terms):
    """add_n of the non-None tangent terms (one term alone; None when there is none)."""
    terms = [term for term in terms if term is not None]
    return None if not terms else anp.add_n(*terms) if len(terms) > 1 else terms[0]


def _layer_norm_jvp(t, out, x, gamma, beta, eps=1e-5):
    return _add_terms(None if t[0] is None else _normalize_grad(t[0], x, -1, eps) * gamma,
                      None if t[1] is None else _normalize(x, -1, eps) * t[1], t[2])


# --------------------------------------------------------------- batch_norm
def _channel_axes(ndim: int) -> list[int]:
    return [a for a in range(ndim) if a != 1]


def _per_channel(v, ndim: int):
    """A (C,) tensor reshaped to broadcast along axis 1 of a rank-`ndim` tensor."""
    return anp.reshape(v, [1, v.shape[0]] + [1] * (ndim - 2))


def _per_channel_numpy(v, ndim: int):
    return np.reshape(v, (1, -1) + (1,) * (ndim - 2))


def _batch_norm_shape(shapes, dtypes, eps=1e-5):
    x = tuple(shapes[0])
    if len(x) < 2:
        raise ShapeError(f"batch_norm needs a tensor of rank >= 2 (N, C, ...), got {list(x)}")
    for i, s in enumerate(shapes[1:], start=1):
        if tuple(s) != (x[1],):
            raise ShapeError(f"batch_norm: operand {i} has shape {list(s)}; expected [{x[1]}] "
                             "(one value per channel)")
    return x, float_dtype(promote(*dtypes))


def _batch_norm_numpy(x, gamma, beta, eps=1e-5):
    xhat = normalize_numpy(x, _channel_axes(np.ndim(x)), eps)
    return _scale_shift(xhat, _per_channel_numpy(gamma, xhat.ndim),
                        _per_channel_numpy(beta, xhat.ndim))


def _batch_norm_vjp(g, out, x, gamma, beta, eps=1e-5):
    axes = _channel_axes(x.ndim)
    gx = _normalize_grad(g * _per_channel(gamma, x.ndim), x, axes, eps)
    return gx, anp.sum(g * _normalize(x, axes, eps), axes), anp.sum(g, axes)


def _batch_norm_jvp(t, out, x, gamma, beta, eps=1e-5):
    axes, n = _channel_axes(x.ndim), x.ndim
    return _add_terms(
        None if t[0] is None else _normalize_grad(t[0], x, axes, eps) * _per_channel(gamma, n),
        None if t[1] is None else _normalize(x, axes, eps) * _per_channel(t[1], n),
        None if t[2] is None else _per_channel(t[2], n))


def _batch_norm_eval_numpy(x, gamma, beta, mean, var, eps=1e-5):
    c = lambda v: _per_channel_numpy(v, x.ndim)  # noqa: E731
    return (x - c(mean)) / np.sqrt(c(var) + eps) * c(gamma) + c(beta)


def _eval_parts(x, mean, var, eps):
    rstd = 1.0 / anp.sqrt(_per_channel(var, x.ndim) + eps)
    return (x - _per_channel(mean, x.ndim)) * rstd, rstd


def _batch_norm_eval_vjp(g, out, x, gamma, beta, mean, var, eps=1e-5):
    axes = _channel_axes(x.ndim)
    xhat, rstd = _eval_parts(x, mean, var, eps)
    return (g * (_per_channel(gamma, x.ndim) * rstd), anp.sum(g * xhat, axes), anp.sum(g, axes),
            None, None)


def _batch_norm_eval_jvp(t, out, x, gamma, beta, mean, var, eps=1e-5):
    xhat, rstd = _eval_parts(x, mean, var, eps)
    return _add_terms(None if t[0] is None else t[0] * (_per_channel(gamma, x.ndim) * rstd),
                      None if t[1] is None else xhat * _per_channel(t[1], x.ndim),
                      None if t[2] is None else _per_channel(t[2], x.ndim))


OPS = [
    symmetric_op("normalize", _normalize_shape, normalize_numpy, elementwise_flops(5),
                 lambda v, out, x, axis=-1, eps=1e-5: _normalize_grad(v, x, axis, eps),
                 saves=(0,), arity=1,
                 doc="(x - mean) / sqrt(var + eps) over axis (biased variance); fused kernel"),
    OpDef("normalize_grad", _normalize_grad_shape, normalize_grad_numpy, elementwise_flops(12),
          vjp=_normalize_grad_vjp, jvp=_normalize_grad_jvp, saves=(0, 1, "out"), arity=2,
          doc="normalize's Jacobian at x applied to g (it is symmetric: VJP and JVP alike)"),
    OpDef("layer_norm", _layer_norm_shape,
          lambda x, gamma, beta, eps=1e-5: _scale_shift(normalize_numpy(x, -1, eps), gamma, beta),
          elementwise_flops(8), vjp=_layer_norm_vjp, jvp=_layer_norm_jvp, saves=(0, 1), arity=3,
          doc="normalise over the last axis (biased variance), then * gamma + beta"),
    OpDef("batch_norm", _batch_norm_shape, _batch_norm_numpy, elementwise_flops(8),
          vjp=_batch_norm_vjp, jvp=_batch_norm_jvp, saves=(0, 1), arity=3,
          doc="train form: batch statistics over every axis but 1 (biased variance)"),
    OpDef("batch_norm_eval", _batch_norm_shape, _batch_norm_eval_numpy, elementwise_flops(4),
          vjp=_batch_norm_eval_vjp, jvp=_batch_norm_eval_jvp, saves=(0, 1, 3, 4), arity=5,
          doc="eval form: running mean and variance as inputs; they get no gradient"),
]
