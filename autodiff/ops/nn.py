"""Linear algebra and neural-network ops: matmul, activations, losses, normalisation."""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import OpDef, ShapeError, broadcast_shapes, promote


def _matmul_shape(shapes, dtypes, **attrs):
    a, b = (tuple(s) for s in shapes)
    if not a or not b:
        raise ShapeError("matmul operands must have at least one dimension")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(f"contracted dimensions differ: {a2[-1]} vs {b2[-2]}")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out, promote(*dtypes)


def _matmul_flops(shapes, out_shape, **attrs):
    return 2 * math.prod(out_shape) * shapes[0][-1]


def _matmul_vjp(g, out, a, b):
    if a.ndim == 1 and b.ndim == 1:
        return g * b, g * a
    a2 = anp.reshape(a, [1, a.shape[0]]) if a.ndim == 1 else a
    b2 = anp.reshape(b, [b.shape[0], 1]) if b.ndim == 1 else b
    g2 = g
    if a.ndim == 1:
        g2 = anp.expand_dims(g2, -2)
    if b.ndim == 1:
        g2 = anp.expand_dims(g2, -1)
    ga = anp.matmul(g2, anp.swapaxes(b2, -1, -2))
    gb = anp.matmul(anp.swapaxes(a2, -1, -2), g2)
    if a.ndim == 1:
        ga = anp.sum(ga, list(range(ga.ndim - 1))) if ga.ndim > 2 else anp.reshape(ga, list(a.shape))
    if b.ndim == 1:
        gb = anp.sum(gb, list(range(gb.ndim - 2)) + [gb.ndim - 1]) if gb.ndim > 2 else \
            anp.reshape(gb, list(b.shape))
    return ga, gb


def _matmul_jvp(t, out, a, b):
    terms = []
    if t[0] is not None:
        terms.append(anp.matmul(t[0], b))
    if t[1] is not None:
        terms.append(anp.matmul(a, t[1]))
    return None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]


OPS = [
    OpDef("matmul", _matmul_shape, lambda a, b: np.matmul(a, b), _matmul_flops,
          vjp=_matmul_vjp, jvp=_matmul_jvp, saves=(0, 1), arity=2),
]
