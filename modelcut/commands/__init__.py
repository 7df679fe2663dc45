"""One module per `modelcut` command, each with `add_parser(subparsers)` and `run(args) -> int`.

The list of commands lives in modelcut/cli.py (COMMANDS); adding a command is one module here
plus one entry there.
"""
from autodiff.errors import ModelcutError


class CommandError(ModelcutError):
    """A command cannot proceed (e.g. it would overwrite a file); the CLI prints the message."""
