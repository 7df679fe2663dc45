"""Optimized GPT training graph: the original's outputs; no foldable, duplicate or dead node."""
import numpy as np
import pytest

import autodiff as ad
import graph_optimizations as ex
from autodiff.interpreter import Interpreter
from autodiff.models import gpt
from autodiff.ops.registry import get_op


@pytest.fixture(scope="module")
def result():
    return ex.main(layers=1, d_model=8, heads=2, seq=4, vocab=10, batch=2, repeats=1)


def test_outputs_bit_identical_to_the_unoptimized_graph(result):
    training = ad.vjp(gpt(layers=1, d_model=8, heads=2, seq=4, vocab=10, batch=2,
                          dtype="float64"))
    reference = Interpreter(training).run(feeds=result["inputs"], params=result["params"]).outputs
    assert result["optimized"].outputs == training.outputs
    for name in training.outputs:
        np.testing.assert_array_equal(result["outputs"][name], reference[name])
    assert result["identical"]


def test_node_counts_shrink_monotonically(result):
    counts = [c for _, c in result["counts"]]
    assert counts[0] == len(result["training"].nodes)
    assert counts[-1] == len(result["optimized"].nodes)
    assert all(a >= b for a, b in zip(counts, counts[1:])) and counts[-1] < counts[0]
    assert sum(result["removed_ops"].values()) == counts[0] - counts[-1]


def test_nothing_left_to_fold_merge_or_drop(result):
    g = result["optimized"]
    const = {n.name for n in g.nodes if n.op == "const"}
    seen = set()
    for n in g.nodes:
        op = get_op(n.op)
        if n.is_source or op.random:
            continue
        assert not (n.inputs and all(i in const for i in n.inputs)), f"{n.name} is foldable"
        key = (n.op, n.inputs, repr(sorted(n.attrs.items())))
        assert key not in seen, f"{n.name} duplicates an earlier node"
        seen.add(key)
    live = set(g.outputs) | set(g.meta.get("updates", {}).values())
    for n in reversed(g.nodes):
        if n.name in live:
            live.update(n.inputs)
    assert all(n.name in live or n.op in ("param", "input") for n in g.nodes)
