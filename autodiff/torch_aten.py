"""Core ATen ops (torch.export after run_decompositions) mapped onto the op registry.

`HANDLERS[name](cx, *args, **kwargs)` emits registry ops for one FX node through `cx`, the
importer (autodiff/torch_import.py: `cx.tensor`, `cx.operand`, `cx.shape`, `cx.dtype`). Names
are `aten.<op>.<overload>`, or `aten.<op>` for every overload. A handler returns a Tensor, or
a tuple/list for multi-output ops (None where an output is never read); it raises Unsupported
for arguments it cannot express, which leaves the node opaque.
"""
from __future__ import annotations

from autodiff import numpy as anp


class Unsupported(Exception):
    """These arguments have no exact registry equivalent (the node is imported opaque)."""


def _binary(op):
    def handler(cx, a, b, *, alpha=1, rounding_mode=None):
        if rounding_mode is not None:
            raise Unsupported(f"rounding_mode={rounding_mode!r}")
        a, b = cx.operand(a), cx.operand(b)
        if alpha != 1:
            b = anp.multiply(b, alpha) if not isinstance(b, (int, float)) else b * alpha
        return anp.apply(op, a, b)
    return handler


def _rsub(cx, a, b, *, alpha=1):
    return _binary("subtract")(cx, b, a, alpha=alpha)


def _unary(op):
    return lambda cx, x: anp.apply(op, cx.tensor(x))


def _identity(cx, x, *args, **kwargs):
    return cx.tensor(x)


def _not_equal(cx, a, b):
    return anp.apply("logical_not", anp.equal(cx.operand(a), cx.operand(b)))


def _where(cx, cond, a, b):
    return anp.where(cx.tensor(cond), cx.operand(a), cx.operand(b))


def _to_copy(cx, x, *, dtype=None, **kwargs):
    x = cx.tensor(x)
    return x if cx.dtype == x.dtype else anp.astype(x, cx.dtype)


def _gelu(cx, x, *, approximate="none"):
    return anp.apply("gelu" if approximate == "tanh" else "gelu_erf", cx.tensor(x))


def _clamp(cx, x, lo=None, hi=None):
    x = cx.tensor(x)
    scalar = lambda v: v is None or isinstance(v, (int, float))  # noqa: E731
    if scalar(lo) and scalar(hi):
        return anp.apply("clamp", x, lo=None if lo is None else float(lo),
                         hi=None if hi is None else float(hi))
    if lo is not None:
        x = anp.maximum(x, cx.operand(lo))
    return x if hi is None else anp.minimum(x, cx.operand(hi))


def _leaky_relu(cx, x, slope=0.01):
    x = cx.tensor(x)
    return anp.where(anp.greater(x, 0), x, x * float(slope))


# ------------------------------------------------------------------ linear algebra
def _matmul(cx, a, b):
    return anp.matmul(cx.tensor(a), cx.tensor(b))


def _addmm(cx, bias, a, b, *, beta=1, alpha=1):
    y = anp.matmul(cx.tensor(a), cx.tensor(b))
    if alpha != 1:
        y = y * alpha
    bias = cx.tensor(bias)
    return anp.add(y, bias if beta == 1 else bias * beta)


