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


@pytest.mark.parametrize("n", [2, 3, 5])
def test_vocab_parallel_loss_gives_the_original_loss_and_gradients(n):
    """The per-shard log-sum-exp loss against the unsharded graph (float64, 1e-12), by the
    interpreter on the training graphs; each shard's lse reads its own logits shard only."""
    from autodiff.interpreter import evaluate
    from autodiff.models import init_params, make_data
    from autodiff.reverse import vjp
    from autodiff.shard import ShardSpec, join_params, shard_graph, split_params
    g = gpt(layers=1, d_model=8, heads=2, seq=4, vocab=50, batch=2, tied=False, dtype="float64")
    head = g.by_op("cross_entropy")[0].inputs[0]
    s = shard_graph(g, {head: ShardSpec(n, "out", True),
                        "cross_entropy": ShardSpec(n, "vocab", True)})
    assert not s.by_op("concatenate")                 # the logits are never whole
    assert s["cross_entropy.lses"].shape == (n, 8)    # only per-row scalars are combined
    for i in range(n):                                # no shard waits on another's values
        seen, todo = set(), [f"cross_entropy.shard{i}of{n}.lse"]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += list(s[name].inputs)
        assert not {x for x in seen if "cross_entropy.shard" in x and f"shard{i}of{n}" not in x}
    params, feeds = init_params(g, 3), make_data(g, "gpt", 3)(0)

    def loss_and_grads(graph, values):
        train = vjp(graph)
        names = [graph.outputs[0], *train.meta["grads"].values()]
        out = evaluate(train, feeds, values, outputs=names)
        return out[graph.outputs[0]], {p: out[q] for p, q in train.meta["grads"].items()}

    loss, grads = loss_and_grads(g, params)
    sloss, sgrads = loss_and_grads(s, split_params(s, params))
    assert sloss == pytest.approx(loss, rel=1e-12)
    joined = join_params(s, sgrads)
    for name, value in grads.items():
        np.testing.assert_allclose(joined[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("bandwidth,flops", [(1e8, 1e9), (1e7, 1e8), (1e9, 1e8)])
def test_pulling_loss_shards_beside_their_logits_is_never_worse(bandwidth, flops):
    """Where shipping logits shards costs more than the loss pieces' compute, the pieces move
    beside their logits (acyclic, better); otherwise the placement is returned unchanged."""
    from autodiff.shard import ShardSpec, shard_graph, shard_record
    from partition.sharding import pull_loss_shards
    g, c = big_vocab_gpt(), uniform(4, flops=flops, bandwidth=bandwidth)
    head = g.by_op("cross_entropy")[0].inputs[0]
    s = shard_graph(g, {head: ShardSpec(3, "out", True),
                        "cross_entropy": ShardSpec(3, "vocab", True)})
    options = dict(algorithm="pipeline_dp", objective="throughput")
    p = partition(s, c, **options)
    q = pull_loss_shards(s, p, c, options)
    before, after = (score(x, "throughput", 0.1, c.speeds) for x in (p, q))
    assert after <= before
    if q is p:
        assert bandwidth == 1e9              # fast links: nothing to gain here
        return
    assert after < before and q.metrics.acyclic
    from partition.stage_time import stage_times
    assert after[1] == pytest.approx(stage_times(graph_arrays(s), q.assignment, c)
                                     .time_per_micro_batch)
    where = dict(zip(q.node_names, q.assignment.tolist()))
    for members in shard_record(s)["nodes"]["cross_entropy"]["parts"]:
        assert {where[m] for m in members} == {where[s[members[0]].inputs[0]]}
