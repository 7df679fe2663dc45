"""Convolution and pooling ops on NCHW tensors (square kernels, symmetric padding).

conv2d runs as im2col on a strided view (numpy sliding_window_view) and one tensordot; its
gradients are ops of their own (conv_ops). Pooling gradients go through unfold2d / fold2d, a
pair of mutually adjoint linear ops.

FLOPs: conv2d and both of its gradients 2 * out_elems * Cin * kh * kw (out_elems of the
forward output); pooling one per window element; fold2d one addition per element it scatters;
unfold2d 0 (it copies).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from autodiff import numpy as anp
from autodiff.ops.elementwise import tangent_sum
from autodiff.ops.registry import OpDef, ShapeError, float_dtype, input_flops, promote


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def _check_geometry(op, x_shape, kh, kw, stride, padding):
    """(Ho, Wo) of a window sweep over NCHW `x_shape`; ShapeError when it does not fit."""
    if len(x_shape) != 4:
        raise ShapeError(f"{op}: input must be NCHW (rank 4), got shape {list(x_shape)}")
    if stride < 1 or padding < 0:
        raise ShapeError(f"{op}: stride must be >= 1 and padding >= 0, got stride={stride}, "
                         f"padding={padding}")
    ho = _out_size(x_shape[2], kh, stride, padding)
    wo = _out_size(x_shape[3], kw, stride, padding)
    if ho < 1 or wo < 1:
        raise ShapeError(f"{op}: a {kh}x{kw} window does not fit input {list(x_shape)} with "
                         f"padding {padding}")
    return ho, wo


def _windows(x, kh, kw, stride, padding, fill=0.0):
    """Strided view of x's (padded) windows: (N, C, Ho, Wo, kh, kw)."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                   constant_values=fill)
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]


def _scatter_windows(cols, shape, stride, padding):
    """Adjoint of _windows: add (N, C, Ho, Wo, kh, kw) window values back into `shape`."""
    n, c, h, w = shape
    ho, wo, kh, kw = cols.shape[2:]
    out = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += \
                cols[:, :, :, :, i, j]
    return out[:, :, padding:padding + h, padding:padding + w]


# ------------------------------------------------------------------ conv2d
def _conv2d_shape(shapes, dtypes, stride=1, padding=0):
    x, w = tuple(shapes[0]), tuple(shapes[1])
    if len(w) != 4:
        raise ShapeError(f"conv2d: weights must be (out, in, kh, kw), got {list(w)}")
    if len(x) == 4 and x[1] != w[1]:
        raise ShapeError(f"conv2d: input has {x[1]} channels, weights expect {w[1]}")
    ho, wo = _check_geometry("conv2d", x, w[2], w[3], stride, padding)
    return (x[0], w[0], ho, wo), promote(*dtypes)


def _conv2d_numpy(x, w, stride=1, padding=0):
    win = _windows(x, w.shape[2], w.shape[3], stride, padding)
    return np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _conv2d_flops(shapes, out_shape, **attrs):
    w = shapes[1]
    return 2 * math.prod(out_shape) * w[1] * w[2] * w[3]


def _grad_shape(op, g, expected, shape, dtypes):
    """The output of gradient op `op` (the conv's input or weight `shape`), once the incoming
    gradient `g` has the conv's output shape `expected`."""
    if tuple(g) != expected:
        raise ShapeError(f"{op}: gradient {list(g)} does not match the conv output "
                         f"{list(expected)}")
    return tuple(shape), promote(*dtypes)


def _conv2d_input_grad_shape(shapes, dtypes, shape, stride=1, padding=0):
    expected, _ = _conv2d_shape([shape, shapes[1]], dtypes, stride, padding)
    return _grad_shape("conv2d_input_grad", shapes[0], expected, shape, dtypes)


def _conv2d_input_grad_numpy(g, w, shape, stride=1, padding=0):
    # (N, O, Ho, Wo) x (O, C, kh, kw) -> (N, Ho, Wo, C, kh, kw) -> (N, C, Ho, Wo, kh, kw)
    cols = np.tensordot(g, w, axes=([1], [0])).transpose(0, 3, 1, 2, 4, 5)
    return _scatter_windows(cols, tuple(shape), stride, padding)


def _input_grad_flops(shapes, out_shape, **attrs):
    g, w = shapes
    return 2 * math.prod(g) * w[1] * w[2] * w[3]


def _conv2d_weight_grad_shape(shapes, dtypes, shape, stride=1, padding=0):
    expected, _ = _conv2d_shape([shapes[0], shape], dtypes, stride, padding)
    return _grad_shape("conv2d_weight_grad", shapes[1], expected, shape, dtypes)


