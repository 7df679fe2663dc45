"""Seconds of the multilevel partitioner on generated graphs of 10k, 100k and 1M nodes.

Two families: a stack of transformer blocks (layer norm, qkv/o projections, attention, MLP,
residual adds; each projection with its own param node; MLP widths vary per block) ending in a
loss, and a random layered DAG with skip connections (a ragged cut boundary); explicit FLOPs.
The Problem (graph arrays, caps) is built untimed; the timed part is `multilevel(problem)` from
the registry, k = 8, epsilon 0.10, after a warm-up run on a small graph. Also prints V relative
to Mt-KaHyPar on the 10k and 100k graphs.
Targets: 100k nodes <= 20 s; 10x more nodes <= 15x more time.
Run: python benchmarks/partition_scaling.py [--max-nodes N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from autodiff.ir import Graph, Node  # noqa: E402
from partition.algorithms.hypergraph import from_problem, objective  # noqa: E402
from partition.algorithms.multilevel import multilevel  # noqa: E402
from partition.algorithms.peers import mtkahypar_partition  # noqa: E402
from partition.cluster import uniform  # noqa: E402
from partition.problem import Problem  # noqa: E402

NODES_PER_BLOCK = 20


def transformer_like(nodes: int, seed: int = 0, batch: int = 4, seq: int = 64) -> Graph:
    """About `nodes` nodes: blocks of 20 nodes (4 of them params) on a residual stream."""
    rng = np.random.default_rng(seed)
    out: list[Node] = [Node("x", "input", (), (batch, seq, 64), flops=0)]
    h = "x"
    width = 64
    for b in range((nodes - 2) // NODES_PER_BLOCK):
        d = width
        f = int(rng.choice([2, 4])) * d

        def op(name, inputs, shape, flops):
            out.append(Node(f"{name}{b}", "f", tuple(inputs), shape, flops=int(flops)))
            return f"{name}{b}"

        def param(name, shape):
            out.append(Node(f"{name}{b}", "param", (), shape, flops=0))
            return f"{name}{b}"

        act = (batch, seq, d)
        ln = op("ln", [h], act, 5 * batch * seq * d)
        wqkv, wo, w1, w2 = param("wqkv", (d, 3 * d)), param("wo", (d, d)), param("w1", (d, f)), \
            param("w2", (f, d))
        qkv = op("qkv", [ln, wqkv], (batch, seq, 3 * d), 6 * batch * seq * d * d)
        q = op("q", [qkv], act, batch * seq * d)
        k = op("k", [qkv], act, batch * seq * d)
        v = op("v", [qkv], act, batch * seq * d)
        s = op("scores", [q, k], (batch, seq, seq), 2 * batch * seq * seq * d)
        p = op("softmax", [s], (batch, seq, seq), 5 * batch * seq * seq)
        a = op("attend", [p, v], act, 2 * batch * seq * seq * d)
        o = op("proj", [a, wo], act, 2 * batch * seq * d * d)
        r = op("res1_", [h, o], act, batch * seq * d)
        ln2 = op("ln2_", [r], act, 5 * batch * seq * d)
        m1 = op("fc1_", [ln2, w1], (batch, seq, f), 2 * batch * seq * d * f)
        g = op("gelu", [m1], (batch, seq, f), 8 * batch * seq * f)
        m2 = op("fc2_", [g, w2], act, 2 * batch * seq * d * f)
        h = op("res2_", [r, m2], act, batch * seq * d)
        out.append(Node(f"tap{b}", "f", (h,), (batch, seq), flops=batch * seq * d))
    out.append(Node("loss", "f", (h,), (), flops=batch * seq * width))
    return Graph(out, ["loss"], name=f"transformer-like-{len(out)}", validate=False)


def random_layered(nodes: int, seed: int = 0, width: int = 10) -> Graph:
    """About `nodes` nodes in layers of `width`: each reads two random nodes of the previous two
    layers (skip connections), one param per layer feeds three of its nodes; random tensor sizes
    and FLOPs. Much less regular than the transformer stack: a large, ragged cut boundary."""
    rng = np.random.default_rng(seed)
    layers = max(nodes // (width + 1), 2)
    out: list[Node] = [Node(f"x{i}", "input", (), (int(rng.choice([250, 2500])),), flops=0)
                       for i in range(width)]
    prev = [[n.name for n in out]]
    sizes = rng.choice([250, 2500, 25000], size=(layers, width))
    flops = rng.integers(1, 11, size=(layers, width)) * 1000
    back = rng.integers(1, 3, size=(layers, width, 2))
    pick = rng.integers(0, width, size=(layers, width, 2))
    for layer in range(1, layers):
        w = f"w{layer}"
        out.append(Node(w, "param", (), (int(rng.choice([64, 4096])),), flops=0))
        names = []
        for i in range(width):
            inputs = tuple(prev[max(len(prev) - back[layer, i, j], 0)][pick[layer, i, j]]
                           for j in range(2))
            if i < 3:
                inputs += (w,)
            names.append(f"n{layer}_{i}")
            out.append(Node(names[-1], "f", inputs, (int(sizes[layer, i]),),
                            flops=int(flops[layer, i])))
        prev = prev[-1:] + [names]
    out.append(Node("loss", "f", tuple(prev[-1]), (), flops=width))
    return Graph(out, ["loss"], name=f"random-layered-{len(out)}", validate=False)


FAMILIES = {"transformer-like": transformer_like, "random-layered": random_layered}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-nodes", type=int, default=1_000_000)
    args = parser.parse_args()
    k = 8
    multilevel(Problem.build(transformer_like(2_000), uniform(k)))  # warm-up (imports, caches)
    for family, build_graph in FAMILIES.items():
        print(f"== {family} ==")
        seconds = {}
        for n in (10_000, 100_000, 1_000_000):
            if n > args.max_nodes:
                break
            t0 = time.perf_counter()
            problem = Problem.build(build_graph(n), uniform(k), epsilon=0.10)
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = multilevel(problem)
            seconds[n] = time.perf_counter() - t0
            hg, caps = from_problem(problem)
            value = objective(hg, result.assignment, k)
            line = (f"n={problem.n:>9,}  multilevel {seconds[n]:7.2f} s  (graph + problem build "
                    f"{build:5.1f} s, untimed)  V={value:.4g}")
            if n <= 100_000:
                t0 = time.perf_counter()
                peer = objective(hg, mtkahypar_partition(hg, caps, 0), k)
                line += (f"  V/V_mtkahypar={value / peer:.3f} "
                         f"(Mt-KaHyPar {time.perf_counter() - t0:.1f} s)")
            print(line, flush=True)
        sizes = sorted(seconds)
        for small, big in zip(sizes, sizes[1:]):
            print(f"{big // small}x nodes ({small:,} -> {big:,}): "
                  f"{seconds[big] / seconds[small]:.1f}x time (target <= 15x)")
        if 100_000 in seconds:
            print(f"100k nodes: {seconds[100_000]:.1f} s (target <= 20 s)")


if __name__ == "__main__":
    main()
