"""`modelcut graph CONFIG --out FILE`: write the model's forward graph as modelcut.graph JSON."""
from __future__ import annotations

import argparse
from pathlib import Path

from modelcut.commands import CommandError

HELP = "build the config's forward graph and write it as modelcut.graph JSON"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "graph", help=HELP, description=HELP + " (gzip-compressed when FILE ends in .gz).")
    parser.add_argument("config", help="experiment config (YAML)")
    parser.add_argument("--out", "-o", required=True, metavar="FILE",
                        help="where to write the graph (.json or .json.gz)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    from autodiff.io import save_graph
    from modelcut.config import load_config

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CommandError(f"{out} already exists; pass --force to overwrite it")
    config = load_config(args.config)
    graph = config.forward_graph()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_graph(graph, out)
    print(f"wrote {out}: graph {graph.name!r}, {len(graph)} nodes, "
          f"{graph.num_parameters():,} parameters, {graph.total_flops():,} forward FLOPs")
    return 0
