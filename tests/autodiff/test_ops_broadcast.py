"""Broadcasting: binary elementwise ops and where on hypothesis-generated shapes, and the
forward-mode Jacobian against the reverse-mode Jacobian of small random compositions."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import autodiff as ad
from autodiff import numpy as anp
from autodiff.reverse import backward
from autodiff.trace import Tracer

SETTINGS = settings(max_examples=40, deadline=None)


def _project(y):
    w = np.cos(np.arange(1, int(np.prod(y.shape)) + 1) * 0.9).reshape(y.shape)
    return anp.sum(anp.multiply(y, w))


def _operands(shapes, seed):
    """Kink-free operands: |a| in [0.55, 1.5], |b| <= 0.45, so a != b, a != 0 and |b| < |a|."""
    rng = np.random.default_rng(seed)
    a = rng.choice([-1.0, 1.0], shapes[0]) * rng.uniform(0.55, 1.5, shapes[0])
    b = rng.uniform(-0.45, 0.45, shapes[1])
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


BINARY = {
    "add": anp.add,
    "subtract": anp.subtract,
    "multiply": anp.multiply,
    "divide": lambda a, b: anp.divide(b, a),          # divisor a is kept away from 0
    "power": lambda a, b: anp.power(anp.abs(a), b),   # positive base
    "maximum": anp.maximum,
    "minimum": anp.minimum,
    "mse": anp.mse,
}


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       op=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16), swap=st.booleans())
def test_binary_broadcast_gradients(shapes, op, seed, swap):
    a, b = _operands(shapes.input_shapes, seed)
    fn = BINARY[op]
    if swap and op not in ("divide", "power"):
        a, b = b, a
    ad.check_grad(lambda x, y: _project(fn(x, y)), a, b)


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3),
       seed=st.integers(0, 2**16))
def test_where_broadcast_gradients(shapes, seed):
    rng = np.random.default_rng(seed)
    cond = rng.random(shapes.input_shapes[0]) < 0.5
    a, b = (rng.standard_normal(s) for s in shapes.input_shapes[1:])
    ad.check_grad(lambda x, y: _project(anp.where(cond, x, y)), np.asarray(a), np.asarray(b))
    # by hand: each output element's weight goes to the chosen operand, summed over broadcasting
    ga, gb = ad.grad(lambda x, y: anp.sum(anp.where(cond, x, y)), argnums=(0, 1))(
        np.asarray(a), np.asarray(b))
    full = np.broadcast_shapes(*shapes.input_shapes)
    pick = np.broadcast_to(cond, full).astype(float)
    np.testing.assert_array_equal(ga, _sum_to(pick, np.shape(a)))
    np.testing.assert_array_equal(gb, _sum_to(1 - pick, np.shape(b)))


def _sum_to(x, shape):
    lead = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(lead))) if lead else x
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


# ------------------------------------------- forward Jacobian == reverse Jacobian
UNARY = [
    lambda z: anp.tanh(z),
    lambda z: anp.sin(z) * 2.0,
    lambda z: anp.exp(z * 0.5),
    lambda z: anp.sigmoid(z),
    lambda z: anp.gelu(z),
    lambda z: anp.sqrt(z * z + 1.0),
    lambda z: anp.log(z * z + 1.0),
]
AXIS_UNARY = [          # need rank >= 1; keep the rank (keepdims) so shapes still broadcast
    lambda z: anp.softmax(z, -1),
    lambda z: anp.log_softmax(z, 0),
    lambda z: anp.sum(z, -1, keepdims=True),
    lambda z: anp.mean(z, 0, keepdims=True),
    lambda z: anp.max(z, -1, keepdims=True),
    lambda z: anp.logsumexp(z, -1, keepdims=True),
]
COMBINE = [
    lambda u, v: u + v,
    lambda u, v: u - v * 0.5,
    lambda u, v: u * v,
    lambda u, v: u / (v * v + 1.0),
    lambda u, v: anp.maximum(u, v),
    lambda u, v: anp.minimum(u, v * 2.0),
    lambda u, v: anp.where(u > v, u * v, u - v),
    lambda u, v: anp.power(u * u + 1.0, v * 0.5),
]


def _program(steps, ndim):
    """A function of (x, y) applying `steps` (kind, index, pick) to a growing list of values."""
    def f(x, y):
        values = [x, y]
        for kind, k, pick in steps:
            if kind == "unary":
                values.append(UNARY[k % len(UNARY)](values[-1]))
            elif kind == "axis" and ndim >= 1 and values[-1].ndim >= 1:
                values.append(AXIS_UNARY[k % len(AXIS_UNARY)](values[-1]))
            else:
                values.append(COMBINE[k % len(COMBINE)](values[-1], values[pick % len(values)]))
        return values[-1] + values[0] * values[1]   # depends on both inputs, full shape
    return f


def _reverse_jacobian(f, x, y):
    """Rows d out[k] / d (x, y): one VJP per output component."""
    tracer = Tracer("jacobian")
    xs = [tracer.source("input", a.shape, a.dtype, f"x{i}", value=a) for i, a in enumerate((x, y))]
    out = f(*xs)
    rows = []
    for k in range(out.size):
        seed = np.zeros(out.size)
        seed[k] = 1.0
        grads = backward(out, xs, tracer.const(seed.reshape(out.shape)))
        rows.append(np.concatenate([np.zeros(a.size) if g is None else g.numpy().ravel()
                                    for g, a in zip(grads, (x, y))]))
    return np.array(rows).reshape(out.size, x.size + y.size)


def _forward_jacobian(f, x, y):
    """Columns d out / d input[j]: one JVP per input direction."""
    cols = []
    for which, a in enumerate((x, y)):
        for j in range(a.size):
            tangents = [np.zeros_like(x), np.zeros_like(y)]
            tangents[which].reshape(-1)[j] = 1.0
            _, t = ad.jvp(f, [x, y], tangents)
            cols.append(np.asarray(t).ravel())
    return np.array(cols).T


@settings(max_examples=25, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       steps=st.lists(st.tuples(st.sampled_from(["unary", "axis", "combine"]),
                                st.integers(0, 50), st.integers(0, 50)), min_size=2, max_size=6),
       seed=st.integers(0, 2**16))
def test_forward_jacobian_equals_reverse_jacobian(shapes, steps, seed):
    rng = np.random.default_rng(seed)
    x, y = (np.asarray(rng.standard_normal(s)) for s in shapes.input_shapes)
    f = _program(steps, len(shapes.result_shape))
    rev = _reverse_jacobian(f, x, y)
    fwd = _forward_jacobian(f, x, y)
    assert np.all(np.isfinite(rev))
    np.testing.assert_allclose(fwd, rev, rtol=1e-10, atol=1e-12)
