"""Differentiating through sampling: a variational autoencoder with the reparameterization trick.

The ELBO is an expectation over z ~ q(z | x) = N(mu(x), sigma^2). Sampling is not
differentiable in mu and sigma, but writing z = mu + sigma * eps with eps ~ N(0, 1) drawn by a
random source node moves the randomness into an input: the graph is differentiable in mu and
sigma, and each step draws fresh eps.

Data: 2-D points x = z w + b + noise with a 1-D latent z (probabilistic PCA). Encoder
mu(x) = x A + c with a constant log-variance, decoder N(z W + d, exp(s) I). For this model
the true posterior is Gaussian with a mean linear in x, so the best ELBO equals the best
log-likelihood, which has a closed form (the Gaussian fitted to the data).

Run: python examples/vae.py
"""
from __future__ import annotations

import numpy as np

from autodiff import numpy as anp
from compiled import apply_updates, compile_value_and_grad, init_states
from executor.optim import Adam

LOG_2PI = float(np.log(2 * np.pi))


def negative_elbo(p, x):
    """-mean over points of E_q[log p(x | z)] - KL(q(z | x) || N(0, 1)), one sample of z."""
    n, d = x.shape
    mu = x @ p["enc_w"] + p["enc_b"]                                   # (n, 1)
    eps = anp.random_normal((n, 1), seed=7, tracer_of=x)               # fresh every step
    z = mu + anp.exp(0.5 * p["enc_logvar"]) * eps                      # reparameterization
    r = x - (z @ p["dec_w"] + p["dec_b"])
    log_lik = -0.5 * (d * LOG_2PI + d * p["dec_logvar"]
                      + anp.sum(r * r, axis=1) / anp.exp(p["dec_logvar"]))
    kl = 0.5 * anp.sum(anp.exp(p["enc_logvar"]) + mu * mu - 1 - p["enc_logvar"], axis=1)
    return -anp.mean(log_lik - kl)


def synthetic_data(n: int, rng) -> np.ndarray:
    z = rng.normal(size=(n, 1))
    return z @ np.array([[2.0, 1.0]]) + np.array([1.0, -1.0]) + 0.3 * rng.normal(size=(n, 2))


def init_params(rng) -> dict:
    return {"enc_w": np.zeros((2, 1)), "enc_b": np.zeros(1), "enc_logvar": np.zeros(1),
            "dec_w": 0.1 * rng.normal(size=(1, 2)), "dec_b": np.zeros(2),
            "dec_logvar": np.zeros(1)}


def train(x, params, steps: int = 1500, lr: float = 0.02, eval_every: int = 250) -> tuple:
    """Adam on the one-sample negative ELBO; returns params and (step, ELBO estimate) pairs."""
    loss_and_grad = compile_value_and_grad(negative_elbo, params, x)
    optimizer = Adam(lr=lr)
    states = init_states(optimizer, params)
    history = []
    for step in range(steps):
        loss, grads = loss_and_grad(params, x, step=step)     # step k draws eps number k
        if step % eval_every == 0 or step == steps - 1:
            history.append((step, -loss))
        params, states = apply_updates(optimizer, params, grads, states)
    return params, history


def main(n: int = 512, steps: int = 1500, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = synthetic_data(n, rng)
    init = init_params(rng)
    params, history = train(x, init, steps=steps)
    cov = np.cov(x.T, bias=True)
    best_log_likelihood = -0.5 * (2 * LOG_2PI + np.log(np.linalg.det(cov)) + 2)
    return {"x": x, "init": init, "params": params, "history": history,
            "best_log_likelihood": float(best_log_likelihood)}


if __name__ == "__main__":
    out = main()
    print("ELBO per point (one-sample estimate) during training:")
    for step, elbo in out["history"]:
        print(f"  step {step:5d}: {elbo:8.4f}")
    print(f"best possible log-likelihood per point (closed form): {out['best_log_likelihood']:.4f}")
    w = out["params"]["dec_w"]
    print(f"decoder direction {np.round(w[0] / np.linalg.norm(w), 3)} "
          f"(true {np.round(np.array([2, 1]) / np.sqrt(5), 3)} up to sign)")
