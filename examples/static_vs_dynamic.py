"""Static vs. dynamic graphs: a data-dependent branch, and what the optimizer sees.

The model routes each batch through branch "pos" if the batch mean is positive, else branch
"neg". Two ways to write it:

- dynamic (define-by-run): a Python `if` on the concrete value, re-traced every step. Only
  the branch taken is in the graph, so the other branch's parameters get no gradient (None)
  and Adam skips them: parameter and state stay exactly as they were.
- static (define-then-run): both branches computed, one selected with `where`; one graph for
  every step. The branch not taken gets a gradient of zeros, and Adam treats zero as data:
  its moments decay (by beta1 and beta2 per step), its step count advances, and the
  parameter keeps moving on its old momentum although no data asked it to.

We first train on negative batches (so branch "neg" builds up momentum), then on positive
batches only, and follow branch "neg" through the second phase.

Run: python examples/static_vs_dynamic.py
"""
from __future__ import annotations

import numpy as np

import autodiff as ad
from autodiff import numpy as anp
from compiled import apply_updates, compile_value_and_grad, init_states
from executor.optim import Adam


def dynamic_loss(p, x, y):
    h = anp.tanh(x @ p["shared"])
    branch = "pos" if anp.mean(x) > 0 else "neg"        # Python control flow on a value
    return anp.mean((h @ p[branch] - y) ** 2)


def static_loss(p, x, y):
    h = anp.tanh(x @ p["shared"])
    out = anp.where(anp.mean(x) > 0, h @ p["pos"], h @ p["neg"])   # both computed
    return anp.mean((out - y) ** 2)


def batches(sign: float, count: int, rng, n: int = 16, d: int = 3) -> list:
    """Batches with mean of the given sign; targets from a fixed linear teacher."""
    teacher = np.array([[1.0], [-2.0], [0.5]])
    out = []
    for _ in range(count):
        x = sign * np.abs(rng.normal(size=(n, d)))
        out.append((x, x @ teacher * (1 if sign > 0 else -0.5)))
    return out


def init_params(rng, d: int = 3, hidden: int = 4) -> dict:
    return {"shared": rng.normal(size=(d, hidden)) * 0.5,
            "pos": rng.normal(size=(hidden, 1)) * 0.5, "neg": rng.normal(size=(hidden, 1)) * 0.5}


def train(mode: str, params: dict, data: list, optimizer: Adam) -> list[dict]:
    """Adam steps over `data`; records branch "neg" (param, gradient, state) after each step."""
    if mode == "static":
        step_fn = compile_value_and_grad(static_loss, params, *data[0])   # one graph for all
    else:
        step_fn = ad.value_and_grad(dynamic_loss)                         # a graph per step
    states = init_states(optimizer, params)
    names = list(params)
    record = []
    for x, y in data:
        loss, grads = step_fn(params, x, y)
        params, states = apply_updates(optimizer, params, grads, states)
        neg_state = states[names.index("neg")]
        record.append({"loss": float(loss), "neg": params["neg"].copy(), "neg_grad": grads["neg"],
                       "neg_state": {k: np.array(v, copy=True) for k, v in neg_state.items()}})
    return record


def main(negative_steps: int = 20, positive_steps: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    data = batches(-1.0, negative_steps, rng) + batches(1.0, positive_steps, rng)
    optimizer = Adam(lr=0.05)
    graphs = {"static": ad.trace(static_loss, params, *data[0]),
              "dynamic (a negative batch)": ad.trace(dynamic_loss, params, *data[0]),
              "dynamic (a positive batch)": ad.trace(dynamic_loss, params, *data[-1])}
    return {"optimizer": optimizer, "params": params, "data": data,
            "negative_steps": negative_steps,
            "static": train("static", params, data, optimizer),
            "dynamic": train("dynamic", params, data, optimizer),
            "graph_sizes": {k: len(g.nodes) for k, g in graphs.items()}}


if __name__ == "__main__":
    out = main()
    k = out["negative_steps"]
    print("graph nodes:", out["graph_sizes"])
    for mode in ("dynamic", "static"):
        rec = out[mode]
        drift = np.abs(rec[-1]["neg"] - rec[k - 1]["neg"]).max()
        grad = rec[-1]["neg_grad"]
        m0 = np.linalg.norm(rec[k - 1]["neg_state"]["exp_avg"])
        m1 = np.linalg.norm(rec[-1]["neg_state"]["exp_avg"])
        print(f"{mode:8s}: during the positive phase branch 'neg' got gradient "
              f"{'None' if grad is None else 'zeros' if not np.any(grad) else 'nonzero'}; "
              f"|exp_avg| {m0:.2e} -> {m1:.2e}; Adam step count "
              f"{int(rec[k - 1]['neg_state']['step'])} -> {int(rec[-1]['neg_state']['step'])}; "
              f"the parameter moved by {drift:.3f}")
    same = all(abs(a["loss"] - b["loss"]) < 1e-12 for a, b in zip(out["static"][:k],
                                                                   out["dynamic"][:k]))
    print("identical losses while the two agree (negative phase):", same)
