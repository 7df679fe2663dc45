"""How fast autodiff.io writes and reads big `modelcut.graph` files (SPEC: 1M nodes in seconds).

Baseline measured in the same run: the standard library alone (`json.dumps` of the document and
`json.loads` of the file's bytes), the least any JSON reader of the format must spend. The
ratio says what validation and building Node objects add on top.

    python benchmarks/io_scaling.py [--sizes 100000 1000000] [--gzip]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from autodiff.io import graph_to_dict, load_graph, save_graph
from autodiff.ir import Graph, Node


def synthetic_graph(n: int) -> Graph:
    """A chain of MLP-like layers (param, matmul, add, relu) with `n` nodes, explicit FLOPs."""
    nodes = [Node("x", "input", (), (32, 256), "float32")]
    prev, layer = "x", 0
    while len(nodes) + 5 <= n:
        g = f"layer{layer}"
        w, b, h, a, y = (f"{g}.w", f"{g}.b", f"{g}.matmul", f"{g}.add", f"{g}.relu")
        nodes += [
            Node(w, "param", (), (256, 256), "float32", group=g),
            Node(b, "param", (), (256,), "float32", group=g),
            Node(h, "matmul", (prev, w), (32, 256), "float32", group=g, flops=2 * 32 * 256 * 256),
            Node(a, "add", (h, b), (32, 256), "float32", group=g, flops=32 * 256),
            Node(y, "relu", (a,), (32, 256), "float32", group=g, flops=32 * 256,
                 attrs={"note": "benchmark"}),
        ]
        prev, layer = y, layer + 1
    while len(nodes) < n:
        nodes.append(Node(f"tail{len(nodes)}", "relu", (prev,), (32, 256), "float32", flops=8192))
        prev = nodes[-1].name
    return Graph(nodes, [prev], f"synthetic-{n}")


def measure(n: int, compressed: bool, workdir: Path) -> dict:
    graph = synthetic_graph(n)
    path = workdir / f"graph-{n}.json{'.gz' if compressed else ''}"
    t0 = time.perf_counter()
    save_graph(graph, path)
    t1 = time.perf_counter()
    loaded = load_graph(path)
    t2 = time.perf_counter()
    assert len(loaded) == n and loaded.outputs == graph.outputs
    document = graph_to_dict(graph)
    t3 = time.perf_counter()
    text = json.dumps(document)
    t4 = time.perf_counter()
    json.loads(text)
    t5 = time.perf_counter()
    return {"nodes": n, "mbytes": path.stat().st_size / 1e6, "write_s": t1 - t0,
            "read_s": t2 - t1, "json_dumps_s": t4 - t3, "json_loads_s": t5 - t4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--gzip", action="store_true", help="also measure .json.gz files")
    args = parser.parse_args()
    print(f"{'nodes':>9} {'file':>5} {'MB':>7} {'write s':>8} {'read s':>7} "
          f"{'json.dumps s':>12} {'json.loads s':>12} {'write/dumps':>11} {'read/loads':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            for compressed in ([False, True] if args.gzip else [False]):
                r = measure(n, compressed, Path(tmp))
                print(f"{r['nodes']:>9} {'gz' if compressed else 'json':>5} {r['mbytes']:>7.1f} "
                      f"{r['write_s']:>8.2f} {r['read_s']:>7.2f} {r['json_dumps_s']:>12.2f} "
                      f"{r['json_loads_s']:>12.2f} {r['write_s'] / r['json_dumps_s']:>11.2f} "
                      f"{r['read_s'] / r['json_loads_s']:>10.2f}")


if __name__ == "__main__":
    main()
