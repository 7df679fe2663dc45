"""Gradient bookkeeping: a tensor used several times gets the sum of the gradients of its uses.

Four cases: a bias broadcast over a batch, one RNN weight reused at every time step, a Siamese
pair sharing an encoder, and an autoencoder whose decoder is its encoder transposed. Each model
is written once, taking one weight per use. Passing the same weight for every use gives the
shared model (the graph fans out); passing separate copies gives each use's own gradient. The
shared gradient equals the sum of the per-use gradients.

Run: python examples/gradient_bookkeeping.py
"""
from __future__ import annotations

import numpy as np

import autodiff as ad
from autodiff import numpy as anp


# ------------------------------------------------------------------ the models
def dense_loss(bias_rows, w, x):
    """sum(tanh(x @ w + bias)) where row i of the batch adds bias_rows[i]."""
    return anp.sum(anp.tanh(x @ w + bias_rows))


def rnn_loss(ws, u, h0, xs):
    """h_t = tanh(h_{t-1} @ ws[t] + x_t @ u) for t = 0..T-1; loss = sum(h_T^2) / 2."""
    h = h0
    for w, x in zip(ws, xs):
        h = anp.tanh(h @ w + x @ u)
    return anp.sum(h * h) / 2


def siamese_loss(w_left, w_right, x_left, x_right):
    """Squared distance between the embeddings tanh(x @ w) of a similar pair."""
    d = anp.tanh(x_left @ w_left) - anp.tanh(x_right @ w_right)
    return anp.sum(d * d)


def autoencoder_loss(w_enc, w_dec, x):
    """Reconstruction error of z = tanh(x @ w_enc), x_hat = z @ w_dec^T."""
    x_hat = anp.tanh(x @ w_enc) @ anp.transpose(w_dec)
    return anp.mean((x_hat - x) * (x_hat - x))


# ------------------------------------------------------------- shared vs. copies
def bias_broadcasting(w, b, x):
    """Gradient of the shared bias b, and of each batch row's own copy of it."""
    batch = x.shape[0]
    shared = ad.grad(lambda b: dense_loss(b, w, x))(b)          # b broadcasts over the batch
    per_row = ad.grad(lambda rows: dense_loss(rows, w, x))(np.tile(b, (batch, 1)))
    return shared, list(per_row)


def rnn_shared_weight(w, u, h0, xs):
    """Gradient of the one recurrent weight, and of a separate copy used at each step."""
    steps = len(xs)
    shared = ad.grad(lambda w: rnn_loss([w] * steps, u, h0, xs))(w)
    per_step = ad.grad(lambda ws: rnn_loss(ws, u, h0, xs))([w.copy() for _ in range(steps)])
    return shared, per_step


def siamese_pair(w, x_left, x_right):
    """Gradient of the shared encoder weight, and of each tower's own copy."""
    shared = ad.grad(lambda w: siamese_loss(w, w, x_left, x_right))(w)
    left, right = ad.grad(siamese_loss, argnums=(0, 1))(w, w.copy(), x_left, x_right)
    return shared, [left, right]


def tied_autoencoder(w, x):
    """Gradient of the tied weight, and of untied encoder / decoder copies."""
    shared = ad.grad(lambda w: autoencoder_loss(w, w, x))(w)
    enc, dec = ad.grad(autoencoder_loss, argnums=(0, 1))(w, w.copy(), x)
    return shared, [enc, dec]


def main(seed: int = 0, batch: int = 8, d_in: int = 4, hidden: int = 3, steps: int = 6) -> dict:
    """Run the four cases; returns {case: (shared gradient, list of per-use gradients)}."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, d_in))
    results = {
        "bias": bias_broadcasting(rng.normal(size=(d_in, hidden)), rng.normal(size=hidden), x),
        "rnn": rnn_shared_weight(rng.normal(size=(hidden, hidden)) * 0.8,
                                 rng.normal(size=(d_in, hidden)) * 0.5,
                                 rng.normal(size=(batch, hidden)),
                                 list(rng.normal(size=(steps, batch, d_in)))),
        "siamese": siamese_pair(rng.normal(size=(d_in, hidden)), x,
                                x + 0.3 * rng.normal(size=x.shape)),
        "autoencoder": tied_autoencoder(rng.normal(size=(d_in, hidden)) * 0.5, x),
    }
    return results


if __name__ == "__main__":
    for case, (shared, parts) in main().items():
        gap = np.abs(shared - sum(parts)).max()
        norms = ", ".join(f"{np.linalg.norm(p):.3f}" for p in parts)
        print(f"{case:12s} {len(parts)} uses, |grad of each use| = [{norms}]")
        print(f"{'':12s} |shared grad| = {np.linalg.norm(shared):.3f}, "
              f"max |shared - sum of uses| = {gap:.1e}")
