"""Model builders: gradients against central differences, learning on synthetic data, sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autodiff import GraphError, Node, vjp
from autodiff.interpreter import Interpreter
from autodiff.models import BUILDERS, ModelError, gpt, init_param, init_params, lstm, make_data
from autodiff.models import mlp, resnet

SMALL = {
    "mlp": dict(layers=2, width=12, in_features=7, classes=5, batch=6),
    "gpt": dict(layers=2, d_model=8, heads=2, seq=5, vocab=11, batch=3),
    "lstm": dict(layers=2, hidden=6, vocab=9, seq=4, batch=3),
    "resnet": dict(channels=[3, 4], blocks=1, image=6, in_channels=2, classes=3, batch=4),
}
VARIANTS = [
    ("mlp", {}), ("mlp", {"activation": "gelu"}), ("mlp", {"activation": "tanh"}),
    ("mlp", {"activation": "sigmoid", "layers": 1}),
    ("gpt", {}), ("gpt", {"tied": False, "layers": 1}),
    ("lstm", {}), ("lstm", {"skip": False, "layers": 1}),
    ("resnet", {}), ("resnet", {"blocks": 2, "channels": [4]}),
]


def _build(family, dtype, **overrides):
    return BUILDERS[family](**{**SMALL[family], **overrides, "dtype": dtype})


def _loss(graph, feeds, params) -> float:
    return float(Interpreter(graph).run(feeds, params).outputs[graph.outputs[0]])


@pytest.mark.parametrize("family,overrides", VARIANTS)
def test_gradients_match_central_differences(family, overrides):
    graph = _build(family, "float64", **overrides)
    params = init_params(graph, seed=3)
    feeds = make_data(graph, family, seed=5)(0)
    train = vjp(graph)
    result = Interpreter(train).run(feeds, params).outputs
    grads = {p: result[g] for p, g in train.meta["grads"].items()}
    assert set(grads) == set(params), "every parameter reaches the loss"
    assert result[graph.outputs[0]] == pytest.approx(_loss(graph, feeds, params), rel=1e-12)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name, value in params.items():
        for flat in rng.choice(value.size, size=min(3, value.size), replace=False):
            idx = np.unravel_index(flat, value.shape)
            plus, minus = dict(params), dict(params)
            plus[name], minus[name] = value.copy(), value.copy()
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric = (_loss(graph, feeds, plus) - _loss(graph, feeds, minus)) / (2 * eps)
            assert grads[name][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-8), (name, idx)


TRAINING = {   # sizes and SGD learning rate per family
    "mlp": (dict(layers=2, width=32, in_features=8, classes=5, batch=32), 0.5),
    "gpt": (dict(layers=2, d_model=16, heads=2, seq=8, vocab=11, batch=8), 0.3),
    "lstm": (dict(layers=2, hidden=16, vocab=9, seq=6, batch=8), 1.0),
    "resnet": (dict(channels=[4, 8], blocks=1, image=8, in_channels=2, classes=3, batch=16), 0.2),
}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_loss_decreases_with_sgd(family):
    sizes, lr = TRAINING[family]
    graph = BUILDERS[family](**sizes, dtype="float32")
    train = vjp(graph)
    run = Interpreter(train)
    params = init_params(graph, seed=0)
    data = make_data(graph, family, seed=1)
    losses = []
    for step in range(30):
        out = run.run(data(step), params, step=step).outputs
        losses.append(float(out[graph.outputs[0]]))
        for name, grad_name in train.meta["grads"].items():
            params[name] = params[name] - lr * out[grad_name]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert np.all(np.isfinite(losses))
    assert last < 0.7 * first, (family, losses)


def gpt_parameter_count(layers: int, d: int, vocab: int, seq: int, tied: bool) -> int:
    """GPT-2's parameter count written out from the architecture."""
    embeddings = vocab * d + seq * d                     # token + position tables
    layer_norm = 2 * d                                   # gain + shift
    attention = 3 * (d * d + d) + (d * d + d)            # q, k, v and output projections
    mlp_weights = (d * 4 * d + 4 * d) + (4 * d * d + d)  # fc up, proj down
    per_block = 2 * layer_norm + attention + mlp_weights
    head = 0 if tied else d * vocab                      # GPT-2's LM head has no bias
    return embeddings + layers * per_block + layer_norm + head


