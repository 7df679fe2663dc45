"""pipeline_dp is optimal: its max_d T_d equals a brute force over every acyclic placement.

Random DAGs of at most 14 nodes (random FLOPs, tensor sizes, parameters so that some nodes
require gradients, micro-batches) on identical devices with uniform links, at k = 2, 3, 4,
inference and training. The brute force enumerates every chain of ideals of the node graph
(an independent recursion over frozensets, no contraction) and, for up to 7 nodes, every one
of the k^n assignments with a quotient-cycle check; each is priced by a per-node evaluation
of SPEC section 5 written here, vectorised over the candidates only.
"""
import numpy as np
import pytest

from autodiff.ir import Graph, Node
from partition.algorithms.pipeline_dp import pipeline_dp
from partition.cluster import uniform
from partition.cost import graph_arrays
from partition.problem import Problem
from partition.stage_time import stage_times

CASES = 204
MAX_IDEALS = 120


def random_dag(rng, training: bool) -> Graph:
    """4..14 nodes: an input, params (training) or consts, ops reading 1..2 of the last
    three nodes and sometimes a source; random FLOPs (some zero) and sizes."""
    n = int(rng.integers(4, 15))
    sources = int(rng.integers(2 if training else 1, 4))
    nodes = [Node("x", "input", (), (int(rng.integers(1, 40)),), flops=0)]
    for s in range(1, sources):
        nodes.append(Node(f"w{s}", "param" if training else "const", (),
                          (int(rng.integers(1, 40)),), flops=0))
    while len(nodes) < n:
        computed = [nd.name for nd in nodes if nd.op == "f"] or ["x"]
        recent = computed[-3:]
        inputs = set(rng.choice(recent, size=int(rng.integers(1, 3))).tolist())
        if training and len(nodes) == sources:
            inputs.add("w1")                  # something requires a gradient
        if rng.random() < 0.4:
            inputs.add(nodes[int(rng.integers(0, sources))].name)
        flops = 0 if rng.random() < 0.15 else int(rng.integers(1, 100))
        nodes.append(Node(f"v{len(nodes)}", "f", tuple(sorted(inputs)),
                          (int(rng.integers(1, 60)),), flops=flops))
    return Graph(nodes, [nodes[-1].name])


def all_ideals(graph: Graph) -> list[frozenset]:
    """Every down-closed set of node positions, by a plain recursion."""
    preds = [frozenset(graph.index[i] for i in nd.inputs) for nd in graph.nodes]
    found = {frozenset()}
    frontier = [frozenset()]
    while frontier:
        grown = []
        for ideal in frontier:
            for v in range(len(preds)):
                if v not in ideal and preds[v] <= ideal:
                    bigger = ideal | {v}
                    if bigger not in found:
                        found.add(bigger)
                        grown.append(bigger)
        frontier = grown
    return sorted(found, key=len)


def chain_assignments(graph: Graph, k: int) -> np.ndarray:
    """Every placement that is a chain of at most k non-empty stages (stage p on device p)."""
    ideals = all_ideals(graph)
    n = len(graph)
    everything = frozenset(range(n))
    out = []

    def extend(ideal, p, assignment):
        if ideal == everything:
            out.append(assignment.copy())
            return
        if p == k:
            return
        for bigger in ideals:
            if len(bigger) > len(ideal) and ideal < bigger:
                stage = list(bigger - ideal)
                assignment[stage] = p
                extend(bigger, p + 1, assignment)
                assignment[stage] = -1

    extend(frozenset(), 0, np.full(n, -1))
    return np.array(out)


def brute_times(graph: Graph, candidates: np.ndarray, cluster, m: int) -> np.ndarray:
    """max_d T_d of every row of `candidates` (SPEC section 5, uniform links)."""
    arrays = graph_arrays(graph)
    c, k = len(candidates), cluster.k
    rows = np.arange(c)
    speed = cluster.speeds[0]
    bandwidth, latency = cluster.bandwidth[0, 1], cluster.latency[0, 1]
    times = np.zeros((c, k))
    for v, nd in enumerate(graph.nodes):
        share = 1.0 if arrays.batch_dependent[v] else 1.0 / m
        own = candidates[:, v]
        times[rows, own] += arrays.train_flops[v] * share / speed
        on = np.zeros((c, k), dtype=bool)
        for reader in graph.consumers(nd.name):
            on[rows, candidates[:, graph.index[reader]]] = True
        on[rows, own] = False
        t = share * (latency + arrays.bytes[v] / bandwidth)
        times[rows, own] += on.any(axis=1) * t
        times += on * t
        if arrays.requires_grad[v]:
            times += on * t
            times[rows, own] += on.sum(axis=1) * t
    return times.max(axis=1)


def acyclic_rows(graph: Graph, candidates: np.ndarray, k: int) -> np.ndarray:
    """Which assignments have an acyclic quotient graph."""
    c = len(candidates)
    reach = np.zeros((c, k, k), dtype=bool)
    rows = np.arange(c)
    for nd in graph.nodes:
        for inp in nd.inputs:
            a, b = candidates[:, graph.index[inp]], candidates[:, graph.index[nd.name]]
            reach[rows, a, b] |= a != b
    for _ in range(k):
        reach |= np.einsum("cij,cjl->cil", reach.astype(np.int32), reach.astype(np.int32)) > 0
    return ~np.diagonal(reach, axis1=1, axis2=2).any(axis=1)


def cases():
    rng = np.random.default_rng(2020)
    made = []
    while len(made) < CASES:
        training = len(made) % 2 == 1
        graph = random_dag(rng, training)
        if len(all_ideals(graph)) > MAX_IDEALS:
            continue
        made.append((graph, training, int(rng.integers(1, 4)), float(rng.uniform(0, 0.5)),
                     float(rng.uniform(50, 2000))))
    return made


def test_pipeline_dp_equals_brute_force_over_acyclic_placements():
    compared = trained = 0
    for graph, training, m, latency, bandwidth in cases():
        assert graph_arrays(graph).requires_grad.any() == training
        for k in (2, 3, 4):
            cluster = uniform(k, flops=100.0, bandwidth=bandwidth, latency=latency)
            problem = Problem.build(graph, cluster, objective="throughput", micro_batches=m)
            result = pipeline_dp(problem)
            got = stage_times(graph, result.assignment, cluster, micro_batches=m)
            assert got.acyclic
            chains = chain_assignments(graph, k)
            best = brute_times(graph, chains, cluster, m).min()
            assert got.time_per_micro_batch == pytest.approx(best, rel=1e-9), graph
            assert result.optimal
            if len(graph) <= 7:
                every = np.array(np.meshgrid(*[np.arange(k)] * len(graph), indexing="ij")
                                 ).reshape(len(graph), -1).T
                every = every[acyclic_rows(graph, every, k)]
                assert brute_times(graph, every, cluster, m).min() == pytest.approx(best,
                                                                                    rel=1e-12)
            compared += 1
            trained += training
    assert compared >= 600 and trained >= 300
