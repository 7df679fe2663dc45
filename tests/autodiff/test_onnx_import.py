"""autodiff.onnx_import: small ONNX models built with onnx.helper, checked against hand counts
and, where every op maps to the registry, against onnx's own reference evaluator."""
from __future__ import annotations

import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from autodiff.interpreter import evaluate  # noqa: E402
from autodiff.io import graph_from_dict, graph_to_dict  # noqa: E402
from autodiff.ir import GraphError  # noqa: E402
from autodiff.onnx_import import OnnxImportError, import_onnx, load_onnx  # noqa: E402
from autodiff.ops.registry import registry  # noqa: E402

RNG = np.random.default_rng(0)
F32 = TensorProto.FLOAT


def init(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def make_model(nodes, inputs, outputs, initializers, opset=17, name="g"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mlp_model(batch=8):
    """x[8,20] -> Gemm(W1[16,20], b1, transB) -> Relu -> MatMul(W2[16,4]) -> Add(b2) -> Softmax."""
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="/fc1/Gemm", transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="/act/Relu"),
        helper.make_node("MatMul", ["a", "W2"], ["m"], name="/fc2/MatMul"),
        helper.make_node("Add", ["m", "b2"], ["logits"], name="/fc2/Add"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="/Softmax", axis=-1),
    ]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", F32, [batch, 20])],
        [helper.make_tensor_value_info("probs", F32, [batch, 4])],
        [init("W1", [16, 20]), init("b1", [16]), init("W2", [16, 4]), init("b2", [4])])


def conv_model(grouped: bool):
    """x[2,3,8,8] -> Conv(3x3, pad 1, bias) -> Relu -> MaxPool(2) -> [grouped Conv] -> GAP
    -> Flatten -> Gemm(W3[4,10], b3)."""
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="/conv1/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/pool/MaxPool", kernel_shape=[2, 2],
                         strides=[2, 2]),
    ]
    inits = [init("W1", [4, 3, 3, 3]), init("B1", [4]), init("W3", [4, 10]), init("b3", [10])]
    last = "p1"
    if grouped:
        nodes.append(helper.make_node("Conv", ["p1", "W2"], ["c2"], name="/conv2/Conv",
                                      kernel_shape=[3, 3], group=2))
        inits.append(init("W2", [4, 2, 3, 3]))
        last = "c2"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["gap"], name="/gap/GlobalAveragePool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="/Flatten"),
        helper.make_node("Gemm", ["flat", "W3", "b3"], ["out"], name="/head/Gemm"),
    ]
    return make_model(nodes, [helper.make_tensor_value_info("x", F32, [2, 3, 8, 8])],
                      [helper.make_tensor_value_info("out", F32, [2, 10])], inits)


def run_both(model, graph, feeds):
    """Outputs of onnx's reference evaluator and of our interpreter on the imported graph."""
    expected = ReferenceEvaluator(model).run(None, feeds)
    params = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name in graph and graph[t.name].op == "param"}
    ours = evaluate(graph, feeds=feeds, params=params)
    return expected, [ours[o] for o in graph.outputs]


def assert_registry_shapes(graph):
    """Every mapped (registry) node's shape rule reproduces the shape ONNX inferred."""
    rules = registry()
    for node in graph.nodes:
        if node.op in rules and not node.is_source:
            shape, dtype = rules[node.op].shape([graph[i].shape for i in node.inputs],
                                                [graph[i].dtype for i in node.inputs],
                                                **node.attrs)
            assert (tuple(shape), dtype) == (node.shape, node.dtype), node.describe()


# ------------------------------------------------------------------------------------ MLP
def test_mlp_nodes_shapes_and_flops(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), str(path))
    g = load_onnx(path)
    # 5 sources + Gemm (transpose of W1, matmul, add) + relu + matmul + add + softmax
    assert len(g) == 12
    assert g.outputs == ["probs"] and g.name == "mlp"   # named after the file
    assert [n.name for n in g.inputs] == ["x"]
    assert sorted(n.name for n in g.params) == ["W1", "W2", "b1", "b2"]
    gemm_nodes = [n for n in g.nodes if n.group == "fc1" and not n.is_source]
    assert [n.op for n in gemm_nodes] == ["transpose", "matmul", "add"]
    transpose, matmul, add = gemm_nodes
    assert transpose.inputs == ("W1",) and transpose.shape == (20, 16)
    assert matmul.shape == (8, 16) and matmul.flops == 2 * 8 * 16 * 20
    assert add.name == "h" and add.inputs == (matmul.name, "b1") and add.flops == 8 * 16
    assert (g["a"].op, g["a"].flops) == ("relu", 8 * 16)
    assert (g["m"].op, g["m"].shape, g["m"].flops) == ("matmul", (8, 4), 2 * 8 * 4 * 16)
    assert (g["logits"].op, g["logits"].flops) == ("add", 32)
    assert (g["probs"].op, g["probs"].attrs) == ("softmax", {"axis": -1})
    assert g["W1"].group == "fc1" and g["b2"].group == "fc2"  # sources join their layer
    assert g["W1"].nbytes == 16 * 20 * 4
    assert_registry_shapes(g)


