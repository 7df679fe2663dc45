"""Import a PyTorch module as a forward Graph through torch.export (needs the `torch` extra).

`import_torch(module, example_inputs)` exports the module, runs the default decompositions to
core ATen, and maps each ATen op onto the op registry (autodiff/torch_aten.py). What it keeps:

- Names and groups from the module stack: a node made inside `transformer.h.0.attn.c_attn`
  is named `transformer.h.0.attn.c_attn.<op>` and grouped so; a parameter keeps its
  state-dict name and joins its owning module's group. The graph is named after the class.
- Values: parameters keep theirs (`ImportedModel.params`), buffers and constants become
  `const`s. A tied weight (listed by torch.export once per use) is one parameter under its
  first name in `module.named_parameters()`.
- Constant folding: an op on known constants only (buffers, masks, T5's position buckets, a
  rotary table) or on an operand's shape only (`full_like`) runs once in torch at import
  time and becomes a `const`: only work on the inputs or parameters stays in the graph.
- Code under torch.no_grad() (a `wrap_with_set_grad_enabled` nested graph in the exported
  program) is inlined, its outputs cut from the gradient with `stop_gradient`.
- Every mapped node's shape is checked against torch's; a dtype that differs (numpy's
  promotion is not torch's) is cast to torch's. An op with no mapping becomes an opaque node
  named by its ATen overload (listed in `ImportedModel.opaque`): it partitions but cannot run.
Buffer mutations (batch norm's running statistics in training mode) are not imported: the
graph computes what the forward returns.
"""
from __future__ import annotations

import operator
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from autodiff import numpy as anp
from autodiff.ir import FLOAT_DTYPES, Graph, GraphError, Node, live_names
from autodiff.trace import Tensor, Tracer, tree_flatten

__all__ = ["ImportedModel", "InputSpec", "TorchImportError", "export_program", "import_torch",
           "import_exported"]


class TorchImportError(GraphError):
    """A module could not be exported or imported; the message names the model and node."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its shape and dtype, and for integers the range [low, high) its
    example values span (token ids, labels), so data can be drawn like the example."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    low: int | None = None
    high: int | None = None

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Values like the example's: standard normal floats, uniform integers in range."""
        dtype = "float32" if self.dtype == "bfloat16" else self.dtype
        if self.dtype in FLOAT_DTYPES:
            return rng.standard_normal(self.shape).astype(dtype)
        if self.dtype == "bool":
            return rng.integers(0, 2, self.shape).astype(bool)
        return rng.integers(self.low, self.high, self.shape).astype(dtype)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ImportedModel:
    """What an importer (torch or ONNX) returns: the forward graph (outputs = the model's
    outputs), initial parameter values and const values by node name, the inputs' specs,
    and the ops left opaque."""

    graph: Graph
    params: Mapping[str, np.ndarray] = field(repr=False)
    consts: Mapping[str, np.ndarray] = field(repr=False)
    inputs: tuple[InputSpec, ...]
    source: str = ""
    opaque: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    def to_dict(self) -> dict:
        return {"name": self.graph.name, "source": self.source, "nodes": len(self.graph),
                "parameters": self.num_parameters, "consts": len(self.consts),
                "inputs": [s.to_dict() for s in self.inputs], "outputs": list(self.graph.outputs),
                "opaque": list(self.opaque), "seconds": self.seconds}


def _dtype_names():
    import torch
    return {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
            torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32",
            torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}


def _require_torch():
    try:
        import torch
    except ImportError:
        raise TorchImportError("importing PyTorch models needs torch: "
                               "pip install modelcut[torch]") from None
    return torch


def export_program(module, example_inputs: Sequence, name: str | None = None):
    """torch.export.export(module, example_inputs), decomposed to core ATen."""
    torch = _require_torch()
    name = name or type(module).__name__
    try:
        return torch.export.export(module, tuple(example_inputs)).run_decompositions()
    except Exception as exc:  # torch raises many unrelated classes here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchImportError(f"{name}: torch.export failed: {type(exc).__name__}: "
                               f"{first}") from exc


