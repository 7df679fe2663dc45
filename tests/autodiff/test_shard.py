"""The sharding rewrite (autodiff/shard.py): sharded forward graphs compute the original's
outputs, and their training graphs give the original's gradients after joining shard
gradients (float64, 1e-12); the vocab-parallel loss never holds the full logits; bad
requests name the node; the local executor trains a sharded graph placed across devices."""
from __future__ import annotations

import doctest
import json

import numpy as np
import pytest

import autodiff.shard
from autodiff.interpreter import evaluate
from autodiff.io import load_graph, save_graph
from autodiff.ir import Graph, GraphError, Node
from autodiff.models import gpt, init_params, lstm, make_data, mlp, resnet
from autodiff.ops.registry import registry
from autodiff.reverse import vjp
from autodiff.shard_follow import follow_rule
from autodiff.shard import (ShardSpec, join_params, shard_bounds, shard_graph, shard_index,
                            shard_record, split_params)

TOL = 1e-12


def matmul_of(graph: Graph, weight: str) -> str:
    """The matmul reading `weight` (the model builders name matmuls by counter)."""
    return next(n.name for n in graph.nodes if n.op == "matmul" and n.inputs[1] == weight)


def conv_of(graph: Graph, weight: str) -> str:
    return next(n.name for n in graph.nodes if n.op == "conv2d" and n.inputs[1] == weight)


def outputs_and_grads(graph: Graph, params: dict, feeds: dict):
    """Forward outputs (incl. state updates) and every param's gradient, by the interpreter."""
    train = vjp(graph)
    names = list(graph.outputs) + list(graph.meta.get("updates", {}).values())
    out = evaluate(train, feeds, params, outputs=names + list(train.meta["grads"].values()))
    return ({n: out[n] for n in names},
            {p: out[g] for p, g in train.meta["grads"].items()})


def assert_close(got, expected, what: str):
    got, expected = np.asarray(got), np.asarray(expected)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL * scale, err_msg=what)


def check_equivalent(graph: Graph, sharded: Graph, family: str, seed: int = 0) -> None:
    """Same outputs, and the same gradient for every original parameter after joining."""
    params = init_params(graph, seed)
    feeds = make_data(graph, family, seed)(0)
    outs, grads = outputs_and_grads(graph, params, feeds)
    souts, sgrads = outputs_and_grads(sharded, split_params(sharded, params), feeds)
    for name, value in outs.items():
        assert_close(souts[name], value, name)
    joined = join_params(sharded, sgrads)
    assert set(joined) == set(grads)
    for name, value in grads.items():
        assert_close(joined[name], value, f"gradient of {name}")


def check_flops(graph: Graph, sharded: Graph, combine: int) -> None:
    """Each sharded node's shards cost its FLOPs, and the graph costs the original's plus
    `combine`, the combines' cost counted by hand (sum_combine, vocab_combine)."""
    record = shard_record(sharded)["nodes"]
    for name, entry in record.items():
        if entry["mode"] in ("out", "reduce", "channels", "rows", "follow"):
            parts = [sharded[p] for ps in entry["parts"] for p in ps]
            assert sum(sharded.node_flops(p) for p in parts) == graph.node_flops(graph[name])
    assert sharded.total_flops() == graph.total_flops() + combine


def sum_combine(n: int, size: int) -> int:
    """Adding n partial results of `size` elements: one add_n, n - 1 additions per element."""
    return (n - 1) * size


def vocab_combine(n: int, rows: int) -> int:
    """The vocab-parallel loss's extra FLOPs on `rows` per-row scalars (its per-shard max,
    shift, exp and sum cost cross_entropy's 4 per logit): per shard log and + max (2n); the
    combine's max, shift, exp and sum over the n lses (4n), its log and + max (2); the n-way
    add_n of the targets (n - 1), - target and the mean (2)."""
    return (7 * n + 3) * rows


