"""Grouped 2-D convolution (depthwise when groups == channels) on NCHW tensors.

Input channels and output channels are split into `groups` equal parts; part g of the output
sees only part g of the input. Weights are (out, in / groups, kh, kw), as torch and ONNX store
them. It runs as conv2d does (conv.py), with one einsum on a strided window view per call.

FLOPs: 2 * out_elems * (Cin / groups) * kh * kw for the op and for each of its gradients.
"""
from __future__ import annotations

import numpy as np

from autodiff.ops.conv import _check_geometry, _grad_shape, _scatter_windows, _windows, conv_ops
from autodiff.ops.registry import ShapeError, promote


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


def _input_grad_shape(shapes, dtypes, shape, stride=1, padding=0, groups=1):
    op = "grouped_conv2d_input_grad"
    expected = _geometry(shape, shapes[1], stride, padding, groups, op)
    return _grad_shape(op, shapes[0], expected, shape, dtypes)


def _input_grad_forward(g, w, shape, stride=1, padding=0, groups=1):
    o, cg, kh, kw = w.shape
    n, _, ho, wo = g.shape
    gg = g.reshape(n, groups, o // groups, ho, wo)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    cols = np.einsum("ngohw,gocij->ngchwij", gg, wg, optimize=True)
    cols = cols.reshape((n, groups * cg, ho, wo, kh, kw))
    return _scatter_windows(cols, tuple(shape), stride, padding)


def _weight_grad_shape(shapes, dtypes, shape, stride=1, padding=0, groups=1):
    op = "grouped_conv2d_weight_grad"
    expected = _geometry(shapes[0], shape, stride, padding, groups, op)
    return _grad_shape(op, shapes[1], expected, shape, dtypes)


def _weight_grad_forward(x, g, shape, stride=1, padding=0, groups=1):
    o, cg, kh, kw = shape
    win = _grouped_windows(x, kh, kw, stride, padding, groups)
    n, _, ho, wo = g.shape
    gg = g.reshape(n, groups, o // groups, ho, wo)
    out = np.einsum("ngohw,ngchwij->gocij", gg, win, optimize=True)
    return out.reshape(tuple(shape))


OPS = conv_ops("grouped_conv2d", (_shape, _forward), (_input_grad_shape, _input_grad_forward),
               (_weight_grad_shape, _weight_grad_forward),
               ("conv2d with channels split into `groups` (depthwise when groups = channels)",
                "grouped_conv2d's gradient w.r.t. its input",
                "grouped_conv2d's gradient w.r.t. its weights"),
               stride=1, padding=0, groups=1)
