"""Read and write graphs in the `modelcut.graph` version 1 JSON format (SPEC section 1).

Files may be gzip-compressed (detected by content when reading). Reading checks every rule of
the format and raises GraphError naming the file, the node and the rule; nothing in a file is
ever executed. Attribute values are JSON data: tuples and numpy arrays are written as lists,
and the `value` of a `const` node is read back as a numpy array of its dtype.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import gzip
import itertools
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from autodiff.ir import ITEMSIZE, Graph, GraphError, Node

__all__ = ["FORMAT", "VERSION", "load_graph", "save_graph", "graph_to_dict", "graph_from_dict"]

FORMAT = "modelcut.graph"
VERSION = 1
TOP_FIELDS = frozenset({"format", "version", "name", "nodes", "outputs"})
NODE_FIELDS = frozenset({"name", "op", "inputs", "shape", "dtype", "flops", "group", "attrs",
                         "grad_of"})
REQUIRED_NODE_FIELDS = frozenset({"name", "op", "shape", "dtype"})
# numpy has no bfloat16: its const values are held as float32 arrays in memory
NUMPY_DTYPE = {name: np.dtype("float32" if name == "bfloat16" else name) for name in ITEMSIZE}
GZIP_MAGIC = b"\x1f\x8b"
# Bounds on what a file may describe, so that no sum or product downstream (numpy int64 byte
# counts, float64 FLOPs) overflows: JSON text read, elements of one tensor, bytes of all
# tensors, forward FLOPs of one node.
MAX_JSON_BYTES = 2**29
MAX_ELEMENTS = 2**48
MAX_TOTAL_BYTES = 2**60
MAX_FLOPS = 10**24
# numpy kinds of a parsed const value that may be stored in a node of a given dtype kind
ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}


# ------------------------------------------------------------------------------------ reading
def load_graph(path: str | os.PathLike) -> Graph:
    """Read a `modelcut.graph` file (plain or gzip JSON) into a validated Graph. Hostile files
    get a GraphError, not a crash: over MAX_JSON_BYTES of JSON (a gzip bomb is cut off while it
    inflates), nesting too deep to parse, check_graph_bounds' limits, or no nodes."""
    path = Path(path)
    data = _read_json_bytes(path)
    try:
        with _gc_paused():
            document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise GraphError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise GraphError(f"{path}: not valid JSON: {exc.reason}") from None
    except RecursionError:
        raise GraphError(f"{path}: JSON nested too deeply to parse (a modelcut.graph file "
                         "nests a few levels)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise GraphError(f"{path}: not valid JSON: {exc}") from None
    except MemoryError:
        raise GraphError(f"{path}: out of memory while parsing the JSON") from None
    with _gc_paused():
        graph = graph_from_dict(document, source=str(path))
    if not graph.nodes:
        raise GraphError(f"{path}: the graph has no nodes")
    return graph


def _read_json_bytes(path: Path) -> bytes:
    """The file's bytes, inflated when gzip-compressed; at most MAX_JSON_BYTES either way."""
    limit = f"more than {MAX_JSON_BYTES // 2**20} MiB of JSON, the most this reader accepts"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if data[:2] == GZIP_MAGIC:
            data = _gunzip(data, MAX_JSON_BYTES)
    except OSError as exc:  # includes gzip.BadGzipFile
        raise GraphError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except (EOFError, zlib.error) as exc:
        raise GraphError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    except OverflowError:
        raise GraphError(f"{path}: inflates to {limit}") from None
    if len(data) > MAX_JSON_BYTES:
        raise GraphError(f"{path}: {limit}")
    return data


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate every gzip member of `data`; OverflowError past `limit` bytes (a gzip bomb)."""
    out, size = [], 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = inflater.decompress(data, limit + 1 - size)
        while True:
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OverflowError
            if inflater.eof or not inflater.unconsumed_tail:
                break
            chunk = inflater.decompress(inflater.unconsumed_tail, limit + 1 - size)
        if not inflater.eof:
            raise EOFError("the last gzip member ends early")
        data = inflater.unused_data.lstrip(b"\0")   # trailing zero padding is allowed
    return b"".join(out)


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while building millions of acyclic objects (its
    collections would rescan them all, making a large file several times slower to read)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def graph_from_dict(document: Any, source: str = "<dict>") -> Graph:
    """A validated Graph from a parsed `modelcut.graph` document; `source` names it in errors."""
    _check_header(document, source)
    raw_nodes = document["nodes"]
    # Fast path: cheap checks only; anything odd sends us to `_diagnose`, which finds the first
    # offending node and names the rule. Graph() then checks names, order, dtypes and shapes.
    try:
        fields = set(itertools.chain.from_iterable(raw_nodes))
    except TypeError:
        fields = None
    if fields is None or not fields <= NODE_FIELDS:
        _diagnose(raw_nodes, source)
    nodes: list[Node] = []
    append = nodes.append
    try:
        for d in raw_nodes:
            inputs = d.get("inputs", ())
            group = d.get("group")
            flops = d.get("flops")
            attrs = d.get("attrs")
            if flops is not None and (type(flops) is not int or not 0 <= flops <= MAX_FLOPS):
                flops = _flops_number(flops)
            if ((type(inputs) is not list and inputs != ())
                    or (group is not None and type(group) is not str)):
                raise TypeError
            if attrs is None:
                attrs = {}
            elif type(attrs) is not dict:
                raise TypeError
            append(Node(d["name"], d["op"], tuple(inputs), tuple(d["shape"]), d["dtype"], attrs,
                        group, flops, d.get("grad_of")))
        graph = Graph(nodes, document["outputs"], document.get("name", "graph"), source=source)
    except (KeyError, TypeError, AttributeError, GraphError) as exc:
        _diagnose(raw_nodes, source)
        if isinstance(exc, GraphError):
            raise
        raise GraphError(f"{source}: malformed node ({type(exc).__name__}: {exc})") from None
    check_graph_bounds(graph, source)
    for node in graph.nodes:
        if node.op == "const" and "value" in node.attrs:
            node.attrs = {**node.attrs, "value": _const_array(node, source)}
    _restore_updates(graph, source)
    check_shapes(graph, source)
    return graph


def _flops_number(value: Any) -> int:
    """A `flops` field that is not a plain in-range int: a finite non-negative JSON number is
    accepted (SPEC section 1) and rounded to a whole FLOP count; TypeError otherwise."""
    if type(value) is float and 0 <= value <= MAX_FLOPS:   # NaN fails the comparison
        return round(value)
    raise TypeError("flops")


def check_graph_bounds(graph: Graph, source: str) -> None:
    """Raise GraphError when a tensor exceeds MAX_ELEMENTS elements (or 64 dimensions), all
    tensors together MAX_TOTAL_BYTES, or a node's explicit flops MAX_FLOPS: beyond these, byte
    and FLOP sums overflow numpy's int64 and float64 downstream."""
    total = 0
    prod = math.prod
    for node in graph.nodes:
        shape = node.shape
        size = prod(shape) if len(shape) <= 64 else MAX_ELEMENTS + 1
        if size > MAX_ELEMENTS:
            raise GraphError(f"{source}: node {node.name!r}: shape {_brief(list(shape))} has "
                             f"more than 2^48 elements (or 64 dimensions), the most a tensor "
                             "may have")
        total += size * ITEMSIZE[node.dtype]
        if node.flops is not None and node.flops > MAX_FLOPS:
            raise GraphError(f"{source}: node {node.name!r}: flops {_brief(node.flops)} is more "
                             "than 1e24, the most a node may have")
    if total > MAX_TOTAL_BYTES:
        raise GraphError(f"{source}: its tensors hold {total:.3g} bytes in all, more than "
                         "2^60, the most a graph may hold")


# What a shape rule may raise on operands or attrs it does not accept (a file's attrs are
# untrusted JSON); anything else from a rule is a bug and propagates.
RULE_ERRORS = (GraphError, TypeError, ValueError, KeyError, IndexError, AttributeError,
               OverflowError, ZeroDivisionError)


def check_shapes(graph: Graph, source: str) -> None:
    """Raise GraphError naming the node when a known op's shape rule rejects its inputs and
    attrs, or gives another shape than the node declares (opaque ops are taken as declared).
    Rules run once per distinct (op, operand shapes and dtypes, attrs), so layers repeat cheaply.
    """
    from autodiff.ir import SOURCE_OPS
    from autodiff.ops.registry import registry
    rules = registry()
    nodes, index = graph.nodes, graph.index
    codes: dict = {}   # (shape, dtype) -> small int: cache keys hash a few ints per node
    code = [codes.setdefault((n.shape, n.dtype), len(codes)) for n in nodes]
    seen: dict = {}
    for node in nodes:
        op = rules.get(node.op)
        if op is None or node.op in SOURCE_OPS:
            continue
        attrs = node.attrs
        attrs_key = _attrs_key(attrs) if attrs else ""
        key = (node.op, attrs_key, *[code[index[i]] for i in node.inputs])
        out = seen.get(key)
        if out is None:
            operands = [nodes[index[i]] for i in node.inputs]
            out = _rule_shape(op, node, [n.shape for n in operands],
                              [n.dtype for n in operands], source)
            if attrs_key is not None:
                seen[key] = out
        if out != node.shape:
            args = " and ".join(str(list(nodes[index[i]].shape)) for i in node.inputs)
            raise GraphError(f"{source}: node {node.name!r}: declared shape {list(node.shape)}, "
                             f"but {node.op} of {args or 'no inputs'} gives {list(out)}")


def _rule_shape(op, node: Node, shapes: list, dtypes: list, source: str) -> tuple:
    """The output shape op's rule gives `node`, or GraphError naming the node."""
    try:
        return tuple(op.shape(shapes, dtypes, **_rule_attrs(op.shape, node.attrs))[0])
    except RULE_ERRORS as exc:
        args = ", ".join(f"{d}{list(s)}" for s, d in zip(shapes, dtypes))
        raise GraphError(f"{source}: node {node.name!r}: {node.op}({args}) with attrs "
                         f"{_brief(node.attrs)} breaks the op's shape rule: "
                         f"{str(exc) or type(exc).__name__}") from None


def _attrs_key(attrs: dict) -> str | None:
    """A cache key for attrs read from JSON: their repr, exact for JSON data (None, so no
    caching, when numpy may have shortened it with "...")."""
    text = repr(attrs)
    return None if "..." in text else text


@functools.lru_cache(maxsize=None)
def _keywords(rule) -> frozenset | None:
    """The keyword arguments a shape rule declares (None: it takes any)."""
    params = inspect.signature(rule).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind is not p.VAR_POSITIONAL)


