"""Symbolic tensors whose operators record graph nodes, and `trace(fn, *args) -> Graph`.

A Tracer is a graph under construction. An op whose inputs all carry concrete values is also
evaluated, so Python control flow on values works (only the branch taken is recorded).
Abstract tensors (shape only) allocate no memory: billion-parameter graphs build quickly.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from autodiff.ir import ITEMSIZE, Graph, GraphError, Node
from autodiff.ops.registry import ShapeError, lookup


class TracingError(GraphError):
    """Something a traced function did that cannot be recorded (e.g. `if` on an abstract tensor)."""


def _dtype_name(dtype) -> str:
    name = str(np.dtype(dtype))
    if name not in ITEMSIZE:
        raise TracingError(f"dtype {name} is not supported (expected one of {', '.join(ITEMSIZE)})")
    return name


class Tracer:
    """A graph under construction: nodes in the order recorded, plus concrete values if known."""

    def __init__(self, name: str = "graph", *, eager: bool = True):
        self.name = name
        self.nodes: list[Node] = []
        self.values: dict[str, np.ndarray | None] = {}
        self.eager = eager
        self._counters: dict[str, Iterator[int]] = {}
        self._names: set[str] = set()
        self.grad_of: str | None = None
        self.group: str | None = None
        self.updates: dict[str, str] = {}   # state node -> node holding its new value

    def fresh(self, base: str) -> str:
        name = base
        if name in self._names:
            counter = self._counters.setdefault(base, itertools.count(1))
            while name in self._names:
                name = f"{base}_{next(counter)}"
        self._names.add(name)
        return name

    @contextlib.contextmanager
    def scope(self, *, group: str | None = None, grad_of: str | None = None):
        """Tag nodes recorded inside with a layer group and/or the forward node of a gradient."""
        saved = (self.group, self.grad_of)
        self.group = self.group if group is None else group
        self.grad_of = self.grad_of if grad_of is None else grad_of
        try:
            yield
        finally:
            self.group, self.grad_of = saved

    def _add(self, node: Node, value: np.ndarray | None) -> "Tensor":
        self.nodes.append(node)
        self.values[node.name] = value
        return Tensor(self, node)

    def source(self, op: str, shape, dtype, name: str | None = None, value=None,
               attrs: dict | None = None) -> "Tensor":
        """Record an input, param or const node (with its concrete value when given)."""
        if value is not None:
            value = np.asarray(value, dtype=dtype)
            shape = value.shape
        node = Node(self.fresh(name or op), op, (), tuple(int(d) for d in shape),
                    _dtype_name(dtype), dict(attrs or {}), self.group, None, self.grad_of)
        return self._add(node, value if self.eager or op == "const" else None)

    def const(self, value, dtype=None, name: str | None = None) -> "Tensor":
        """A constant tensor; its value lives in attrs['value'] so the graph is self-contained."""
        arr = np.asarray(value, dtype=dtype)
        return self.source("const", arr.shape, arr.dtype, name or "const", value=arr,
                           attrs={"value": arr})

    def emit(self, op: str, inputs: Sequence["Tensor"], attrs: dict | None = None,
             name: str | None = None) -> "Tensor":
        """Record `op` applied to `inputs`; evaluate it too when every input is concrete."""
        opdef = lookup(op)
        attrs = dict(attrs or {})
        for t in inputs:
            if t.tracer is not self:
                raise TracingError(f"op {op!r}: operand {t.name!r} belongs to another trace")
        try:
            shape, dtype = opdef.shape([t.shape for t in inputs], [t.dtype for t in inputs],
                                       **attrs)
        except ShapeError as e:
            args = ", ".join(f"{t.name}: {t.dtype}{list(t.shape)}" for t in inputs)
            raise ShapeError(f"{op}({args}): {e}") from None
        node = Node(self.fresh(name or op), op, tuple(t.name for t in inputs),
                    tuple(int(d) for d in shape), dtype, attrs, self.group, None, self.grad_of)
        value = None
        if self.eager and not opdef.random:
            vals = [self.values[t.name] for t in inputs]
            if all(v is not None for v in vals):
                value = np.asarray(opdef.forward(*vals, **attrs), dtype=dtype)
        elif self.eager:
            from autodiff.ops.sources import draw_random
            value = draw_random(node, step=0)
        return self._add(node, value)

    def graph(self, outputs: Sequence["Tensor"] | Sequence[str], name: str | None = None) -> Graph:
        outs = [o.name if isinstance(o, Tensor) else o for o in outputs]
        meta = {"updates": dict(self.updates)} if self.updates else {}
        return Graph(list(self.nodes), outs, name or self.name, validate=False, meta=meta)


class Tensor:
    """A traced tensor: a handle on one node of a Tracer, with its value when concrete."""

    __slots__ = ("tracer", "node")
    __array_priority__ = 1000  # numpy defers to our reflected operators

    def __init__(self, tracer: Tracer, node: Node):
        self.tracer = tracer
        self.node = node

    # metadata
    name = property(lambda self: self.node.name)
    shape = property(lambda self: self.node.shape)
    dtype = property(lambda self: self.node.dtype)
    ndim = property(lambda self: len(self.node.shape))
    size = property(lambda self: self.node.size)

    @property
    def value(self) -> np.ndarray | None:
        return self.tracer.values.get(self.node.name)

    def numpy(self) -> np.ndarray:
        v = self.value
        if v is None:
            raise TracingError(f"tensor {self.name!r} is abstract (shape only): it has no value")
        return v

    def __repr__(self) -> str:
        return f"Tensor({self.name}: {self.dtype}{list(self.shape)})"

    def __bool__(self) -> bool:
        v = self.value
        if v is None:
            raise TracingError(
                f"Python control flow on abstract tensor {self.name!r}: trace with concrete "
                "example values, or use autodiff.numpy.where")
        return bool(v)

    def __float__(self) -> float:
        return float(self.numpy())

    def __int__(self) -> int:
        return int(self.numpy())

    def item(self):
        return self.numpy().item()

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a scalar tensor")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype=None, copy=None):
        raise TracingError(f"tensor {self.name!r} was passed to plain numpy; use autodiff.numpy "
                           "functions on traced tensors")

    # operators: defined in autodiff.numpy to keep one entry point per op
    def _np(self):
        from autodiff import numpy as anp
        return anp

    def __add__(self, o): return self._np().add(self, o)
    def __radd__(self, o): return self._np().add(o, self)
    def __sub__(self, o): return self._np().subtract(self, o)
    def __rsub__(self, o): return self._np().subtract(o, self)
    def __mul__(self, o): return self._np().multiply(self, o)
    def __rmul__(self, o): return self._np().multiply(o, self)
    def __truediv__(self, o): return self._np().divide(self, o)
    def __rtruediv__(self, o): return self._np().divide(o, self)
    def __matmul__(self, o): return self._np().matmul(self, o)
    def __rmatmul__(self, o): return self._np().matmul(o, self)
    def __pow__(self, o): return self._np().power(self, o)
    def __rpow__(self, o): return self._np().power(o, self)
    def __neg__(self): return self._np().negative(self)
    def __pos__(self): return self
    def __abs__(self): return self._np().abs(self)
    def __getitem__(self, index): return self._np().getitem(self, index)
    def __gt__(self, o): return self._np().greater(self, o)
    def __lt__(self, o): return self._np().less(self, o)
    def __ge__(self, o): return self._np().greater_equal(self, o)
    def __le__(self, o): return self._np().less_equal(self, o)
    __hash__ = object.__hash__

    @property
    def T(self): return self._np().transpose(self)
    def sum(self, axis=None, keepdims=False): return self._np().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return self._np().mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return self._np().max(self, axis, keepdims)
    def reshape(self, *shape): return self._np().reshape(self, shape[0] if len(shape) == 1 and
                                                          not isinstance(shape[0], int) else shape)
    def transpose(self, *axes): return self._np().transpose(self, axes or None)
    def astype(self, dtype): return self._np().astype(self, dtype)


# ----------------------------------------------------------------- pytrees
def tree_flatten(tree) -> tuple[list, Callable[[list], Any]]:
    """Leaves of nested dicts/lists/tuples (in a deterministic order) and a rebuild function."""
    if not isinstance(tree, (dict, list, tuple)):
        return [tree], lambda leaves: leaves[0]
    keys = list(tree) if isinstance(tree, dict) else None
    parts = [tree_flatten(x) for x in (tree.values() if keys is not None else tree)]
    kind = type(tree)

    def rebuild(leaves):
        out, i = [], 0
        for lv, rb in parts:
            out.append(rb(leaves[i:i + len(lv)]))
            i += len(lv)
        if keys is not None:
            return dict(zip(keys, out))
        return kind(out) if kind in (list, tuple) else kind(*out)
    return [x for lv, _ in parts for x in lv], rebuild


def current_tracer(*trees) -> Tracer | None:
    """The tracer of the first Tensor found among the leaves, if any."""
    for tree in trees:
        for leaf in tree_flatten(tree)[0]:
            if isinstance(leaf, Tensor):
                return leaf.tracer
    return None


def lift(tracer: Tracer, x, dtype: str | None = None) -> Tensor:
    """x as a Tensor of `tracer`: Tensors pass through, numbers and arrays become consts."""
    if isinstance(x, Tensor):
        return x
    return tracer.const(x, dtype)


def trace(fn: Callable, *example_args, name: str | None = None, abstract: bool = False) -> Graph:
    """Record `fn(*example_args)` (returning a Tensor or a nested structure of them) as a
    Graph. Array leaves of the arguments become `input` nodes named after their position
    (`arg0`, `arg1.w`, ...); with `abstract=True` only their shapes and dtypes are used."""
    tracer = Tracer(name or getattr(fn, "__name__", "graph"), eager=not abstract)
    args = [_to_inputs(tracer, a, f"arg{i}") for i, a in enumerate(example_args)]
    out = fn(*args)
    leaves = [leaf for leaf in tree_flatten(out)[0] if isinstance(leaf, Tensor)]
    if not leaves:
        raise TracingError("the traced function returned no traced tensor")
    return tracer.graph(leaves)


def _to_inputs(tracer: Tracer, tree, prefix: str):
    leaves, rebuild = tree_flatten(tree)
    out = []
    for leaf, path in zip(leaves, _leaf_paths(tree, prefix)):
        if isinstance(leaf, (np.ndarray, np.generic, float, int)) and not isinstance(leaf, bool):
            arr = np.asarray(leaf)
            if arr.dtype.kind == "i" and isinstance(leaf, int):
                arr = arr.astype("int64")
            leaf = tracer.source("input", arr.shape, arr.dtype, path, value=arr)
        out.append(leaf)
    return rebuild(out)


def _leaf_paths(tree, prefix: str) -> list[str]:
    if isinstance(tree, dict):
        return [p for k in tree for p in _leaf_paths(tree[k], f"{prefix}.{k}")]
    if isinstance(tree, (list, tuple)):
        return [p for i, x in enumerate(tree) for p in _leaf_paths(x, f"{prefix}.{i}")]
    return [prefix]
