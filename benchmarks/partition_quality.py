"""Step volume V of every partitioning algorithm on model graphs, against Mt-KaHyPar and METIS.

For each model graph (autodiff.models builders) and k = 2, 4, 8 devices (uniform cluster,
epsilon 0.10) every registered algorithm partitions the forward graph through partition();
V is reported as a ratio to Mt-KaHyPar's and to METIS's V in the same run. A second table does
the same with acyclic=True against contiguous (the pipeline baseline).
Targets: multilevel geomean V/Mt-KaHyPar <= 1.05, none above 1.25, never above METIS;
auto <= Mt-KaHyPar in every case; with acyclic=True multilevel and auto <= contiguous.
Run: python benchmarks/partition_quality.py [--quick] [--part any|acyclic|both]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from autodiff.models import BUILDERS  # noqa: E402
from partition.algorithms import ALGORITHMS  # noqa: E402
from partition.api import partition  # noqa: E402
from partition.cluster import uniform  # noqa: E402
from partition.errors import PlacementError  # noqa: E402

MODELS = {
    "mlp-8x256": ("mlp", dict(layers=8, width=256, batch=32)),
    "gpt-4x64": ("gpt", dict(layers=4, d_model=64, heads=4, seq=32, vocab=128, batch=8)),
    "gpt-12x256": ("gpt", dict(layers=12, d_model=256, heads=8, seq=128, vocab=1024, batch=4)),
    "lstm-2x64": ("lstm", dict(layers=2, hidden=64, vocab=128, seq=16, batch=8)),
    "lstm-3x128": ("lstm", dict(layers=3, hidden=128, vocab=256, seq=32, batch=8)),
    "resnet-2x16": ("resnet", dict(channels=(16, 32), blocks=2, image=16, batch=8)),
    "resnet-4x16": ("resnet", dict(channels=(16, 32, 64, 128), blocks=2, image=32, batch=4)),
}
QUICK = ("mlp-8x256", "gpt-4x64", "lstm-2x64", "resnet-2x16")
KS = (2, 4, 8)
EPSILON = 0.10
ILP_MAX_NODES = 60


def volume(graph, k, algorithm, acyclic):
    """(V, seconds) of one run, V = None when the algorithm finds no acceptable placement."""
    start = time.perf_counter()
    try:
        placed = partition(graph, uniform(k), algorithm=algorithm, epsilon=EPSILON, acyclic=acyclic,
                           seed=0)
    except PlacementError:
        return None, time.perf_counter() - start
    return placed.metrics.step_volume, time.perf_counter() - start


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def ratio(value, base):
    if value is None or not base:
        return "   -  " if value is None else "  inf "
    return f"{value / base:6.3f}"


def run(models, acyclic):
    ignore_acyclic = ("metis", "mtkahypar", "round_robin", "random")
    names = [a for a in ALGORITHMS if not (acyclic and a in ignore_acyclic)]
    rows = []
    for model, (family, sizes) in models.items():
        graph = BUILDERS[family](**sizes)
        for k in KS:
            row = {"model": model, "n": len(graph.nodes), "k": k, "V": {}, "s": {}}
            for name in names:
                if name == "ilp" and len(graph.nodes) > ILP_MAX_NODES:
                    continue
                row["V"][name], row["s"][name] = volume(graph, k, name, acyclic)
            if acyclic:  # references measured without acyclicity, for scale
                for peer in ("mtkahypar", "metis"):
                    row["V"][peer], row["s"][peer] = volume(graph, k, peer, False)
            rows.append(row)
            print_row(row, names)
    return rows


def fmt(value):
    return "failed" if value is None else f"{value:.4g}"


def print_row(row, names):
    v = row["V"]
    cells = " ".join(f"{name}={ratio(v.get(name), v['mtkahypar'])}" for name in names if name in v)
    metis = " ".join(f"{name}={ratio(v.get(name), v['metis'])}" for name in ("multilevel", "auto")
                     if name in v)
    print(f"{row['model']:>12} n={row['n']:<5} k={row['k']}  V_mtk={fmt(v['mtkahypar'])} "
          f"V_metis={fmt(v['metis'])} | V/V_mtk: {cells} | V/V_metis: {metis}", flush=True)


def worse(value, base):
    """value > base, with a failed run (None) worse than any placement."""
    if value is None:
        return base is not None
    return base is not None and value > base


def summary(rows, acyclic):
    failed = {name: [(r["model"], r["k"]) for r in rows if name in r["V"] and r["V"][name] is None]
              for name in ALGORITHMS}
    print("\nno acceptable placement (a device over its cap): "
          + ("; ".join(f"{n} {c}" for n, c in failed.items() if c) or "none"))
    seconds = {name: sum(r["s"].get(name, 0.0) for r in rows) for name in ALGORITHMS}
    print("seconds per algorithm (all cases): "
          + ", ".join(f"{n} {s:.1f}" for n, s in seconds.items() if s))
    ml = [r["V"]["multilevel"] / r["V"]["mtkahypar"] for r in rows
          if r["V"].get("multilevel") and r["V"]["mtkahypar"]]
    if acyclic:
        print(f"acyclic multilevel V / unconstrained Mt-KaHyPar V: geomean {geomean(ml):.3f} "
              "(the price of a pipeline-able placement)")
        for name in ("multilevel", "auto", "mincut", "pipeline_dp"):
            above = [(r["model"], r["k"]) for r in rows
                     if worse(r["V"].get(name), r["V"]["contiguous"])]
            ratios = [r["V"][name] / r["V"]["contiguous"] for r in rows
                      if r["V"].get(name) and r["V"]["contiguous"]]
            print(f"acyclic {name} V / contiguous V: geomean {geomean(ratios):.3f}, above "
                  f"contiguous in {len(above)} cases {above} (target 0 for multilevel and auto)")
        return
    above_metis = [(r["model"], r["k"]) for r in rows
                   if worse(r["V"].get("multilevel"), r["V"]["metis"])]
    strictly_below = sum(1 for r in rows if r["V"].get("multilevel") is not None
                         and (r["V"]["metis"] is None or r["V"]["multilevel"] < r["V"]["metis"]))
    auto_above = [(r["model"], r["k"]) for r in rows
                  if worse(r["V"].get("auto"), r["V"]["mtkahypar"])]
    print(f"multilevel V / Mt-KaHyPar V: geomean {geomean(ml):.3f}, max {max(ml):.3f} "
          f"(targets <= 1.05 and <= 1.25)")
    print(f"multilevel vs METIS: above in {len(above_metis)} cases {above_metis}, strictly below "
          f"in {strictly_below} of {len(rows)} (target: never above)")
    print(f"auto above Mt-KaHyPar in {len(auto_above)} cases {auto_above} (target 0)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the four small models")
    parser.add_argument("--part", choices=("any", "acyclic", "both"), default="both",
                        help="only the unconstrained or only the acyclic table")
    args = parser.parse_args()
    models = {m: MODELS[m] for m in (QUICK if args.quick else MODELS)}
    if args.part != "acyclic":
        print(f"== any quotient graph (epsilon {EPSILON}); ratios to Mt-KaHyPar's V ==")
        summary(run(models, acyclic=False), acyclic=False)
    if args.part != "any":
        print("\n== acyclic=True; ratios to Mt-KaHyPar's unconstrained V ==")
        summary(run(models, acyclic=True), acyclic=True)


if __name__ == "__main__":
    main()
