"""The partition report: one JSON-ready dict built from a placement, written as report.json and
report.md and printed as rich tables. Every view (terminal, Markdown, HTML) renders the same
`Table` records from `report_tables`, so they cannot disagree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autodiff.ir import Graph
from modelcut.units import format_flops, format_size, format_time
from partition.cluster import Cluster
from partition.cost import graph_arrays

REPORT_FORMAT = "modelcut.report"
REPORT_VERSION = 1


@dataclass(frozen=True)
class Table:
    """A titled table of already formatted cells; `numeric` marks right-aligned columns."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]


def build_report(graph: Graph, cluster: Cluster, placement, *, simulation: Mapping | None = None,
                 settings: Mapping | None = None, source: str | None = None) -> dict:
    """The report of one placement (`simulation`: a `SimulationResult.to_dict()`, if any)."""
    metrics = placement.metrics
    arrays = graph_arrays(graph)
    k = cluster.k
    assignment = np.asarray(placement.assignment)
    sizes = np.fromiter((node.size for node in graph.nodes), np.int64, len(graph.nodes))
    ops = np.bincount(assignment[~arrays.is_source], minlength=k)
    parameters = np.bincount(assignment[arrays.is_param], weights=sizes[arrays.is_param],
                             minlength=k)
    loads = np.asarray(metrics.loads, dtype=float)
    total_load = float(loads.sum())
    memory = np.asarray(metrics.memory)
    busy = dict((simulation or {}).get("busy") or {})
    devices = [{"name": device.name, "ops": int(ops[d]), "train_flops": float(loads[d]),
                "load_share": float(loads[d] / total_load) if total_load else 0.0,
                "parameters": int(parameters[d]), "memory": int(memory[d]),
                "capacity": int(device.memory),
                "memory_share": float(memory[d] / device.memory) if device.memory else 0.0,
                "flops_per_second": float(device.flops), "busy": busy.get(device.name)}
               for d, device in enumerate(cluster.devices)]
    totals = {
        "forward_volume": int(metrics.forward_volume),
        "backward_volume": int(metrics.backward_volume),
        "step_volume": int(metrics.step_volume), "edge_cut": int(metrics.edge_cut),
        "imbalance": float(metrics.imbalance), "acyclic": bool(metrics.acyclic),
        "time_weighted_volume": float(metrics.time_weighted_volume),
    }
    if simulation:
        totals.update({key: simulation.get(key) for key in
                       ("makespan", "single_device_time", "speedup", "bubble")})
    totals.update(pipeline_totals(graph, cluster, placement, settings or {}))
    return {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "graph": {"name": graph.name, "source": source, "nodes": len(graph.nodes),
                  "edges": int(arrays.num_edges), "parameters": int(sizes[arrays.is_param].sum()),
                  "forward_flops": float(arrays.flops.sum()),
                  "train_flops": float(arrays.train_flops.sum()),
                  "groups": list(arrays.group_names)},
        "cluster": {"name": cluster.name, "devices": [d.to_dict() for d in cluster.devices],
                    "uniform_links": bool(cluster.uniform_links)},
        "settings": dict(settings or {}),
        "result": {"algorithm": placement.algorithm, "seconds": float(placement.seconds),
                   "optimal": placement.optimal, "bound": placement.bound,
                   "relaxed_by": placement.relaxed_by},
        "devices": devices,
        "totals": totals,
        "top_cut": [{"name": name, "bytes": int(nbytes), "to": list(to)}
                    for name, nbytes, to in metrics.top_cut],
        "link_traffic": np.asarray(metrics.link_traffic).astype(int).tolist(),
        "simulation": dict(simulation) if simulation else None,
        "warnings": [w for w in (relaxed_cap_warning(arrays, placement.relaxed_by, k),
                                 empty_devices_warning(arrays, assignment, cluster.device_names))
                     if w],
        "sharding": (placement.info or {}).get("sharding"),
    }


