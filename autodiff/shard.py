"""Operator sharding: rewrite chosen nodes of a forward graph into shards (tensor parallelism).

`shard_graph(graph, {node: ShardSpec(n, mode)})` returns an equivalent forward graph where

- matmul (a @ w, w a matrix) "out": n matmuls on column slices of w, the output split by
  columns; "reduce": n partial products on column slices of a and row slices of w, summed;
- take (embedding lookup, axis 0) "rows": each shard looks up its row range (`shard_take`,
  zeros outside), the partial results summed;
- conv2d "channels": n convolutions on output-channel slices of the weight, split on axis 1;
- cross_entropy "vocab": Megatron's vocab-parallel loss over logits split by classes: each
  shard computes its own log-sum-exp `lse_i = m_i + log sum exp(l - m_i)` (m_i its row max)
  and target logit; the combine `M + log sum_i exp(lse_i - M)` (M = max_i lse_i) reads only
  per-row scalars, so the full logits never exist when they arrive split (e.g. from a "out"
  matmul), and no shard waits on a value combined from the others (a pipeline stays acyclic);
- other ops on a split input run shard by shard where a follow rule allows it
  (autodiff/shard_follow.py), so column-parallel attention stays split by heads up to a
  row-parallel projection. A split value is concatenated (a partial sum added
  up) only where a consumer needs the whole tensor; that node keeps the original name, so
  outputs and consumers are unchanged. A value wanted split when it is not is sliced
  (getitem nodes `<node>.slice<i>of<n>`).

Shard nodes are named `<node>.shard<i>of<n>` (pieces `<node>.shard<i>of<n>.<piece>`) and keep
the original node's group. A sharded parameter becomes n `param` nodes (`w.shard0of4`, ...);
`graph.meta["shards"]` (JSON-able) records them with their slices, and `split_params` /
`join_params` map a parameter (or gradient) dict between the two graphs, so the sharded graph
trains from the same initial weights and its gradients compare with the original's.

Example: an MLP whose hidden layer is column-parallel and whose head is row-parallel:

>>> from autodiff.interpreter import evaluate
>>> from autodiff.models import init_params, make_data, mlp
>>> g = mlp(layers=1, width=8, in_features=4, classes=3, batch=2, dtype="float64")
>>> hidden, head = [n.name for n in g.by_op("matmul")]
>>> s = shard_graph(g, {hidden: ShardSpec(2, "out"), head: ShardSpec(2, "reduce")})
>>> [n.name for n in s.nodes if n.op == "matmul"]
['matmul.shard0of2', 'matmul.shard1of2', 'matmul_1.shard0of2', 'matmul_1.shard1of2']
>>> s[head].op, s[head].inputs             # the head's partial products are added up
('add_n', ('matmul_1.shard0of2', 'matmul_1.shard1of2'))
>>> params, feeds = init_params(g, 0), make_data(g, "mlp", 0)(0)
>>> sharded_params = split_params(s, params)   # layer0.weight.shard0of2 = columns 0..3, ...
>>> loss = evaluate(s, feeds, sharded_params)["cross_entropy"]
>>> bool(abs(loss - evaluate(g, feeds, params)["cross_entropy"]) < 1e-12)
True

Training: `autodiff.vjp(s)` differentiates the shard params; `join_params(s, grads)`
concatenates their gradients back under the original names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from autodiff.ir import Graph, GraphError, Node
from autodiff.ops.registry import ShapeError, lookup
from autodiff.ops.shape import encode_index
from autodiff.shard_follow import follow_rule, shard_bounds

__all__ = ["MODES", "ShardSpec", "join_params", "shard_bounds", "shard_graph", "shard_index",
           "shard_record", "split_params"]

MODES = {"matmul": ("out", "reduce"), "take": ("rows",), "conv2d": ("channels",),
         "cross_entropy": ("vocab",)}
_SHARD_NAME = re.compile(r"\.(?:shard|slice)(\d+)of(\d+)")


@dataclass(frozen=True)
class ShardSpec:
    """Split one node into `shards` equal pieces; `mode` one of MODES[op] (None: the op's
    first). `uneven` allows a count that does not divide the axis (sizes then differ by at
    most one, numpy.array_split's rule), e.g. a 50257-word vocabulary over 8 devices."""

    shards: int
    mode: str | None = None
    uneven: bool = False

    def to_dict(self) -> dict:
        return {"shards": self.shards, "mode": self.mode, "uneven": self.uneven}


def shard_index(name: str) -> tuple[int, int] | None:
    """(i, n) of a node named `...shard<i>of<n>...` or `...slice<i>of<n>...`, else None."""
    m = _SHARD_NAME.search(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def shard_record(graph: Graph) -> dict:
    """graph.meta["shards"]: {"params": {p: {axis, shape, parts, bounds}}, "nodes": {node:
    {shards, mode, parts}}} ({} for a graph that was not sharded). For a graph read from a
    file (no meta) "params" is rebuilt from the shard params' attrs["shard"], "nodes" empty."""
    if "shards" in graph.meta:
        return graph.meta["shards"]
    params: dict[str, dict] = {}
    for node in graph.params:
        tag = node.attrs.get("shard")
        if isinstance(tag, dict):
            entry = params.setdefault(tag["of"], {"axis": tag["axis"], "shape": tag["shape"],
                                                  "parts": [], "bounds": []})
            entry["parts"].append(node.name)
            entry["bounds"].append(list(tag["bounds"]))
    return {"params": params, "nodes": {}} if params else {}


def shard_graph(graph: Graph, specs: Mapping[str, ShardSpec | int | tuple]) -> Graph:
    """The forward graph with the nodes of `specs` sharded (module docstring); a spec is a
    ShardSpec, a shard count (the op's default mode) or (count, mode). With no spec above one
    shard the graph itself is returned."""
    if graph.gradient_nodes:
        raise GraphError(f"{graph.name}: shard_graph takes a forward graph; this one has "
                         f"gradient nodes (shard before vjp)")
    if shard_record(graph):
        raise GraphError(f"{graph.name}: the graph is already sharded; shard the original")
    plan = {name: _check_spec(graph, name, spec) for name, spec in specs.items()}
    if all(spec.shards == 1 for spec in plan.values()):
        return graph
    first = _Rewriter(graph, plan, decisions=None)
    first.run()
    return _Rewriter(graph, plan, decisions=first.decisions).run()


def _check_spec(graph: Graph, name: str, spec) -> ShardSpec:
    """The spec normalised to a ShardSpec with its mode; GraphError if it cannot apply."""
    if name not in graph.index:
        raise GraphError(f"{graph.name}: cannot shard {name!r}: no node of that name")
    node = graph[name]
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = ShardSpec(spec)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        spec = ShardSpec(*spec)
    if not isinstance(spec, ShardSpec):
        raise GraphError(f"{graph.name}: cannot shard {name!r}: expected a ShardSpec, a shard "
                         f"count or (count, mode), got {spec!r}")
    where = f"{graph.name}: cannot shard {name!r} ({node.op})"
    if node.op not in MODES:
        raise GraphError(f"{where}: only {', '.join(sorted(MODES))} nodes can be sharded "
                         "(elementwise ops follow their inputs' shards)")
    mode = spec.mode or MODES[node.op][0]
    if mode not in MODES[node.op]:
        raise GraphError(f"{where}: mode {mode!r} is not one of {', '.join(MODES[node.op])}")
    n = spec.shards
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise GraphError(f"{where}: the shard count must be a positive integer, got {n!r}")
    size, axis_name = _split_size(graph, node, mode, where)
    if n > size:
        raise GraphError(f"{where}: {n} shards exceed {axis_name} of size {size}")
    if size % n and not spec.uneven:
        raise GraphError(f"{where}: {n} shards do not divide {axis_name} of size {size} "
                         "(ShardSpec(uneven=True) allows shards differing by one)")
    return ShardSpec(n, mode, spec.uneven)


def _split_size(graph: Graph, node: Node, mode: str, where: str) -> tuple[int, str]:
    """The size of the axis `mode` splits, after checking the operands' ranks."""
    shapes = [graph[i].shape for i in node.inputs]
    if node.op == "matmul":
        if len(shapes[1]) != 2 or not shapes[0]:
            raise GraphError(f"{where}: the right operand must be a matrix (weight), got shape "
                             f"{list(shapes[1])}")
        return (shapes[1][1], "the output features") if mode == "out" else \
            (shapes[1][0], "the reduced dimension")
    if node.op == "take":
        if node.attrs.get("axis", 0) % max(len(shapes[0]), 1) != 0:
            raise GraphError(f"{where}: only a lookup along axis 0 (rows) can be sharded")
        return shapes[0][0], "the table's rows"
    if node.op == "conv2d":
        return shapes[1][0], "the output channels"
    return shapes[0][-1], "the classes (vocabulary)"


class _Rewriter:
    """One pass over the forward graph emitting the sharded graph. Values are held whole (under
    their own name), split along an axis (shard names) or as partial sums. A parameter is split
    when its first use wants it split: the first pass (decisions=None) discovers that lazily,
    the second emits it in its original place."""

    def __init__(self, graph: Graph, plan: dict[str, ShardSpec], decisions: dict | None):
        self.graph, self.plan = graph, plan
        self.lazy = decisions is None
        self.decisions: dict[str, tuple[int, int] | None] = {} if self.lazy else decisions
        self.nodes: list[Node] = []
        self.types: dict[str, tuple[tuple[int, ...], str]] = {}
        self.whole: set[str] = set()
        self.split: dict[str, tuple[int, list[str]]] = {}
        self.partial: dict[str, list[str]] = {}
        self.slices: dict[tuple[str, int, int], list[str]] = {}
        self.pending: set[str] = set()
        self.params: dict[str, dict] = {}
        self.record: dict[str, dict] = {}

    def run(self) -> Graph:
        for node in self.graph.nodes:
            if node.is_source:
                self._source(node)
            elif node.name in self.plan and self.plan[node.name].shards > 1:
                spec = self.plan[node.name]
                getattr(self, f"_{node.op}")(node, spec.shards, spec.mode)
            elif not self._follow(node):
                self._copy(node)
        updates = self.graph.meta.get("updates", {})
        for name in [*self.graph.outputs, *updates, *updates.values()]:
            self.whole_of(name)
        meta = {**self.graph.meta, "shards": {"params": self.params, "nodes": self.record}}
        return Graph(self.nodes, self.graph.outputs, self.graph.name, meta=meta,
                     source=f"{self.graph.name} (sharded)")

    def emit(self, name: str, op: str, inputs, attrs: dict, like: Node,
             flops: int | None = None) -> str:
        """Append a node computing `op` (shape and dtype from the registry's rule)."""
        shapes = [self.types[i][0] for i in inputs]
        dtypes = [self.types[i][1] for i in inputs]
        try:
            shape, dtype = lookup(op).shape(shapes, dtypes, **attrs)
        except ShapeError as e:   # a bug of the rewrite, not of the request
            raise GraphError(f"{self.graph.name}: sharding {like.name!r}: {op} node {name!r}: "
                             f"{e}") from None
        if name in self.types:
            raise GraphError(f"{self.graph.name}: sharding {like.name!r}: the name {name!r} is "
                             "already taken")
        return self._append(Node(name, op, tuple(inputs), tuple(shape), dtype, dict(attrs),
                                 like.group, flops))

    def _append(self, node: Node) -> str:
        self.nodes.append(node)
        self.types[node.name] = (node.shape, node.dtype)
        return node.name

    def _shards(self, node: Node, n: int, mode: str, op: str, operands, attrs) -> list[str]:
        """Emit `node`'s n shards (shard k: `op` on operands[k] with attrs[k]) and note them."""
        flops = None if node.flops is None else node.flops // n
        names = [self.emit(f"{node.name}.shard{k}of{n}", op, operands[k], attrs[k], node, flops)
                 for k in range(n)]
        self.record[node.name] = {"shards": n, "mode": mode, "parts": [[x] for x in names]}
        return names

    def _source(self, node: Node) -> None:
        if node.op == "param" and self.lazy:
            self.pending.add(node.name)
            self.types[node.name] = (node.shape, node.dtype)
        elif node.op == "param" and self.decisions.get(node.name) is not None:
            self._split_param(node, *self.decisions[node.name])
        else:
            self._copy(node)

    def _split_param(self, node: Node, axis: int, n: int) -> None:
        """n param nodes holding equal slices of `node` along `axis`."""
        names, bounds = [], []
        for i, (lo, hi) in enumerate(shard_bounds(node.shape[axis], n)):
            shape = node.shape[:axis] + (hi - lo,) + node.shape[axis + 1:]
            name = f"{node.name}.shard{i}of{n}"
            tag = {"of": node.name, "axis": axis, "shape": list(node.shape), "bounds": [lo, hi]}
            self._append(Node(name, "param", (), shape, node.dtype, {**node.attrs, "shard": tag},
                              node.group))
            names.append(name)
            bounds.append([lo, hi])
        self.split[node.name] = (axis, names)
        self.params[node.name] = {"axis": axis, "shape": list(node.shape), "parts": names,
                                  "bounds": bounds}

    def _decide(self, name: str, want: tuple[int, int] | None) -> None:
        """First use of a parameter in the lazy pass: split it as this use wants, or not."""
        self.pending.discard(name)
        self.decisions[name] = want
        self.types.pop(name)
        if want is None:
            self._copy(self.graph[name])
        else:
            self._split_param(self.graph[name], *want)

    def whole_of(self, name: str) -> str:
        """`name`'s whole value, concatenating its shards or adding its partial sums first."""
        if name in self.pending:
            self._decide(name, None)
        if name in self.whole:
            return name
        like = self.graph[name]
        if name in self.split:
            axis, parts = self.split[name]
            self.types.pop(name, None)
            self.emit(name, "concatenate", parts, {"axis": axis}, like)
        else:
            self.emit(name, "add_n", self.partial[name], {}, like)
        self.whole.add(name)
        return name

    def shards_of(self, name: str, axis: int, n: int) -> list[str]:
        """`name` as n equal slices along `axis` (its shards when it is split that way)."""
        if name in self.pending:
            self._decide(name, (axis, n))
        if name in self.split and self.split[name][0] == axis and len(self.split[name][1]) == n:
            return self.split[name][1]
        key = (name, axis, n)
        if key not in self.slices:
            whole = self.whole_of(name)
            shape = self.types[whole][0]
            suffix = "" if axis == len(shape) - 1 else f".axis{axis}"
            self.slices[key] = [
                self.emit(f"{name}.slice{i}of{n}{suffix}", "getitem", [whole],
                          {"index": encode_index((slice(None),) * axis + (slice(lo, hi),),
                                                 shape)}, self.graph[name])
                for i, (lo, hi) in enumerate(shard_bounds(shape[axis], n))]
        return self.slices[key]

    def _copy(self, node: Node) -> None:
        for i in node.inputs:
            self.whole_of(i)
        self._append(node)
        self.whole.add(node.name)

    def _follow(self, node: Node) -> bool:
        """Run `node` once per shard of a split input when a follow rule allows it."""
        split = [(self.split[i][0], len(self.split[i][1])) if i in self.split else None
                 for i in node.inputs]
        if not any(split):
            return False
        rule = follow_rule(node, [self.graph[i].shape for i in node.inputs], split)
        if rule is None:
            return False
        n = rule.shards
        per_input = [[self.whole_of(i)] * n if ax is None else self.shards_of(i, ax, n)
                     for i, ax in zip(node.inputs, rule.in_axes)]
        attrs = [node.attrs if rule.attrs is None else {**node.attrs, **rule.attrs[k]}
                 for k in range(n)]
        self.split[node.name] = (rule.out_axis, self._shards(
            node, n, "follow", node.op, [[p[k] for p in per_input] for k in range(n)], attrs))
        return True

    def _matmul(self, node: Node, n: int, mode: str) -> None:
        a, w = node.inputs
        if mode == "out":
            lefts, ws = [self.whole_of(a)] * n, self.shards_of(w, 1, n)
        else:
            lefts = self.shards_of(a, len(self.graph[a].shape) - 1, n)
            ws = self.shards_of(w, 0, n)
        names = self._shards(node, n, mode, "matmul", list(zip(lefts, ws)), [{}] * n)
        if mode == "out":
            self.split[node.name] = (len(node.shape) - 1, names)
        else:
            self.partial[node.name] = names

    def _conv2d(self, node: Node, n: int, mode: str) -> None:
        x, w = node.inputs
        x_whole, ws = self.whole_of(x), self.shards_of(w, 0, n)
        self.split[node.name] = (1, self._shards(node, n, mode, "conv2d",
                                                 [(x_whole, wk) for wk in ws], [node.attrs] * n))

    def _take(self, node: Node, n: int, mode: str) -> None:
        table, idx = node.inputs
        rows = self.graph[table].shape[0]
        tables, idx_whole = self.shards_of(table, 0, n), self.whole_of(idx)
        self.partial[node.name] = self._shards(
            node, n, mode, "shard_take", [(t, idx_whole) for t in tables],
            [{"offset": lo, "total": rows} for lo, _ in shard_bounds(rows, n)])

    def _cross_entropy(self, node: Node, n: int, mode: str) -> None:
        """Vocab-parallel loss: each shard its own log-sum-exp and target logit, then a
        combine over n scalars per row (module docstring)."""
        logits, labels = node.inputs
        classes = self.graph[logits].shape[-1]
        parts = self.shards_of(logits, len(self.graph[logits].shape) - 1, n)
        lab = self.whole_of(labels)
        ce, emit = node.name, self.emit
        lses, targets, members = [], [], []
        for i, (p, (lo, _)) in enumerate(zip(parts, shard_bounds(classes, n))):
            piece = f"{ce}.shard{i}of{n}"
            row_max = emit(f"{piece}.max", "max", [p], {"axis": -1, "keepdims": False}, node)
            nograd = emit(f"{piece}.max.nograd", "stop_gradient", [row_max], {}, node)
            kept = emit(f"{piece}.max.kept", "reshape", [nograd],
                        {"shape": [*self.types[row_max][0], 1]}, node)
            shifted = emit(f"{piece}.shifted", "subtract", [p, kept], {}, node)
            exp = emit(f"{piece}.exp", "exp", [shifted], {}, node)
            total = emit(f"{piece}.sumexp", "sum", [exp], {"axis": -1, "keepdims": False}, node)
            log = emit(f"{piece}.log", "log", [total], {}, node)
            lses.append(emit(f"{piece}.lse", "add", [log, nograd], {}, node))
            targets.append(emit(f"{piece}.target", "shard_pick", [p, lab],
                                {"offset": lo, "total": classes}, node))
            members.append([row_max, nograd, kept, shifted, exp, total, log, lses[-1],
                            targets[-1]])
        lse = self._combine_lse(ce, lses, node)
        nll = emit(f"{ce}.nll", "subtract", [lse, emit(f"{ce}.target", "add_n", targets, {},
                                                       node)], {}, node)
        self.types.pop(ce, None)
        emit(ce, "mean", [nll], {"axis": None, "keepdims": False}, node)
        self.whole.add(ce)
        self.record[ce] = {"shards": n, "mode": mode, "parts": members}

    def _combine_lse(self, ce: str, lses: list[str], node: Node) -> str:
        """lse = M + log sum_i exp(lse_i - M), M = max_i lse_i under stop_gradient."""
        emit = self.emit
        stacked = emit(f"{ce}.lses", "stack", lses, {"axis": 0}, node)
        top = emit(f"{ce}.max", "max", [stacked], {"axis": 0, "keepdims": False}, node)
        top = emit(f"{ce}.max.nograd", "stop_gradient", [top], {}, node)
        shifted = emit(f"{ce}.lses.shifted", "subtract", [stacked, top], {}, node)
        total = emit(f"{ce}.sumexp", "sum", [emit(f"{ce}.lses.exp", "exp", [shifted], {}, node)],
                     {"axis": 0, "keepdims": False}, node)
        return emit(f"{ce}.logsumexp", "add",
                    [emit(f"{ce}.logsumexp.shifted", "log", [total], {}, node), top], {}, node)


# ------------------------------------------------------------ parameter values
def split_params(graph: Graph, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values keyed by the original graph's params -> keyed by sharded `graph`'s params: a
    sharded parameter's value cut into its shards' slices (contiguous copies), others as is."""
    record = shard_record(graph).get("params", {})
    out: dict[str, np.ndarray] = {}
    for name, value in values.items():
        entry = record.get(name)
        if entry is None:
            out[name] = value
            continue
        value = np.asarray(value)
        if list(value.shape) != entry["shape"]:
            raise GraphError(f"{graph.name}: split_params: {name!r} has shape "
                             f"{list(value.shape)}, expected {entry['shape']}")
        lead = (slice(None),) * entry["axis"]
        for part, (lo, hi) in zip(entry["parts"], entry["bounds"]):
            out[part] = np.ascontiguousarray(value[lead + (slice(lo, hi),)])
    return out


def join_params(graph: Graph, values: Mapping[str, np.ndarray | None]
                ) -> dict[str, np.ndarray | None]:
    """The inverse of split_params: shard values (or gradients) concatenated back under the
    original parameter's name; a missing or None shard counts as zeros, all None gives None."""
    record = shard_record(graph).get("params", {})
    owner = {part: name for name, e in record.items() for part in e["parts"]}
    out = {k: v for k, v in values.items() if k not in owner}
    for name, entry in record.items():
        got = [values.get(p) for p in entry["parts"]]
        if all(v is None for v in got):
            if any(p in values for p in entry["parts"]):
                out[name] = None
            continue
        dtype = np.result_type(*[v for v in got if v is not None])
        pieces = []
        for v, (lo, hi) in zip(got, entry["bounds"]):
            shape = list(entry["shape"])
            shape[entry["axis"]] = hi - lo
            pieces.append(np.zeros(shape, dtype) if v is None else np.asarray(v))
        out[name] = np.concatenate(pieces, axis=entry["axis"])
    return out
