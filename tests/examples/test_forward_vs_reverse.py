"""Jacobians both ways against the closed form and central differences; sparsity vs ground truth."""
import numpy as np
import pytest

import autodiff as ad
import forward_vs_reverse as ex
from autodiff import numpy as anp
from numeric_checks import numeric_jacobian


@pytest.fixture(scope="module")
def result():
    return ex.main(big=30, small=2, seed=1)


@pytest.mark.parametrize("shape", ["wide", "tall"])
def test_both_modes_give_the_jacobian(result, shape):
    r = result[shape]
    a, x = r["a"], r["x"]
    closed_form = (1 - np.tanh(a @ x) ** 2)[:, None] * a
    numeric = numeric_jacobian(lambda v: np.tanh(a @ v), x)
    np.testing.assert_allclose(numeric, closed_form, atol=1e-8)
    np.testing.assert_allclose(r["forward"], closed_form, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r["reverse"], closed_form, rtol=1e-12, atol=1e-14)


def test_pass_counts_are_n_forward_and_m_reverse(result):
    for r in result.values():
        if "n" in r:
            assert (r["forward_passes"], r["reverse_passes"]) == (r["n"], r["m"])


def test_graph_sparsity_equals_numeric_zeros_and_construction(result):
    s = result["sparsity"]
    f, x = s["function"], s["x"]
    numeric = numeric_jacobian(lambda v: np.array([float(y) for y in f(*v)]), x)
    np.testing.assert_array_equal(s["structure"], numeric != 0)
    np.testing.assert_array_equal(s["structure"], s["pattern"])
    np.testing.assert_allclose(s["jacobian"], numeric, atol=1e-7)


def test_structural_sparsity_on_a_hand_built_function():
    f = lambda x0, x1, x2: [anp.sin(x0) * x1, anp.exp(x2), x0 + 0.0 * x2]
    graph = ad.trace(f, 0.1, 0.2, 0.3)
    s = ex.structural_sparsity(graph, [n.name for n in graph.inputs], graph.outputs)
    # x0 + 0 * x2 has a path from x2 (a structural nonzero that is numerically zero).
    np.testing.assert_array_equal(s, [[1, 1, 0], [0, 0, 1], [1, 0, 1]])
