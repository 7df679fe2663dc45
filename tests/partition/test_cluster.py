"""Cluster model: presets, spec parsing, transfer times and errors that name the field."""
import json

import numpy as np
import pytest

from partition.cluster import Cluster, Device, Link, heterogeneous, hierarchical, uniform
from partition.errors import ClusterError


def test_uniform_preset_costs():
    c = uniform(4, flops=2e12, memory=8 * 2**30, bandwidth=1e9, latency=1e-3)
    assert c.k == 4
    assert c.speeds.tolist() == [2e12] * 4
    assert c.memory.tolist() == [8 * 2**30] * 4
    assert c.transfer_time(0, 3, 5e8) == pytest.approx(1e-3 + 0.5)
    assert c.transfer_time(2, 2, 5e8) == 0.0
    assert c.link(1, 2) == Link(1e9, 1e-3)
    assert c.uniform_links


def test_hierarchical_preset_links():
    c = hierarchical(2, 2, flops=1e12, memory=2**30, intra_bandwidth=300.0,
                     inter_bandwidth=25.0, intra_latency=0.0, inter_latency=1.0)
    assert c.device_names == ("n0d0", "n0d1", "n1d0", "n1d1")
    # same machine: 100 bytes at 300 B/s; different machines: 1 s + 100 / 25 s
    assert c.transfer_time(0, 1, 100) == pytest.approx(1 / 3)
    assert c.transfer_time(2, 3, 100) == pytest.approx(1 / 3)
    assert c.transfer_time(1, 2, 100) == pytest.approx(5.0)
    assert c.transfer_time(3, 0, 100) == pytest.approx(5.0)
    assert not c.uniform_links


def test_heterogeneous_links_are_symmetric_and_default_elsewhere():
    devices = [Device("a", 1e12, 2**30), Device("b", 2e12, 2**31), Device("c", 1e11, 2**30)]
    c = heterogeneous(devices, {("a", "b"): Link(100.0, 0.5)}, default_bandwidth=10.0,
                      default_latency=0.0)
    assert c.transfer_time(0, 1, 100) == pytest.approx(1.5)
    assert c.transfer_time(1, 0, 100) == pytest.approx(1.5)
    assert c.transfer_time(0, 2, 100) == pytest.approx(10.0)
    assert c.speeds.tolist() == [1e12, 2e12, 1e11]
    assert c.memory.tolist() == [2**30, 2**31, 2**30]
    assert c.device_index("c") == 2
    with pytest.raises(ClusterError, match="'z'"):
        c.device_index("z")
    with pytest.raises(ClusterError, match="'z'"):
        heterogeneous(devices, {("a", "z"): Link(1.0, 0.0)})


def test_from_spec_uniform():
    c = Cluster.from_spec({"uniform": {"devices": 4, "flops": 1e12, "memory": 1.6e10,
                                       "bandwidth": 2.5e10, "latency": 1e-5}})
    assert c.k == 4
    assert c.memory.dtype == np.int64 and c.memory[0] == 16_000_000_000
    assert c.transfer_time(0, 1, 2.5e10) == pytest.approx(1 + 1e-5)


def test_from_spec_hierarchical():
    c = Cluster.from_spec({"nodes": 2, "devices_per_node": 4, "flops": 1e12, "memory": 1.6e10,
                           "intra": 3e11, "inter": 2.5e10, "name": "two-boxes"})
    assert c.k == 8 and c.name == "two-boxes"
    assert c.bandwidth[0, 3] == 3e11 and c.bandwidth[3, 4] == 2.5e10


def test_from_spec_device_list():
    spec = {"devices": [{"name": "fast", "flops": 4e12, "memory": 3.2e10},
                        {"name": "slow", "flops": 1e12, "memory": 1.6e10},
                        {"name": "tiny", "flops": 5e11, "memory": 8e9}],
            "links": [{"a": "fast", "b": "slow", "bandwidth": 1e11, "latency": 2e-6}],
            "default_bandwidth": 1e10, "default_latency": 1e-4}
    c = Cluster.from_spec(spec)
    assert c.device_names == ("fast", "slow", "tiny")
    assert c.bandwidth[1, 0] == 1e11 and c.latency[0, 1] == 2e-6
    assert c.bandwidth[0, 2] == 1e10 and c.latency[2, 1] == 1e-4


def test_from_spec_reads_units_and_normalizes_once():
    """The one cluster validator (partition/cluster_spec.py) reads quantities with units; its
    normalized spec is a fixed point (the config stores it, from_spec reads it again)."""
    from partition.cluster_spec import normalize
    spec = {"devices": [{"name": "a", "flops": "2 TFLOPS", "memory": "16GiB",
                         "op_overhead": "10us", "op_flops": {"conv2d": "500 GFLOPS"}},
                        {"name": "b", "flops": 1e12, "memory": "1GB"}],
            "links": [{"a": "a", "b": "b", "bandwidth": "10Gb/s", "latency": "2ms"}],
            "step_overhead": "0.3ms", "name": "lab"}
    plain = normalize(spec)
    assert plain["devices"][0] == {"name": "a", "flops": 2e12, "memory": 16 * 2**30,
                                   "op_overhead": 1e-5, "op_flops": {"conv2d": 5e11}}
    assert plain["links"] == [{"a": "a", "b": "b", "bandwidth": 1.25e9, "latency": 2e-3}]
    assert normalize(plain) == plain
    c = Cluster.from_spec(spec)
    assert (c.name, c.step_overhead, c.devices[0].rate("conv2d")) == ("lab", 3e-4, 5e11)
    assert c.transfer_time(1, 0, 1.25e9) == pytest.approx(1 + 2e-3)


