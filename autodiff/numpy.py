"""numpy-style functions on traced Tensors (and on plain arrays, where they just compute).

Each records one registry op (a few compose two); with no Tensor among the arguments the op's
numpy forward runs directly, so model code works on arrays and under `trace` or `grad` alike.
"""
from __future__ import annotations

import builtins
import math
from typing import Sequence

import numpy as np

from autodiff.ir import FLOAT_DTYPES
from autodiff.ops.registry import lookup
from autodiff.trace import Tensor, TracingError, current_tracer, lift


def apply(op: str, *args, **attrs):
    """Apply registry op `op` to `args` (Tensors, arrays or Python numbers)."""
    tracer = current_tracer(args)
    if tracer is None:
        arrays = [np.asarray(a) for a in args]
        return lookup(op).forward(*arrays, **attrs)
    # Python numbers are weakly typed: they take the dtype of the tensor operands (a float
    # operand's first, so `where(mask, x, 0.0)` stays in x's dtype).
    tensors = [a for a in args if isinstance(a, Tensor)]
    tdtype = next((a.dtype for a in tensors if a.dtype in FLOAT_DTYPES),
                  tensors[0].dtype if tensors else None)
    inputs = []
    for a in args:
        dtype = None   # Tensors and arrays keep theirs
        if isinstance(a, bool):
            dtype = "bool"
        elif isinstance(a, (int, float)):
            dtype = tdtype if tdtype in FLOAT_DTYPES or isinstance(a, int) else "float64"
        inputs.append(lift(tracer, a, dtype))
    return tracer.emit(op, inputs, attrs)


# --------------------------------------------------------------- elementwise
def add(a, b): return apply("add", a, b)
def subtract(a, b): return apply("subtract", a, b)
def multiply(a, b): return apply("multiply", a, b)
def divide(a, b): return apply("divide", a, b)
def negative(x): return apply("negative", x)
def power(a, b): return apply("power", a, b)
def exp(x): return apply("exp", x)
def log(x): return apply("log", x)
def sin(x): return apply("sin", x)
def cos(x): return apply("cos", x)
def tanh(x): return apply("tanh", x)
def sqrt(x): return apply("sqrt", x)
def abs(x): return apply("abs", x)  # noqa: A001 - numpy's name
def sign(x): return apply("sign", x)
def maximum(a, b): return apply("maximum", a, b)
def minimum(a, b): return apply("minimum", a, b)
def where(cond, a, b): return apply("where", cond, a, b)
def greater(a, b): return apply("greater", a, b)
def less(a, b): return apply("less", a, b)
def greater_equal(a, b): return apply("greater_equal", a, b)
def less_equal(a, b): return apply("less_equal", a, b)
def equal(a, b): return apply("equal", a, b)
def astype(x, dtype): return apply("astype", x, dtype=str(np.dtype(dtype)))
def square(x): return multiply(x, x)
def add_n(*xs): return apply("add_n", *xs)
def matmul(a, b): return apply("matmul", a, b)
def relu(x): return apply("relu", x)
def gelu(x): return apply("gelu", x)
def sigmoid(x): return apply("sigmoid", x)
def stop_gradient(x): return apply("stop_gradient", x)


def straight_through(x, levels: int = 256, lo: float = -1.0, hi: float = 1.0):
    """Uniform quantizer to `levels` values in [lo, hi]; its backward is the identity."""
    return apply("straight_through", x, levels=levels, lo=lo, hi=hi)


# ---------------------------------------------------------------- reductions
def sum(x, axis=None, keepdims=False):  # noqa: A001
    return apply("sum", x, axis=_axis(axis), keepdims=bool(keepdims))


def mean(x, axis=None, keepdims=False):
    return apply("mean", x, axis=_axis(axis), keepdims=bool(keepdims))


def max(x, axis=None, keepdims=False):  # noqa: A001
    return apply("max", x, axis=_axis(axis), keepdims=bool(keepdims))


def logsumexp(x, axis=-1, keepdims=False):
    return apply("logsumexp", x, axis=_axis(axis), keepdims=bool(keepdims))


def softmax(x, axis=-1): return apply("softmax", x, axis=int(axis))
def log_softmax(x, axis=-1): return apply("log_softmax", x, axis=int(axis))


def var(x, axis=None, keepdims=False):
    m = mean(x, axis, keepdims=True)
    return mean(square(x - m), axis, keepdims)


# -------------------------------------------------------------------- shapes
def reshape(x, shape):
    shape = [shape] if isinstance(shape, int) else [int(d) for d in shape]
    size = math.prod(x.shape) if isinstance(x, Tensor) else np.size(x)
    if shape.count(-1) == 1:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = size // known if known else 0
    return apply("reshape", x, shape=shape)


def transpose(x, axes=None):
    return apply("transpose", x, axes=None if axes is None else [int(a) for a in axes])


def swapaxes(x, a: int, b: int):
    nd = x.ndim if isinstance(x, Tensor) else np.ndim(x)
    axes = list(range(nd))
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, axes)


def expand_dims(x, axis: int):
    shape = list(x.shape)
    axis = axis % (len(shape) + 1)
    return reshape(x, shape[:axis] + [1] + shape[axis:])