PIPELINE_HINT = ("the devices form a cycle, so this placement is not a pipeline: pass "
                 "--acyclic, or --objective throughput to minimise the pipeline's time per "
                 "micro-batch")


def pipeline_totals(graph: Graph, cluster: Cluster, placement, settings: Mapping) -> dict:
    """SPEC section 5's pipeline figures of a placement for the report's totals (None when it
    is not a pipeline), and, for pipeline_dp, whether it ran on coarsened units."""
    from partition.stage_time import stage_times
    info = getattr(placement, "info", None) or {}
    stages = info.get("pipeline")
    schedule = settings["schedule"] if settings.get("schedule") in ("gpipe", "1f1b") else "1f1b"
    m = int(settings.get("micro_batches") or 1)
    if stages is None or stages.get("micro_batches") != m or stages.get("schedule") != schedule:
        stages = stage_times(graph_arrays(graph), placement.assignment, cluster,
                             micro_batches=m, schedule=schedule).to_dict()
    pipeline = bool(stages["acyclic"])
    out = {"pipeline": pipeline,
           "time_per_micro_batch": stages["time_per_micro_batch"] if pipeline else None,
           "bottleneck_device": stages["bottleneck"] if pipeline else None,
           "pipeline_bubble": stages["bubble"], "pipeline_step_estimate": stages["step_estimate"],
           "pipeline_schedule": schedule, "micro_batches": m}
    if "coarsened" in info:
        out.update(pipeline_coarsened=bool(info["coarsened"]), pipeline_units=info.get("units"))
    return out


def pipeline_hint(report: Mapping) -> str | None:
    """The one-line hint for a cyclic placement, else None."""
    return None if report["totals"].get("pipeline", True) else PIPELINE_HINT


def pipeline_rows(t: Mapping) -> list[tuple[str, str]]:
    """Totals rows for the pipeline figures (see pipeline_totals)."""
    if "pipeline" not in t:
        return []
    if not t["pipeline"]:
        return [("pipeline time per micro-batch", "not a pipeline (devices form a cycle)")]
    rows = [("pipeline time per micro-batch", format_time(t["time_per_micro_batch"])
             + f" (bottleneck {t['bottleneck_device']})"),
            (f"schedule bubble ({t['pipeline_schedule']}, m={t['micro_batches']})",
             _pct(t["pipeline_bubble"]))]
    if t.get("pipeline_coarsened"):
        rows.append(("pipeline_dp search", f"coarsened to {t['pipeline_units']:,} units "
                                           "(optimal: false)"))
    return rows


# ------------------------------------------------------------------ warnings


def relaxed_cap_warning(arrays, relaxed_by: str | None, k: int) -> str | None:
    """The sentence saying that node `relaxed_by` alone outweighs a device's share of the load
    (SPEC section 2), so each device's cap became (1 + epsilon) x that node's load."""
    if not relaxed_by:
        return None
    total = float(arrays.train_flops.sum())
    node = float(arrays.train_flops[arrays.names.index(relaxed_by)])
    share = f"{_pct(node / total)} of the training FLOPs" if total else "the training FLOPs"
    return (f"balance cap relaxed by node {relaxed_by!r}: it alone carries {share}, more than "
            f"a device's share of {_pct(1 / k)} on {k} devices, so each device may hold up to "
            f"(1 + epsilon) x its load ({_flop_count(node)}) instead of (1 + epsilon) x the mean")


def empty_devices_warning(arrays, assignment: np.ndarray, names: Sequence[str]) -> str | None:
    """The sentence naming the devices that hold no ops (they do no work in a step)."""
    ops = np.bincount(assignment[~arrays.is_source], minlength=len(names))
    empty = [names[d] for d in np.flatnonzero(ops == 0)]
    if not empty:
        return None
    shown = ", ".join(empty[:6]) + (f", ... {empty[-1]}" if len(empty) > 6 else "")
    total = int(ops.sum())
    return (f"{len(empty)} of {len(names)} devices hold no ops ({shown}): the graph has "
            f"{total:,} op{'s' * (total != 1)}; fewer devices would do the same work")