def import_torch(module, example_inputs: Sequence, *, name: str | None = None) -> ImportedModel:
    """Export `module` on `example_inputs` (a tuple of tensors) and import the result."""
    start = time.perf_counter()
    name = name or type(module).__name__
    program = export_program(module, example_inputs, name)
    imported = import_exported(program, module, example_inputs, name)
    return replace(imported, seconds=time.perf_counter() - start)


def import_exported(program, module, example_inputs: Sequence, name: str,
                    source: str = "") -> ImportedModel:
    """An ImportedModel from an ExportedProgram already decomposed (export_program)."""
    _require_torch()
    return _Importer(program, module, name).run(example_inputs, source or name)


class _Const:
    """A value known at import time (a buffer, a constant, a folded result): a torch tensor."""

    __slots__ = ("value", "name")

    def __init__(self, value, name: str | None = None):
        self.value, self.name = value, name


class _NamedTracer(Tracer):
    """A Tracer whose fresh names start with the current module path."""

    prefix: str | None = None

    def fresh(self, base: str) -> str:
        return super().fresh(f"{self.prefix}.{base}" if self.prefix else base)


def _module_path(node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    path = path.replace("L['self'].", "").replace("L['self']", "")
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path).strip(".")
    return path or None


def _storage_key(t) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            tuple(t.stride()), str(t.dtype))


def _map(x, fn):
    if isinstance(x, (list, tuple)):
        return type(x)(_map(item, fn) for item in x)
    if isinstance(x, dict):
        return {k: _map(v, fn) for k, v in x.items()}
    return fn(x)


