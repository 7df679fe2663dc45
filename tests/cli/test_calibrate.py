"""`modelcut calibrate`: the least-squares fits (links, op kinds, updates, step and hop) on
known data, and a real (tiny) run on Ray whose cluster file a config reads back."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from modelcut.calibration import CalibrationError, fit_latency_bandwidth, fit_link
from modelcut.calibration_costs import fit_op_costs, fit_update_costs
from modelcut.cli import main
from modelcut.config import load_config
from partition.cluster import Cluster


def test_fit_recovers_an_exact_latency_and_bandwidth():
    sizes = [1_000, 10_000, 100_000, 1_000_000]
    seconds = [2e-4 + n / 5e8 for n in sizes]
    latency, bandwidth = fit_latency_bandwidth(sizes, seconds)
    assert latency == pytest.approx(2e-4, rel=1e-9)
    assert bandwidth == pytest.approx(5e8, rel=1e-9)


def test_fit_is_least_squares_in_relative_error():
    # brute force over a grid: no (latency, bandwidth) has a smaller relative squared error
    sizes = np.array([1e3, 1e5, 1e6, 8e6])
    seconds = np.array([2.1e-3, 2.0e-3, 3.4e-3, 9.5e-3])
    latency, bandwidth = fit_latency_bandwidth(sizes, seconds)

    def error(lat, bw):
        return float((((lat + sizes / bw) - seconds) / seconds) ** 2 @ np.ones(4))
    best = error(latency, bandwidth)
    for lat in np.linspace(1e-3, 3e-3, 41):
        for bw in np.geomspace(5e8, 5e9, 41):
            assert error(lat, bw) >= best - 1e-15


def test_fit_clamps_a_negative_latency_and_rejects_flat_times():
    latency, bandwidth = fit_latency_bandwidth([1e3, 1e6], [1e-6, 2e-3])
    assert latency == 0.0
    # through the origin, relative errors: slope = sum(x/y) / sum((x/y)^2)
    ratios = np.array([1e3 / 1e-6, 1e6 / 2e-3])
    assert 1 / bandwidth == pytest.approx(ratios.sum() / (ratios @ ratios))
    with pytest.raises(CalibrationError, match="do not grow"):
        fit_latency_bandwidth([1e3, 1e6], [2e-3, 1e-3])
    with pytest.raises(CalibrationError, match="two different payload sizes"):
        fit_latency_bandwidth([1e3, 1e3], [1e-3, 1e-3])


def test_link_fit_subtracts_the_round_trip():
    # chains: 0.3 ms round trip + 0.1 ms latency + n / 4 GB/s
    sizes = [1024, 65536, 1048576]
    chains = [3e-4 + 1e-4 + n / 4e9 for n in sizes]
    link = fit_link("cpu0", "cpu1", sizes, chains, round_trip=3e-4)
    assert link.seconds == pytest.approx([1e-4 + n / 4e9 for n in sizes], rel=1e-9)
    assert link.latency == pytest.approx(1e-4, rel=1e-6)
    assert link.bandwidth == pytest.approx(4e9, rel=1e-6)


def test_op_cost_fit_recovers_flop_bound_and_byte_bound_kinds():
    rng = np.random.default_rng(0)
    flops, nbytes = rng.uniform(1e5, 1e7, 12), rng.uniform(1e4, 1e6, 12)
    samples = {"matmul": list(zip(flops, nbytes, 2e-6 + flops * 1e-11)),
               "relu": list(zip(flops, nbytes, 1e-6 + nbytes * 2e-10))}
    costs = fit_op_costs(samples)
    assert costs["matmul"] == pytest.approx((2e-6, 1e-11, 0.0), rel=1e-6)
    assert costs["relu"] == pytest.approx((1e-6, 0.0, 2e-10), rel=1e-6)
    # one sample: a line through it (non-negative least squares picks one exact fit)
    (intercept, per_flop, per_byte), = fit_op_costs({"tanh": [(0.0, 100.0, 3e-6)]}).values()
    assert intercept + 100.0 * per_byte == pytest.approx(3e-6) and per_flop == 0.0


def test_update_fit_is_exact_on_a_line_and_never_negative():
    costs = fit_update_costs({"adam": [(n, 5e-6 + n * 1e-9) for n in (1024, 65536, 2**20)],
                              "sgd": [(1024, 3e-6), (2**20, 1e-6)]})
    assert costs["adam"] == pytest.approx((5e-6, 1e-9), rel=1e-6)
    intercept, per_byte = costs["sgd"]                  # decreasing times: a flat fit
    assert per_byte == 0.0 and intercept == pytest.approx(2e-6)


def test_calibrate_writes_a_cluster_file_that_a_config_loads(tmp_path, capsys):
    out = tmp_path / "cluster.yaml"
    argv = ["calibrate", "--out", str(out), "--devices", "2", "--matmul-sizes", "16,32",
            "--payloads", "1KiB,32MiB", "--repeats", "3", "--steps", "3", "--rounds", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "cpu0 <-> cpu1" in printed and str(out) in printed
    written = yaml.safe_load(out.read_text())["cluster"]
    assert [d["name"] for d in written["devices"]] == ["cpu0", "cpu1"]
    link = written["links"][0]
    assert (link["a"], link["b"]) == ("cpu0", "cpu1")

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"builder": "mlp", "width": 8, "batch": 4},
        "cluster": {"file": out.name}}))
    cluster = Cluster.from_spec(load_config(config).cluster_spec())
    assert cluster.k == 2
    for device, entry in zip(cluster.devices, written["devices"]):
        assert device.flops == entry["flops"] > 0
        assert device.memory == entry["memory"] > 0
        assert device.op_overhead == entry["op_overhead"] > 0
        assert device.rate("matmul") == device.flops
        assert device.rate("conv2d") == entry["op_flops"]["conv2d"] > 0
        assert device.rate("gelu") == entry["op_flops"]["*"] > 0
    # fitted by non-negative least squares on 3 noisy steps a probe: 0 is a valid fit (the fit
    # itself is checked against a simulated truth below); here, that it is written and read
    assert cluster.step_overhead == written["step_overhead"] >= 0
    assert "per hop between actors (Ray executor)" in " ".join(printed.split())
    # the cost tables are written and read back
    for device, entry in zip(cluster.devices, written["devices"]):
        assert dict(device.op_costs) == {op: tuple(c) for op, c in entry["op_costs"].items()}
        assert len(device.op_costs) > 3 and device.update_costs
    assert cluster.batch_transfers is True
    assert cluster.bandwidth[0, 1] == cluster.bandwidth[1, 0] == link["bandwidth"] > 0
    assert cluster.latency[0, 1] == link["latency"] >= 0

    assert main(argv) == 2                                   # refuses to overwrite
    assert "--force" in capsys.readouterr().err


def test_executor_costs_fit_recovers_a_simulated_truth():
    from modelcut.calibration_costs import (QUICK_STEP_MODEL, SPINS, fit_executor_costs,
                                            scaled_costs, simulate_probe)
    from autodiff.models import BUILDERS
    from partition.api import partition
    from partition.cluster import uniform

    probes = []
    for sizes, k in ((QUICK_STEP_MODEL, 1), (QUICK_STEP_MODEL, 2), (QUICK_STEP_MODEL, 4),
                     (dict(layers=4, width=64, in_features=32, classes=4, batch=16), 2),
                     (dict(layers=4, width=64, in_features=32, classes=4, batch=16), 4)):
        graph = BUILDERS["mlp"](**sizes)
        a = np.asarray(partition(graph, uniform(k), algorithm="contiguous",
                                 epsilon=1.0).assignment)
        probes.append((graph, a, k, 1, "sequential"))
    ops = {"matmul": (1e-5, 1e-10, 0.0), "*": (2e-6, 0.0, 1e-10)}
    ops.update({op: (3e-6, 0.0, 2e-10) for op in ("relu", "relu_grad", "transpose", "sum",
                                                  "add", "cross_entropy", "multiply")})
    updates = {"adam": (2e-6, 4e-10)}
    # the truth: costs 1.5 x the tables plus 2 us per op (calls of one device: 1e-4 s more),
    # 0.3 ms per step, 0.2 ms per hop, devices keep their processor (of 2) for a spin
    spin = SPINS[-2]
    costs = scaled_costs(ops, updates, 1.5, 2e-6)
    measured = []
    for probe in probes:
        step, _ = simulate_probe(probe, costs, 4e9, 3e-4, 2e-4, spin, cores=2)
        _, plain = simulate_probe(probe, scaled_costs(ops, updates, 1.5), 4e9)
        _, busy = simulate_probe(probe, costs, 4e9)
        used = len(set(probe[1].tolist()))
        measured.append((step, plain, busy + 1e-4 * used))
    fit = fit_executor_costs(probes, measured, ops, updates, 4e9, cores=2)
    assert fit["compute_scale"] == pytest.approx(1.5, rel=1e-5)
    assert fit["call_overhead"] == pytest.approx(2e-6, rel=1e-3)
    assert fit["spin"] == spin                   # devices 0 and 2 share a processor at k=4
    assert fit["step_overhead"] == pytest.approx(3e-4, rel=1e-4)
    assert fit["latency"] == pytest.approx(2e-4, rel=1e-4)


def test_calibrate_rejects_bad_counts_before_starting_ray(tmp_path, capsys):
    for flag in ("--rounds", "--repeats"):
        out = tmp_path / "cluster.yaml"
        assert main(["calibrate", "--out", str(out), flag, "0"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert flag in err and "must be positive" in err
        assert not out.exists()


def test_the_quickest_timing_counts():
    from modelcut.calibration import quickest_tables
    from modelcut.calibration_costs import quietest

    rounds = np.array([[3e-3, 2e-3, 2.5e-3], [2e-3, 1.9e-3, 1.95e-3], [4e-3, 1e-3, 3e-3]])
    assert quietest(rounds).tolist() == rounds[1].tolist()   # by step time, the whole row
    actors = [({}, {}, 0.0, {"add": (1.0, 0, 0)}, {"sgd": (1.0, 0)}, 0.5),
              ({}, {}, 0.0, {"add": (2.0, 0, 0)}, {"sgd": (2.0, 0)}, 0.3),
              ({}, {}, 0.0, {"add": (3.0, 0, 0)}, {"sgd": (3.0, 0)}, 0.4)]
    assert quickest_tables(actors) == ({"add": (2.0, 0, 0)}, {"sgd": (2.0, 0)})
