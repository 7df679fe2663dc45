"""modelcut.viz: values and gradients on the worked example, device colours and cut tensors,
grouped views, safe expression parsing, rendering with Graphviz."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from autodiff.ir import Graph, Node
from modelcut.viz import (VizError, annotate, expression_graph, graph_dot, grouped_dot,
                          parse_assignments, render)
from partition.cluster import uniform
from partition.metrics import compute_metrics

QUOTED = r'"(?:[^"\\]|\\.)*"'
NODE = re.compile(rf"^\s*({QUOTED})\s*\[(.*)\];\s*$")
EDGE = re.compile(rf"^\s*({QUOTED})\s*->\s*({QUOTED})\s*\[(.*)\];\s*$")
ATTR = re.compile(rf"(\w+)=({QUOTED}|<.*>|[^,\s\]]+)")


def _unquote(text: str) -> str:
    if text.startswith('"'):
        text = text[1:-1]
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_dot(text: str) -> tuple[dict[str, dict], list[tuple[str, str, dict]]]:
    """Node statements (name -> attrs) and edge statements (tail, head, attrs) of a DOT text."""
    nodes, edges = {}, []
    for line in text.splitlines():
        if m := EDGE.match(line):
            attrs = {k: _unquote(v) for k, v in ATTR.findall(m.group(3))}
            edges.append((_unquote(m.group(1)), _unquote(m.group(2)), attrs))
        elif m := NODE.match(line):
            nodes[_unquote(m.group(1))] = {k: _unquote(v) for k, v in ATTR.findall(m.group(2))}
    return nodes, edges


def label_field(attrs: dict, key: str) -> float | None:
    """The number after `key ` on one line of a node or edge label, e.g. 'value 3' -> 3.0."""
    for line in attrs.get("label", "").split("\n"):
        if line.startswith(key + " "):
            return float(line[len(key) + 1:])
    return None


# ------------------------------------------------------------------ worked example
def worked_example():
    at = parse_assignments("x=1,y=2,z=0")
    graph = expression_graph("(x + y) * maximum(y, z)", at)
    notes = annotate(graph, feeds={k: np.float64(v) for k, v in at.items()})
    return graph, parse_dot(graph_dot(graph, annotations=notes))


def test_worked_example_values_at_the_right_nodes():
    graph, (nodes, _) = worked_example()
    by_op = {graph[name].op: attrs for name, attrs in nodes.items()}
    assert label_field(by_op["add"], "value") == 3.0          # 1 + 2
    assert label_field(by_op["maximum"], "value") == 2.0      # max(2, 0)
    assert label_field(by_op["multiply"], "value") == 6.0     # 3 * 2
    assert {label_field(nodes[v], "value") for v in "xyz"} == {1.0, 2.0, 0.0}


def test_worked_example_gradients_reach_inputs_and_flow_back_along_edges():
    graph, (nodes, edges) = worked_example()
    # d/dx = max(y,z) = 2; d/dy = max(y,z) + (x+y)*[y>z] = 2 + 3 = 5; d/dz = (x+y)*[z>y] = 0
    assert label_field(nodes["x"], "grad") == 2.0
    assert label_field(nodes["y"], "grad") == 5.0
    assert label_field(nodes["z"], "grad") == 0.0
    grad_edges = {(tail, head): label_field(a, "grad") for tail, head, a in edges
                  if a.get("class") == "grad"}
    op_of = {name: graph[name].op for name in nodes}
    by_ops = {(op_of[tail], head): g for (tail, head), g in grad_edges.items()}
    # drawn from the consumer back to the input: upstream gradient x local derivative
    assert by_ops[("add", "x")] == 2.0        # d out/d add = 2, d add/dx = 1
    assert by_ops[("add", "y")] == 2.0
    assert by_ops[("maximum", "y")] == 3.0    # d out/d max = 3, d max/dy = 1 (y > z)
    assert by_ops[("maximum", "z")] == 0.0
    into_y = sum(g for (tail, head), g in grad_edges.items() if head == "y")
    assert into_y == label_field(nodes["y"], "grad")
    forward = {(t, h) for t, h, a in edges if a.get("class") != "grad"}
    assert {(h, t) for t, h in grad_edges} <= forward  # every gradient edge reverses a real edge
    grad_colours = {a["color"] for *_, a in edges if a.get("class") == "grad"}
    forward_colours = {a["color"] for *_, a in edges if a.get("class") != "grad"}
    assert len(grad_colours) == 1 and not grad_colours & forward_colours


def test_large_tensors_show_norms_not_values():
    rng = np.random.default_rng(0)
    at = {"x": 0.5}
    graph = expression_graph("exp(x) * x", at)
    notes = annotate(graph, feeds={"x": np.float64(0.5)})
    big = np.asarray(rng.normal(size=(3, 4)))
    notes.values["x"] = big
    nodes, _ = parse_dot(graph_dot(graph, annotations=notes))
    lines = nodes["x"]["label"].split("\n")
    norm = [line for line in lines if line.startswith("|value| ")]
    assert norm and abs(float(norm[0].split()[1]) - np.sqrt((big ** 2).sum())) < 1e-3 * np.sqrt(
        (big ** 2).sum())


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "x.__class__", "(lambda: 1)()", "open('f')",
    "x if y else z", "[x, y]", "exp(x, y=1)", "'a' * 3", "x < y",
])
def test_expression_parser_rejects_everything_but_arithmetic(text):
    with pytest.raises(VizError) as err:
        expression_graph(text, {"x": 1.0, "y": 2.0, "z": 3.0})
    assert repr(text) in str(err.value)


def test_expression_needs_every_value():
    with pytest.raises(VizError, match="--at w="):
        expression_graph("x * w", {"x": 1.0})
    with pytest.raises(VizError, match="not a number"):
        parse_assignments("x=1,y=two")


# ------------------------------------------------------------------ placements
def small_graph() -> Graph:
    def n(name, op, inputs=(), shape=(4, 8), group=None, flops=0):
        return Node(name, op, tuple(inputs), shape, "float32", {}, group, flops)
    nodes = [
        n("x", "input", group="embed"), n("w1", "param", shape=(8, 8), group="l1"),
        n("h1", "matmul", ("x", "w1"), group="l1", flops=512),
        n("a1", "relu", ("h1",), group="l1", flops=32),
        n("w2", "param", shape=(8, 8), group="l2"),
        n("h2", "matmul", ("a1", "w2"), group="l2", flops=512),
        n("s", "add", ("h2", "a1"), group="l2", flops=32),
        n("w3", "param", shape=(8, 2), group="head"),
        n("o", "matmul", ("s", "w3"), shape=(4, 2), group="head", flops=128),
        n("loss", "sum", ("o", "o"), shape=(), group="head", flops=8),
    ]
    return Graph(nodes, ["loss"], "small")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_placed_dot_colours_devices_and_marks_exactly_the_cut_tensors(seed):
    graph = small_graph()
    cluster = uniform(3)
    assignment = np.random.default_rng(seed).integers(0, 3, len(graph.nodes)).astype(np.int32)
    devices = cluster.device_names
    placement = {node.name: devices[d] for node, d in zip(graph.nodes, assignment)}
    nodes, edges = parse_dot(graph_dot(graph, placement=placement, devices=devices))

    assert set(nodes) == {node.name for node in graph.nodes}
    colour = {name: attrs["fillcolor"] for name, attrs in nodes.items()}
    for a in graph.nodes:                     # same colour exactly when on the same device
        for b in graph.nodes:
            assert (colour[a.name] == colour[b.name]) == (placement[a.name] == placement[b.name])

    # brute force remote(v) from SPEC section 2
    remote = {v.name: {placement[c] for c in graph.consumers(v.name)} - {placement[v.name]}
              for v in graph.nodes}
    cut = {v for v, r in remote.items() if r}
    bold = {name for name, attrs in nodes.items() if "bold" in attrs.get("style", "")}
    assert bold == cut
    metrics = compute_metrics(graph, assignment, cluster, top=len(graph.nodes))
    assert {name for name, _, _ in metrics.top_cut} == bold
    assert sum(graph[v].nbytes * len(remote[v]) for v in bold) == metrics.forward_volume
    bold_edges = {(t, h) for t, h, a in edges if "bold" in a.get("style", "")}
    assert bold_edges == {(x, v.name) for v in graph.nodes for x in v.inputs
                          if placement[x] != placement[v.name]}
    for t, h, attrs in edges:
        if (t, h) in bold_edges:
            assert attrs["label"].replace(" ", "") == f"{graph[t].nbytes}B"


def test_grouped_view_sums_flops_parameters_and_bytes_per_group():
    graph = small_graph()
    nodes, edges = parse_dot(grouped_dot(graph))
    labels = {attrs["label"].split("\n")[0]: attrs["label"] for attrs in nodes.values()}
    assert set(labels) == {"embed", "l1", "l2", "head"}
    assert "2 ops, 544 FLOP" in labels["l1"]       # h1 512 + a1 32 (the parameter w1 is no op)
    assert "64 parameters" in labels["l1"]
    assert "16 parameters" in labels["head"]
    name_of = {box: attrs["label"].split("\n")[0] for box, attrs in nodes.items()}
    traffic = {(name_of[t], name_of[h]): a["label"] for t, h, a in edges}
    # l1 -> l2 carries a1 once (read by h2 and s): 4*8*4 bytes
    assert traffic[("l1", "l2")].replace(" ", "") == "128B"
    assert traffic[("embed", "l1")].replace(" ", "") == "128B"


def test_grouped_view_splits_groups_by_device_and_bolds_cross_device_edges():
    graph = small_graph()
    devices = ("dev0", "dev1")
    placement = {v.name: ("dev0" if v.group in ("embed", "l1") else "dev1") for v in graph.nodes}
    nodes, edges = parse_dot(grouped_dot(graph, placement=placement, devices=devices))
    first = {box: a["label"].split("\n")[:2] for box, a in nodes.items()}
    assert sorted(tuple(v) for v in first.values()) == [
        ("embed", "dev0"), ("head", "dev1"), ("l1", "dev0"), ("l2", "dev1")]
    bold = {(first[t][0], first[h][0]) for t, h, a in edges if "bold" in a.get("style", "")}
    assert bold == {("l1", "l2")}


def test_too_many_nodes_says_to_group():
    graph = small_graph()
    with pytest.raises(VizError, match="--group"):
        graph_dot(graph, max_nodes=5)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_render_writes_svg_and_png(tmp_path):
    graph, _ = worked_example()
    at = {"x": np.float64(1), "y": np.float64(2), "z": np.float64(0)}
    dot = graph_dot(graph, annotations=annotate(graph, feeds=at))
    written = render(dot, tmp_path / "example")
    assert [p.suffix for p in written] == [".dot", ".svg", ".png"]
    assert (tmp_path / "example.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "example.svg").read_text()
    assert "<svg" in svg and "maximum" in svg and "grad 5" in svg
    small = small_graph()
    placement = {v.name: f"dev{i % 2}" for i, v in enumerate(small.nodes)}
    for cluster in ("device", "group"):            # both cluster styles are valid DOT
        render(graph_dot(small, placement=placement, cluster=cluster), tmp_path / cluster,
               formats=("svg",))
        assert "dev1" in (tmp_path / f"{cluster}.svg").read_text()
    render(grouped_dot(small, placement=placement), tmp_path / "grouped", formats=("svg",))
    assert "l2" in (tmp_path / "grouped.svg").read_text()


def test_render_without_graphviz_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VizError, match="apt-get install graphviz"):
        render("digraph g {}\n", tmp_path / "g")
    assert (tmp_path / "g.dot").exists()


# ------------------------------------------------------------------ the command
def test_viz_command_draws_the_worked_example(tmp_path, capsys):
    from modelcut.cli import main
    assert main(["viz", "--expr", "(x + y) * maximum(y, z)", "--at", "x=1,y=2,z=0",
                 "--out", str(tmp_path)]) == 0
    nodes, _ = parse_dot((tmp_path / "graph.dot").read_text())
    assert [label_field(nodes[v], "grad") for v in "xyz"] == [2.0, 5.0, 0.0]
    if shutil.which("dot"):
        assert (tmp_path / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (tmp_path / "graph.svg").read_text()


def test_viz_command_rejects_unsafe_expressions_with_status_2(tmp_path, capsys):
    from modelcut.cli import main
    assert main(["viz", "--expr", "__import__('os').getcwd()", "--out", str(tmp_path)]) == 2
    assert "is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "graph.dot").exists()


def test_viz_command_with_a_placement_file_and_a_config(tmp_path, capsys):
    import json
    from pathlib import Path
    from modelcut.cli import main
    from modelcut.config import load_config
    config = Path(__file__).resolve().parents[2] / "configs" / "mlp.yaml"
    graph = load_config(config).forward_graph()
    placement = {v.name: ("dev0" if i < len(graph.nodes) // 2 else "dev1")
                 for i, v in enumerate(graph.nodes)}
    (tmp_path / "placement.json").write_text(json.dumps(placement))
    assert main(["viz", str(config), "--placement", str(tmp_path / "placement.json"),
                 "--out", str(tmp_path / "out")]) == 0
    nodes, edges = parse_dot((tmp_path / "out" / "graph.dot").read_text())
    assert set(nodes) == set(placement)
    fills = {placement[name]: attrs["fillcolor"] for name, attrs in nodes.items()}
    assert len(set(fills.values())) == 2
    assert all(attrs["fillcolor"] == fills[placement[name]] for name, attrs in nodes.items())
    loss = graph.outputs[0]
    assert label_field(nodes[loss], "grad") == 1.0          # d loss / d loss
    assert any(a.get("class") == "grad" for *_, a in edges)  # gradients drawn on a real model


def test_viz_command_refuses_big_graphs_and_suggests_group(tmp_path, capsys):
    from pathlib import Path
    from modelcut.cli import main
    config = Path(__file__).resolve().parents[2] / "configs" / "gpt-small.yaml"
    assert main(["viz", str(config), "--max-nodes", "50", "--out", str(tmp_path)]) == 2
    assert "--group" in capsys.readouterr().err
    assert main(["viz", str(config), "--max-nodes", "50", "--group", "--out",
                 str(tmp_path)]) == 0
    nodes, _ = parse_dot((tmp_path / "graph.dot").read_text())
    assert 1 < len(nodes) <= 50
