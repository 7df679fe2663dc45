"""`modelcut viz`: draw a graph with values and back-flowing gradients, optionally placed.

    modelcut viz --expr "(x + y) * maximum(y, z)" --at x=1,y=2,z=0 --out DIR
    modelcut viz CONFIG [--placement placement.json | --devices K --algorithm A] [--group]

Writes DIR/graph.dot, and graph.svg and graph.png when Graphviz's `dot` is installed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

from modelcut.commands import CommandError
from modelcut.commands.arguments import node_count
from modelcut.commands.partition import Setup, add_setup_arguments, load_setup
from partition.api import partition
from partition.cluster import uniform

OUTPUT_FORMATS = ("dot", "svg", "png")
HELP = "draw a graph (values, gradients, devices, cut tensors) as DOT, SVG and PNG"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from modelcut.viz import DEFAULT_MAX_NODES
    parser = subparsers.add_parser("viz", help=HELP, description=HELP + ".")
    add_setup_arguments(parser)
    parser.add_argument("--expr", metavar="TEXT",
                        help='an expression over named scalars, e.g. "(x + y) * maximum(y, z)"')
    parser.add_argument("--at", metavar="x=1,y=2", default="",
                        help="values of the expression's variables")
    parser.add_argument("--placement", metavar="FILE",
                        help="placement.json (node -> device) written by modelcut partition")
    parser.add_argument("--cluster", choices=("device", "group"),
                        help="one box around each device's or each layer group's nodes")
    parser.add_argument("--group", action="store_true",
                        help="one box per layer group (and device), edges summing bytes")
    parser.add_argument("--max-nodes", type=node_count, default=DEFAULT_MAX_NODES, metavar="N",
                        help=f"refuse to draw more nodes than this (default {DEFAULT_MAX_NODES})")
    parser.add_argument("--no-values", action="store_true",
                        help="do not run the graph to show values and gradients")
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="output folder (default runs/<name>/viz)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite graph.dot, graph.svg and graph.png already in DIR")
    return parser


class _Source(NamedTuple):
    """What is drawn: the graph, its name, its setup (None for --expr) and the feeds and
    parameters of its values (None when not computed)."""

    graph: object
    name: str
    setup: object
    feeds: dict | None
    params: dict | None


def run(args: argparse.Namespace) -> int:
    from modelcut.report import make_console

    console = make_console(stderr=True)
    source = _expression_source(args) if args.expr else _config_source(args)
    out = Path(args.out) if args.out else Path("runs") / source.name / "viz"
    check_output(out, args.force)
    placement, devices = _placement(args, source, console)
    _write(_dot_text(args, source, placement, devices, console), out, console)
    return 0


def _expression_source(args: argparse.Namespace) -> _Source:
    """--expr: the expression's graph, fed the --at values."""
    import numpy as np

    from modelcut.viz import expression_graph, parse_assignments
    if args.config or args.graph:
        raise CommandError("--expr draws an expression: give it without CONFIG or --graph")
    at = parse_assignments(args.at)
    graph = expression_graph(args.expr, at)
    feeds = {name: np.float64(value) for name, value in at.items()}
    return _Source(graph, "expression", None, feeds, None)


def _config_source(args: argparse.Namespace) -> _Source:
    """CONFIG or --graph: the model's graph, with synthetic data and initial parameters when
    it is a builder model whose values are drawn."""
    setup = load_setup(args)
    setup.options["shard"] = "off"      # viz draws the model's own nodes, never shards
    graph = setup.graph
    feeds = params = None
    if setup.family is not None and wants_values(args, graph):
        from autodiff.models import init_params, make_data
        seed = setup.options["seed"]
        feeds, params = make_data(graph, setup.family, seed)(0), init_params(graph, seed)
    return _Source(graph, setup.name, setup, feeds, params)


def _placement(args: argparse.Namespace, source: _Source, console):
    """(node -> device name, device names), or (None, None) when the drawing is not placed:
    from --placement, or partitioned here with --devices."""
    setup = source.setup
    if args.placement:
        placement = _read_placement(Path(args.placement))
        devices = setup.cluster.device_names if setup else tuple(dict.fromkeys(placement.values()))
        return placement, devices
    if args.devices is None:
        return None, None
    if setup is None:
        setup = Setup(name=source.name, graph=source.graph, cluster=uniform(args.devices),
                      options={"algorithm": args.algorithm or "auto",
                               "epsilon": 0.10 if args.epsilon is None else args.epsilon,
                               "acyclic": args.acyclic})
    with console.status(f"partitioning with {setup.options['algorithm']} ..."):
        placement = partition(setup.graph, setup.cluster, **setup.options).to_mapping()
    return placement, setup.cluster.device_names


def _dot_text(args: argparse.Namespace, source: _Source, placement, devices, console) -> str:
    """The DOT text: grouped boxes with --group, else one node per graph node with its values
    and gradients when they are computed."""
    from modelcut.viz import annotate, annotate_safely, graph_dot, grouped_dot
    graph = source.graph
    if args.group:
        return grouped_dot(graph, placement=placement, devices=devices)
    annotations = None
    if wants_values(args, graph) and (source.feeds is not None or source.params is not None):
        with console.status("computing values and gradients ..."):
            annotations = (annotate(graph, source.feeds, source.params) if args.expr
                           else annotate_safely(graph, source.feeds, source.params))
    return graph_dot(graph, annotations=annotations, placement=placement, devices=devices,
                     cluster=args.cluster, max_nodes=args.max_nodes)


def _write(text: str, out: Path, console) -> None:
    """graph.dot, and graph.svg and graph.png when Graphviz renders them, in `out`."""
    from modelcut.report import make_console
    from modelcut.viz import VizError, render
    for ext in OUTPUT_FORMATS:   # no stale drawing survives a --force (nor a missing `dot`)
        (out / f"graph.{ext}").unlink(missing_ok=True)
    try:
        written = render(text, out / "graph")
    except VizError as e:
        written = [out / "graph.dot"]
        console.print(f"[yellow]warning:[/yellow] {e}")
    make_console().print(f"wrote {', '.join(str(p) for p in written)}")


def check_output(out: Path, force: bool) -> None:
    """Refuse to overwrite a drawing already in `out` unless `force`."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder")
    existing = [out / f"graph.{ext}" for ext in OUTPUT_FORMATS if (out / f"graph.{ext}").exists()]
    if existing and not force:
        raise CommandError(f"{existing[0]} already exists; pass --force to overwrite it, or "
                           "--out DIR to write elsewhere")


MAX_VALUE_PARAMETERS = 50_000_000     # not gigabytes of parameters for a few numbers per node


def wants_values(args: argparse.Namespace, graph) -> bool:
    """Values and gradients are computed only for graphs drawn node by node, of models with
    at most MAX_VALUE_PARAMETERS parameters."""
    return (not (args.no_values or args.group) and len(graph) <= args.max_nodes
            and graph.num_parameters() <= MAX_VALUE_PARAMETERS)


def _read_placement(path: Path) -> dict[str, str]:
    """placement.json: a JSON object node name -> device name."""
    from modelcut.viz import VizError
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError, nesting
        raise VizError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in data.items()):
        raise VizError(f"{path}: expected a JSON object mapping node names to device names")
    return data
