"""Seconds and peak memory to build GPT-2 XL's forward graph and its training graph (vjp).

Each measurement runs in a fresh subprocess so peak RSS belongs to that build alone; the
baseline is a subprocess that only imports autodiff. Targets: forward graph < 30 s and
< 1 GB. Run: python benchmarks/build_gpt2_xl.py [--batch 1] [--tracemalloc]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout

XL = dict(layers=48, d_model=1600, heads=25, seq=1024, vocab=50257)
TARGET_SECONDS = 30.0
TARGET_BYTES = 2 ** 30


def child(stage: str, batch: int, use_tracemalloc: bool) -> dict:
    """Build up to `stage` (import | forward | training) here; report time and memory."""
    import tracemalloc

    if use_tracemalloc:
        tracemalloc.start()
    start = time.perf_counter()
    from autodiff import vjp
    from autodiff.models import gpt
    imported = time.perf_counter()
    info: dict = {"stage": stage, "import_seconds": imported - start}
    if stage != "import":
        graph = gpt(**XL, batch=batch)
        info["forward_seconds"] = time.perf_counter() - imported
        info["forward_nodes"] = len(graph)
        info["parameters"] = graph.num_parameters()
        if stage == "training":
            t = time.perf_counter()
            train = vjp(graph)
            info["vjp_seconds"] = time.perf_counter() - t
            info["training_nodes"] = len(train)
    if use_tracemalloc:
        info["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    info["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return info


def measure(stage: str, batch: int, use_tracemalloc: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--batch", str(batch)]
    if use_tracemalloc:
        cmd.append("--tracemalloc")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace Python allocations (slows the build down)")
    parser.add_argument("--child", choices=["import", "forward", "training"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.tracemalloc)))
        return

    base = measure("import", args.batch, False)
    fwd = measure("forward", args.batch, False)
    train = measure("training", args.batch, False)
    mib = 2 ** 20
    print(f"GPT-2 XL {XL}, batch {args.batch}: {fwd['parameters']:,} parameters "
          f"({fwd['parameters'] * 4 / 2 ** 30:.1f} GiB in float32, none allocated)")
    print(f"baseline (import only):  peak RSS {base['maxrss_bytes'] / mib:8.1f} MiB")
    print(f"forward graph:  {fwd['forward_nodes']:6d} nodes  {fwd['forward_seconds']:6.2f} s  "
          f"peak RSS {fwd['maxrss_bytes'] / mib:8.1f} MiB "
          f"(+{(fwd['maxrss_bytes'] - base['maxrss_bytes']) / mib:.1f} over baseline)")
    print(f"training graph: {train['training_nodes']:6d} nodes  vjp {train['vjp_seconds']:6.2f} s"
          f" (forward+vjp {train['forward_seconds'] + train['vjp_seconds']:.2f} s)  "
          f"peak RSS {train['maxrss_bytes'] / mib:8.1f} MiB")
    print(f"forward vs target: {fwd['forward_seconds'] / TARGET_SECONDS:.4f} of "
          f"{TARGET_SECONDS:.0f} s, {fwd['maxrss_bytes'] / TARGET_BYTES:.3f} of 1 GiB "
          "(whole process)")
    if args.tracemalloc:
        traced = measure("training", args.batch, True)
        print(f"tracemalloc peak (Python allocations, forward + vjp): "
              f"{traced['tracemalloc_peak'] / mib:.1f} MiB")


if __name__ == "__main__":
    main()
