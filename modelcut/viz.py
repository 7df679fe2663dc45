"""Graphs as Graphviz DOT: values and back-flowing gradients, devices, cut tensors, layer groups;
one box per node (`graph_dot`) or per layer group (`grouped_dot`), rendered by Graphviz's `dot`.
"""
from __future__ import annotations

import ast
import html
import logging
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autodiff import numpy as anp
from autodiff.api import grad
from autodiff.errors import ModelcutError
from autodiff.interpreter import Interpreter
from autodiff.ir import FLOAT_DTYPES, Graph, GraphError
from autodiff.ops.registry import get_op
from autodiff.reverse import vjp
from autodiff.trace import Tracer, TracingError
from modelcut.units import format_flops, format_size

log = logging.getLogger(__name__)

DEFAULT_MAX_NODES = 300
SMALL_TENSOR = 8            # tensors with at most this many elements show their values
GRAD_COLOUR = "#d62728"
EDGE_COLOUR = "#555555"
PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69",
           "#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f")
UNPLACED_COLOUR = "#ffffff"
UNGROUPED = "(ungrouped)"

# Functions an expression may call: name -> autodiff.numpy function (nothing else is reachable).
EXPRESSION_FUNCTIONS = {
    name: getattr(anp, name) for name in (
        "exp", "log", "sin", "cos", "tanh", "sqrt", "abs", "sign", "maximum", "minimum",
        "relu", "gelu", "sigmoid", "square", "negative", "add", "subtract", "multiply",
        "divide", "power")
}
_BINARY = {ast.Add: anp.add, ast.Sub: anp.subtract, ast.Mult: anp.multiply,
           ast.Div: anp.divide, ast.Pow: anp.power}


class VizError(ModelcutError, ValueError):
    """A graph cannot be drawn as asked (bad expression, too many nodes, no Graphviz)."""


# ------------------------------------------------------------------ expressions
def parse_assignments(text: str) -> dict[str, float]:
    """`"x=1,y=2.5,z=-3"` -> {"x": 1.0, "y": 2.5, "z": -3.0}."""
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, number = part.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise VizError(f"--at: expected name=number pairs separated by commas, got {part!r}")
        try:
            values[name] = float(number)
        except ValueError:
            raise VizError(f"--at: {name} = {number.strip()!r} is not a number") from None
        if not math.isfinite(values[name]):
            raise VizError(f"--at: {name} = {number.strip()!r} is not a finite number")
    return values


# Bounds on --expr, so that a hostile expression cannot exhaust the parser's stack or ours
MAX_EXPRESSION_CHARS = 2000
MAX_EXPRESSION_DEPTH = 100


