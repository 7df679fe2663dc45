"""Report plots as PNG files: load and memory per device, the simulated schedule, link traffic.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global backend switch), so plotting works on headless machines and in threads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

FORWARD_COLOUR = "#4c78a8"
BACKWARD_COLOUR = "#f58518"
TRANSFER_COLOUR = "#9d9d9d"
UPDATE_COLOUR = "#54a24b"
KIND_COLOURS = {"backward": BACKWARD_COLOUR, "update": UPDATE_COLOUR}


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _scaled(values: np.ndarray, units: Sequence[tuple[float, str]]) -> tuple[np.ndarray, str]:
    """Values divided by the largest unit not above their maximum, and that unit's name."""
    top = float(np.max(values)) if len(values) else 0.0
    for scale, name in units:
        if top >= scale:
            return values / scale, name
    return values, units[-1][1] if units[-1][0] == 1 else ""


FLOP_UNITS = ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP"),
              (1, "FLOP"))
BYTE_UNITS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B"))
TIME_UNITS = ((1, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns"))


def _legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the plot area, so it never hides a bar or a line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8,
              **kwargs)


def load_memory_plot(report: Mapping, path: Path) -> Path:
    """Bar charts of training FLOPs (with the mean and the epsilon cap) and memory per device;
    capacities only when one is 5% used (else a 17 GB line would flatten kB bars to nothing)."""
    devices = report["devices"]
    names = [d["name"] for d in devices]
    x = np.arange(len(names))
    fig = Figure(figsize=(min(16.0, max(7.0, 0.25 * len(names) + 5)), 6.5))
    ax_load, ax_mem = fig.subplots(2, 1)
    loads, unit = _scaled(np.array([d["train_flops"] for d in devices], float), FLOP_UNITS)
    ax_load.bar(x, loads, color=FORWARD_COLOUR)
    if len(loads):
        mean = loads.mean()
        ax_load.axhline(mean, color="black", linewidth=1, label="mean")
        epsilon = report.get("settings", {}).get("epsilon")
        if epsilon is not None:
            ax_load.axhline(mean * (1 + epsilon), color="black", linestyle="--", linewidth=1,
                            label=f"mean x (1 + {epsilon})")
        _legend_outside(ax_load)
    title = f"Load per device (imbalance {report['totals']['imbalance']:.3f})"
    if (report.get("result") or {}).get("relaxed_by"):
        title += f"; cap relaxed by node {report['result']['relaxed_by']!r}"
    ax_load.set(ylabel=f"train {unit}", title=title)
    memory = np.array([d["memory"] for d in devices], float)
    capacity = np.array([d["capacity"] for d in devices], float)
    used = memory / np.maximum(capacity, 1)
    show_capacity = bool(len(used)) and float(used.max()) >= 0.05
    both, munit = _scaled(np.concatenate([memory, capacity if show_capacity else []]),
                          BYTE_UNITS)
    mem = both[:len(names)]
    ax_mem.bar(x, mem, color=[BACKWARD_COLOUR if m <= c else "#d62728"
                              for m, c in zip(memory, capacity)], label="in use")
    if show_capacity:
        ax_mem.scatter(x, both[len(names):], marker="_", s=600, color="black",
                       label="capacity", zorder=3)
    if len(names) <= 32:
        for xi, m, share in zip(x, mem, used):
            ax_mem.annotate(_share(share), (xi, m), textcoords="offset points", xytext=(0, 2),
                            ha="center", fontsize=7)
    _legend_outside(ax_mem)
    title = "Memory per device (labels: share of its capacity)"
    if not show_capacity and len(used):
        title += f"\ncapacity not drawn: at most {_share(float(used.max()))} of it in use"
    ax_mem.set(ylabel=munit, title=title)
    step, wide = max(1, int(np.ceil(len(names) / 32))), len(names) > 8   # thin, rotate names
    for ax in (ax_load, ax_mem):
        ax.set_xticks(x[::step], names[::step], rotation=45 if wide else 0,
                      ha="right" if wide else "center")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _share(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.2g}%"


def traffic_plot(report: Mapping, path: Path) -> Path:
    """Heatmap of bytes sent per step from each device (row) to each device (column)."""
    names = [d["name"] for d in report["devices"]]
    scaled, unit = _scaled(np.asarray(report["link_traffic"], dtype=float), BYTE_UNITS)
    k = len(names)
    side = min(12.0, max(4.0, 0.5 * k + 2))
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    fig.colorbar(ax.imshow(scaled, cmap="Blues"), ax=ax, label=unit)
    step = max(1, int(np.ceil(k / 32)))
    ax.set_xticks(range(0, k, step), names[::step], rotation=45 if k > 6 else 0)
    ax.set_yticks(range(0, k, step), names[::step])
    ax.set(xlabel="to", ylabel="from", title=f"Link traffic per step ({unit})")
    if k <= 12:
        top = scaled.max() if scaled.size else 0
        for a, b in zip(*np.nonzero(scaled > 0)):
            ax.text(b, a, f"{scaled[a, b]:.3g}", ha="center", va="center", fontsize=8,
                    color="white" if scaled[a, b] > 0.6 * top else "black")
    fig.tight_layout()
    return _save(fig, path)


def schedule_plot(simulation: Mapping, device_names: Sequence[str], path: Path) -> Path:
    """The simulated step per device: a Gantt chart of the simulation's "timeline" (micro-batches
    in shades, transfers as thin bars), else each device's busy and idle time."""
    timeline = simulation.get("timeline") or []
    k = len(device_names)
    row_of = {name: i for i, name in enumerate(device_names)}
    fig = Figure(figsize=(10, min(18.0, max(2.5, 0.55 * k + 1.5))))
    ax = fig.subplots()
    makespan = float(simulation.get("makespan") or 0.0)
    end_max = max([makespan] + [float(item["end"]) for item in timeline])
    scale, unit = next(((s, u) for s, u in TIME_UNITS if end_max >= s), TIME_UNITS[-1])
    busy = simulation.get("busy") or {}
    if timeline:
        for item in timeline:
            row = row_of[item["device"]]
            start, end = float(item["start"]) / scale, float(item["end"]) / scale
            kind = item.get("kind", "forward")
            if kind == "transfer":
                ax.broken_barh([(start, end - start)], (row + 0.32, 0.18), color=TRANSFER_COLOUR)
                continue
            micro = item.get("micro_batch")
            alpha = 1.0 if micro is None or micro < 0 else 0.55 + 0.45 * ((int(micro) % 4) / 3)
            ax.broken_barh([(start, end - start)], (row - 0.3, 0.6), alpha=alpha,
                           color=KIND_COLOURS.get(kind, FORWARD_COLOUR),
                           linewidth=0.2, edgecolor="white")
        handles = [Patch(color=FORWARD_COLOUR, label="forward"),
                   Patch(color=BACKWARD_COLOUR, label="backward"),
                   Patch(color=TRANSFER_COLOUR, label="transfer (to this device)")]
        if any(item.get("kind") == "update" for item in timeline):
            handles.append(Patch(color=UPDATE_COLOUR, label="optimizer update"))
    else:
        for name, row in row_of.items():
            used = float(busy.get(name, 0.0)) * makespan / scale
            ax.broken_barh([(0, used)], (row - 0.3, 0.6), color=FORWARD_COLOUR)
            ax.broken_barh([(used, makespan / scale - used)], (row - 0.3, 0.6),
                           color="#eeeeee")
            ax.text(used, row, f" {100 * float(busy.get(name, 0.0)):.0f}% busy", va="center",
                    fontsize=8)
        handles = [Patch(color=FORWARD_COLOUR, label="busy (forward + backward)"),
                   Patch(color="#eeeeee", label="idle")]
        ax.text(0.99, -0.12, "the simulator reported totals only, no per-op times",
                transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#666666")
    ax.set_yticks(range(k), device_names)
    ax.set(ylim=(k - 0.5, -0.7), xlim=(0, end_max / scale * 1.02 if end_max else 1),
           xlabel=f"time ({unit})")
    title = f"Simulated step: {makespan / scale:.4g} {unit}"
    if simulation.get("speedup") is not None:
        title += f", speedup {simulation['speedup']:.2f}x"
    if simulation.get("bubble") is not None:
        title += f", bubble {100 * simulation['bubble']:.1f}%"
    ax.set_title(f"{title} ({simulation.get('schedule') or 'list scheduling'}, "
                 f"{simulation.get('micro_batches', 1)} micro-batches)")
    ax.grid(axis="x", alpha=0.3)
    _legend_outside(ax, handles=handles)
    fig.tight_layout()
    return _save(fig, path)
