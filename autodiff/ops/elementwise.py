"""Elementwise ops: numpy broadcasting; reverse mode sums gradients back to operand shapes."""
from __future__ import annotations

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import OpDef, broadcast_shapes, elementwise_flops, float_dtype, promote


def binary_shape(shapes, dtypes, **attrs):
    return broadcast_shapes(*shapes), promote(*dtypes)


def unary_float_shape(shapes, dtypes, **attrs):
    return tuple(shapes[0]), float_dtype(dtypes[0])


def same_shape(shapes, dtypes, **attrs):
    return tuple(shapes[0]), dtypes[0]


def _tangent_sum(*terms):
    """Sum of the non-None tangent terms (None when all are zero)."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _scaled(t, factor):
    return None if t is None else t * factor


OPS = [
    OpDef("add", binary_shape, lambda a, b: np.add(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g, g),
          jvp=lambda t, out, a, b: _tangent_sum(t[0], t[1]), arity=2),
    OpDef("subtract", binary_shape, lambda a, b: np.subtract(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g, -g),
          jvp=lambda t, out, a, b: _tangent_sum(t[0], None if t[1] is None else -t[1]), arity=2),
    OpDef("multiply", binary_shape, lambda a, b: np.multiply(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g * b, g * a),
          jvp=lambda t, out, a, b: _tangent_sum(_scaled(t[0], b), _scaled(t[1], a)),
          saves=(0, 1), arity=2),
    OpDef("divide", binary_shape, lambda a, b: np.divide(a, b), elementwise_flops(1),
          vjp=lambda g, out, a, b: (g / b, -g * out / b),
          jvp=lambda t, out, a, b: _tangent_sum(None if t[0] is None else t[0] / b,
                                                None if t[1] is None else -t[1] * out / b),
          saves=(1, "out"), arity=2),
    OpDef("negative", same_shape, lambda x: np.negative(x), elementwise_flops(1),
          vjp=lambda g, out, x: (-g,), jvp=lambda t, out, x: -t[0], arity=1),
    OpDef("exp", unary_float_shape, lambda x: np.exp(x), elementwise_flops(1),
          vjp=lambda g, out, x: (g * out,), jvp=lambda t, out, x: t[0] * out,
          saves=("out",), arity=1),
    OpDef("log", unary_float_shape, lambda x: np.log(x), elementwise_flops(1),
          vjp=lambda g, out, x: (g / x,), jvp=lambda t, out, x: t[0] / x, saves=(0,), arity=1),
    OpDef("sin", unary_float_shape, lambda x: np.sin(x), elementwise_flops(1),
          vjp=lambda g, out, x: (g * anp.cos(x),), jvp=lambda t, out, x: t[0] * anp.cos(x),
          saves=(0,), arity=1),
    OpDef("cos", unary_float_shape, lambda x: np.cos(x), elementwise_flops(1),
          vjp=lambda g, out, x: (-(g * anp.sin(x)),), jvp=lambda t, out, x: -(t[0] * anp.sin(x)),
          saves=(0,), arity=1),
    OpDef("add_n", lambda shapes, dtypes: (broadcast_shapes(*shapes), promote(*dtypes)),
          lambda *xs: _add_n(xs), lambda shapes, out, **a: max(len(shapes) - 1, 0) * int(np.prod(out)),
          vjp=lambda g, out, *xs: tuple(g for _ in xs),
          jvp=lambda t, out, *xs: _tangent_sum(*t),
          doc="sum of n tensors: fan-out gradient accumulation, split per device by the executor"),
]


def _add_n(xs):
    out = np.add(xs[0], xs[1]) if len(xs) > 1 else np.array(xs[0], copy=True)
    for x in xs[2:]:
        out += x
    return out
