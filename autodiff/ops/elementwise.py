"""Elementwise ops: numpy broadcasting; reverse mode sums gradients back to operand shapes.

FLOPs: one per output element for every op here (transcendentals included: the cost model
counts operations, not cycles). Comparisons, sign and stop_gradient have no gradient rule
(their derivative is zero, or by definition absent), so reverse mode never enters them.
"""
from __future__ import annotations

import numpy as np

from autodiff import numpy as anp
from autodiff.ir import FLOAT_DTYPES
from autodiff.ops.registry import (OpDef, ShapeError, broadcast_shapes, elementwise_flops,
                                   float_dtype, promote, symmetric_op)


def binary_shape(shapes, dtypes, **attrs):
    return broadcast_shapes(*shapes), promote(*dtypes)


def binary_float_shape(shapes, dtypes, **attrs):
    return broadcast_shapes(*shapes), float_dtype(promote(*dtypes))


def compare_shape(shapes, dtypes, **attrs):
    return broadcast_shapes(*shapes), "bool"


def unary_float_shape(shapes, dtypes, **attrs):
    return tuple(shapes[0]), float_dtype(dtypes[0])


def same_shape(shapes, dtypes, **attrs):
    return tuple(shapes[0]), dtypes[0]


def _where_shape(shapes, dtypes, **attrs):
    return broadcast_shapes(*shapes), promote(dtypes[1], dtypes[2])


def _astype_shape(shapes, dtypes, dtype):
    return tuple(shapes[0]), dtype


