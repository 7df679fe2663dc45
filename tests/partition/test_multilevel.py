"""Multilevel partitioning: exact objective and gains, contraction, acyclic coarsening, caps,
planted optima, the link-time objective, determinism."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from autodiff.ir import Graph, Node
from dags import random_dags
from partition.algorithms.coarsen import coarsen_once, hierarchy
from partition.algorithms.fm import _FM, fm_refine
from partition.algorithms.hypergraph import (Caps, Hypergraph, contract, from_dag, from_problem,
                                             loads, objective, pin_counts, time_cost)
from partition.algorithms.multilevel import multilevel, multilevel_partition
from partition.algorithms.refine import gain_matrix, label_propagation, rebalance
from partition.api import partition
from partition.cluster import hierarchical, uniform
from partition.problem import Problem
from reference_volume import acyclic as is_acyclic
from reference_volume import granular, granular_dags, load_caps, loads as reference_loads
from reference_volume import requires_grad, step_volume
from reference_volume import time_weighted_volume


def random_hypergraph(rng, n=40, k=4, link=False):
    """A random DAG (edges from earlier to later ids) as a hypergraph, maybe with link costs."""
    src, dst = [], []
    for v in range(1, n):
        for u in rng.choice(v, size=min(v, int(rng.integers(1, 4))), replace=False):
            src.append(u)
            dst.append(v)
    hg = from_dag(n, np.array(src), np.array(dst), rng.integers(1, 100, n).astype(float),
                  rng.integers(0, 10, n).astype(float), rng.integers(0, 5, n).astype(float))
    if link:
        bw = rng.uniform(1, 10, (k, k))
        lat = rng.uniform(0, 2, (k, k))
        cost = time_cost(hg.net_weight, rng.integers(0, 2, hg.num_nets).astype(float),
                         np.ones(hg.num_nets), bw, lat)
        hg = Hypergraph(hg.n, hg.net_ptr, hg.net_pins, hg.net_weight, hg.node_weight, hg.node_mem,
                        hg.fixed, cost)
    return hg


def brute_objective(hg, part, k):
    """Objective straight from the definition: per net, each part other than the source's holding
    a pin costs weight (volume) or the link cost from the source's part."""
    total = 0.0
    for e in range(hg.num_nets):
        pins = hg.net_pins[hg.net_ptr[e]:hg.net_ptr[e + 1]]
        s = part[pins[0]]
        for d in set(part[pins].tolist()) - {s}:
            if hg.cost is None:
                total += hg.net_weight[e]
            else:
                total += float(hg.cost.coef[e] @ hg.cost.mats[:, s, d])
    return total


# ------------------------------------------------------------------ objective and gains
@settings(max_examples=30, deadline=None)
@given(random_dags(max_ops=12), st.integers(2, 4), st.integers(0, 2**31))
def test_objective_is_spec_step_volume(graph, k, seed):
    p = Problem.build(graph, uniform(k))
    hg, _ = from_problem(p)
    a = np.random.default_rng(seed).integers(0, k, len(graph.nodes))
    assert objective(hg, a, k) == step_volume(graph, a)


@settings(max_examples=20, deadline=None)
@given(random_dags(max_ops=12), st.integers(0, 2**31))
def test_link_objective_is_time_weighted_volume(graph, seed):
    cluster = hierarchical(2, 2, intra_bandwidth=300e9, inter_bandwidth=25e9,
                           intra_latency=2e-6, inter_latency=1e-5)
    p = Problem.build(graph, cluster, objective="time")
    hg, _ = from_problem(p)
    a = np.random.default_rng(seed).integers(0, 4, len(graph.nodes))
    expected = time_weighted_volume(graph, a, cluster.bandwidth, cluster.latency)
    assert objective(hg, a, 4) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("link", [False, True])
