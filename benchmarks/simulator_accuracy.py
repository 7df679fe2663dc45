"""The step simulator's error on this machine's real devices (issue 15: reported, not fitted).

Calibrate this machine (`modelcut.calibration.calibrate` on 4 actors), or read a cluster file
`modelcut calibrate` wrote (`--cluster`); then for the bundled mlp, gpt-small, lstm and
resnet-small configs at k = 2 and 4, m = 4 micro-batches, 1F1B, adam, on an acyclic
pipeline_dp placement, train through the Ray executor (its default path: pipes on one node)
and compare the measured step time (the quickest of the runs, each the median of its steps
after a warm-up) with `executor.timing.simulate_plan` of the same Plan on the calibrated
cluster's first k devices: error = (predicted - measured) / measured. Nothing is fitted to
these cases; the figures say how far the simulator is from real Ray actors here.

Run from the repository root: `python benchmarks/simulator_accuracy.py [--quick]
[--cluster FILE]`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# benchmarks/executor.py's case builder (it also limits BLAS here to one thread, as in
# the actors, before numpy is imported)
_spec = importlib.util.spec_from_file_location("executor_benchmark",
                                               ROOT / "benchmarks" / "executor.py")
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
pipeline_case = _bench.pipeline_case

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from executor.ray_executor import RayExecutor  # noqa: E402
from executor.ray_runtime import start_ray, stop_ray  # noqa: E402
from executor.timing import simulate_plan  # noqa: E402
from modelcut.calibration import calibrate, cluster_yaml  # noqa: E402
from partition.cluster import Cluster  # noqa: E402

CONFIGS = ("mlp.yaml", "gpt-small.yaml", "lstm.yaml", "resnet-small.yaml")


def first_devices(spec: dict, k: int) -> Cluster:
    """The calibrated cluster's first k devices and the links between them."""
    devices = spec["devices"][:k]
    names = {d["name"] for d in devices}
    links = [link for link in spec.get("links", []) if {link["a"], link["b"]} <= names]
    return Cluster.from_spec({**spec, "devices": devices, "links": links})


def case(config_name: str, k: int, spec: dict, runs: int, steps: int, m: int = 4) -> dict:
    """One config at k devices: simulate_plan's step and the quickest run's measured step."""
    _, micro, placement, plan, data = pipeline_case(config_name, k, m)
    optimizer = {"name": "adam", "lr": 1e-3}
    predicted = simulate_plan(plan, first_devices(spec, k), "adam").step_time
    measured = []
    for _ in range(runs):
        with RayExecutor(micro, placement, k, optimizer, plan=plan, checkpoint_every=None) as ex:
            results = [ex.step(data(s)) for s in range(2 + steps)][2:]
        measured.append(float(np.median([r.step_seconds for r in results])))
    best = min(measured)
    return {"config": config_name, "k": k, "predicted": predicted, "measured": best,
            "error": (predicted - best) / best, "runs": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 steps per case")
    parser.add_argument("--cluster", metavar="FILE",
                        help="a cluster file `modelcut calibrate` wrote (default: calibrate now)")
    args = parser.parse_args()
    runs, steps = (1, 3) if args.quick else (3, 10)
    start_ray()
    try:
        if args.cluster:
            spec = yaml.safe_load(Path(args.cluster).read_text())["cluster"]
        else:
            calibration = calibrate(4, repeats=3 if args.quick else 7)
            print("".join(line + "\n" for line in cluster_yaml(calibration).splitlines()
                          if line.startswith("#   ")), end="")
            spec = calibration.cluster_spec()
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; step overhead "
              f"{spec['step_overhead'] * 1e3:.3f} ms")
        print(f"{'config':18} {'k':>2} {'predicted ms':>13} {'measured ms':>12} {'error':>8}"
              "  runs (ms)")
        errors = []
        for config_name in CONFIGS:
            for k in (2, 4):
                r = case(config_name, k, spec, runs, steps)
                errors.append(abs(r["error"]))
                print(f"{r['config']:18} {r['k']:>2} {1e3 * r['predicted']:>13.3f} "
                      f"{1e3 * r['measured']:>12.3f} {r['error']:>+8.1%}  "
                      + " ".join(f"{1e3 * x:.3f}" for x in r["runs"]), flush=True)
    finally:
        stop_ray()
    print(f"|error|: max {max(errors):.1%}, median {np.median(errors):.1%} (reported, not "
          "fitted; m = 4, 1F1B, pipeline_dp placement, quickest of the runs)")


if __name__ == "__main__":
    main()
