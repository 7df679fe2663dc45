"""Activations and small elementwise ops that imported models need: exact (erf) GELU, SiLU,
hardswish, hardsigmoid, clamp, rsqrt, erf, reciprocal, and the boolean ops masks use.

Gradient conventions follow PyTorch's, so imported models train as they would there: clamp
passes the gradient where lo <= x <= hi (bounds included); hardsigmoid's slope is 1/6 strictly
inside (-3, 3); hardswish's is (2x + 3) / 6 on [-3, 3], 0 below and 1 above.
FLOPs per element: gelu_erf 8, silu 4, hardswish and hardsigmoid 3, erf 4, clamp 2, rsqrt and
reciprocal 1; logical ops 1; `any` one per input element.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

from autodiff import numpy as anp
from autodiff.ops.elementwise import compare_shape, same_shape, tangent_sum, unary_float_shape
from autodiff.ops.registry import OpDef, elementwise_flops, float_array, input_flops, symmetric_op
from autodiff.ops.reduce import reduce_shape, _np_axis

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _float_forward(fn):
    """numpy forward fn(x) on x as float (ints become float64), returned in that dtype (mask
    arithmetic in numpy promotes to float64 from bool)."""
    def forward(x):
        x = float_array(x)
        return np.asarray(fn(x), dtype=x.dtype)
    return forward


# ------------------------------------------------------------------ erf, gelu_erf
def _erf_slope(x, dtype):
    return anp.exp(-(x * x)) * TWO_OVER_SQRT_PI


def _gelu_erf_slope(x, dtype):
    """Phi(x) + x phi(x): the exact GELU's derivative, from graph ops (differentiable again)."""
    cdf = (anp.apply("erf", x * SQRT_HALF) + 1.0) * 0.5
    return cdf + x * anp.exp(x * x * -0.5) * INV_SQRT_2PI


# ------------------------------------------------------------------ silu
@_float_forward
def _silu_numpy(x):
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def _silu_slope(x, dtype):
    s = anp.sigmoid(x)
    return s * (x * (1 - s) + 1)


# ------------------------------------------------------------------ hard activations
def _hardsigmoid_slope(x, dtype):
    inside = anp.astype(anp.greater(x, -3.0), dtype) * anp.astype(anp.less(x, 3.0), dtype)
    return inside * (1.0 / 6.0)


def _hardswish_slope(x, dtype):
    middle = _clamp_mask(x, -3.0, 3.0, dtype)
    above = anp.astype(anp.greater(x, 3.0), dtype)
    return middle * (x * (1.0 / 3.0) + 0.5) + above


# ------------------------------------------------------------------ clamp
def _clamp_numpy(x, lo=None, hi=None):
    out = np.asarray(x)
    if lo is not None:
        out = np.maximum(out, np.asarray(lo, dtype=out.dtype))
    if hi is not None:
        out = np.minimum(out, np.asarray(hi, dtype=out.dtype))
    return np.array(out, copy=True)


def _clamp_mask(x, lo, hi, dtype):
    mask = None
    if lo is not None:
        mask = anp.astype(anp.greater_equal(x, lo), dtype)
    if hi is not None:
        upper = anp.astype(anp.less_equal(x, hi), dtype)
        mask = upper if mask is None else mask * upper
    return mask


def _clamp_vjp(g, out, x, lo=None, hi=None):
    mask = _clamp_mask(x, lo, hi, out.dtype)
    return (g if mask is None else g * mask,)


def _clamp_jvp(t, out, x, lo=None, hi=None):
    mask = _clamp_mask(x, lo, hi, out.dtype)
    return t[0] if mask is None else t[0] * mask


# ------------------------------------------------------------------ boolean ops
def _any_shape(shapes, dtypes, axis=None, keepdims=False):
    return reduce_shape(shapes, dtypes, axis, keepdims)[0], "bool"


def _unary(name, forward, slope, flops, doc, saves=(0,)):
    """An elementwise op whose VJP and JVP multiply by slope(x, dtype)."""
    return symmetric_op(name, unary_float_shape, forward, elementwise_flops(flops),
                        lambda v, out, x: v * slope(x, out.dtype), saves=saves, arity=1, doc=doc)


OPS = [
    _unary("erf", _float_forward(special.erf), _erf_slope, 4, "the error function"),
    _unary("gelu_erf", _float_forward(lambda x: 0.5 * x * (1.0 + special.erf(x * SQRT_HALF))),
           _gelu_erf_slope, 8, "exact GELU x * Phi(x) (torch gelu(approximate='none'), BERT, ViT)"),
    _unary("silu", _silu_numpy, _silu_slope, 4, "x * sigmoid(x) (swish)"),
    _unary("hardsigmoid", _float_forward(lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0)),
           _hardsigmoid_slope, 3,
           "clip(x / 6 + 1/2, 0, 1); slope 1/6 strictly inside (-3, 3), as torch"),
    _unary("hardswish", _float_forward(lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
           _hardswish_slope, 3,
           "x * clip(x + 3, 0, 6) / 6; slope (2x + 3) / 6 on [-3, 3], 1 above, as torch"),
    symmetric_op("rsqrt", unary_float_shape, lambda x: 1.0 / np.sqrt(float_array(x)),
                 elementwise_flops(1), lambda v, out, x: v * out * out * out * -0.5,
                 saves=("out",), arity=1, doc="1 / sqrt(x) (RMS norm)"),
    symmetric_op("reciprocal", unary_float_shape, lambda x: 1.0 / float_array(x),
                 elementwise_flops(1), lambda v, out, x: -(v * out * out), saves=("out",),
                 arity=1, doc="1 / x"),
    OpDef("clamp", same_shape, _clamp_numpy, elementwise_flops(2),
          vjp=_clamp_vjp, jvp=_clamp_jvp, saves=(0,), arity=1,
          doc="clip x to [lo, hi] (either may be None); gradient where lo <= x <= hi, as torch"),
    OpDef("logical_not", compare_shape, lambda x: np.logical_not(x), elementwise_flops(1),
          arity=1, doc="boolean not; no gradient"),
    OpDef("logical_and", compare_shape, lambda a, b: np.logical_and(a, b), elementwise_flops(1),
          arity=2, doc="boolean and; no gradient"),
    OpDef("logical_or", compare_shape, lambda a, b: np.logical_or(a, b), elementwise_flops(1),
          arity=2, doc="boolean or; no gradient"),
    OpDef("any", _any_shape, lambda x, axis=None, keepdims=False:
          np.any(x, axis=_np_axis(axis), keepdims=keepdims), input_flops(1), arity=1,
          doc="whether any element along axis is true; no gradient"),
]

__all__ = ["OPS", "tangent_sum"]
