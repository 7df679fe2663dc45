"""The base class of every error modelcut raises on purpose (bad input, a failed step)."""


class ModelcutError(Exception):
    """An error whose message names the file, field, node or device at fault; the command
    line prints it as one `modelcut: error:` line instead of a traceback."""


def did_you_mean(word, options) -> str:
    """` (did you mean 'x'?)` for the closest option (spelling, or a shared prefix), else ''."""
    import difflib
    if not isinstance(word, str):
        return ""
    options = list(options)
    close = difflib.get_close_matches(word, options, 1)
    if not close:
        close = sorted((o for o in options if word.startswith(o) or o.startswith(word)),
                       key=len, reverse=True)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show_value(value) -> str:
    """A YAML-flavoured, bounded rendering of an offending value (for one-line messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
