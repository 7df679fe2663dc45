"""The Ray executor on a real local Ray (one session fixture): the same gradients, losses and
bytes per link as the single-device local executor and partition.metrics, on the pipes,
named-pipes and plain-call paths, with micro-batch schedules (float64)."""
import os

import numpy as np
import pytest

from autodiff.models import BUILDERS, make_data
from executor.errors import ExecutorError
from executor.local import LocalExecutor
from executor.optim import SGD, Adam, Momentum
from executor.plan import build_plan
from executor_cases import (TINY, contiguous, gradient_shortfall, hand_graph, random_assignment,
                            random_feeds, random_params, reference, state_link_bytes)
from partition.cluster import uniform
from partition.metrics import compute_metrics

BATCH = 4
STEPS = 20


def model(family: str, batch: int = BATCH):
    return BUILDERS[family](batch=batch, dtype="float64", **TINY[family])


def place(graph, k: int, kind: str, seed: int) -> np.ndarray:
    """contiguous and random by hand (random ones have cyclic quotients); others from the
    partition registry."""
    if kind == "contiguous":
        return contiguous(graph, k)
    if kind == "random":
        return random_assignment(graph, k, seed)
    from partition.algorithms import ALGORITHMS
    from partition.api import partition
    if kind not in ALGORITHMS:
        pytest.skip(f"partition has no {kind} algorithm")
    return np.asarray(partition(graph, uniform(k), algorithm=kind, epsilon=1.0,
                                seed=seed).assignment)


def assert_grads_close(got, expected, tol=1e-12):
    scale = max(float(np.abs(g).max()) for g in expected.values() if g is not None)
    for name, g in expected.items():
        if g is None:
            assert got[name] is None, name
        else:
            np.testing.assert_allclose(got[name], g, rtol=tol, atol=tol * scale, err_msg=name)


# Every model, every k in 1..4, every placement kind and every path at least once.
GRID = [
    ("mlp", 1, "contiguous", "auto", SGD(lr=0.1)),
    ("mlp", 4, "random", "plain", Adam(lr=0.01)),
    ("gpt", 2, "multilevel", "plain", Adam(lr=0.01)),
    ("gpt", 3, "random", "plain", Momentum(lr=0.05)),
    ("lstm", 3, "contiguous", "auto", Momentum(lr=0.1)),
    ("lstm", 2, "random", "plain", SGD(lr=0.1)),
    ("resnet", 3, "random", "plain", SGD(lr=0.05)),
    ("resnet", 4, "multilevel", "plain", Adam(lr=0.01)),
    ("mlp", 2, "random", "pipes", Momentum(lr=0.05)),
    ("gpt", 4, "contiguous", "pipes", Adam(lr=0.01)),
    ("lstm", 3, "random", "pipes", SGD(lr=0.1)),
    ("resnet", 2, "multilevel", "pipes", Adam(lr=0.01)),
]


@pytest.mark.parametrize("family,k,kind,mode,optimizer", GRID,
                         ids=[f"{f}-k{k}-{kind}-{mode}" for f, k, kind, mode, _ in GRID])
def test_matches_the_single_device_executor_and_V(ray_session, family, k, kind, mode,
                                                  optimizer):
    from executor.ray_executor import RayExecutor
    g = model(family)
    data = make_data(g, family, 1)
    a = place(g, k, kind, seed=k)
    local = LocalExecutor(g, np.zeros(len(g.nodes), np.int32), 1, optimizer, seed=1)
    with RayExecutor(g, a, k, optimizer, seed=1, mode=mode) as ex:
        assert ex.mode == ("pipes" if mode == "auto" else mode)   # one node here
        if kind == "random":
            assert ex.plan.stages is None                 # a cyclic quotient graph
        first, expected = ex.step(data(0), return_grads=True), local.step(data(0),
                                                                          return_grads=True)
        assert first.loss == pytest.approx(expected.loss, rel=1e-12)
        assert_grads_close(first.grads, expected.grads)
        # Bytes per link: V from partition.metrics; for resnet plus batch-norm state updates
        # (not a graph edge) minus gradients no consumer sends (executor_cases documents both).
        predicted = compute_metrics(g, a, uniform(k)).link_traffic
        shortfall, state = gradient_shortfall(g, a, k), state_link_bytes(g, a, k)
        if family != "resnet":
            assert shortfall.sum() == 0 and state.sum() == 0
            assert first.total_bytes == compute_metrics(g, a, uniform(k)).step_volume
        np.testing.assert_array_equal(first.link_bytes, predicted - shortfall + state)
        # Measurements: time inside block calls covers node compute; memory is reported.
        active = [d for d in range(k) if ex.plan.programs[d].blocks]
        assert np.all(first.busy_seconds[active] >= first.compute_seconds[active])
        assert np.all(first.wait_seconds >= 0) and first.step_seconds > 0
        assert np.all(first.rss_bytes[active] > 10 * 2**20)
        assert np.all(first.peak_value_bytes[active] > 0)
        if k == 1:     # one micro-batch: every forward tensor is held until the step's end
            assert (sum(n.nbytes for n in g.nodes) <= first.peak_value_bytes[0]
                    <= sum(ex.plan.nbytes.values()))
        losses = [first.loss] + [ex.step(data(s)).loss for s in range(1, STEPS)]
        expected_losses = [expected.loss] + [local.step(data(s)).loss for s in range(1, STEPS)]
        np.testing.assert_allclose(losses, expected_losses, rtol=1e-9, atol=0)
        final = ex.params
    for p, value in local.params.items():
        np.testing.assert_allclose(final[p], value, rtol=1e-9, atol=1e-12, err_msg=p)


