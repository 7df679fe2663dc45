"""One module per `modelcut` command, each with `add_parser(subparsers)` and `run(args) -> int`,
listed in modelcut/cli.py's COMMANDS."""
from autodiff.errors import ModelcutError


class CommandError(ModelcutError):
    """A command cannot proceed (e.g. it would overwrite a file); the CLI prints the message."""
