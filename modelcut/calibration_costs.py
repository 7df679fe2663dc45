"""What ops, optimizer updates, steps and hops cost in the executor's own runs (for
`modelcut calibrate`, modelcut/calibration.py).

- `op_costs`: the COST_MODELS (two sizes of each bundled family, none of them a bundled config)
  trained on one device by the executor's worker, each op of the training graph timed; per op
  kind, seconds = a + b * FLOPs or a + b * bytes read and written, whichever fits better.
- `update_costs`: per optimizer, one parameter's update timed at a few sizes: a + b * bytes.
- step and hop: STEP_MODEL trained through the Ray executor on one device (the seconds per
  step outside the ops and updates: driver, channels, the call's own work) and split over two
  (the seconds per hop between calls of different actors, as the executor pays it).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from modelcut.calibration import median_seconds

# models whose training graphs, op by op, measure the cost of each op kind (two sizes per family)
COST_MODELS = (("mlp", dict(layers=3, width=128, in_features=32, classes=8, batch=16)),
               ("mlp", dict(layers=2, width=512, in_features=128, classes=8, batch=64)),
               ("gpt", dict(layers=1, d_model=32, heads=2, seq=16, vocab=64, batch=4)),
               ("gpt", dict(layers=1, d_model=96, heads=2, seq=48, vocab=256, batch=4)),
               ("lstm", dict(layers=1, hidden=32, vocab=32, seq=6, batch=4)),
               ("lstm", dict(layers=1, hidden=128, vocab=128, seq=4, batch=16)),
               ("resnet", dict(channels=(4, 8), blocks=1, image=8, in_channels=3, classes=4,
                               batch=4)),
               ("resnet", dict(channels=(12,), blocks=1, image=24, in_channels=2, classes=4,
                               batch=4)))
UPDATE_SIZES = (1024, 64 * 1024, 1024**2)     # parameter bytes timed per optimizer
OPTIMIZERS = ("sgd", "momentum", "adam")
# training steps through the Ray executor: an MLP of a few ms per step on 1 and 2 devices
STEP_MODEL = dict(layers=4, width=384, in_features=64, classes=8, batch=64)
STEP_WARMUP = 3


def op_samples(steps: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per op kind, (FLOPs, bytes read and written, seconds) of every computed op of the
    COST_MODELS' training graphs as the executor's worker runs them on one device: each op's
    median over `steps` steps, scaled so that a step's ops add up to the compute seconds the
    worker reports (which also count its loop)."""
    from autodiff.models import BUILDERS, make_data
    from executor.local import LocalExecutor
    from partition.cost import graph_arrays
    from partition.simulate import touched_bytes

    samples: dict[str, list[tuple[float, float, float]]] = {}
    for family, sizes in COST_MODELS:
        graph = BUILDERS[family](**sizes)
        executor = LocalExecutor(graph, np.zeros(len(graph.nodes), dtype=np.int64), 1, "adam")
        worker, data = executor.workers[0], make_data(graph, family, 0)
        times: dict[str, float] = {}
        run = worker._run_node

        def timed(name, mb, run=run, times=times):
            start = time.perf_counter()
            value = run(name, mb)
            times[name] = times.get(name, 0.0) + time.perf_counter() - start
            return value
        worker._run_node = timed                 # times each op the worker runs
        executor.step(data(0))
        per_step, compute = [], []
        for s in range(1, steps + 1):
            times.clear()
            compute.append(float(executor.step(data(s)).compute_seconds.sum()))
            per_step.append(dict(times))
        training = executor.plan.training
        arrays = graph_arrays(training)
        touched = touched_bytes(arrays)
        ops = [(i, node) for i, node in enumerate(training.nodes)
               if not node.is_source and node.name in per_step[0]]
        seconds = np.median([[step[node.name] for _, node in ops] for step in per_step], axis=0)
        scale = float(np.median(compute)) / max(float(seconds.sum()), 1e-12)
        for (i, node), t in zip(ops, seconds.tolist()):
            samples.setdefault(node.op, []).append((float(arrays.flops[i]), float(touched[i]),
                                                    t * scale))
    return samples


