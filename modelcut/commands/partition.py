"""`modelcut partition CONFIG`: place a model on a cluster, print the report's tables and write
the files of OUTPUTS into --out (report.html with --html, graph.json.gz when sharded)."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from modelcut.commands import CommandError
from modelcut.commands.arguments import (device_count, node_count, non_negative_number,
                                         positive_number)
from partition.api import partition
from partition.cluster import Cluster, uniform
from partition.simulate import simulate

HELP = "partition a model across devices, print the placement and write a report"
OUTPUTS = ("placement.json", "report.json", "report.md", "graph.dot", "load_memory.png",
           "schedule.png", "traffic.png", "report.html", "graph.json.gz")


@dataclass(frozen=True)
class Setup:
    """What to partition: the forward graph, the cluster and the partition() keyword arguments."""

    name: str
    graph: object
    cluster: object
    options: dict
    schedule: str = "sequential"
    source: str = ""
    family: str | None = None       # model builder, when the graph comes from one
    notes: list = field(default_factory=list)


def add_setup_arguments(parser: argparse.ArgumentParser, *, algorithm: bool = True) -> None:
    """CONFIG, --graph and the partition flags the partition, compare and viz commands share."""
    parser.add_argument("config", nargs="?", help="experiment config (YAML)")
    parser.add_argument("--graph", metavar="FILE",
                        help="a modelcut.graph JSON file to partition instead of the config's "
                             "model (without CONFIG: on a uniform cluster of --devices devices)")
    parser.add_argument("--devices", "-k", type=device_count, metavar="K",
                        help="number of devices (resizes the config's uniform or hierarchical "
                             "cluster; default 2 without a config)")
    if algorithm:
        parser.add_argument("--algorithm", "-a", metavar="A",
                            help="partitioning algorithm (default: the config's, else auto)")
    parser.add_argument("--epsilon", type=non_negative_number, metavar="E",
                        help="allowed load imbalance (default: the config's, else 0.10)")
    parser.add_argument("--acyclic", action="store_true",
                        help="require an acyclic device graph (for pipeline schedules)")
    parser.add_argument("--time-limit", type=positive_number, metavar="SECONDS",
                        help="time limit of the algorithm (default: the config's)")
    parser.add_argument("--objective", choices=OBJECTIVES, metavar="O",
                        help="volume (bytes moved), time_volume (seconds on the links; 'time' "
                             "is its old name) or throughput (the pipeline's time per "
                             "micro-batch, SPEC section 5; no epsilon, no rebalancing)")
    parser.add_argument("--shard", choices=("auto", "off"),
                        help="operator sharding: split nodes heavier than a device's share when "
                             "that improves the objective (default: the config's, off)")


OBJECTIVES = ("volume", "time_volume", "time", "throughput")


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """--micro-batches and --schedule (partition): the pipeline the throughput objective and
    the memory rule assume; they override the config's training section."""
    parser.add_argument("--micro-batches", type=int, metavar="M",
                        help="micro-batches per step (default: the config's, else 1)")
    parser.add_argument("--schedule", choices=("gpipe", "1f1b"),
                        help="pipeline schedule (default: the config's; 1F1B for memory when "
                             "it has none)")


