"""The local executor against the single-device Interpreter: gradients, losses over many
steps, micro-batch schedules, bytes per link, checkpoints, persistent state (float64)."""
import numpy as np
import pytest

from autodiff.interpreter import Interpreter
from autodiff.models import BUILDERS, init_params, make_data
from autodiff.reverse import vjp
from executor import checkpoint
from executor.errors import ExecutorError
from executor.local import LocalExecutor, split_feeds
from executor.optim import SGD, Adam, Momentum
from executor_cases import (TINY, contiguous, gradient_shortfall, hand_graph, noisy_graph,
                            pass_through_graph, random_assignment, random_feeds, random_params,
                            reference, spec_link_bytes, state_link_bytes)

BATCH = 4


def model(family: str, batch: int = BATCH):
    return BUILDERS[family](batch=batch, dtype="float64", **TINY[family])


def placement(graph, k: int, kind: str, seed: int = 0):
    """An assignment from partition.partition when it has the algorithm, else our own."""
    try:
        from partition.algorithms import ALGORITHMS
        from partition.api import partition
        from partition.cluster import uniform
    except ImportError:
        ALGORITHMS = {}
    if kind in ALGORITHMS:
        return partition(graph, uniform(k), algorithm=kind, epsilon=1.0, seed=seed)
    if kind not in ("contiguous", "random"):
        pytest.skip(f"partition has no {kind} algorithm yet")
    return contiguous(graph, k) if kind == "contiguous" else random_assignment(graph, k, seed)


def assert_grads_close(got, expected, tol=1e-12):
    scale = max(float(np.abs(g).max()) for g in expected.values())
    for name, g in expected.items():
        np.testing.assert_allclose(got[name], g, rtol=tol, atol=tol * scale, err_msg=name)


def test_single_device_equals_the_interpreter_bit_for_bit():
    g = hand_graph()
    params, feeds = random_params(g), random_feeds(g)
    loss, grads = reference(g, params, feeds)
    result = LocalExecutor(g, np.zeros(len(g.nodes), np.int32), 1, SGD(lr=0.1), params=params
                           ).step(feeds, return_grads=True)
    assert result.loss == loss
    for name, value in grads.items():
        np.testing.assert_array_equal(result.grads[name], value)
    assert result.grads["unused"] is None and result.total_bytes == 0


@pytest.mark.parametrize("family", ["mlp", "gpt", "lstm", "resnet"])
@pytest.mark.parametrize("kind", ["contiguous", "random", "pipeline_dp", "multilevel"])
def test_models_match_the_interpreter_and_bytes_match_V(family, kind):
    g = model(family)
    params = init_params(g, 0)
    feeds = make_data(g, family, 0)(0)
    loss, grads = reference(g, params, feeds)
    from partition.cluster import uniform
    from partition.metrics import compute_metrics
    for k in (1, 2, 3, 4):
        place = placement(g, k, kind, seed=k)
        a = np.asarray(getattr(place, "assignment", place))
        ex = LocalExecutor(g, place, k, SGD(lr=0.1), params=params)
        result = ex.step(feeds, return_grads=True)
        assert result.loss == pytest.approx(loss, rel=1e-13)
        assert_grads_close(result.grads, grads)
        # Bytes per link: V (partition.metrics) minus the documented gradients nobody sends
        # (stop_gradient readers), plus batch-norm state updates (no graph edge).
        predicted = compute_metrics(g, a, uniform(k)).link_traffic
        np.testing.assert_array_equal(predicted, spec_link_bytes(g, a, k))
        np.testing.assert_array_equal(
            result.link_bytes,
            predicted - gradient_shortfall(g, a, k) + state_link_bytes(g, a, k))
        assert result.total_bytes == int(result.link_bytes.sum())
        if family != "resnet":
            assert result.total_bytes == compute_metrics(g, a, uniform(k)).step_volume