def test_mlp_matches_onnx_reference_evaluator():
    model = mlp_model()
    g = load_onnx(model)
    x = RNG.standard_normal((8, 20)).astype(np.float32)
    (expected,), (ours,) = run_both(model, g, {"x": x})
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_gemm_with_alpha_beta_and_transposed_a():
    nodes = [helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.5, beta=2.0, transA=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("a", F32, [5, 3]),
                               helper.make_tensor_value_info("b", F32, [5, 4]),
                               helper.make_tensor_value_info("c", F32, [1, 4])],
                       [helper.make_tensor_value_info("y", F32, [3, 4])], [])
    g = load_onnx(model)
    ops = [n.op for n in g.nodes if not n.is_source]
    assert ops == ["transpose", "matmul", "multiply", "multiply", "add"]
    assert sum(n.flops for n in g.nodes if n.op == "matmul") == 2 * 3 * 4 * 5
    feeds = {k: RNG.standard_normal(s).astype(np.float32)
             for k, s in (("a", (5, 3)), ("b", (5, 4)), ("c", (1, 4)))}
    (expected,), (ours,) = run_both(model, g, feeds)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_symbolic_batch_needs_dims():
    model = mlp_model(batch="batch")
    with pytest.raises(OnnxImportError, match=r"tensor 'x' .*symbolic dimension 'batch'.*dims="):
        load_onnx(model)
    g = load_onnx(model, dims={"batch": 3})
    assert g["x"].shape == (3, 20) and g["probs"].shape == (3, 4)
    assert g["m"].flops == 2 * 3 * 4 * 16


# ------------------------------------------------------------------------------ conv net
def test_conv_net_nodes_shapes_and_flops():
    g = load_onnx(conv_model(grouped=True))
    # 6 sources + conv1 (conv2d, bias reshape, add) + relu + maxpool + grouped conv
    # + GAP (mean) + flatten (reshape) + Gemm (matmul, add)
    assert len(g) == 16
    conv1 = [n for n in g.nodes if n.op == "conv2d"]
    assert len(conv1) == 1 and conv1[0].shape == (2, 4, 8, 8)
    assert conv1[0].attrs == {"stride": 1, "padding": 1}
    assert conv1[0].flops == 2 * (2 * 4 * 8 * 8) * 3 * 3 * 3
    assert g["c1"].op == "add" and g["c1"].flops == 2 * 4 * 8 * 8
    bias = g[g["c1"].inputs[1]]
    assert (bias.op, bias.inputs, bias.shape) == ("reshape", ("B1",), (4, 1, 1))
    assert (g["p1"].op, g["p1"].shape, g["p1"].flops) == ("max_pool2d", (2, 4, 4, 4),
                                                          (2 * 4 * 4 * 4) * 2 * 2)
    assert g["p1"].attrs == {"kernel": 2, "stride": 2, "padding": 0}
    c2 = g["c2"]  # group=2: grouped_conv2d
    assert c2.op == "grouped_conv2d" and c2.shape == (2, 4, 2, 2)
    assert c2.attrs == {"stride": 1, "padding": 0, "groups": 2}
    assert c2.flops == 2 * (2 * 4 * 2 * 2) * (4 // 2) * 3 * 3
    assert (g["gap"].op, g["gap"].shape, g["gap"].flops) == ("mean", (2, 4, 1, 1), 2 * 4 * 2 * 2)
    assert (g["flat"].op, g["flat"].attrs) == ("reshape", {"shape": [2, 4]})
    head = [n for n in g.nodes if n.group == "head" and not n.is_source]
    assert [(n.op, n.flops) for n in head] == [("matmul", 2 * 2 * 10 * 4), ("add", 2 * 10)]
    assert g["W2"].group == "conv2"
    assert_registry_shapes(g)


def test_conv_net_matches_onnx_reference_evaluator():
    model = conv_model(grouped=False)
    g = load_onnx(model)
    assert all(n.op in registry() or n.is_source for n in g.nodes)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (expected,), (ours,) = run_both(model, g, {"x": x})
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------- mapping details
def test_multi_output_node_becomes_one_node_per_output():
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="/split/Split", axis=1),
             helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Tanh", ["b"], ["tb"])]
    sizes = numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "sizes")
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [4, 6])],
                       [helper.make_tensor_value_info("ra", F32, [4, 2]),
                        helper.make_tensor_value_info("tb", F32, [4, 4])], [sizes])
    g = load_onnx(model)
    assert (g["a"].op, g["a"].shape, g["a"].attrs["output"]) == ("split", (4, 2), 0)
    assert (g["b"].op, g["b"].shape, g["b"].attrs["output"]) == ("split", (4, 4), 1)
    assert g["a"].inputs == g["b"].inputs == ("x", "sizes")
    assert g["sizes"].op == "const" and g["sizes"].attrs["value"].tolist() == [2, 4]
    assert len(g) == 6