def test_gpt2_xl_has_published_parameter_count():
    expected = gpt_parameter_count(48, 1600, 50257, 1024, tied=True)
    assert expected == 1_557_611_200
    graph = gpt(layers=48, d_model=1600, heads=25, seq=1024, vocab=50257, batch=1)
    assert graph.num_parameters() == expected
    assert graph.outputs and graph[graph.outputs[0]].shape == ()


def test_gpt2_small_builds_with_its_parameter_count():
    graph = gpt(layers=12, d_model=768, heads=12, seq=1024, vocab=50257, batch=2)
    assert graph.num_parameters() == gpt_parameter_count(12, 768, 50257, 1024, tied=True)
    untied = gpt(layers=12, d_model=768, heads=12, seq=1024, vocab=50257, batch=2, tied=False)
    assert untied.num_parameters() == gpt_parameter_count(12, 768, 50257, 1024, tied=False)


def test_lstm_reuses_weights_at_every_step():
    def count(layers, h, v):   # embedding + per layer (w_ih, w_hh, one bias) + head
        return v * h + layers * (h * 4 * h * 2 + 4 * h) + h * v + v
    short = lstm(layers=2, hidden=5, vocab=7, seq=2, batch=1)
    long = lstm(layers=2, hidden=5, vocab=7, seq=9, batch=1)
    assert [p.name for p in short.params] == [p.name for p in long.params]
    assert long.num_parameters() == count(2, 5, 7)
    w_hh = long["layer1.w_hh"].name
    assert len(long.consumers(w_hh)) == 9 - 1  # step 0 starts from a zero state


def test_mlp_and_resnet_parameter_counts():
    graph = mlp(layers=3, width=10, in_features=4, classes=3, batch=2)
    assert graph.num_parameters() == (4 * 10 + 10) + 2 * (10 * 10 + 10) + (10 * 3 + 3)
    net = resnet(channels=[4, 6], blocks=1, image=8, in_channels=3, classes=5, batch=2)
    conv = lambda i, o, k: i * o * k * k                      # noqa: E731
    bn = lambda c: 2 * c                                      # noqa: E731
    stem = conv(3, 4, 3) + bn(4)
    stage0 = 2 * (conv(4, 4, 3) + bn(4))
    stage1 = conv(4, 6, 3) + conv(6, 6, 3) + 2 * bn(6) + conv(4, 6, 1) + bn(6)
    assert net.num_parameters() == stem + stage0 + stage1 + (6 * 5 + 5)


def test_every_param_has_an_init_rule_and_every_node_a_group():
    for family in BUILDERS:
        graph = _build(family, "float32")
        for p in graph.params:
            assert p.attrs["init"]["kind"] in {"normal", "uniform", "zeros", "ones"}, p.name
        missing = [n.name for n in graph.nodes if not n.group]
        assert not missing, (family, missing[:5])
    groups = {n.group for n in _build("gpt", "float32").nodes}
    assert groups == {"embed", "block0", "block1", "head"}


