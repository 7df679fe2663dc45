"""Multi-layer perceptron classifier: `layers` hidden layers of `width`, then a linear head."""
from __future__ import annotations

from autodiff import numpy as anp
from autodiff.ir import Graph
from autodiff.models.init import fan_in_uniform
from autodiff.models.layers import ModelError, check_dtype, check_sizes, dense, label_input
from autodiff.trace import Tracer

ACTIVATIONS = {"relu": anp.relu, "gelu": anp.gelu, "tanh": anp.tanh, "sigmoid": anp.sigmoid}


def mlp(*, layers: int = 2, width: int, in_features: int = 64, classes: int = 10, batch: int,
        activation: str = "relu", dtype: str = "float32") -> Graph:
    """Forward loss graph of an MLP on inputs "x" (batch, in_features) and labels "y" (batch,).

    Linear layers use PyTorch's default init (U(+-1/sqrt(fan_in)) for weight and bias);
    groups are "layer0".."layer{layers-1}" and "head".
    """
    check_sizes("mlp", layers=layers, width=width, in_features=in_features, classes=classes,
                batch=batch)
    check_dtype("mlp", dtype)
    if activation not in ACTIVATIONS:
        raise ModelError(f"mlp: activation must be one of {sorted(ACTIVATIONS)}, "
                         f"got {activation!r}")
    act = ACTIVATIONS[activation]
    tracer = Tracer("mlp", eager=False)
    with tracer.scope(group="layer0"):
        h = tracer.source("input", (batch, in_features), dtype, "x")
    for i in range(layers):
        with tracer.scope(group=f"layer{i}"):
            fan_in = h.shape[-1]
            h = act(dense(h, f"layer{i}", width, weight_init=fan_in_uniform(fan_in),
                          bias_init=fan_in_uniform(fan_in)))
    with tracer.scope(group="head"):
        logits = dense(h, "head", classes, weight_init=fan_in_uniform(width),
                       bias_init=fan_in_uniform(width))
        y = label_input(tracer, "y", (batch,), classes)
        loss = anp.cross_entropy(logits, y)
    return tracer.graph([loss], name="mlp")
