"""Import an ONNX model as a forward Graph (needs the optional `onnx` package).

Shapes come from onnx.shape_inference (symbolic dimensions are fixed with `dims=`). ONNX ops
map to registry ops where the semantics match exactly, else become *opaque* nodes named by the
lower-cased ONNX op type (prefixed `onnx.` when that name would collide with a registry op of
different meaning, e.g. variadic `Mean`) with their ONNX attributes kept. Mapping choices:

- Gemm and Conv (2-D, undilated, equal strides and pads) become executable registry ops:
  transposes, `matmul` or `conv2d` / `grouped_conv2d`, scaling by alpha and beta, bias `add`.
- Identity and inference-mode Dropout are aliases (no node); Constant, Shape and
  ConstantOfShape become `const`s; Reshape, Flatten, Squeeze and Unsqueeze a `reshape` to the
  inferred shape, dropping the shape operand (nodes that then feed nothing are removed).
- A mapping is used only when the registry's shape rule reproduces ONNX's inferred shape and
  dtype (integer Div, for one, is not numpy's divide); otherwise the node stays opaque.
- Trainable initializers (onnx_fidelity.trainable_initializers) become `param`s, the others
  `const`s. Nodes whose inputs are all known constants are evaluated (onnx's reference ops)
  into `const`s; outputs shape inference left unknown get their shapes the same way.

FLOPs are explicit: 2*M*N*K for matmuls, 2*out*Cin/groups*kh*kw for convolutions, one per
output element for elementwise ops (opaque ones too), one per input element for reductions,
out*kh*kw for pooling (onnx_fidelity adds data movement, norms, softmax and LSTM); others leave
`flops` unset. A multi-output ONNX node becomes one node per output (attr `output` = its
position). Nodes are named by the ONNX tensor they produce (exporter-generated names become
`<group>.<op>`); `group` is the module path torch's exporter recorded, else the ONNX node
name's path ("/fc1/Gemm" -> "fc1"); a source takes the group of its first consumer.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from autodiff.io import NUMPY_DTYPE, check_graph_bounds
from autodiff.ir import FLOAT_DTYPES, Graph, GraphError, Node, live_names
from autodiff.onnx_fidelity import (FidelityOps, metadata_group, readable_names,
                                    split_shared_norms, trainable_initializers)

__all__ = ["OnnxImportError", "import_onnx", "load_onnx"]

log = logging.getLogger(__name__)


class OnnxImportError(GraphError):
    """An ONNX model could not be imported; the message names the model, node and tensor."""


ONNX_DTYPES = {"FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16",
               "BFLOAT16": "bfloat16", "INT64": "int64", "INT32": "int32", "INT8": "int8",
               "UINT8": "uint8", "BOOL": "bool"}
ELEMENTWISE = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide",
               "Pow": "power", "Neg": "negative", "Exp": "exp", "Log": "log", "Sin": "sin",
               "Cos": "cos", "Tanh": "tanh", "Sqrt": "sqrt", "Abs": "abs", "Relu": "relu",
               "Sigmoid": "sigmoid", "Sign": "sign", "Where": "where", "Greater": "greater",
               "Less": "less", "Equal": "equal", "GreaterOrEqual": "greater_equal",
               "LessOrEqual": "less_equal"}
VARIADIC = {"Max": "maximum", "Min": "minimum", "Sum": "add"}
OPAQUE_ELEMENTWISE = {"Erf", "Clip", "Reciprocal", "Floor", "Ceil", "Round", "LeakyRelu", "Elu",
                      "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Mish",
                      "PRelu", "Not", "And", "Or", "Xor", "Mod", "IsNaN", "IsInf", "Tan", "Atan",
                      "Asin", "Acos", "Sinh", "Cosh", "Gelu", "Mean", "ThresholdedRelu"}
REDUCTIONS = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max"}
# ONNX ops that share a handler, with the registry op each becomes
SHARED_HANDLER = {"MaxPool": "max_pool2d", "AveragePool": "avg_pool2d",
                  "GlobalAveragePool": "mean", "GlobalMaxPool": "max", "Softmax": "softmax",
                  "LogSoftmax": "log_softmax"}


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxImportError("importing ONNX models needs the onnx package: "
                              "pip install modelcut[onnx]") from None
    return onnx


def load_onnx(path_or_model: Any, *, dims: dict[str, int] | None = None,
              name: str | None = None) -> Graph:
    """Read an ONNX file (or ModelProto) as a forward Graph with shapes, dtypes and FLOPs;
    `dims` fixes symbolic dimensions by name (e.g. {"batch": 32}, or an invented `unk__0`)."""
    return import_onnx(path_or_model, dims=dims, name=name).graph


def import_onnx(path_or_model: Any, *, dims: dict[str, int] | None = None,
                name: str | None = None):
    """An ImportedModel (autodiff/torch_import.py) of an ONNX model: the graph (named after
    the file), the trainable initializers' values as params, the other constants' values,
    and the inputs' specs, so an ONNX model trains as an imported torch model does."""
    onnx = _require_onnx()
    if isinstance(path_or_model, (str, os.PathLike)):
        source = str(path_or_model)
        _check_file(source)
        try:
            model = onnx.load(source)
        except Exception as exc:  # OSError, protobuf DecodeError, ...
            raise OnnxImportError(f"{source}: cannot read an ONNX model: {exc}") from None
        default_name = Path(source).name.split(".")[0]
    elif isinstance(path_or_model, onnx.ModelProto):
        model, source, default_name = path_or_model, f"<onnx {path_or_model.graph.name}>", "onnx"
    else:
        raise OnnxImportError(f"load_onnx: expected a path or onnx.ModelProto, "
                              f"got {type(path_or_model).__name__}")
    for _ in range(4):   # dims named after inferred symbols (unk__0) need another pass
        fixed = _fix_dims(onnx, model, dims or {})
        try:
            inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
        except Exception as exc:  # onnx raises several unrelated classes here
            raise OnnxImportError(f"{source}: ONNX shape inference failed: {exc}") from None
        if _fix_dims(onnx, inferred, dims or {}) is inferred:
            break
        model = inferred
    try:
        onnx.checker.check_model(inferred)
    except Exception as exc:  # onnx.checker.ValidationError and protobuf errors
        raise OnnxImportError(f"{source}: not a valid ONNX model: {exc}") from None
    if default_name == "onnx":
        default_name = inferred.graph.name or "onnx"
    imported = _Importer(onnx, inferred, source).run(name or default_name)
    if not imported.graph.nodes:
        raise OnnxImportError(f"{source}: the model has no nodes")
    check_graph_bounds(imported.graph, source)
    return imported


