"""Pipeline time per micro-batch (SPEC section 5) of the ideal-DP pipeline_dp, its speed, and
its agreement with the simulator.

1. Quality: every bundled config (configs/*.yaml, GPT-2 XL included) at k = 2, 4, 8 (the
   heterogeneous cluster at its own size): max_d T_d of pipeline_dp (objective throughput)
   against the previous pipeline_dp (benchmarks/old_pipeline_dp.py, the best split of one
   topological order) and contiguous, each placement as returned (no rebalancing), and
   pipeline_dp's ratio to the lower bound max(total cost / total speed, largest node / fastest
   device). Target: pipeline_dp <= both everywhere.
2. Speed, whole `modelcut partition ... --algorithm pipeline_dp --objective throughput`
   commands (graph building, partition, simulation and report included): GPT-2 XL at k = 8
   (<= 10 s), a 12-layer BERT-sized GPT graph (<= 10 s), a ~68k-node unrolled LSTM (<= 60 s,
   coarsened, and the report says so).
3. Simulator agreement: bundled configs, m = 16, 1F1B: the simulated step time of
   pipeline_dp's placement is no worse than that of any other algorithm's acyclic placement.
Run: python benchmarks/pipeline_throughput.py [--part quality|speed|simulate|all] [--quick]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from modelcut.commands.partition import load_setup  # noqa: E402
from old_pipeline_dp import old_pipeline_dp  # noqa: E402
from partition.algorithms.baselines import contiguous  # noqa: E402
from partition.api import partition  # noqa: E402
from partition.cost import graph_arrays  # noqa: E402
from partition.errors import PartitionError  # noqa: E402
from partition.problem import Problem  # noqa: E402
from partition.simulate import simulate  # noqa: E402
from partition.stage_time import stage_times  # noqa: E402

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
KS = (2, 4, 8)
BERT = """name: bert-12
model: {builder: gpt, layers: 12, d_model: 768, heads: 12, seq: 128, vocab: 30522, batch: 8}
cluster:
  uniform: {devices: 8, flops: 19.5 TFLOPS, memory: 40GB, bandwidth: 25GB/s, latency: 10us}
training: {micro_batches: 1}
"""
LSTM = """name: lstm-long
model: {builder: lstm, layers: 2, hidden: 64, vocab: 64, seq: 1900, batch: 8}
cluster:
  uniform: {devices: 8, flops: 1 TFLOPS, memory: 16GiB, bandwidth: 25GB/s, latency: 10us}
