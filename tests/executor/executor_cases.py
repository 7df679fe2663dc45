"""Shared cases for the executor tests: small graphs, placements, reference runs, and an
independent count of the bytes SPEC section 2 says a step sends."""
from __future__ import annotations

import numpy as np

from autodiff import numpy as anp
from autodiff.interpreter import Interpreter
from autodiff.ir import FLOAT_DTYPES
from autodiff.ops.registry import get_op
from autodiff.reverse import vjp
from autodiff.trace import Tracer

TINY = {"mlp": dict(layers=2, width=8, in_features=6, classes=3),
        "gpt": dict(layers=1, d_model=8, heads=2, seq=4, vocab=11),
        "lstm": dict(layers=1, hidden=6, vocab=7, seq=3),
        "resnet": dict(channels=(4,), blocks=1, image=6, in_channels=2, classes=3)}


def hand_graph(batch: int = 4, d: int = 3, h: int = 5):
    """An MLP with a static parameter transform used twice, a broadcast bias, a residual add
    (identity gradient), a tensor read by three consumers and a parameter that never reaches
    the loss."""
    t = Tracer("hand", eager=False)
    x = t.source("input", (batch, d), "float64", "x")
    y = t.source("input", (batch, h), "float64", "y")
    w = t.source("param", (d, h), "float64", "w")
    b = t.source("param", (h,), "float64", "b")
    u = t.source("param", (h, h), "float64", "u")
    t.source("param", (2,), "float64", "unused")
    wt = anp.tanh(w)                       # static: computed once per step
    h1 = anp.tanh(x @ wt + b)
    h2 = h1 @ u + h1                       # h1 read by matmul, add and multiply below
    z = h2 * anp.sigmoid(h1) + (x @ wt)
    r = z - y
    return t.graph([(r * r).mean()])


def stop_gradient_graph(batch: int = 4, d: int = 3):
    """h is read by a matmul on its way to the loss and by a stop_gradient: the latter sends
    no gradient back although SPEC counts one for it (h requires grad)."""
    t = Tracer("stopgrad", eager=False)
    x = t.source("input", (batch, d), "float64", "x")
    w = t.source("param", (d, d), "float64", "w")
    v = t.source("param", (d, 1), "float64", "v")
    h = anp.tanh(x @ w)
    s = anp.stop_gradient(h)
    out = (h @ v).sum() + (s * s).sum() * 0.5
    return t.graph([out])


def pass_through_graph(batch: int = 2, d: int = 3):
    """Chains of identity gradients: adds and a subtract whose gradients pass through
    untouched, an add of a tensor to itself (two parts from one reader), a broadcast
    parameter (its part is reduced first) and a static chain of parameter adds."""
    t = Tracer("passthrough", eager=False)
    x = t.source("input", (batch, d), "float64", "x")
    p = t.source("param", (d, d), "float64", "p")
    q = t.source("param", (d, d), "float64", "q")
    b = t.source("param", (d,), "float64", "b")
    pq = (p + q) - q * 0.5                 # static: parameters only
    a1 = x @ pq
    a2 = a1 + x @ q
    a3 = a2 - b
    a4 = a3 + a3
    a5 = a4 + a1
    return t.graph([(a5 * a5).sum()])


def noisy_graph(batch: int = 4, d: int = 3):
    """Dropout and a reparameterized Gaussian: random sources drawn per (step, micro-batch)."""
    t = Tracer("noisy", eager=False)
    x = t.source("input", (batch, d), "float64", "x")
    w = t.source("param", (d, d), "float64", "w")
    mu = t.source("param", (d,), "float64", "mu")
    h = anp.dropout(anp.tanh(x @ w), 0.25, seed=3)
    z = mu + anp.random_normal((batch, d), seed=5, tracer_of=x)
    return t.graph([((h - z) * (h - z)).mean()])


def random_params(graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p.name: rng.normal(size=p.shape) * 0.5 for p in graph.params}


