"""The gpt builder's loss and every gradient equal an independent PyTorch GPT-2 (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autodiff import vjp
from autodiff.interpreter import Interpreter
from autodiff.models import gpt, init_params, make_data

torch = pytest.importorskip("torch")
F = torch.nn.functional
GELU_APPROXIMATION = "tanh"   # autodiff's gelu is GPT-2's tanh form (see autodiff/ops/nn.py)


def torch_gpt_loss(p: dict, tokens, targets, layers: int, heads: int, tied: bool):
    """GPT-2 forward in PyTorch: weights stored (in, out), separate q/k/v, tanh-GELU."""
    batch, seq = tokens.shape
    d = p["wte"].shape[1]
    hd = d // heads
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    x = p["wte"][tokens] + p["wpe"]

    def ln(t, name):
        return F.layer_norm(t, (d,), p[f"{name}.gamma"], p[f"{name}.beta"], eps=1e-5)

    def linear(t, name):
        return t @ p[f"{name}.weight"] + p[f"{name}.bias"]

    for i in range(layers):
        b = f"block{i}"
        a = ln(x, f"{b}.ln1")
        q, k, v = (linear(a, f"{b}.attn.{n}").view(batch, seq, heads, hd).transpose(1, 2)
                   for n in "qkv")
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = torch.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(batch, seq, d)
        x = x + linear(y, f"{b}.attn.proj")
        h = F.gelu(linear(ln(x, f"{b}.ln2"), f"{b}.mlp.fc"), approximate=GELU_APPROXIMATION)
        x = x + linear(h, f"{b}.mlp.proj")
    x = ln(x, "ln_f")
    logits = x @ (p["wte"].T if tied else p["head.weight"])
    return F.cross_entropy(logits.reshape(batch * seq, -1), targets.reshape(-1))


@pytest.mark.parametrize("tied", [True, False])
def test_gpt_matches_pytorch(tied):
    sizes = dict(layers=2, d_model=12, heads=3, seq=7, vocab=17, batch=2)
    graph = gpt(**sizes, tied=tied, dtype="float64")
    params = init_params(graph, seed=11)
    # Perturb zero/one inits so biases and gains are exercised too.
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    feeds = make_data(graph, "gpt", seed=2)(0)
    feeds["tokens"] = rng.integers(0, sizes["vocab"], feeds["tokens"].shape)  # not just a cycle
    train = vjp(graph)
    out = Interpreter(train).run(feeds, params).outputs

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    loss = torch_gpt_loss(tp, torch.tensor(feeds["tokens"]), torch.tensor(feeds["targets"]),
                          sizes["layers"], sizes["heads"], tied)
    loss.backward()

    assert float(out[graph.outputs[0]]) == pytest.approx(loss.item(), rel=1e-12, abs=1e-10)
    assert set(train.meta["grads"]) == set(params)
    for name, grad_name in train.meta["grads"].items():
        np.testing.assert_allclose(out[grad_name], tp[name].grad.numpy(), rtol=0, atol=1e-10,
                                   err_msg=name)
