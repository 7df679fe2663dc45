"""The `modelcut` command line: `graph`, `check`, error handling, `python -m modelcut`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autodiff.io import load_graph, save_graph
from autodiff.ir import Graph, GraphError, Node
from modelcut.cli import COMMANDS, is_package_error, main
from modelcut.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def tiny_graph() -> Graph:
    nodes = [Node("x", "input", (), (4, 3)), Node("w", "param", (), (3, 2), group="dense"),
             Node("c", "const", (), (2,), attrs={"value": np.array([1.0, -1.0], np.float32)}),
             Node("h", "matmul", ("x", "w"), (4, 2), flops=2 * 4 * 3 * 2, group="dense"),
             Node("y", "add", ("h", "c"), (4, 2), flops=8)]
    return Graph(nodes, ["y"], "tiny")


@pytest.fixture
def graph_config(tmp_path):
    save_graph(tiny_graph(), tmp_path / "tiny.json")
    path = tmp_path / "exp.yaml"
    path.write_text("model: {graph: tiny.json}\ncluster: {uniform: {devices: 2}}\n")
    return path


def fields(graph: Graph) -> list[tuple]:
    return [(n.name, n.op, n.inputs, n.shape, n.dtype, n.group, n.flops) for n in graph.nodes]


# ---------------------------------------------------------------------------- graph
def test_graph_from_a_graph_file_config(graph_config, tmp_path, capsys):
    out = tmp_path / "out.json.gz"
    assert main(["graph", str(graph_config), "--out", str(out)]) == 0
    assert fields(load_graph(out)) == fields(tiny_graph())
    assert load_graph(out)["c"].attrs["value"].tolist() == [1.0, -1.0]
    assert "5 nodes, 6 parameters, 56 forward FLOPs" in capsys.readouterr().out  # 48 + 8


def test_graph_refuses_to_overwrite_without_force(graph_config, tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text("precious")
    assert main(["graph", str(graph_config), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already exists; pass --force" in err and "Traceback" not in err
    assert out.read_text() == "precious"
    assert main(["graph", str(graph_config), "-o", str(out), "--force"]) == 0
    assert fields(load_graph(out)) == fields(tiny_graph())


def test_graph_from_an_onnx_config(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((5, 3), np.float32), "W")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "onnx-mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])], [w]),
        opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    config = tmp_path / "exp.yaml"
    config.write_text("model: {graph: m.onnx, dims: {batch: 6}}\n")
    assert main(["graph", str(config), "--out", str(tmp_path / "m.json")]) == 0
    g = load_graph(tmp_path / "m.json")
    assert [(n.name, n.op, n.shape, n.flops) for n in g.nodes] == [
        ("W", "param", (5, 3), None), ("x", "input", (6, 5), None),
        ("y", "matmul", (6, 3), 2 * 6 * 3 * 5), ("z", "relu", (6, 3), 6 * 3)]


def test_graph_from_a_builder_config(tmp_path):
    try:
        from autodiff.models import BUILDERS
    except ImportError:
        pytest.skip("autodiff.models.BUILDERS not written yet")
    out = tmp_path / "mlp.json"
    assert main(["graph", str(ROOT / "configs" / "mlp.yaml"), "--out", str(out)]) == 0
    g = load_graph(out)
    # configs/mlp.yaml: in 64 -> 4 hidden layers of 64 -> 4 classes, weights and biases
    assert g.num_parameters() == (64 * 64 + 64) + 3 * (64 * 64 + 64) + (64 * 4 + 4)
    assert [n.shape for n in g.inputs if n.name == "x"] == [(32, 64)]
    built = BUILDERS["mlp"](layers=4, width=64, in_features=64, classes=4, batch=32)
    assert fields(g) == fields(built)


# ---------------------------------------------------------------------------- check
def test_check_prints_a_summary(graph_config, capsys):
    assert main(["check", str(graph_config), "--graph"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(cell.strip() for cell in line.strip("│ ").split("│"))
            for line in out.splitlines() if line.count("│") == 4}
    assert {("graph", "nodes", "5"), ("graph", "parameters", "6"), ("cluster", "kind", "uniform"),
            ("cluster", "devices", "2"), ("partition", "algorithm", "auto"),
            ("partition", "shard", "off"), ("training", "optimizer", "sgd")} <= rows


def test_check_bundled_config(capsys):
    assert main(["check", str(ROOT / "configs" / "gpt2-xl.yaml")]) == 0
    out = capsys.readouterr().out
    assert "50257" in out and "19.5 TFLOPS" in out and "300 GB/s" in out


# ---------------------------------------------------------------------------- errors
def test_config_errors_print_every_problem_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: {builder: mlp}\ncluster: {uniform: {devices: 0}}\n")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: modle: unknown key (did you mean 'model'?)" in err
    assert f"{bad}: cluster.uniform.devices: expected a positive integer, got 0" in err
    assert "Traceback" not in err


def test_graph_errors_print_the_file_and_node(tmp_path, capsys):
    (tmp_path / "g.json").write_text(
        '{"format": "modelcut.graph", "version": 1, "nodes": [{"name": "a", "op": "relu", '
        '"inputs": ["b"], "shape": [2], "dtype": "float32"}], "outputs": ["a"]}')
    config = tmp_path / "exp.yaml"
    config.write_text("model: {graph: g.json}\n")
    assert main(["graph", str(config), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "g.json: node 'a': input 'b' does not exist" in err
    assert not (tmp_path / "o.json").exists()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "graph" in capsys.readouterr().err


def test_package_errors_are_recognised():
    from executor.errors import PlanError
    from modelcut.commands import CommandError
    from modelcut.training import TrainingError
    from partition.errors import PlacementError

    class StrangeError(Exception):
        pass
    for error in (ConfigError(["x"]), GraphError("x"), PlanError("x"), PlacementError("x"),
                  CommandError("x"), TrainingError("x")):
        assert is_package_error(error)
    assert not is_package_error(ValueError("x")) and not is_package_error(StrangeError())


def test_python_dash_m_modelcut_help():
    result = subprocess.run([sys.executable, "-m", "modelcut", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("commands:")[1]
    for command in COMMANDS:
        name = command.__name__.rsplit(".", 1)[-1]
        assert f"    {name} " in listed
