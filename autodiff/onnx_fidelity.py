"""What keeps an ONNX import faithful to the model it came from (used by autodiff.onnx_import):

- groups from torch's exporter metadata (the module path in a node's metadata_props), and
  readable names (`<module path>.<op>`) for tensors the exporter named `val_56`;
- which float initializers are trainable (not running statistics, scalars or constants the
  exporter folded, which have no path from a trainable weight);
- FLOPs for ops that would otherwise count 0 (data movement, norms, softmax, LSTM);
- mappings for ops that were opaque (Gelu, HardSwish, Clip, CastLike, training-mode
  BatchNormalization, ...).
"""
from __future__ import annotations

import ast
import math
import re

import numpy as np

from autodiff.io import NUMPY_DTYPE
from autodiff.ir import FLOAT_DTYPES

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
GENERATED_NAME = re.compile(r"^(val_\d+|node_.*|_v_\d+|.*::.*|/.*|\d+(/.*)?)$")
FOLDED_CONSTANT = re.compile(r"^(val_\d+|_?tensor_constant\d*|_v_\d+|onnx::.*|const.*|"
                             r"_?param_constant\d*)$")
STATISTICS = re.compile(r"(running_mean|running_var|num_batches_tracked)$")
MOVEMENT = {"Split", "Slice", "Gather", "Concat", "GatherElements", "GatherND"}


def metadata_group(node) -> str | None:
    """The module path torch's exporter recorded for `node` (None when absent or the root)."""
    for entry in node.metadata_props:
        if entry.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError):
                return None
            paths = [s for s in scopes[:-1] if isinstance(s, str) and s]
            return paths[-1] if paths else None
    return None


# (op type, input position) where a folded initializer is a weight (a transposed Linear
# weight the exporter folded, `onnx::MatMul_123`), not a constant such as a mask
WEIGHT_OPERANDS = {("MatMul", 0), ("MatMul", 1), ("Gemm", 0), ("Gemm", 1), ("Gemm", 2),
                   ("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2),
                   ("Gather", 0), ("LayerNormalization", 1), ("LayerNormalization", 2),
                   ("BatchNormalization", 1), ("BatchNormalization", 2), ("LSTM", 1),
                   ("LSTM", 2), ("LSTM", 3), ("GRU", 1), ("GRU", 2), ("GRU", 3)}
NORMS = {"LayerNormalization", "BatchNormalization", "InstanceNormalization"}


def trainable_initializers(graph, float_names: set[str]) -> set[str]:
    """Float initializers that are weights: more than one element, not batch-norm running
    statistics, and named like a parameter or, when the exporter generated the name, read as
    a WEIGHT_OPERANDS operand (masks and scales folded from constants are not)."""
    statistics = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization"
                  for i in (3, 4) if len(n.input) > i}
    sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
    as_weight = {name for n in graph.node for i, name in enumerate(n.input)
                 if (n.op_type, i) in WEIGHT_OPERANDS}
    return {name for name in float_names
            if name not in statistics and not STATISTICS.search(name) and sizes.get(name, 0) > 1
            and (not FOLDED_CONSTANT.match(name) or name in as_weight)}


def split_shared_norms(graph, trainable: set[str], group_of) -> dict[str, dict[str, str]]:
    """Exporters merge initializers with identical values, such as every LayerNorm's gamma
    at its initial ones, into one tensor; norm parameters are never tied, so one read only by
    norm ops of several module paths becomes one parameter per path: initializer ->
    {group: new name} for every group after the first (`<group>.weight` / `.bias`)."""
    uses: dict[str, list] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in trainable:
                uses.setdefault(name, []).append((n.op_type, i, group_of(n)))
    split = {}
    for name, found in uses.items():
        groups = list(dict.fromkeys(g for _, _, g in found))
        if len(groups) > 1 and None not in groups and all(op in NORMS for op, _, _ in found):
            role = "weight" if found[0][1] == 1 else "bias"
            split[name] = {g: f"{g}.{role}" for g in groups[1:]}
    return split


