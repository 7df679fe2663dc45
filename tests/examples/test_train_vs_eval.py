"""Dropout and batch norm: closed-form expectations, numpy batch statistics, known true stats."""
import numpy as np
import pytest

import train_vs_eval as ex


@pytest.fixture(scope="module")
def result():
    return ex.main(draws=1500, bn_steps=150)


def test_mean_dropout_gradient_is_gradient_of_expected_loss(result):
    d = result["dropout"]
    rng = np.random.default_rng(0)             # main's draws, in order
    x, w = rng.normal(size=(16, 4)), rng.normal(size=4)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=16)
    p = 0.3
    # E[(m_ij / (1-p))^2] = 1 / (1-p): the penalty term of the expected loss.
    true = -x.T @ (y - x @ w) + p / (1 - p) * (x * x).sum(axis=0) * w
    assert np.all(np.abs(d["mean"] - true) <= d["bound"])
    # The bound is tight enough to tell E[grad] from the no-dropout (eval) gradient.
    no_dropout = -x.T @ (y - x @ w)
    np.testing.assert_allclose(d["eval"], no_dropout, rtol=1e-12)
    assert np.any(np.abs(no_dropout - true) > 3 * d["bound"])
    assert "dropout" in d["train_ops"] and "dropout" not in d["eval_ops"]


def test_running_averages_follow_the_update_rule():
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(8, 3)) * 2 + 1 for _ in range(4)]
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    out = ex.running_averages(batches, gamma, beta)
    mean, var = np.zeros(3), np.ones(3)
    for b in batches:
        mean = 0.9 * mean + 0.1 * b.mean(axis=0)
        var = 0.9 * var + 0.1 * b.var(axis=0, ddof=1)
    np.testing.assert_allclose(out["final"]["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(out["final"]["var"], var, rtol=1e-12)
    last = batches[-1]
    x_hat = (last - last.mean(0)) / np.sqrt(last.var(0) + 1e-5)
    np.testing.assert_allclose(out["train_output"], gamma * x_hat + beta, rtol=1e-10, atol=1e-12)


def test_running_averages_converge_to_true_statistics_and_drive_eval(result):
    bn = result["batch_norm"]["final"]
    # EMA with momentum 0.1 over batches of 32: sd of the running mean ~ sd * 0.23 / sqrt(32).
    sd = np.sqrt(result["true_var"])
    assert np.all(np.abs(bn["mean"] - result["true_mean"]) < 5 * sd * 0.23 / np.sqrt(32))
    np.testing.assert_allclose(bn["var"], result["true_var"], rtol=0.35)
    assert "batch_norm" in result["bn_ops"][0] and "batch_norm_eval" in result["bn_ops"][1]


def test_eval_uses_running_averages():
    rng = np.random.default_rng(6)
    x, gamma, beta = rng.normal(size=(5, 3)), rng.normal(size=3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    out = ex.bn_eval(x, gamma, beta, mean, var)
    np.testing.assert_allclose(out, gamma * (x - mean) / np.sqrt(var + 1e-5) + beta, rtol=1e-12)


def test_gamma_beta_gradients_from_xhat_and_upstream():
    rng = np.random.default_rng(8)
    x, gamma, beta = rng.normal(size=(10, 3)) * 3 + 2, rng.normal(size=3), rng.normal(size=3)
    c = rng.normal(size=x.shape)
    dgamma, dbeta, g = ex.bn_parameter_gradients(x, gamma, beta, c)
    x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    y = gamma * x_hat + beta
    upstream = c * (1 - np.tanh(y) ** 2)           # closed form dL/dy
    np.testing.assert_allclose(g, upstream, rtol=1e-10)
    np.testing.assert_allclose(dgamma, (upstream * x_hat).sum(0), rtol=1e-10)
    np.testing.assert_allclose(dbeta, upstream.sum(0), rtol=1e-10)
    # An affine change of the batch leaves x_hat, hence both gradients, unchanged.
    dgamma2, dbeta2, _ = ex.bn_parameter_gradients(5 * x - 7, gamma, beta, c)
    np.testing.assert_allclose(dgamma2, dgamma, rtol=1e-4)
    np.testing.assert_allclose(dbeta2, dbeta, rtol=1e-4)