def _parse_expression(text: str) -> ast.Expression:
    """`text` parsed as a Python expression within the bounds above, else VizError."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise VizError(f"--expr: the expression has {len(text):,} characters, more than "
                       f"{MAX_EXPRESSION_CHARS:,}; draw a smaller one")
    shown = text if len(text) <= 60 else text[:57] + "..."
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise VizError(f"expression {shown!r}: syntax error at column {e.offset}: "
                       f"{e.msg}") from None
    except (RecursionError, MemoryError):
        raise VizError(f"--expr: the expression {shown!r} is nested too deeply") from None
    stack = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise VizError(f"--expr: the expression {shown!r} nests deeper than "
                           f"{MAX_EXPRESSION_DEPTH} levels; draw a smaller one")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


def expression_graph(text: str, at: Mapping[str, float]) -> Graph:
    """The graph of an arithmetic expression over named scalars, traced at the values `at`;
    the text is parsed with `ast` and walked, nothing in it is evaluated as Python."""
    tree = _parse_expression(text)
    tracer = Tracer("expression")
    inputs: dict[str, object] = {}

    def walk(node: ast.AST):
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = walk(node.operand)
            return anp.negative(operand) if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in at:
                raise VizError(f"expression {text!r}: no value for {node.id!r} "
                               f"(pass it with --at {node.id}=...)")
            if node.id not in inputs:
                inputs[node.id] = tracer.source("input", (), "float64", node.id,
                                                value=float(at[node.id]))
            return inputs[node.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords
                and node.func.id in EXPRESSION_FUNCTIONS):
            return EXPRESSION_FUNCTIONS[node.func.id](*[walk(a) for a in node.args])
        allowed = ", ".join(sorted(EXPRESSION_FUNCTIONS))
        raise VizError(f"expression {text!r}: {ast.unparse(node)!r} is not allowed (use names, "
                       f"numbers, + - * / **, unary -, and calls of: {allowed})")

    try:
        out = walk(tree.body)
    except (TracingError, TypeError) as e:
        raise VizError(f"expression {text!r}: {e}") from None
    if not hasattr(out, "tracer"):
        raise VizError(f"expression {text!r} uses no variable: nothing to draw")
    graph = tracer.graph([out], name="expression")
    graph.validate("expression")
    return graph


# ------------------------------------------------------------------ annotations
@dataclass(frozen=True)
class Annotations:
    """Forward values, gradients d output / d node, and per edge (input, consumer) the gradient
    that consumer sends back to that input (its upstream gradient times its local derivative)."""

    values: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    edge_grads: dict[tuple[str, str], np.ndarray]


def annotate(graph: Graph, feeds: Mapping | None = None, params: Mapping | None = None,
             output: str | None = None) -> Annotations:
    """Run `graph` and its reverse pass; gradients only when `output` (default the first) is a
    scalar. Raises GraphError for graphs with opaque ops (they cannot be run)."""
    output = output or graph.outputs[0]
    scalar = graph[output].shape == () and graph[output].dtype in FLOAT_DTYPES
    wrt = [n.name for n in graph.nodes if n.dtype in FLOAT_DTYPES]
    program = vjp(graph, wrt=wrt, output=output) if scalar else graph
    grad_names = program.meta.get("grads", {}) if scalar else {}
    names = [n.name for n in graph.nodes] + list(dict.fromkeys(grad_names.values()))
    run = Interpreter(program, outputs=names).run(feeds or {}, params or {})
    values = {n.name: np.asarray(run.outputs[n.name]) for n in graph.nodes}
    grads = {x: np.asarray(run.outputs[g]) for x, g in grad_names.items()}
    edge_grads = {(x, node.name): contribution for node in graph.nodes
                  if node.name in grads and not node.is_source
                  for x, contribution in _local_contributions(graph, node, values, grads).items()}
    return Annotations(values, grads, edge_grads)


def _local_contributions(graph: Graph, node, values, grads) -> dict[str, np.ndarray]:
    """Per input of `node`: d/d input of sum(upstream * node(inputs)), computed by autodiff."""
    op = get_op(node.op)
    positions = tuple(i for i, x in enumerate(node.inputs) if x in grads)
    if op is None or op.vjp is None or not positions:
        return {}
    upstream = grads[node.name]

    def weighted(*args):
        return anp.sum(anp.multiply(anp.apply(node.op, *args, **node.attrs), upstream))

    local = grad(weighted, argnums=positions)(*[values[x] for x in node.inputs])
    out: dict[str, np.ndarray] = {}
    for i, g in zip(positions, local):
        if g is not None:
            name = node.inputs[i]
            out[name] = out[name] + g if name in out else np.asarray(g)
    return out


def format_tensor(array: np.ndarray | None, what: str) -> str | None:
    """`value 3` for tensors of <= SMALL_TENSOR elements, `|value| 12.3` (the 2-norm) beyond."""
    if array is None:
        return None
    a = np.asarray(array)
    if a.size <= SMALL_TENSOR:
        if a.ndim == 0:
            return f"{what} {_number(a.item())}"
        return f"{what} [" + ", ".join(_number(x) for x in a.ravel().tolist()) + "]"
    return f"|{what}| {_number(float(np.linalg.norm(a.astype(np.float64).ravel())))}"


def _number(x) -> str:
    """A Python scalar (from `.item()` or `.tolist()`): bools and integers as they are."""
    return str(x) if isinstance(x, int) else f"{float(x):.4g}"


# ------------------------------------------------------------------ DOT text
def device_colours(devices: Sequence[str]) -> dict[str, str]:
    """A distinct fill colour per device name (palette first, then evenly spaced hues)."""
    return {name: PALETTE[i] if i < len(PALETTE) else f"{(i * 0.618034) % 1.0:.3f} 0.35 0.95"
            for i, name in enumerate(devices)}     # beyond the palette: Graphviz HSV


def quote(text: str) -> str:
    """A DOT double-quoted string (newlines become centred line breaks)."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def _attrs(attrs: Mapping[str, object]) -> str:
    def value(v) -> str:     # an HTML-like label <...> stays unquoted
        return v if isinstance(v, str) and v.startswith("<") and v.endswith(">") else quote(v)
    return "[" + ", ".join(f"{k}={value(v)}" for k, v in attrs.items() if v is not None) + "]"


