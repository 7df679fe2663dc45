"""modelcut.config and modelcut.units: YAML configs, their error messages, unit parsing."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from modelcut.config import ConfigError, load_config, validate_config
from modelcut.units import UnitError, parse_bandwidth, parse_flops, parse_size, parse_time

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MLP = "model: {builder: mlp, width: 16, batch: 4}\n"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# ------------------------------------------------------------------------------- units
@pytest.mark.parametrize("text,expected", [
    ("16GB", 16 * 10**9), ("512MiB", 512 * 2**20), ("1.5e9", 1_500_000_000), ("2 KiB", 2048),
    ("64kB", 64_000), ("10Gb", 10**10 // 8), (4096, 4096), ("3 bytes", 3), ("1 TiB", 2**40),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("25GB/s", 25e9), ("300 GB/s", 300e9), ("10Gb/s", 10e9 / 8), ("10Gbps", 10e9 / 8),
    ("1 GiB/s", 2.0**30), ("2.5e10", 2.5e10), (100, 100.0),
])
def test_parse_bandwidth(text, expected):
    assert parse_bandwidth(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("text,expected", [
    ("1e12", 1e12), ("19.5 TFLOPS", 19.5e12), ("100GFLOP/s", 1e11), ("2 PFLOPS", 2e15),
])
def test_parse_flops(text, expected):
    assert parse_flops(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("text,expected", [
    ("10us", 1e-5), ("1ms", 1e-3), ("2 s", 2.0), ("1e-5", 1e-5), ("5µs", 5e-6), ("250ns", 2.5e-7),
    ("2min", 120.0), (0, 0.0),
])
def test_parse_time(text, expected):
    assert parse_time(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("parse,text,message", [
    (parse_size, "16gb", "ambiguous; write GB for bytes or Gb for bits"),
    (parse_size, "16 GX", "unknown unit 'GX'"),
    (parse_size, "-1GB", "non-negative"),
    (parse_size, True, "expected a number or a string"),
    (parse_bandwidth, "25GB", "'GB' is not a rate"),
    (parse_flops, "3 TB", "unknown unit 'TB'"),
    (parse_time, "10 parsecs", "unknown unit 'parsecs'"),
    (parse_time, "soon", "expected a number followed by an optional unit"),
])
def test_unit_errors(parse, text, message):
    with pytest.raises(UnitError, match=message):
        parse(text)


# --------------------------------------------------------------------- bundled configs
@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_config_loads(path):
    config = load_config(path)
    assert config.name == path.stem
    builder, kwargs = config.model_kwargs()
    assert builder in ("mlp", "gpt", "lstm", "resnet") and kwargs["batch"] >= 1
    try:
        from partition.cluster import Cluster
    except ImportError:
        return
    assert Cluster.from_spec(config.cluster_spec()).k >= 2


def test_bundled_config_values():
    xl = load_config(CONFIGS / "gpt2-xl.yaml")
    assert xl.model_kwargs() == ("gpt", {"layers": 48, "d_model": 1600, "heads": 25, "seq": 1024,
                                         "vocab": 50257, "batch": 1, "tied": True,
                                         "dtype": "float32"})
    assert xl.cluster_spec() == {"nodes": 2, "devices_per_node": 8, "flops": 19.5e12,
                                 "memory": 40 * 10**9, "intra": 300e9, "inter": 25e9,
                                 "intra_latency": 2e-6, "inter_latency": 1e-5}
    assert xl.partition.time_limit == 600.0
    hetero = load_config(CONFIGS / "hetero-cluster.yaml").cluster_spec()
    assert [d["name"] for d in hetero["devices"]] == ["a-gpu0", "a-gpu1", "b-gpu0", "b-cpu"]
    assert hetero["devices"][3]["memory"] == 64 * 2**30
    assert hetero["default_bandwidth"] == 10e9 / 8 and hetero["default_latency"] == 20e-6
    assert hetero["links"][0] == {"a": "a-gpu0", "b": "a-gpu1", "bandwidth": 300e9,
                                  "latency": 2e-6}


# ----------------------------------------------------------------------- valid configs
def test_defaults_seeds_and_numeric_strings(tmp_path):
    path = write(tmp_path, MLP + "seed: 7\ntraining: {lr: 1e-3, seed: 3}\n", "my-run.yaml")
    config = load_config(path)
    assert config.name == "my-run" and config.seed == 7
    assert config.partition.seed == 7 and config.training.seed == 3
    assert config.training.lr == 0.001  # PyYAML reads 1e-3 as a string
    assert config.partition.algorithm == "auto" and config.partition.epsilon == 0.10
    assert config.cluster_spec() == {"uniform": {"devices": 2}}
    assert config.model_kwargs() == ("mlp", {"layers": 2, "width": 16, "in_features": 64,
                                             "classes": 10, "batch": 4, "activation": "relu",
                                             "dtype": "float32"})


def test_graph_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "g.json").write_text("{}")
    path = write(tmp_path, "model: {graph: graphs/g.json}\n")
    monkeypatch.chdir("/")
    config = load_config(path)
    assert Path(config.model.graph) == tmp_path / "graphs" / "g.json"
    with pytest.raises(ConfigError, match="model_kwargs|not a builder"):
        config.model_kwargs()


@pytest.mark.parametrize("wrapped", [True, False])
def test_cluster_file(tmp_path, wrapped):
    body = "nodes: 2\ndevices_per_node: 2\nintra: 100GB/s\ninter: 10Gb/s\n"
    text = "cluster:\n" + textwrap.indent(body, "  ") if wrapped else body
    write(tmp_path, text, "measured.yaml")
    config = load_config(write(tmp_path, MLP + "cluster: {file: measured.yaml}\n"))
    assert config.cluster_spec() == {"nodes": 2, "devices_per_node": 2, "intra": 100e9,
                                     "inter": 1.25e9}


def test_cluster_file_with_measured_fields(tmp_path):
    write(tmp_path, """cluster:
  devices:
    - {name: cpu0, flops: 60 GFLOPS, memory: 1GB, op_overhead: 8us,
       op_flops: {conv2d: 6 GFLOPS, "*": 1.5e9}}
  step_overhead: 0.3ms