# --------------------------------------------------------------------- ops
def test_shard_gathers_sum_to_the_unsharded_gathers():
    rng = np.random.default_rng(0)
    table, idx = rng.standard_normal((12, 3)), rng.integers(0, 12, (4, 5))
    take, pick = registry()["shard_take"].forward, registry()["shard_pick"].forward
    total = sum(take(table[i:i + 4], idx, offset=i, total=12) for i in (0, 4, 8))
    np.testing.assert_array_equal(total, table[idx])
    logits, labels = rng.standard_normal((4, 5, 12)), rng.integers(0, 12, (4, 5))
    picked = sum(pick(logits[..., i:i + 3], labels, offset=i, total=12) for i in range(0, 12, 3))
    expected = np.array([[logits[a, b, labels[a, b]] for b in range(5)] for a in range(4)])
    np.testing.assert_array_equal(picked, expected)


# -------------------------------------------------------------------- MLP
def small_mlp(classes: int = 4):
    return mlp(layers=2, width=8, in_features=6, classes=classes, batch=5, dtype="float64")


def test_mlp_column_then_row_parallel_stays_split_until_the_sum():
    g = small_mlp()
    fc, proj = matmul_of(g, "layer0.weight"), matmul_of(g, "layer1.weight")
    s = shard_graph(g, {fc: ShardSpec(4, "out"), proj: ShardSpec(4, "reduce")})
    check_equivalent(g, s, "mlp")
    check_flops(g, s, sum_combine(4, 5 * 8))
    names = {n.name for n in s.nodes}
    # matmul -> bias add -> relu stays in shards; the next matmul reads them: no concat
    for i in range(4):
        assert {f"{fc}.shard{i}of4", f"add.shard{i}of4", f"relu.shard{i}of4",
                f"{proj}.shard{i}of4", f"layer0.weight.shard{i}of4",
                f"layer0.bias.shard{i}of4", f"layer1.weight.shard{i}of4"} <= names
    assert not s.by_op("concatenate") and not s.by_op("getitem")
    assert s[proj].op == "add_n"                                  # the partial sums' combine
    assert "layer0.weight" not in s and "layer1.weight" in {n.name for n in g.params}
    for n in s.nodes:
        if shard_index(n.name):
            base = n.name.split(".shard")[0]
            assert n.group == g[base].group
    assert s.outputs == g.outputs
    json.dumps(s.meta["shards"])                                  # JSON-able record
    entry = shard_record(s)["params"]["layer0.weight"]
    assert entry["axis"] == 1 and entry["bounds"] == [[0, 2], [2, 4], [4, 6], [6, 8]]


def test_mlp_vocab_parallel_head_and_loss():
    g = small_mlp(classes=9)
    head, ce = matmul_of(g, "head.weight"), g.by_op("cross_entropy")[0].name
    s = shard_graph(g, {head: 3, ce: (3, "vocab")})
    check_equivalent(g, s, "mlp")
    assert all(n.shape != (5, 9) for n in vjp(s).nodes)          # no full logits, nor gradient
    check_flops(g, s, vocab_combine(3, 5))


@pytest.mark.parametrize("seed", range(6))
def test_random_mlp_shardings_are_equivalent(seed):
    """Random widths, shard counts (uneven allowed) and modes for every matmul, with the
    head and loss vocab-parallel or not: always the original outputs and gradients."""
    rng = np.random.default_rng(seed)
    g = mlp(layers=3, width=int(rng.integers(4, 12)), in_features=int(rng.integers(3, 9)),
            classes=int(rng.integers(3, 9)), batch=4,
            activation=["relu", "gelu", "tanh", "sigmoid"][seed % 4], dtype="float64")
    specs = {}
    for m in g.by_op("matmul"):
        k, n_out = g[m.inputs[1]].shape
        mode = ["out", "reduce"][int(rng.integers(0, 2))]
        size = n_out if mode == "out" else k
        specs[m.name] = ShardSpec(int(rng.integers(2, size + 1)), mode, uneven=True)
    ce = g.by_op("cross_entropy")[0]
    if specs[matmul_of(g, "head.weight")].mode == "out" and seed % 2:
        specs[ce.name] = ShardSpec(specs[matmul_of(g, "head.weight")].shards, "vocab",
                                   uneven=True)
    s = shard_graph(g, specs)
    check_equivalent(g, s, "mlp", seed)


