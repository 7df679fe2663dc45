"""Every registry op: gradients (reverse and forward mode) against central differences,
shape rules against the numpy forward, `saves` exactly what the VJP reads, subgradient
conventions at kinks, second derivatives, numeric stability, and FLOPs rules."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import autodiff as ad
from autodiff import numpy as anp
from autodiff.ir import FLOAT_DTYPES, Node
from autodiff.ops.registry import ShapeError, registry
from autodiff.ops.shape import encode_index
from autodiff.ops.sources import draw_random
from autodiff.trace import Tracer

RNG = np.random.default_rng(20240601)


def normal(*shape):
    return RNG.standard_normal(shape)


def positive(*shape):
    return RNG.uniform(0.5, 2.0, shape)


def nonzero(*shape):
    """Values at least 0.2 away from 0 (clear of the kinks of relu, abs, sign)."""
    return RNG.choice([-1.0, 1.0], shape) * RNG.uniform(0.2, 1.5, shape)


def distinct(*shape):
    """Values pairwise at least 0.1 apart (no ties for max and max_pool)."""
    n = int(np.prod(shape))
    return (RNG.permutation(n) * 0.1 + RNG.uniform(0, 0.01, n)).reshape(shape) - n * 0.05


def weights(shape):
    """Fixed projection weights: turns any output into a scalar with all entries mattering."""
    n = int(np.prod(shape))
    return np.sin(np.arange(1, n + 1) * 1.7).reshape(shape)


def project(y):
    return anp.sum(anp.multiply(y, weights(tuple(y.shape))))


@dataclass
class Case:
    op: str
    args: tuple
    attrs: dict = field(default_factory=dict)
    argnums: tuple | None = None
    id: str = ""

    def __post_init__(self):
        self.id = self.id or self.op

    def fn(self, *xs):
        return project(anp.apply(self.op, *xs, **self.attrs))


def _index_case(shape, index, name):
    return Case("getitem", (normal(*shape),), {"index": encode_index(index, shape)}, id=name)


def _getitem_grad_case(shape, index, name):
    result_shape = np.empty(shape)[index].shape
    return Case("getitem_grad", (normal(*result_shape),),
                {"index": encode_index(index, shape), "shape": list(shape)}, id=name)


_A = normal(3, 4)
_MAX_B = _A + RNG.choice([-1.0, 1.0], (3, 4)) * RNG.uniform(0.2, 1.0, (3, 4))

CASES = [
    Case("add", (normal(3, 4), normal(4))),
    Case("subtract", (normal(3, 1), normal(1, 4))),
    Case("multiply", (normal(2, 3, 4), normal(3, 1))),
    Case("divide", (normal(3, 4), nonzero(3, 4) + np.sign(nonzero(3, 4)))),
    Case("negative", (normal(3, 4),)),
    Case("power", (positive(3, 4), normal(3, 4))),
    Case("power", (positive(3, 4), normal(4)), id="power-broadcast"),
    Case("exp", (normal(3, 4),)),
    Case("log", (positive(3, 4),)),
    Case("sin", (normal(3, 4),)),
    Case("cos", (normal(3, 4),)),
    Case("tanh", (normal(3, 4),)),
    Case("sqrt", (positive(3, 4),)),
    Case("abs", (nonzero(3, 4),)),
    Case("maximum", (_A, _MAX_B)),
    Case("minimum", (_MAX_B, _A)),
    Case("where", (RNG.random((3, 1)) < 0.5, normal(3, 4), normal(4))),
    Case("astype", (normal(3, 4),), {"dtype": "float64"}),
    Case("add_n", (normal(3, 4), normal(4), normal(1, 4))),
    Case("matmul", (normal(3, 4), normal(4, 2))),
    Case("matmul", (normal(2, 3, 4), normal(4)), id="matmul-vector-right"),
    Case("matmul", (normal(4), normal(2, 4, 3)), id="matmul-vector-left"),
    Case("matmul", (normal(2, 1, 3, 4), normal(3, 4, 2)), id="matmul-batch-broadcast"),
    Case("sum", (normal(3, 4, 2),), {"axis": [0, 2], "keepdims": False}),
    Case("sum", (normal(3, 4),), {"axis": None, "keepdims": True}, id="sum-all-keepdims"),
    Case("mean", (normal(3, 4, 2),), {"axis": 1, "keepdims": False}),
    Case("mean", (normal(3, 4),), {"axis": None, "keepdims": False}, id="mean-all"),
    Case("max", (distinct(3, 4, 2),), {"axis": [0, 2], "keepdims": True}),
    Case("max", (distinct(3, 4),), {"axis": -1, "keepdims": False}, id="max-last"),
    Case("logsumexp", (normal(3, 4),), {"axis": -1, "keepdims": False}),
    Case("logsumexp", (normal(2, 3, 4),), {"axis": [0, 2], "keepdims": True},
         id="logsumexp-axes"),
    Case("softmax", (normal(3, 4),), {"axis": -1}),
    Case("softmax", (normal(3, 4),), {"axis": 0}, id="softmax-axis0"),
    Case("log_softmax", (normal(3, 4),), {"axis": -1}),
    Case("reshape", (normal(3, 4),), {"shape": [2, 6]}),
    Case("transpose", (normal(2, 3, 4),), {"axes": [2, 0, 1]}),
    Case("broadcast_to", (normal(3, 1),), {"shape": [2, 3, 4]}),
    Case("concatenate", (normal(2, 3), normal(2, 1), normal(2, 2)), {"axis": 1}),
    Case("stack", (normal(2, 3), normal(2, 3), normal(2, 3)), {"axis": 1}),
    Case("stack", (normal(2, 3), normal(2, 3)), {"axis": -1}, id="stack-last"),
    _index_case((4, 5, 6), (slice(1, None, 2), -1), "getitem-slice-int"),
    _index_case((4, 5, 6), (Ellipsis, None, slice(None, None, -2)), "getitem-ellipsis-newaxis"),
    _index_case((4, 5), ([0, 2, 2, 3],), "getitem-array-repeats"),
    _index_case((3, 4, 5), (slice(None), [1, 0, 1], 2), "getitem-array-int-adjacent"),
    _index_case((3, 4, 5), ([2, 0], slice(None), 1), "getitem-array-int-separated"),
    _getitem_grad_case((4, 5, 6), (slice(None, None, 3), 1, None), "getitem_grad-basic"),
    _getitem_grad_case((4, 5), (slice(1, 3), [4, 0, 4]), "getitem_grad-array"),
    Case("take", (normal(5, 3), np.array([[0, 2], [2, 4]])), {"axis": 0}),
    Case("take", (normal(3, 5), np.array([4, 0, 4])), {"axis": 1}, id="take-axis1"),
    Case("take_grad", (normal(2, 2, 3), np.array([[0, 2], [2, 4]])),
         {"shape": [5, 3], "axis": 0}),
    Case("shard_take", (normal(3, 2), np.array([[0, 4], [5, 2], [3, 3]])),
         {"offset": 2, "total": 7}),
    Case("shard_take_grad", (normal(3, 2, 2), np.array([[0, 4], [5, 2], [3, 3]])),
         {"shape": [3, 2], "offset": 2, "total": 7}),
    Case("shard_pick", (normal(4, 3), np.array([0, 4, 2, 3])), {"offset": 2, "total": 5}),
    Case("shard_pick_grad", (normal(2, 3), np.array([[0, 4, 2], [3, 1, 4]])),
         {"shape": [2, 3, 3], "offset": 2, "total": 5}),
    Case("relu", (nonzero(3, 4),)),
    Case("gelu", (normal(3, 4) * 2,)),
    Case("gelu_grad", (normal(3, 4), normal(3, 4) * 2)),
    Case("sigmoid", (normal(3, 4) * 2,)),
    Case("cross_entropy", (normal(4, 5), np.array([0, 4, 2, 2]))),
    Case("cross_entropy", (normal(2, 3, 4), RNG.integers(0, 4, (2, 3))), id="cross_entropy-3d"),
    Case("mse", (normal(3, 4), normal(3, 4))),
    Case("mse", (normal(3, 4), normal(4)), id="mse-broadcast"),
    Case("layer_norm", (normal(3, 5), normal(5), normal(5)), {"eps": 1e-5}),
    Case("normalize", (normal(3, 5),), {"axis": -1, "eps": 1e-5}),
    Case("normalize", (normal(4, 3, 2),), {"axis": [0, 2], "eps": 1e-3}, id="normalize-axes"),
    Case("normalize_grad", (normal(3, 5), normal(3, 5)), {"axis": -1, "eps": 1e-5}),
    Case("normalize_grad", (normal(4, 3, 2), normal(4, 3, 2)), {"axis": [0, 2], "eps": 1e-3},
         id="normalize_grad-axes"),
    Case("batch_norm", (normal(4, 3, 2, 2), normal(3), normal(3)), {"eps": 1e-5}),
    Case("batch_norm", (normal(5, 3), normal(3), normal(3)), {"eps": 1e-3}, id="batch_norm-2d"),
    Case("batch_norm_eval", (normal(4, 3, 2), normal(3), normal(3), normal(3), positive(3)),
         {"eps": 1e-5}, argnums=(0, 1, 2)),
    Case("dropout", (normal(3, 4), (RNG.random((3, 4)) < 0.75).astype(float)), {"rate": 0.25},
         argnums=(0,)),
    Case("conv2d", (normal(2, 2, 5, 5), normal(3, 2, 3, 3)), {"stride": 2, "padding": 1}),
    Case("conv2d", (normal(1, 2, 4, 5), normal(2, 2, 2, 3)), {"stride": 1, "padding": 0},
         id="conv2d-rect-kernel"),
    Case("conv2d_input_grad", (normal(2, 3, 3, 3), normal(3, 2, 3, 3)),
         {"shape": [2, 2, 5, 5], "stride": 2, "padding": 1}),
    Case("conv2d_weight_grad", (normal(2, 2, 5, 5), normal(2, 3, 3, 3)),
         {"shape": [3, 2, 3, 3], "stride": 2, "padding": 1}),
    Case("max_pool2d", (distinct(1, 2, 5, 5),), {"kernel": 2, "stride": 2, "padding": 1}),
    Case("max_pool2d", (distinct(1, 2, 4, 4),), {"kernel": 3, "stride": 1, "padding": 1},
         id="max_pool2d-overlapping"),
    Case("avg_pool2d", (normal(1, 2, 5, 5),), {"kernel": 2, "stride": 2, "padding": 1}),
    Case("avg_pool2d", (normal(1, 2, 4, 4),), {"kernel": 3, "stride": 1, "padding": 0},
         id="avg_pool2d-overlapping"),
    Case("unfold2d", (normal(1, 2, 5, 5),), {"kernel": 3, "stride": 2, "padding": 1,
                                             "fill": "zero"}),
    Case("fold2d", (normal(1, 2, 3, 3, 3, 3),), {"kernel": 3, "stride": 2, "padding": 1,
                                                 "shape": [1, 2, 5, 5]}),
    # ops for imported models (autodiff/ops/activations.py, grouped_conv.py)
    Case("erf", (normal(3, 4),)),
    Case("gelu_erf", (normal(3, 4) * 2,)),
    Case("silu", (normal(3, 4) * 2,)),
    Case("hardsigmoid", (nonzero(3, 4) * 2.5,)),
    Case("hardswish", (nonzero(3, 4) * 2.5 + 0.3,)),
    Case("rsqrt", (positive(3, 4),)),
    Case("reciprocal", (positive(3, 4),)),
    Case("clamp", (nonzero(3, 4) * 2,), {"lo": -1.0, "hi": 1.1}),
    Case("clamp", (nonzero(3, 4) * 2,), {"lo": None, "hi": 0.1}, id="clamp-upper"),
    Case("grouped_conv2d", (normal(2, 4, 5, 5), normal(6, 2, 3, 3)),
         {"stride": 2, "padding": 1, "groups": 2}),
    Case("grouped_conv2d", (normal(1, 3, 4, 4), normal(3, 1, 3, 3)),
         {"stride": 1, "padding": 1, "groups": 3}, id="grouped_conv2d-depthwise"),
    Case("grouped_conv2d_input_grad", (normal(2, 6, 3, 3), normal(6, 2, 3, 3)),
         {"shape": [2, 4, 5, 5], "stride": 2, "padding": 1, "groups": 2}),
    Case("grouped_conv2d_weight_grad", (normal(2, 4, 5, 5), normal(2, 6, 3, 3)),
         {"shape": [6, 2, 3, 3], "stride": 2, "padding": 1, "groups": 2}),
]

# Ops without a numeric gradient check (no gradient, piecewise constant, or random), and the
# test that covers each.
SPECIAL_TESTS = {
    "greater": "test_comparisons", "less": "test_comparisons",
    "greater_equal": "test_comparisons", "less_equal": "test_comparisons",
    "equal": "test_comparisons", "sign": "test_sign_has_zero_gradient",
    "stop_gradient": "test_stop_gradient", "straight_through": "test_straight_through",
    "random_normal": "test_random_sources", "random_bernoulli": "test_random_sources",
    "logical_not": "test_boolean_ops", "logical_and": "test_boolean_ops",
    "logical_or": "test_boolean_ops", "any": "test_boolean_ops",
}


def test_every_registry_op_has_a_test():
    covered = {c.op for c in CASES} | set(SPECIAL_TESTS)
    missing = sorted(set(registry()) - covered)
    assert not missing, f"ops without a test: {missing}"
    for name in set(SPECIAL_TESTS.values()):
        assert callable(globals().get(name)), name
    differentiable = {name for name, op in registry().items() if op.vjp is not None}
    assert differentiable - {c.op for c in CASES} <= {"straight_through"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_shape_rule_matches_forward(case):
    op = registry()[case.op]
    value = np.asarray(op.forward(*case.args, **case.attrs))
    shape, dtype = op.shape([np.shape(a) for a in case.args],
                            [str(np.asarray(a).dtype) for a in case.args], **case.attrs)
    assert tuple(shape) == value.shape
    assert dtype == str(value.dtype)
    graph = ad.trace(lambda *xs: anp.apply(case.op, *xs, **case.attrs), *case.args)
    assert graph[graph.outputs[0]].shape == value.shape
    # attrs are JSON data: after a round trip (tuples become lists) the op computes the same
    attrs = json.loads(json.dumps(case.attrs))
    np.testing.assert_array_equal(op.forward(*case.args, **attrs), value)
    flops = op.flops([np.shape(a) for a in case.args], value.shape, **attrs)
    assert isinstance(flops, int) and flops >= 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradient_matches_central_differences(case):
    ad.check_grad(case.fn, *case.args, argnums=case.argnums)


@pytest.mark.parametrize("case", [c for c in CASES if c.id == c.op], ids=lambda c: c.id)
def test_gradient_graph_builds_from_shapes_alone(case):
    """Abstract tracing (no values, as for billion-parameter graphs) through vjp and jvp."""
    graph = ad.trace(case.fn, *case.args, abstract=True)
    wrt = [graph.inputs[i].name for i in (case.argnums or range(len(case.args)))
           if str(np.asarray(case.args[i]).dtype) in FLOAT_DTYPES]
    train = ad.vjp(graph, wrt=wrt)
    assert set(train.meta["grads"]) == set(wrt)
    for name in wrt:
        assert train[train.meta["grads"][name]].shape == graph[name].shape


def _vjp_values(case: Case, poisoned: set) -> list:
    """Run the op's VJP with the values in `poisoned` (input positions, "out") unknown.

    Returns per input: "none" (no gradient), the gradient's value, or None when it could not
    be computed because the rule read a poisoned value.
    """
    op = registry()[case.op]
    tracer = Tracer("saves")
    out_value = np.asarray(op.forward(*case.args, **case.attrs))
    ins = [tracer.source("input", np.shape(a), np.asarray(a).dtype, f"in{i}",
                         value=None if i in poisoned else a) for i, a in enumerate(case.args)]
    out = tracer.source("input", out_value.shape, out_value.dtype, "out",
                        value=None if "out" in poisoned else out_value)
    g = tracer.source("input", out_value.shape, out_value.dtype, "g",
                      value=weights(out_value.shape))
    grads = op.vjp(g, out, *ins, **case.attrs)
    return ["none" if gx is None or str(np.asarray(a).dtype) not in FLOAT_DTYPES else gx.value
            for gx, a in zip(grads, case.args)]


@pytest.mark.parametrize("case", [c for c in CASES if c.id == c.op], ids=lambda c: c.id)
def test_saves_is_exactly_what_the_vjp_reads(case):
    saves = set(registry()[case.op].saves)
    everything = set(range(len(case.args))) | {"out"}
    values = _vjp_values(case, everything - saves)
    assert all(v is not None for v in values), "the VJP reads a value not listed in saves"
    for s in saves:
        values = _vjp_values(case, everything - saves | {s})
        assert any(v is None for v in values), f"saves lists {s!r} but the VJP never reads it"


# ------------------------------------------------------------------ forward values
def _conv_reference(x, w, stride, padding):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    xp[:, :, padding:padding + h, padding:padding + wd] = x
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for b, f, i, j in itertools.product(range(n), range(o), range(ho), range(wo)):
        out[b, f, i, j] = np.sum(xp[b, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                                 * w[f])
    return out


def _pool_reference(x, k, stride, padding, reduce, fill):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * padding, w + 2 * padding), fill)
    xp[:, :, padding:padding + h, padding:padding + w] = x
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = np.zeros((n, c, ho, wo))
    for b, ch, i, j in itertools.product(range(n), range(c), range(ho), range(wo)):
        out[b, ch, i, j] = reduce(xp[b, ch, i * stride:i * stride + k, j * stride:j * stride + k])
    return out


def test_conv_and_pool_forward_match_loops():
    x, w = normal(2, 3, 6, 7), normal(4, 3, 3, 2)
    for stride, padding in [(1, 0), (2, 1), (3, 2)]:
        np.testing.assert_allclose(anp.conv2d(x, w, stride, padding),
                                   _conv_reference(x, w, stride, padding), atol=1e-12)
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 1, 1)]:
        np.testing.assert_allclose(anp.max_pool2d(x, k, s, p),
                                   _pool_reference(x, k, s, p, np.max, -np.inf))
        np.testing.assert_allclose(anp.avg_pool2d(x, k, s, p),
                                   _pool_reference(x, k, s, p, np.mean, 0.0), atol=1e-15)


def test_conv_gradient_ops_are_adjoint_to_conv():
    x, w = normal(2, 3, 7, 6), normal(4, 3, 3, 3)
    g = normal(*anp.conv2d(x, w, 2, 1).shape)
    gx = anp.apply("conv2d_input_grad", g, w, shape=list(x.shape), stride=2, padding=1)
    gw = anp.apply("conv2d_weight_grad", x, g, shape=list(w.shape), stride=2, padding=1)
    h, v = normal(*x.shape), normal(*w.shape)
    assert np.isclose(np.sum(gx * h), np.sum(g * anp.conv2d(h, w, 2, 1)))
    assert np.isclose(np.sum(gw * v), np.sum(g * anp.conv2d(x, v, 2, 1)))


def test_normalisation_and_losses_forward():
    x, gamma, beta = normal(4, 6), normal(6), normal(6)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(anp.layer_norm(x, gamma, beta, 1e-5),
                               (x - mu) / np.sqrt(var + 1e-5) * gamma + beta)
    x4 = normal(5, 3, 2, 2)
    m, v = x4.mean((0, 2, 3), keepdims=True), x4.var((0, 2, 3), keepdims=True)
    g3, b3 = normal(3), normal(3)
    np.testing.assert_allclose(anp.batch_norm(x4, g3, b3, eps=1e-5),
                               (x4 - m) / np.sqrt(v + 1e-5) * g3[:, None, None] + b3[:, None, None])
    rm, rv = normal(3), positive(3)
    np.testing.assert_allclose(anp.batch_norm(x4, g3, b3, rm, rv, training=False),
                               (x4 - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)
                               * g3[:, None, None] + b3[:, None, None])
    logits, labels = normal(4, 5), np.array([1, 0, 4, 4])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.isclose(anp.cross_entropy(logits, labels), -np.mean(np.log(p[range(4), labels])))
    assert np.isclose(anp.mse(x, 2 * x), np.mean(x ** 2))
    z = np.linspace(-3, 3, 13)
    assert np.allclose(anp.sigmoid(z), 1 / (1 + np.exp(-z)))
    assert np.allclose(anp.gelu(z), 0.5 * z * (1 + np.tanh(0.7978845608028654
                                                           * (z + 0.044715 * z ** 3))))


def test_indexing_forward_matches_numpy():
    x = normal(3, 4, 5)
    for index in [(1,), (slice(None, None, -1), None, 2), (Ellipsis, 3), ([2, 0, 2],),
                  (0, [1, 3]), (slice(1, 3), [3, 0], slice(None, None, 2)),
                  ([1, 2], slice(None), -1), (None, 1, Ellipsis, [0, 0, 4])]:
        np.testing.assert_array_equal(anp.getitem(x, index), x[index])
        traced = ad.trace(lambda t: t[index], x)
        assert traced[traced.outputs[0]].shape == x[index].shape, index
    for bad in [(0, 0, 0, 0), (5,), (slice(0, 2, 0),), ([0, 1], [1, 2]), (np.array([True]),),
                (Ellipsis, 1, Ellipsis), ([0, 3],)]:
        with pytest.raises(ShapeError):
            ad.trace(lambda t: t[bad], x)
    table = normal(6, 3)
    np.testing.assert_array_equal(anp.take(table, np.array([[5, 0], [0, 1]])),
                                  table[[[5, 0], [0, 1]]])


def test_take_grad_is_a_scatter_add_with_repeats_and_negative_indices():
    for axis, idx in [(0, RNG.integers(-6, 6, (5, 7))), (1, np.array([2, -1, 2, 0]))]:
        shape = [6, 3] if axis == 0 else [3, 3, 2]
        g = normal(*np.shape(anp.take(np.zeros(shape), idx, axis)))
        expected = np.zeros(shape)
        np.add.at(expected, (slice(None),) * axis + (idx,), g)
        np.testing.assert_allclose(anp.apply("take_grad", g, idx, shape=shape, axis=axis),
                                   expected, rtol=1e-15, atol=1e-15)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_random_indices_match_numpy(data):
    """Shape rule, forward and gradient (a scatter-add of the upstream) for numpy indices:
    basic ones, and ones with an integer array on one axis mixed with ints and slices."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    if data.draw(st.booleans()):
        index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    else:
        axis = data.draw(st.integers(0, len(shape) - 1))
        parts = []
        for i, d in enumerate(shape):
            if i == axis:
                parts.append(data.draw(st.lists(st.integers(-d, d - 1), min_size=1, max_size=5)))
            else:
                parts.append(data.draw(st.one_of(
                    st.integers(-d, d - 1), st.just(slice(None)),
                    st.builds(slice, st.integers(-d, d), st.integers(-d, d),
                              st.sampled_from([None, 1, 2, -1, -2])))))
        index = tuple(parts[:data.draw(st.integers(axis + 1, len(shape)))])
    x = np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)
    expected = x[index]
    graph = ad.trace(lambda t: t[index], x)
    assert graph[graph.outputs[0]].shape == expected.shape
    np.testing.assert_array_equal(anp.getitem(x, index), expected)
    g = ad.grad(lambda t: project(t[index]))(x)
    scattered = np.zeros_like(x)
    np.add.at(scattered, index, weights(expected.shape))
    np.testing.assert_array_equal(g, scattered)