# ------------------------------------------------------------------ tables
def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2g}%" if 0 < x < 0.001 else f"{100 * x:.1f}%"


def _bool(x) -> str:
    return "-" if x is None else ("yes" if x else "no")


def _flop_count(flops: float) -> str:
    """`1.2e9` -> `1.2 GFLOP` (an amount of work, not a rate)."""
    return format_flops(flops).replace("FLOPS", "FLOP")


# The terms of the report's tables, defined once for report.md and report.html (SPEC.md).
GLOSSARY = (
    ("ops", "the forward graph's operations: its nodes other than inputs, parameters and "
            "constants (each op's gradient ops run on the same device)"),
    ("V_f", "forward volume: bytes sent per step in the forward pass, each tensor once to "
            "every other device that reads it"),
    ("V_b", "backward volume: bytes of gradients sent back per step; each device that read "
            "a tensor needing a gradient returns one summed gradient for it"),
    ("V", "step volume V_f + V_b: the bytes that cross between devices in one training step"),
    ("edge cut", "bytes over every graph edge whose two ends sit on different devices (a "
                 "tensor read by two ops there counts twice); only for comparison with "
                 "edge-cut partitioners such as METIS"),
    ("time-weighted volume", "V with each transfer's bytes replaced by the time it takes on "
                             "its link (latency + bytes / bandwidth); the objective when links "
                             "differ"),
    ("imbalance", "the most loaded device's compute time over the perfectly balanced time "
                  "(1.000 is perfect; epsilon-balanced means at most 1 + epsilon)"),
    ("busy", "the share of the simulated step's time a device spends computing"),
)


def report_tables(report: Mapping, *, warnings: bool = True,
                  glossary: bool = True) -> list[Table]:
    """The tables of a report, in order; the terminal leaves out the warnings (it prints them
    as lines of their own) and the glossary."""
    tables = []
    if warnings and report.get("warnings"):
        tables.append(Table("Warnings", ("warning",), tuple((w,) for w in report["warnings"]),
                            (False,)))
    tables += [device_table(report), totals_table(report)]
    if report.get("sharding"):
        tables.append(sharding_table(report["sharding"]))
    if report["top_cut"]:
        tables.append(top_cut_table(report))
    if len(report["devices"]) > 1:
        tables.append(traffic_table(report))
    if glossary:
        tables.append(Table("Glossary", ("term", "meaning"), GLOSSARY, (False, False)))
    return tables


def device_table(report: Mapping) -> Table:
    rows = []
    for d in report["devices"]:
        memory = (f"{format_size(d['memory'])} / {format_size(d['capacity'])} "
                  f"({_pct(d['memory_share'])})")
        rows.append((d["name"], str(d["ops"]), _flop_count(d["train_flops"]),
                     _pct(d["load_share"]), f"{d['parameters']:,}",
                     memory + " OVER" * (d["memory"] > d["capacity"]), _pct(d.get("busy"))))
    return Table("Devices", ("device", "ops", "train FLOPs", "load share", "parameters",
                             "memory / capacity", "busy"), tuple(rows),
                 (False, True, True, True, True, True, True))


def sharding_table(sharding: Mapping) -> Table:
    """Sharded nodes and the step volume sharding adds (or saves) (partition/sharding.py)."""
    added = int(sharding["bytes_added"])
    change = f"adds {format_size(added)}" if added >= 0 else f"saves {format_size(-added)}"
    rows = [(n["name"], n["op"], n["mode"], str(n["shards"]), _pct(n["load_share"]))
            for n in sharding["nodes"]]
    title = f"Sharding: {sharding['reason']}"
    if sharding["kept"]:
        title += f"; V {change} vs the unsharded placement"
        if sharding.get("colocated"):
            title += f"; shards sharing a device: {', '.join(sharding['colocated'])}"
    return Table(title, ("node", "op", "mode", "shards", "load share"), tuple(rows),
                 (False, False, False, True, True))