def _conv2d_weight_grad_numpy(x, g, shape, stride=1, padding=0):
    win = _windows(x, shape[2], shape[3], stride, padding)
    return np.tensordot(g, win, axes=([0, 2, 3], [0, 2, 3]))


def _weight_grad_flops(shapes, out_shape, **attrs):
    x, g = shapes
    return 2 * math.prod(g) * out_shape[1] * out_shape[2] * out_shape[3]


def conv_ops(name: str, conv: tuple, input_grad: tuple, weight_grad: tuple, docs: tuple,
             **defaults) -> list[OpDef]:
    """OpDefs of convolution `name` and its gradients `name`_input_grad and _weight_grad, each
    given as (shape rule, numpy forward): bilinear ops whose VJPs are made of the other two, so
    any order of derivative stays in the graph. `defaults`: the other attrs, always passed on."""
    ops = (name, f"{name}_input_grad", f"{name}_weight_grad")

    def apply(op, a, b, attrs, shape=None):
        known = {key: attrs.get(key, value) for key, value in defaults.items()}
        return anp.apply(op, a, b, **({} if shape is None else {"shape": list(shape)}), **known)

    def bilinear_jvp(op):
        """Tangent of bilinear op(a, b): op(ta, b) + op(a, tb)."""
        def jvp(t, out, a, b, shape=None, **attrs):
            return tangent_sum(None if t[0] is None else apply(op, t[0], b, attrs, shape),
                               None if t[1] is None else apply(op, a, t[1], attrs, shape))
        return jvp

    def conv_vjp(g, out, x, w, **attrs):
        return apply(ops[1], g, w, attrs, x.shape), apply(ops[2], x, g, attrs, w.shape)

    def input_grad_vjp(h, out, g, w, shape, **attrs):
        # <input_grad(g, w), h> = <g, conv(h, w)>
        return apply(name, h, w, attrs), apply(ops[2], h, g, attrs, w.shape)

    def weight_grad_vjp(v, out, x, g, shape, **attrs):
        # <weight_grad(x, g), v> = <g, conv(x, v)>
        return apply(ops[1], g, v, attrs, x.shape), apply(name, x, v, attrs)

    rules = zip(ops, (conv, input_grad, weight_grad),
                (_conv2d_flops, _input_grad_flops, _weight_grad_flops),
                (conv_vjp, input_grad_vjp, weight_grad_vjp), docs)
    return [OpDef(op, *pair, flops, vjp=vjp, jvp=bilinear_jvp(op), saves=(0, 1), arity=2, doc=doc)
            for op, pair, flops, vjp, doc in rules]


# ------------------------------------------------------------------ pooling
def _pool_shape(op):
    def rule(shapes, dtypes, kernel, stride, padding=0):
        if kernel < 1 or 2 * padding > kernel:
            raise ShapeError(f"{op}: need kernel >= 1 and padding <= kernel / 2, got "
                             f"kernel={kernel}, padding={padding}")
        x = tuple(shapes[0])
        ho, wo = _check_geometry(op, x, kernel, kernel, stride, padding)
        return (x[0], x[1], ho, wo), float_dtype(dtypes[0]) if op == "avg_pool2d" else dtypes[0]
    return rule


def _pool_flops(shapes, out_shape, kernel, **attrs):
    return math.prod(out_shape) * kernel * kernel


def _unfold(x, kernel, stride, padding, fill="zero"):
    return anp.apply("unfold2d", x, kernel=kernel, stride=stride, padding=padding, fill=fill)


def _fold(cols, shape, kernel, stride, padding):
    return anp.apply("fold2d", cols, kernel=kernel, stride=stride, padding=padding,
                     shape=list(shape))


def _with_window_axes(t):
    return anp.reshape(t, list(t.shape) + [1, 1])


def _max_pool_share(x, out, kernel, stride, padding):
    """Per window element: 1 / (number of maxima in its window) where it is a max, else 0."""
    win = _unfold(x, kernel, stride, padding, fill="min")
    hit = anp.astype(anp.equal(win, _with_window_axes(out)), out.dtype)
    return hit / anp.sum(hit, [4, 5], keepdims=True)


def _max_pool_vjp(g, out, x, kernel, stride, padding=0):
    share = _max_pool_share(x, out, kernel, stride, padding)
    return (_fold(_with_window_axes(g) * share, x.shape, kernel, stride, padding),)