def test_split_and_join_are_inverse_and_check_shapes():
    g = small_mlp()
    s = shard_graph(g, {matmul_of(g, "layer0.weight"): 2})
    params = init_params(g, 3)
    split = split_params(s, params)
    assert set(split) == {p.name for p in s.params}
    joined = join_params(s, split)
    assert set(joined) == set(params)
    for name, value in params.items():
        np.testing.assert_array_equal(joined[name], value)
    np.testing.assert_array_equal(split["layer0.weight.shard1of2"], params["layer0.weight"][:, 4:])
    with pytest.raises(GraphError, match="layer0.weight"):
        split_params(s, {"layer0.weight": np.zeros((3, 8))})
    partial = join_params(s, {"layer0.weight.shard0of2": np.ones((6, 4)),
                              "layer0.weight.shard1of2": None})
    np.testing.assert_array_equal(partial["layer0.weight"][:, 4:], 0)


def test_the_docstring_example_runs():
    failures, tried = doctest.testmod(autodiff.shard)
    assert tried > 5 and failures == 0


def test_uneven_shards_when_asked():
    assert shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    g = mlp(layers=1, width=10, in_features=6, classes=7, batch=5, dtype="float64")
    fc, head = matmul_of(g, "layer0.weight"), matmul_of(g, "head.weight")
    ce = g.by_op("cross_entropy")[0].name
    with pytest.raises(GraphError, match="4 shards do not divide.*uneven=True"):
        shard_graph(g, {fc: 4})
    s = shard_graph(g, {fc: ShardSpec(4, "out", uneven=True),
                        head: ShardSpec(3, "out", uneven=True),
                        ce: ShardSpec(3, "vocab", uneven=True)})
    assert [s[f"{fc}.shard{i}of4"].shape for i in range(4)] == [(5, 3), (5, 3), (5, 2), (5, 2)]
    assert [s[f"{ce}.shard{i}of3.target"].attrs["offset"] for i in range(3)] == [0, 3, 5]
    check_equivalent(g, s, "mlp")


def test_the_parameter_record_survives_a_graph_file(tmp_path):
    g = small_mlp()
    s = shard_graph(g, {matmul_of(g, "layer0.weight"): 2, matmul_of(g, "layer1.weight"):
                        ShardSpec(4, "reduce")})
    save_graph(s, tmp_path / "sharded.json.gz")
    back = load_graph(tmp_path / "sharded.json.gz")
    assert "shards" not in back.meta
    assert shard_record(back)["params"] == shard_record(s)["params"]
    params = init_params(g, 0)
    np.testing.assert_array_equal(join_params(back, split_params(back, params))["layer1.weight"],
                                  params["layer1.weight"])


# -------------------------------------------------------------------- GPT
VOCAB = 12


def small_gpt(tied: bool):
    return gpt(layers=1, d_model=8, heads=2, seq=4, vocab=VOCAB, batch=2, tied=tied,
               dtype="float64")


def gpt_specs(g: Graph, tied: bool, attention: int = 2) -> dict:
    b = "block0"
    specs = {matmul_of(g, f"{b}.attn.{x}.weight"): ShardSpec(attention, "out") for x in "qkv"}
    specs[matmul_of(g, f"{b}.attn.proj.weight")] = ShardSpec(attention, "reduce")
    specs[matmul_of(g, f"{b}.mlp.fc.weight")] = ShardSpec(4, "out")
    specs[matmul_of(g, f"{b}.mlp.proj.weight")] = ShardSpec(4, "reduce")
    head = g.by_op("cross_entropy")[0].inputs[0]
    specs[head] = ShardSpec(4, "out")
    specs[g.by_op("cross_entropy")[0].name] = ShardSpec(4, "vocab")
    specs[g.by_op("take")[0].name] = ShardSpec(4 if tied else 3, "rows")
    return specs


