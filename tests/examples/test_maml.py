"""MAML: the meta-gradient w.r.t. the inner learning rate against finite differences of a plain
numpy implementation (inner gradient by central differences too), and meta-learning progress
against the closed-form loss of the zero predictor."""
import numpy as np
import pytest

import autodiff as ad
import maml as ex
from numeric_checks import numeric_grad


def _net(w, x):
    h = np.tanh(x @ w["w1"] + w["b1"])
    h = np.tanh(h @ w["w2"] + w["b2"])
    return h @ w["w3"] + w["b3"]


def _mse(w, x, y):
    return float(np.mean((_net(w, x) - y) ** 2))


def _numeric_inner_grad(w, x, y):
    return {k: numeric_grad(lambda v, k=k: _mse(dict(w, **{k: v}), x, y), w[k]) for k in w}


def _meta_loss(w, alpha, grads, tasks):
    xs, ys, xq, yq = tasks
    return np.mean([_mse({k: w[k] - alpha * grads[t][k] for k in w}, xq[t], yq[t])
                    for t in range(len(xs))])


def test_gradient_wrt_inner_learning_rate_matches_finite_differences():
    rng = np.random.default_rng(11)
    params = ex.init_params(rng, hidden=6, alpha=0.05)
    tasks = ex.sample_tasks(3, 5, rng)
    got = ad.grad(ex.meta_loss)(params, *tasks)["alpha"]
    w = params["net"]
    grads = [_numeric_inner_grad(w, tasks[0][t], tasks[1][t]) for t in range(3)]
    eps = 1e-5
    expected = (_meta_loss(w, 0.05 + eps, grads, tasks)
                - _meta_loss(w, 0.05 - eps, grads, tasks)) / (2 * eps)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_meta_gradient_wrt_initial_weights_matches_finite_differences():
    rng = np.random.default_rng(12)
    params = ex.init_params(rng, hidden=3, alpha=0.1)
    tasks = ex.sample_tasks(2, 4, rng)
    got = ad.grad(ex.meta_loss)(params, *tasks)["net"]["w2"]

    def meta_of_w2(v):
        w = dict(params["net"], w2=v)
        grads = [_numeric_inner_grad(w, tasks[0][t], tasks[1][t]) for t in range(2)]
        return _meta_loss(w, 0.1, grads, tasks)

    np.testing.assert_allclose(got, numeric_grad(meta_of_w2, params["net"]["w2"], eps=1e-4),
                               rtol=1e-4, atol=1e-6)


def test_meta_training_makes_one_step_adaptation_work():
    out = ex.main(steps=500, test_tasks=40)
    zero_predictor = (5 ** 3 - 0.1 ** 3) / (3 * 4.9) / 2      # E[A^2] / 2, A ~ U[0.1, 5]
    xs, ys, xq, yq = out["test_tasks"]
    adapted = np.mean([_mse(ex.adapt(out["params"], xs[t], ys[t]), xq[t], yq[t])
                       for t in range(len(xs))])
    assert out["after"] == pytest.approx(adapted, rel=1e-9)
    assert adapted < 0.4 * zero_predictor
    assert out["before"] > 0.8 * zero_predictor
    assert float(out["params"]["alpha"]) != float(out["init"]["alpha"])
