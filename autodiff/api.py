"""The JAX-like functional API: grad, value_and_grad, jvp, check_grad.

Arguments and results are numpy arrays or nested dicts/lists/tuples of them. Called on
Tensors of an enclosing trace, the gradient is recorded into that trace: `grad(grad(f))` works.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from autodiff.forward import push_forward
from autodiff.reverse import backward
from autodiff.trace import Tensor, Tracer, TracingError, _to_inputs, current_tracer, tree_flatten


def _prepare(fn_name: str, args: Sequence, argnums: tuple[int, ...]):
    """Trace inputs: a fresh eager tracer for concrete args, or the enclosing one."""
    tracer = current_tracer(args)
    nested = tracer is not None
    tracer = tracer if nested else Tracer(fn_name)
    traced = []
    for i, a in enumerate(args):
        plain = isinstance(a, (bool, str)) or a is None or callable(a)
        if not plain and i in argnums:
            a = _lift_tree(tracer, a, f"arg{i}")
        elif not plain and not nested and _is_array_tree(a):
            a = _to_inputs(tracer, a, f"arg{i}")
        traced.append(a)
    return tracer, nested, traced


def _is_array_tree(tree) -> bool:
    return all(isinstance(x, (np.ndarray, np.generic, float, int)) and not isinstance(x, bool)
               for x in tree_flatten(tree)[0])


def _lift_tree(tracer: Tracer, tree, prefix: str):
    leaves, rebuild = tree_flatten(tree)
    out = []
    for j, leaf in enumerate(leaves):
        if not isinstance(leaf, Tensor):
            arr = np.asarray(leaf, dtype=float if isinstance(leaf, (int, float)) else None)
            leaf = tracer.source("input", arr.shape, arr.dtype, f"{prefix}_{j}", value=arr)
        out.append(leaf)
    return rebuild(out)


def value_and_grad(fn: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """A function returning (fn(*args), gradient of scalar fn w.r.t. args[argnums]); gradients
    mirror the differentiated arguments' structure, None (not zeros) where a leaf does not
    reach the output."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def wrapped(*args):
        tracer, nested, traced = _prepare(getattr(fn, "__name__", "fn"), args, nums)
        out = fn(*traced)
        if not isinstance(out, Tensor):
            raise TracingError("the differentiated function must return a traced scalar; "
                               f"it returned {type(out).__name__}")
        if out.shape != ():
            raise TracingError(f"grad needs a scalar output, got shape {list(out.shape)}")
        leaves, rebuild = tree_flatten(tuple(traced[i] for i in nums))
        grads = backward(out, leaves)
        if not nested:
            grads = [None if g is None else g.numpy() for g in grads]
        results = rebuild(grads)
        grad_out = results[0] if isinstance(argnums, int) else results
        return (out if nested else out.numpy()), grad_out

    wrapped.__name__ = f"value_and_grad({getattr(fn, '__name__', 'fn')})"
    return wrapped


def grad(fn: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """The gradient of scalar-valued fn w.r.t. args[argnums] (see value_and_grad)."""
    vg = value_and_grad(fn, argnums)

    def wrapped(*args):
        return vg(*args)[1]

    wrapped.__name__ = f"grad({getattr(fn, '__name__', 'fn')})"
    return wrapped


def jvp(fn: Callable, primals: Sequence, tangents: Sequence) -> tuple[Any, Any]:
    """Forward mode: (fn(*primals), directional derivative of fn along `tangents`)."""
    if len(primals) != len(tangents):
        raise TracingError(f"jvp: {len(primals)} primals but {len(tangents)} tangents")
    nums = tuple(range(len(primals)))
    tracer, nested, traced = _prepare(getattr(fn, "__name__", "fn"), primals, nums)
    in_leaves = [x for t in traced for x in tree_flatten(t)[0]]
    tan_leaves = [t if isinstance(t, Tensor) else
                  tracer.const(np.asarray(t, x.dtype), name="tangent")
                  for x, t in zip(in_leaves, [x for t in tangents for x in tree_flatten(t)[0]])]
    out = fn(*traced)
    out_leaves, rebuild = tree_flatten(out)
    touts = push_forward(in_leaves, tan_leaves, out_leaves)
    if nested:
        return out, rebuild(touts)
    values = [o.numpy() for o in out_leaves]
    tvalues = [np.zeros(o.shape, o.dtype) if t is None else t.numpy()
               for o, t in zip(out_leaves, touts)]
    return rebuild(values), rebuild(tvalues)


def check_grad(fn: Callable, *args, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-8,
               modes: Sequence[str] = ("rev", "fwd"),
               argnums: Sequence[int] | None = None) -> float:
    """Compare reverse (and forward) mode with central differences in float64 w.r.t. every
    float array argument (or `argnums`): the largest abs error, or AssertionError naming the
    argument and the worst element."""
    args = [np.asarray(a, dtype=np.float64) if isinstance(a, (float, np.floating)) or (
        isinstance(a, np.ndarray) and a.dtype.kind == "f") else a for a in args]
    nums = tuple(argnums) if argnums is not None else tuple(
        i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype == np.float64)
    if not nums:
        raise ValueError("check_grad: no float64 array argument to differentiate")

    def scalar(*xs):
        out = fn(*xs)
        return float(np.asarray(out.numpy() if isinstance(out, Tensor) else out))

    numeric = []
    for i in nums:
        x = args[i]
        g = np.zeros_like(x)
        of_x = _partial(scalar, args, (i,))
        for idx in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            g[idx] = (of_x(xp) - of_x(xm)) / (2 * eps)
        numeric.append(g)

    worst = 0.0
    if "rev" in modes:
        rev = grad(fn, argnums=nums)(*args)
        for i, gr, gn in zip(nums, rev, numeric):
            gr = np.zeros_like(gn) if gr is None else gr
            worst = max(worst, _compare(f"reverse-mode gradient of argument {i}", gr, gn,
                                        rtol, atol))
    if "fwd" in modes:
        of_nums, primals = _partial(fn, args, nums), [args[j] for j in nums]
        for i, gn in zip(nums, numeric):
            jv = np.zeros_like(gn)
            for idx in np.ndindex(gn.shape):
                tangents = [np.zeros_like(p) for p in primals]
                tangents[nums.index(i)][idx] = 1.0
                jv[idx] = float(np.asarray(jvp(of_nums, primals, tangents)[1]))
            worst = max(worst, _compare(f"forward-mode derivative of argument {i}", jv, gn,
                                        rtol, atol))
    return worst


def _partial(fn, args, nums):
    def f(*xs):
        full = list(args)
        for j, x in zip(nums, xs):
            full[j] = x
        return fn(*full)
    return f


def _compare(what: str, got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> float:
    got = np.asarray(got, dtype=np.float64)
    err = np.abs(got - expected)
    bad = err > atol + rtol * np.abs(expected)
    if np.any(bad):
        idx = np.unravel_index(np.argmax(err - rtol * np.abs(expected)), err.shape)
        raise AssertionError(f"{what}: at index {tuple(int(i) for i in idx)} got {got[idx]!r}, "
                             f"numeric {expected[idx]!r} (max abs error {err.max():.3e})")
    return float(err.max()) if err.size else 0.0
