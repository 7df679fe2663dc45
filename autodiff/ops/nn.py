"""Linear algebra and neural-network ops: matmul, activations, losses, dropout.

FLOPs: matmul 2*M*N*K; relu, sigmoid, dropout one per element; gelu 8 per element (its cubic
and tanh); cross_entropy 4 per logit; mse 3 per element. Normalisation is in `norm`.
"""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.registry import (OpDef, ShapeError, broadcast_shapes, elementwise_flops,
                                   float_dtype, input_flops, promote, symmetric_op)
from autodiff.ops.elementwise import tangent_sum, unary_float_shape
from autodiff.ops.reduce import logsumexp_numpy


# ------------------------------------------------------------------ matmul
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


def _matmul_numpy(a, b):
    """np.matmul; a batched left operand times a matrix runs as one flattened GEMM."""
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
        return np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[-1:])
    return np.matmul(a, b)


def _matmul_flops(shapes, out_shape, **attrs):
    return 2 * math.prod(out_shape) * shapes[0][-1]


def _matmul_vjp(g, out, a, b):
    if a.ndim == 1 and b.ndim == 1:
        return g * b, g * a
    if a.ndim > 2 and b.ndim == 2:
        # Batched activations times a weight: one GEMM over the flattened batch for the
        # weight's gradient, instead of per-batch outer products summed afterwards.
        k, m = b.shape
        gb = anp.matmul(anp.transpose(anp.reshape(a, [-1, k])), anp.reshape(g, [-1, m]))
        return anp.matmul(g, anp.transpose(b)), gb
    a2 = anp.reshape(a, [1, a.shape[0]]) if a.ndim == 1 else a
    b2 = anp.reshape(b, [b.shape[0], 1]) if b.ndim == 1 else b
    g2 = anp.expand_dims(g, -2) if a.ndim == 1 else g
    if b.ndim == 1:
        g2 = anp.expand_dims(g2, -1)
    ga = anp.matmul(g2, anp.swapaxes(b2, -1, -2))
    gb = anp.matmul(anp.swapaxes(a2, -1, -2), g2)
    if a.ndim == 1:
        ga = (anp.sum(ga, list(range(ga.ndim - 1))) if ga.ndim > 2
              else anp.reshape(ga, list(a.shape)))
    if b.ndim == 1:
        gb = anp.sum(gb, list(range(gb.ndim - 2)) + [gb.ndim - 1]) if gb.ndim > 2 else \
            anp.reshape(gb, list(b.shape))
    return ga, gb


def _matmul_jvp(t, out, a, b):
    return tangent_sum(None if t[0] is None else anp.matmul(t[0], b),
                       None if t[1] is None else anp.matmul(a, t[1]))


# ------------------------------------------------------------- activations
def _positive(out):
    return anp.astype(anp.greater(out, 0), out.dtype)


GELU_C = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715


def _square_into_new(x):
    """x * x as a fresh array (never a numpy scalar), so later steps can work in place."""
    return np.multiply(x, x, out=np.empty(np.shape(x), np.result_type(x, np.float32)))


def _sigmoid_2u_into(v, x):
    """v <- sigmoid(2u), u = c (x + k x^3), in place; v holds x^2 on entry. GELU's tanh form
    rewritten with 1 + tanh(u) = 2 sigmoid(2u): one exp (vectorised) instead of a tanh."""
    v *= -2.0 * GELU_C * GELU_K
    v -= 2.0 * GELU_C
    v *= x                                # -2u
    with np.errstate(over="ignore"):      # exp(+large) = inf gives sigmoid 0, as it should
        np.exp(v, out=v)
    v += 1.0
    return np.divide(1.0, v, out=v)


def _gelu_numpy(x):
    """0.5 x (1 + tanh(u)) = x sigmoid(2u), u = c (x + k x^3), in place on one temporary."""
    s = _sigmoid_2u_into(_square_into_new(x), x)
    s *= x
    return s


def _gelu_grad_numpy(g, x):
    """g * gelu'(x), gelu'(x) = s (1 + 2 x u' (1 - s)) with s = sigmoid(2u): gelu's backward,
    fused in numpy (its hot path)."""
    w = _square_into_new(x)
    s = _sigmoid_2u_into(np.array(w), x)
    w *= 6.0 * GELU_C * GELU_K
    w += 2.0 * GELU_C
    w *= x                                # 2 x u'
    w -= w * s                            # 2 x u' (1 - s)
    w += 1.0
    w *= s
    w *= g
    return w


def _gelu_grad_shape(shapes, dtypes, **attrs):
    if tuple(shapes[0]) != tuple(shapes[1]):
        raise ShapeError(f"gelu_grad: gradient {list(shapes[0])} and x {list(shapes[1])} must "
                         "have the same shape")
    return tuple(shapes[1]), float_dtype(promote(*dtypes))


def _gelu_second_derivative(x):
    """gelu''(x) = (1 - t^2) (u' + x (u'' - 2 t u'^2) / 2), u = c (x + k x^3), from graph ops."""
    t = anp.tanh((x + x * x * x * GELU_K) * GELU_C)
    du = (1 + x * x * (3 * GELU_K)) * GELU_C
    d2u = x * (6 * GELU_K * GELU_C)
    return (1 - t * t) * (du + x * (d2u - 2 * t * du * du) * 0.5)


def _sigmoid_numpy(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.result_type(x, np.float16))))


