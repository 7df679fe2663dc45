"""Optimizer semantics against hand-written formulas and torch.optim (float64)."""
import numpy as np
import pytest

from executor.errors import OptimizerError
from executor.optim import SGD, Adam, Momentum, make_optimizer

RNG = np.random.default_rng(3)
# A gradient sequence with a zero gradient and a missing one (None) in the middle.
GRADS = [RNG.normal(size=(3, 2)), RNG.normal(size=(3, 2)), np.zeros((3, 2)), None,
         RNG.normal(size=(3, 2))]


def run(opt, p0, grads):
    p, state, history = p0.copy(), opt.init_state(p0), []
    for g in grads:
        p, state = opt.update(p, g, state)
        history.append((p.copy(), {k: np.array(v, copy=True) for k, v in state.items()}))
    return history


def run_torch(make, p0, grads):
    torch = pytest.importorskip("torch")
    t = torch.tensor(p0.copy(), dtype=torch.float64, requires_grad=True)
    opt = make(torch, [t])
    out = []
    for g in grads:
        t.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(t.detach().numpy().copy())
    return out


def test_sgd_formula_with_weight_decay():
    p0 = RNG.normal(size=(3, 2))
    hist = run(SGD(lr=0.1, weight_decay=0.01), p0, GRADS[:2])
    expect = p0 - 0.1 * (GRADS[0] + 0.01 * p0)
    np.testing.assert_allclose(hist[0][0], expect, rtol=0, atol=1e-15)
    np.testing.assert_allclose(hist[1][0], expect - 0.1 * (GRADS[1] + 0.01 * expect), atol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_torch_sgd(nesterov):
    p0 = RNG.normal(size=(3, 2))
    ours = run(Momentum(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=nesterov), p0, GRADS)
    theirs = run_torch(lambda torch, ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9,
                                                         weight_decay=0.01, nesterov=nesterov),
                       p0, GRADS)
    for (p, _), q in zip(ours, theirs):
        np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-15)


def test_momentum_by_hand_zero_gradient_decays_none_skips():
    p0 = RNG.normal(size=(3, 2))
    hist = run(Momentum(lr=0.1, momentum=0.5), p0, GRADS[:4])
    v1 = GRADS[0]                      # first step: v = g (velocity starts at zero)
    v2 = 0.5 * v1 + GRADS[1]
    v3 = 0.5 * v2                      # zero gradient: the velocity decays, p still moves
    np.testing.assert_allclose(hist[2][1]["velocity"], v3, atol=1e-15)
    np.testing.assert_allclose(hist[2][0], p0 - 0.1 * (v1 + v2 + v3), atol=1e-14)
    # None: parameter and state untouched.
    np.testing.assert_array_equal(hist[3][0], hist[2][0])
    np.testing.assert_array_equal(hist[3][1]["velocity"], hist[2][1]["velocity"])


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch(weight_decay):
    p0 = RNG.normal(size=(3, 2))
    ours = run(Adam(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=weight_decay),
               p0, GRADS)

    def make(torch, ps):
        cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
        return cls(ps, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    theirs = run_torch(make, p0, GRADS)
    for (p, _), q in zip(ours, theirs):
        np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-15)


def test_adam_formula_none_skips_and_zero_gradient_advances():
    p0 = RNG.normal(size=(3, 2))
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.05
    hist = run(Adam(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd), p0, GRADS[:4])
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(GRADS[:3], start=1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(hist[2][0], p, rtol=1e-12)
    assert int(hist[2][1]["step"]) == 3               # the zero gradient counted as a step
    np.testing.assert_allclose(hist[2][1]["exp_avg"], m, rtol=1e-12)
    assert int(hist[3][1]["step"]) == 3               # None did not
    np.testing.assert_array_equal(hist[3][0], hist[2][0])
    np.testing.assert_array_equal(hist[3][1]["exp_avg_sq"], hist[2][1]["exp_avg_sq"])


def test_make_optimizer_and_errors():
    assert make_optimizer("sgd") == SGD()
    assert make_optimizer({"name": "adam", "lr": 0.5}) == Adam(lr=0.5)
    assert make_optimizer(Momentum(lr=0.2).to_dict()) == Momentum(lr=0.2)
    opt = Adam()
    assert make_optimizer(opt) is opt
    assert (SGD.slots, Momentum.slots, Adam.slots) == (0, 1, 2)
    with pytest.raises(OptimizerError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop")
    with pytest.raises(OptimizerError, match="lr must be >= 0"):
        SGD(lr=-1.0)
    with pytest.raises(OptimizerError, match="betas must be < 1"):
        Adam(beta1=1.0)
    with pytest.raises(OptimizerError, match="momentum"):
        make_optimizer({"name": "momentum", "mu": 0.9})
