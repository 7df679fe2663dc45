"""`modelcut check CONFIG`: validate a config and print what it describes."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from modelcut.units import format_bandwidth, format_flops, format_size, format_time

HELP = "validate a config and print a summary of the model, cluster, partition and training"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("check", help=HELP, description=HELP + ".")
    parser.add_argument("config", help="experiment config (YAML)")
    parser.add_argument("--graph", action="store_true",
                        help="also build the forward graph and report its size")
    return parser


def run(args: argparse.Namespace) -> int:
    from modelcut.config import load_config

    config = load_config(args.config)
    table = Table("section", "setting", "value", title=f"{args.config}: valid", show_lines=False)
    for section, setting, value in summary_rows(config, build_graph=args.graph):
        table.add_row(section, setting, value)
    Console().print(table)
    return 0


def summary_rows(config, build_graph: bool = False) -> list[tuple[str, str, str]]:
    """(section, setting, value) rows describing a validated Config."""
    rows = [("", "name", str(config.name)), ("", "seed", str(config.seed))]
    if hasattr(config.model, "builder"):
        builder, kwargs = config.model_kwargs()
        rows.append(("model", "builder", builder))
        rows += [("model", key, str(value)) for key, value in kwargs.items()]
    elif hasattr(config.model, "torch"):
        rows += [("model", "torch", config.model.torch), ("model", "loss", config.model.loss),
                 ("model", "data", config.model.data)]
    else:
        rows.append(("model", "graph", config.model.graph))
        if config.model.dims:
            rows.append(("model", "dims", str(config.model.dims)))
    if build_graph:
        graph = config.forward_graph()
        rows += [("graph", "nodes", f"{len(graph):,}"),
                 ("graph", "parameters", f"{graph.num_parameters():,}"),
                 ("graph", "forward FLOPs", f"{graph.total_flops():,}")]
    rows += _cluster_rows(config.cluster_spec())
    p = config.partition
    rows += [("partition", "algorithm", p.algorithm), ("partition", "epsilon", f"{p.epsilon:g}"),
             ("partition", "acyclic", str(p.acyclic).lower()),
             ("partition", "objective", p.objective or "default"),
             ("partition", "shard", p.shard),
             ("partition", "time limit", "none" if p.time_limit is None
              else format_time(p.time_limit)),
             ("partition", "seed", str(p.seed))]
    rows += [("partition", f"pin {pattern}", str(target)) for pattern, target in p.pin.items()]
    rows += [("training", key, str(value)) for key, value in config.training.model_dump().items()]
    return rows


def _cluster_rows(spec: dict) -> list[tuple[str, str, str]]:
    units = {"flops": format_flops, "memory": format_size, "bandwidth": format_bandwidth,
             "intra": format_bandwidth, "inter": format_bandwidth,
             "default_bandwidth": format_bandwidth, "latency": format_time,
             "intra_latency": format_time, "inter_latency": format_time,
             "default_latency": format_time}
    body = spec.get("uniform", spec)
    rows = [("cluster", "kind", "uniform" if "uniform" in spec else
             "hierarchical" if "nodes" in spec else "explicit devices and links")]
    for key, value in body.items():
        if key == "devices" and isinstance(value, list):
            rows += [("cluster", f"device {d['name']}",
                      f"{format_flops(d['flops'])}, {format_size(d['memory'])}") for d in value]
        elif key == "links":
            rows += [("cluster", f"link {link['a']} - {link['b']}",
                      ", ".join(units.get(k, str)(v) for k, v in link.items()
                                if k not in ("a", "b")))
                     for link in value]
        else:
            rows.append(("cluster", key, units.get(key, str)(value)))
    return rows
