"""VAE: the exact ELBO of the learned parameters (closed-form expectation) against the exact
maximum log-likelihood of the data (Gaussian fit), and the learned covariance against the data's."""
import numpy as np
import pytest

import vae as ex
from compiled import compile_value_and_grad

LOG_2PI = np.log(2 * np.pi)


def exact_elbo(p, x):
    """Mean ELBO with E_q in closed form: E||x - Wz - d||^2 = ||x - W mu - d||^2 + var ||W||^2."""
    mu = x @ p["enc_w"] + p["enc_b"]
    var, s, w = np.exp(p["enc_logvar"][0]), p["dec_logvar"][0], p["dec_w"]
    err = ((x - mu @ w - p["dec_b"]) ** 2).sum(1) + var * (w * w).sum()
    log_lik = -0.5 * (2 * LOG_2PI + 2 * s + err / np.exp(s))
    kl = 0.5 * (var + mu[:, 0] ** 2 - 1 - np.log(var))
    return float(np.mean(log_lik - kl))


@pytest.fixture(scope="module")
def result():
    return ex.main(n=256, steps=1200, seed=1)


def test_elbo_improves_and_approaches_the_maximum_likelihood(result):
    x = result["x"]
    cov = np.cov(x.T, bias=True)
    best = -0.5 * (2 * LOG_2PI + np.log(np.linalg.det(cov)) + 2)
    assert result["best_log_likelihood"] == pytest.approx(best, rel=1e-12)
    before, after = exact_elbo(result["init"], x), exact_elbo(result["params"], x)
    assert after > before + 2.0
    assert after <= best + 1e-9                       # the ELBO is a lower bound
    assert after > best - 0.1                         # ... and it is nearly tight here


def test_learned_model_covariance_matches_the_data(result):
    p, x = result["params"], result["x"]
    model_cov = p["dec_w"].T @ p["dec_w"] + np.exp(p["dec_logvar"][0]) * np.eye(2)
    np.testing.assert_allclose(model_cov, np.cov(x.T, bias=True), rtol=0.1, atol=0.05)
    np.testing.assert_allclose(p["dec_b"], x.mean(0), atol=0.1)


def test_one_sample_estimate_is_unbiased_for_the_exact_elbo():
    rng = np.random.default_rng(4)
    x, p = ex.synthetic_data(64, rng), ex.init_params(rng)
    p["enc_w"] = rng.normal(size=(2, 1)) * 0.3
    f = compile_value_and_grad(ex.negative_elbo, p, x)
    draws = np.array([-f(p, x, step=k)[0] for k in range(400)])
    assert abs(draws.mean() - exact_elbo(p, x)) < 5 * draws.std(ddof=1) / np.sqrt(len(draws))