def extra_flops(op_type: str, attrs: dict, in_shapes: list, out_shape) -> int | None:
    """FLOPs for ONNX ops whose mapping or opaque node would otherwise count none."""
    if op_type in MOVEMENT:
        return math.prod(out_shape)
    if op_type == "LayerNormalization":
        return 8 * math.prod(out_shape)
    if op_type in ("Softmax", "LogSoftmax"):
        return 4 * math.prod(out_shape)
    if op_type == "LSTM" and len(in_shapes) >= 3 and len(in_shapes[0]) == 3:
        seq, batch, _ = in_shapes[0]
        directions, gates, width = in_shapes[1]        # W: (dirs, 4H, I)
        hidden = gates // 4
        matmuls = 2 * batch * gates * (width + hidden)  # x W^T and h R^T per step
        return directions * seq * (matmuls + 10 * batch * hidden)
    return None


def readable_names(nodes: list, outputs: list[str], taken: set[str]) -> tuple[list, list]:
    """Rename exporter-generated tensor names to `<group>.<op>` where the group is known."""
    mapping: dict[str, str] = {}
    for node in nodes:
        if node.group and GENERATED_NAME.match(node.name) and not node.is_source:
            base, i = f"{node.group}.{node.op.split('.')[-1]}", 1
            name = base
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            taken.add(name)
            mapping[node.name] = name
    if not mapping:
        return nodes, outputs
    for node in nodes:
        node.name = mapping.get(node.name, node.name)
        node.inputs = tuple(mapping.get(i, i) for i in node.inputs)
    return nodes, [mapping.get(o, o) for o in outputs]


RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Bernoulli", "Multinomial", "Dropout"}
# ops whose output shape depends on the data's values; ops whose integer operands are data
# (indices) that leave the output's shape alone
DATA_DEPENDENT = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "TopK", "Range",
                  "OneHot"}
INDEX_DATA = {"Gather", "GatherElements", "GatherND", "Where", "Cast", "CastLike", "Equal",
              "Not", "And", "Or", "Greater", "Less"}
NUMPY_NAMES = {"float64", "float32", "float16", "int64", "int32", "int8", "uint8", "bool"}