def test_aliases_folding_and_dead_shape_computations():
    """Identity is an alias, Shape a const; Reshape drops its shape operand, so the Shape ->
    Concat chain feeding it is removed; Max is a chain of maximum; int Div stays opaque."""
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("Shape", ["xi"], ["s"]),
        helper.make_node("Concat", ["s", "one"], ["s2"], axis=0),
        helper.make_node("Reshape", ["xi", "s2"], ["r"]),
        helper.make_node("Max", ["r", "r", "r"], ["mx"]),
        helper.make_node("Mean", ["mx", "r"], ["mean"]),
        helper.make_node("Div", ["k", "k"], ["kd"]),
        helper.make_node("Cast", ["kd"], ["kf"], to=F32),
        helper.make_node("Add", ["mean", "kf"], ["y"]),
    ]
    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "one")
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [2, 3]),
                               helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                       [helper.make_tensor_value_info("y", F32, [2, 3, 1])], [one])
    g = load_onnx(model)
    assert "xi" not in g and "s" not in g and "s2" not in g and "one" not in g
    assert (g["r"].op, g["r"].inputs, g["r"].attrs) == ("reshape", ("x",), {"shape": [2, 3, 1]})
    maxima = [n for n in g.nodes if n.op == "maximum"]
    assert len(maxima) == 2 and maxima[-1].name == "mx"
    assert [m.flops for m in maxima] == [6, 6]
    assert g["mean"].op == "onnx.mean"  # `mean` is the registry's reduction: no collision
    assert g["mean"].flops == 6
    assert (g["kd"].op, g["kd"].dtype) == ("div", "int64")  # integer Div is not numpy divide
    assert (g["kf"].op, g["kf"].attrs) == ("astype", {"dtype": "float32"})
    assert len(g) == 9  # x, k, r, two maximum, mean, kd, kf, y


def test_imported_graph_round_trips_through_the_file_format():
    g = load_onnx(conv_model(grouped=True))
    back = graph_from_dict(graph_to_dict(g))
    assert [n.describe() for n in back.nodes] == [n.describe() for n in g.nodes]
    assert [n.flops for n in back.nodes] == [n.flops for n in g.nodes]


def test_errors_name_the_problem(tmp_path, monkeypatch):
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(OnnxImportError, match="junk.onnx: cannot read an ONNX model"):
        load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(OnnxImportError, match="expected a path or onnx.ModelProto"):
        load_onnx(42)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the optional extra were absent
    with pytest.raises(GraphError, match=r"pip install modelcut\[onnx\]"):
        load_onnx(tmp_path / "junk.onnx")


# ------------------------------------------------------------------ fidelity (issue 16)
def scoped(node, path):
    """`node` with torch's exporter metadata naming the module path that made it."""
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(["", path, "node_x"])
    return node


def test_groups_from_metadata_and_readable_names_for_generated_tensors(tmp_path):
    nodes = [scoped(helper.make_node("MatMul", ["x", "encoder.fc.weight"], ["val_3"],
                                     name="node_MatMul_0"), "encoder.fc"),
             scoped(helper.make_node("Relu", ["val_3"], ["val_4"], name="node_Relu_1"),
                    "encoder.act")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [2, 3])],
                       [helper.make_tensor_value_info("val_4", F32, [2, 4])],
                       [init("encoder.fc.weight", [3, 4])], name="main_graph")
    path = tmp_path / "encoder.onnx"
    onnx.save(model, str(path))
    g = load_onnx(path)
    assert g.name == "encoder"
    assert [(n.name, n.group) for n in g.nodes if not n.is_source] == [
        ("encoder.fc.matmul", "encoder.fc"), ("encoder.act.relu", "encoder.act")]
    assert g.outputs == ["encoder.act.relu"] and g["encoder.fc.weight"].group == "encoder.fc"