def test_gains_equal_objective_differences_and_fm_cache_stays_exact(link):
    rng = np.random.default_rng(1)
    k = 4
    hg = random_hypergraph(rng, n=30, k=k, link=link)
    part = rng.integers(0, k, hg.n)
    fm = _FM(hg, part, Caps(np.full(k, 1e18), np.full(k, np.inf)), False, rng)
    for _ in range(200):
        v, b = int(rng.integers(hg.n)), int(rng.integers(k))
        if b == fm.part[v]:
            continue
        moved = fm.part.copy()
        moved[v] = b
        true = brute_objective(hg, fm.part, k) - brute_objective(hg, moved, k)
        g = gain_matrix(hg, fm.part, pin_counts(hg, fm.part, k), np.array([v]), k)[0, b]
        assert g == pytest.approx(true, abs=1e-9)
        assert fm.gains(v)[b] == pytest.approx(true, abs=1e-9)
        fm.move(v, b)


@pytest.mark.parametrize("link", [False, True])
def test_contraction_preserves_the_objective(link):
    rng = np.random.default_rng(2)
    k = 3
    hg = random_hypergraph(rng, n=40, k=k, link=link)
    for cid, nc in [coarsen_once(hg, rng, max_weight=30.0, max_mem=np.inf, acyclic=False),
                    (rng.integers(0, 15, hg.n), 15)]:
        coarse = contract(hg, cid, nc)
        assert coarse.node_weight.sum() == pytest.approx(hg.node_weight.sum())
        for _ in range(10):
            pc = rng.integers(0, k, nc)
            assert objective(coarse, pc, k) == pytest.approx(brute_objective(hg, pc[cid], k))


def test_acyclic_coarsening_keeps_every_level_a_topologically_numbered_dag():
    rng = np.random.default_rng(3)
    hg = random_hypergraph(rng, n=400)
    levels, maps, _ = hierarchy(hg, 4, rng, acyclic=True, max_weight=50.0, max_mem=np.inf,
                                target=20)
    assert len(levels) > 2
    for fine, cid, coarse in zip(levels, maps, levels[1:]):
        s, t = coarse.edges()
        assert (s < t).all()  # every coarse edge runs forward: ids are a topological order
        fs, ft = fine.edges()
        cross = cid[fs] != cid[ft]
        assert (cid[fs][cross] < cid[ft][cross]).all()


# ------------------------------------------------------------------ local search
def test_refinement_never_worsens_and_respects_caps():
    rng = np.random.default_rng(4)
    k = 4
    hg = random_hypergraph(rng, n=200, k=k)
    caps = Caps(np.full(k, hg.node_weight.sum() / k * 1.1), np.full(k, hg.node_mem.sum() / k * 1.2))
    part = rebalance(hg, rng.integers(0, k, hg.n), caps, acyclic=False)
    load, mem = loads(hg, part, k)
    assert (load <= caps.load).all() and (mem <= caps.memory).all()
    before = objective(hg, part, k)
    lp = label_propagation(hg, part, caps, acyclic=False, rng=rng)
    fm = fm_refine(hg, lp, caps, acyclic=False, rng=rng)
    assert objective(hg, lp, k) <= before and objective(hg, fm, k) <= objective(hg, lp, k)
    for p in (lp, fm):
        load, mem = loads(hg, p, k)
        assert (load <= caps.load * (1 + 1e-9)).all() and (mem <= caps.memory).all()


def test_rebalance_clears_room_for_a_heavy_node():
    # parts 0..2 each hold one heavy node (6) plus light ones; part 0 also holds a second heavy
    # node, so it can only be fixed by first moving light nodes off some other part
    weights = [6, 6, 1, 1, 6, 1, 1, 1, 6, 1, 1]
    part = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    n = len(weights)
    hg = from_dag(n, np.arange(n - 1), np.arange(1, n), np.ones(n), np.array(weights, float))
    caps = Caps(np.full(3, 13.0), np.full(3, np.inf))
    fixed = rebalance(hg, part, caps, acyclic=False)
    assert (loads(hg, fixed, 3)[0] <= 13).all()


