"""Control by backpropagation through time: a robot arm throws a ball onto a target.

A one-link arm (length 1 m, pivot 1.5 m above the ground) starts hanging down at rest. For T
steps of dt seconds we choose its angular acceleration u_t; the joint integrates
    omega_{t+1} = omega_t + dt u_t,   theta_{t+1} = theta_t + dt omega_{t+1}.
At the end it releases the ball from its tip with the tip's velocity, and the ball flies
ballistically to the ground: landing time from the quadratic y0 + vy t - g t^2 / 2 = 0, so
x_land = x0 + vx * (vy + sqrt(vy^2 + 2 g y0)) / g. The loss is the squared miss distance plus
a small effort penalty; its gradient flows back through the flight and all T arm steps.

Run: python examples/ballistic_arm.py
"""
from __future__ import annotations

import numpy as np

from autodiff import numpy as anp
from compiled import apply_updates, compile_value_and_grad, init_states
from executor.optim import Adam

G, LENGTH, PIVOT_HEIGHT, DT = 9.81, 1.0, 1.5, 0.02


def swing(u):
    """Arm state after applying accelerations u[0..T-1] from rest, hanging down."""
    theta, omega = -np.pi / 2, 0.0
    for t in range(u.shape[0]):
        omega = omega + DT * u[t]
        theta = theta + DT * omega
    return theta, omega


def landing_point(u):
    """Where the released ball hits the ground (x, metres from the pivot)."""
    theta, omega = swing(u)
    x0, y0 = LENGTH * anp.cos(theta), PIVOT_HEIGHT + LENGTH * anp.sin(theta)
    vx, vy = -LENGTH * omega * anp.sin(theta), LENGTH * omega * anp.cos(theta)
    flight = (vy + anp.sqrt(vy * vy + 2 * G * y0)) / G
    return x0 + vx * flight


def loss(u, target, effort: float = 1e-6):
    miss = landing_point(u) - target
    return miss * miss + effort * anp.sum(u * u)


def plan_throw(target: float, steps: int = 40, iterations: int = 300, lr: float = 0.5
               ) -> tuple[np.ndarray, list]:
    """Adam on the control sequence, starting from a gentle constant push."""
    u = np.full(steps, 5.0)
    loss_and_grad = compile_value_and_grad(loss, u, np.array(target))
    optimizer = Adam(lr=lr)
    states = init_states(optimizer, u)
    history = []
    for _ in range(iterations):
        value, g = loss_and_grad(u, np.array(target))
        history.append(value)
        u, states = apply_updates(optimizer, u, g, states)
    return u, history


def main(target: float = 4.0, steps: int = 40, iterations: int = 300) -> dict:
    u, history = plan_throw(target, steps, iterations)
    return {"controls": u, "target": target, "history": history,
            "landing": float(landing_point(u)), "initial_landing":
            float(landing_point(np.full(steps, 5.0)))}


if __name__ == "__main__":
    out = main()
    print(f"target {out['target']:.2f} m; first throw lands at {out['initial_landing']:.3f} m, "
          f"planned throw at {out['landing']:.4f} m")
    print(f"loss {out['history'][0]:.3f} -> {out['history'][-1]:.2e}")
    print("accelerations (rad/s^2):", np.round(out["controls"][::5], 2))
