"""`partition(..., shard="auto")` (partition/sharding.py): heavy nodes are found from the
training FLOPs, the sharded graph is kept only when it improves the objective (never worse
than shard off), the placement names the rewritten graph's nodes, and bad values are refused."""
from __future__ import annotations

import numpy as np
import pytest

from autodiff.models import gpt, mlp
from partition.api import partition
from partition.cluster import uniform
from partition.cost import graph_arrays, step_train_flops
from partition.errors import PlacementError
from partition.sharding import choose_specs, heavy_nodes, score, sharded_graph


def big_vocab_gpt():
    """A GPT whose LM head is most of the work (vocab 2048 against d_model 16)."""
    return gpt(layers=1, d_model=16, heads=2, seq=8, vocab=2048, batch=2, tied=False)


def test_heavy_nodes_are_those_above_a_devices_share():
    g = big_vocab_gpt()
    arrays = graph_arrays(g)
    w = step_train_flops(arrays)
    k = 4
    share = w.sum() / k
    expected = [arrays.names[v] for v in np.argsort(-w, kind="stable") if w[v] > share
                and g[arrays.names[v]].op in ("matmul", "take", "conv2d", "cross_entropy")]
    head = g.by_op("cross_entropy")[0].inputs[0]
    assert expected == [head]                     # the LM head, by hand
    got = heavy_nodes(g, uniform(k))
    assert [name for name, _, _ in got] == expected
    assert got[0][2] == pytest.approx(share)
    schemes = choose_specs(g, uniform(k))
    least = int(np.ceil(w[arrays.names.index(head)] / share))
    assert schemes[0][head].shards == least and schemes[0][head].mode == "out"
    assert schemes[0]["cross_entropy"].shards == least        # logits never whole
    assert schemes[0]["cross_entropy"].mode == "vocab"
    assert any(s[head].shards == k for s in schemes)


@pytest.mark.parametrize("objective,algorithm", [("throughput", "pipeline_dp"),
                                                 ("volume", "multilevel")])
def test_auto_is_never_worse_and_names_the_sharded_graph(objective, algorithm):
    g, c = big_vocab_gpt(), uniform(4, flops=1e8)   # compute-bound
    off = partition(g, c, algorithm=algorithm, objective=objective, epsilon=0.10)
    auto = partition(g, c, algorithm=algorithm, objective=objective, epsilon=0.10, shard="auto")
    info = auto.info["sharding"]
    assert score(auto, objective, 0.10, c.speeds) <= score(off, objective, 0.10, c.speeds)
    assert info["kept"]                           # the head dominates: sharding pays off
    s = sharded_graph(g, auto)
    assert auto.node_names == tuple(n.name for n in s.nodes)
    assert info["bytes_added"] == auto.metrics.step_volume - off.metrics.step_volume
    if objective == "throughput":
        assert info["sharded"] < info["unsharded"] == pytest.approx(
            off.info["pipeline"]["time_per_micro_batch"])
        assert (np.asarray(auto.metrics.loads) > 0).sum() > (np.asarray(off.metrics.loads) > 0
                                                              ).sum()
    else:
        assert off.relaxed_by is not None and auto.relaxed_by is None
        loads = np.asarray(auto.metrics.loads)
        assert loads.max() <= 1.10 * loads.mean() * (1 + 1e-9)


def test_shards_of_the_head_land_on_different_devices_under_throughput():
    g, c = big_vocab_gpt(), uniform(4, flops=1e8)   # compute-bound
    auto = partition(g, c, algorithm="pipeline_dp", objective="throughput", shard="auto")
    where = dict(zip(auto.node_names, auto.assignment.tolist()))
    for node in auto.info["sharding"]["nodes"]:
        n = node["shards"]
        devices = [where[f"{node['name']}.shard{i}of{n}"] for i in range(n)
                   if f"{node['name']}.shard{i}of{n}" in where]
        colocated = len(set(devices)) < len(devices)
        assert colocated == (node["name"] in auto.info["sharding"]["colocated"])
    head = g.by_op("cross_entropy")[0].inputs[0]
    assert head not in auto.info["sharding"]["colocated"]


def test_nothing_heavy_changes_nothing():
    g, c = mlp(layers=3, width=32, in_features=32, classes=8, batch=16), uniform(2)
    assert choose_specs(g, c) == []
    off = partition(g, c, algorithm="multilevel", epsilon=0.5)
    auto = partition(g, c, algorithm="multilevel", epsilon=0.5, shard="auto")
    np.testing.assert_array_equal(auto.assignment, off.assignment)
    assert not auto.info["sharding"]["kept"] and auto.info["sharding"]["candidates"] == 0
    assert sharded_graph(g, auto) is g


def test_bad_shard_value_is_refused():
    g = mlp(layers=1, width=4, in_features=4, classes=2, batch=2)
    with pytest.raises(PlacementError, match="shard: expected one of off, auto"):
        partition(g, uniform(2), shard="yes")
