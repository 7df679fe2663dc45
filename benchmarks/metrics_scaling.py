"""Time graph_arrays and compute_metrics on random DAGs up to a million nodes.

Prints seconds per size and the ratio to a baseline measured in the same run: one plain
Python pass over the Node list that reads every node's inputs (the least any reader must do).
The `kept s` column is the part of graph_arrays spent in the op registry's kept_for_backward.
Usage (from the repository root): PYTHONPATH=. python benchmarks/metrics_scaling.py [max_nodes]
"""
from __future__ import annotations

import sys
import time

import numpy as np

from autodiff.ir import Graph, Node
from autodiff.ops.registry import kept_for_backward
from partition.cluster import uniform
from partition.cost import graph_arrays
from partition.metrics import compute_metrics


def random_graph(n: int, seed: int = 0) -> Graph:
    """n nodes: 1% parameters, one input, the rest ops reading 1-3 of the previous 64 nodes."""
    rng = np.random.default_rng(seed)
    fan_in = rng.integers(1, 4, size=n)
    offsets = rng.integers(1, 65, size=(n, 3))
    is_param = rng.random(n) < 0.01
    nodes = [Node("x", "input", (), (32, 64))]
    for i in range(1, n):
        if is_param[i]:
            nodes.append(Node(f"p{i}", "param", (), (64, 64), flops=0))
            continue
        inputs = tuple(nodes[max(0, i - int(o))].name for o in offsets[i, :fan_in[i]])
        nodes.append(Node(f"v{i}", "f", inputs, (32, 64), flops=4096))
    return Graph(nodes, [nodes[-1].name], name=f"random-{n}", validate=False)


def baseline_pass(graph: Graph) -> float:
    start = time.perf_counter()
    index = graph.index
    total = 0
    for node in graph.nodes:
        for name in node.inputs:
            total += index[name]
    return time.perf_counter() - start


def main(max_nodes: int) -> None:
    cluster = uniform(8)
    print(f"{'nodes':>9} {'baseline s':>11} {'graph_arrays s':>15} {'ratio':>6} "
          f"{'(kept s)':>9} {'metrics s':>10} {'ratio':>6}")
    n = 10_000
    while n <= max_nodes:
        graph = random_graph(n)
        base = baseline_pass(graph)
        start = time.perf_counter()
        arrays = graph_arrays(graph)
        built = time.perf_counter() - start
        start = time.perf_counter()
        kept_for_backward(graph)
        kept = time.perf_counter() - start
        assignment = np.random.default_rng(1).integers(0, cluster.k, size=n).astype(np.int32)
        start = time.perf_counter()
        metrics = compute_metrics(graph, assignment, cluster)
        measured = time.perf_counter() - start
        assert arrays.n == n and metrics.step_volume > 0
        print(f"{n:>9} {base:>11.3f} {built:>15.3f} {built / base:>6.1f} {kept:>9.3f} "
              f"{measured:>10.3f} {measured / base:>6.1f}")
        n *= 10


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
