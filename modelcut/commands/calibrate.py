"""`modelcut calibrate`: measure this machine's Ray actors, check the step simulator on probe
models, and write a cluster file that configs read with `cluster: {file: ...}`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from modelcut.commands import CommandError, arguments
from modelcut.units import format_bandwidth, format_flops, format_size, format_time, parse_size

HELP = ("measure FLOP/s, per-op overhead, links and step overhead with Ray and write a "
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    from modelcut.calibration import (DEFAULT_MATMUL_SIZES, DEFAULT_PAYLOADS, DEFAULT_REPEATS,
                                      DEFAULT_STEPS)

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
                             f"{','.join(f'{p // 1024}KiB' for p in DEFAULT_PAYLOADS)})")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, metavar="N",
                        help=f"timed runs per size; the median counts (default {DEFAULT_REPEATS})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                        help="measured steps of each Ray executor run (the step overhead and "
                             f"the simulator's checks; default {DEFAULT_STEPS})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    return parser


def run(args: argparse.Namespace) -> int:
    from modelcut.calibration import calibrate, cluster_yaml
    from modelcut.report import make_console
    from partition.cluster import Cluster

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CommandError(f"{out} already exists; pass --force to overwrite it, or --out FILE")
    devices = args.devices if args.devices is not None else (os.cpu_count() or 1)
    if devices < 1 or args.repeats < 1 or args.steps < 1:
        raise CommandError(f"--devices, --repeats and --steps must be positive, got {devices}, "
                           f"{args.repeats} and {args.steps}")
    console, status = make_console(), make_console(stderr=True)
    with status.status(f"measuring {devices} Ray actor(s) ..."):
        result = calibrate(devices, matmul_sizes=args.matmul_sizes, payloads=args.payloads,
                           repeats=args.repeats, steps=args.steps, address=args.address)
    cluster = Cluster.from_spec(result.cluster_spec())       # what the simulator will read
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cluster_yaml(result), encoding="utf-8")
    _print(console, result)
    console.print(f"wrote {out} ({cluster.k} devices); use it with `cluster: {{file: "
                  f"{out.resolve()}}}` (a relative path there is read from the config "
                  "file's folder)")
    return 0


def _print(console, result) -> None:
    """The devices, links, step overhead and the simulator's checks, a line each."""
    for d in result.devices:
        console.print(f"{d.name}: matmul {format_flops(d.flops)} (" + ", ".join(
            f"n={n}: {format_flops(r)}" for n, r in d.flops_by_size.items())
            + f"), conv2d {format_flops(d.op_flops['conv2d'])}, memory-bound "
            f"{format_flops(d.op_flops['*'])}, {format_time(d.op_overhead)} per op, memory "
            f"{format_size(d.memory)}")
    for f in result.links:
        console.print(f"link {f.a} <-> {f.b} ({result.transport}): latency "
                      f"{format_time(f.latency)}, bandwidth {format_bandwidth(f.bandwidth)} ("
                      + ", ".join(f"{format_size(n)}: {format_time(t)}"
                                  for n, t in zip(f.payloads, f.seconds)) + ")")
    console.print(f"step overhead (Ray executor): {format_time(result.step_overhead)}")
    for c in result.checks:
        console.print(f"check (reported, not fitted): {c.probe} on {c.k} device(s) through the "
                      f"Ray executor: measured {format_time(c.measured)}, simulated "
                      f"{format_time(c.predicted)}, error {c.error:+.1%}")
