"""Grouped 2-D convolution (depthwise when groups == channels) on NCHW tensors.

Input channels and output channels are split into `groups` equal parts; part g of the output
sees only part g of the input. Weights are (out, in / groups, kh, kw), as torch and ONNX store
them. It runs as conv2d does (conv.py): a strided window view and one einsum per call, with
its two gradients as ops of their own, each with a VJP, so higher derivatives stay in the graph.

FLOPs: 2 * out_elems * (Cin / groups) * kh * kw for the op and for each of its gradients.
"""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.ops.conv import _bilinear_jvp, _check_geometry, _scatter_windows, _windows
from autodiff.ops.registry import OpDef, ShapeError, promote


def _geometry(x, w, stride, padding, groups, op="grouped_conv2d"):
    x, w = tuple(x), tuple(w)
    if len(w) != 4:
        raise ShapeError(f"{op}: weights must be (out, in/groups, kh, kw), got {list(w)}")
    if groups < 1 or w[0] % groups:
        raise ShapeError(f"{op}: {w[0]} output channels do not split into {groups} groups")
    if len(x) == 4 and x[1] != w[1] * groups:
        raise ShapeError(f"{op}: input has {x[1]} channels, weights expect {w[1]} x {groups} "
                         "groups")
    ho, wo = _check_geometry(op, x, w[2], w[3], stride, padding)
    return (x[0], w[0], ho, wo)


def _shape(shapes, dtypes, stride=1, padding=0, groups=1):
    return _geometry(shapes[0], shapes[1], stride, padding, groups), promote(*dtypes)


def _grouped_windows(x, kh, kw, stride, padding, groups):
    """(N, G, C/G, Ho, Wo, kh, kw) windows of x."""
    win = _windows(x, kh, kw, stride, padding)
    n, c = win.shape[:2]
    return win.reshape((n, groups, c // groups) + win.shape[2:])


def _forward(x, w, stride=1, padding=0, groups=1):
    o, cg, kh, kw = w.shape
    win = _grouped_windows(x, kh, kw, stride, padding, groups)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    return out.reshape((out.shape[0], o) + out.shape[3:])


def _flops(shapes, out_shape, **attrs):
    w = shapes[1]
    return 2 * math.prod(out_shape) * w[1] * w[2] * w[3]


def _input_grad_shape(shapes, dtypes, shape, stride=1, padding=0, groups=1):
    expected = _geometry(shape, shapes[1], stride, padding, groups, "grouped_conv2d_input_grad")
    if tuple(shapes[0]) != expected:
        raise ShapeError(f"grouped_conv2d_input_grad: gradient {list(shapes[0])} does not match "
                         f"the conv output {list(expected)}")
    return tuple(shape), promote(*dtypes)


def _input_grad_forward(g, w, shape, stride=1, padding=0, groups=1):
    o, cg, kh, kw = w.shape
    n, _, ho, wo = g.shape
    gg = g.reshape(n, groups, o // groups, ho, wo)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    cols = np.einsum("ngohw,gocij->ngchwij", gg, wg, optimize=True)
    cols = cols.reshape((n, groups * cg, ho, wo, kh, kw))
    return _scatter_windows(cols, tuple(shape), stride, padding)


def _input_grad_flops(shapes, out_shape, **attrs):
    g, w = shapes
    return 2 * math.prod(g) * w[1] * w[2] * w[3]


def _weight_grad_shape(shapes, dtypes, shape, stride=1, padding=0, groups=1):
    expected = _geometry(shapes[0], shape, stride, padding, groups, "grouped_conv2d_weight_grad")
    if tuple(shapes[1]) != expected:
        raise ShapeError(f"grouped_conv2d_weight_grad: gradient {list(shapes[1])} does not "
                         f"match the conv output {list(expected)}")
    return tuple(shape), promote(*dtypes)


def _weight_grad_forward(x, g, shape, stride=1, padding=0, groups=1):
    o, cg, kh, kw = shape
    win = _grouped_windows(x, kh, kw, stride, padding, groups)
    n, _, ho, wo = g.shape
    gg = g.reshape(n, groups, o // groups, ho, wo)
    out = np.einsum("ngohw,ngchwij->gocij", gg, win, optimize=True)
    return out.reshape(tuple(shape))


def _weight_grad_flops(shapes, out_shape, **attrs):
    x, g = shapes
    return 2 * math.prod(g) * out_shape[1] * out_shape[2] * out_shape[3]


def _conv(x, w, stride, padding, groups):
    return anp.apply("grouped_conv2d", x, w, stride=stride, padding=padding, groups=groups)


def _input_grad(g, w, shape, stride, padding, groups):
    return anp.apply("grouped_conv2d_input_grad", g, w, shape=list(shape), stride=stride,
                     padding=padding, groups=groups)


def _weight_grad(x, g, shape, stride, padding, groups):
    return anp.apply("grouped_conv2d_weight_grad", x, g, shape=list(shape), stride=stride,
                     padding=padding, groups=groups)


def _vjp(g, out, x, w, stride=1, padding=0, groups=1):
    return (_input_grad(g, w, x.shape, stride, padding, groups),
            _weight_grad(x, g, w.shape, stride, padding, groups))


def _jvp(t, out, x, w, stride=1, padding=0, groups=1):
    return _bilinear_jvp(lambda a, b: _conv(a, b, stride, padding, groups), t, x, w)


def _input_grad_vjp(h, out, g, w, shape, stride=1, padding=0, groups=1):
    # <input_grad(g, w), h> = <g, conv(h, w)>
    return (_conv(h, w, stride, padding, groups),
            _weight_grad(h, g, w.shape, stride, padding, groups))


def _input_grad_jvp(t, out, g, w, shape, stride=1, padding=0, groups=1):
    return _bilinear_jvp(lambda a, b: _input_grad(a, b, shape, stride, padding, groups), t, g, w)


def _weight_grad_vjp(v, out, x, g, shape, stride=1, padding=0, groups=1):
    # <weight_grad(x, g), v> = <g, conv(x, v)>
    return (_input_grad(g, v, x.shape, stride, padding, groups),
            _conv(x, v, stride, padding, groups))


def _weight_grad_jvp(t, out, x, g, shape, stride=1, padding=0, groups=1):
    return _bilinear_jvp(lambda a, b: _weight_grad(a, b, shape, stride, padding, groups), t, x, g)


OPS = [
    OpDef("grouped_conv2d", _shape, _forward, _flops, vjp=_vjp, jvp=_jvp, saves=(0, 1), arity=2,
          doc="conv2d with channels split into `groups` (depthwise when groups = channels)"),
    OpDef("grouped_conv2d_input_grad", _input_grad_shape, _input_grad_forward,
          _input_grad_flops, vjp=_input_grad_vjp, jvp=_input_grad_jvp, saves=(0, 1), arity=2,
          doc="grouped_conv2d's gradient w.r.t. its input"),
    OpDef("grouped_conv2d_weight_grad", _weight_grad_shape, _weight_grad_forward,
          _weight_grad_flops, vjp=_weight_grad_vjp, jvp=_weight_grad_jvp, saves=(0, 1),
          arity=2, doc="grouped_conv2d's gradient w.r.t. its weights"),
]
