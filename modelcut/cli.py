"""The `modelcut` command line: one subcommand per module in modelcut/commands/.

modelcut's own errors (ModelcutError), file-system errors and bad arguments print one
`modelcut: error: ...` line per problem on stderr and exit with status 2; any other exception
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys

from autodiff.errors import ModelcutError
from modelcut.commands import calibrate, check, compare, graph, partition, train, viz

# The commands `modelcut --help` lists, in this order. Each module has add_parser and run.
COMMANDS = [graph, check, partition, compare, viz, train, calibrate]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors `modelcut: error: COMMAND: ...` and exit status 2."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(2, f"modelcut: error: {where}{message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version
    try:
        installed = version("modelcut")
    except PackageNotFoundError:     # run from a source tree that was never installed
        installed = "unknown"
    parser = Parser(
        prog="modelcut",
        description="Partition a neural network's computational graph across devices to "
                    "minimise communication, and train it with one Ray actor per device.")
    parser.add_argument("--version", action="version", version=f"modelcut {installed}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers).set_defaults(run=command.run)
    return parser


def is_package_error(exc: BaseException) -> bool:
    """Whether `exc` is one of modelcut's own errors (a ModelcutError)."""
    return isinstance(exc, ModelcutError)


def main(argv: list[str] | None = None) -> int:
    """Run the `modelcut` command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help, --version, or a bad argument (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * args.verbose),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except Exception as exc:
        if not (is_package_error(exc) or isinstance(exc, OSError)):
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"modelcut: error: {line}", file=sys.stderr)
        return 2
