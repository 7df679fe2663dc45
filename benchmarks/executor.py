"""Ray executor benchmarks: (a) overhead over the local executor, (b) pipeline speedup.

(a) Step time of the Ray executor (pipes path, the default on one node, and the plain-call
    path, one actor call per round-run of a device's blocks: executor/ray_calls.py) over the
    LocalExecutor running the same plan, for the bundled mlp and gpt-small configs at k = 2
    and 4 with m = 4 micro-batches and 1F1B on an acyclic pipeline_dp placement.
    Target: Ray/local <= 1.5 on mlp.
(b) Throughput of a compute-heavy 2-stage MLP (width 2048, float32) with m = 8 and 1F1B, one
    BLAS thread per actor, over the same model on one device with one BLAS thread (the local
    executor in this process, and one Ray actor), for two models: the issue's example (4
    layers, 2048 inputs, batch 512) and one whose stages do equal work (5 layers, 256 inputs,
    batch 2048: 256-row micro-batches). Target >= 1.6 (the bubble limits it to
    2 * 8 / 9 = 1.78). Two pipelines: weight gradients summed per micro-batch, and deferred
    (`defer_weight_grads`, executor/accumulate.py): summed by stacked gemms, which run at the
    full batch's gemm speed, once a stage has sent its last packet (a first stage: while it
    would wait for its last gradients), off the backward critical path.

Each Ray executor is compared with local executors stepped in turn with it (round robin), so
slow phases of a shared machine hit both alike; figures are medians. Only one Ray executor is
alive at a time (a phase each): idle actors of one executor would take CPU from the others.
BLAS in this process is limited to one thread (set before numpy is imported), as in the
actors.

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
from typing import NamedTuple  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autodiff.models import BUILDERS, make_data  # noqa: E402
from executor.local import LocalExecutor  # noqa: E402
from executor.plan import build_plan  # noqa: E402
from executor.ray_calls import plan_calls  # noqa: E402
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
    executors wait until their phase to start and stop at its end, since idle actors (a
    pipes actor polls its pipe before it blocks) take CPU from whatever runs. Figures of a local
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


class Case(NamedTuple):
    """A bundled config's model as the benchmarks run it: 1F1B with m micro-batches on an
    acyclic pipeline_dp placement; `data(step)` draws the full batch."""

    config: object
    micro: object
    placement: object
    plan: object
    data: object


def pipeline_case(config_name: str, k: int, m: int) -> Case:
    config = load_config(ROOT / "configs" / config_name)
    family, kwargs = config.model_kwargs()
    full = BUILDERS[family](**kwargs)
    micro = BUILDERS[family](**{**kwargs, "batch": kwargs["batch"] // m})
    placement = pipeline_placement(micro, k)
    plan = build_plan(micro, placement, k, micro_batches=m, schedule="1f1b")
    return Case(config, micro, placement, plan, make_data(full, family, 0))


def overhead(config_name: str, k: int, m: int, warmup: int, steps: int) -> dict:
    _, micro, placement, plan, data = pipeline_case(config_name, k, m)
    optimizer = {"name": "adam", "lr": 1e-3}
    modes = ("pipes", "plain")
    executors = {"local": LocalExecutor(micro, placement, k, optimizer, plan=plan)}
    for mode in modes:
        executors[mode] = functools.partial(RayExecutor, micro, placement, k, optimizer,
                                            plan=plan, mode=mode)
    f = phases(executors, list(modes), data, warmup, steps)
    used = len(set(np.asarray(placement.assignment).tolist()))
    return {"config": config_name, "k": k, "used": used, "blocks": len(plan.order),
            "calls": len(plan_calls(plan)),
            **{mode: f[mode]["seconds"] / f[f"local@{mode}"]["seconds"] for mode in modes},
            "local": f["local@pipes"]["seconds"], "ms": f["pipes"]["seconds"]}


# (b)'s models: the issue's example, and one whose two stages do equal work (the first layer
# computes no input gradient, so with 4 equal layers the stages do 5:6 of the work; a narrow
# first layer and 5 layers split 3:2 make it ~1:1) with 256-row micro-batches (a gemm reads
# its 16 MiB weight from memory once per micro-batch: at 64 rows a step of 8 micro-batches
# runs ~15% slower than one of the whole batch here, at 256 rows a few percent).
PIPELINE_MODELS = {
    "example": (dict(layers=4, width=2048, in_features=2048, classes=10, dtype="float32"), 512),
    "balanced": (dict(layers=5, width=2048, in_features=256, classes=10, dtype="float32"), 2048),
}


def one_device_step_seconds(model: str, warmup: int, steps: int) -> float:
    """Median step time of a pipeline model on one device, local executor, m = 1 (run as a
    separate process by `concurrency_ceiling`)."""
    sizes, batch = PIPELINE_MODELS[model]
    full = BUILDERS["mlp"](batch=batch, **sizes)
    data = make_data(full, "mlp", 0)
    ex = LocalExecutor(full, np.zeros(len(full.nodes), np.int32), 1, "sgd")
    feeds = [data(s) for s in range(warmup + steps)]
    times = []
    for f in feeds:
        start = time.perf_counter()
        ex.step(f)
        times.append(time.perf_counter() - start)
    return float(np.median(times[warmup:]))


def concurrency_ceiling(model: str, warmup: int, steps: int) -> dict:
    """What two cores give two independent processes here: the one-device step alone, then
    two copies at once (no Ray, no communication). Two pipeline stages computing at once pay
    the same slowdown (shared caches, memory bandwidth), so 2 * alone / together bounds any
    2-stage speedup on this machine before bubbles and micro-batch effects."""
    import subprocess
    code = ("import importlib.util as u; "
            f"s = u.spec_from_file_location('bench_executor', {str(Path(__file__).resolve())!r}); "
            "b = u.module_from_spec(s); s.loader.exec_module(b); "
            f"print(b.one_device_step_seconds({model!r}, {warmup}, {steps}))")

    def run(copies: int) -> list[float]:
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  text=True, cwd=str(ROOT)) for _ in range(copies)]
        return [float(p.communicate()[0].split()[-1]) for p in procs]
    alone = run(1)[0]
    together = run(2)
    return {"alone": alone, "together": together,
            "ceiling": 2 * alone / float(np.mean(together))}


def pipeline_speedup(model: str, m: int, warmup: int, steps: int) -> dict:
    sizes, batch = PIPELINE_MODELS[model]
    full = BUILDERS["mlp"](batch=batch, **sizes)
    micro = BUILDERS["mlp"](batch=batch // m, **sizes)
    data = make_data(full, "mlp", 0)
    placement = pipeline_placement(micro, 2)
    one = np.zeros(len(full.nodes), np.int32)
    executors = {
        "local 1 device": LocalExecutor(full, one, 1, "sgd"),
        "local 1 device m=8": LocalExecutor(micro, np.zeros(len(micro.nodes), np.int32), 1,
                                            "sgd", micro_batches=m),
        "local 1 device m=8 deferred W": LocalExecutor(
            micro, np.zeros(len(micro.nodes), np.int32), 1, "sgd", micro_batches=m,
            defer_weight_grads=True),
        "ray 1 actor": functools.partial(RayExecutor, full, one, 1, "sgd", mode="pipes",
                                         blas_threads=1),
        "ray 2 stages": functools.partial(RayExecutor, micro, placement, 2, "sgd",
                                          micro_batches=m, schedule="1f1b", mode="pipes",
                                          blas_threads=1),
        "ray 2 stages deferred W": functools.partial(
            RayExecutor, micro, placement, 2, "sgd", micro_batches=m, schedule="1f1b",
            mode="pipes", blas_threads=1, defer_weight_grads=True),
    }
    figures = phases(executors, ["ray 1 actor", "ray 2 stages", "ray 2 stages deferred W"],
                     data, warmup, steps)
    return {"m": m, "imbalance": placement.metrics.imbalance, "figures": figures,
            "sizes": sizes, "batch": batch}


def report_overhead(warmup: int, steps: int) -> None:
    """Print table (a)."""
    print("(a) overhead: median step time, m = 4, 1F1B, pipeline_dp placement")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'config':16} {'k':>2} {'used':>4} {'calls':>8} {'local ms':>9} {'pipes ms':>9} "
          f"{'pipes/local':>12} {'plain/local':>12}")
    for config_name in ("mlp.yaml", "gpt-small.yaml"):
        for k in (2, 4):
            r = overhead(config_name, k, 4, warmup, steps)
            calls = f"{r['blocks']}/{r['calls']}"
            print(f"{r['config']:16} {r['k']:>2} {r['used']:>4} {calls:>8} "
                  f"{1e3 * r['local']:>9.2f} {1e3 * r['ms']:>9.2f} {r['pipes']:>12.2f} "
                  f"{r['plain']:>12.2f}", flush=True)
    print("target: Ray/local <= 1.5 on mlp (pipes: the default path on one node; plain calls "
          "beside it); used: devices holding nodes; calls: blocks/actor calls per step on the "
          "plain path; each ratio against the local executor stepped in turn with it")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print()


def report_pipeline(model: str, warmup: int, steps: int) -> None:
    """Print figures (b) for one model: the headline is the 2-stage pipeline (weight gradients
    deferred to one stacked gemm at the end of the step, and summed per micro-batch) against
    the local executor on one device with m = 1, stepped in turn with it in the same phase."""
    r = pipeline_speedup(model, 8, warmup, steps)
    f, z, batch = r["figures"], r["sizes"], r["batch"]
    print(f"(b) pipeline, {model} model: MLP of {z['layers']} layers of width {z['width']}, "
          f"{z['in_features']} inputs, batch {batch}, float32, 2 stages (imbalance "
          f"{r['imbalance']:.3f}), m = {r['m']}, 1F1B, one BLAS thread per process")
    phase_rows = (
        ("ray 2 stages deferred W", "two-stage pipeline, weight gradients deferred",
         (("ray 2 stages deferred W", "two Ray actors, 1F1B, m=8, deferred W"),
          ("local 1 device m=8 deferred W", "one device, local executor, m=8, deferred W"))),
        ("ray 2 stages", "two-stage pipeline, weight gradients per micro-batch",
         (("ray 2 stages", "two Ray actors, 1F1B, m=8"),
          ("local 1 device m=8", "one device, local executor, m=8"))),
        ("ray 1 actor", "one actor",
         (("ray 1 actor", "one device, one Ray actor, m=1"),)))
    for n, (phase, title, rows) in enumerate(phase_rows):
        base = f[f"local 1 device@{phase}"]["seconds"]
        print(f"  phase {n + 1}: {title}")
        rows = (("local 1 device@" + phase, "one device, local executor, m=1"),) + tuple(
            (name if name == phase else f"{name}@{phase}", label) for name, label in rows)
        for name, label in rows:
            seconds = f[name]["seconds"]
            print(f"    {label:46} {seconds:.3f} s/step = {batch / seconds:5,.0f} samples/s, "
                  f"{base / seconds:.2f}x of local m=1  (CPU share {f[name]['cpu_share']}, "
                  f"other processes {f[name]['other_share']} of the machine)")
    for phase in ("ray 2 stages deferred W", "ray 2 stages"):
        base = f[f"local 1 device@{phase}"]["seconds"]
        print(f"  speedup over one device, local m=1 ({phase}): "
              f"{base / f[phase]['seconds']:.2f}x (target >= 1.6, limit 1.78 with m=8)")
        print(f"    share of the step each stage spends in its calls: {f[phase]['busy_share']}; "
              f"seconds computing nodes per stage {f[phase]['compute_seconds']}")
    c = concurrency_ceiling(model, *((1, 3) if warmup < 2 else (2, 8)))
    print(f"  ceiling of two processes on this machine: the one-device step alone "
          f"{c['alone']:.3f} s, two copies at once {np.round(c['together'], 3).tolist()} s "
          f"-> 2 stages can reach at most {c['ceiling']:.2f}x before bubbles and micro-batch "
          "effects")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--part", choices=("a", "b", "all"), default="all",
                        help="(a) overhead, (b) pipeline speedup, or both (default)")
    args = parser.parse_args()
    warmup, steps = (3, 5) if args.quick else (20, 100)
    start_ray(num_cpus=2)
    try:
        if args.part in ("a", "all"):
            report_overhead(warmup, steps)
        if args.part in ("b", "all"):
            for model in PIPELINE_MODELS:
                report_pipeline(model, *((1, 3) if args.quick else (2, 8)))
                print()
    finally:
        stop_ray()


if __name__ == "__main__":
    main()