""", "measured.yaml")
    config = load_config(write(tmp_path, MLP + "cluster: {file: measured.yaml}\n"))
    assert config.cluster_spec() == {
        "devices": [{"name": "cpu0", "flops": 60e9, "memory": 10**9, "op_overhead": 8e-6,
                     "op_flops": {"conv2d": 6e9, "*": 1.5e9}}],
        "step_overhead": 3e-4}


def test_builders_accept_model_kwargs():
    import autodiff.models as models
    config = validate_config({"model": {"builder": "mlp", "layers": 1, "width": 8,
                                        "in_features": 4, "classes": 3, "batch": 2}})
    graph = config.forward_graph()
    # one hidden layer: 4*8 + 8 weights and biases, head 8*3 + 3
    assert graph.num_parameters() == 4 * 8 + 8 + 8 * 3 + 3


# ---------------------------------------------------------------------- malformed configs
MALFORMED = [
    # (id, yaml, key path, expectation)
    ("zero-devices", MLP + "cluster: {uniform: {devices: 0}}",
     "cluster.uniform.devices", "expected a positive integer, got 0"),
    ("misspelt-section", "modle: {builder: mlp, width: 16, batch: 4}",
     "modle", "unknown key (did you mean 'model'?)"),
    ("misspelt-section-no-default", "modle: {builder: mlp, width: 16, batch: 4}",
     "model", "missing required key"),
    ("unknown-builder", "model: {builder: gtp, layers: 2}",
     "model.builder", "expected one of mlp, gpt, lstm, resnet (did you mean 'gpt'?), got 'gtp'"),
    ("heads-divide-d_model",
     "model: {builder: gpt, layers: 2, d_model: 64, heads: 5, seq: 8, vocab: 16, batch: 2}",
     "model.heads", "expected a divisor of d_model (64), got 5"),
    ("width-not-integer", "model: {builder: mlp, width: wide, batch: 4}",
     "model.width", "expected a positive integer, got 'wide'"),
    ("misspelt-model-key", "model: {builder: mlp, widht: 16, batch: 4}",
     "model.widht", "unknown key (did you mean 'width'?)"),
    ("bad-activation", "model: {builder: mlp, width: 16, batch: 4, activation: rleu}",
     "model.activation", "expected one of relu, gelu, tanh, sigmoid (did you mean 'relu'?)"),
    ("bandwidth-not-rate", MLP + "cluster: {uniform: {devices: 2, bandwidth: 25GB}}",
     "cluster.uniform.bandwidth", "expected a positive bandwidth such as 25GB/s"),
    ("ambiguous-memory", MLP + "cluster: {nodes: 2, devices_per_node: 2, memory: 16gb}",
     "cluster.memory", "'gb' is ambiguous"),
    ("bad-flops", MLP + "cluster: {nodes: 2, devices_per_node: 2, flops: fast}",
     "cluster.flops", "expected a positive FLOP rate such as 19.5 TFLOPS or 1e12, got 'fast'"),
    ("unknown-cluster-shape", MLP + "cluster: {gpus: 4}",
     "cluster", "expected a mapping with `uniform: {devices: N, ...}`"),
    ("link-unknown-device", MLP + """cluster:
       devices: [{name: gpu0, flops: 1e12, memory: 1GB}, {name: gpu1, flops: 1e12, memory: 1GB}]
       links: [{a: gpu0, b: gpu7, bandwidth: 1GB/s}]""",
     "cluster.links[0]", "expected b to name a listed device"),
    ("duplicate-device", MLP + """cluster:
       devices: [{name: gpu0, flops: 1e12, memory: 1GB}, {name: gpu0, flops: 1e12, memory: 1GB}]""",
     "cluster.devices[1]", "expected a device name used once, got 'gpu0'"),
    ("device-missing-memory", MLP + "cluster: {devices: [{name: gpu0, flops: 1e12}]}",
     "cluster.devices[0].memory", "missing required key"),
    ("negative-op-overhead", MLP + """cluster:
       devices: [{name: cpu0, flops: 1e12, memory: 1GB, op_overhead: -2us}]""",
     "cluster.devices[0].op_overhead", "expected a time such as 10us or 1ms"),
    ("bad-op-rate", MLP + """cluster:
       devices: [{name: cpu0, flops: 1e12, memory: 1GB, op_flops: {conv2d: fast}}]""",
     "cluster.devices[0].op_flops.conv2d", "expected a positive FLOP rate"),
    ("removed-calibration-field", MLP + """cluster:
       devices: [{name: cpu0, flops: 1e12, memory: 1GB}]
       batch_transfers: true""",
     "cluster.batch_transfers", "unknown key"),
    ("removed-device-field", MLP + """cluster:
       devices: [{name: cpu0, flops: 1e12, memory: 1GB, update_costs: {adam: [0, 0]}}]""",
     "cluster.devices[0].update_costs", "unknown key"),
    ("negative-epsilon", MLP + "partition: {epsilon: -0.1}",
     "partition.epsilon", "expected a non-negative number, got -0.1"),
    ("acyclic-not-bool", MLP + "partition: {acyclic: yes please}",
     "partition.acyclic", "expected true or false, got 'yes please'"),
    ("bad-time-limit", MLP + "partition: {time_limit: soon}",
     "partition.time_limit", "expected a positive time such as 30s or 2min"),
    ("bad-objective", MLP + "partition: {objective: speed}",
     "partition.objective", "expected one of volume, time_volume, time, throughput"),
    ("pin-index-out-of-range", MLP + "partition: {pin: {'fc*': 5}}",
     "partition.pin.fc*", "expected a device index below 2, got 5"),
    ("bad-optimizer", MLP + "training: {optimizer: adma}",
     "training.optimizer", "expected one of sgd, momentum, adam (did you mean 'adam'?)"),
    ("zero-steps", MLP + "training: {steps: 0}", "training.steps",
     "expected a positive integer, got 0"),
    ("one-beta", MLP + "training: {betas: [0.9]}", "training.betas",
     "expected a list of two numbers in [0, 1), got [0.9]"),
    ("misspelt-training-key", MLP + "training: {lr_rate: 0.1}",
     "training.lr_rate", "unknown key (did you mean 'lr'?)"),
    ("zero-micro-batches", MLP + "training: {micro_batches: 0}", "training.micro_batches",
     "expected a positive integer, got 0"),
    ("bad-schedule", MLP + "training: {schedule: pipedream}", "training.schedule",
     "expected one of gpipe, 1f1b, sequential"),
    ("defer-not-bool", MLP + "training: {defer_weight_grads: often}",
     "training.defer_weight_grads", "expected true or false, got 'often'"),
    ("empty-channels", "model: {builder: resnet, channels: [], batch: 2}",
     "model.channels", "expected at least 1 item"),
    ("missing-graph-file", "model: {graph: nowhere.json}",
     "model.graph", "expected an existing file"),
    ("section-not-mapping", MLP + "training: 5", "training", "expected a mapping, got 5"),
]


@pytest.mark.parametrize("text,key,expectation", [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_malformed_config(tmp_path, text, key, expectation):
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}: {key}: ") and expectation in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, """\
        model: {builder: mlp, width: 0, batch: 4}
        cluster: {uniform: {devices: 2, latency: 1 fortnight}}
        training: {lr: -1, steps: 2}
        """)
    problems = problems_of(path)
    assert [p.split(": ")[1] for p in problems] == ["model.width", "cluster.uniform.latency",
                                                    "training.lr"]


def test_unknown_algorithm_is_rejected_when_the_registry_exists(tmp_path):
    from modelcut.config import _known_algorithms
    known = _known_algorithms()
    path = write(tmp_path, MLP + "partition: {algorithm: no-such-algorithm}")
    if known is None:
        assert load_config(path).partition.algorithm == "no-such-algorithm"
    else:
        assert any("partition.algorithm: expected one of" in p for p in problems_of(path))


def test_pins_must_name_cluster_devices(tmp_path):
    path = write(tmp_path, MLP + textwrap.dedent("""
        cluster: {devices: [{name: alpha, flops: 1e12, memory: 1GB},
                            {name: beta, flops: 1e12, memory: 1GB}]}
        partition: {pin: {'x*': alpah, 'y*': 1}}"""))
    problems = problems_of(path)
    assert problems == [f"{path}: partition.pin.x*: expected one of the cluster's devices "
                        "(did you mean 'alpha'?), got 'alpah'"]


def test_file_level_problems(tmp_path):
    assert problems_of(tmp_path / "absent.yaml")[0].startswith(f"{tmp_path / 'absent.yaml'}: "
                                                                "cannot read the file")
    bad = write(tmp_path, "model: {builder: mlp\n  width: [1, 2\n")
    assert "not valid YAML at line" in problems_of(bad)[0]
    listed = write(tmp_path, "- model\n- cluster\n", "list.yaml")
    assert "expected a mapping of sections" in problems_of(listed)[0]
    write(tmp_path, "uniform: {devices: -3}\n", "cl.yaml")
    referencing = write(tmp_path, MLP + "cluster: {file: cl.yaml}\n", "ref.yaml")
    assert problems_of(referencing) == [f"{tmp_path / 'cl.yaml'}: cluster.uniform.devices: "
                                        "expected a positive integer, got -3"]


def test_defer_weight_grads_reaches_the_executor(tmp_path):
    from modelcut.training import load_training_setup, open_executor, place
    path = write(tmp_path, MLP + "training: {micro_batches: 2, defer_weight_grads: true}\n")
    setup = load_training_setup(path)
    assert setup.defer_weight_grads and not load_training_setup(write(tmp_path, MLP, "b.yaml")
                                                                ).defer_weight_grads
    with open_executor("local", setup, place(setup)) as executor:
        assert [w.defer for w in executor.workers] == [True] * setup.cluster.k