def totals_table(report: Mapping) -> Table:
    t, result = report["totals"], report["result"]
    settings = report.get("settings", {})
    rows = [
        ("algorithm", str(result["algorithm"]) + (" (optimal)" if result.get("optimal") else "")),
        ("partition time", format_time(result["seconds"])),
        ("forward volume V_f", format_size(t["forward_volume"])),
        ("backward volume V_b", format_size(t["backward_volume"])),
        ("step volume V", format_size(t["step_volume"])),
        ("edge cut", format_size(t["edge_cut"])),
        ("imbalance", f"{t['imbalance']:.3f}" + (f" (epsilon {settings['epsilon']})"
                                                 if "epsilon" in settings and settings.get(
                                                     "objective") != "throughput" else "")),
        ("acyclic", _bool(t["acyclic"])),
        ("time-weighted volume", format_time(t["time_weighted_volume"])),
        *pipeline_rows(t),
    ]
    if result.get("relaxed_by"):
        rows.append(("balance relaxed by", str(result["relaxed_by"])))
    if t.get("makespan") is not None:
        rows.append(("simulated step time", format_time(t["makespan"])))
        speedup = t.get("speedup")
        rows.append(("speedup vs one device", "-" if speedup is None else f"{speedup:.2f}x"))
        if t.get("bubble") is not None:
            rows.append(("pipeline bubble", _pct(t["bubble"])))
    return Table("Totals", ("metric", "value"), tuple(rows), (False, True))


def top_cut_table(report: Mapping, limit: int = 10) -> Table:
    rows = tuple((c["name"], format_size(c["bytes"]), ", ".join(c["to"]))
                 for c in report["top_cut"][:limit])
    return Table(f"Top {len(rows)} cut tensors", ("tensor", "bytes", "sent to"), rows,
                 (False, True, False))


def traffic_table(report: Mapping, matrix_up_to: int = 16) -> Table:
    """Bytes per step from each device to each other: the full matrix up to `matrix_up_to`
    devices, the heaviest links and the totals beyond (a 64 x 64 matrix helps no one)."""
    if len(report["devices"]) > matrix_up_to:
        return top_links_table(report, limit=matrix_up_to)
    names = [d["name"] for d in report["devices"]]
    rows = tuple((src, *[("-" if a == b else format_size(v)) for b, v in enumerate(row)])
                 for a, (src, row) in enumerate(zip(names, report["link_traffic"])))
    return Table("Link traffic per step (row sends to column)", ("from \\ to", *names), rows,
                 (False, *[True] * len(names)))


def top_links_table(report: Mapping, limit: int = 16) -> Table:
    """The `limit` links that carry the most bytes per step, the rest summed, and the total."""
    names = [d["name"] for d in report["devices"]]
    traffic = np.asarray(report["link_traffic"], dtype=np.int64)
    src, dst = np.nonzero(traffic)
    sent = traffic[src, dst]
    order = np.lexsort((dst, src, -sent))            # heaviest first, ties by device order
    total = int(sent.sum())
    share = lambda b: _pct(b / total) if total else "-"  # noqa: E731
    rows = [(names[src[i]], names[dst[i]], format_size(int(sent[i])), share(int(sent[i])))
            for i in order[:limit]]
    rest = order[limit:]
    if len(rest):
        other = int(sent[rest].sum())
        rows.append((f"{len(rest):,} other links", "", format_size(other), share(other)))
    rows.append((f"all {len(sent):,} used links", f"of {len(names) * (len(names) - 1):,}",
                 format_size(total), share(total)))
    return Table(f"Link traffic per step: the {min(limit, len(sent))} heaviest links of "
                 f"{len(names)} devices", ("from", "to", "bytes", "share of V"), tuple(rows),
                 (False, False, True, True))


