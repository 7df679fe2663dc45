"""What ops, optimizer updates, steps and hops cost in the executor's own runs (for
`modelcut calibrate`, modelcut/calibration.py).

- `op_costs`: the COST_MODELS (two sizes of each bundled family, none of them a bundled config)
  trained on one device by the executor's worker, each op of the training graph timed; per op
  kind, seconds = a + b * FLOPs or a + b * bytes read and written, whichever fits better.
- `update_costs`: per optimizer, one parameter's update timed at a few sizes: a + b * bytes.
- step, hop and scale: probe models trained through the Ray executor (`probe_runs`: a tiny
  MLP on 1, 2 and 4 devices, whose steps are mostly the executor's overhead and hops, and one
  model of each family on 2 and 4), one after the other as a training loop runs them: how
  much slower ops run among the executor's actors than timed alone and what each op costs
  there besides (its call's own work), from the actors' own timings; then the seconds per
  step outside the devices' ops, per hop between calls of different actors and the spin of
  devices sharing a processor at which the simulator best predicts those steps.
Other tenants of a shared host slow this machine by tens of percent for seconds at a time,
and never speed it up: of several timings of the same thing (the op tables of several actors,
the rounds of a probe), the quickest counts, as timeit takes the least of its repeats.
"""
from __future__ import annotations

import time
from typing import Sequence

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
# an MLP whose steps through the Ray executor are mostly overhead and hops
QUICK_STEP_MODEL = dict(layers=2, width=32, in_features=16, classes=4, batch=8)
STEP_WARMUP = 5      # untimed steps of each probe (the first are slower)
FIT_ROUNDS = 3       # Gauss-Newton rounds of fit_executor_costs
# (step overhead, link latency, compute scale, seconds per op) where the fit starts, and the
# steps of its finite differences
START_PARAMS = (2e-4, 1e-4)   # step overhead and latency where the fit starts
LATENCY_STEP = 1e-4           # its finite difference
SPINS = (0.0, 1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3, 6.4e-3)   # spins tried (shared cores)


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


def probe_runs(devices: int) -> list[tuple]:
    """The executor runs calibrate times, as (family, sizes, k, micro-batches, schedule): the
    quick MLP on 1, 2 and 4 devices (steps made of overhead and hops) and the larger
    COST_MODEL of each family on 2 and 4 (gpt as a 1F1B pipeline of two micro-batches), k up
    to `devices`."""
    runs = [("mlp", QUICK_STEP_MODEL, k, 1, "sequential") for k in (1, 2, 4) if k <= devices]
    for family, sizes in COST_MODELS[1::2]:
        m, schedule = (2, "1f1b") if family == "gpt" else (1, "sequential")
        runs += [(family, sizes, k, m, schedule) for k in (2, 4) if k <= devices]
    return runs


def probe_placements(runs: Sequence[tuple]) -> list:
    """Per run, its forward graph, data stream and placement (contiguous stages, balanced
    within 30%), or None where no placement is found."""
    from autodiff.models import BUILDERS, make_data
    from partition.api import partition
    from partition.cluster import uniform
    from partition.errors import PlacementError

    out = []
    for family, sizes, k, m, schedule in runs:
        graph = BUILDERS[family](**sizes)
        try:
            placement = partition(graph, uniform(k), algorithm="contiguous", epsilon=0.3)
        except PlacementError:
            placement = None
        out.append((graph, make_data(graph, family, 0), placement))
    return out