@pytest.mark.parametrize("family,schedule,mode,defer", [("mlp", "gpipe", "auto", False),
                                                        ("gpt", "1f1b", "plain", False),
                                                        ("lstm", "sequential", "plain", False),
                                                        ("gpt", "1f1b", "pipes", True)])
def test_micro_batches_reproduce_the_full_batch(ray_session, family, schedule, mode, defer):
    from executor.ray_executor import RayExecutor
    m, k = 4, 3
    full, micro = model(family, batch=BATCH), model(family, batch=BATCH // m)
    data = make_data(full, family, 2)
    a = contiguous(micro, k)
    one = LocalExecutor(full, a, k, Momentum(lr=0.1), seed=2)
    with RayExecutor(micro, a, k, Momentum(lr=0.1), seed=2, micro_batches=m, schedule=schedule,
                     mode=mode, defer_weight_grads=defer) as many:
        assert many.plan.stages is not None and many.plan.schedule == schedule
        for step in range(2):
            r1, rm = one.step(data(step), return_grads=True), many.step(data(step),
                                                                        return_grads=True)
            assert rm.loss == pytest.approx(r1.loss, rel=1e-12) and len(rm.losses) == m
            assert_grads_close(rm.grads, r1.grads)
        final = many.params
    for p, value in one.params.items():
        np.testing.assert_allclose(final[p], value, rtol=1e-12, atol=1e-13, err_msg=p)


def test_cyclic_gpipe_micro_batches_send_V(ray_session):
    """A cyclic quotient with m = 2 (segments in one global order): bytes per link equal
    partition.metrics with micro_batches=2, gradients equal the full batch's."""
    from executor.ray_executor import RayExecutor
    m, k = 2, 3
    micro, full = hand_graph(batch=2), hand_graph(batch=2 * m)
    a = random_assignment(micro, k, seed=5)
    params, feeds = random_params(micro), random_feeds(micro, micro_batches=m)
    _, grads = reference(full, params, feeds)
    with RayExecutor(micro, a, k, SGD(lr=0.1), params=params, micro_batches=m,
                     mode="plain") as ex:
        assert ex.plan.stages is None
        result = ex.step(feeds, return_grads=True)
    assert_grads_close(result.grads, grads)
    np.testing.assert_array_equal(
        result.link_bytes, compute_metrics(micro, a, uniform(k), micro_batches=m).link_traffic)


@pytest.mark.parametrize("mode,spin", [("plain", None), ("pipes", None), ("pipes", 0.0)])
def test_both_paths_give_the_local_executors_results_bit_for_bit(ray_session, mode, spin):
    """On a 1F1B pipeline and a cyclic placement: losses, gradients and bytes per link equal
    the local executor's exactly (on pipes, with receives that poll first and ones that
    block at once)."""
    from executor.ray_executor import RayExecutor
    m = 4
    micro, full = model("mlp", batch=BATCH // m), model("mlp", batch=BATCH)
    data = make_data(full, "mlp", 1)
    for a, k, schedule in ((contiguous(micro, 3), 3, "1f1b"),
                           (random_assignment(micro, 2, seed=3), 2, "gpipe")):
        plan = build_plan(micro, a, k, micro_batches=m, schedule=schedule)
        local = LocalExecutor(micro, a, k, Adam(lr=0.01), seed=1, plan=plan)
        with RayExecutor(micro, a, k, Adam(lr=0.01), seed=1, plan=plan, mode=mode,
                         spin=spin) as ex:
            assert ex.mode == mode
            for step in range(2):
                r1 = local.step(data(step), return_grads=True)
                r2 = ex.step(data(step), return_grads=True)
                assert r2.losses == r1.losses
                np.testing.assert_array_equal(r2.link_bytes, r1.link_bytes)
                for p, g in r1.grads.items():
                    np.testing.assert_array_equal(r2.grads[p], g, err_msg=p)


def test_bad_arguments_name_the_field(ray_session):
    from executor.ray_executor import RayExecutor
    g = hand_graph()
    a = np.zeros(len(g.nodes), np.int32)
    with pytest.raises(ExecutorError, match="mode: expected one of auto, pipes, plain"):
        RayExecutor(g, a, 1, mode="fast")
    with pytest.raises(ExecutorError, match="checkpoint_every: expected a positive integer"):
        RayExecutor(g, a, 1, checkpoint_every=0)
    with pytest.raises(ExecutorError, match=r"spin: expected seconds in \[0, 1\), got -1"):
        RayExecutor(g, a, 1, spin=-1)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_pipes_actors_are_pinned_to_one_cpu_each_and_others_are_not(ray_session):
    from executor.ray_executor import RayExecutor
    g = model("mlp")
    a = contiguous(g, 2)
    cpus = sorted(os.sched_getaffinity(0))
    with RayExecutor(g, a, 2, SGD(lr=0.1), mode="pipes") as ex:
        assert [os.sched_getaffinity(pid) for pid in ex.actor_pids()] == [
            {cpus[d % len(cpus)]} for d in range(2)]
    with RayExecutor(g, a, 2, SGD(lr=0.1), mode="plain") as ex:
        assert all(len(os.sched_getaffinity(pid)) == len(cpus) for pid in ex.actor_pids())