@pytest.mark.parametrize("tied", [False, True])
def test_gpt_sharded_matches_outputs_and_gradients(tied):
    g = small_gpt(tied)
    s = shard_graph(g, gpt_specs(g, tied))
    check_equivalent(g, s, "gpt")
    logits_shape = (2 * 4, VOCAB)
    assert g[g.by_op("cross_entropy")[0].inputs[0]].shape == logits_shape
    for graph in (s, vjp(s)):
        assert not [n.name for n in graph.nodes if n.shape == logits_shape]
    if tied:    # embedding and head share wte's row shards: it is never put back together
        assert "wte" not in s and "wte.shard3of4" in s
    # Megatron's layout: attention stays split by heads from q, k, v to the output
    # projection, the MLP from fc to proj; the only combines are the partial sums.
    assert not s.by_op("concatenate") and not s.by_op("getitem")
    combines = {n.name for n in s.by_op("add_n")}
    assert combines == {"take", matmul_of(g, "block0.attn.proj.weight"),
                        matmul_of(g, "block0.mlp.proj.weight"), "cross_entropy.target"}
    assert [n.name for n in s.by_op("stack")] == ["cross_entropy.lses"]  # the per-shard lses
    assert [s[f"softmax.shard{i}of2"].shape for i in range(2)] == [(2, 1, 4, 4)] * 2
    rows_shards = 4 if tied else 3
    check_flops(g, s, sum_combine(2, 8 * 8) + sum_combine(4, 8 * 8)     # the two "reduce"
                + sum_combine(rows_shards, 2 * 4 * 8) + vocab_combine(4, 8))


def test_gpt_attention_split_across_heads_falls_back_to_whole_heads():
    """4 shards of 2 heads cut through heads: q, k, v are concatenated before the head
    reshape and the projection slices its input, and the results still agree."""
    g = small_gpt(tied=False)
    s = shard_graph(g, gpt_specs(g, tied=False, attention=4))
    check_equivalent(g, s, "gpt")
    heads = [n for n in g.by_op("reshape") if n.shape == (2, 4, 2, 4)]     # (B, T, H, hd)
    assert len(heads) == 3 and "softmax.shard0of4" not in s
    assert all(s[h.inputs[0]].op == "concatenate" for h in heads)        # q, k, v + bias
    assert len(s.by_op("concatenate")) == 3 and len(s.by_op("getitem")) == 4


# ----------------------------------------------------------------- ResNet
def test_resnet_convolutions_split_by_output_channels():
    g = resnet(channels=(4, 8), blocks=1, image=6, in_channels=2, classes=3, batch=2,
               dtype="float64")
    specs = {conv_of(g, "stem.conv.weight"): ShardSpec(2, "channels"),
             conv_of(g, "stage0.block0.conv2.weight"): ShardSpec(4, "channels"),
             conv_of(g, "stage1.block0.shortcut.weight"): ShardSpec(2, "channels")}
    s = shard_graph(g, specs)
    check_equivalent(g, s, "resnet")
    check_flops(g, s, 0)                 # concatenation is free
    assert s.meta["updates"] == g.meta["updates"]
    # conv -> batch norm (per-channel statistics, gamma and beta split) -> relu stay split
    # by channels; the next (unsharded) conv reads the concatenated relu
    assert not set(specs) & {n.name for n in s.nodes}
    assert {"stem.bn.gamma.shard1of2", "stem.bn.beta.shard1of2",
            "batch_norm.shard1of2", "relu.shard1of2"} <= {n.name for n in s.nodes}
    assert s["relu"].op == "concatenate" and s["relu"].attrs["axis"] == 1
    for state, new in g.meta["updates"].items():   # running averages: split, then joined
        if state.startswith("stem."):
            assert s[new].op == "concatenate"


