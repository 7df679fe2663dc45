"""Soft alignment: plain-Python DP for the hard value and path, the temperature bound, learning."""
import numpy as np
import pytest

import autodiff as ad
import soft_alignment as ex


def _hard_dp(s):
    """Plain-Python max-plus DP over a score matrix; returns V[n-1, m-1] and the best path."""
    n, m = s.shape
    v = np.full((n, m), -np.inf)
    for i in range(n):
        for j in range(m):
            prev = [v[p] for p in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if min(p) >= 0]
            v[i, j] = s[i, j] + (max(prev) if prev else 0.0)
    path, (i, j) = {(n - 1, m - 1)}, (n - 1, m - 1)
    while (i, j) != (0, 0):
        cands = [p for p in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if min(p) >= 0]
        i, j = max(cands, key=lambda p: v[p])
        path.add((i, j))
    on_path = np.zeros((n, m))
    for p in path:
        on_path[p] = 1
    return v[-1, -1], on_path


@pytest.fixture(scope="module")
def result():
    return ex.main(n=10, steps=40)


def test_hard_value_and_path_match_plain_dp(result):
    hard, on_path = _hard_dp(result["scores"])
    assert result["hard_value"] == pytest.approx(hard, rel=1e-12)
    np.testing.assert_array_equal(result["hard_path"], on_path)


def test_soft_value_within_temperature_bound_and_converges(result):
    hard, on_path = _hard_dp(result["scores"])
    n, m = result["scores"].shape
    gaps = []
    for gamma, soft in result["soft_values"].items():
        assert hard - 1e-12 <= soft <= hard + gamma * np.log(3) * (n + m)
        gaps.append(soft - hard)
    assert all(a >= b for a, b in zip(gaps, gaps[1:]))      # gammas are listed decreasing
    assert gaps[-1] < 0.01
    # The soft alignment is a relaxed path: it tends to the best path as gamma -> 0.
    np.testing.assert_allclose(ex.soft_alignment(result["scores"], 1e-3), on_path, atol=1e-3)


def test_gradient_of_soft_value_matches_finite_differences():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=4), rng.normal(size=6)

    def soft_value(theta, gamma=0.3):          # plain numpy soft DP
        s = -(theta * a[:, None] - b[None, :]) ** 2
        v = np.full(s.shape, np.nan)
        for i in range(4):
            for j in range(6):
                prev = [v[p] for p in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if min(p) >= 0]
                top = max(prev) if prev else 0.0
                soft = top + gamma * np.log(np.sum(np.exp((np.array(prev) - top) / gamma))) \
                    if prev else 0.0
                v[i, j] = s[i, j] + soft
        return v[-1, -1]

    got = ad.grad(lambda t: ex.alignment_score(t, a, b, 0.3))(np.array(0.8))
    eps = 1e-6
    assert got == pytest.approx((soft_value(0.8 + eps) - soft_value(0.8 - eps)) / (2 * eps),
                                rel=1e-6)


def test_learned_amplitude_recovers_the_true_one(result):
    assert abs(result["theta_history"][-1] - 1.7) < 0.06
    assert abs(result["theta_history"][0] - 1.7) > 0.2
