"""The base class of every error modelcut raises on purpose (bad input, a failed step)."""


class ModelcutError(Exception):
    """An error whose message names the file, field, node or device at fault; the command
    line prints it as one `modelcut: error:` line instead of a traceback."""
