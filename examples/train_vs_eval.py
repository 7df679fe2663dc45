"""Train vs. eval graphs: dropout and batch norm record different graphs in the two modes.

Dropout. The train graph multiplies by a fresh random mask each step, so its gradient is a
random variable. For linear regression with input dropout (rate p, inverted scaling) the
expected loss has a closed form, ridge regression with a data-dependent penalty:
    E[L(w)] = 1/2 ||y - X w||^2 + 1/2 * p / (1 - p) * sum_j (sum_i x_ij^2) w_j^2.
The stochastic gradient is unbiased for the gradient of E[L]: the mean of K independent draws
has per-coordinate standard deviation sigma_j / sqrt(K). By the central limit theorem
|mean_j - true_j| <= 5 * sigma_j / sqrt(K) fails with probability < 1e-6 per coordinate
(sigma_j estimated from the draws). The eval graph has no mask and no penalty.

Batch norm. The train graph normalizes with the batch's statistics and records new running
averages in graph.meta["updates"]; the eval graph normalizes with the running averages. The
gradients of gamma and beta depend only on the normalized activations x_hat and the upstream
gradient g = dL/dy:  dgamma = sum(g * x_hat), dbeta = sum(g) (sums over the batch).

Run: python examples/train_vs_eval.py
"""
from __future__ import annotations

import numpy as np

import autodiff as ad
from autodiff import numpy as anp
from autodiff.interpreter import Interpreter
from compiled import compile_value_and_grad


def ops_of(graph: ad.Graph) -> list[str]:
    return sorted({node.op for node in graph.nodes})


# ------------------------------------------------------------------- dropout
def regression_loss(w, x, y, rate: float, training: bool):
    r = anp.dropout(x, rate, training=training, seed=1) @ w - y
    return anp.sum(r * r) / 2


def expected_dropout_gradient(w, x, y, rate: float) -> np.ndarray:
    """Gradient of E[L] (closed form above)."""
    return -x.T @ (y - x @ w) + rate / (1 - rate) * (x * x).sum(axis=0) * w


def dropout_gradients(w, x, y, rate: float = 0.3, draws: int = 2000) -> dict:
    """K stochastic gradients from one compiled train graph (step k draws mask k)."""
    def train_loss(w, x, y):
        return regression_loss(w, x, y, rate, training=True)

    def eval_loss(w, x, y):
        return regression_loss(w, x, y, rate, training=False)

    train = compile_value_and_grad(train_loss, w, x, y)
    grads = np.stack([train(w, x, y, step=k)[1] for k in range(draws)])
    mean, sigma = grads.mean(axis=0), grads.std(axis=0, ddof=1)
    return {"mean": mean, "bound": 5 * sigma / np.sqrt(draws),
            "expected": expected_dropout_gradient(w, x, y, rate),
            "eval": ad.grad(eval_loss)(w, x, y),
            "train_ops": ops_of(ad.trace(train_loss, w, x, y)),
            "eval_ops": ops_of(ad.trace(eval_loss, w, x, y))}


# ---------------------------------------------------------------- batch norm
def bn_train(x, gamma, beta, running_mean, running_var):
    return anp.batch_norm(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1)


def bn_eval(x, gamma, beta, running_mean, running_var):
    return anp.batch_norm(x, gamma, beta, running_mean, running_var, training=False)


def running_averages(batches, gamma, beta) -> dict:
    """Feed batches through the train graph, carrying the running averages from its updates."""
    channels = gamma.shape[0]
    state = {"mean": np.zeros(channels), "var": np.ones(channels)}
    graph = ad.trace(bn_train, batches[0], gamma, beta, state["mean"], state["var"])
    updates = graph.meta["updates"]      # {"arg3": new running mean, "arg4": new running var}
    run = Interpreter(graph, outputs=[graph.outputs[0], updates["arg3"], updates["arg4"]])
    for batch in batches:
        out = run.run(feeds={"arg0": batch, "arg1": gamma, "arg2": beta,
                             "arg3": state["mean"], "arg4": state["var"]}).outputs
        state = {"mean": out[updates["arg3"]], "var": out[updates["arg4"]]}
    return {"updates": updates, "final": state, "train_output": out[graph.outputs[0]]}


def bn_parameter_gradients(x, gamma, beta, c):
    """dgamma, dbeta of L = sum(c * tanh(y)), and the upstream gradient g = dL/dy.

    g is read by adding a zero "probe" to y and differentiating w.r.t. the probe.
    """
    def loss(gamma, beta, probe):
        y = anp.batch_norm(x, gamma, beta, training=True) + probe
        return anp.sum(c * anp.tanh(y))
    return ad.grad(loss, argnums=(0, 1, 2))(gamma, beta, np.zeros_like(x))


def main(seed: int = 0, draws: int = 2000, bn_steps: int = 200) -> dict:
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(16, 4)), rng.normal(size=4)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=16)
    drop = dropout_gradients(w, x, y, draws=draws)

    mu, sd = np.array([2.0, -1.0, 0.5]), np.array([3.0, 0.5, 1.0])   # true feature stats
    batches = [mu + sd * rng.normal(size=(32, 3)) for _ in range(bn_steps)]
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    avg = running_averages(batches, gamma, beta)
    last = batches[-1]
    dgamma, dbeta, g = bn_parameter_gradients(last, gamma, beta, rng.normal(size=last.shape))
    x_hat = (last - last.mean(0)) / np.sqrt(last.var(0) + 1e-5)
    return {"dropout": drop, "true_mean": mu, "true_var": sd ** 2, "batch_norm": avg,
            "eval_output": bn_eval(last, gamma, beta, avg["final"]["mean"], avg["final"]["var"]),
            "bn_ops": [ops_of(ad.trace(f, last, gamma, beta, mu, sd ** 2))
                       for f in (bn_train, bn_eval)],
            "dgamma": dgamma, "dbeta": dbeta, "upstream": g,
            "dgamma_from_xhat": (g * x_hat).sum(0), "dbeta_from_g": g.sum(0)}


if __name__ == "__main__":
    out = main()
    d = out["dropout"]
    print("dropout: train graph ops", d["train_ops"])
    print("         eval graph ops ", d["eval_ops"])
    print("  mean of stochastic gradients", np.round(d["mean"], 3))
    print("  gradient of expected loss   ", np.round(d["expected"], 3),
          " (5-sigma bound", np.round(d["bound"], 3), ")")
    print("  eval-mode gradient          ", np.round(d["eval"], 3))
    bn = out["batch_norm"]
    print("batch norm: updates recorded in graph.meta['updates']:", bn["updates"])
    print("  running mean", np.round(bn["final"]["mean"], 3), "true", out["true_mean"])
    print("  running var ", np.round(bn["final"]["var"], 3), "true", out["true_var"])
    print("  train graph ops", out["bn_ops"][0], "eval graph ops", out["bn_ops"][1])
    print("  train vs eval output on one batch: max diff",
          f"{np.abs(bn['train_output'] - out['eval_output']).max():.3f}")
    print("  dgamma", np.round(out["dgamma"], 4), "= sum(g * x_hat)",
          np.round(out["dgamma_from_xhat"], 4))
    print("  dbeta ", np.round(out["dbeta"], 4), "= sum(g)        ",
          np.round(out["dbeta_from_g"], 4))