def test_lstm_embedding_by_rows_and_a_reused_weight_split_once():
    """The first step's input projection is split; the later steps reuse the same weight
    whole, so its shards are concatenated back (under its own name) for them."""
    g = lstm(layers=1, hidden=6, vocab=8, seq=3, batch=2, dtype="float64")
    first = matmul_of(g, "layer0.w_ih")
    s = shard_graph(g, {"take": ShardSpec(4, "rows"), first: ShardSpec(2, "out")})
    check_equivalent(g, s, "lstm")
    assert s["layer0.w_ih"].op == "concatenate"
    assert s["layer0.w_ih"].inputs == ("layer0.w_ih.shard0of2", "layer0.w_ih.shard1of2")
    assert [s[f"take.shard{i}of4"].attrs["offset"] for i in range(4)] == [0, 2, 4, 6]


def test_follow_rules_on_shapes():
    def node(op, out_shape, **attrs):
        return Node("x", op, (), out_shape, "float64", attrs)
    heads = node("reshape", (2, 4, 4, 2), shape=[2, 4, 4, 2])       # (B*T, d) -> (B, T, H, hd)
    rule = follow_rule(heads, [(8, 8)], [(1, 2)])
    assert rule.out_axis == 2 and rule.attrs == ({"shape": [2, 4, 2, 2]},) * 2
    assert follow_rule(heads, [(8, 8)], [(1, 8)]) is None            # 8 shards cut heads
    assert follow_rule(heads, [(8, 8)], [(0, 2)]).out_axis == 0      # by rows: batch halves
    merge = node("reshape", (8, 8), shape=[8, 8])                    # (B, T, H, hd) -> (B*T, d)
    assert follow_rule(merge, [(2, 4, 4, 2)], [(2, 4)]).out_axis == 1
    assert follow_rule(merge, [(2, 4, 4, 2)], [(1, 2)]) is None     # T split: not contiguous
    total = node("sum", (8,), axis=[1], keepdims=False)
    assert follow_rule(total, [(8, 6)], [(0, 2)]).out_axis == 0
    assert follow_rule(total, [(8, 6)], [(1, 2)]) is None            # the summed axis
    soft = node("softmax", (8, 6), axis=-1)
    assert follow_rule(soft, [(8, 6)], [(0, 2)]).in_axes == (0,)
    assert follow_rule(soft, [(8, 6)], [(1, 2)]) is None
    bias = node("add", (8, 6))
    assert follow_rule(bias, [(8, 6), (6,)], [(1, 3), None]).in_axes == (1, 0)
    assert follow_rule(bias, [(8, 6), (6,)], [(0, 2), None]).in_axes == (0, None)
    bmm = node("matmul", (2, 4, 3, 5))
    assert follow_rule(bmm, [(2, 4, 3, 6), (6, 5)], [(1, 2), None]).in_axes == (1, None)
    assert follow_rule(bmm, [(2, 4, 3, 6), (6, 5)], [(3, 2), None]) is None   # contracted
    bn = node("batch_norm", (2, 4, 3, 3))
    assert follow_rule(bn, [(2, 4, 3, 3), (4,), (4,)], [(1, 2), None, None]).in_axes == (1, 0, 0)
    assert follow_rule(bn, [(2, 4, 3, 3), (4,), (4,)], [(0, 2), None, None]) is None


