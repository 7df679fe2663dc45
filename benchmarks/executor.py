"""Ray executor benchmarks: (a) overhead over the local executor, (b) pipeline speedup.

(a) Step time of the Ray executor (compiled-graph path, with the cost model's calls and with
    the fewest calls, and plain-call path) over the LocalExecutor running the same plan, for the bundled mlp and gpt-small configs at k = 2
    and 4 with m = 4 micro-batches and 1F1B on an acyclic pipeline_dp placement. Target:
    Ray/local <= 1.5 on mlp with compiled graphs.
(b) Throughput of a compute-heavy 2-stage MLP (width 2048, batch 512, float32) with m = 8 and
    1F1B, one BLAS thread per actor, over the same model on one device with one BLAS thread
    (the local executor in this process, and one Ray actor). Target >= 1.6 (the bubble
    limits it to 2 * 8 / 9 = 1.78).

Each Ray executor is compared with local executors stepped in turn with it (round robin), so
slow phases of a shared machine hit both alike; figures are medians. Only one Ray executor is
alive at a time (a phase each): idle compiled-graph actors poll their channels and would take
CPU from the others. BLAS in this process is limited to one thread (set before numpy is
imported), as in the actors.

Run from the repository root: `python benchmarks/executor.py [--quick]`.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
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
from executor.ray_routes import plan_routes  # noqa: E402
from executor.ray_runtime import start_ray, stop_ray  # noqa: E402
from modelcut.config import load_config  # noqa: E402
from partition.api import partition  # noqa: E402
from partition.cluster import uniform  # noqa: E402
from partition.errors import PlacementError  # noqa: E402


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used (Linux /proc/stat, not idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def round_robin(executors: dict, data, warmup: int, steps: int) -> dict[str, dict]:
    """Step the executors in turn on the same data. Per executor: the median seconds per
    step; the CPU share each of its processes got while it stepped (CPU seconds / wall
    seconds; 1.0 is a whole core; for a Ray executor its actors, then the driver), and the
    share of all the machine's cores' time used by every other process meanwhile (Ray's own
    processes, idle actors, other users); for a Ray executor, the median share of the step
    each actor spent inside its calls; the median seconds each device spent computing nodes."""
    times: dict[str, list[float]] = {name: [] for name in executors}
    busy: dict[str, list] = {name: [] for name in executors}
    compute: dict[str, list] = {name: [] for name in executors}
    cpu: dict[str, np.ndarray] = {}
    other: dict[str, float] = {}
    pids = {name: (ex.actor_pids() if hasattr(ex, "actor_pids") else []) + [os.getpid()]
            for name, ex in executors.items()}
    for s in range(warmup + steps):
        feeds = data(s)
        for name, ex in executors.items():
            before = np.array([process_cpu_seconds(p) for p in pids[name]])
            machine = machine_cpu_seconds()
            start = time.perf_counter()
            result = ex.step(feeds)
            seconds = time.perf_counter() - start
            if s >= warmup:
                times[name].append(seconds)
                used = np.array([process_cpu_seconds(p) for p in pids[name]]) - before
                cpu[name] = cpu.get(name, 0) + used
                other[name] = other.get(name, 0.0) + machine_cpu_seconds() - machine - used.sum()
                compute[name].append(result.compute_seconds)
                if hasattr(result, "busy_seconds"):
                    busy[name].append(result.busy_seconds / seconds)
    return {name: {"seconds": float(np.median(times[name])),
                   "cpu_share": (cpu[name] / sum(times[name])).round(2).tolist(),
                   "other_share": round(max(other[name], 0.0) / sum(times[name])
                                        / os.cpu_count(), 2),
                   "busy_share": (np.median(busy[name], axis=0).round(2).tolist()
                                  if busy[name] else None),
                   "compute_seconds": np.median(compute[name], axis=0).round(3).tolist()}
            for name in executors}


def phases(executors: dict, ray_names: list[str], data, warmup: int, steps: int) -> dict:
    """One round robin per Ray executor, each with the local executors beside it; the Ray
    executors wait until their phase to start and stop at its end, since an idle compiled
    graph's actors poll their channels and take CPU from whatever runs. Figures of a local
    executor are keyed `name@ray name`."""
    out: dict[str, dict] = {}
    local = {name: ex for name, ex in executors.items() if name not in ray_names}
    for name in ray_names:
        ex = executors[name]()
        try:
            figures = round_robin({**local, name: ex}, data, warmup, steps)
        finally:
            ex.shutdown()
        out[name] = figures.pop(name)
        out.update({f"{n}@{name}": f for n, f in figures.items()})
    return out


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
    routes = {"compiled": plan_routes(plan), "fewest": plan_routes(plan, merge="all"),
              "plain": plan_routes(plan)}
    executors = {"local": LocalExecutor(micro, placement, k, optimizer, plan=plan)}
    for name, r in routes.items():
        executors[name] = functools.partial(RayExecutor, micro, placement, k, optimizer,
                                            plan=plan, routes=r,
                                            mode="plain" if name == "plain" else "compiled")
    f = phases(executors, list(routes), make_data(full, family, 0), warmup, steps)
    used = len(set(np.asarray(placement.assignment).tolist()))
    return {"config": config_name, "k": k, "used": used,
            "calls": {name: len(r.calls) for name, r in routes.items()},
            "unmerged": len(plan_routes(plan, merge="none").calls),
            **{name: f[name]["seconds"] / f[f"local@{name}"]["seconds"] for name in routes},
            "local": f["local@compiled"]["seconds"], "ms": f["compiled"]["seconds"]}


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
        "ray 1 actor": functools.partial(RayExecutor, full, one, 1, "sgd", mode="compiled",
                                         blas_threads=1),
        "ray 2 stages": functools.partial(RayExecutor, micro, placement, 2, "sgd",
                                          micro_batches=m, schedule="1f1b", mode="compiled",
                                          blas_threads=1),
    }
    figures = phases(executors, ["ray 1 actor", "ray 2 stages"], data, warmup, steps)
    return {"m": m, "imbalance": placement.metrics.imbalance, "figures": figures}


def report_overhead(warmup: int, steps: int) -> None:
    """Print table (a)."""
    print("(a) overhead: median step time, m = 4, 1F1B, pipeline_dp placement")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'config':16} {'k':>2} {'used':>4} {'calls':>11} {'local ms':>9} "
          f"{'compiled ms':>12} {'compiled/local':>15} {'fewest/local':>13} "
          f"{'plain/local':>12}")
    for config_name in ("mlp.yaml", "gpt-small.yaml"):
        for k in (2, 4):
            r = overhead(config_name, k, 4, warmup, steps)
            calls = f"{r['unmerged']}/{r['calls']['compiled']}/{r['calls']['fewest']}"
            print(f"{r['config']:16} {r['k']:>2} {r['used']:>4} {calls:>11} "
                  f"{1e3 * r['local']:>9.2f} {1e3 * r['ms']:>12.2f} {r['compiled']:>15.2f} "
                  f"{r['fewest']:>13.2f} {r['plain']:>12.2f}", flush=True)
    print("target: compiled/local <= 1.5 on mlp; used: devices holding nodes; calls per step: "
          "unmerged/cost-model merge (compiled, plain)/fewest; each ratio against the local "
          "executor stepped in turn with it")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print()


def report_pipeline(warmup: int, steps: int) -> None:
    """Print figures (b): the headline is the 2-stage pipeline against the local executor on
    one device with m = 1, stepped in turn with it; the other single-device figures were
    stepped in turn with the same local baseline in the one-actor phase."""
    r = pipeline_speedup(8, warmup, steps)
    f = r["figures"]
    base = f["local 1 device@ray 2 stages"]["seconds"]
    base_a = f["local 1 device@ray 1 actor"]["seconds"]
    print("(b) pipeline: MLP width 2048, batch 512, float32, 2 stages (imbalance "
          f"{r['imbalance']:.3f}), m = {r['m']}, 1F1B, one BLAS thread per process")
    rows = (("local 1 device@ray 2 stages", "one device, local executor, m=1", base),
            ("ray 2 stages", "two Ray actors, 1F1B, m=8", base),
            ("local 1 device@ray 1 actor", "one device, local executor, m=1", base_a),
            ("local 1 device m=8@ray 1 actor", "one device, local executor, m=8", base_a),
            ("ray 1 actor", "one device, one Ray actor, m=1", base_a))
    for i, (name, label, ref) in enumerate(rows):
        if i in (0, 2):
            print(f"  phase {1 + i // 2}: " + ("two-stage pipeline" if i == 0 else "one actor"))
        seconds = f[name]["seconds"]
        print(f"    {label:34} {seconds:.3f} s/step = {512 / seconds:5,.0f} samples/s, "
              f"{ref / seconds:.2f}x of local m=1  (CPU share {f[name]['cpu_share']}, "
              f"other processes {f[name]['other_share']} of the machine)")
    piped = f["ray 2 stages"]["seconds"]
    print(f"  speedup of the 2-stage pipeline over one device, local m=1: {base / piped:.2f}x "
          "(target >= 1.6, limit 1.78 with m=8)")
    print(f"  share of the step each stage spends in its calls: "
          f"{f['ray 2 stages']['busy_share']}; seconds computing nodes per stage "
          f"{f['ray 2 stages']['compute_seconds']} (one device, local m=8: "
          f"{f['local 1 device m=8@ray 1 actor']['compute_seconds']})")
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
