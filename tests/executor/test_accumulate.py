"""Products summed over micro-batches added in place by one gemm: against numpy's product-then-add,
for every memory layout, and a micro-batched training step against the separate-add path."""
import numpy as np
import pytest

from autodiff.models import BUILDERS, init_params, make_data
from executor.accumulate import add_matmul, fused_products, stacked_product
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacked_product_equals_the_sum_of_products_for_every_layout(dtype):
    rng = np.random.default_rng(1)
    pairs0 = [(rng.standard_normal((5, kk)), rng.standard_normal((kk, 4))) for kk in (3, 2, 4)]
    expected = sum(a @ b for a, b in pairs0)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for la in ("C", "F", "T", "strided"):
        for lb in ("C", "F", "T", "strided"):
            pairs = [(layouts(a.astype(dtype))[la], layouts(b.astype(dtype))[lb])
                     for a, b in pairs0]
            got = stacked_product(pairs, np.dtype(dtype))
            assert got.dtype == dtype and got.shape == (5, 4)
            np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, err_msg=f"{la} {lb}")
    one = stacked_product(pairs0[:1], np.dtype(np.float32))      # one pair: cast to the dtype
    assert one.dtype == np.float32
    np.testing.assert_allclose(one, pairs0[0][0] @ pairs0[0][1], rtol=1e-6)


@pytest.mark.parametrize("family,schedule", [("mlp", "1f1b"), ("gpt", "gpipe"),
                                             ("lstm", "sequential"), ("resnet", "1f1b")])
def test_deferred_weight_gradients_reproduce_the_full_batch(family, schedule):
    """Weight gradients summed by one stacked gemm at the end of the step: the gradients and
    parameters of one full-batch step on one device (float64, 1e-12); for resnet, whose batch
    norm sees micro-batch statistics, those of the same micro-batches summed per micro-batch."""
    m, batch, k = 4, 8, 2
    full = BUILDERS[family](batch=batch, dtype="float64", **TINY[family])
    micro = BUILDERS[family](batch=batch // m, dtype="float64", **TINY[family])
    params, data = init_params(full, 5), make_data(full, family, 5)
    a = contiguous(micro, k)
    one = (LocalExecutor(micro, a, k, Momentum(lr=0.1), params=params, micro_batches=m,
                         schedule=schedule) if family == "resnet" else
           LocalExecutor(full, np.zeros(len(full.nodes), np.int32), 1, Momentum(lr=0.1),
                         params=params))
    deferred = LocalExecutor(micro, a, k, Momentum(lr=0.1), params=params, micro_batches=m,
                             schedule=schedule, defer_weight_grads=True)
    held: list[int] = []                 # operand pairs waiting when the sums are computed
    for w in deferred.workers:
        finish = w._finish_deferred

        def spy(w=w, finish=finish):
            held.append(sum(len(pairs) for _, pairs in w.pending.values()))
            finish()
        w._finish_deferred = spy
    for step in range(2):
        r1 = one.step(data(step), return_grads=True)
        rm = deferred.step(data(step), return_grads=True)
        assert rm.loss == pytest.approx(r1.loss, rel=1e-12)
        for p, g in r1.grads.items():
            np.testing.assert_allclose(rm.grads[p], g, rtol=1e-12, atol=1e-13, err_msg=p)
    assert held and max(held) >= m               # m micro-batches' operands were stacked
    assert all(not w.pending for w in deferred.workers)
    final = deferred.params
    for p, value in one.params.items():
        np.testing.assert_allclose(final[p], value, rtol=1e-12, atol=1e-13, err_msg=p)


def test_a_first_stage_starts_its_deferred_sums_after_its_last_send():
    """mlp on 2 stages, 1F1B, m = 4: device 0 runs F0 F1 B0 F2 B1 F3 B2 B3 and sends nothing
    after F3, so its weight-gradient sums start in B2 over B0 and B1's operands and end in the
    per-step block over B2 and B3's; device 1 (whose B3 sends) stacks all 4 at the end. The
    parameters still equal one full-batch step's (float64)."""
    m, batch, k = 4, 8, 2
    full = BUILDERS["mlp"](batch=batch, dtype="float64", **TINY["mlp"])
    micro = BUILDERS["mlp"](batch=batch // m, dtype="float64", **TINY["mlp"])
    params, data = init_params(full, 3), make_data(full, "mlp", 3)
    one = LocalExecutor(full, np.zeros(len(full.nodes), np.int32), 1, Momentum(lr=0.1),
                        params=params)
    deferred = LocalExecutor(micro, contiguous(micro, k), k, Momentum(lr=0.1), params=params,
                             micro_batches=m, schedule="1f1b", defer_weight_grads=True)
    seen: dict[int, list[tuple[str, set[int]]]] = {0: [], 1: []}
    for w in deferred.workers:
        run, finish = w.run, w._finish_deferred
        where = {}

        def spy_run(index, transport, w=w, run=run, where=where):
            where["label"] = w.program.blocks[index].label
            return run(index, transport)

        def spy_finish(w=w, finish=finish, where=where):
            seen[w.device].append((where["label"], {len(p) for _, p in w.pending.values()}))
            finish()
        w.run, w._finish_deferred = spy_run, spy_finish
    r1 = one.step(data(0))
    rm = deferred.step(data(0))
    assert rm.loss == pytest.approx(r1.loss, rel=1e-12)
    assert [label for label, _ in seen[0]][0] == "B2" and seen[0][0][1] == {2}
    assert len(seen[0]) == 2 and seen[0][1][1] == {2}
    assert len(seen[1]) == 1 and seen[1][0][1] == {m}
    for p, value in one.params.items():
        np.testing.assert_allclose(deferred.params[p], value, rtol=1e-12, atol=1e-13, err_msg=p)