training: {micro_batches: 1}
"""
SPEED = (("gpt2-xl", str(ROOT / "configs" / "gpt2-xl.yaml"), 10.0),
         ("bert-12", BERT, 10.0), ("lstm-68k", LSTM, 60.0))


def setup_of(config: Path, k: int | None, **extra):
    args = Namespace(config=str(config), graph=None, devices=k, algorithm=None, epsilon=None,
                     acyclic=False, time_limit=None, objective=None, micro_batches=None,
                     schedule=None, **extra)
    return load_setup(args)


def lower_bound(graph, cluster, m: int) -> float:
    arrays = graph_arrays(graph)
    cost = arrays.train_flops * np.where(arrays.batch_dependent, 1.0, 1.0 / m)
    return max(cost.sum() / cluster.speeds.sum(), cost.max() / cluster.speeds.max())


def per_micro_batch(graph, assignment, cluster, m: int) -> tuple[float, bool]:
    st = stage_times(graph, assignment, cluster, micro_batches=m)
    return st.time_per_micro_batch, st.acyclic


def quality(quick: bool) -> bool:
    print("\n== pipeline time per micro-batch (lower is better; 'cyc' = not a pipeline) ==")
    print(f"{'config':<14}{'k':>3}{'nodes':>7}  {'pipeline_dp':>12}{'old dp':>12}"
          f"{'contiguous':>12}  {'new<=both':>9}{'/bound':>8}  {'optimal':>8}{'units':>7}"
          f"{'secs':>7}")
    ok = True
    for config in CONFIGS:
        if quick and config.stem == "gpt2-xl":
            continue
        for k in KS:
            try:
                setup = setup_of(config, k)
            except PartitionError:
                if k != KS[0]:
                    continue
                setup = setup_of(config, None)          # a cluster that cannot be resized
            cluster, graph = setup.cluster, setup.graph
            m = setup.options.get("micro_batches", 1)
            start = time.perf_counter()
            new = partition(graph, cluster, algorithm="pipeline_dp", objective="throughput",
                            micro_batches=m, optimizer=setup.options.get("optimizer", "sgd"))
            seconds = time.perf_counter() - start
            problem = Problem.build(graph, cluster, epsilon=setup.options["epsilon"],
                                    micro_batches=m)
            t_new, _ = per_micro_batch(graph, new.assignment, cluster, m)
            t_old, a_old = per_micro_batch(graph, old_pipeline_dp(problem).assignment, cluster, m)
            t_con, a_con = per_micro_batch(graph, contiguous(problem).assignment, cluster, m)
            better = t_new <= min(t_old, t_con) * (1 + 1e-9)
            ok &= better
            bound = lower_bound(graph, cluster, m)
            print(f"{config.stem:<14}{cluster.k:>3}{len(graph):>7}  {t_new:>12.4g}"
                  f"{t_old:>11.4g}{' ' if a_old else 'c'}{t_con:>11.4g}{' ' if a_con else 'c'}"
                  f"  {'yes' if better else 'NO':>9}{t_new / bound:>8.3f}  "
                  f"{str(new.optimal):>8}{new.info.get('units', 0):>7}{seconds:>7.2f}")
            if cluster.k != k:
                break
    print(f"pipeline_dp <= old pipeline_dp and contiguous everywhere: {'yes' if ok else 'NO'}")
    return ok


def speed() -> bool:
    print("\n== whole command: modelcut partition --algorithm pipeline_dp "
          "--objective throughput --devices 8 ==")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, target in SPEED:
            path = Path(source) if source.endswith(".yaml") else Path(tmp) / f"{name}.yaml"
            if not source.endswith(".yaml"):
                path.write_text(source, encoding="utf-8")
            out = Path(tmp) / f"out-{name}"
            command = [sys.executable, "-m", "modelcut", "partition", str(path), "--devices", "8",
                       "--algorithm", "pipeline_dp", "--objective", "throughput",
                       "--out", str(out)]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            seconds = time.perf_counter() - start
            import json
            report = json.loads((out / "report.json").read_text()) if done.returncode == 0 \
                else None
            totals = report["totals"] if report else {}
            nodes = report["graph"]["nodes"] if report else "?"
            says = "coarsened" in done.stdout
            print(f"{name:<10} {nodes:>7} nodes  {seconds:6.2f} s (target {target:.0f} s: "
                  f"{'ok' if seconds <= target else 'SLOW'})  T/mb "
                  f"{totals.get('time_per_micro_batch')}  coarsened "
                  f"{totals.get('pipeline_coarsened')} (console says so: {says})"
                  + ("" if done.returncode == 0 else f"  FAILED: {done.stderr[-300:]}"))
            ok &= done.returncode == 0 and seconds <= target
    return ok


def agreement(quick: bool, m: int = 16) -> bool:
    print(f"\n== simulated step time, m = {m}, 1F1B (acyclic placements only) ==")
    ok = True
    others = ("contiguous", "layers", "multilevel", "mincut", "auto")    # auto: throughput
    for config in CONFIGS:
        if config.stem == "gpt2-xl" and quick:
            continue
        setup = setup_of(config, None)
        graph, cluster = setup.graph, setup.cluster
        times = {}
        for name in ("pipeline_dp",) + others:     # as given (no rebalancing), acyclic
            try:
                placed = partition(graph, cluster, algorithm=name, objective="throughput",
                                   acyclic=True, micro_batches=m, schedule="1f1b",
                                   epsilon=setup.options["epsilon"],
                                   time_limit=60.0 if name == "auto" else None)
            except PartitionError as err:
                times[name] = f"failed ({str(err)[:40]})"
                continue
            if not placed.metrics.acyclic:
                times[name] = "cyclic"
                continue
            times[name] = simulate(graph, placed.assignment, cluster, schedule="1f1b",
                                   micro_batches=m).makespan
        numbers = [v for v in times.values() if isinstance(v, float)]
        mine = times["pipeline_dp"]
        best = isinstance(mine, float) and mine <= min(numbers) * (1 + 1e-9)
        ok &= best
        cells = "  ".join(f"{n} {v:.4g}" if isinstance(v, float) else f"{n} {v}"
                          for n, v in times.items())
        print(f"{config.stem:<14} k={cluster.k}: {cells}  -> pipeline_dp best: "
              f"{'yes' if best else 'NO'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("quality", "speed", "simulate", "all"),
                        default="all")
    parser.add_argument("--quick", action="store_true", help="skip GPT-2 XL in parts 1 and 3")
    args = parser.parse_args()
    results = {}
    if args.part in ("quality", "all"):
        results["quality"] = quality(args.quick)
    if args.part in ("speed", "all"):
        results["speed"] = speed()
    if args.part in ("simulate", "all"):
        results["simulate"] = agreement(args.quick)
    print("\n" + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in results.items()))


if __name__ == "__main__":
    main()
