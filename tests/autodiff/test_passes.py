"""Graph passes leave outputs bit-identical and remove what they should."""
import numpy as np

import autodiff as ad
from autodiff import numpy as anp
from autodiff.interpreter import Interpreter
from autodiff.passes import (common_subexpression_elimination, constant_folding,
                             dead_code_elimination, optimize)
from autodiff.trace import Tracer


def _run(graph, x):
    return Interpreter(graph).run(feeds={"x": x}).outputs[graph.outputs[0]]


def test_cse_leaves_one_square():
    t = Tracer("cse", eager=False)
    x = t.source("input", (5,), "float64", "x")
    y = (x * x) * (x + 1.0) + anp.sin(x * x)
    g = t.graph([y])
    assert sum(n.op == "multiply" and n.inputs == ("x", "x") for n in g.nodes) == 2
    h = common_subexpression_elimination(g)
    assert sum(n.op == "multiply" and n.inputs == ("x", "x") for n in h.nodes) == 1
    xv = np.linspace(-2, 2, 5)
    np.testing.assert_array_equal(_run(g, xv), _run(h, xv))


def test_constant_folding_and_dead_code_keep_outputs_identical():
    t = Tracer("fold", eager=False)
    x = t.source("input", (4,), "float64", "x")
    c = t.const(np.array([1.0, 2.0, 3.0, 4.0]))
    k = anp.exp(c) * 2.0 + anp.sin(c)          # all constant: folds to one const
    unused = anp.cos(x) * 5.0                  # dead
    y = (x * k).sum()
    g = t.graph([y])
    assert unused.name in g
    h = constant_folding(g)
    assert unused.name not in h
    assert not any(n.op in ("exp", "sin") for n in h.nodes)
    xv = np.array([0.5, -1.0, 2.0, 3.0])
    assert _run(g, xv) == _run(h, xv)
    o = optimize(g)
    assert len(o) < len(g) and _run(o, xv) == _run(g, xv)


def test_dead_code_keeps_params_and_state_update_targets():
    t = Tracer("dce", eager=False)
    x = t.source("input", (2,), "float64", "x")
    w = t.source("param", (2,), "float64", "w")
    anp.exp(w)
    y = (x * 2.0).sum()
    h = dead_code_elimination(t.graph([y]))
    assert "w" in h and not h.by_op("exp")


def test_passes_on_a_training_graph_keep_gradients_identical():
    t = Tracer("train", eager=False)
    x = t.source("input", (3, 2), "float64", "x")
    w = t.source("param", (2, 2), "float64", "w")
    loss = (anp.tanh(x @ w) * anp.tanh(x @ w)).sum()
    g = ad.vjp(t.graph([loss]))
    o = optimize(g)
    assert len(o) < len(g)
    feeds = {"x": np.arange(6.0).reshape(3, 2) / 7}
    params = {"w": np.array([[0.1, -0.2], [0.3, 0.4]])}
    a = Interpreter(g).run(feeds, params).outputs
    b = Interpreter(o).run(feeds, params).outputs
    for name_a, name_b in zip(g.outputs, o.outputs):
        np.testing.assert_array_equal(a[name_a], b[name_b])