def _check_file(source: str) -> None:
    """An ONNX file must exist and not be empty (protobuf reads 0 bytes as an empty model)."""
    try:
        size = os.path.getsize(source)
    except OSError as exc:
        raise OnnxImportError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    if size == 0:
        raise OnnxImportError(f"{source}: the file is empty, not an ONNX model")


def _fix_dims(onnx, model, dims: dict[str, int]):
    """A copy of `model` with the named symbolic dimensions replaced by integers."""
    g = model.graph
    symbolic = {d.dim_param for info in [*g.input, *g.output, *g.value_info]
                for d in info.type.tensor_type.shape.dim if d.HasField("dim_param")}
    if not dims or not symbolic & set(dims):
        return model
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for info in [*fixed.graph.input, *fixed.graph.output, *fixed.graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = int(dims[dim.dim_param])
    return fixed


def _attr_value(onnx, attr) -> Any:
    """An ONNX attribute as JSON data (tensors as nested lists, subgraphs by name)."""
    value = onnx.helper.get_attribute_value(attr)

    def convert(v):
        if isinstance(v, bytes):
            return v.decode("utf-8", errors="replace")
        if isinstance(v, onnx.TensorProto):
            return onnx.numpy_helper.to_array(v).tolist()
        if isinstance(v, onnx.GraphProto):
            return f"<graph {v.name}>"
        if isinstance(v, (int, float, str)):
            return v
        return str(v)

    return [convert(v) for v in value] if isinstance(value, (list, tuple)) else convert(value)


def _group(onnx_node_name: str) -> str | None:
    """'/layer1/conv1/Conv' -> 'layer1.conv1' (a module path; '/blocks/blocks.0/...' ->
    'blocks.0...', as TorchScript export repeats a container's name in its children's);
    names without a path give no group."""
    path: list[str] = []
    for part in onnx_node_name.strip("/").split("/")[:-1]:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path) if path else None


