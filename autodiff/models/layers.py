"""Building blocks shared by the model builders: argument checks, params, affine maps, norms.

Everything here records nodes on an abstract Tracer (shapes only), so builders never hold
parameter memory.
"""
from __future__ import annotations

import math

from autodiff import numpy as anp
from autodiff.ir import FLOAT_DTYPES, GraphError
from autodiff.models.init import ONES, ZEROS
from autodiff.trace import Tensor, Tracer


class ModelError(GraphError):
    """A model builder got sizes it cannot build; the message names the builder and argument."""


def check_sizes(builder: str, **sizes) -> None:
    """Every size must be a positive int (bools rejected)."""
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"{builder}: {key} must be a positive integer, got {value!r}")


def check_dtype(builder: str, dtype: str) -> str:
    """The model's float dtype, validated."""
    if dtype not in FLOAT_DTYPES:
        raise ModelError(f"{builder}: dtype must be one of {sorted(FLOAT_DTYPES)}, got {dtype!r}")
    return dtype


def param(tracer: Tracer, name: str, shape, dtype: str, init: dict) -> Tensor:
    """A trainable parameter node carrying its initialization rule."""
    return tracer.source("param", tuple(shape), dtype, name, attrs={"init": dict(init)})


def state(tracer: Tracer, name: str, shape, dtype: str, fill: str) -> Tensor:
    """Persistent non-trainable state (batch-norm running averages): a `const` node with a fill
    rule, marked attrs["state"]; its new value each step is listed in graph.meta["updates"]."""
    return tracer.source("const", tuple(shape), dtype, name, attrs={"fill": fill, "state": True})


def affine(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x @ w (+ b) over x's last axis.

    Inputs of rank > 2 are flattened to 2-D first so that w's gradient is a single matmul,
    not a batch of per-row products summed afterwards; the result keeps x's leading shape.
    """
    lead = list(x.shape[:-1])
    x2 = anp.reshape(x, [math.prod(lead), x.shape[-1]]) if len(lead) > 1 else x
    y = anp.matmul(x2, w)
    if b is not None:
        y = y + b
    return anp.reshape(y, lead + [w.shape[-1]]) if len(lead) > 1 else y


def dense(x: Tensor, name: str, out_features: int, *, weight_init: dict,
          bias_init: dict | None = ZEROS) -> Tensor:
    """A fresh (in, out) weight and (out,) bias named `name.weight` / `name.bias`, applied to x."""
    tracer, dtype = x.tracer, x.dtype
    w = param(tracer, f"{name}.weight", (x.shape[-1], out_features), dtype, weight_init)
    b = None if bias_init is None else param(tracer, f"{name}.bias", (out_features,), dtype,
                                             bias_init)
    return affine(x, w, b)


def layer_norm(x: Tensor, name: str, eps: float = 1e-5) -> Tensor:
    """Layer norm over the last axis with gain `name.gamma` (ones) and shift `name.beta` (zeros)."""
    d = x.shape[-1]
    gamma = param(x.tracer, f"{name}.gamma", (d,), x.dtype, ONES)
    beta = param(x.tracer, f"{name}.beta", (d,), x.dtype, ZEROS)
    return anp.layer_norm(x, gamma, beta, eps=eps)


def batch_norm(x: Tensor, name: str, eps: float = 1e-5, momentum: float = 0.1) -> Tensor:
    """Training-mode batch norm over channels (axis 1) with running-average state updates."""
    c = x.shape[1]
    tracer = x.tracer
    gamma = param(tracer, f"{name}.gamma", (c,), x.dtype, ONES)
    beta = param(tracer, f"{name}.beta", (c,), x.dtype, ZEROS)
    running_mean = state(tracer, f"{name}.running_mean", (c,), x.dtype, "zeros")
    running_var = state(tracer, f"{name}.running_var", (c,), x.dtype, "ones")
    return anp.batch_norm(x, gamma, beta, running_mean, running_var, training=True, eps=eps,
                          momentum=momentum)


def label_input(tracer: Tracer, name: str, shape, high: int) -> Tensor:
    """An int64 `input` of class indices or tokens in [0, high); attrs["high"] tells the data."""
    return tracer.source("input", tuple(shape), "int64", name, attrs={"high": int(high)})
