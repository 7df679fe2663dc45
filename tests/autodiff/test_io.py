"""autodiff.io: the modelcut.graph v1 reader/writer (SPEC section 1)."""
from __future__ import annotations

import copy
import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodiff.io import graph_from_dict, graph_to_dict, load_graph, save_graph
from autodiff.ir import ITEMSIZE, Graph, GraphError, Node

SPEC_EXAMPLE = {
    "format": "modelcut.graph",
    "version": 1,
    "name": "tiny-mlp",
    "nodes": [
        {"name": "x", "op": "input", "shape": [32, 784], "dtype": "float32"},
        {"name": "w1", "op": "param", "shape": [784, 256], "dtype": "float32"},
        {"name": "h", "op": "matmul", "inputs": ["x", "w1"], "shape": [32, 256],
         "dtype": "float32", "flops": 12845056, "group": "layer1"},
        {"name": "a", "op": "relu", "inputs": ["h"], "shape": [32, 256], "dtype": "float32"},
    ],
    "outputs": ["a"],
}


def node_fields(node: Node) -> tuple:
    attrs = {k: (("array", v.dtype.str, v.tolist()) if isinstance(v, np.ndarray) else v)
             for k, v in node.attrs.items()}
    return (node.name, node.op, node.inputs, node.shape, node.dtype, attrs, node.group,
            node.flops, node.grad_of)


def assert_same_graph(a: Graph, b: Graph) -> None:
    assert a.name == b.name and a.outputs == b.outputs
    assert [node_fields(n) for n in a.nodes] == [node_fields(n) for n in b.nodes]


def write_json(path, document) -> None:
    path.write_text(json.dumps(document))


# ------------------------------------------------------------------------------ reading
def test_reads_the_spec_example(tmp_path):
    path = tmp_path / "tiny.json"
    write_json(path, SPEC_EXAMPLE)
    g = load_graph(path)
    assert g.name == "tiny-mlp" and g.outputs == ["a"]
    assert [n.name for n in g.nodes] == ["x", "w1", "h", "a"]
    h = g["h"]
    assert (h.op, h.inputs, h.shape, h.dtype, h.flops, h.group) == (
        "matmul", ("x", "w1"), (32, 256), "float32", 32 * 256 * 784 * 2, "layer1")
    assert g["a"].flops is None and g["a"].group is None and g["a"].attrs == {}
    assert g["x"].inputs == () and g["w1"].op == "param"
    assert g["a"].nbytes == 32 * 256 * 4


def test_gzip_is_detected_by_content(tmp_path):
    path = tmp_path / "tiny.json"  # gzip data under a plain name still reads
    path.write_bytes(gzip.compress(json.dumps(SPEC_EXAMPLE).encode()))
    assert [n.name for n in load_graph(path).nodes] == ["x", "w1", "h", "a"]


def test_same_input_twice_is_allowed():
    doc = copy.deepcopy(SPEC_EXAMPLE)
    doc["nodes"].append({"name": "sq", "op": "multiply", "inputs": ["a", "a"],
                         "shape": [32, 256], "dtype": "float32"})
    g = graph_from_dict(doc)
    assert g["sq"].inputs == ("a", "a") and g.consumers("a") == ["sq"]


# ------------------------------------------------------------------------------ writing
def rich_graph() -> Graph:
    """A graph exercising every optional field and attribute kind the format stores."""
    nodes = [
        Node("x", "input", (), (4, 3), "float32"),
        Node("w", "param", (), (3, 2), "float64", group="dense"),
        Node("c", "const", (), (2, 2), "float32",
             attrs={"value": np.array([[0.1, -2.5], [3.0, 1e-7]], dtype=np.float32)}),
        Node("idx", "const", (), (3,), "int64", attrs={"value": np.array([2, 0, 1])}),
        Node("mask", "const", (), (2,), "bool", attrs={"value": np.array([True, False])}),
        Node("half", "const", (), (), "bfloat16", attrs={"value": np.array(1.5, np.float32)}),
        Node("zeros", "const", (), (5,), "float32", attrs={"fill": 0.0}),
        Node("h", "matmul", ("x", "w"), (4, 2), "float64", group="dense", flops=48),
        Node("t", "transpose", ("h",), (2, 4), "float64", attrs={"axes": [1, 0]}),
        Node("s", "getitem", ("t",), (2, 2), "float64",
             attrs={"index": [["slice", None, None, None], ["slice", 1, 4, 2]]}),
        Node("r", "sum", ("s",), (), "float64",
             attrs={"axis": None, "keepdims": False, "opts": {"a": 1, "b": [1.5, "x", [True]]},
                    "tag": "ü-name", "eps": 1e-5, "big": 2**62,
                    "tricky": '}, {"name": "x"}', "named": [{"name": 1}, {"name": 2}]}),
        Node("g", "multiply", ("r", "r"), (), "float64", flops=1, grad_of="r"),
    ]
    return Graph(nodes, ["r", "g"], "rich")