def _convolution(cx, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if len(stride) != 2 or transposed or any(d != 1 for d in dilation):
        raise Unsupported("only 2-D, non-transposed, undilated convolutions")
    if len(set(stride)) != 1 or len(set(padding)) != 1:
        raise Unsupported(f"unequal strides {stride} or paddings {padding}")
    x, w = cx.tensor(x), cx.tensor(w)
    grouped = {} if groups == 1 else {"groups": int(groups)}
    y = anp.apply("grouped_conv2d" if grouped else "conv2d", x, w, stride=int(stride[0]),
                  padding=int(padding[0]), **grouped)
    if bias is None:
        return y
    return y + anp.reshape(cx.tensor(bias), [w.shape[0], 1, 1])


# ------------------------------------------------------------------ normalisation
def _layer_norm(cx, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = cx.tensor(x)
    k = len(normalized_shape)
    if k == 1 and weight is not None and bias is not None:
        return anp.apply("layer_norm", x, cx.tensor(weight), cx.tensor(bias), eps=float(eps)), \
            None, None
    y = anp.apply("normalize", x, axis=list(range(x.ndim - k, x.ndim)), eps=float(eps))
    if weight is not None:
        y = y * cx.tensor(weight)
    if bias is not None:
        y = y + cx.tensor(bias)
    return y, None, None


def _batch_norm(cx, x, weight, bias, mean, var, training, momentum, eps):
    x = cx.tensor(x)
    if weight is None or bias is None:
        raise Unsupported("batch norm without affine weight and bias")
    if training:
        y = anp.apply("batch_norm", x, cx.tensor(weight), cx.tensor(bias), eps=float(eps))
    else:
        y = anp.apply("batch_norm_eval", x, cx.tensor(weight), cx.tensor(bias), cx.tensor(mean),
                      cx.tensor(var), eps=float(eps))
    return y, None, None, None, None


def _batch_norm_no_training(cx, x, weight, bias, mean, var, momentum, eps):
    return _batch_norm(cx, x, weight, bias, mean, var, False, momentum, eps)[:3]


# ------------------------------------------------------------------ pooling
def _square(values, what):
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(set(values)) != 1:
        raise Unsupported(f"non-square {what} {values}")
    return int(values[0])


def _max_pool(cx, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    if ceil_mode or _square(dilation, "dilation") != 1:
        raise Unsupported("ceil_mode or dilation")
    k, s = _square(kernel, "kernel"), _square(stride or kernel, "stride")
    return anp.apply("max_pool2d", cx.tensor(x), kernel=k, stride=s,
                     padding=_square(padding, "padding")), None


def _avg_pool(cx, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    p = _square(padding, "padding")
    if ceil_mode or divisor_override is not None or (p and not count_include_pad):
        raise Unsupported("ceil_mode, divisor_override or count_include_pad=False")
    k, s = _square(kernel, "kernel"), _square(stride or kernel, "stride")
    return anp.apply("avg_pool2d", cx.tensor(x), kernel=k, stride=s, padding=p)


# ------------------------------------------------------------------ reductions
def _reduction(op):
    def handler(cx, x, dims=None, keepdim=False, *, dtype=None):
        x = cx.tensor(x)
        axis = None if dims is None or (isinstance(dims, (list, tuple)) and not dims) \
            else ([dims] if isinstance(dims, int) else list(dims))
        return anp.apply(op, x, axis=axis, keepdims=bool(keepdim))
    return handler


def _softmax(op):
    return lambda cx, x, dim, half_to_float=False: anp.apply(op, cx.tensor(x), axis=int(dim))


# ------------------------------------------------------------------ shapes
def _reshape(cx, x, *args, **kwargs):
    return anp.reshape(cx.tensor(x), list(cx.shape))


def _expand(cx, x, *args, **kwargs):
    return anp.broadcast_to(cx.tensor(x), list(cx.shape))


def _permute(cx, x, dims):
    return anp.transpose(cx.tensor(x), [int(d) for d in dims])


def _transpose(cx, x, d0=0, d1=1):
    return anp.swapaxes(cx.tensor(x), d0, d1)


def _select(cx, x, dim, index):
    x = cx.tensor(x)
    return x[(slice(None),) * (dim % x.ndim) + (int(index),)]


def _slice(cx, x, dim=0, start=None, end=None, step=1):
    x = cx.tensor(x)
    d = dim % x.ndim
    size = x.shape[d]
    start = None if start is None else max(min(int(start), size), -size)
    end = None if end is None else max(min(int(end), size), -size)
    return x[(slice(None),) * d + (slice(start, end, int(step)),)]


def _split_sizes(cx, x, sizes, dim=0):
    x = cx.tensor(x)
    d, out, start = dim % x.ndim, [], 0
    for size in sizes:
        out.append(x[(slice(None),) * d + (slice(start, start + int(size)),)])
        start += int(size)
    return out


def _split(cx, x, size, dim=0):
    x = cx.tensor(x)
    total = x.shape[dim % x.ndim]
    return _split_sizes(cx, x, [min(size, total - s) for s in range(0, total, size)], dim)


def _unbind(cx, x, dim=0):
    x = cx.tensor(x)
    d = dim % x.ndim
    return [x[(slice(None),) * d + (i,)] for i in range(x.shape[d])]


def _cat(cx, tensors, dim=0):
    return anp.concatenate([cx.tensor(t) for t in tensors], int(dim))


def _stack(cx, tensors, dim=0):
    return anp.stack([cx.tensor(t) for t in tensors], int(dim))


def _embedding(cx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    if scale_grad_by_freq:
        raise Unsupported("scale_grad_by_freq")
    return anp.take(cx.tensor(weight), cx.tensor(indices), 0)


def _index_select(cx, x, dim, index):
    return anp.take(cx.tensor(x), cx.tensor(index), int(dim))


def _dropout(cx, x, p, train):
    if train and p > 0:
        raise Unsupported("dropout in training mode (call module.eval() or set p=0)")
    return cx.tensor(x), None


def _skip(cx, *args, **kwargs):
    return None


_BINARY = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "pow": "power",
           "maximum": "maximum", "minimum": "minimum", "eq": "equal", "lt": "less",
           "le": "less_equal", "gt": "greater", "ge": "greater_equal",
           "logical_and": "logical_and", "logical_or": "logical_or",
           "bitwise_and": "logical_and", "bitwise_or": "logical_or"}
_UNARY = {"neg": "negative", "abs": "abs", "exp": "exp", "log": "log", "sin": "sin",
          "cos": "cos", "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "sqrt": "sqrt",
          "rsqrt": "rsqrt", "erf": "erf", "reciprocal": "reciprocal", "sign": "sign",
          "logical_not": "logical_not", "bitwise_not": "logical_not", "silu": "silu",
          "hardswish": "hardswish", "hardsigmoid": "hardsigmoid"}

HANDLERS = {
    **{f"aten.{k}": _binary(v) for k, v in _BINARY.items()},
    **{f"aten.{k}": _unary(v) for k, v in _UNARY.items()},
    "aten.rsub": _rsub, "aten.ne": _not_equal, "aten.where": _where, "aten.gelu": _gelu,
    "aten.clamp": _clamp, "aten.clamp_min": lambda cx, x, lo: _clamp(cx, x, lo, None),
    "aten.clamp_max": lambda cx, x, hi: _clamp(cx, x, None, hi),
    "aten.hardtanh": lambda cx, x, lo=-1.0, hi=1.0: _clamp(cx, x, lo, hi),
    "aten.leaky_relu": _leaky_relu, "aten.detach": _unary("stop_gradient"),
    "aten.clone": _identity, "aten.alias": _identity, "aten.contiguous": _identity,
    "aten.lift_fresh_copy": _identity, "aten._to_copy": _to_copy,
    "aten.mm": _matmul, "aten.bmm": _matmul, "aten.matmul": _matmul, "aten.addmm": _addmm,
    "aten.convolution": _convolution,
    "aten.native_layer_norm": _layer_norm,
    "aten._native_batch_norm_legit_functional": _batch_norm,
    "aten._native_batch_norm_legit": _batch_norm, "aten.native_batch_norm": _batch_norm,
    "aten._native_batch_norm_legit_no_training": _batch_norm_no_training,
    "aten.max_pool2d_with_indices": _max_pool, "aten.avg_pool2d": _avg_pool,
    "aten.mean": _reduction("mean"), "aten.sum": _reduction("sum"),
    "aten.amax": _reduction("max"), "aten.any": _reduction("any"),
    "aten._softmax": _softmax("softmax"), "aten._log_softmax": _softmax("log_softmax"),
    "aten.view": _reshape, "aten._unsafe_view": _reshape, "aten.reshape": _reshape,
    "aten.unsqueeze": _reshape, "aten.squeeze": _reshape, "aten.flatten": _reshape,
    "aten.expand": _expand, "aten.permute": _permute, "aten.transpose": _transpose,
    "aten.t": lambda cx, x: anp.transpose(cx.tensor(x)),
    "aten.select": _select, "aten.slice": _slice, "aten.split_with_sizes": _split_sizes,
    "aten.split": _split, "aten.unbind": _unbind, "aten.cat": _cat, "aten.stack": _stack,
    "aten.embedding": _embedding, "aten.index_select": _index_select,
    "aten.native_dropout": _dropout,
    "aten._assert_tensor_metadata": _skip, "aten._assert_scalar": _skip,
    "aten.sym_constrain_range_for_size": _skip,
}

# Ops whose result depends only on an operand's shape and dtype, not on its values.
SHAPE_ONLY = {"aten.full_like", "aten.zeros_like", "aten.ones_like", "aten.empty_like",
              "aten.new_zeros", "aten.new_ones", "aten.new_full", "aten.new_empty"}
# Ops that draw random numbers: never evaluated at import time.
RANDOM = {"aten.rand", "aten.randn", "aten.rand_like", "aten.randn_like", "aten.bernoulli",
          "aten.randint", "aten.randperm", "aten.native_dropout", "aten.normal", "aten.uniform"}

__all__ = ["HANDLERS", "RANDOM", "SHAPE_ONLY", "Unsupported"]
