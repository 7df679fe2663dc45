"""Parameter initialization: each `param` node carries its rule in attrs["init"].

A rule is a small JSON-able dict: {"kind": "normal", "std": s}, {"kind": "uniform",
"bound": b} (U(-b, b)), {"kind": "zeros"} or {"kind": "ones"}. Each parameter is drawn from
its own generator seeded by (seed, crc32 of its name), so its value never depends on which
device materializes it or in which order parameters are created.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from autodiff.io import NUMPY_DTYPE
from autodiff.ir import FLOAT_DTYPES, Graph, GraphError, Node

ZEROS = {"kind": "zeros"}
ONES = {"kind": "ones"}


def normal(std: float) -> dict:
    """N(0, std^2) rule (GPT-2 weights, Kaiming-normal convolutions)."""
    return {"kind": "normal", "std": float(std)}


def uniform(bound: float) -> dict:
    """U(-bound, bound) rule."""
    return {"kind": "uniform", "bound": float(bound)}


def fan_in_uniform(fan_in: int) -> dict:
    """PyTorch's default for Linear/LSTM weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(1.0 / math.sqrt(fan_in))


def param_seed(name: str, seed: int) -> list[int]:
    """The generator seed of parameter `name`: stable across processes and Python versions."""
    return [int(seed), zlib.crc32(name.encode("utf-8"))]


def init_param(node: Node, seed: int) -> np.ndarray:
    """The initial value of one `param` node, following its attrs["init"] rule."""
    rule = node.attrs.get("init")
    if node.op != "param":
        raise GraphError(f"init_param: node {node.name!r} is a {node.op!r}, not a param")
    if not isinstance(rule, dict) or "kind" not in rule:
        raise GraphError(f"param {node.name!r}: attrs['init'] must be a dict with a 'kind', "
                         f"got {rule!r}")
    if node.dtype not in FLOAT_DTYPES:
        raise GraphError(f"param {node.name!r}: cannot initialize dtype {node.dtype}")
    # numpy has no bfloat16: such parameters materialize as float32.
    dtype = NUMPY_DTYPE[node.dtype]
    kind = rule["kind"]
    if kind == "zeros":
        return np.zeros(node.shape, dtype)
    if kind == "ones":
        return np.ones(node.shape, dtype)
    rng = np.random.default_rng(param_seed(node.name, seed))
    if kind == "normal":
        return (rng.standard_normal(node.shape) * float(rule["std"])).astype(dtype)
    if kind == "uniform":
        bound = float(rule["bound"])
        return rng.uniform(-bound, bound, node.shape).astype(dtype)
    raise GraphError(f"param {node.name!r}: unknown init kind {kind!r} "
                     "(expected normal, uniform, zeros or ones)")


def init_params(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Initial values of every param of `graph`, keyed by name."""
    return {node.name: init_param(node, seed) for node in graph.params}