# ------------------------------------------------------------ bad requests
@pytest.mark.parametrize("spec,match", [
    ({"nope": 2}, "'nope'.*no node"),
    ({"relu": 2}, "'relu' \\(relu\\).*only"),
    ({"matmul": 3}, "'matmul'.*3 shards do not divide the output features of size 8"),
    ({"matmul": 16}, "'matmul'.*16 shards exceed the output features of size 8"),
    ({"take": 2}, "'take'.*no node"),
    ({"matmul": ShardSpec(2, "rows")}, "'matmul'.*mode 'rows'"),
    ({"matmul": 0}, "'matmul'.*positive integer"),
    ({"cross_entropy": 3}, "'cross_entropy'.*do not divide the classes"),
])
def test_bad_requests_name_the_node(spec, match):
    with pytest.raises(GraphError, match=match):
        shard_graph(small_mlp(), spec)


def test_nothing_to_shard_returns_the_graph():
    g = small_mlp()
    assert shard_graph(g, {}) is g and shard_graph(g, {"matmul": 1}) is g


def test_a_training_graph_or_a_sharded_graph_is_refused():
    g = small_mlp()
    with pytest.raises(GraphError, match="forward graph"):
        shard_graph(vjp(g), {"matmul": 2})
    with pytest.raises(GraphError, match="already sharded"):
        shard_graph(shard_graph(g, {"matmul": 2}), {"matmul_1": 2})


# ------------------------------------------------------------- executor
def shard_placement(graph: Graph, k: int) -> np.ndarray:
    """Shard i (and the slices feeding it) on device i mod k; every other node on device 0."""
    a = np.zeros(len(graph.nodes), dtype=np.int32)
    for j, n in enumerate(graph.nodes):
        where = shard_index(n.name)
        if where:
            a[j] = where[0] % k
    return a


def test_local_executor_keeps_batch_norm_state_of_a_channel_split_resnet():
    from executor.local import LocalExecutor
    from executor.optim import SGD
    g = resnet(channels=(4,), blocks=1, image=6, in_channels=2, classes=3, batch=2,
               dtype="float64")
    s = shard_graph(g, {conv_of(g, "stem.conv.weight"): 2,
                        conv_of(g, "stage0.block0.conv1.weight"): 2})
    params, data = init_params(g, 2), make_data(g, "resnet", 2)
    plain = LocalExecutor(g, np.zeros(len(g.nodes), np.int32), 1, SGD(lr=0.1), params=params)
    split = LocalExecutor(s, shard_placement(s, 2), 2, SGD(lr=0.1),
                          params=split_params(s, params))
    for step in range(3):
        expected, got = plain.step(data(step)).loss, split.step(data(step)).loss
        assert got == pytest.approx(expected, rel=TOL)
    final = join_params(s, split.params)
    for name, value in plain.params.items():
        assert_close(final[name], value, name)
    states, split_states = plain.state_dict()["states"], split.state_dict()["states"]
    assert set(states) == set(split_states) == set(g.meta["updates"])
    for name, value in states.items():         # running averages, built from split shards
        assert np.abs(value).max() > 0
        assert_close(split_states[name], value, name)


@pytest.mark.parametrize("k", [2, 4])
def test_local_executor_trains_the_sharded_gpt_across_devices(k):
    from executor.local import LocalExecutor
    from executor.optim import SGD
    from partition.cluster import uniform
    from partition.metrics import compute_metrics
    g = small_gpt(tied=False)
    s = shard_graph(g, gpt_specs(g, tied=False))
    params, feeds = init_params(g, 1), make_data(g, "gpt", 1)(0)
    outs, grads = outputs_and_grads(g, params, feeds)
    loss = outs[g.outputs[0]]
    a = shard_placement(s, k)
    assert len(set(a.tolist())) == k
    ex = LocalExecutor(s, a, k, SGD(lr=0.1), params=split_params(s, params))
    result = ex.step(feeds, return_grads=True)
    assert result.loss == pytest.approx(float(loss), rel=TOL)
    joined = join_params(s, result.grads)
    for name, value in grads.items():
        assert_close(joined[name], value, f"gradient of {name}")
    assert result.total_bytes > 0
    metrics = compute_metrics(s, a, uniform(k))
    assert metrics.step_volume > 0
