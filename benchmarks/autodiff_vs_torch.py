"""One training step (forward + backward) ours vs PyTorch eager on CPU, one BLAS thread each.

Prints per-step medians and the ratio ours/torch for an MLP (batch 256, 3 x 1024, float32)
and a 2-layer GPT block stack (d 256, seq 64, batch 16), then the interpreter's overhead per
node on a graph of 10,000 tiny ops. Targets: ratio <= 1.3x; overhead <= 10 us per node.
Fair by construction: float32 on both sides, inputs shared without copies, parameters reused
as leaves, runs interleaved (ratio = median of per-pair ratios), one process, so torch also
runs with the heap settings our Interpreter makes (`retain_freed_memory`).
Run: python benchmarks/autodiff_vs_torch.py [--repeats N]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

import autodiff as ad  # noqa: E402
from autodiff import numpy as anp  # noqa: E402
from autodiff.interpreter import Interpreter  # noqa: E402
from autodiff.trace import Tracer  # noqa: E402


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass(frozen=True)
class Paired:
    """Medians of interleaved runs, and the median of the per-pair ratios ours/theirs."""

    ours: float
    theirs: float
    ratio: float


def paired_seconds(ours, theirs, repeats: int, warmup: int = 2) -> Paired:
    """Time `ours` and `theirs` alternately, so load changes hit both sides alike."""
    for _ in range(warmup):
        ours()
        theirs()
    a, b = [], []
    for r in range(repeats):
        for fn, out in ((ours, a), (theirs, b)) if r % 2 == 0 else ((theirs, b), (ours, a)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return Paired(statistics.median(a), statistics.median(b),
                  statistics.median(x / y for x, y in zip(a, b)))


# ---------------------------------------------------------------- the models in our IR
def mlp_graph(batch=256, width=1024, layers=3, features=1024, classes=10, dtype="float32"):
    t = Tracer("mlp", eager=False)
    x = t.source("input", (batch, features), dtype, "x")
    y = t.source("input", (batch,), "int64", "y")
    h, fan_in = x, features
    for i in range(layers):
        w = t.source("param", (fan_in, width), dtype, f"w{i}")
        b = t.source("param", (width,), dtype, f"b{i}")
        h = anp.relu(h @ w + b)
        fan_in = width
    w = t.source("param", (fan_in, classes), dtype, "w_out")
    loss = anp.cross_entropy(h @ w, y)
    return t.graph([loss])


def gpt_blocks_graph(layers=2, d=256, heads=4, seq=64, batch=16, dtype="float32"):
    t = Tracer("gpt_blocks", eager=False)
    x = t.source("input", (batch, seq, d), dtype, "x")
    mask = t.const(np.triu(np.full((seq, seq), -1e9, dtype=dtype), 1), name="causal_mask")
    hd = d // heads
    p = lambda shape, name: t.source("param", shape, dtype, name)
    for i in range(layers):
        h = anp.layer_norm(x, p((d,), f"ln1_g{i}"), p((d,), f"ln1_b{i}"))
        qkv = h @ p((d, 3 * d), f"qkv_w{i}") + p((3 * d,), f"qkv_b{i}")
        qkv = anp.transpose(anp.reshape(qkv, (batch, seq, 3, heads, hd)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = anp.softmax(q @ anp.swapaxes(k, -1, -2) * (1.0 / np.sqrt(hd)) + mask, axis=-1)
        o = anp.reshape(anp.transpose(att @ v, (0, 2, 1, 3)), (batch, seq, d))
        x = x + o @ p((d, d), f"proj_w{i}") + p((d,), f"proj_b{i}")
        h = anp.layer_norm(x, p((d,), f"ln2_g{i}"), p((d,), f"ln2_b{i}"))
        h = anp.gelu(h @ p((d, 4 * d), f"fc_w{i}") + p((4 * d,), f"fc_b{i}"))
        x = x + h @ p((4 * d, d), f"out_w{i}") + p((d,), f"out_b{i}")
    loss = anp.mean(x * x)
    return t.graph([loss])


def params_for(graph, rng):
    out = {}
    for n in graph.params:
        if "_g" in n.name:
            out[n.name] = np.ones(n.shape, n.dtype)
        else:
            out[n.name] = (rng.standard_normal(n.shape) * 0.02).astype(n.dtype)
    return out


# ---------------------------------------------------------------- the same in PyTorch
def torch_mlp(torch, params, x, y):
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def step(ps):
        h = x
        for i in range(3):
            h = torch.relu(h @ ps[f"w{i}"] + ps[f"b{i}"])
        torch.nn.functional.cross_entropy(h @ ps["w_out"], y).backward()
    return _reuse_leaves(torch, params, step)


def torch_gpt(torch, params, x, layers=2, d=256, heads=4, seq=64, batch=16):
    F = torch.nn.functional
    hd = d // heads
    mask = torch.tensor(np.triu(np.full((seq, seq), -1e9, dtype="float32"), 1))
    x = torch.from_numpy(x)

    def step(ps):
        h0 = x
        for i in range(layers):
            h = F.layer_norm(h0, (d,), ps[f"ln1_g{i}"], ps[f"ln1_b{i}"])
            qkv = (h @ ps[f"qkv_w{i}"] + ps[f"qkv_b{i}"]).reshape(batch, seq, 3, heads, hd)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) * (1.0 / np.sqrt(hd)) + mask, dim=-1)
            o = (att @ v).permute(0, 2, 1, 3).reshape(batch, seq, d)
            h0 = h0 + o @ ps[f"proj_w{i}"] + ps[f"proj_b{i}"]
            h = F.layer_norm(h0, (d,), ps[f"ln2_g{i}"], ps[f"ln2_b{i}"])
            h = F.gelu(h @ ps[f"fc_w{i}"] + ps[f"fc_b{i}"], approximate="tanh")
            h0 = h0 + h @ ps[f"out_w{i}"] + ps[f"out_b{i}"]
        (h0 * h0).mean().backward()
    return _reuse_leaves(torch, params, step)


def _reuse_leaves(torch, params, step):
    """A step on the same leaf tensors each run (as ours reuses its params), grads reset."""
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}

    def run():
        for p in leaves.values():
            p.grad = None
        step(leaves)
    return run


def interpreter_overhead(n_ops: int = 10_000, repeats: int = 20) -> float:
    t = Tracer("tiny", eager=False)
    x = t.source("input", (4,), "float64", "x")
    y = x
    for _ in range(n_ops // 2):
        y = anp.exp(anp.negative(y))
    graph = t.graph([y])
    interp = Interpreter(graph)
    feeds = {"x": np.ones(4)}
    return median_seconds(lambda: interp.run(feeds), repeats) / len(graph)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
        print("torch is not installed (pip install modelcut[oracle]): printing ours only")

    cases = []
    g = mlp_graph()
    params = params_for(g, rng)
    x = rng.standard_normal((256, 1024)).astype("float32")
    y = rng.integers(0, 10, 256)
    cases.append(("MLP 3x1024, batch 256", g, {"x": x, "y": y}, params,
                  torch and torch_mlp(torch, params, x, y)))
    g = gpt_blocks_graph()
    params = params_for(g, rng)
    x = rng.standard_normal((16, 64, 256)).astype("float32")
    cases.append(("GPT 2 blocks d256 seq64 batch16", g, {"x": x}, params,
                  torch and torch_gpt(torch, params, x)))

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{args.repeats} interleaved runs per side, medians; ratio = median of pair ratios")
    print(f"{'case':34s} {'ours ms':>9s} {'torch ms':>9s} {'ours/torch':>10s}  (target <= 1.30)")
    for name, graph, feeds, params, torch_step in cases:
        interp = Interpreter(ad.vjp(graph))
        ours = lambda: interp.run(feeds, params)  # noqa: E731
        if torch_step is not None:
            t = paired_seconds(ours, torch_step, args.repeats)
            print(f"{name:34s} {t.ours * 1e3:9.2f} {t.theirs * 1e3:9.2f} {t.ratio:10.2f}")
        else:
            print(f"{name:34s} {median_seconds(ours, args.repeats) * 1e3:9.2f}")
    per_node = interpreter_overhead()
    print(f"interpreter overhead on 10,000 tiny ops: {per_node * 1e6:.2f} us per node "
          "(target <= 10)")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