def _node_group(node) -> str | None:
    return metadata_group(node) or _group(node.name)


class _Importer(FidelityOps):
    """One pass over an inferred ONNX graph, emitting Nodes in topological order."""

    def __init__(self, onnx, model, source: str):
        self.onnx, self.graph, self.source = onnx, model.graph, source
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        infos = list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output)
        self.types = {info.name: self._read_type(info) for info in infos}
        self.nodes: list[Node] = []
        self.position: dict[str, int] = {}
        self.alias: dict[str, str] = {}
        self.values: dict[str, np.ndarray] = {}   # known constant tensors (shapes, axes, ...)
        self.param_values: dict[str, np.ndarray] = {}
        self.split: dict[str, dict[str, str]] = {}
        self.shared_work: list[list[str]] = []
        self.taken = {v for n in self.graph.node for v in list(n.input) + list(n.output)}
        self.taken |= set(self.types) | {t.name for t in self.graph.initializer}
        from autodiff.ops.registry import registry
        self.rules = registry()

    def _read_type(self, info) -> tuple:
        """(shape or None, dtype name or None, why unknown) of an ONNX ValueInfo."""
        if not info.type.HasField("tensor_type"):
            return None, None, "it is not a tensor"
        t = info.type.tensor_type
        dtype = ONNX_DTYPES.get(self.onnx.TensorProto.DataType.Name(t.elem_type))
        if not t.HasField("shape"):
            return None, dtype, "shape inference gave no shape"
        for d in t.shape.dim:
            if not d.HasField("dim_value"):
                why = (f"symbolic dimension {d.dim_param!r} (pass dims={{{d.dim_param!r}: N}}, "
                       "or model.dims in a config)"
                       if d.dim_param else "a dimension shape inference could not determine")
                return None, dtype, why
        return tuple(int(d.dim_value) for d in t.shape.dim), dtype, ""

    def fact(self, tensor: str, where: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype of an ONNX tensor, or OnnxImportError naming it."""
        shape, dtype, why = self.types.get(tensor, (None, None, "shape inference gave no type"))
        if dtype is None and not why:
            why = "its element type is not supported"
        if shape is None or dtype is None:
            raise OnnxImportError(f"{self.source}: {where}: tensor {tensor!r} has no known "
                                  f"shape and dtype: {why}")
        return shape, dtype

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.nodes[self.position[name]].shape

    def dtype_of(self, name: str) -> str:
        return self.nodes[self.position[name]].dtype

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}.{i}", i + 1
        self.taken.add(name)
        return name

    def emit(self, name: str, op: str, inputs, shape, dtype: str, attrs: dict | None = None,
             flops: int | None = None, group: str | None = None) -> str:
        self.position[name] = len(self.nodes)
        self.nodes.append(Node(name, op, tuple(inputs), tuple(int(d) for d in shape), dtype,
                               attrs or {}, group, None if flops is None else int(flops)))
        return name

    def const(self, name: str, value: np.ndarray, dtype: str, group: str | None = None) -> str:
        self.values[name] = value
        return self.emit(name, "const", (), value.shape, dtype, {"value": value}, group=group)

    def run(self, name: str) -> Graph:
        numpy_helper = self.onnx.numpy_helper
        floats = {t.name for t in self.graph.initializer if ONNX_DTYPES.get(
            self.onnx.TensorProto.DataType.Name(t.data_type)) in FLOAT_DTYPES}
        trainable = trainable_initializers(self.graph, floats)
        self.split = split_shared_norms(self.graph, trainable, _node_group)
        for tensor in self.graph.initializer:
            dtype = ONNX_DTYPES.get(self.onnx.TensorProto.DataType.Name(tensor.data_type))
            if dtype is None:
                raise OnnxImportError(f"{self.source}: initializer {tensor.name!r}: element type "
                                      f"{tensor.data_type} is not supported")
            if tensor.name in trainable:
                self.emit(tensor.name, "param", (), tuple(tensor.dims), dtype)
                self.param_values[tensor.name] = numpy_helper.to_array(tensor).copy()
                for copy in self.split.get(tensor.name, {}).values():
                    self.taken.add(copy)
                    self.emit(copy, "param", (), tuple(tensor.dims), dtype)
                    self.param_values[copy] = self.param_values[tensor.name].copy()
            else:
                self.const(tensor.name, numpy_helper.to_array(tensor), dtype)
        initializers = {t.name for t in self.graph.initializer}
        for info in self.graph.input:
            if info.name not in initializers:
                shape, dtype = self.fact(info.name, "graph input")
                self.emit(info.name, "input", (), shape, dtype)
        for node in self.graph.node:
            self.convert(node)
        outputs = [self.alias.get(o.name, o.name) for o in self.graph.output]
        for out in outputs:
            if out not in self.position:
                raise OnnxImportError(f"{self.source}: graph output {out!r} is produced by no node")
        alive = live_names(self.nodes, outputs)   # a dropped shape operand leaves dead nodes
        live = [n for n in self.nodes if n.name in alive]
        for names in self.shared_work:
            for later in [n for n in names if n in alive][1:]:
                self.nodes[self.position[later]].flops = 0
        nodes, outputs = readable_names(_with_source_groups(live), outputs, set(self.taken))
        return self._imported(Graph(nodes, outputs, name, source=self.source))

    def convert(self, node) -> None:
        """Emit the Nodes for one ONNX node (mapped, aliased, folded or opaque)."""
        where = f"node {node.name or node.op_type!r} ({node.op_type})"
        group = _node_group(node)
        ins = [self.split.get(i, {}).get(group, self.alias.get(i, i)) for i in node.input]
        for i in ins:
            if i and i not in self.position:
                raise OnnxImportError(f"{self.source}: {where}: input {i!r} is produced by no "
                                      "earlier node (subgraph inputs are not supported)")
        attrs = {a.name: _attr_value(self.onnx, a) for a in node.attribute}
        outs = [o for o in node.output if o]
        default = node.domain in ("", "ai.onnx")
        handler = getattr(self, f"_op_{node.op_type}", None) if default else None
        if node.op_type in ("Identity", "Dropout") and default and len(outs) == 1 \
                and not attrs.get("training_mode") and len(ins) < 3:
            self.alias[outs[0]] = ins[0]
            return
        if node.op_type not in ("Constant", "Shape") and self.fold_or_infer(node, ins, outs,
                                                                           group):
            return
        start = len(self.nodes)
        if default and node.op_type in ELEMENTWISE and len(outs) == 1:
            handled = self._one(ELEMENTWISE[node.op_type], ins, outs, group, where, per=1)
        else:
            handled = handler is not None and handler(node, ins, outs, attrs, group, where)
        if handled and not self._agrees_with_registry(start):
            log.debug("%s: %s: registry rules disagree with ONNX; kept opaque", self.source, where)
            for emitted in self.nodes[start:]:
                del self.position[emitted.name]
                self.values.pop(emitted.name, None)
            del self.nodes[start:]
            handled = False
        if not handled:
            self.opaque(node, ins, outs, attrs, group, where)
        self._count_flops(node, ins, attrs, start)

    def _agrees_with_registry(self, start: int) -> bool:
        """Whether the registry's shape rule gives each node emitted since `start` its ONNX
        shape and dtype (e.g. integer Div is not numpy's divide, so it stays opaque)."""
        for node in self.nodes[start:]:
            if node.op == "const":
                continue
            rule = self.rules.get(node.op)
            if rule is None:
                return False
            try:
                shape, dtype = rule.shape([self.shape_of(i) for i in node.inputs],
                                          [self.dtype_of(i) for i in node.inputs], **node.attrs)
            except Exception:  # the rule rejects these operands or attributes
                return False
            if tuple(shape) != node.shape or dtype != node.dtype:
                return False
        return True

    def opaque(self, node, ins, outs, attrs, group, where) -> None:
        op = node.op_type.lower()
        if node.domain not in ("", "ai.onnx"):
            op = f"{node.domain}.{op}"
        elif op in self.rules:
            op = f"onnx.{op}"
        for position, out in enumerate(node.output):
            if not out:
                continue
            shape, dtype = self.fact(out, where)
            flops = self._opaque_flops(node, ins, shape, attrs)
            extra = {"output": position} if len(node.output) > 1 else {}
            self.emit(out, op, [i for i in ins if i], shape, dtype, {**attrs, **extra}, flops,
                      group)

    def _opaque_flops(self, node, ins, out_shape, attrs) -> int | None:
        if node.op_type in OPAQUE_ELEMENTWISE or node.op_type in VARIADIC:
            return math.prod(out_shape) * max(1, len(ins) - 1)
        if node.op_type == "Conv":
            w = self.shape_of(ins[1])
            bias = math.prod(out_shape) if len(ins) > 2 and ins[2] else 0
            return 2 * math.prod(out_shape) * math.prod(w[1:]) + bias
        if node.op_type in ("MaxPool", "AveragePool"):
            return math.prod(out_shape) * math.prod(attrs.get("kernel_shape", [1]))
        if node.op_type in REDUCTIONS and ins:
            return math.prod(self.shape_of(ins[0]))
        return None

    # Each returns True when it emitted the node, False to fall back to an opaque node.
    def _op_MatMul(self, node, ins, outs, attrs, group, where) -> bool:
        return self._one("matmul", ins, outs, group, where, per=2 * self.shape_of(ins[0])[-1])

    def _op_Gemm(self, node, ins, outs, attrs, group, where) -> bool:
        out = outs[0]
        shape, dtype = self.fact(out, where)
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 and ins[2] else None
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        for flag, key in (("transA", 0), ("transB", 1)):
            if attrs.get(flag, 0):
                src = (a, b)[key]
                moved = self.emit(self.fresh(f"{out}/transpose_{'ab'[key]}"), "transpose", [src],
                                  self.shape_of(src)[::-1], self.dtype_of(src), {"axes": [1, 0]},
                                  group=group)
                a, b = (moved, b) if key == 0 else (a, moved)
        m, k = self.shape_of(a)
        last = alpha == 1.0 and c is None
        y = self.emit(out if last else self.fresh(f"{out}/matmul"), "matmul", [a, b], shape,
                      dtype, flops=2 * m * k * shape[1], group=group)
        if alpha != 1.0:
            scale = self.const(self.fresh(f"{out}/alpha"), np.array(alpha, NUMPY_DTYPE[dtype]),
                               dtype, group)
            y = self.emit(out if c is None else self.fresh(f"{out}/scaled"), "multiply",
                          [y, scale], shape, dtype, flops=math.prod(shape), group=group)
        if c is not None:
            if beta != 1.0:
                scale = self.const(self.fresh(f"{out}/beta"), np.array(beta, NUMPY_DTYPE[dtype]),
                                   dtype, group)
                c = self.emit(self.fresh(f"{out}/bias"), "multiply", [c, scale],
                              self.shape_of(c), dtype, flops=math.prod(self.shape_of(c)),
                              group=group)
            self.emit(out, "add", [y, c], shape, dtype, flops=math.prod(shape), group=group)
        return True

    def _op_Conv(self, node, ins, outs, attrs, group, where) -> bool:
        """Conv (grouped and depthwise too) with square stride and padding, plus its bias."""
        shape, dtype = self.fact(outs[0], where)
        w = self.shape_of(ins[1])
        pads, strides = attrs.get("pads", [0] * 4), attrs.get("strides", [1, 1])
        if (len(w) != 4 or any(d != 1 for d in attrs.get(
                "dilations", [1, 1])) or len(set(strides)) != 1 or len(set(pads)) != 1
                or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            return False
        grouped = {} if attrs.get("group", 1) == 1 else {"groups": attrs["group"]}
        op = "grouped_conv2d" if grouped else "conv2d"
        conv_attrs = {"stride": strides[0], "padding": pads[0], **grouped}
        bias = ins[2] if len(ins) > 2 and ins[2] else None
        conv = self.emit(outs[0] if bias is None else self.fresh(f"{outs[0]}/conv"), op,
                         ins[:2], shape, dtype, conv_attrs,
                         flops=2 * math.prod(shape) * w[1] * w[2] * w[3], group=group)
        if bias is not None:
            column = self.emit(self.fresh(f"{outs[0]}/bias"), "reshape", [bias], (w[0], 1, 1),
                               self.dtype_of(bias), {"shape": [w[0], 1, 1]}, group=group)
            self.emit(outs[0], "add", [conv, column], shape, dtype, flops=math.prod(shape),
                      group=group)
        return True

    def _pool(self, node, ins, outs, attrs, group, where) -> bool:
        op = SHARED_HANDLER[node.op_type]
        kernel = attrs.get("kernel_shape", [])
        strides = attrs.get("strides", [1] * len(kernel))
        pads = attrs.get("pads", [0] * 2 * len(kernel))
        if (len(outs) != 1 or len(kernel) != 2 or len(set(kernel)) != 1 or len(set(strides)) != 1
                or len(set(pads)) != 1 or attrs.get("ceil_mode", 0)
                or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
                or (op == "avg_pool2d" and pads[0] and not attrs.get("count_include_pad", 0))):
            return False
        return self._one(op, ins[:1], outs, group, where,
                         {"kernel": kernel[0], "stride": strides[0], "padding": pads[0]},
                         kernel[0] * kernel[1])

    _op_MaxPool = _op_AveragePool = _pool

    def _global_pool(self, node, ins, outs, attrs, group, where) -> bool:
        shape = self.shape_of(ins[0])
        return self._one(SHARED_HANDLER[node.op_type], ins[:1], outs, group, where,
                         {"axis": list(range(2, len(shape))), "keepdims": True},
                         flops=math.prod(shape))

    _op_GlobalAveragePool = _op_GlobalMaxPool = _global_pool

    def _reshape(self, node, ins, outs, attrs, group, where) -> bool:
        shape = self.fact(outs[0], where)[0]
        return self._one("reshape", ins[:1], outs, group, where, {"shape": list(shape)})

    _op_Reshape = _op_Flatten = _op_Squeeze = _op_Unsqueeze = _reshape

    def _op_Expand(self, node, ins, outs, attrs, group, where) -> bool:
        shape = self.fact(outs[0], where)[0]
        return self._one("broadcast_to", ins[:1], outs, group, where, {"shape": list(shape)})

    def _op_Transpose(self, node, ins, outs, attrs, group, where) -> bool:
        rank = len(self.shape_of(ins[0]))
        axes = [int(a) for a in attrs.get("perm", range(rank - 1, -1, -1))]
        return self._one("transpose", ins, outs, group, where, {"axes": axes})

    def _op_Concat(self, node, ins, outs, attrs, group, where) -> bool:
        return self._one("concatenate", ins, outs, group, where, {"axis": int(attrs["axis"])})

    def _op_Gather(self, node, ins, outs, attrs, group, where) -> bool:
        return self._one("take", ins, outs, group, where, {"axis": int(attrs.get("axis", 0))})

    def _softmax(self, node, ins, outs, attrs, group, where) -> bool:
        rank = len(self.fact(outs[0], where)[0])
        axis = int(attrs.get("axis", -1 if self.opset >= 13 else 1))
        if self.opset < 13 and axis % max(rank, 1) != rank - 1:
            return False  # old Softmax flattens to 2-D around `axis`: not numpy's softmax
        return self._one(SHARED_HANDLER[node.op_type], ins, outs, group, where, {"axis": axis})

    _op_Softmax = _op_LogSoftmax = _softmax

    def _reduce(self, node, ins, outs, attrs, group, where) -> bool:
        axes = attrs.get("axes")
        if len(ins) > 1 and ins[1]:
            if ins[1] not in self.values:
                return False
            axes = [int(a) for a in self.values[ins[1]].reshape(-1)]
        if not axes and attrs.get("noop_with_empty_axes", 0):
            return False
        return self._one(REDUCTIONS[node.op_type], ins[:1], outs, group, where,
                         {"axis": list(axes) if axes else None,
                          "keepdims": bool(attrs.get("keepdims", 1))},
                         flops=math.prod(self.shape_of(ins[0])))

    _op_ReduceSum = _op_ReduceMean = _op_ReduceMax = _reduce

    def _op_BatchNormalization(self, node, ins, outs, attrs, group, where) -> bool:
        if attrs.get("training_mode", 0):
            return self._training_batch_norm(ins, outs, attrs, group, where)
        if len(outs) != 1:
            return False
        return self._one("batch_norm_eval", ins[:5], outs, group, where,
                         {"eps": float(attrs.get("epsilon", 1e-5))})

    def _op_LayerNormalization(self, node, ins, outs, attrs, group, where) -> bool:
        shape, dtype = self.fact(outs[0], where)
        if (len(outs) != 1 or len(ins) != 3 or not ins[2]
                or int(attrs.get("axis", -1)) % len(shape) != len(shape) - 1):
            return False
        return self._one("layer_norm", ins, outs, group, where,
                         {"eps": float(attrs.get("epsilon", 1e-5))})

    def _op_Cast(self, node, ins, outs, attrs, group, where) -> bool:
        dtype = self.fact(outs[0], where)[1]
        return self._one("astype", ins, outs, group, where, {"dtype": dtype})

    def _variadic(self, node, ins, outs, attrs, group, where) -> bool:
        shape, dtype = self.fact(outs[0], where)
        op = VARIADIC[node.op_type]
        if len(ins) == 1:
            self.alias[outs[0]] = ins[0]
            return True
        acc = ins[0]
        for i, operand in enumerate(ins[1:], start=2):
            last = i == len(ins)
            part = shape if last else np.broadcast_shapes(self.shape_of(acc),
                                                          self.shape_of(operand))
            acc = self.emit(outs[0] if last else self.fresh(f"{outs[0]}/{op}{i - 1}"), op,
                            [acc, operand], part, dtype, flops=math.prod(part), group=group)
        return True

    _op_Max = _op_Min = _op_Sum = _variadic

    def _op_Constant(self, node, ins, outs, attrs, group, where) -> bool:
        shape, dtype = self.fact(outs[0], where)
        attr = node.attribute[0]
        if attr.name == "value":
            value = self.onnx.numpy_helper.to_array(attr.t)
        elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = np.array(self.onnx.helper.get_attribute_value(attr))
        else:
            return False
        self.const(outs[0], value.astype(NUMPY_DTYPE[dtype]).reshape(shape), dtype, group)
        return True

    def _op_Shape(self, node, ins, outs, attrs, group, where) -> bool:
        _, dtype = self.fact(outs[0], where)
        full = self.shape_of(ins[0])
        start, end = attrs.get("start", 0), attrs.get("end", len(full))
        self.const(outs[0], np.array(full[start:end], dtype=np.int64), dtype, group)
        return True

    def _op_ConstantOfShape(self, node, ins, outs, attrs, group, where) -> bool:
        shape, dtype = self.fact(outs[0], where)
        fill = attrs.get("value", [0.0])
        fill = (fill[0] if isinstance(fill, list) else fill)
        self.values[outs[0]] = np.full(shape, fill, dtype=NUMPY_DTYPE[dtype])
        self.emit(outs[0], "const", (), shape, dtype, {"fill": "full", "fill_value": fill},
                  group=group)
        return True


def _with_source_groups(nodes: list[Node]) -> list[Node]:
    """Give each ungrouped source node the group of its first consumer (weights join layers)."""
    first_group: dict[str, str] = {}
    for node in nodes:
        if node.group is not None:
            for i in node.inputs:
                first_group.setdefault(i, node.group)
    for node in nodes:
        if node.is_source and node.group is None and node.name in first_group:
            node.group = first_group[node.name]
    return nodes