@pytest.mark.parametrize("filename", ["g.json", "g.json.gz"])
def test_round_trip_is_exact(tmp_path, filename):
    g = rich_graph()
    path = tmp_path / filename
    save_graph(g, path)
    back = load_graph(path)
    assert_same_graph(g, back)
    # const values come back as arrays of the node's dtype (bfloat16 held as float32)
    assert back["c"].attrs["value"].dtype == np.float32
    assert back["idx"].attrs["value"].dtype == np.int64
    assert back["mask"].attrs["value"].dtype == np.bool_
    assert back["half"].attrs["value"].dtype == np.float32 and back["half"].attrs["value"] == 1.5
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == filename.endswith(".gz")


def test_writer_omits_unset_optional_fields(tmp_path):
    path = tmp_path / "g.json"
    save_graph(graph_from_dict(SPEC_EXAMPLE), path)
    written = json.loads(path.read_text())
    assert written == SPEC_EXAMPLE  # the example has exactly the fields that are set
    rich = json.loads(json.dumps(graph_to_dict(rich_graph())))
    by_name = {d["name"]: d for d in rich["nodes"]}
    assert set(by_name["x"]) == {"name", "op", "shape", "dtype"}
    assert by_name["g"]["grad_of"] == "r" and "grad_of" not in by_name["h"]
    assert by_name["c"]["attrs"]["value"] == [[np.float32(0.1).item(), -2.5],
                                              [3.0, np.float32(1e-7).item()]]
    assert by_name["s"]["attrs"]["index"] == [["slice", None, None, None], ["slice", 1, 4, 2]]


def test_tuples_and_numpy_scalars_become_json_lists_and_numbers():
    g = Graph([Node("x", "input", (), (2, 3), attrs={"axes": (1, 0), "k": np.int64(3),
                                                    "v": np.arange(3)})], ["x"], "t")
    back = graph_from_dict(json.loads(json.dumps(graph_to_dict(g))))
    assert back["x"].attrs == {"axes": [1, 0], "k": 3, "v": [0, 1, 2]}
    assert type(back["x"].attrs["k"]) is int


def test_reading_does_not_modify_the_document():
    doc = copy.deepcopy(SPEC_EXAMPLE)
    doc["nodes"].append({"name": "k", "op": "const", "shape": [2], "dtype": "float32",
                         "attrs": {"value": [1.0, 2.0]}})
    before = copy.deepcopy(doc)
    g = graph_from_dict(doc)
    assert doc == before and isinstance(g["k"].attrs["value"], np.ndarray)


def test_writer_rejects_values_json_cannot_hold(tmp_path):
    g = Graph([Node("x", "input", (), (1,), attrs={"fn": object()})], ["x"], "bad")
    with pytest.raises(GraphError, match=r"node 'x': attribute 'fn' holds a object"):
        save_graph(g, tmp_path / "bad.json")
    g = Graph([Node("x", "input", (), (1,), attrs={"i": slice(1, 2)})], ["x"], "bad")
    with pytest.raises(GraphError, match=r"attribute 'i' holds a slice"):
        graph_to_dict(g)
    g = Graph([Node("x", "input", (), (1,), attrs={"map": {1: 2}})], ["x"], "bad")
    with pytest.raises(GraphError, match=r"attribute 'map' has a non-string key 1"):
        graph_to_dict(g)
    assert not list(tmp_path.iterdir())  # nothing half-written


names = st.text(alphabet="abcdefgh_0123456789", min_size=1, max_size=6)


@st.composite
def random_graphs(draw):
    n = draw(st.integers(1, 12))
    node_names = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    nodes = []
    for i, name in enumerate(node_names):
        earlier = node_names[:i]
        # an opaque op: random shapes would break a known op's shape rule, checked on load
        op = "param" if not earlier or draw(st.booleans()) and i % 3 == 0 else "custom_add"
        inputs = () if op == "param" else tuple(draw(st.lists(st.sampled_from(earlier),
                                                              min_size=1, max_size=3)))
        nodes.append(Node(
            name, op, inputs,
            tuple(draw(st.lists(st.integers(0, 9), max_size=3))),
            draw(st.sampled_from(sorted(ITEMSIZE))),
            draw(st.dictionaries(st.sampled_from(["axis", "k", "p"]),
                                 st.one_of(st.none(), st.integers(-5, 5), st.booleans(),
                                           st.text(max_size=3),
                                           st.lists(st.integers(0, 3), max_size=3)),
                                 max_size=2)),
            draw(st.one_of(st.none(), names)),
            draw(st.one_of(st.none(), st.integers(0, 10**15))),
            draw(st.one_of(st.none(), st.sampled_from(earlier))) if earlier else None,
        ))
    outputs = draw(st.lists(st.sampled_from(node_names), min_size=1, max_size=2))
    return Graph(nodes, outputs, draw(names))