def executor_steps(runs: Sequence[tuple], placed: Sequence[tuple], steps: int,
                   rounds: int = 1) -> list[np.ndarray | None]:
    """Train each of `runs` (`probe_runs`, placed by `probe_placements`; Adam) through the
    Ray executor, one executor at a time, STEP_WARMUP steps then `steps` timed back to back
    (as a training loop runs; with every probe's executor open at once and stepped in turn,
    its ops ran ~1.3-1.5 x slower than a lone executor's), in `rounds` rounds over all runs:
    per run and round, the medians over its steps of (step seconds, the devices' seconds in
    ops and updates, in their calls), summed over the devices; None for a run without
    placement."""
    from executor.ray_executor import RayExecutor

    rows: list[list | None] = [None if p is None else [] for _, _, p in placed]
    for _ in range(rounds):
        for (graph, data, placement), (_, _, k, m, schedule), out in zip(placed, runs, rows):
            if placement is None:
                continue
            with RayExecutor(graph, placement, k, optimizer="adam", micro_batches=m,
                             schedule=schedule, checkpoint_every=None) as executor:
                results = [executor.step(data(s)) for s in range(STEP_WARMUP + steps)]
            out.append(np.median([(r.step_seconds, float(r.compute_seconds.sum()
                                                         + r.update_seconds.sum()),
                                   float(r.busy_seconds.sum()))
                                  for r in results[STEP_WARMUP:]], axis=0))
    return [None if out is None else np.array(out) for out in rows]


def quietest(rounds: np.ndarray) -> np.ndarray:
    """Of a run's rounds (rows of medians, step seconds first), the one with the shortest
    step (the quickest timing counts: module docstring)."""
    return rounds[int(np.argmin(rounds[:, 0]))]


def scaled_costs(op_costs: dict, update_costs: dict, scale: float, extra: float = 0.0
                 ) -> tuple[dict, dict]:
    """Op and update cost tables times `scale`, plus `extra` seconds per op."""
    return ({op: (scale * c[0] + extra, scale * c[1], scale * c[2])
             for op, c in op_costs.items()},
            {name: tuple(scale * x for x in c) for name, c in update_costs.items()})


def simulate_probe(probe: tuple, costs: tuple[dict, dict], bandwidth: float,
                   overhead: float = 0.0, latency: float = 0.0, spin: float = 0.0,
                   poll_delay: float = 0.0, cores: int = 0) -> tuple[float, float]:
    """(step seconds, seconds the devices are busy, summed) of one probe run (graph,
    assignment, k, m, schedule) simulated on k devices with these (op, update) cost tables,
    step overhead, link latency, spin (`poll_after`), poll delay and cores."""
    from partition.cluster import Cluster, Device
    from partition.simulate import simulate

    graph, assignment, k, m, schedule = probe
    cluster = Cluster(tuple(Device(f"cpu{i}", 1e12, 2**30, op_costs=costs[0],
                                   update_costs=costs[1]) for i in range(k)),
                      np.full((k, k), bandwidth), np.full((k, k), latency),
                      step_overhead=overhead, batch_transfers=True, poll_after=spin,
                      poll_delay=poll_delay, cores=cores)
    result = simulate(graph, assignment, cluster, schedule=None if schedule == "sequential"
                      else schedule, micro_batches=m, optimizer="adam")
    return result.makespan, float(np.sum(result.busy)) * result.makespan