def _rule_attrs(rule, attrs: dict) -> dict:
    """`attrs` without the keys `rule` does not declare: extra attributes (notes a tool left
    on a node) do not change its shape."""
    known = _keywords(rule)
    if known is None or attrs.keys() <= known:
        return attrs
    return {k: v for k, v in attrs.items() if k in known}


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# State updates (graph.meta["updates"], e.g. batch-norm running averages) travel inside SPEC
# section 1's free-form `attrs`: the state node names the node holding its new value.
UPDATE_ATTR = "update_from"


def _restore_updates(graph: Graph, source: str) -> None:
    updates = {}
    for node in graph.nodes:
        if UPDATE_ATTR in node.attrs:
            attrs = dict(node.attrs)
            new = attrs.pop(UPDATE_ATTR)
            if new not in graph.index:
                raise GraphError(f"{source}: node {node.name!r}: attrs.{UPDATE_ATTR} names no "
                                 f"node ({new!r})")
            node.attrs = attrs
            updates[node.name] = new
    if updates:
        graph.meta["updates"] = updates


def _check_header(document: Any, source: str) -> None:
    """Check the top-level object: format, version, known fields, nodes and outputs lists."""
    if not isinstance(document, dict):
        raise GraphError(f"{source}: expected a JSON object with \"format\": \"{FORMAT}\", "
                         f"got {type(document).__name__}")
    if document.get("format") != FORMAT:
        raise GraphError(f"{source}: not a {FORMAT} file (\"format\" is "
                         f"{document.get('format')!r}, expected {FORMAT!r})")
    version = document.get("version")
    if type(version) is not int or version != VERSION:
        raise GraphError(f"{source}: unsupported {FORMAT} version {version!r} "
                         f"(this reader handles version {VERSION})")
    unknown = sorted(set(document) - TOP_FIELDS)
    if unknown:
        raise GraphError(f"{source}: unknown top-level field(s) {unknown} "
                         f"(allowed: {sorted(TOP_FIELDS)})")
    for key in ("nodes", "outputs"):
        if type(document.get(key)) is not list:
            raise GraphError(f"{source}: field {key!r} must be a list, "
                             f"got {_json_type(document.get(key))}")
    for out in document["outputs"]:
        if type(out) is not str:
            raise GraphError(f"{source}: outputs must be node names (strings), got {out!r}")
    if "name" in document and type(document["name"]) is not str:
        raise GraphError(f"{source}: field 'name' must be a string, got {document['name']!r}")


