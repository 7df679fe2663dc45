"""Follow rules of the sharding rewrite: when an op on a split input can run shard by shard.

`follow_rule(node, shapes, split)` looks only at shapes (the inputs' and, per input, the
(axis, n) it is split along, or None). Shards always have numpy.array_split's sizes
(`shard_bounds`), so shards of different values line up.

Followed: elementwise ops (numpy broadcasting), transpose, reshape (when the shard blocks stay
contiguous, e.g. splitting d_model by heads), batched matmul over a split batch axis,
softmax / log_softmax / layer_norm and reductions along other axes, and batch_norm and pooling
split by channels (per-channel statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from autodiff.ir import Node
from autodiff.ops.registry import normalize_axes

ELEMENTWISE = frozenset({
    "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "where", "negative",
    "exp", "log", "sin", "cos", "tanh", "sqrt", "abs", "sign", "relu", "gelu", "sigmoid",
    "astype", "stop_gradient", "straight_through", "dropout", "add_n", "greater", "less",
    "greater_equal", "less_equal", "equal", "erf", "gelu_erf", "silu", "hardsigmoid",
    "hardswish", "rsqrt", "reciprocal", "clamp", "logical_not", "logical_and", "logical_or"})
REDUCTIONS = frozenset({"sum", "mean", "max", "logsumexp"})
CHANNEL_OPS = frozenset({"batch_norm", "batch_norm_eval", "max_pool2d", "avg_pool2d"})


@dataclass(frozen=True)
class FollowRule:
    """Run a node per shard: input i sliced along in_axes[i] (None: whole), the shards split
    the output along out_axis; attrs[k] are shard k's attrs (None: the node's)."""

    out_axis: int
    in_axes: tuple
    attrs: tuple | None = None
    shards: int = 0


def shard_bounds(size: int, n: int) -> list[tuple[int, int]]:
    """[start, stop) of each of n shards of an axis of `size` (numpy.array_split's sizes)."""
    q, r = divmod(size, n)
    starts = [i * q + min(i, r) for i in range(n + 1)]
    return [(starts[i], starts[i + 1]) for i in range(n)]


def follow_rule(node: Node, shapes: list, split: list) -> FollowRule | None:
    """How `node` runs on its inputs' shards (module docstring); None if it cannot."""
    op = node.op
    for pos, s in enumerate(split):
        if s is None:
            continue
        axis, n = s
        rule = None
        if op in ELEMENTWISE or op == "layer_norm" and axis != len(shapes[0]) - 1:
            rule = _broadcast(node, shapes, pos, axis)
        elif op == "matmul" and min(len(x) for x in shapes) >= 2 \
                and axis < len(shapes[pos]) - 2:
            rule = _broadcast(node, shapes, pos, axis)
        elif op in ("softmax", "log_softmax"):
            if axis not in normalize_axes(node.attrs.get("axis", -1), len(shapes[0])):
                rule = FollowRule(axis, (axis,))
        elif op in REDUCTIONS:
            rule = _reduction(node, shapes[0], axis)
        elif op == "transpose":
            rule = _transpose(node, axis)
        elif op == "reshape":
            rule = _reshape(shapes[0], tuple(node.shape), axis, n)
        elif op in CHANNEL_OPS and pos == 0 and (axis == 1 or axis == 0 and op != "batch_norm"):
            # per-channel parameters follow a channel split; batch_norm's statistics span the
            # batch axis, so only its eval form follows a batch split
            rule = FollowRule(axis, (axis,) + ((0 if axis == 1 else None),) * (len(shapes) - 1))
        if rule is not None:
            return FollowRule(rule.out_axis, rule.in_axes, rule.attrs, n)
    return None


def _broadcast(node: Node, shapes: list, pos: int, axis: int) -> FollowRule:
    """numpy broadcasting: each input sliced along the axis aligned with the output's."""
    out_rank = len(node.shape)
    out_axis = axis + out_rank - len(shapes[pos])
    axes = [(shape, out_axis - (out_rank - len(shape))) for shape in shapes]
    return FollowRule(out_axis, tuple(None if ax < 0 or shape[ax] == 1 else ax
                                      for shape, ax in axes))


def _reduction(node: Node, shape: tuple, axis: int) -> FollowRule | None:
    axes = normalize_axes(node.attrs.get("axis"), len(shape))
    if axis in axes:
        return None
    keep = node.attrs.get("keepdims", False)
    return FollowRule(axis if keep else axis - sum(1 for a in axes if a < axis), (axis,))


def _transpose(node: Node, axis: int) -> FollowRule:
    rank = len(node.shape)
    perm = node.attrs.get("axes")
    perm = list(range(rank))[::-1] if perm is None else [a % rank for a in perm]
    return FollowRule(perm.index(axis), (axis,))


def _reshape(shape: tuple, out: tuple, axis: int, n: int) -> FollowRule | None:
    """A reshape keeps shards contiguous when an output axis b has the same leading size and
    each shard boundary (times the trailing size) falls on a multiple of the size after b."""
    lead, trail = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    for b in range(len(out)):
        if math.prod(out[:b]) != lead or math.prod(out[b:]) != shape[axis] * trail or out[b] < n:
            continue
        after = math.prod(out[b + 1:])
        bounds = [(lo * trail, hi * trail) for lo, hi in shard_bounds(shape[axis], n)]
        if any(lo % after or hi % after for lo, hi in bounds):
            continue
        if [(lo // after, hi // after) for lo, hi in bounds] != shard_bounds(out[b], n):
            continue
        attrs = tuple({"shape": [*out[:b], (hi - lo) // after, *out[b + 1:]]}
                      for lo, hi in bounds)
        return FollowRule(b, (axis,), attrs)
    return None
