"""Seeded synthetic training data whose targets are learnable, one generator per model family.

- mlp: Gaussian inputs labelled by a fixed random teacher network (argmax of a tanh MLP).
- gpt, lstm: a fixed cycle of distinct tokens, each sequence starting at a random offset,
  so the next token is a function of the current one.
- resnet: images of class-dependent mean patterns (per-channel offset plus a spatial
  pattern) plus unit Gaussian noise.

Integer inputs carry attrs["high"] (values lie in [0, high)), set by the builders. The fixed
parts (teacher, token cycle, class means) depend only on the seed; each step's batch only on
(seed, step).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from autodiff.io import NUMPY_DTYPE
from autodiff.ir import Graph, GraphError, Node

PATTERN_LENGTH = 8       # tokens in the repeated cycle (fewer if the vocabulary is smaller)
TEACHER_WIDTH = 32       # hidden width of the mlp teacher

Feeds = dict[str, np.ndarray]


def make_data(graph: Graph, family: str, seed: int) -> Callable[[int], Feeds]:
    """A function step -> feeds for `graph`'s input nodes, deterministic in (seed, step)."""
    makers = {"mlp": _teacher_data, "gpt": _pattern_tokens, "lstm": _pattern_tokens,
              "resnet": _image_classes}
    if family not in makers:
        raise GraphError(f"make_data: unknown model family {family!r} "
                         f"(expected one of {sorted(makers)})")
    return makers[family](graph, family, int(seed))


def _fixed_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0])


def _step_rng(seed: int, step: int) -> np.random.Generator:
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    return np.random.default_rng([seed, 1, int(step)])


def _input(graph: Graph, family: str, name: str, rank: int) -> Node:
    if name not in graph or graph[name].op != "input":
        raise GraphError(f"make_data: {family} graph {graph.name!r} has no input node {name!r}")
    node = graph[name]
    if len(node.shape) != rank:
        raise GraphError(f"make_data: input {name!r} of graph {graph.name!r} should have rank "
                         f"{rank}, has shape {list(node.shape)}")
    return node


def _high(node: Node) -> int:
    high = node.attrs.get("high")
    if not isinstance(high, int) or high < 1:
        raise GraphError(f"make_data: integer input {node.name!r} needs attrs['high'] (the "
                         f"number of classes or tokens), got {high!r}")
    return high


def _teacher_data(graph: Graph, family: str, seed: int) -> Callable[[int], Feeds]:
    x_node, y_node = _input(graph, family, "x", 2), _input(graph, family, "y", 1)
    batch, features = x_node.shape
    classes = _high(y_node)
    rng = _fixed_rng(seed)
    w1 = rng.standard_normal((features, TEACHER_WIDTH)) / np.sqrt(features)
    w2 = rng.standard_normal((TEACHER_WIDTH, classes))

    def feeds(step: int) -> Feeds:
        x = _step_rng(seed, step).standard_normal((batch, features))
        y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
        return {"x": x.astype(NUMPY_DTYPE[x_node.dtype]), "y": y.astype(y_node.dtype)}
    return feeds


def _pattern_tokens(graph: Graph, family: str, seed: int) -> Callable[[int], Feeds]:
    tok_node, tgt_node = _input(graph, family, "tokens", 2), _input(graph, family, "targets", 2)
    batch, seq = tok_node.shape
    vocab = _high(tok_node)
    cycle = _fixed_rng(seed).permutation(vocab)[:min(PATTERN_LENGTH, vocab)]

    def feeds(step: int) -> Feeds:
        offsets = _step_rng(seed, step).integers(0, len(cycle), size=(batch, 1))
        positions = offsets + np.arange(seq + 1)[None, :]
        stream = cycle[positions % len(cycle)]
        return {"tokens": stream[:, :-1].astype(tok_node.dtype),
                "targets": stream[:, 1:].astype(tgt_node.dtype)}
    return feeds


def _image_classes(graph: Graph, family: str, seed: int) -> Callable[[int], Feeds]:
    x_node, y_node = _input(graph, family, "x", 4), _input(graph, family, "y", 1)
    batch, channels, height, width = x_node.shape
    classes = _high(y_node)
    rng = _fixed_rng(seed)
    means = (rng.standard_normal((classes, channels, 1, 1))
             + 0.5 * rng.standard_normal((classes, channels, height, width)))

    def feeds(step: int) -> Feeds:
        rng = _step_rng(seed, step)
        y = rng.integers(0, classes, size=batch)
        x = means[y] + rng.standard_normal((batch, channels, height, width))
        return {"x": x.astype(NUMPY_DTYPE[x_node.dtype]), "y": y.astype(y_node.dtype)}
    return feeds
