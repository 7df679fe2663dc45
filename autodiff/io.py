"""Read and write graphs in the `modelcut.graph` version 1 JSON format (SPEC section 1).

Files may be gzip-compressed (`.json.gz`, detected by content when reading). Reading checks
every rule of the format and raises GraphError naming the file, the node and the rule; nothing
in a file is ever executed. Attribute values are JSON data (the op registry's convention): a
tuple is written as a list and read back as a list, numpy scalars and arrays become numbers and
nested lists, and the `value` of a `const` node is read back as a numpy array of its dtype.
"""
from __future__ import annotations

import contextlib
import gc
import gzip
import itertools
import json
import os
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
# numpy kinds of a parsed const value that may be stored in a node of a given dtype kind
ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}


# ------------------------------------------------------------------------------------ reading
def load_graph(path: str | os.PathLike) -> Graph:
    """Read a `modelcut.graph` file (plain or gzip JSON) into a validated Graph."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
    except OSError as exc:  # includes gzip.BadGzipFile
        raise GraphError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except EOFError:
        raise GraphError(f"{path}: truncated gzip data") from None
    try:
        with _gc_paused():
            document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise GraphError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise GraphError(f"{path}: not valid JSON: {exc.reason}") from None
    with _gc_paused():
        return graph_from_dict(document, source=str(path))


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while building millions of acyclic objects.

    Every allocation burst otherwise triggers collections that rescan all live objects, which
    makes reading a large file several times slower; the objects built here hold no cycles.
    """
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
            if ((type(inputs) is not list and inputs != ()) or type(flops) is bool
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
    for node in graph.nodes:
        if node.op == "const" and "value" in node.attrs:
            node.attrs = {**node.attrs, "value": _const_array(node, source)}
    _restore_updates(graph, source)
    return graph


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
    if type(d.get("flops")) is bool:
        raise GraphError(f"{where}: flops must be a non-negative integer, got {d['flops']!r}")
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
    """Write `graph` as `modelcut.graph` JSON, gzip-compressed when `path` ends in `.gz`.

    One node per line, so files diff well. The file is written to a temporary name first and
    renamed, so a failed write never leaves a truncated file behind.
    """
    path = Path(path)
    with _gc_paused():
        document = graph_to_dict(graph)
    encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    header = {k: v for k, v in document.items() if k not in ("nodes", "outputs")}
    # One encoder call for all nodes (much faster than one per node), then a line break
    # before each node. The pattern cannot occur inside a JSON string (its quotes would be
    # escaped there), so the result is the same JSON whatever the attributes hold.
    nodes = encode(document["nodes"])[1:-1].replace('}, {"name": ', '},\n  {"name": ')
    text = "".join([
        encode(header)[:-1], ",\n \"nodes\": [\n  ", nodes,
        "\n ],\n \"outputs\": ", encode(document["outputs"]), "\n}\n",
    ])
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
