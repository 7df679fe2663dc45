"""Ray executor benchmarks: (a) overhead over the local executor, (b) pipeline speedup.

(a) Step time of the Ray executor (compiled-graph path and plain-call path) over the
    LocalExecutor running the same plan, for the bundled mlp and gpt-small configs at k = 2
    and 4 with m = 4 micro-batches and 1F1B on an acyclic pipeline_dp placement. Target:
    Ray/local <= 1.5 on mlp with compiled graphs.
(b) Throughput of a compute-heavy 2-stage MLP (width 2048, batch 512, float32) with m = 8 and
    1F1B, one BLAS thread per actor, over the same model on one device with one BLAS thread
    (the local executor in this process, and one Ray actor). Target >= 1.6 (the bubble
    limits it to 2 * 8 / 9 = 1.78).

All executors of a comparison are alive together and stepped in turn (round robin), so slow
phases of a shared machine hit them alike; figures are medians. BLAS in this process is
limited to one thread (set before numpy is imported), as in the actors.

Run from the repository root: `python benchmarks/executor.py [--quick]`.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autodiff.models import BUILDERS, make_data  # noqa: E402
from executor.local import LocalExecutor  # noqa: E402
from executor.plan import build_plan  # noqa: E402
from executor.ray_executor import RayExecutor  # noqa: E402
from executor.ray_runtime import start_ray, stop_ray  # noqa: E402
from modelcut.config import load_config  # noqa: E402
from partition.api import partition  # noqa: E402
from partition.cluster import uniform  # noqa: E402
from partition.errors import PlacementError  # noqa: E402


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_robin(executors: dict, data, warmup: int, steps: int) -> dict[str, dict]:
    """Step the executors in turn on the same data. Per executor: the median seconds per
    step, the CPU share each of its processes got while it stepped (CPU seconds / wall
    seconds; 1.0 is a whole core, less means other processes took the cores) and, for a Ray
    executor, the median share of the step each actor spent inside its calls."""
    times: dict[str, list[float]] = {name: [] for name in executors}
    busy: dict[str, list] = {name: [] for name in executors}
    cpu: dict[str, np.ndarray] = {}
    pids = {name: ex.actor_pids() if hasattr(ex, "actor_pids") else [os.getpid()]
            for name, ex in executors.items()}
    for s in range(warmup + steps):
        feeds = data(s)
        for name, ex in executors.items():
            before = np.array([process_cpu_seconds(p) for p in pids[name]])
            start = time.perf_counter()
            result = ex.step(feeds)
            seconds = time.perf_counter() - start
            if s >= warmup:
                times[name].append(seconds)
                used = np.array([process_cpu_seconds(p) for p in pids[name]]) - before
                cpu[name] = cpu.get(name, 0) + used
                if hasattr(result, "busy_seconds"):
                    busy[name].append(result.busy_seconds / seconds)
    return {name: {"seconds": float(np.median(times[name])),
                   "cpu_share": (cpu[name] / sum(times[name])).round(2).tolist(),
                   "busy_share": (np.median(busy[name], axis=0).round(2).tolist()
                                  if busy[name] else None)}
            for name in executors}


def pipeline_placement(graph, k: int):
    """An acyclic pipeline_dp placement, with the smallest epsilon (of a few) that works."""
    for epsilon in (0.1, 0.25, 0.5, 1.0):
        try:
            return partition(graph, uniform(k), algorithm="pipeline_dp", acyclic=True,
                             epsilon=epsilon)
        except PlacementError:
            continue
    raise PlacementError(f"pipeline_dp: no acyclic placement of {graph.name} on {k} devices")


def overhead(config_name: str, k: int, m: int, warmup: int, steps: int) -> dict:
    config = load_config(ROOT / "configs" / config_name)
    family, kwargs = config.model_kwargs()
    full = BUILDERS[family](**kwargs)
    micro = BUILDERS[family](**{**kwargs, "batch": kwargs["batch"] // m})
    placement = pipeline_placement(micro, k)
    plan = build_plan(micro, placement, k, micro_batches=m, schedule="1f1b")
    optimizer = {"name": "adam", "lr": 1e-3}
    executors = {"local": LocalExecutor(micro, placement, k, optimizer, plan=plan)}
    for mode in ("compiled", "plain"):
        executors[mode] = RayExecutor(micro, placement, k, optimizer, plan=plan, mode=mode)
    try:
        assert executors["compiled"].mode == "compiled"
        figures = round_robin(executors, make_data(full, family, 0), warmup, steps)
    finally:
        for name in ("compiled", "plain"):
            executors[name].shutdown()
    calls = len(executors["compiled"].routes.calls)
    used = len(set(np.asarray(placement.assignment).tolist()))
    return {"config": config_name, "k": k, "used": used, "calls": calls,
            **{name: f["seconds"] for name, f in figures.items()}}


def pipeline_speedup(m: int, warmup: int, steps: int) -> dict:
    sizes = dict(layers=4, width=2048, in_features=2048, classes=10, dtype="float32")
    batch = 512
    full = BUILDERS["mlp"](batch=batch, **sizes)
    micro = BUILDERS["mlp"](batch=batch // m, **sizes)
    data = make_data(full, "mlp", 0)
    placement = pipeline_placement(micro, 2)
    one = np.zeros(len(full.nodes), np.int32)
    executors = {
        "local 1 device": LocalExecutor(full, one, 1, "sgd"),
        "local 1 device m=8": LocalExecutor(micro, np.zeros(len(micro.nodes), np.int32), 1,
                                            "sgd", micro_batches=m),
        "ray 1 actor": RayExecutor(full, one, 1, "sgd", mode="compiled", blas_threads=1),
        "ray 2 stages": RayExecutor(micro, placement, 2, "sgd", micro_batches=m,
                                    schedule="1f1b", mode="compiled", blas_threads=1),
    }
    try:
        figures = round_robin(executors, data, warmup, steps)
    finally:
        executors["ray 1 actor"].shutdown()
        executors["ray 2 stages"].shutdown()
    return {"m": m, "imbalance": placement.metrics.imbalance, "figures": figures}


def report_overhead(warmup: int, steps: int) -> None:
    """Print table (a)."""
    print("(a) overhead: median step time, m = 4, 1F1B, pipeline_dp placement")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'config':16} {'k':>2} {'used':>4} {'calls':>5} {'local ms':>9} "
          f"{'compiled ms':>12} {'plain ms':>9} {'compiled/local':>15} {'plain/local':>12}")
    for config_name in ("mlp.yaml", "gpt-small.yaml"):
        for k in (2, 4):
            r = overhead(config_name, k, 4, warmup, steps)
            print(f"{r['config']:16} {r['k']:>2} {r['used']:>4} {r['calls']:>5} "
                  f"{1e3 * r['local']:>9.2f} {1e3 * r['compiled']:>12.2f} "
                  f"{1e3 * r['plain']:>9.2f} "
                  f"{r['compiled'] / r['local']:>15.2f} {r['plain'] / r['local']:>12.2f}",
                  flush=True)
    print("target: compiled/local <= 1.5 on mlp; used: devices holding nodes; calls: actor "
          "calls per step")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print()


def report_pipeline(warmup: int, steps: int) -> None:
    """Print figures (b)."""
    r = pipeline_speedup(8, warmup, steps)
    f = r["figures"]
    seconds = {name: figure["seconds"] for name, figure in f.items()}
    piped = seconds["ray 2 stages"]
    print("(b) pipeline: MLP width 2048, batch 512, float32, 2 stages (imbalance "
          f"{r['imbalance']:.3f}), m = {r['m']}, 1F1B, one BLAS thread per process")
    for name, label in (("local 1 device", "one device, local executor, m=1"),
                        ("local 1 device m=8", "one device, local executor, m=8"),
                        ("ray 1 actor", "one device, one Ray actor, m=1"),
                        ("ray 2 stages", "two Ray actors, 1F1B, m=8")):
        print(f"  {label:34} {seconds[name]:.3f} s/step = {512 / seconds[name]:5,.0f} "
              f"samples/s  (CPU share {f[name]['cpu_share']})")
    print(f"  speedup of the 2-stage pipeline over one device: "
          f"{seconds['local 1 device'] / piped:.2f}x (local, m=1), "
          f"{seconds['local 1 device m=8'] / piped:.2f}x (local, m=8), "
          f"{seconds['ray 1 actor'] / piped:.2f}x (one actor, m=1); "
          "target >= 1.6, limit 1.78 with m=8")
    print(f"  share of the step each stage spends in its calls: "
          f"{f['ray 2 stages']['busy_share']}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--part", choices=("a", "b", "all"), default="all",
                        help="(a) overhead, (b) pipeline speedup, or both (default)")
    args = parser.parse_args()
    warmup, steps = (3, 5) if args.quick else (10, 40)
    start_ray(num_cpus=2)
    try:
        if args.part in ("a", "all"):
            report_overhead(warmup, steps)
        if args.part in ("b", "all"):
            report_pipeline(*((1, 3) if args.quick else (2, 8)))
    finally:
        stop_ray()


if __name__ == "__main__":
    main()