# ------------------------------------------------------------------ planted optima
def planted(k=4, size=30, seed=0):
    """k dense clusters (heavy tensors inside) joined by a few light tensors between clusters."""
    rng = np.random.default_rng(seed)
    n = k * size
    src, dst = [], []
    for c in range(k):
        base = c * size
        for v in range(1, size):
            for u in rng.choice(v, size=min(v, 2), replace=False):
                src.append(base + u)
                dst.append(base + v)
    light = []
    for c in range(k - 1):
        for _ in range(3):
            u = c * size + int(rng.integers(size))
            v = (c + 1) * size + int(rng.integers(size))
            src.append(u)
            dst.append(v)
            light.append(u)
    weight = np.full(n, 1000.0)
    weight[light] = 1.0  # a light node's tensor only goes to the next cluster's node
    truth = np.repeat(np.arange(k), size)
    return from_dag(n, np.array(src), np.array(dst), weight, np.ones(n)), truth


@pytest.mark.parametrize("acyclic", [False, True])
def test_multilevel_finds_the_planted_optimum(acyclic):
    for seed in range(3):
        hg, truth = planted(seed=seed)
        caps = Caps(np.full(4, hg.n / 4 * 1.1), np.full(4, np.inf))
        part = multilevel_partition(hg, caps, acyclic=acyclic, seed=seed)
        # one whole cluster per part: the light tensors alone are cut
        assert objective(hg, part, 4) == objective(hg, truth, 4)
        assert all(len(set(part[truth == c].tolist())) == 1 for c in range(4))


def layered_graph(clusters=4, width=6, depth=5):
    """Graph version of a planted instance: each cluster a chain of layers with its own param."""
    nodes = [Node("x", "input", (), (8,), flops=0)]
    for c in range(clusters):
        nodes.append(Node(f"w{c}", "param", (), (256,), flops=0))
        prev = [f"w{c}"] + ([f"c{c - 1}_{depth - 1}_0"] if c else ["x"])
        for d in range(depth):
            layer = [f"c{c}_{d}_{i}" for i in range(width)]
            for i, name in enumerate(layer):
                nodes.append(Node(name, "f", tuple(prev[j % len(prev)] for j in (i, i + 1)),
                                  (256,), flops=10))
            prev = layer
    return Graph(nodes, [nodes[-1].name], name="layered")


def test_multilevel_through_the_api_is_balanced_and_deterministic():
    g = layered_graph()
    a = partition(g, uniform(4), algorithm="multilevel", seed=5)
    b = partition(g, uniform(4), algorithm="multilevel", seed=5)
    assert (a.assignment == b.assignment).all()
    assert a.metrics.imbalance <= 1.10 + 1e-9
    assert a.metrics.step_volume == step_volume(g, a.assignment)
    # the natural split (one cluster per device) cuts 3 chain tensors of 1 KiB, with gradients
    assert a.metrics.step_volume <= 3 * 1024 * 2


@settings(max_examples=25, deadline=None)
@given(st.one_of(random_dags(max_ops=14), granular_dags()), st.integers(2, 4), st.booleans(),
       st.integers(0, 100))
def test_valid_balanced_memory_feasible_and_acyclic_on_random_dags(graph, k, acyclic, seed):
    p = Problem.build(graph, uniform(k), epsilon=0.1, acyclic=acyclic, seed=seed)
    a = multilevel(p).assignment
    assert a.shape == (len(graph.nodes),) and a.min() >= 0 and a.max() < k
    caps = load_caps(graph, k, 0.1)
    if acyclic:
        assert is_acyclic(graph, a, k)
    if granular(graph, k, 0.1):  # then a balanced placement exists in any topological order
        assert (reference_loads(graph, a, k) <= caps * (1 + 1e-9)).all()
        placed = partition(graph, uniform(k), algorithm="multilevel", epsilon=0.1, acyclic=acyclic,
                           seed=seed)
        assert (placed.metrics.memory <= uniform(k).memory).all()


def test_pins_are_honoured():
    g = layered_graph()
    pins = {"w0": 3, "w3": 0, "c1_2_*": 2}
    p = Problem.build(g, uniform(4), pins=pins, acyclic=False)
    a = multilevel(p).assignment
    names = [n.name for n in g.nodes]
    assert a[names.index("w0")] == 3 and a[names.index("w3")] == 0
    assert all(a[i] == 2 for i, nm in enumerate(names) if nm.startswith("c1_2_"))


