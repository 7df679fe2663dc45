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


def round_robin(executors: dict, data, warmup: int, steps: int
                ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds per step of each executor, stepping them in turn on the same data; and
    the CPU share each of its processes got while it stepped (CPU seconds / wall seconds; 1.0
    is a whole core: less means other processes took the cores)."""
    times: dict[str, list[float]] = {name: [] for name in executors}
    cpu: dict[str, np.ndarray] = {}
    pids = {name: ex.actor_pids() if hasattr(ex, "actor_pids") else [os.getpid()]
            for name, ex in executors.items()}
    for s in range(warmup + steps):
        feeds = data(s)
        for name, ex in executors.items():
            before = np.array([process_cpu_seconds(p) for p in pids[name]])
            start = time.perf_counter()
            ex.step(feeds)
            if s >= warmup:
                times[name].append(time.perf_counter() - start)
                used = np.array([process_cpu_seconds(p) for p in pids[name]]) - before
                cpu[name] = cpu.get(name, 0) + used
    share = {name: (cpu[name] / sum(times[name])).round(2).tolist() for name in executors}
    return {name: float(np.median(t)) for name, t in times.items()}, share


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
        times, _ = round_robin(executors, make_data(full, family, 0), warmup, steps)
    finally:
        for name in ("compiled", "plain"):
            executors[name].shutdown()
    calls = len(executors["compiled"].routes.calls)
    used = len(set(np.asarray(placement.assignment).tolist()))
    return {"config": config_name, "k": k, "used": used, "calls": calls, **times}


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
        "ray 1 actor": RayExecutor(full, one, 1, "sgd", mode="compiled", blas_threads=1),
        "ray 2 stages": RayExecutor(micro, placement, 2, "sgd", micro_batches=m,
                                    schedule="1f1b", mode="compiled", blas_threads=1),
    }
    try:
        times, share = round_robin(executors, data, warmup, steps)
    finally:
        executors["ray 1 actor"].shutdown()
        executors["ray 2 stages"].shutdown()
    return {"m": m, "imbalance": placement.metrics.imbalance, "times": times, "share": share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = parser.parse_args()
    warmup, steps = (3, 5) if args.quick else (10, 40)
    start_ray(num_cpus=2)
    try:
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
        r = pipeline_speedup(8, *((1, 3) if args.quick else (2, 8)))
        names = ("local 1 device", "ray 1 actor", "ray 2 stages")
        base, ray_one, piped = (r["times"][name] for name in names)
        print("(b) pipeline: MLP width 2048, batch 512, float32, 2 stages (imbalance "
              f"{r['imbalance']:.3f}), m = {r['m']}, 1F1B, one BLAS thread per process")
        print(f"  one device, local executor: {base:.3f} s/step = {512 / base:,.0f} samples/s")
        print(f"  one device, one Ray actor:  {ray_one:.3f} s/step = {512 / ray_one:,.0f} "
              "samples/s")
        print(f"  two Ray actors, 1F1B m=8:   {piped:.3f} s/step = {512 / piped:,.0f} samples/s")
        print(f"  speedup over the local single device: {base / piped:.2f}x; over one Ray "
              f"actor: {ray_one / piped:.2f}x (target >= 1.6, limit 1.78)")
        print("  CPU share of each process while it stepped (1.0 = a whole core): "
              + "; ".join(f"{name} {r['share'][name]}" for name in names))
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        stop_ray()


if __name__ == "__main__":
    main()