@settings(max_examples=40, deadline=None)
@given(random_graphs())
def test_round_trip_random_graphs(g):
    back = graph_from_dict(json.loads(json.dumps(graph_to_dict(g))))
    assert_same_graph(g, back)


def test_larger_graph_round_trip(tmp_path):
    nodes = [Node("x", "input", (), (8, 16))]
    for i in range(5000):
        nodes.append(Node(f"w{i}", "param", (), (16, 16), group=f"l{i}"))
        nodes.append(Node(f"h{i}", "matmul", (nodes[-2].name, f"w{i}"), (8, 16),
                          flops=2 * 8 * 16 * 16, group=f"l{i}"))
    g = Graph(nodes, [nodes[-1].name], "chain")
    save_graph(g, tmp_path / "chain.json.gz")
    assert_same_graph(g, load_graph(tmp_path / "chain.json.gz"))


# ------------------------------------------------------------------------------ errors
def mutate(fn):
    doc = copy.deepcopy(SPEC_EXAMPLE)
    fn(doc)
    return doc


def node(doc, name):
    return next(d for d in doc["nodes"] if d.get("name") == name)


BAD_DOCUMENTS = [
    # (id, mutation, node named in the message or None, rule text)
    ("forward-reference", lambda d: node(d, "h").update(inputs=["x", "a"]), "h",
     "input 'a' is defined later"),
    ("missing-input", lambda d: node(d, "h").update(inputs=["x", "zz"]), "h",
     "input 'zz' does not exist"),
    ("self-reference", lambda d: node(d, "a").update(inputs=["a"]), "a", "refers to itself"),
    ("duplicate-name", lambda d: node(d, "a").update(name="h"), "h", "duplicate name"),
    ("unknown-dtype", lambda d: node(d, "h").update(dtype="float8"), "h", "unknown dtype"),
    ("negative-dimension", lambda d: node(d, "w1").update(shape=[784, -1]), "w1",
     "not a non-negative integer"),
    ("float-dimension", lambda d: node(d, "w1").update(shape=[784, 2.5]), "w1",
     "not a non-negative integer"),
    ("shape-not-list", lambda d: node(d, "w1").update(shape="784"), "w1",
     "'shape' must be a list"),
    ("missing-field", lambda d: node(d, "a").pop("dtype"), "a",
     "missing required field(s) ['dtype']"),
    ("unknown-field", lambda d: node(d, "h").update(flop=3), "h", "unknown field(s) ['flop']"),
    ("input-of-source", lambda d: node(d, "w1").update(inputs=["x"]), "w1",
     "source op 'param' must have no inputs"),
    ("inputs-not-list", lambda d: node(d, "a").update(inputs="h"), "a",
     "'inputs' must be a list of node names"),
    ("input-not-string", lambda d: node(d, "a").update(inputs=[3]), "a",
     "'inputs' must be a list of node names"),
    ("string-flops", lambda d: node(d, "h").update(flops="1e9"), "h",
     "flops must be a finite non-negative number"),
    ("boolean-flops", lambda d: node(d, "h").update(flops=True), "h",
     "flops must be a finite non-negative number"),
    ("negative-flops", lambda d: node(d, "h").update(flops=-4), "h",
     "flops must be a finite non-negative number"),
    ("negative-float-flops", lambda d: node(d, "h").update(flops=-0.5), "h",
     "flops must be a finite non-negative number"),
    ("nan-flops", lambda d: node(d, "h").update(flops=float("nan")), "h",
     "flops must be a finite non-negative number"),
    ("infinite-flops", lambda d: node(d, "h").update(flops=float("inf")), "h",
     "flops must be a finite non-negative number"),
    ("huge-flops", lambda d: node(d, "h").update(flops=10**400), "h",
     "flops must be a finite non-negative number at most 1e24"),
    ("huge-dimension", lambda d: node(d, "w1").update(shape=[2**62, 8]), "w1",
     "more than 2^48 elements"),
    ("matmul-shape", lambda d: node(d, "h").update(shape=[32, 257]), "h",
     "declared shape [32, 257], but matmul of [32, 784] and [784, 256] gives [32, 256]"),
    ("relu-shape", lambda d: node(d, "a").update(shape=[32]), "a",
     "declared shape [32], but relu of [32, 256] gives [32, 256]"),
    ("matmul-operands", lambda d: node(d, "w1").update(shape=[783, 256]), "h",
     "breaks the op's shape rule"),
    ("group-not-string", lambda d: node(d, "h").update(group=1), "h", "'group' must be a string"),
    ("attrs-not-object", lambda d: node(d, "h").update(attrs=[1]), "h",
     "'attrs' must be a JSON object"),
    ("bad-grad-of", lambda d: node(d, "a").update(grad_of="nope"), "a",
     "grad_of 'nope' names no earlier node"),
    ("node-not-object", lambda d: d["nodes"].append(["y", "relu"]), None,
     "node #4: expected a JSON object"),
    ("empty-name", lambda d: node(d, "a").update(name=""), None, "name must be a non-empty"),
    ("bad-format", lambda d: d.update(format="onnx"), None, "not a modelcut.graph file"),
    ("bad-version", lambda d: d.update(version=2), None, "unsupported modelcut.graph version 2"),
    ("missing-version", lambda d: d.pop("version"), None, "unsupported modelcut.graph version"),
    ("unknown-top-field", lambda d: d.update(extra=1), None, "unknown top-level field(s)"),
    ("nodes-not-list", lambda d: d.update(nodes={}), None, "field 'nodes' must be a list"),
    ("output-names-no-node", lambda d: d.update(outputs=["loss"]), None,
     "output 'loss' names no node"),
    ("output-not-string", lambda d: d.update(outputs=[1]), None, "outputs must be node names"),
    ("const-bad-shape", lambda d: d["nodes"].append(
        {"name": "k", "op": "const", "shape": [3], "dtype": "float32",
         "attrs": {"value": [1.0, 2.0]}}), "k", "const value has shape [2]"),
    ("const-bad-kind", lambda d: d["nodes"].append(
        {"name": "k", "op": "const", "shape": [2], "dtype": "int32",
         "attrs": {"value": [1.5, 2.0]}}), "k", "does not fit dtype int32"),
    ("const-ragged", lambda d: d["nodes"].append(
        {"name": "k", "op": "const", "shape": [2], "dtype": "int32",
         "attrs": {"value": [[1], [2, 3]]}}), "k", "not a rectangular array"),
]


