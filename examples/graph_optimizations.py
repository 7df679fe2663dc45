"""Graph optimizations: constant folding, common-subexpression elimination, dead-code removal.

Because the training step is a graph (forward and gradient nodes alike), compiler passes can
simplify it before it runs: constant folding evaluates nodes whose inputs are all constants
(the causal mask, scale factors), CSE merges nodes computing the same op on the same inputs
(e.g. the transposed weight both the forward and the backward need), and dead-code
elimination drops what no output reads. The outputs stay bit-identical.

Run: python examples/graph_optimizations.py
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np

import autodiff as ad
from autodiff.interpreter import Interpreter
from autodiff.models import gpt, init_params, make_data
from autodiff.passes import (common_subexpression_elimination, constant_folding,
                             dead_code_elimination)

PASSES = [("constant folding", constant_folding),
          ("common subexpressions", common_subexpression_elimination),
          ("dead code", dead_code_elimination)]


def optimize_step(graph: ad.Graph) -> tuple[ad.Graph, list[tuple[str, int]]]:
    """Apply the passes in order; returns the result and the node count after each pass."""
    counts = [("training graph", len(graph.nodes))]
    for name, apply in PASSES:
        graph = apply(graph)
        counts.append((name, len(graph.nodes)))
    return graph, counts


def run(graph: ad.Graph, inputs: dict, params: dict, repeats: int = 1) -> tuple[dict, float]:
    """The graph's outputs, and the mean seconds per run over `repeats` runs."""
    interpreter = Interpreter(graph)
    start = time.perf_counter()
    for _ in range(repeats):
        outputs = interpreter.run(feeds=inputs, params=params).outputs
    return outputs, (time.perf_counter() - start) / repeats


def main(layers: int = 2, d_model: int = 16, heads: int = 2, seq: int = 8, vocab: int = 20,
         batch: int = 2, seed: int = 0, repeats: int = 20) -> dict:
    forward = gpt(layers=layers, d_model=d_model, heads=heads, seq=seq, vocab=vocab, batch=batch,
                  dtype="float64")
    training = ad.vjp(forward)
    optimized, counts = optimize_step(training)
    params, inputs = init_params(forward, seed), make_data(forward, "gpt", seed)(0)
    before, seconds_before = run(training, inputs, params, repeats)
    after, seconds_after = run(optimized, inputs, params, repeats)
    removed = Counter(n.op for n in training.nodes) - Counter(n.op for n in optimized.nodes)
    return {"training": training, "optimized": optimized, "counts": counts,
            "removed_ops": dict(removed), "params": params, "inputs": inputs, "outputs": after,
            "identical": all(np.array_equal(before[k], after[k]) for k in training.outputs),
            "seconds": (seconds_before, seconds_after)}


if __name__ == "__main__":
    out = main()
    print("GPT training step (forward + backward) node counts:")
    for name, count in out["counts"]:
        print(f"  after {name:22s} {count:4d}")
    print("removed, by op:", out["removed_ops"])
    print("loss and all gradients bit-identical:", out["identical"])
    print("seconds per step: {:.2e} before, {:.2e} after".format(*out["seconds"]))