def load_setup(args: argparse.Namespace) -> Setup:
    """The graph, cluster and partition options named by CONFIG / --graph and the flags."""
    if args.config is None and args.graph is None:
        raise CommandError("give a CONFIG file or --graph FILE.json")
    options: dict = {"algorithm": "auto", "epsilon": 0.10, "acyclic": False, "seed": 0}
    schedule, family = "sequential", None
    if args.config is not None:
        from modelcut.config import load_config
        config = load_config(args.config)
        p, t = config.partition, config.training
        options.update(algorithm=p.algorithm, epsilon=p.epsilon, acyclic=p.acyclic,
                       seed=p.seed or 0, time_limit=p.time_limit, objective=p.objective,
                       pins=dict(p.pin) or None, micro_batches=t.micro_batches,
                       optimizer=t.optimizer, shard=p.shard)
        schedule = t.schedule
        cluster = Cluster.from_spec(config.cluster_spec())
        if args.devices is not None and args.devices != cluster.k:
            cluster = cluster.resized(args.devices)
        name, source = config.name, str(args.config)
    else:
        cluster = uniform(args.devices if args.devices is not None else 2)
    if args.graph is not None:
        if str(args.graph).endswith(".onnx"):
            from autodiff.onnx_import import load_onnx
            graph = load_onnx(args.graph)
        else:
            from autodiff.io import load_graph
            graph = load_graph(args.graph)
        source = str(args.graph)
        if args.config is None:
            name = Path(args.graph).name.split(".")[0]
    else:
        graph = config.forward_graph()
        family = getattr(config.model, "builder", None)
    if getattr(args, "algorithm", None):
        options["algorithm"] = args.algorithm
    if args.acyclic:
        options["acyclic"] = True
    micro_batches = getattr(args, "micro_batches", None)
    if micro_batches is not None and micro_batches < 1:
        raise CommandError(f"--micro-batches: expected a positive integer, got {micro_batches}")
    for key in ("epsilon", "time_limit", "shard", "objective", "micro_batches"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    schedule = getattr(args, "schedule", None) or schedule      # the schedule to simulate
    if schedule in ("gpipe", "1f1b"):
        options["schedule"] = schedule
    return Setup(name=name, graph=graph, cluster=cluster, options=options, schedule=schedule,
                 source=source, family=family)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("partition", help=HELP, description=HELP + ".")
    add_setup_arguments(parser)
    add_pipeline_arguments(parser)
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="output folder (default runs/<config name>)")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html (tables, plots and the graph in one file)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a report already in the output folder")
    parser.add_argument("--max-nodes", type=node_count, default=300, metavar="N",
                        help="graph.dot draws every node up to N nodes, one box per layer "
                             "group beyond (default 300)")
    return parser


def run(args: argparse.Namespace) -> int:
    from modelcut.report import make_console, pipeline_hint, report_tables, rich_table

    console, status = make_console(), make_console(stderr=True)
    with status.status("building the graph ..."):
        setup = load_setup(args)
    out = Path(args.out) if args.out else Path("runs") / setup.name
    prepare_output(out, args.force)
    with status.status(f"partitioning {setup.graph.name} ({len(setup.graph):,} nodes) with "
                       f"{setup.options['algorithm']} on {setup.cluster.k} devices ..."):
        placement = partition(setup.graph, setup.cluster, **setup.options)
        setup = with_placed_graph(setup, placement)
    with status.status("simulating a training step ..."):
        simulation = simulate_step(setup, placement)
    with status.status(f"writing the report to {out} ..."):
        report, written = write_outputs(setup, placement, simulation, out, args.max_nodes,
                                        args.html)
    console.print(f"[bold]{setup.graph.name}[/bold] on [bold]{setup.cluster.name}[/bold]: "
                  f"{len(setup.graph):,} nodes, {setup.cluster.k} devices")
    for table in report_tables(report, warnings=False, glossary=False):
        console.print(rich_table(table))
    print_warnings(console, report["warnings"])
    for note in setup.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if pipeline_hint(report):
        console.print(f"[yellow]hint:[/yellow] {pipeline_hint(report)}")
    console.print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0


def print_warnings(console, warnings, prefix: str = "") -> None:
    """Each warning on a line of its own, in bold yellow (also in report.md and report.json)."""
    from rich.markup import escape
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(prefix + warning)}")


