"""Emulated devices against the step simulator: |measured - predicted| / predicted.

For the bundled mlp, gpt-small, lstm and resnet-small configs at k = 2 and 4 devices of the
config's uniform GPU-like cluster, m = 4 micro-batches and 1F1B on an acyclic pipeline_dp
placement: the Ray executor emulates the cluster (executor/emulate.py: every step padded to
its model time times a dilation D chosen from a warm local timing), and its step time in the
cluster's seconds is compared with `executor.timing.simulate_plan` on the same Plan.
Measured: the quickest of 3 runs, each the median of its steps after a warm-up step.
Target: error <= 5% in every case.

Run from the repository root: `python benchmarks/emulation_accuracy.py [--quick]`.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# benchmarks/executor.py's case builder (it also limits BLAS here to one thread, as in
# the actors, before numpy is imported, so the dilation is timed as the actors compute)
_spec = importlib.util.spec_from_file_location("executor_benchmark",
                                               ROOT / "benchmarks" / "executor.py")
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
pipeline_case = _bench.pipeline_case

import numpy as np  # noqa: E402

from executor.ray_executor import RayExecutor  # noqa: E402
from executor.ray_runtime import start_ray, stop_ray  # noqa: E402
from executor.timing import simulate_plan  # noqa: E402
from partition.cluster import Cluster  # noqa: E402

CONFIGS = ("mlp.yaml", "gpt-small.yaml", "lstm.yaml", "resnet-small.yaml")
TARGET = 0.05


def case(config_name: str, k: int, m: int, runs: int, steps: int) -> dict:
    """One config at k devices: the prediction and the quickest run's emulated step time."""
    config, micro, placement, plan, data = pipeline_case(config_name, k, m)
    cluster = Cluster.from_spec(config.cluster_spec())
    cluster = cluster.resized(k) if cluster.k != k else cluster
    optimizer = {"name": "adam", "lr": 1e-3}
    predicted = simulate_plan(plan, cluster, "adam").step_time
    measured, dilations, real = [], [], []
    for _ in range(runs):
        with RayExecutor(micro, placement, k, optimizer, plan=plan, emulate=cluster,
                         checkpoint_every=None) as ex:
            results = [ex.step(data(s)) for s in range(1 + steps)][1:]
        measured.append(float(np.median([r.emulated_seconds for r in results])))
        dilations.append(results[0].dilation)
        real.append(float(np.median([r.step_seconds for r in results])))
    best = int(np.argmin(measured))
    return {"config": config_name, "k": k, "predicted": predicted, "measured": measured[best],
            "dilation": dilations[best], "real": real[best],
            "error": abs(measured[best] - predicted) / predicted,
            "runs": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 2 steps per case")
    args = parser.parse_args()
    runs, steps = (1, 2) if args.quick else (3, 3)
    start_ray(num_cpus=2)
    worst = 0.0
    try:
        print(f"{'config':18} {'k':>2} {'predicted':>12} {'measured':>12} {'error':>7} "
              f"{'dilation':>10} {'real s/step':>11}  runs (emulated s)")
        for config_name in CONFIGS:
            for k in (2, 4):
                r = case(config_name, k, 4, runs, steps)
                worst = max(worst, r["error"])
                print(f"{r['config']:18} {r['k']:>2} {1e6 * r['predicted']:>10.1f}us "
                      f"{1e6 * r['measured']:>10.1f}us {100 * r['error']:>6.2f}% "
                      f"{r['dilation']:>10.4g} {r['real']:>11.3f}  "
                      + " ".join(f"{1e6 * x:.1f}" for x in r["runs"]), flush=True)
    finally:
        stop_ray()
    print(f"worst error {100 * worst:.2f}% (target <= {100 * TARGET:.0f}% in every case); "
          "m = 4, 1F1B, pipeline_dp placement, quickest of the runs")


if __name__ == "__main__":
    main()