def fit_executor_costs(probes: Sequence[tuple], measured: Sequence[Sequence[float]],
                       op_costs: dict, update_costs: dict, bandwidth: float,
                       poll_after: float = 0.0, poll_delay: float = 0.0, cores: int = 0,
                       rounds: int = FIT_ROUNDS) -> dict[str, float]:
    """What the executor's steps cost beyond the timed ops, from the probes (each (graph,
    assignment, k, m, schedule)) and what was measured of each (median step seconds,
    devices' seconds in ops and updates, in their calls; summed over devices).

    On the probes whose devices have processors of their own (k <= `cores`): the
    `compute_scale`, measured over simulated seconds in ops and updates (summed over the
    probes: one factor for every op kind; factors for the fixed and the per-FLOP parts
    apart did not carry over from the probes to other models any better), and the
    `call_overhead`, the rest of the calls' time fitted as so much per device used (left
    to the hops) plus so much per op. Then,
    for each `spin` of SPINS (how long a device keeps loading its processor after its ops:
    its sends, caches refilled after another device ran there; `poll_after` without
    `cores`), the `step_overhead` and `latency` at which the simulated steps best match the
    measured ones in relative terms (non-negative least squares of the linearized steps,
    Gauss-Newton rounds); the spin that matches best."""
    from scipy.optimize import nnls

    measured = np.asarray(measured, dtype=float).reshape(-1, 3)
    own = np.array([not cores or k <= cores for _, _, k, _, _ in probes])

    def busy(costs):
        return np.array([simulate_probe(p, costs, bandwidth)[1] for p in probes])
    plain = busy(scaled_costs(op_costs, update_costs, 1.0))
    ops = busy(scaled_costs(op_costs, update_costs, 0.0, 1e-6)) / 1e-6
    scale = float(measured[own, 1].sum() / max(plain[own].sum(), 1e-12))
    used = np.array([len(set(np.asarray(a).tolist())) for _, a, _, _, _ in probes], float)
    (_, extra), _ = nnls(np.column_stack([used, ops])[own],
                         (measured[:, 2] - measured[:, 1])[own])
    costs = scaled_costs(op_costs, update_costs, scale, extra)
    step = measured[:, 0]

    def steps(overhead, latency, spin):
        return np.array([simulate_probe(p, costs, bandwidth, overhead, latency, spin,
                                        poll_delay, cores)[0] for p in probes])
    best = None
    for spin in (SPINS if cores else (poll_after,)):
        overhead, latency = START_PARAMS
        for _ in range(rounds):
            base = steps(0.0, latency, spin)
            slope = (steps(0.0, latency + LATENCY_STEP, spin) - base) / LATENCY_STEP
            design = np.column_stack([np.ones_like(step), slope]) / step[:, None]
            (overhead, latency), _ = nnls(design, (step - base + slope * latency) / step)
        error = float(np.sum(((steps(overhead, latency, spin) - step) / step) ** 2))
        if best is None or error < best[0]:
            best = (error, overhead, latency, spin)
    _, overhead, latency, spin = best
    return {"step_overhead": float(overhead), "latency": float(latency),
            "compute_scale": float(scale),
            "call_overhead": float(extra), "spin": float(spin)}


def executor_costs(devices: int, steps: int, op_costs: dict, update_costs: dict,
                   bandwidth: float, poll_after: float, poll_delay: float, cores: int = 0,
                   rounds: int = 1) -> tuple[dict[str, float], list[dict]]:
    """What the Ray executor's steps cost (`fit_executor_costs`; latency None on one
    device) from `probe_runs` timed by `executor_steps` (each run's `quietest` round), and
    per probe run what was measured (step seconds, seconds in ops and updates, in calls) and
    simulated."""
    runs = probe_runs(devices)
    placed = probe_placements(runs)
    timed = executor_steps(runs, placed, steps, rounds)
    probes, measured, names = [], [], []
    for (family, sizes, k, m, schedule), (graph, _, placement), t in zip(runs, placed, timed):
        if t is not None:
            probes.append((graph, np.asarray(placement.assignment), k, m, schedule))
            measured.append(quietest(t))
            names.append("tiny-mlp" if sizes is QUICK_STEP_MODEL else family)
    fit = fit_executor_costs(probes, measured, op_costs, update_costs, bandwidth, poll_after,
                             poll_delay, cores)
    costs = scaled_costs(op_costs, update_costs, fit["compute_scale"], fit["call_overhead"])
    table = [{"probe": name, "k": probe[2], "measured": [float(x) for x in row],
              "simulated": simulate_probe(probe, costs, bandwidth, fit["step_overhead"],
                                          fit["latency"], fit["spin"], poll_delay, cores)[0]}
             for name, row, probe in zip(names, measured, probes)]
    if devices < 2:
        fit["latency"] = None
    return fit, table
