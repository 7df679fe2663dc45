"""Ballistic arm: the planned throw re-simulated in numpy; BPTT against finite differences."""
import numpy as np
import pytest

import autodiff as ad
import ballistic_arm as ex
from numeric_checks import numeric_grad


def _release(u, dt=0.02):
    theta, omega = -np.pi / 2, 0.0
    for a in u:
        omega += dt * a
        theta += dt * omega
    pos = np.array([np.cos(theta), 1.5 + np.sin(theta)])
    vel = omega * np.array([-np.sin(theta), np.cos(theta)])
    return pos, vel


def _fly(pos, vel, h=1e-4, g=9.81):
    """Integrate the flight (exact for constant gravity) until the ball crosses y = 0."""
    t = 0.0
    while True:
        y_next = pos[1] + vel[1] * (t + h) - g * (t + h) ** 2 / 2
        if y_next < 0:
            y_now = pos[1] + vel[1] * t - g * t ** 2 / 2
            t += h * y_now / (y_now - y_next)              # linear interpolation of the crossing
            return pos[0] + vel[0] * t
        t += h


def _landing_closed_form(u):
    pos, vel = _release(u)
    return pos[0] + vel[0] * (vel[1] + np.sqrt(vel[1] ** 2 + 2 * 9.81 * pos[1])) / 9.81


def test_planned_throw_hits_the_target_in_an_independent_simulation():
    out = ex.main(target=3.0, steps=30, iterations=250)
    landing = _fly(*_release(out["controls"]))
    assert landing == pytest.approx(3.0, abs=0.01)
    assert out["landing"] == pytest.approx(landing, abs=1e-4)
    assert abs(out["initial_landing"] - 3.0) > 0.5


def test_gradient_through_time_matches_finite_differences():
    rng = np.random.default_rng(0)
    u = 5.0 + rng.normal(size=15)
    target = 2.5
    numeric = numeric_grad(lambda v: (_landing_closed_form(v) - target) ** 2
                           + 1e-6 * np.sum(v * v), u)
    np.testing.assert_allclose(ad.grad(ex.loss)(u, np.array(target)), numeric, rtol=1e-6,
                               atol=1e-9)