class FidelityOps:
    """`_op_<Type>` handlers mixed into the ONNX importer (same contract as its own)."""

    def fold_or_infer(self, node, ins, outs, group) -> bool:
        """Run `node` in onnx's reference evaluator when shape inference left it unknown or
        all its inputs are known constants (shape arithmetic): known inputs make its outputs
        `const` nodes (True); otherwise zero stand-ins of the inputs' shapes give the outputs'
        shapes (what an Expand of a computed shape has, where inference invents `unk__0`)."""
        if node.domain not in ("", "ai.onnx") or node.op_type in RANDOM_OPS or not outs:
            return False
        known = all(not i or i in self.values for i in ins)
        unknown = any(self.types.get(o, (None,))[0] is None for o in outs)
        if not (known or unknown):
            return False
        if not known and (node.op_type in DATA_DEPENDENT or any(
                i and i not in self.values and self.dtype_of(i) not in FLOAT_DTYPES
                and node.op_type not in INDEX_DATA for i in ins)):
            return False     # stand-in zeros would decide the shape: leave it to dims=

        feeds = {original: self.values[i] if i in self.values
                 else np.zeros(self.shape_of(i), NUMPY_DTYPE[self.dtype_of(i)])
                 for original, i in zip(node.input, ins) if i}
        try:
            from onnx.reference import ReferenceEvaluator
            results = ReferenceEvaluator(node).run(None, feeds)
        except Exception:  # an op the evaluator lacks, or stand-ins it rejects
            return False
        results = [(out, np.asarray(v)) for out, v in zip(node.output, results) if out]
        if any(str(value.dtype) not in NUMPY_NAMES for _, value in results):
            return False
        for out, value in results:
            if known:
                self.const(out, value, str(value.dtype), group)
            else:
                self.types[out] = (tuple(int(d) for d in value.shape), str(value.dtype), "")
        return known

    def _count_flops(self, node, ins, attrs, start: int) -> None:
        """FLOPs for emitted nodes of ops that would otherwise count none (onnx_fidelity)."""
        in_shapes = [self.shape_of(i) if i in self.position else () for i in ins if i]
        emitted_here = [n for n in self.nodes[start:] if n.flops is None and n.op != "const"]
        for emitted in emitted_here:
            flops = extra_flops(node.op_type, attrs, in_shapes, emitted.shape)
            if flops is not None:
                emitted.flops = int(flops)
        if node.op_type == "LSTM":   # its work counts once, on the first output still read
            self.shared_work.append([n.name for n in emitted_here])

    def _imported(self, graph):
        from autodiff.torch_import import ImportedModel, InputSpec
        specs = []
        for node in graph.inputs:
            high = None
            if node.dtype not in FLOAT_DTYPES:   # indices into a table: its rows, else 0/1
                tables = [graph[c].inputs[0] for c in graph.consumers(node.name)
                          if graph[c].op == "take" and graph[c].inputs[1] == node.name]
                high = graph[tables[0]].shape[0] if tables else 2
            specs.append(InputSpec(node.name, node.shape, node.dtype,
                                   None if high is None else 0, high))
        params = {n.name: self.param_values[n.name] for n in graph.params}
        consts = {n.name: n.attrs["value"] for n in graph.nodes
                  if n.op == "const" and "value" in n.attrs}
        return ImportedModel(graph, params, consts, tuple(specs), self.source,
                             tuple(sorted({n.op for n in graph.nodes
                                           if not n.is_source and n.op not in self.rules})))

    def _one(self, op, inputs, outs, group, where, attrs=None, per=None, flops=None) -> bool:
        """Emit outs[0] as one `op` node; `per` FLOPs per output element, else `flops`."""
        shape, dtype = self.fact(outs[0], where)
        self.emit(outs[0], op, inputs, shape, dtype, attrs,
                  flops if per is None else per * math.prod(shape), group)
        return True

    def _op_Gelu(self, node, ins, outs, attrs, group, where) -> bool:
        op = "gelu" if attrs.get("approximate", "none") == "tanh" else "gelu_erf"
        return self._one(op, ins[:1], outs, group, where, per=8)

    def _op_HardSwish(self, node, ins, outs, attrs, group, where) -> bool:
        return self._one("hardswish", ins[:1], outs, group, where, per=3)

    def _op_HardSigmoid(self, node, ins, outs, attrs, group, where) -> bool:
        if not (math.isclose(attrs.get("alpha", 0.2), 1 / 6, rel_tol=1e-6)
                and math.isclose(attrs.get("beta", 0.5), 0.5)):
            return False    # ONNX's default alpha is 0.2, torch's hardsigmoid is 1/6
        return self._one("hardsigmoid", ins[:1], outs, group, where, per=3)

    def _op_Reciprocal(self, node, ins, outs, attrs, group, where) -> bool:
        return self._one("reciprocal", ins[:1], outs, group, where, per=1)

    def _op_Erf(self, node, ins, outs, attrs, group, where) -> bool:
        return self._one("erf", ins[:1], outs, group, where, per=4)

    def _op_Clip(self, node, ins, outs, attrs, group, where) -> bool:
        bounds = []
        for i in (1, 2):
            name = ins[i] if len(ins) > i else ""
            if name and name not in self.values:
                return False
            bounds.append(float(self.values[name].reshape(-1)[0]) if name else None)
        return self._one("clamp", ins[:1], outs, group, where,
                         {"lo": bounds[0], "hi": bounds[1]}, per=2)

    def _op_CastLike(self, node, ins, outs, attrs, group, where) -> bool:
        dtype = self.fact(outs[0], where)[1]
        return self._one("astype", ins[:1], outs, group, where, {"dtype": dtype})

    def _op_IsNaN(self, node, ins, outs, attrs, group, where) -> bool:
        shape, _ = self.fact(outs[0], where)
        same = self.emit(self.fresh(f"{outs[0]}/equal"), "equal", [ins[0], ins[0]], shape,
                         "bool", flops=math.prod(shape), group=group)
        self.emit(outs[0], "logical_not", [same], shape, "bool", flops=math.prod(shape),
                  group=group)
        return True

    def _training_batch_norm(self, ins, outs, attrs, group, where) -> bool:
        if len([o for o in outs if o]) != 1:
            return False      # the running statistics outputs are state, not imported
        return self._one("batch_norm", ins[:3], outs, group, where,
                         {"eps": float(attrs.get("epsilon", 1e-5))}, per=8)


__all__ = ["FidelityOps", "extra_flops", "metadata_group", "readable_names",
           "split_shared_norms", "trainable_initializers"]
