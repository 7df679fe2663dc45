"""Shared weights: AD gradients against central differences of plain-numpy models."""
import numpy as np

import gradient_bookkeeping as ex
from numeric_checks import numeric_grad

RNG = np.random.default_rng(7)
B, D, H, T = 5, 4, 3, 5


def test_bias_gradient_is_sum_over_batch():
    w, b, x = RNG.normal(size=(D, H)), RNG.normal(size=H), RNG.normal(size=(B, D))
    shared, per_row = ex.bias_broadcasting(w, b, x)
    y = np.tanh(x @ w + b)
    upstream = 1 - y ** 2                     # d sum(tanh(z)) / dz
    np.testing.assert_allclose(np.stack(per_row), upstream, rtol=1e-12)
    np.testing.assert_allclose(shared, upstream.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(shared, numeric_grad(lambda b: np.tanh(x @ w + b).sum(), b),
                               rtol=1e-7, atol=1e-9)


def _rnn(ws, u, h0, xs):
    h = h0
    for w, x in zip(ws, xs):
        h = np.tanh(h @ w + x @ u)
    return (h * h).sum() / 2


def test_rnn_gradient_is_sum_of_per_step_contributions():
    w, u, h0 = RNG.normal(size=(H, H)) * 0.8, RNG.normal(size=(D, H)) * 0.5, RNG.normal(size=(B, H))
    xs = list(RNG.normal(size=(T, B, D)))
    shared, per_step = ex.rnn_shared_weight(w, u, h0, xs)
    assert len(per_step) == T
    np.testing.assert_allclose(shared, numeric_grad(lambda w: _rnn([w] * T, u, h0, xs), w),
                               rtol=1e-6, atol=1e-8)
    for t in range(T):   # perturb only the copy used at step t
        def at_step_t(wt, t=t):
            return _rnn([wt if s == t else w for s in range(T)], u, h0, xs)
        np.testing.assert_allclose(per_step[t], numeric_grad(at_step_t, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(shared, sum(per_step), rtol=1e-12, atol=1e-12)


def test_siamese_towers_add_up():
    w, xl = RNG.normal(size=(D, H)), RNG.normal(size=(B, D))
    xr = xl + 0.3 * RNG.normal(size=(B, D))
    loss = lambda wl, wr: ((np.tanh(xl @ wl) - np.tanh(xr @ wr)) ** 2).sum()
    shared, (left, right) = ex.siamese_pair(w, xl, xr)
    np.testing.assert_allclose(left, numeric_grad(lambda v: loss(v, w), w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(right, numeric_grad(lambda v: loss(w, v), w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(shared, numeric_grad(lambda v: loss(v, v), w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(shared, left + right, rtol=1e-12, atol=1e-12)


def test_tied_autoencoder_gradient_is_encoder_plus_decoder():
    w, x = RNG.normal(size=(D, H)) * 0.5, RNG.normal(size=(B, D))
    loss = lambda we, wd: ((np.tanh(x @ we) @ wd.T - x) ** 2).mean()
    shared, (enc, dec) = ex.tied_autoencoder(w, x)
    np.testing.assert_allclose(enc, numeric_grad(lambda v: loss(v, w), w), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dec, numeric_grad(lambda v: loss(w, v), w), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(shared, numeric_grad(lambda v: loss(v, v), w), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(shared, enc + dec, rtol=1e-12, atol=1e-12)


def test_main_runs_every_case():
    results = ex.main(batch=3, steps=3)
    assert set(results) == {"bias", "rnn", "siamese", "autoencoder"}
    for shared, parts in results.values():
        assert shared.shape == parts[0].shape
        assert np.abs(shared - sum(parts)).max() < 1e-12
