"""What ops, optimizer updates, steps and hops cost in the executor's own runs (for
`modelcut calibrate`, modelcut/calibration.py).

- `op_costs`: the COST_MODELS (two sizes of each bundled family, none of them a bundled config)
  trained on one device by the executor's worker, each op of the training graph timed; per op
  kind, seconds = a + b * FLOPs or a + b * bytes read and written, whichever fits better.
- `update_costs`: per optimizer, one parameter's update timed at a few sizes: a + b * bytes.
- step and hop (modelled with the executor's poll delay, which calibrate times apart): a tiny
  MLP trained through the Ray executor on one device, steps quicker than the channel reads'
  spin (the seconds per step outside the ops and updates: driver, channels, the call's own
  work), and STEP_MODEL split over two devices (the seconds per hop between calls of
  different actors, as the executor pays it, and how much slower ops run among its actors).
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
# ... and one whose step is over before channel reads stop spinning (no poll delay in it)
QUICK_STEP_MODEL = dict(layers=2, width=32, in_features=16, classes=4, batch=8)
STEP_WARMUP = 3
FIT_ROUNDS = 4       # alternating fits of the compute scale and the hop latency


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


def step_model(sizes: dict = STEP_MODEL):
    """The forward graph of an MLP of these sizes (default STEP_MODEL) and its data stream."""
    from autodiff.models import BUILDERS, make_data

    graph = BUILDERS["mlp"](**sizes)
    return graph, make_data(graph, "mlp", 0)


def executor_steps(runs: Sequence[tuple[dict, int]], steps: int
                   ) -> list[tuple[list[tuple[float, float, float]], np.ndarray]]:
    """Train MLPs (Adam, one micro-batch) through the Ray executor, per run (sizes, k) one
    whose layers are split contiguously over k devices, its steps back to back (an actor
    idle between steps would notice the next step's input late, as no training loop does):
    per run, per step (step seconds, device seconds on the chain of calls: all compute and
    the first device's update, which ends the chain; all compute and update seconds), and
    the placement."""
    from executor.ray_executor import RayExecutor
    from partition.api import partition
    from partition.cluster import uniform

    models = [step_model(sizes) for sizes, _ in runs]
    placements = [partition(graph, uniform(k), algorithm="contiguous", epsilon=1.0)
                  for (graph, _), (_, k) in zip(models, runs)]
    rows: list[list] = [[] for _ in runs]
    for i, ((graph, data), placement, (_, k)) in enumerate(zip(models, placements, runs)):
        feeds = [data(s) for s in range(STEP_WARMUP + steps)]
        with RayExecutor(graph, placement, k, optimizer="adam",
                         checkpoint_every=None) as executor:
            results = [executor.step(f) for f in feeds][STEP_WARMUP:]
        for result in results:
            compute = float(result.compute_seconds.sum())
            rows[i].append((result.step_seconds, compute + float(result.update_seconds[0]),
                            compute + float(result.update_seconds.sum())))
    return [(r, np.asarray(p.assignment)) for r, p in zip(rows, placements)]


def executor_costs(devices: int, steps: int, op_costs: dict, update_costs: dict,
                   bandwidth: float, poll_after: float, poll_delay: float, cores: int = 0
                   ) -> tuple[float, float | None, float]:
    """(seconds per step, link latency, compute scale) as the Ray executor pays them, from
    QUICK_STEP_MODEL on one device and STEP_MODEL on two (one when there is one): see
    `fit_executor_costs`."""
    k = min(devices, 2)
    (quick, _), (two, assignment) = executor_steps([(QUICK_STEP_MODEL, 1), (STEP_MODEL, k)],
                                                   steps)
    return fit_executor_costs(quick, two, assignment, op_costs, update_costs, bandwidth,
                              poll_after, poll_delay, cores)


def fit_executor_costs(quick, two, assignment, op_costs: dict, update_costs: dict,
                       bandwidth: float, poll_after: float, poll_delay: float, cores: int = 0
                       ) -> tuple[float, float | None, float]:
    """(seconds per step, link latency, compute scale) from `executor_steps` rows: the step
    overhead from `quick` (one device, steps over before the driver's channel read polls);
    from `two` (STEP_MODEL placed by `assignment` on k devices), the scale, the executor's
    seconds in ops and updates over what the simulator predicts for them (with `cores`
    shared), and, on two devices, the latency at which the simulator, with the scaled costs,
    the step overhead and the poll delay, predicts the measured step (None on one)."""
    from partition.cluster import Cluster, Device
    from partition.simulate import simulate

    per_step = fit_step_overhead([r[:2] for r in quick], poll_after, poll_delay)
    graph, _ = step_model()
    k = int(np.max(assignment)) + 1

    def simulated(latency: float, scale: float = 1.0):
        costs = {op: tuple(scale * c for c in cost) for op, cost in op_costs.items()}
        updates = {name: tuple(scale * c for c in cost) for name, cost in update_costs.items()}
        cluster = Cluster(tuple(Device(f"cpu{i}", 1e12, 2**30, op_costs=costs,
                                       update_costs=updates) for i in range(k)),
                          np.full((k, k), bandwidth), np.full((k, k), latency),
                          step_overhead=per_step, batch_transfers=True, poll_after=poll_after,
                          poll_delay=poll_delay, cores=cores)
        return simulate(graph, assignment, cluster, optimizer="adam")
    busy, measured = (float(np.median([r[i] for r in two])) for i in (2, 0))
    scale, latency = 1.0, 0.0
    for _ in range(FIT_ROUNDS):          # the two interact (through cores shared in time)
        step = simulated(latency, scale)
        scale *= busy / float(np.sum(step.busy) * step.makespan)
        if k > 1:
            latency = fit_latency(lambda value: simulated(value, scale).makespan, measured)
    return per_step, (latency if k > 1 else None), scale