def test_batch_norm_running_stats_are_state_with_updates():
    graph = _build("resnet", "float32")
    states = [n for n in graph.nodes if n.attrs.get("state")]
    bns = {p.name.rsplit(".", 1)[0] for p in graph.params if p.name.endswith(".gamma")}
    assert len(states) == 2 * len(bns) and all(n.op == "const" for n in states)
    assert set(graph.meta["updates"]) == {n.name for n in states}
    assert not set(graph.meta["updates"]) & {p.name for p in graph.params}
    params = init_params(graph, 0)
    feeds = make_data(graph, "resnet", 0)(0)
    first = "stem.bn.running_mean"
    out = Interpreter(graph, [graph.meta["updates"][first]]).run(feeds, params).outputs
    # After one step from zeros with momentum 0.1: 0.1 * mean of the stem conv's output channels.
    conv_x = feeds["x"].astype(np.float64)
    w = params["stem.conv.weight"].astype(np.float64)
    padded = np.pad(conv_x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h = w.shape[2]
    conv = np.zeros((conv_x.shape[0], w.shape[0], conv_x.shape[2], conv_x.shape[3]))
    for i in range(conv.shape[2]):
        for j in range(conv.shape[3]):
            conv[:, :, i, j] = np.einsum("bchw,ochw->bo", padded[:, :, i:i + h, j:j + h], w)
    np.testing.assert_allclose(out[graph.meta["updates"][first]],
                               0.1 * conv.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_init_depends_only_on_seed_and_name():
    small = gpt(layers=1, d_model=8, heads=2, seq=4, vocab=10, batch=1)
    large = gpt(layers=3, d_model=8, heads=2, seq=4, vocab=10, batch=5)
    a, b = init_params(small, 7), init_params(large, 7)
    same_rule = [name for name in a if small[name].attrs == large[name].attrs]
    assert len(same_rule) == len(a) - 2     # residual projections scale with the depth
    for name in same_rule:
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(init_param(large["wte"], 7), b["wte"])
    assert not np.array_equal(init_params(small, 8)["wte"], a["wte"])
    assert not np.array_equal(a["block0.attn.q.weight"], a["block0.attn.k.weight"])


def test_init_follows_its_rule():
    graph = gpt(layers=4, d_model=64, heads=4, seq=32, vocab=300, batch=1, dtype="float64")
    params = init_params(graph, 0)
    assert params["wte"].std() == pytest.approx(0.02, rel=0.02)
    assert params["block0.attn.proj.weight"].std() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert np.all(params["block2.ln1.gamma"] == 1) and np.all(params["block2.mlp.fc.bias"] == 0)
    net = mlp(layers=1, width=50, in_features=100, classes=4, batch=1)
    w = init_params(net, 0)["layer0.weight"]
    assert w.dtype == np.float32 and np.abs(w).max() <= 0.1 and np.abs(w).max() > 0.09


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_data_is_deterministic_and_matches_the_inputs(family):
    graph = _build(family, "float32")
    data = make_data(graph, family, seed=4)
    first, again, other = data(3), make_data(graph, family, seed=4)(3), data(4)
    assert set(first) == {n.name for n in graph.inputs}
    for node in graph.inputs:
        assert first[node.name].shape == node.shape
        assert first[node.name].dtype == np.dtype(node.dtype)
        np.testing.assert_array_equal(first[node.name], again[node.name])
        if "high" in node.attrs:
            assert 0 <= first[node.name].min() and first[node.name].max() < node.attrs["high"]
    assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_token_targets_are_the_next_tokens():
    graph = _build("gpt", "float32")
    feeds = make_data(graph, "gpt", seed=0)(0)
    np.testing.assert_array_equal(feeds["targets"][:, :-1], feeds["tokens"][:, 1:])
    successor = {}
    for t, n in zip(feeds["tokens"].ravel(), feeds["targets"].ravel()):
        assert successor.setdefault(t, n) == n     # the next token is a function of the current


def test_bad_sizes_raise_model_errors():
    with pytest.raises(ModelError, match="d_model=10 is not divisible by heads=3"):
        gpt(layers=1, d_model=10, heads=3, seq=4, vocab=5, batch=1)
    with pytest.raises(ModelError, match="activation"):
        mlp(width=4, batch=1, activation="swish")
    with pytest.raises(ModelError, match="hidden"):
        lstm(hidden=0, vocab=4, seq=2, batch=1)
    with pytest.raises(ModelError, match="dtype"):
        resnet(batch=1, dtype="int32")
    with pytest.raises(ModelError, match="too small"):
        resnet(batch=1, image=2, channels=[2, 2, 2])


def test_data_and_init_reject_mismatched_graphs():
    graph = _build("mlp", "float32")
    with pytest.raises(GraphError, match="no input node 'tokens'"):
        make_data(graph, "gpt", 0)
    with pytest.raises(GraphError, match="unknown model family"):
        make_data(graph, "transformer", 0)
    bare = Node("w", "param", (), (2, 2), "float32")
    with pytest.raises(GraphError, match="param 'w': attrs\\['init'\\]"):
        init_param(bare, 0)