def test_memory_caps_bound_each_part():
    rng = np.random.default_rng(6)
    k = 3
    hg = random_hypergraph(rng, n=120, k=k)
    mem_cap = hg.node_mem.sum() / k * 1.05
    caps = Caps(np.full(k, hg.node_weight.sum()), np.full(k, mem_cap))
    part = multilevel_partition(hg, caps, seed=1)
    assert (loads(hg, part, k)[1] <= mem_cap).all()


def test_time_objective_keeps_heavy_traffic_inside_a_machine():
    # two pairs of clusters: A-B and C-D exchange medium tensors, the pairs exchange one light
    # tensor; on 2 machines x 2 devices the time objective puts each pair on one machine
    k, size = 4, 20
    rng = np.random.default_rng(7)
    src, dst, light = [], [], []
    for c in range(k):
        for v in range(1, size):
            u = int(rng.integers(v))
            src += [c * size + u]
            dst += [c * size + v]
    medium = []
    for a, b in ((0, 1), (2, 3)):
        for i in range(3):
            src.append(a * size + i)
            dst.append(b * size + size - 1 - i)
            medium.append(a * size + i)
    src.append(1 * size + 5)
    dst.append(2 * size + 7)
    light.append(1 * size + 5)
    n = k * size
    weight = np.full(n, 1e6)
    weight[medium] = 1e3
    weight[light] = 1.0
    cluster = hierarchical(2, 2, intra_bandwidth=300e9, inter_bandwidth=1e9,
                           intra_latency=0.0, inter_latency=0.0)
    base = from_dag(n, np.array(src), np.array(dst), weight, np.ones(n))
    cost = time_cost(base.net_weight, np.zeros(base.num_nets), np.ones(base.num_nets),
                     cluster.bandwidth, cluster.latency)
    hg = Hypergraph(n, base.net_ptr, base.net_pins, base.net_weight, base.node_weight,
                    base.node_mem, base.fixed, cost)
    part = multilevel_partition(hg, Caps(np.full(k, n / k * 1.1), np.full(k, np.inf)), seed=0)
    machine = part // 2
    cluster_machine = [set(machine[c * size:(c + 1) * size].tolist()) for c in range(k)]
    assert all(len(m) == 1 for m in cluster_machine)
    assert cluster_machine[0] == cluster_machine[1] != cluster_machine[2] == cluster_machine[3]


def test_requires_grad_reference_matches_problem_arrays():
    g = layered_graph(clusters=2, width=2, depth=2)
    p = Problem.build(g, uniform(2))
    rg = requires_grad(g)
    assert [rg[n.name] for n in g.nodes] == p.arrays.requires_grad.tolist()


def test_local_search_works_at_the_scale_of_seconds():
    # link times of microseconds: gains must not be mistaken for rounding noise
    rng = np.random.default_rng(8)
    k = 4
    base = random_hypergraph(rng, n=150, k=k)
    cluster = hierarchical(2, 2, intra_bandwidth=300e9, inter_bandwidth=25e9)
    cost = time_cost(base.net_weight, np.ones(base.num_nets), np.ones(base.num_nets),
                     cluster.bandwidth, cluster.latency)
    hg = Hypergraph(base.n, base.net_ptr, base.net_pins, base.net_weight, base.node_weight,
                    base.node_mem, base.fixed, cost)
    caps = Caps(np.full(k, hg.node_weight.sum() / k * 1.2), np.full(k, np.inf))
    start = rebalance(hg, rng.integers(0, k, hg.n), caps, acyclic=False)
    lp = label_propagation(hg, start, caps, acyclic=False, rng=rng)
    fm = fm_refine(hg, lp, caps, acyclic=False, rng=rng)
    assert objective(hg, lp, k) < 0.8 * objective(hg, start, k)
    assert objective(hg, fm, k) <= objective(hg, lp, k)
