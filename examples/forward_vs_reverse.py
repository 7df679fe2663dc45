"""Forward vs. reverse mode: the full Jacobian of f: R^n -> R^m, and its sparsity from the graph.

Forward mode pushes one tangent through the program per input direction: n passes give the
n columns of the Jacobian. Reverse mode pulls one cotangent back per output: m passes give
the m rows. So reverse mode wins for n >> m (a loss of many parameters) and forward mode for
n << m. Each pass costs a small multiple of evaluating f, so time follows the pass count.

Sparsity needs no derivatives at all: J[i, j] can be nonzero only if the traced graph has a
path from input j to output i. One forward sweep over the graph, carrying for every node the
set of inputs it depends on, gives the whole pattern.

Run: python examples/forward_vs_reverse.py
"""
from __future__ import annotations

import time

import numpy as np

import autodiff as ad
from autodiff import numpy as anp


def dense_function(a: np.ndarray):
    """f(x) = tanh(A x) with A of shape (m, n): every output depends on every input."""
    return lambda x: anp.tanh(a @ x)


def jacobian_forward(f, x: np.ndarray) -> np.ndarray:
    """One jvp per input coordinate: column j is the derivative along e_j."""
    columns = [ad.jvp(f, [x], [np.eye(x.size)[j]])[1] for j in range(x.size)]
    return np.stack(columns, axis=1)


def jacobian_reverse(f, x: np.ndarray, m: int) -> np.ndarray:
    """One gradient per output coordinate: row i is the gradient of f_i."""
    return np.stack([ad.grad(lambda x, i=i: f(x)[i])(x) for i in range(m)])


class CountedCalls:
    """Wraps f and counts its evaluations: each one is a pass through the program."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x):
        self.calls += 1
        return self.f(x)


def compare_modes(n: int, m: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    a, x = rng.normal(size=(m, n)) / np.sqrt(n), rng.normal(size=n)
    out = {"n": n, "m": m, "x": x, "a": a}
    for mode, jacobian in (("forward", lambda f: jacobian_forward(f, x)),
                           ("reverse", lambda f: jacobian_reverse(f, x, m))):
        f = CountedCalls(dense_function(a))
        start = time.perf_counter()
        out[mode] = jacobian(f)
        out[f"{mode}_seconds"] = time.perf_counter() - start
        out[f"{mode}_passes"] = f.calls
    return out


# ------------------------------------------------------------------ sparsity
def sparse_function(pattern: np.ndarray):
    """Output i = prod over j with pattern[i, j] of (1.5 + sin((i + 1) x_j)), scalar inputs."""
    def f(*xs):
        outputs = []
        for i, row in enumerate(pattern):
            y = 1.0
            for j in np.flatnonzero(row):
                y = y * (1.5 + anp.sin(xs[j] * (i + 1)))
            outputs.append(y)
        return outputs
    return f


def structural_sparsity(graph: ad.Graph, inputs: list[str], outputs: list[str]) -> np.ndarray:
    """S[i, j] = True iff the graph has a path from inputs[j] to outputs[i]."""
    depends = {name: 1 << j for j, name in enumerate(inputs)}      # bitset of inputs
    for node in graph.nodes:
        if node.name not in depends:
            depends[node.name] = 0
            for i in node.inputs:
                depends[node.name] |= depends[i]
    return np.array([[bool(depends[o] >> j & 1) for j in range(len(inputs))] for o in outputs])


def sparsity_from_graph(n: int = 8, m: int = 6, density: float = 0.3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pattern = rng.random((m, n)) < density
    pattern[np.arange(m), rng.integers(0, n, size=m)] = True       # no empty row
    f = sparse_function(pattern)
    x = rng.normal(size=n)
    graph = ad.trace(f, *x)
    inputs = [node.name for node in graph.inputs]
    structure = structural_sparsity(graph, inputs, graph.outputs)
    # An input that reaches no output gets None from grad (not zeros).
    rows = [ad.grad(lambda *xs, i=i: f(*xs)[i], argnums=tuple(range(n)))(*x) for i in range(m)]
    jacobian = np.array([[0.0 if g is None else float(g) for g in row] for row in rows])
    return {"pattern": pattern, "x": x, "structure": structure, "jacobian": jacobian,
            "function": f}


def main(big: int = 200, small: int = 3, seed: int = 0) -> dict:
    return {"wide": compare_modes(big, small, seed), "tall": compare_modes(small, big, seed),
            "sparsity": sparsity_from_graph(seed=seed)}


if __name__ == "__main__":
    out = main()
    for key in ("wide", "tall"):
        r = out[key]
        agree = np.abs(r["forward"] - r["reverse"]).max()
        print(f"n={r['n']:4d}, m={r['m']:4d}: forward {r['forward_passes']:4d} passes "
              f"{r['forward_seconds']:.3f}s | reverse {r['reverse_passes']:4d} passes "
              f"{r['reverse_seconds']:.3f}s | max |J_fwd - J_rev| = {agree:.1e}")
    s = out["sparsity"]
    print("Jacobian sparsity read off the graph (x = path from input j to output i):")
    for row in s["structure"]:
        print("  " + " ".join("x" if v else "." for v in row))
    print("graph pattern == nonzeros of the AD Jacobian:",
          bool(np.array_equal(s["structure"], s["jacobian"] != 0)))
