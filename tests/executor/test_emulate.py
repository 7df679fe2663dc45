"""Emulated devices: the virtual clock's rules by hand, the dilation by hand, and a real
local Ray run under emulation against the step simulator's prediction."""
import time

import numpy as np
import pytest

from autodiff.models import BUILDERS, make_data
from executor.emulate import VirtualClock, choose_dilation, step_seconds
from executor.local import LocalExecutor
from executor.optim import SGD
from executor.plan import build_plan
from executor.program import Recv, Send
from executor.timing import StepCosts, simulate_plan
from executor_cases import contiguous
from partition.cluster import uniform


def test_the_clock_pads_steps_and_keeps_each_link_fifo():
    """Block 0: a 20 ms step, then two 30 ms sends to device 1 (the second waits for the
    link); a receive stamped later than the clock moves the clock there."""
    clock = VirtualClock(((0.02, 0.03, 0.03),), k=2)
    t0 = time.time() + 0.005
    clock.start(t0)
    clock.advance(0, 0)
    assert time.time() >= t0 + 0.02 and clock.now == pytest.approx(t0 + 0.02)
    assert clock.stamp(0, 1, 1) == pytest.approx(t0 + 0.05)
    assert clock.stamp(0, 2, 1) == pytest.approx(t0 + 0.08)     # after the first on the link
    assert clock.now == pytest.approx(t0 + 0.02)                  # a send costs the device 0
    clock.arrived(t0 + 0.1)
    assert time.time() >= t0 + 0.1 and clock.now == pytest.approx(t0 + 0.1)
    clock.arrived(t0 + 0.05)                                      # an earlier stamp: no change
    assert clock.now == pytest.approx(t0 + 0.1)


def test_late_work_is_caught_up_not_accumulated():
    """Absolute deadlines: a step that overran its padding does not delay the next deadline."""
    clock = VirtualClock(((0.01, 0.05),), k=1)
    t0 = time.time()
    clock.start(t0)
    time.sleep(0.03)                       # the first step's real work overruns its 10 ms
    clock.advance(0, 0)
    clock.advance(0, 1)
    assert clock.now == pytest.approx(t0 + 0.06)
    assert time.time() == pytest.approx(t0 + 0.06, abs=0.015)


def test_step_seconds_are_the_cost_models_and_the_dilation_covers_the_slowest_block():
    g = BUILDERS["mlp"](batch=8, dtype="float64", layers=2, width=8, in_features=6, classes=3)
    a = contiguous(g, 2)
    plan = build_plan(g, a, 2, micro_batches=2, schedule="1f1b")
    cluster = uniform(2, flops=1e9, bandwidth=1e6, latency=1e-3)
    costs = StepCosts(plan, cluster, "sgd")
    seconds = step_seconds(plan, cluster, "sgd")
    for program, blocks in zip(plan.programs, seconds):
        for block, steps in zip(program.blocks, blocks):
            for s, t in zip(block.steps, steps):
                want = (costs.transfer(program.device, s.target, s.arrives_as)
                        if isinstance(s, Send) else 0.0 if isinstance(s, Recv)
                        else costs.step(program.device, s))
                assert t == want
    compute = [[sum(t for s, t in zip(b.steps, steps) if not isinstance(s, (Send, Recv)))
                for b, steps in zip(p.blocks, blocks)] for p, blocks in zip(plan.programs,
                                                                            seconds)]
    real = [[2.0 * c for c in row] for row in compute]
    d, i = 1, next(i for i, c in enumerate(compute[1]) if c > 0)
    real[d][i] += 12.0 * sum(compute[d])          # device 1 runs 14x its model compute
    assert choose_dilation(plan, seconds, real, 1.0, safety=3.0, min_step=0.0) == pytest.approx(
        42)
    assert choose_dilation(plan, seconds, real, 1e-3, safety=3.0, min_step=1.0) == pytest.approx(
        1000)


def test_an_emulated_two_device_step_takes_the_simulated_time(ray_session):
    """A 2-device mlp pipeline on a slow cluster (padded steps of tens of ms): the emulated
    step time is within 15% of simulate_plan's prediction (loose for a noisy shared host;
    benchmarks/emulation_accuracy.py holds 5%), results equal the local executor's."""
    from executor.ray_executor import RayExecutor
    m = 2
    full = BUILDERS["mlp"](batch=16, dtype="float64", layers=2, width=32, in_features=16,
                           classes=4)
    micro = BUILDERS["mlp"](batch=16 // m, dtype="float64", layers=2, width=32,
                            in_features=16, classes=4)
    data = make_data(full, "mlp", 0)
    a = contiguous(micro, 2)
    plan = build_plan(micro, a, 2, micro_batches=m, schedule="1f1b")
    cluster = uniform(2, flops=2e6, bandwidth=2e6, latency=5e-3)
    predicted = simulate_plan(plan, cluster, "sgd").step_time
    assert 0.05 < predicted < 1.0
    local = LocalExecutor(micro, a, 2, SGD(lr=0.1), seed=0, plan=plan)
    with RayExecutor(micro, a, 2, SGD(lr=0.1), seed=0, plan=plan, mode="pipes",
                     emulate=cluster, checkpoint_every=None) as ex:
        results = [ex.step(data(s)) for s in range(4)]
        expected = [local.step(data(s)) for s in range(4)]
    assert [r.losses for r in results] == [r.losses for r in expected]
    dilation = results[0].dilation
    assert dilation is not None and dilation >= 1.0
    measured = min(r.emulated_seconds for r in results[1:])
    assert measured == pytest.approx(predicted, rel=0.15)
    assert all(r.step_seconds >= 0.8 * predicted * dilation for r in results)


def test_train_emulate_reports_emulated_seconds_beside_the_plan_prediction(ray_session,
                                                                          tmp_path, capsys):
    """`modelcut train --emulate`: measured.step_time is in the cluster's seconds, within 15%
    of predicted.step_time (simulate_plan on the executor's plan, rebuilt here from the
    written placement), with the dilation reported; --executor local refuses it (exit 2)."""
    import json
    from pathlib import Path

    from modelcut.cli import main
    from modelcut.config import load_config
    config = Path(__file__).resolve().parents[2] / "configs" / "mlp.yaml"
    out = tmp_path / "emulated"
    assert main(["train", str(config), "--emulate", "--steps", "4", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    measured, predicted = report["measured"], report["predicted"]
    assert measured["emulated"] and measured["dilation"] > 1.0
    assert measured["step_time"] == pytest.approx(predicted["step_time"], rel=0.15)
    assert measured["bytes_per_step"] == predicted["step_volume"]
    family, kwargs = load_config(config).model_kwargs()
    graph = BUILDERS[family](**kwargs)
    device = json.loads((out / "placement.json").read_text())     # node -> device name
    cluster = uniform(2, flops=1e12, bandwidth=25e9, latency=10e-6)  # the config's cluster
    plan = build_plan(graph, np.array([int(device[n.name][3:]) for n in graph.nodes]), 2,
                      micro_batches=1, schedule=report["training"]["schedule"])
    assert predicted["step_time"] == pytest.approx(simulate_plan(plan, cluster,
                                                                 "adam").step_time, rel=1e-9)
    capsys.readouterr()
    assert main(["train", str(config), "--emulate", "--executor", "local", "--out",
                 str(tmp_path / "local")]) == 2
    assert "--emulate" in capsys.readouterr().err
