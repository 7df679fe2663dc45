"""SIR inverse problem: numpy re-simulation, numeric gradients, and the true transmission rate."""
import numpy as np
import pytest

import autodiff as ad
import sir_inverse as ex
from numeric_checks import numeric_grad


def _new_infections(beta, gamma=0.1, i0=1e-3):
    s, i, out = 1 - i0, i0, []
    for b in beta:
        n = b * s * i
        s, i = s - n, i + (n - gamma * i)
        out.append(n)
    return np.array(out)


def _loss(theta, log_obs, smoothness):
    misfit = np.log(_new_infections(np.exp(theta))) - log_obs
    return np.mean(misfit ** 2) + smoothness * np.sum(np.diff(theta) ** 2)


def test_gradient_through_time_matches_finite_differences():
    rng = np.random.default_rng(1)
    theta = np.log(0.3) + 0.2 * rng.normal(size=12)
    log_obs = np.log(_new_infections(np.full(12, 0.35))) + 0.05 * rng.normal(size=12)
    got = ad.grad(ex.loss)(theta, log_obs, 0.01)
    np.testing.assert_allclose(got, numeric_grad(lambda t: _loss(t, log_obs, 0.01), theta),
                               rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def result():
    return ex.main(days=40, steps=700, seed=3)


def test_recovers_the_true_transmission_rate(result):
    beta = 0.15 + 0.25 / (1 + np.exp((np.arange(40) - 20) / 2.0))
    np.testing.assert_allclose(result["true_beta"], beta, rtol=1e-12)
    got = result["recovered_beta"]
    assert np.sqrt(np.mean((got / beta - 1) ** 2)) < 0.08
    # The flat starting guess (0.3) is far worse than the recovered rate.
    assert np.sqrt(np.mean((0.3 / beta - 1) ** 2)) > 0.4


def test_fit_explains_the_data_to_the_noise_level(result):
    misfit = np.log(_new_infections(result["recovered_beta"])) - np.log(result["observed"])
    assert np.sqrt(np.mean(misfit ** 2)) < 0.07          # the noise has sd 0.05