# ------------------------------------------------------------------ losses
def _cross_entropy_shape(shapes, dtypes):
    logits, labels = tuple(shapes[0]), tuple(shapes[1])
    if not logits or logits[:-1] != labels:
        raise ShapeError(f"cross_entropy: labels of shape {list(labels)} must be logits' shape "
                         f"{list(logits)} without its last (class) axis")
    if not dtypes[1].startswith(("int", "uint")):
        raise ShapeError(f"cross_entropy: labels must be integers, got {dtypes[1]}")
    return (), float_dtype(dtypes[0])


def _cross_entropy_numpy(logits, labels):
    picked = np.take_along_axis(logits, np.asarray(labels, dtype=np.intp)[..., None], -1)[..., 0]
    return np.mean(logsumexp_numpy(logits, -1) - picked)


def _softmax_minus_onehot(logits, labels):
    """d(cross-entropy summed over samples)/d logits = softmax(logits) - onehot(labels)."""
    classes = np.arange(logits.shape[-1], dtype=labels.dtype)
    onehot = anp.astype(anp.equal(anp.expand_dims(labels, -1), classes), logits.dtype)
    return anp.softmax(logits, -1) - onehot


def _cross_entropy_vjp(g, out, logits, labels):
    n = math.prod(labels.shape)
    return _softmax_minus_onehot(logits, labels) * (g * (1.0 / n)), None


def _cross_entropy_jvp(t, out, logits, labels):
    return None if t[0] is None else (anp.sum(t[0] * _softmax_minus_onehot(logits, labels))
                                      * (1.0 / math.prod(labels.shape)))


def _mse_shape(shapes, dtypes):
    broadcast_shapes(*shapes)
    return (), float_dtype(promote(*dtypes))


def _mse_vjp(g, out, pred, target):
    n = math.prod(broadcast_shapes(pred.shape, target.shape))
    d = (pred - target) * (g * (2.0 / n))
    return d, -d


def _mse_jvp(t, out, pred, target):
    n = math.prod(broadcast_shapes(pred.shape, target.shape))
    dt = t[0] if t[1] is None else -t[1] if t[0] is None else t[0] - t[1]
    return anp.sum((pred - target) * dt) * (2.0 / n)


def _mse_flops(shapes, out_shape, **attrs):
    return 3 * math.prod(broadcast_shapes(*shapes))


# ----------------------------------------------------------------- dropout
def _dropout_shape(shapes, dtypes, rate):
    if not 0.0 <= rate < 1.0:
        raise ShapeError(f"dropout rate must be in [0, 1), got {rate}")
    if broadcast_shapes(*shapes) != tuple(shapes[0]):
        raise ShapeError(f"dropout mask {list(shapes[1])} does not broadcast to x "
                         f"{list(shapes[0])}")
    return tuple(shapes[0]), dtypes[0]


OPS = [
    OpDef("matmul", _matmul_shape, _matmul_numpy, _matmul_flops,
          vjp=_matmul_vjp, jvp=_matmul_jvp, saves=(0, 1), arity=2),
    symmetric_op("relu", lambda shapes, dtypes: (tuple(shapes[0]), dtypes[0]),
                 lambda x: np.maximum(x, 0), elementwise_flops(1),
                 lambda v, out, x: v * _positive(out), saves=("out",), arity=1,
                 doc="max(x, 0); subgradient convention relu'(0) = 0"),
    symmetric_op("gelu", unary_float_shape, _gelu_numpy, elementwise_flops(8),
                 lambda v, out, x: anp.apply("gelu_grad", v, x), saves=(0,), arity=1,
                 doc="GELU, tanh approximation (GPT-2; torch gelu(approximate='tanh'))"),
    OpDef("gelu_grad", _gelu_grad_shape, _gelu_grad_numpy, elementwise_flops(12),
          vjp=lambda gg, out, g, x: (anp.apply("gelu_grad", gg, x),
                                     gg * g * _gelu_second_derivative(x)),
          jvp=lambda t, out, g, x: tangent_sum(
              None if t[0] is None else anp.apply("gelu_grad", t[0], x),
              None if t[1] is None else t[1] * g * _gelu_second_derivative(x)),
          saves=(0, 1), arity=2,
          doc="g * gelu'(x): gelu's backward, fused; differentiable again"),
    symmetric_op("sigmoid", unary_float_shape, _sigmoid_numpy, elementwise_flops(1),
                 lambda v, out, x: v * out * (1 - out), saves=("out",), arity=1),
    OpDef("cross_entropy", _cross_entropy_shape, _cross_entropy_numpy, input_flops(4),
          vjp=_cross_entropy_vjp, jvp=_cross_entropy_jvp, saves=(0, 1), arity=2,
          doc="mean over samples of logsumexp(logits) - logits[label]; stable; labels get no "
              "gradient"),
    OpDef("mse", _mse_shape, lambda p, t: np.mean(np.square(np.subtract(p, t))), _mse_flops,
          vjp=_mse_vjp, jvp=_mse_jvp, saves=(0, 1), arity=2,
          doc="mean squared error over all (broadcast) elements"),
    OpDef("dropout", _dropout_shape, lambda x, mask, rate: x * mask / (1.0 - rate),
          elementwise_flops(1),
          vjp=lambda g, out, x, mask, rate: (g * mask * (1.0 / (1.0 - rate)), None),
          jvp=lambda t, out, x, mask, rate: None if t[0] is None else
          t[0] * mask * (1.0 / (1.0 - rate)), saves=(1,), arity=2,
          doc="train form x * mask / (1 - rate); the mask gets no gradient"),
]