@pytest.mark.parametrize("spec, field", [
    ({"uniform": {"devices": 4, "flop": 1e12}}, "cluster.uniform.flop"),
    ({"uniform": {"devices": 0}}, "cluster.uniform.devices"),
    ({"uniform": {"devices": 2, "bandwidth": -1.0}}, "cluster.uniform.bandwidth"),
    ({"uniform": {"devices": 2, "latency": "fast"}}, "cluster.uniform.latency"),
    ({"nodes": 2, "flops": 1e12}, "cluster.devices_per_node"),
    ({"devices": [{"name": "a", "flops": 1e12}]}, r"cluster.devices\[0\].memory"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9},
                  {"name": "a", "flops": 1e12, "memory": 1e9}]},
     r"cluster.devices\[1\]: expected a device name used once, got 'a'"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9}],
      "links": [{"a": "a", "b": "q", "bandwidth": 1e9}]}, "'q'"),
    ({"gpus": 3}, "cluster"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9, "op_overhead": -1e-6}]},
     r"cluster.devices\[0\].op_overhead: expected a time such as 10us or 1ms"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9, "op_flops": [1e9]}]},
     r"cluster.devices\[0\].op_flops: expected a mapping"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9, "op_flops": {"conv2d": 0}}]},
     r"cluster.devices\[0\].op_flops.conv2d: expected a positive FLOP rate"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9}], "step_overhead": "soon"},
     "cluster.step_overhead: expected a time such as 10us or 1ms"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9}] * 129}, "at most 128 items"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9},
                  {"name": "b", "flops": 1e12, "memory": 1e9}],
      "links": [{"a": "a", "b": "b", "bandwidth": 1e9}, {"a": "b", "b": "a", "bandwidth": 2e9}]},
     r"cluster.links\[1\]: expected each pair of devices linked once"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9}], "batch_transfers": True},
     "cluster.batch_transfers: unknown key"),
    ({"devices": [{"name": "a", "flops": 1e12, "memory": 1e9, "op_costs": {}}]},
     r"cluster.devices\[0\].op_costs: unknown key"),
])
def test_from_spec_errors_name_the_field(spec, field):
    with pytest.raises(ClusterError, match=field):
        Cluster.from_spec(spec)


def test_resized_presets_and_refusal():
    assert uniform(4, bandwidth=7.0).resized(6).bandwidth[0, 5] == 7.0
    h = hierarchical(2, 4, intra_bandwidth=300.0, inter_bandwidth=25.0)
    six = h.resized(6)
    assert six.k == 6
    assert six.bandwidth[0, 3] == 300.0 and six.bandwidth[3, 4] == 25.0
    assert six.bandwidth[4, 5] == 300.0
    assert h.resized(12).k == 12
    listed = heterogeneous([Device("a", 1e12, 2**30), Device("b", 1e12, 2**30)])
    with pytest.raises(ClusterError, match="cannot be changed"):
        listed.resized(4)


def test_to_dict_is_strict_json():
    c = hierarchical(1, 2)
    text = json.dumps(c.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert [d["name"] for d in back["devices"]] == ["n0d0", "n0d1"]
    assert back["bandwidth"][0][0] is None and back["bandwidth"][0][1] == 3e11


def test_matrices_are_read_only_and_checked():
    c = uniform(2)
    with pytest.raises(ValueError):
        c.bandwidth[0, 1] = 1.0
    with pytest.raises(ClusterError, match="3x3"):
        Cluster((Device("a", 1.0, 1), Device("b", 1.0, 1), Device("c", 1.0, 1)),
                np.ones((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ClusterError, match="'a' and 'b'"):
        Cluster((Device("a", 1.0, 1), Device("b", 1.0, 1)), np.zeros((2, 2)), np.zeros((2, 2)))


def test_measured_fields_round_trip_and_default_to_the_spec_model():
    spec = {"name": "calibrated", "step_overhead": 3e-4,
            "devices": [{"name": "cpu0", "flops": 6e10, "memory": 2**30, "op_overhead": 8e-6,
                         "op_flops": {"conv2d": 6e9, "*": 1.5e9}},
                        {"name": "cpu1", "flops": 5e10, "memory": 2**30}],
            "links": [{"a": "cpu0", "b": "cpu1", "bandwidth": 4e9, "latency": 1e-4}]}
    c = Cluster.from_spec(spec)
    again = Cluster.from_spec({key: value for key, value in c.to_dict().items()
                               if key not in ("bandwidth", "latency")}
                              | {"links": spec["links"], "step_overhead": c.step_overhead})
    assert again.devices == c.devices and again.to_dict() == c.to_dict()
    assert c.step_overhead == 3e-4
    cpu0, cpu1 = c.devices
    # an op kind's entry, else "*", else flops
    assert (cpu0.rate("conv2d"), cpu0.rate("gelu"), cpu1.rate("conv2d")) == (6e9, 1.5e9, 5e10)
    assert (cpu0.op_overhead, cpu1.op_overhead, cpu1.op_flops) == (8e-6, 0.0, {})
    # devices without the fields write exactly the SPEC's three keys
    assert cpu1.to_dict() == {"name": "cpu1", "flops": 5e10, "memory": 2**30}
    assert "step_overhead" not in uniform(2).to_dict()
