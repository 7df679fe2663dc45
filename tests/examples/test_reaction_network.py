"""Reaction network design: the learned rates against the optimum of the exact ODE solution."""
import numpy as np
import pytest

import autodiff as ad
import reaction_network as ex


def exact_yield(k1, budget=2.0, k3=0.5, t=3.0):
    """C(t) of A -> B -> C, B -> D in closed form (k2 = budget - k1, kappa = k2 + k3)."""
    k2 = budget - k1
    kappa = k2 + k3
    return k2 * k1 / (kappa - k1) * ((1 - np.exp(-k1 * t)) / k1 - (1 - np.exp(-kappa * t)) / kappa)


@pytest.fixture(scope="module")
def result():
    return ex.main(iterations=20)


def test_rk4_simulation_matches_the_closed_form():
    for k1 in (0.3, 0.8, 1.6):
        u = np.log(k1 / (2.0 - k1))
        assert float(ex.product_yield(np.array(u))) == pytest.approx(exact_yield(k1), abs=1e-6)


def test_gradient_matches_the_closed_form_derivative():
    u, eps = 0.3, 1e-6
    k1 = lambda u: 2.0 / (1 + np.exp(-u))
    expected = (exact_yield(k1(u + eps)) - exact_yield(k1(u - eps))) / (2 * eps)
    assert float(ad.grad(ex.product_yield)(np.array(u))) == pytest.approx(expected, rel=1e-4)


def test_learned_rates_reach_the_optimal_yield(result):
    grid = np.linspace(0.01, 1.99, 19801)
    grid = grid[np.abs(2.5 - 2 * grid) > 1e-3]      # the formula is 0/0 where kappa = k1
    yields = exact_yield(grid)
    best_k1, best = grid[yields.argmax()], yields.max()
    assert result["k1"] == pytest.approx(best_k1, abs=2e-3)
    assert result["k1"] + result["k2"] == pytest.approx(2.0)
    assert exact_yield(result["k1"]) == pytest.approx(best, abs=1e-6)
    assert result["history"][0][1] < best - 0.1       # it started far from the optimum