def compare_table(rows: Sequence[Mapping]) -> Table:
    """Algorithms side by side: rows of {algorithm, seconds, metrics dict or error message}."""
    out = []
    for r in rows:
        if r.get("error"):
            out.append((r["algorithm"], "failed", *["-"] * 6, format_time(r["seconds"])))
            continue
        m = r["metrics"]
        name = r["algorithm"] + (" (optimal)" if r.get("optimal") else "")
        stages = r.get("pipeline") or {}
        per_micro_batch = ("-" if not stages else format_time(stages["time_per_micro_batch"])
                           if stages["acyclic"] else "not a pipeline")
        out.append((name, format_size(m["step_volume"]), per_micro_batch,
                    format_size(m["forward_volume"]), format_size(m["backward_volume"]),
                    format_size(m["edge_cut"]), f"{m['imbalance']:.3f}", _bool(m["acyclic"]),
                    format_time(r["seconds"])))
    return Table("Algorithms", ("algorithm", "V", "time/micro-batch", "V_f", "V_b", "edge cut",
                                "imbalance", "acyclic", "time"),
                 tuple(out), (False, True, True, True, True, True, True, False, True))


# ------------------------------------------------------------------ renderers
def make_console(stderr: bool = False, width: int = 120):
    """A rich Console: the terminal's width, or `width` columns when output is redirected."""
    from rich.console import Console
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=width)


def rich_table(table: Table):
    """A rich.Table of `table` (a memory cell over capacity in red)."""
    from rich.markup import escape
    from rich.table import Table as RichTable
    out = RichTable(title=table.title, title_justify="left")
    for name, numeric in zip(table.columns, table.numeric):
        first = name == table.columns[0]
        out.add_column(name, justify="right" if numeric else "left", no_wrap=first or numeric,
                       style="bold" if first else None)
    for row in table.rows:
        out.add_row(*[f"[red]{escape(c)}[/red]" if c.endswith("OVER") else escape(c) for c in row])
    return out


def markdown_table(table: Table) -> str:
    def row(cells) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    lines = [f"### {table.title}", "", row(table.columns),
             "|" + "|".join("---:" if n else "---" for n in table.numeric) + "|"]
    lines += [row(r) for r in table.rows]
    return "\n".join(lines) + "\n"


def report_title(report: Mapping) -> str:
    return f"modelcut partition: {report['graph']['name']} on {report['cluster']['name']}"


def summary_line(report: Mapping) -> str:
    """One sentence: graph size, work per step, devices and algorithm."""
    g = report["graph"]
    ops = sum(d["ops"] for d in report["devices"])
    return (f"{g['nodes']:,} nodes ({ops:,} ops), {g['edges']:,} edges, "
            f"{g['parameters']:,} parameters, {_flop_count(g['train_flops'])} per training step, "
            f"{len(report['devices'])} devices; algorithm {report['result']['algorithm']}.")


def markdown_report(report: Mapping, images: Sequence[str] = ()) -> str:
    """report.md: a heading with the graph and cluster, then every table, then the plots."""
    head = [f"# {report_title(report)}", "", summary_line(report), ""]
    body = [markdown_table(t) for t in report_tables(report)]
    if pipeline_hint(report):
        body.append(f"Note: {pipeline_hint(report)}.\n")
    return "\n".join(head + body + [f"![{Path(p).stem}]({p})" for p in images]) + "\n"


def write_report(report: Mapping, out_dir: Path, images: Sequence[str] = ()) -> list[Path]:
    """Write report.json and report.md into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    md_path.write_text(markdown_report(report, images), encoding="utf-8")
    return [json_path, md_path]


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"report: cannot write {type(value).__name__} as JSON")