def test_getitem_with_traced_integer_index_is_take():
    table, idx = normal(5, 3), np.array([4, 4, 1])
    g = ad.grad(lambda t, i: project(t[i]))(table, idx)
    expected = np.zeros_like(table)
    np.add.at(expected, idx, weights((3, 3)))
    np.testing.assert_allclose(g, expected)
    with pytest.raises(ShapeError, match="take"):
        ad.trace(lambda t, i: t[:, i], table, idx)


# ------------------------------------------------------------- special ops
def test_comparisons():
    a, b = np.array([[1.0, 2.0, 3.0]]), np.array([[2.0], [2.0]])
    for name, ref in [("greater", a > b), ("less", a < b), ("greater_equal", a >= b),
                      ("less_equal", a <= b), ("equal", a == b)]:
        graph = ad.trace(lambda x, y: getattr(anp, name)(x, y), a, b)
        out = graph[graph.outputs[0]]
        assert out.dtype == "bool" and out.shape == (2, 3)
        np.testing.assert_array_equal(getattr(anp, name)(a, b), ref)
        assert registry()[name].vjp is None
    # a comparison inside a differentiated function passes no gradient, the where does
    g = ad.grad(lambda x: anp.sum(anp.where(x > 0.5, x * x, -x)))(np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(g, [-1.0, 2.0, 4.0])


def test_boolean_ops():
    a, b = np.array([[True, False, True]]), np.array([[True], [False]])
    for name, ref in [("logical_and", a & b), ("logical_or", a | b)]:
        graph = ad.trace(lambda x, y: anp.apply(name, x, y), a, b)
        assert graph[graph.outputs[0]].dtype == "bool" and graph[graph.outputs[0]].shape == (2, 3)
        np.testing.assert_array_equal(anp.apply(name, a, b), ref)
    np.testing.assert_array_equal(anp.apply("logical_not", a), ~a)
    np.testing.assert_array_equal(anp.apply("any", b, axis=[0], keepdims=True), [[True]])
    assert all(registry()[n].vjp is None for n in ("logical_not", "logical_and", "any"))


def test_grouped_conv_equals_one_conv2d_per_group():
    x, w = normal(2, 4, 5, 5), normal(6, 2, 3, 3)
    out = anp.apply("grouped_conv2d", x, w, stride=2, padding=1, groups=2)
    parts = [anp.conv2d(x[:, 2 * g:2 * g + 2], w[3 * g:3 * g + 3], 2, 1) for g in range(2)]
    np.testing.assert_allclose(out, np.concatenate(parts, axis=1), rtol=1e-12)


def test_sign_has_zero_gradient():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(anp.sign(x), [-1.0, 0.0, 1.0])
    g = ad.grad(lambda x: anp.sum(anp.sign(x) * x))(x)
    np.testing.assert_array_equal(g, [-1.0, 0.0, 1.0])   # only the x factor contributes


def test_stop_gradient():
    x = normal(4)
    g = ad.grad(lambda x: anp.sum(anp.stop_gradient(x) * x))(x)
    np.testing.assert_array_equal(g, x)
    _, t = ad.jvp(lambda x: anp.stop_gradient(x) * 3.0, [x], [np.ones(4)])
    np.testing.assert_array_equal(t, np.zeros(4))


def test_straight_through():
    x = np.array([-1.7, -0.8, -0.3, 0.1, 0.3, 0.74, 2.0])
    q = anp.straight_through(x, levels=5, lo=-1.0, hi=1.0)
    grid = np.linspace(-1, 1, 5)
    expected = grid[np.argmin(np.abs(np.clip(x, -1, 1)[:, None] - grid[None, :]), axis=1)]
    np.testing.assert_array_equal(q, expected)
    g = ad.grad(lambda x: project(anp.straight_through(x, 5, -1.0, 1.0)))(x)
    np.testing.assert_array_equal(g, weights(x.shape))
    _, t = ad.jvp(lambda x: anp.straight_through(x, 5, -1.0, 1.0), [x], [weights(x.shape)])
    np.testing.assert_array_equal(t, weights(x.shape))
    with pytest.raises(ShapeError):
        anp.straight_through(x, levels=1)


def test_random_sources():
    node = Node("noise", "random_normal", (), (4000,), "float64", {"shape": [4000], "seed": 7})
    a, b = draw_random(node, step=3), draw_random(node, step=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_random(node, step=4))
    assert abs(a.mean()) < 0.06 and abs(a.std() - 1) < 0.05
    mask = draw_random(Node("m", "random_bernoulli", (), (4000,), "float64",
                            {"shape": [4000], "seed": 1, "p": 0.3}))
    assert set(np.unique(mask)) <= {0.0, 1.0} and abs(mask.mean() - 0.3) < 0.03
    # the reparameterization trick: d/dx sum(x * noise) is the noise drawn in the trace
    x = normal(5)

    def f(x):
        noise = anp.random_normal((5,), seed=3, tracer_of=x)
        return anp.sum(x * noise)
    np.testing.assert_array_equal(ad.grad(f)(x), anp.random_normal((5,), seed=3))


# ------------------------------------------------------- kinks and conventions
def test_subgradient_conventions_at_kinks():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(ad.grad(lambda x: anp.sum(anp.relu(x)))(x), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(ad.grad(lambda x: anp.sum(anp.abs(x)))(x), [-1.0, 0.0, 1.0])
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0])
    ga, gb = ad.grad(lambda a, b: anp.sum(anp.maximum(a, b)), argnums=(0, 1))(a, b)
    np.testing.assert_array_equal(ga, [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(gb, [0.5, 1.0, 0.0])
    ga, gb = ad.grad(lambda a, b: anp.sum(anp.minimum(a, b)), argnums=(0, 1))(a, b)
    np.testing.assert_array_equal(ga, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(gb, [0.5, 0.0, 1.0])
    m = np.array([[1.0, 3.0, 3.0, 3.0], [4.0, 2.0, 4.0, 0.0]])
    np.testing.assert_allclose(ad.grad(lambda x: anp.sum(anp.max(x, axis=1)))(m),
                               [[0, 1 / 3, 1 / 3, 1 / 3], [0.5, 0, 0.5, 0]])
    np.testing.assert_allclose(ad.grad(lambda x: anp.max(x))(m), [[0, 0, 0, 0], [0.5, 0, 0.5, 0]])
    pool = np.array([[[[1.0, 1.0, 0.0, 2.0], [0.0, 1.0, 2.0, 2.0],
                       [5.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 2.0]]]])
    gp = ad.grad(lambda x: anp.sum(anp.max_pool2d(x, 2, 2)))(pool)
    np.testing.assert_allclose(gp[0, 0], [[1 / 3, 1 / 3, 0, 1 / 3], [0, 1 / 3, 1 / 3, 1 / 3],
                                          [1, 0, 1, 0], [0, 0, 0, 0]])
    # a padded max-pool window whose real entries are all negative: padding never wins
    neg = -np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(anp.max_pool2d(neg, 2, 2, 1), -np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(ad.grad(lambda x: anp.sum(anp.max_pool2d(x, 2, 2, 1)))(neg),
                                  np.ones((1, 1, 2, 2)))


def test_power_with_constant_exponent_and_zero_base():
    x = nonzero(3, 4)
    ad.check_grad(lambda x: project(x ** 3), x)
    ad.check_grad(lambda e: project(anp.power(2.0, e)), normal(3))
    with np.errstate(all="raise"):     # no log of a negative base is ever evaluated
        g = ad.grad(lambda x: anp.sum(x ** 2))(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(g, [-2.0, 0.0, 4.0])


# --------------------------------------------------------- second derivatives
SMOOTH = [
    ("tanh", lambda x: anp.sum(anp.tanh(x) * x), (normal(5),)),
    ("exp-sin", lambda x: anp.sum(anp.exp(anp.sin(x))), (normal(5),)),
    ("divide-sqrt", lambda x: anp.sum(anp.sqrt(x) / (x + 1.0)), (positive(5),)),
    ("power", lambda x, y: anp.sum(anp.power(x, y)), (positive(4), normal(4))),
    ("softmax", lambda x: project(anp.softmax(x, -1)), (normal(2, 4),)),
    ("log_softmax", lambda x: project(anp.log_softmax(x, -1)), (normal(2, 4),)),
    ("logsumexp", lambda x: anp.sum(anp.logsumexp(x, -1) ** 2), (normal(2, 4),)),
    ("gelu-sigmoid", lambda x: project(anp.gelu(x) * anp.sigmoid(x)), (normal(6),)),
    ("layer_norm", lambda x, g: project(anp.layer_norm(x, g, np.zeros(4))), (normal(2, 4),
                                                                             normal(4))),
    ("batch_norm", lambda x, g: project(anp.batch_norm(x, g, np.zeros(2))),
     (normal(3, 2, 2), normal(2))),
    ("matmul-cross_entropy", lambda w: anp.cross_entropy(anp.matmul(_A, w), np.array([0, 1, 2])),
     (normal(4, 3),)),
    ("conv2d", lambda x, w: anp.sum(anp.conv2d(x, w, 1, 1) ** 2),
     (normal(1, 1, 3, 3), normal(2, 1, 2, 2))),
    ("take-getitem", lambda t: anp.sum(anp.take(t, np.array([1, 1, 0])) ** 3 * t[:, ::-1][0]),
     (normal(3, 2),)),
]


@pytest.mark.parametrize("name,fn,args", SMOOTH, ids=[s[0] for s in SMOOTH])
def test_second_derivatives(name, fn, args):
    """grad of (a projection of grad f) against central differences of the first gradient."""
    nums = tuple(range(len(args)))

    def grad_projected(*xs):
        grads = ad.grad(fn, argnums=nums)(*xs)
        return anp.add_n(*[project(g) for g in grads]) if len(grads) > 1 else project(grads[0])
    ad.check_grad(grad_projected, *args, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------- stability 1e4
def test_log_sum_exp_family_is_stable_at_1e4():
    x = np.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4 - 2.0, -1e4 + 1.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is fine
        lse = anp.logsumexp(x, -1)
        sm = anp.softmax(x, -1)
        lsm = anp.log_softmax(x, -1)
        ce = anp.cross_entropy(x, np.array([1, 0]))
        g = ad.grad(lambda x: anp.cross_entropy(x, np.array([1, 0])))(x)
    # by hand: shift by the row max, where exp is exact enough
    e1, e2 = np.array([1.0, np.exp(-1.0), 0.0]), np.array([np.exp(-1.0), np.exp(-3.0), 1.0])
    np.testing.assert_allclose(lse, [1e4 + np.log(e1.sum()), -1e4 + 1.0 + np.log(e2.sum())],
                               rtol=1e-15)
    np.testing.assert_allclose(sm, [e1 / e1.sum(), e2 / e2.sum()], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(lsm[:, :2], np.log([e1[:2] / e1.sum(), e2[:2] / e2.sum()]),
                               rtol=1e-10)
    assert lsm[0, 2] == pytest.approx(-2e4 - np.log(e1.sum()), rel=1e-12)
    expected_ce = -(np.log(e1[1] / e1.sum()) + np.log(e2[0] / e2.sum())) / 2
    assert ce == pytest.approx(expected_ce, rel=1e-10)
    onehot = np.array([[0, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(g, (np.stack([e1 / e1.sum(), e2 / e2.sum()]) - onehot) / 2,
                               atol=1e-15)
    big = np.array([1e4, -1e4])
    np.testing.assert_array_equal(anp.sigmoid(big), [1.0, 0.0])


# ------------------------------------------------------------------- FLOPs
def test_flops_rules():
    def flops(fn, *args):
        graph = ad.trace(fn, *args)
        node = graph[graph.outputs[0]]
        return graph.node_flops(node)
    a, b = normal(2, 3, 4), normal(4, 5)
    assert flops(anp.matmul, a, b) == 2 * 2 * 3 * 5 * 4
    x, w = normal(2, 3, 8, 8), normal(4, 3, 3, 3)
    out = anp.conv2d(x, w, 2, 1)
    assert flops(lambda x, w: anp.conv2d(x, w, 2, 1), x, w) == 2 * out.size * 3 * 3 * 3
    assert flops(anp.add, a, normal(4)) == a.size
    assert flops(anp.exp, a) == a.size
    assert flops(lambda x: anp.sum(x, 1), a) == a.size
    assert flops(lambda x: anp.max(x, 1), a) == a.size
    assert flops(lambda x: anp.reshape(x, [6, 4]), a) == 0
    assert flops(lambda x: anp.transpose(x), a) == 0
    assert flops(lambda x: x[0], a) == 0
    # the conv gradients cost what the forward costs (training = 3 x forward)
    graph = ad.trace(lambda x, w: anp.sum(anp.conv2d(x, w, 2, 1)), x, w)
    train = ad.vjp(graph, wrt=["arg0", "arg1"])
    conv = train.by_op("conv2d")[0]
    for op in ("conv2d_input_grad", "conv2d_weight_grad"):
        assert train.node_flops(train.by_op(op)[0]) == train.node_flops(conv)


def test_shape_errors_name_the_problem():
    with pytest.raises(ShapeError, match="channels"):
        ad.trace(lambda x, w: anp.conv2d(x, w), normal(1, 2, 4, 4), normal(1, 3, 2, 2))
    with pytest.raises(ShapeError, match="labels"):
        ad.trace(lambda x: anp.cross_entropy(x, np.array([0, 1])), normal(3, 4))
    with pytest.raises(ShapeError, match="gamma"):
        ad.trace(lambda x: anp.layer_norm(x, np.ones(3), np.zeros(4)), normal(2, 4))
    with pytest.raises(ShapeError, match="concatenate"):
        ad.trace(lambda x: anp.concatenate([x, x.T], 0), normal(2, 3))
    with pytest.raises(ShapeError, match="integers"):
        ad.trace(lambda t, i: anp.take(t, i), normal(3, 2), np.array([0.0]))


def test_dtypes():
    ints = np.arange(6).reshape(2, 3)

    def out_dtype(fn, *args):
        graph = ad.trace(fn, *args)
        return graph[graph.outputs[0]].dtype
    assert out_dtype(anp.exp, ints) == "float64"
    assert out_dtype(lambda x: anp.divide(x, x + 1), ints) == "float64"
    assert out_dtype(lambda x: anp.mean(x), ints) == "float64"
    assert out_dtype(lambda x: x + x, ints) == "int64"
    assert out_dtype(lambda x: x > 2, normal(3)) == "bool"
    f32 = normal(2, 3).astype(np.float32)
    assert out_dtype(lambda x: anp.softmax(x * 2.0), f32) == "float32"
    assert out_dtype(lambda x: anp.where(x > 0, x, 0.0), f32) == "float32"
    g = ad.grad(lambda x: anp.sum(anp.astype(x, "float32") * 2.0))(normal(3))
    assert g.dtype == np.float64 and np.all(g == 2.0)
    assert out_dtype(lambda x: anp.sum(x > 0), normal(3)) == "int64"
    assert out_dtype(lambda x: anp.avg_pool2d(x, 2), np.arange(16).reshape(1, 1, 4, 4)) == \
        "float64"
    assert out_dtype(lambda x: anp.max_pool2d(x, 2), np.arange(16).reshape(1, 1, 4, 4)) == \
        "int64"
