"""Gradients of small models built from registry ops equal torch.autograd's (float64, 1e-10)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import autodiff as ad
from autodiff import numpy as anp

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-10


def _params(seed: int, shapes: dict) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) * scale for k, (s, scale) in shapes.items()}


def _torch_grads(loss_fn, params: dict, *rest):
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    loss = loss_fn(tp, *rest)
    loss.backward()
    return float(loss.detach()), {k: t.grad.numpy() for k, t in tp.items()}


def _assert_same(ours: tuple, theirs: tuple):
    (value, grads), (tvalue, tgrads) = ours, theirs
    assert value == pytest.approx(tvalue, abs=TOL)
    assert grads.keys() == tgrads.keys()
    for k in grads:
        np.testing.assert_allclose(grads[k], tgrads[k], rtol=0, atol=TOL, err_msg=k)


# ------------------------------------------------------------------------ MLP
MLP_SHAPES = {"x": ((8, 5), 1.0), "w1": ((5, 7), 0.5), "b1": ((7,), 0.1),
              "w2": ((7, 4), 0.5), "b2": ((4,), 0.1)}
LABELS = np.array([0, 3, 1, 1, 2, 0, 3, 2])


def _mlp(p, labels, act):
    h = act(anp.matmul(p["x"], p["w1"]) + p["b1"])
    return anp.cross_entropy(anp.matmul(h, p["w2"]) + p["b2"], labels)


def _torch_mlp(p, labels, act):
    h = act(p["x"] @ p["w1"] + p["b1"])
    return F.cross_entropy(h @ p["w2"] + p["b2"], torch.tensor(labels))


def test_two_layer_mlp_with_cross_entropy():
    p = _params(0, MLP_SHAPES)
    ours = ad.value_and_grad(lambda p: _mlp(p, LABELS, anp.relu))(p)
    _assert_same(ours, _torch_grads(lambda p: _torch_mlp(p, LABELS, F.relu), p))


def test_mlp_hessian_vector_product():
    """Second order: d/dp <grad L(p), v> against torch's double backward (gelu MLP)."""
    p = _params(1, MLP_SHAPES)
    v = _params(2, MLP_SHAPES)

    def grad_dot_v(p):
        g = ad.grad(lambda q: _mlp(q, LABELS, anp.gelu))(p)
        return anp.add_n(*[anp.sum(g[k] * v[k]) for k in p])
    ours = ad.value_and_grad(grad_dot_v)(p)

    def torch_grad_dot_v(tp):
        loss = _torch_mlp(tp, LABELS, lambda t: F.gelu(t, approximate="tanh"))
        g = torch.autograd.grad(loss, list(tp.values()), create_graph=True)
        return sum((gi * torch.tensor(v[k])).sum() for gi, k in zip(g, tp))
    _assert_same(ours, _torch_grads(torch_grad_dot_v, p))


# ------------------------------------------------------------------ attention
B, T, D, H = 2, 5, 8, 2
ATTN_SHAPES = {"x": ((B, T, D), 1.0), "gamma": ((D,), 1.0), "beta": ((D,), 0.2),
               "wq": ((D, D), 0.4), "wk": ((D, D), 0.4), "wv": ((D, D), 0.4),
               "wo": ((D, D), 0.4)}
OUT_W = np.random.default_rng(9).standard_normal((B, T, D))
CAUSAL = np.tril(np.ones((T, T), dtype=bool))


def _attention(p, heads: int, additive_mask: bool):
    """Pre-norm causal self-attention block with a residual; loss = <out, OUT_W>."""
    a = anp.layer_norm(p["x"], p["gamma"], p["beta"], 1e-5)
    hd = D // heads

    def split(t):
        return anp.transpose(anp.reshape(t, [B, T, heads, hd]), [0, 2, 1, 3])
    q, k, v = (split(anp.matmul(a, p[n])) for n in ("wq", "wk", "wv"))
    scores = anp.matmul(q, anp.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(hd))
    if additive_mask:
        scores = scores + np.where(CAUSAL, 0.0, -1e9)
    else:
        scores = anp.where(CAUSAL, scores, -1e9)
    y = anp.matmul(anp.softmax(scores, -1), v)
    y = anp.reshape(anp.transpose(y, [0, 2, 1, 3]), [B, T, D])
    out = p["x"] + anp.matmul(y, p["wo"])
    return anp.sum(out * OUT_W)


