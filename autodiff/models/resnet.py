"""Small ResNet image classifier: a conv stem, residual stages of basic blocks, GAP, linear head.

Each stage after the first halves the resolution with a stride-2 first block whose shortcut
is a 1x1 stride-2 convolution plus batch norm (a projection); other shortcuts are identities.
Batch norm runs in training mode; its running averages are `const` state nodes (attrs
{"state": True, "fill": "zeros"|"ones"}) whose new values the graph lists in
meta["updates"] (state -> node), so they persist across steps without being parameters.
"""
from __future__ import annotations

import math
from typing import Sequence

from autodiff import numpy as anp
from autodiff.ir import Graph
from autodiff.models.init import fan_in_uniform, normal
from autodiff.models.layers import (ModelError, batch_norm, check_dtype, check_sizes, dense,
                                    label_input, param)
from autodiff.trace import Tensor, Tracer


def resnet(*, channels: Sequence[int] = (16, 32), blocks: int = 1, image: int = 16,
           in_channels: int = 3, classes: int = 10, batch: int, dtype: str = "float32") -> Graph:
    """Forward loss graph on images "x" (batch, in_channels, image, image) and labels "y".

    Convolutions have no bias and Kaiming-normal init N(0, 2/fan_in); the head is PyTorch's
    default Linear. Groups: "stem", "stage{s}.block{b}", "head".
    """
    channels = list(channels)
    if not channels:
        raise ModelError("resnet: channels must list at least one stage width")
    check_sizes("resnet", blocks=blocks, image=image, in_channels=in_channels, classes=classes,
                batch=batch, **{f"channels[{i}]": c for i, c in enumerate(channels)})
    check_dtype("resnet", dtype)
    if image < 2 ** (len(channels) - 1):
        raise ModelError(f"resnet: image={image} is too small for {len(channels)} stages "
                         f"(each stage after the first halves it)")
    tracer = Tracer("resnet", eager=False)
    with tracer.scope(group="stem"):
        x = tracer.source("input", (batch, in_channels, image, image), dtype, "x")
        x = anp.relu(batch_norm(_conv(x, "stem.conv", channels[0], 3, 1), "stem.bn"))
    for s, width in enumerate(channels):
        for b in range(blocks):
            name = f"stage{s}.block{b}"
            with tracer.scope(group=name):
                x = _basic_block(x, name, width, stride=2 if s > 0 and b == 0 else 1)
    with tracer.scope(group="head"):
        pooled = anp.mean(x, axis=(2, 3))
        logits = dense(pooled, "head", classes, weight_init=fan_in_uniform(channels[-1]),
                       bias_init=fan_in_uniform(channels[-1]))
        y = label_input(tracer, "y", (batch,), classes)
        loss = anp.cross_entropy(logits, y)
    return tracer.graph([loss], name="resnet")


def _conv(x: Tensor, name: str, out_channels: int, kernel: int, stride: int) -> Tensor:
    fan_in = x.shape[1] * kernel * kernel
    w = param(x.tracer, f"{name}.weight", (out_channels, x.shape[1], kernel, kernel), x.dtype,
              normal(math.sqrt(2.0 / fan_in)))
    return anp.conv2d(x, w, stride=stride, padding=kernel // 2)


def _basic_block(x: Tensor, name: str, width: int, stride: int) -> Tensor:
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""
    y = anp.relu(batch_norm(_conv(x, f"{name}.conv1", width, 3, stride), f"{name}.bn1"))
    y = batch_norm(_conv(y, f"{name}.conv2", width, 3, 1), f"{name}.bn2")
    if stride != 1 or x.shape[1] != width:
        x = batch_norm(_conv(x, f"{name}.shortcut", width, 1, stride), f"{name}.shortcut_bn")
    return anp.relu(y + x)