def _diagnose(raw_nodes: list, source: str) -> None:
    """Raise GraphError for the first node whose JSON fields break a rule (slow path, bad input)."""
    for i, d in enumerate(raw_nodes):
        _check_fields(d, i, source)


def _check_fields(d: Any, i: int, source: str) -> None:
    """Check raw node #i's fields: known names, required ones present, JSON types."""
    if type(d) is not dict:
        raise GraphError(f"{source}: node #{i}: expected a JSON object, got {_json_type(d)}")
    name = d.get("name")
    where = f"{source}: node #{i} ({name!r})" if isinstance(name, str) else f"{source}: node #{i}"
    unknown = sorted(set(d) - NODE_FIELDS)
    if unknown:
        raise GraphError(f"{where}: unknown field(s) {unknown} (allowed: {sorted(NODE_FIELDS)})")
    missing = sorted(REQUIRED_NODE_FIELDS - set(d))
    if missing:
        raise GraphError(f"{where}: missing required field(s) {missing}")
    if type(d["shape"]) is not list:
        raise GraphError(f"{where}: 'shape' must be a list of non-negative integers, "
                         f"got {d['shape']!r}")
    inputs = d.get("inputs", [])
    if type(inputs) is not list or not all(type(x) is str for x in inputs):
        raise GraphError(f"{where}: 'inputs' must be a list of node names, got {inputs!r}")
    for key in ("group", "grad_of"):
        if d.get(key) is not None and type(d[key]) is not str:
            raise GraphError(f"{where}: {key!r} must be a string, got {d[key]!r}")
    flops = d.get("flops")
    if flops is not None and (type(flops) not in (int, float) or not 0 <= flops <= MAX_FLOPS):
        raise GraphError(f"{where}: flops must be a finite non-negative number at most 1e24, "
                         f"got {_brief(flops)}")
    if "attrs" in d and type(d["attrs"]) is not dict:
        raise GraphError(f"{where}: 'attrs' must be a JSON object, got {_json_type(d['attrs'])}")