def _max_pool_jvp(t, out, x, kernel, stride, padding=0):
    share = _max_pool_share(x, out, kernel, stride, padding)
    return anp.sum(_unfold(t[0], kernel, stride, padding) * share, [4, 5])


def _avg_pool_vjp(g, out, x, kernel, stride, padding=0):
    cols = anp.broadcast_to(_with_window_axes(g * (1.0 / (kernel * kernel))),
                            list(g.shape) + [kernel, kernel])
    return (_fold(cols, x.shape, kernel, stride, padding),)


def _unfold_shape(shapes, dtypes, kernel, stride, padding=0, fill="zero"):
    if fill not in ("zero", "min"):
        raise ShapeError(f"unfold2d: fill must be 'zero' or 'min', got {fill!r}")
    x = tuple(shapes[0])
    ho, wo = _check_geometry("unfold2d", x, kernel, kernel, stride, padding)
    return (x[0], x[1], ho, wo, kernel, kernel), dtypes[0]


def _fill_value(x, fill):
    """Padding value: 0, or for fill='min' one that never wins a max (-inf, or the int min)."""
    if fill == "zero":
        return 0
    dtype = np.asarray(x).dtype
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _unfold_numpy(x, kernel, stride, padding=0, fill="zero"):
    return np.ascontiguousarray(_windows(x, kernel, kernel, stride, padding,
                                         _fill_value(x, fill)))


def _max_pool_numpy(x, kernel, stride, padding=0):
    return _windows(x, kernel, kernel, stride, padding, _fill_value(x, "min")).max(axis=(4, 5))


def _avg_pool_numpy(x, kernel, stride, padding=0):
    return _windows(x, kernel, kernel, stride, padding).mean(axis=(4, 5))


def _fold_shape(shapes, dtypes, kernel, stride, padding, shape):
    expected, _ = _unfold_shape([shape], dtypes, kernel, stride, padding)
    if tuple(shapes[0]) != expected:
        raise ShapeError(f"fold2d: windows {list(shapes[0])} do not match {list(expected)} for "
                         f"output {list(shape)}")
    return tuple(shape), dtypes[0]


OPS = [
    *conv_ops("conv2d", (_conv2d_shape, _conv2d_numpy),
              (_conv2d_input_grad_shape, _conv2d_input_grad_numpy),
              (_conv2d_weight_grad_shape, _conv2d_weight_grad_numpy),
              ("cross-correlation of NCHW x with (out, in, kh, kw) weights; no bias",
               "conv2d's gradient w.r.t. its input (a transposed convolution of g with w)",
               "conv2d's gradient w.r.t. its weights (x correlated with g)"),
              stride=1, padding=0),
    OpDef("max_pool2d", _pool_shape("max_pool2d"), _max_pool_numpy, _pool_flops,
          vjp=_max_pool_vjp, jvp=_max_pool_jvp, saves=(0, "out"), arity=1,
          doc="max over kernel x kernel windows (padding never wins); ties split the gradient "
              "evenly within a window"),
    OpDef("avg_pool2d", _pool_shape("avg_pool2d"), _avg_pool_numpy, _pool_flops,
          vjp=_avg_pool_vjp,
          jvp=lambda t, out, x, kernel, stride, padding=0: anp.avg_pool2d(t[0], kernel, stride,
                                                                          padding),
          arity=1, doc="mean over kernel x kernel windows, padding counted as zeros "
                       "(torch's count_include_pad=True)"),
    OpDef("unfold2d", _unfold_shape, _unfold_numpy,
          vjp=lambda g, out, x, kernel, stride, padding=0, fill="zero":
          (_fold(g, x.shape, kernel, stride, padding),),
          jvp=lambda t, out, x, kernel, stride, padding=0, fill="zero":
          _unfold(t[0], kernel, stride, padding), arity=1,
          doc="windows of NCHW x as (N, C, Ho, Wo, k, k); padding filled with 0 or the dtype's "
              "minimum (fill='min', for max pooling)"),
    OpDef("fold2d", _fold_shape,
          lambda cols, kernel, stride, padding, shape: _scatter_windows(
              np.asarray(cols), tuple(shape), stride, padding),
          input_flops(1),
          vjp=lambda g, out, cols, kernel, stride, padding, shape:
          (_unfold(g, kernel, stride, padding),),
          jvp=lambda t, out, cols, kernel, stride, padding, shape:
          _fold(t[0], shape, kernel, stride, padding), arity=1,
          doc="adjoint of unfold2d: adds window values back into an NCHW tensor of `shape`"),
]