def test_trainable_initializers_and_merged_norm_parameters():
    """Folded constants (a mask, a scale) are consts; a folded transposed weight read by a
    MatMul is a param; one gamma merged by the exporter for two LayerNorms is two params."""
    ln = [scoped(helper.make_node("LayerNormalization", [src, "ones", "zeros"], [dst],
                                  axis=-1), path)
          for src, dst, path in (("x", "n1", "block0.ln"), ("m", "n2", "block1.ln"))]
    nodes = [ln[0], helper.make_node("MatMul", ["n1", "onnx::MatMul_7"], ["h"]),
             helper.make_node("Add", ["h", "val_9"], ["hm"]),
             helper.make_node("Mul", ["hm", "_tensor_constant0"], ["m"]), ln[1]]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "ones"),
             numpy_helper.from_array(np.zeros(4, np.float32), "zeros"),
             init("onnx::MatMul_7", [4, 4]), init("val_9", [2, 4]),
             numpy_helper.from_array(np.array(0.5, np.float32), "_tensor_constant0")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [2, 4])],
                       [helper.make_tensor_value_info("n2", F32, [2, 4])], inits)
    im = import_onnx(model)
    g = im.graph
    assert sorted(n.name for n in g.params) == ["block1.ln.bias", "block1.ln.weight", "ones",
                                                "onnx::MatMul_7", "zeros"]
    assert g["val_9"].op == "const" and g["_tensor_constant0"].op == "const"
    np.testing.assert_array_equal(im.params["block1.ln.weight"], np.ones(4))
    assert g["n2"].inputs[1:] == ("block1.ln.weight", "block1.ln.bias")
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
    ours = evaluate(g, feeds={"x": x}, params=im.params)[g.outputs[0]]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_flops_of_data_movement_norms_softmax_and_lstm():
    h, seq, batch, width = 5, 3, 2, 4
    nodes = [helper.make_node("Concat", ["x", "x"], ["c"], axis=1),
             helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["n"], axis=-1),
             helper.make_node("Softmax", ["n"], ["p"], axis=-1),
             helper.make_node("Gather", ["p", "idx"], ["gt"], axis=0),
             helper.make_node("LSTM", ["seq", "W", "R", "B"], ["y", "yh"], hidden_size=h)]
    ints = lambda v, n: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    inits = [ints([0], "starts"), ints([6], "ends"), ints([1], "axes"), init("g", [6]),
             init("b", [6]), ints([1, 0], "idx"), init("W", [1, 4 * h, width]),
             init("R", [1, 4 * h, h]), init("B", [1, 8 * h])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [3, 4]),
                               helper.make_tensor_value_info("seq", F32, [seq, batch, width])],
                       [helper.make_tensor_value_info("gt", F32, [2, 6]),
                        helper.make_tensor_value_info("yh", F32, [1, batch, h])], inits)
    g = load_onnx(model)
    assert (g["c"].flops, g["s"].flops) == (24, 18)
    assert g["n"].flops == 8 * 18 and g["p"].flops == 4 * 18 and g["gt"].flops == 12
    lstm = 2 * batch * 4 * h * (width + h) + 10 * batch * h
    assert "y" not in g   # only Y_h is read: the LSTM's work counts there
    assert g["yh"].op == "lstm" and g["yh"].flops == seq * lstm