def prepare_output(out: Path, force: bool) -> None:
    """Create `out`; refuse a folder that already holds files unless `force` (then remove the
    files this command writes, so no stale output survives)."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CommandError(f"{out} already holds a report; pass --force to overwrite it, "
                               "or --out DIR to write elsewhere")
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def with_placed_graph(setup: Setup, placement) -> Setup:
    """The setup with the graph `placement` places (the sharded one under shard auto)."""
    from dataclasses import replace

    from partition.sharding import sharded_graph
    return replace(setup, graph=sharded_graph(setup.graph, placement))


def simulate_step(setup: Setup, placement) -> dict:
    """The simulated step (SPEC section 4) as a dict; a pipeline schedule needs an acyclic
    placement, so a cyclic one is simulated with list scheduling (and a note says so)."""
    schedule = None if setup.schedule == "sequential" else setup.schedule
    if schedule is not None and not placement.metrics.acyclic:
        setup.notes.append(f"the {schedule} schedule needs an acyclic placement (pass --acyclic); "
                           "the step was simulated with list scheduling")
        schedule = None
    return simulate(setup.graph, placement.assignment, setup.cluster, schedule=schedule,
                    micro_batches=setup.options.get("micro_batches", 1)).to_dict()


def write_outputs(setup: Setup, placement, simulation: dict, out: Path, max_nodes: int = 300,
                  html: bool = False) -> tuple[dict, list[Path]]:
    """Write every output file; returns the report and the paths written."""
    from modelcut import plots
    from modelcut.report import build_report, write_report
    from modelcut.viz import graph_dot, grouped_dot

    settings = {key: value for key, value in setup.options.items() if key != "pins"}
    settings.update(devices=setup.cluster.k, schedule=setup.schedule,
                    pins=setup.options.get("pins"))
    report = build_report(setup.graph, setup.cluster, placement, simulation=simulation,
                          settings=settings, source=setup.source)
    mapping = placement.to_mapping()
    devices = setup.cluster.device_names
    written = [out / "placement.json"]
    written[0].write_text(json.dumps(mapping, indent=1) + "\n", encoding="utf-8")
    images = [
        ("Load and memory per device", plots.load_memory_plot(report, out / "load_memory.png")),
        ("Simulated schedule", plots.schedule_plot(simulation, devices, out / "schedule.png")),
        ("Link traffic", plots.traffic_plot(report, out / "traffic.png"))]
    written += write_report(report, out, [p.name for _, p in images])
    grouped = grouped_dot(setup.graph, placement=mapping, devices=devices)
    if len(setup.graph) <= max_nodes:
        text = graph_dot(setup.graph, placement=mapping, devices=devices, cluster="group",
                         max_nodes=max_nodes)
    else:
        text = grouped
        setup.notes.append(f"graph.dot shows one box per layer group and device: the graph has "
                           f"{len(setup.graph):,} nodes (more than --max-nodes {max_nodes})")
    (out / "graph.dot").write_text(text, encoding="utf-8")
    written += [out / "graph.dot"] + [p for _, p in images]
    if (placement.info.get("sharding") or {}).get("kept"):    # the rewritten graph it names
        from autodiff.io import save_graph
        save_graph(setup.graph, out / "graph.json.gz")
        written.append(out / "graph.json.gz")
    if html:
        written.append(write_html(report, images, grouped, out / "report.html", setup.notes))
    return report, written


def write_html(report: dict, images, dot_text: str | None, path: Path, notes: list,
               first: str = "") -> Path:
    """report.html with the graph inline (or a note, also added to `notes`, when Graphviz is
    missing) and the HTML `first` put before the tables."""
    from modelcut.html_report import html_report
    from modelcut.viz import VizError, svg_text
    svg, note = None, None
    try:
        svg = svg_text(dot_text) if dot_text is not None else None
    except VizError as e:
        note = f"graph not drawn: {e}"
        notes.append(note)
    page = html_report(report, images, svg, note)
    if first:
        page = page.replace('<section id="tables">', first + '\n<section id="tables">', 1)
    path.write_text(page, encoding="utf-8")
    return path
