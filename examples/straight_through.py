"""Differentiating the non-differentiable: training a quantized network with straight-through.

A network whose weights are rounded to a few levels is piecewise constant in its weights: the
true derivative is zero almost everywhere, so gradient descent cannot move. The
straight-through estimator (STE) quantizes in the forward pass and passes the gradient through
unchanged in the backward pass, i.e. it uses the gradient with respect to the quantized
weights as the gradient of the latent full-precision weights.

We classify 2-D points as inside / outside a circle with a 2-16-2 ReLU network whose weights
take 5 values in [-1, 1]. Quantization-aware training (STE) gives an accurate quantized
network; training in full precision and rounding afterwards does not.

Run: python examples/straight_through.py
"""
from __future__ import annotations

import numpy as np

import autodiff as ad
from autodiff import numpy as anp
from compiled import apply_updates, compile_value_and_grad, init_states
from executor.optim import Momentum

LEVELS, LO, HI = 5, -1.0, 1.0


def quantize(w):
    return anp.straight_through(w, levels=LEVELS, lo=LO, hi=HI)


def logits(params, x, quantized: bool = True):
    q = quantize if quantized else (lambda w: w)
    h = anp.relu(x @ q(params["w1"]) + params["b1"])
    return h @ q(params["w2"]) + params["b2"]


def circle_data(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform in [-2, 2]^2, labelled 1 inside the circle x^2 + y^2 < 1.5."""
    x = rng.uniform(-2, 2, size=(n, 2))
    return x, (np.sum(x * x, axis=1) < 1.5).astype(np.int64)


def init_params(rng, hidden: int = 16) -> dict:
    return {"w1": rng.normal(size=(2, hidden)) * 0.5, "b1": np.zeros(hidden),
            "w2": rng.normal(size=(hidden, 2)) * 0.5, "b2": np.zeros(2)}


def train(params, x, y, quantized: bool, steps: int = 600) -> dict:
    """SGD with momentum on the cross-entropy of the (quantized or float) network."""
    loss_and_grad = compile_value_and_grad(
        lambda p, x, y: anp.cross_entropy(logits(p, x, quantized), y), params, x, y)
    optimizer = Momentum(lr=0.1, momentum=0.9)
    states = init_states(optimizer, params)
    for _ in range(steps):
        _, grads = loss_and_grad(params, x, y)
        params, states = apply_updates(optimizer, params, grads, states)
    return params


def accuracy(params, x, y, quantized: bool = True) -> float:
    return float(np.mean(np.argmax(logits(params, x, quantized), axis=1) == y))


def quantized_loss(params, x, y):
    return anp.cross_entropy(logits(params, x, quantized=True), y)


def main(seed: int = 0, steps: int = 600, n_train: int = 256, n_test: int = 1000) -> dict:
    rng = np.random.default_rng(seed)
    x, y = circle_data(n_train, rng)
    x_test, y_test = circle_data(n_test, rng)
    init = init_params(rng)

    # The true derivative of the quantized loss vanishes; the STE gradient does not.
    eps = 1e-6
    w_plus = dict(init, w1=init["w1"] + eps)
    true_derivative = (quantized_loss(w_plus, x, y) - quantized_loss(init, x, y)) / eps
    ste_gradient = ad.grad(quantized_loss)(init, x, y)

    ste = train(init, x, y, quantized=True, steps=steps)
    full = train(init, x, y, quantized=False, steps=steps)
    return {
        "true_derivative": float(true_derivative), "ste_gradient": ste_gradient,
        "ste_params": ste, "float_params": full, "test_data": (x_test, y_test),
        "accuracy": {
            "quantization-aware (STE), quantized": accuracy(ste, x_test, y_test, True),
            "float training, float weights": accuracy(full, x_test, y_test, False),
            "float training, then quantized": accuracy(full, x_test, y_test, True),
            "always predict the majority class": float(max(y_test.mean(), 1 - y_test.mean())),
        },
    }


if __name__ == "__main__":
    out = main()
    print(f"finite-difference derivative of the quantized loss: {out['true_derivative']:.1f}")
    print(f"straight-through gradient norm (w1): {np.linalg.norm(out['ste_gradient']['w1']):.3f}")
    print(f"test accuracy ({LEVELS} weight levels in [{LO}, {HI}]):")
    for name, acc in out["accuracy"].items():
        print(f"  {name:36s} {acc:.3f}")
