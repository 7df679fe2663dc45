"""Gradient highways: architectures that keep a short, well-conditioned path from loss to input.

1. LSTM vs. plain tanh RNN: the norm of d loss / d x_t for every step t. With a high forget-gate
   bias the cell state carries the gradient back almost unchanged; with a low one, or through
   a tanh RNN, it shrinks geometrically.
2. Residual blocks x + f(x): counting the input-to-output paths of the traced graph by dynamic
   programming gives 2^N for N blocks (each block doubles them: skip or go through f).
3. A DenseNet-style block (each layer reads the concatenation of all earlier outputs): a
   breadth-first search on the graph finds the shortest gradient path from the output back
   to the input, which crosses one layer however deep the block is (a chain crosses all).

Run: python examples/gradient_highways.py
"""
from __future__ import annotations

from collections import deque

import numpy as np

import autodiff as ad
from autodiff import numpy as anp


# ------------------------------------------------------------------ recurrences
def lstm_params(rng, d_in: int, hidden: int, forget_bias: float, scale: float = 0.3) -> dict:
    """Gate weights (input i, forget f, cell g, output o) with the forget-gate bias set."""
    p = {}
    for gate in "ifgo":
        p[f"{gate}_x"] = rng.normal(size=(d_in, hidden)) * scale / np.sqrt(d_in)
        p[f"{gate}_h"] = rng.normal(size=(hidden, hidden)) * scale / np.sqrt(hidden)
        p[f"{gate}_b"] = np.full(hidden, forget_bias if gate == "f" else 0.0)
    return p


def lstm_loss(xs, p):
    """Run an LSTM over xs (T, batch, d_in) from zero state; loss = sum of the last output."""
    batch, hidden = xs.shape[1], p["f_b"].shape[0]
    h = c = np.zeros((batch, hidden))
    for t in range(xs.shape[0]):
        x = xs[t]
        gate = {g: x @ p[f"{g}_x"] + h @ p[f"{g}_h"] + p[f"{g}_b"] for g in "ifgo"}
        c = anp.sigmoid(gate["f"]) * c + anp.sigmoid(gate["i"]) * anp.tanh(gate["g"])
        h = anp.sigmoid(gate["o"]) * anp.tanh(c)
    return anp.sum(h)


def rnn_params(rng, d_in: int, hidden: int, scale: float = 0.9) -> dict:
    return {"x": rng.normal(size=(d_in, hidden)) / np.sqrt(d_in),
            "h": rng.normal(size=(hidden, hidden)) * scale / np.sqrt(hidden)}


def rnn_loss(xs, p):
    """h_t = tanh(x_t @ W_x + h_{t-1} @ W_h); loss = sum of the last state."""
    h = np.zeros((xs.shape[1], p["h"].shape[0]))
    for t in range(xs.shape[0]):
        h = anp.tanh(xs[t] @ p["x"] + h @ p["h"])
    return anp.sum(h)


def gradient_norm_per_step(loss, xs, params) -> np.ndarray:
    """||d loss / d x_t|| for t = 0..T-1 (step 0 is the farthest from the loss)."""
    g = ad.grad(loss)(xs, params)
    return np.linalg.norm(g.reshape(g.shape[0], -1), axis=1)


# ------------------------------------------------------------- graph structure
def residual_net(x, ws):
    for w in ws:
        x = x + anp.tanh(x @ w)
    return anp.sum(x)


def dense_block(x, ws):
    """Layer k reads concat(x, h_1, ..., h_{k-1}); the block returns the last layer's output."""
    features = [x]
    for w in ws:
        inp = features[0] if len(features) == 1 else anp.concatenate(features, axis=-1)
        features.append(anp.tanh(inp @ w))
    return anp.sum(features[-1])


def chain(x, ws):
    for w in ws:
        x = anp.tanh(x @ w)
    return anp.sum(x)


def count_paths(graph: ad.Graph, source: str, target: str) -> int:
    """Number of distinct source-to-target paths in the graph's DAG (one per listed input)."""
    paths = {source: 1}
    for node in graph.nodes[graph.index[source] + 1:graph.index[target] + 1]:
        paths[node.name] = sum(paths.get(i, 0) for i in node.inputs)
    return paths[target]


def shortest_path(graph: ad.Graph, source: str, target: str) -> list[str]:
    """The fewest-edges path source -> target, by breadth-first search over consumers."""
    parent = {source: None}
    queue = deque([source])
    while queue:
        name = queue.popleft()
        if name == target:
            break
        for consumer in graph.consumers(name):
            if consumer not in parent:
                parent[consumer] = name
                queue.append(consumer)
    path = [target]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return path[::-1]


def layers_on_shortest_path(builder, depth: int, width: int = 4, seed: int = 0) -> int:
    """How many weight layers (matmuls) the shortest gradient path crosses."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, width))
    widths = [width * (k + 1) if builder is dense_block else width for k in range(depth)]
    ws = [rng.normal(size=(w, width)) for w in widths]
    graph = ad.trace(builder, x, ws)
    path = shortest_path(graph, "arg0", graph.outputs[0])
    return sum(graph[name].op == "matmul" for name in path)


def residual_paths(blocks: int, width: int = 3, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    graph = ad.trace(residual_net, rng.normal(size=(2, width)),
                     [rng.normal(size=(width, width)) for _ in range(blocks)])
    return count_paths(graph, "arg0", graph.outputs[0])


def main(steps: int = 40, batch: int = 4, d_in: int = 3, hidden: int = 8, max_blocks: int = 6,
         max_depth: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(steps, batch, d_in))
    norms = {
        "lstm, forget bias +3": gradient_norm_per_step(
            lstm_loss, xs, lstm_params(np.random.default_rng(seed + 1), d_in, hidden, 3.0)),
        "lstm, forget bias -3": gradient_norm_per_step(
            lstm_loss, xs, lstm_params(np.random.default_rng(seed + 1), d_in, hidden, -3.0)),
        "tanh rnn": gradient_norm_per_step(
            rnn_loss, xs, rnn_params(np.random.default_rng(seed + 1), d_in, hidden)),
    }
    return {
        "gradient_norms": norms,
        "residual_paths": {n: residual_paths(n) for n in range(1, max_blocks + 1)},
        "dense_layers_on_shortest_path": {d: layers_on_shortest_path(dense_block, d)
                                          for d in range(1, max_depth + 1)},
        "chain_layers_on_shortest_path": {d: layers_on_shortest_path(chain, d)
                                          for d in range(1, max_depth + 1)},
    }


if __name__ == "__main__":
    out = main()
    print("||d loss / d x_t|| at step t (the loss reads the last step):")
    for name, n in out["gradient_norms"].items():
        print(f"  {name:22s} t=0: {n[0]:.2e}  t=T/2: {n[len(n) // 2]:.2e}  t=T-1: {n[-1]:.2e}")
    print("input-to-output paths through N residual blocks:")
    for n, paths in out["residual_paths"].items():
        print(f"  N={n}: {paths} paths (2^N = {2 ** n})")
    print("weight layers crossed by the shortest gradient path (depth: dense block vs chain):")
    for d in out["dense_layers_on_shortest_path"]:
        print(f"  depth {d}: dense {out['dense_layers_on_shortest_path'][d]}, "
              f"chain {out['chain_layers_on_shortest_path'][d]}")
