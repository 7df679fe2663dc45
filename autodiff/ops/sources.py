"""Random source ops: fresh values every run, reproducible from (seed, step, micro-batch)."""
from __future__ import annotations

import zlib

import numpy as np

from autodiff.ir import Node
from autodiff.ops.registry import OpDef


def draw_random(node: Node, step: int = 0, micro_batch: int = 0) -> np.ndarray:
    """The value of random source `node` at a given step: a pure function of its seed."""
    rng = np.random.default_rng([int(node.attrs.get("seed", 0)), int(step), int(micro_batch),
                                 zlib.crc32(node.name.encode())])
    shape = tuple(node.attrs["shape"])
    if node.op == "random_normal":
        return rng.standard_normal(shape).astype(node.dtype)
    if node.op == "random_bernoulli":
        return (rng.random(shape) < node.attrs["p"]).astype(node.dtype)
    raise ValueError(f"node {node.name!r}: {node.op} is not a random source")


def _source_shape(shapes, dtypes, shape, dtype, **attrs):
    return tuple(shape), dtype


def _forward_unavailable(*args, **attrs):
    raise RuntimeError("random sources are drawn by the interpreter with draw_random()")


OPS = [
    OpDef("random_normal", _source_shape, _forward_unavailable, random=True, arity=0,
          doc="standard normal noise (reparameterization trick); no gradient"),
    OpDef("random_bernoulli", _source_shape, _forward_unavailable, random=True, arity=0,
          doc="Bernoulli(p) mask (dropout); no gradient"),
]