def _reference_training(g, params, data, optimizer, steps):
    """Interpreter + optimizer loop on one device: the losses of each step."""
    training = vjp(g)
    interp = Interpreter(training)
    params = {p: v.copy() for p, v in params.items()}
    states = {p: optimizer.init_state(v) for p, v in params.items()}
    losses = []
    for step in range(steps):
        out = interp.run(data(step), params, step=step).outputs
        losses.append(float(out[training.outputs[0]]))
        for p in params:
            g_name = training.meta["grads"].get(p)
            params[p], states[p] = optimizer.update(params[p], None if g_name is None
                                                    else out[g_name], states[p])
    return losses, params


@pytest.mark.parametrize("family,k,kind,optimizer", [
    ("mlp", 3, "random", Adam(lr=0.01)),
    ("gpt", 2, "contiguous", Momentum(lr=0.05)),
    ("lstm", 4, "random", SGD(lr=0.1)),
])
def test_twenty_steps_of_losses_agree(family, k, kind, optimizer):
    g = model(family)
    params, data = init_params(g, 1), make_data(g, family, 1)
    expected, final = _reference_training(g, params, data, optimizer, 20)
    ex = LocalExecutor(g, placement(g, k, kind, seed=3), k, optimizer, params=params)
    losses = [ex.step(data(s)).loss for s in range(20)]
    np.testing.assert_allclose(losses, expected, rtol=1e-9, atol=0)
    assert losses[-1] < losses[0]                     # it trains
    for p, value in ex.params.items():
        np.testing.assert_allclose(value, final[p], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["mlp", "gpt", "lstm"])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_micro_batches_reproduce_the_full_batch(family, schedule):
    m, k = 4, 3
    full = model(family, batch=BATCH)
    micro = model(family, batch=BATCH // m)
    params, data = init_params(full, 2), make_data(full, family, 2)
    a = contiguous(micro, k)
    one = LocalExecutor(full, a, k, Momentum(lr=0.1), params=params, schedule=schedule)
    many = LocalExecutor(micro, a, k, Momentum(lr=0.1), params=params, micro_batches=m,
                         schedule=schedule)
    assert many.plan.stages is not None and many.plan.schedule == schedule
    for step in range(2):
        r1, rm = one.step(data(step), return_grads=True), many.step(data(step), return_grads=True)
        assert rm.loss == pytest.approx(r1.loss, rel=1e-12)
        assert len(rm.losses) == m
        assert_grads_close(rm.grads, {p: v for p, v in r1.grads.items() if v is not None})
    for p, value in many.params.items():
        np.testing.assert_allclose(value, one.params[p], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("build", [hand_graph, pass_through_graph])
def test_micro_batch_bytes_match_V_with_m_and_cyclic_gpipe(build):
    from partition.cluster import uniform
    from partition.metrics import compute_metrics
    m, k = 2, 3
    micro = build(batch=2)
    a = random_assignment(micro, k, seed=5)
    params, feeds = random_params(micro), random_feeds(micro, micro_batches=m)
    full = build(batch=2 * m)
    loss, grads = reference(full, params, feeds)
    reduction = "sum" if build is pass_through_graph else "mean"     # its loss is a sum
    for schedule in ("gpipe", "sequential"):
        ex = LocalExecutor(micro, a, k, SGD(lr=0.1), params=params, micro_batches=m,
                           schedule=schedule, loss_reduction=reduction)
        assert ex.plan.stages is None
        result = ex.step(feeds, return_grads=True)
        assert result.loss == pytest.approx(loss, rel=1e-12)
        assert_grads_close(result.grads, grads)
        np.testing.assert_array_equal(
            result.link_bytes, compute_metrics(micro, a, uniform(k), micro_batches=m).link_traffic)


def test_random_sources_are_drawn_per_step_like_the_interpreter():
    g = noisy_graph()
    params, feeds = random_params(g), random_feeds(g)
    a = random_assignment(g, 3, seed=2)
    ex = LocalExecutor(g, a, 3, SGD(lr=0.0), params=params)
    seen = set()
    for step in range(2):
        loss, grads = reference(g, params, feeds, step=step)
        result = ex.step(feeds, return_grads=True)
        assert result.loss == pytest.approx(loss, rel=1e-13)
        assert_grads_close(result.grads, grads)
        np.testing.assert_array_equal(result.link_bytes, spec_link_bytes(g, a, 3))
        seen.add(result.loss)
    assert len(seen) == 2                           # fresh noise each step


def test_unused_parameter_is_skipped_by_the_optimizer():
    g = hand_graph()
    params, feeds = random_params(g), random_feeds(g)
    ex = LocalExecutor(g, random_assignment(g, 2, 0), 2, Momentum(lr=0.1), params=params)
    ex.step(feeds)
    ex.step(feeds)
    np.testing.assert_array_equal(ex.params["unused"], params["unused"])
    state = ex.state_dict()
    np.testing.assert_array_equal(state["optimizer"]["unused"]["velocity"], 0.0)
    assert np.abs(state["optimizer"]["w"]["velocity"]).max() > 0


def test_checkpoint_round_trip_across_placements(tmp_path):
    g = hand_graph()
    params, feeds = random_params(g), random_feeds(g)
    first = LocalExecutor(g, contiguous(g, 2), 2, Adam(lr=0.01), params=params)
    for _ in range(3):
        first.step(feeds)
    checkpoint.save(tmp_path / "ckpt", first.state_dict(), metadata={"note": "three steps"})
    loaded = checkpoint.load(tmp_path / "ckpt")
    assert loaded["step"] == 3 and loaded["metadata"] == {"note": "three steps"}
    # Resume on another placement and device count: the same trajectory.
    second = LocalExecutor(g, random_assignment(g, 3, 7), 3, Adam(lr=0.01), params=params)
    second.load_state_dict(loaded)
    for _ in range(2):
        a, b = first.step(feeds), second.step(feeds)
        assert b.loss == pytest.approx(a.loss, rel=1e-13) and b.step == a.step
    for p, value in first.params.items():
        np.testing.assert_allclose(second.params[p], value, rtol=1e-13, atol=1e-15)
    assert not any(f.suffix == ".pkl" for f in (tmp_path / "ckpt").iterdir())
    with pytest.raises(ExecutorError, match="optimizer 'adam' does not match"):
        LocalExecutor(g, contiguous(g, 2), 2, SGD(), params=params).load_state_dict(loaded)
    with pytest.raises(ExecutorError, match="missing file"):
        checkpoint.load(tmp_path / "nowhere")


def test_batch_norm_running_stats_follow_the_interpreter():
    g = model("resnet")
    params, feeds = init_params(g, 0), make_data(g, "resnet", 0)(0)
    updates = g.meta["updates"]
    out = Interpreter(vjp(g), outputs=list(updates.values())).run(feeds, params).outputs
    for k, seed in ((1, 0), (3, 4)):
        ex = LocalExecutor(g, random_assignment(g, k, seed), k, SGD(lr=0.1), params=params)
        ex.step(feeds)
        states = ex.state_dict()["states"]
        assert set(states) == set(updates)
        for state, node in updates.items():
            np.testing.assert_allclose(states[state], out[node], rtol=1e-13, err_msg=state)


def test_feeds_are_split_along_the_batch_axis():
    g = hand_graph(batch=2)
    feeds = random_feeds(g, micro_batches=3)
    parts = split_feeds(g, feeds, 3)
    np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), feeds["x"])
    with pytest.raises(ExecutorError, match="input 'x' has shape \\[5, 3\\]"):
        split_feeds(g, {"x": np.zeros((5, 3)), "y": feeds["y"]}, 3)
    with pytest.raises(ExecutorError, match="no value for input 'y'"):
        split_feeds(g, {"x": feeds["x"]}, 3)
