"""`modelcut calibrate`: the least-squares link fit and the step-overhead arithmetic on known
data, and one real (tiny) run on local Ray whose cluster file a config reads back and whose
report carries the simulator's check."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from modelcut.calibration import (CalibrationError, Check, fit_latency_bandwidth, fit_link,
                                  step_overhead)
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
    # plain calls: 0.3 ms driver round trip + 0.1 ms latency + n / 4 GB/s
    sizes = [1024, 65536, 1048576]
    chains = [3e-4 + 1e-4 + n / 4e9 for n in sizes]
    link = fit_link("cpu0", "cpu1", sizes, chains, round_trip=3e-4)
    assert link.seconds == pytest.approx([1e-4 + n / 4e9 for n in sizes], rel=1e-9)
    assert (link.latency, link.bandwidth) == pytest.approx((1e-4, 4e9), rel=1e-6)
    # the pipes: the hops themselves, nothing subtracted
    assert fit_link("a", "b", sizes, link.seconds).latency == pytest.approx(1e-4, rel=1e-6)


def test_step_overhead_and_check_error_arithmetic():
    assert step_overhead(1.25e-3, 1.0e-3) == pytest.approx(2.5e-4)
    assert step_overhead(0.9e-3, 1.0e-3) == 0.0        # a quicker step than predicted: none
    check = Check("p", 2, measured=4e-3, predicted=3e-3)
    assert check.error == pytest.approx(-0.25)
    assert check.to_dict() == {"probe": "p", "k": 2, "measured": 4e-3, "predicted": 3e-3,
                               "error": pytest.approx(-0.25)}


def test_calibrate_writes_a_cluster_file_that_a_config_loads(tmp_path, capsys):
    out = tmp_path / "cluster.yaml"
    argv = ["calibrate", "--out", str(out), "--devices", "2", "--matmul-sizes", "16,32",
            "--payloads", "1KiB,1MiB", "--repeats", "1", "--steps", "1"]
    assert main(argv) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "link cpu0 <-> cpu1 (pipes)" in printed and str(out) in printed
    text = out.read_text()
    written = yaml.safe_load(text)
    assert list(written) == ["cluster"]
    spec = written["cluster"]
    assert set(spec) == {"name", "devices", "step_overhead", "links"}
    for device in spec["devices"]:
        assert set(device) == {"name", "flops", "memory", "op_flops", "op_overhead"}
    for word in ("poll", "cores", "batch_transfers", "op_costs", "update_costs", "scale"):
        assert word not in text
    # the simulator's check, reported on the console and as comments in the file
    checks = [line for line in text.splitlines() if line.startswith("#   ")]
    assert [line.split()[1] for line in checks] == ["mlp-probe", "gpt-probe"]
    assert all("measured" in line and "predicted" in line and "error" in line
               for line in checks)
    assert printed.count("check (reported, not fitted)") == 2

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"builder": "mlp", "width": 8, "batch": 4},
                                      "cluster": {"file": out.name}}))
    cluster = Cluster.from_spec(load_config(config).cluster_spec())
    assert cluster.k == 2 and cluster.step_overhead == spec["step_overhead"] >= 0
    for device, entry in zip(cluster.devices, spec["devices"]):
        assert device.flops == entry["flops"] == entry["op_flops"]["matmul"] > 0
        assert device.memory == entry["memory"] > 0
        assert device.op_overhead == entry["op_overhead"] > 0
        assert device.rate("conv2d") == entry["op_flops"]["conv2d"] > 0
        assert device.rate("gelu") == entry["op_flops"]["*"] > 0
    link = spec["links"][0]
    assert (link["a"], link["b"]) == ("cpu0", "cpu1")
    assert cluster.bandwidth[0, 1] == cluster.bandwidth[1, 0] == link["bandwidth"] > 0
    assert cluster.latency[0, 1] == link["latency"] >= 0

    assert main(argv) == 2                                   # refuses to overwrite
    assert "--force" in capsys.readouterr().err


def test_calibrate_rejects_bad_counts_before_starting_ray(tmp_path, capsys):
    for flag in ("--steps", "--repeats"):
        out = tmp_path / "cluster.yaml"
        assert main(["calibrate", "--out", str(out), flag, "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("modelcut: error:")
        assert flag in err[0] and "must be positive" in err[0]
        assert not out.exists()
