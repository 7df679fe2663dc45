"""`modelcut compare CONFIG`: run every partitioning algorithm and print them side by side."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from modelcut.commands import CommandError
from modelcut.commands.partition import (add_pipeline_arguments, add_setup_arguments, load_setup,
                                         print_warnings, with_placed_graph)
from partition.algorithms import ALGORITHMS
from partition.api import partition
from partition.cost import graph_arrays
from partition.errors import PartitionError

HELP = ("run every partitioning algorithm on a config and compare volumes, pipeline time per "
        "micro-batch, balance and time")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("compare", help=HELP, description=HELP + ".")
    add_setup_arguments(parser, algorithm=False)
    add_pipeline_arguments(parser)
    parser.add_argument("--only", metavar="A,B", help="compare only these algorithms")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite the --json FILE")
    return parser


def run(args: argparse.Namespace) -> int:
    import json

    from rich.markup import escape

    from modelcut.report import PIPELINE_HINT, compare_table, make_console, rich_table

    if args.json and Path(args.json).exists() and not args.force:
        raise CommandError(f"{args.json} already exists; pass --force to overwrite it")
    names = list(ALGORITHMS)
    if args.only:
        names = [a.strip() for a in args.only.split(",") if a.strip()]
        unknown = [a for a in names if a not in ALGORITHMS]
        if unknown:
            raise CommandError(f"--only: unknown algorithm {unknown[0]!r} (known: "
                               f"{', '.join(ALGORITHMS)})")
    status = make_console(stderr=True)
    with status.status("building the graph ..."):
        setup = load_setup(args)
    rows = []
    for name in names:
        with status.status(f"{name} on {setup.cluster.k} devices ..."):
            rows.append(compare_one(setup, name))
    console = make_console()
    console.print(f"[bold]{setup.graph.name}[/bold] on [bold]{setup.cluster.name}[/bold]: "
                  f"{len(setup.graph):,} nodes, {setup.cluster.k} devices, epsilon "
                  f"{setup.options['epsilon']}{', acyclic' if setup.options['acyclic'] else ''}")
    console.print(rich_table(compare_table(rows)))
    if any(row.get("pipeline") and not row["pipeline"]["acyclic"] for row in rows):
        console.print(f"[yellow]hint:[/yellow] {PIPELINE_HINT} (rows marked 'not a pipeline')")
    for row in rows:
        if row.get("error"):
            console.print(f"[red]{row['algorithm']} failed:[/red] {escape(row['error'])}")
    print_compare_warnings(console, setup, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


def print_compare_warnings(console, setup, rows) -> None:
    """The relaxed balance cap once (every algorithm shares the caps), then each algorithm
    that left devices without ops."""
    from modelcut.report import relaxed_cap_warning

    placed = [row for row in rows if not row.get("error")]
    whole = [row for row in placed if not (row.get("sharding") or {}).get("kept")]
    if whole and whole[0]["relaxed_by"]:      # sharded rows carry their own (compare_one)
        print_warnings(console, [relaxed_cap_warning(graph_arrays(setup.graph),
                                                     whole[0]["relaxed_by"], setup.cluster.k)])
    for row in placed:
        print_warnings(console, row["warnings"], prefix=f"{row['algorithm']}: ")


def compare_one(setup, algorithm: str) -> dict:
    """One row: the placement's metrics and seconds, or the PlacementError message."""
    from modelcut.report import empty_devices_warning, relaxed_cap_warning
    start = time.perf_counter()
    try:
        options = {**setup.options, "algorithm": algorithm}
        placement = partition(setup.graph, setup.cluster, **options)
    except PartitionError as e:
        return {"algorithm": algorithm, "seconds": time.perf_counter() - start, "error": str(e)}
    setup = with_placed_graph(setup, placement)
    empty = empty_devices_warning(graph_arrays(setup.graph), placement.assignment,
                                  setup.cluster.device_names)
    if (placement.info.get("sharding") or {}).get("kept") and placement.relaxed_by:
        empty = "; ".join(filter(None, [empty, relaxed_cap_warning(
            graph_arrays(setup.graph), placement.relaxed_by, setup.cluster.k)]))
    return {"algorithm": algorithm, "seconds": placement.seconds,
            "metrics": placement.metrics.to_dict(), "optimal": placement.optimal,
            "pipeline": placement.info.get("pipeline"),
            "relaxed_by": placement.relaxed_by, "sharding": placement.info.get("sharding"),
            "warnings": [empty] if empty else []}
