"""Products summed over micro-batches added in place by one gemm: against numpy's product-then-add,
for every memory layout, and a micro-batched training step against the separate-add path."""
import numpy as np
import pytest

from autodiff.models import BUILDERS, init_params, make_data
from executor.accumulate import add_matmul, fused_products
from executor.local import LocalExecutor
from executor.optim import Momentum
from executor_cases import TINY, contiguous


def layouts(m: np.ndarray):
    """The same matrix C-ordered, Fortran-ordered, as a transposed view, and strided."""
    wide = np.zeros((m.shape[0], 2 * m.shape[1]), m.dtype)
    wide[:, ::2] = m
    return {"C": np.ascontiguousarray(m), "F": np.asfortranarray(m),
            "T": np.ascontiguousarray(m.T).T, "strided": wide[:, ::2]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_matmul_equals_product_then_add_for_every_layout(dtype):
    rng = np.random.default_rng(0)
    a0, b0 = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype)
    start = rng.standard_normal((5, 4)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for la, a in layouts(a0).items():
        for lb, b in layouts(b0).items():
            acc = start.copy()
            add_matmul(acc, a, b)
            np.testing.assert_allclose(acc, start + a0 @ b0, rtol=tol, atol=tol,
                                       err_msg=f"a {la}, b {lb}")
    acc = start.copy()                       # mixed dtypes: the product cast, then added
    add_matmul(acc, a0.astype(np.float16), b0)
    np.testing.assert_allclose(acc, start + (a0.astype(np.float16) @ b0).astype(dtype),
                               rtol=tol, atol=tol)


def test_weight_gradients_of_a_micro_batched_mlp_are_fused_and_match_separate_adds():
    m, batch, family = 4, 8, "mlp"
    full = BUILDERS[family](batch=batch, dtype="float64", **TINY[family])
    micro = BUILDERS[family](batch=batch // m, dtype="float64", **TINY[family])
    params, data = init_params(full, 3), make_data(full, family, 3)
    a = contiguous(micro, 2)
    fused = LocalExecutor(micro, a, 2, Momentum(lr=0.1), params=params, micro_batches=m,
                          schedule="1f1b")
    separate = LocalExecutor(micro, a, 2, Momentum(lr=0.1), params=params, micro_batches=m,
                             schedule="1f1b")
    weights = [p.name for p in micro.params if len(p.shape) == 2]
    summed = {into for w in fused.workers for per_block in w.fused.values()
              for into in per_block.values()}
    grads = {g for prog in fused.plan.programs for p, g in prog.grads.items() if p in weights}
    assert grads <= summed                  # every weight gradient is a fused sum
    for w in separate.workers:
        w.fused = {}
    for step in range(2):
        r1 = fused.step(data(step), return_grads=True)
        r2 = separate.step(data(step), return_grads=True)
        assert r1.loss == r2.loss
        for p, g in r2.grads.items():
            np.testing.assert_allclose(r1.grads[p], g, rtol=1e-12, atol=1e-14, err_msg=p)
    assert fused_products(fused.plan.programs[0]) == fused.workers[0].fused
