"""Reverse mode as a graph transformation: worked examples, fan-out, higher order, tagging."""
import numpy as np
import pytest

import autodiff as ad
from autodiff import numpy as anp
from autodiff.trace import Tracer


def test_worked_example_value_and_gradients():
    # f(x, y, z) = (x + y) * max(y, z) at (1, 2, 0): q = 3, m = 2, f = 6;
    # df/dx = m = 2, df/dy = m + q * [y > z] = 2 + 3 = 5, df/dz = q * [z > y] = 0.
    f = lambda x, y, z: (x + y) * anp.maximum(y, z)
    value, grads = ad.value_and_grad(f, argnums=(0, 1, 2))(1.0, 2.0, 0.0)
    assert value == 6.0
    assert [float(g) for g in grads] == [2.0, 5.0, 0.0]


def test_fan_out_sum_rule():
    # g = x^2 feeds sin(g) and cos(g): dL/dx = (cos g - sin g) * 2x, summed over both uses.
    def f(x):
        g = x * x
        return anp.sin(g) + anp.cos(g)
    for x in (0.3, -1.2, 2.5):
        g = x * x
        assert ad.grad(f)(x) == pytest.approx((np.cos(g) - np.sin(g)) * 2 * x, rel=1e-14)


def test_second_derivative_of_cube():
    d2 = ad.grad(ad.grad(lambda x: x * x * x))
    for x in (-2.0, 0.5, 3.0):
        assert d2(x) == pytest.approx(6 * x, rel=1e-14)


def test_maml_gradient_wrt_initial_params_and_step_size():
    rng = np.random.default_rng(0)
    xa, ya = rng.normal(size=(8, 3)), rng.normal(size=8)
    xb, yb = rng.normal(size=(8, 3)), rng.normal(size=8)

    def loss(w, x, y):
        r = anp.tanh(x @ w) - y
        return (r * r).mean()

    def outer(w, alpha):
        inner = ad.grad(loss)(w, xa, ya)            # recorded into the outer trace
        return loss(w - alpha * inner, xb, yb)

    w0, alpha = rng.normal(size=3), np.array(0.3)
    ad.check_grad(outer, w0, alpha, modes=("rev",), rtol=1e-6, atol=1e-9)
    # The same by explicit finite differences on alpha alone.
    eps = 1e-6
    num = (outer(w0, alpha + eps) - outer(w0, alpha - eps)) / (2 * eps)
    got = ad.grad(outer, argnums=1)(w0, alpha)
    assert got == pytest.approx(num, rel=1e-6)


def test_unreached_parameter_gets_none_not_zeros():
    f = lambda p: (p["a"] * 2.0).sum()
    g = ad.grad(f)({"a": np.ones(3), "b": np.ones(2)})
    assert g["b"] is None
    np.testing.assert_array_equal(g["a"], np.full(3, 2.0))


def test_python_branch_records_only_the_branch_taken():
    def f(x):
        if (x.sum() > 0):
            return anp.exp(x).sum()
        return anp.sin(x).sum()
    g_pos = ad.trace(f, np.array([1.0, 2.0]))
    g_neg = ad.trace(f, np.array([-1.0, -2.0]))
    assert g_pos.by_op("exp") and not g_pos.by_op("sin")
    assert g_neg.by_op("sin") and not g_neg.by_op("exp")
    assert ad.grad(f)(np.array([-1.0, -2.0])) == pytest.approx(np.cos([-1.0, -2.0]))


def test_branch_on_abstract_tensor_is_a_clear_error():
    t = Tracer("abstract", eager=False)
    x = t.source("param", (2,), "float64", "x")
    with pytest.raises(ad.TracingError, match="control flow on abstract tensor 'greater'"):
        bool(x.sum() > 0)