@pytest.mark.parametrize("mutation,culprit,rule", [c[1:] for c in BAD_DOCUMENTS],
                         ids=[c[0] for c in BAD_DOCUMENTS])
def test_bad_files_are_rejected_with_file_node_and_rule(tmp_path, mutation, culprit, rule):
    path = tmp_path / "bad.json"
    write_json(path, mutate(mutation))
    with pytest.raises(GraphError) as info:
        load_graph(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert rule in message
    if culprit is not None:
        assert repr(culprit) in message


def test_unreadable_files(tmp_path):
    with pytest.raises(GraphError, match="cannot read the file"):
        load_graph(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"format": "modelcut.graph",\n "version": }')
    with pytest.raises(GraphError, match=r"broken.json: not valid JSON: .* line 2 column 13"):
        load_graph(tmp_path / "broken.json")
    (tmp_path / "trunc.json.gz").write_bytes(gzip.compress(b'{"a": 1}')[:12])
    with pytest.raises(GraphError, match="trunc.json.gz"):
        load_graph(tmp_path / "trunc.json.gz")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(GraphError, match="expected a JSON object"):
        load_graph(tmp_path / "list.json")


def test_strings_are_data_never_code(tmp_path):
    doc = mutate(lambda d: node(d, "a").update(attrs={"init": "__import__('os').system('x')"}))
    write_json(tmp_path / "g.json", doc)
    assert load_graph(tmp_path / "g.json")["a"].attrs["init"] == "__import__('os').system('x')"


def test_state_updates_survive_a_round_trip(tmp_path):
    # resnet's batch-norm running averages are consts whose new values the graph computes;
    # the mapping travels in attrs and comes back as graph.meta["updates"].
    from autodiff.models import BUILDERS
    graph = BUILDERS["resnet"](channels=[4], blocks=1, image=4, in_channels=1, classes=2,
                               batch=2, dtype="float64")
    assert graph.meta["updates"]
    path = tmp_path / "resnet.json"
    save_graph(graph, path)
    back = load_graph(path)
    assert back.meta["updates"] == graph.meta["updates"]
    assert all("update_from" not in n.attrs for n in back.nodes)
