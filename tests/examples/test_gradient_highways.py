"""Gradient highways: per-step gradient norms against torch; path counts against networkx."""
import networkx as nx
import numpy as np
import pytest

import autodiff as ad
import gradient_highways as ex

torch = pytest.importorskip("torch")


def _torch_lstm_norms(xs, p):
    x = torch.tensor(xs, requires_grad=True)
    w = {k: torch.tensor(v) for k, v in p.items()}
    h = c = torch.zeros(xs.shape[1], p["f_b"].shape[0], dtype=torch.float64)
    for t in range(xs.shape[0]):
        z = {g: x[t] @ w[f"{g}_x"] + h @ w[f"{g}_h"] + w[f"{g}_b"] for g in "ifgo"}
        c = torch.sigmoid(z["f"]) * c + torch.sigmoid(z["i"]) * torch.tanh(z["g"])
        h = torch.sigmoid(z["o"]) * torch.tanh(c)
    h.sum().backward()
    return x.grad.flatten(1).norm(dim=1).numpy()


def _torch_rnn_norms(xs, p):
    x = torch.tensor(xs, requires_grad=True)
    wx, wh = torch.tensor(p["x"]), torch.tensor(p["h"])
    h = torch.zeros(xs.shape[1], p["h"].shape[0], dtype=torch.float64)
    for t in range(xs.shape[0]):
        h = torch.tanh(x[t] @ wx + h @ wh)
    h.sum().backward()
    return x.grad.flatten(1).norm(dim=1).numpy()


@pytest.fixture(scope="module")
def result():
    return ex.main(steps=30, max_blocks=5, max_depth=5)


def test_gradient_norms_match_torch_even_when_tiny(result):
    rng = np.random.default_rng(0)            # main(seed=0) draws xs first, params from seed+1
    xs = rng.normal(size=(30, 4, 3))
    norms = result["gradient_norms"]
    for bias in (3.0, -3.0):
        p = ex.lstm_params(np.random.default_rng(1), 3, 8, bias)
        expected = _torch_lstm_norms(xs, p)
        np.testing.assert_allclose(norms[f"lstm, forget bias {bias:+.0f}"], expected, rtol=1e-9)
    expected = _torch_rnn_norms(xs, ex.rnn_params(np.random.default_rng(1), 3, 8))
    np.testing.assert_allclose(norms["tanh rnn"], expected, rtol=1e-9)


def test_high_forget_bias_keeps_the_gradient_alive(result):
    norms = result["gradient_norms"]
    high, low, rnn = (norms[k][0] for k in ("lstm, forget bias +3", "lstm, forget bias -3",
                                            "tanh rnn"))
    assert high > 1e3 * low
    assert high > 1e3 * rnn
    # Near the loss all three receive gradients of the same order.
    last = [norms[k][-1] for k in norms]
    assert max(last) < 30 * min(last)


def _nx(graph):
    g = nx.MultiDiGraph()
    g.add_nodes_from(n.name for n in graph.nodes)
    g.add_edges_from((i, n.name) for n in graph.nodes for i in n.inputs)
    return g


def test_residual_paths_double_per_block(result):
    assert result["residual_paths"] == {n: 2 ** n for n in range(1, 6)}
    rng = np.random.default_rng(3)
    for blocks in (1, 2, 3, 4):
        graph = ad.trace(ex.residual_net, rng.normal(size=(2, 3)),
                         [rng.normal(size=(3, 3)) for _ in range(blocks)])
        brute = len(list(nx.all_simple_edge_paths(_nx(graph), "arg0", graph.outputs[0])))
        assert ex.count_paths(graph, "arg0", graph.outputs[0]) == brute == 2 ** blocks


def test_shortest_gradient_path_dense_vs_chain(result):
    assert result["dense_layers_on_shortest_path"] == {d: 1 for d in range(1, 6)}
    assert result["chain_layers_on_shortest_path"] == {d: d for d in range(1, 6)}
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 4))
    graph = ad.trace(ex.dense_block, x, [rng.normal(size=(4 * (k + 1), 4)) for k in range(4)])
    path = ex.shortest_path(graph, "arg0", graph.outputs[0])
    assert len(path) - 1 == nx.shortest_path_length(_nx(graph), "arg0", graph.outputs[0])
    assert all(b in graph.consumers(a) for a, b in zip(path, path[1:]))