def random_feeds(graph, seed: int = 0, micro_batches: int = 1) -> dict[str, np.ndarray]:
    """Feeds for `graph` (the per-micro-batch graph) stacked for m micro-batches."""
    rng = np.random.default_rng(seed)
    return {x.name: rng.normal(size=(x.shape[0] * micro_batches, *x.shape[1:]))
            for x in graph.inputs}


def contiguous(graph, k: int) -> np.ndarray:
    """k equal runs of the topological order: the quotient graph is acyclic."""
    n = len(graph.nodes)
    return np.minimum(np.arange(n) * k // n, k - 1).astype(np.int32)


def random_assignment(graph, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, len(graph.nodes)).astype(np.int32)


def reference(graph, params, feeds, step: int = 0) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and parameter gradients from running the training graph on one device."""
    training = vjp(graph)
    out = Interpreter(training).run(feeds, params, step=step).outputs
    grads = {p: out[g] for p, g in training.meta["grads"].items()}
    return float(out[training.outputs[0]]), grads


# ---------------------------------------------------------------- SPEC section 2 by hand
def _flags(graph):
    requires_grad, batch = {}, {}
    for node in graph.nodes:
        requires_grad[node.name] = node.dtype in FLOAT_DTYPES and (
            node.op == "param" or any(requires_grad[i] for i in node.inputs))
        batch[node.name] = (node.op == "input" or (not node.is_source and not node.inputs)
                            or any(batch[i] for i in node.inputs))
    return requires_grad, batch


def spec_link_bytes(graph, a, k: int, m: int = 1) -> np.ndarray:
    """[a, b] = bytes sent from device a to b per step by SPEC section 2: each tensor once to
    each remote device reading it, its gradient once back if it requires grad; m times for
    batch-dependent tensors."""
    requires_grad, batch = _flags(graph)
    dev = {n.name: int(a[i]) for i, n in enumerate(graph.nodes)}
    out = np.zeros((k, k), dtype=np.int64)
    for node in graph.nodes:
        times = m if batch[node.name] else 1
        for d in {dev[c] for c in graph.consumers(node.name)} - {dev[node.name]}:
            out[dev[node.name], d] += node.nbytes * times
            if requires_grad[node.name]:
                out[d, dev[node.name]] += node.nbytes * times
    return out


def gradient_shortfall(graph, a, k: int, m: int = 1) -> np.ndarray:
    """The documented difference: gradients SPEC counts that no consumer sends, because no
    consumer of v on that device passes a gradient to v (stop_gradient, integer ops, a
    consumer that does not lead to the loss)."""
    requires_grad, batch = _flags(graph)
    dev = {n.name: int(a[i]) for i, n in enumerate(graph.nodes)}
    on = {}
    for node in graph.nodes:       # depends on a parameter through differentiable float ops
        op = get_op(node.op)
        on[node.name] = node.op == "param" or (
            node.dtype in FLOAT_DTYPES and not node.is_source and op is not None
            and op.vjp is not None and any(on[i] for i in node.inputs))
    loss = graph.outputs[0]
    live = {}                      # receives a gradient from the loss
    for node in reversed(graph.nodes):
        live[node.name] = on[node.name] and (node.name == loss or any(
            live[c] for c in graph.consumers(node.name)))
    out = np.zeros((k, k), dtype=np.int64)
    for node in graph.nodes:
        if not requires_grad[node.name]:
            continue
        times = m if batch[node.name] else 1
        for d in {dev[c] for c in graph.consumers(node.name)} - {dev[node.name]}:
            if not any(live[c] and on[node.name] for c in graph.consumers(node.name)
                       if dev[c] == d):
                out[d, dev[node.name]] += node.nbytes * times
    return out


def state_link_bytes(graph, a, k: int) -> np.ndarray:
    """Bytes of persistent-state updates (batch-norm running averages) sent per step from the
    device computing the new value to the state's device (not a graph edge, so not in V)."""
    index = graph.index
    out = np.zeros((k, k), dtype=np.int64)
    for state, node in graph.meta.get("updates", {}).items():
        src, dst = int(a[index[node]]), int(a[index[state]])
        if src != dst:
            out[src, dst] += graph[state].nbytes
    return out
