"""Straight-through training: an independent numpy quantizer and forward pass judge the result."""
import numpy as np
import pytest

import autodiff as ad
import straight_through as ex
from numeric_checks import numeric_grad

GRID = np.linspace(-1, 1, 5)


def _quantize(w):
    """Nearest of the 5 grid values after clipping (the grid spacing is 0.5)."""
    return GRID[np.abs(np.clip(w, -1, 1)[..., None] - GRID).argmin(-1)]


def _logits(p, x, quantize=True):
    q = _quantize if quantize else (lambda w: w)
    return np.maximum(x @ q(p["w1"]) + p["b1"], 0) @ q(p["w2"]) + p["b2"]


def _cross_entropy(z, y):
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


@pytest.fixture(scope="module")
def result():
    return ex.main(steps=400, n_test=600)


def test_quantization_aware_training_beats_rounding_afterwards(result):
    x, y = result["test_data"]
    assert np.array_equal(y, (x[:, 0] ** 2 + x[:, 1] ** 2 < 1.5))   # the ground-truth rule
    ste = np.mean(_logits(result["ste_params"], x).argmax(1) == y)
    rounded = np.mean(_logits(result["float_params"], x).argmax(1) == y)
    full = np.mean(_logits(result["float_params"], x, quantize=False).argmax(1) == y)
    majority = max(y.mean(), 1 - y.mean())
    assert ste > 0.9 and full > 0.9
    assert ste > rounded + 0.2
    assert rounded < majority + 0.05
    assert result["accuracy"]["quantization-aware (STE), quantized"] == pytest.approx(ste)


def test_true_derivative_is_zero_and_ste_is_the_gradient_at_the_quantized_weights():
    rng = np.random.default_rng(3)
    x, y = ex.circle_data(40, rng)
    p = ex.init_params(rng, hidden=5)
    p["b1"] = rng.normal(size=5) * 0.1
    quantized_w1 = lambda w: _cross_entropy(_logits(dict(p, w1=w), x), y)
    assert np.all(numeric_grad(quantized_w1, p["w1"]) == 0)     # piecewise constant
    # STE: d/dw of L(q(w)) := dL/dq evaluated at q = q(w), i.e. the float network's gradient.
    float_w1 = lambda v: _cross_entropy(_logits(dict(p, w1=v, w2=_quantize(p["w2"])), x,
                                                quantize=False), y)
    ste = ad.grad(ex.quantized_loss)(p, x, y)
    np.testing.assert_allclose(ste["w1"], numeric_grad(float_w1, _quantize(p["w1"])),
                               rtol=1e-6, atol=1e-9)
