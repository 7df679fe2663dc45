"""Learning to learn: MAML on sine-wave regression, with a learned inner learning rate.

Each task is a sine wave A sin(x + phase) with A in [0.1, 5] and phase in [0, pi]. MAML learns
initial weights theta from which ONE gradient step on K = 10 points of a new task fits it:
    theta' = theta - alpha * grad L_support(theta),   meta-loss = L_query(theta').
The meta-gradient differentiates through the inner gradient step, a gradient of a function
that calls `grad`: the inner gradient is recorded as more graph, so the outer `grad` (or
`vjp` of the traced meta-loss) differentiates it again. The inner step size alpha is a
parameter too: d meta-loss / d alpha = -grad L_query(theta') . grad L_support(theta).

Run: python examples/maml.py
"""
from __future__ import annotations

import numpy as np

import autodiff as ad
from autodiff import numpy as anp
from compiled import apply_updates, compile_value_and_grad, init_states
from executor.optim import Adam


def net(w, x):
    h = anp.tanh(x @ w["w1"] + w["b1"])
    h = anp.tanh(h @ w["w2"] + w["b2"])
    return h @ w["w3"] + w["b3"]


def mse(w, x, y):
    r = net(w, x) - y
    return anp.mean(r * r)


def adapt(params, x, y):
    """One inner gradient step from the meta-learned initialization."""
    g = ad.grad(mse)(params["net"], x, y)
    return {k: params["net"][k] - params["alpha"] * g[k] for k in g}


def meta_loss(params, xs, ys, xq, yq):
    """Mean over tasks of the query loss after adapting on the support set."""
    total = 0.0
    for t in range(len(xs)):
        total = total + mse(adapt(params, xs[t], ys[t]), xq[t], yq[t])
    return total / len(xs)


def sample_tasks(n_tasks: int, k: int, rng) -> tuple[list, list, list, list]:
    """Support and query sets (x, y) of K points each for n_tasks random sine waves."""
    amplitude = rng.uniform(0.1, 5.0, size=(n_tasks, 1, 1))
    phase = rng.uniform(0, np.pi, size=(n_tasks, 1, 1))
    xs, xq = rng.uniform(-5, 5, size=(2, n_tasks, k, 1))
    return (list(xs), list(amplitude * np.sin(xs + phase)), list(xq),
            list(amplitude * np.sin(xq + phase)))


def init_params(rng, hidden: int = 32, alpha: float = 0.01) -> dict:
    return {"net": {"w1": rng.normal(size=(1, hidden)), "b1": np.zeros(hidden),
                    "w2": rng.normal(size=(hidden, hidden)) / np.sqrt(hidden),
                    "b2": np.zeros(hidden),
                    "w3": rng.normal(size=(hidden, 1)) / np.sqrt(hidden), "b3": np.zeros(1)},
            "alpha": np.array(alpha)}


def adapted_loss(params, tasks) -> float:
    """Mean query loss after one inner step (on arrays: the same code runs without a trace)."""
    xs, ys, xq, yq = tasks
    losses = [mse(adapt(params, xs[t], ys[t]), xq[t], yq[t]) for t in range(len(xs))]
    return float(np.mean(losses))


def meta_train(params, steps: int, tasks_per_step: int, k: int, rng, lr: float = 0.003):
    """Adam on the meta-loss; the graph is traced once and re-run on new tasks every step."""
    step_fn = compile_value_and_grad(meta_loss, params, *sample_tasks(tasks_per_step, k, rng))
    optimizer = Adam(lr=lr)
    states = init_states(optimizer, params)
    for _ in range(steps):
        _, grads = step_fn(params, *sample_tasks(tasks_per_step, k, rng))
        params, states = apply_updates(optimizer, params, grads, states)
    return params


def main(steps: int = 1000, tasks_per_step: int = 4, k: int = 10, test_tasks: int = 100,
         seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    test = sample_tasks(test_tasks, k, np.random.default_rng(seed + 1))
    batch = sample_tasks(tasks_per_step, k, rng)
    alpha_gradient = ad.grad(meta_loss)(params, *batch)["alpha"]
    before = adapted_loss(params, test)
    trained = meta_train(params, steps, tasks_per_step, k, rng)
    return {"init": params, "params": trained, "check_batch": batch,
            "alpha_gradient": float(alpha_gradient), "before": before,
            "after": adapted_loss(trained, test), "test_tasks": test}


if __name__ == "__main__":
    out = main()
    print(f"d meta-loss / d alpha at initialization: {out['alpha_gradient']:.5f}")
    print(f"query MSE after one adaptation step on new tasks: {out['before']:.3f} before "
          f"meta-training, {out['after']:.3f} after")
    print(f"learned inner learning rate alpha: {float(out['params']['alpha']):.4f} "
          f"(started at {float(out['init']['alpha']):.4f})")
    print("for scale: always predicting 0 has expected MSE E[A^2]/2 = "
          f"{(5 ** 3 - 0.1 ** 3) / (3 * 4.9) / 2:.3f}")