def tangent_sum(*terms):
    """Sum of the non-None tangent terms (None when all are zero)."""
    terms = [t for t in terms if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


def _scaled(t, factor):
    return None if t is None else t * factor


def _is_constant(t) -> bool:
    """A const node never receives a gradient, so rules may skip computing one for it."""
    return t.node.op == "const"


def _safe_log(a):
    """log(a) where a > 0, else 0: the derivative of a**b in b, taken as 0 where a <= 0."""
    return anp.log(anp.where(anp.greater(a, 0), a, 1))


# ------------------------------------------------------------------ power
def _power_vjp(g, out, a, b):
    ga = None if _is_constant(a) else g * b * anp.power(a, b - 1)
    gb = None if _is_constant(b) else g * anp.power(a, b) * _safe_log(a)
    return ga, gb


def _power_jvp(t, out, a, b):
    return tangent_sum(None if t[0] is None else t[0] * b * anp.power(a, b - 1),
                        None if t[1] is None else t[1] * out * _safe_log(a))


# ------------------------------------------------------ maximum / minimum
def _extremum_rules(first_wins):
    """VJP and JVP of maximum (first_wins=greater) or minimum (first_wins=less): a's share of
    the gradient is 1 where it wins, 0.5 at ties, 0 where it loses."""
    def share(a, b, dtype):
        x, y = (a, b) if first_wins == "greater" else (b, a)
        return anp.astype(anp.greater(x, y), dtype) + anp.astype(anp.equal(x, y), dtype) * 0.5

    def vjp(g, out, a, b):
        s = share(a, b, out.dtype)
        return g * s, g * (1 - s)

    def jvp(t, out, a, b):
        s = share(a, b, out.dtype)
        return tangent_sum(_scaled(t[0], s), _scaled(t[1], 1 - s))
    return vjp, jvp


_maximum_vjp, _maximum_jvp = _extremum_rules("greater")
_minimum_vjp, _minimum_jvp = _extremum_rules("less")


# -------------------------------------------------------------------- where
def _where_vjp(g, out, cond, a, b):
    zero = np.zeros((), dtype=g.dtype)
    return None, anp.where(cond, g, zero), anp.where(cond, zero, g)


def _where_jvp(t, out, cond, a, b):
    if t[1] is None and t[2] is None:
        return None
    zero = np.zeros((), dtype=out.dtype)
    return anp.where(cond, zero if t[1] is None else t[1], zero if t[2] is None else t[2])


# ------------------------------------------------------------------- astype
def _astype_vjp(g, out, x, dtype):
    return (anp.astype(g, x.dtype) if x.dtype in FLOAT_DTYPES else None,)


def _astype_jvp(t, out, x, dtype):
    return anp.astype(t[0], dtype) if dtype in FLOAT_DTYPES else None


# --------------------------------------------------------- straight-through
def _check_quantizer(levels, lo, hi):
    if levels < 2 or not hi > lo:
        raise ShapeError(f"straight_through needs levels >= 2 and hi > lo, got levels={levels}, "
                         f"lo={lo}, hi={hi}")


def _quantize(x, levels, lo, hi):
    _check_quantizer(levels, lo, hi)
    step = (hi - lo) / (levels - 1)
    return np.round((np.clip(x, lo, hi) - lo) / step) * step + lo


def _straight_through_shape(shapes, dtypes, levels, lo, hi):
    _check_quantizer(levels, lo, hi)
    return tuple(shapes[0]), float_dtype(dtypes[0])


def _comparison(name, fn):
    return OpDef(name, compare_shape, fn, elementwise_flops(1), arity=2,
                 doc=f"numpy.{name}: bool output, no gradient")


OPS = [
    OpDef("add", binary_shape, lambda a, b: np.add(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g, g),
          jvp=lambda t, out, a, b: tangent_sum(t[0], t[1]), arity=2),
    OpDef("subtract", binary_shape, lambda a, b: np.subtract(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g, -g),
          jvp=lambda t, out, a, b: tangent_sum(t[0], None if t[1] is None else -t[1]), arity=2),
    OpDef("multiply", binary_shape, lambda a, b: np.multiply(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g * b, g * a),
          jvp=lambda t, out, a, b: tangent_sum(_scaled(t[0], b), _scaled(t[1], a)),
          saves=(0, 1), arity=2),
    OpDef("divide", binary_float_shape, lambda a, b: np.divide(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g / b, -g * out / b),
          jvp=lambda t, out, a, b: tangent_sum(None if t[0] is None else t[0] / b,
                                                None if t[1] is None else -t[1] * out / b),
          saves=(1, "out"), arity=2, doc="true division; integer operands give float64"),
    symmetric_op("negative", same_shape, lambda x: np.negative(x), elementwise_flops(1),
                 lambda v, out, x: -v, arity=1),
    OpDef("power", binary_shape, lambda a, b: np.power(a, b), elementwise_flops(1),
          vjp=_power_vjp, jvp=_power_jvp, saves=(0, 1), arity=2,
          doc="a**b; d/db = a**b log(a) taken as 0 where a <= 0 (as torch does at a = 0)"),
    symmetric_op("exp", unary_float_shape, lambda x: np.exp(x), elementwise_flops(1),
                 lambda v, out, x: v * out, saves=("out",), arity=1),
    symmetric_op("log", unary_float_shape, lambda x: np.log(x), elementwise_flops(1),
                 lambda v, out, x: v / x, saves=(0,), arity=1),
    symmetric_op("sin", unary_float_shape, lambda x: np.sin(x), elementwise_flops(1),
                 lambda v, out, x: v * anp.cos(x), saves=(0,), arity=1),
    symmetric_op("cos", unary_float_shape, lambda x: np.cos(x), elementwise_flops(1),
                 lambda v, out, x: -(v * anp.sin(x)), saves=(0,), arity=1),
    symmetric_op("tanh", unary_float_shape, lambda x: np.tanh(x), elementwise_flops(1),
                 lambda v, out, x: v * (1 - out * out), saves=("out",), arity=1),
    symmetric_op("sqrt", unary_float_shape, lambda x: np.sqrt(x), elementwise_flops(1),
                 lambda v, out, x: v / (out * 2), saves=("out",), arity=1),
    symmetric_op("abs", same_shape, lambda x: np.abs(x), elementwise_flops(1),
                 lambda v, out, x: v * anp.sign(x), saves=(0,), arity=1,
                 doc="|x|; subgradient convention abs'(0) = 0 (= sign(0))"),
    OpDef("sign", same_shape, lambda x: np.sign(x), elementwise_flops(1), arity=1,
          doc="sign(x); derivative zero almost everywhere, so no gradient rule"),
    OpDef("maximum", binary_shape, lambda a, b: np.maximum(a, b), elementwise_flops(1),
          vjp=_maximum_vjp, jvp=_maximum_jvp, saves=(0, 1), arity=2,
          doc="elementwise max; at ties a and b each get half the gradient"),
    OpDef("minimum", binary_shape, lambda a, b: np.minimum(a, b), elementwise_flops(1),
          vjp=_minimum_vjp, jvp=_minimum_jvp, saves=(0, 1), arity=2,
          doc="elementwise min; at ties a and b each get half the gradient"),
    OpDef("where", _where_shape, lambda c, a, b: np.where(c, a, b), elementwise_flops(1),
          vjp=_where_vjp, jvp=_where_jvp, saves=(0,), arity=3,
          doc="where(cond, a, b); cond gets no gradient"),
    _comparison("greater", lambda a, b: np.greater(a, b)),
    _comparison("less", lambda a, b: np.less(a, b)),
    _comparison("greater_equal", lambda a, b: np.greater_equal(a, b)),
    _comparison("less_equal", lambda a, b: np.less_equal(a, b)),
    _comparison("equal", lambda a, b: np.equal(a, b)),
    OpDef("astype", _astype_shape, lambda x, dtype: np.asarray(x).astype(dtype),
          vjp=_astype_vjp, jvp=_astype_jvp, arity=1,
          doc="dtype conversion; gradient cast back to the input dtype (none for int inputs)"),
    OpDef("stop_gradient", same_shape, lambda x: np.array(x, copy=True), arity=1,
          doc="identity forward; no gradient flows through it"),
    symmetric_op("straight_through", _straight_through_shape,
                 lambda x, levels, lo, hi: _quantize(x, levels, lo, hi), elementwise_flops(1),
                 lambda v, out, x, **q: v, arity=1,
                 doc="uniform quantizer to `levels` values in [lo, hi]; backward is the "
                     "identity (straight-through estimator)"),
    OpDef("add_n", lambda shapes, dtypes: (broadcast_shapes(*shapes), promote(*dtypes)),
          lambda *xs: _add_n(xs),
          lambda shapes, out, **a: max(len(shapes) - 1, 0) * int(np.prod(out)),
          vjp=lambda g, out, *xs: tuple(g for _ in xs),
          jvp=lambda t, out, *xs: tangent_sum(*t),
          doc="sum of n tensors: fan-out gradient accumulation, split per device by the executor"),
]


def _add_n(xs):
    out = np.add(xs[0], xs[1]) if len(xs) > 1 else np.array(xs[0], copy=True)
    for x in xs[2:]:
        out += x
    return out