@dataclass(frozen=True)
class _PlacementView:
    device_of: dict[str, str]
    devices: tuple[str, ...]
    colours: dict[str, str]


def _placement_view(placement: Mapping[str, str] | None, devices: Sequence[str] | None
                    ) -> _PlacementView | None:
    if placement is None:
        return None
    order = tuple(devices) if devices is not None else tuple(dict.fromkeys(placement.values()))
    unknown = sorted(set(placement.values()) - set(order))
    if unknown:
        raise VizError(f"placement names devices {unknown} that are not in the cluster "
                       f"({', '.join(order)})")
    return _PlacementView(dict(placement), order, device_colours(order))


def _legend(view: _PlacementView) -> str:
    cells = "".join(f'<td bgcolor="{view.colours[d]}">{html.escape(str(d), quote=False)}</td>'
                    for d in view.devices)
    return f'<<table border="0" cellspacing="2"><tr><td>devices:</td>{cells}</tr></table>>'


def _dot_header(name: str, view: _PlacementView | None, graph_attrs: str = "") -> list[str]:
    """The opening lines of a digraph: default styles and, when placed, the device legend."""
    return [f"digraph {quote(name)} {{",
            '  graph [rankdir=TB, newrank=true, fontname="Helvetica", labelloc=t'
            f'{graph_attrs}];',
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
            f'fillcolor="{UNPLACED_COLOUR}"];',
            '  edge [fontname="Helvetica", fontsize=9];',
            *([f"  graph [label={_legend(view)}];"] if view else [])]