def squeeze(x, axis: int):
    shape = list(x.shape)
    if shape[axis] != 1:
        raise TracingError(f"cannot squeeze axis {axis} of shape {shape}")
    del shape[axis]
    return reshape(x, shape)


def broadcast_to(x, shape): return apply("broadcast_to", x, shape=[int(d) for d in shape])
def concatenate(xs: Sequence, axis: int = 0): return apply("concatenate", *xs, axis=int(axis))
def stack(xs: Sequence, axis: int = 0): return apply("stack", *xs, axis=int(axis))
def take(table, indices, axis: int = 0): return apply("take", table, indices, axis=int(axis))


def getitem(x, index):
    """numpy indexing: ints, slices, None, Ellipsis and one integer array (a traced integer
    Tensor as the whole index is an embedding lookup: `take` along axis 0)."""
    if isinstance(index, Tensor):
        return take(x, index, axis=0)
    from autodiff.ops.shape import encode_index
    return apply("getitem", x, index=encode_index(index, x.shape if isinstance(x, Tensor)
                                                  else np.shape(x)))


def zeros_like(x):
    """Zeros of x's shape and dtype: one scalar const broadcast (no big constant in the graph)."""
    if not isinstance(x, Tensor):
        return np.zeros_like(x)
    return broadcast_to(lift(x.tracer, np.zeros((), dtype=x.dtype)), x.shape)


# ------------------------------------------------------------- neural layers
def cross_entropy(logits, labels):
    """Mean cross-entropy of `logits` (..., C) against integer class `labels` (...)."""
    return apply("cross_entropy", logits, labels)


def mse(pred, target):
    """Mean squared error over all elements."""
    return apply("mse", pred, target)


def layer_norm(x, gamma, beta, eps: float = 1e-5):
    """Normalise over the last axis, then scale by gamma and shift by beta."""
    return apply("layer_norm", x, gamma, beta, eps=float(eps))


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, *, training: bool = True,
               eps: float = 1e-5, momentum: float = 0.1):
    """Batch norm over every axis but axis 1 (channels): batch statistics in training (the
    updated running averages, when given as Tensors, recorded as state updates of the trace),
    else the running averages."""
    if not training:
        if running_mean is None or running_var is None:
            raise TracingError("batch_norm(training=False) needs running_mean and running_var")
        return apply("batch_norm_eval", x, gamma, beta, running_mean, running_var, eps=float(eps))
    y = apply("batch_norm", x, gamma, beta, eps=float(eps))
    if isinstance(running_mean, Tensor) and isinstance(running_var, Tensor):
        axes = [a for a in range(x.ndim) if a != 1]
        xs = stop_gradient(x)
        n = math.prod(x.shape[a] for a in axes)
        m = mean(xs, axes)
        v = var(xs, axes) * (n / builtins.max(n - 1, 1))  # unbiased, as PyTorch keeps it
        tracer = x.tracer
        tracer.updates[running_mean.name] = (running_mean * (1 - momentum) + m * momentum).name
        tracer.updates[running_var.name] = (running_var * (1 - momentum) + v * momentum).name
    return y


def dropout(x, rate: float, *, training: bool = True, seed: int = 0):
    """Inverted dropout: train form multiplies by a fresh Bernoulli(1-rate) mask / (1-rate)."""
    if not training or rate == 0.0:
        return x
    mask = random_bernoulli(x.shape, 1.0 - rate, seed=seed, dtype=x.dtype, tracer_of=x)
    return apply("dropout", x, mask, rate=float(rate))


def conv2d(x, w, stride: int = 1, padding: int = 0):
    """2-D convolution, NCHW input, (out, in, kh, kw) weights."""
    return apply("conv2d", x, w, stride=int(stride), padding=int(padding))


def max_pool2d(x, kernel: int, stride: int | None = None, padding: int = 0):
    return apply("max_pool2d", x, kernel=int(kernel), stride=int(stride or kernel),
                 padding=int(padding))


def avg_pool2d(x, kernel: int, stride: int | None = None, padding: int = 0):
    return apply("avg_pool2d", x, kernel=int(kernel), stride=int(stride or kernel),
                 padding=int(padding))


# ------------------------------------------------------------ random sources
def random_normal(shape, *, seed: int = 0, dtype: str = "float64", tracer_of=None, name=None):
    """A fresh standard-normal tensor each run (the reparameterization trick's noise)."""
    return _random("random_normal", shape, dtype, seed, tracer_of, name)


def random_bernoulli(shape, p: float, *, seed: int = 0, dtype: str = "float64", tracer_of=None,
                     name=None):
    return _random("random_bernoulli", shape, dtype, seed, tracer_of, name, p=float(p))


def _random(op, shape, dtype, seed, tracer_of, name, **attrs):
    tracer = current_tracer((tracer_of,))
    attrs = dict(shape=[int(d) for d in shape], dtype=str(np.dtype(dtype)), seed=int(seed), **attrs)
    if tracer is None:
        from autodiff.ops.sources import draw_random
        from autodiff.ir import Node
        return draw_random(Node(name or op, op, (), tuple(attrs["shape"]), attrs["dtype"], attrs),
                           step=0)
    return tracer.emit(op, [], attrs, name=name)


def _axis(axis):
    if axis is None or isinstance(axis, int):
        return axis
    return [int(a) for a in axis]