def _const_array(node: Node, source: str) -> np.ndarray:
    """The stored `value` of a const node as an array of its dtype, checked against its shape."""
    value = node.attrs["value"]
    where = f"{source}: node {node.name!r}"
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.array(value)
        except ValueError as exc:
            raise GraphError(f"{where}: const value is not a rectangular array: {exc}") from None
    target = NUMPY_DTYPE[node.dtype]
    fits = array.size == 0 or array.dtype.kind in ACCEPTED_KINDS[target.kind]
    if fits and target.kind in "iu" and array.size:
        info = np.iinfo(target)
        fits = info.min <= array.min() and array.max() <= info.max
    if not fits:
        raise GraphError(f"{where}: const value of kind {array.dtype} (or its range) does not "
                         f"fit dtype {node.dtype}")
    if array.shape != node.shape and array.ndim != 0:
        raise GraphError(f"{where}: const value has shape {list(array.shape)} but the node's "
                         f"shape is {list(node.shape)}")
    return array.astype(target)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer",
             float: "a number", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------ writing
def graph_to_dict(graph: Graph) -> dict:
    """The `modelcut.graph` document for `graph`; unset optional fields are omitted."""
    updates = graph.meta.get("updates", {})
    return {"format": FORMAT, "version": VERSION, "name": graph.name,
            "nodes": [_node_to_dict(n, graph.name, updates.get(n.name)) for n in graph.nodes],
            "outputs": list(graph.outputs)}


def _node_to_dict(node: Node, graph_name: str, update_from: str | None = None) -> dict:
    d: dict[str, Any] = {"name": node.name, "op": node.op}
    if node.inputs:
        d["inputs"] = list(node.inputs)
    d["shape"] = list(node.shape)
    d["dtype"] = node.dtype
    if node.flops is not None:
        d["flops"] = int(node.flops)
    if node.group is not None:
        d["group"] = node.group
    if node.attrs or update_from:
        d["attrs"] = {k: _encode(v, node, k, graph_name) for k, v in node.attrs.items()}
        if update_from:
            d["attrs"][UPDATE_ATTR] = update_from
    if node.grad_of is not None:
        d["grad_of"] = node.grad_of
    return d


def _encode(value: Any, node: Node, key: str, graph_name: str) -> Any:
    """In-memory attribute value -> JSON data; anything the format cannot hold is an error."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_encode(v, node, key, graph_name) for v in value]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise GraphError(f"{graph_name}: node {node.name!r}: attribute {key!r} has a "
                             f"non-string key {bad[0]!r}, which JSON cannot store")
        return {k: _encode(v, node, key, graph_name) for k, v in value.items()}
    raise GraphError(f"{graph_name}: node {node.name!r}: attribute {key!r} holds a "
                     f"{type(value).__name__}, which the {FORMAT} format cannot store")


def save_graph(graph: Graph, path: str | os.PathLike) -> None:
    """Write `graph` as `modelcut.graph` JSON (gzip when `path` ends in `.gz`), one node per
    line so files diff well; written to a temporary name and renamed, never left truncated."""
    path = Path(path)
    with _gc_paused():
        document = graph_to_dict(graph)
    encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    header = {k: v for k, v in document.items() if k not in ("nodes", "outputs")}
    # One encoder call for all nodes (much faster than one per node), then a line break
    # before each node. The pattern cannot occur inside a JSON string (its quotes would be
    # escaped there), so the result is the same JSON whatever the attributes hold.
    nodes = encode(document["nodes"])[1:-1].replace('}, {"name": ', '},\n  {"name": ')
    data = "".join([encode(header)[:-1], ",\n \"nodes\": [\n  ", nodes, "\n ],\n \"outputs\": ",
                    encode(document["outputs"]), "\n}\n"]).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