def test_training_graph_tags_every_gradient_node_with_a_forward_node():
    t = Tracer("mlp", eager=False)
    x = t.source("input", (4, 3), "float64", "x")
    w = t.source("param", (3, 2), "float64", "w")
    b = t.source("param", (2,), "float64", "b")
    loss = anp.tanh(x @ w + b).sum()
    g = ad.vjp(t.graph([loss]))
    forward = {n.name for n in g.forward_nodes}
    assert forward == {"x", "w", "b", "matmul", "add", "tanh", "sum"}
    assert all(n.grad_of in forward for n in g.gradient_nodes)
    assert set(g.meta["grads"]) == {"w", "b"}
    # the bias gradient is the broadcast gradient summed over the batch, emitted by `add`
    bias_grad = g[g.meta["grads"]["b"]]
    assert bias_grad.shape == (2,) and bias_grad.grad_of == "add"
    g.validate()


def test_training_graph_never_computes_a_gradient_nobody_reads():
    """x @ w differentiated w.r.t. w only: the matmul rule's gradient for x is dropped."""
    t = Tracer("linear", eager=False)
    x = t.source("input", (4, 3), "float64", "x")
    w = t.source("param", (3, 2), "float64", "w")
    g = ad.vjp(t.graph([(x @ w).sum()]))
    matmuls = [n for n in g.gradient_nodes if n.op == "matmul"]
    assert [n.shape for n in matmuls] == [(3, 2)]
    live = set(g.outputs)
    for n in reversed(g.nodes):
        if n.name in live:
            live.update(n.inputs)
    assert all(n.name in live for n in g.gradient_nodes)


def test_gradient_of_broadcast_bias_matches_numeric():
    rng = np.random.default_rng(1)
    ad.check_grad(lambda x, b: anp.tanh(x * b + b).sum(), rng.normal(size=(5, 3)),
                  rng.normal(size=3))


def test_vjp_records_gradient_routing():
    # h = x @ w feeds sin(h) and add(h, b); s = sin(h) + (h + b); loss = sum(s).
    # Reverse mode visits `add_1` (h + b) before `sin` (reverse topological order), so h's
    # parts are (add_1, its pass-through gradient) then (sin, sin's rule output); their sum is
    # h's fan-in; b is reached only through add_1's identity rule.
    def f(x, w, b):
        h = x @ w
        return anp.sum(anp.sin(h) + (h + b))
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    graph = ad.trace(f, x, w, b)
    training = ad.vjp(graph, wrt=["arg1", "arg2"])
    routing = training.meta["grad_routing"]
    h = next(n for n in graph.nodes if n.op == "matmul").name
    sin = next(n for n in graph.nodes if n.op == "sin").name
    inner = next(n for n in graph.nodes if n.op == "add" and h in n.inputs).name
    outer = next(n for n in graph.nodes if n.op == "add" and sin in n.inputs).name
    consumers = [c for c, _ in routing.parts[h]]
    assert consumers == [inner, sin]
    fan_in = training[routing.fan_in[h]]
    assert fan_in.op == "add_n" and fan_in.grad_of == h
    assert list(fan_in.inputs) == [u for _, u in routing.parts[h]]
    assert routing.gradient[h] == fan_in.name
    # sin's part was emitted by sin's rule; add_1's part is add_1's own gradient passed on.
    assert training[routing.parts[h][1][1]].grad_of == sin
    assert routing.parts[h][0][1] == routing.gradient[inner]
    assert routing.gradient[inner] == routing.gradient[outer]
    assert routing.parts["arg2"] == ((inner, routing.gradient[inner]),)
    assert training.meta["grads"]["arg2"] == routing.gradient["arg2"]
    assert routing.seed == routing.gradient[graph.outputs[0]]
    # every recorded tensor exists in the training graph (unread gradient nodes are dropped)
    names = {n.name for n in training.nodes}
    recorded = [u for ps in routing.parts.values() for _, u in ps]
    assert set(recorded) | set(routing.gradient.values()) <= names