def fit_op_costs(samples: dict[str, Sequence[tuple[float, float, float]]]
                 ) -> dict[str, tuple[float, float, float]]:
    """Per op kind, `[seconds, seconds per FLOP, seconds per byte]` from (FLOPs, bytes,
    seconds) samples: non-negative least squares of seconds on (1, FLOPs) and on (1, bytes),
    whichever fits better (compute-bound kinds follow their FLOPs, memory-bound ones their
    bytes)."""
    from scipy.optimize import nnls

    out = {}
    for op, rows in samples.items():
        rows = np.asarray(rows, dtype=float).reshape(-1, 3)
        y = rows[:, 2]
        best = None
        for column in (1, 0):                      # bytes, then FLOPs (ties go to bytes)
            design = np.column_stack([np.ones(len(y)), rows[:, column]])
            coef, residual = nnls(design, y)
            if best is None or residual < best[0] * (1 - 1e-9):
                best = (residual, column, coef)
        _, column, (intercept, slope) = best
        out[op] = (float(intercept), float(slope) if column == 0 else 0.0,
                   float(slope) if column == 1 else 0.0)
    return out


def update_samples(repeats: int) -> dict[str, list[tuple[int, float]]]:
    """Per optimizer, (parameter bytes, median seconds of one update) for UPDATE_SIZES
    (float32 parameters, the optimizers of executor.optim with their default settings)."""
    from executor.optim import make_optimizer

    rng = np.random.default_rng(0)
    out: dict[str, list[tuple[int, float]]] = {}
    for name in OPTIMIZERS:
        optimizer = make_optimizer(name)
        for nbytes in UPDATE_SIZES:
            param = rng.standard_normal(nbytes // 4).astype(np.float32)
            grad = rng.standard_normal(nbytes // 4).astype(np.float32)
            state = [param, optimizer.init_state(param)]

            def update():
                state[:] = optimizer.update(state[0], grad, state[1])
            out.setdefault(name, []).append((nbytes, median_seconds(update, repeats)))
    return out


def fit_update_costs(samples: dict[str, Sequence[tuple[int, float]]]
                     ) -> dict[str, tuple[float, float]]:
    """Per optimizer, `[seconds, seconds per byte]` of one parameter's update: non-negative
    least squares of seconds on (1, bytes)."""
    from scipy.optimize import nnls

    out = {}
    for name, rows in samples.items():
        rows = np.asarray(rows, dtype=float).reshape(-1, 2)
        (intercept, per_byte), _ = nnls(np.column_stack([np.ones(len(rows)), rows[:, 0]]),
                                        rows[:, 1])
        out[name] = (float(intercept), float(per_byte))
    return out


def fit_step_overhead(one: Sequence[tuple[float, float]], poll_after: float = 0.0,
                      poll_delay: float = 0.0) -> float:
    """Seconds per step outside the devices' calls from training steps on one device, each as
    (step seconds, seconds in ops and updates): the median of their difference, less the
    driver's poll delay after waiting the median step (the simulator adds that delay
    itself: half the wait beyond `poll_after`, at most `poll_delay`); at least 0."""
    one = np.asarray(one, dtype=float).reshape(-1, 2)
    wait = float(np.median(one[:, 0]))
    late = min((wait - poll_after) / 2, poll_delay) if wait > poll_after else 0.0
    return max(float(np.median(one[:, 0] - one[:, 1])) - late, 0.0)


def fit_latency(simulated: Callable[[float], float], measured: float, upper: float = 0.05,
                tolerance: float = 1e-7) -> float:
    """The link latency at which `simulated(latency)` (a simulated step, non-decreasing in the
    latency) equals `measured`, by bisection on [0, upper]; 0 when even no latency simulates
    a longer step, `upper` when none up to it is long enough."""
    low, high = 0.0, upper
    if simulated(low) >= measured:
        return 0.0
    if simulated(high) <= measured:
        return upper
    while high - low > tolerance:
        middle = (low + high) / 2
        if simulated(middle) < measured:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def step_model():
    """The forward graph of STEP_MODEL and its data stream."""
    from autodiff.models import BUILDERS, make_data

    graph = BUILDERS["mlp"](**STEP_MODEL)
    return graph, make_data(graph, "mlp", 0)


def step_model_seconds(op_costs: dict) -> float:
    """Seconds of STEP_MODEL's ops (forward and backward, no update) by these op costs."""
    from partition.cluster import Cluster, Device
    from partition.simulate import simulate

    graph, _ = step_model()
    device = Device("probe", 1e12, 2**30, op_costs=op_costs)
    return simulate(graph, np.zeros(len(graph.nodes), dtype=np.int64),
                    Cluster((device,), np.ones((1, 1)), np.zeros((1, 1)))).makespan


def executor_steps(ks: Sequence[int], steps: int
                   ) -> dict[int, tuple[list[tuple[float, float, float]], np.ndarray]]:
    """Train STEP_MODEL (Adam, one micro-batch) through the Ray executor, its layers split
    contiguously over k devices for each k in `ks`, one step on each in turn (so that a
    burst of load on this machine hits them alike): per k, per step (step seconds, device
    seconds on the chain of calls: all compute and the first device's update, which ends the
    chain; compute seconds), and the placement."""
    from contextlib import ExitStack

    from executor.ray_executor import RayExecutor
    from partition.api import partition
    from partition.cluster import uniform

    graph, data = step_model()
    placements = {k: partition(graph, uniform(k), algorithm="contiguous", epsilon=1.0)
                  for k in ks}
    rows: dict[int, list] = {k: [] for k in ks}
    with ExitStack() as stack:
        executors = {k: stack.enter_context(RayExecutor(graph, placements[k], k,
                                                        optimizer="adam",
                                                        checkpoint_every=None))
                     for k in ks}
        for s in range(STEP_WARMUP + steps):
            for k, executor in executors.items():
                result = executor.step(data(s))
                if s >= STEP_WARMUP:
                    compute = float(result.compute_seconds.sum())
                    rows[k].append((result.step_seconds,
                                    compute + float(result.update_seconds[0]), compute))
    return {k: (rows[k], np.asarray(placements[k].assignment)) for k in ks}


def executor_costs(devices: int, steps: int, op_costs: dict, update_costs: dict,
                   bandwidth: float, poll_after: float, poll_delay: float
                   ) -> tuple[float, float | None, float]:
    """(seconds per step, link latency, compute scale) as the Ray executor pays them, from
    STEP_MODEL trained on one device and (when there are two) split over two: the scale is
    the executor's compute seconds over what `op_costs` predict for the model; the latency
    the one at which the simulator, with the scaled op costs, `update_costs`, the step
    overhead and the poll delay, predicts the measured step on two devices (None on one)."""
    from partition.cluster import Cluster, Device
    from partition.simulate import simulate

    runs = executor_steps((1, 2) if devices > 1 else (1,), steps)
    one, _ = runs[1]
    two, assignment = runs.get(2, ([], None))
    scale = float(np.median([r[2] for r in (two or one)])) / step_model_seconds(op_costs)
    per_step = fit_step_overhead([r[:2] for r in one], poll_after, poll_delay)
    if not two:
        return per_step, None, scale
    graph, _ = step_model()
    scaled = {op: tuple(scale * c for c in cost) for op, cost in op_costs.items()}
    pair = tuple(Device(f"cpu{i}", 1e12, 2**30, op_costs=scaled, update_costs=update_costs)
                 for i in range(2))

    def simulated(latency: float) -> float:
        cluster = Cluster(pair, np.full((2, 2), bandwidth), np.full((2, 2), latency),
                          step_overhead=per_step, batch_transfers=True,
                          poll_after=poll_after, poll_delay=poll_delay)
        return simulate(graph, assignment, cluster, optimizer="adam").makespan
    return per_step, fit_latency(simulated, float(np.median([r[0] for r in two]))), scale
