"""`modelcut calibrate`: measure this machine's actors (matmul, conv2d and other ops' FLOP/s,
seconds per op and per op kind, optimizer updates, actor-to-actor bandwidth through the
executor's transport, the seconds per step and per hop of the Ray executor's own training
steps) and write them as a cluster file that configs read with `cluster: {file: ...}`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from modelcut.commands import CommandError, arguments

HELP = ("measure FLOP/s, per-op overhead and actor-to-actor links with Ray and write a "
        "cluster file")


def _sizes(parse, what: str):
    """An argparse type: a comma-separated list of positive sizes read by `parse`."""
    def read(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(parse(part)) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{what}: {exc}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{what}: expected positive sizes, got {text!r}")
        return values
    return read


def _binary(nbytes: int) -> str:
    """`1048576` -> `1MiB` (for the help text; parse_size reads it back)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(nbytes)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from modelcut.calibration import (DEFAULT_MATMUL_SIZES, DEFAULT_PAYLOADS, DEFAULT_REPEATS,
                                      DEFAULT_ROUNDS, DEFAULT_STEPS, TRANSPORTS)
    from modelcut.units import parse_size

    parser = subparsers.add_parser("calibrate", help=HELP, description=HELP + ".")
    parser.add_argument("--out", "-o", default="cluster.yaml", metavar="FILE",
                        help="cluster file to write (default cluster.yaml)")
    parser.add_argument("--devices", "-k", type=arguments.device_count, metavar="K",
                        help=f"actors (devices) to measure (default: this machine's cores, "
                             f"{os.cpu_count()})")
    parser.add_argument("--address", metavar="ADDR",
                        help="join this Ray cluster (host:port or auto) instead of starting a "
                             "local Ray")
    parser.add_argument("--matmul-sizes", type=_sizes(int, "--matmul-sizes"),
                        default=DEFAULT_MATMUL_SIZES, metavar="N,N,...",
                        help="matrix sizes n of the timed n x n matmuls (default "
                             f"{','.join(map(str, DEFAULT_MATMUL_SIZES))})")
    parser.add_argument("--payloads", type=_sizes(parse_size, "--payloads"),
                        default=DEFAULT_PAYLOADS, metavar="SIZE,SIZE,...",
                        help="payload sizes sent between actors (default "
                             f"{','.join(_binary(p) for p in DEFAULT_PAYLOADS)})")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, metavar="N",
                        help=f"timed runs per size; the median counts (default {DEFAULT_REPEATS})")
    parser.add_argument("--transport", choices=TRANSPORTS, default=TRANSPORTS[0],
                        help="how links are timed: compiled (Ray Compiled Graph channels, the "
                             "Ray executor's default path) or plain (actor calls passing "
                             "ObjectRefs); default compiled")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                        help="training steps through the Ray executor on one and two devices, "
                             "for the seconds per step and per hop it pays (default "
                             f"{DEFAULT_STEPS}; 0: the probes' round trip and latency instead)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, metavar="N",
                        help="rounds over the probe models, each training every probe --steps "
                             "steps; a probe's quickest round counts (other tenants of a "
                             f"shared host only slow a step down; default {DEFAULT_ROUNDS})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from modelcut.calibration import calibrate, cluster_yaml
    from modelcut.report import make_console
    from modelcut.units import format_bandwidth, format_flops, format_size, format_time
    from partition.cluster import Cluster

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CommandError(f"{out} already exists; pass --force to overwrite it, or --out FILE")
    devices = args.devices if args.devices is not None else (os.cpu_count() or 1)
    if devices < 1 or args.repeats < 1 or args.rounds < 1 or args.steps < 0:
        raise CommandError(f"--devices, --repeats and --rounds must be positive and --steps not "
                           f"negative, got {devices}, {args.repeats}, {args.rounds} and "
                           f"{args.steps}")
    console, status = make_console(), make_console(stderr=True)
    with status.status(f"measuring {devices} Ray actor(s) ..."):
        result = calibrate(devices, matmul_sizes=args.matmul_sizes, payloads=args.payloads,
                           repeats=args.repeats, transport=args.transport,
                           address=args.address, steps=args.steps, rounds=args.rounds)
    cluster = Cluster.from_spec(result.cluster_spec())       # what the simulator will read
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cluster_yaml(result), encoding="utf-8")

    table = Table(title=f"Devices of {cluster.name}", title_justify="left")
    for column in ("device", "matmul FLOP/s (median)", "per matmul size", "other op kinds",
                   "per op", "memory"):
        table.add_column(column, justify="left" if column == "device" else "right")
    for name, flops, by_size, rates, overhead, memory in zip(
            result.devices, result.flops, result.flops_by_size, result.op_flops,
            result.op_overhead, result.memory):
        sizes = ", ".join(f"{n}: {format_flops(r)}" for n, r in by_size.items())
        kinds = ", ".join(f"{op}: {format_flops(r)}" for op, r in rates.items())
        table.add_row(name, format_flops(flops), sizes, kinds, format_time(overhead),
                      format_size(memory))
    console.print(table)
    console.print(f"round trip (driver -> actor -> driver, {result.transport}): "
                  f"{format_time(result.round_trip)}; per step outside the ops "
                  f"{'(Ray executor)' if args.steps else '(the round trip)'}: "
                  f"{format_time(result.step_overhead)}"
                  + (f"; per hop between actors (Ray executor): "
                     f"{format_time(result.hop_latency)}" if result.hop_latency is not None
                     else ""))
    if result.op_costs:
        console.print(f"costs of {len(result.op_costs[0])} op kinds (x "
                      f"{result.compute_scale:.2f} as the executor's actors run them) and of "
                      f"{', '.join(result.update_costs[0])} updates; poll delay "
                      f"{format_time(result.poll_delay)} after waits over "
                      f"{format_time(result.poll_after)}")
    if result.links:
        links = Table(title=f"Links through {result.transport} calls "
                            "(latency + bytes / bandwidth, least squares)",
                      title_justify="left")
        for column in ("link", "latency", "bandwidth", "median seconds per payload"):
            links.add_column(column, justify="left" if column == "link" else "right")
        for link in result.links:
            times = ", ".join(f"{format_size(n)}: {format_time(s)}"
                              for n, s in zip(link.payloads, link.seconds))
            links.add_row(f"{link.a} <-> {link.b}", format_time(link.latency),
                          format_bandwidth(link.bandwidth), times)
        console.print(links)
    console.print(f"wrote {out} ({cluster.k} devices); use it with `cluster: {{file: "
                  f"{Path(out).resolve()}}}` (a relative path there is read from the config "
                  "file's folder)")
    return 0
