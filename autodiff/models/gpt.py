"""GPT-2 style decoder-only transformer language model (pre-norm blocks, GELU MLP, tied head).

The residual stream is kept as a 2-D (batch*seq, d_model) tensor, so every projection is one
plain matmul; attention reshapes to (batch, heads, seq, head_dim) and back.
"""
from __future__ import annotations

import math

import numpy as np

from autodiff import numpy as anp
from autodiff.io import NUMPY_DTYPE
from autodiff.ir import Graph
from autodiff.models.init import normal
from autodiff.models.layers import (ModelError, check_dtype, check_sizes, dense, label_input,
                                    layer_norm, param)
from autodiff.trace import Tensor, Tracer

INIT_STD = 0.02   # GPT-2's initializer_range


def gpt(*, layers: int, d_model: int, heads: int, seq: int, vocab: int, batch: int,
        tied: bool = True, dtype: str = "float32") -> Graph:
    """Forward loss graph of a GPT-2 style model on "tokens" and next-token "targets" (batch, seq).

    Weights are N(0, 0.02^2) as in GPT-2, the two residual projections of each block
    N(0, (0.02/sqrt(2*layers))^2), biases zeros, layer norms ones/zeros. Groups: "embed",
    "block0".."block{layers-1}", "head". With `tied` the LM head reuses the token embedding.
    """
    check_sizes("gpt", layers=layers, d_model=d_model, heads=heads, seq=seq, vocab=vocab,
                batch=batch)
    check_dtype("gpt", dtype)
    if d_model % heads:
        raise ModelError(f"gpt: d_model={d_model} is not divisible by heads={heads}")
    tracer = Tracer("gpt", eager=False)
    with tracer.scope(group="embed"):
        tokens = label_input(tracer, "tokens", (batch, seq), vocab)
        wte = param(tracer, "wte", (vocab, d_model), dtype, normal(INIT_STD))
        wpe = param(tracer, "wpe", (seq, d_model), dtype, normal(INIT_STD))
        x = anp.take(wte, tokens, axis=0) + wpe       # positions 0..seq-1: all of wpe
        x = anp.reshape(x, [batch * seq, d_model])
    proj_std = INIT_STD / math.sqrt(2 * layers)
    for i in range(layers):
        with tracer.scope(group=f"block{i}"):
            x = _block(x, f"block{i}", batch, seq, heads, proj_std)
    with tracer.scope(group="head"):
        x = layer_norm(x, "ln_f")
        w_head = (anp.transpose(wte) if tied
                  else param(tracer, "head.weight", (d_model, vocab), dtype, normal(INIT_STD)))
        logits = anp.matmul(x, w_head)
        targets = label_input(tracer, "targets", (batch, seq), vocab)
        loss = anp.cross_entropy(logits, anp.reshape(targets, [batch * seq]))
    return tracer.graph([loss], name="gpt")


def _block(x: Tensor, name: str, batch: int, seq: int, heads: int, proj_std: float) -> Tensor:
    """x + attn(ln1(x)), then + mlp(ln2(.)): one pre-norm transformer block on (batch*seq, d)."""
    x = x + _attention(layer_norm(x, f"{name}.ln1"), f"{name}.attn", batch, seq, heads, proj_std)
    return x + _mlp(layer_norm(x, f"{name}.ln2"), f"{name}.mlp", proj_std)


def _linear(x: Tensor, name: str, out_features: int, std: float) -> Tensor:
    return dense(x, name, out_features, weight_init=normal(std))


def _attention(a: Tensor, name: str, batch: int, seq: int, heads: int, proj_std: float
               ) -> Tensor:
    """Multi-head causal self-attention with separate q, k, v projections."""
    tracer, dtype = a.tracer, a.dtype
    d = a.shape[-1]
    hd = d // heads

    def split_heads(t: Tensor, axes: list[int]) -> Tensor:
        return anp.transpose(anp.reshape(t, [batch, seq, heads, hd]), axes)

    q = split_heads(_linear(a, f"{name}.q", d, INIT_STD), [0, 2, 1, 3])   # (B, H, T, hd)
    k = split_heads(_linear(a, f"{name}.k", d, INIT_STD), [0, 2, 3, 1])   # (B, H, hd, T)
    v = split_heads(_linear(a, f"{name}.v", d, INIT_STD), [0, 2, 1, 3])   # (B, H, T, hd)
    scores = anp.matmul(q, k) * (1.0 / math.sqrt(hd))
    # The causal mask is a per-block const (each device can make its own) with a fill rule,
    # so the graph holds no seq x seq array; masked scores get the dtype's most negative value
    # (as PyTorch/HF mask attention scores).
    mask = tracer.source("const", (seq, seq), "bool", f"{name}.causal_mask",
                         attrs={"fill": "tril"})
    stored = NUMPY_DTYPE[dtype]
    floor = tracer.source("const", (), dtype, f"{name}.mask_value",
                          attrs={"value": np.asarray(np.finfo(stored).min, stored)})
    probs = anp.softmax(anp.where(mask, scores, floor), axis=-1)
    y = anp.matmul(probs, v)                                              # (B, H, T, hd)
    y = anp.reshape(anp.transpose(y, [0, 2, 1, 3]), [batch * seq, d])
    return _linear(y, f"{name}.proj", d, proj_std)


def _mlp(a: Tensor, name: str, proj_std: float) -> Tensor:
    d = a.shape[-1]
    h = anp.gelu(_linear(a, f"{name}.fc", 4 * d, INIT_STD))
    return _linear(h, f"{name}.proj", d, proj_std)