class _Importer:
    """One pass over the exported FX graph, emitting registry ops through a tracer."""

    def __init__(self, program, module, name: str):
        import torch
        from autodiff import torch_aten
        self.torch, self.aten = torch, torch_aten
        self.program, self.module, self.name = program, module, name
        self.tracer = _NamedTracer(name, eager=False)
        self.dtypes = _dtype_names()
        self.params: dict[str, np.ndarray] = {}
        self.consts: dict[str, np.ndarray] = {}
        self.lifted: dict[int, Tensor] = {}
        self._alive: list[_Const] = []
        self.opaque: list[str] = []
        self.shape: tuple[int, ...] = ()
        self.dtype: str = "float32"

    def dtype_name(self, dtype, where: str) -> str:
        if dtype not in self.dtypes:
            raise TorchImportError(f"{self.name}: {where}: dtype {dtype} is not supported "
                                   f"(expected one of {', '.join(self.dtypes.values())})")
        return self.dtypes[dtype]

    def numpy(self, t) -> np.ndarray:
        t = t.detach().cpu()
        if t.dtype == self.torch.bfloat16:
            t = t.float()
        return t.numpy().copy()

    def tensor(self, x) -> Tensor:
        """An operand as a traced Tensor: constants become `const` nodes (once each)."""
        if isinstance(x, Tensor):
            return x
        if isinstance(x, _Const):
            found = self.lifted.get(id(x))
            if found is None:
                value = self.numpy(x.value)
                dtype = self.dtype_name(x.value.dtype, "constant")
                saved, self.tracer.prefix = self.tracer.prefix, (None if x.name else
                                                                 self.tracer.prefix)
                found = self.tracer.const(value, dtype, x.name or "const")
                self.tracer.prefix = saved
                self.consts[found.name] = found.node.attrs["value"]
                self.lifted[id(x)] = found
                self._alive.append(x)      # ids stay unique while the import runs
            return found
        if isinstance(x, (bool, int, float)):
            dtype = "bool" if isinstance(x, bool) else "int64" if isinstance(x, int) \
                else self.dtype if self.dtype in FLOAT_DTYPES else "float32"
            return self.tracer.const(np.asarray(x, dtype=dtype), dtype)
        raise TorchImportError(f"{self.name}: operand {x!r} is not a tensor")

    def operand(self, x):
        """A 0-d constant as a Python number (weakly typed, as torch treats 0-d tensors)."""
        if isinstance(x, _Const) and x.value.dim() == 0:
            return x.value.item()
        return x if isinstance(x, (bool, int, float)) else self.tensor(x)

    def sources(self, example_inputs) -> tuple[dict, list[InputSpec]]:
        """env entries for the placeholders (inputs, params, buffers, constants)."""
        from torch.export.graph_signature import InputKind
        program = self.program
        names = {}
        for n, p in self.module.named_parameters():
            names.setdefault(_storage_key(p), n)
        user = tree_flatten(list(example_inputs))[0]
        env, specs, by_key = {}, [], {}
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        for node, spec in zip(placeholders, program.graph_signature.input_specs):
            if spec.kind == InputKind.USER_INPUT:
                env[node] = self._input(node.name, user[len(specs)], specs)
            elif spec.kind == InputKind.PARAMETER:
                t = program.state_dict[spec.target]
                key = _storage_key(t)
                if key not in by_key:
                    by_key[key] = self._param(names.get(key, spec.target), t)
                env[node] = by_key[key]
            elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                t = program.state_dict.get(spec.target)
                t = program.constants[spec.target] if t is None else t
                env[node] = _Const(t, spec.target)
            else:
                raise TorchImportError(f"{self.name}: input {node.name!r} of kind "
                                       f"{spec.kind.name} is not supported")
        return env, specs

    def _input(self, name: str, example, specs: list) -> Tensor:
        if not isinstance(example, self.torch.Tensor):
            raise TorchImportError(f"{self.name}: example input {name!r} is a "
                                   f"{type(example).__name__}, not a tensor")
        dtype = self.dtype_name(example.dtype, f"input {name!r}")
        low = high = None
        if dtype not in FLOAT_DTYPES:
            values = example.long() if example.numel() else self.torch.zeros(1).long()
            low, high = int(values.min()), int(values.max()) + 1
        specs.append(InputSpec(name, tuple(example.shape), dtype, low, high))
        return self.tracer.source("input", tuple(example.shape), dtype, name)

    def _param(self, name: str, t) -> Tensor:
        dtype = self.dtype_name(t.dtype, f"parameter {name!r}")
        with self.tracer.scope(group=name.rsplit(".", 1)[0] if "." in name else None):
            p = self.tracer.source("param", tuple(t.shape), dtype, name,
                                   attrs={"init": {"kind": "imported"}})
        self.params[p.name] = self.numpy(t)
        return p

    def run(self, example_inputs, source: str) -> ImportedModel:
        from torch.export.graph_signature import OutputKind
        env, specs = self.sources(example_inputs)
        graph = self.program.graph
        out_node = next(n for n in graph.nodes if n.op == "output")
        kinds = [s.kind for s in self.program.graph_signature.output_specs]
        results = [r for r, k in zip(out_node.args[0], kinds) if k == OutputKind.USER_OUTPUT]
        needed = _needed(results)
        self.walk(graph, env, needed)
        self.tracer.prefix = None
        outputs = [self.tensor(env[r] if hasattr(r, "op") else r) for r in results]
        # params stay; a failed mapping may leave nodes no output reads
        needed = live_names(self.tracer.nodes, [o.name for o in outputs])
        nodes = [n for n in self.tracer.nodes if n.name in needed or n.op == "param"]
        try:
            g = Graph(nodes, [o.name for o in outputs], self.name, source=source)
        except GraphError as exc:
            raise TorchImportError(f"{self.name}: the imported graph is invalid: {exc}") from None
        consts = {n.name: self.consts[n.name] for n in g.nodes if n.name in self.consts}
        params = {n.name: self.params[n.name] for n in g.params}
        return ImportedModel(g, params, consts, tuple(specs), source, tuple(self.opaque))

    def walk(self, graph, env: dict, needed: set | None) -> Any:
        """Emit every needed call of `graph` (env holds its placeholders); its output."""
        for node in graph.nodes:
            if node.op == "output":
                if needed is not None:     # the top level: its user outputs are read by run
                    return None
                return _map(node.args[0], lambda a: env[a] if hasattr(a, "op") else a)
            if node.op == "get_attr":
                env[node] = getattr(self.program.graph_module, node.target)
            elif node.op == "call_function" and (needed is None or node in needed):
                env[node] = self.call(node, env)
        return None

    def call(self, node, env: dict):
        args = _map(node.args, lambda a: env[a] if hasattr(a, "op") else a)
        kwargs = _map(dict(node.kwargs), lambda a: env[a] if hasattr(a, "op") else a)
        if node.target is operator.getitem:
            return args[0][args[1]]
        path = _module_path(node)
        self.tracer.prefix, self.tracer.group = path, path
        if "wrap_with_set_grad_enabled" in str(node.target):
            return self.nested(args)
        target = str(node.target)
        packet = target.rsplit(".", 1)[0] if target.count(".") >= 2 else target
        val = node.meta.get("val")
        if isinstance(val, self.torch.Tensor):
            self.shape, self.dtype = tuple(val.shape), self.dtypes.get(val.dtype, "float32")
        dynamic = any(isinstance(x, Tensor) for x in tree_flatten([args, kwargs])[0])
        if packet not in self.aten.RANDOM and (not dynamic or packet in self.aten.SHAPE_ONLY):
            return self.fold(node, args, kwargs)
        handler = self.aten.HANDLERS.get(target) or self.aten.HANDLERS.get(packet)
        if handler is not None:
            try:
                return self.check(node, handler(self, *args, **kwargs), val)
            except self.aten.Unsupported as exc:
                reason = str(exc)
        else:
            reason = "no mapping to the op registry"
        return self.opaque_node(node, target, args, kwargs, val, reason)

    def nested(self, args):
        """torch.no_grad() code: inline the nested graph, its outputs without gradient."""
        enabled, submodule, *inputs = args
        sub_env = dict(zip([n for n in submodule.graph.nodes if n.op == "placeholder"], inputs))
        out = self.walk(submodule.graph, sub_env, None)
        if enabled:
            return out
        return _map(out, lambda x: anp.stop_gradient(x)
                    if isinstance(x, Tensor) and x.dtype in FLOAT_DTYPES else x)

    def fold(self, node, args, kwargs):
        """Run an op on known constants (or on an operand's shape alone) in torch, now."""
        torch = self.torch

        def concrete(x):
            if isinstance(x, _Const):
                return x.value
            if isinstance(x, Tensor):     # a shape-only operand
                return torch.empty(x.shape, dtype=next(k for k, v in self.dtypes.items()
                                                       if v == x.dtype))
            return x
        with torch.no_grad():
            out = node.target(*_map(args, concrete), **_map(kwargs, concrete))
        return _map(out, lambda v: _Const(v) if isinstance(v, torch.Tensor) else v)

    def check(self, node, result, val):
        """Compare a mapped result with torch's shape (error) and dtype (cast)."""
        if isinstance(result, (list, tuple)):
            vals = val if isinstance(val, (list, tuple)) else [None] * len(result)
            return type(result)(self.check(node, r, v) for r, v in zip(result, vals))
        if not isinstance(result, Tensor) or not isinstance(val, self.torch.Tensor):
            return result
        if tuple(result.shape) != tuple(val.shape):
            raise TorchImportError(
                f"{self.name}: node {node.name!r} ({node.target}): mapped to {result.node.op} "
                f"of shape {list(result.shape)}, but torch's is {list(val.shape)}")
        dtype = self.dtype_name(val.dtype, f"node {node.name!r}")
        return result if result.dtype == dtype else anp.astype(result, dtype)

    def opaque_node(self, node, target: str, args, kwargs, val, reason: str):
        """An op the registry cannot express: one opaque node per tensor output."""
        inputs = [self.tensor(x) for x in tree_flatten([args, kwargs])[0]
                  if isinstance(x, (Tensor, _Const))]
        self.opaque.append(f"{target} ({reason})")
        vals = val if isinstance(val, (list, tuple)) else [val]
        outs = []
        for i, v in enumerate(vals):
            if not isinstance(v, self.torch.Tensor):
                outs.append(None)
                continue
            attrs = {"output": i} if len(vals) > 1 else {}
            n = Node(self.tracer.fresh(target.split(".")[1]), target,
                     tuple(t.name for t in inputs), tuple(v.shape),
                     self.dtype_name(v.dtype, f"node {node.name!r}"), attrs, self.tracer.group)
            outs.append(self.tracer._add(n, None))
        return outs[0] if not isinstance(val, (list, tuple)) else type(val)(outs)


def _needed(results) -> set:
    """The FX nodes the user outputs depend on."""
    needed, stack = set(), [r for r in results if hasattr(r, "op")]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    return needed

