"""autodiff.io's guards against hostile files: gzip expansion cap, JSON nesting, float flops
(SPEC section 1: any finite non-negative number), tensor and graph size bounds, known ops'
shape rules."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import autodiff.io as graph_io
from autodiff.io import check_graph_bounds, graph_to_dict, load_graph
from autodiff.ir import Graph, GraphError, Node


def tiny() -> Graph:
    nodes = [Node("x", "input", (), (4, 8)), Node("w", "param", (), (8, 8)),
             Node("h", "matmul", ("x", "w"), (4, 8)),
             Node("s", "sum", ("h",), (8,), attrs={"axis": 0, "note": "kept by a tool"})]
    return Graph(nodes, ["s"], "tiny")


def write_document(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


# ------------------------------------------------------------------------------- gzip
def test_gzip_members_are_all_read(tmp_path):
    """A file of several gzip members (as `cat a.gz b.gz` makes) inflates to their
    concatenation, the same as gzip.decompress."""
    text = json.dumps(graph_to_dict(tiny())).encode()
    half = len(text) // 2
    data = gzip.compress(text[:half]) + gzip.compress(text[half:])
    assert graph_io._gunzip(data, 10**6) == gzip.decompress(data) == text
    (tmp_path / "g.json.gz").write_bytes(data)
    assert [n.name for n in load_graph(tmp_path / "g.json.gz").nodes] == ["x", "w", "h", "s"]


def test_gzip_expansion_is_capped(tmp_path, monkeypatch):
    """Inflating stops at the cap: exactly the cap is read, one byte more is an error."""
    text = json.dumps(graph_to_dict(tiny())).encode()
    data = gzip.compress(text + b" " * 5000)
    assert graph_io._gunzip(data, len(text) + 5000) == text + b" " * 5000
    with pytest.raises(OverflowError):
        graph_io._gunzip(data, len(text) + 4999)
    monkeypatch.setattr(graph_io, "MAX_JSON_BYTES", len(text) + 4999)
    (tmp_path / "g.json.gz").write_bytes(data)
    with pytest.raises(GraphError, match=r"g.json.gz: inflates to more than"):
        load_graph(tmp_path / "g.json.gz")


def test_truncated_gzip_member(tmp_path):
    data = gzip.compress(b"[1, 2, 3]" * 1000)
    (tmp_path / "g.json.gz").write_bytes(data + data[:len(data) // 2])
    with pytest.raises(GraphError, match="corrupt or truncated gzip data"):
        load_graph(tmp_path / "g.json.gz")


# ----------------------------------------------------------------------- JSON, flops
def test_deep_json_is_a_graph_error(tmp_path):
    (tmp_path / "g.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(GraphError, match="nested too deeply"):
        load_graph(tmp_path / "g.json")


def test_float_flops_are_rounded_counts(tmp_path):
    document = graph_to_dict(tiny())
    document["nodes"][2]["flops"] = 2.17e13
    document["nodes"][3]["flops"] = 0.0
    graph = load_graph(write_document(tmp_path / "g.json", document))
    assert graph["h"].flops == 21_700_000_000_000 and type(graph["h"].flops) is int
    assert graph["s"].flops == 0 and graph.total_flops() == 21_700_000_000_000


def test_empty_graph_file_is_an_error(tmp_path):
    document = {"format": "modelcut.graph", "version": 1, "nodes": [], "outputs": []}
    with pytest.raises(GraphError, match="g.json: the graph has no nodes"):
        load_graph(write_document(tmp_path / "g.json", document))


# ----------------------------------------------------------------------------- bounds
def test_tensor_and_graph_bounds():
    """2^48 elements per tensor is allowed, one more is not; 2^60 bytes in all likewise."""
    check_graph_bounds(Graph([Node("p", "param", (), (2**24, 2**24), "int8")], ["p"]), "ok")
    with pytest.raises(GraphError, match=r"big: node 'p': shape \[16777217, 16777216\]"):
        check_graph_bounds(Graph([Node("p", "param", (), (2**24 + 1, 2**24), "int8")], ["p"]),
                           "big")
    at_limit = [Node(f"p{i}", "param", (), (2**48,), "int8") for i in range(2**12)]
    check_graph_bounds(Graph(at_limit, ["p0"]), "ok")
    over = at_limit + [Node("q", "param", (), (1,), "int8")]
    with pytest.raises(GraphError, match="more than 2\\^60"):
        check_graph_bounds(Graph(over, ["p0"]), "big")


# ------------------------------------------------------------------------ shape rules
def test_shapes_checked_against_rules_extra_attrs_ignored(tmp_path):
    """The registry's rule decides the shape: sum over axis 0 of [4, 8] is [8]; an attribute
    the rule does not know (a tool's note) does not matter; a wrong shape names the node."""
    document = graph_to_dict(tiny())
    assert len(load_graph(write_document(tmp_path / "ok.json", document))) == 4
    document["nodes"][3]["shape"] = [4]
    with pytest.raises(GraphError, match=r"node 's': declared shape \[4\], but sum of \[4, 8\] "
                                         r"gives \[8\]"):
        load_graph(write_document(tmp_path / "bad.json", document))
    document["nodes"][3].update(shape=[8], attrs={"axis": 5})
    with pytest.raises(GraphError, match=r"node 's': sum\(float32\[4, 8\]\) with attrs .*axis 5"):
        load_graph(write_document(tmp_path / "bad.json", document))


def test_opaque_ops_keep_their_declared_shape(tmp_path):
    document = graph_to_dict(tiny())
    document["nodes"][3].update(op="my_reduction", shape=[3, 3, 3])
    assert load_graph(write_document(tmp_path / "g.json", document))["s"].shape == (3, 3, 3)