def graph_dot(graph: Graph, *, annotations: Annotations | None = None,
              placement: Mapping[str, str] | None = None, devices: Sequence[str] | None = None,
              cluster: str | None = None, max_nodes: int = DEFAULT_MAX_NODES) -> str:
    """One box per node (op, shape, value and gradient when annotated), forward edges, and
    gradient edges drawn backwards in red; placed (node -> device name), nodes take their
    device's colour and cut tensors are bold with their bytes. `cluster`: device or group."""
    if len(graph.nodes) > max_nodes:
        groups = len({n.group for n in graph.nodes})
        raise VizError(f"graph {graph.name!r} has {len(graph.nodes)} nodes, more than --max-nodes "
                       f"{max_nodes}: pass --group to draw one box per layer group ({groups} "
                       f"boxes), or a larger --max-nodes")
    view = _placement_view(placement, devices)
    if view is not None:
        missing = [n.name for n in graph.nodes if n.name not in view.device_of]
        if missing:
            raise VizError(f"placement has no device for node {missing[0]!r} "
                           f"({len(missing)} nodes missing)")
    cluster = cluster or ("device" if view else "group")
    if cluster not in ("device", "group"):
        raise VizError(f"--cluster must be 'device' or 'group', got {cluster!r}")
    if cluster == "device" and view is None:
        raise VizError("--cluster device needs a placement (--placement or --devices)")

    lines = _dot_header(graph.name, view, ", nodesep=0.3")
    statements = {n.name: "    " + quote(n.name) + " " + _attrs(
        _node_attrs(graph, n, annotations, view)) + ";" for n in graph.nodes}
    lines += _clustered(graph, statements, cluster, view)
    for node in graph.nodes:
        for x in dict.fromkeys(node.inputs):
            attrs: dict[str, object] = {"color": EDGE_COLOUR}
            if view and view.device_of[x] != view.device_of[node.name]:
                attrs.update(style="bold", penwidth="2.5", label=format_size(graph[x].nbytes),
                             color="#000000")
            lines.append(f"  {quote(x)} -> {quote(node.name)} {_attrs(attrs)};")
    if annotations:
        for (x, consumer), g in annotations.edge_grads.items():
            attrs = {"color": GRAD_COLOUR, "fontcolor": GRAD_COLOUR, "style": "dashed",
                     "constraint": "false", "arrowhead": "vee", "class": "grad",
                     "label": format_tensor(g, "grad")}
            lines.append(f"  {quote(consumer)} -> {quote(x)} {_attrs(attrs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_attrs(graph: Graph, node, annotations, view) -> dict[str, object]:
    shape = ",".join(str(d) for d in node.shape)
    lines = [node.name, f"{node.op} {node.dtype}[{shape}]"]
    if annotations is not None:
        lines.append(format_tensor(annotations.values.get(node.name), "value"))
        lines.append(format_tensor(annotations.grads.get(node.name), "grad"))
    attrs: dict[str, object] = {}
    if view is not None:
        device = view.device_of[node.name]
        attrs["fillcolor"] = view.colours[device]
        attrs["tooltip"] = f"{node.name} on {device}"
        # the other devices that read its tensor (SPEC section 2, remote(v))
        remote = {view.device_of[c] for c in graph.consumers(node.name)} - {device}
        if remote:
            to = ", ".join(d for d in view.devices if d in remote)
            lines.append(f"sends {format_size(node.nbytes)} to {to}")
            attrs.update(style="rounded,filled,bold", penwidth="3")
    attrs["label"] = "\n".join(line for line in lines if line)
    return attrs


def _clustered(graph: Graph, statements: dict[str, str], cluster: str,
               view: _PlacementView | None) -> list[str]:
    """Node statements wrapped in one subgraph cluster per device or per layer group."""
    if cluster == "device":
        keys = {n.name: view.device_of[n.name] for n in graph.nodes}
        order = list(view.devices)
    else:
        keys = {n.name: n.group for n in graph.nodes}
        order = list(dict.fromkeys(n.group for n in graph.nodes if n.group is not None))
    lines = [statements[n.name] for n in graph.nodes if keys[n.name] is None]
    for i, key in enumerate(order):
        members = [statements[n.name] for n in graph.nodes if keys[n.name] == key]
        if not members:
            continue
        style = (f'style="rounded,filled"; fillcolor="#f7f7f7"; color="{view.colours[key]}"; '
                 'penwidth=3' if cluster == "device" else 'style="rounded,dashed"; color="#777777"')
        lines += [f"  subgraph {quote(f'cluster_{cluster}_{i}')} {{",
                  f"    label={quote(key)}; {style};", *members, "  }"]
    return lines


@dataclass(frozen=True)
class _Boxes:
    """A grouped drawing: every node's box id (group * k + device) and the per-box sums."""

    box: np.ndarray
    k: int
    names: list[str]          # group names, the last for ungrouped nodes
    nodes: np.ndarray
    ops: np.ndarray
    flops: np.ndarray
    params: np.ndarray


def grouped_dot(graph: Graph, *, placement: Mapping[str, str] | None = None,
                devices: Sequence[str] | None = None, cluster: str | None = "device") -> str:
    """One box per layer group (per group and device when placed) with its summed forward
    FLOPs and parameters, and an edge per pair of boxes with the bytes between them."""
    from partition.cost import graph_arrays
    arrays = graph_arrays(graph)
    view = _placement_view(placement, devices)
    boxes = _group_boxes(graph, arrays, view)
    lines = _dot_header(graph.name + " (groups)", view)
    lines += _box_statements(boxes, view, cluster)
    lines += _box_edges(arrays, boxes, view)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _group_boxes(graph: Graph, arrays, view: _PlacementView | None) -> _Boxes:
    """Every node's box and the boxes' summed counts, FLOPs and parameters."""
    n_groups = len(arrays.group_names) + 1                      # last: ungrouped
    group = np.where(arrays.group < 0, n_groups - 1, arrays.group)
    if view is not None:
        index = {d: i for i, d in enumerate(view.devices)}
        try:
            device = np.fromiter((index[view.device_of[name]] for name in arrays.names),
                                 np.int64, arrays.n)
        except KeyError as e:
            raise VizError(f"placement has no device for node {e.args[0]!r}") from None
    else:
        device = np.zeros(arrays.n, dtype=np.int64)
    k = len(view.devices) if view else 1
    box = group * k + device
    size = np.fromiter((graph.nodes[i].size for i in np.flatnonzero(arrays.is_param)), np.int64)
    count = n_groups * k
    return _Boxes(box=box, k=k, names=[*arrays.group_names, UNGROUPED],
                  nodes=np.bincount(box, minlength=count),
                  ops=np.bincount(box[~arrays.is_source], minlength=count),   # as in the report
                  flops=np.bincount(box, weights=arrays.flops, minlength=count),
                  params=np.bincount(box[arrays.is_param], weights=size, minlength=count))


def _box_statements(boxes: _Boxes, view: _PlacementView | None, cluster: str | None
                    ) -> list[str]:
    """A labelled node statement per non-empty box (inside its device's cluster when asked)."""
    k = boxes.k
    by_device: dict[int, list[str]] = {}
    for b in np.flatnonzero(boxes.nodes):
        g, d = divmod(int(b), k)
        label = [boxes.names[g]] + ([view.devices[d]] if view else []) + [
            f"{int(boxes.ops[b])} ops, {format_flops(boxes.flops[b]).replace('FLOPS', 'FLOP')}",
            f"{int(boxes.params[b]):,} parameters"]
        attrs = {"label": "\n".join(label),     # _attrs leaves out a None fill colour
                 "fillcolor": view.colours[view.devices[d]] if view else None}
        by_device.setdefault(d, []).append(f"    {quote(f'box{b}')} {_attrs(attrs)};")
    lines = []
    for d, members in by_device.items():
        if view and cluster == "device":
            lines += [f"  subgraph {quote(f'cluster_device_{d}')} {{",
                      f"    label={quote(view.devices[d])}; style=\"rounded\";", *members, "  }"]
        else:
            lines += members
    return lines


def _box_edges(arrays, boxes: _Boxes, view: _PlacementView | None) -> list[str]:
    """An edge per pair of boxes with the bytes between them: distinct (tensor, receiving box)
    pairs with a different sender box; bold when it crosses devices."""
    box, k = boxes.box, boxes.k
    count = len(boxes.names) * k
    src, dst_box = arrays.in_idx.astype(np.int64), box[arrays.in_dst]
    keep = box[src] != dst_box
    pairs = np.unique(src[keep] * count + dst_box[keep])
    tensor, target = pairs // count, pairs % count
    keys, inverse = np.unique(box[tensor] * count + target, return_inverse=True)
    nbytes = np.bincount(inverse, weights=arrays.bytes[tensor], minlength=len(keys))
    lines = []
    for key, b in zip(keys.tolist(), nbytes.tolist()):
        a, c = divmod(key, count)
        attrs = {"label": format_size(b), "color": EDGE_COLOUR}
        if view and a % k != c % k:
            attrs.update(style="bold", penwidth="2.5", color="#000000")
        lines.append(f"  {quote(f'box{a}')} -> {quote(f'box{c}')} {_attrs(attrs)};")
    return lines


# ------------------------------------------------------------------ rendering
def render(dot_text: str, stem: Path, formats: Sequence[str] = ("svg", "png"),
           timeout: float = 120.0) -> list[Path]:
    """Write `stem`.dot and, with Graphviz's `dot` binary, `stem`.<format> for each format
    (VizError when `dot` is missing, the .dot file written all the same)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    dot_path = stem.with_suffix(".dot")
    dot_path.write_text(dot_text, encoding="utf-8")
    written = [dot_path]
    if not formats:
        return written
    exe = shutil.which("dot")
    if exe is None:
        raise VizError(f"Graphviz's `dot` program is not installed, so only {dot_path} was "
                       "written; install it with `apt-get install graphviz` (or your system's "
                       "graphviz package) to get SVG and PNG files")
    for fmt in formats:
        out = stem.with_suffix("." + fmt)
        try:
            subprocess.run([exe, f"-T{fmt}", str(dot_path), "-o", str(out)], check=True,
                           capture_output=True, text=True, timeout=timeout)
        except subprocess.CalledProcessError as e:
            raise VizError(f"dot failed to render {dot_path} as {fmt}: "
                           f"{e.stderr.strip()}") from None
        except subprocess.TimeoutExpired:
            raise VizError(f"dot took more than {timeout:.0f} s to render {dot_path}; draw fewer "
                           "nodes (--group)") from None
        written.append(out)
    return written


def svg_text(dot_text: str, timeout: float = 120.0) -> str:
    """The SVG of `dot_text` as a string (for inlining into HTML); VizError without Graphviz."""
    exe = shutil.which("dot")
    if exe is None:
        raise VizError("Graphviz's `dot` program is not installed; install it with "
                       "`apt-get install graphviz` to draw the graph")
    done = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise VizError(f"dot failed: {done.stderr.strip()}")
    return done.stdout


def annotate_safely(graph: Graph, feeds=None, params=None) -> Annotations | None:
    """`annotate`, or None (with a logged reason) for graphs that cannot run here."""
    try:
        return annotate(graph, feeds, params)
    except (GraphError, TracingError, KeyError, ValueError, TypeError) as e:
        log.warning("drawing %s without values and gradients: %s", graph.name, e)
        return None