@pytest.mark.parametrize("op_type, attrs, mapped", [
    ("Gelu", {}, "gelu_erf"), ("Gelu", {"approximate": "tanh"}, "gelu"),
    ("HardSwish", {}, "hardswish"), ("HardSigmoid", {"alpha": 1 / 6}, "hardsigmoid"),
    ("Reciprocal", {}, "reciprocal"), ("Erf", {}, "erf"), ("IsNaN", {}, "logical_not"),
])
def test_formerly_opaque_unary_ops_match_the_reference(op_type, attrs, mapped):
    out_type = TensorProto.BOOL if op_type == "IsNaN" else F32
    model = make_model([helper.make_node(op_type, ["x"], ["y"], **attrs)],
                       [helper.make_tensor_value_info("x", F32, [3, 4])],
                       [helper.make_tensor_value_info("y", out_type, [3, 4])], [], opset=20)
    g = load_onnx(model)
    assert g["y"].op == mapped and g["y"].flops > 0
    x = (RNG.standard_normal((3, 4)) * 3).astype(np.float32)
    x[0, 0] = np.nan if op_type == "IsNaN" else x[0, 0]
    (expected,), (ours,) = run_both(model, g, {"x": x})
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_clip_castlike_grouped_conv_and_training_batch_norm_match_the_reference():
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], group=3,
                              pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["n"],
                              training_mode=1),
             helper.make_node("Clip", ["n", "lo", "hi"], ["k"]),
             helper.make_node("CastLike", ["k", "like"], ["y"])]
    inits = [init("W", [6, 1, 3, 3]), init("B", [6]), init("s", [6]), init("bb", [6]),
             numpy_helper.from_array(np.zeros(6, np.float32), "mean"),
             numpy_helper.from_array(np.ones(6, np.float32), "var"),
             numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
             numpy_helper.from_array(np.array(0.7, np.float32), "hi"),
             numpy_helper.from_array(np.zeros(1, np.float64), "like")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [2, 3, 5, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 6, 5, 5])],
                       inits, opset=17)
    g = load_onnx(model)
    assert {n.op for n in g.nodes if not n.is_source} == {
        "grouped_conv2d", "reshape", "add", "batch_norm", "clamp", "astype"}
    (expected,), (ours,) = run_both(model, g, {"x": RNG.standard_normal((2, 3, 5, 5),
                                                                         np.float32)})
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_symbols_invented_by_shape_inference_are_resolved_or_fixed_by_dims():
    """An Expand to a shape computed from Shape leaves ONNX inference with `unk__0`; the
    importer evaluates the shape arithmetic itself."""
    nodes = [helper.make_node("Shape", ["x"], ["sx"]),
             helper.make_node("Concat", ["two", "sx"], ["target"], axis=0),
             helper.make_node("Expand", ["x", "target"], ["y"]),
             helper.make_node("Relu", ["y"], ["out"])]
    two = numpy_helper.from_array(np.array([2], np.int64), "two")
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [3, 4])],
                       [helper.make_tensor_value_info("out", F32, None)], [two])
    g = load_onnx(model)
    assert g["out"].shape == (2, 3, 4) and g["y"].op == "broadcast_to"
    (expected,), (ours,) = run_both(model, g, {"x": RNG.standard_normal((3, 4), np.float32)})
    np.testing.assert_allclose(ours, expected)


def test_torchscript_exports_of_the_zoo_import_and_an_onnx_model_trains(tmp_path):
    torch = pytest.importorskip("torch")
    import io
    import warnings
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    import torch_zoo
    from autodiff.models.imported import imported_data, with_loss
    from executor.local import LocalExecutor
    from partition.api import partition
    from partition.cluster import uniform
    for arch in ("llama", "vit", "bert"):   # llama and vit hit `unk__0` before
        module, example = torch_zoo.ARCHITECTURES[arch]()
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, buffer, dynamo=False, opset_version=17)
        im = import_onnx(onnx.load_from_string(buffer.getvalue()))
        assert {n.group for n in im.graph.params} <= {
            name for name, _ in module.named_modules()} | {None}
    graph = with_loss(im.graph)        # bert: trains from its exported weights
    data = imported_data(im.inputs, graph, seed=0)
    executor = LocalExecutor(graph, partition(graph, uniform(2)), 2,
                             optimizer={"name": "adam", "lr": 0.01}, params=im.params)
    losses = [executor.step(data(s)).loss for s in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_partition_command_reads_onnx(tmp_path):
    from modelcut.cli import main
    onnx.save(mlp_model(), str(tmp_path / "mlp.onnx"))
    assert main(["partition", "--graph", str(tmp_path / "mlp.onnx"), "--devices", "2",
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out").exists()


def test_dims_fix_a_symbol_shape_inference_invented():
    """NonZero's length depends on the data: inference calls it `unk__0`; the error's hint,
    dims={'unk__0': N}, now fixes it (it used to give the same error again)."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),
             helper.make_node("Transpose", ["nz"], ["out"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, [3, 4])],
                       [helper.make_tensor_value_info("out", TensorProto.INT64, None)], [])
    with pytest.raises(OnnxImportError, match=r"'unk__0' \(pass dims=\{'unk__0': N\}"):
        load_onnx(model)
    g = load_onnx(model, dims={"unk__0": 5})
    assert g["nz"].shape == (2, 5) and g["out"].shape == (5, 2)