def _torch_attention(p, heads: int):
    a = F.layer_norm(p["x"], (D,), p["gamma"], p["beta"], eps=1e-5)
    hd = D // heads
    q, k, v = ((a @ p[n]).view(B, T, heads, hd).transpose(1, 2) for n in ("wq", "wk", "wv"))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(~torch.tensor(CAUSAL), float("-inf"))
    y = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, T, D)
    return ((p["x"] + y @ p["wo"]) * torch.tensor(OUT_W)).sum()


@pytest.mark.parametrize("heads,additive", [(1, False), (H, True), (H, False)])
def test_layer_norm_causal_attention(heads, additive):
    p = _params(3, ATTN_SHAPES)
    ours = ad.value_and_grad(lambda p: _attention(p, heads, additive))(p)
    _assert_same(ours, _torch_grads(lambda p: _torch_attention(p, heads), p))


# ------------------------------------------------------------------ conv net
CONV_SHAPES = {"x": ((2, 3, 8, 8), 1.0), "w1": ((4, 3, 3, 3), 0.3), "gamma": ((4,), 1.0),
               "beta": ((4,), 0.3), "w2": ((5, 4, 2, 2), 0.3)}
CONV_OUT_W = np.random.default_rng(11).standard_normal((2, 5, 2, 2))


def _convnet(p):
    h = anp.conv2d(p["x"], p["w1"], stride=1, padding=1)                   # (2, 4, 8, 8)
    h = anp.relu(anp.batch_norm(h, p["gamma"], p["beta"], eps=1e-5))
    h = anp.max_pool2d(h, 2, 2)                                             # (2, 4, 4, 4)
    h = anp.conv2d(h, p["w2"], stride=2, padding=1)                         # (2, 5, 3, 3)
    h = anp.avg_pool2d(h, 2, 1, padding=1)                                  # (2, 5, 4, 4)
    h = anp.avg_pool2d(h, 2, 2, padding=0)                                  # (2, 5, 2, 2)
    return anp.sum(h * CONV_OUT_W)


def _torch_convnet(p):
    h = F.conv2d(p["x"], p["w1"], stride=1, padding=1)
    h = F.relu(F.batch_norm(h, None, None, p["gamma"], p["beta"], training=True, eps=1e-5))
    h = F.max_pool2d(h, 2, 2)
    h = F.conv2d(h, p["w2"], stride=2, padding=1)
    h = F.avg_pool2d(h, 2, 1, padding=1)
    h = F.avg_pool2d(h, 2, 2, padding=0)
    return (h * torch.tensor(CONV_OUT_W)).sum()


def test_conv_batch_norm_relu_pooling():
    p = _params(4, CONV_SHAPES)
    ours = ad.value_and_grad(_convnet)(p)
    _assert_same(ours, _torch_grads(_torch_convnet, p))


# ------------------------------------------------------- gelu, log_softmax, take
def test_gelu_and_log_softmax():
    p = _params(5, {"x": ((3, 6), 2.0)})
    w = np.random.default_rng(12).standard_normal((3, 6))
    ours = ad.value_and_grad(lambda p: anp.sum(anp.log_softmax(anp.gelu(p["x"]), -1) * w))(p)
    theirs = _torch_grads(lambda p: (F.log_softmax(F.gelu(p["x"], approximate="tanh"), -1)
                                     * torch.tensor(w)).sum(), p)
    _assert_same(ours, theirs)


def test_take_embedding():
    p = _params(6, {"table": ((10, 4), 1.0), "proj": ((4, 3), 0.5)})
    idx = np.array([[1, 7, 7, 0, 9], [3, 1, 1, 1, 2]])
    w = np.random.default_rng(13).standard_normal((2, 5, 3))
    ours = ad.value_and_grad(
        lambda p: anp.sum(anp.sigmoid(anp.matmul(anp.take(p["table"], idx), p["proj"])) * w))(p)
    theirs = _torch_grads(lambda p: (torch.sigmoid(F.embedding(torch.tensor(idx), p["table"])
                                                   @ p["proj"]) * torch.tensor(w)).sum(), p)
    _assert_same(ours, theirs)
