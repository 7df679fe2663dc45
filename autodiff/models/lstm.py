"""LSTM language model unrolled over `seq` steps, reusing each layer's weights at every step.

Gates follow PyTorch's layout and order (input, forget, cell, output) in one fused
(hidden, 4*hidden) matmul per step; the state starts at zero, so step 0 skips the recurrent
matmul and the forget gate. With `skip`, every layer after the first adds its input to its
output (a residual connection between stacked layers).
"""
from __future__ import annotations

from autodiff import numpy as anp
from autodiff.ir import Graph
from autodiff.models.init import fan_in_uniform, normal
from autodiff.models.layers import affine, check_dtype, check_sizes, label_input, param
from autodiff.trace import Tensor, Tracer


def lstm(*, layers: int = 1, hidden: int, vocab: int, seq: int, batch: int, skip: bool = True,
         dtype: str = "float32") -> Graph:
    """Forward loss graph of an LSTM LM on "tokens" and next-token "targets" (batch, seq).

    Init as PyTorch: embedding N(0, 1), LSTM and head weights and biases
    U(+-1/sqrt(hidden)). Groups: "embed", "layer0".."layer{layers-1}", "head".
    """
    check_sizes("lstm", layers=layers, hidden=hidden, vocab=vocab, seq=seq, batch=batch)
    check_dtype("lstm", dtype)
    tracer = Tracer("lstm", eager=False)
    with tracer.scope(group="embed"):
        tokens = label_input(tracer, "tokens", (batch, seq), vocab)
        table = param(tracer, "embed.weight", (vocab, hidden), dtype, normal(1.0))
        embedded = anp.take(table, tokens, axis=0)                      # (B, T, H)
        xs = [embedded[:, t] for t in range(seq)]
    for layer in range(layers):
        with tracer.scope(group=f"layer{layer}"):
            hs = _lstm_layer(xs, f"layer{layer}", hidden)
            xs = [h + x for h, x in zip(hs, xs)] if skip and layer > 0 else hs
    with tracer.scope(group="head"):
        out = anp.reshape(anp.stack(xs, axis=1), [batch * seq, hidden])
        w = param(tracer, "head.weight", (hidden, vocab), dtype, fan_in_uniform(hidden))
        b = param(tracer, "head.bias", (vocab,), dtype, fan_in_uniform(hidden))
        targets = label_input(tracer, "targets", (batch, seq), vocab)
        loss = anp.cross_entropy(affine(out, w, b), anp.reshape(targets, [batch * seq]))
    return tracer.graph([loss], name="lstm")


def _lstm_layer(xs: list[Tensor], name: str, hidden: int) -> list[Tensor]:
    """Hidden states of one LSTM layer over the step inputs `xs` (each (batch, in))."""
    tracer, dtype = xs[0].tracer, xs[0].dtype
    init = fan_in_uniform(hidden)
    w_ih = param(tracer, f"{name}.w_ih", (xs[0].shape[-1], 4 * hidden), dtype, init)
    w_hh = param(tracer, f"{name}.w_hh", (hidden, 4 * hidden), dtype, init)
    bias = param(tracer, f"{name}.bias", (4 * hidden,), dtype, init)
    h = c = None
    out = []
    for x in xs:
        gates = affine(x, w_ih, bias)
        if h is not None:
            gates = gates + anp.matmul(h, w_hh)
        i = anp.sigmoid(gates[:, 0:hidden])
        g = anp.tanh(gates[:, 2 * hidden:3 * hidden])
        o = anp.sigmoid(gates[:, 3 * hidden:4 * hidden])
        c = i * g if c is None else anp.sigmoid(gates[:, hidden:2 * hidden]) * c + i * g
        h = o * anp.tanh(c)
        out.append(h)
    return out
