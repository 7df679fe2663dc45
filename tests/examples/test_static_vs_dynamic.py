"""Static vs dynamic graphs: None gradients leave Adam untouched; zero gradients follow Adam's
closed-form decay (re-derived here from the Adam equations, not from executor.optim)."""
import numpy as np
import pytest

import static_vs_dynamic as ex

K, STEPS = 8, 12


@pytest.fixture(scope="module")
def result():
    return ex.main(negative_steps=K, positive_steps=STEPS, seed=1)


def test_dynamic_graph_gives_none_and_adam_leaves_the_branch_untouched(result):
    rec = result["dynamic"]
    assert all(r["neg_grad"] is not None for r in rec[:K])
    assert all(r["neg_grad"] is None for r in rec[K:])
    for r in rec[K:]:
        np.testing.assert_array_equal(r["neg"], rec[K - 1]["neg"])
        for key, value in rec[K - 1]["neg_state"].items():
            np.testing.assert_array_equal(r["neg_state"][key], value)


def test_static_graph_gives_zeros_and_momentum_decays_in_closed_form(result):
    rec = result["static"]
    assert all(np.all(r["neg_grad"] == 0) for r in rec[K:])
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    m0, v0 = rec[K - 1]["neg_state"]["exp_avg"], rec[K - 1]["neg_state"]["exp_avg_sq"]
    p = rec[K - 1]["neg"].copy()
    for j in range(1, STEPS + 1):
        t = K + j
        m, v = b1 ** j * m0, b2 ** j * v0                    # zero gradients: pure decay
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
        state = rec[K + j - 1]["neg_state"]
        np.testing.assert_allclose(state["exp_avg"], m, rtol=1e-12)
        np.testing.assert_allclose(state["exp_avg_sq"], v, rtol=1e-12)
        assert int(state["step"]) == t
        np.testing.assert_allclose(rec[K + j - 1]["neg"], p, rtol=1e-12)
    assert np.abs(p - rec[K - 1]["neg"]).max() > 1e-3    # it drifted with no data for it


def test_both_graphs_compute_the_same_loss_before_they_diverge(result):
    x, y = result["data"][0]
    p = result["params"]
    h = np.tanh(x @ p["shared"])
    expected = np.mean((h @ p["neg"] - y) ** 2)           # x < 0: the "neg" branch
    assert result["static"][0]["loss"] == pytest.approx(expected, rel=1e-12)
    assert result["dynamic"][0]["loss"] == pytest.approx(expected, rel=1e-12)
    for a, b in zip(result["static"][:K], result["dynamic"][:K]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    sizes = result["graph_sizes"]
    assert sizes["static"] > sizes["dynamic (a negative batch)"]
